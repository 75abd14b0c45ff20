"""The domain interface: everything that differs between kinds of texts lives behind it.

A domain owns its corpus (train / held-out evaluation / held-out knowledge), the canonical
form used for de-duplication and novelty, the meaning target of the SLLM's meaning term (an
embedder), the verifier (or none), the critic's rubric, the SLLM's extra language texts, and
the tokenizer a self-trained base model should use. The loop, the judges and the experiments
ask the domain and never test which one it is. Built in: `maths`, `text`, `molecules`, found
through entry points; `register_domain` adds one, `get_domain(name)` returns one.
"""
from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Callable, Container

from common.errors import ConfigError
from common.registry import Registry
from lm.embedder import MINILM, Embedder

if TYPE_CHECKING:
    import numpy as np

    from domains.config import CorpusConfig


@dataclass(frozen=True)
class Text:
    text: str
    topic: str
    fact_key: str | None = None  # canonical key of the fact stated, e.g. "addition:3+4=7"


@dataclass(frozen=True)
class Verdict:
    status: str  # "true" | "false" | "unparseable"
    fact_key: str | None  # key of the claim parsed, true or false; same format as Text.fact_key
    topic: str | None
    reason: str | None = None  # the domain's own wording of the verdict (e.g. "invalid SMILES ...")


@dataclass
class CorpusSplits:
    """A run's texts, as the domain loaded and split them."""
    train: list[Text]  # what the base model and the SLLM learn from
    eval: list[Text]  # real texts never trained on: held-out perplexity, false-dark rate
    knowledge: list[Text] = field(default_factory=list)  # held-out knowledge ("true and new"), where the domain has it
    # facts present in training ("new" = absent from these): any container of fact keys
    train_fact_keys: frozenset[str] | Container[str] = frozenset()

    @property
    def train_texts(self) -> list[str]:
        return [t.text for t in self.train]


_WS = re.compile(r"\s+")


