"""Engine and sessions: SQLite in WAL mode (readers never block the writer), or any SQLAlchemy URL."""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from sqlalchemy import event, inspect as sa_inspect
from sqlmodel import Session, SQLModel, create_engine, select

from storage.models import SCHEMA_VERSION, Run, Stage

DB_NAME = "runs.db"


class StorageError(RuntimeError):
    """A database or run folder that cannot be used: the message names it and the fix."""


def _sqlite_pragmas(dbapi_conn, _record):
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # a committed stage survives power loss
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str):
    engine = create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {})
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def db_url(run_dir: str | Path) -> str:
    return f"sqlite:///{Path(run_dir) / DB_NAME}"


def open_db(run_dir: str | Path, create: bool = False):
    """Engine for the run folder's database; `create` makes the tables when absent."""
    path = Path(run_dir) / DB_NAME
    if not create and not path.is_file():
        raise StorageError(f"no run database at {path}; pass a run folder made by `python run.py --out DIR`")
    engine = make_engine(db_url(run_dir))
    if create:
        SQLModel.metadata.create_all(engine)
    check_schema(engine, path)
    return engine


def check_schema(engine, path) -> None:
    tables = set(sa_inspect(engine).get_table_names())
    if "run" not in tables:
        return
    with Session(engine) as s:
        run = s.exec(select(Run)).first()
    if run is not None and run.schema_version > SCHEMA_VERSION:
        raise StorageError(
            f"{path} was written by a newer version (schema {run.schema_version} > {SCHEMA_VERSION}); upgrade this tool or use a new --out folder"
        )


def get_run(session: Session) -> Run | None:
    return session.exec(select(Run)).first()


def done_stages(session: Session) -> set[tuple[int, str]]:
    return {(s.generation, s.name) for s in session.exec(select(Stage))}


def stage_detail(session: Session, generation: int, name: str) -> dict | None:
    st = session.exec(select(Stage).where(Stage.generation == generation, Stage.name == name)).first()
    return None if st is None else json.loads(st.detail_json)


class RunLock:
    """An exclusive lock on a run folder: a second run on the same folder refuses to start.

    flock is released by the kernel when the process dies (kill -9 included), so a crashed
    run never leaves a stale lock behind.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise StorageError(
                f"run folder {self.path.parent} is in use by another run; wait for it to finish or pass a different --out"
            ) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
