"""The judge interface: a batch of texts in, one score in [0, 1] (or None with a reason) each out.

`safe_score` is how the loop calls a judge: a judge that fails on one text records that as
`JudgeScore(None, reason, {})` and never stops the batch (the same contract as distilabel's
tasks).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

from common.registry import Registry

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


# ------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class PanelContext:
    """What a judge's builder may use to make its judge for one run and generation."""
    domain: object  # domains.base.Domain
    cfg: object  # judges.config.JudgeConfig
    model: object  # the base model (with the generation's adapter), for judges that read it
    tokenizer: object
    train: list  # the corpus's training texts (domains.base.Text)
    previous: list[str]  # texts accepted in earlier generations
    seed: int
    corpus_embeddings: object = None  # the domain embedder's embeddings of `train`, when the caller has them


# A gate: (score, threshold, judge settings) -> (rejection words or None, note for the reason or None).
Gate = Callable[[JudgeScore, "float | None", object], "tuple[str | None, str | None]"]


def default_gate(name: str) -> Gate:
    """Reject below the threshold; a missing score is noted and skipped."""
    def gate(s: JudgeScore, threshold: float | None, cfg) -> tuple[str | None, str | None]:
        if s.score is None:
            return None, f"{name} unscored ({s.reason})"
        if threshold is not None and s.score < threshold:
            return f"{name} score {s.score:.2f} < {threshold:.2f} ({s.reason})", None
        return None, f"{name} ({s.score:.2f})"
    return gate


@dataclass(frozen=True)
class JudgeSpec:
    """A judge as the panel and the combiner know it.

    build(ctx) makes the judge for a run (None: it sits out, e.g. a verifier where the domain has
    none). weight: its default weight in the weighted score; threshold: its default hard minimum
    (None: none); both can be set per run as `judges.weights` / `judges.thresholds` (NAME:VALUE),
    or through the JudgeConfig fields named by weight_setting / threshold_setting. gate: how a
    score turns into a rejection or a note (default_gate when None). rank: the order of the
    combiner's rules and of the panel. roles: what the rest of the tool reads from its detail:
    "truth" (status, fact_key, topic: the candidate's verdict) and "novelty" (distance: the mean
    novelty figures)."""
    name: str
    build: Callable[[PanelContext], "Judge | None"]
    weight: float = 0.0
    threshold: float | None = None
    gate: Gate | None = None
    rank: int = 100
    roles: tuple[str, ...] = ()
    weight_setting: str | None = None
    threshold_setting: str | None = None

    def weight_in(self, cfg) -> float:
        if self.name in cfg.weights:
            return cfg.weights[self.name]
        return getattr(cfg, self.weight_setting) if self.weight_setting else self.weight

    def threshold_in(self, cfg) -> float | None:
        if self.name in cfg.thresholds:
            return cfg.thresholds[self.name]
        return getattr(cfg, self.threshold_setting) if self.threshold_setting else self.threshold

    def check(self, s: JudgeScore, cfg) -> tuple[str | None, str | None]:
        return (self.gate or default_gate(self.name))(s, self.threshold_in(cfg), cfg)


_JUDGES: Registry[JudgeSpec] = Registry("judge")


def register_judge(spec: JudgeSpec) -> JudgeSpec:
    """Add a judge to every panel built from now on; a second judge under a taken name is refused."""
    return _JUDGES.add(spec.name, spec)


def unregister_judge(name: str) -> None:
    _JUDGES.remove(name)


def judge_specs() -> list[JudgeSpec]:
    """Every registered judge, in rank order (ties: registration order)."""
    return sorted(_JUDGES.items().values(), key=lambda j: j.rank)


def judge_with_role(role: str) -> str | None:
    """The name of the registered judge that plays `role` ("truth", "novelty"), if one does."""
    return next((j.name for j in judge_specs() if role in j.roles), None)
