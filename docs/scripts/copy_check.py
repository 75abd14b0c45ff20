"""Does a base model copy a molecule from context? `python docs/scripts/copy_check.py BASE_DIR [N]`

For N held-out scaffold-test molecules: the input is BOS + SMILES + EOS + BOS (a copy unit's first
half, lm.base_model.pack_sequences); greedy continuation; counts the canonical-SMILES exact copies.
This separates the base model's copy mechanism from the SLLM's use of it (docs/molecules.md).
"""
import sys

import torch

from domains.molecules.data import load_split
from domains.molecules.domain import canonical
from lm.base_model import encode_texts, load_base_model


def main(base_dir: str, n: int = 200) -> None:
    tok, model = load_base_model(base_dir, "cpu")
    mols = load_split("test_scaffolds", n, 0)
    ok = 0
    for m, x in zip(mols, encode_texts(tok, mols, 128)):
        inp = torch.tensor([x + [tok.bos_token_id]])  # (1, T+1)
        out = model.generate(inp, max_new_tokens=len(x) + 2, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        ok += canonical(tok.decode(out[0, inp.shape[1]:], skip_special_tokens=True).replace(" ", "")) == canonical(m)
    print(f"copied exactly: {ok}/{len(mols)}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 200)
