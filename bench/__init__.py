"""`python run.py bench {sllm,decode,critic}`: benchmarks that print figures and write JSON."""
from __future__ import annotations

import importlib
import sys

BENCHES = {"sllm": "bench.sllm", "decode": "bench.backends", "critic": "bench.backends"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHES:
        print(f"error: name a benchmark: python run.py bench {{{','.join(BENCHES)}}} ...", file=sys.stderr)
        return 2
    return importlib.import_module(BENCHES[argv[0]]).main(argv)
