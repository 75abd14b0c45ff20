"""The whole loop on tiny settings: every stage, resume after kills, bad input."""
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tiny but complete: every stage runs for real, in seconds.
TINY_MODELS = [
    "--set", "maths.facts_per_topic=4", "--set", "maths.phrasings_per_fact=2",
    "--set", "base.hidden=32", "--set", "base.layers=1", "--set", "base.heads=2", "--set", "base.epochs=4",
    "--set", "base.vocab_size=300",
    "--set", "sllm.latent_dim=32", "--set", "sllm.enc_dim=32", "--set", "sllm.enc_layers=1", "--set", "sllm.epochs=2", "--set", "sllm.false_texts=32",
    "--set", "sllm.n_prompt=4", "--set", "sllm.continue_epochs=1", "--set", "sample.n_candidates=8", "--set", "decode.max_new_tokens=12",
    "--set", "retrain.epochs=1", "--set", "retrain.replay_texts=16", "--set", "run.threads=1",
]


def other_domain(args: list[str]) -> list[str]:
    """`args` without the maths domain's own settings, for a run of another domain (which refuses them)."""
    out = []
    for a in args:
        if a.startswith("maths."):
            out.pop()  # its "--set"
        else:
            out.append(a)
    return out


TINY = TINY_MODELS + [
    "--set", "sample.samplers=dark,prior,interpolate,lm",
    # accept whatever is coherent enough so the retrain stage has texts to learn from
    "--set", "judges.require_true=false", "--set", "judges.min_coherence=0", "--set", "judges.min_novelty=0",
]


def run_cli(args, env_extra=None, check=True):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1", PYTHONHASHSEED="0")
    env.update(env_extra or {})
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def db_content(run_dir: Path) -> dict:
    """Everything that a result depends on (no timestamps, durations or paths)."""
    con = sqlite3.connect(run_dir / "runs.db")
    out = {
        "stages": con.execute("SELECT generation, name FROM stage ORDER BY generation, name").fetchall(),
        "candidates": con.execute(
            "SELECT id, generation, seq, sampler, zone_id, hex(latent), density_score, text, verdict, fact_key, "
            "true_new, total, decision, reason, provenance FROM candidate ORDER BY id").fetchall(),
        "scores": con.execute("SELECT candidate_id, judge, score, reason FROM score ORDER BY candidate_id, judge").fetchall(),
        "zones": con.execute("SELECT generation, label, n_points, hex(centre), radius, decoded FROM zone ORDER BY generation, label").fetchall(),
        "metrics": con.execute("SELECT generation, acceptance_rate, truth_rate, true_new, accepted, heldout_ppl, novelty "
                               "FROM metric ORDER BY generation").fetchall(),
    }
    con.close()
    return out


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    p = run_cli(["--generations", "2", "--out", str(out), *TINY])
    return out, p


