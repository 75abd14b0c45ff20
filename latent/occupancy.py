"""The occupancy map of the latent space: density, darkness, envelope (zones and samplers beside it).

A latent point is **dark** when its k-th-nearest-neighbour distance to the corpus latents
exceeds what any corpus text reaches (the largest leave-one-out kNN distance among them),
while it lies inside the data's envelope: within the `envelope_quantile` Mahalanobis radius
of the corpus latents in their principal subspace. Outside the envelope decoding is noise.

A second, parametric view of the same question: a scikit-learn GaussianMixture fitted on the
PCA-whitened corpus latents (components chosen by BIC); a point is GMM-dark when its
log-likelihood is below that of every corpus text. `calibrate` measures how often real texts
never trained on (held-out) are called dark by each view: the false-dark rate.

kNN search is scikit-learn's NearestNeighbors (exact; the corpus is thousands of points, an
ANN index would only add error); clustering is its KMeans.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestNeighbors

from latent.config import SampleConfig


@dataclass
class OccupancyMap:
    latents: np.ndarray  # (N, D) corpus latents
    pca: PCA  # principal subspace of the corpus latents
    radius: float  # envelope: Mahalanobis radius (whitened PCA space) at envelope_quantile
    threshold: float  # dark when k-NN distance > threshold (a high quantile of the corpus texts' own)
    k: int
    nn: NearestNeighbors
    gmm: GaussianMixture | None = None  # density model on the whitened PCA coordinates
    gmm_threshold: float = float("-inf")  # GMM-dark when log-likelihood < this (min over corpus)

    @classmethod
    def fit(cls, latents: np.ndarray, cfg: SampleConfig, max_components: int = 32) -> "OccupancyMap":
        latents = np.asarray(latents, dtype=np.float32)
        n = len(latents)
        if n < cfg.k + 2:
            raise ValueError(f"need at least {cfg.k + 2} corpus texts to map the latent space, got {n}; use a larger corpus or a smaller sample.k")
        pca = PCA(n_components=min(max_components, n - 1, latents.shape[1]), whiten=True, random_state=0).fit(latents)
        maha = np.linalg.norm(pca.transform(latents), axis=1)
        radius = float(np.quantile(maha, cfg.envelope_quantile))
        nn = NearestNeighbors(n_neighbors=cfg.k + 1).fit(latents)
        dist, _ = nn.kneighbors(latents)  # column 0 is the point itself
        threshold = float(np.quantile(dist[:, cfg.k], cfg.dark_quantile))
        gmm, gmm_threshold = fit_gmm(pca.transform(latents))
        return cls(latents, pca, radius, threshold, cfg.k, nn, gmm, gmm_threshold)

    def knn_distance(self, points: np.ndarray) -> np.ndarray:
        """k-th nearest corpus latent distance of each point (N,)."""
        dist, _ = self.nn.kneighbors(np.asarray(points, dtype=np.float32), n_neighbors=self.k)
        return dist[:, -1]

    def density_score(self, points: np.ndarray) -> np.ndarray:
        """kNN distance / dark threshold: > 1 means darker than sample.dark_quantile of the corpus texts."""
        return self.knn_distance(points) / self.threshold

    def inside(self, points: np.ndarray) -> np.ndarray:
        return np.linalg.norm(self.pca.transform(points), axis=1) <= self.radius

    def is_dark(self, points: np.ndarray) -> np.ndarray:
        """kNN view: darker than the corpus texts (sample.dark_quantile), inside the envelope (N,) bool."""
        return (self.density_score(points) > 1) & self.inside(points)

    def gmm_loglik(self, points: np.ndarray) -> np.ndarray:
        """Log-likelihood of each point under the GMM on whitened PCA coordinates (N,)."""
        if self.gmm is None:
            raise ValueError("this occupancy map has no GMM; build it with OccupancyMap.fit")
        return self.gmm.score_samples(self.pca.transform(np.asarray(points, dtype=np.float32)))

    def gmm_dark(self, points: np.ndarray) -> np.ndarray:
        """GMM view: less likely than every corpus text, and inside the envelope (N,) bool."""
        return (self.gmm_loglik(points) < self.gmm_threshold) & self.inside(points)

    def calibrate(self, heldout: np.ndarray) -> dict:
        """False-dark rate: the share of held-out real texts' latents (never trained on) that
        each view calls dark. Real texts of the domain should mostly not be dark."""
        heldout = np.asarray(heldout, dtype=np.float32)
        if len(heldout) == 0:
            return {"heldout": 0, "false_dark_rate": None, "false_dark_rate_gmm": None, "outside_rate": None}
        inside = self.inside(heldout)
        return {
            "heldout": int(len(heldout)),
            "false_dark_rate": float(self.is_dark(heldout).mean()),
            "false_dark_rate_gmm": float(self.gmm_dark(heldout).mean()) if self.gmm is not None else None,
            "outside_rate": float((~inside).mean()),
            "density_score_median": float(np.median(self.density_score(heldout))),
        }

    def nearest(self, points: np.ndarray, n: int = 3) -> np.ndarray:
        _, idx = self.nn.kneighbors(np.asarray(points, dtype=np.float32), n_neighbors=n)
        return idx

    def envelope_samples(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Gaussian samples in the principal subspace, kept inside the envelope radius."""
        d = self.pca.n_components_
        out = []
        while sum(len(o) for o in out) < n:
            w = rng.standard_normal((max(n, 64) * 2, d))
            w = w[np.linalg.norm(w, axis=1) <= self.radius]
            out.append(w)
        w = np.concatenate(out)[:n]
        return self.pca.inverse_transform(w).astype(np.float32)


def fit_gmm(w: np.ndarray, max_components: int = 16, seed: int = 0) -> tuple[GaussianMixture, float]:
    """Diagonal GaussianMixture on whitened coordinates w (N, d), components by BIC over 1, 2, 4, ...
    (diagonal: a full covariance per component in 32 dimensions overfits a few thousand texts).
    Returns the model and the lowest log-likelihood any corpus point reaches."""
    best, best_bic = None, np.inf
    c = 1
    while c <= min(max_components, max(1, len(w) // 20)):
        g = GaussianMixture(c, covariance_type="diag", reg_covar=1e-3, n_init=1, random_state=seed).fit(w)
        bic = g.bic(w)
        if bic < best_bic:
            best, best_bic = g, bic
        c *= 2
    return best, float(best.score_samples(w).min())
