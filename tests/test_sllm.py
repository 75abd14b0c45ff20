"""The SLLM: training resumes from its checkpoint, the bench's figures, `run.py bench sllm`."""
import contextlib
import json

import numpy as np
import pytest
import torch

from tests.conftest import TINY_TEXTS
from tests.test_loop import TINY_MODELS, run_cli


def _fresh(tiny_lm):
    from loop.config import SLLMConfig
    from sllm.model import SLLM

    tok, model = tiny_lm
    torch.manual_seed(0)
    return SLLM(model.get_input_embeddings().weight.shape[1], SLLMConfig(latent_dim=16, enc_dim=32, enc_layers=1, n_prompt=4))


@contextlib.contextmanager
def _killed_at_step(monkeypatch, n: int):
    """Training inside the block is killed (KeyboardInterrupt) at its n-th step."""
    import sllm.train as T

    real, calls = T.sllm_losses, []

    def dies(*a, **k):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(T, "sllm_losses", dies)
    with pytest.raises(KeyboardInterrupt):
        yield
    monkeypatch.setattr(T, "sllm_losses", real)


@pytest.mark.parametrize("variant", ["plain", "paraphrase term", "decoder adapter and cycle term"])
def test_killed_training_resumes_from_its_checkpoint_to_the_same_weights(tiny_lm_dir, tmp_path, monkeypatch, variant):
    """With the paraphrase term on, its batches are drawn from the training's own generator, and
    the cycle term's latents from the step number: a resumed training must draw the same ones as an
    uninterrupted one, and restore the decoder adapter's weights with the SLLM's."""
    import dataclasses

    import sllm.train as T
    from lm.base_model import load_base_model
    from sllm import adapter

    paraphrase, deep = variant == "paraphrase term", variant.startswith("decoder")
    keys = [f"fact{i // 2}" if i < 16 else None for i in range(40)] if paraphrase else None

    def fresh():
        tok, model = load_base_model(str(tiny_lm_dir))  # its own model: the adapter is attached to it
        sllm = _fresh((tok, model))
        sllm.cfg = dataclasses.replace(sllm.cfg, paraphrase_weight=0.5 if paraphrase else 0.0,
                                       cycle_weight=1.0 if deep else 0.0, cycle_every=4, cycle_batch=4, max_tokens=24)
        if deep:
            torch.manual_seed(5)
            model = adapter.attach(model, 2)
        return sllm, model, tok

    def train(sllm, model, tok, **kw):
        return T.train_sllm(sllm, model, tok, TINY_TEXTS[:40], None, 3, 2e-3, 8, 0, fact_keys=keys, **kw)

    ref = fresh()
    info = train(*ref)
    assert all(h["para"] > 0 for h in info["history"]) if paraphrase else "para" not in info["final"]
    assert all(h["cycle"] > 0 for h in info["history"]) if deep else "cycle" not in info["final"]

    ckpt = tmp_path / "sllm.ckpt"
    with _killed_at_step(monkeypatch, 12):  # 5 batches an epoch: the 12th step is in the third epoch
        train(*fresh(), checkpoint=ckpt)
    assert ckpt.is_file() and torch.load(ckpt, weights_only=True)["epoch"] == 2
    resumed = fresh()
    info = train(*resumed, checkpoint=ckpt)
    assert not ckpt.exists() and len(info["history"]) == 3
    for k, v in ref[0].state_dict().items():
        assert torch.equal(v, resumed[0].state_dict()[k]), k
    a, b = adapter.decoder_parameters(ref[1]), adapter.decoder_parameters(resumed[1])
    assert len(a) == len(b) and bool(a) == deep
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_hard_negative_batches_hold_whole_facts_and_their_look_alikes():
    """Each paraphrase batch: all phrasings of a few facts, filled with texts of the same cluster
    of meaning targets, never with texts of another cluster."""
    import random

    from sllm.train import HardNegatives

    rng = np.random.default_rng(0)
    # two far-apart clouds of 1000 texts each; facts 0-29 in cloud A, 30-59 in cloud B, 3 phrasings each
    centres = np.zeros((2, 8), np.float32)
    centres[1, 0] = 100
    cloud = np.repeat([0, 1], 1000)
    targets = centres[cloud] + rng.normal(size=(2000, 8)).astype(np.float32)
    groups = [-1] * 2000
    for f in range(60):
        for p in range(3):
            groups[(0 if f < 30 else 1000) + 3 * (f % 30) + p] = f
    hn = HardNegatives(groups, targets, batch_size=32, seed=0, per_batch=4, texts_per_cluster=1000)
    assert hn and len(hn.clusters) == 2
    r = random.Random(0)
    for _ in range(20):
        idx, fid = hn.sample(r)
        assert len(idx) == 32 and len(set(idx)) == 32 and fid == [groups[i] for i in idx]
        assert len({cloud[i] for i in idx}) == 1  # one cluster: look-alikes only
        facts = {f for f in fid[:12]}
        assert len(facts) == 4 and all(fid.count(f) == 3 for f in facts)  # every phrasing of each fact
    assert not HardNegatives([-1, -1, 0, 1], None, 8, 0)  # no fact with two phrasings: no paraphrase batches


