"""Domains as plugins: `maths` (built-in generator and verifier), `text` (any user corpus)."""
from domains.base import (
    CorpusSplits,
    Domain,
    Text,
    Verdict,
    domain_names,
    get_domain,
    register_domain,
    split_eval,
)
from domains.files import CorpusError, load_corpus
from domains.maths import (
    ALL_TOPICS,
    MathsConfig,
    MathsCorpus,
    MathsDomain,
    build_maths_corpus,
    false_statements,
    verify,
)
from domains.text import TextDomain

__all__ = [
    "ALL_TOPICS", "CorpusError", "CorpusSplits", "Domain", "MathsConfig", "MathsCorpus", "MathsDomain",
    "Text", "TextDomain", "Verdict", "build_maths_corpus", "domain_names", "false_statements", "get_domain", "load_corpus", "register_domain",
    "split_eval", "verify",
]
