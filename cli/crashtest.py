"""`python run.py crashtest`: kill -9 a run at many moments, resume it, compare with an uninterrupted run.

    python run.py crashtest [--kills N] [--seed S] [--out DIR] [--no-fixed] [--keep] [run options]

Run options (`--config`, `--set ...`, `--generations`, `--corpus`, ...) are the loop's own;
`--out` is the harness's folder, `--seed` seeds the kill moments (the run's seed is
`--set run.seed=...`). Steps:

1. an uninterrupted reference run (default 2 generations), timed;
2. fixed points (unless --no-fixed): one run folder is killed with SIGKILL at every fault point
   of every stage in turn (mid_artifact: files written, not renamed; artifact_renamed: in place,
   not committed; before_commit: rows flushed inside the open transaction; after_commit), resumed
   after each kill;
3. random moments: runs are SIGKILLed after a delay drawn (seeded) from [0, reference duration],
   resumed and killed again, until N kills are done; each chain ends with a clean resume;
4. every resumed folder is compared with the reference: the same rows (candidates, texts,
   latents, decisions, scores, zones, metrics), no duplicate or missing rows, an intact SQLite
   file, every artifact matching its manifest, the same weights (sha256 of .safetensors/.npy),
   each SLLM checkpoint and adapter loadable (safetensors; the adapter through peft).

Each run is a child forked from one "zygote" process that imported torch, transformers and the
loop once (it never computes, so forking is safe): a kill costs only the work it interrupts, not
Python's ~8 s of imports. The child runs exactly `cli.main.main(argv)`, as `python run.py` does.
The zygote sets torch to one thread before forking (a thread pool must not exist at a fork), so
runs use one thread unless `--set run.threads=N` asks for more.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cli.main import main as run_main
from loop.artifacts import MANIFEST, verify
from loop.config import ConfigError
from loop.options import build_from_args, parser as run_parser
from storage.layout import RunLayout

ROOT = Path(__file__).resolve().parents[1]

# imported once by the zygote, so that forked runs start in milliseconds
PRELOAD = ("numpy", "torch", "safetensors.torch", "sqlmodel", "sklearn.neighbors", "sklearn.decomposition",
           "sklearn.cluster", "transformers", "transformers.models.llama.modeling_llama", "peft", "tokenizers",
           "sentence_transformers", "cli.main", "loop.config", "loop.runner", "lm.base_model", "latent.occupancy",
           "lm.lora", "loop.stages", "cli.inspect", "sllm.model", "sllm.train", "judges", "backends.base",
           "backends.transformers_backend", "domains")

STAGE_LINE = re.compile(r"generation (\d+): (\w+)")


# -- the zygote ---------------------------------------------------------------------------------

@dataclass
class Exit:
    rc: int | None  # exit status; -9 when SIGKILLed; None while still running
    killed: bool  # killed by the harness at its deadline
    seconds: float


class Zygote:
    """A process that imported the loop once and forks a fresh child for every run it is asked for.

    `limit`: seconds after which a child that was to be waited for without a timeout is killed
    (a hung run must not hang the caller)."""

    def __init__(self, env: dict | None = None, limit: float = 900):
        self.limit = limit
        full = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1", PYTHONHASHSEED="0",
                    TOKENIZERS_PARALLELISM="false", **(env or {}))
        full["PYTHONPATH"] = os.pathsep.join([str(ROOT), full.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.proc = subprocess.Popen([sys.executable, "-c", "from cli.crashtest import serve; serve()"], cwd=ROOT,
                                     env=full, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        ready = self.proc.stdout.readline()
        if ready.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"the crashtest zygote did not start (said {ready!r})")

    def _ask(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the crashtest zygote died")
        return json.loads(line)

    def start(self, argv: list[str], stdout: Path, stderr: Path | None = None, env: dict | None = None) -> int:
        """Fork a child running `python run.py ARGV`; its output goes to the given files."""
        return self._ask(op="start", argv=list(argv), stdout=str(stdout), stderr=str(stderr or stdout),
                         env=env or {})["pid"]

    def wait(self, pid: int, timeout: float | None = None, kill: bool = False) -> Exit:
        """Wait for the child; after `timeout` seconds return rc None, or SIGKILL it when `kill`."""
        if timeout is None:
            timeout, kill = self.limit, True
        r = self._ask(op="wait", pid=pid, timeout=timeout, kill=kill)
        return Exit(r["rc"], r["killed"], r["seconds"])

    def run(self, argv: list[str], stdout: Path, stderr: Path | None = None, env: dict | None = None,
            kill_after: float | None = None) -> Exit:
        return self.wait(self.start(argv, stdout, stderr, env), kill_after, kill=kill_after is not None)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._ask(op="exit")
            except (RuntimeError, OSError, ValueError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def serve() -> None:
    """The zygote's loop: JSON requests on stdin, one JSON reply a line on the original stdout."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)  # whatever a module prints cannot corrupt the replies
    import torch  # lazy: imported once stdout is redirected, so nothing it prints reaches the replies

    torch.set_num_threads(1)  # no thread pool exists before a fork
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    started: dict[int, float] = {}
    ended: dict[int, dict] = {}  # reaped children: a later wait gets the same answer
    reply.write("ready\n")
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "start":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(req, reply.fileno(), devnull)
            started[pid] = time.monotonic()
            reply.write(json.dumps({"pid": pid}) + "\n")
        elif req["op"] == "wait":
            pid = req["pid"]
            if pid not in ended:
                r = _wait(pid, started.pop(pid), req["timeout"], req["kill"], started)
                if r["rc"] is None:
                    reply.write(json.dumps(r) + "\n")
                    continue
                ended[pid] = r
            reply.write(json.dumps(ended[pid]) + "\n")
        else:
            break


