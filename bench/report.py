"""A fabricated large run, and the report's size and load time on it.

    python run.py bench report --candidates 100000 --out /tmp/report-bench     # fabricate, report, open in Chromium

`fabricate_run` writes a run folder the way the loop does (storage models and db helpers, map
folders with latents.npy / eval_latents.npy / probes.npy), with made-up maths texts, scores,
reasons, zones and metrics; the tests use it small, the bench at 100,000 candidates. Its samplers and
judges are the registered ones (a plugin's too), so the report is measured on what a run can hold.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from sqlalchemy import insert
from sqlmodel import Session

import judges.panel  # noqa: F401  (its import registers the built-in judges)
from domains.base import get_domain
from domains.config import CorpusConfig
from judges.base import judge_specs, judge_with_role
from judges.config import JudgeConfig
from latent.samplers import samplers
from report.browser import load_report, missing
from report.build import write_report
from storage.db import open_db
from storage.models import Candidate, Metric, Run, Score, Stage, Zone

STAGE_NAMES = ("sllm", "map", "sample", "decode", "judge", "retrain", "evaluate")


def _sentence(rng: np.random.Generator) -> tuple[str, str]:
    a, b = (int(x) for x in rng.integers(0, 60, 2))
    c = a + b + int(rng.integers(-1, 2))
    return f"{a} plus {b} equals {c}.", ("true" if c == a + b else "false")


def loop_samplers() -> list[str]:
    """The registered samplers a loop run holds candidates of (none that decodes while it samples
    or draws from a feature dictionary)."""
    return [n for n, spec in samplers().items() if not spec.feedback and not spec.needs_features]


def fabricate_run(run_dir: str | Path, candidates: int = 100_000, generations: int = 10, latent_dim: int = 256,
                  domain: str = "maths", texts: list[str] | None = None, seed: int = 0,
                  corpus_points: int | None = None) -> Path:
    """A finished run of `generations` generations and `candidates` candidates in all (a quarter of them
    from a sampler that draws no latent). The map's corpus points are as many as `domain`'s own
    corpus holds (so the report matches them to its texts), or `corpus_points` made-up ones (a
    domain whose corpus is large, e.g. molecules). The candidates' texts are made-up sums, or drawn
    from `texts`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if corpus_points is None:
        splits = get_domain(domain).load(CorpusConfig(domain=domain), 0)
        n_train, n_eval = len(splits.train), len(splits.eval)
    else:
        n_train, n_eval = corpus_points, 5
    names = loop_samplers()
    sampler_specs = samplers()  # a copy of the registry: looked up once, not per candidate
    specs = judge_specs()
    weights = {j.name: j.weight_in(JudgeConfig()) for j in specs}
    norm = sum(weights.values()) or 1.0
    truth = judge_with_role("truth")
    engine = open_db(run_dir, create=True)
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    config = {"run": {"out": str(run_dir), "generations": generations, "seed": seed},
              "corpus": {"domain": domain, "path": None},
              "sllm": {"latent_dim": latent_dim}, "sample": {"samplers": ",".join(names)}}
    per_gen = np.full(generations, candidates // generations)
    per_gen[: candidates % generations] += 1
    cid = 0
    accepted_so_far = 0
    with Session(engine) as s:
        s.add(Run(seed=seed, config_json=json.dumps(config), config_hash="fabricated",
                  versions_json=json.dumps({"python": sys.version.split()[0], "fabricated": "bench.report"})))
        s.commit()
    with engine.begin() as conn:
        for g in range(generations):
            n = int(per_gen[g])
            rows, scores = [], []
            n_acc = 0
            for seq in range(n):
                cid += 1
                sampler = names[seq % len(names)]
                if texts:
                    text, verdict = texts[int(rng.integers(len(texts)))], None
                else:
                    text, verdict = _sentence(rng)
                sc = {j: float(np.round(rng.random(), 3)) for j in weights}
                total = float(np.round(sum(weights[j] * v for j, v in sc.items()) / norm, 3))
                accepted = verdict != "false" and total > 0.55
                n_acc += accepted
                scored = ", ".join(f"{j} {v:.2f}" for j, v in sc.items())
                reason = (f"accepted: {verdict or 'no verifier'}, {scored}, weighted {total:.2f} >= 0.55" if accepted else
                          (f"rejected: {truth} says false" if verdict == "false" else
                           f"rejected: weighted {total:.2f} < 0.55 ({scored})"))
                spec = sampler_specs[sampler]
                latent = rng.standard_normal(latent_dim).astype(np.float32) if spec.latent else None
                rows.append({"id": cid, "generation": g, "seq": seq, "sampler": sampler,
                             # the methods (a sampler with baselines to beat) draw from the zones
                             "zone_id": int(rng.integers(8)) if spec.beats and spec.latent else None,
                             "latent": None if latent is None else latent.tobytes(),
                             "latent_norm": None if latent is None else float(np.linalg.norm(latent)),
                             "density_score": None if latent is None else float(rng.gamma(4, 0.3)),
                             "text": text, "verdict": verdict or "unparseable", "fact_key": None,
                             "true_new": bool(accepted and verdict == "true" and rng.random() < 0.3),
                             "total": total, "decision": "accepted" if accepted else "rejected", "reason": reason})
                scores += [{"candidate_id": cid, "judge": j, "score": v, "reason": f"{j} {v:.2f}", "detail_json": "{}"}
                           for j, v in sc.items()]
            conn.execute(insert(Candidate.__table__), rows)
            conn.execute(insert(Score.__table__), scores)
            zones = []
            for label in range(8):
                zones.append({"generation": g, "label": label, "n_points": int(rng.integers(5, 200)),
                              "centre": (rng.standard_normal(latent_dim) * 1.5).astype(np.float32).tobytes(),
                              "radius": float(rng.random()), "volume": float(rng.random() / 20),
                              "axes_json": json.dumps([float(x) for x in np.round(rng.random(3), 3)]),
                              "neighbours_json": json.dumps([_sentence(rng)[0] for _ in range(3)]),
                              "decoded": texts[label % len(texts)] if texts else _sentence(rng)[0]})
            conn.execute(insert(Zone.__table__), zones)
            start = t0 + timedelta(hours=g)
            extra = {} if corpus_points is None else {"domain_metrics": {"validity": float(rng.random()),
                                                                         "fcd": float(rng.gamma(3))}}
            conn.execute(insert(Stage.__table__), [
                {"generation": g, "name": name, "status": "done", "started_at": start, "finished_at": start,
                 "seconds": float(rng.gamma(2, 10)), "detail_json": json.dumps(extra if name == "evaluate" else {})}
                for name in STAGE_NAMES])
            conn.execute(insert(Metric.__table__), [{
                "generation": g, "acceptance_rate": n_acc / max(n, 1), "truth_rate": float(rng.random()),
                "true_new": int(rng.integers(0, 50)), "accepted": n_acc, "candidates": n,
                "heldout_ppl": float(3 + 0.1 * g + rng.random()), "novelty": float(rng.random()),
                "distinct_2": float(rng.random()), "dark_share": float(rng.random()), "timings_json": "{}",
                "line": f"gen {g} | candidates {n} | accepted {n_acc} (fabricated)"}])
            folder = run_dir / f"gen-{g:03d}" / "map"
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / "latents.npy", rng.standard_normal((n_train + accepted_so_far, latent_dim)).astype(np.float32))
            np.save(folder / "eval_latents.npy", rng.standard_normal((n_eval, latent_dim)).astype(np.float32))
            np.save(folder / "probes.npy", (rng.standard_normal((2000, latent_dim)) * 1.5).astype(np.float32))
            accepted_so_far += n_acc
    engine.dispose()
    return run_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="run.py bench report", description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", type=int, default=100_000)
    p.add_argument("--generations", type=int, default=10)
    p.add_argument("--latent-dim", type=int, default=256)
    p.add_argument("--out", default="/tmp/report-bench", help="run folder to fabricate (reused when it holds a run)")
    p.add_argument("--screenshot", help="also write a PNG of the report's first screen")
    args = p.parse_args(argv[1:] if argv and argv[0] == "report" else argv)
    run_dir = Path(args.out)
    t = time.perf_counter()
    if not (run_dir / "runs.db").is_file():
        fabricate_run(run_dir, args.candidates, args.generations, args.latent_dim)
    fab_s = time.perf_counter() - t
    t = time.perf_counter()
    path = write_report(run_dir)
    build_s = time.perf_counter() - t
    out = {"candidates": args.candidates, "generations": args.generations, "fabricate_s": round(fab_s, 1),
           "report_build_s": round(build_s, 1), "report_mb": round(path.stat().st_size / 1e6, 2), "report": str(path)}
    why = missing()
    if why:
        out["browser"] = f"skipped: {why}"
    else:
        r = load_report(path, args.screenshot, timeout=180)
        out.update(load_event_s=round(r["load_event_s"], 2), drawn_s=round(r["render_s"], 2), errors=r["errors"],
                   map=r["counts"].get("map"), table=r["counts"].get("table"))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
