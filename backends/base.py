"""The small text-generation interface every backend implements."""
from __future__ import annotations

from typing import Protocol

import torch

from backends.transformers_backend import TransformersBackend
from backends.vllm_backend import VllmBackend
from backends.vllm_server import VllmServerBackend


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
                loaded=None, base_url: str | None = None, tensor_parallel_size: int = 1,
                data_parallel_size: int = 1) -> Backend:
    """The decoding backend `name` for the base model at `model_path` wearing `adapter`.

    loaded: an already loaded (tokenizer, model) pair the transformers backend can share
    instead of loading its own copy (the vLLM backends take only its tokenizer).
    base_url: the running server for `vllm-server`.
    tensor_parallel_size, data_parallel_size: the in-process vLLM engine's parallelism (a server
    takes its own: `vllm serve --tensor-parallel-size N --data-parallel-size M`).
    """
    if name == "transformers":
        be = TransformersBackend(model_path, adapter, device, batch_size)
        if loaded is not None:
            be.tokenizer, be.model = loaded
        return be
    if name == "vllm":  # one engine per process, shared by every call; the adapter is a LoRARequest
        return VllmBackend(model_path, adapter, device, batch_size, tokenizer=None if loaded is None else loaded[0],
                           tensor_parallel_size=tensor_parallel_size, data_parallel_size=data_parallel_size)
    if name == "vllm-server":
        return VllmServerBackend(base_url or "", model_path, adapter, batch_size,
                                 tokenizer=None if loaded is None else loaded[0])
    raise ValueError(f"unknown backend {name!r}; use transformers, vllm or vllm-server")
