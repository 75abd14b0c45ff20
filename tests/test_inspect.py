"""inspect CLI and storage.queries: every command and filter, export round trips, errors, a live writer."""
import csv
import io
import json
import threading
import time
from datetime import datetime, timezone

import pytest
from sqlmodel import Session

from cli.inspect import main
from storage import queries
from storage.db import open_db
from storage.models import Candidate, Metric, Run, Score, Stage, Zone

HOSTILE = (
    'He said "hi", then; left\n\r\nnext\tline, \'quoted\' ,, \\ back\\slash \x00 nul \x1b[31m red '
    "\u2028 sep \u2029 para \u0085 nel — ünïcødé 日本語 🎉 =SUM(A1)"
)
BIG = ("long text, with \"quotes\"\nand lines " * 3000)[:100_000]  # 100 KB


def _t():
    return datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def _cand(gen, seq, sampler, decision, text, **kw):
    return Candidate(generation=gen, seq=seq, sampler=sampler, decision=decision, text=text,
                     latent=b"\0" * 16, latent_norm=1.5, density_score=1.2, **kw)


@pytest.fixture
def run_dir(tmp_path):
    engine = open_db(tmp_path, create=True)
    with Session(engine) as s:
        s.add(Run(seed=7, config_json='{"a": 1}', config_hash="abc123", versions_json='{"python": "3.11", "torch": "2.3"}'))
        for gen in (0, 1):
            for name, sec in (("sample", 1.25), ("judge", 2.5)):
                s.add(Stage(generation=gen, name=name, started_at=_t(), seconds=sec))
        cands = [
            _cand(0, 0, "dark", "accepted", "Two plus two equals four.", zone_id=0, verdict="true",
                  fact_key="2+2", true_new=True, total=0.9, reason="all judges pass"),
            _cand(0, 1, "dark", "rejected", "Two plus two equals five.", zone_id=0, verdict="false",
                  fact_key="2+2", true_new=False, total=0.2, reason="verifier: false"),
            _cand(0, 2, "prior", None, "Pending text not judged yet."),
            _cand(1, 0, "prior", "accepted", HOSTILE, verdict="unparseable", true_new=False, total=0.7,
                  reason="coherent"),
            _cand(1, 1, "interpolate", "accepted", BIG, verdict="true", true_new=True, total=0.5, reason="ok"),
            _cand(1, 2, "dark", "rejected", "A triangle has 4 sides.", verdict="false", true_new=False,
                  total=None, reason="verifier: false"),
        ]
        s.add_all(cands)
        s.flush()
        ids = [c.id for c in cands]
        novelty = [0.8, 0.1, None, 0.5, 0.3, 0.6]
        for cid, nv in zip(ids, novelty):
            if cid == ids[2]:
                continue
            s.add(Score(candidate_id=cid, judge="novelty", score=nv, reason=f"distance {nv}"))
            s.add(Score(candidate_id=cid, judge="coherence", score=0.9 if cid != ids[1] else None,
                        reason="judge failed: timeout" if cid == ids[1] else "fluent"))
        s.add(Zone(generation=0, label=0, n_points=12, centre=b"\0" * 16, radius=0.25, volume=0.1,
                   decoded="Two plus two is four."))
        s.add(Zone(generation=1, label=3, n_points=5, centre=b"\0" * 16, radius=0.5, volume=0.05, decoded=None))
        s.add(Metric(generation=0, acceptance_rate=0.5, truth_rate=0.5, true_new=1, accepted=1, candidates=3,
                     heldout_ppl=12.5, novelty=0.8, distinct_2=0.9, dark_share=0.66, line="gen 0 | acc 0.50 | ppl 12.50"))
        s.commit()
    engine.dispose()
    return {"dir": str(tmp_path), "ids": ids}


def _out(capsys, argv, rc=0):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == rc, err
    return out, err


