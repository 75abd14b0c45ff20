"""`python run.py inspect RUN_DIR [command]`: read a run's database while it runs, or after.

Commands: summary (default), candidates, show ID, export, zones, metrics, experiments. Only SELECTs in
short sessions (storage.queries), so inspecting never blocks or breaks a running loop.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from cli import export_hf
from common.errors import UserError
from storage import queries
from storage.db import DB_NAME, describe, open_db

TEXT_WIDTH = 60  # characters of text shown in tables


def _clip(text: str | None, width: int = TEXT_WIDTH) -> str:
    """One display line: control characters escaped (a newline in a text must not break a row)."""
    if text is None:
        return "-"
    flat = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(headers: list[str], rows: list[list]) -> str:
    """Aligned plain-text columns; numbers right-aligned, the rest left; last column unpadded."""
    cells = [[_fmt(c) if not isinstance(c, str) else c for c in r] for r in rows]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) and bool(rows) for i in range(len(headers))]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(vals):
        out = []
        for i, v in enumerate(vals):
            last = i == len(vals) - 1
            if numeric[i]:
                out.append(v.rjust(widths[i]))
            else:
                out.append(v if last else v.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


# -- commands ---------------------------------------------------------------------------

def cmd_summary(engine, args) -> int:
    s = queries.summary(engine)
    run = s["run"]
    if run is None:
        print("run: no run row yet (the run is still starting)")
    else:
        print(f"run {run['id']}  created {run['created_at']:%Y-%m-%d %H:%M:%S}  seed {run['seed']}  "
              f"config {run['config_hash']}  schema {run['schema_version']}")
        if run["versions"]:
            print("versions: " + "  ".join(f"{k}={v}" for k, v in sorted(run["versions"].items())))
    if not s["generations"]:
        print("no generations yet")
    for g in s["generations"]:
        print(f"\ngeneration {g['generation']}")
        if g["stages"]:
            total = sum(st["seconds"] for st in g["stages"])
            stages = ", ".join(
                f"{st['name']} {st['seconds']:.1f}s" + ("" if st["status"] == "done" else f" ({st['status']})")
                for st in g["stages"]
            )
            print(f"  stages: {stages}  (total {total:.1f}s)")
            if g["generate_share"] is not None:
                print(f"  decode+judge: {g['generate_share']:.1%} of the generation's stage time (evaluate left out)")
        else:
            print("  stages: none yet")
        print(f"  candidates {g['candidates']}: accepted {g['accepted']}, rejected {g['rejected']}, "
              f"pending {g['pending']}; true_new {g['true_new']}")
        if g["counts"]:
            rows = [[sampler, c["accepted"], c["rejected"], c["pending"], sum(c.values())]
                    for sampler, c in sorted(g["counts"].items())]
            print("  " + table(["sampler", "accepted", "rejected", "pending", "total"], rows).replace("\n", "\n  "))
        if g["metrics_line"]:
            print(f"  metrics: {g['metrics_line']}")
    return 0


def cmd_candidates(engine, args) -> int:
    limit = args.limit or None  # 0 = no limit
    rows = queries.candidates(
        engine, generation=args.generation, sampler=args.sampler, decision=args.decision,
        judge=args.judge, min_score=args.min, max_score=args.max, verdict=args.verdict,
        true_new=True if args.true_new else None,
        limit=None if limit is None else limit + 1,  # one extra tells whether the limit cut the list
        sort=args.sort,
    )
    cut = limit is not None and len(rows) > limit
    rows = rows[:limit] if cut else rows
    score_cols = sorted({k for r in rows for k in r if k.startswith("score_")})
    if not score_cols:  # keep the judge column even when nothing matched
        score_cols = sorted({f"score_{j}" for j in (args.judge, args.sort) if j and j not in queries.SORT_COLUMNS})
    headers = ["id", "gen", "sampler", "decision", "verdict", "total", *score_cols, "text"]
    body = [
        [r["id"], r["generation"], r["sampler"], r["decision"] or "pending", r["verdict"] or "-", r["total"],
         *[r.get(c) for c in score_cols], _clip(r["text"])]
        for r in rows
    ]
    print(table(headers, body))
    print(f"{len(rows)} candidate(s)" + (f"; limit {limit} reached, pass --limit N (0 = all) for more" if cut else ""))
    return 0


def cmd_show(engine, args) -> int:
    c = queries.candidate(engine, args.id)
    if c is None:
        print(f"error: no candidate with id {args.id} in {args.run_dir}; list ids with "
              f"`inspect {args.run_dir} candidates`", file=sys.stderr)
        return 2
    print(f"candidate {c['id']}  generation {c['generation']}  seq {c['seq']}  sampler {c['sampler']}")
    zone = "-" if c["zone_id"] is None else str(c["zone_id"])
    if c["zone"]:
        z = c["zone"]
        zone += f" (n_points {z['n_points']}, radius {_fmt(z['radius'])}, volume {_fmt(z['volume'])}, decoded: {_clip(z['decoded'])})"
    print(f"zone: {zone}")
    print(f"latent: norm {_fmt(c['latent_norm'])}, dim {_fmt(c['latent_dim'])}; density score {_fmt(c['density_score'])}")
    print(f"verdict: {_fmt(c['verdict'])}  fact_key: {_fmt(c['fact_key'])}  true_new: {_fmt(c['true_new'])}")
    print(f"decision: {c['decision'] or 'pending'}  total: {_fmt(c['total'])}  reason: {_term(_fmt(c['reason']))}")
    if c["scores"]:
        print("scores:")
        w = max(len(s["judge"]) for s in c["scores"])
        for s in c["scores"]:
            print(f"  {s['judge'].ljust(w)}  {_fmt(s['score']):>7}  {_term(s['reason'])}")
    else:
        print("scores: none yet")
    print("text:")
    print(_term(c["text"]) if c["text"] is not None else "(not decoded yet)")
    return 0


def _term(text: str) -> str:
    """On a terminal, control characters escaped (a decoded text or a reason quoting one must not
    drive it: ESC sequences, \r overwrites, bidi overrides); piped, the exact text, as data."""
    if not sys.stdout.isatty():
        return text
    return "".join(ch if ch.isprintable() or ch in "\n\t" else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


def _write_export(engine, args, fh) -> int:
    records = queries.iter_export(engine, include_all=args.all)
    n = 0
    if args.format == "jsonl":
        for rec in records:
            # ensure_ascii: every line is pure ASCII, so U+2028 and friends can't split a record
            fh.write(json.dumps(rec) + "\n")
            n += 1
    else:
        judges = queries.judges(engine)
        fields = [*queries.EXPORT_FIELDS, *(f"score_{j}" for j in judges)]
        w = csv.DictWriter(fh, fieldnames=fields, restval="", extrasaction="ignore")
        w.writeheader()
        for rec in records:
            row = {k: ("" if v is None else str(v).lower() if isinstance(v, bool) else v) for k, v in rec.items() if k != "scores"}
            row.update({f"score_{j}": ("" if s is None else s) for j, s in rec["scores"].items()})
            w.writerow(row)
            n += 1
    return n


def cmd_export(engine, args) -> int:
    if args.format == "hf":
        return _export_hf(engine, args)
    if args.out is None or args.out == "-":
        _write_export(engine, args, sys.stdout)
        sys.stdout.flush()
        return 0
    tmp = f"{args.out}.part"
    try:
        # newline="": the csv module writes its own \r\n and quotes embedded newlines
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            n = _write_export(engine, args, fh)
        os.replace(tmp, args.out)
    except OSError as e:
        print(f"error: cannot write {args.out}: {e.strerror}; pick a writable --out path", file=sys.stderr)
        return 2
    print(f"wrote {n} record(s) to {args.out}", file=sys.stderr)
    return 0


def _export_hf(engine, args) -> int:
    if args.out is None or args.out == "-":
        print("error: --format hf writes a folder: pass --out DIR", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists():
        print(f"error: {out} exists; pass a new --out folder (the export never writes over one)", file=sys.stderr)
        return 2
    try:
        n = export_hf.write(engine, args.run_dir, out, args.all)
    except OSError as e:
        print(f"error: cannot write {out}: {e.strerror}; pick a writable --out path", file=sys.stderr)
        return 2
    print(f"wrote {n} record(s) to {out} (datasets.load_dataset({str(out)!r}) opens it)", file=sys.stderr)
    return 0


def cmd_zones(engine, args) -> int:
    rows = [[z["generation"], z["label"], z["n_points"], z["radius"], z["volume"], _clip(z["decoded"])]
            for z in queries.zones(engine, args.generation)]
    print(table(["gen", "label", "n_points", "radius", "volume", "decoded"], rows))
    return 0


METRIC_COLUMNS = ["candidates", "accepted", "acceptance_rate", "truth_rate", "true_new", "heldout_ppl",
                  "novelty", "distinct_2", "dark_share"]


def cmd_metrics(engine, args) -> int:
    rows = [[m["generation"], *[m[k] for k in METRIC_COLUMNS]] for m in queries.metrics(engine)]
    print(table(["gen", *METRIC_COLUMNS], rows))
    return 0


def _experiment_headline(e: dict) -> str:
    r = e["result"]
    if e["name"] == "discovery":
        per = r.get("per_sampler", {})
        ys = [f"{n} {a['true_new_per_1000']['mean']:.1f}" for n, a in per.items()
              if a.get("true_new_per_1000", {}).get("mean") is not None]
        return "true-new /1000: " + ", ".join(ys)
    if e["name"] == "holdout":
        g = r.get("groups", {})
        if "topic" in g and "control" in g:
            line = (f"dark share in NN1's map: {g['topic']['topic']} {g['topic']['dark_share_nn2_in_nn1_map']:.1%}, "
                    f"control {g['control']['topic']} {g['control']['dark_share_nn2_in_nn1_map']:.1%}")
            if "knn_dark_share_ignoring_envelope" in g["topic"]:
                line += (f"; envelope ignored {g['topic']['knn_dark_share_ignoring_envelope']:.1%} vs "
                         f"{g['control']['knn_dark_share_ignoring_envelope']:.1%}")
            return line
    return ""


def cmd_experiments(engine, args) -> int:
    if args.action == "show":
        if args.id is None:
            print("error: experiments show needs an ID; list them with `inspect RUN_DIR experiments`", file=sys.stderr)
            return 2
        e = queries.experiment(engine, args.id)
        if e is None:
            print(f"error: no experiment with id {args.id} in {args.run_dir}; list them with "
                  f"`inspect {args.run_dir} experiments`", file=sys.stderr)
            return 2
        print(f"experiment {e['id']}  {e['name']}  created {e['created_at']:%Y-%m-%d %H:%M:%S}  "
              f"{_fmt(e['seconds'])} s  {e['samples']} sample(s)")
        print(e["table"])
        if e["kinds"]:
            print()
            print(table(["kind", "samples", "true_new", "accepted"],
                        [[k["kind"], k["samples"], k["true_new"], k["accepted"]] for k in e["kinds"]]))
        for k, v in e["artifacts"].items():
            print(f"{k}: {v}")
        return 0
    rows = [[e["id"], e["name"], f"{e['created_at']:%Y-%m-%d %H:%M}", e["seconds"], e["samples"],
             _experiment_headline(e)] for e in queries.experiments(engine)]
    print(table(["id", "name", "created", "seconds", "samples", "headline"], rows))
    if not rows:
        print("no experiments yet; run `python run.py experiment discovery --run RUN_DIR`")
    return 0


# -- parsing ----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py inspect", description="Inspect a run folder's database.")
    p.add_argument("run_dir", metavar="RUN_DIR", help=f"run folder holding {DB_NAME}")
    sub = p.add_subparsers(dest="command", metavar="command")
    sub.add_parser("summary", help="run info and per-generation stages, counts and metrics (default)")

    c = sub.add_parser("candidates", help="table of candidates, filtered and sorted")
    c.add_argument("--generation", type=int)
    c.add_argument("--sampler")
    c.add_argument("--decision", choices=queries.DECISIONS, help="pending = no decision yet")
    c.add_argument("--judge", help="filter on this judge's score in [--min, --max]")
    c.add_argument("--min", type=float)
    c.add_argument("--max", type=float)
    c.add_argument("--verdict", choices=queries.VERDICTS)
    c.add_argument("--true-new", action="store_true", help="only verified-true texts absent from the corpus")
    c.add_argument("--limit", type=int, default=50, help="rows shown (0 = all; default 50)")
    c.add_argument("--sort", default="id",
                   help=f"{', '.join(queries.SORT_COLUMNS)}, or a judge name (its score, highest first)")

    s = sub.add_parser("show", help="one candidate in full")
    s.add_argument("id", type=int)

    e = sub.add_parser("export", help="accepted texts (all with --all) as jsonl, csv or a Hugging Face dataset folder")
    e.add_argument("--format", choices=("jsonl", "csv", "hf"), default="jsonl",
                   help="hf: Parquet and a dataset card in the --out folder, as on the Hub")
    e.add_argument("--out", help="file to write (default stdout); a new folder for --format hf")
    e.add_argument("--all", action="store_true", help="every candidate, not only accepted ones")

    z = sub.add_parser("zones", help="dark zones per generation")
    z.add_argument("--generation", type=int)

    sub.add_parser("metrics", help="one row of metrics per generation")

    x = sub.add_parser("experiments", help="experiment runs (python run.py experiment ...) and their tables")
    x.add_argument("action", nargs="?", choices=("list", "show"), default="list", help="list (default) or show ID")
    x.add_argument("id", nargs="?", type=int, help="experiment id, for show")
    return p


COMMANDS = {
    None: cmd_summary, "summary": cmd_summary, "candidates": cmd_candidates, "show": cmd_show,
    "export": cmd_export, "zones": cmd_zones, "metrics": cmd_metrics, "experiments": cmd_experiments,
}




def _commands() -> tuple[str, ...]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return tuple(sub.choices)

def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed usage and the error (or --help)
        return e.code if isinstance(e.code, int) else 2
    if args.command == "candidates" and args.limit < 0:
        print(f"error: --limit must be >= 0 (0 = all), got {args.limit}", file=sys.stderr)
        return 2
    engine = None
    try:
        engine = open_db(args.run_dir)
        return COMMANDS[args.command](engine, args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SQLAlchemyError as e:
        msg = str(getattr(e, "orig", None) or e).splitlines()[0]
        print(f"error: cannot read {describe(args.run_dir)}: {msg}; "
              "check it is a run database made by `python run.py --out DIR`", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `inspect ... export | head`: the reader left; not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        if engine is not None:
            engine.dispose()


CHOICES = _commands()  # what `run.py --help` lists