def test_encoding_with_running_statistics_matches_eval_and_leaves_them(tiny_lm):
    tok, model = tiny_lm
    sllm = _fresh(tiny_lm)
    x, mask = torch.randn(6, 5, 2 * model.get_input_embeddings().weight.shape[1]), torch.ones(6, 5, dtype=torch.long)
    sllm.norm.running_mean.normal_()
    sllm.norm.running_var.uniform_(0.5, 2)
    before = sllm.norm.running_mean.clone()
    z_train = sllm.train().encode(x, mask, running_stats=True)
    assert torch.equal(sllm.norm.running_mean, before)
    assert torch.allclose(z_train, sllm.eval().encode(x, mask), atol=1e-5)


def test_a_checkpoint_of_other_training_is_ignored(tiny_lm, tmp_path):
    import sllm.train as T

    tok, model = tiny_lm
    ckpt = tmp_path / "sllm.ckpt"
    torch.save({"fingerprint": [1, 2, 3], "epoch": 99}, ckpt)
    info = T.train_sllm(_fresh(tiny_lm), model, tok, TINY_TEXTS[:16], None, 1, 2e-3, 8, 0, checkpoint=ckpt)
    assert len(info["history"]) == 1 and not ckpt.exists()


def test_hidden_state_encoder_trains_encodes_and_decodes(tiny_lm):
    from loop.config import SLLMConfig
    from sllm.model import SLLM
    from sllm.codec import encode, soft_prompts
    from sllm.train import train_sllm

    tok, model = tiny_lm
    E = model.get_input_embeddings().weight.shape[1]
    torch.manual_seed(0)
    sllm = SLLM(E, SLLMConfig(latent_dim=16, enc_dim=32, enc_layers=1, n_prompt=8, encoder_input="hidden"))
    assert sllm.in_proj.in_features == 2 * E  # input embeddings and last hidden states side by side
    info = train_sllm(sllm, model, tok, TINY_TEXTS[:32], None, 6, 3e-3, 8, 0)
    assert info["history"][-1]["rec"] < info["history"][0]["rec"]
    z = encode(sllm, model, tok, TINY_TEXTS[:5])
    assert z.shape == (5, 16) and np.isfinite(z).all()
    # padding does not leak into the hidden states: a latent is the same whatever the batch
    z1 = encode(sllm, model, tok, TINY_TEXTS[:1] + TINY_TEXTS[20:24])
    assert np.allclose(z[0], z1[0], atol=1e-4)
    emb, mask = soft_prompts(sllm, model, tok, z)
    assert emb.shape == (5, 8 + 1, E) and mask.shape == (5, 9)


