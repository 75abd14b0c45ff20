"""SLLM training throughput against batch size on a saved base model (molecules, 2 threads).

Trains a fresh SLLM (the default settings, decoder adapter included) for 30 steps at each batch
size on the first 30 x batch molecules of the corpus and its 50,000 extra MOSES molecules, and
prints seconds per step and molecules per second. If a larger batch gave more molecules per
second, the 40-minute budget could see more molecules; on a CPU the step is compute-bound.

    python docs/scripts/sllm_throughput.py runs/molbase 64,128,256
    python docs/scripts/sllm_throughput.py runs/molbase 64 compile    # the same through sllm.compile

With `compile`, a first 5-step training compiles the graphs (timed apart), then the timed one runs.
A short probe's step time is no budget: whole 7,814-step runs on this shared machine took
0.23-0.30 s a step against the probe's 0.244 (docs/sllm.md).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from domains.base import get_domain  # noqa: E402
from lm.base_model import load_base_model  # noqa: E402
from loop.config import build_config  # noqa: E402
from sllm import adapter  # noqa: E402
from sllm.codec import Codec  # noqa: E402
from sllm.train import train_sllm  # noqa: E402


def main() -> None:
    base, sizes = sys.argv[1], [int(b) for b in sys.argv[2].split(",")]
    compiled = sys.argv[3:] == ["compile"]
    torch.set_num_threads(2)
    cfg = build_config(None, {"corpus.domain": "molecules", "sllm.false_texts": 50000, "sllm.compile": compiled})
    domain = get_domain("molecules")
    train, _ = domain.texts(cfg.corpus, 0)
    texts = [t.text for t in train + domain.language_texts(cfg.corpus, 0, 50000)]
    embedder = domain.meaning_target(cfg.corpus.meaning)
    tok, model = load_base_model(base, "cpu")
    for bs in sizes:
        sub = texts[: bs * 30]
        targets = embedder.embed(sub)
        torch.manual_seed(0)
        codec = Codec.new(cfg.sllm, model, tok, embedder.dim)
        if compiled:
            t0 = time.perf_counter()
            train_sllm(codec.sllm, codec.model, tok, sub[: bs * 5], targets[: bs * 5], 1, cfg.sllm.lr, bs, 0, desc="compile")
            print(f"batch {bs}: compiling and 5 steps {time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        info = train_sllm(codec.sllm, codec.model, tok, sub, targets, 1, cfg.sllm.lr, bs, 0, desc="throughput")
        dt = time.perf_counter() - t0
        print(f"batch {bs}: {info['steps']} steps in {dt:.1f} s, {dt / info['steps']:.3f} s a step, "
              f"{len(sub) / dt:.0f} molecules a second", flush=True)
        model = adapter.detach(codec.model)
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
