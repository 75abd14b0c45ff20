"""`python run.py bench decode|critic` (backends/bench.py) on tiny settings, transformers backend."""
import json

import pytest

from bench import backends as bench

TINY = ["--backends", "transformers", "--n", "4", "--single", "2", "--repeats", "1", "--threads", "1"]


def test_critic_bench_writes_json_with_ratios_and_equal_scores(tiny_lm_dir, tmp_path, capsys):
    out = tmp_path / "critic.json"
    rc = bench.main(["critic", "--model", str(tiny_lm_dir), "--rubric-tokens", "60", "--json", str(out), *TINY])
    assert rc == 0
    res = json.loads(out.read_text())
    r = res["backends"]["transformers"]
    assert r["max_abs_score_diff_cached_vs_uncached"] < 1e-4
    assert r["cached"]["batched"]["candidates"] == 4 and r["uncached"]["single"]["candidates"] == 2
    assert r["cached_over_uncached"]["batched"] > 0
    assert abs(res["prefix_tokens"] - 60) <= 3
    assert "cached/uncached" in capsys.readouterr().out


def test_decode_bench_on_a_random_architecture(tmp_path):
    out = tmp_path / "decode.json"
    rc = bench.main(["decode", "--random-arch", "llama-tiny", "--max-new-tokens", "4", "--json", str(out), *TINY])
    assert rc == 0
    res = json.loads(out.read_text())
    r = res["backends"]["transformers"]
    assert res["model"] == "random llama-tiny"
    assert res["environment"]["torch"] and res["environment"]["command"].startswith("python run.py")
    assert 0 < r["batched"]["new_tokens"] <= 4 * 4 and r["batched"]["tokens_per_s"] > 0
    assert r["single"]["prompts"] == 2


def test_random_model_has_the_architecture_size(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    d = bench.build_random_model("llama-tiny", tmp_path / "m")
    cfg, tok = AutoConfig.from_pretrained(d), AutoTokenizer.from_pretrained(d)
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers) == ("llama", 128, 3)
    assert cfg.vocab_size >= len(tok) and cfg.bos_token_id == tok.bos_token_id


@pytest.mark.parametrize("argv", [["critic", "--backends", "nope"], ["decode", "--n", "0"]])
def test_bad_arguments_are_one_line_errors(argv, capsys):
    assert bench.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
