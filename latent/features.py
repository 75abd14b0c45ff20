"""The feature dictionary over the latent space and its dark combinations.

A geometric hole (a latent far from every corpus latent, `latent.occupancy`) is one kind of dark
zone. Another is a **combination of known features that no corpus text activates together**:
each feature common, the pair (almost) never seen at once. If latents store many features as
nearly orthogonal directions (superposition), that is where compositional novelty would live.

The dictionary is a TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse
autoencoders"): every corpus latent, centred and scaled to unit mean square norm, is written as
`active` non-negative activations of `n_features` unit directions (atoms). It was chosen over
scikit-learn's MiniBatchDictionaryLearning by measurement (`python run.py bench features`,
docs/features.md): at about the same sparsity both reconstruct the maths latents as well (relative
error 0.087 at 8 active features against 0.085 at 9.5), but the autoencoder fits in about a
second where the lasso dictionary takes 6-24 s, and it encodes a latent with one matrix product
and a top-k (3-4 s a million latents) where the lasso solves one problem per latent (1,000-2,000 s
a million): the map must code every corpus latent, up to a million.

Co-activation is counted over every corpus latent's active set. A pair (i, j) of features each
active in at least `min_freq` of the corpus is a **dark combination** when its count is improbable
under independence: Poisson lower tail P(X <= observed | expected) <= `combo_p`.
Pairs whose atoms point against each other (cosine < -0.5) are left out: their sum cancels, so
composing them writes neither. Triples are not tested: with `active` (8) of a few hundred
features active a text, a triple's expected count is below one at these corpus sizes, so no
absence of a triple is significant.

`save(folder)` / `FeatureDictionary.load(folder)`: features.npz (weights, codes of the corpus
latents, combinations) and features.json (settings, figures). No pickle.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.stats import poisson

from latent.config import FeatureConfig

FORMAT = 2  # features.json "format": 2 added the co-activation counts
BATCH = 8192  # latents encoded at once (bounds memory at a million latents)
CANCEL_COSINE = -0.5  # atoms this opposed are no combination: their sum cancels
MAX_PASSES = 100  # the fit's steps are capped at this many passes over the corpus latents


@dataclass
class FeatureDictionary:
    mean: np.ndarray  # (D,) corpus latent mean: codes are measured from it
    scale: float  # root mean square norm of the centred corpus latents: activations are in these units
    encoder: np.ndarray  # (D, K)
    bias: np.ndarray  # (K,)
    atoms: np.ndarray  # (K, D) unit rows
    active: int
    top: np.ndarray  # (N, active) the active features of each corpus latent, strongest first
    top_values: np.ndarray  # (N, active) their activations
    freq: np.ndarray  # (K,) share of corpus latents in which each feature is active
    typical: np.ndarray  # (K,) median activation of each feature where active (0 where never active)
    combos: np.ndarray  # (M, 2) dark combinations (or, when none is significant, the least co-active pairs)
    combo_expected: np.ndarray  # (M,) co-activation count expected under independence
    combo_observed: np.ndarray  # (M,) co-activation count in the corpus
    combo_p: np.ndarray  # (M,) Poisson lower-tail probability of the observed count
    floor: float = 0.0  # a slot is active from this share of its code's strongest activation (FeatureConfig.floor)
    co: np.ndarray | None = None  # (K, K) co-activation counts over the corpus (symmetric)
    slots: float = 1.0  # E[c(c-1)] / E[c]^2 of the corpus's active counts (the independence expectation's factor)
    stats: dict = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return len(self.atoms)

    @property
    def significant(self) -> int:
        """How many of `combos` are dark combinations at the fitted combo_p (they come first)."""
        return int(self.stats.get("dark_combinations", 0))

    # ------------------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, latents: np.ndarray, cfg: FeatureConfig, seed: int = 0) -> "FeatureDictionary":
        t0 = t_start = time.perf_counter()
        x = np.ascontiguousarray(latents, dtype=np.float32)
        n, d = x.shape
        k_feat = cfg.n_features
        if n < 2:
            raise ValueError(f"need at least 2 corpus latents to fit a feature dictionary, got {n}")
        mean = x.mean(0)
        # in blocks: a centred copy of a million latents would double the map stage's peak memory
        sq = sum(float(((x[a : a + BATCH] - mean) ** 2).sum()) for a in range(0, n, BATCH))
        scale = float(np.sqrt(sq / n)) or 1.0
        g = torch.Generator().manual_seed(int(seed))
        xt = torch.from_numpy(x)
        mu = torch.from_numpy(mean)
        # atoms start at corpus latents (centred, unit norm): a random start leaves many features never active
        rows = torch.randperm(n, generator=g)[:k_feat]
        init = (xt[rows] - mu) / scale
        if len(rows) < k_feat:
            init = torch.cat([init, torch.randn(k_feat - len(rows), d, generator=g)])
        init = init / init.norm(dim=1, keepdim=True).clamp_min(1e-8)
        atoms = torch.nn.Parameter(init.clone())
        enc = torch.nn.Parameter(init.T.contiguous().clone())
        bias = torch.nn.Parameter(torch.zeros(k_feat))
        # Codes are measured from the corpus mean, fixed: a learned centre (the usual SAE pre-bias) drifts
        # until one feature stands for the offset and is active in most texts, which hides which
        # features co-occur (measured on planted features, tests/test_features.py)
        opt = torch.optim.Adam([atoms, enc, bias], lr=cfg.lr)
        bs = min(n, cfg.batch_size)
        k = cfg.active
        # at most MAX_PASSES over the corpus: more passes over a small corpus only fit its noise
        steps = min(cfg.steps, MAX_PASSES * -(-n // bs))
        for _ in range(steps):
            xb = (xt[torch.randint(0, n, (bs,), generator=g)] - mu) / scale
            a = torch.relu(xb @ enc + bias)
            v, i = a.topk(k, dim=1)
            code = torch.zeros_like(a).scatter_(1, i, v)
            loss = ((code @ atoms - xb) ** 2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                atoms /= atoms.norm(dim=1, keepdim=True).clamp_min(1e-8)
        t_fit = time.perf_counter() - t0
        fd = cls(mean.astype(np.float32), scale, enc.detach().numpy().copy(), bias.detach().numpy().copy(),
                 atoms.detach().numpy().copy(), k, np.zeros((0, k), np.int32), np.zeros((0, k), np.float32),
                 np.zeros(k_feat), np.zeros(k_feat, np.float32), np.zeros((0, 2), np.int32), np.zeros(0),
                 np.zeros(0, np.int64), np.zeros(0), cfg.floor)
        t0 = time.perf_counter()
        fd.top, fd.top_values, err = fd._encode_all(x)
        fd._count(cfg)
        fd.stats["seconds"] = time.perf_counter() - t_start
        fd.stats.update({"n": n, "dim": d, "n_features": k_feat, "active": k, "floor": cfg.floor,
                         "active_mean": float(fd.on(fd.top_values).sum(1).mean()), "steps": steps,
                         "batch_size": bs, "relative_error": err, "fit_seconds": t_fit,
                         "count_seconds": time.perf_counter() - t0, "seed": int(seed)})
        return fd

    def _encode_all(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Codes of every row of x, and the share of the centred latents' energy they leave out."""
        tops, vals, res, tot = [], [], 0.0, 0.0
        for a in range(0, len(x), BATCH):
            xb = (x[a : a + BATCH] - self.mean) / self.scale
            t, v = self._code(xb)
            rec = np.einsum("nk,nkd->nd", v, self.atoms[t])
            res += float(((xb - rec) ** 2).sum())
            tot += float((xb**2).sum())
            tops.append(t), vals.append(v)
        return np.concatenate(tops), np.concatenate(vals), res / max(tot, 1e-12)

    def _code(self, xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = np.maximum(xb @ self.encoder + self.bias, 0)
        t = np.argpartition(-a, self.active - 1, axis=1)[:, : self.active]
        v = np.take_along_axis(a, t, axis=1)
        order = np.argsort(-v, axis=1, kind="stable")
        return np.take_along_axis(t, order, axis=1).astype(np.int32), np.take_along_axis(v, order, axis=1).astype(np.float32)

    def _count(self, cfg: FeatureConfig) -> None:
        """Feature frequencies, typical activations, co-activation counts and the dark combinations."""
        n, kf = len(self.top), self.n_features
        on = self.on(self.top_values)
        feats = np.where(on, self.top, -1)
        counts = np.bincount(feats[on], minlength=kf)
        self.freq = counts / n
        order = np.argsort(feats[on], kind="stable")
        vals = self.top_values[on][order]
        starts = np.concatenate([[0], np.cumsum(counts)])
        self.typical = np.array([np.median(vals[starts[f] : starts[f + 1]]) if counts[f] else 0.0
                                 for f in range(kf)], dtype=np.float32)
        keys = []  # lo * kf + hi of every active pair of every code, counted in one pass
        for a in range(self.active):
            for b in range(a + 1, self.active):
                both = on[:, a] & on[:, b]
                lo = np.minimum(self.top[both, a], self.top[both, b]).astype(np.int64)
                hi = np.maximum(self.top[both, a], self.top[both, b]).astype(np.int64)
                keys.append(lo * kf + hi)
        co = np.bincount(np.concatenate(keys) if keys else np.zeros(0, np.int64), minlength=kf * kf).reshape(kf, kf)
        self.co = (co + co.T).astype(np.int32)
        i, j = np.triu_indices(kf, 1)
        frequent = np.flatnonzero(self.freq >= max(cfg.min_freq, 1e-12))
        keep = np.isin(i, frequent) & np.isin(j, frequent)
        keep &= np.einsum("nd,nd->n", self.atoms[i], self.atoms[j]) > CANCEL_COSINE
        i, j = i[keep], j[keep]
        # a text holds c features, so given one the other has c - 1 of the c slots its frequency counts:
        # with c varying from text to text, E[c(c-1)] / E[c]^2 ((k-1)/k when every code holds k)
        c = on.sum(1).astype(np.float64)
        slots = self.slots = float((c * (c - 1)).mean() / max(c.mean() ** 2, 1e-12))
        expected = n * self.freq[i] * self.freq[j] * slots
        observed = co[i, j]
        p = poisson.cdf(observed, expected)
        rank = np.lexsort((-expected, p))[: cfg.max_combos]
        self.combos = np.stack([i[rank], j[rank]], axis=1).astype(np.int32) if len(rank) else np.zeros((0, 2), np.int32)
        self.combo_expected, self.combo_observed, self.combo_p = expected[rank], observed[rank], p[rank]
        dark = p <= cfg.combo_p
        self.stats.update({"dead_features": int((counts == 0).sum()), "frequent_features": int(len(frequent)),
                           "tested_pairs": int(len(i)), "dark_combinations": int(min(dark.sum(), cfg.max_combos)),
                           "dark_combinations_all": int(dark.sum()),
                           "never_together": int((dark & (observed == 0)).sum()),
                           "min_freq": cfg.min_freq, "combo_p": cfg.combo_p})

    # ------------------------------------------------------------------------------ use
    def on(self, values: np.ndarray) -> np.ndarray:
        """Which of a code's top-k slots are active: a slot at 0 (fewer than k positive) or below
        `floor` of the code's strongest activation is the fit's noise, not a feature the text holds."""
        return (values > 0) & (values >= self.floor * values[:, :1])

    def encode(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(active features (n, active), activations (n, active)) of latents, strongest first."""
        x = np.ascontiguousarray(points, dtype=np.float32)
        parts = [self._code((x[a : a + BATCH] - self.mean) / self.scale) for a in range(0, len(x), BATCH)]
        if not parts:
            return np.zeros((0, self.active), np.int32), np.zeros((0, self.active), np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def keeps(self, points: np.ndarray, features: list[tuple[int, ...]]) -> np.ndarray:
        """(n,) bool: latent r has every feature of features[r] active."""
        top, val = self.encode(points)
        on = self.on(val)
        return np.array([all(((top[r] == f) & on[r]).any() for f in fs) for r, fs in enumerate(features)],
                        dtype=bool)

    def kept(self, points: np.ndarray, provenance: list[dict | None]) -> list[bool | None]:
        """Per latent (a decode's, re-encoded): does it still hold every feature its candidate was
        composed from (a provenance naming "features")? None where the provenance names none."""
        rows = [i for i, p in enumerate(provenance) if p and "features" in p]
        out: list[bool | None] = [None] * len(provenance)
        if rows:
            for i, k in zip(rows, self.keeps(points[rows], [provenance[i]["features"] for i in rows])):
                out[i] = bool(k)
        return out

    def dark_combination_share(self, points: np.ndarray) -> tuple[np.ndarray, float]:
        """(n,) bool: the latent's active set holds one of the significant dark combinations; and the
        share of them (the holdout test at feature level: are unseen texts such combinations?)."""
        pairs = {tuple(c) for c in self.combos[: self.significant].tolist()}
        top, val = self.encode(points)
        on = self.on(val)
        hit = np.zeros(len(top), dtype=bool)
        for r in range(len(top)):
            act = sorted(int(f) for f in top[r][on[r]])
            hit[r] = any((a, b) in pairs for x, a in enumerate(act) for b in act[x + 1 :])
        return hit, float(hit.mean()) if len(hit) else float("nan")

    def rarest_pair_lift(self, points: np.ndarray) -> np.ndarray:
        """(n,) for each latent, over the pairs of its active features, the lowest ratio of the pair's
        corpus co-activation to what independence predicts, (observed + 1) / (expected + 1): below 1
        the text holds a pair the corpus shows less often than chance, near 0 one it (almost) never
        shows. NaN for a code with fewer than two active features. Unlike the dark-combination share
        it needs no significance, so it reads a small corpus too."""
        top, val = self.encode(points)
        on = self.on(val)
        n = len(self.top)
        out = np.full(len(top), np.nan)
        for r in range(len(top)):
            f = top[r][on[r]]
            if len(f) < 2:
                continue
            a, b = np.triu_indices(len(f), 1)
            fa, fb = f[a], f[b]
            expected = n * self.freq[fa] * self.freq[fb] * self.slots
            out[r] = float(np.min((self.co[fa, fb] + 1) / (expected + 1)))
        return out

    def members(self, feature: int, without: int | None = None) -> np.ndarray:
        """Rows of the corpus latents in which `feature` is active (and `without` is not)."""
        act = self.on(self.top_values)
        on = ((self.top == feature) & act).any(1)
        if without is not None:
            on &= ~((self.top == without) & act).any(1)
        return np.flatnonzero(on)

    def strongest(self, feature: int, n: int = 3) -> list[int]:
        """The corpus rows that activate `feature` most (the feature's description)."""
        rows, pos = np.nonzero((self.top == feature) & self.on(self.top_values))
        vals = self.top_values[rows, pos]
        return [int(r) for r in rows[np.argsort(-vals, kind="stable")[:n]]]

    def describe(self, texts: list[str], combos: int = 24, per_feature: int = 3) -> dict:
        """The first `combos` dark combinations, each feature named by the corpus texts (rows of the
        latents it was fitted on) that activate it most: what the report shows."""
        rows = []
        for (i, j), e, o, p in zip(self.combos[:combos].tolist(), self.combo_expected, self.combo_observed, self.combo_p):
            rows.append({"features": [i, j], "expected": round(float(e), 2), "observed": int(o), "p": float(p),
                         "frequency": [round(float(self.freq[i]), 4), round(float(self.freq[j]), 4)],
                         "texts": [[texts[r] for r in self.strongest(f, per_feature)] for f in (i, j)]})
        return {"summary": self.summary(), "significant": self.significant, "combinations": rows}

    def summary(self) -> dict:
        return {k: self.stats[k] for k in ("n_features", "active", "active_mean", "relative_error", "dead_features",
                                           "frequent_features", "tested_pairs", "dark_combinations",
                                           "never_together", "fit_seconds", "seconds") if k in self.stats}

    # ------------------------------------------------------------------------------ disk
    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        np.savez(folder / "features.npz", mean=self.mean, encoder=self.encoder, bias=self.bias, atoms=self.atoms,
                 top=self.top, top_values=self.top_values, freq=self.freq, typical=self.typical, combos=self.combos,
                 combo_expected=self.combo_expected, combo_observed=self.combo_observed, combo_p=self.combo_p,
                 co=self.co)
        (folder / "features.json").write_text(json.dumps({"format": FORMAT, "scale": self.scale, "active": self.active,
                                                          "floor": self.floor, "slots": self.slots,
                                                          "stats": self.stats}, indent=1))

    @classmethod
    def of_map(cls, folder: str | Path, cfg: FeatureConfig, seed: int = 0) -> "FeatureDictionary | None":
        """The dictionary a map folder holds; for a map saved before dictionaries were, one fitted now
        on its latents (None when features.n_features is 0)."""
        fd = cls.load(folder)
        if fd is None and cfg.n_features:
            fd = cls.fit(np.load(Path(folder) / "latents.npy", allow_pickle=False), cfg, seed)
        return fd

    @classmethod
    def load(cls, folder: str | Path) -> "FeatureDictionary | None":
        """The dictionary saved in folder, or None where none was fitted (features.n_features=0, or a
        map saved before dictionaries were)."""
        folder = Path(folder)
        if not (folder / "features.json").is_file():
            return None
        meta = json.loads((folder / "features.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{folder}/features.json has format {meta.get('format')}, this version reads {FORMAT}; "
                             "rerun the map stage")
        with np.load(folder / "features.npz", allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        return cls(a["mean"], float(meta["scale"]), a["encoder"], a["bias"], a["atoms"], int(meta["active"]),
                   a["top"], a["top_values"], a["freq"], a["typical"], a["combos"], a["combo_expected"],
                   a["combo_observed"], a["combo_p"], float(meta["floor"]), a["co"], float(meta["slots"]),
                   meta.get("stats", {}))
