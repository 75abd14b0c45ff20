"""`python run.py experiment discovery|holdout|generations` end to end on tiny settings, plus their statistics."""
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import DISCOVERY_COLUMNS, ci95, summarise_discovery
from experiments.cli import main as experiment_main
from loop.context import RunContext
from loop.runner import run_config
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
    assert doc["environment"]["torch"] and doc["environment"]["threads"] >= 1
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
                 "--only", "dark,lm", "--json", str(run_dir / "second.json"), "-q", "--set", "run.threads=1",
                 "--set", "sample.envelope=subspace"])
    assert "one seed: no interval" in p.stdout
    # how proposals are drawn is a measuring setting: taken, not ignored
    assert "ignoring" not in p.stderr
    assert json.loads((run_dir / "second.json").read_text())["settings"]["config"]["sample"]["envelope"] == "subspace"
    out = run_cli(["inspect", str(run_dir), "experiments"]).stdout
    assert out.count("discovery") == 2 and "true-new /1000" in out
    show = run_cli(["inspect", str(run_dir), "experiments", "show", "2"]).stdout
    assert "sampler" in show and "dark" in show and "lm" in show
    bad = run_cli(["inspect", str(run_dir), "experiments", "show", "99"], check=False)
    assert bad.returncode == 2 and "no experiment with id 99" in bad.stderr


def test_discovery_over_training_seeds(discovery_run, tmp_path, capsys):
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
    assert experiment_main(["discovery", "--run", str(other), "--run", str(other), "-q"]) == 2
    assert "same run folder" in capsys.readouterr().err
    # figures measured earlier join the runs measured now: a single-run JSON, and the seeds JSON,
    # which keeps each run's own means
    assert all("per_sampler" in v["result"] for v in json.loads(js.read_text())["runs"].values())
    joined = tmp_path / "joined.json"
    p = run_cli(["experiment", "discovery", "--run", str(other), "--add-results", str(discovery_run[2]), "--budget", "4",
                 "--seeds", "1", "--only", "dark,lm", "--json", str(joined), "-q"])
    assert "over 2 training seeds" in p.stdout
    j = json.loads(joined.read_text())
    assert len(j["runs"]) == 2 and j["combined"]["per_sampler"]["dark"]["dark_share"]["n"] == 2
    assert {v["seed"] for v in j["runs"].values()} == {0, 1}
    bad = tmp_path / "bad.json"
    bad.write_text('{"runs": {"x": {"seed": 0}}}')
    for extra, msg in ((js, "measured twice"), (bad, "no per-run discovery figures")):  # refused before measuring
        assert experiment_main(["discovery", "--run", str(other), "--add-results", str(extra), "-q"]) == 2
        assert msg in capsys.readouterr().err


def test_discovery_bad_flags_are_one_line_errors(tmp_path, capsys):
    assert experiment_main(["discovery", "--out", str(tmp_path / "r"), "--only", "dark,bogus", *TINY]) == 2
    assert "bogus" in capsys.readouterr().err
    assert experiment_main(["discovery", "--run", str(tmp_path / "missing"), "-q"]) == 2
    assert "no run database" in capsys.readouterr().err


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
        assert grp["all"]["texts"] == grp["texts"]
    assert res["groups"]["control"]["seen_by_nn1"] and not res["groups"]["topic"]["seen_by_nn1"]
    # NN1 and NN2 are runs: NN1 the first stages of a run without the topic, NN2 NN1's SLLM trained
    # on the whole corpus, on NN1's base model
    nn1, nn2 = RunContext(run_config(out / "nn1")), RunContext(run_config(out / "nn2"))
    assert nn1.cfg.corpus.leave_out == "fractions" and nn2.cfg.corpus.leave_out == ""
    assert not any(t.topic == "fractions" for t in nn1.data.train + nn1.data.eval + nn1.data.knowledge)
    assert not any(t.topic == "fractions" for t in nn1.language_texts())
    fractions = [t for t in nn2.data.train if t.topic == "fractions"]
    assert res["groups"]["topic"]["texts"] == min(8, len(fractions)) >= 4
    assert nn2.cfg.sllm.init == str(out / "nn1" / "gen-000" / "sllm") and nn2.base_path() == str(out / "nn1" / "base")
    for run, stages in ((out / "nn1", ["base", "map", "sllm"]), (out / "nn2", ["base", "sllm"])):
        con = sqlite3.connect(run / "runs.db")
        assert sorted(n for (n,) in con.execute("SELECT name FROM stage")) == stages
        con.close()
    con = sqlite3.connect(out / "runs.db")
    kinds = dict(con.execute("SELECT kind, count(*) FROM experimentsample GROUP BY kind").fetchall())
    con.close()
    n = {g: res["groups"][g]["texts"] for g in ("topic", "control")}
    assert kinds == {"topic/nn1": n["topic"], "topic/nn2": n["topic"], "control/nn1": n["control"],
                     "control/nn2": n["control"]}
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


