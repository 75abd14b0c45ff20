"""The SLLM: a sentence-level autoencoder on top of a frozen base language model.

Encoder: the base model's input embeddings of a text (with its last hidden states, by
default) -> small transformer -> attention pooling -> ONE latent vector z. Decoder: z -> K
soft-prompt vectors in the base model's embedding space (and, with `kv_prefix`, P key/value
slots in every attention layer); the frozen base model reconstructs the text after them (as in
prompt tuning, Lester et al. 2021, and ICAE, Ge et al. 2023, but with a single vector).
A meaning head maps z to the sentence embedding of a sentence-transformers model, so that
nearby latents mean nearby meanings (the idea's "restore the meaning, not the tokens").
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from sllm.config import SLLMConfig


WEIGHTS, CONFIG = "sllm.safetensors", "config.json"
FORMAT = 1  # bump when the saved layout changes


class SLLM(nn.Module):
    def __init__(self, embed_dim: int, cfg: SLLMConfig, meaning_dim: int = 384,
                 kv_shape: tuple[int, int, int] | None = None):
        """embed_dim: the base model's embedding width; meaning_dim: the width of the domain's
        meaning embedder (the meaning head predicts its embeddings); kv_shape: the base model's
        (layers, key/value heads, head width) (`lm.base_model.kv_shape`), needed with `kv_prefix`."""
        super().__init__()
        self.cfg = cfg
        self.embed_dim = embed_dim
        self.meaning_dim = meaning_dim
        if cfg.kv_prefix and kv_shape is None:
            raise ValueError("sllm.kv_prefix needs the base model's attention shape: pass kv_shape")
        self.kv_shape = tuple(kv_shape) if cfg.kv_prefix else None
        d = cfg.enc_dim
        self.in_proj = nn.Linear(embed_dim * (2 if cfg.encoder_input == "hidden" else 1), d)
        self.pos = nn.Embedding(cfg.max_tokens, d)
        layer = nn.TransformerEncoderLayer(d, cfg.enc_heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.enc_layers, enable_nested_tensor=False)
        # Several pooling queries (PMA, Lee et al. 2019 "Set Transformer"), concatenated: one
        # softmax-weighted average cannot carry a whole sentence's tokens and their order.
        self.query = nn.Parameter(torch.randn(1, cfg.pool_queries, d) * 0.02)
        self.pool = nn.MultiheadAttention(d, cfg.enc_heads, batch_first=True)
        self.to_latent = nn.Linear(cfg.pool_queries * d, cfg.latent_dim)
        # Standardise each latent dimension over the data (batch statistics in training, running
        # statistics after): at init a pooled transformer output barely varies between texts,
        # and the decoder then learns to ignore z (posterior collapse). Standardising makes the
        # between-text variation the whole signal, and gives the latent cloud a known envelope.
        self.norm = nn.BatchNorm1d(cfg.latent_dim, affine=False, momentum=0.01)
        if cfg.kl_weight > 0:
            # sigma starts small (e^-3 = 0.05 of a standardised unit): training begins as a plain
            # autoencoder and the KL term widens sigma where the decoder can afford it
            self.to_logvar = nn.Linear(cfg.pool_queries * d, cfg.latent_dim)
            nn.init.zeros_(self.to_logvar.weight)
            nn.init.constant_(self.to_logvar.bias, -6.0)
        hidden = max(cfg.latent_dim, embed_dim) * 2
        self.decoder = nn.Sequential(
            nn.Linear(cfg.latent_dim, hidden), nn.GELU(), nn.Linear(hidden, cfg.n_prompt * embed_dim)
        )
        self.meaning_head = nn.Sequential(nn.Linear(cfg.latent_dim, hidden), nn.GELU(), nn.Linear(hidden, meaning_dim))
        if self.kv_shape:
            layers, heads, width = self.kv_shape
            self.kv_head = nn.Sequential(nn.Linear(cfg.latent_dim, hidden), nn.GELU(),
                                         nn.Linear(hidden, layers * 2 * heads * cfg.kv_prefix * width))

    def encode(self, tok_emb: torch.Tensor, mask: torch.Tensor, running_stats: bool = False) -> torch.Tensor:
        """tok_emb (B, T, E or 2E) encoder input (see `encoder_input`), mask (B, T) -> z (B, latent_dim).
        `running_stats`: standardise with the running statistics even in training (and leave them)."""
        return self._latent(self._pooled(tok_emb, mask), running_stats)

    def posterior(self, tok_emb: torch.Tensor, mask: torch.Tensor, running_stats: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As `encode`, with the log-variance of each latent dimension (B, latent_dim) beside the
        latent (the posterior's mean), or None when the SLLM is a plain autoencoder (`kl_weight` 0).
        Only training needs the log-variance: encoding a text reads its mean alone (`encode`)."""
        pooled = self._pooled(tok_emb, mask)
        logvar = self.to_logvar(pooled) if self.cfg.kl_weight > 0 else None
        return self._latent(pooled, running_stats), logvar

    def _pooled(self, tok_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """-> the encoder's pooled summary of each text (B, Q * d)."""
        T = tok_emb.shape[1]
        h = self.in_proj(tok_emb) + self.pos(torch.arange(T, device=tok_emb.device))  # (B, T, d)
        pad = mask == 0
        h = self.encoder(h, src_key_padding_mask=pad)  # (B, T, d)
        q = self.query.expand(h.shape[0], -1, -1)  # (B, Q, d)
        pooled, _ = self.pool(q, h, h, key_padding_mask=pad)  # (B, Q, d)
        return pooled.flatten(1)

    def _latent(self, pooled: torch.Tensor, running_stats: bool) -> torch.Tensor:
        x = self.to_latent(pooled)
        if running_stats:
            return F.batch_norm(x, self.norm.running_mean, self.norm.running_var, training=False, eps=self.norm.eps)
        return self.norm(x)  # (B, latent_dim)

    def prompts(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, latent_dim) -> soft prompts (B, K, E) in the base model's embedding space."""
        return self.decoder(z).view(z.shape[0], self.cfg.n_prompt, self.embed_dim)

    def kv(self, z: torch.Tensor) -> torch.Tensor | None:
        """z (B, latent_dim) -> the key/value prefix (layers, 2, B, kv_heads, P, head_dim), or None
        without `kv_prefix`. Keys go in as the cache holds them, after any rotary embedding: the
        prefix has no position of its own to rotate by."""
        if not self.kv_shape:
            return None
        layers, heads, width = self.kv_shape
        out = self.kv_head(z).view(z.shape[0], layers, 2, heads, self.cfg.kv_prefix, width)
        return out.permute(1, 2, 0, 3, 4, 5)

    def meaning(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, latent_dim) -> predicted sentence embedding (B, meaning_dim)."""
        return self.meaning_head(z)


def decoder_inputs(model, tokenizer, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft prompts (B, K, E) + the BOS embedding -> (inputs_embeds (B, K+1, E), attention_mask)."""
    B = prompts.shape[0]
    bos = torch.full((B, 1), tokenizer.bos_token_id, dtype=torch.long, device=prompts.device)
    emb = torch.cat([prompts, model.get_input_embeddings()(bos).to(prompts.dtype)], dim=1)  # (B, K+1, E)
    return emb, torch.ones(emb.shape[:2], dtype=torch.long, device=prompts.device)


def save_sllm(sllm: SLLM, folder) -> None:
    """A self-describing checkpoint in `folder` (as `save_pretrained` does): the weights as
    safetensors and, beside them, config.json with the SLLM's settings and sizes. The caller
    makes the folder atomic (loop.artifacts)."""
    folder = Path(folder)
    save_file({k: v.detach().contiguous().cpu() for k, v in sllm.state_dict().items()}, str(folder / WEIGHTS))
    meta = {"format": FORMAT, "embed_dim": sllm.embed_dim, "meaning_dim": sllm.meaning_dim,
            "kv_shape": sllm.kv_shape, "sllm": dataclasses.asdict(sllm.cfg)}
    (folder / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))


def saved_config(folder) -> SLLMConfig:
    """The settings an SLLM saved in `folder` by save_sllm was built and trained with."""
    try:
        return SLLMConfig(**json.loads((Path(folder) / CONFIG).read_text())["sllm"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"SLLM checkpoint {folder} has no readable {CONFIG} ({e})") from None


def load_sllm(folder, device="cpu") -> SLLM:
    """The SLLM saved in `folder` by save_sllm, built from its own config.json: one call."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"SLLM checkpoint {folder} has no readable {CONFIG} ({e}); "
                         "it was saved by an older version: rerun its sllm stage") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"SLLM checkpoint {folder} has format {meta.get('format')!r}, this version reads {FORMAT}; "
                         "rerun its sllm stage")
    sllm = SLLM(meta["embed_dim"], SLLMConfig(**meta["sllm"]), meta["meaning_dim"], meta.get("kv_shape"))
    try:
        sllm.load_state_dict(load_file(str(folder / WEIGHTS), device="cpu"))
    except RuntimeError as e:  # weights of other shapes or names than its own config.json gives
        raise ValueError(f"SLLM checkpoint {folder} does not fit its own config.json "
                         f"({str(e).splitlines()[0]}); rerun its sllm stage") from None
    return sllm.to(device).eval()
