"""Engine and sessions: SQLite in WAL mode (readers never block the writer), or PostgreSQL.

A run folder's database is RUN_DIR/runs.db, or, when RUN_DIR/database.json exists (a run made
with `--db postgresql+psycopg://...`), one schema of a PostgreSQL database: that file holds the
URL without its password, the schema and the run's id (docs/postgres.md). Every caller opens
a run's database with `open_db(run_dir)`, whichever it is.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sqlite3
import uuid
from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlmodel import Session, SQLModel, create_engine, select

from common.errors import StorageError
from storage.models import SCHEMA_VERSION, Run, Stage

DB_NAME = "runs.db"
DB_REF = "database.json"  # RUN_DIR/database.json: the run's PostgreSQL database (URL without password, schema)
PG_DRIVER = 'pip install "psycopg[binary]>=3.1"'
PG_URL_FORM = "postgresql+psycopg://USER@HOST:PORT/DBNAME"
CONNECT_TIMEOUT_S = 10  # an unreachable PostgreSQL host fails in seconds, not minutes


def _sqlite_pragmas(dbapi_conn, _record):
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # a committed stage survives power loss
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str | URL, schema: str | None = None):
    """An engine on `url`; on PostgreSQL every connection's search_path is `schema` (when given), so
    the tables, and every query on them, live in that schema."""
    if str(url).startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}, pool_pre_ping=True)
    if schema is not None:
        # SQLAlchemy's recipe ("Setting Alternate Search Paths on Connect"): set before the dialect's first look
        event.listen(engine, "connect", _search_path(schema), insert=True)
    return engine


def _search_path(schema: str):
    def set_search_path(dbapi_conn, _record):
        autocommit = dbapi_conn.autocommit
        dbapi_conn.autocommit = True
        cur = dbapi_conn.cursor()
        cur.execute(f"SET search_path TO {_ident(schema)}")
        cur.close()
        dbapi_conn.autocommit = autocommit

    return set_search_path


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def db_url(run_dir: str | Path) -> str:
    return f"sqlite:///{Path(run_dir) / DB_NAME}"


# ------------------------------------------------------------------------------ PostgreSQL URLs
def mask(url: str | URL) -> str:
    """The URL as it may be shown: its password (if any) replaced by ***."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # unparsed: hide everything between the first : and the last @
        return re.sub(r":[^@]*@", ":***@", str(url))


def server_url(url: str | URL) -> URL:
    """A checked PostgreSQL URL (`postgresql://` means psycopg 3); a StorageError naming the form otherwise."""
    try:
        u = make_url(url)
    except ArgumentError:
        raise StorageError(f"run.db {mask(url)!r} is not a database URL; write it as {PG_URL_FORM}") from None
    if u.get_backend_name() != "postgresql":
        raise StorageError(f"run.db {mask(u)} is not a PostgreSQL URL; pass {PG_URL_FORM}, or leave run.db unset "
                           f"for the run folder's SQLite file")
    if u.drivername == "postgresql":  # SQLAlchemy's default driver for it is psycopg2; this tool installs psycopg 3
        u = u.set(drivername="postgresql+psycopg")
    if not u.database:
        raise StorageError(f"run.db {mask(u)} names no database; write it as {PG_URL_FORM}")
    return u


def split_password(url: str) -> tuple[str, str | None]:
    """(the checked URL without its password, the password or None): only the first is ever stored."""
    u = server_url(url)
    return u._replace(password=None).render_as_string(hide_password=False), u.password


SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_schema_name(name: str) -> str:
    if not SCHEMA_RE.fullmatch(name) or name.startswith("pg_"):
        raise StorageError(f"run.db_schema {name!r} must be 1-63 lowercase letters, digits or _, start with a "
                           "letter or _, and not start with pg_; e.g. --set run.db_schema=my_run")
    return name


