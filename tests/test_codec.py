"""The SLLM codec and its decoder adapter: trained jointly, on only while decoding, saved with the
SLLM, one merged LoRA for vLLM; word dropout; the bench's diagnosis."""
import dataclasses

import numpy as np
import pytest
import torch

from tests.conftest import TINY_TEXTS


def _cfg(**kw):
    from sllm.config import SLLMConfig

    return SLLMConfig(latent_dim=16, enc_dim=32, enc_layers=1, n_prompt=4, meaning_weight=0.0, **kw)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _lora_b(model, name):
    return {n: p.detach().clone() for n, p in model.named_parameters() if f".{name}." in n and "lora_B" in n}


@pytest.mark.parametrize("own_adapter", [False, True], ids=["bare base", "base wearing the loop's adapter"])
def test_decoder_adapter_trains_with_the_sllm_and_is_on_only_while_decoding(tiny_lm, tiny_lm_dir, tmp_path, own_adapter):
    from peft import LoraConfig, get_peft_model

    from sllm import adapter
    from sllm.codec import Codec, GenParams
    from sllm.train import train_sllm

    tok, model = tiny_lm
    if own_adapter:  # the loop's retrained adapter, as in generation > 0
        torch.manual_seed(1)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.data.normal_(0, 0.1)
                p.requires_grad_(False)
    ids = torch.tensor([tok("3 plus 4 equals 7.")["input_ids"]])
    before = _logits(model, ids)
    base_w = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    own_w = _lora_b(model, "default")
    torch.manual_seed(0)
    codec = Codec.new(_cfg(decoder_lora_r=4), model, tok, 384)
    assert codec.has_adapter and torch.allclose(_logits(codec.model, ids), before)  # B starts at 0
    start = _lora_b(codec.model, adapter.DECODER)
    train_sllm(codec.sllm, codec.model, tok, TINY_TEXTS[:48], None, 2, 3e-3, 8, 0)
    trained = _lora_b(codec.model, adapter.DECODER)
    assert any(not torch.equal(start[n], trained[n]) for n in start)  # the decoder adapter learned
    for n, p in codec.model.named_parameters():  # the base and the loop's adapter did not
        if n in base_w:
            assert torch.equal(p, base_w[n]), n
    assert all(torch.equal(own_w[n], _lora_b(codec.model, "default")[n]) for n in own_w)
    assert not any(p.requires_grad for p in codec.model.parameters())
    # off outside decoding: every other user of the model sees it as it was
    assert torch.allclose(_logits(codec.model, ids), before)
    with adapter.decoding(codec.model):
        assert not torch.allclose(_logits(codec.model, ids), before)
        with adapter.reading(codec.model):
            assert torch.allclose(_logits(codec.model, ids), before)
    assert torch.allclose(_logits(codec.model, ids), before)

    # saved with the SLLM, loaded onto another copy of the base model: the same decodes
    from backends.transformers_backend import TransformersBackend
    from lm.base_model import load_base_model

    codec.save(tmp_path)
    assert (tmp_path / adapter.FOLDER / "adapter_config.json").is_file()
    z = codec.encode(TINY_TEXTS[:6])

    def decodes(c):
        be = TransformersBackend("")
        be.tokenizer, be.model = tok, c.model
        return c.decode(z, be, GenParams(10, 0.0, 0))

    again = Codec.load(tmp_path, codec.model, tok)  # onto the same model: the adapter is replaced, not stacked
    assert decodes(again) == decodes(codec)
    assert list(again.model.peft_config) == (["default"] if own_adapter else []) + [adapter.DECODER]
    if not own_adapter:  # (a bare copy lacks the loop's adapter, so its decodes may differ)
        _, other = load_base_model(str(tiny_lm_dir))
        assert decodes(Codec.load(tmp_path, other, tok)) == decodes(codec)

    # one merged LoRA (the model's own + the decoder's) equals both on at once: what vLLM serves
    from peft import PeftModel

    with adapter.decoding(again.model):
        want = _logits(again.model, ids)
    _, bare = load_base_model(str(tiny_lm_dir))
    got = _logits(PeftModel.from_pretrained(bare, str(again.merged_adapter())), ids)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(_logits(again.model, ids), before)  # merging left the decoder adapter off