def test_full_loop_every_stage(reference_run):
    out, p = reference_run
    content = db_content(out)
    names = {(g, n) for g, n in content["stages"]}
    for g in (0, 1):
        for n in ("sllm", "map", "sample", "decode", "judge", "retrain", "evaluate"):
            assert (g, n) in names
    assert (0, "base") in names
    cands = content["candidates"]
    assert len(cands) == 16
    assert {c[3] for c in cands} == {"dark", "prior", "interpolate", "lm"}
    assert all(c[7] is not None for c in cands)  # every candidate decoded
    assert all(c[12] in ("accepted", "rejected") and c[13] for c in cands)  # decided with a reason
    judges = {s[1] for s in content["scores"]}
    assert judges == {"coherence", "novelty", "critic", "verifier"}
    assert len(content["metrics"]) == 2
    # the metrics line is printed once per generation
    assert p.stdout.count("gen 0 |") == 1 and p.stdout.count("gen 1 |") == 1
    # artifacts: base saved with save_pretrained, SLLM weights, peft adapter
    assert (out / "base" / "config.json").is_file()
    assert (out / "gen-000" / "sllm" / "sllm.safetensors").is_file()
    if any(c[12] == "accepted" for c in cands if c[1] == 0):
        assert (out / "gen-000" / "adapter" / "adapter_config.json").is_file()
    run = sqlite3.connect(out / "runs.db").execute("SELECT seed, config_json, versions_json FROM run").fetchone()
    assert run[0] == 0 and json.loads(run[1])["sllm"]["latent_dim"] == 32 and "torch" in json.loads(run[2])
    assert json.loads(run[2])["threads"] == 1  # run.threads=1: the thread count the run trained with
    assert sqlite3.connect(out / "runs.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # the SLLM learned from the corpus plus sllm.false_texts verifier-checked false sentences
    detail = json.loads(sqlite3.connect(out / "runs.db").execute(
        "SELECT detail_json FROM stage WHERE generation = 0 AND name = 'sllm'").fetchone()[0])
    assert detail["false_texts"] == 32 and detail["texts"] > 32
    # the round-trip check: each latent sampler's share of decodes still dark once re-encoded
    con = sqlite3.connect(out / "runs.db")
    dec = json.loads(con.execute("SELECT detail_json FROM stage WHERE generation = 1 AND name = 'decode'").fetchone()[0])
    assert set(dec["dark_once_reencoded"]) == {"dark", "prior", "interpolate", "lm"}
    assert all(0 <= v <= 1 for v in dec["dark_once_reencoded"].values())
    assert "dark once re-encoded " in p.stdout
    # the map is fitted once and saved whole; the sample stage loads it
    assert (out / "gen-001" / "map" / "occupancy.json").is_file()
    mp = json.loads(con.execute("SELECT detail_json FROM stage WHERE generation = 1 AND name = 'map'").fetchone()[0])
    assert mp["knn_index"] == "flat"
    # with the feature dictionary beside it
    assert (out / "gen-001" / "map" / "features.npz").is_file() and mp["features"]["n_features"] == 256
    # each line ends its timings with the decode + judge share of the generation, from the stage table
    from storage.queries import generate_share

    for g in (0, 1):
        secs = dict(con.execute("SELECT name, seconds FROM stage WHERE generation = ?", (g,)).fetchall())
        line = con.execute("SELECT line FROM metric WHERE generation = ?", (g,)).fetchone()[0]
        assert f" | decode+judge {generate_share(secs):.0%}" in line, (line, secs)
        assert f" | decode+judge {generate_share(secs):.0%}" in p.stdout
    con.close()


def test_deterministic_same_seed(reference_run, tmp_path):
    out, _ = reference_run
    other = tmp_path / "again"
    run_cli(["--generations", "2", "--out", str(other), *TINY])
    assert db_content(other) == db_content(out)


# One kill through the real command line (a fresh interpreter per run); every stage's fault
# points are killed in tests/test_reliability.py's crash harness.
@pytest.mark.parametrize("point", ["1:retrain:before_commit"])
def test_resume_after_kill_equals_uninterrupted(reference_run, tmp_path, point):
    ref, _ = reference_run
    out = tmp_path / "run"
    p = run_cli(["--generations", "2", "--out", str(out), *TINY], {"DARKZONES_CRASH_AT": point}, check=False)
    assert p.returncode == -9, p.stderr  # really killed by SIGKILL
    run_cli(["--generations", "2", "--out", str(out), *TINY])
    assert db_content(out) == db_content(ref)


def test_decoder_adapter_in_the_loop_saved_used_and_resumed(tmp_path):
    """With sllm.decoder_lora_r, each generation's SLLM folder holds its decoder adapter (generation
    1's on top of the retrained one), and a run killed in generation 1's sllm stage resumes to the
    same database as an uninterrupted one. With held-out facts (holdout_share 0.25 of 4 facts a
    topic) the evaluate stage measures what the model knows, and the compose sampler draws from the
    map's feature dictionary, both the same after a resume. (Compose is not in TINY: the
    dictionary is a fit of its own on the latents, which a run under torchrun gets equal only to
    float rounding, so its draws are not those of one process; tests/test_distributed.py.)"""
    args = [*TINY, "--set", "sllm.decoder_lora_r=2", "--set", "maths.holdout_share=0.25",
            "--set", "evaluate.knowledge_texts=16", "--set", "evaluate.knowledge_samples=16",
            "--set", "sample.samplers=dark,compose,prior,interpolate,lm"]
    ref = tmp_path / "ref"
    run_cli(["--generations", "2", "--out", str(ref), *args])
    for g in (0, 1):
        assert (ref / f"gen-00{g}" / "sllm" / "decoder-adapter" / "adapter_config.json").is_file()
    out = tmp_path / "run"
    p = run_cli(["--generations", "2", "--out", str(out), *args], {"DARKZONES_CRASH_AT": "1:sllm:before_commit"},
                check=False)
    assert p.returncode == -9, p.stderr
    run_cli(["--generations", "2", "--out", str(out), *args])
    assert db_content(out) == db_content(ref)

    def knowledge(run):
        con = sqlite3.connect(run / "runs.db")
        rows = con.execute("SELECT detail_json FROM stage WHERE name = 'evaluate' ORDER BY generation").fetchall()
        con.close()
        return [json.loads(d)["knowledge"] for (d,) in rows]

    k = knowledge(ref)
    assert len(k) == 2 and k == knowledge(out)
    # compose candidates name the two features they were composed from, no other sampler's do; the
    # decode stage reads back, for them, whether the decode still holds both
    cands = db_content(ref)["candidates"]
    assert {c[3] for c in cands} == {"dark", "compose", "prior", "interpolate", "lm"}
    assert all(len(json.loads(c[14])["features"]) == 2 for c in cands if c[3] == "compose")
    assert all(c[14] is None for c in cands if c[3] != "compose")
    con = sqlite3.connect(ref / "runs.db")
    for (d,) in con.execute("SELECT detail_json FROM stage WHERE name = 'decode'").fetchall():
        kept = json.loads(d)["features_kept_once_reencoded"]
        assert set(kept) == {"compose"} and 0 <= kept["compose"] <= 1
    con.close()
    for fig in k:
        assert set(fig) == {"heldout_auc", "corpus_auc", "sample_truth", "heldout_recall", "corpus_recall"}
        assert all(0 <= v <= 1 for v in fig.values())


def test_more_generations_continue_a_finished_run(reference_run, one_generation_run, tmp_path):
    ref, _ = reference_run
    out = shutil.copytree(one_generation_run, tmp_path / "run")  # a finished 1-generation run
    assert len(db_content(out)["metrics"]) == 1
    run_cli(["--generations", "2", "--out", str(out), *TINY])
    assert db_content(out) == db_content(ref)


def test_incompatible_config_refused(reference_run):
    out, _ = reference_run
    before = db_content(out)
    p = run_cli(["--generations", "2", "--out", str(out), *TINY, "--set", "sllm.latent_dim=16"], check=False)
    assert p.returncode == 2
    assert "sllm.latent_dim" in p.stderr and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert db_content(out) == before


def test_language_texts_only_for_the_built_in_domain_and_its_topics(tmp_path):
    from domains import verify
    from loop.config import build_config
    from loop.runner import Loop

    def language_texts(cfg, topics=None):
        return Loop(cfg).language_texts(topics)

    cfg = build_config({}, {"sllm.false_texts": 40})
    texts = language_texts(cfg, ("parity", "shapes"))
    assert len(texts) == 40 and {t.topic for t in texts} == {"parity", "shapes"}  # what the holdout NN1 gets
    assert all(verify(t.text).status == "false" for t in texts)
    (tmp_path / "c.txt").write_text("one text\nanother text\n")
    assert language_texts(build_config({}, {"sllm.false_texts": 40, "corpus.path": str(tmp_path / "c.txt")})) == []
    assert language_texts(build_config({}, {"sllm.false_texts": 0})) == []


def test_a_run_stops_after_a_stage_and_an_sllm_starts_from_another_runs(tmp_path):
    """Loop.run(until=...) leaves the later stages to a resume; sllm.init starts generation 0's SLLM
    from another run's (trained further, not afresh), and refuses one built with other SLLM settings."""
    import torch
    from safetensors.torch import load_file

    from common.errors import ConfigError
    from loop.options import build_from_args, parser
    from loop.runner import Loop

    def cfg(out, *more):
        return build_from_args(parser().parse_args(["--out", str(out), "--generations", "1", *TINY_MODELS, *more]))

    def stages(out):
        con = sqlite3.connect(out / "runs.db")
        names = sorted(n for (n,) in con.execute("SELECT name FROM stage"))
        con.close()
        return names

    Loop(cfg(tmp_path / "a")).run(until="sllm")
    assert stages(tmp_path / "a") == ["base", "sllm"]
    a = tmp_path / "a" / "gen-000" / "sllm"
    # a learning rate too small to move a weight: generation 0's SLLM is the one it starts from
    Loop(cfg(tmp_path / "b", "--set", f"sllm.init={a}", "--set", "sllm.lr=1e-30", "--set", "sllm.epochs=1",
             "--set", f"base.model={tmp_path / 'a' / 'base'}")).run(until="sllm")
    wa = load_file(str(a / "sllm.safetensors"))
    wb = load_file(str(tmp_path / "b" / "gen-000" / "sllm" / "sllm.safetensors"))
    moving = [k for k in wa if "running" not in k and "num_batches" not in k]  # BatchNorm's statistics do move
    assert moving and all(torch.equal(wa[k], wb[k]) for k in moving)
    assert json.loads((tmp_path / "b" / "gen-000" / "sllm" / "config.json").read_text())["sllm"]["init"] == str(a)
    fresh = cfg(tmp_path / "c", "--set", "sllm.epochs=1", "--set", f"base.model={tmp_path / 'a' / 'base'}")
    Loop(fresh).run(until="sllm")
    assert not torch.equal(load_file(str(tmp_path / "c" / "gen-000" / "sllm" / "sllm.safetensors"))[moving[0]], wa[moving[0]])
    with pytest.raises(ConfigError, match=r"trained with other SLLM settings \(sllm.latent_dim 32\)"):
        Loop(cfg(tmp_path / "d", "--set", f"sllm.init={a}", "--set", "sllm.latent_dim=16")).run()
    assert not (tmp_path / "d").exists()
    Loop(cfg(tmp_path / "a")).run(until="map")  # the same run resumed: only the map stage is new
    assert stages(tmp_path / "a") == ["base", "map", "sllm"]


def test_decode_builds_soft_prompts_a_chunk_at_a_time(one_generation_run, tmp_path, monkeypatch):
    """decode.chunk_size, not sample.n_candidates, bounds the soft prompts (chunk, K+1, E) built at
    once, and the texts do not depend on it."""
    import shutil

    from sqlmodel import Session, select

    import sllm.codec
    from loop.runner import Loop, run_config, stage_seed
    from loop.stages import run_decode
    from storage.db import open_db
    from storage.models import Candidate

    run = tmp_path / "run"
    shutil.copytree(one_generation_run, run)
    sizes = []
    real = sllm.codec.soft_prompts

    def spy(sllm_, model, tok, z):
        sizes.append(len(z))
        return real(sllm_, model, tok, z)

    monkeypatch.setattr(sllm.codec, "soft_prompts", spy)
    cfg = run_config(run)
    loop, seed, texts = Loop(cfg), stage_seed(cfg.run.seed, 0, "decode"), {}
    engine = open_db(run)
    for chunk in (1024, 5):  # batches of 2: chunks of 4 (5 rounded down to whole batches)
        cfg.decode.batch_size, cfg.decode.chunk_size = 2, chunk
        sizes.clear()
        with Session(engine) as s:
            run_decode(loop, s, 0, seed)
            texts[chunk] = [c.text for c in s.exec(select(Candidate).where(Candidate.generation == 0)
                                                   .order_by(Candidate.seq))]
            s.rollback()
        assert sizes == ([6] if chunk == 1024 else [4, 2])  # TINY: 8 candidates, 6 with a latent (2 are lm's)
    engine.dispose()
    assert texts[5] == texts[1024] and all(t is not None for t in texts[5])


def test_distinct_n_says_none_for_one_word_texts():
    """SMILES are one 'word' each: no bigrams, so distinct-2 is n/a (None), not a misleading 0."""
    from loop.stages import distinct_n

    assert distinct_n(["CCO", "c1ccccc1"], 2) is None
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)


def test_stages_declare_what_they_read():
    """A stage's reads are stages; one that reads a stage after it in the order reads an earlier
    generation's (its adapter, its accepted texts), which the first generation has none of."""
    from loop.stages import STAGE_NAMES, STAGES

    for i, st in enumerate(STAGES):
        assert set(st.reads) <= set(STAGE_NAMES), st.name
        later = {r for r in st.reads if STAGE_NAMES.index(r) >= i}
        assert later <= {"judge", "retrain"}, (st.name, later)  # earlier generations' accepted texts, adapter
    assert [st.name for st in STAGES if st.first_generation_only] == ["base"] and not STAGES[0].reads
    assert [st.name for st in STAGES if st.ends_generation] == [STAGE_NAMES[-1]]