def _child(req: dict, reply_fd: int, devnull: int) -> None:
    rc = 1
    try:
        os.close(reply_fd)
        os.dup2(devnull, 0)
        out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = out if req["stderr"] == req["stdout"] else os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.environ.update(req["env"])
        # A harness started in the background inherits SIGINT ignored; the run must meet Ctrl-C
        # (the sigint fault) as a user's terminal would deliver it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        rc = run_main(req["argv"])
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported as Python would, then the exit status says it failed
        traceback.print_exc()
        rc = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc if isinstance(rc, int) else 1)


def _wait(pid: int, t0: float, timeout: float | None, kill: bool, started: dict) -> dict:
    deadline = None if timeout is None else t0 + timeout
    killed = False
    while True:
        done, status = os.waitpid(pid, 0 if deadline is None else os.WNOHANG)
        if done:
            break
        if time.monotonic() >= deadline:
            if not kill:
                started[pid] = t0  # still running: the caller waits again later
                return {"rc": None, "killed": False, "seconds": time.monotonic() - t0}
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            killed = True
            break
        time.sleep(0.005)
    rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return {"rc": rc, "killed": killed, "seconds": time.monotonic() - t0}


# -- comparing a run folder with the reference --------------------------------------------------

def db_content(run_dir: Path) -> dict:
    """Everything a result depends on (no timestamps, durations or paths)."""
    con = sqlite3.connect(f"file:{Path(run_dir) / 'runs.db'}?mode=ro", uri=True)
    try:
        return {
            "stages": con.execute("SELECT generation, name FROM stage ORDER BY generation, name").fetchall(),
            "candidates": con.execute(
                "SELECT id, generation, seq, sampler, zone_id, hex(latent), latent_norm, density_score, text, verdict, "
                "fact_key, true_new, total, decision, reason FROM candidate ORDER BY id").fetchall(),
            "scores": con.execute("SELECT candidate_id, judge, score, reason, detail_json FROM score "
                                  "ORDER BY candidate_id, judge").fetchall(),
            "zones": con.execute("SELECT generation, label, n_points, hex(centre), radius, volume, axes_json, "
                                 "neighbours_json, decoded FROM zone ORDER BY generation, label").fetchall(),
            "metrics": con.execute("SELECT generation, acceptance_rate, truth_rate, true_new, accepted, candidates, "
                                   "heldout_ppl, novelty, distinct_2, dark_share FROM metric ORDER BY generation").fetchall(),
            "runs": con.execute("SELECT seed, config_hash, schema_version FROM run").fetchall(),
        }
    finally:
        con.close()


