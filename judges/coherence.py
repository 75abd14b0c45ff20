"""Coherence: the base model's per-token NLL of a text, calibrated on reference (corpus) texts.

score = share of reference texts whose NLL is >= the candidate's (an empirical CDF), so 1 means
"at least as fluent as every corpus text" and the number reads the same for any model size.
"""
from __future__ import annotations

import bisect

import numpy as np
import torch

from judges.base import JudgeScore, JudgeSpec, PanelContext, register_judge
from lm.base_model import encode_texts, pad_batch


@torch.no_grad()
def token_nll(model, tokenizer, texts: list[str], batch_size: int = 64, max_len: int = 256) -> list[float]:
    """Mean NLL per predicted token of BOS + text + EOS for each text (nats/token)."""
    device = next(model.parameters()).device
    seqs = encode_texts(tokenizer, texts, max_len)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # length buckets: less padding
    out = [float("nan")] * len(seqs)
    was_training = model.training
    model.eval()
    try:
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            ids, mask = pad_batch([seqs[i] for i in idx], tokenizer.pad_token_id)
            ids, mask = ids.to(device), mask.to(device)  # (B, T)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # (B, T-1, V)
            lp = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
            m = mask[:, 1:].float()
            nll = (lp * m).sum(1) / m.sum(1).clamp(min=1)  # (B,)
            for i, v in zip(idx, nll.tolist()):
                out[i] = v
    finally:
        model.train(was_training)
    return out


class CoherenceJudge:
    name = "coherence"

    def __init__(self, model, tokenizer, reference_texts: list[str], batch_size: int = 64, max_len: int = 256):
        refs = [t for t in reference_texts if t.strip()]
        if not refs:
            raise ValueError("CoherenceJudge needs at least one non-empty reference text to calibrate on; pass corpus texts")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_len = batch_size, max_len
        self.reference_nll = sorted(token_nll(model, tokenizer, refs, batch_size, max_len))

    def percentile(self, nll: float) -> float:
        """Share of reference texts with NLL >= nll."""
        n = len(self.reference_nll)
        return (n - bisect.bisect_left(self.reference_nll, nll)) / n

    def score(self, texts: list[str]) -> list[JudgeScore]:
        live = [i for i, t in enumerate(texts) if t.strip()]
        nlls = token_nll(self.model, self.tokenizer, [texts[i] for i in live], self.batch_size, self.max_len) if live else []
        out = [JudgeScore(0.0, "empty text", {"nll": None, "empty": True}) for _ in texts]
        for i, nll in zip(live, nlls):
            s = self.percentile(nll)
            out[i] = JudgeScore(s, f"nll {nll:.2f}/token, more fluent than {100 * s:.0f}% of corpus",
                                {"nll": nll, "percentile": s})
        return out


REFERENCE_TEXTS = 256  # corpus texts that calibrate the coherence judge


def _coherence_gate(s: JudgeScore, threshold, cfg) -> tuple[str | None, str | None]:
    if s.score is None:  # without a coherence score nothing says the text is language at all
        return f"coherence unscored ({s.reason})", None
    if s.score < threshold:
        return f"incoherent ({s.score:.2f} < {threshold:.2f}; {s.reason})", None
    return None, f"coherent ({s.score:.2f})"


def _build(ctx: PanelContext):
    rng = np.random.default_rng(ctx.seed)
    ref_idx = rng.choice(len(ctx.train), size=min(REFERENCE_TEXTS, len(ctx.train)), replace=False)
    return CoherenceJudge(ctx.model, ctx.tokenizer, [ctx.train[i].text for i in sorted(ref_idx)])


register_judge(JudgeSpec("coherence", _build, gate=_coherence_gate, rank=10,
                         weight_setting="coherence_weight", threshold_setting="min_coherence"))
