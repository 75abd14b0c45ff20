"""The critic scored by vLLM (the `vllm` backend's engine): same prompt ids, same grade."""
from __future__ import annotations

import torch

from backends.vllm_backend import VllmBackend
from judges.base import JudgeScore
from judges.critic import DEFAULT_RUBRIC, CriticJudge


class VllmCritic:
    """The critic (judges/critic.py) scored by vLLM: same prompt ids, same probability-weighted grade.

    Every prompt starts with the long rubric (BOS + rubric tokens); vLLM's automatic prefix
    caching keeps its KV blocks, so once one request has computed them the others run only their
    own tokens. A request computes blocks the cache does not yet hold, and requests scheduled in
    the same step cannot share them, so the first candidate goes alone, then the rest together.
    """

    def __init__(self, backend: VllmBackend, rubric: str | None = None, labels=("1", "2", "3", "4", "5"),
                 max_chars: int = 400):
        backend.load()
        self.backend = backend
        # The transformers critic with no model: it only builds the token ids here.
        self.ids = CriticJudge(None, backend.tokenizer, rubric or DEFAULT_RUBRIC, labels, max_chars=max_chars)
        self.labels = self.ids.labels

    def score(self, texts: list[str], warm_first: bool = True):
        seqs = [self.ids.prefix_ids + self.ids.candidate_ids(t) for t in texts]
        params = self.backend._params(1, 0.0, None, logprob_token_ids=list(self.ids.label_ids))
        order = list(range(len(seqs)))
        groups = [order[:1], order[1:]] if warm_first and self.backend.enable_prefix_caching else [order]
        n = len(self.labels)
        values = torch.arange(1, n + 1, dtype=torch.float64)
        out = [None] * len(texts)
        for idx in groups:
            if not idx:
                continue
            outs = self.backend._run([{"prompt_token_ids": seqs[i]} for i in idx], params)
            for i, o in zip(idx, outs):
                lp = o.logprobs[0]  # {token id: Logprob} for the label tokens (+ the sampled one)
                logp = torch.tensor([lp[t].logprob for t in self.ids.label_ids], dtype=torch.float64)  # (n,)
                probs = torch.softmax(logp, -1)
                e = float(probs @ values)
                mass = float(logp.exp().sum())
                p = {lab: float(probs[k]) for k, lab in enumerate(self.labels)}
                out[i] = JudgeScore((e - 1) / (n - 1), f"critic expects {e:.2f} of {n} (label mass {mass:.2f})",
                                    {"probs": p, "expected": e, "label_mass": mass})
        return out