def integrity_problems(run_dir: Path) -> list[str]:
    """Duplicate or missing rows, and SQLite's own integrity check."""
    con = sqlite3.connect(f"file:{Path(run_dir) / 'runs.db'}?mode=ro", uri=True)
    try:
        q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
        out = []
        if q("PRAGMA integrity_check") != [("ok",)]:
            out.append(f"sqlite integrity_check: {q('PRAGMA integrity_check')[:3]}")
        if q("PRAGMA foreign_key_check"):
            out.append("scores point to missing candidates")
        for table, key in (("stage", "generation, name"), ("candidate", "generation, seq"), ("score", "candidate_id, judge"),
                           ("zone", "generation, label")):
            dup = q(f"SELECT {key}, count(*) FROM {table} GROUP BY {key} HAVING count(*) > 1")
            if dup:
                out.append(f"duplicate {table} rows: {dup[:3]}")
        if len(q("SELECT id FROM run")) != 1:
            out.append("not exactly one run row")
        judges = [j for (j,) in q("SELECT DISTINCT judge FROM score")]
        missing = q(f"SELECT c.id, count(s.id) FROM candidate c LEFT JOIN score s ON s.candidate_id = c.id "
                    f"WHERE c.decision IS NOT NULL GROUP BY c.id HAVING count(s.id) != {len(judges)}")
        if missing:
            out.append(f"judged candidates without one score per judge ({len(judges)}): {missing[:3]}")
        stages = {(g, n) for g, n in q("SELECT generation, name FROM stage")}
        undecided = q("SELECT generation, count(*) FROM candidate WHERE decision IS NULL GROUP BY generation")
        for g, n in undecided:
            if (g, "judge") in stages:
                out.append(f"generation {g}: {n} candidates undecided after its judge stage")
        return out
    finally:
        con.close()


def artifact_summary(run_dir: Path) -> dict[str, dict[str, str]]:
    """For every artifact folder of a done stage: {file: sha256} of its weight files (paths differ
    between run folders, so configs and READMEs that name them are left out)."""
    out = {}
    for m in sorted(Path(run_dir).glob("*/" + MANIFEST)) + sorted(Path(run_dir).glob(RunLayout.GEN_GLOB + "/*/" + MANIFEST)):
        files = json.loads(m.read_text())["files"]
        out[m.parent.relative_to(run_dir).as_posix()] = {
            k: v["sha256"] for k, v in files.items() if k.endswith((".safetensors", ".npy"))}
    return out


def artifact_problems(run_dir: Path, deep: bool = True) -> list[str]:
    """Every done stage's artifact matches its manifest and loads; `deep` loads adapters with peft."""
    from transformers.utils import logging as hf_logging  # lazy: transformers start-up, only to check artifacts

    from lm.base_model import load_base_model  # lazy: torch, which the zygote loads only after redirecting stdout
    from loop.stages import BY_NAME  # lazy: torch, which the zygote loads only after redirecting stdout

    hf_logging.disable_progress_bar()

    run_dir = Path(run_dir)
    con = sqlite3.connect(f"file:{run_dir / 'runs.db'}?mode=ro", uri=True)
    rows = con.execute("SELECT generation, name, detail_json FROM stage").fetchall()
    con.close()
    out = []
    base = next((json.loads(d).get("path") for g, n, d in rows if n == "base"), None)
    for g, name, detail in sorted(rows):
        d = json.loads(detail)
        folder = BY_NAME[name].artifact(run_dir, g, d)
        if folder is None:
            continue
        problem = verify(folder)
        if problem:
            out.append(f"{folder.relative_to(run_dir)}: {problem}")
            continue
        try:
            if name == "sllm":
                from sllm.model import load_sllm  # lazy: torch, which the zygote loads only after redirecting stdout

                load_sllm(folder)  # the self-describing checkpoint, built from its own config
            elif name == "map":
                np.load(folder / "latents.npy", allow_pickle=False)
            elif name == "retrain" and deep:
                trained_base = RunLayout(run_dir).base
                load_base_model(str(trained_base) if verify(trained_base) is None else str(base), adapter=folder)
        except Exception as e:  # noqa: BLE001 - any failure to load is the finding
            out.append(f"{folder.relative_to(run_dir)} does not load: {type(e).__name__}: {e}")
    return out


