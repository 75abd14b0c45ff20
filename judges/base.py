"""The judge interface: a batch of texts in, one score in [0, 1] (or None with a reason) each out.

`safe_score` is how the loop calls a judge: a judge that fails on one text records that as
`JudgeScore(None, reason, {})` and never stops the batch (the same contract as distilabel's
tasks).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

log = logging.getLogger(__name__)


@dataclass
class JudgeScore:
    score: float | None  # in [0, 1]; None when the judge could not score (reason says why)
    reason: str  # short, human-readable
    detail: dict = field(default_factory=dict)  # raw numbers, json-serialisable


@runtime_checkable
class Judge(Protocol):
    name: str

    def score(self, texts: list[str]) -> list[JudgeScore]: ...


def _failed(name: str, exc: BaseException) -> JudgeScore:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return JudgeScore(None, f"{name} failed: {type(exc).__name__}: {msg}", {})


def validate(name: str, s: object) -> JudgeScore:
    """A judge's output checked: scores clamped to [0, 1], NaN or non-numbers become None."""
    if not isinstance(s, JudgeScore):
        return JudgeScore(None, f"{name} failed: returned {type(s).__name__}, not JudgeScore", {})
    detail = s.detail if isinstance(s.detail, dict) else {"detail": repr(s.detail)}
    reason = str(s.reason)
    if s.score is None:
        return JudgeScore(None, reason, detail)
    try:
        x = float(s.score)
    except (TypeError, ValueError):
        return JudgeScore(None, f"{name} gave a non-numeric score {s.score!r}: {reason}", detail)
    if math.isnan(x):
        return JudgeScore(None, f"{name} gave NaN: {reason}", detail)
    if not 0.0 <= x <= 1.0:
        detail = {**detail, "clamped_from": x}
        x = min(1.0, max(0.0, x))
    return JudgeScore(x, reason, detail)


def safe_score(judge, texts: list[str]) -> list[JudgeScore]:
    """Run `judge.score` on the batch; on failure, one text at a time; never raises."""
    texts = list(texts)
    if not texts:
        return []
    name = getattr(judge, "name", type(judge).__name__)
    try:
        out = judge.score(texts)
        if len(out) != len(texts):
            raise RuntimeError(f"returned {len(out)} scores for {len(texts)} texts")
        return [validate(name, s) for s in out]
    except Exception as e:  # noqa: BLE001 - a judge never kills the batch
        log.warning("judge %s failed on a batch of %d (%s: %s); scoring one text at a time",
                    name, len(texts), type(e).__name__, e)
    scores = []
    for t in texts:
        try:
            out = judge.score([t])
            if len(out) != 1:
                raise RuntimeError(f"returned {len(out)} scores for 1 text")
            scores.append(validate(name, out[0]))
        except Exception as e:  # noqa: BLE001
            scores.append(_failed(name, e))
    return scores
