"""PostgreSQL for shared use (`--db postgresql+psycopg://...`), against a real server.

The session fixture starts its own server in a temporary folder on 127.0.0.1 (Debian's `postgresql`
package, which `.ci/run` installs; the tests skip, saying why, without it or without psycopg), with
password authentication over TCP, and stops it at the end. Covered: a full loop equal to the same
run on SQLite, resume after a kill equal to an uninterrupted run, `inspect` while a run writes,
two runs of different names in one database, and one-line errors for bad URLs and servers.
"""
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from sqlmodel import select

from storage import db as storage_db
from storage.models import Candidate, Metric, Score, Stage, Zone
from tests.test_loop import ROOT, TINY, run_cli

PASSWORD = "s3cret-pw"  # the server's superuser password: it must never reach a run folder or a message
GENS = ["--generations", "2"]


# ---------------------------------------------------------------------------- the server
def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_server():
    """(url without password, url with it): a fresh server on 127.0.0.1 with one database, `darkzones`."""
    try:
        import psycopg
    except ImportError:
        pytest.skip('psycopg is not installed: pip install "psycopg[binary]>=3.1"')
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: the Debian package's `postgres` user runs the server
        if shutil.which("runuser") is None or subprocess.run(["id", "-u", "postgres"], capture_output=True, check=False).returncode:
            pytest.skip("running as root, and there is no `postgres` user (or runuser) to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    tmp = Path(tempfile.mkdtemp(prefix="darkzones-pg-"))
    pwfile = tmp / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if as_user:
        shutil.chown(tmp, "postgres")
        shutil.chown(pwfile, "postgres")
    port = _free_port()

    def pg(*cmd, check=True):
        return subprocess.run([*as_user, *cmd], capture_output=True, text=True, check=check, timeout=120)

    data = tmp / "data"
    pg(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}", "--auth-local=trust",
       "--auth-host=scram-sha-256", "--no-locale", "-E", "UTF8", "--no-sync")
    # fsync off: a test server (the runs' own durability is the server's business, not the tool's)
    pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(tmp / "log"), "-w", "-t", "60", "-o",
       f"-k {tmp} -p {port} -h 127.0.0.1 -c fsync=off -c full_page_writes=off", "start")
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", password=PASSWORD, dbname="postgres",
                             autocommit=True) as con:
            con.execute("CREATE DATABASE darkzones")
        yield (f"postgresql+psycopg://postgres@127.0.0.1:{port}/darkzones",
               f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{port}/darkzones")
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop", check=False)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(autouse=True)
def pg_password(monkeypatch):
    """The password for reading a run back without --db (a test that needs none removes it)."""
    monkeypatch.setenv("PGPASSWORD", PASSWORD)


def content(run_dir: Path) -> dict:
    """Everything a result depends on (tests/test_loop.py's db_content), read through SQLAlchemy
    so that it reads a SQLite and a PostgreSQL run alike."""
    engine = storage_db.open_db(run_dir)
    try:
        with engine.connect() as c:
            def rows(*cols, order):
                return [tuple(r) for r in c.execute(select(*cols).order_by(*order))]

            return {
                "stages": rows(Stage.generation, Stage.name, order=(Stage.generation, Stage.name)),
                "candidates": rows(Candidate.id, Candidate.generation, Candidate.seq, Candidate.sampler,
                                   Candidate.zone_id, Candidate.latent, Candidate.density_score, Candidate.text,
                                   Candidate.verdict, Candidate.fact_key, Candidate.true_new, Candidate.total,
                                   Candidate.decision, Candidate.reason, order=(Candidate.id,)),
                "scores": rows(Score.candidate_id, Score.judge, Score.score, Score.reason,
                               order=(Score.candidate_id, Score.judge)),
                "zones": rows(Zone.generation, Zone.label, Zone.n_points, Zone.centre, Zone.radius, Zone.decoded,
                              order=(Zone.generation, Zone.label)),
                "metrics": rows(Metric.generation, Metric.acceptance_rate, Metric.truth_rate, Metric.true_new,
                                Metric.accepted, Metric.heldout_ppl, Metric.novelty, order=(Metric.generation,)),
            }
    finally:
        engine.dispose()


def env_pw() -> dict:
    return {"PGPASSWORD": PASSWORD}


def assert_no_password(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            assert PASSWORD.encode() not in f.read_bytes(), f"the password is stored in {f}"


def one_line_error(p) -> str:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (p.returncode, p.stderr)
    assert PASSWORD not in p.stderr + p.stdout
    return lines[0]


def schemas(pg_server) -> set[str]:
    import psycopg

    url = pg_server[1].replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url) as con:
        return {r[0] for r in con.execute("SELECT nspname FROM pg_namespace")}


# --------------------------------------------------------------------------- the runs
@pytest.fixture(scope="module")
def sqlite_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sqlite") / "run"
    run_cli([*GENS, "--out", str(out), *TINY])
    return out


@pytest.fixture(scope="module")
def pg_run(pg_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("pg") / "alpha"
    p = run_cli([*GENS, "--out", str(out), "--db", pg_server[1], *TINY])
    return out, p


def test_full_loop_on_postgres_equals_sqlite(pg_run, sqlite_run, pg_server, capsys, monkeypatch):
    out, p = pg_run
    assert content(out) == content(sqlite_run)
    assert not (out / storage_db.DB_NAME).exists()
    ref = json.loads((out / storage_db.DB_REF).read_text())
    assert ref["url"] == pg_server[0] and ref["schema"] == "alpha"
    assert "alpha" in schemas(pg_server)
    assert_no_password(out)  # not in database.json, config.json, the report...
    stored = content(out)  # and not in the run row's config snapshot
    engine = storage_db.open_db(out)
    from storage import queries

    info = queries.run_info(engine)
    engine.dispose()
    assert info["config"]["run"]["db"] == pg_server[0] and PASSWORD not in json.dumps(info, default=str)
    assert stored["metrics"] and p.stdout.count("gen 1 |") == 1
    # known gap: the loop's own report refresh reopens the run without the URL's password (only a warning)
    # inspect and report read it with no --db (the password from PGPASSWORD)
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    rc, summary, _ = inspect(capsys, out)
    assert rc == 0 and "\ngeneration 1" in summary and "metrics: gen 1 |" in summary
    from report.cli import main as report_main

    assert report_main([str(out), "--out", str(out / "again.html")]) == 0 and (out / "again.html").is_file()
    # without any password the server refuses, in one line naming the fix
    monkeypatch.delenv("PGPASSWORD")
    monkeypatch.setenv("PGPASSFILE", str(out / "no-such-file"))
    rc, o, err = inspect(capsys, out)
    assert "PGPASSWORD" in one_line_error(subprocess.CompletedProcess([], rc, o, err))


def test_resume_after_kill_equals_uninterrupted(pg_run, pg_server, tmp_path):
    ref, _ = pg_run
    out = tmp_path / "killed"
    # killed after the sample stage inserted its candidates, before its commit: their ids must come back
    p = run_cli([*GENS, "--out", str(out), "--db", pg_server[1], *TINY], {"DARKZONES_CRASH_AT": "1:sample:before_commit"},
                check=False)
    assert p.returncode == -9, p.stderr
    run_cli([*GENS, "--out", str(out), *TINY], env_pw())  # resumes from database.json, no --db
    assert content(out) == content(ref)


def inspect(capsys, *args) -> tuple[int, str, str]:
    """`python run.py inspect ARGS` in this process (PGPASSWORD set by the caller)."""
    from cli.inspect import main

    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_inspect_while_a_run_writes_and_two_runs_in_one_database(pg_run, pg_server, tmp_path, capsys, monkeypatch):
    alpha, _ = pg_run
    beta = tmp_path / "beta"
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1", PYTHONHASHSEED="0")
    states = []  # what inspect saw while the run was writing
    with open(tmp_path / "beta.log", "w+") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "--generations", "1", "--out", str(beta),
                                 "--db", pg_server[0], "--seed", "1", *TINY], stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=ROOT)
        try:
            while proc.poll() is None:
                if (beta / storage_db.DB_REF).is_file():
                    rc, out, err = inspect(capsys, beta)
                    if proc.poll() is None:
                        assert rc == 0 or "no run yet" in err, err  # only before the run row exists
                        if rc == 0 and "\ngeneration 0" in out:
                            states.append(out.count("s, ") + 1)
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            log.seek(0)
            output = log.read()
    assert proc.returncode == 0, output
    assert states, "inspect never read the run while it was writing"
    assert {"alpha", "beta"} <= schemas(pg_server)
    # each inspect shows its own run: other seeds, other lengths, other candidates
    (_, sa, _), (_, sb, _) = inspect(capsys, alpha), inspect(capsys, beta)
    assert " seed 0 " in sa and "\ngeneration 1" in sa
    assert " seed 1 " in sb and "\ngeneration 0" in sb and "\ngeneration 1" not in sb
    assert inspect(capsys, alpha, "show", 1)[1] != inspect(capsys, beta, "show", 1)[1]
    assert len(content(alpha)["metrics"]) == 2 and len(content(beta)["metrics"]) == 1


