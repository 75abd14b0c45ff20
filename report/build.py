"""`write_report(run_dir)`: collect a run's data, render the page, write it atomically."""
from __future__ import annotations

import os
from pathlib import Path

from plotly.offline import get_plotlyjs

from report.data import ReportConfig, collect
from report.page import render

REPORT_NAME = "report.html"


def plotly_js() -> str:
    """plotly.js, minified, from the plotly wheel (the same bundle `include_plotlyjs=True` inlines)."""
    return get_plotlyjs()


def build_html(run_dir: str | Path, cfg: ReportConfig | None = None, compress: bool | None = None) -> str:
    return render(collect(run_dir, cfg), plotly_js(), compress)


def write_report(run_dir: str | Path, out: str | Path | None = None, cfg: ReportConfig | None = None,
                 compress: bool | None = None) -> Path:
    """Write the run's report (default RUN_DIR/report.html) and return its path. The file is written
    beside its final path and renamed over it, so a browser never reads half a report."""
    out = Path(out) if out is not None else Path(run_dir) / REPORT_NAME
    page = build_html(run_dir, cfg, compress)
    part = out.with_name(out.name + ".part")
    try:
        part.write_text(page, encoding="utf-8")
        os.replace(part, out)
    finally:
        if part.exists():
            part.unlink()
    return out
