"""The run report: one self-contained HTML file per run (the latent map, zones, telemetry, candidates).

`write_report(run_dir)` writes RUN_DIR/report.html; `python run.py report RUN_DIR` does the same
from the command line; the loop calls it at the end of every generation.
"""
from report.build import REPORT_NAME, build_html, write_report
from report.data import ReportConfig, collect, open_run, stratified_sample

__all__ = ["REPORT_NAME", "ReportConfig", "build_html", "collect", "open_run", "stratified_sample", "write_report"]
