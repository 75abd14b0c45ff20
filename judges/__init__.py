"""Judges: a batch of candidates in, a score in [0, 1] (or None with a reason) each out.

The names below load on first use (PEP 562), so importing `judges.config` for the settings does
not import torch and the models behind the judges.
"""
import importlib

_EXPORTS = {
    "Judge": "judges.base", "JudgeScore": "judges.base", "safe_score": "judges.base", "validate": "judges.base",
    "JudgeSpec": "judges.base", "PanelContext": "judges.base", "register_judge": "judges.base",
    "judge_specs": "judges.base",
    "CoherenceJudge": "judges.coherence", "token_nll": "judges.coherence",
    "Decision": "judges.combiner", "decide": "judges.combiner",
    "DEFAULT_RUBRIC": "judges.critic", "CriticJudge": "judges.critic", "sanitise": "judges.critic",
    "NoveltyJudge": "judges.novelty", "VerifierJudge": "judges.verifier",
    "build_panel": "judges.panel", "judge_texts": "judges.panel",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'judges' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
