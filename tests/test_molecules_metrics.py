"""MOSES data loader and metrics (domains/molecules/data.py, metrics.py): known answers on hand-made sets, and
the MOSES files where the molsets wheel is installed (skipped otherwise)."""
import csv
import math
from pathlib import Path

import numpy as np
import pytest

from domains.files import CorpusError
from domains.molecules import metrics as M
from domains.molecules.chem import to_mol
from domains.molecules.data import load_split, moses_data_dir


def _have_moses() -> bool:
    try:
        moses_data_dir()
        return True
    except CorpusError:
        return False


needs_moses = pytest.mark.skipif(not _have_moses(), reason="MOSES data not installed: "
                                 "pip install --no-deps molsets==0.3.1")

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
DIVERSE = ["CCO", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "C1CCNCC1", "OC(=O)CCCl",
           "Clc1ccc(Br)cc1", "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "N#Cc1ccncc1", "CSCC(N)C(=O)O"]


def test_canonical_smiles():
    assert M.canonical_smiles("OCC") == M.canonical_smiles("C(O)C") == "CCO"
    assert M.canonical_smiles("C1=CC=CC=C1") == M.canonical_smiles("c1ccccc1")
    for bad in ("", "C1CC", "not a molecule", "c1cccc1", None):
        assert M.canonical_smiles(bad) is None


def test_valid_unique_novel_on_known_lists():
    gen = ["CCO", "OCC", "c1ccccc1", "xyz", "C1CC", "CCN"]
    assert M.fraction_valid(gen) == pytest.approx(4 / 6)
    assert M.fraction_unique(gen) == pytest.approx(3 / 4)  # CCO twice among the 4 valid
    assert M.fraction_unique(gen, k=2) == pytest.approx(1 / 2)  # the first 2 valid: CCO, OCC
    assert M.fraction_unique(gen, k=3) == pytest.approx(2 / 3)
    assert M.novelty(gen, ["CCO", "CCN"]) == pytest.approx(1 / 3)  # distinct valid: CCO, benzene, CCN
    assert M.novelty(gen, {"CCO"}) == pytest.approx(2 / 3)
    assert math.isnan(M.fraction_valid([])) and math.isnan(M.fraction_unique(["xyz"]))


def test_internal_diversity():
    assert M.internal_diversity(["CCO"] * 5) == pytest.approx(0.0)
    assert M.internal_diversity(["CCO"] * 5, p=2) == pytest.approx(0.0)
    assert M.internal_diversity(DIVERSE) > 0.5
    assert M.internal_diversity(DIVERSE, p=2) <= M.internal_diversity(DIVERSE) + 1e-9  # power mean >= mean


def test_filters():
    assert M.passes_filters(ASPIRIN)
    assert not M.passes_filters("C[N+](C)(C)C")  # charged
    assert not M.passes_filters("CC[Si](C)C")  # atom outside C N S O F Cl Br H
    assert not M.passes_filters("C1CCCCCCC1")  # 8-membered ring
    assert not M.passes_filters("O=C1C=CC(=O)C=C1")  # a quinone: PAINS / MCF
    assert not M.passes_filters("invalid")
    assert M.fraction_passes_filters([ASPIRIN, "C[N+](C)(C)C", "xyz"]) == pytest.approx(1 / 2)


def test_filter_screen_gives_the_full_verdict():
    """The pattern-fingerprint screen changes speed only: same verdict as matching every MCF / PAINS query."""
    from rdkit import RDConfig

    path = Path(RDConfig.RDDataDir) / "Pains" / "test_data" / "wehi_mols.csv"
    if not path.is_file():
        pytest.skip(f"{path} not in this RDKit build")
    with open(path, newline="") as f:
        smis = [row[0] for _, row in zip(range(150), csv.reader(f), strict=False)] + DIVERSE
    mols = [to_mol(s) for s in smis]
    full = [M._passes(m, screen=False) for m in mols]
    assert [M._passes(m) for m in mols] == full
    assert 0 < sum(full) < len(full)  # both verdicts occur in the sample


def test_snn_frag_scaffold_similarity():
    assert M.snn(DIVERSE, DIVERSE) == pytest.approx(1.0)
    assert M.frag_similarity(DIVERSE, DIVERSE) == pytest.approx(1.0)
    assert 0 < M.snn(["CCCO"], ["CCO", "c1ccccc1"]) < 1
    nt = M.nearest_tanimoto(["CCO", "bad", "c1ccccc1"], ["CCO", "c1ccccc1"])
    assert nt.shape == (3,) and nt[0] == pytest.approx(1) and np.isnan(nt[1]) and nt[2] == pytest.approx(1)
    two_ring = ["c1ccc(cc1)Cc1ccncc1", "c1ccc2ccccc2c1"]
    assert M.scaffold_similarity(two_ring, two_ring) == pytest.approx(1.0)
    assert math.isnan(M.scaffold_similarity(["CCO"], two_ring))  # no scaffold of >= 2 rings: MOSES gives NaN


def test_scaffold_and_properties():
    assert M.scaffold("CC(C)Cc1ccc(cc1)C(C)C(=O)O") == "c1ccccc1"  # ibuprofen
    assert M.scaffold("Cc1ccc(Cc2ccncc2)cc1") == "c1ccc(Cc2ccncc2)cc1"
    assert M.scaffold("CCO") is None and M.scaffold("bad") is None
    assert M.scaffold("c1ccccc1", min_rings=2) is None
    assert 0.5 < M.qed(ASPIRIN) < 0.6 and 0.4 < M.qed("c1ccccc1") < 0.5
    assert 1 <= M.sa_score("c1ccccc1") < 1.5 and 1 < M.sa_score(ASPIRIN) < 2.5
    assert M.qed("bad") is None and M.sa_score("bad") is None


def test_reference_save_load(tmp_path):
    ref = M.Reference.from_smiles(DIVERSE + ["bad"])
    assert len(ref) == len(DIVERSE)
    ref.save(tmp_path / "ref.npz")
    back = M.Reference.load(tmp_path / "ref.npz")
    assert back.smiles == ref.smiles and np.array_equal(back.fps, ref.fps)
    assert back.frags == ref.frags and back.scaffolds == ref.scaffolds and back.fcd_stats is None


@pytest.fixture
def one_torch_thread():
    """ChemNet's LSTM on 2 shared cores: 1 thread is 3x faster than 2 competing ones."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_fcd_small(one_torch_thread):
    """FCD of a set with itself is ~0, of two different sets positive. 50 vs 50 molecules: fcd_torch pads every
    SMILES to 350 LSTM steps, ~15 ms a molecule on one core."""
    a = [f"{s}C" for s in DIVERSE] * 5
    b = [f"{s}N" for s in DIVERSE[::-1]] * 5
    sa, sb = M._fcd_stats(a), M._fcd_stats(b)
    assert abs(M._frechet(sa, sa)) < 1e-3
    assert M._frechet(sa, sb) > 0.1
    assert math.isnan(M.fcd(["CCO"], a))  # fewer than 2 valid molecules


def test_missing_data_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("MOSES_DATA", str(tmp_path))
    with pytest.raises(CorpusError, match=r"pip install --no-deps molsets==0\.3\.1.*MOSES_DATA"):
        load_split("test", 10)


@needs_moses
def test_loader_subset_is_reproducible():
    a, b = load_split("test", 50, seed=3), load_split("test", 50, seed=3)
    assert a == b and len(set(a)) == 50 and a != load_split("test", 50, seed=4)
    full = load_split("test")
    pos = [full.index(s) for s in a[:5]]
    assert pos == sorted(pos)  # file order
    with pytest.raises(CorpusError, match="split"):
        load_split("validation")
    with pytest.raises(CorpusError, match="n="):
        load_split("test", 0)


@needs_moses
def test_moses_metrics_columns_in_range():
    gen = load_split("test", 200, seed=1) + ["not a smiles"]
    test = M.Reference.from_smiles(load_split("test", 1000, seed=2))
    test_sf = M.Reference.from_smiles(load_split("test_scaffolds", 1000, seed=2))
    r = M.moses_metrics(gen, test, test_sf, train=frozenset(load_split("test", 1000, seed=2)), fcd=False)
    assert r["valid"] == pytest.approx(200 / 201)
    assert r["unique@1000"] == 1.0 and r["unique@10000"] == 1.0
    assert 0.3 < r["SNN/Test"] < 0.7 and 0.3 < r["SNN/TestSF"] < 0.7
    assert r["Frag/Test"] > 0.9 and r["Frag/TestSF"] > 0.9
    assert 0 <= r["Scaf/TestSF"] < r["Scaf/Test"] <= 1  # scaffold test: scaffolds unseen elsewhere
    assert 0.8 < r["IntDiv"] < 0.9 and 0.8 < r["IntDiv2"] <= r["IntDiv"]
    assert r["Filters"] == 1.0  # every MOSES molecule passes MOSES's filters
    assert 0.8 < r["Novelty"] <= 1.0
    assert "FCD/Test" not in r
