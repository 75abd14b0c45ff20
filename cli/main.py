"""Command line: parse -> build config -> run. Errors print one line."""
from __future__ import annotations

import errno
import importlib
import logging
import os
import sqlite3
import sys

from safetensors import SafetensorError
from sqlalchemy.exc import SQLAlchemyError

from common.errors import ConfigError, UserError
from common.plugins import import_plugins
from loop.options import USAGE, build_from_args, parser

__all__ = ["USAGE", "build_from_args", "main", "parser"]

# Subcommands: each module has main(argv) -> exit code.
SUBCOMMANDS = {"inspect": "cli.inspect", "bench": "bench", "experiment": "experiments",
               "crashtest": "cli.crashtest", "report": "report.cli"}




def usage() -> str:
    """The usage block: the loop, then every subcommand with the commands its own parser or table
    offers, so a command added there shows here."""
    lines = [USAGE]
    for name, module in SUBCOMMANDS.items():
        choices = getattr(importlib.import_module(module), "CHOICES", ())
        arg = " RUN_DIR" if name in ("inspect", "report") else ""
        lines.append(f"       python run.py {name}{arg}" + (f" {{{','.join(choices)}}}" if choices else "") + " ...")
    return "\n".join(lines) + "\n"


# The subcommands that take the loop's settings (--set): they record the plugins as run.plugins,
# so a resumed run or an experiment on a finished run imports them again without --plugin.
SETTINGS_COMMANDS = (["experiment"], ["bench", "sllm"])


def load_plugins(argv: list[str]) -> list[str]:
    """Import each `--plugin MODULE` (a module that registers samplers, judges or domains when
    imported) and return argv without them, so every command, subcommands too, sees its plugins;
    the loop and the commands that take settings get them as `run.plugins`."""
    rest, names, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--plugin" or a.startswith("--plugin="):
            name = a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1 if "=" in a else 2
            if not name:
                raise ConfigError("--plugin needs a module name, e.g. --plugin mypackage.plugins")
            names.append(name)
            continue
        rest.append(a)
        i += 1
    import_plugins(names)
    if names and (not rest or rest[0] not in SUBCOMMANDS or any(rest[:len(c)] == c for c in SETTINGS_COMMANDS)):
        rest += ["--set", f"run.plugins={','.join(names)}"]
    return rest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "-q" in argv or "--quiet" in argv:  # before a subcommand's module imports tqdm, which reads it at import
        os.environ["TQDM_DISABLE"] = "1"
    try:
        argv = load_plugins(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if argv and argv[0] in SUBCOMMANDS:
        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    p = parser()
    p.usage = usage()

    def one_line_error(message: str):  # argparse's default prints the whole usage block first
        print(f"error: {message}; see `python run.py --help`", file=sys.stderr)
        sys.exit(2)

    p.error = one_line_error
    args = p.parse_args(argv)
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "sentence_transformers", "transformers", "peft", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg = build_from_args(args)
        from loop.runner import Loop  # lazy: torch start-up, not needed for --help or the subcommands

        Loop(cfg).run()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished stages are saved; rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:
        if isinstance(e, SafetensorError):  # e.g. a truncated model.safetensors in --base-model's folder
            print(f"error: a .safetensors weights file is corrupt or partial ({str(e).strip().splitlines()[0]}); "
                  "re-save or re-download --base-model's weights, then rerun", file=sys.stderr)
            return 2
        if not isinstance(e, (SQLAlchemyError, sqlite3.Error)):
            raise
        msg = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        if "locked" in msg or "busy" in msg:
            fix = "another program is writing to the run database; close it, then rerun the same command to resume"
        elif "readonly" in msg or "unable to open" in msg:
            fix = "the run folder or its database is not writable; fix its permissions or pass another --out"
        else:
            fix = "rerun the same command to resume; if it persists, pass a new --out"
        print(f"error: database: {msg}; {fix}", file=sys.stderr)
        return 1
    return 0


def os_error_line(e: OSError) -> str:
    """One line for a failed file operation, with the fix that fits its cause."""
    where = f" ({e.filename})" if e.filename else ""
    what = e.strerror or str(e)
    if e.errno == errno.ENOSPC:
        return f"{what}{where}; free disk space, then rerun the same command to resume (finished stages are kept)"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{what}{where}; the run folder must be writable: fix its permissions or pass another --out"
    return f"{what}{where}; fix the cause, then rerun the same command to resume"
