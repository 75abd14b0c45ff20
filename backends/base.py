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


def get_backend(name: str, model_path: str, adapter: str | None, device: str, batch_size: int) -> Backend:
    if name == "transformers":
        from backends.transformers_backend import TransformersBackend

        return TransformersBackend(model_path, adapter, device, batch_size)
    raise ValueError(f"unknown backend {name!r}; use transformers")
