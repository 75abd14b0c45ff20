"""The molecule helpers the domain and the MOSES metrics share: parsing, canonical SMILES, Morgan
fingerprints. RDKit is imported at the first call, so that importing the domain costs nothing
for a run of another domain.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable

import numpy as np

from common.errors import CorpusError

FP_RADIUS, FP_BITS = 2, 1024  # MOSES fingerprint(fp_type="morgan"): morgan__r=2, morgan__n=1024


@functools.lru_cache(maxsize=1)
def rdkit():
    """RDKit's Chem module, its warnings off (invalid SMILES are counted, not printed one by one)."""
    try:
        from rdkit import Chem, RDLogger  # lazy: RDKit start-up, not needed to read a run's settings
    except ImportError:
        raise CorpusError("the molecules domain needs RDKit: pip install rdkit") from None
    RDLogger.DisableLog("rdApp.*")
    return Chem


def to_mol(smi):
    """MOSES get_mol: None for a non-string, an empty string, or a SMILES RDKit cannot parse and
    sanitize; a Mol is returned as it is."""
    Chem = rdkit()
    if isinstance(smi, Chem.Mol):
        return smi
    if not isinstance(smi, str) or not smi:
        return None
    try:
        mol = Chem.MolFromSmiles(smi)
        if mol is None:
            return None
        Chem.SanitizeMol(mol)
    except Exception:  # noqa: BLE001 - RDKit raises several types on odd input; a bad molecule is just invalid
        return None
    return mol


def canonical_smiles(smi: str) -> str | None:
    """RDKit canonical SMILES (isomeric, as MOSES canonic_smiles); None if invalid or empty."""
    mol = to_mol(smi)
    return (rdkit().MolToSmiles(mol) or None) if mol is not None else None


def canonical(smiles: str) -> str | None:
    """The domain's canonical form: canonical SMILES of one whitespace-free token with at least one
    atom; None otherwise. Stricter than MOSES, whose parser reads "CCO name" as ethanol: a decode
    with trailing words is not a molecule here."""
    s = smiles.strip()
    if not s or " " in s:
        return None
    mol = to_mol(s)
    return None if mol is None or mol.GetNumAtoms() == 0 else rdkit().MolToSmiles(mol)


@functools.lru_cache(maxsize=1)
def morgan():
    from rdkit.Chem import rdFingerprintGenerator  # lazy: RDKit start-up, not needed to read a run's settings

    rdkit()
    return rdFingerprintGenerator.GetMorganGenerator(radius=FP_RADIUS, fpSize=FP_BITS)


def fingerprint(mol) -> np.ndarray | None:
    """(FP_BITS,) uint8 Morgan bits of a Mol; None for None. The same bits as MOSES's
    GetMorganFingerprintAsBitVect(mol, 2, nBits=1024) (checked on 2,000 test molecules against the
    test_stats.npz MOSES ships)."""
    return None if mol is None else morgan().GetFingerprintAsNumPy(mol).astype(np.uint8)


def fingerprints(smiles: Iterable[str]) -> np.ndarray:
    """(N, FP_BITS) uint8 Morgan bits; a row of zeros for an invalid molecule."""
    rows = [fingerprint(to_mol(s)) for s in smiles]
    out = np.zeros((len(rows), FP_BITS), np.uint8)
    for i, r in enumerate(rows):
        if r is not None:
            out[i] = r
    return out


def selfies_edits(smiles: list[str], k: int, seed: int) -> list[str]:
    """Each molecule after `k` random SELFIES point mutations (a token replaced, inserted or
    deleted; the STONED walk of Nigam et al. 2021), as canonical SMILES. Every SELFIES string is a
    molecule, so each step stays valid; the alphabet is the tokens of the given molecules' own
    SELFIES, so no element or charge they lack comes in. "" where a molecule cannot be written
    as SELFIES or the walk ends at an empty one."""
    import selfies as sf  # lazy: only `bench sllm` walks molecules

    rng = np.random.default_rng(seed)
    encoded = []
    for smi in smiles:
        try:
            encoded.append(list(sf.split_selfies(sf.encoder(smi))))
        except sf.EncoderError:
            encoded.append(None)
    alphabet = sorted({tok for toks in encoded if toks for tok in toks})
    out = []
    for toks in encoded:
        if not toks:
            out.append("")
            continue
        toks = list(toks)
        for _ in range(k):
            op = rng.integers(3) if len(toks) > 1 else rng.integers(2)  # never delete the last token
            if op == 1:
                toks.insert(int(rng.integers(len(toks) + 1)), alphabet[rng.integers(len(alphabet))])
            elif op == 0:
                toks[int(rng.integers(len(toks)))] = alphabet[rng.integers(len(alphabet))]
            else:
                del toks[int(rng.integers(len(toks)))]
        out.append(canonical(sf.decoder("".join(toks)) or "") or "")
    return out