def differences(run_dir: Path, ref_dir: Path, deep: bool = True) -> list[str]:
    """What differs between a resumed run folder and the reference (empty: identical)."""
    out = integrity_problems(run_dir)
    a, b = db_content(run_dir), db_content(ref_dir)
    for key in b:
        if a[key] != b[key]:
            ra, rb = a[key], b[key]
            first = next((i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), min(len(ra), len(rb)))
            got = ra[first] if first < len(ra) else "(missing)"
            want = rb[first] if first < len(rb) else "(extra row)"
            out.append(f"{key}: {len(ra)} rows vs {len(rb)} in the reference; first difference at row {first}: "
                       f"{str(got)[:160]} != {str(want)[:160]}")
    out += artifact_problems(run_dir, deep)
    sa, sb = artifact_summary(run_dir), artifact_summary(ref_dir)
    for k in sorted(set(sa) | set(sb)):
        if sa.get(k) != sb.get(k):
            out.append(f"artifact {k}: weights differ from the reference ({sa.get(k)} != {sb.get(k)})")
    return out


# -- the harness --------------------------------------------------------------------------------

@dataclass
class Report:
    reference_s: float = 0.0
    kills: Counter = field(default_factory=Counter)  # stage -> kills while it ran
    fixed_kills: int = 0
    random_kills: int = 0
    compared: int = 0  # resumed folders compared with the reference
    failures: list[str] = field(default_factory=list)

    @property
    def total_kills(self) -> int:
        return self.fixed_kills + self.random_kills

    @property
    def passed(self) -> bool:
        return not self.failures


def stage_at_kill(log: Path) -> str:
    """The stage a killed run was in: the last 'generation G: STAGE' line it logged."""
    found = STAGE_LINE.findall(log.read_text(errors="replace")) if log.is_file() else []
    return found[-1][1] if found else "startup"


def fixed_points(ref_dir: Path) -> list[str]:
    """GEN:STAGE:WHEN for every fault point the reference run passed, in the order a run meets them."""
    from loop.stages import STAGES  # lazy: torch, which the zygote loads only after redirecting stdout

    con = sqlite3.connect(f"file:{ref_dir / 'runs.db'}?mode=ro", uri=True)
    detail = {(g, n): json.loads(d) for g, n, d in con.execute("SELECT generation, name, detail_json FROM stage")}
    con.close()
    points = []
    for g in range(1 + max(g for g, _ in detail)):
        for stage in STAGES:
            name = stage.name
            if (g, name) not in detail:
                continue
            writes = stage.artifact(ref_dir, g, detail[g, name]) is not None
            whens = ["mid_artifact", "artifact_renamed"] if writes else []
            points += [f"{g}:{name}:{w}" for w in whens + ["before_commit", "after_commit"]]
    return points


