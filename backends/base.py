"""The small text-generation interface every backend implements (house style, rule 5)."""
from __future__ import annotations

from typing import Protocol

import torch


class Backend(Protocol):
    name: str

    def load(self) -> None: ...

    def generate_from_embeds(self, embeds: torch.Tensor, max_new_tokens: int, temperature: float,
                             seed: int) -> list[str]:
        """Soft prompts (B, L, E) (already ending with the BOS embedding) -> decoded texts."""
        ...

    def sample(self, n: int, max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        """Plain sampling from BOS, no SLLM: the `lm` baseline."""
        ...

    def unload(self) -> None: ...


def get_backend(name: str, model_path: str, adapter: str | None, device: str, batch_size: int,
                loaded=None) -> Backend:
    """The decoding backend `name` for the base model at `model_path` wearing `adapter`.

    loaded: an already loaded (tokenizer, model) pair the transformers backend can share
    instead of loading its own copy.
    """
    if name == "transformers":
        from backends.transformers_backend import TransformersBackend

        be = TransformersBackend(model_path, adapter, device, batch_size)
        if loaded is not None:
            be.tokenizer, be.model = loaded
        return be
    raise ValueError(f"unknown backend {name!r}; use transformers")
