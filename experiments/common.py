"""What the experiments share: confidence intervals, tables, judged rows, storage."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from sqlmodel import Session

from common.stats import ci95  # noqa: F401 - the experiments' intervals
from storage.db import open_db
from storage.models import ExperimentRun, ExperimentSample

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- statistics
def _fmt_ci(c: dict, digits: int = 1) -> str:
    if c["mean"] is None:
        return "–"
    if c["lo"] is None:
        return f"{c['mean']:.{digits}f}"
    return f"{c['mean']:.{digits}f} [{c['lo']:.{digits}f}, {c['hi']:.{digits}f}]"


def plain_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


DUPLICATE = lambda i: "rejected: duplicate of an accepted text in this batch"  # noqa: E731


def judged_row(j) -> dict:
    """The figures of one judged decode (judges.panel.Judged) that an experiment stores."""
    return {"verdict": j.verdict, "fact_key": j.fact_key, "topic": j.topic, "true_new": bool(j.true_new),
            "accepted": j.accepted, "reason": j.reason, "novelty": j.novelty}


def per_seed_figures(rows: list[dict], budget: int, dark: np.ndarray, gmm_dark: np.ndarray) -> dict:
    texts = [r["text"] for r in rows]
    nov = [r["novelty"] for r, t in zip(rows, texts) if t and r["novelty"] is not None]
    tn = sum(bool(r["true_new"]) for r in rows)
    return {
        "decoded": sum(1 for t in texts if t),
        "parseable": sum(r["verdict"] in ("true", "false") for r in rows),
        "true": sum(r["verdict"] == "true" for r in rows),
        "true_new": tn,
        "true_new_distinct": len({r["fact_key"] for r in rows if r["true_new"]}),
        "accepted": sum(bool(r["accepted"]) for r in rows),
        "novelty": float(np.mean(nov)) if nov else None,
        "dark_share": float(np.mean(dark)) if len(dark) else None,
        "gmm_dark_share": float(np.mean(gmm_dark)) if len(gmm_dark) else None,
        "true_new_per_1000": 1000.0 * tn / budget,
        "true_new_distinct_per_1000": 1000.0 * len({r["fact_key"] for r in rows if r["true_new"]}) / budget,
    }


# ---------------------------------------------------------------------------- storage
def store_experiment(run_dir: Path, name: str, settings: dict, result: dict, table: str, artifacts: dict,
                     seconds: float, samples: list[dict]) -> int:
    """One transaction: the ExperimentRun row and its samples. Returns the experiment id."""
    engine = open_db(run_dir, create=True)  # creates the experiment tables in an older run database
    try:
        with Session(engine) as s:
            ex = ExperimentRun(name=name, seconds=seconds, settings_json=json.dumps(settings, default=str),
                               result_json=json.dumps(result, default=str), table=table,
                               artifacts_json=json.dumps(artifacts))
            s.add(ex)
            s.flush()
            fields = set(ExperimentSample.model_fields) - {"id", "experiment_id"}
            for d in samples:
                row = {k: d.get(k) for k in fields if k in d}
                row["detail_json"] = json.dumps(d.get("detail", {}), default=str)
                s.add(ExperimentSample(experiment_id=ex.id, **row))
            s.commit()
            return int(ex.id)
    finally:
        engine.dispose()
