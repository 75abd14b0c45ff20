"""`python run.py bench map`: the occupancy map at scale, FAISS beside scikit-learn.

On synthetic latents of the SLLM's width (a mixture of anisotropic Gaussian clusters shaped
like the default SLLM's latents: norm ~16, participation ratio ~18 against 21 measured in
docs/bench-sllm.json), for each corpus size: the map's fit time (index + dark threshold, and
the PCA/GMM density model), query time per 1,000 points, peak memory, recall@k against
brute-force search on fresh queries, and the dark threshold against the exact leave-one-out
one over every corpus latent. Beside it, the map as it was before FAISS (scikit-learn exact
NearestNeighbors, leave-one-out over all N, PCA and GMM on all N) up to --sklearn-max.

Each size and method runs in its own subprocess, so its peak RSS (ru_maxrss, which sees
FAISS's C++ allocations) is its own.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from latent.config import FeatureConfig, SampleConfig
from latent.occupancy import OccupancyMap, _recall, fit_gmm, set_threads


def synthetic_latents(n: int, dim: int = 256, seed: int = 0, n_clusters: int = 64, draw: int = 0) -> np.ndarray:
    """(n, dim) float32 latents from a mixture of anisotropic Gaussian clusters.

    The mixture (weights, centres, axes) depends on `seed` and `dim` only; `draw` picks a fresh
    sample from the same mixture (held-out texts). Centres spread in a 16-dim subspace around a
    common offset (latents are not centred: norm ~16); within a cluster the axis scales fall as
    i^-1/2 (a power-law spectrum), the leading 32 axes rotated per cluster, cluster sizes
    Dirichlet(1)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    weights = rng.dirichlet(np.ones(n_clusters))
    sub, rot = min(16, dim - 1), min(32, dim)
    sd = (np.arange(1, dim + 1) ** -0.5).astype(np.float32) * 2.0
    clusters = []
    for _ in range(n_clusters):
        centre = basis[:, 0] * 14.0 * rng.uniform(0.85, 1.15) + basis[:, 1:1 + sub] @ (rng.standard_normal(sub) * 2.0).astype(np.float32)
        r = np.eye(dim, dtype=np.float32)
        r[:rot, :rot] = np.linalg.qr(rng.standard_normal((rot, rot)))[0]
        clusters.append((centre, np.ascontiguousarray((basis @ r).T), sd * np.float32(rng.uniform(0.5, 1.5))))
    data = np.random.default_rng([seed, draw, n])
    label = data.choice(n_clusters, n, p=weights)
    out = np.empty((n, dim), np.float32)
    for c, (centre, axes_t, scale) in enumerate(clusters):  # per cluster, no full-size temporaries
        rows = np.flatnonzero(label == c)
        for s in range(0, len(rows), 65536):
            r = rows[s:s + 65536]
            out[r] = centre + (data.standard_normal((len(r), dim), dtype=np.float32) * scale) @ axes_t
    return out


