"""`python run.py experiment discovery|holdout` end to end on tiny settings, plus their statistics."""
import json
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import DISCOVERY_COLUMNS, ci95, summarise_discovery
from tests.test_loop import TINY_MODELS

ROOT = Path(__file__).resolve().parents[1]

TINY = TINY_MODELS + ["-q"]


def run_cli(args, check=True):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1", PYTHONHASHSEED="0")
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


# ------------------------------------------------------------------------- statistics
def test_ci95_t_interval():
    c = ci95([1.0, 2.0, 3.0])
    assert c["mean"] == pytest.approx(2.0) and c["method"] == "t" and c["n"] == 3
    # t(0.975, 2) = 4.303; sd = 1; half width = 4.303 / sqrt(3)
    assert c["hi"] - c["mean"] == pytest.approx(4.3027 / math.sqrt(3), rel=1e-3)
    assert ci95([5.0])["lo"] is None and ci95([])["mean"] is None


def test_summary_headline_ratios():
    fig = lambda tn: {"true_new_per_1000": tn, "decoded": 10}  # noqa: E731
    res = summarise_discovery({"dark": [fig(30), fig(30)], "prior": [fig(10), fig(10)], "lm": [fig(20), fig(20)]},
                              budget=100, seeds=2)
    assert res["headline"]["dark_vs_lm"]["ratio"] == pytest.approx(1.5)
    assert res["headline"]["dark_vs_lm"]["met"] is False  # target 3x
    assert res["headline"]["dark_vs_prior"]["met"] is True  # 3x >= 1.5x
    assert res["winner"] == ["dark"]


# ------------------------------------------------------------------------- discovery
@pytest.fixture(scope="module")
def discovery_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("disc")
    run_dir, png, js = d / "run", d / "pic.png", d / "disc.json"
    p = run_cli(["experiment", "discovery", "--out", str(run_dir), "--budget", "6", "--seeds", "2",
                 "--png", str(png), "--json", str(js), *TINY])
    return run_dir, png, js, p


def test_discovery_table_json_png_db(discovery_run):
    run_dir, png, js, p = discovery_run
    for _, header in DISCOVERY_COLUMNS:
        assert header in p.stdout
    for sampler in ("dark", "dark-kept", "compose", "prior", "interpolate", "lm"):
        assert sampler in p.stdout
    assert "dark vs lm" in p.stdout and "false-dark rate" in p.stdout
    doc = json.loads(js.read_text())
    res = doc["result"]
    per = res["per_sampler"]
    assert set(per) == {"dark", "dark-kept", "compose", "prior", "interpolate", "lm"}
    # the round-trip check: every decode re-encoded; dark-kept keeps only decodes still dark
    seeds = res["per_seed"]
    for f in seeds["dark-kept"]:
        assert f["decodes_spent"] >= 6 and (f["text_dark_share"] in (None, 1.0))
        assert f["decodes_per_kept"] is None or f["decodes_per_kept"] >= 1
    for name in ("dark", "prior", "interpolate"):
        for f in seeds[name]:
            assert 0 <= f["text_dark_share"] <= 1 and f["decodes_spent"] == 6 and f["snap_median"] >= 0
    assert all(f["snap_median"] == 0 for f in seeds["lm"])  # its latent is its text's encoding
    # read through the map's feature dictionary: every sampler's decodes, and compose's own features kept
    for name in ("dark", "compose", "prior", "interpolate", "lm"):
        assert all(0 <= f["combo_text_share"] <= 1 for f in seeds[name])
    assert all(0 <= f["features_kept"] <= 1 for f in seeds["compose"])
    assert not any("features_kept" in f for n in ("dark", "prior", "interpolate", "lm") for f in seeds[n])
    for name, agg in per.items():
        assert agg["decoded"]["n"] == 2 and agg["decoded"]["lo"] is not None  # CI over 2 seeds
        assert agg["decoded"]["lo"] <= agg["decoded"]["mean"] <= agg["decoded"]["hi"]
        assert 0 <= agg["true_new_per_1000"]["mean"] <= 1000
    assert res["ci_method"] == "t"
    assert 0 <= res["calibration"]["false_dark_rate"] <= 1
    assert png.is_file() and png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    con = sqlite3.connect(run_dir / "runs.db")
    (n_exp,) = con.execute("SELECT count(*) FROM experimentrun WHERE name='discovery'").fetchone()
    per_kind = dict(con.execute("SELECT kind, count(*) FROM experimentsample GROUP BY kind").fetchall())
    kept = [json.loads(d) for (d,) in con.execute("SELECT detail_json FROM experimentsample WHERE kind='dark-kept'")]
    composed = [json.loads(d) for (d,) in con.execute("SELECT detail_json FROM experimentsample WHERE kind='compose'")]
    con.close()
    assert n_exp == 1 and {k: v for k, v in per_kind.items() if k != "dark-kept"} == {
        "dark": 12, "compose": 12, "prior": 12, "interpolate": 12, "lm": 12}
    assert all(len(d["provenance"]["features"]) == 2 and isinstance(d["features_kept"], bool) for d in composed)
    assert per_kind.get("dark-kept", 0) <= 12 and all(d["reencoded_dark"] for d in kept)
    # the map stage reports its false-dark rate too
    detail = json.loads(sqlite3.connect(run_dir / "runs.db").execute(
        "SELECT detail_json FROM stage WHERE name='map'").fetchone()[0])
    assert "false_dark_rate" in detail


