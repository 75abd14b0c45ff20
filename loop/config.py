"""Settings: the run's own, and the composition of every component's config dataclass.

Each component's config lives beside it (`domains.config`, `lm.config`, `sllm.config`,
`latent.config`, `backends.config`, `judges.config`), checked at construction. A full `Config`
is built from defaults, then a TOML/YAML file, then command-line overrides (`section.key=value`).
Unknown settings are errors. `result_hash()` covers only the settings that change results, so a
resumed run can refuse a folder made with incompatible settings while batch sizes or thread
counts may change freely.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from backends.config import DecodeConfig
from common.errors import ConfigError
from common.errors import check as _check
from common.plugins import import_plugins
from domains.base import domain_names, get_domain
from domains.config import CorpusConfig, domain_name_of, own_keys, settings_fields
from judges.config import JudgeConfig
from latent.config import FeatureConfig, SampleConfig
from latent.samplers import check_loop_samplers
from lm.config import BaseConfig, RetrainConfig
from sllm.config import SLLMConfig
from storage.db import StorageError, check_schema_name, split_password

__all__ = ["BaseConfig", "Config", "ConfigError", "CorpusConfig", "DecodeConfig", "EvaluateConfig", "JudgeConfig", "RetrainConfig",
           "FeatureConfig", "RunConfig", "SLLMConfig", "SampleConfig", "build_config", "load_config_file"]


@dataclass
class EvaluateConfig:
    """What the evaluate stage measures of the model the generation leaves (the retrained base model):
    `Domain.knowledge_figures` (maths: true-vs-false ROC AUC by likelihood on knowledge_texts texts a
    group, recall of held-out facts in knowledge_samples samples; molecules: the MOSES metrics of
    knowledge_samples samples). 0 skips that part."""
    knowledge_texts: int = 200
    knowledge_samples: int = 200

    def __post_init__(self):
        _check(self.knowledge_texts >= 0, f"evaluate.knowledge_texts must be >= 0, got {self.knowledge_texts}")
        _check(self.knowledge_samples >= 0, f"evaluate.knowledge_samples must be >= 0, got {self.knowledge_samples}")


@dataclass
class RunConfig:
    out: str = "runs/default"
    generations: int = 2
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda" or "auto"
    threads: int = 0  # torch threads; 0 = leave torch's default (performance knob)
    # PostgreSQL for shared use, e.g. postgresql+psycopg://USER@HOST:PORT/DBNAME (docs/postgres.md); None = the
    # run folder's SQLite file RUN_DIR/runs.db. Kept without its password: the snapshot never holds one
    db: str | None = None
    db_schema: str | None = None  # the run's schema in run.db; None = the run folder's name (sanitised)
    # Modules imported before anything else (--plugin): they register samplers, judges or domains.
    # Kept with the run, so a resume or an experiment on it loads them again.
    plugins: list[str] = field(default_factory=list)

    def __post_init__(self):
        _check(self.generations >= 1, f"run.generations must be >= 1, got {self.generations}")
        _check(self.device in ("cpu", "cuda", "auto"), f"run.device must be cpu, cuda or auto, got {self.device!r}")
        _check(self.threads >= 0, f"run.threads must be >= 0, got {self.threads}")
        self._db_password: str | None = None
        try:
            if self.db is not None:
                self.db, self._db_password = split_password(self.db)
            if self.db_schema is not None:
                _check(self.db is not None, "run.db_schema names a PostgreSQL schema; pass --db URL with it")
                check_schema_name(self.db_schema)
        except StorageError as e:
            raise ConfigError(str(e)) from None

    def db_url(self) -> str | None:
        """run.db with its password, for connecting (never stored: the snapshot holds run.db without it)."""
        if self.db is None or self._db_password is None:
            return self.db
        return make_url(self.db).set(password=self._db_password).render_as_string(hide_password=False)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    sllm: SLLMConfig = field(default_factory=SLLMConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    judges: JudgeConfig = field(default_factory=JudgeConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every section as a plain dict; the domain's own settings under the domain's name."""
        d = dataclasses.asdict(self)
        own = d["corpus"].pop("own", None)
        if own is not None:
            d[self.corpus.domain_name] = own
        return d

    def result_hash(self, leave_out: tuple[str, ...] = ()) -> str:
        """Hash of the settings that change results (not the run length, paths or speed knobs);
        `leave_out` sections too (a holdout folder's models do not depend on the measuring settings)."""
        d = self.to_dict()
        for section, key in PERF_KEYS:
            d[section].pop(key, None)
        for section in leave_out:
            d.pop(section, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def result_settings(self) -> dict[str, Any]:
        d = self.to_dict()
        for section, key in PERF_KEYS:
            d[section].pop(key, None)
        return {f"{s}.{k}": v for s, kv in d.items() for k, v in kv.items()}

    def settings_diff(self, old: "Config", leave_out: tuple[str, ...] = ()) -> list[str]:
        """The result settings in which `old` differs from these, as "name old -> new" (sections in
        `leave_out` aside). A folder made before a setting was added reads back with that setting's
        default, so its result hash differs while this list is empty: it holds the same results."""
        a, b = old.result_settings(), self.result_settings()
        return [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(b)
                if a.get(k) != b.get(k) and k.split(".", 1)[0] not in leave_out]


# Settings that do not change results: excluded from the resume key.


PERF_KEYS = [
    ("run", "out"), ("run", "generations"), ("run", "threads"), ("run", "device"),
    ("base", "batch_size"), ("sllm", "batch_size"), ("decode", "batch_size"),
    ("decode", "chunk_size"), ("judges", "batch_size"),  # how many candidates at once
    ("decode", "backend"), ("decode", "base_url"), ("retrain", "batch_size"),
    ("run", "db"), ("run", "db_schema"),  # where the rows are stored, not what they hold
    ("decode", "tensor_parallel_size"), ("decode", "data_parallel_size"),  # vLLM's parallelism
]


def _coerce(value: Any, where: str, ftype: str) -> Any:
    """Turn a string from the command line (or a file value) into the setting's type."""
    if isinstance(value, str) and ftype.startswith("dict"):  # NAME:VALUE,NAME:VALUE
        out = {}
        for part in (p.strip() for p in value.split(",") if p.strip()):
            name, sep, num = part.rpartition(":")
            try:
                out[name.strip()] = float(num)
                if not sep or not name.strip():
                    raise ValueError
            except ValueError:
                raise ConfigError(f"{where}: expected NAME:NUMBER pairs separated by commas, got {value!r}") from None
        return out
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
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(choices))})"


