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


def test_generate_from_inputs_embeds(tiny_lm):
    tok, model = tiny_lm
    emb = model.get_input_embeddings()(torch.tensor([[tok.bos_token_id]]))
    out = model.generate(inputs_embeds=emb, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] >= 1


@pytest.mark.parametrize("bad", ["/nonexistent/model", "."])
def test_bad_model_folder(bad, tmp_path):
    with pytest.raises(ModelError):
        load_base_model(bad if bad != "." else str(tmp_path))