def test_holdout_with_a_base_model_that_saw_the_topic(tmp_path):
    """--base-sees-topic: a third run trains the base model on the whole corpus; NN1 and NN2 both use it."""
    out = tmp_path / "h"
    p = run_cli(["experiment", "holdout", "--topic", "fractions", "--control", "addition", "--base-sees-topic",
                 "--out", str(out), *TINY])
    assert "the base LM saw every topic" in p.stdout
    base = run_config(out / "base")
    assert base.corpus.leave_out == "" and any(t.topic == "fractions" for t in RunContext(base).data.train)
    for name in ("nn1", "nn2"):
        assert run_config(out / name).base.model == str(out / "base" / "base")
    assert run_config(out / "nn1").corpus.leave_out == "fractions" and not (out / "nn1" / "base").exists()


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
        assert Path(r["out"]) == out / name and run_config(out / name / "nn2").run.seed == int(name[-1])
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
def test_holdout_seed_errors(tmp_path, args, message, capsys):
    assert experiment_main(["holdout", "--topic", "fractions", "--out", str(tmp_path / "h"), *args, "-q"]) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------- generations
GEN_TINY = TINY + ["--set", "judges.require_true=false", "--set", "judges.min_coherence=0",
                   "--set", "judges.min_novelty=0", "--set", "evaluate.knowledge_texts=8",
                   "--set", "evaluate.knowledge_samples=8", "--set", "sllm.continue_epochs=0"]


def test_generations_resumes_after_a_kill_and_reuses_finished_variants(tmp_path):
    """Two variants over two training seeds, killed in the middle of the first variant's generation 1,
    then resumed: every variant ends with its generations, branched from its seed's generation 0 and
    keeping its SLLM (the CPU protocol); a third call reuses them all; replay learns corpus texts in
    place of the accepted ones."""
    import hashlib

    from sqlmodel import Session

    from loop.config import build_config
    from loop.context import RunContext
    from loop.runner import run_config
    from storage.db import open_db
    from tests.test_loop import db_content

    out = tmp_path / "gens"
    args = ["experiment", "generations", "--variants", "lm,replay", "--train-seeds", "0,1", "--generations", "2",
            "--out", str(out), "--json", str(out / "g.json"), *GEN_TINY]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1", PYTHONHASHSEED="0", DARKZONES_CRASH_AT="1:retrain:before_commit")
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=600)
    assert p.returncode == -9, p.stderr[-2000:]  # SIGKILL inside lm/seed-0's generation 1
    assert not (out / "g.json").exists()
    p = run_cli(args)
    res = json.loads((out / "g.json").read_text())
    assert set(res["result"]["folders"]) == {"lm/seed-0", "lm/seed-1", "replay/seed-0", "replay/seed-1"}
    curve = res["result"]["combined"]["lm"]["heldout_ppl"]["curve"]
    assert len(curve) == 2 and all(c["n"] == 2 for c in curve)
    assert res["settings"]["overrides"]["sllm.continue_epochs"] == "0"  # the CPU protocol: the SLLM kept
    env = res["environment"]  # what the figures depend on beyond the code
    assert env["threads"] == 1 and env["torch"] and env["command"].startswith("python run.py experiment generations")
    assert [p.stat().st_size > 0 for p in (out / "experiments").glob("generations-*.png")] == [True]
    assert "last generation (1)" in p.stdout and "mean level" in p.stdout
    for v in ("lm", "replay"):
        for s in (0, 1):
            run = out / v / f"seed-{s}"
            rows = db_content(run)["stages"]
            assert (1, "evaluate") in rows and (0, "base") in rows
            # generation 0's models are the start run's, byte for byte
            start = out / "start" / f"seed-{s}"
            for a, b in (("gen-000/sllm", "gen-000/sllm"), ("base", "base"), ("gen-001/sllm", "gen-000/sllm")):
                assert (hashlib.sha256((run / a / "MANIFEST.json").read_bytes()).digest()
                        == hashlib.sha256((start / b / "MANIFEST.json").read_bytes()).digest())
    con = sqlite3.connect(out / "start" / "seed-0" / "runs.db")
    assert con.execute("SELECT count(*) FROM experimentrun WHERE name = 'generations'").fetchone()[0] == 1
    report = (out / "start" / "seed-0" / "report.html").read_text()  # refreshed: the curves inline
    assert re.search(r"generations-\d{8}-\d{6}\.png", report) and "rise from generation 0" in report
    # replay: as many corpus texts as it accepted, in their place
    cfg = run_config(out / "replay" / "seed-0")
    ctx = RunContext(cfg)
    engine = open_db(out / "replay" / "seed-0")
    with Session(engine) as s:
        accepted, learned = ctx.accepted_texts(s, 1), ctx.learned_texts(s, 1)
    engine.dispose()
    assert accepted and len(learned) == len(accepted) and set(learned) <= set(ctx.data.train_texts)
    from common.errors import ConfigError
    from loop.branch import branch

    with pytest.raises(ConfigError, match="cannot branch.*sllm.epochs"):  # generation 0 would differ
        branch(out / "start" / "seed-0", build_config(cfg.to_dict(), {"sllm.epochs": 9, "run.out": str(tmp_path / "b")}))
    before = {v: db_content(out / v / "seed-1") for v in ("lm", "replay")}
    run_cli(args)  # finished variants: nothing runs again
    assert {v: db_content(out / v / "seed-1") for v in ("lm", "replay")} == before


