"""Client for an already running OpenAI-compatible vLLM server (`--backend vllm-server --base-url URL`).

Soft prompts travel as `prompt_embeds` (base64 of a `torch.save`d (L, E) tensor) in
`POST /v1/completions`; the server must run with `--enable-prompt-embeds`. The generated token
ids come back (`return_token_ids`) and are decoded here with the base model's tokenizer, exactly
as the transformers backend decodes, so greedy texts match it.

The adapter: a LoRA the server lists in `/v1/models` (started with `--lora-modules NAME=PATH`)
is used by name; otherwise it is loaded through `/v1/load_lora_adapter`, which needs the server
started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True. Only the standard library is used.
"""
from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from backends.vllm_backend import load_tokenizer, lora_id
from common.errors import ServerError


def encode_embeds(t: torch.Tensor) -> str:
    """(L, E) tensor -> base64 of its torch.save bytes, the form vLLM's prompt_embeds takes."""
    buf = io.BytesIO()
    torch.save(t.detach().to("cpu", torch.float32).contiguous(), buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class VllmServerBackend:
    name = "vllm-server"

    def __init__(self, base_url: str, model_path: str, adapter: str | None = None, batch_size: int = 64,
                 model_name: str | None = None, timeout: float = 600.0, tokenizer=None):
        if not base_url:
            raise ValueError("the vllm-server backend needs --base-url, e.g. http://127.0.0.1:8000")
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.model_path, self.batch_size, self.timeout = str(model_path), batch_size, timeout
        self.model_name, self.tokenizer = model_name, tokenizer
        self.adapter: str | None = None if adapter is None else str(adapter)
        self._served: str | None = None  # the model name requests use (base or LoRA)
        self.last_token_counts: list[int] = []

    # -- http ---------------------------------------------------------------------------------
    def _request(self, path: str, body: dict | None = None) -> dict | str:
        url = self.base_url + path
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                raw = r.read().decode()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:300].replace("\n", " ")
            hint = ""
            if e.code >= 500 and self.adapter:
                hint = ("; with a LoRA adapter the server must run with --lora-target-modules naming the "
                        "base model's linear layers (see docs/backends.md), or vLLM's LoRA embedding layer crashes "
                        "on prompt embeddings")
            raise ServerError(f"{url} answered {e.code}: {detail}{hint}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ServerError(f"cannot reach the vLLM server at {self.base_url} ({getattr(e, 'reason', e)}); "
                              "start it (see docs/backends.md) or fix --base-url") from None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw

    def models(self) -> list[dict]:
        return list(self._request("/v1/models").get("data", []))

    # -- backend interface --------------------------------------------------------------------
    def load(self) -> None:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.model_path)
        if self._served is None:
            self._served = self._resolve()

    def set_adapter(self, path: str | Path | None) -> None:
        self.adapter = None if path is None else str(path)
        self._served = None

    def _resolve(self) -> str:
        models = self.models()
        if not models:
            raise ServerError(f"the vLLM server at {self.base_url} lists no model")
        bases = [m for m in models if not m.get("parent")]
        base = self.model_name or (bases or models)[0]["id"]
        if self.adapter is None:
            return base
        want = str(Path(self.adapter).resolve())
        for m in models:
            if m.get("parent") and m.get("root") and str(Path(m["root"]).resolve()) == want:
                return m["id"]
        name = f"adapter-{lora_id(want)}"
        if any(m["id"] == name for m in models):
            return name
        try:
            self._request("/v1/load_lora_adapter", {"lora_name": name, "lora_path": want})
        except ServerError as e:
            raise ServerError(f"the server does not serve adapter {self.adapter} and could not load it ({e}); "
                              f"start it with --lora-modules {name}={want} (or VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)") from None
        return name

    def _complete(self, body: dict, n: int) -> list[list[int]]:
        body = {"model": self._served, "return_token_ids": True, "skip_special_tokens": True, **body}
        out = self._request("/v1/completions", body)
        choices = sorted(out["choices"], key=lambda c: c["index"])
        if len(choices) != n:
            raise ServerError(f"{self.base_url} returned {len(choices)} completions for {n} prompts")
        return [list(c.get("token_ids") or []) for c in choices]

    def _decode(self, ids: list[list[int]]) -> list[str]:
        self.last_token_counts = [len(x) for x in ids]
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    @staticmethod
    def _sampling(max_new_tokens: int, temperature: float, seed: int | None) -> dict:
        if temperature > 0:
            return {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": 1.0, "top_k": 0, "seed": seed}
        return {"max_tokens": max_new_tokens, "temperature": 0.0}

    @torch.no_grad()
    def generate_from_embeds(self, embeds: torch.Tensor, max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        """Soft prompts (B, L, E) -> texts, batch_size prompts per request.

        Sampled (temperature > 0) rows go one per request with seed + row, as the in-process
        backend seeds them: prompts of one request would share one seed, and so one noise stream.
        """
        self.load()
        payload = [encode_embeds(e) for e in embeds]  # each (L, E)
        if temperature > 0:
            def one(i: int) -> list[int]:
                return self._complete({"prompt_embeds": payload[i], **self._sampling(max_new_tokens, temperature, seed + i)}, 1)[0]

            with ThreadPoolExecutor(max_workers=min(self.batch_size, 16)) as pool:  # the server batches them
                return self._decode(list(pool.map(one, range(len(payload)))))
        ids: list[list[int]] = []
        for i in range(0, len(payload), self.batch_size):
            chunk = payload[i : i + self.batch_size]
            ids.extend(self._complete({"prompt_embeds": chunk, **self._sampling(max_new_tokens, 0.0, None)}, len(chunk)))
        return self._decode(ids)

    def sample(self, n: int, max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        """Plain sampling from BOS, no SLLM: the `lm` baseline (`n` samples of one prompt: seeds seed + i)."""
        self.load()
        ids: list[list[int]] = []
        bos = self.tokenizer.bos_token_id
        for i in range(0, n, self.batch_size):
            b = min(self.batch_size, n - i)
            body = {"prompt": [bos], "n": b, **self._sampling(max_new_tokens, temperature, seed + i)}
            ids.extend(self._complete(body, b))
        return self._decode(ids)

    def unload(self) -> None:
        self._served = None
