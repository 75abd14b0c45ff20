"""The combiner: hard rules in the judges' rank order, then a weighted score; every decision has a reason.

Each registered judge (judges.base.JudgeSpec) present in `scores` gates the candidate in rank
order (built in: verifier when `require_true`, coherence, novelty (near-duplicate), critic); the
first rejection decides. The rest is the weighted mean of the judges' scores, each with its
weight in the settings. A judge missing from `scores` is skipped; one that gave None is noted in
the reason and skipped, unless its gate rejects that (coherence must score).
"""
from __future__ import annotations

from dataclasses import dataclass

# The built-in judges register themselves when their modules load: the rules are whatever is registered.
import judges.coherence  # noqa: F401
import judges.critic  # noqa: F401
import judges.novelty  # noqa: F401
import judges.verifier  # noqa: F401
from judges.base import JudgeScore, judge_specs


@dataclass
class Decision:
    accepted: bool
    reason: str
    total: float | None


def decide(scores: dict[str, JudgeScore], cfg) -> Decision:
    """Accept or reject one candidate from its judges' scores; cfg is a judges.config.JudgeConfig."""
    notes: list[str] = []
    specs = [j for j in judge_specs() if j.name in scores]
    for spec in specs:
        why, note = spec.check(scores[spec.name], cfg)
        if why is not None:
            return Decision(False, f"rejected: {why}", None)
        if note:
            notes.append(note)

    parts = [(scores[j.name].score, w) for j in specs
             if (w := j.weight_in(cfg)) > 0 and scores[j.name].score is not None]
    wsum = sum(w for _, w in parts)
    total = sum(s * w for s, w in parts) / wsum if wsum > 0 else None
    if total is None:
        if cfg.accept_score > 0:
            return Decision(False, f"rejected: no weighted score to compare with accept_score {cfg.accept_score:.2f}; "
                            + ", ".join(notes), None)
        notes.append("no weighted score")
    elif total < cfg.accept_score:
        return Decision(False, f"rejected: weighted {total:.2f} < {cfg.accept_score:.2f}; " + ", ".join(notes), total)
    else:
        notes.append(f"weighted {total:.2f} >= {cfg.accept_score:.2f}")
    return Decision(True, "accepted: " + ", ".join(notes), total)
