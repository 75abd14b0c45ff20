"""Everything a report shows, read from a run folder into plain JSON-ready values.

Reads only: the database is opened read-only (`open_run`), the map folders' .npy files with
allow_pickle=False. Large runs stay small and fast to open: the map draws at most
`ReportConfig.max_map_candidates` candidates (a random sample stratified by generation, with a note
saying so), while the table lists every candidate, its text and reason clipped.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, event, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import SQLAlchemyError

from domains.base import domain_class, domain_names, get_domain
from domains.config import domain_name_of, stored_corpus
from latent.samplers import samplers
from report.images import data_uri
from report.projection import projections
from report.structures import draw_many
from storage import queries
from storage.db import DB_NAME, StorageError, check_schema, describe, open_db, read_ref
from storage.layout import RunLayout
from storage.models import Candidate, Score, Stage, Zone

log = logging.getLogger(__name__)



@dataclass
class ReportConfig:
    max_map_candidates: int = 20_000  # candidates drawn on the maps, all generations together
    max_corpus_points: int = 5_000  # corpus points drawn per generation's map
    max_heldout_points: int = 2_000  # held-out real texts drawn per generation's map
    max_structures: int = 300  # molecule drawings embedded (zones first, then accepted candidates)
    text_chars: int = 400  # a candidate's text in the table and the hover panel, clipped
    reason_chars: int = 300  # a candidate's reason, clipped
    umap: bool = True  # add a UMAP view when umap-learn is importable
    corpus_texts: bool = True  # load the run's corpus through its domain, for the corpus points' hover texts
    seed: int = 0  # of the map's subsample

    def __post_init__(self):
        for name in ("max_map_candidates", "max_corpus_points", "max_heldout_points", "max_structures"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("text_chars", "reason_chars"):
            if getattr(self, name) < 20:
                raise ValueError(f"{name} must be >= 20, got {getattr(self, name)}")


# ------------------------------------------------------------------------------ opening
def open_run(run_dir: str | Path):
    """A read-only engine on RUN_DIR/runs.db, or on the PostgreSQL schema RUN_DIR/database.json names;
    StorageError (naming the fix) for a missing folder, a missing database, a file that is not a run
    database, or a database with no run yet."""
    run_dir = Path(run_dir)
    path = run_dir / DB_NAME
    if not run_dir.is_dir():
        raise StorageError(f"no run folder at {run_dir}; pass a run folder made by `python run.py --out DIR`")
    if read_ref(run_dir) is not None:  # a PostgreSQL run: storage opens it (a reader: nothing created)
        path = describe(run_dir)
        engine = open_db(run_dir)
    elif not path.is_file():
        raise StorageError(f"no run database at {path}; pass a run folder made by `python run.py --out DIR`")
    else:
        # mode=ro: the report never writes the database (no WAL switch, no schema), even a foreign one
        engine = create_engine(f"sqlite:///file:{path.resolve()}?mode=ro&uri=true")
        event.listen(engine, "connect", lambda conn, _rec: conn.execute("PRAGMA busy_timeout=30000"))
    try:
        check_schema(engine, path)
        with engine.connect() as conn:
            tables = set(sa_inspect(conn).get_table_names())
        if not {"run", "candidate", "stage"} <= tables:
            raise StorageError(f"{path} is not a run database (no run tables); pass a run folder made by "
                               "`python run.py --out DIR`")
        if queries.run_info(engine) is None:
            raise StorageError(f"{path} holds no run yet (it is still starting); rerun this once its first stage is done")
    except StorageError:
        engine.dispose()
        raise
    except SQLAlchemyError as e:
        engine.dispose()
        msg = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise StorageError(f"cannot read {path}: {msg}; check it is a run database made by `python run.py --out DIR`") from None
    return engine


# ----------------------------------------------------------------------------- sampling
def stratified_sample(groups: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most `cap` rows, each group (generation) keeping its share of the rows
    (largest remainder), drawn at random with `seed`; every row when there are no more than `cap`."""
    groups = np.asarray(groups)
    n = len(groups)
    if n <= cap:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    labels, counts = np.unique(groups, return_counts=True)
    exact = cap * counts / n
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[: cap - quota.sum()]:
        quota[i] += 1
    keep = [rng.choice(np.flatnonzero(groups == lab), size=q, replace=False) for lab, q in zip(labels, quota) if q]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=int)


