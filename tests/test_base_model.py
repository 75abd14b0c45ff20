import pytest
import torch

from loop.base_model import ModelError, load_base_model, perplexity


def test_tiny_lm_roundtrip(tiny_lm, tiny_lm_dir):
    tok, model = tiny_lm
    text = "3 plus 4 equals 7."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # byte-level BPE decodes exactly
    assert all(not p.requires_grad for p in model.parameters())
    assert (tiny_lm_dir / "config.json").is_file()
    assert perplexity(model, tok, [text]) < len(tok)  # trained below uniform


def test_tokenizer_splits_numbers_into_digits():
    from loop.base_model import train_tokenizer

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