def schema_name(run_dir: str | Path) -> str:
    """The PostgreSQL schema a run folder gets by default: its name, lowercased, other characters as _."""
    name = re.sub(r"[^a-z0-9_]+", "_", Path(run_dir).resolve().name.lower()).strip("_") or "run"
    if not re.match(r"[a-z_]", name) or name.startswith("pg_"):
        name = "run_" + name
    return name[:63]


def read_ref(run_dir: str | Path) -> dict | None:
    """RUN_DIR/database.json, or None for a run folder without one (a SQLite run)."""
    path = Path(run_dir) / DB_REF
    if not path.is_file():
        return None
    try:
        ref = json.loads(path.read_text(encoding="utf-8"))
        if not all(isinstance(ref.get(k), str) for k in ("url", "schema", "run_id")):
            raise ValueError
    except (ValueError, OSError, AttributeError):
        raise StorageError(f"{path} is damaged (it must hold the run's database url, schema and run_id); restore "
                           "it from a backup, or pass a new --out") from None
    return ref


def _write_ref(run_dir: Path, ref: dict) -> None:
    path = run_dir / DB_REF
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(ref, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def describe(run_dir: str | Path) -> str:
    """Where a run folder's database is, for messages (never with a password)."""
    try:
        ref = read_ref(run_dir)
    except StorageError:
        ref = None
    if ref is None:
        return str(Path(run_dir) / DB_NAME)
    return f"schema {ref['schema']} of {mask(ref['url'])}"


def _pg_error(u: URL, e: BaseException) -> StorageError:
    """One line for a PostgreSQL server that cannot be used, with the fix that fits."""
    msg = _first_line(e)
    if "password" in msg:
        fix = ("give the password in the URL, in PGPASSWORD, or in ~/.pgpass (docs/postgres.md); "
               "check the user name")
    elif "does not exist" in msg and "database" in msg:
        fix = f"create it first (createdb -h {u.host or 'HOST'} -p {u.port or 5432} {u.database}) or name another"
    elif any(w in msg for w in ("timeout", "refused", "resolve", "could not translate", "No such file", "unreachable")):
        fix = "start the server, or fix the host and port in --db"
    else:
        fix = "check the URL, the server and the user's rights (docs/postgres.md)"
    return StorageError(f"cannot use the PostgreSQL database {mask(u)}: {msg}; {fix}")


def _pg_engine(u: URL, schema: str | None):
    try:
        return make_engine(u, schema)
    except (ImportError, NoSuchModuleError) as e:
        raise StorageError(f"cannot load the driver for {mask(u)} ({e}); the driver for postgresql+psycopg:// is {PG_DRIVER}") from None


def check_server(url: str) -> None:
    """Connect once to a PostgreSQL URL: a bad URL, a missing driver, an unreachable server or a wrong
    password is a StorageError before the caller writes anything."""
    u = server_url(url)
    engine = _pg_engine(u, None)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as e:
        raise _pg_error(u, e) from None
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------ opening
def open_db(run_dir: str | Path, create: bool = False, url: str | None = None, schema: str | None = None):
    """Engine for the run folder's database; `create` (a writer) makes the tables when absent.

    The database is RUN_DIR/runs.db, or the PostgreSQL schema RUN_DIR/database.json names; a writer
    passes `url` (run.db, with its password) and `schema` (run.db_schema) to start a PostgreSQL run.
    An existing database is checked before anything is written to it: a file that is not a run
    database, a newer schema, or another program holding its write lock is a StorageError.
    """
    ref = read_ref(run_dir)
    if url is not None or ref is not None:
        if url is not None and (Path(run_dir) / DB_NAME).is_file():
            raise StorageError(f"run folder {run_dir} holds a SQLite run ({DB_NAME}); resume it without --db, or pass "
                               "a new --out for a PostgreSQL run")
        return _open_postgres(Path(run_dir), ref, url, schema, create)
    path = Path(run_dir) / DB_NAME
    if not create and not path.is_file():
        raise StorageError(f"no run database at {path}; pass a run folder made by `python run.py --out DIR`")
    engine = make_engine(db_url(run_dir))
    try:
        if path.is_file():
            check_schema(engine, path)
            if create:
                check_writable(engine, path)
            add_missing_columns(engine)
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


def _open_postgres(run_dir: Path, ref: dict | None, url: str | None, schema: str | None, create: bool):
    """The run's schema in a PostgreSQL database. Each run folder owns one schema (its name, or
    run.db_schema), so runs of different names share a database and every query stays unchanged;
    the schema's comment records the owning folder's run id, so that another folder is refused."""
    u = server_url(url if url is not None else ref["url"])
    if ref is not None:
        if url is not None and split_password(url)[0] != ref["url"]:
            raise StorageError(f"run folder {run_dir} keeps its run in {mask(ref['url'])} (schema {ref['schema']}), "
                               f"not {mask(u)}; pass the same --db (or none) to resume it, or a new --out")
        if schema is not None and schema != ref["schema"]:
            raise StorageError(f"run folder {run_dir} keeps its run in schema {ref['schema']}, not {schema}; drop "
                               "--set run.db_schema to resume it, or pass a new --out")
        schema = ref["schema"]
    schema = check_schema_name(schema or schema_name(run_dir))
    where = f"schema {schema} of {mask(u)}"
    admin = _pg_engine(u, None)
    try:
        with admin.connect() as conn:
            row = conn.execute(text("SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = :s"),
                               {"s": schema}).first()
        if row is None and not create:
            raise StorageError(f"{where} holds no run yet (it is still starting, or the schema was dropped); "
                               f"rerun this once its first stage is done, or check {run_dir / DB_REF}")
        if create:
            here = {"folder": str(run_dir.resolve()), "host": socket.gethostname()}
            if row is not None:
                _check_owner(row[0], ref, run_dir, schema, where, here)
            if ref is None:  # recorded first: a crash before the schema exists leaves a folder that resumes
                ref = {"url": u._replace(password=None).render_as_string(hide_password=False), "schema": schema,
                       "run_id": uuid.uuid4().hex}
                _write_ref(run_dir, ref)
            owner = _literal(json.dumps({"run_id": ref["run_id"], **here}))
            with admin.begin() as conn:
                conn = conn.execution_options(no_parameters=True)  # a % in a folder's path is not a placeholder
                if row is None:
                    conn.exec_driver_sql(f"CREATE SCHEMA {_ident(schema)}")
                if row is None or _owner(row[0]) != {"run_id": ref["run_id"], **here}:
                    conn.exec_driver_sql(f"COMMENT ON SCHEMA {_ident(schema)} IS {owner}")
    except StorageError:
        admin.dispose()
        raise
    except SQLAlchemyError as e:
        admin.dispose()
        raise _pg_error(u, e) from None
    admin.dispose()
    engine = _pg_engine(u, schema)
    try:
        check_schema(engine, where)
        if not create:
            with engine.connect() as conn:
                if "run" not in sa_inspect(conn).get_table_names():
                    raise StorageError(f"{where} holds no run yet (it is still starting); rerun this once its "
                                       "first stage is done")
        add_missing_columns(engine)
        if create:
            SQLModel.metadata.create_all(engine)
            _install_id_triggers(engine, schema)
    except StorageError:
        engine.dispose()
        raise
    except SQLAlchemyError as e:
        engine.dispose()
        raise StorageError(f"cannot use {where}: {_first_line(e)}; check the user may create tables there "
                           "(GRANT CREATE ON SCHEMA, docs/postgres.md)") from None
    return engine


def _literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"  # standard_conforming_strings (on since PostgreSQL 9.1)


def _owner(comment: str | None) -> dict | None:
    try:
        owner = json.loads(comment or "")
    except ValueError:
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("run_id"), str) else None


