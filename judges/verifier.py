"""Verifier: checks a statement's truth where the domain can (the built-in maths corpus can)."""
from __future__ import annotations

from typing import Callable

from judges.base import JudgeScore


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