def test_discovery_reuses_a_run_and_inspect_lists_it(discovery_run):
    run_dir = discovery_run[0]
    p = run_cli(["experiment", "discovery", "--run", str(run_dir), "--budget", "4", "--seeds", "1",
                 "--only", "dark,lm", "--json", str(run_dir / "second.json"), "-q", "--set", "run.threads=1"])
    assert "one seed: no interval" in p.stdout
    out = run_cli(["inspect", str(run_dir), "experiments"]).stdout
    assert out.count("discovery") == 2 and "true-new /1000" in out
    show = run_cli(["inspect", str(run_dir), "experiments", "show", "2"]).stdout
    assert "sampler" in show and "dark" in show and "lm" in show
    bad = run_cli(["inspect", str(run_dir), "experiments", "show", "99"], check=False)
    assert bad.returncode == 2 and "no experiment with id 99" in bad.stderr


def test_discovery_over_training_seeds(discovery_run, tmp_path):
    """Two runs of different training seeds: the headline figures get intervals over them."""
    other = tmp_path / "seed1"
    run_cli(["--generations", "1", "--out", str(other), "--seed", "1", *TINY])
    js = tmp_path / "seeds.json"
    p = run_cli(["experiment", "discovery", "--run", str(discovery_run[0]), "--run", str(other), "--budget", "4",
                 "--seeds", "1", "--only", "dark,dark-kept,lm", "--json", str(js), "-q"])
    assert "over 2 training seeds" in p.stdout and "highest true-new yield" in p.stdout
    combined = json.loads(js.read_text())["combined"]
    assert set(combined["per_sampler"]) == {"dark", "dark-kept", "lm"}
    c = combined["per_sampler"]["dark"]["dark_share"]
    assert c["n"] == 2 and c["lo"] <= c["mean"] <= c["hi"]
    same = run_cli(["experiment", "discovery", "--run", str(other), "--run", str(other), "-q"], check=False)
    assert same.returncode == 2 and "same run folder" in same.stderr


def test_discovery_bad_flags_are_one_line_errors(tmp_path):
    p = run_cli(["experiment", "discovery", "--out", str(tmp_path / "r"), "--only", "dark,bogus", *TINY], check=False)
    assert p.returncode == 2 and "bogus" in p.stderr
    p = run_cli(["experiment", "discovery", "--run", str(tmp_path / "missing"), "-q"], check=False)
    assert p.returncode == 2 and "no run database" in p.stderr


# ------------------------------------------------------------------------- holdout
@pytest.fixture(scope="module")
def holdout_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("hold")
    js = d / "hold.json"
    p = run_cli(["experiment", "holdout", "--topic", "fractions", "--control", "addition", "--out", str(d / "h"),
                 "--json", str(js), *TINY])
    return d / "h", js, p