def _check_owner(comment: str | None, ref: dict | None, run_dir: Path, schema: str, where: str, here: dict) -> None:
    """Refuse a schema that another run folder owns (or that this tool did not make)."""
    owner = _owner(comment)
    fix = (f"pass --set run.db_schema=OTHER_NAME (or a run folder of another name) for a new run, or, to start "
           f"over, DROP SCHEMA {_ident(schema)} CASCADE")
    if owner is None:
        raise StorageError(f"{where} exists and was not made by this tool for a run; {fix}")
    if ref is None or owner["run_id"] != ref["run_id"]:
        raise StorageError(f"{where} belongs to the run in folder {owner.get('folder')} on {owner.get('host')}; {fix}")
    if owner.get("folder") != here["folder"] and owner.get("host") == here["host"]:
        other = Path(str(owner.get("folder")))
        try:
            twin = other.is_dir() and (read_ref(other) or {}).get("run_id") == ref["run_id"]
        except StorageError:
            twin = False
        if twin:  # a copied run folder: both would write one schema
            raise StorageError(f"run folders {other} and {run_dir} both keep their run in {where} (a copy?); resume "
                               "the first, or start this one anew with a new --out")


def add_missing_columns(engine) -> None:
    """Add the columns a table gained since the database was made. Every such column is nullable, so
    an older run's rows read as None there and the run resumes and reports as before."""
    with engine.connect() as conn:
        insp = sa_inspect(conn)
        tables = set(insp.get_table_names())
        missing = [(t, c) for t in SQLModel.metadata.sorted_tables if t.name in tables
                   for c in t.columns if c.name not in {x["name"] for x in insp.get_columns(t.name)}]
    if not missing:
        return
    with engine.begin() as conn:
        for t, c in missing:
            if not c.nullable:
                raise StorageError(f"the {t.name} table lacks column {c.name}, which this version cannot add to an "
                                   "existing run; start a new run with a new --out")
            conn.exec_driver_sql(f"ALTER TABLE {_ident(t.name)} ADD COLUMN {_ident(c.name)} "
                                 f"{c.type.compile(dialect=conn.dialect)}")


