"""The runner: runs the stages of `loop.stages.STAGES` for N generations, and resumes.

Each stage reads what earlier stages stored, writes its artifacts atomically (temp folder,
fsync, rename), adds its rows, and commits them together with its Stage row in ONE
transaction. A stage with a Stage row is done and never redone; a stage killed before its
commit left no rows, and is redone from its start with the same seed, so a resumed run ends
with the same database an uninterrupted one would have.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sklearn
import sqlmodel
import torch
from sqlmodel import Session, select

import report
from common.errors import ConfigError
from lm import distributed
from loop.artifacts import crash_point, verify
from loop.config import Config, build_config
from loop.context import RunContext
from loop.stages import STAGE_NAMES, STAGES, invalidate_from
from storage import queries
from storage.db import RunLock, check_server, done_stages, get_run, open_db
from storage.models import Run, Stage

log = logging.getLogger(__name__)

def stage_seed(seed: int, generation: int, name: str) -> int:
    return int(hashlib.sha256(f"{seed}:{generation}:{name}".encode()).hexdigest()[:8], 16)


def versions() -> dict[str, str]:
    import peft  # lazy: peft start-up, not needed for --help
    import transformers  # lazy: transformers start-up, not needed for --help

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "sqlmodel": sqlmodel.__version__, "scikit-learn": sklearn.__version__,
            "numpy": np.__version__}


def run_versions() -> dict:
    """What a run row records beside its settings: the package versions and the thread count the
    run was made with (CPU training is not bit-identical across thread counts)."""
    return {**versions(), "threads": torch.get_num_threads(), "cpus": os.cpu_count()}


def environment() -> dict:
    """What a figure depends on beyond the code: thread count, package versions, the machine and
    the command; every experiment and bench JSON records it."""
    return {"threads": torch.get_num_threads(), **versions(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "command": " ".join(["python", "run.py", *sys.argv[1:]])}


class Loop(RunContext):
    """The runner: the stages for N generations on a run context, resumable."""

    # -------------------------------------------------------------- run setup
    def ensure_run(self, engine) -> None:
        with Session(engine) as s:
            run = get_run(s)
            if run is None:
                s.add(Run(seed=self.cfg.run.seed, config_json=json.dumps(self.cfg.to_dict()),
                          config_hash=self.cfg.result_hash(), versions_json=json.dumps(run_versions())))
                s.commit()
                return
            if run.config_hash != self.cfg.result_hash():
                diff = self.cfg.settings_diff(build_config(json.loads(run.config_json)))
                if not diff:  # a run made before settings were added: they take their defaults, as then
                    log.info("run folder %s predates settings added since; they keep their defaults", self.out)
                    run.config_json, run.config_hash = json.dumps(self.cfg.to_dict()), self.cfg.result_hash()
                    s.add(run)
                    s.commit()
                    return
                raise ConfigError(
                    f"run folder {self.out} was made with other settings ({'; '.join(diff[:4])}); "
                    f"rerun with the same settings to resume, or pass a new --out"
                )

    def verify_artifacts(self, engine) -> None:
        """On start, check every done stage's artifact against its manifest. The first that fails
        (truncated, edited, deleted) makes its stage and every later one not done, in one
        transaction; they are then redone from their seeds, as after a crash."""
        by_name = {st.name: st for st in STAGES}
        with Session(engine) as s:
            done = sorted(s.exec(select(Stage)), key=lambda st: (st.generation, STAGE_NAMES.index(st.name)))
            for st in done:
                path = by_name[st.name].artifact(self.out, st.generation, json.loads(st.detail_json))
                problem = None if path is None else verify(path)
                if problem is not None:
                    log.warning("the %s artifact of generation %d at %s is damaged (%s): redoing that stage and "
                                "every later one", st.name, st.generation, path, problem)
                    invalidate_from(s, st.generation, st.name)
                    s.commit()
                    return

    def run(self, until: str | None = None) -> None:
        """The stages of every generation, the done ones skipped; with `until` (a stage's name), the
        last generation stops after that stage (an experiment that needs generation 0's models only)."""
        # Several processes (torchrun / accelerate launch; docs/distributed.md): every rank goes through
        # the stages; rank 0 alone locks the folder and writes the database and the artifacts.
        several = distributed.init()
        main = distributed.is_main()
        self.preflight()
        for note in self.domain.notes if main else ():
            log.warning(note)
            print(note, flush=True)
        if self.fallback_note and main:
            log.warning(self.fallback_note)
            print(self.fallback_note, flush=True)
        if self.cfg.run.db:  # a bad URL, a missing driver, no server or a wrong password: fail before writing
            check_server(self.cfg.run.db_url())
        self.out.mkdir(parents=True, exist_ok=True)
        if not os.access(self.out, os.W_OK):
            raise ConfigError(f"run folder {self.out} is not writable; fix its permissions or pass another --out")
        if self.cfg.run.threads:
            torch.set_num_threads(self.cfg.run.threads)

        def stages(engine) -> None:  # every rank, in the same order; rank 0 says which are done
            last = self.cfg.run.generations - 1
            stop = STAGE_NAMES.index(until) if until is not None else len(STAGE_NAMES)
            for g in range(self.cfg.run.generations):
                for stage in STAGES:
                    if stage.first_generation_only and g > 0:
                        continue
                    if g == last and STAGE_NAMES.index(stage.name) > stop:
                        break
                    with Session(engine) as s:
                        done = main and (g, stage.name) in done_stages(s)
                    if not distributed.broadcast(done):
                        self.run_stage(engine, g, stage)
            engine.dispose()

        if several and not main:  # wait for rank 0 to make and check the run (below), then read what it writes
            distributed.barrier()
            return stages(open_db(self.out, url=self.cfg.run.db_url(), schema=self.cfg.run.db_schema))
        with RunLock(self.out):
            engine = open_db(self.out, create=True, url=self.cfg.run.db_url(), schema=self.cfg.run.db_schema)
            self.ensure_run(engine)
            self.verify_artifacts(engine)
            (self.out / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
            distributed.barrier()  # the other ranks may open the database now
            stages(engine)

    def run_stage(self, engine, g: int, stage) -> None:
        name = stage.name
        # Several processes: the stages that train run on every rank (DistributedDataParallel, the
        # same seed everywhere), the others on rank 0 alone while the other ranks wait; rank 0 alone
        # writes and commits, and every rank waits for that commit before the next stage reads it.
        # (The base stage trains too, but its save step is not yet rank-aware: rank 0 trains it alone.)
        every_rank = stage.every_rank
        several, main = distributed.world() > 1, distributed.is_main()
        if several and not main and not every_rank:
            distributed.barrier()
            return
        started = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        seed = stage_seed(self.cfg.run.seed, g, name)
        torch.manual_seed(seed)
        if main:
            log.info("generation %d: %s", g, name)
        with contextlib.nullcontext() if every_rank else distributed.alone(), Session(engine) as s:
            detail = stage.run(self, s, g, seed)
            if main:  # the other ranks' session closes without a commit: they wrote nothing
                s.add(Stage(generation=g, name=name, started_at=started, seconds=time.perf_counter() - t0,
                            detail_json=json.dumps(detail)))
                s.flush()
                crash_point(g, name, "before_commit")
                s.commit()
        if main:
            crash_point(g, name, "after_commit")
        distributed.barrier()
        if not main:
            return
        if stage.ends_generation:
            print(detail["line"], flush=True)
            self.refresh_report()

    def refresh_report(self) -> None:
        """Rewrite RUN_DIR/report.html at the end of a generation, so it can be opened mid-run;
        a report that fails never stops the loop."""
        try:
            report.write_report(self.out)
        except Exception as e:  # noqa: BLE001 - any failure of the report is only a warning
            log.warning("could not refresh the run report %s: %s: %s (the run goes on; "
                        "retry with `python run.py report %s`)", self.out / "report.html", type(e).__name__, e, self.out)


def run_config(run_dir: Path) -> Config:
    """The settings a run folder was made with (its run row), pointed at that folder."""
    engine = open_db(run_dir)
    try:
        info = queries.run_info(engine)
    finally:
        engine.dispose()
    if info is None:
        raise ValueError(f"run {run_dir} has no run row; pass a run folder made by `python run.py --out DIR`")
    cfg = build_config(info["config"])
    cfg.run.out = str(run_dir)
    return cfg
