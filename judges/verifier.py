"""Verifier: checks a statement's truth where the domain can (the built-in maths corpus can)."""
from __future__ import annotations

from typing import Callable

from judges.base import JudgeScore, JudgeSpec, PanelContext, register_judge


class VerifierJudge:
    name = "verifier"

    def __init__(self, verify_fn: Callable | None = None):
        if verify_fn is None:
            from domains import verify as verify_fn  # lazy: corpus is only needed when verifying
        self.verify_fn = verify_fn

    def score(self, texts: list[str]) -> list[JudgeScore]:
        out = []
        for t in texts:
            v = self.verify_fn(t)
            detail = {"status": v.status, "fact_key": v.fact_key, "topic": v.topic}
            where = f" ({v.fact_key})" if v.fact_key else ""
            if v.status not in ("true", "false", "unparseable"):
                raise ValueError(f"verify returned unknown status {v.status!r}; expected true, false or unparseable")
            if getattr(v, "reason", None):  # the domain words its own verdicts (molecules: valid / invalid SMILES)
                out.append(JudgeScore({"true": 1.0, "false": 0.0}.get(v.status), v.reason, detail))
            elif v.status == "true":
                out.append(JudgeScore(1.0, f"true{where}", detail))
            elif v.status == "false":
                out.append(JudgeScore(0.0, f"false claim{where}", detail))
            elif v.status == "unparseable":
                out.append(JudgeScore(None, "unparseable: no known statement form", detail))
            else:
                raise ValueError(f"verify returned unknown status {v.status!r}; expected true, false or unparseable")
        return out


def _truth_gate(s: JudgeScore, threshold, cfg) -> tuple[str | None, str | None]:
    """Where the domain can check truth and the run asks for it, only verified-true texts pass."""
    status = s.detail.get("status")
    if status == "true":
        return None, "true"
    if not cfg.require_true:
        return None, f"{status or 'unverified'} (truth not required)"
    if status == "false":
        return f"false claim ({s.reason})", None
    if status == "unparseable":  # the verifier's own words (maths: "unparseable: no known statement form")
        return s.reason, None
    return f"not verified ({s.reason})", None


def _build(ctx: PanelContext):
    verify = ctx.domain.verifier
    return None if verify is None else VerifierJudge(verify)


register_judge(JudgeSpec("verifier", _build, gate=_truth_gate, rank=0, roles=("truth",)))
