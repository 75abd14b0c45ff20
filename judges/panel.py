"""The judge panel: built once here, used by the loop's judge stage and by the experiments.

`build_panel` makes the judges a domain calls for (coherence, novelty in the domain's embedding
space, the critic with the domain's rubric or the user's, or the domain's rule-based critic,
the verifier where the domain has one); `judge_texts` scores a batch with all of them and decides with the combiner. An accepted
text repeated within the batch is rejected as a duplicate of the first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from domains.base import Domain, Text
from judges.base import JudgeScore, safe_score
from judges.coherence import CoherenceJudge
from judges.combiner import decide
from judges.config import JudgeConfig
from judges.critic import CriticJudge, RuleCriticJudge, load_rubric
from judges.novelty import NoveltyJudge
from judges.verifier import VerifierJudge

COHERENCE_REFERENCE = 256  # corpus texts that calibrate the coherence judge


def build_panel(domain: Domain, cfg: JudgeConfig, model, tokenizer, train: list[Text], previous: list[str],
                seed: int, corpus_embeddings: np.ndarray | None = None) -> list:
    """corpus_embeddings: the domain embedder's `embed` of the `train` texts, when the caller has
    them (the loop's embedding cache); the novelty judge computes them otherwise. Not used for a
    domain whose novelty is on bit vectors (those are the embedder's `bits`)."""
    rng = np.random.default_rng(seed)
    ref_idx = rng.choice(len(train), size=min(COHERENCE_REFERENCE, len(train)), replace=False)
    embedder = domain.meaning_embedder()
    if getattr(embedder, "metric", "cosine") == "jaccard":  # bit vectors: Tanimoto distance on the bits
        novelty = NoveltyJudge(embedder.bits, [t.text for t in train], cfg.min_novelty, metric="jaccard")
    else:
        novelty = NoveltyJudge(embedder.embed, [t.text for t in train], cfg.min_novelty,
                               corpus_embeddings=corpus_embeddings)
    if previous:
        novelty.add_accepted(previous)
    if domain.rule_critic is not None:
        critic = RuleCriticJudge(domain.rule_critic)
    else:
        critic = CriticJudge(model, tokenizer, load_rubric(cfg.rubric) if cfg.rubric else domain.rubric)
    panel = [CoherenceJudge(model, tokenizer, [train[i].text for i in sorted(ref_idx)]), novelty, critic]
    if domain.verifier is not None:
        panel.append(VerifierJudge(domain.verifier))
    return panel


@dataclass
class Judged:
    scores: dict[str, JudgeScore]  # per judge
    total: float | None
    accepted: bool
    reason: str
    verdict: str | None  # the verifier's status, where the domain has a verifier
    fact_key: str | None
    topic: str | None
    true_new: bool | None  # verified true and absent from training; None without a verifier


def judge_texts(panel: list, texts: list[str], cfg: JudgeConfig, train_fact_keys: frozenset[str],
                duplicate_reason: Callable[[int], str] = lambda i: f"rejected: duplicate of text {i} in this batch",
                canonical: Callable[[str], str] = lambda t: t) -> list[Judged]:
    """Score `texts` with every judge of `panel`; `duplicate_reason(i)` words the rejection of a
    text already accepted at index i; two texts are the same text when `canonical` (the domain's,
    e.g. canonical SMILES) makes them equal."""
    # Each judge sees at most cfg.batch_size texts at once, so no judge builds a tensor (or, when
    # it fails, a one-text-at-a-time retry) the size of the whole generation. Judges score each
    # text on its own, so the chunking changes no score; decisions need every judge, so they come after.
    scores: dict[str, list[JudgeScore]] = {j.name: [] for j in panel}
    for a in range(0, len(texts), cfg.batch_size):
        part = texts[a : a + cfg.batch_size]
        for j in panel:
            scores[j.name] += safe_score(j, part)
    seen: dict[str, int] = {}
    out = []
    for i, t in enumerate(texts):
        per = {name: sc[i] for name, sc in scores.items()}
        d = decide(per, cfg)
        ver = per.get("verifier")
        verdict = fact_key = topic = true_new = None
        if ver is not None:
            verdict, fact_key, topic = ver.detail.get("status"), ver.detail.get("fact_key"), ver.detail.get("topic")
            true_new = verdict == "true" and fact_key not in train_fact_keys
        accepted, reason = d.accepted, d.reason
        key = canonical(t)
        if accepted and key in seen:
            accepted, reason = False, duplicate_reason(seen[key])
        elif accepted:
            seen[key] = i
        out.append(Judged(per, d.total, accepted, reason, verdict, fact_key, topic, true_new))
    return out
