"""Settings of the judges and the combiner: thresholds and weights."""
from __future__ import annotations

from dataclasses import dataclass, field

from common.errors import check as _check


@dataclass
class JudgeConfig:
    rubric: str | None = None  # a text file with the critic's rubric; None = the domain's own
    min_coherence: float = 0.05  # share of corpus texts at least as perplexing as the candidate
    min_novelty: float = 0.02  # cosine distance to the nearest corpus/accepted text; below = near-duplicate
    min_critic: float = 0.0
    require_true: bool = True  # where a verifier exists, only verified-true texts are accepted
    critic_weight: float = 0.2
    coherence_weight: float = 0.4
    novelty_weight: float = 0.4
    accept_score: float = 0.0  # weighted score a candidate must reach after the hard thresholds
    # Texts handed to each judge at once (performance knob): bounds a judge's memory whatever the
    # generation's candidate count, and a judge that fails on a batch retries one text at a time
    # only within that batch (judges.base.safe_score).
    batch_size: int = 256
    # Any registered judge's weight and hard minimum by its name (judges.base.JudgeSpec), e.g.
    # --set judges.weights=length:0.3; they take precedence over the fields above.
    weights: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        for k in ("min_coherence", "min_critic", "accept_score"):
            _check(0 <= getattr(self, k) <= 1, f"judges.{k} must be in [0, 1], got {getattr(self, k)}")
        _check(0 <= self.min_novelty <= 2, f"judges.min_novelty must be in [0, 2], got {self.min_novelty}")
        _check(self.batch_size >= 1, f"judges.batch_size must be >= 1, got {self.batch_size}")
        for k, table in (("weights", self.weights), ("thresholds", self.thresholds)):
            _check(isinstance(table, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   for v in table.values()),
                   f"judges.{k} must map judge names to numbers, e.g. length:0.3, got {table!r}")
        _check(all(v >= 0 for v in self.weights.values()), f"judges.weights must be >= 0, got {self.weights}")
        for k in ("critic_weight", "coherence_weight", "novelty_weight"):
            _check(getattr(self, k) >= 0, f"judges.{k} must be >= 0, got {getattr(self, k)}")
