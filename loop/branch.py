"""Branch a run: a new run folder that starts from another run's generation-0 models.

The loops an experiment compares differ only in what happens after generation 0's map (which
sampler draws the candidates, what retraining learns from), so they can share its base model,
SLLM and map instead of training them again. `branch` copies those three stages' artifacts and
rows into a new folder whose settings may differ from the source's only where those stages do
not read (`FREE`); the runner then resumes the new folder from generation 0's sample stage, as
it would a run killed there.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from sqlmodel import Session, select

from common.errors import ConfigError
from loop.config import Config
from loop.runner import run_config, run_versions
from storage.db import DB_NAME, RunLock, open_db
from storage.layout import RunLayout
from storage.models import Run, Stage, Zone

BRANCHED = ("base", "sllm", "map")  # generation 0's stages a branch takes over
# Settings generation 0's base, SLLM and map stages never read: a branch may change them.
FREE = ("run.", "sample.samplers", "sample.n_candidates", "retrain.", "evaluate.", "judges.", "sllm.continue_epochs",
        "decode.temperature", "decode.lm_temperature")


def branch(src: str | Path, cfg: Config) -> bool:
    """Make cfg.run.out a run that starts from `src`'s generation-0 base model, SLLM and map.
    Returns False (and does nothing) when that folder already holds a run: the caller resumes it."""
    src, dst = Path(src), Path(cfg.run.out)
    if (dst / DB_NAME).exists():
        return False
    if cfg.run.db:
        raise ConfigError("a branch is a run folder with its own SQLite database; drop --db")
    if dst.exists() and any(dst.iterdir()):
        raise ConfigError(f"{dst} exists and is not a run folder; pass an empty or new folder")
    if not (src / DB_NAME).is_file():
        raise ConfigError(f"{src}: no run database there; pass a run folder made by `python run.py --out DIR`")
    old, new = run_config(src).result_settings(), cfg.result_settings()
    diff = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(new)
            if old.get(k) != new.get(k) and not k.startswith(FREE)]
    if diff:
        raise ConfigError(f"cannot branch from {src}: its generation 0 was made with other settings "
                          f"({'; '.join(diff[:4])}); drop those settings or make a new source run")
    engine = open_db(src)
    try:
        with RunLock(src), Session(engine) as s:
            stages = {st.name: st for st in s.exec(select(Stage).where(Stage.generation == 0, Stage.name.in_(BRANCHED)))}
            zones = s.exec(select(Zone).where(Zone.generation == 0)).all()
            missing = [n for n in BRANCHED if n not in stages]
            if missing:
                raise ConfigError(f"run {src} has not finished generation 0's {', '.join(missing)} stage(s); "
                                  f"run `python run.py --out {src} --generations 1` first")
            stage_rows = [st.model_dump(exclude={"id"}) for st in stages.values()]
            zone_rows = [z.model_dump(exclude={"id"}) for z in zones]
            tmp = dst.parent / f".{dst.name}.branching"
            shutil.rmtree(tmp, ignore_errors=True)
            a, b = RunLayout(src), RunLayout(tmp)
            b.gen(0).mkdir(parents=True)
            if json.loads(stages["base"].detail_json).get("trained"):
                shutil.copytree(a.base, b.base)
            for d in (a.sllm(0), a.map(0)):
                shutil.copytree(d, b.gen(0) / d.name)
            if a.cache.is_dir():  # embedding caches: keyed by their texts, valid in any folder
                shutil.copytree(a.cache, b.cache)
    finally:
        engine.dispose()
    out = open_db(tmp, create=True)
    try:
        with Session(out) as s:
            s.add(Run(seed=cfg.run.seed, config_json=json.dumps(cfg.to_dict()), config_hash=cfg.result_hash(),
                      versions_json=json.dumps({**run_versions(), "branched_from": str(src.resolve())})))
            for row in stage_rows:
                detail = json.loads(row["detail_json"])
                if row["name"] == "base" and detail.get("trained"):
                    detail["path"] = str(RunLayout(dst).base)
                s.add(Stage(**{**row, "detail_json": json.dumps(detail)}))
            for row in zone_rows:
                s.add(Zone(**row))
            s.commit()
    finally:
        out.dispose()
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.rmdir()  # empty (checked above)
    os.replace(tmp, dst)
    return True
