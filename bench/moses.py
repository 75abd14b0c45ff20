"""`python run.py bench moses`: calibrate our MOSES metrics against the paper's "Train" row.

A random sample of n training molecules is scored by `domains.molecules.metrics.moses_metrics` as if it were
generated, against the test and scaffold-test sets (whole, from MOSES's shipped statistics, or a random
subset of --test-n built here), and compared column by column with the "Train" row of the MOSES table
(Polykovskiy et al. 2020; molecularsets/moses README). MOSES's protocol used 30,000 samples; with several
--seed values the table gives the spread over seeds, to tell a real difference from sampling error.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from common.errors import ConfigError, UserError
from domains.molecules.data import load_split

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py bench moses", description="MOSES metrics vs the paper's Train row")
    p.add_argument("--n", type=int, default=10000, help="training molecules sampled per seed (MOSES: 30000)")
    p.add_argument("--test-n", type=int, default=None,
                   help="score against a random subset of this many test / scaffold-test molecules "
                        "(default: the whole sets, 176k each, from MOSES's precomputed statistics)")
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more sampling seeds")
    p.add_argument("--no-fcd", action="store_true", help="skip FCD (the slow part on CPU: ~15 ms a molecule)")
    p.add_argument("--device", default="cpu", help="torch device for FCD and the Tanimoto products")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--json", default="bench-moses.json", help="where to write the figures (JSON)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    return p


def run(n: int, seeds: list[int], test_n: int | None, fcd: bool = True, device: str = "cpu",
        say=lambda msg: None) -> dict:
    """Score a training sample per seed; return the settings, per-seed metrics and timings, and the summary."""
    from domains.molecules.metrics import PAPER_ROWS, moses_metrics, moses_reference  # lazy: RDKit start-up, not needed for --help

    t0 = time.perf_counter()
    say("loading the reference sets")
    test = moses_reference("test", test_n, 0)
    test_sf = moses_reference("test_scaffolds", test_n, 0)
    train_set = frozenset(load_split("train"))
    ref_s = time.perf_counter() - t0
    per_seed, times, cpu = {}, {}, {}
    for seed in seeds:
        say(f"seed {seed}: scoring {n} training molecules")
        gen = load_split("train", n, seed)
        t, c = time.perf_counter(), time.process_time()
        per_seed[str(seed)] = moses_metrics(gen, test, test_sf, train=train_set, device=device, fcd=fcd)
        times[str(seed)], cpu[str(seed)] = time.perf_counter() - t, time.process_time() - c
    paper = PAPER_ROWS["Train"]
    summary = {}
    for col in paper:
        vals = [r[col] for r in per_seed.values() if col in r]
        if not vals:
            continue
        mean = float(np.mean(vals))
        std = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        summary[col] = {"ours": mean, "ours_std": std, "paper": paper[col], "diff": mean - paper[col]}
    return {"settings": {"n": n, "seeds": seeds, "test_n": test_n, "fcd": fcd, "device": device,
                         "reference": "MOSES test_stats.npz / test_scaffolds_stats.npz" if test_n is None
                         else f"random {test_n} of test / test_scaffolds, seed 0"},
            "results": per_seed, "summary": summary,
            "timings": {"reference_s": ref_s, "score_s_per_seed": times, "score_cpu_s_per_seed": cpu,
                        "total_s": time.perf_counter() - t0}}


def table(res: dict) -> str:
    multi = len(res["settings"]["seeds"]) > 1
    head = "| column | ours" + (" (mean ± sd over seeds)" if multi else "") + " | paper (Train) | ours − paper |"
    lines = [head, "| --- | --- | --- | --- |"]
    for col, s in res["summary"].items():
        ours = f"{s['ours']:.4f}" + (f" ± {s['ours_std']:.4f}" if s["ours_std"] is not None else "")
        lines.append(f"| {col} | {ours} | {s['paper']:.4f} | {s['diff']:+.4f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv[1:])
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    logging.basicConfig(level=logging.WARNING)
    try:
        if args.n < 1:
            raise ConfigError(f"--n {args.n}: sample at least 1 training molecule (MOSES used 30000)")
        if args.test_n is not None and args.test_n < 2:
            raise ConfigError(f"--test-n {args.test_n}: FCD needs at least 2 reference molecules; pass >= 2 or "
                              "drop it to use the whole test sets")
        if args.threads is not None:
            if args.threads < 1:
                raise ConfigError(f"--threads {args.threads}: pass a thread count >= 1")
            import torch  # lazy: torch start-up, not needed for --help

            torch.set_num_threads(args.threads)
        say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
        res = run(args.n, args.seed, args.test_n, fcd=not args.no_fcd, device=args.device, say=say)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = res["settings"]
    print(f"MOSES Train row: n={s['n']} training molecules, seeds {s['seeds']}, reference: {s['reference']}")
    print(table(res))
    t = res["timings"]
    print(f"\nreference {t['reference_s']:.0f}s; scoring (wall / CPU) " +
          ", ".join(f"seed {k} {v:.0f}s / {t['score_cpu_s_per_seed'][k]:.0f}s"
                    for k, v in t["score_s_per_seed"].items())
          + f"; total {t['total_s']:.0f}s")
    from loop.runner import environment  # lazy: the loop (torch) only once figures are written
    Path(args.json).write_text(json.dumps({**res, "environment": environment()}, indent=2))
    print(f"wrote {args.json}")
    return 0
