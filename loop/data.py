"""The run's texts: training corpus, evaluation texts, and (built-in domain) the held-out facts."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from corpus import ALL_TOPICS, MathsConfig, Text, build_maths_corpus, false_statements, load_corpus, verify
from loop.config import Config


@dataclass
class RunData:
    train: list[Text]  # what the base model and the SLLM learn from
    eval: list[Text]  # real texts never trained on: held-out perplexity
    train_fact_keys: frozenset[str]  # facts present in training ("new" = absent from these)
    verify: Callable | None  # the domain's truth verifier, where it has one

    @property
    def train_texts(self) -> list[str]:
        return [t.text for t in self.train]


def build_data(cfg: Config) -> RunData:
    c = cfg.corpus
    if c.path is None:
        mc = build_maths_corpus(MathsConfig(seed=cfg.run.seed, facts_per_topic=c.facts_per_topic,
                                            phrasings_per_fact=c.phrasings_per_fact, holdout_share=c.holdout_share))
        texts, verify_fn = list(mc.train), verify
    else:
        texts, verify_fn = load_corpus(c.path), None
    # Evaluation texts: whole fact groups (all phrasings) kept out, so no paraphrase leaks in.
    groups: dict[str, list[Text]] = {}
    for i, t in enumerate(texts):
        groups.setdefault(t.fact_key or f"#{i}", []).append(t)
    keys = sorted(groups)
    random.Random(cfg.run.seed + 1).shuffle(keys)
    n_eval = int(round(len(keys) * c.eval_share))
    eval_keys = set(keys[:n_eval])
    train = [t for i, t in enumerate(texts) if (t.fact_key or f"#{i}") not in eval_keys]
    ev = [t for k in keys[:n_eval] for t in groups[k]]
    train_keys = frozenset(t.fact_key for t in train if t.fact_key)
    return RunData(train=train, eval=ev, train_fact_keys=train_keys, verify=verify_fn)


def language_texts(cfg: Config, topics: tuple[str, ...] = ALL_TOPICS) -> list[Text]:
    """The SLLM's extra training texts: sllm.false_texts verifier-checked false sentences of the
    built-in domain (of `topics`); none for a user corpus, which has no generator."""
    if cfg.corpus.path is not None or cfg.sllm.false_texts == 0:
        return []
    return false_statements(MathsConfig(seed=cfg.run.seed, topics=topics), cfg.sllm.false_texts, cfg.run.seed)
