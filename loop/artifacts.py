"""Artifact manifests: every artifact folder the loop writes carries MANIFEST.json.

`atomic_dir` writes the manifest (sha256 and size of every file) into the temp folder before its
fsync and rename, so a folder at its final path is complete by construction. Loading checks the
manifest again: a truncated, edited, partial or missing file is detected, and the stage that made
it is redone (see `Loop.verify_artifacts`) instead of its output being silently used.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

from common.errors import ArtifactError

MANIFEST = "MANIFEST.json"
_CHUNK = 1 << 20

# path -> stat signature of its files when last verified: a process hashes each artifact once
_verified: dict[str, tuple] = {}


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> dict:
    """Hash every file under `folder` into folder/MANIFEST.json (call before the folder's fsync)."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
             for p in _files(folder)}
    manifest = {"version": 1, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def _signature(folder: Path) -> tuple:
    return tuple((p.as_posix(), st.st_size, st.st_mtime_ns) for p in [folder / MANIFEST, *_files(folder)]
                 for st in [p.stat()])


def verify(folder: str | Path) -> str | None:
    """None when `folder` matches its manifest, else the first problem found, in words."""
    folder = Path(folder)
    if not folder.is_dir():
        return "folder missing"
    mpath = folder / MANIFEST
    if not mpath.is_file():
        return f"no {MANIFEST}"
    key = str(folder.resolve())
    try:
        sig = _signature(folder)
    except OSError as e:
        return f"cannot read it ({e.strerror or e})"
    if _verified.get(key) == sig:
        return None
    try:
        files = json.loads(mpath.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} unreadable"
    present = {p.relative_to(folder).as_posix() for p in _files(folder)}
    for name in sorted(set(files) - present):
        return f"{name} missing"
    for name in sorted(present - set(files)):
        return f"{name} not in the manifest"
    for name, want in sorted(files.items()):
        p = folder / name
        size = p.stat().st_size
        if size != want["size"]:
            return f"{name} has {size} bytes, the manifest says {want['size']}"
        if sha256_file(p) != want["sha256"]:
            return f"{name} has a different sha256 than its manifest"
    _verified[key] = sig
    return None


def check(folder: str | Path, what: str) -> None:
    """Raise ArtifactError unless `folder` matches its manifest."""
    problem = verify(folder)
    if problem is not None:
        raise ArtifactError(f"{what} at {folder} is damaged ({problem}); rerun the same command: "
                            "the run redoes the stage that wrote it")


def fault(spot: str) -> str | None:
    """The fault kind that DARKZONES_CRASH_AT=GEN:STAGE:WHEN[:KIND] asks for at `spot` (GEN:STAGE:WHEN)."""
    target = os.environ.get("DARKZONES_CRASH_AT")
    if not target:
        return None
    parts = target.split(":")
    if ":".join(parts[:3]) != spot:
        return None
    return parts[3] if len(parts) > 3 else "kill"


def crash_point(g: int, name: str, when: str) -> None:
    """Fault injection for the resume tests: DARKZONES_CRASH_AT=GEN:STAGE:WHEN kills the process
    with SIGKILL (as kill -9 would) at that point; GEN:STAGE:WHEN:sigint sends it SIGINT (Ctrl-C)
    instead, and GEN:STAGE:WHEN:enospc raises "no space left on device" there.

    WHEN: before_commit (the stage's rows are flushed inside its open transaction),
    after_commit, and, for stages writing an artifact, mid_artifact (files written to the temp
    folder, not yet fsynced or renamed) and artifact_renamed (in place, not yet committed)."""
    kind = fault(f"{g}:{name}:{when}")
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "sigint":
        os.kill(os.getpid(), signal.SIGINT)  # Python raises KeyboardInterrupt right here
    elif kind == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{name} artifact of generation {g}")


def fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")) + [path]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_dir(final: Path, point: tuple[int, str] | None = None):
    """Yield a temp folder; on success write its MANIFEST.json (sha256 of every file), fsync it and
    rename it to `final` (replacing a stale one). `point` = (generation, stage) names its fault points."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if point:
            crash_point(*point, "mid_artifact")
        write_manifest(tmp)
        fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fd = os.open(final.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write (disk full, Ctrl-C) leaves no temp folder
        raise
    if point:
        crash_point(*point, "artifact_renamed")
