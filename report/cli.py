"""`python run.py report RUN_DIR [--out FILE.html]`: write the run's self-contained HTML report."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common.errors import UserError
from report.build import REPORT_NAME, write_report
from report.data import ReportConfig
from storage.db import DB_NAME


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py report", description="Write a run's report: one HTML file, no network needed to open it.")
    p.add_argument("run_dir", metavar="RUN_DIR", help=f"run folder holding {DB_NAME}")
    p.add_argument("--out", help=f"HTML file to write (default RUN_DIR/{REPORT_NAME})")
    p.add_argument("--max-points", type=int, default=ReportConfig.max_map_candidates,
                   help="candidates drawn on the maps, all generations together (default %(default)s; the table lists all)")
    p.add_argument("--no-umap", action="store_true", help="only the PCA view, even when umap-learn is installed")
    return p


def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed usage and the error (or --help)
        return e.code if isinstance(e.code, int) else 2
    if args.max_points < 0:
        print(f"error: --max-points must be >= 0, got {args.max_points}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.run_dir) / REPORT_NAME
    if out.is_dir():
        print(f"error: --out {out} is a folder; pass a file path such as {out / REPORT_NAME}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        path = write_report(args.run_dir, out, ReportConfig(max_map_candidates=args.max_points, umap=not args.no_umap))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {out}: {e.strerror or e}; pick a writable --out path", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s); open it in a browser")
    return 0
