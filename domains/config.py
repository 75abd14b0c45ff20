"""Settings of the corpus: which domain, which file, how it is split."""
from __future__ import annotations

from dataclasses import dataclass

from common.errors import check as _check


@dataclass
class CorpusConfig:
    # The domain plugin (domains.base.get_domain): maths, text, molecules. None = maths for the
    # built-in corpus, molecules for a user's .smi file, text for any other --corpus file.
    domain: str | None = None
    path: str | None = None  # a user corpus file (.txt or .jsonl); None = the domain's own (built-in maths)
    facts_per_topic: int = 40
    phrasings_per_fact: int = 3
    holdout_share: float = 0.2
    eval_share: float = 0.05  # share of training texts kept aside for held-out perplexity
    # Molecules: MOSES training molecules in the corpus (0 = all 1.58M), test molecules held out
    # for evaluation, scaffold-test molecules in the held-out knowledge set (0 = all).
    max_texts: int = 0
    eval_texts: int = 1000
    knowledge_texts: int = 1000
    # The SLLM's meaning target: "" = the domain's own (maths, text: MiniLM; molecules: Morgan
    # fingerprints), or another one the domain offers (molecules: morgan, descriptors). Novelty is
    # always measured in the domain's own space.
    meaning: str = ""

    def __post_init__(self):
        # lazy: domains.base finds the domains, and imports this module for its type hints
        from domains.base import domain_names

        names = domain_names()
        _check(self.domain is None or self.domain in names,
               f"corpus.domain {self.domain!r} is not a domain; choose one of {', '.join(names)} (--domain NAME)")
        _check(self.facts_per_topic >= 1, f"corpus.facts_per_topic must be >= 1, got {self.facts_per_topic}")
        _check(self.phrasings_per_fact >= 1, f"corpus.phrasings_per_fact must be >= 1, got {self.phrasings_per_fact}")
        _check(0 <= self.holdout_share < 1, f"corpus.holdout_share must be in [0, 1), got {self.holdout_share}")
        _check(0 <= self.eval_share < 0.5, f"corpus.eval_share must be in [0, 0.5), got {self.eval_share}")
        for k in ("max_texts", "eval_texts", "knowledge_texts"):
            _check(getattr(self, k) >= 0, f"corpus.{k} must be >= 0, got {getattr(self, k)}")

    @property
    def domain_name(self) -> str:
        return domain_name_of(self.domain, self.path)


def domain_name_of(domain: str | None, path: str | None) -> str:
    """The domain a corpus setting names: `domain`, else the one its file's extension belongs to
    (text for any other file), else the built-in default (maths). Also for a stored run's settings."""
    if domain:
        return domain
    if path is None:
        return "maths"
    from domains.base import domain_for_file

    return domain_for_file(path) or "text"
