"""Read-only queries behind `inspect`: plain dicts and lists, no printing.

Every function opens its own short session and only SELECTs, so a reader never holds a
transaction open while a run writes (SQLite WAL: readers see the last commit and never
block the writer). Large exports page by id so each read transaction stays short.
"""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Iterator

from sqlalchemy import Integer, and_, cast, func
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import aliased
from sqlmodel import Session, select

from common.errors import QueryError
from storage.models import Candidate, ExperimentRun, ExperimentSample, Metric, Run, Score, Stage, Zone

DECISIONS = ("accepted", "rejected", "pending")  # pending = decision IS NULL
VERDICTS = ("true", "false", "unparseable")
# sort key -> (column, descending); a judge name is also a sort key (its score, descending)
SORT_COLUMNS = {
    "id": (Candidate.id, False),
    "generation": (Candidate.generation, False),
    "total": (Candidate.total, True),
    "density": (Candidate.density_score, True),
    "norm": (Candidate.latent_norm, True),
}
# columns listed and exported (the latent bytes stay in the database)
_ROW = (
    Candidate.id, Candidate.generation, Candidate.seq, Candidate.sampler, Candidate.zone_id,
    Candidate.latent_norm, Candidate.density_score, Candidate.text, Candidate.verdict,
    Candidate.fact_key, Candidate.true_new, Candidate.total, Candidate.decision, Candidate.reason,
)
EXPORT_FIELDS = ("id", "generation", "sampler", "text", "decision", "reason", "verdict", "true_new", "total")


# The generate side of a generation: turning sampled latents into judged candidates.
GENERATE_STAGES = ("decode", "judge")


def generate_share(seconds: dict[str, float]) -> float | None:
    """Share of a generation's time spent decoding and judging: (decode + judge) seconds over the
    sum of its stages' seconds (stage name -> seconds, from the stage table).

    The evaluate stage is left out of the sum: it computes the metrics line that prints this share
    before its own row exists, and leaving it out everywhere gives the line and `inspect` the same
    figure (it takes a few seconds: the held-out perplexity). None when decode or judge has no
    timing yet, or there is no time at all."""
    timed = {k: float(v) for k, v in seconds.items() if k != "evaluate" and v is not None}
    total = sum(timed.values())
    if total <= 0 or any(k not in timed for k in GENERATE_STAGES):
        return None
    return sum(timed[k] for k in GENERATE_STAGES) / total


def _row(r) -> dict:
    return dict(r._mapping)


def judges(engine) -> list[str]:
    """Judge names that have stored at least one score, sorted."""
    with Session(engine) as s:
        return sorted(s.exec(select(Score.judge).distinct()).all())


def run_info(engine) -> dict | None:
    with Session(engine) as s:
        run = s.exec(select(Run).order_by(Run.id)).first()
        if run is None:
            return None
        return {
            "id": run.id,
            "created_at": run.created_at,
            "schema_version": run.schema_version,
            "seed": run.seed,
            "config_hash": run.config_hash,
            "config": json.loads(run.config_json or "{}"),
            "versions": json.loads(run.versions_json or "{}"),
        }


def summary(engine) -> dict:
    """Run info plus, per generation: stages, counts per sampler x decision, accepted, true_new, metrics line,
    and the decode + judge share of its time (`generate_share`)."""
    run = run_info(engine)
    gens: dict[int, dict] = defaultdict(
        lambda: {"stages": [], "counts": {}, "candidates": 0, "accepted": 0, "rejected": 0,
                 "pending": 0, "true_new": 0, "metrics_line": None}
    )
    with Session(engine) as s:
        for st in s.exec(select(Stage).order_by(Stage.generation, Stage.started_at, Stage.id)):
            gens[st.generation]["stages"].append(
                {"name": st.name, "status": st.status, "seconds": st.seconds, "detail": json.loads(st.detail_json or "{}")}
            )
        counts = s.exec(
            select(Candidate.generation, Candidate.sampler, Candidate.decision, func.count(Candidate.id))
            .group_by(Candidate.generation, Candidate.sampler, Candidate.decision)
        ).all()
        for gen, sampler, decision, n in counts:
            g = gens[gen]
            decision = decision or "pending"
            by = g["counts"].setdefault(sampler, {d: 0 for d in DECISIONS})
            by[decision] = by.get(decision, 0) + n  # an unexpected decision string still counts
            g["candidates"] += n
            g[decision] = g.get(decision, 0) + n
        for gen, n in s.exec(
            select(Candidate.generation, func.count(Candidate.id)).where(Candidate.true_new == True)  # noqa: E712
            .group_by(Candidate.generation)
        ):
            gens[gen]["true_new"] = n
        for m in s.exec(select(Metric)):
            gens[m.generation]["metrics_line"] = m.line
    for g in gens.values():
        g["generate_share"] = generate_share({st["name"]: st["seconds"] for st in g["stages"]})
    return {"run": run, "generations": [{"generation": k, **gens[k]} for k in sorted(gens)]}