def test_word_dropout_only_in_training(tiny_lm):
    from sllm.model import SLLM
    from sllm.codec import token_batch
    from sllm.train import sllm_losses
    from lm.base_model import encode_texts

    tok, model = tiny_lm
    torch.manual_seed(0)
    sllm = SLLM(model.get_input_embeddings().weight.shape[1], _cfg(word_dropout=0.5))
    ids, mask, emb, enc = token_batch(model, tok, encode_texts(tok, TINY_TEXTS[:8], 48), "cpu", "hidden")
    sllm.eval()
    a = sllm_losses(sllm, model, ids, mask, emb, enc_in=enc)[1]["rec"]
    b = sllm_losses(sllm, model, ids, mask, emb, enc_in=enc, cfg=dataclasses.replace(sllm.cfg, word_dropout=0.0))[1]["rec"]
    assert torch.equal(a, b)  # eval: no dropout
    sllm.train()
    torch.manual_seed(1)
    c = sllm_losses(sllm, model, ids, mask, emb, enc_in=enc)[1]["rec"]
    torch.manual_seed(1)
    d = sllm_losses(sllm, model, ids, mask, emb, enc_in=enc, cfg=dataclasses.replace(sllm.cfg, word_dropout=0.0))[1]["rec"]
    assert not torch.allclose(c, d)


def test_teacher_forced_diagnosis_and_first_error(tiny_lm):
    from sllm.codec import Codec
    from sllm.codec import first_error, teacher_forced
    from sllm.train import train_sllm

    tok, model = tiny_lm
    torch.manual_seed(0)
    codec = Codec.new(_cfg(decoder_lora_r=4), model, tok, 384)
    texts = TINY_TEXTS[:48]
    train_sllm(codec.sllm, codec.model, tok, texts, None, 6, 5e-3, 8, 0)
    z = codec.encode(texts)
    own = teacher_forced(codec.sllm, codec.model, tok, texts, z)
    shuffled = teacher_forced(codec.sllm, codec.model, tok, texts, z[np.roll(np.arange(len(z)), 1)])
    assert 0 <= shuffled["token_accuracy"] < own["token_accuracy"] <= 1
    assert own["ce"] < shuffled["ce"]  # trained: its own latent explains its text better than another's
    assert first_error(tok, "3 plus 4 equals 7.", "3 plus 4 equals 7.") is None
    assert first_error(tok, "3 plus 4 equals 7.", "3 plus 5 equals 8.") == len(tok("3 plus ")["input_ids"])
    assert first_error(tok, "3 plus 4", "3 plus 4 equals") == len(tok("3 plus 4")["input_ids"])


