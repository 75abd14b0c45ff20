"""Edited molecules for an SLLM to train on: MOSES training molecules one SELFIES step away.

Takes MOSES training molecules that neither the corpus nor the SLLM's own `sllm.false_texts`
language texts hold (run seed S, the default molecules settings), walks each one random SELFIES
point mutation away (the domain's `edit`: every step a valid molecule), and writes N distinct
results that are in none of the corpus, those language texts, MOSES test or scaffold test, one a
line, for `--set sllm.texts_file=FILE`. The SLLM then also sees molecules off the corpus's
distribution; the base model, the map and novelty never see them.

    python docs/scripts/edited_molecules.py runs/edits1-25k.txt --n 25000 --language 25000
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from domains.base import get_domain  # noqa: E402
from domains.molecules.data import load_split, scaffold_test_set  # noqa: E402
from loop.options import build_from_args, parser  # noqa: E402

EDIT_SEED = 7  # the walks' own stream, apart from every draw of the run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="the text file to write")
    p.add_argument("--n", type=int, default=25000, help="edited molecules to write")
    p.add_argument("--language", type=int, default=25000,
                   help="the sllm.false_texts of the runs that will use the file (their molecules are left out)")
    p.add_argument("--steps", type=int, default=1, help="SELFIES point mutations per molecule")
    p.add_argument("--seed", type=int, default=0, help="the run seed whose corpus and language texts are left out")
    args = p.parse_args()
    cfg = build_from_args(parser().parse_args(["--domain", "molecules", "--seed", str(args.seed)]))
    dom = get_domain("molecules")
    seen = {t.text for t in dom.language_texts(cfg.corpus, args.seed, args.language)}
    seen |= {t.text for t in dom.texts(cfg.corpus, args.seed)[0]}
    pool = [t.text for t in dom.language_texts(cfg.corpus, args.seed, args.language + 2 * args.n + 5000)]
    sources = [m for m in pool if m not in seen][: int(args.n * 1.2)]
    held = set(load_split("test")) | set(scaffold_test_set())
    out, kept = [], set()
    for e in dom.edit(sources, args.steps, EDIT_SEED):
        if e and e not in held and e not in seen and e not in kept:
            kept.add(e)
            out.append(e)
    if len(out) < args.n:
        sys.exit(f"error: only {len(out)} distinct edited molecules from {len(sources)} sources; lower --n")
    Path(args.out).write_text("\n".join(out[: args.n]) + "\n")
    print(f"wrote {args.n} edited molecules ({args.steps} SELFIES step(s) from {len(sources)} MOSES training molecules) "
          f"to {args.out}")


if __name__ == "__main__":
    main()
