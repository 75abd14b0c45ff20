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