def test_kv_prefix_trains_decodes_through_the_cache_and_is_saved(tiny_lm, tmp_path):
    """Per-layer injection: z also becomes P key/value slots in every layer. Training reaches its
    head; the backend's greedy decode (generate with a prefix cache) is the argmax chain of the
    forward that training optimises; save and load keep it; vLLM is refused."""
    from backends.transformers_backend import TransformersBackend
    from common.errors import ConfigError
    from lm.base_model import kv_shape
    from loop.config import build_config
    from sllm import adapter
    from sllm.codec import Codec, GenParams, conditioning, prefix_len
    from sllm.train import train_sllm

    tok, model = tiny_lm
    torch.manual_seed(0)
    codec = Codec.new(_cfg(kv_prefix=2, decoder_lora_r=4), model, tok, 384)
    layers, heads, width = kv_shape(model)
    z = codec.encode(TINY_TEXTS[:5])
    assert codec.sllm.kv(torch.as_tensor(z)).shape == (layers, 2, 5, heads, 2, width)
    start = [p.detach().clone() for p in codec.sllm.kv_head.parameters()]
    train_sllm(codec.sllm, codec.model, tok, TINY_TEXTS[:48], None, 2, 3e-3, 8, 0)
    assert all(not torch.equal(a, b) for a, b in zip(start, codec.sllm.kv_head.parameters()))

    be = TransformersBackend("")
    be.tokenizer, be.model = tok, codec.model
    z = codec.encode(TINY_TEXTS[:5])
    got = codec.decode(z, be, GenParams(8, 0.0, 0))
    with torch.no_grad(), adapter.decoding(codec.model):  # the oracle: greedy steps through the cache
        emb, _ = codec.inputs(z)
        zt = torch.as_tensor(z)
        cond = conditioning(codec.sllm, codec.model, zt)
        cache = cond["past_key_values"]
        att = torch.ones(5, prefix_len(cond) + emb.shape[1], dtype=torch.long)
        out = codec.model(inputs_embeds=emb, attention_mask=att, past_key_values=cache, use_cache=True)
        steps = []
        for _ in range(8):
            steps.append(out.logits[:, -1].argmax(-1))
            att = torch.cat([att, torch.ones(5, 1, dtype=torch.long)], 1)
            out = codec.model(input_ids=steps[-1][:, None], attention_mask=att, past_key_values=out.past_key_values,
                              use_cache=True)
    rows = [r[: r.index(tok.eos_token_id)] if tok.eos_token_id in r else r for r in torch.stack(steps, 1).tolist()]
    assert got == [tok.decode(r, skip_special_tokens=True).strip() for r in rows]  # generate stops a row at EOS

    codec.save(tmp_path)
    again = Codec.load(tmp_path, codec.model, tok)
    assert again.sllm.kv_shape == (layers, heads, width)
    assert again.decode(z, be, GenParams(8, 0.0, 0)) == got
    with pytest.raises(ConfigError, match="kv_prefix"):
        build_config({"sllm": {"kv_prefix": 2}, "decode": {"backend": "vllm"}})