def test_cached_hidden_states_and_kept_logits_give_the_same_loss(tiny_lm, monkeypatch):
    """Training computes the base model's hidden states once and only the text's logits; both
    shortcuts must leave the loss as the plain computation gives it."""
    import sllm.train as T
    from lm.base_model import encode_texts
    from loop.config import SLLMConfig
    from sllm.model import SLLM

    tok, model = tiny_lm
    E = model.get_input_embeddings().weight.shape[1]
    torch.manual_seed(0)
    sllm = SLLM(E, SLLMConfig(latent_dim=16, enc_dim=32, enc_layers=1, n_prompt=4, encoder_input="hidden")).eval()
    seqs = encode_texts(tok, TINY_TEXTS[:12], 48)
    cache = T._hidden_cache(model, tok, seqs, 5, "cpu", "hidden")  # batches of 5 pad differently from the 4 below
    assert cache.shape == (12, max(map(len, seqs)), E)
    batch = [7, 2, 11, 0]
    plain = T.token_batch(model, tok, [seqs[j] for j in batch], "cpu", "hidden")
    cached = T.token_batch(model, tok, [seqs[j] for j in batch], "cpu", "hidden", cache[batch])
    assert torch.allclose(plain[3], cached[3], atol=1e-5)
    kept = T.sllm_losses(sllm, model, *plain[:3], enc_in=plain[3])[0]
    monkeypatch.setattr(T, "_keeps_logits", lambda m: False)
    full = T.sllm_losses(sllm, model, *plain[:3], enc_in=plain[3])[0]
    assert torch.allclose(kept, full, atol=1e-5) and kept > 0
    monkeypatch.setattr(T, "_cache_budget", lambda: 100)  # over budget: computed per batch instead
    assert T._hidden_cache(model, tok, seqs, 5, "cpu", "hidden") is None
    assert T._hidden_cache(model, tok, seqs, 5, "cpu", "embeddings") is None


def test_hidden_state_encoder_refuses_a_model_whose_hidden_size_differs():
    from types import SimpleNamespace

    from loop.config import ConfigError
    from sllm.codec import token_batch

    class ProjectingModel(torch.nn.Module):  # embeddings of 4, hidden states of 6 (as OPT-350m: 512 vs 1024)
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)

        def get_input_embeddings(self):
            return self.emb

        def forward(self, inputs_embeds, attention_mask, output_hidden_states):
            return SimpleNamespace(hidden_states=[torch.zeros(*inputs_embeds.shape[:2], 6)])

    tok = SimpleNamespace(pad_token_id=0)
    assert token_batch(ProjectingModel(), tok, [[1, 2, 3]], "cpu", "embeddings")[3].shape == (1, 3, 4)
    with pytest.raises(ConfigError, match="use --set sllm.encoder_input=embeddings"):
        token_batch(ProjectingModel(), tok, [[1, 2, 3]], "cpu", "hidden")


def test_bench_figures():
    from bench.sllm import effective_dimension, paraphrase_closeness, single_words, token_f1

    assert single_words(["CCO", "c1ccccc1"]) and not single_words(["CCO", "3 plus 4 equals 7."])

    assert token_f1("3 plus 4 equals 7.", "3 plus 4 equals 7.") == 1.0
    assert token_f1("3 plus 4 equals 7.", "9 minus 2") == 0.0
    assert token_f1("a b c d", "a b x y") == pytest.approx(0.5)
    z = np.random.default_rng(0).normal(size=(2000, 8))
    assert effective_dimension(z) == pytest.approx(8, rel=0.05)  # isotropic: every dimension counts
    assert effective_dimension(z * [1, 0, 0, 0, 0, 0, 0, 0]) == pytest.approx(1)
    pts = np.array([[0, 0], [0.1, 0], [5, 5], [5.1, 5], [10, 0]])
    assert paraphrase_closeness(pts, ["a", "a", "b", "b", "c"]) == 1.0
    assert paraphrase_closeness(pts, ["a", "b", "a", "b", None]) == 0.0
    assert paraphrase_closeness(pts, ["a", "b", "c", "d", "e"]) is None


