"""The built-in maths corpus: its settings, the generated facts with a held-out share per topic,
and false statements (the SLLM's language texts)."""
from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass

from domains.base import Text
from domains.maths.language import render, verify
from domains.maths.topics import ALL_TOPICS, TOPICS, fact_space

# --- corpus ------------------------------------------------------------------------------


@dataclass
class MathsConfig:
    seed: int = 0
    facts_per_topic: int = 40  # distinct true facts drawn per topic
    phrasings_per_fact: int = 3  # distinct templates stating each fact
    holdout_share: float = 0.2  # share of true facts (all their phrasings) held out of training
    topics: tuple[str, ...] = ALL_TOPICS

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        self.seed = int(self.seed)  # numpy integers -> int, so snapshots serialise cleanly
        for name in ("facts_per_topic", "phrasings_per_fact"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
            setattr(self, name, int(value))
        share = self.holdout_share
        if isinstance(share, bool) or not isinstance(share, numbers.Real) or not 0 <= share < 1:
            raise ValueError(f"holdout_share must be a number in [0, 1), got {share!r}; "
                             "use e.g. 0.2 to hold out a fifth of the facts")
        self.holdout_share = float(share)
        if isinstance(self.topics, str):
            raise ValueError(
                f"topics must be a list of topic names, got the string {self.topics!r}; "
                f"write topics=({self.topics!r},)")
        self.topics = tuple(self.topics)
        if not self.topics:
            raise ValueError(f"topics is empty; choose at least one of {', '.join(ALL_TOPICS)}")
        unknown = [t for t in self.topics if t not in TOPICS]
        if unknown:
            raise ValueError(f"unknown topic(s) {unknown}; choose from {', '.join(ALL_TOPICS)}")
        if len(set(self.topics)) != len(self.topics):
            raise ValueError(f"topics lists a topic twice: {list(self.topics)}; list each once")
        for t in self.topics:
            n_facts, n_templates = len(fact_space(t)), len(TOPICS[t].templates)
            if self.facts_per_topic > n_facts:
                raise ValueError(
                    f"facts_per_topic={self.facts_per_topic} exceeds the {n_facts} facts of "
                    f"topic {t!r}; lower facts_per_topic or drop the topic")
            if self.phrasings_per_fact > n_templates:
                raise ValueError(
                    f"phrasings_per_fact={self.phrasings_per_fact} exceeds the {n_templates} "
                    f"templates of topic {t!r}; use at most {n_templates}")


@dataclass
class MathsCorpus:
    train: list[Text]  # phrasings of the non-held-out facts, shuffled deterministically
    heldout: list[Text]  # phrasings of held-out true facts (never in train)
    train_fact_keys: frozenset[str]
    heldout_fact_keys: frozenset[str]


def heldout_per_topic(cfg: MathsConfig) -> int:
    """Facts each topic holds out: the holdout share of its facts, keeping >= 1 fact to train on."""
    return min(math.floor(cfg.holdout_share * cfg.facts_per_topic + 1e-9), cfg.facts_per_topic - 1)


def build_maths_corpus(cfg: MathsConfig) -> MathsCorpus:
    train: list[Text] = []
    heldout: list[Text] = []
    for name in cfg.topics:
        topic = TOPICS[name]
        # one generator per topic (str seeds hash deterministically), so adding a topic
        # leaves the others' facts unchanged
        rng = random.Random(f"maths:{cfg.seed}:{name}")
        facts = rng.sample(fact_space(name), cfg.facts_per_topic)  # uniform, without replacement
        n_hold = heldout_per_topic(cfg)  # the first n_hold of a random sample are a random subset
        for i, params in enumerate(facts):
            claim = topic.answer(params)
            key = topic.key(params, claim)
            chosen = rng.sample(range(len(topic.templates)), cfg.phrasings_per_fact)
            texts = [Text(render(topic, t, params, claim), name, key) for t in chosen]
            (heldout if i < n_hold else train).extend(texts)
    random.Random(f"maths:{cfg.seed}:shuffle:train").shuffle(train)
    random.Random(f"maths:{cfg.seed}:shuffle:heldout").shuffle(heldout)
    return MathsCorpus(
        train=train,
        heldout=heldout,
        train_fact_keys=frozenset(t.fact_key for t in train),
        heldout_fact_keys=frozenset(t.fact_key for t in heldout),
    )


def false_statements(cfg: MathsConfig, n: int, seed: int = 0) -> list[Text]:
    """`n` false sentences of the domain: a random fact of a topic, a wrong claim, a random template.

    The wrong claim is another fact's true answer in the same topic (so it looks like an answer
    the topic gives), never this fact's. Every sentence is checked false by `verify`, so these
    carry no true fact at all: training on them teaches the domain's language (any slot
    combination) without revealing a held-out truth. Their fact_key is None (no true fact).
    """
    rng = random.Random(f"maths:{seed}:false")
    out: list[Text] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise RuntimeError(f"could not draw {n} false statements from topics {cfg.topics}")
        topic = TOPICS[rng.choice(cfg.topics)]
        space = fact_space(topic.name)
        params = rng.choice(space)
        claim = topic.answer(rng.choice(space))
        if topic.holds(params, claim):
            continue
        text = render(topic, rng.randrange(len(topic.templates)), params, claim)
        if verify(text).status != "false":
            continue
        out.append(Text(text, topic.name, None))
    return out
