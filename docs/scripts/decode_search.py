"""Is a missed round trip a search error or a model error? Greedy against beam search on a run's SLLM.

Encodes the first N texts of a run's held-out knowledge set (molecules: scaffold test) and of its
evaluation texts (molecules: MOSES test) with generation G's SLLM, decodes each latent greedily and
with beam search (`decode.beams`: the transformers backend, the decoder adapter on), and prints the exact
canonical match of each. If beam search finds the original where greedy decoding does not, the
decoder's likelihood already prefers it (a search error); if not, the decoder itself is wrong.

    python docs/scripts/decode_search.py runs/mol6-s2 --n 300 --beams 1,4,8
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from backends.base import get_backend  # noqa: E402
from loop.context import RunContext  # noqa: E402
from loop.runner import run_config  # noqa: E402
from sllm.codec import GenParams  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--generation", type=int, default=0)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--beams", default="1,4,8")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = run_config(args.run)
    ctx = RunContext(cfg)
    tok, model = ctx.model(None)
    codec = ctx.codec(args.generation, model, tok)
    canon = ctx.domain.canonical
    backend = get_backend("transformers", "", None, "cpu", 50, loaded=(tok, codec.model))
    for name, pool in (("knowledge", ctx.data.knowledge), ("eval", ctx.data.eval)):
        texts = [t.text for t in pool[: args.n]]
        z = codec.encode(texts)
        for beams in (int(b) for b in args.beams.split(",")):
            t0 = time.perf_counter()
            out = codec.decode(z, backend, GenParams(cfg.decode.max_new_tokens, 0.0, 0, beams))
            exact = np.mean([canon(a) == canon(b) for a, b in zip(texts, out)])
            print(f"{name} ({len(texts)} texts), beams {beams}: exact {exact:.1%} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