class _TableCodec:
    """A codec of known places: each text's latent is `place(text)`, and a latent decodes to the
    nearest text it has encoded, of those `decodable` allows (every one with the parameters "any"):
    a faithful round trip by construction."""

    def __init__(self, tokenizer, place, decodable=lambda text: True):
        self.tokenizer, self.place, self.decodable, self.known = tokenizer, place, decodable, {}

    def encode(self, texts):
        z = np.stack([self.place(t) for t in texts]).astype(np.float32)
        self.known.update(zip(texts, z))
        return z

    reencode = encode

    def decode(self, z, backend, params):
        names = [n for n in self.known if params == "any" or self.decodable(n)]
        table = np.stack([self.known[n] for n in names])
        return [names[int(np.argmin(((table - zi) ** 2).sum(1)))] for zi in z]


def test_reach_counts_which_texts_land_dark_and_what_comes_back(tiny_lm):
    """bench sllm's `reach`: held-out texts sit in the corpus's two clusters, once-edited texts
    half between them (dark: inside the envelope, far from every corpus latent) and half in a
    cluster, four-times-edited texts all between them, scrambled and random strings far outside the
    envelope. A faithful codec carries every dark edited text back dark; one that can only write
    the held-out texts brings none back."""
    from types import SimpleNamespace

    from bench.sllm import reach
    from latent.config import SampleConfig
    from latent.occupancy import OccupancyMap

    rng = np.random.default_rng(0)
    centres = np.zeros((2, 8))
    centres[:, 0] = [-5, 5]
    corpus = np.concatenate([c + 0.3 * rng.standard_normal((500, 8)) for c in centres]).astype(np.float32)
    occ = OccupancyMap.fit(corpus, SampleConfig(), seed=0, threads=1)
    held = [f"held out text number {i} of the little list" for i in range(40)]

    def place(text):
        i = int(text.split("number ")[1].split()[0]) if "number " in text else -1
        near = centres[i % 2] + 0.01 * np.eye(8)[1] * i  # the dense middle of a cluster, one place per text
        between = 0.01 * np.eye(8)[2] * i  # between the clusters, one place per text
        if text in held:
            return near
        if text.startswith("e1:"):
            return between if i % 2 == 0 else near + 0.001
        if text.startswith("e4:"):
            return between + 0.001
        return np.full(8, 100.0)  # anything else (a scrambled or random string): far outside
    domain = SimpleNamespace(edit=lambda texts, k, seed: [f"e{k}:{t}" for t in texts], canonical=lambda t: t)
    assert occ.is_dark(np.stack([place(f"e1:{held[0]}")])).all() and not occ.is_dark(np.stack([place(held[0])])).any()

    tok = tiny_lm[0]
    faithful = _TableCodec(tok, place)
    res = reach(faithful, None, None, domain, occ, held, faithful.encode(held), seed=0)
    assert res["reach_dark_heldout"] == 0 and res["reach_outside_heldout"] == 0
    assert res["reach_dark_edit1"] == 0.5 and res["reach_dark_edit4"] == 1 and res["reach_outside_edit1"] == 0
    for pool in ("shuffled", "random"):
        assert res[f"reach_dark_{pool}"] == 0 and res[f"reach_outside_{pool}"] == 1, pool
    assert res["reach_edit1_dark"] == 20 and res["reach_edit1_exact"] == 1
    assert res["reach_edit1_dark_exact"] == 1 and res["reach_edit1_dark_still_dark"] == 1
    # a codec that writes only held-out texts: nothing edited comes back, nothing dark stays dark
    plain = _TableCodec(tok, place, decodable=lambda text: text in held)
    res = reach(plain, None, None, domain, occ, held, plain.encode(held), seed=0)
    assert res["reach_dark_edit1"] == 0.5 and res["reach_edit1_exact"] == 0
    assert res["reach_edit1_dark_exact"] == 0 and res["reach_edit1_dark_still_dark"] == 0
    # each search's decodes are scored on their own: here one that may write any text it has seen
    res = reach(plain, None, "greedy", domain, occ, held, plain.encode(held), seed=0, searches={"closest": "any"})
    assert res["reach_edit1_exact"] == 0 and res["reach_edit1_exact_closest"] == 1
    assert res["reach_edit1_dark_exact"] == 0 and res["reach_edit1_dark_exact_closest"] == 1