def test_holdout_numbers_table_db(holdout_run):
    out, js, p = holdout_run
    assert "topic fractions (unseen by NN1)" in p.stdout and "control addition (seen)" in p.stdout
    assert "share dark in NN1's map (kNN)" in p.stdout and "BLEU NN1 decode vs NN2 decode" in p.stdout
    assert "share holding a dark combination of NN1's features (NN1 encoding)" in p.stdout
    res = json.loads(js.read_text())["result"]
    for g in ("topic", "control"):
        grp = res["groups"][g]
        for k in ("dark_share_nn2_in_nn1_map", "gmm_dark_share_nn2_in_nn1_map", "outside_envelope_share",
                  "dark_combination_share_nn1_own_encoding", "dark_combination_share_nn2"):  # NN1's feature dictionary
            assert 0 <= grp[k] <= 1
        assert grp["rarest_pair_lift_median_nn1_own_encoding"] > 0 and grp["rarest_pair_lift_median_nn2"] > 0
        for k, v in grp["all"].items():
            if k not in ("texts", "reencoded_density_median_nn1"):
                assert 0 <= v <= 1 + 1e-6, (g, k, v)
        assert grp["all"]["reencoded_density_median_nn1"] >= 0  # the round-trip check of NN1's decodes
        assert grp["all"]["texts"] == 8  # 4 facts x 2 phrasings
    assert res["groups"]["control"]["seen_by_nn1"] and not res["groups"]["topic"]["seen_by_nn1"]
    con = sqlite3.connect(out / "runs.db")
    kinds = dict(con.execute("SELECT kind, count(*) FROM experimentsample GROUP BY kind").fetchall())
    con.close()
    assert kinds == {"topic/nn1": 8, "topic/nn2": 8, "control/nn1": 8, "control/nn2": 8}
    assert "holdout" in run_cli(["inspect", str(out), "experiments"]).stdout
    assert "NN1 decode dark once re-encoded by NN1" in p.stdout
    con = sqlite3.connect(out / "runs.db")
    details = [json.loads(d) for (d,) in con.execute("SELECT detail_json FROM experimentsample WHERE kind = 'topic/nn1'")]
    con.close()
    assert all(isinstance(d["reencoded_dark"], bool) and d["reencoded_density"] >= 0 for d in details)
    share = res["groups"]["topic"]["all"]["reencoded_dark_nn1"]
    assert share == pytest.approx(sum(d["reencoded_dark"] for d in details) / len(details))


def test_holdout_resumes_and_refuses_another_setup(holdout_run):
    out = holdout_run[0]
    p = run_cli(["experiment", "holdout", "--topic", "fractions", "--control", "addition", "--out", str(out), *TINY])
    assert "texts encoded by NN2" in p.stdout  # models reused, measured again
    bad = run_cli(["experiment", "holdout", "--topic", "money", "--out", str(out), *TINY], check=False)
    assert bad.returncode == 2 and "another holdout setup" in bad.stderr


def test_holdout_over_training_seeds(tmp_path):
    """--train-seeds: one holdout per seed in OUT/seed-S, then each figure's mean and interval over them."""
    js = tmp_path / "seeds.json"
    out = tmp_path / "h"
    p = run_cli(["experiment", "holdout", "--topic", "fractions", "--control", "addition", "--train-seeds", "0,1",
                 "--out", str(out), "--json", str(js), *TINY])
    assert "--- training seed 0" in p.stdout and "--- training seed 1" in p.stdout
    assert "over 2 training seeds" in p.stdout and "NN1 decode dark once re-encoded by NN1" in p.stdout
    doc = json.loads(js.read_text())
    assert sorted(doc["runs"]) == ["seed-0", "seed-1"]
    per_seed = []
    for name, r in doc["runs"].items():
        assert Path(r["out"]) == out / name and (out / name / "nn1").is_dir() and (out / name / "nn2").is_dir()
        per_seed.append(json.loads(Path(r["json"]).read_text())["result"])
    assert per_seed[0]["groups"]["topic"]["all"] != per_seed[1]["groups"]["topic"]["all"] or \
        per_seed[0]["calibration_nn1_map"] != per_seed[1]["calibration_nn1_map"]  # two trainings, not one twice
    for key in ("groups/topic/dark_share_nn2_in_nn1_map", "groups/topic/all/reencoded_dark_nn1",
                "groups/control/all/exact_nn1"):
        fig = doc["combined"]["figures"][key]
        vals = [_leaf(r["groups"], key.split("/")[1:]) for r in per_seed]
        assert fig["n"] == 2 and fig["mean"] == pytest.approx(sum(vals) / 2)
        assert fig["lo"] <= fig["mean"] <= fig["hi"]


def _leaf(d, path):
    for k in path:
        d = d[k]
    return d


@pytest.mark.parametrize("args, message", [
    (["--train-seeds", "0"], "at least 2 different seeds"),
    (["--train-seeds", "0,0"], "at least 2 different seeds"),
    (["--train-seeds", "a,b"], "comma-separated integers"),
    (["--train-seeds", "0,1", "--run", "x", "--run", "y"], "repeat --run instead"),
    (["--run", "x", "--run", "x"], "given twice"),
])
def test_holdout_seed_errors(tmp_path, args, message):
    p = run_cli(["experiment", "holdout", "--topic", "fractions", "--out", str(tmp_path / "h"), *args, "-q"], check=False)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr
