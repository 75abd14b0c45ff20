"""`python run.py experiment holdout --domain molecules`: the NN1/NN2 test on MOSES scaffold-test molecules,
on a tiny run of a few hundred molecules, plus its comparison helpers and its one-line errors."""
import json
import sqlite3

import numpy as np
import pytest

pytest.importorskip("rdkit")

from domains.molecules.holdout import ScaffoldTestHoldout, tanimoto_pairs  # noqa: E402
from experiments.holdout_knowledge import DECODERS, decode_figures, split_parts  # noqa: E402
from tests.test_experiments import run_cli  # noqa: E402
from tests.test_molecules import ASPIRIN, TINY_MOL, needs_moses  # noqa: E402

PARTS = ["--part-a", "40", "--max-texts", "20"]


# ------------------------------------------------------------------------- helpers
def test_split_parts_disjoint_sized_and_seeded():
    smiles = [f"C{'C' * i}O" for i in range(50)] + ["CO"]  # "CO" twice: one molecule
    a, b = split_parts(smiles + ["CO"], n_b=10, n_a=30, seed=3)
    assert len(a) == 30 and len(b) == 10 and not set(a) & set(b) and len(set(a)) == 30
    assert (a, b) == split_parts(smiles + ["CO"], 10, 30, 3) and (a, b) != split_parts(smiles, 10, 30, 4)
    with pytest.raises(ValueError, match="cannot give part A 45"):
        split_parts(smiles, n_b=10, n_a=45, seed=0)


def test_tanimoto_pairs():
    t = tanimoto_pairs([ASPIRIN, ASPIRIN, "CCO", "C1CC"], ["OC(=O)c1ccccc1OC(C)=O", "CCO", "CCO", "CCO"])
    assert t[0] == pytest.approx(1.0) and 0 <= t[1] < 0.3 and t[2] == pytest.approx(1.0) and t[3] == 0  # invalid: 0


@needs_moses
def test_decode_figures_count_exact_scaffold_and_rediscoveries():
    from domains.molecules.data import load_split

    sf = load_split("test_scaffolds", 2, seed=0)
    orig = [ASPIRIN, "CCO", sf[0], sf[1]]
    dec = ["OC(=O)c1ccccc1OC(C)=O",  # the original, spelt otherwise: exact
           "C1CC",  # invalid
           sf[0],  # a scaffold-test original decoded exactly
           sf[0]]  # another scaffold-test molecule: a rediscovery other than the original
    h = ScaffoldTestHoldout()
    arr = {d: h.compare(orig, dec, frozenset(), frozenset()) for d, _ in DECODERS}
    f = decode_figures(h, arr, np.ones(4, bool))
    assert f["texts"] == 4 and f["valid_nn1"] == 0.75 and f["exact_nn1"] == 0.5
    assert f["n_rediscovered_nn1"] == 2 and f["n_rediscovered_other_nn1"] == 1
    assert f["tanimoto_nn1"] == pytest.approx(np.mean([1, 1, tanimoto_pairs([sf[1]], [sf[0]])[0]]))
    assert f["same_scaffold_nn1"] >= 0.5 and f["identical_nn1_nn2"] == 0.75 and f["tanimoto_nn1_vs_nn2"] == 1
    assert decode_figures(h, arr, np.zeros(4, bool)) == {"texts": 0}


# ------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def mol_holdout(tmp_path_factory):
    """No --run: the experiment makes a tiny molecules run at OUT/run (generation 0 is NN1)."""
    d = tmp_path_factory.mktemp("molhold")
    js = d / "hold.json"
    p = run_cli(["experiment", "holdout", "--out", str(d / "h"), "--json", str(js), *PARTS, *TINY_MOL, "-q"])
    return d / "h", js, p


@needs_moses
def test_molecules_holdout_parts_models_figures_table(mol_holdout):
    from domains.molecules.data import scaffold_test_set
    from sllm.model import load_sllm

    out, js, p = mol_holdout
    assert "scaffold-test B (unseen by NN1; NN2 saw part A)" in p.stdout and "control: MOSES test" in p.stdout
    assert "share dark in NN1's map (kNN)" in p.stdout and "exact canonical match with the original" in p.stdout
    parts = json.loads((out / "parts.json").read_text())
    a, b, control = set(parts["A"]), set(parts["B"]), set(parts["control"])
    assert len(a) == 40 and len(b) == 20 and len(control) == 20
    assert not a & b and not (a | b) & control
    sf = scaffold_test_set()
    assert a | b <= sf and not control & sf
    con = sqlite3.connect(out / "run" / "runs.db")
    (cfg_json,) = con.execute("SELECT config_json FROM run").fetchone()
    con.close()
    assert json.loads(cfg_json)["molecules"]["max_texts"] == 400
    nn1, nn2 = load_sllm(out / "run" / "gen-000" / "sllm"), load_sllm(out / "nn2" / "gen-000" / "sllm")
    s1, s2 = nn1.state_dict(), nn2.state_dict()
    assert s1.keys() == s2.keys() and any(not np.array_equal(s1[k].numpy(), s2[k].numpy()) for k in s1)
    # NN2 is a run up to its SLLM stage: NN1's SLLM trained on the run's corpus and part A, on NN1's base model
    con = sqlite3.connect(out / "nn2" / "runs.db")
    (nn2_json,) = con.execute("SELECT config_json FROM run").fetchone()
    stages = sorted(n for (n,) in con.execute("SELECT name FROM stage"))
    (detail,) = con.execute("SELECT detail_json FROM stage WHERE name = 'sllm'").fetchone()
    con.close()
    nn2_cfg = json.loads(nn2_json)
    assert stages == ["base", "sllm"] and nn2_cfg["base"]["model"] == str(out / "run" / "base")
    assert nn2_cfg["sllm"]["init"] == str(out / "run" / "gen-000" / "sllm")
    assert (out / "part-a.txt").read_text().split() == parts["A"] and json.loads(detail)["file_texts"] == 40
    res = json.loads(js.read_text())["result"]
    assert res["part_a"] == 40 and res["part_b"] == 20 and res["train_texts"] == 400
    for name in ("topic", "control"):
        g = res["groups"][name]
        assert g["texts"] == 20
        for k in ("dark_share_nn2_in_nn1_map", "gmm_dark_share_nn2_in_nn1_map", "outside_envelope_share",
                  "knn_dark_share_ignoring_envelope", "scaffold_in_nn1_training",
                  "dark_combination_share_nn1_own_encoding", "dark_combination_share_nn2"):
            assert 0 <= g[k] <= 1, (name, k)
        assert g["density_score_median"] >= 0 and g["drift_nn1_to_nn2"] > 0  # NN2 encodes otherwise
        for sub in ("all", "dark_only"):
            f = g[sub]
            for k, v in f.items():
                if k.startswith("n_"):
                    assert 0 <= v <= f["texts"], (name, sub, k)
                elif k == "reencoded_density_median_nn1":
                    assert v >= 0
                elif k != "texts" and v is not None:
                    assert 0 <= v <= 1 + 1e-9, (name, sub, k, v)
        assert 0 <= g["all"]["reencoded_dark_nn1"] <= 1  # the round-trip check of NN1's decodes
        assert g["all"]["texts"] == 20 and g["dark_only"]["texts"] <= 20
    assert res["groups"]["topic"]["scaffold_in_nn1_training"] == 0  # scaffold-test: none in MOSES train
    assert 0 <= res["groups"]["topic"]["scaffold_in_part_a"] <= 1
    assert res["groups"]["control"]["scaffold_in_part_a"] is None
    con = sqlite3.connect(out / "runs.db")
    kinds = dict(con.execute("SELECT kind, count(*) FROM experimentsample GROUP BY kind").fetchall())
    con.close()
    assert kinds == {f"{g}/{d}": 20 for g in ("topic", "control") for d, _ in DECODERS}


@needs_moses
def test_molecules_holdout_with_run_reuses_nn2_and_writes_nothing_in_the_run(mol_holdout):
    out = mol_holdout[0]
    run = out / "run"
    before = {f: f.stat().st_mtime_ns for f in run.rglob("*") if f.is_file()}
    nn2 = out / "nn2" / "gen-000" / "sllm" / "sllm.safetensors"
    nn2_time = nn2.stat().st_mtime_ns
    p = run_cli(["experiment", "holdout", "--domain", "molecules", "--run", str(run), "--out", str(out), *PARTS, "-q",
                 "--set", "run.threads=1"])
    assert "molecules encoded by NN2" in p.stdout and "experiment 2 stored" in p.stdout
    assert nn2.stat().st_mtime_ns == nn2_time  # NN2 reused, not trained again
    after = {f: f.stat().st_mtime_ns for f in run.rglob("*") if f.is_file()}
    changed = {f.name for f in set(before) | set(after) if before.get(f) != after.get(f)}
    assert changed <= {"runs.db-shm", "runs.db-wal"}, changed  # read only (SQLite's own shared-memory files aside)
    bad = run_cli(["experiment", "holdout", "--run", str(run), "--out", str(out), "--part-a", "41", "--max-texts", "20",
                   "-q"], check=False)
    assert bad.returncode == 2 and "another holdout setup" in bad.stderr


@pytest.mark.parametrize("args, message", [
    (["--domain", "molecules", "--topic", "fractions"], "holds out its scaffold-test molecules"),
    (["--domain", "molecules", "--control", "addition"], "control is MOSES test molecules"),
    (["--domain", "molecules", "--base-sees-topic"], "--base-sees-topic"),
    (["--domain", "molecules", "--part-a", "0"], "--part-a and --max-texts must be >= 1"),
    (["--domain", "molecules", "--corpus", "x.smi"], "drop --corpus"),
    (["--run", "/nonexistent/run"], "no runs.db there"),
    (["--domain", "maths", "--run", "/nonexistent/run"], "drop --run"),
    ([], "needs --topic"),
    (["--topic", "scaffold-test"], "needs --topic"),
    (["--topic", "fractions", "--part-a", "10"], "--part-a is for the holdout of a domain's knowledge set"),
])
def test_holdout_bad_input_is_a_one_line_error(args, message, tmp_path, capsys):
    from experiments.cli import main

    assert main(["holdout", "--out", str(tmp_path / "h"), "-q", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("error: ") and "\n" not in err, err
    assert not (tmp_path / "h").exists()  # refused before anything was written


@needs_moses
def test_molecules_holdout_refuses_more_molecules_than_there_are(mol_holdout, capsys):
    from experiments.cli import main

    run = mol_holdout[0] / "run"
    assert main(["holdout", "--run", str(run), "--out", str(mol_holdout[0].parent / "h2"), "--part-a", "200000",
                 "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--part-a 200000" in err and "\n" not in err, err


@needs_moses
def test_molecules_holdout_refuses_runs_of_one_training_seed(mol_holdout, tmp_path):
    import shutil

    run = mol_holdout[0] / "run"
    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    p = run_cli(["experiment", "holdout", "--run", str(run), "--run", str(twin), "--out", str(tmp_path / "h"), *PARTS,
                 "-q"], check=False)
    assert p.returncode == 2 and "share a training seed" in p.stderr
