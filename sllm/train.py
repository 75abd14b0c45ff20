"""SLLM training (reconstruction through the frozen base model + meaning term + paraphrase term) and encoding."""
from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import logging
import math
import os
import random
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from tqdm.auto import tqdm

from common.errors import ConfigError
from lm import distributed
from lm.base_model import encode_texts, generate_inputs, pad_batch
from sllm import adapter
from sllm.codec import conditioning, last_hidden, prefix_len, token_batch
from sllm.model import SLLM, decoder_inputs

log = logging.getLogger(__name__)


# The hidden-state cache may take at most this, or half the memory free when training starts where
# that is known (Linux), whichever is larger: computing the states per batch instead makes a molecules
# step about 30% slower, so a large training set (250,000 molecules: 6 GB) is worth the memory.
HIDDEN_CACHE_BYTES = 2 << 30


def _cache_budget() -> int:
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        free = 0
    return max(HIDDEN_CACHE_BYTES, free // 2)


@torch.no_grad()
def _hidden_cache(model, tokenizer, seqs, batch_size: int, device, encoder_input: str):
    """The frozen base model's last hidden states of every training text (N, T_max, E), computed
    once instead of in every step (the encoder's input does not change while the SLLM trains;
    per batch they made a molecules step about 30% slower). The model is causal and the texts right-padded, so a text's
    states do not depend on its batch. None when the encoder reads embeddings only, or when the
    states would take more than the cache budget (`_cache_budget`; they are then computed per batch)."""
    if encoder_input != "hidden" or not seqs:
        return None
    T, E = max(map(len, seqs)), model.get_input_embeddings().weight.shape[1]
    if len(seqs) * T * E * 4 > _cache_budget():
        return None
    cache = torch.zeros(len(seqs), T, E, device=device)
    w, r = distributed.world(), distributed.rank()
    for j, i in enumerate(range(0, len(seqs), batch_size)):
        if j % w != r % w:  # several ranks: each computes its own batches, the same ones as one process
            continue
        ids, mask = pad_batch(seqs[i : i + batch_size], tokenizer.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        cache[i : i + len(ids), : ids.shape[1]] = last_hidden(model, model.get_input_embeddings()(ids), mask).float()
    return distributed.sum_(cache)  # zeros where another rank computed: the sum is exact


def _keeps_logits(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' causal LMs do)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_takes_logits_to_keep(type(base))


@functools.cache
def _forward_takes_logits_to_keep(cls) -> bool:  # once per model class, not every step
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def sllm_losses(sllm: SLLM, model, ids, mask, emb, target_meaning=None, cfg=None, enc_in=None,
                share: distributed.Share | None = None, tokens: int | None = None, forward=None):
    """Loss terms for one batch: reconstruction CE, meaning (cosine), latent L2 (the paraphrase
    term has batches of its own: `HardNegatives`). `emb` are the text's input embeddings
    (teacher forcing), `enc_in` what the encoder reads.

    `share`: these rows are this rank's share of a global batch whose texts have `tokens` target
    tokens in all (DistributedDataParallel). Each mean over the batch is then this rank's sum over
    the global count, times `share.scale`: DDP's average of the ranks' gradients is the gradient
    of the global batch's loss (lm.distributed), and the ranks' average of each term its value.

    `forward`: what runs the base model's reconstruction pass (`model` itself by default; training
    passes its compiled form under `sllm.compile`)."""
    cfg = cfg or sllm.cfg
    forward = model if forward is None else forward
    mu, logvar = sllm.posterior(emb if enc_in is None else enc_in, mask)  # (B, latent)
    z = mu
    if logvar is not None and sllm.training:  # the reparameterised sample the decoder is trained on
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    prompts = sllm.prompts(z)  # (B, K, E)
    K = prompts.shape[1]
    dec_emb = emb
    if sllm.training and cfg.word_dropout > 0:  # BOS (position 0) is always given, as at decode time
        keep = torch.rand(emb.shape[:2], device=emb.device) >= cfg.word_dropout  # (B, T)
        keep[:, 0] = True
        dec_emb = emb * keep[..., None].to(emb.dtype)
    inputs = torch.cat([prompts, dec_emb], dim=1)  # (B, K+T, E)
    cond = conditioning(sllm, model, z)
    att = torch.cat([torch.ones(ids.shape[0], prefix_len(cond) + K, dtype=mask.dtype, device=mask.device), mask], dim=1)
    # Position K+t (token t, from BOS on) predicts token t+1; BOS is given at decode time, not
    # predicted. Logits of the K prompt positions are never used: `logits_to_keep` skips them
    # (with 32 prompts and texts of about 20 tokens, 0.6 of the output layer's and softmax's work).
    T = ids.shape[1]
    if _keeps_logits(model):
        logits = forward(inputs_embeds=inputs, attention_mask=att, logits_to_keep=T, **cond).logits[:, :-1]  # (B, T-1, V)
    else:
        logits = forward(inputs_embeds=inputs, attention_mask=att, **cond).logits[:, K:-1]
    labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    meaning = target_meaning is not None and cfg.meaning_weight > 0
    if share is None:  # one process: the batch means
        rec = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        terms = {"rec": rec, "l2": mu.pow(2).mean()}
        if meaning:
            terms["meaning"] = (1 - F.cosine_similarity(sllm.meaning(z), target_meaning, dim=-1)).mean()
    else:  # this rank's sums over the global batch's counts
        rec = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                              reduction="sum") * (share.scale / tokens)
        terms = {"rec": rec, "l2": mu.pow(2).sum() * (share.scale / (share.total * mu.shape[1]))}
        if meaning:
            terms["meaning"] = ((1 - F.cosine_similarity(sllm.meaning(z), target_meaning, dim=-1)).sum()
                                * (share.scale / share.total))
    if logvar is not None:  # KL(q(z|x) || N(0, I)) of each text over its target tokens: nats per token
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1) / (mask[:, 1:].sum(1).clamp(min=1))
        terms["kl"] = kl.mean() if share is None else kl.sum() * (share.scale / share.total)
    if cfg.prompt_copy_weight > 0:
        per_text = prompt_copy_error(prompts, emb, mask)  # (B,)
        terms["copy"] = per_text.mean() if share is None else per_text.sum() * (share.scale / share.total)
    total = rec + cfg.latent_l2 * terms["l2"]
    if "meaning" in terms:
        total = total + cfg.meaning_weight * terms["meaning"]
    if "copy" in terms:
        total = total + cfg.prompt_copy_weight * terms["copy"]
    if "kl" in terms:
        total = total + cfg.kl_weight * terms["kl"]
    return total, terms


def compiled_forward(model):
    """The base model's forward through torch.compile, for the reconstruction pass alone (encoding,
    calibration and decoding stay eager). Dynamic shapes: every batch pads to its own length."""
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        raise ConfigError("sllm.compile needs a C++ compiler on PATH (torch.compile builds its CPU kernels "
                          "with one): install g++ (apt-get install g++) or set sllm.compile=false")
    return torch.compile(model, dynamic=True)


def cycle_loss(sllm: SLLM, model, tokenizer, z_off: torch.Tensor) -> torch.Tensor:
    """Off the data, decode then encode again should give the latent back. `z_off` (B, latent_dim):
    latents drawn from the standardised latent space's own prior N(0, I), mostly where no text
    lies; each is decoded greedily (no gradient: the decode is discrete) and the encoder is pulled
    to map that decode back to its latent (mean squared error per dimension, running statistics as
    at eval). The encoder thereby learns to invert the decoder off the data, as back-translation
    trains a reverse model on the forward model's outputs (Sennrich et al. 2016)."""
    with torch.no_grad():
        emb, _ = decoder_inputs(model, tokenizer, sllm.prompts(z_off))  # (B, K+1, E)
        out = model.generate(**generate_inputs(model, emb, sllm.kv(z_off)), max_new_tokens=sllm.cfg.max_tokens - 2,
                             do_sample=False, top_p=None, top_k=None, temperature=None,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    seqs = []
    for row in out.tolist():  # (new tokens): cut at the first EOS, then BOS + text + EOS as encode_texts gives
        ids = [t for t in row[: row.index(tokenizer.eos_token_id)] if t != tokenizer.pad_token_id] \
            if tokenizer.eos_token_id in row else [t for t in row if t != tokenizer.pad_token_id]
        seqs.append([tokenizer.bos_token_id] + ids[: sllm.cfg.max_tokens - 2] + [tokenizer.eos_token_id])
    device = z_off.device
    _, mask, _, enc_in = token_batch(model, tokenizer, seqs, device, sllm.cfg.encoder_input)
    z_back = sllm.encode(enc_in, mask, running_stats=True)  # (B, latent_dim)
    return (z_back - z_off).pow(2).mean()


def prompt_copy_error(prompts: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per text: how far the soft prompts are from the text's own token embeddings (BOS, tokens,
    EOS) placed in the last L of the K slots, as squared error relative to the embeddings' mean
    square. Prompts that spell the text out make the decode input [BOS text EOS][BOS ...], the
    copy units the base model was pretrained on (lm.base_model.pack_sequences), so its copy
    mechanism reproduces the text; the reconstruction term alone may leave the decoder at the
    base model's unconditional loss (docs/research-log.md). prompts (B, K, E), emb (B, T, E),
    mask (B, T) -> (B,)."""
    B, K, E = prompts.shape
    T = emb.shape[1]
    L = mask.sum(1)  # (B,) tokens of each text, BOS and EOS included
    idx = torch.arange(K, device=prompts.device)[None, :] - (K - L)[:, None]  # (B, K) token held by slot k
    slot = (idx >= 0) & (idx < L[:, None])  # texts longer than K keep their last K tokens
    target = torch.gather(emb, 1, idx.clamp(0, T - 1)[..., None].expand(B, K, E))  # (B, K, E)
    scale = emb[mask.bool()].pow(2).mean().clamp(min=1e-8)  # the embeddings' own mean square
    err = (prompts - target).pow(2).mean(-1) / scale  # (B, K)
    return (err * slot).sum(1) / slot.sum(1).clamp(min=1)


def paraphrase_loss(z: torch.Tensor, fact_ids: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE pulling together latents of phrasings of one fact (SimCSE-style, Gao et al. 2021)."""
    zn = F.normalize(z, dim=-1)
    sim = zn @ zn.T / tau  # (B, B)
    same = fact_ids[:, None] == fact_ids[None, :]
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    pos = same & ~eye
    has_pos = pos.any(dim=1) & (fact_ids >= 0)
    if not has_pos.any():
        return z.sum() * 0
    sim = sim.masked_fill(eye, -1e9)
    logprob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    per_row = -(logprob.masked_fill(~pos, 0).sum(1) / pos.sum(1).clamp(min=1))
    return per_row[has_pos].mean()


def _batches(n: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of the training texts."""
    order = list(range(n))
    rng.shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


class HardNegatives:
    """Batches for the paraphrase term: phrasings of a few facts plus texts that look like them.

    In a batch of random texts, the nearest other text of a fact's phrasing is almost never a
    near miss (the same template, another number), so InfoNCE learns little that the nearest
    different fact would test. Here every batch comes from one cluster of the texts' sentence
    embeddings (k-means, the texts' meaning targets): `per_batch` facts with all their phrasings,
    filled with other texts of the cluster (clustered "topic-aware" sampling, Hofstaetter et al.
    2021). Batches are drawn with `rng`, so a resumed training draws the same ones.
    """

    def __init__(self, groups: list[int], meaning_targets: np.ndarray | None, batch_size: int, seed: int,
                 per_batch: int = 8, texts_per_cluster: int = 1000):
        members: dict[int, list[int]] = {}
        for i, g in enumerate(groups):
            if g >= 0:
                members.setdefault(g, []).append(i)
        self.members = {g: m for g, m in members.items() if len(m) > 1}  # a fact needs two phrasings
        k = max(1, len(groups) // texts_per_cluster)
        # no fact with two phrasings (molecules: one SMILES each): no batch to draw, no clusters to fit
        if meaning_targets is None or k == 1 or not self.members:
            labels = np.zeros(len(groups), dtype=int)
        else:
            labels = KMeans(k, n_init=1, random_state=seed).fit_predict(np.asarray(meaning_targets, np.float32))
        self.groups, self.batch_size, self.per_batch = groups, batch_size, per_batch
        self.cluster_texts: dict[int, list[int]] = {}
        for i, c in enumerate(labels):
            self.cluster_texts.setdefault(int(c), []).append(i)
        self.cluster_facts: dict[int, list[int]] = {}
        for g, m in self.members.items():  # a fact's cluster: that of its first phrasing
            self.cluster_facts.setdefault(int(labels[m[0]]), []).append(g)
        self.clusters = sorted(self.cluster_facts)
        self.weights = [len(self.cluster_facts[c]) for c in self.clusters]

    def __bool__(self) -> bool:
        return bool(self.members)

    def sample(self, rng: random.Random) -> tuple[list[int], list[int]]:
        """-> text indices, fact ids (-1: no fact key)."""
        c = rng.choices(self.clusters, self.weights)[0]
        facts = rng.sample(self.cluster_facts[c], min(self.per_batch, len(self.cluster_facts[c])))
        idx = [i for g in facts for i in self.members[g]]
        taken = set(idx)
        pool = self.cluster_texts[c]
        fill = [i for i in rng.sample(pool, min(len(pool), self.batch_size)) if i not in taken]
        idx += fill[: max(0, self.batch_size - len(idx))]
        return idx, [self.groups[i] for i in idx]


class _Step(torch.nn.Module):
    """One training step's loss as the forward of a module that holds the SLLM, so that
    DistributedDataParallel can wrap it (DDP reduces the gradients of what its module's forward
    used; the step calls several SLLM methods). The frozen base model is no submodule: DDP
    neither broadcasts nor reduces it; the decoder adapter's weights, which live in the base
    model, are held here too (the same Parameter objects), so DDP reduces their gradients."""

    def __init__(self, sllm: SLLM, fn, extra: list[torch.nn.Parameter] = ()):
        super().__init__()
        self.sllm, self.fn = sllm, fn
        self.extra = torch.nn.ParameterList(extra)

    def forward(self, batch):
        return self.fn(batch)


class _GlobalBatchNorm:
    """Under DDP, the SLLM's latent standardisation (`SLLM.norm`, batch statistics) over the whole
    global batch, as in one process: hooks gather every rank's rows before the norm (with
    gradients) and give each rank back its own rows after; the running statistics move the same
    on every rank. What SyncBatchNorm does, on any device (it needs a GPU)."""

    def __init__(self, norm: torch.nn.Module):
        self.share: distributed.Share | None = None  # the current batch's
        self.handles = [norm.register_forward_pre_hook(self._gather), norm.register_forward_hook(self._own)]

    def _gather(self, module, args):
        return None if self.share is None else (distributed.gather(args[0], self.share), *args[1:])

    def _own(self, module, args, out):
        return None if self.share is None else out[self.share.lo : self.share.hi]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def train_sllm(sllm: SLLM, model, tokenizer, texts: list[str], meaning_targets: np.ndarray | None,
               epochs: int, lr: float, batch_size: int, seed: int, fact_keys: list[str | None] | None = None,
               desc: str = "sllm", checkpoint: str | Path | None = None,
               on_step: Callable[[int], None] | None = None, at_steps: set[int] | frozenset = frozenset()) -> dict:
    """Train the SLLM (base model frozen: gradients flow through it to the soft prompts only).

    Batched; bfloat16 autocast on CUDA. With `checkpoint`, the state (weights, optimiser,
    schedule, data order) is saved after every epoch and a killed training resumes from its last
    epoch, to the same result as an uninterrupted one; the file is removed when training ends.

    Under torchrun (lm.distributed): every rank draws the same batches and paraphrase batches from
    the shared seed and takes its share of each; DistributedDataParallel averages the gradients,
    equal to one process's on the same global batch `batch_size` (float rounding aside). Rank 0
    alone writes the checkpoint; every rank reads it.

    A model wearing the decoder adapter (`sllm.adapter.attach`) trains it with the SLLM: its
    weights join the optimiser and it is on in every reconstruction pass. `on_step(n)` is called
    after step n for each n in `at_steps` (the bench's exact match against training steps), with
    the SLLM in eval mode; training goes on after it.
    """
    distributed.init()
    device = next(model.parameters()).device
    sllm.to(device).train()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    seqs = encode_texts(tokenizer, texts, sllm.cfg.max_tokens)
    hard = None
    if fact_keys is not None and sllm.cfg.paraphrase_weight > 0:
        index: dict[str, int] = {}
        groups = [index.setdefault(k, len(index)) if k else -1 for k in fact_keys]
        hard = HardNegatives(groups, meaning_targets, batch_size, seed) or None
    targets = None if meaning_targets is None else torch.as_tensor(meaning_targets, dtype=torch.float32)
    dec_params = adapter.decoder_parameters(model)
    opt = torch.optim.AdamW(list(sllm.parameters()) + dec_params, lr=lr, weight_decay=0.01)
    steps = max(1, epochs * math.ceil(len(seqs) / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    history = []
    ckpt = Path(checkpoint) if checkpoint else None
    # the global batch (any world size) and the weights' shapes: a checkpoint of other settings starts over
    fingerprint = [len(seqs), sum(map(len, seqs)), epochs, lr, batch_size, seed,
                   [list(v.shape) for v in sllm.state_dict().values()], [list(p.shape) for p in dec_params]]
    start = done = 0  # epochs and steps taken; not bar.n, which a disabled bar (TQDM_DISABLE) leaves at 0
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        if state.get("fingerprint") == fingerprint:
            sllm.load_state_dict(state["sllm"])
            for p_, v in zip(dec_params, state.get("decoder", [])):
                p_.data.copy_(v)
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            rng.setstate(state["rng"])
            history, start, done = state["history"], state["epoch"], state["steps"]
            if distributed.is_main():
                log.info("%s: resuming from epoch %d of %d (%s)", desc, start, epochs, ckpt)
    if distributed.broadcast(start) != start:
        raise RuntimeError(f"rank {distributed.rank()} resumes {desc} at epoch {start}, rank 0 at another: every "
                           f"rank must see the same run folder ({ckpt}); put it on a filesystem they share")
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    with amp:
        hidden = _hidden_cache(model, tokenizer, seqs, batch_size, device, sllm.cfg.encoder_input)

    def inputs(idx: list[int]):  # ids, mask, embeddings, encoder input of these training texts
        return token_batch(model, tokenizer, [seqs[j] for j in idx], device, sllm.cfg.encoder_input,
                            None if hidden is None else hidden[idx])

    def losses(batch: list[int]):  # -> total, terms of this global batch (under DDP: of this rank's share)
        sh = distributed.share(len(batch))
        rows = batch if sh is None else sh.take(batch)
        tgt = None if targets is None else targets[rows].to(device)
        with amp:
            ids, mask, emb, enc_in = inputs(rows)
            if norm is not None:
                norm.share = sh
            total, terms = sllm_losses(sllm, model, ids, mask, emb, tgt, enc_in=enc_in, share=sh,
                                       tokens=None if sh is None else max(1, sum(len(seqs[j]) - 1 for j in batch)),
                                       forward=compiled)
            if hard is not None:
                idx, fid = hard.sample(rng)  # the same on every rank: the shared generator
                hsh = distributed.share(len(idx))
                hrows = idx if hsh is None else hsh.take(idx)
                _, hmask, _, henc = inputs(hrows)
                # Normalised by the running statistics, as at eval: a batch of look-alikes
                # has its own statistics, and the geometry that counts is the eval one.
                # Under DDP the InfoNCE takes every rank's latents (gathered): each rank has the whole
                # term, and the gather's backward sums its gradients over ranks, DDP then averages them.
                hz = distributed.gather(sllm.encode(henc, hmask, running_stats=True), hsh)
                terms["para"] = paraphrase_loss(hz, torch.tensor(fid, device=device), sllm.cfg.paraphrase_tau)
                total = total + sllm.cfg.paraphrase_weight * terms["para"]
            if sllm.cfg.cycle_weight > 0 and done % sllm.cfg.cycle_every == 0:
                g = torch.Generator().manual_seed(seed * 1_000_003 + done)  # the same after a resume
                z_off = torch.randn(sllm.cfg.cycle_batch, sllm.cfg.latent_dim, generator=g).to(device)
                terms["cycle"] = cycle_loss(sllm, model, tokenizer, z_off)
                total = total + sllm.cfg.cycle_weight * terms["cycle"]
        return total, terms

    compiled = compiled_forward(model) if sllm.cfg.compile else None
    several = distributed.world() > 1
    norm = _GlobalBatchNorm(sllm.norm) if several else None
    adapter.set_decoding(model, True, trainable=True)  # before DDP, which reduces only trainable weights
    # the meaning head gets no gradient without its term; DDP must then be told to look for unused weights
    step = distributed.wrap(_Step(sllm, losses, dec_params), find_unused_parameters=targets is None or sllm.cfg.meaning_weight == 0)
    try:
        with tqdm(total=steps, initial=done, desc=desc, unit="step", leave=False, mininterval=2,
                  **({} if distributed.is_main() else {"disable": True})) as bar:
            for epoch in range(start, epochs):
                sums: dict[str, float] = {}
                nb = 0
                for batch in _batches(len(seqs), batch_size, rng):
                    if done >= steps:
                        break
                    done += 1
                    total, terms = step(batch) if several else losses(batch)
                    opt.zero_grad(set_to_none=True)
                    total.backward()
                    torch.nn.utils.clip_grad_norm_(list(sllm.parameters()) + dec_params, 1.0)
                    opt.step()
                    sched.step()
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach())
                    nb += 1
                    bar.update(1)
                    bar.set_postfix(rec=f"{terms['rec'].item():.3f}")
                    if on_step is not None and done in at_steps:
                        _pause(sllm, model, lambda: on_step(done),
                               lambda: recalibrate_norm(sllm, model, tokenizer, seqs[:4096], batch_size, device,
                                                        None if hidden is None else hidden[:4096]))
                if several:  # each rank summed its scaled share: the ranks' average is the global batch's
                    sums = dict(zip(sums, distributed.mean(list(sums.values()))))
                history.append({k: v / max(nb, 1) for k, v in sums.items()})
                if distributed.is_main():
                    log.info("%s epoch %d/%d | %s", desc, epoch + 1, epochs,
                             " ".join(f"{k} {v:.4f}" for k, v in history[-1].items()))
                if ckpt is not None and epoch + 1 < epochs and distributed.is_main():
                    tmp = ckpt.with_name(ckpt.name + ".tmp")
                    torch.save({"fingerprint": fingerprint, "sllm": sllm.state_dict(), "opt": opt.state_dict(),
                                "sched": sched.state_dict(), "rng": rng.getstate(), "history": history,
                                "decoder": [p_.detach() for p_ in dec_params],
                                "epoch": epoch + 1, "steps": done}, tmp)
                    os.replace(tmp, ckpt)
    finally:
        adapter.set_decoding(model, False)
        if norm is not None:
            norm.remove()
            del step  # DDP's gradient hooks go with it, before these weights meet another backward pass
            gc.collect()
    recalibrate_norm(sllm, model, tokenizer, seqs, batch_size, device, hidden)  # on every rank: the same result
    sllm.eval()
    if ckpt is not None and distributed.is_main():
        ckpt.unlink(missing_ok=True)
    return {"epochs": epochs, "steps": steps, "history": history, "final": history[-1] if history else {}}


def _pause(sllm: SLLM, model, fn, calibrate) -> None:
    """Run `fn` on the SLLM as it stands, in eval mode, with latent statistics of its current
    encoder (`calibrate`: running averages lag an encoder that still moves), then give training
    its state back: the running statistics, train mode, the decoder adapter on and trainable."""
    saved = {k: v.clone() for k, v in sllm.norm.state_dict().items()}
    adapter.set_decoding(model, False)
    try:
        calibrate()
        fn()
    finally:
        sllm.norm.load_state_dict(saved)
        sllm.train()
        adapter.set_decoding(model, True, trainable=True)


@torch.no_grad()
def recalibrate_norm(sllm: SLLM, model, tokenizer, seqs, batch_size: int, device, hidden=None) -> None:
    """Exact latent statistics over the final encoder ("precise BN", Wu & Johnson 2021):
    running averages taken while the encoder still moved would misplace every latent at eval.
    `hidden`: the training's `_hidden_cache`, so the base model does not run over the texts again."""
    norm = sllm.norm
    norm.reset_running_stats()
    momentum, norm.momentum = norm.momentum, None  # None = cumulative average
    sllm.train()
    for i in range(0, len(seqs), batch_size):
        _, mask, _, enc_in = token_batch(model, tokenizer, seqs[i : i + batch_size], device, sllm.cfg.encoder_input,
                                          None if hidden is None else hidden[i : i + batch_size])
        if len(seqs[i : i + batch_size]) > 1:
            sllm.encode(enc_in, mask)
    norm.momentum = momentum
    sllm.eval()