def test_generations_refuses_bad_flags_and_a_missing_source(tmp_path, capsys):
    from experiments.cli import main

    for extra, message in ((["--variants", "dark,bogus"], "--variants"), (["--generations", "1"], "--generations"),
                           (["--samplers", "dark"], "--samplers")):
        assert main(["generations", "--out", str(tmp_path / "x"), *extra, *TINY]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()
    from common.errors import ConfigError
    from loop.branch import branch
    from loop.config import build_config

    with pytest.raises(ConfigError, match="no run database"):
        branch(tmp_path / "missing", build_config(overrides={"run.out": str(tmp_path / "b")}))


def test_collapse_flags_name_what_degraded():
    from loop.stages import collapse_flags
    from storage.models import Metric

    first = Metric(generation=0, acceptance_rate=0.5, truth_rate=None, true_new=0, accepted=1, candidates=2,
                   heldout_ppl=10.0, novelty=None, distinct_2=0.8, dark_share=None, line="")
    assert collapse_flags(None, 50.0, 0.1) == []
    assert collapse_flags(first, 10.9, 0.7) == []
    flags = collapse_flags(first, 11.5, 0.5)
    assert len(flags) == 2 and "heldout ppl 10.00 -> 11.50" in flags[0] and "distinct-2 0.80 -> 0.50" in flags[1]


def test_generations_figures_over_seeds():
    """The curve, the last generation, the rise (per seed, then over seeds) and the mean level."""
    from experiments.generations import combine

    per_run = {("dark", 0): {0: {"auc": 0.5}, 1: {"auc": 0.6}, 2: {"auc": 0.7}},
               ("dark", 1): {0: {"auc": 0.7}, 1: {"auc": 0.8}, 2: {"auc": 0.9}},
               ("lm", 0): {0: {"auc": 0.5}, 1: {"auc": None}, 2: {"auc": 0.5}}}
    c = combine(per_run, 3)
    d = c["dark"]["auc"]
    assert [p["mean"] for p in d["curve"]] == pytest.approx([0.6, 0.7, 0.8])
    assert d["last"]["mean"] == pytest.approx(0.8) and d["last"]["lo"] < 0.8 < d["last"]["hi"]
    # both seeds rose by exactly 0.2: the interval of the rise has no width, unlike the last figure's
    assert d["rise"]["mean"] == pytest.approx(0.2) and d["rise"]["hi"] - d["rise"]["lo"] == pytest.approx(0, abs=1e-9)
    assert d["level"]["mean"] == pytest.approx(0.7)  # trapezoid area 1.4 over 2 steps
    assert c["lm"]["auc"]["level"]["mean"] is None and c["lm"]["auc"]["curve"][1]["n"] == 0
    assert list(c) == ["dark", "lm"]


def test_holdout_folder_made_before_a_setting_was_added_is_reused_and_other_settings_refused(tmp_path):
    from sqlmodel import Session

    from common.errors import ConfigError
    from experiments.holdout import MEASURE_ONLY, _check_holdout_folder
    from loop.config import build_config
    from storage.db import open_db
    from storage.models import Run

    cfg = build_config({})
    written = cfg.to_dict()
    del written["decode"]["beams"]  # the settings as a checkout without decode.beams wrote them
    engine = open_db(tmp_path, create=True)
    with Session(engine) as s:
        s.add(Run(seed=0, config_json=json.dumps(written), config_hash="then", versions_json="{}"))
        s.commit()
    engine.dispose()
    key = {"topic": "fractions", "config_hash": cfg.result_hash(leave_out=MEASURE_ONLY)}
    (tmp_path / "holdout-settings.json").write_text(json.dumps({**key, "config_hash": "0123456789abcdef"}))
    _check_holdout_folder(tmp_path, key, cfg)  # the same setup: reused, its key brought up to date
    assert json.loads((tmp_path / "holdout-settings.json").read_text()) == key

    (tmp_path / "holdout-settings.json").write_text(json.dumps({**key, "config_hash": "0123456789abcdef"}))
    other = build_config({"sllm": {"latent_dim": 32}})
    with pytest.raises(ConfigError, match=r"another holdout setup \(sllm.latent_dim 256 -> 32\)"):
        _check_holdout_folder(tmp_path, {**key, "config_hash": other.result_hash(leave_out=MEASURE_ONLY)}, other)
    with pytest.raises(ConfigError, match="topic 'fractions' -> 'addition'"):
        _check_holdout_folder(tmp_path, {**key, "topic": "addition"}, cfg)
