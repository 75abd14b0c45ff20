"""`python run.py bench {sllm,decode,critic,moses,map,features,report}`: benchmarks that print figures and write JSON."""
from __future__ import annotations

import importlib
import os
import sys

BENCHES = {"sllm": "bench.sllm", "decode": "bench.backends", "critic": "bench.backends", "moses": "bench.moses",
           "map": "bench.map", "features": "bench.features", "report": "bench.report"}

CHOICES = tuple(BENCHES)  # what `run.py --help` lists


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHES:
        print(f"error: name a benchmark: python run.py bench {{{','.join(BENCHES)}}} ...", file=sys.stderr)
        return 2
    if "-q" in argv or "--quiet" in argv:  # before anything imports tqdm, which reads it at import
        os.environ["TQDM_DISABLE"] = "1"
    return importlib.import_module(BENCHES[argv[0]]).main(argv)
