"""The occupancy map of the latent space: density, darkness, envelope (zones and samplers beside it).

A latent point is **dark** when its k-th-nearest-neighbour distance to the corpus latents
exceeds what the corpus texts themselves reach (the `dark_quantile` of their leave-one-out
kNN distances), while it lies inside the data's envelope: within the `envelope_quantile`
Mahalanobis radius of the corpus latents in their principal subspace. Outside the envelope
decoding is noise.

A second, parametric view of the same question: a scikit-learn GaussianMixture fitted on the
PCA-whitened corpus latents (components chosen by BIC); a point is GMM-dark when its
log-likelihood is below that of every corpus text. `calibrate` measures how often real texts
never trained on (held-out) are called dark by each view: the false-dark rate.

kNN search runs on FAISS. Up to `sample.exact_max`
corpus latents it is exact (IndexFlatL2: the same neighbours scikit-learn's NearestNeighbors
gives, the default maths corpus is ~17,000 texts); above, an inverted-file index with 8-bit
scalar-quantised lists (IVF-SQ8), whose `nprobe` is raised at fit time until the recall@k
measured against brute-force search on calibration queries reaches `sample.min_recall`
(measured, never assumed: `stats`). HNSW, IVF-Flat and IVF-PQ were measured too and lost
(docs/bench-map.md). Candidates from either index are re-ranked by exact float64 distances, so distances are Euclidean (FAISS returns squared
float32 ones) in the same units as before, and the exact path matches scikit-learn to ~1e-9.

At scale three things are done on random subsets instead of all N corpus latents: the dark
threshold's leave-one-out quantile (`sample.threshold_sample` corpus points queried against
the full index, self excluded), and the PCA and GMM fits (`sample.fit_sample`); the envelope
radius and the GMM threshold are still taken over every corpus latent (one cheap pass).

`save(folder)` / `OccupancyMap.load(folder)` let the loop fit once in its map stage and reuse
the map in its sample stage: latents.npy, occupancy.json (figures and settings), occupancy.npz
(PCA, GMM, IVF list assignments) and, for the IVF index, its trained centroids (ivf.faiss,
no vectors: they are re-added from latents.npy). No pickle.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib.ivf_tools import add_preassigned
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from common.errors import ConfigError
from latent.config import ENVELOPES, SampleConfig

FORMAT = 1  # occupancy.json "format": bump when the saved layout changes
BATCH = 4096  # queries per FAISS search call and per exact re-ranking block (bounds memory)
MARGIN = 4  # extra candidates fetched beyond k, re-ranked in float64 (ties, float32 rounding)
# Settings a saved map was fitted with; `load(folder, cfg)` refuses a map fitted with others.
FIT_SETTINGS = ("k", "dark_quantile", "envelope_quantile", "exact_max", "threshold_sample", "fit_sample",
                "min_recall", "ivf_nlist")


def set_threads(n: int | None = None) -> int:
    """FAISS's OpenMP threads: `n`, or the CPUs this process may run on (cgroup/affinity aware,
    where FAISS's own default counts every core of the host and oversubscribes a container)."""
    if n is None or n <= 0:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    faiss.omp_set_num_threads(int(n))
    return int(n)


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def auto_nlist(n: int) -> int:
    """IVF lists for n corpus latents: about sqrt(n) (1,000 at 1M, measured in docs/bench-map.md),
    at most 4096 (training the coarse k-means grows as nlist^2) and n/39 (FAISS's minimum of 39
    training points a list)."""
    return int(max(1, min(4096, round(np.sqrt(n)), n // 39)))


@dataclass
class OccupancyMap:
    latents: np.ndarray  # (N, D) corpus latents, float32
    pca: PCA  # principal subspace of the corpus latents
    radius: float  # envelope: Mahalanobis radius (whitened PCA space) at envelope_quantile
    threshold: float  # dark when k-NN distance > threshold (a high quantile of the corpus texts' own)
    k: int
    index: faiss.Index  # IndexFlatL2 (exact) or IndexIVFScalarQuantizer over `latents`, ids = row numbers
    gmm: GaussianMixture | None = None  # density model on the whitened PCA coordinates
    gmm_threshold: float = float("-inf")  # GMM-dark when log-likelihood < this (min over corpus)
    stats: dict = field(default_factory=dict)  # how it was built: index, nprobe, measured recall, samples, seconds
    settings: dict = field(default_factory=dict)  # the SampleConfig values it was fitted with (FIT_SETTINGS)
    assign: np.ndarray | None = None  # (N,) IVF list of each latent (saved, so load re-adds without re-assigning)

    # ------------------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, latents: np.ndarray, cfg: SampleConfig, max_components: int = 32, seed: int = 0,
            threads: int | None = None) -> "OccupancyMap":
        """Fit the map on corpus latents (N, D). `seed` draws the subsets used at scale (and the
        recall calibration queries); at N <= sample.threshold_sample and sample.fit_sample nothing
        is subsampled and the map is the exact one."""
        set_threads(threads)
        latents = _f32(latents)
        n, d = latents.shape
        if n < cfg.k + 2:
            raise ValueError(f"need at least {cfg.k + 2} corpus texts to map the latent space, got {n}; use a larger corpus or a smaller sample.k")
        nlist = cfg.ivf_nlist or auto_nlist(n)
        if n > cfg.exact_max and nlist > n // 39:
            raise ConfigError(f"sample.ivf_nlist={nlist} needs at least {39 * nlist} corpus latents to train "
                              f"(FAISS: 39 a list), got {n}; lower sample.ivf_nlist or set it to 0 (auto)")
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        fit_rows = _subset(n, cfg.fit_sample, rng)
        fit_x = latents if fit_rows is None else latents[fit_rows]
        pca = PCA(n_components=min(max_components, len(fit_x) - 1, d), whiten=True, random_state=0).fit(fit_x)
        w = _transform(pca, latents)  # (N, c) whitened coordinates
        radius = float(np.quantile(np.linalg.norm(w, axis=1), cfg.envelope_quantile))
        gmm, _ = fit_gmm(w if fit_rows is None else w[fit_rows], seed=0)
        gmm_threshold = float(_score(gmm, w).min())  # lowest log-likelihood any corpus text reaches
        del w
        t_density = time.perf_counter() - t0

        t0 = time.perf_counter()
        stats: dict = {"n": n, "dim": d}
        if n <= cfg.exact_max:
            index = faiss.IndexFlatL2(d)
            index.add(latents)
            assign = None
            stats.update(index="flat", recall=1.0)
        else:
            quantizer = faiss.IndexFlatL2(d)
            # 8-bit scalar-quantised vectors in the lists: a quarter of IVF-Flat's memory and of the
            # bytes each query streams, the recall of IVF-Flat once re-ranked (docs/bench-map.md)
            index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit)
            index.cp.seed = int(rng.integers(2**31))
            train = latents[np.sort(rng.choice(n, min(n, 40 * nlist), replace=False))]
            index.train(train)
            del train
            assign = _assign(index, latents)
            add_preassigned(index, latents, assign)
            stats.update(index="ivf-sq8", nlist=nlist)
        t_index = time.perf_counter() - t0
        occ = cls(latents, pca, radius, float("nan"), cfg.k, index, gmm, gmm_threshold, stats,
                  {s: getattr(cfg, s) for s in FIT_SETTINGS}, assign)
        t0 = time.perf_counter()
        if assign is not None:
            occ._tune_nprobe(cfg.min_recall, rng)
        t_recall = time.perf_counter() - t0

        t0 = time.perf_counter()
        rows = _subset(n, cfg.threshold_sample, rng)
        rows = np.arange(n) if rows is None else rows
        loo = occ.loo_distance(rows)
        occ.threshold = float(np.quantile(loo, cfg.dark_quantile))
        stats.update(threshold_sample=len(rows), fit_sample=len(fit_x),
                     seconds={"density": t_density, "index": t_index, "recall": t_recall,
                              "threshold": time.perf_counter() - t0})
        return occ

    def _tune_nprobe(self, min_recall: float, rng: np.random.Generator, n_queries: int = 128) -> None:
        """Raise the IVF's nprobe (4, 6, 9, 14, ... x1.5) until recall@k against brute-force search
        reaches `min_recall` on both query kinds the map serves: corpus latents (the threshold's
        leave-one-out search, k+1 with self) and envelope samples (the samplers' probes)."""
        n = len(self.latents)
        rows = rng.choice(n, min(n, n_queries), replace=False)
        corpus = self.latents[rows]
        probes = self.envelope_samples(n_queries, rng)
        truth = {"corpus": _brute_force(corpus, self.latents, self.k + 1), "envelope": _brute_force(probes, self.latents, self.k)}
        nlist = self.index.nlist
        nprobe = min(4, nlist)
        while True:
            self.index.nprobe = nprobe
            # self is always found (its own list is probed first): left out, it would flatter the recall
            rec = {"corpus": _recall(self.index.search(corpus, self.k + 1)[1], truth["corpus"], exclude=rows),
                   "envelope": _recall(self.index.search(probes, self.k)[1], truth["envelope"])}
            if min(rec.values()) >= min_recall or nprobe >= nlist:
                break
            nprobe = min(int(np.ceil(1.5 * nprobe)), nlist)
        self.stats.update(nprobe=nprobe, recall=min(rec.values()), recall_corpus=rec["corpus"],
                          recall_envelope=rec["envelope"], recall_queries=2 * len(corpus))

    # ---------------------------------------------------------------------------- search
    def kneighbors(self, points: np.ndarray, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(distances (B, n), corpus row indices (B, n)) of each point's n nearest corpus latents
        (default k), nearest first; Euclidean distances, exact (float64) for the neighbours found.
        Replaces scikit-learn's `NearestNeighbors.kneighbors(points, n)` (the old `.nn`)."""
        n = self.k if n is None else n
        points = _f32(np.atleast_2d(points))
        if not 1 <= n <= len(self.latents):
            raise ValueError(f"n must be in [1, {len(self.latents)}] (corpus latents), got {n}")
        if len(points) == 0:
            return np.zeros((0, n)), np.zeros((0, n), dtype=np.int64)
        want = min(n + MARGIN, len(self.latents))
        dist, idx = [], []
        for s in range(0, len(points), BATCH):
            q = points[s:s + BATCH]
            _, cand = self.index.search(q, want)
            dd, ii = self._rerank(q, cand)
            dist.append(dd[:, :n])
            idx.append(ii[:, :n])
        return np.concatenate(dist), np.concatenate(idx)

    def loo_distance(self, rows: np.ndarray) -> np.ndarray:
        """Leave-one-out k-NN distance of corpus latents `rows` (M,): the k-th nearest other
        corpus latent (a duplicate text counts as a neighbour at distance 0, as before)."""
        want = min(self.k + 1 + MARGIN, len(self.latents))
        out = np.empty(len(rows))
        for s in range(0, len(rows), BATCH):
            r = rows[s:s + BATCH]
            q = self.latents[r]
            _, cand = self.index.search(q, want)
            dd, ii = self._rerank(q, cand)
            # drop self where found; where not (an approximate miss, or k+1 duplicates tied at 0),
            # the farthest candidate is dropped instead, which leaves the same k-th distance
            pos = np.where((ii == r[:, None]).any(1), (ii == r[:, None]).argmax(1), want - 1)
            keep = np.ones_like(ii, dtype=bool)
            keep[np.arange(len(r)), pos] = False
            out[s:s + len(r)] = dd[keep].reshape(len(r), want - 1)[:, self.k - 1]
        return out

    def _rerank(self, q: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact float64 distances of candidates (B, K) to queries (B, D), sorted; -1 (not found) last."""
        missing = cand < 0
        diff = self.latents[np.where(missing, 0, cand)].astype(np.float64) - q[:, None, :].astype(np.float64)
        dist = np.sqrt(np.einsum("bkd,bkd->bk", diff, diff))  # (B, K)
        dist[missing] = np.inf
        order = np.argsort(dist, axis=1, kind="stable")
        return np.take_along_axis(dist, order, 1), np.take_along_axis(cand, order, 1)

    def knn_distance(self, points: np.ndarray) -> np.ndarray:
        """k-th nearest corpus latent distance of each point (N,)."""
        return self.kneighbors(points, self.k)[0][:, -1]

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
        """Row indices (B, n) of each point's n nearest corpus latents."""
        return self.kneighbors(points, n)[1]

    def envelope_samples(self, n: int, rng: np.random.Generator, envelope: str = "ppca") -> np.ndarray:
        """Gaussian samples of the corpus latents' probabilistic PCA (the model sklearn's PCA fits):
        whitened principal coordinates kept inside the envelope radius and, with `envelope` "ppca",
        isotropic noise of the discarded directions' mean variance (`pca.noise_variance_`) in the rest
        of the space. "subspace" leaves that noise out: every sample then sits at the corpus mean in
        the discarded directions, nearer the corpus texts than they lie to each other, so a corpus
        with much variance outside the principal subspace (molecules: 28% outside 32 components)
        shows no dark sample at all."""
        if envelope not in ENVELOPES:
            raise ConfigError(f"sample.envelope={envelope!r}: choose from {', '.join(ENVELOPES)}")
        d = self.pca.n_components_
        out = []
        while sum(len(o) for o in out) < n:
            w = rng.standard_normal((max(n, 64) * 2, d))
            w = w[np.linalg.norm(w, axis=1) <= self.radius]
            out.append(w)
        w = np.concatenate(out)[:n]
        pts = self.pca.inverse_transform(w).astype(np.float32)
        if envelope == "ppca" and self.pca.noise_variance_ > 0:
            noise = rng.standard_normal(pts.shape).astype(np.float32) * np.float32(np.sqrt(self.pca.noise_variance_))
            basis = self.pca.components_.astype(np.float32)  # orthonormal rows
            pts += noise - (noise @ basis.T) @ basis  # the discarded directions only: w stays as drawn
        return pts

    # ------------------------------------------------------------------------ save, load
    def save(self, folder: str | Path) -> None:
        """Write the map into `folder` (latents.npy, occupancy.json, occupancy.npz, ivf.faiss for
        the IVF index) so `OccupancyMap.load(folder)` gives the same answers without a refit."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "latents.npy", self.latents)
        arrays = {f"pca_{a}": np.asarray(getattr(self.pca, a)) for a in _PCA_ARRAYS}
        if self.gmm is not None:
            arrays.update({f"gmm_{a}": np.asarray(getattr(self.gmm, a)) for a in _GMM_ARRAYS})
        if self.assign is not None:
            arrays["assign"] = self.assign
            # the trained centroids only: the vectors are re-added from latents.npy on load
            empty = faiss.clone_index(self.index)
            empty.reset()
            faiss.write_index(empty, str(folder / "ivf.faiss"))
        np.savez(folder / "occupancy.npz", **arrays)
        meta = {"format": FORMAT, "k": self.k, "threshold": self.threshold, "radius": self.radius,
                "gmm_threshold": self.gmm_threshold, "gmm_covariance_type": None if self.gmm is None else self.gmm.covariance_type,
                "nprobe": getattr(self.index, "nprobe", None), "settings": self.settings, "stats": self.stats}
        (folder / "occupancy.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: str | Path, cfg: SampleConfig | None = None, threads: int | None = None) -> "OccupancyMap":
        """The map `save(folder)` wrote. With `cfg`, refuse one fitted with other map settings."""
        set_threads(threads)
        folder = Path(folder)
        for name in ("latents.npy", "occupancy.json", "occupancy.npz"):
            if not (folder / name).is_file():
                raise ConfigError(f"{folder} holds no saved occupancy map ({name} missing); fit one with "
                                  "OccupancyMap.fit(latents, cfg).save(folder)")
        meta = json.loads((folder / "occupancy.json").read_text())
        if meta.get("format") != FORMAT:
            raise ConfigError(f"{folder}/occupancy.json has format {meta.get('format')!r}, this code reads {FORMAT}; refit the map")
        if cfg is not None:
            diff = [f"sample.{s} {meta['settings'].get(s)!r} -> {getattr(cfg, s)!r}" for s in FIT_SETTINGS
                    if meta["settings"].get(s) != getattr(cfg, s)]
            if diff:
                raise ConfigError(f"the occupancy map in {folder} was fitted with other settings ({'; '.join(diff)}); refit it")
        latents = _f32(np.load(folder / "latents.npy", allow_pickle=False))
        with np.load(folder / "occupancy.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        pca = PCA(n_components=int(arrays["pca_n_components_"]), whiten=True, random_state=0)
        for a in _PCA_ARRAYS:
            setattr(pca, a, arrays[f"pca_{a}"].item() if arrays[f"pca_{a}"].ndim == 0 else arrays[f"pca_{a}"])
        gmm = None
        if "gmm_weights_" in arrays:
            gmm = GaussianMixture(len(arrays["gmm_weights_"]), covariance_type=meta["gmm_covariance_type"])
            for a in _GMM_ARRAYS:
                setattr(gmm, a, arrays[f"gmm_{a}"].item() if arrays[f"gmm_{a}"].ndim == 0 else arrays[f"gmm_{a}"])
        assign = arrays.get("assign")
        if assign is None:
            index = faiss.IndexFlatL2(latents.shape[1])
            index.add(latents)
        else:
            if len(assign) != len(latents):
                raise ConfigError(f"{folder}: {len(assign)} IVF assignments for {len(latents)} latents; refit the map")
            index = faiss.read_index(str(folder / "ivf.faiss"))
            add_preassigned(index, latents, np.ascontiguousarray(assign, dtype=np.int64))
            index.nprobe = int(meta["nprobe"])
        return cls(latents, pca, float(meta["radius"]), float(meta["threshold"]), int(meta["k"]), index, gmm,
                   float(meta["gmm_threshold"]), meta["stats"], meta["settings"], assign)


# what PCA.transform / inverse_transform and GaussianMixture.score_samples read (saved as arrays, no pickle)
_PCA_ARRAYS = ("n_components_", "components_", "mean_", "explained_variance_", "explained_variance_ratio_",
               "singular_values_", "noise_variance_", "n_features_in_", "n_samples_")
_GMM_ARRAYS = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_", "converged_", "n_iter_",
               "lower_bound_", "n_features_in_")


def _subset(n: int, cap: int, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted random rows, `cap` of n; None (all rows) when n <= cap."""
    return None if n <= cap else np.sort(rng.choice(n, cap, replace=False))


def _transform(pca: PCA, x: np.ndarray) -> np.ndarray:
    return np.concatenate([pca.transform(x[s:s + 65536]) for s in range(0, len(x), 65536)])


def _score(gmm: GaussianMixture, w: np.ndarray) -> np.ndarray:
    return np.concatenate([gmm.score_samples(w[s:s + 65536]) for s in range(0, len(w), 65536)])


def _assign(index: faiss.IndexIVF, x: np.ndarray) -> np.ndarray:
    """The IVF list of each row of x (N,), int64, as index.add would assign it."""
    return np.concatenate([index.quantizer.search(x[s:s + 65536], 1)[1][:, 0] for s in range(0, len(x), 65536)])


def _brute_force(q: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """Exact k nearest rows of x for each query (B, k), without a second copy of x (faiss.knn)."""
    return faiss.knn(_f32(q), x, k)[1]


def _recall(found: np.ndarray, truth: np.ndarray, exclude: np.ndarray | None = None) -> float:
    """recall@k: the share of the true k nearest neighbours found (both (B, k)); `exclude` (B,):
    a row's own id, left out of both (a corpus point's search finds itself)."""
    out = []
    for i, (a, b) in enumerate(zip(found, truth)):
        a, b = set(a.tolist()), set(b.tolist())
        if exclude is not None:
            a.discard(int(exclude[i]))
            b.discard(int(exclude[i]))
        out.append(len(a & b) / len(b) if b else 1.0)
    return float(np.mean(out))


def fit_gmm(w: np.ndarray, max_components: int = 16, seed: int = 0) -> tuple[GaussianMixture, float]:
    """Diagonal GaussianMixture on whitened coordinates w (N, d), components by BIC over 1, 2, 4, ...
    (diagonal: a full covariance per component in 32 dimensions overfits a few thousand texts).
    Returns the model and the lowest log-likelihood any point of w reaches."""
    best, best_bic = None, np.inf
    c = 1
    while c <= min(max_components, max(1, len(w) // 20)):
        g = GaussianMixture(c, covariance_type="diag", reg_covar=1e-3, n_init=1, random_state=seed).fit(w)
        bic = g.bic(w)
        if bic < best_bic:
            best, best_bic = g, bic
        c *= 2
    return best, float(best.score_samples(w).min())