def test_bench_sllm_command_writes_every_figure(tmp_path):
    out, base = tmp_path / "bench.json", tmp_path / "base"
    p = run_cli(["bench", "sllm", "-q", "--json", str(out), "--base-dir", str(base), *TINY_MODELS,
                 "--set", "maths.facts_per_topic=5"])
    assert "exact_match" in p.stdout and "examples (held-out text -> decoded)" in p.stdout
    res = json.loads(out.read_text())["results"]["full"]
    assert res["heldout_texts"] > 0 and res["false_texts"] == 32 and res["file_texts"] == 0
    for k in ("exact_match", "token_f1", "interpolation_parseable", "paraphrase_closer_than_other_fact",
              "dark_sampled_dark", "reach_dark_heldout", "reach_dark_edit1", "reach_outside_random", "reach_edit1_exact"):
        assert 0 <= res[k] <= 1, k
    assert 0 <= res["bleu"] <= 100 and res["effective_dimension"] >= 1 and res["latent_norm_std"] >= 0
    assert len(res["examples"]) > 0 and all(set(e) == {"text", "decoded"} for e in res["examples"])
    # --base-dir kept the base model it trained; a second bench trains only an SLLM on it
    assert "base_s" in res and (base / "config.json").is_file()
    stamp = (base / "config.json").stat().st_mtime_ns
    from bench.sllm import main

    assert main(["sllm", "-q", "--json", str(out), "--base-dir", str(base), *TINY_MODELS,
                 "--set", "maths.facts_per_topic=5", "--set", "sllm.n_prompt=2", "--set", "sllm.decoder_lora_r=2",
                 "--seeds", "0,1", "--curve", "2"]) == 0
    saved = json.loads(out.read_text())
    res2 = saved["results"]["full s1"]
    assert "base_s" not in res2 and "sllm_s" in res2 and (base / "config.json").stat().st_mtime_ns == stamp
    assert res2["heldout_set"] == "knowledge"
    # two training seeds: each figure's mean and interval, the curve, the machine it ran on
    assert set(saved["results"]) == {"full s0", "full s1"} and saved["results"]["full s0"]["seed"] == 0
    em = [saved["results"][k]["exact_match"] for k in ("full s0", "full s1")]
    c = saved["summary"]["full"]["exact_match"]
    assert c["n"] == 2 and c["mean"] == pytest.approx(np.mean(em)) and c["lo"] <= c["mean"] <= c["hi"]
    assert [p["step"] for p in res2["exact_by_step"]] == [2, res2["steps"]]
    assert 0 <= res2["tf_accuracy_shuffled"] <= 1 and 0 <= res2["tf_accuracy"] <= 1 and res2["tf_ce"] > 0
    assert saved["environment"]["threads"] == 1 and saved["environment"]["torch"] == torch.__version__
    # --heldout eval: the evaluation split is measured and not trained on; sllm.texts_file's texts
    # join the SLLM's training texts, as in the loop
    (tmp_path / "more.txt").write_text("seven is a number.\nnine is a number too.\n")
    assert main(["sllm", "-q", "--json", str(out), "--base-dir", str(base), *TINY_MODELS, "--set", "maths.facts_per_topic=5",
                 "--set", "sllm.n_prompt=2", "--set", "sllm.decoder_lora_r=2", "--heldout", "eval",
                 "--set", f"sllm.texts_file={tmp_path / 'more.txt'}"]) == 0
    from domains.base import get_domain
    from loop.config import build_config

    splits = get_domain("maths").load(build_config(None, {"maths.facts_per_topic": 5, "maths.phrasings_per_fact": 2}).corpus, 0)
    ev = json.loads(out.read_text())["results"]["full"]
    assert ev["heldout_set"] == "eval" and ev["heldout_texts"] == len(splits.eval) > 0
    assert ev["train_texts"] == len(splits.train) and ev["file_texts"] == 2 and ev["false_texts"] == 32
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("not a model")
    assert main(["sllm", "-q", "--base-dir", str(tmp_path / "junk"), *TINY_MODELS]) == 2


