"""MOSES data: the train / test / scaffold-test SMILES and the MCF + PAINS filter patterns.

Both come from the files of the `molsets` wheel (Polykovskiy et al. 2020,
https://github.com/molecularsets/moses), installed with `pip install --no-deps molsets==0.3.1`.
Its Python code no longer imports with current pandas / RDKit, so the package is only ever
*located* here (importlib.util.find_spec), never imported.
"""
from __future__ import annotations

import csv
import gzip
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from domains.files import CorpusError

SPLITS = ("train", "test", "test_scaffolds")
INSTALL_HINT = ("install it with pip install --no-deps molsets==0.3.1 (or set MOSES_DATA to a folder holding "
                "train.csv.gz, test.csv.gz, test_scaffolds.csv.gz)")


def _moses_package_dir() -> Path | None:
    """The installed `moses` package's folder, found without importing it (its __init__ crashes)."""
    try:
        spec = importlib.util.find_spec("moses")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def moses_data_dir() -> Path:
    """The folder holding MOSES's train.csv.gz, test.csv.gz, test_scaffolds.csv.gz (and the *_stats.npz files):
    $MOSES_DATA if set, else the installed molsets wheel's moses/dataset/data."""
    env = os.environ.get("MOSES_DATA")
    if env:
        d = Path(env).expanduser()
        missing = [f"{s}.csv.gz" for s in SPLITS if not (d / f"{s}.csv.gz").is_file()]
        if missing:
            raise CorpusError(f"MOSES data not found: MOSES_DATA={d} lacks {', '.join(missing)}; {INSTALL_HINT}")
        return d
    pkg = _moses_package_dir()
    d = pkg / "dataset" / "data" if pkg else None
    if d is None or not all((d / f"{s}.csv.gz").is_file() for s in SPLITS):
        raise CorpusError(f"MOSES data not found; {INSTALL_HINT}")
    return d


def moses_metrics_dir() -> Path:
    """The installed wheel's moses/metrics folder (mcf.csv, wehi_pains.csv)."""
    pkg = _moses_package_dir()
    d = pkg / "metrics" if pkg else None
    if d is None or not (d / "mcf.csv").is_file() or not (d / "wehi_pains.csv").is_file():
        raise CorpusError("MOSES filter patterns (moses/metrics/mcf.csv, wehi_pains.csv) not found; "
                          "install them with pip install --no-deps molsets==0.3.1")
    return d


@lru_cache(maxsize=None)
def _read_split(path: str) -> tuple[str, ...]:
    """The SMILES column of one MOSES csv.gz, cached per process (train: 1.58M rows, ~3 s to read)."""
    with gzip.open(path, "rt", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or "SMILES" not in header:
            raise CorpusError(f"{path} has no SMILES column (header {header!r}); {INSTALL_HINT}")
        col = header.index("SMILES")
        return tuple(row[col] for row in reader if len(row) > col)


def load_split(split: str, n: int | None = None, seed: int = 0) -> list[str]:
    """SMILES of a MOSES split in file order: all of them (n=None), or a reproducible random subset of n
    (numpy default_rng(seed), kept in file order)."""
    if split not in SPLITS:
        raise CorpusError(f"unknown MOSES split {split!r}; use one of {', '.join(SPLITS)}")
    smiles = _read_split(str(moses_data_dir() / f"{split}.csv.gz"))
    if n is None:
        return list(smiles)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= len(smiles):
        raise CorpusError(f"n={n!r}: the MOSES {split} split has {len(smiles)} molecules; pass 1 <= n <= "
                          f"{len(smiles)} (or None for all)")
    idx = np.sort(np.random.default_rng(seed).choice(len(smiles), size=int(n), replace=False))
    return [smiles[i] for i in idx]


@lru_cache(maxsize=None)
def mcf_patterns() -> tuple[tuple[str, str], ...]:
    """(name, SMARTS) of MOSES's medicinal-chemistry filters, moses/metrics/mcf.csv (header: names,smarts)."""
    with open(moses_metrics_dir() / "mcf.csv", newline="") as f:
        return tuple((row["names"].strip(), row["smarts"].strip()) for row in csv.DictReader(f) if row["smarts"])


@lru_cache(maxsize=None)
def pains_patterns() -> tuple[tuple[str, str], ...]:
    """(name, SMARTS) of the PAINS filters MOSES uses, moses/metrics/wehi_pains.csv (no header: smarts,name;
    the SMARTS are padded with spaces after their closing quote, hence the strip)."""
    with open(moses_metrics_dir() / "wehi_pains.csv", newline="") as f:
        return tuple((row[1].strip(), row[0].strip()) for row in csv.reader(f) if len(row) >= 2 and row[0].strip())


@lru_cache(maxsize=1)
def scaffold_test_set() -> frozenset[str]:
    """MOSES's scaffold-test molecules as a set: the held-out knowledge a decode may rediscover."""
    return frozenset(load_split("test_scaffolds"))