def build_config(file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults <- file values (nested dict) <- overrides ({"section.key": value})."""
    flat: dict[str, Any] = {}
    sections = {f.name: f for f in dataclasses.fields(Config)}
    for section, values in (file_values or {}).items():
        if section not in sections and section not in domain_names():
            raise ConfigError(f"unknown config section {section!r}{_suggest(section, list(sections))}")
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a table of settings, got {values!r}")
        for k, v in values.items():
            flat[f"{section}.{k}"] = v
    flat.update(overrides or {})
    import_plugins(_plugins(flat))  # before the settings name what they register
    flat = {**domain_defaults(flat), **flat}
    domain = _domain_of(flat)
    flat = own_keys(flat, domain) if domain in domain_names() else flat

    kwargs: dict[str, dict[str, Any]] = {name: {} for name in sections}
    own: dict[str, Any] = {}
    own_fields = settings_fields(domain)
    for dotted, value in flat.items():
        if "." not in dotted:
            raise ConfigError(f"setting {dotted!r} must be written section.key, e.g. sllm.latent_dim")
        section, key = dotted.split(".", 1)
        if section == domain and section not in sections:  # the domain's own (own_keys checked the key)
            own[key] = _coerce(value, dotted, _type_name(own_fields[key].type))
            continue
        if section not in sections:
            raise ConfigError(f"unknown setting {dotted!r}: no section {section!r}{_suggest(section, list(sections))}")
        cls = sections[section].default_factory  # type: ignore[misc]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if key not in fields:
            raise ConfigError(f"unknown setting {dotted!r}{_suggest(key, list(fields))}")
        kwargs[section][key] = _coerce(value, dotted, str(fields[key].type))
    if own_fields:  # {} for a domain without settings of its own, or a name CorpusConfig will refuse
        kwargs["corpus"]["own"] = own
    try:
        parts = {name: sections[name].default_factory(**kw) for name, kw in kwargs.items()}  # type: ignore[misc]
    except TypeError as e:
        raise ConfigError(str(e)) from None
    if parts["corpus"].meaning or parts["base"].extra_texts or (parts["corpus"].path and parts["sllm"].false_texts):
        # a meaning target, base-model texts or SLLM language texts the domain does not offer: refused before any work
        domain = get_domain(parts["corpus"].domain_name)
        domain.meaning_target(parts["corpus"].meaning)
        domain.check_base_texts(parts["corpus"], parts["base"].extra_texts)
        domain.check_language_texts(parts["corpus"], parts["sllm"].false_texts)
    check_loop_samplers(parts["sample"].samplers, features=parts["features"].n_features > 0)
    if parts["sllm"].kv_prefix and parts["decode"].backend != "transformers":
        raise ConfigError(f"sllm.kv_prefix puts the latent into every layer's key/value cache, which the "
                          f"{parts['decode'].backend} backend cannot take: use --backend transformers or sllm.kv_prefix=0")
    return Config(**parts)


def _type_name(t: Any) -> str:
    """A field's type as _coerce reads it: "int", "list[str]", ... (a plugin's module may not write
    `from __future__ import annotations`, and then the type is the class itself)."""
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _plugins(flat: dict[str, Any]) -> list[str]:
    value = flat.get("run.plugins") or []
    return _coerce(value, "run.plugins", "list[str]")


def _domain_of(flat: dict[str, Any]) -> str:
    return str(domain_name_of(flat.get("corpus.domain"), flat.get("corpus.path")))


def domain_defaults(flat: dict[str, Any]) -> dict[str, Any]:
    """The chosen domain's own defaults (Domain.defaults), under the file and command-line values."""
    name = _domain_of(flat)
    if name not in domain_names():  # CorpusConfig names the choices
        return {}
    return dict(get_domain(name).defaults)


def load_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found; pass an existing .toml or .yaml file")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".toml":
        import tomllib  # lazy: stdlib from Python 3.11 only; requires-python allows 3.10

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    if p.suffix in (".yaml", ".yml"):
        import yaml  # lazy: PyYAML start-up, only for a .yaml config file

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections")
        return data
    raise ConfigError(f"config file {p} must end in .toml, .yaml or .yml")
