"""Command line: parse -> build config -> run (house style, rule 2). Errors print one line."""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sqlite3
import sys

USAGE = """python run.py [--generations N] [--out RUN_DIR] [options]   run or resume the loop
       python run.py inspect RUN_DIR [summary|candidates|show|export|zones|metrics] ...
       python run.py bench {sllm,decode,critic} ...
       python run.py experiment {discovery,holdout} ...
       python run.py crashtest ...
"""

# Subcommands: each module has main(argv) -> exit code.
SUBCOMMANDS = {"inspect": "loop.inspect", "bench": "loop.bench", "experiment": "loop.experiments",
               "crashtest": "loop.crashtest"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py", usage=USAGE,
                                description="Dark-zone explorer: generate from the SLLM's dark zones, judge, retrain, repeat.")
    p.add_argument("--generations", type=int, help="generations to run in total (default 2); more on a finished run continues it")
    p.add_argument("--out", help="run folder (default runs/default); the same folder resumes")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument("--base-model", help="local Hugging Face causal-LM folder or hub id (default: train a small one)")
    p.add_argument("--corpus", help=".txt (one text a line) or .jsonl (text, optional topic); default: built-in maths")
    p.add_argument("--backend", help="decoding backend: transformers, vllm or vllm-server")
    p.add_argument("--base-url", help="running vLLM server for --backend vllm-server, e.g. http://127.0.0.1:8000")
    p.add_argument("--device", help="cpu, cuda or auto")
    p.add_argument("--samplers", help="comma-separated samplers: dark,prior,interpolate,lm")
    p.add_argument("--config", help="TOML or YAML file holding any settings, by section")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any setting, e.g. --set sllm.latent_dim=128 (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


FLAG_KEYS = {"generations": "run.generations", "out": "run.out", "seed": "run.seed", "base_model": "base.model",
             "corpus": "corpus.path", "backend": "decode.backend", "base_url": "decode.base_url", "device": "run.device", "samplers": "sample.samplers"}


def build_from_args(args):
    from loop.config import ConfigError, build_config, load_config_file

    file_values = load_config_file(args.config) if args.config else {}
    overrides = {}
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must be SECTION.KEY=VALUE, e.g. --set sllm.latent_dim=128")
        k, v = item.split("=", 1)
        overrides[k.strip()] = v.strip()
    for attr, key in FLAG_KEYS.items():
        v = getattr(args, attr)
        if v is not None:
            overrides[key] = v
    return build_config(file_values, overrides)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    p = parser()

    def one_line_error(message: str):  # argparse's default prints the whole usage block first
        print(f"error: {message}; see `python run.py --help`", file=sys.stderr)
        sys.exit(2)

    p.error = one_line_error
    args = p.parse_args(argv)
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "sentence_transformers", "transformers", "peft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from corpus import CorpusError
    from loop.base_model import ModelError
    from loop.config import ConfigError
    from storage.db import StorageError

    try:
        cfg = build_from_args(args)
        from loop.controller import Loop

        Loop(cfg).run()
    except (ConfigError, CorpusError, ModelError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished stages are saved; rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:
        from safetensors import SafetensorError
        from sqlalchemy.exc import SQLAlchemyError

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
