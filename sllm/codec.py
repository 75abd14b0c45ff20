"""One object for a trained SLLM on its base model: encode texts, turn latents into what the base
model reads, decode latents through a backend, re-encode decodes.

The loop's stages, the experiments and the benches go through a `Codec`, so a change of how the
latent reaches the base model (soft prompts, the decoder adapter) touches `sllm/` and
`backends/` only.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import ConfigError
from lm.base_model import encode_texts, kv_shape, pad_batch, prefix_cache
from sllm import adapter
from sllm.config import SLLMConfig
from sllm.model import SLLM, decoder_inputs, load_sllm, save_sllm


@dataclass(frozen=True)
class GenParams:
    """How a backend writes text from the base model's inputs."""
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0: greedy
    seed: int = 0
    beams: int = 1  # > 1: beam search for the likeliest text (temperature 0, transformers backend)
    # With beams > 1, which beam a latent decodes to. `accept` (the domain's parse check: a valid
    # molecule, a well-formed claim) keeps the beams it passes, all of them when it passes none: a
    # syntax check at decode time, as grammar-constrained decoders build in. Of those, the
    # likeliest; with `closest`, the one whose own latent (the SLLM's encoding of it) lies nearest
    # the latent decoded: the text the encoder would map there, the autoencoder's own criterion.
    accept: Callable[[str], bool] | None = None
    closest: bool = False


