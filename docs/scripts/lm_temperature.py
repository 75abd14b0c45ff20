"""Validity of a SMILES base model's own samples by temperature.

`python docs/scripts/lm_temperature.py BASE_DIR [N] [T,T,...]`: N samples from BOS at each
temperature (the `lm` sampler's path, backends.transformers_backend.sample, seed 0); prints the
share that RDKit parses (valid), unique among the valid, and novel (valid and absent from MOSES
train). The table in docs/molecules.md came from this script on runs/mol-s0/base.
"""
import sys

from backends.transformers_backend import TransformersBackend
from domains.molecules.data import load_split
from domains.molecules.domain import canonical


def main(base_dir: str, n: int = 1000, temperatures: str = "1.0,0.9,0.8,0.7") -> None:
    train = set(load_split("train"))
    be = TransformersBackend(base_dir, batch_size=200)
    print("| temperature | valid | unique | novel |\n| --- | --- | --- | --- |")
    for t in (float(x) for x in temperatures.split(",")):
        valid = [c for c in (canonical(s) for s in be.sample(n, 64, t, 0)) if c]
        novel = [c for c in valid if c not in train]
        print(f"| {t} | {len(valid) / n:.1%} | {len(set(valid)) / max(len(valid), 1):.3f} | "
              f"{len(novel) / max(len(valid), 1):.3f} |")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) if i == 0 else a for i, a in enumerate(sys.argv[2:])))