def _ids(out):
    """Candidate ids of a `candidates` table: rows between the header rule and the count line."""
    return [int(line.split()[0]) for line in out.splitlines()[2:-1]]


@pytest.mark.parametrize("cmd", [[], ["summary"]])
def test_summary(run_dir, capsys, cmd):
    out, _ = _out(capsys, [run_dir["dir"], *cmd])
    assert "seed 7" in out and "config abc123" in out and "torch=2.3" in out
    assert "generation 0" in out and "generation 1" in out
    assert "sample 1.2s" in out or "sample 1.3s" in out
    assert "judge 2.5s" in out
    assert "candidates 3: accepted 1, rejected 1, pending 1; true_new 1" in out
    assert "candidates 3: accepted 2, rejected 1, pending 0; true_new 1" in out
    assert "metrics: gen 0 | acc 0.50 | ppl 12.50" in out
    s = queries.summary(open_db(run_dir["dir"]))
    assert s["generations"][0]["counts"]["dark"] == {"accepted": 1, "rejected": 1, "pending": 0}
    assert s["generations"][1]["counts"]["interpolate"]["accepted"] == 1


def test_candidates_table(run_dir, capsys):
    ids = run_dir["ids"]
    out, _ = _out(capsys, [run_dir["dir"], "candidates"])
    lines = out.splitlines()
    assert lines[0].split() == ["id", "gen", "sampler", "decision", "verdict", "total", "text"]
    assert _ids(out) == ids
    assert "6 candidate(s)" in out
    # a hostile text stays on one row, escaped, clipped to ~60 chars
    row = next(line for line in lines if line.split()[0] == str(ids[3]))
    assert "\\n" in row and "\n" not in row and len(row.split("unparseable", 1)[1]) < 75
    assert "pending" in next(line for line in lines if line.split()[0] == str(ids[2]))


@pytest.mark.parametrize(
    "opts,want",
    [
        (["--generation", "1"], [3, 4, 5]),
        (["--sampler", "dark"], [0, 1, 5]),
        (["--decision", "accepted"], [0, 3, 4]),
        (["--decision", "rejected"], [1, 5]),
        (["--decision", "pending"], [2]),
        (["--verdict", "false"], [1, 5]),
        (["--verdict", "unparseable"], [3]),
        (["--true-new"], [0, 4]),
        (["--judge", "novelty", "--min", "0.4", "--max", "0.7"], [3, 5]),
        (["--judge", "novelty", "--min", "0.5"], [0, 3, 5]),
        (["--judge", "coherence"], [0, 3, 4, 5]),  # a failed judge (None) never matches
        (["--generation", "0", "--sampler", "dark", "--decision", "accepted"], [0]),
        (["--limit", "2"], [0, 1]),
        (["--limit", "0"], [0, 1, 2, 3, 4, 5]),
        (["--sort", "total"], [0, 3, 4, 1, 2, 5]),  # highest first, missing last
        (["--sort", "novelty"], [0, 5, 3, 4, 1, 2]),
        (["--sort", "generation"], [0, 1, 2, 3, 4, 5]),
    ],
)
def test_candidates_filters(run_dir, capsys, opts, want):
    ids = run_dir["ids"]
    out, _ = _out(capsys, [run_dir["dir"], "candidates", *opts])
    assert _ids(out) == [ids[i] for i in want]


def test_candidates_judge_column_and_limit_note(run_dir, capsys):
    out, _ = _out(capsys, [run_dir["dir"], "candidates", "--judge", "novelty", "--sort", "novelty", "--limit", "1"])
    assert "score_novelty" in out.splitlines()[0]
    assert "0.8" in out.splitlines()[2]
    assert "limit 1 reached" in out