def _check_judge(engine, name: str, flag: str) -> None:
    known = judges(engine)
    if name not in known:
        raise QueryError(f"unknown judge {name!r} for {flag}; judges with scores in this run: {', '.join(known) or 'none yet'}")


def candidates(
    engine,
    generation: int | None = None,
    sampler: str | None = None,
    decision: str | None = None,
    judge: str | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
    verdict: str | None = None,
    true_new: bool | None = None,
    limit: int | None = 50,
    sort: str = "id",
) -> list[dict]:
    """Candidates matching every given filter, as dicts (no latent bytes).

    `judge` keeps candidates whose score from that judge lies in [min_score, max_score]
    (either bound optional; a missing score never matches). When `judge` is given, or
    `sort` names a judge, each row carries that judge's score under "score_<judge>".
    """
    if decision is not None and decision not in DECISIONS:
        raise QueryError(f"unknown decision {decision!r}; choose from {', '.join(DECISIONS)}")
    if (min_score is not None or max_score is not None) and judge is None:
        raise QueryError("--min/--max filter a judge's score; name the judge with --judge NAME")
    if limit is not None and limit < 0:
        raise QueryError(f"limit must be >= 0 (0 = no limit), got {limit}")
    if judge is not None:
        _check_judge(engine, judge, "--judge")
    if sort not in SORT_COLUMNS and sort not in judges(engine):
        raise QueryError(
            f"unknown sort {sort!r}; choose from {', '.join(SORT_COLUMNS)} or a judge: {', '.join(judges(engine)) or 'none yet'}"
        )

    q = select(*_ROW)
    if judge is not None:
        js = aliased(Score)
        q = q.join(js, and_(js.candidate_id == Candidate.id, js.judge == judge)).add_columns(
            js.score.label(f"score_{judge}")
        )
        q = q.where(js.score.is_not(None))
        if min_score is not None:
            q = q.where(js.score >= min_score)
        if max_score is not None:
            q = q.where(js.score <= max_score)
    if sort in SORT_COLUMNS:
        col, desc = SORT_COLUMNS[sort]
    else:
        if sort == judge:
            col = js.score
        else:
            ss = aliased(Score)
            q = q.outerjoin(ss, and_(ss.candidate_id == Candidate.id, ss.judge == sort)).add_columns(
                ss.score.label(f"score_{sort}")
            )
            col = ss.score
        desc = True
    # NULLs last whichever the direction, then id for a stable order
    q = q.order_by(col.is_(None), col.desc() if desc else col.asc(), Candidate.id)

    if generation is not None:
        q = q.where(Candidate.generation == generation)
    if sampler is not None:
        q = q.where(Candidate.sampler == sampler)
    if decision == "pending":
        q = q.where(Candidate.decision.is_(None))
    elif decision is not None:
        q = q.where(Candidate.decision == decision)
    if verdict is not None:
        q = q.where(Candidate.verdict == verdict)
    if true_new is not None:
        q = q.where(Candidate.true_new == true_new)
    if limit:
        q = q.limit(limit)
    with Session(engine) as s:
        return [_row(r) for r in s.exec(q)]


