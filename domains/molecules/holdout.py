"""The molecules domain's knowledge set for the holdout experiment: MOSES's scaffold-test molecules.

They are real molecules whose Bemis-Murcko scaffolds occur in neither MOSES train nor test, so a
network trained on MOSES train never saw their kind; the control is as many MOSES test molecules
(unseen, but their scaffolds are in train). A decode is compared with its original through RDKit:
validity, canonical SMILES, Tanimoto on Morgan bits, the Bemis-Murcko scaffold, and whether it is
itself a scaffold-test molecule (a rediscovery).
"""
from __future__ import annotations

from typing import Container

import numpy as np

from domains.base import CorpusSplits, KnowledgeHoldout
from domains.molecules.chem import FP_BITS, FP_RADIUS, canonical, fingerprints
from domains.molecules.data import load_split, scaffold_test_set


def tanimoto_pairs(a: list[str], b: list[str]) -> np.ndarray:
    """Tanimoto similarity of a[i] and b[i] on Morgan bits (the domain's fingerprints); 0 where
    either is invalid."""
    fa, fb = fingerprints(a).astype(bool), fingerprints(b).astype(bool)  # (N, FP_BITS) each
    inter, union = (fa & fb).sum(1), (fa | fb).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


class ScaffoldTestHoldout(KnowledgeHoldout):
    name = "scaffold-test"
    control = "MOSES test"
    noun = "molecules"
    decode_rows = (
        ("valid", "valid (RDKit)", "{:.1%}"),
        ("exact", "exact canonical match with the original", "{:.1%}"),
        ("tanimoto", "mean Tanimoto to the original (valid decodes)", "{:.3f}"),
        ("same_scaffold", "same Bemis-Murcko scaffold as the original", "{:.1%}"),
        ("n_rediscovered", "decodes that are scaffold-test molecules (n)", "{:d}"),
        ("n_rediscovered_other", "... other than the original (n)", "{:d}"),
        ("valid_new", "valid and absent from MOSES train", "{:.1%}"),
    )
    pair_rows = (("identical_nn1_nn2", "NN1 and NN2 decode the same molecule", "{:.1%}"),
                 ("tanimoto_nn1_vs_nn2", "mean Tanimoto NN1 vs NN2 decode (both valid)", "{:.3f}"))
    group_rows = (("scaffold_in_nn1_training", "scaffold occurs in NN1's training molecules", "{:.1%}"),
                  ("scaffold_in_part_a", "scaffold occurs in part A (NN2's extra molecules)", "{:.1%}"))

    def sets(self, cfg, seed: int, n_held: int, n_control: int) -> tuple[list[str], list[str]]:
        # the draws the domain's corpus makes of the same splits (MoleculesDomain.load without --corpus)
        return load_split("test_scaffolds", n_held or None, seed), load_split("test", n_control or None, seed)

    def compare(self, originals: list[str], decodes: list[str], seen: frozenset[str],
                train_keys: Container[str]) -> dict[str, np.ndarray]:
        from domains.molecules.metrics import scaffold  # lazy: RDKit start-up, not needed to read a run's settings

        can = [canonical(t) if t else None for t in decodes]
        ref = [canonical(t) or t for t in originals]
        valid = np.array([c is not None for c in can])
        sf = scaffold_test_set()
        redisc = np.array([c is not None and c in sf for c in can])
        exact = np.array([c is not None and c == r for c, r in zip(can, ref)])
        scaf_o = [scaffold(r) for r in ref]
        return {
            "canonical": np.array(can, dtype=object), "valid": valid, "exact": exact,
            "tanimoto": tanimoto_pairs(ref, [c or "" for c in can]),
            "same_scaffold": np.array([c is not None and s is not None and scaffold(c) == s
                                       for c, s in zip(can, scaf_o)]),
            "rediscovered": redisc, "rediscovered_other": redisc & ~exact,
            "rediscovered_in_a": np.array([c is not None and c in seen for c in can]),
            "valid_new": np.array([c is not None and c not in train_keys for c in can]),
        }

    def figures(self, arr: dict[str, np.ndarray]) -> dict:
        """Shares in [0, 1], the Tanimoto mean over valid decodes (None when none is valid), counts prefixed n_."""
        out = {"valid": float(arr["valid"].mean()), "exact": float(arr["exact"].mean()),
               "tanimoto": float(arr["tanimoto"][arr["valid"]].mean()) if arr["valid"].any() else None,
               "same_scaffold": float(arr["same_scaffold"].mean()), "valid_new": float(arr["valid_new"].mean())}
        for k in ("rediscovered", "rediscovered_other", "rediscovered_in_a"):
            out[f"n_{k}"] = int(arr[k].sum())
        return out

    def pair_figures(self, a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict:
        c1, c2 = a["canonical"], b["canonical"]
        both = np.array([x is not None and y is not None for x, y in zip(c1, c2)])
        t12 = tanimoto_pairs([x or "" for x in c1], [y or "" for y in c2])
        return {"identical_nn1_nn2": float(np.mean([x is not None and x == y for x, y in zip(c1, c2)])),
                "tanimoto_nn1_vs_nn2": float(t12[both].mean()) if both.any() else None}

    def group_figures(self, originals: list[str], splits: CorpusSplits, seen: list[str], held: bool) -> dict:
        from domains.molecules.metrics import scaffold, train_scaffolds  # lazy: RDKit start-up, not needed to read a run's settings

        train_scaf = train_scaffolds(splits)
        seen_scaf = {scaffold(x) for x in seen} - {None}
        scaf = [scaffold(s) for s in originals]
        return {"scaffold_in_nn1_training": float(np.mean([s in train_scaf for s in scaf])),
                "scaffold_in_part_a": float(np.mean([s in seen_scaf for s in scaf])) if held else None}

    def sample_detail(self, arr: dict[str, np.ndarray], i: int) -> dict:
        return {"exact": bool(arr["exact"][i]), "tanimoto": float(arr["tanimoto"][i]),
                "same_scaffold": bool(arr["same_scaffold"][i]), "rediscovered": bool(arr["rediscovered"][i])}

    def setup_note(self, result: dict) -> str:
        return (f"setup: NN1 = generation 0's SLLM of run {result['run']} (trained on {result['train_texts']} MOSES "
                f"train molecules; its base model and latent map are the run's); NN2 = NN1 continued "
                f"{result['continue_epochs']} epoch(s) on those plus {result['part_a']} scaffold-test molecules (part "
                f"A, disjoint from B). NN1 and NN2 decode NN2's latent; the round trip decodes NN1's own. Tanimoto: "
                f"Morgan radius {FP_RADIUS}, {FP_BITS} bits.")