@pytest.mark.parametrize(
    "opts,msg",
    [
        (["--judge", "nope"], "unknown judge 'nope'"),
        (["--sort", "bogus"], "unknown sort 'bogus'"),
        (["--min", "0.5"], "--judge NAME"),
        (["--limit", "-1"], "--limit"),
    ],
)
def test_candidates_bad_options(run_dir, capsys, opts, msg):
    out, err = _out(capsys, [run_dir["dir"], "candidates", *opts], rc=2)
    assert err.startswith("error: ") and msg in err and len(err.strip().splitlines()) == 1 and out == ""


def test_show(run_dir, capsys):
    ids = run_dir["ids"]
    out, _ = _out(capsys, [run_dir["dir"], "show", str(ids[1])])
    assert f"candidate {ids[1]}  generation 0  seq 1  sampler dark" in out
    assert "zone: 0 (n_points 12" in out and "Two plus two is four." in out
    assert "norm 1.5, dim 4; density score 1.2" in out
    assert "verdict: false  fact_key: 2+2  true_new: no" in out
    assert "decision: rejected  total: 0.2  reason: verifier: false" in out
    assert "judge failed: timeout" in out and "distance 0.1" in out
    assert out.rstrip().endswith("Two plus two equals five.")
    out, _ = _out(capsys, [run_dir["dir"], "show", str(ids[3])])
    assert HOSTILE in out  # full text, unescaped
    out, _ = _out(capsys, [run_dir["dir"], "show", str(ids[2])])
    assert "decision: pending" in out and "scores: none yet" in out


def test_show_unknown_id(run_dir, capsys):
    out, err = _out(capsys, [run_dir["dir"], "show", "9999"], rc=2)
    assert err.startswith("error: no candidate with id 9999") and len(err.strip().splitlines()) == 1 and out == ""


def test_missing_run_folder(tmp_path, capsys):
    missing = tmp_path / "nope"
    for cmd in ([], ["candidates"], ["export"], ["show", "1"]):
        out, err = _out(capsys, [str(missing), *cmd], rc=2)
        assert err.startswith("error: ") and str(missing) in err and "--out" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and out == ""


def test_not_a_database(tmp_path, capsys):
    (tmp_path / "runs.db").write_bytes(b"this is not sqlite" * 100)
    out, err = _out(capsys, [str(tmp_path)], rc=2)
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("to_file", [False, True])
def test_export_jsonl_round_trip(run_dir, capsys, tmp_path, to_file):
    ids = run_dir["ids"]
    argv = [run_dir["dir"], "export", "--format", "jsonl"]
    if to_file:
        path = tmp_path / "out.jsonl"
        out, err = _out(capsys, argv + ["--out", str(path)])
        assert out == "" and "wrote 3 record(s)" in err
        out = path.read_text(encoding="utf-8")
    else:
        out, _ = _out(capsys, argv)
    assert out.isascii()
    lines = out.splitlines()  # splitlines also splits on U+2028 etc.: ASCII lines survive it
    recs = [json.loads(line) for line in lines]
    assert [r["id"] for r in recs] == [ids[0], ids[3], ids[4]]
    assert recs[1]["text"] == HOSTILE and recs[2]["text"] == BIG
    assert recs[0] == {
        "id": ids[0], "generation": 0, "sampler": "dark", "text": "Two plus two equals four.",
        "decision": "accepted", "reason": "all judges pass", "verdict": "true", "true_new": True,
        "total": 0.9, "scores": {"coherence": 0.9, "novelty": 0.8},
    }


def test_export_all(run_dir, capsys):
    out, _ = _out(capsys, [run_dir["dir"], "export", "--all"])
    recs = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in recs] == run_dir["ids"]
    assert recs[2]["decision"] is None and recs[2]["scores"] == {}
    assert recs[1]["scores"] == {"coherence": None, "novelty": 0.1}


