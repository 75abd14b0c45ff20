"""The judge panel: built once here, used by the loop's judge stage and by the experiments.

`build_panel` makes every registered judge that takes part for the domain (built in: coherence,
novelty in the domain's embedding space, the critic with the domain's rubric or the user's, or
the domain's rule-based critic, the verifier where the domain has one); `judge_texts` scores a
batch with all of them and decides with the combiner. An accepted text repeated within the batch
is rejected as a duplicate of the first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from domains.base import Domain, Text
from judges.base import JudgeScore, PanelContext, judge_specs, judge_with_role, safe_score
from judges.combiner import decide
from judges.config import JudgeConfig


def build_panel(domain: Domain, cfg: JudgeConfig, model, tokenizer, train: list[Text], previous: list[str],
                seed: int, corpus_embeddings: np.ndarray | None = None) -> list:
    """Every registered judge (judges.base.register_judge) that takes part for this domain, in
    rank order. corpus_embeddings: the domain embedder's `embed` of the `train` texts, when the
    caller has them (the loop's embedding cache); the novelty judge computes them otherwise."""
    ctx = PanelContext(domain, cfg, model, tokenizer, train, previous, seed, corpus_embeddings)
    return [j for j in (spec.build(ctx) for spec in judge_specs()) if j is not None]


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
    truth_judged: bool = False  # a judge with the "truth" role scored it (verdict, fact_key, topic are its)
    novelty: float | None = None  # the "novelty" judge's distance to the nearest corpus or accepted text


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
    truth_name, novelty_name = judge_with_role("truth"), judge_with_role("novelty")
    for i, t in enumerate(texts):
        per = {name: sc[i] for name, sc in scores.items()}
        d = decide(per, cfg)
        ver = per.get(truth_name)
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
        nov = per.get(novelty_name)
        out.append(Judged(per, d.total, accepted, reason, verdict, fact_key, topic, true_new, ver is not None,
                          None if nov is None else nov.detail.get("distance")))
    return out