class Codec:
    """An SLLM, the base model it sits on (wearing the SLLM's decoder adapter when it has one) and
    that model's tokenizer. `model` is what every later call must use: attaching the adapter may
    wrap the model it was given."""

    def __init__(self, sllm: SLLM, model, tokenizer):
        self.sllm, self.model, self.tokenizer = sllm, model, tokenizer
        self._merged: Path | None = None

    # -- building -----------------------------------------------------------------------------
    @classmethod
    def new(cls, cfg: SLLMConfig, model, tokenizer, meaning_dim: int) -> "Codec":
        """A fresh, untrained SLLM (and decoder adapter, when `cfg.decoder_lora_r` > 0) on `model`."""
        sllm = SLLM(model.get_input_embeddings().weight.shape[1], cfg, meaning_dim,
                    kv_shape(model) if cfg.kv_prefix else None)
        if cfg.decoder_lora_r > 0:
            model = adapter.attach(model, cfg.decoder_lora_r)
        return cls(sllm.to(next(model.parameters()).device), model, tokenizer)

    @classmethod
    def load(cls, folder: str | Path, model, tokenizer) -> "Codec":
        """The codec saved in `folder` (by `save`) on `model`, its decoder adapter attached."""
        folder = Path(folder)
        sllm = load_sllm(folder, next(model.parameters()).device)
        if (folder / adapter.FOLDER).is_dir():
            model = adapter.attach(model, path=folder / adapter.FOLDER)
        else:  # another SLLM's adapter on a shared model is not this one's
            model = adapter.detach(model)
        return cls(sllm, model, tokenizer)

    def save(self, folder: str | Path) -> None:
        """The SLLM (weights, config) and its decoder adapter in `folder` (made atomic by the caller)."""
        save_sllm(self.sllm, folder)
        if adapter.has_decoder(self.model):
            adapter.save(self.model, Path(folder) / adapter.FOLDER)

    @property
    def has_adapter(self) -> bool:
        return adapter.has_decoder(self.model)

    # -- the round trip -------------------------------------------------------------------------
    def encode(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """Texts -> latents (N, latent_dim) float32."""
        return encode(self.sllm, self.model, self.tokenizer, texts, batch_size)

    def inputs(self, z: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (N, latent_dim) -> (inputs_embeds (N, K+1, E), attention_mask) the base model reads
        (with the decoder adapter on, when the codec has one)."""
        return soft_prompts(self.sllm, self.model, self.tokenizer, z)

    def decode(self, z: np.ndarray, backend, params: GenParams) -> list[str]:
        """Latents (N, latent_dim) -> texts written by `backend` from the base model's inputs, the
        decoder adapter on: switched on in the shared model for the transformers backend, served as
        one merged LoRA (the model's own adapter plus the decoder's) by the vLLM backends."""
        if len(z) == 0:
            return []
        emb, _ = self.inputs(z)  # (N, K+1, E)
        extra = {}
        if params.beams > 1:
            if backend.name != "transformers" or params.temperature > 0:
                raise ConfigError(f"beam search ({params.beams} beams) runs greedy in the transformers backend only, "
                                  f"not {backend.name} at temperature {params.temperature}: "
                                  "use --backend transformers with decode.temperature=0, or decode.beams=1")
            extra["beams"] = params.beams
            if params.accept is not None or params.closest:
                extra["returns"] = params.beams
        if self.sllm.cfg.kv_prefix:
            if backend.name != "transformers":
                raise ConfigError(f"this SLLM puts its latent into every layer's key/value cache (sllm.kv_prefix), "
                                  f"which the {backend.name} backend cannot take: decode with --backend transformers")
            with torch.no_grad():
                extra["prefix"] = self.sllm.kv(torch.as_tensor(np.asarray(z, np.float32), device=emb.device))

        def generate():
            return backend.generate_from_embeds(emb, params.max_new_tokens, params.temperature, params.seed, **extra)

        if not self.has_adapter:
            out = generate()
        elif backend.name == "transformers":
            with adapter.decoding(self.model):
                out = generate()
        else:
            before = backend.adapter
            backend.set_adapter(self.merged_adapter())
            try:
                out = generate()
            finally:
                backend.set_adapter(before)
        k = extra.get("returns", 1)
        return out if k == 1 else self._pick([out[i : i + k] for i in range(0, len(out), k)], z, params)

    def _pick(self, beams: list[list[str]], z: np.ndarray, params: GenParams) -> list[str]:
        """Each latent's beams (likeliest first) -> the one `params` picks (GenParams.accept, .closest).
        Encoding reads the base model without the decoder adapter, so it runs after the decode."""
        kept = [[t for t in b if params.accept(t)] or b for b in beams] if params.accept is not None else beams
        if not params.closest:
            return [b[0] for b in kept]
        own = self.reencode([t for b in kept for t in b])  # (sum of beams kept, latent_dim)
        out, at = [], 0
        for b, target in zip(kept, np.asarray(z, np.float32)):
            d = np.linalg.norm(own[at : at + len(b)] - target, axis=1)
            out.append(b[int(np.argmin(d))])  # ties: the likeliest
            at += len(b)
        return out

    def reencode(self, decoded: list[str]) -> np.ndarray:
        """Each decode's own latent (an empty decode reads as one space): the round-trip check."""
        return self.encode([t or " " for t in decoded])

    def merged_adapter(self) -> Path:
        """The model's own adapter plus the decoder adapter as one peft folder (for vLLM), written
        once per codec to a temporary folder removed when the process ends."""
        if self._merged is None:
            tmp = Path(tempfile.mkdtemp(prefix="sllm-decode-adapter-"))
            atexit.register(shutil.rmtree, tmp, ignore_errors=True)
            self._merged = adapter.merged_for_vllm(self.model, tmp / "adapter")
        return self._merged


# ------------------------------------------------------- what the codec (and the SLLM's training) run
def token_batch(model, tokenizer, seqs, device, encoder_input: str = "embeddings", hidden=None):
    """-> ids, mask, input embeddings (B, T, E), encoder input (B, T, E or 2E).
    `hidden`: these texts' last hidden states, already computed (see `_hidden_cache`)."""
    ids, mask = pad_batch(seqs, tokenizer.pad_token_id)
    ids, mask = ids.to(device), mask.to(device)
    with torch.no_grad():  # the base model stays frozen
        emb = model.get_input_embeddings()(ids)
        enc_in = emb
        if encoder_input == "hidden":
            hidden = last_hidden(model, emb, mask) if hidden is None else hidden[:, : ids.shape[1]]
            enc_in = torch.cat([emb, hidden.to(emb.dtype)], dim=-1)
    return ids, mask, emb, enc_in


def last_hidden(model, emb, mask):
    with adapter.reading(model):  # the encoder reads the base model, never the decoder adapter
        hidden = model(inputs_embeds=emb, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    if hidden.shape[-1] != emb.shape[-1]:  # e.g. a model that projects its embeddings in and out
        raise ConfigError(f"sllm.encoder_input=hidden needs a base model whose hidden states match its "
                          f"embeddings ({hidden.shape[-1]} vs {emb.shape[-1]}): "
                          "use --set sllm.encoder_input=embeddings")
    return hidden


@torch.no_grad()
def encode(sllm: SLLM, model, tokenizer, texts: list[str], batch_size: int = 128) -> np.ndarray:
    """Texts -> latents (N, latent_dim) float32."""
    device = next(model.parameters()).device
    sllm.eval()
    seqs = encode_texts(tokenizer, texts, sllm.cfg.max_tokens)
    if not seqs:
        return np.zeros((0, sllm.cfg.latent_dim), np.float32)
    # Batches of texts of about one length pad little: on 10,000 molecules (20-60 tokens) a third
    # less time than batches in corpus order. Each row's latent is its own, whatever its batch.
    order = np.argsort([len(q) for q in seqs], kind="stable")
    out = np.empty((len(seqs), sllm.cfg.latent_dim), np.float32)
    for i in range(0, len(seqs), batch_size):
        rows = order[i : i + batch_size]
        _, mask, _, enc_in = token_batch(model, tokenizer, [seqs[j] for j in rows], device, sllm.cfg.encoder_input)
        out[rows] = sllm.encode(enc_in, mask).float().cpu().numpy()
    return out


@torch.no_grad()
def soft_prompts(sllm: SLLM, model, tokenizer, z: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (N, latent_dim) -> (inputs_embeds (N, K+1, E), attention_mask) ready for generation."""
    device = next(model.parameters()).device
    zt = torch.as_tensor(np.asarray(z, dtype=np.float32), device=device)
    return decoder_inputs(model, tokenizer, sllm.prompts(zt))


def conditioning(sllm: SLLM, model, z: torch.Tensor) -> dict:
    """The forward keyword arguments that carry z beyond the soft prompts: its key/value prefix in
    every layer (`kv_prefix`), or nothing."""
    kv = sllm.kv(z)  # (layers, 2, B, heads, P, width)
    return {} if kv is None else {"past_key_values": prefix_cache(model, kv), "use_cache": False}


def prefix_len(kw: dict) -> int:
    """Positions the conditioning puts before the inputs (the attention mask must cover them)."""
    return kw["past_key_values"].get_seq_length() if kw else 0


@torch.no_grad()
def teacher_forced(sllm: SLLM, model, tokenizer, texts: list[str], z: np.ndarray,
                   batch_size: int = 128) -> dict[str, float]:
    """Token accuracy and cross-entropy of the base model reconstructing `texts` under teacher
    forcing from latents `z` (N, latent_dim), the decoder adapter on: with each text's own latent
    this is what training optimises; with latents shuffled across texts, the gap says how much the
    decoder reads z at all."""
    device = next(model.parameters()).device
    seqs = encode_texts(tokenizer, texts, sllm.cfg.max_tokens)
    right = total = 0
    nll = 0.0
    with adapter.decoding(model):
        for i in range(0, len(seqs), batch_size):
            ids, mask = pad_batch(seqs[i : i + batch_size], tokenizer.pad_token_id)
            ids, mask = ids.to(device), mask.to(device)
            emb = model.get_input_embeddings()(ids)  # (B, T, E)
            zt = torch.as_tensor(z[i : i + batch_size], dtype=torch.float32, device=device)
            prompts, kv = sllm.prompts(zt), conditioning(sllm, model, zt)
            K = prompts.shape[1]
            att = torch.cat([torch.ones(len(ids), prefix_len(kv) + K, dtype=mask.dtype, device=device), mask], dim=1)
            logits = model(inputs_embeds=torch.cat([prompts, emb], 1), attention_mask=att, **kv).logits[:, K:-1].float()
            tgt, m = ids[:, 1:], mask[:, 1:].bool()  # (B, T-1)
            right += int(((logits.argmax(-1) == tgt) & m).sum())
            nll += float(F.cross_entropy(logits[m], tgt[m], reduction="sum"))
            total += int(m.sum())
    return {"token_accuracy": right / max(total, 1), "ce": nll / max(total, 1)}


def first_error(tokenizer, text: str, decoded: str) -> int | None:
    """The index of the first token where `decoded` departs from `text` (None when they agree)."""
    a = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    b = tokenizer(decoded, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    for k, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return k
    return None if len(a) == len(b) else min(len(a), len(b))