@pytest.mark.parametrize("kv_prefix", [0, 2], ids=["soft prompts", "key/value prefix"])
def test_beam_search_decodes_through_the_codec_in_the_transformers_backend_only(tiny_lm, kv_prefix):
    from backends.transformers_backend import TransformersBackend
    from common.errors import ConfigError
    from lm.base_model import generate_inputs
    from loop.config import build_config
    from sllm import adapter
    from sllm.codec import Codec, GenParams

    tok, model = tiny_lm
    torch.manual_seed(0)
    codec = Codec.new(_cfg(decoder_lora_r=4, kv_prefix=kv_prefix), model, tok, 384)
    be = TransformersBackend("")
    be.tokenizer, be.model = tok, codec.model
    z = np.random.default_rng(0).normal(0, 3, (6, 16)).astype(np.float32)  # latents far apart: varied decodes
    greedy = codec.decode(z, be, GenParams(12, 0.0, 0))
    assert codec.decode(z, be, GenParams(12, 0.0, 0, beams=1)) == greedy
    got = codec.decode(z, be, GenParams(12, 0.0, 0, beams=4))
    # the oracle: transformers' own beam search on the inputs the codec builds, the decoder adapter on
    with torch.no_grad(), adapter.decoding(codec.model):
        emb, _ = codec.inputs(z)
        kv = codec.sllm.kv(torch.as_tensor(z)).repeat_interleave(4, dim=2) if kv_prefix else None
        out = codec.model.generate(**generate_inputs(codec.model, emb, kv), max_new_tokens=12, num_beams=4,
                                   do_sample=False, top_p=None, top_k=None, temperature=None,
                                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    assert got == [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]
    # each row's beams read that row's latent alone (the key/value prefix too is widened row by row)
    assert [codec.decode(z[i : i + 1], be, GenParams(12, 0.0, 0, beams=4))[0] for i in range(len(z))] == got
    assert got != greedy  # the search ran: on these latents some likeliest texts are not the greedy ones

    class Served:  # any other backend
        name = "vllm"

    with pytest.raises(ConfigError, match="transformers backend only"):
        codec.decode(z, Served(), GenParams(12, 0.0, 0, beams=4))
    with pytest.raises(ConfigError, match="transformers backend only"):
        codec.decode(z, be, GenParams(12, 0.7, 0, beams=4))
    for bad, match in (({"beams": 0}, "must be >= 1"), ({"beams": 4, "temperature": 0.7}, "transformers backend only"),
                       ({"beams": 4, "backend": "vllm"}, "transformers backend only")):
        with pytest.raises(ConfigError, match=match):
            build_config({"decode": bad})


def test_a_decode_picks_the_likeliest_beam_a_check_accepts(tiny_lm):
    from backends.transformers_backend import TransformersBackend
    from common.errors import ConfigError
    from lm.base_model import generate_inputs
    from loop.config import build_config
    from loop.context import RunContext
    from sllm import adapter
    from sllm.codec import Codec, GenParams

    tok, model = tiny_lm
    torch.manual_seed(0)
    codec = Codec.new(_cfg(decoder_lora_r=4), model, tok, 384)
    be = TransformersBackend("")
    be.tokenizer, be.model = tok, codec.model
    z = np.random.default_rng(0).normal(0, 3, (6, 16)).astype(np.float32)
    top = codec.decode(z, be, GenParams(12, 0.0, 0, beams=4))
    # the oracle: each latent's 4 beams, likeliest first, from transformers' own beam search
    with torch.no_grad(), adapter.decoding(codec.model):
        emb, _ = codec.inputs(z)
        out = codec.model.generate(**generate_inputs(codec.model, emb, None), max_new_tokens=12, num_beams=4,
                                   num_return_sequences=4, do_sample=False, top_p=None, top_k=None, temperature=None,
                                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    texts = [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]
    beams = [texts[i : i + 4] for i in range(0, len(texts), 4)]
    assert [b[0] for b in beams] == top
    # a check that turns the likeliest beam down: the next one it passes, the top one when it passes none
    taken = set(top)
    accept = lambda text: text not in taken  # noqa: E731
    want = [next((t for t in b if accept(t)), b[0]) for b in beams]
    assert want != top
    assert codec.decode(z, be, GenParams(12, 0.0, 0, beams=4, accept=accept)) == want
    assert codec.decode(z, be, GenParams(12, 0.0, 0, beams=4, accept=lambda text: False)) == top
    # closest: the beam the SLLM encodes nearest the latent (among those the check passes)
    own = codec.reencode(texts).reshape(len(z), 4, -1)
    dist = np.linalg.norm(own - z[:, None, :], axis=2)  # (latents, beams)
    nearest = [b[int(np.argmin(d))] for b, d in zip(beams, dist)]
    assert nearest != top  # on these latents the likeliest beam is not always the one encoded nearest
    assert codec.decode(z, be, GenParams(12, 0.0, 0, beams=4, closest=True)) == nearest
    ok = [[accept(t) for t in b] for b in beams]
    want = [b[int(np.argmin(np.where(k, d, np.inf)))] if any(k) else b[int(np.argmin(d))]
            for b, d, k in zip(beams, dist, ok)]
    assert codec.decode(z, be, GenParams(12, 0.0, 0, beams=4, accept=accept, closest=True)) == want

    # the run's decode settings: the domain's verifier decides what parses; a sampled decode samples
    cfg = build_config({"decode": {"beams": 4, "pick": "parseable"}})
    params = RunContext(cfg).gen_params(7)
    assert (params.beams, params.seed, params.temperature) == (4, 7, 0.0)
    assert params.accept("The sum of 3 and 4 is 7.") and params.accept("The sum of 3 and 4 is 8.")  # true or false
    assert not params.accept("zebra ( +")
    assert RunContext(cfg).gen_params(7, temperature=0.8) == GenParams(cfg.decode.max_new_tokens, 0.8, 7)
    assert RunContext(build_config({"decode": {"beams": 4}})).gen_params(7).accept is None
    closest = RunContext(build_config({"decode": {"beams": 4, "pick": "closest"}})).gen_params(7)
    assert closest.closest and closest.accept("The sum of 3 and 4 is 8.") and not closest.accept("zebra ( +")
    for bad, match in (({"pick": "best"}, "decode.pick 'best' is not a choice; use top, parseable, closest"),
                       ({"pick": "parseable"}, "set decode.beams > 1 too"), ({"pick": "closest"}, "set decode.beams > 1")):
        with pytest.raises(ConfigError, match=match):
            build_config({"decode": bad})