class KnowledgeHoldout:
    """What a domain gives the holdout of its knowledge set (experiments/holdout_knowledge.py): a
    held-out set of real texts that the domain's own corpus holds nothing like (molecules: the MOSES
    scaffold-test molecules), a control set of unseen texts the corpus does resemble, and how a
    decode compares with the text it came from. The experiment trains, locates and decodes; the
    domain says what is compared and how the table names it."""

    name: str = ""  # the held-out set, e.g. "scaffold-test"
    control: str = ""  # the control set, e.g. "MOSES test"
    noun: str = "texts"  # what the tables call its texts, e.g. "molecules"
    # Figures of one decoder's decodes (`figures`), each shown per decoder: (key prefix, label, format).
    decode_rows: tuple[tuple[str, str, str], ...] = ()
    # Figures comparing two decoders' decodes of the same latents (`pair_figures`): (key, label, format).
    pair_rows: tuple[tuple[str, str, str], ...] = ()
    # Figures of a group's originals (`group_figures`), None where they do not apply: (key, label, format).
    group_rows: tuple[tuple[str, str, str], ...] = ()

    def sets(self, cfg: CorpusConfig, seed: int, n_held: int, n_control: int) -> tuple[list[str], list[str]]:
        """(`n_held` texts of the held-out set, `n_control` of the control set), seeded draws;
        `CorpusError` when the domain holds fewer."""
        raise NotImplementedError

    def compare(self, originals: list[str], decodes: list[str], seen: frozenset[str],
                train_keys: Container[str]) -> dict[str, np.ndarray]:
        """Per-text arrays comparing `decodes[i]` with `originals[i]`; `seen`: the held-out texts the
        continued network trained on. Must hold "canonical" (object: the decode's canonical form,
        None where it is no valid text), "valid" and "valid_new" (bool: valid and absent from
        `train_keys`); `figures`, `pair_figures` and the stored samples read the rest."""
        raise NotImplementedError

    def figures(self, arr: dict[str, np.ndarray]) -> dict:
        """The `decode_rows` figures of one decoder's arrays (`compare`), on a subset of the texts."""
        raise NotImplementedError

    def pair_figures(self, a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict:
        """The `pair_rows` figures of two decoders' arrays of the same texts."""
        return {}

    def group_figures(self, originals: list[str], splits: CorpusSplits, seen: list[str], held: bool) -> dict:
        """The `group_rows` figures of a group's originals; `held`: the held-out group, not the control."""
        return {}

    def sample_detail(self, arr: dict[str, np.ndarray], i: int) -> dict:
        """What a stored sample keeps of text i's comparison."""
        return {}

    def setup_note(self, result: dict) -> str:
        """The line under the table that says what NN1, NN2 and each figure are."""
        return ""


class Domain:
    """Base class of a domain plugin; a subclass sets `name` and `rubric` and overrides `texts`."""

    name: str = ""
    # The critic's rubric: what a good text of this domain is, on a 1-5 scale. The critic
    # appends the data markers; the candidate text is data, never instructions.
    rubric: str = ""
    # Topics the holdout experiment can hold out (empty: the domain has none).
    topics: tuple[str, ...] = ()
    # True when a base model trained from scratch on the corpus alone cannot test the idea (real
    # text): a run without --base-model then says so up front and in every metrics line.
    needs_pretrained: bool = False
    # How the metrics line names the verifier's "true" share and the true-and-new count.
    truth_label: str = "truth"
    new_label: str = "true-new"
    # Corpus files this domain claims by extension when no --domain is given (molecules: ".smi").
    extensions: tuple[str, ...] = ()
    # Counts among generation_metrics that the experiments also give per 1000 decodes, and the
    # columns the discovery table adds for the domain: (figure key, header).
    count_figures: tuple[str, ...] = ()
    report_columns: tuple[tuple[str, str], ...] = ()
    # The held-out knowledge set the holdout experiment measures against a finished run, and how its
    # decodes compare (molecules: the scaffold-test molecules); None: it holds out a topic instead.
    knowledge_holdout: KnowledgeHoldout | None = None
    # True where the report can draw each text as a structure (molecules: RDKit depictions).
    structure_drawings: bool = False
    # The domain's own settings: a dataclass whose fields are written `NAME.key` (`--set
    # molecules.max_texts=5000`) and whose __post_init__ checks them; the corpus methods read the
    # instance as `cfg.own` (domains.config.CorpusConfig). None: the domain has none.
    settings: type | None = None
    # Settings this domain needs unless the user sets them ({"section.key": value}), applied by
    # loop.config.build_config under the file and command-line values.
    defaults: dict = {}
    # The generations experiment's budget on 2 CPU cores (about an hour for 4 variants x 3 training
    # seeds x 8 generations with their start runs), applied to the start runs it trains, under the
    # user's own settings ({"section.key": value}).
    generations_protocol: dict = {}
    # A rule-based critic: texts -> [(score in [0, 1] or None, reason, detail)], used in place of
    # the LLM critic and its rubric (molecules: QED, SA, filters). None: the LLM critic.
    rule_critic: Callable[[list[str]], list[tuple[float | None, str, dict]]] | None = None
    # What loading the corpus found that the user should know (e.g. invalid lines skipped); the
    # run prints these up front.
    notes: list[str] = []

    # -- corpus -----------------------------------------------------------------------------
    def texts(self, cfg: CorpusConfig, seed: int) -> tuple[list[Text], list[Text]]:
        """(training-pool texts, held-out knowledge texts) before the evaluation split."""
        raise NotImplementedError

    def load(self, cfg: CorpusConfig, seed: int) -> CorpusSplits:
        """The domain's corpus split into train / eval (whole fact groups, so no paraphrase of an
        evaluation text is trained on) / held-out knowledge."""
        texts, knowledge = self.texts(cfg, seed)
        if cfg.left_out:  # gone before the split, so no stage or held-out figure sees them
            texts = [t for t in texts if t.topic not in cfg.left_out]
            knowledge = [t for t in knowledge if t.topic not in cfg.left_out]
        train, ev = split_eval(texts, cfg.eval_share, seed)
        return CorpusSplits(train=train, eval=ev, knowledge=knowledge,
                            train_fact_keys=frozenset(t.fact_key for t in train if t.fact_key))

    def language_texts(self, cfg: CorpusConfig, seed: int, n: int, topics: tuple[str, ...] | None = None) -> list[Text]:
        """Extra texts that teach the SLLM the domain's language without carrying held-out
        knowledge (maths: verifier-checked false sentences). None by default."""
        return []

    def check_language_texts(self, cfg: CorpusConfig, n: int) -> None:
        """Refuse `sllm.false_texts = n` before any work where the domain cannot supply them."""

    def base_texts(self, cfg: CorpusConfig, seed: int, n: int, exclude: set[str]) -> list[str]:
        """`n` texts for the base model's pretraining only (`base.extra_texts`), none in `exclude`
        (the corpus); a domain that holds nothing beyond its corpus refuses."""
        self.check_base_texts(cfg, n)
        return []

    def check_base_texts(self, cfg: CorpusConfig, n: int) -> None:
        """Refuse `base.extra_texts = n` before any work where the domain cannot supply them."""
        if n:
            raise ConfigError(f"base.extra_texts {n}: the {self.name} domain holds no texts beyond its corpus; "
                              "drop the setting (--set base.extra_texts=0)")

    def check_knowledge(self, cfg: CorpusConfig) -> None:
        """Refuse, before any work, settings under which the domain holds out no knowledge texts to
        measure a round trip on (`bench sllm`); a domain without such a set always refuses."""
        raise ConfigError(f"the {self.name} domain holds out no knowledge texts to measure on; pick a domain that does "
                          "(--domain maths or molecules)")

    # -- meaning, novelty, truth --------------------------------------------------------------
    def canonical(self, text: str) -> str:
        """The form two texts share when they are the same text (de-duplication, novelty)."""
        return _WS.sub(" ", text).strip()

    def meaning_embedder(self) -> Embedder:
        """The embedder whose space the SLLM's meaning term predicts and novelty measures in."""
        return MINILM

    def meaning_targets(self) -> dict[str, Callable[[], Embedder]]:
        """Meaning targets the domain offers in place of its own (`corpus.meaning`): name -> maker."""
        return {}

    def meaning_target(self, name: str = "") -> Embedder:
        """The embedder whose space the SLLM's meaning term predicts: the domain's own
        (`meaning_embedder`) unless `name` (`corpus.meaning`) picks another one it offers."""
        if not name:
            return self.meaning_embedder()
        offered = self.meaning_targets()
        if name not in offered:
            choice = f"one of {', '.join(offered)}" if offered else "none but its own: drop the setting"
            raise ConfigError(f"corpus.meaning {name!r}: the {self.name} domain offers {choice} "
                              "(--set corpus.meaning=NAME)")
        return offered[name]()

    @property
    def verifier(self) -> Callable[[str], Verdict] | None:
        """text -> Verdict, where the domain can check truth; None where it cannot."""
        return None

    @property
    def parses(self) -> Callable[[str], bool] | None:
        """text -> whether the verifier can parse it, true or false alike (a decode's parse check:
        `decode.pick`); None where the domain has no verifier."""
        verify = self.verifier
        return None if verify is None else (lambda text: verify(text).status != "unparseable")

    def edit(self, texts: list[str], k: int, seed: int) -> list[str]:
        """Each text after `k` random edits that keep it a text of the domain, a step at a time
        away from the data (`bench sllm` asks where such texts land in the latent space). By
        default a whitespace word is replaced by a word of the given texts (a one-word text: a
        character by a character of theirs); a domain with a grammar keeps its texts in it."""
        rng = random.Random(seed)
        words = sorted({w for t in texts for w in t.split()})
        chars = sorted({c for t in texts for c in t if not c.isspace()})
        out = []
        for text in texts:
            parts = text.split()
            one_word = len(parts) <= 1
            parts, pool = (list(text.strip()), chars) if one_word else (parts, words)
            for _ in range(k):
                if parts and pool:
                    parts[rng.randrange(len(parts))] = rng.choice(pool)
            out.append(("" if one_word else " ").join(parts))
        return out

    def generation_metrics(self, texts: list[str], splits: CorpusSplits) -> dict[str, float]:
        """Domain figures of one generation's decodes, added to its metrics line and stored in
        the evaluate stage's detail (molecules: the MOSES metrics). None by default."""
        return {}

    def knowledge_figures(self, splits: CorpusSplits, cfg: CorpusConfig, seed: int,
                          loglik: Callable[[list[str]], np.ndarray], sample: Callable[[int], list[str]],
                          n_texts: int, n_samples: int) -> dict[str, float]:
        """What the current base model knows, measured the same way every generation (the evaluate
        stage): `loglik(texts)` is each text's mean log-probability a token under the model,
        `sample(n)` the model's own sampling; `n_texts` texts a group are scored, `n_samples` texts
        sampled (0: that part is skipped). {} where the domain has nothing to measure it on."""
        return {}

    def reference_table(self, decodes: dict[str, list[str]], splits: CorpusSplits, note: str = "") -> dict | None:
        """The domain's published benchmark table with a row per sampler beside it (molecules: the
        MOSES table): {"rows": {name: {column: value}}, "table": str}. `decodes`: each sampler's
        texts; `note`: what produced them (the training budget), printed under the table. None
        where the domain has no such table."""
        return None

    # -- the self-trained base model ----------------------------------------------------------
    def train_tokenizer(self, texts: list[str], vocab_size: int):
        """The tokenizer a base model trained from scratch on this domain uses (byte-level BPE
        with digits split, by default)."""
        from lm.base_model import train_tokenizer  # lazy: torch start-up, not needed to read a run's settings

        return train_tokenizer(texts, vocab_size)


def split_eval(texts: list[Text], eval_share: float, seed: int) -> tuple[list[Text], list[Text]]:
    """Keep whole fact groups (all phrasings of a fact; a text without a key is its own group)
    aside as evaluation texts, `eval_share` of the groups, chosen by `seed`."""
    groups: dict[str, list[Text]] = {}
    for i, t in enumerate(texts):
        groups.setdefault(t.fact_key or f"#{i}", []).append(t)
    keys = sorted(groups)
    random.Random(seed + 1).shuffle(keys)
    n_eval = int(round(len(keys) * eval_share))
    eval_keys = set(keys[:n_eval])
    train = [t for i, t in enumerate(texts) if (t.fact_key or f"#{i}") not in eval_keys]
    ev = [t for k in keys[:n_eval] for t in groups[k]]
    return train, ev


# ------------------------------------------------------------------------------ registry
# A domain joins by `register_domain(cls)` (in its own file, e.g. a test or a user's module
# loaded with `--plugin MODULE`) or by an entry point of the group below in an installed
# package's metadata. The registry imports no plugin until a run asks for it by name, so no
# plugin file is imported back through it. The project's own domains are also named here by
# import path, so a checkout whose package metadata is stale still finds them.
ENTRY_POINT_GROUP = "darkzones.domains"
_BUILT_IN = {"maths": "domains.maths.plugin:MathsDomain", "text": "domains.text:TextDomain",
             "molecules": "domains.molecules.domain:MoleculesDomain"}
_REGISTERED: Registry[type[Domain]] = Registry("domain")


def register_domain(cls: type[Domain]) -> type[Domain]:
    """Add a domain class (usable as a class decorator); its `name` is how runs pick it."""
    return _REGISTERED.add(cls.name, cls)


def unregister_domain(name: str) -> None:
    _REGISTERED.remove(name)


@functools.cache  # installed metadata does not change within a process; reading it is a disk scan
def _entry_points() -> dict[str, str]:
    """name -> "module:Class" of every domain found without importing it."""
    return {**_BUILT_IN, **{ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}}


def domain_names() -> tuple[str, ...]:
    """Every domain a run can name: installed entry points, then registered classes (no import)."""
    return tuple(dict.fromkeys([*_entry_points(), *_REGISTERED.items()]))


def domain_class(name: str) -> type[Domain]:
    if name in _REGISTERED:
        return _REGISTERED.items()[name]
    eps = _entry_points()
    if name not in eps:
        raise ConfigError(f"unknown domain {name!r}; choose one of {', '.join(sorted(domain_names()))} (--domain NAME)")
    module, _, attr = eps[name].partition(":")
    return register_domain(getattr(import_module(module), attr))


def get_domain(name: str) -> Domain:
    return domain_class(name)()


def domain_for_file(path: str) -> str | None:
    """The domain that claims a corpus file by its extension (Domain.extensions), if one does."""
    low = str(path).lower()
    for name in domain_names():
        if any(low.endswith(ext) for ext in domain_class(name).extensions):
            return name
    return None