def _clip(text: str | None, n: int) -> str | None:
    if text is None:
        return None
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _r(a, nd: int = 4) -> list:
    """Floats rounded for a small JSON (None for NaN / inf)."""
    a = np.round(np.asarray(a, dtype=np.float64), nd)
    return [None if not np.isfinite(v) else float(v) for v in a.ravel()]


def _num(v, nd: int = 4):
    if v is None:
        return None
    v = float(v)
    return round(v, nd) if np.isfinite(v) else None


# ----------------------------------------------------------------------------- the data
def collect(run_dir: str | Path, cfg: ReportConfig | None = None, engine=None) -> dict:
    """The report's data: run, telemetry, zones, candidates (columns), maps, experiments, notes."""
    cfg = cfg or ReportConfig()
    run_dir = Path(run_dir)
    own = engine is None
    engine = engine or open_run(run_dir)
    try:
        return _collect(run_dir, cfg, engine)
    finally:
        if own:
            engine.dispose()


def _collect(run_dir: Path, cfg: ReportConfig, engine) -> dict:
    info = queries.run_info(engine)
    config = info["config"]
    corpus = config.get("corpus") or {}
    domain = domain_name_of(corpus.get("domain"), corpus.get("path"))
    notes: list[str] = []
    stages, domain_metrics = [], {}
    with engine.connect() as conn:
        for g, name, sec, detail in conn.execute(select(Stage.generation, Stage.name, Stage.seconds, Stage.detail_json)
                                                 .order_by(Stage.generation, Stage.started_at, Stage.id)):
            stages.append({"generation": g, "name": name, "seconds": round(sec, 2)})
            if name == "evaluate":  # the domain's own per-generation figures (molecules: the MOSES metrics)
                d = json.loads(detail or "{}")
                extra = d.get("domain_metrics") or {}
                if d.get("collapse"):  # the evaluate stage's collapse telemetry, flagged where it is seen first
                    notes.append(f"generation {g}: possible collapse against generation 0: {'; '.join(d['collapse'])}")
                domain_metrics[g] = {k: _num(v) for k, v in extra.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics = [{k: (_num(v) if isinstance(v, float) else v) for k, v in m.items()} for m in queries.metrics(engine)]
    cands = _candidates(engine, cfg)
    zones = queries.zones(engine)
    generations = sorted({st["generation"] for st in stages} | set(cands["gen"]) | {m["generation"] for m in metrics})
    if cfg.corpus_texts:
        stored = {"corpus": config.get("corpus") or {}, domain: config.get(domain) or {}}
        texts, splits_note = _corpus_texts(json.dumps(stored, sort_keys=True), info["seed"], cfg.text_chars)
        if splits_note:
            notes.append(splits_note)
    else:
        texts = {"pool": [], "train": 0, "eval": 0}
    maps = _maps(run_dir, engine, cfg, generations, cands, zones, texts, notes)
    structures = _structures(domain, cands, zones, cfg, notes)
    data = {
        "run": {"dir": str(run_dir), "id": info["id"], "created_at": info["created_at"].isoformat(timespec="seconds"),
                "seed": info["seed"], "config_hash": info["config_hash"], "schema_version": info["schema_version"],
                "domain": domain, "config": config, "versions": info["versions"]},
        "generations": generations,
        "stages": stages,
        "metrics": metrics,
        "domain_metrics": [{"generation": g, **v} for g, v in sorted(domain_metrics.items()) if v],
        "features": _features(run_dir, generations, cfg),
        "zones": [{**{k: z[k] for k in ("generation", "label", "n_points", "axes", "decoded")},
                   "radius": _num(z["radius"]), "volume": _num(z["volume"], 6),
                   "neighbours": [_clip(t, cfg.text_chars) for t in z["neighbours"]]} for z in zones],
        "candidates": cands,
        "texts": texts["pool"],
        "maps": maps,
        "structures": structures,
        "experiments": _experiments(run_dir, engine),
        "notes": notes,
        "limits": dataclasses.asdict(cfg),
    }
    return data


def _features(run_dir: Path, generations: list[int], cfg: ReportConfig) -> list[dict]:
    """Per generation, the map's feature dictionary as the map stage described it: its figures and
    the first dark combinations, each feature named by the corpus texts that activate it most."""
    out = []
    for g in generations:
        path = RunLayout(run_dir).map(g) / "features-described.json"
        if not path.is_file():
            continue
        d = json.loads(path.read_text())
        for c in d["combinations"]:
            c["texts"] = [[_clip(t, cfg.text_chars) for t in ts] for ts in c["texts"]]
        out.append({"generation": g, **d})
    return out


def _candidates(engine, cfg: ReportConfig) -> dict:
    """Every candidate as columns (table order: generation, seq); small vocabularies as indices."""
    cols = (Candidate.id, Candidate.generation, Candidate.sampler, Candidate.zone_id, Candidate.density_score,
            Candidate.text, Candidate.verdict, Candidate.true_new, Candidate.total, Candidate.decision, Candidate.reason,
            Candidate.latent.is_not(None))
    with engine.connect() as conn:
        rows = conn.execute(select(*cols).order_by(Candidate.generation, Candidate.seq)).all()
        score_rows = conn.execute(select(Score.candidate_id, Score.judge, Score.score)).all()
    vocab: dict[str, list] = {"sampler": [], "decision": [], "verdict": []}
    index: dict[str, dict] = {k: {} for k in vocab}
    reasons: list[str] = []
    reason_ix: dict[str, int] = {}

    def code(kind, value):
        ix = index[kind]
        if value not in ix:
            ix[value] = len(vocab[kind])
            vocab[kind].append(value)
        return ix[value]

    out = {k: [] for k in ("id", "gen", "sampler", "decision", "verdict", "true_new", "total", "density", "zone",
                           "text", "reason", "has_latent")}
    row_of: dict[int, int] = {}
    for i, (cid, gen, sampler, zone, dens, text, verdict, tn, total, decision, reason, has_lat) in enumerate(rows):
        row_of[cid] = i
        out["id"].append(cid)
        out["gen"].append(gen)
        out["sampler"].append(code("sampler", sampler))
        out["decision"].append(code("decision", decision or "pending"))
        out["verdict"].append(code("verdict", verdict or "-"))
        out["true_new"].append(None if tn is None else int(bool(tn)))
        out["total"].append(_num(total, 3))
        out["density"].append(_num(dens, 3))
        out["zone"].append(zone)
        out["text"].append(_clip(text, cfg.text_chars))
        r = _clip(reason, cfg.reason_chars) or ""
        if r not in reason_ix:  # reasons repeat (duplicates, thresholds): stored once
            reason_ix[r] = len(reasons)
            reasons.append(r)
        out["reason"].append(reason_ix[r])
        out["has_latent"].append(int(bool(has_lat)))
    judges = sorted({j for _, j, _ in score_rows})
    scores = {j: [None] * len(rows) for j in judges}
    for cid, judge, score in score_rows:
        i = row_of.get(cid)
        if i is not None:
            scores[judge][i] = _num(score, 3)
    specs = samplers()  # each sampler's colour, as the discovery pictures draw it
    colours = {n: specs[n].colour for n in vocab["sampler"] if n in specs}
    out.update({"n": len(rows), "vocab": vocab, "reasons": reasons, "judges": judges, "scores": scores,
                "sampler_colours": colours})
    return out


@functools.lru_cache(maxsize=2)  # the loop rewrites the report every generation: load its corpus once
def _corpus_texts(config_json: str, seed: int, chars: int) -> tuple[dict, str | None]:
    """The domain's train and held-out texts (the map's corpus and held-out points), from the run's
    corpus settings; empty (with a note) when the domain cannot load them here."""
    empty = {"pool": [], "train": 0, "eval": 0}
    try:
        ccfg = stored_corpus(json.loads(config_json))
        splits = get_domain(ccfg.domain_name).load(ccfg, seed)
    except Exception as e:  # noqa: BLE001 - a corpus that moved must not stop the report
        return empty, f"corpus texts not shown on hover: the run's corpus could not be loaded here ({type(e).__name__}: {e})"
    train = [_clip(t.text, chars) for t in splits.train]
    ev = [_clip(t.text, chars) for t in splits.eval]
    return {"pool": train + ev, "train": len(train), "eval": len(ev)}, None


def _load_npy(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        log.warning("cannot read %s: %s", path, e)
        return None
    return a.astype(np.float32) if a.ndim == 2 else None


def _candidate_latents(engine, ids: list[int], dim: int) -> dict[int, np.ndarray]:
    out = {}
    with engine.connect() as conn:
        for i in range(0, len(ids), 5000):
            for cid, blob in conn.execute(select(Candidate.id, Candidate.latent).where(Candidate.id.in_(ids[i:i + 5000]))):
                if blob is not None and len(blob) == 4 * dim:
                    out[cid] = np.frombuffer(blob, dtype=np.float32)
    return out


def _maps(run_dir: Path, engine, cfg: ReportConfig, generations: list[int], cands: dict, zones: list[dict],
          texts: dict, notes: list[str]) -> list[dict]:
    gen = np.asarray(cands["gen"], dtype=int)
    has_lat = np.asarray(cands["has_latent"], dtype=bool)
    on_map = np.flatnonzero(has_lat)
    chosen = on_map[stratified_sample(gen[on_map], cfg.max_map_candidates, cfg.seed)]
    if len(chosen) < len(on_map):
        notes.append(f"the maps draw {len(chosen):,} of the {len(on_map):,} candidates with a latent (a random sample "
                     f"per generation, seed {cfg.seed}); the table lists all {cands['n']:,}")
    n_lm = int((~has_lat).sum())
    if n_lm:
        notes.append(f"{n_lm:,} candidate(s) have no latent (sampler lm writes without the SLLM) and are not on the maps")
    decision = cands["vocab"]["decision"]
    accepted_code = decision.index("accepted") if "accepted" in decision else -1
    # rows of accepted candidates in (generation, seq) order: the corpus tail of later maps
    acc_rows = [i for i, d in enumerate(cands["decision"]) if d == accepted_code]
    rng = np.random.default_rng(cfg.seed)
    maps = []
    for g in generations:
        folder = RunLayout(run_dir).map(g)
        corpus = _load_npy(folder / "latents.npy")
        if corpus is None or len(corpus) < 3:
            continue
        dim = corpus.shape[1]
        m = {"generation": g, "notes": []}
        # which text each corpus point is: train texts, then accepted candidates of generations < g
        prior_acc = [i for i in acc_rows if cands["gen"][i] < g]
        n_train = texts["train"]
        if n_train and n_train + len(prior_acc) == len(corpus):
            refs = np.array(list(range(n_train)) + [-(i + 1) for i in prior_acc])
        else:
            refs = None
            if n_train:
                m["notes"].append("corpus texts not matched to this map's points (the corpus changed since the run)")
        ci = np.arange(len(corpus))
        if len(ci) > cfg.max_corpus_points:
            ci = np.sort(rng.choice(len(corpus), cfg.max_corpus_points, replace=False))
            m["notes"].append(f"{len(ci):,} of {len(corpus):,} corpus points drawn")
        heldout = _load_npy(folder / "eval_latents.npy")
        if heldout is not None and heldout.shape[1] != dim:
            heldout = None
        hi = np.arange(0 if heldout is None else len(heldout))
        if len(hi) > cfg.max_heldout_points:
            hi = np.sort(rng.choice(len(heldout), cfg.max_heldout_points, replace=False))
        eval_ok = heldout is not None and texts["eval"] == len(heldout)
        probes = _load_npy(folder / "probes.npy")
        if probes is not None and probes.shape[1] != dim:
            probes = None
        if heldout is None and probes is None:
            m["notes"].append("held-out points and dark probes not saved for this generation (a run made before the report)")
        zc = _zone_centres(engine, g, dim)
        rows_g = [int(i) for i in chosen if gen[i] == g]
        lat = _candidate_latents(engine, [cands["id"][i] for i in rows_g], dim)
        rows_g = [i for i in rows_g if cands["id"][i] in lat]
        cl = np.stack([lat[cands["id"][i]] for i in rows_g]) if rows_g else np.zeros((0, dim), np.float32)
        parts = {"corpus": corpus[ci], "heldout": heldout[hi] if heldout is not None else np.zeros((0, dim), np.float32),
                 "probes": probes if probes is not None else np.zeros((0, dim), np.float32),
                 "zones": zc["centres"], "cands": cl}
        views = projections(parts, use_umap=cfg.umap, seed=cfg.seed)
        m["views"] = {}
        for name, (xy, about) in views.items():
            v = {"about": about}
            for part, arr in xy.items():
                v[part] = {"x": _r(arr[:, 0]), "y": _r(arr[:, 1])}
            m["views"][name] = v
        m["corpus_ref"] = None if refs is None else refs[ci].tolist()
        m["heldout_ref"] = (n_train + hi).tolist() if eval_ok else None
        m["zone_label"] = zc["labels"]
        m["cand_row"] = rows_g
        m["counts"] = {"corpus": len(ci), "heldout": len(hi), "probes": len(parts["probes"]),
                       "zones": len(zc["labels"]), "candidates": len(rows_g),
                       "corpus_total": len(corpus)}
        maps.append(m)
    return maps


def _zone_centres(engine, g: int, dim: int) -> dict:
    labels, centres = [], []
    with engine.connect() as conn:
        for label, blob in conn.execute(select(Zone.label, Zone.centre).where(Zone.generation == g).order_by(Zone.label)):
            if blob is not None and len(blob) == 4 * dim:
                labels.append(int(label))
                centres.append(np.frombuffer(blob, dtype=np.float32))
    return {"labels": labels, "centres": np.stack(centres) if centres else np.zeros((0, dim), np.float32)}


def _structures(domain: str, cands: dict, zones: list[dict], cfg: ReportConfig, notes: list[str]) -> dict:
    """Molecule drawings (data URIs) keyed by text, for a molecules run where RDKit imports."""
    if cfg.max_structures == 0 or domain not in domain_names() or not domain_class(domain).structure_drawings:
        return {}
    accepted = cands["vocab"]["decision"].index("accepted") if "accepted" in cands["vocab"]["decision"] else -1
    wanted = [z["decoded"] for z in zones if z["decoded"]]
    wanted += [t for t, d in zip(cands["text"], cands["decision"]) if t and d == accepted]
    wanted += [t for t in cands["text"] if t]
    out, note = draw_many(wanted, cfg.max_structures)
    if note:
        notes.append(note)
    return out


def _experiments(run_dir: Path, engine) -> list[dict]:
    """Experiment runs stored in the database, with their pictures inline; then pictures and JSON
    files under RUN_DIR/experiments* that no stored experiment names."""
    out, seen = [], set()
    try:
        rows = queries.experiments(engine)
    except SQLAlchemyError as e:
        rows = []
        log.warning("cannot read the experiments of %s: %s", run_dir, e)
    for e in rows:
        images = []
        for p in (e["artifacts"] or {}).values():
            path = _resolve(run_dir, p)
            if path is not None:
                seen.add(path.resolve())
                if path.suffix.lower() in (".png", ".svg", ".jpg", ".jpeg"):
                    uri = data_uri(path)
                    if uri:
                        images.append({"name": path.name, "uri": uri})
        out.append({"id": e["id"], "name": e["name"], "created_at": e["created_at"].isoformat(timespec="seconds"),
                    "seconds": _num(e["seconds"], 1), "table": e["table"], "images": images,
                    "result": json.dumps(e["result"], indent=1, default=str)[:20_000]})
    loose = {"id": None, "name": "files in the run folder", "created_at": "", "seconds": None, "table": "",
             "images": [], "files": []}
    for folder in sorted(run_dir.glob("experiments*")):
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.resolve() in seen:
                continue
            if path.suffix.lower() in (".png", ".svg", ".jpg", ".jpeg"):
                uri = data_uri(path)
                if uri:
                    loose["images"].append({"name": str(path.relative_to(run_dir)), "uri": uri})
            elif path.suffix.lower() == ".json":
                try:
                    text = path.read_text(encoding="utf-8", errors="replace")[:20_000]
                except OSError:
                    continue
                loose["files"].append({"name": str(path.relative_to(run_dir)), "text": text})
    if loose["images"] or loose["files"]:
        out.append(loose)
    return out


def _resolve(run_dir: Path, p) -> Path | None:
    """An artifact path as stored (absolute, or relative to where the experiment ran)."""
    if not isinstance(p, str) or not p:
        return None
    path = Path(p)
    for cand in ([path] if path.is_absolute() else [path, run_dir / path, run_dir / path.name,
                                                     run_dir / "experiments" / path.name]):
        if cand.is_file():
            return cand
    return None
