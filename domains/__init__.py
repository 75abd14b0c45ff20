"""Domains as plugins: `maths` (built-in generator and verifier), `text` (any user corpus)."""
from domains.base import DOMAINS, CorpusSplits, Domain, Text, Verdict, get_domain, split_eval
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
    "ALL_TOPICS", "DOMAINS", "CorpusError", "CorpusSplits", "Domain", "MathsConfig", "MathsCorpus", "MathsDomain",
    "Text", "TextDomain", "Verdict", "build_maths_corpus", "false_statements", "get_domain", "load_corpus",
    "split_eval", "verify",
]
