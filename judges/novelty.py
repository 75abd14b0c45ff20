"""Novelty: cosine distance to the nearest corpus text or already-accepted text (or Tanimoto /
Jaccard distance on bit vectors, for a domain whose embedder gives fingerprints).

score = min(1, distance / 0.5): distances past 0.5 all count as fully novel, so the judge
ranks near-copies and paraphrases, not "how unrelated to the corpus" a text is.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.neighbors import NearestNeighbors

from judges.base import JudgeScore, JudgeSpec, PanelContext, register_judge

SATURATION = 0.5  # cosine distance at which novelty reaches 1


class NoveltyJudge:
    name = "novelty"

    def __init__(self, embed_fn: Callable[[list[str]], np.ndarray], corpus_texts: list[str], min_distance: float = 0.02,
                 metric: str = "cosine", corpus_embeddings: np.ndarray | None = None):
        """corpus_embeddings: embed_fn(corpus_texts), when the caller has them already (the loop
        keeps the corpus's in its embedding cache: embedding ~17,000 maths texts again every
        generation took most of the judge stage)."""
        if not corpus_texts:
            raise ValueError("NoveltyJudge needs at least one corpus text to measure distance to")
        if not 0 <= min_distance <= 2:
            raise ValueError(f"min_distance must be in [0, 2], got {min_distance}")
        if metric not in ("cosine", "jaccard"):
            raise ValueError(f"metric must be cosine or jaccard, got {metric!r}")
        self.embed_fn, self.min_distance, self.metric = embed_fn, min_distance, metric
        self.corpus_texts = list(corpus_texts)
        if corpus_embeddings is None:
            corpus_embeddings = self._embed(self.corpus_texts)
        elif np.shape(corpus_embeddings)[0] != len(self.corpus_texts) or np.ndim(corpus_embeddings) != 2:
            raise ValueError(f"corpus_embeddings has shape {np.shape(corpus_embeddings)} for {len(self.corpus_texts)} "
                             "corpus texts; pass embed_fn(corpus_texts) (N, d), or None to compute them")
        self._corpus_index = _index(corpus_embeddings, self.metric)
        self.accepted_texts: list[str] = []
        self._accepted_emb = None  # (A, d)
        self._accepted_index = None

    def _embed(self, texts: list[str]) -> np.ndarray:
        z = np.asarray(self.embed_fn(list(texts)), dtype=bool if self.metric == "jaccard" else np.float32)
        if z.ndim != 2 or z.shape[0] != len(texts):
            raise ValueError(f"embed_fn returned shape {z.shape} for {len(texts)} texts; expected (N, d)")
        return z

    def add_accepted(self, texts: list[str]) -> None:
        """Texts accepted so far count as 'already seen' for later candidates."""
        texts = list(texts)
        if not texts:
            return
        z = self._embed(texts)
        self._accepted_emb = z if self._accepted_emb is None else np.concatenate([self._accepted_emb, z])
        self.accepted_texts += texts
        # Refit: accepted sets are small (hundreds per generation), so a rebuild is cheap.
        self._accepted_index = _index(self._accepted_emb, self.metric)

    def score(self, texts: list[str]) -> list[JudgeScore]:
        texts = list(texts)
        if not texts:
            return []
        z = self._embed(texts)  # (N, d)
        d, j = self._corpus_index.kneighbors(z)  # (N, 1) each
        dist, near = d[:, 0].clip(min=0), [self.corpus_texts[k] for k in j[:, 0]]
        source = ["corpus"] * len(texts)
        if self._accepted_index is not None:
            da, ja = self._accepted_index.kneighbors(z)
            for i in range(len(texts)):
                if da[i, 0] < dist[i]:
                    dist[i], near[i], source[i] = max(0.0, da[i, 0]), self.accepted_texts[ja[i, 0]], "accepted"
        out = []
        for i in range(len(texts)):
            di = float(dist[i])
            short = near[i] if len(near[i]) <= 60 else near[i][:57] + "..."
            out.append(JudgeScore(
                min(1.0, di / SATURATION),
                f"distance {di:.3f} to {source[i]} text {short!r}",
                {"distance": di, "nearest": near[i], "source": source[i], "near_duplicate": di < self.min_distance},
            ))
        return out


class TanimotoNearest:
    """Exact nearest bit vector by Tanimoto (Jaccard) distance, from one product of the bit matrices
    (`kneighbors` with n_neighbors=1, as scikit-learn's): its brute-force jaccard takes 1.5 s for
    64 molecules against 10,000, this about 10 ms. Two empty vectors are at distance 0, as
    scipy's jaccard has them; of equally near rows the first wins."""

    BLOCK = 1024  # query rows a product: (BLOCK, N) float32

    def __init__(self, bits: np.ndarray):
        self.bits = np.asarray(bits, dtype=np.float32)  # (N, d) of 0/1
        self.counts = self.bits.sum(1)  # (N,)

    def kneighbors(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> distances (Q, 1), indices (Q, 1)."""
        q = np.asarray(query, dtype=np.float32)
        dist, idx = np.empty((len(q), 1)), np.empty((len(q), 1), np.int64)
        for a in range(0, len(q), self.BLOCK):
            part = q[a : a + self.BLOCK]
            inter = (part @ self.bits.T).astype(np.float64)  # counts: exact in float32 below 2^24
            union = part.sum(1, keepdims=True) + self.counts[None, :] - inter
            d = np.where(union > 0, 1.0 - inter / np.maximum(union, 1.0), 0.0)
            idx[a : a + self.BLOCK, 0] = d.argmin(1)
            dist[a : a + self.BLOCK, 0] = d[np.arange(len(part)), idx[a : a + self.BLOCK, 0]]
        return dist, idx


def _index(emb: np.ndarray, metric: str):
    if metric == "jaccard":
        return TanimotoNearest(emb)
    return NearestNeighbors(n_neighbors=1, metric=metric).fit(emb)


def _novelty_gate(s: JudgeScore, threshold, cfg) -> tuple[str | None, str | None]:
    """A near-copy of a corpus or already-accepted text is rejected by its distance, whatever its score."""
    dist = s.detail.get("distance")
    if dist is None:
        return None, f"novelty unscored ({s.reason})"
    if threshold is not None and dist < threshold:
        near = str(s.detail.get("nearest", ""))
        near = near if len(near) <= 60 else near[:57] + "..."
        return (f"near-duplicate of {s.detail.get('source', 'corpus')} text {near!r} "
                f"(distance {dist:.3f} < {threshold:.2f})"), None
    if s.score is None:
        return None, f"novelty unscored ({s.reason})"
    return None, f"novel ({s.score:.2f}, distance {dist:.3f})"


def _build(ctx: PanelContext):
    embedder = ctx.domain.meaning_embedder()
    texts = [t.text for t in ctx.train]
    if getattr(embedder, "metric", "cosine") == "jaccard":  # bit vectors: Tanimoto distance on the bits
        judge = NoveltyJudge(embedder.bits, texts, ctx.cfg.min_novelty, metric="jaccard")
    else:
        judge = NoveltyJudge(embedder.embed, texts, ctx.cfg.min_novelty, corpus_embeddings=ctx.corpus_embeddings)
    if ctx.previous:
        judge.add_accepted(ctx.previous)
    return judge


register_judge(JudgeSpec("novelty", _build, gate=_novelty_gate, rank=20, roles=("novelty",),
                         weight_setting="novelty_weight", threshold_setting="min_novelty"))
