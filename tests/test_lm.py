import pytest
import torch

from lm.base_model import ModelError, load_base_model, perplexity


def test_tiny_lm_roundtrip(tiny_lm, tiny_lm_dir):
    tok, model = tiny_lm
    text = "3 plus 4 equals 7."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # byte-level BPE decodes exactly
    assert all(not p.requires_grad for p in model.parameters())
    assert (tiny_lm_dir / "config.json").is_file()
    assert perplexity(model, tok, [text]) < len(tok)  # trained below uniform


def test_tokenizer_splits_numbers_into_digits():
    from lm.base_model import train_tokenizer

    tok = train_tokenizer([f"{a} plus {b} equals {a + b}." for a in range(40) for b in range(40)], 300)
    text = "There are 1080 days in 7 fortnights, 336 hours."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("10807336")  # one digit a token
    assert tok.decode(ids) == text


def test_generate_from_inputs_embeds(tiny_lm):
    tok, model = tiny_lm
    emb = model.get_input_embeddings()(torch.tensor([[tok.bos_token_id]]))
    out = model.generate(inputs_embeds=emb, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] >= 1


@pytest.mark.parametrize("bad", ["/nonexistent/model", "."])
def test_bad_model_folder(bad, tmp_path):
    with pytest.raises(ModelError):
        load_base_model(bad if bad != "." else str(tmp_path))


def test_pack_sequences_copy_units_take_loss_on_the_repeat_only():
    import random

    from lm.base_model import encode_texts, pack_sequences, train_tokenizer

    corpus = [f"{a} plus {b} equals {a + b}." for a in range(12) for b in range(12)]
    tok = train_tokenizer(corpus, 300)
    copy_texts = ["7 plus 7 equals 15.", "9 minus 2 equals 3.", "2 times 6 equals 11."]
    rows = pack_sequences(encode_texts(tok, corpus[:6], 200), None, 200, random.Random(0), repeat_share=0.0,
                          copy_enc=encode_texts(tok, copy_texts, 200), copy_units=2)
    ids = [t for r in rows for t in r[0]]
    masked = [t for r in rows for t, lab in zip(*r) if lab == -100]
    copies = [x for x in encode_texts(tok, copy_texts, 200) if any(x == ids[i : i + len(x)] for i in range(len(ids)))]
    assert len(copies) == 2  # copy_units texts, each packed
    for x in copies:
        at = next(i for i in range(len(ids)) if ids[i : i + 2 * len(x)] == x + x)  # text, then its verbatim repeat
        labels = [lab for r in rows for lab in r[1]]
        assert labels[at : at + len(x)] == [-100] * len(x)  # no loss on the first copy
        assert labels[at + len(x) : at + 2 * len(x)] == x  # the loss is on the repeat
    assert len(masked) == sum(map(len, copies))  # corpus texts keep their loss everywhere
    for r in rows:
        assert len(r[0]) == len(r[1]) <= 200
    # a text whose repeat would not fit in a row is not used: it could carry no loss
    long_text = " ".join(["7 plus 7 equals 14."] * 6)
    assert len(encode_texts(tok, [long_text], 200)[0]) > 30
    rows = pack_sequences(encode_texts(tok, corpus[:2], 60), None, 60, random.Random(0), repeat_share=0.0,
                          copy_enc=encode_texts(tok, [long_text], 60), copy_units=1)
    assert all(lab != -100 for r in rows for lab in r[1])


@pytest.mark.parametrize("pool, expected", [(2, ["a 1.", "b 2."]), (0, ["a 1.", "b 2.", "c 3."])])
def test_copy_units_are_drawn_from_the_first_copy_pool_texts(tmp_path, monkeypatch, pool, expected):
    import lm.base_model as B
    from loop.config import BaseConfig

    seen = {}

    def spy_train_lm(model, tok, texts, *a, copy_texts=None, **k):
        seen["copy"] = copy_texts
        return [1.0]

    monkeypatch.setattr(B, "train_lm", spy_train_lm)
    cfg = BaseConfig(vocab_size=300, hidden=16, layers=1, heads=2, epochs=1, copy_pool=pool)
    B.train_small_base(["1 plus 1 equals 2."] * 20, cfg, tmp_path / "m", 0, copy_texts=["a 1.", "b 2.", "c 3."])
    assert seen["copy"] == expected
