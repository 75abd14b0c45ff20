"""Engine and sessions: SQLite in WAL mode (readers never block the writer), or any SQLAlchemy URL."""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from pathlib import Path

from sqlalchemy import event, inspect as sa_inspect
from sqlalchemy.exc import SQLAlchemyError
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
    """Engine for the run folder's database; `create` (a writer) makes the tables when absent.

    An existing database is checked before anything is written to it: a file that is not a run
    database, a newer schema, or another program holding its write lock is a StorageError.
    """
    path = Path(run_dir) / DB_NAME
    if not create and not path.is_file():
        raise StorageError(f"no run database at {path}; pass a run folder made by `python run.py --out DIR`")
    engine = make_engine(db_url(run_dir))
    try:
        if path.is_file():
            check_schema(engine, path)
            if create:
                check_writable(engine, path)
        if create:
            SQLModel.metadata.create_all(engine)
    except StorageError:
        engine.dispose()
        raise
    except SQLAlchemyError as e:
        engine.dispose()
        raise StorageError(f"cannot use {path}: {_first_line(e)}; check it is a run database made by this tool "
                           "and that its folder is writable") from None
    return engine


def _first_line(e: BaseException) -> str:
    msg = str(getattr(e, "orig", None) or e).strip()
    return msg.splitlines()[0] if msg else type(e).__name__


def check_schema(engine, path) -> None:
    """Refuse a database written by a newer version of this tool (read with plain SQL, so a newer
    `run` table with other columns still gives this message)."""
    with engine.connect() as conn:
        tables = set(sa_inspect(conn).get_table_names())
        if "run" not in tables:
            return
        row = conn.exec_driver_sql("SELECT schema_version FROM run ORDER BY id LIMIT 1").first()
    if row is not None and row[0] is not None and int(row[0]) > SCHEMA_VERSION:
        raise StorageError(
            f"{path} was written by a newer version (schema {row[0]} > {SCHEMA_VERSION}); upgrade this tool or use a new --out folder"
        )


LOCK_WAIT_S = 5.0  # how long a writer waits for another program's write lock before giving up


def check_writable(engine, path, wait_s: float = LOCK_WAIT_S) -> None:
    """Take and release the database's write lock once, so that a database held by another writer
    (an open `sqlite3` shell, a DB browser) fails in seconds with a clear message, before any work."""
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        raw.execute(f"PRAGMA busy_timeout={int(wait_s * 1000)}")
        try:
            raw.execute("BEGIN IMMEDIATE")
            raw.execute("ROLLBACK")
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise StorageError(f"{path} is locked by another program writing to it (waited {wait_s:.0f} s); "
                                   "close that program, then rerun the same command") from None
            raise StorageError(f"cannot write {path}: {e}; check the file and its folder are writable") from None
        finally:
            raw.execute("PRAGMA busy_timeout=30000")


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