@pytest.mark.parametrize("args, fragment", [
    (["--corpus", "{tmp}/c.txt"], "domain's own held-out set"),
    (["--set", "maths.facts_per_topic=4"], "holds out no fact"),
    (["--beams", "0"], "--beams must be >= 1, got 0"),
    (["--set", "sllm.texts_file={tmp}/missing.txt"], "sllm.texts_file"),
])
def test_bench_sllm_bad_input_is_one_line(tmp_path, args, fragment, capsys):
    from bench.sllm import main

    (tmp_path / "c.txt").write_text("a text\n")
    assert main(["sllm", "-q", *[a.format(tmp=tmp_path) for a in args]]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1, err


def test_bench_sllm_on_a_runs_own_models(tmp_path, capsys):
    run = tmp_path / "run"
    run_cli(["--generations", "2", "--out", str(run), *TINY_MODELS, "--set", "maths.facts_per_topic=5",
             "--set", "judges.require_true=false", "--set", "judges.min_coherence=0", "--set", "judges.min_novelty=0"])
    out = tmp_path / "bench.json"
    p = run_cli(["bench", "sllm", "-q", "--run", str(run), "--json", str(out)])
    assert "exact_match" in p.stdout
    data = json.loads(out.read_text())
    res = next(iter(data["results"].values()))
    assert res["generation"] == 1 and res["heldout_texts"] + res["heldout_left_out"] == 12 * 2  # 1 fact a topic, 2 phrasings
    assert data["settings"]["maths"]["facts_per_topic"] == 5  # the run's own settings
    # the rest in process (the command line's own path is covered above): no interpreter start-ups
    from bench.sllm import main

    assert main(["sllm", "-q", "--run", str(run), "--generation", "0", "--json", str(out)]) == 0
    assert next(iter(json.loads(out.read_text())["results"].values()))["heldout_left_out"] == 0
    capsys.readouterr()
    for args, fragment in ((["--run", str(run), "--generation", "7"], "has SLLMs of generations [0, 1]"),
                           (["--run", str(run), "--ablation"], "does not combine with --run"),
                           (["--run", str(run), "--base-dir", str(tmp_path / "b")], "does not combine with --run"),
                           (["--run", str(tmp_path / "nothing")], "no runs.db")):
        assert main(["sllm", "-q", *args]) == 2
        err = capsys.readouterr().err
        assert fragment in err and len(err.strip().splitlines()) == 1


def test_checkpoint_describes_itself(tiny_lm, tmp_path):
    """save_sllm writes config.json (settings and sizes) beside the weights; load_sllm needs nothing else."""
    from sllm.model import SLLM, load_sllm, save_sllm
    from sllm.config import SLLMConfig

    tok, model = tiny_lm
    E = model.get_input_embeddings().weight.shape[1]
    torch.manual_seed(0)
    sllm = SLLM(E, SLLMConfig(latent_dim=24, enc_dim=32, enc_layers=1, n_prompt=3, pool_queries=2), meaning_dim=7)
    save_sllm(sllm, tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["embed_dim"] == E and meta["meaning_dim"] == 7 and meta["sllm"]["latent_dim"] == 24
    back = load_sllm(tmp_path)
    assert back.cfg == sllm.cfg and back.meaning_head[-1].out_features == 7
    for (k, a), (k2, b) in zip(sllm.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    meta["sllm"]["latent_dim"] = 16  # weights that do not fit their config: one clear line, not a traceback
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not fit its own config.json .*; rerun its sllm stage"):
        load_sllm(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match="no readable config.json.*rerun its sllm stage"):
        load_sllm(tmp_path)


def test_prompt_copy_error_is_zero_when_prompts_spell_the_text():
    """The prompt-copy term: zero when the prompts hold the text's embeddings right-aligned (slots left
    of the text are free), positive otherwise; a text longer than K keeps its last K tokens."""
    from sllm.train import prompt_copy_error

    g = torch.Generator().manual_seed(0)
    emb, mask = torch.randn(2, 5, 4, generator=g), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    p = torch.zeros(2, 6, 4)
    p[0, 3:], p[1, 1:] = emb[0, :3], emb[1]
    assert torch.equal(prompt_copy_error(p, emb, mask), torch.zeros(2))
    p[0, 0] = 100.0  # a free slot
    assert torch.equal(prompt_copy_error(p, emb, mask), torch.zeros(2))
    p[1, 1] += 1.0  # a wrong token embedding
    err = prompt_copy_error(p, emb, mask)
    assert err[0] == 0 and err[1] > 0
    short = torch.stack([emb[0, :3], emb[1, 2:]])  # K = 3: the second text keeps its last 3 tokens
    assert torch.equal(prompt_copy_error(short, emb, mask), torch.zeros(2))


def test_prompt_copy_term_joins_the_loss_only_when_weighted(tiny_lm):
    from sllm.config import SLLMConfig
    from sllm.model import SLLM
    from sllm.codec import token_batch
    from sllm.train import sllm_losses

    tok, model = tiny_lm
    E = model.get_input_embeddings().weight.shape[1]
    seqs = [tok.encode("3 plus 4 equals 7.")[:6], tok.encode("2 times 5 equals 10.")[:6]]
    ids, mask, emb, enc_in = token_batch(model, tok, seqs, "cpu", "embeddings")
    for w in (0.0, 0.5):
        torch.manual_seed(0)
        cfg = SLLMConfig(latent_dim=16, enc_dim=32, enc_layers=1, n_prompt=8, pool_queries=2, encoder_input="embeddings",
                         prompt_copy_weight=w)
        sllm = SLLM(E, cfg, meaning_dim=4)
        total, terms = sllm_losses(sllm, model, ids, mask, emb, enc_in=enc_in)
        assert ("copy" in terms) == (w > 0)
        if w:
            assert terms["copy"] > 0 and torch.isclose(total, terms["rec"] + cfg.latent_l2 * terms["l2"] + w * terms["copy"])


def test_variational_latent_trains_on_samples_and_encodes_its_mean(tiny_lm, tmp_path):
    """With kl_weight the decoder is trained on mu + sigma * eps and the KL term (nats per target
    token) joins the loss; a text's latent is still mu, the same on every call, and the log-variance
    head is saved and loaded with the rest."""
    from sllm.config import SLLMConfig
    from sllm.model import SLLM, load_sllm, save_sllm
    from sllm.codec import encode, token_batch
    from sllm.train import sllm_losses, train_sllm

    tok, model = tiny_lm
    E = model.get_input_embeddings().weight.shape[1]
    seqs = [tok.encode(t)[:8] for t in TINY_TEXTS[:4]]
    ids, mask, emb, enc_in = token_batch(model, tok, seqs, "cpu", "embeddings")
    cfg = SLLMConfig(latent_dim=16, enc_dim=32, enc_layers=1, n_prompt=4, pool_queries=2, encoder_input="embeddings",
                     kl_weight=0.5)
    torch.manual_seed(0)
    sllm = SLLM(E, cfg, meaning_dim=4).train()
    mu, logvar = sllm.posterior(enc_in, mask)
    tokens = mask[:, 1:].sum(1)
    kl = (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1) / tokens).mean()
    torch.manual_seed(1)
    total, terms = sllm_losses(sllm, model, ids, mask, emb, enc_in=enc_in)
    assert torch.isclose(terms["kl"], kl) and terms["kl"] > 0
    assert torch.isclose(total, terms["rec"] + cfg.latent_l2 * terms["l2"] + 0.5 * terms["kl"])
    torch.manual_seed(2)  # another noise draw, another loss: the decoder sees samples, not mu
    assert not torch.isclose(sllm_losses(sllm, model, ids, mask, emb, enc_in=enc_in)[1]["rec"], terms["rec"])
    plain = SLLM(E, SLLMConfig(latent_dim=16, enc_dim=32, enc_layers=1, n_prompt=4, pool_queries=2,
                               encoder_input="embeddings"), meaning_dim=4)
    assert plain.posterior(enc_in, mask)[1] is None and "kl" not in sllm_losses(plain, model, ids, mask, emb, enc_in=enc_in)[1]

    info = train_sllm(sllm, model, tok, TINY_TEXTS[:16], None, 2, 3e-3, 8, 0)
    assert info["final"]["kl"] > 0
    z = encode(sllm, model, tok, TINY_TEXTS[:3])
    assert np.array_equal(z, encode(sllm, model, tok, TINY_TEXTS[:3]))  # eval: the mean, no noise
    sllm.eval()
    assert torch.equal(sllm.encode(enc_in, mask), sllm.posterior(enc_in, mask)[0])
    save_sllm(sllm, tmp_path)
    assert np.array_equal(encode(load_sllm(tmp_path), model, tok, TINY_TEXTS[:3]), z)
    assert torch.equal(load_sllm(tmp_path).to_logvar.bias, sllm.to_logvar.bias)


def test_compiled_training_matches_eager_and_needs_a_compiler(tiny_lm, monkeypatch):
    """sllm.compile trains through torch.compile: the same steps give the same weights as eager
    training, up to float rounding; without a C++ compiler it is refused in one line."""
    import dataclasses

    from common.errors import ConfigError
    from sllm.config import SLLMConfig
    from sllm.codec import encode
    from sllm.model import SLLM
    from sllm.train import train_sllm

    tok, model = tiny_lm
    E = model.get_input_embeddings().weight.shape[1]
    cfg = SLLMConfig(latent_dim=16, enc_dim=32, enc_layers=1, n_prompt=4, pool_queries=2, encoder_input="embeddings")
    trained = []
    for compile_ in (False, True):
        torch.manual_seed(0)
        sllm = SLLM(E, dataclasses.replace(cfg, compile=compile_), meaning_dim=4)
        info = train_sllm(sllm, model, tok, TINY_TEXTS[:24], None, 2, 3e-3, 8, 0)
        trained.append(([h["rec"] for h in info["history"]], encode(sllm, model, tok, TINY_TEXTS[:8])))
    (rec_eager, z_eager), (rec_compiled, z_compiled) = trained
    assert np.allclose(rec_eager, rec_compiled, rtol=1e-4)
    # what the trained SLLMs do, not each weight: Adam turns a gradient of about 0 (an attention key
    # bias's) into a step of about lr whatever its rounding, so single weights may differ a little
    assert np.linalg.norm(z_eager - z_compiled) <= 0.01 * np.linalg.norm(z_eager)

    monkeypatch.setattr("shutil.which", lambda name: None)
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match="sllm.compile needs a C\\+\\+ compiler"):
        train_sllm(SLLM(E, dataclasses.replace(cfg, compile=True), meaning_dim=4), model, tok, TINY_TEXTS[:8],
                   None, 1, 3e-3, 8, 0)
