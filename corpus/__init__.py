"""Corpora: the built-in elementary-maths domain (generator + verifier) and user corpora."""
from .load import CorpusError, load_corpus
from .maths import (
    ALL_TOPICS,
    MathsConfig,
    MathsCorpus,
    Text,
    Verdict,
    build_maths_corpus,
    false_statements,
    verify,
)

__all__ = [
    "ALL_TOPICS",
    "CorpusError",
    "MathsConfig",
    "MathsCorpus",
    "Text",
    "Verdict",
    "build_maths_corpus",
    "false_statements",
    "load_corpus",
    "verify",
]