def run_harness(zygote: Zygote, run_args: list[str], work: Path, kills: int = 20, seed: int = 0, fixed: bool = True,
                say=print, deep: bool = True, reference: tuple[Path, float] | None = None) -> Report:
    """Reference run, fixed-point kills, random kills; every resumed folder compared with the reference.

    `reference`: (folder, seconds) of an uninterrupted run with the same `run_args`, made already."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    rep = Report()
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    n_log = iter(range(10**9))

    def launch(folder: Path, env=None, kill_after=None) -> tuple[Exit, Path]:
        log = logs / f"{next(n_log):04d}-{folder.name}.log"
        return zygote.run([*run_args, "--out", str(folder)], log, env=env, kill_after=kill_after), log

    if reference is None:
        ref = work / "reference"
        shutil.rmtree(ref, ignore_errors=True)
        ex, log = launch(ref)
        if ex.rc != 0:
            rep.failures.append(f"the reference run failed (exit {ex.rc}); see {log}")
            return rep
        rep.reference_s = ex.seconds
    else:
        ref, rep.reference_s = Path(reference[0]), reference[1]
    say(f"reference: uninterrupted run in {rep.reference_s:.1f} s ({ref})")

    def finish(folder: Path, what: str) -> None:
        ex, log = launch(folder)
        if ex.rc != 0:
            rep.failures.append(f"{what}: the clean resume failed (exit {ex.rc}); see {log}")
            return
        diff = differences(folder, ref, deep)
        rep.compared += 1
        if diff:
            rep.failures.append(f"{what}: {diff[0]}" + (f" (+{len(diff) - 1} more)" if len(diff) > 1 else ""))

    t0 = time.monotonic()
    if fixed:
        folder = work / "fixed"
        shutil.rmtree(folder, ignore_errors=True)
        points = fixed_points(ref)
        for point in points:
            ex, log = launch(folder, env={"DARKZONES_CRASH_AT": point})
            if ex.rc != -signal.SIGKILL:
                rep.failures.append(f"fixed point {point}: expected a SIGKILL, got exit {ex.rc}; see {log}")
                break
            rep.fixed_kills += 1
            rep.kills[point.split(":")[1]] += 1
        finish(folder, "fixed points")
        say(f"fixed points: {rep.fixed_kills} kills at {len(points)} points (mid_artifact, artifact_renamed, "
            f"before_commit, after_commit of every stage), {time.monotonic() - t0:.0f} s "
            f"-> {'PASS' if not rep.failures else 'FAIL'}")
        t0 = time.monotonic()

    rng = random.Random(seed)
    chain = 0
    while rep.random_kills < kills:
        folder = work / f"random-{chain}"
        shutil.rmtree(folder, ignore_errors=True)
        while rep.random_kills < kills:
            ex, log = launch(folder, kill_after=rng.uniform(0, rep.reference_s))
            if not ex.killed:
                if ex.rc != 0:
                    rep.failures.append(f"random chain {chain}: a resume failed (exit {ex.rc}); see {log}")
                break  # the run finished before its kill moment
            rep.random_kills += 1
            rep.kills[stage_at_kill(log)] += 1
        finish(folder, f"random chain {chain}")
        chain += 1
    if kills:
        say(f"random moments: {rep.random_kills} kills in {chain} chain(s), each resumed to the end, "
            f"{time.monotonic() - t0:.0f} s -> {'PASS' if not rep.failures else 'FAIL'}")
    return rep


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run.py crashtest",
        description="Kill -9 a run at many moments, resume it, and compare with an uninterrupted run of the same "
                    "settings. Other options (--config, --set, --generations, --corpus, --base-model, ...) go to the run.")
    p.add_argument("--kills", type=int, default=20, help="kills at random moments (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments (the run's seed: --set run.seed=N)")
    p.add_argument("--out", help="work folder (default: a temporary folder, removed after a PASS)")
    p.add_argument("--no-fixed", action="store_true", help="skip the kills at every stage's fixed fault points")
    p.add_argument("--keep", action="store_true", help="keep the work folder after a PASS")
    return p


def main(argv: list[str]) -> int:
    p = build_parser()
    p.error = lambda msg: (print(f"error: {msg}; see `python run.py crashtest --help`", file=sys.stderr), sys.exit(2))
    args, run_args = p.parse_known_args(argv)
    if args.kills < 0:
        print(f"error: --kills must be >= 0, got {args.kills}", file=sys.stderr)
        return 2
    if not any(a == "--generations" or a.startswith("--generations=") for a in run_args):
        run_args = ["--generations", "2", *run_args]  # the default 2-generation job
    # a bad run option fails here, once, with the loop's own one-line error
    try:
        build_from_args(run_parser().parse_args([*run_args, "--out", "x"]))
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SystemExit:
        return 2
    if args.out and (Path(args.out) / "runs.db").exists():
        print(f"error: --out {args.out} is a run folder; pass an empty folder for the crashtest's own runs", file=sys.stderr)
        return 2
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="crashtest-"))
    t0 = time.monotonic()
    print(f"crashtest: work folder {work}; run options: {' '.join(run_args)}", flush=True)
    with Zygote() as z:
        rep = run_harness(z, run_args, work, args.kills, args.seed, not args.no_fixed, say=lambda m: print(m, flush=True))
    per_stage = ", ".join(f"{k} {v}" for k, v in sorted(rep.kills.items(), key=lambda kv: -kv[1]))
    print(f"kills: {rep.total_kills} ({rep.fixed_kills} at fixed points, {rep.random_kills} at random moments); "
          f"per stage: {per_stage or 'none'}")
    print(f"compared {rep.compared} resumed run folder(s) with the reference in {time.monotonic() - t0:.0f} s")
    if rep.passed:
        print("result: PASS (same rows, decisions and weights; no duplicate or missing rows; every artifact verified "
              "and loadable)")
        if not args.out and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    print(f"result: FAIL: {rep.failures[0]}" + (f" (+{len(rep.failures) - 1} more)" if len(rep.failures) > 1 else ""))
    print(f"work folder kept: {work}")
    return 1
