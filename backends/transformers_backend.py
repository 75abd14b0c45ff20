"""In-process generation with transformers: soft prompts go in through `inputs_embeds`."""
from __future__ import annotations

import gc

import torch

from lm.base_model import generate_inputs, load_base_model


class TransformersBackend:
    name = "transformers"

    def __init__(self, model_path: str, adapter: str | None = None, device: str = "cpu", batch_size: int = 64):
        self.model_path, self.adapter, self.device, self.batch_size = model_path, adapter, device, batch_size
        self.model = self.tokenizer = None

    def load(self) -> None:
        if self.model is None:
            self.tokenizer, self.model = load_base_model(self.model_path, self.device, adapter=self.adapter)

    def _decode(self, out: torch.Tensor) -> list[str]:
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    @torch.no_grad()
    def generate_from_embeds(self, embeds: torch.Tensor, max_new_tokens: int, temperature: float, seed: int,
                             prefix: torch.Tensor | None = None, beams: int = 1, returns: int = 1) -> list[str]:
        """`prefix`: a key/value prefix (layers, 2, B, kv_heads, P, head_dim) every layer attends to
        before the embeddings (an SLLM with `kv_prefix`); only this backend takes one.
        `beams` > 1: beam search (greedy, so `temperature` must be 0); only this backend has it.
        `returns` (<= beams): the best `returns` beams of each input, likeliest first, one after
        another (B * returns texts)."""
        self.load()
        texts: list[str] = []
        for i in range(0, len(embeds), self.batch_size):
            chunk = embeds[i : i + self.batch_size]  # (b, L, E): equal lengths, so no padding
            kv = None if prefix is None else prefix[:, :, i : i + self.batch_size]
            if kv is not None and beams > 1:  # generate widens the inputs to one row per beam, never the cache
                kv = kv.repeat_interleave(beams, dim=2)
            torch.manual_seed(seed + i)
            out = self.model.generate(
                **generate_inputs(self.model, chunk, kv),
                max_new_tokens=max_new_tokens,
                num_beams=beams,
                num_return_sequences=returns,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=None, top_k=None,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )  # (b, new_tokens): with inputs_embeds only new tokens are returned
            texts.extend(self._decode(out))
        return texts

    @torch.no_grad()
    def sample(self, n: int, max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        self.load()
        texts: list[str] = []
        dev = next(self.model.parameters()).device
        for i in range(0, n, self.batch_size):
            b = min(self.batch_size, n - i)
            torch.manual_seed(seed + i)
            ids = torch.full((b, 1), self.tokenizer.bos_token_id, dtype=torch.long, device=dev)
            out = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                do_sample=True, temperature=temperature, top_p=None, top_k=None,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            )
            texts.extend(self._decode(out[:, 1:]))
        return texts

    def unload(self) -> None:
        self.model = self.tokenizer = None
        gc.collect()
