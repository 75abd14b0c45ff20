"""Judges: a batch of candidates in, a score in [0, 1] (or None with a reason) each out."""
from judges.base import Judge, JudgeScore, safe_score, validate
from judges.coherence import CoherenceJudge, token_nll
from judges.combiner import Decision, decide
from judges.critic import DEFAULT_RUBRIC, CriticJudge, sanitise
from judges.novelty import NoveltyJudge
from judges.verifier import VerifierJudge

__all__ = [
    "Judge", "JudgeScore", "safe_score", "validate", "CoherenceJudge", "token_nll", "Decision", "decide",
    "DEFAULT_RUBRIC", "CriticJudge", "sanitise", "NoveltyJudge", "VerifierJudge",
]