def candidate(engine, candidate_id: int) -> dict | None:
    """One candidate in full, with its zone (if any) and every judge's score; None when absent."""
    with Session(engine) as s:
        c = s.get(Candidate, candidate_id)
        if c is None:
            return None
        out = c.model_dump(exclude={"latent"})
        out["latent_dim"] = None if c.latent is None else len(c.latent) // 4  # float32 bytes
        out["zone"] = None
        if c.zone_id is not None:
            z = s.exec(select(Zone).where(Zone.generation == c.generation, Zone.label == c.zone_id)).first()
            if z is not None:
                out["zone"] = _zone_dict(z)
        out["scores"] = [
            {"judge": sc.judge, "score": sc.score, "reason": sc.reason, "detail": json.loads(sc.detail_json or "{}")}
            for sc in s.exec(select(Score).where(Score.candidate_id == candidate_id).order_by(Score.judge))
        ]
        return out


def iter_export(engine, include_all: bool = False, batch: int = 1000) -> Iterator[dict]:
    """Export records in id order: accepted candidates (all with `include_all`), with a
    "scores" dict judge -> score. Pages by id, one short session per page."""
    last = 0
    while True:
        q = select(*_ROW).where(Candidate.id > last).order_by(Candidate.id).limit(batch)
        if not include_all:
            q = q.where(Candidate.decision == "accepted")
        with Session(engine) as s:
            rows = [_row(r) for r in s.exec(q)]
            if not rows:
                return
            scores: dict[int, dict] = defaultdict(dict)
            for cid, judge, score in s.exec(
                select(Score.candidate_id, Score.judge, Score.score).where(
                    Score.candidate_id.in_([r["id"] for r in rows])
                )
            ):
                scores[cid][judge] = score
        for r in rows:
            rec = {k: r[k] for k in EXPORT_FIELDS}
            rec["scores"] = dict(sorted(scores[r["id"]].items()))
            yield rec
        last = rows[-1]["id"]


def _zone_dict(z: Zone) -> dict:
    return {
        "id": z.id, "generation": z.generation, "label": z.label, "n_points": z.n_points,
        "radius": z.radius, "volume": z.volume, "axes": json.loads(z.axes_json or "[]"),
        "neighbours": json.loads(z.neighbours_json or "[]"), "decoded": z.decoded,
    }


def zones(engine, generation: int | None = None) -> list[dict]:
    q = select(Zone).order_by(Zone.generation, Zone.label)
    if generation is not None:
        q = q.where(Zone.generation == generation)
    with Session(engine) as s:
        return [_zone_dict(z) for z in s.exec(q)]


def metrics(engine) -> list[dict]:
    with Session(engine) as s:
        out = []
        for m in s.exec(select(Metric).order_by(Metric.generation)):
            d = m.model_dump()
            d["timings"] = json.loads(d.pop("timings_json") or "{}")
            out.append(d)
        return out


def _has_table(engine, name: str) -> bool:
    with engine.connect() as conn:
        return name in sa_inspect(conn).get_table_names()


def experiments(engine) -> list[dict]:
    """Experiment runs (`python run.py experiment ...`) in id order, with their result figures;
    [] for a database made before the experiment tables existed."""
    if not _has_table(engine, "experimentrun"):
        return []
    with Session(engine) as s:
        counts = dict(s.exec(select(ExperimentSample.experiment_id, func.count(ExperimentSample.id))
                             .group_by(ExperimentSample.experiment_id)).all())
        return [{"id": e.id, "name": e.name, "created_at": e.created_at, "seconds": e.seconds,
                 "samples": counts.get(e.id, 0), "settings": json.loads(e.settings_json or "{}"),
                 "result": json.loads(e.result_json or "{}"), "table": e.table,
                 "artifacts": json.loads(e.artifacts_json or "{}")}
                for e in s.exec(select(ExperimentRun).order_by(ExperimentRun.id))]


def experiment(engine, experiment_id: int) -> dict | None:
    """One experiment run with its sample counts per kind (sampler or holdout group/decoder)."""
    rows = [e for e in experiments(engine) if e["id"] == experiment_id]
    if not rows:
        return None
    with Session(engine) as s:
        q = (select(ExperimentSample.kind, func.count(ExperimentSample.id),
                    func.sum(cast(ExperimentSample.true_new, Integer)), func.sum(cast(ExperimentSample.accepted, Integer)))
             .where(ExperimentSample.experiment_id == experiment_id).group_by(ExperimentSample.kind))
        rows[0]["kinds"] = [{"kind": k, "samples": n, "true_new": int(tn or 0), "accepted": int(a or 0)}
                            for k, n, tn, a in s.exec(q)]
    return rows[0]