def probe_points(latents: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Envelope-like probes (what the samplers query), the same for every method: Gaussian in a
    32-dim whitened PCA of 20,000 corpus latents, inside its 99% radius."""
    rng = np.random.default_rng([seed, 17])
    fit = latents[rng.choice(len(latents), min(len(latents), 20000), replace=False)]
    pca = PCA(min(32, latents.shape[1]), whiten=True, random_state=0).fit(fit)
    radius = np.quantile(np.linalg.norm(pca.transform(fit), axis=1), 0.99)
    w = rng.standard_normal((4 * n, pca.n_components_))
    return pca.inverse_transform(w[np.linalg.norm(w, axis=1) <= radius][:n]).astype(np.float32)


def queries(latents: np.ndarray, n: int, seed: int, draw: int) -> np.ndarray:
    """n queries: half envelope probes, half fresh draws from the corpus's mixture (held-out texts)."""
    return np.concatenate([probe_points(latents, n - n // 2, draw),
                           synthetic_latents(n // 2, latents.shape[1], seed, draw=draw)])


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_one(method: str, n: int, args) -> dict:
    """One method at one size, in this process (the parent runs it in a subprocess)."""
    set_threads(args.threads)
    cfg_kw = {"k": args.k}
    if args.exact_max is not None:
        cfg_kw["exact_max"] = args.exact_max
    cfg = SampleConfig(**cfg_kw)
    latents = synthetic_latents(n, args.dim, args.seed)
    q = queries(latents, args.queries, args.seed, draw=1)
    rq = queries(latents, args.recall_queries, args.seed, draw=2)  # fresh ones for recall
    res = {"method": method, "n": n, "dim": args.dim, "k": args.k}
    rss0, peak0 = _current_rss_mb(), _rss_mb()
    if method == "faiss":
        t0 = time.perf_counter()
        occ = OccupancyMap.fit(latents, cfg, seed=args.seed, threads=args.threads)
        res["fit_s"] = time.perf_counter() - t0
        res.update({f"{k}_s": v for k, v in occ.stats["seconds"].items()})
        res.update(index=occ.stats["index"], nlist=occ.stats.get("nlist"), nprobe=occ.stats.get("nprobe"),
                   calibration_recall=occ.stats["recall"], threshold_sample=occ.stats["threshold_sample"],
                   fit_sample=occ.stats["fit_sample"])
        t0 = time.perf_counter()
        score = occ.density_score(q)
        res["query_s_per_1000"] = (time.perf_counter() - t0) * 1000 / len(q)
        found = occ.nearest(rq, args.k)
        peak_map = _rss_mb()  # the map's own peak, before the dictionary below
        # the map stage's feature dictionary on the same latents: fit, code every latent, count pairs
        from latent.features import FeatureDictionary  # lazy: torch, kept out of the map's peak RSS measured above

        t0 = time.perf_counter()
        fd = FeatureDictionary.fit(latents, FeatureConfig(), seed=args.seed)
        res["features_s"] = time.perf_counter() - t0
        res["features_share_of_fit"] = res["features_s"] / res["fit_s"]
        res.update({f"features_{k}": v for k, v in fd.summary().items()})
        res["features_peak_rss_mb"] = _rss_mb()
        del fd
    else:  # the map as it was before FAISS: exact sklearn kNN, leave-one-out over all N, PCA/GMM on all N
        t0 = time.perf_counter()
        pca = PCA(n_components=min(32, n - 1, args.dim), whiten=True, random_state=0).fit(latents)
        fit_gmm(pca.transform(latents))
        res["density_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        nn = NearestNeighbors(n_neighbors=args.k + 1).fit(latents)
        dist, _ = nn.kneighbors(latents)  # column 0 is the point itself
        threshold = float(np.quantile(dist[:, args.k], cfg.dark_quantile))
        res["index_threshold_s"] = time.perf_counter() - t0
        res["fit_s"] = res["density_s"] + res["index_threshold_s"]
        t0 = time.perf_counter()
        score = nn.kneighbors(q, n_neighbors=args.k)[0][:, -1] / threshold
        res["query_s_per_1000"] = (time.perf_counter() - t0) * 1000 / len(q)
        found = nn.kneighbors(rq, n_neighbors=args.k)[1]
        occ = None
        peak_map = _rss_mb()
    res["peak_rss_mb"] = peak_map
    res["peak_over_data_mb"] = res["peak_rss_mb"] - rss0  # what fitting and querying added above the latents
    res["data_peak_dominates"] = res["peak_rss_mb"] == peak0  # then the delta above is only an upper bound
    truth = faiss.knn(rq, latents, args.k)[1]  # brute force, exact
    res["recall_at_k"] = _recall(found, truth)
    half = len(rq) - len(rq) // 2  # the first half are envelope probes, the rest held-out draws
    res["recall_envelope"], res["recall_heldout"] = _recall(found[:half], truth[:half]), _recall(found[half:], truth[half:])
    res["recall_queries"] = len(rq)
    res["threshold"] = occ.threshold if occ is not None else threshold
    res["dark_share_of_queries"] = float((score > 1).mean())
    if occ is not None and occ.stats["threshold_sample"] < n:
        # the sampled estimate's own spread (bootstrap of its leave-one-out distances), and the ANN's part:
        # the same points' leave-one-out distances by brute force vs by the index
        rng = np.random.default_rng([args.seed, 3])
        rows = np.sort(rng.choice(n, occ.stats["threshold_sample"], replace=False))
        loo = occ.loo_distance(rows)
        boot = [np.quantile(rng.choice(loo, len(loo)), cfg.dark_quantile) for _ in range(200)]
        res["threshold_bootstrap_rel_sd"] = float(np.std(boot) / occ.threshold)
        sub = rows[:args.ann_check]
        exact_loo = np.sqrt(faiss.knn(latents[sub], latents, args.k + 1)[0][:, args.k].astype(np.float64))
        res["ann_loo_rel_err_mean"] = float(np.mean(np.abs(loo[:len(sub)] - exact_loo) / exact_loo))
        res["ann_loo_exact_share"] = float(np.mean(np.isclose(loo[:len(sub)], exact_loo, rtol=1e-4)))
    return res


COLUMNS = [  # (key, header, format)
    ("index", "index", "{}"), ("nprobe", "nprobe", "{}"), ("fit_s", "fit s", "{:.1f}"),
    ("index_s", "index s", "{:.1f}"), ("threshold_s", "threshold s", "{:.1f}"), ("recall_s", "recall calib. s", "{:.1f}"),
    ("density_s", "PCA+GMM s", "{:.1f}"), ("query_s_per_1000", "s / 1000 queries", "{:.3f}"),
    ("features_s", "feature dictionary s", "{:.1f}"),
    ("peak_over_data_mb", "peak MB above data", "{:.0f}"), ("recall_at_k", "recall@k", "{:.3f}"),
    ("threshold", "threshold", "{:.4f}"), ("threshold_rel_diff", "threshold vs exact", "{:+.2e}"),
]


def table(rows: list[dict], sklearn_max: int) -> str:
    head = "| N | method | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 2)]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['n']:,} | {r['method']} | " + f"skipped: {r['skipped']} |" + " |" * (len(COLUMNS) - 1))
            continue
        vals = []
        for key, _, fmt in COLUMNS:
            v = r.get(key)
            if r["method"] == "sklearn" and key == "index":
                v = "sklearn brute"
            if r["method"] == "sklearn" and key == "index_s":
                v, fmt = r.get("index_threshold_s"), "{:.1f} (with threshold)"
            vals.append("–" if v is None else fmt.format(v))
        lines.append(f"| {r['n']:,} | {r['method']} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py bench map", description="occupancy map at scale: FAISS vs scikit-learn")
    p.add_argument("--sizes", default="10000,100000,1000000", help="corpus sizes, comma-separated")
    p.add_argument("--dim", type=int, default=256, help="latent width (the SLLM's default: 256)")
    p.add_argument("--k", type=int, default=5, help="neighbours for the kNN occupancy score (sample.k)")
    p.add_argument("--queries", type=int, default=1000, help="queries timed (half envelope probes, half held-out draws)")
    p.add_argument("--recall-queries", type=int, default=500, help="fresh queries for recall@k against brute force")
    p.add_argument("--ann-check", type=int, default=500,
                   help="threshold-sample points whose leave-one-out distance is also computed by brute force")
    p.add_argument("--sklearn-max", type=int, default=100_000, help="skip scikit-learn above this corpus size")
    p.add_argument("--sklearn-timeout", type=int, default=900, help="seconds before a scikit-learn run is abandoned")
    p.add_argument("--exact-max", type=int, help="override sample.exact_max (0: always the approximate index)")
    p.add_argument("--threads", type=int, default=0, help="FAISS threads (0: the CPUs this process may use)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="bench-map.json", help="where to write the figures (JSON)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument("--one", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)  # a subprocess's own run
    return p


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv[1:])
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        print(f"error: --sizes takes comma-separated integers, got {args.sizes!r}", file=sys.stderr)
        return 2
    if not sizes or min(sizes) < 2 * (args.k + 2) or args.dim < 2 or args.k < 1 or args.queries < 2:
        print(f"error: need --sizes >= {2 * (args.k + 2)}, --dim >= 2, --k >= 1, --queries >= 2", file=sys.stderr)
        return 2
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one[0], int(args.one[1]), args)))
        return 0
    rows = []
    for n in sizes:
        for method in ("faiss", "sklearn"):
            if method == "sklearn" and n > args.sklearn_max:
                rows.append({"method": method, "n": n, "skipped": f"above --sklearn-max {args.sklearn_max:,}"})
                continue
            if not args.quiet:
                print(f"{method} N={n:,} ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, "-c", "import sys; from bench.map import main; sys.exit(main(sys.argv[1:]))",
                   *argv, "--one", method, str(n)]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                                     timeout=args.sklearn_timeout if method == "sklearn" else None)
            except subprocess.TimeoutExpired:
                rows.append({"method": method, "n": n, "skipped": f"over {args.sklearn_timeout} s"})
                continue
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                print(f"error: {method} at N={n} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                return 1
            rows.append(json.loads(lines[-1][len("RESULT "):]))
            if not args.quiet:
                r = rows[-1]
                print(f"  fit {r['fit_s']:.1f} s, {r['query_s_per_1000']:.3f} s / 1000 queries, "
                      f"recall@{args.k} {r['recall_at_k']:.3f}", file=sys.stderr, flush=True)
    for n in sizes:  # the threshold against the exact one (scikit-learn's leave-one-out over all N)
        exact = next((r["threshold"] for r in rows if r["n"] == n and r["method"] == "sklearn" and "threshold" in r), None)
        for r in rows:
            if r["n"] == n and "threshold" in r and exact is not None:
                r["threshold_rel_diff"] = (r["threshold"] - exact) / exact
    print(table(rows, args.sklearn_max))
    settings = {k: v for k, v in vars(args).items() if k not in ("one", "quiet")}
    from loop.runner import environment  # lazy: the loop (torch) only once figures are written
    Path(args.json).write_text(json.dumps({"settings": settings, "results": rows, "environment": environment()}, indent=2))
    print(f"\nwrote {args.json}")
    return 0
