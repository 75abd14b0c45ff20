"""The run's command-line options and how they map onto settings (`section.key`).

Shared by `python run.py` and by the experiments and benches, which take the same options
(`cli.main`, `experiments.cli`, `bench.*`): one parser, one mapping, one way to build a Config.
"""
from __future__ import annotations

import argparse

from domains.base import domain_names
from latent.samplers import samplers
from loop.config import ConfigError, build_config, load_config_file

USAGE = "python run.py [--generations N] [--out RUN_DIR] [options]   run or resume the loop"

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py", usage=USAGE,
                                description="Dark-zone explorer: generate from the SLLM's dark zones, judge, retrain, repeat.")
    p.add_argument("--generations", type=int, help="generations to run in total (default 2); more on a finished run continues it")
    p.add_argument("--out", help="run folder (default runs/default); the same folder resumes")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument("--base-model", help="local Hugging Face causal-LM folder or hub id (default: train a small one)")
    p.add_argument("--domain", help=f"the domain plugin: {', '.join(domain_names())} "
                                    "(default: maths, or the domain that claims --corpus's extension, else text)")
    p.add_argument("--corpus", help=".txt (one text a line) or .jsonl (text, optional topic); molecules: .smi/.csv of SMILES; default: the domain's own")
    p.add_argument("--rubric", help="a text file with the critic's rubric (default: the domain's own)")
    p.add_argument("--backend", help="decoding backend: transformers, vllm or vllm-server")
    p.add_argument("--base-url", help="running vLLM server for --backend vllm-server, e.g. http://127.0.0.1:8000")
    p.add_argument("--device", help="cpu, cuda or auto")
    p.add_argument("--db", help="PostgreSQL URL for shared use, postgresql+psycopg://USER@HOST:PORT/DBNAME "
                                "(default: RUN_DIR/runs.db); password from PGPASSWORD or ~/.pgpass, see docs/postgres.md")
    p.add_argument("--samplers", help="comma-separated samplers: "
                   + ",".join(n for n, s in samplers().items() if not s.feedback))
    p.add_argument("--config", help="TOML or YAML file holding any settings, by section")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first: a module that registers samplers, judges or domains (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any setting, e.g. --set sllm.latent_dim=128 (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


FLAG_KEYS = {"generations": "run.generations", "out": "run.out", "seed": "run.seed", "base_model": "base.model",
             "domain": "corpus.domain", "corpus": "corpus.path", "rubric": "judges.rubric", "backend": "decode.backend", "base_url": "decode.base_url", "device": "run.device", "samplers": "sample.samplers",
             "db": "run.db"}


def build_from_args(args, below: dict | None = None):
    """The settings of a command line. `below` ({"section.key": value}): values a command brings
    (an experiment's protocol) under the config file's and the command line's, above the domain's."""
    file_values = load_config_file(args.config) if args.config else {}
    overrides = set_overrides(args.set)
    for attr, key in FLAG_KEYS.items():
        v = getattr(args, attr)
        if v is not None:
            overrides[key] = v
    given = {f"{sec}.{k}" for sec, vals in file_values.items() if isinstance(vals, dict) for k in vals} | set(overrides)
    # a domain's own setting (molecules.max_texts) may be given in its older spelling (corpus.max_texts)
    under = {k: v for k, v in (below or {}).items() if k not in given and f"corpus.{k.partition('.')[2]}" not in given}
    return build_config(file_values, {**under, **overrides})


def set_overrides(items: list[str]) -> dict[str, str]:
    """--set SECTION.KEY=VALUE items as {"section.key": "value"}."""
    overrides = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must be SECTION.KEY=VALUE, e.g. --set sllm.latent_dim=128")
        k, v = item.split("=", 1)
        overrides[k.strip()] = v.strip()
    return overrides