def test_a_second_folder_of_the_same_name_is_refused(pg_run, pg_server, tmp_path):
    alpha, _ = pg_run
    before = content(alpha)
    other = tmp_path / "alpha"
    p = run_cli([*GENS, "--out", str(other), "--db", pg_server[1], *TINY], check=False)
    line = one_line_error(p)
    assert "belongs to the run in folder" in line and "run.db_schema" in line
    assert not (other / storage_db.DB_REF).exists()
    assert content(alpha) == before
    # a PostgreSQL run resumed with another --db, a SQLite run with --db: refused too
    p = run_cli([*GENS, "--out", str(alpha), *TINY, "--db", pg_server[1].replace("darkzones", "postgres")], check=False)
    assert "keeps its run in" in one_line_error(p)
    assert content(alpha) == before


def test_a_sqlite_run_resumed_with_db_is_refused(sqlite_run, pg_server):
    before = (sqlite_run / storage_db.DB_NAME).read_bytes()
    p = run_cli([*GENS, "--out", str(sqlite_run), *TINY, "--db", pg_server[1]], check=False)
    assert "holds a SQLite run" in one_line_error(p)
    assert (sqlite_run / storage_db.DB_NAME).read_bytes() == before and not (sqlite_run / storage_db.DB_REF).exists()


