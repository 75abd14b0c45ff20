"""2-D views of one generation's latent space: PCA of the corpus latents (always) and UMAP (when
umap-learn is importable). Each view is fitted on the corpus points only and applied to the rest,
so held-out texts, dark probes, zone centres and candidates land where the corpus map puts them."""
from __future__ import annotations

import logging

import numpy as np
from sklearn.decomposition import PCA

log = logging.getLogger(__name__)


def _pca(parts: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    corpus = parts["corpus"]
    k = min(2, corpus.shape[1], len(corpus))
    pca = PCA(n_components=k, random_state=0).fit(corpus)

    def proj(a):
        xy = pca.transform(a) if len(a) else np.zeros((0, k))
        return np.pad(xy, ((0, 0), (0, 2 - k)))  # (N, 2) even for a 1-D latent

    ev = pca.explained_variance_ratio_
    about = "PCA of the corpus latents; axes explain " + ", ".join(f"{v:.0%}" for v in ev) + " of the variance"
    return {name: proj(a) for name, a in parts.items()}, about


def _umap(parts: dict[str, np.ndarray], seed: int) -> tuple[dict[str, np.ndarray], str] | None:
    try:
        import umap  # lazy: optional dependency (pip install umap-learn)
    except ImportError:
        return None
    corpus = parts["corpus"]
    if len(corpus) < 5:
        return None
    try:
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(corpus) - 1), random_state=seed).fit(corpus)
        out = {name: (reducer.embedding_ if name == "corpus" else reducer.transform(a)) if len(a) else np.zeros((0, 2))
               for name, a in parts.items()}
    except Exception as e:  # noqa: BLE001 - an optional view never stops the report
        log.warning("UMAP view skipped: %s: %s", type(e).__name__, e)
        return None
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}, "UMAP fitted on the corpus latents (umap-learn)"


def projections(parts: dict[str, np.ndarray], use_umap: bool = True, seed: int = 0) -> dict[str, tuple[dict, str]]:
    """{view name: ({part: (N, 2) array}, what the view is)}; parts: corpus, heldout, probes, zones, cands."""
    views = {"PCA": _pca(parts)}
    if use_umap:
        u = _umap(parts, seed)
        if u is not None:
            views["UMAP"] = u
    return views
