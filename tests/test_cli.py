"""Command line: config files and overrides, user corpora and models, and one-line errors for bad input."""
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from cli.main import main as cli_main
from domains.maths.topics import ALL_TOPICS
from loop.config import ConfigError, build_config, load_config_file
from tests.test_loop import TINY, other_domain, run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_config_file_and_overrides(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[sllm]\nlatent_dim = 64\n[sample]\nsamplers = ["dark", "prior"]\n')
    yaml_ = tmp_path / "c.yaml"
    yaml_.write_text("sllm:\n  latent_dim: 48\nrun:\n  seed: 3\n")
    cfg = build_config(load_config_file(toml), {"sllm.epochs": "5"})
    assert cfg.sllm.latent_dim == 64 and cfg.sllm.epochs == 5 and cfg.sample.samplers == ["dark", "prior"]
    cfg = build_config(load_config_file(yaml_), {"sllm.latent_dim": "32"})
    assert cfg.sllm.latent_dim == 32 and cfg.run.seed == 3  # the command line wins over the file


def test_a_commands_own_settings_sit_under_the_users_and_over_the_domains(tmp_path):
    """An experiment's protocol (`below`) replaces the domain's defaults, never a file's or a flag's value."""
    from loop.options import build_from_args, parser

    toml = tmp_path / "c.toml"
    toml.write_text("[sample]\nn_candidates = 40\n")
    protocol = {"molecules.max_texts": 5000, "sample.n_candidates": 250, "sllm.epochs": 3}
    args = parser().parse_args(["--domain", "molecules", "--config", str(toml), "--set", "sllm.epochs=7"])
    cfg = build_from_args(args, protocol)
    assert (cfg.corpus.own.max_texts, cfg.sample.n_candidates, cfg.sllm.epochs) == (5000, 40, 7)
    assert build_from_args(parser().parse_args(["--domain", "molecules"])).corpus.own.max_texts == 10000


@pytest.mark.parametrize("overrides, needle", [
    ({"sllm.latnt_dim": "3"}, "did you mean 'latent_dim'"),
    ({"nosection.x": "1"}, "unknown setting"),
    ({"sllm.latent_dim": "abc"}, "expected int"),
    ({"run.generations": "0"}, "run.generations must be >= 1"),
    ({"sample.n_candidates": "-4"}, "sample.n_candidates must be >= 1"),
    ({"sample.samplers": "dark,magic"}, "unknown sampler 'magic'"),
    ({"sllm.paraphrase_tau": "0"}, "sllm.paraphrase_tau must be > 0, got 0"),
    ({"corpus.leave_out": "fractions,algebra"}, "algebra is not a topic of the maths domain; choose from"),
    ({"corpus.domain": "molecules", "corpus.leave_out": "rings"}, "molecules domain has no topics to leave out"),
    ({"corpus.leave_out": ",".join(ALL_TOPICS)}, "leaves out every topic"),
])
def test_bad_settings(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config({}, overrides)


def _bad(args, tmp_path, needle, capsys):
    """`python run.py ARGS` refused with one line: run in this process (cli.main.main, what run.py
    calls), as a fresh process costs seconds; test_bad_input_leaves_database_untouched and the
    run-lock test go through the real `python run.py`."""
    out = tmp_path / "run"
    try:
        rc = cli_main(["--out", str(out), *args])
    except SystemExit as e:  # argparse's errors exit
        rc = e.code
    assert rc not in (0, None)
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert needle in err, err
    assert not out.exists()  # refused before anything was written
    return out


@pytest.mark.parametrize("args, needle", [
    (["--base-model", "/nonexistent/model"], "does not exist"),
    (["--set", "sllm.latnt_dim=3"], "did you mean"),
    (["--generations", "0"], "run.generations must be >= 1"),
    (["--generations", "-2"], "run.generations must be >= 1"),
    (["--config", "/nonexistent.toml"], "not found"),
    (["--set", "novalue"], "SECTION.KEY=VALUE"),
    (["--domain", "poems"], "corpus.domain 'poems' is not a domain"),
    (["--domain", "text"], "the text domain needs a corpus"),
    (["--rubric", "/nonexistent/rubric.txt"], "rubric file /nonexistent/rubric.txt not found"),
    (["--set", "sllm.init=/nonexistent/sllm"], "sllm.init /nonexistent/sllm: not an SLLM folder a run saved"),
    (["--set", "sllm.texts_file=/nonexistent/more.txt"], "sllm.texts_file: corpus file /nonexistent/more.txt does not exist"),
])
def test_bad_input_one_line(args, needle, tmp_path, capsys):
    _bad(args, tmp_path, needle, capsys)


def test_a_parseable_pick_needs_a_domain_that_parses(tmp_path, capsys):
    corpus = tmp_path / "notes.txt"
    corpus.write_text("\n".join(f"note {i}: the kettle boils at noon." for i in range(40)))
    _bad(["--corpus", str(corpus), "--set", "decode.beams=4", "--set", "decode.pick=parseable"], tmp_path,
         "decode.pick=parseable needs a domain that parses its texts; the text domain has no verifier", capsys)


def test_non_model_folder(tmp_path, capsys):
    folder = tmp_path / "notamodel"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    _bad(["--base-model", str(folder)], tmp_path, "not a Hugging Face model folder", capsys)


@pytest.mark.parametrize("name, content, needle", [
    ("empty.txt", b"\n\n", "empty"),
    ("binary.txt", b"\xff\xfe\x00\x01garbage\x80", "UTF-8"),
    ("nokey.jsonl", b'{"topic": "x"}\n', "text"),
    ("corpus.csv", b"a,b\n", "extension"),
])
def test_bad_corpus(name, content, needle, tmp_path, capsys):
    path = tmp_path / name
    path.write_bytes(content)
    _bad(["--corpus", str(path)], tmp_path, needle, capsys)


def test_bad_input_leaves_database_untouched(one_generation_run, tmp_path):
    out = shutil.copytree(one_generation_run, tmp_path / "run")
    before = (out / "runs.db").read_bytes()
    p = run_cli(["--generations", "1", "--out", str(out), *TINY, "--set", "sllm.latnt_dim=3"], check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert (out / "runs.db").read_bytes() == before


def test_user_corpus_and_user_model(tmp_path, tiny_lm_dir):
    """--corpus with a .jsonl and --base-model with a local HF folder, through the whole loop."""
    corpus = tmp_path / "c.jsonl"
    lines = [{"text": f"{a} plus {b} equals {a + b}.", "topic": "addition"} for a in range(12) for b in range(5)]
    corpus.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "run"
    run_cli(["--generations", "1", "--out", str(out), "--corpus", str(corpus), "--base-model", str(tiny_lm_dir),
             *other_domain(TINY)])
    con = sqlite3.connect(out / "runs.db")
    assert con.execute("SELECT count(*) FROM candidate WHERE text IS NOT NULL").fetchone()[0] == 8
    # a user corpus has no verifier: no verifier scores, no truth verdicts
    assert con.execute("SELECT count(*) FROM score WHERE judge='verifier'").fetchone()[0] == 0
    assert not (out / "base").exists()  # the user's model is used in place, never retrained from scratch


def test_text_domain_on_the_fallback_model_says_so(tmp_path):
    """`--domain text --corpus FILE` on the self-trained model: a note up front and in the metrics
    line; the critic reads a rubric with no maths in it (here a user's --rubric file)."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"The {c} fox number {i} jumps over the {d} dog." for i in range(12)
                                for c, d in (("quick", "lazy"), ("red", "sleepy"), ("old", "young"))) + "\n")
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("You judge short animal stories from 1 to 5: 5 = vivid and complete, 1 = nonsense.\n")
    out = tmp_path / "run"
    p = run_cli(["--generations", "1", "--out", str(out), "--domain", "text", "--corpus", str(corpus),
                 "--rubric", str(rubric), *other_domain(TINY)])
    note = [line for line in p.stdout.splitlines() if line.startswith("note:")]
    assert note and "fallback base model" in note[0] and "--base-model" in note[0], p.stdout
    con = sqlite3.connect(out / "runs.db")
    line = con.execute("SELECT line FROM metric").fetchone()[0]
    assert "FALLBACK base model" in line and "truth n/a" in line
    assert con.execute("SELECT count(*) FROM score WHERE judge='critic'").fetchone()[0] == 8
    assert con.execute("SELECT count(*) FROM score WHERE judge='verifier'").fetchone()[0] == 0
    cfg = json.loads(con.execute("SELECT config_json FROM run").fetchone()[0])
    assert cfg["corpus"]["domain"] == "text" and cfg["judges"]["rubric"] == str(rubric)


def test_maths_domain_on_its_own_model_has_no_fallback_note(one_generation_run):
    line = sqlite3.connect(one_generation_run / "runs.db").execute("SELECT line FROM metric").fetchone()[0]
    assert "FALLBACK" not in line


def test_txt_corpus(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"{a} times {b} is {a * b}." for a in range(1, 10) for b in range(1, 8)) + "\n")
    out = tmp_path / "run"
    run_cli(["--generations", "1", "--out", str(out), "--corpus", str(corpus), *other_domain(TINY)])
    assert sqlite3.connect(out / "runs.db").execute("SELECT count(*) FROM metric").fetchone()[0] == 1


def test_second_run_on_same_folder_refused(tmp_path):
    from storage.db import RunLock, StorageError

    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out):
        p = run_cli(["--generations", "1", "--out", str(out), *TINY], check=False)
        assert p.returncode == 2 and "in use by another run" in p.stderr
        with pytest.raises(StorageError):
            RunLock(out).__enter__()


def test_inspect_on_real_run(one_generation_run):
    out = one_generation_run
    p = run_cli(["inspect", str(out)])
    assert "generation 0" in p.stdout and "metrics: gen 0" in p.stdout
    p = run_cli(["inspect", str(out), "export", "--all", "--format", "jsonl"])
    rows = [json.loads(x) for x in p.stdout.splitlines()]
    assert len(rows) == 8 and all("scores" in r for r in rows)
    p = run_cli(["inspect", str(out), "show", str(rows[0]["id"])])
    assert "coherence" in p.stdout and "reason" in p.stdout
    p = run_cli(["inspect", str(out), "zones"])
    assert p.returncode == 0