@pytest.mark.parametrize("case, expect", [
    ("postgresql+psycopg://postgres@127.0.0.1:{port}/darkzones", "password"),  # no password anywhere
    ("postgresql+psycopg://postgres:wrong@127.0.0.1:{port}/darkzones", "password"),
    ("postgresql+psycopg://postgres:{pw}@127.0.0.1:{free}/darkzones", "start the server"),
    ("postgresql+psycopg://postgres:{pw}@127.0.0.1:{port}/nosuchdb", "createdb"),
    ("postgresql+nosuchdriver://postgres:{pw}@127.0.0.1:{port}/darkzones", "driver"),
    ("mysql://postgres:{pw}@127.0.0.1/darkzones", "not a PostgreSQL URL"),
    ("not a url at all:{pw}@", "not a database URL"),
])
def test_bad_database_one_line_error_and_nothing_written(pg_server, tmp_path, monkeypatch, capsys, case, expect):
    from cli.main import main

    port = pg_server[0].split(":")[-1].split("/")[0]
    url = case.format(port=port, free=_free_port(), pw=PASSWORD)
    out = tmp_path / "run"
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    rc = main(["--generations", "1", "--out", str(out), "--db", url, *TINY])  # in-process: no interpreter start
    cap = capsys.readouterr()
    line = one_line_error(subprocess.CompletedProcess([], rc, cap.out, cap.err))
    assert expect in line, line
    assert not out.exists()


def test_names_and_masking():
    assert storage_db.schema_name("/x/runs/My Run-2") == "my_run_2"
    assert storage_db.schema_name("/x/2024") == "run_2024"
    assert storage_db.schema_name("/x/pg_thing") == "run_pg_thing"
    url, pw = storage_db.split_password("postgresql://bob:secret@db.example:5433/runs")
    assert url == "postgresql+psycopg://bob@db.example:5433/runs" and pw == "secret"
    assert "secret" not in storage_db.mask("postgresql://bob:secret@h/x")
    assert "secret" not in storage_db.mask("garbled://bob:secret@")
    with pytest.raises(storage_db.StorageError, match="run.db_schema"):
        storage_db.check_schema_name("Bad-Name")
