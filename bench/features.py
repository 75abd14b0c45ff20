"""`python run.py bench features`: the map's feature dictionary against scikit-learn's.

On the corpus latents a run's map stage saved (RUN_DIR/gen-NNN/map/latents.npy), fits the
dictionary the map stage uses (`latent.features`: a TopK sparse autoencoder) and scikit-learn's
MiniBatchDictionaryLearning with non-negative lasso codes at several penalties, on the same centred,
scaled latents, and prints for each: fit and encode seconds, the share of the latents' energy the
codes leave out (relative error), active features a code, dead features, and for the TopK
dictionary its dark combinations. Encoding seconds per 1M latents are extrapolated from the run's
own N (linear in N for both).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.decomposition import MiniBatchDictionaryLearning

from common.errors import ConfigError
from loop.config import build_config
from storage.layout import RunLayout


def _sklearn(x: np.ndarray, n_features: int, alpha: float, epochs: int, seed: int) -> dict:
    t0 = time.perf_counter()
    dl = MiniBatchDictionaryLearning(n_components=n_features, alpha=alpha, batch_size=256, max_iter=epochs,
                                     positive_code=True, fit_algorithm="cd", transform_algorithm="lasso_cd",
                                     transform_alpha=alpha, random_state=seed)
    with warnings.catch_warnings():  # coordinate descent's per-batch convergence notes: thousands of lines
        warnings.simplefilter("ignore")
        dl.fit(x)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        code = dl.transform(x)
    enc_s = time.perf_counter() - t0
    on = code > 0
    err = float(((x - code @ dl.components_) ** 2).sum() / (x**2).sum())
    return {"method": f"sklearn MiniBatchDictionaryLearning alpha={alpha:g}", "fit_s": fit_s, "encode_s": enc_s,
            "encode_s_per_1m": enc_s * 1e6 / len(x), "relative_error": err, "active_mean": float(on.sum(1).mean()),
            "dead_features": int((~on.any(0)).sum())}


def _topk(latents: np.ndarray, cfg, seed: int) -> dict:
    from latent.features import FeatureDictionary  # lazy: torch start-up, not needed for --help

    t0 = time.perf_counter()
    fd = FeatureDictionary.fit(latents, cfg, seed)
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    fd.encode(latents)
    enc_s = time.perf_counter() - t0
    st = fd.stats
    return {"method": f"TopK sparse autoencoder k={cfg.active} (the map stage's)", "fit_s": st["fit_seconds"],
            "fit_encode_count_s": total, "encode_s": enc_s, "encode_s_per_1m": enc_s * 1e6 / len(latents),
            "relative_error": st["relative_error"], "active_mean": st["active_mean"],
            "dead_features": st["dead_features"], "dark_combinations": st["dark_combinations"],
            "never_together": st["never_together"], "tested_pairs": st["tested_pairs"]}


COLUMNS = [("fit_s", "fit s", "{:.2f}"), ("encode_s_per_1m", "encode s / 1M latents", "{:.0f}"),
           ("relative_error", "relative error", "{:.3f}"), ("active_mean", "active a code", "{:.1f}"),
           ("dead_features", "dead features", "{}"), ("dark_combinations", "dark combinations", "{}")]


def table(rows: list[dict]) -> str:
    lines = ["| latents | N | method | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|" + " --- |" * (len(COLUMNS) + 3)]
    for r in rows:
        vals = ["–" if r.get(k) is None else f.format(r[k]) for k, _, f in COLUMNS]
        lines.append(f"| {r['latents']} | {r['n']:,} | {r['method']} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="run.py bench features",
                                description="the map's feature dictionary (TopK SAE) against scikit-learn's dictionary learning")
    p.add_argument("--run", action="append", required=True, help="a run folder whose map stage is done (repeatable)")
    p.add_argument("--generation", type=int, default=0, help="whose map latents (default 0)")
    p.add_argument("--alphas", default="0.01,0.03,0.1", help="scikit-learn lasso penalties on the unit-scaled latents, comma-separated")
    p.add_argument("--epochs", type=int, default=5, help="scikit-learn passes over the latents")
    p.add_argument("--set", action="append", default=[], metavar="features.KEY=VALUE",
                   help="override a features setting of the TopK dictionary (repeatable)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="where to write the figures (JSON)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv[1:])

    import torch  # lazy: torch start-up, not needed for --help

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
        overrides = dict(kv.split("=", 1) for kv in args.set)
        if any(not k.startswith("features.") for k in overrides):
            raise ConfigError("--set takes features.KEY=VALUE here")
        cfg = build_config(None, overrides).features
    except (ValueError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = []
    for run in args.run:
        path = RunLayout(Path(run)).map(args.generation) / "latents.npy"
        if not path.is_file():
            print(f"error: no map latents at {path}; run `python run.py --out {run}` through its map stage first",
                  file=sys.stderr)
            return 2
        latents = np.load(path, allow_pickle=False).astype(np.float32)
        x = latents - latents.mean(0)
        x /= np.sqrt((x**2).sum(1).mean())  # the scale the TopK dictionary codes in
        name = f"{Path(run).name} gen {args.generation}"
        found = [_topk(latents, cfg, args.seed)] + [_sklearn(x, cfg.n_features, a, args.epochs, args.seed) for a in alphas]
        for r in found:
            r.update(latents=name, n=len(latents), dim=latents.shape[1], n_features=cfg.n_features)
            rows.append(r)
            if not args.quiet:
                print(f"{name}: {r['method']}: fit {r['fit_s']:.2f} s, relative error {r['relative_error']:.3f}, "
                      f"{r['active_mean']:.1f} active", file=sys.stderr, flush=True)
    text = table(rows)
    print(text)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; scikit-learn {args.epochs} epochs")
    if args.json:
        from loop.runner import environment  # lazy: the loop (torch) only once figures are written
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": "python run.py bench " + " ".join(argv),
                                               "rows": rows, "table": text, "environment": environment()}, indent=2))
    return 0