@pytest.mark.parametrize("to_file", [False, True])
def test_export_csv_round_trip(run_dir, capsys, tmp_path, to_file):
    ids = run_dir["ids"]
    argv = [run_dir["dir"], "export", "--format", "csv", "--all"]
    if to_file:
        path = tmp_path / "out.csv"
        _out(capsys, argv + ["--out", str(path)])
        fh = open(path, encoding="utf-8", newline="")
    else:
        out, _ = _out(capsys, argv)
        fh = io.StringIO(out, newline="")
    with fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["id", "generation", "sampler", "text", "decision", "reason", "verdict", "true_new",
                             "total", "score_coherence", "score_novelty"]
    assert [int(r["id"]) for r in rows] == ids
    assert rows[3]["text"] == HOSTILE and rows[4]["text"] == BIG
    assert rows[0]["true_new"] == "true" and float(rows[0]["total"]) == 0.9 and float(rows[0]["score_novelty"]) == 0.8
    assert rows[1]["score_coherence"] == "" and rows[2]["decision"] == "" and rows[5]["total"] == ""


def test_export_hf_dataset_folder_opens_with_load_dataset(run_dir, capsys, tmp_path):
    """--format hf: Parquet and a dataset card in a new folder; `datasets.load_dataset` reads back
    every candidate exactly (hostile and 100 KB texts, nulls), the card names the run's judges."""
    from datasets import load_dataset

    ids, out_dir = run_dir["ids"], tmp_path / "hf"
    _, err = _out(capsys, [run_dir["dir"], "export", "--format", "hf", "--all", "--out", str(out_dir)])
    assert "wrote 6 record(s)" in err
    rows = load_dataset(str(out_dir), cache_dir=str(tmp_path / "cache"))["train"].to_list()
    assert [r["id"] for r in rows] == ids
    assert rows[3]["text"] == HOSTILE and rows[4]["text"] == BIG
    assert rows[0] == {"id": ids[0], "generation": 0, "sampler": "dark", "text": "Two plus two equals four.",
                       "decision": "accepted", "reason": "all judges pass", "verdict": "true", "true_new": True,
                       "total": 0.9, "score_coherence": 0.9, "score_novelty": 0.8}
    assert rows[2]["decision"] is None and rows[2]["score_novelty"] is None and rows[5]["total"] is None
    card = (out_dir / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "judges with scores here: coherence, novelty" in card
    assert "| 0 | 3 | 1 | 33.3% | 1 |" in card  # generation 0: 3 candidates, 1 accepted, 1 true and new
    # never over an existing folder, and a folder is required
    _, err = _out(capsys, [run_dir["dir"], "export", "--format", "hf", "--out", str(out_dir)], rc=2)
    assert err.startswith("error: ") and "exists" in err and len(err.strip().splitlines()) == 1
    _, err = _out(capsys, [run_dir["dir"], "export", "--format", "hf"], rc=2)
    assert "--out DIR" in err


def test_export_unwritable_out(run_dir, capsys, tmp_path):
    out, err = _out(capsys, [run_dir["dir"], "export", "--out", str(tmp_path / "no" / "such" / "x.jsonl")], rc=2)
    assert err.startswith("error: cannot write") and len(err.strip().splitlines()) == 1


def test_zones(run_dir, capsys):
    out, _ = _out(capsys, [run_dir["dir"], "zones"])
    lines = out.splitlines()
    assert lines[0].split() == ["gen", "label", "n_points", "radius", "volume", "decoded"]
    assert lines[2].split() == ["0", "0", "12", "0.25", "0.1", "Two", "plus", "two", "is", "four."]
    assert lines[3].split() == ["1", "3", "5", "0.5", "0.05", "-"]
    out, _ = _out(capsys, [run_dir["dir"], "zones", "--generation", "1"])
    assert len(out.splitlines()) == 3


def test_metrics(run_dir, capsys):
    out, _ = _out(capsys, [run_dir["dir"], "metrics"])
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["gen", "candidates", "accepted", "acceptance_rate"]
    assert lines[2].split() == ["0", "3", "1", "0.5", "0.5", "1", "12.5", "0.8", "0.9", "0.66"]


def test_empty_database(tmp_path, capsys):
    open_db(tmp_path, create=True).dispose()
    out, _ = _out(capsys, [str(tmp_path)])
    assert "no run row yet" in out and "no generations yet" in out
    for cmd in (["candidates"], ["export"], ["export", "--format", "csv"], ["zones"], ["metrics"]):
        _out(capsys, [str(tmp_path), *cmd])


def test_argparse_errors_return_code(run_dir, capsys):
    assert main([run_dir["dir"], "candidates", "--decision", "maybe"]) == 2
    assert main([run_dir["dir"], "frobnicate"]) == 2
    assert main([run_dir["dir"], "--help"]) == 0
    capsys.readouterr()


def test_reading_while_a_run_writes(run_dir, capsys):
    """A writer commits many small transactions for ~2 s; every inspect call meanwhile succeeds."""
    stop = threading.Event()
    written, errors = [0], []

    def writer():
        engine = open_db(run_dir["dir"])
        try:
            seq = 100
            while not stop.is_set():
                with Session(engine) as s:
                    c = _cand(2, seq, "dark", "accepted" if seq % 2 else None, f"live text {seq}\nline 2")
                    s.add(c)
                    s.flush()
                    s.add(Score(candidate_id=c.id, judge="novelty", score=0.5, reason="live"))
                    s.commit()
                seq += 1
                written[0] += 1
        except Exception as e:  # surfaced by the assert below
            errors.append(e)
        finally:
            engine.dispose()

    t = threading.Thread(target=writer)
    t.start()
    calls = 0
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            for cmd in (["summary"], ["export"], ["export", "--format", "csv", "--all"], ["candidates", "--sort", "novelty"]):
                assert main([run_dir["dir"], *cmd]) == 0, capsys.readouterr().err
                calls += 1
            out, _ = capsys.readouterr()
    finally:
        stop.set()
        t.join(10)
    assert not errors, errors
    assert written[0] > 10 and calls > 8
    out, _ = _out(capsys, [run_dir["dir"]])
    assert "generation 2" in out
    out, _ = _out(capsys, [run_dir["dir"], "export", "--all"])
    assert len(out.splitlines()) == 6 + written[0]


@pytest.mark.parametrize("seconds, share", [
    ({"sllm": 60, "map": 10, "sample": 5, "decode": 15, "judge": 10, "retrain": 100, "evaluate": 50}, 0.125),
    ({"base": 100, "sllm": 50, "decode": 30, "judge": 20}, 0.25),
    ({"decode": 3, "judge": 1, "evaluate": 9}, 1.0),  # evaluate is left out of the sum
    ({"sample": 1, "judge": 2}, None),  # no decode timing yet
    ({}, None),
    ({"decode": 0.0, "judge": 0.0}, None),
])
def test_generate_share(seconds, share):
    got = queries.generate_share(seconds)
    assert got == share if share is None else got == pytest.approx(share)


def test_summary_reports_the_decode_judge_share(tmp_path, capsys):
    """inspect prints each generation's decode + judge share, computed from the stage table."""
    engine = open_db(tmp_path, create=True)
    with Session(engine) as s:
        for name, sec in (("sllm", 30), ("map", 5), ("sample", 1), ("decode", 6), ("judge", 4), ("retrain", 54),
                          ("evaluate", 100)):
            s.add(Stage(generation=0, name=name, started_at=_t(), seconds=sec))
        for name, sec in (("sllm", 30), ("decode", 6)):  # generation 1 is still judging
            s.add(Stage(generation=1, name=name, started_at=_t(), seconds=sec))
        s.commit()
    gens = queries.summary(engine)["generations"]
    engine.dispose()
    assert [g["generate_share"] for g in gens] == [pytest.approx(0.1), None]
    out, _ = _out(capsys, [str(tmp_path)])
    assert out.count("decode+judge: ") == 1 and "decode+judge: 10.0% of the generation's stage time" in out