def _install_id_triggers(engine, schema: str) -> None:
    """Ids as SQLite gives them: the largest id + 1 when a row is inserted.

    A PostgreSQL sequence never gives back a number, so a stage killed before its commit would shift
    every later id, and a resumed run would no longer equal an uninterrupted one (SQLite's rowid
    reuses the ids of rolled-back rows). One writer per schema (the run folder's lock), so max + 1 is safe.
    """
    tables = [t.name for t in SQLModel.metadata.sorted_tables
              if t.autoincrement_column is not None and t.autoincrement_column.name == "id"]
    with engine.begin() as conn:
        have = {r[0] for r in conn.execute(text(
            "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.tgname = 'darkzones_next_id' AND n.nspname = :s"),
            {"s": schema})}
        missing = [t for t in tables if t not in have]
        if not missing:
            return
        conn = conn.execution_options(no_parameters=True)
        conn.exec_driver_sql(
            "CREATE OR REPLACE FUNCTION darkzones_next_id() RETURNS trigger LANGUAGE plpgsql AS $fn$ "
            "BEGIN IF NEW.id IS NULL THEN "
            "EXECUTE 'SELECT COALESCE(MAX(id), 0) + 1 FROM ' || quote_ident(TG_TABLE_SCHEMA) || '.' "
            "|| quote_ident(TG_TABLE_NAME) INTO NEW.id; END IF; RETURN NEW; END $fn$")
        for t in missing:
            conn.exec_driver_sql(f"ALTER TABLE {_ident(t)} ALTER COLUMN id DROP DEFAULT")
            conn.exec_driver_sql(f"CREATE TRIGGER darkzones_next_id BEFORE INSERT ON {_ident(t)} "
                                 "FOR EACH ROW EXECUTE FUNCTION darkzones_next_id()")


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
