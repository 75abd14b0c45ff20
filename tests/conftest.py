"""Shared fixtures: tiny models built inside the tests (no downloads, no GPU)."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_TEXTS = [
    f"{a} plus {b} equals {a + b}." for a in range(12) for b in range(6)
] + [f"{a} times {b} is {a * b}." for a in range(1, 8) for b in range(1, 8)] + [
    "A triangle has 3 sides.", "A square has 4 corners.", "There are 60 minutes in an hour.",
    "Score: 1 2 3 4 5", "Rate the text from 1 to 5.",
]


def save_tiny_lm(out, hidden: int, heads: int = 2):
    """Train a tiny Llama + BPE tokenizer briefly on TINY_TEXTS and save it to `out`."""
    from lm.base_model import train_small_base
    from loop.config import BaseConfig

    cfg = BaseConfig(vocab_size=300, hidden=hidden, layers=2, heads=heads, max_len=256, epochs=3, lr=5e-3)
    train_small_base(TINY_TEXTS, cfg, out, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A tiny Llama LM + BPE tokenizer trained briefly, saved with save_pretrained."""
    return save_tiny_lm(tmp_path_factory.mktemp("tiny_lm"), hidden=32)


@pytest.fixture
def tiny_lm(tiny_lm_dir):
    """(tokenizer, model) loaded through the same code path as a user's model."""
    from lm.base_model import load_base_model

    return load_base_model(str(tiny_lm_dir))


@pytest.fixture(scope="session")
def one_generation_run(tmp_path_factory):
    """A finished 1-generation run of the tiny settings (tests/test_loop.py TINY), made once.
    Tests that change a run work on a copy (`shutil.copytree`)."""
    from tests.test_loop import TINY, run_cli

    out = tmp_path_factory.mktemp("one_gen") / "run"
    run_cli(["--generations", "1", "--out", str(out), *TINY])
    return out
