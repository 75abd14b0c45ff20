"""The combiner: hard thresholds in a fixed order, then a weighted score; every decision has a reason.

Rules, first failure rejects: verifier (when present and `require_true`), coherence, novelty
(near-duplicate), critic, weighted mean of the available coherence/novelty/critic scores.
A judge missing from `scores` is skipped; a judge that gave None is noted in the reason and
skipped, except coherence, which must score.
"""
from __future__ import annotations

from dataclasses import dataclass

from judges.base import JudgeScore


@dataclass
class Decision:
    accepted: bool
    reason: str
    total: float | None


def decide(scores: dict[str, JudgeScore], cfg) -> Decision:
    """Accept or reject one candidate from its judges' scores; cfg is a loop.config.JudgeConfig."""
    notes: list[str] = []

    def reject(why: str) -> Decision:
        return Decision(False, f"rejected: {why}", None)

    ver = scores.get("verifier")
    if ver is not None:
        status = ver.detail.get("status")
        if status == "true":
            notes.append("true")
        elif cfg.require_true:
            if status == "false":
                return reject(f"false claim ({ver.reason})")
            if status == "unparseable":  # the verifier's own words (maths: "unparseable: no known statement form")
                return reject(ver.reason)
            return reject(f"not verified ({ver.reason})")
        else:
            notes.append(f"{status or 'unverified'} (truth not required)")

    coh = scores.get("coherence")
    if coh is not None:
        if coh.score is None:
            return reject(f"coherence unscored ({coh.reason})")
        if coh.score < cfg.min_coherence:
            return reject(f"incoherent ({coh.score:.2f} < {cfg.min_coherence:.2f}; {coh.reason})")
        notes.append(f"coherent ({coh.score:.2f})")

    nov = scores.get("novelty")
    if nov is not None:
        dist = nov.detail.get("distance")
        if dist is None:
            notes.append(f"novelty unscored ({nov.reason})")
        elif dist < cfg.min_novelty:
            near = str(nov.detail.get("nearest", ""))
            near = near if len(near) <= 60 else near[:57] + "..."
            return reject(f"near-duplicate of {nov.detail.get('source', 'corpus')} text {near!r} "
                          f"(distance {dist:.3f} < {cfg.min_novelty:.2f})")
        elif nov.score is None:
            notes.append(f"novelty unscored ({nov.reason})")
        else:
            notes.append(f"novel ({nov.score:.2f}, distance {dist:.3f})")

    cri = scores.get("critic")
    if cri is not None:
        if cri.score is None:
            notes.append(f"critic unscored ({cri.reason})")
        elif cri.score < cfg.min_critic:
            return reject(f"critic score {cri.score:.2f} < {cfg.min_critic:.2f} ({cri.reason})")
        else:
            notes.append(f"critic ({cri.score:.2f})")

    parts = [(s.score, w) for s, w in ((coh, cfg.coherence_weight), (nov, cfg.novelty_weight), (cri, cfg.critic_weight))
             if s is not None and s.score is not None]
    wsum = sum(w for _, w in parts)
    total = sum(s * w for s, w in parts) / wsum if wsum > 0 else None
    if total is None:
        if cfg.accept_score > 0:
            return reject(f"no weighted score to compare with accept_score {cfg.accept_score:.2f}; "
                          + ", ".join(notes))
        notes.append("no weighted score")
    elif total < cfg.accept_score:
        return Decision(False, f"rejected: weighted {total:.2f} < {cfg.accept_score:.2f}; " + ", ".join(notes), total)
    else:
        notes.append(f"weighted {total:.2f} >= {cfg.accept_score:.2f}")
    return Decision(True, "accepted: " + ", ".join(notes), total)
