"""Settings of the corpus: which domain, which file, how it is split; and each domain's own settings.

`CorpusConfig` holds what every domain shares. A domain's own settings (maths: how many facts,
molecules: how many MOSES molecules) are a dataclass the domain declares (`Domain.settings`),
written `DOMAIN.key` (`--set molecules.max_texts=5000`) and kept in `CorpusConfig.own`. Older
run folders and commands spell them `corpus.key`; `own_keys` reads that spelling too.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from difflib import get_close_matches
from typing import Any

from common.errors import ConfigError
from common.errors import check as _check


@dataclass
class CorpusConfig:
    # The domain plugin (domains.base.get_domain): maths, text, molecules. None = maths for the
    # built-in corpus, molecules for a user's .smi file, text for any other --corpus file.
    domain: str | None = None
    path: str | None = None  # a user corpus file (.txt or .jsonl); None = the domain's own (built-in maths)
    eval_share: float = 0.05  # share of training texts kept aside for held-out perplexity
    # The SLLM's meaning target: "" = the domain's own (maths, text: MiniLM; molecules: Morgan
    # fingerprints), or another one the domain offers (molecules: morgan, descriptors). Novelty is
    # always measured in the domain's own space.
    meaning: str = ""
    # Topics (comma-separated) left out of every stage: the base model, the SLLM, the map and the
    # held-out sets never see a text of them (the holdout experiment's NN1). Only for a domain with
    # topics (Domain.topics); "" = none.
    leave_out: str = ""
    # The domain's own settings (an instance of its `Domain.settings`; None: a domain without any,
    # or its defaults when left None). Not a section of its own here: `Config.to_dict` writes it
    # under the domain's name.
    own: Any = field(default=None, compare=False)

    def __post_init__(self):
        from domains.base import domain_class, domain_names  # lazy: domains.base imports this module for its type hints

        names = domain_names()
        _check(self.domain is None or self.domain in names,
               f"corpus.domain {self.domain!r} is not a domain; choose one of {', '.join(names)} (--domain NAME)")
        _check(0 <= self.eval_share < 0.5, f"corpus.eval_share must be in [0, 0.5), got {self.eval_share}")
        settings = domain_class(self.domain_name).settings if self.domain_name in names else None
        if self.leave_out:
            topics = domain_class(self.domain_name).topics if self.domain_name in names else ()
            unknown = [t for t in self.left_out if t not in topics]
            _check(not unknown, f"corpus.leave_out {self.leave_out!r}: " + (
                f"{', '.join(unknown)} is not a topic of the {self.domain_name} domain; choose from {', '.join(topics)}"
                if topics else f"the {self.domain_name} domain has no topics to leave out; drop the setting"))
            _check(len(self.left_out) < len(topics),
                   f"corpus.leave_out {self.leave_out!r} leaves out every topic; keep at least one")
        if isinstance(self.own, dict):  # a stored run's section
            self.own = settings(**self.own) if settings is not None else None
        elif self.own is None and settings is not None:
            self.own = settings()
        elif self.own is not None and (settings is None or not isinstance(self.own, settings)):
            raise ConfigError(f"corpus.own is set by the domain's own settings; write them as "
                              f"{self.domain_name}.KEY=VALUE")

    @property
    def left_out(self) -> tuple[str, ...]:
        """The topics `leave_out` names."""
        return tuple(t.strip() for t in self.leave_out.split(",") if t.strip())

    @property
    def domain_name(self) -> str:
        return domain_name_of(self.domain, self.path)


def domain_name_of(domain: str | None, path: str | None) -> str:
    """The domain a corpus setting names: `domain`, else the one its file's extension belongs to
    (text for any other file), else the built-in default (maths). Also for a stored run's settings."""
    if domain:
        return domain
    if path is None:
        return "maths"
    from domains.base import domain_for_file  # lazy: domains.base imports this module for its type hints

    return domain_for_file(path) or "text"


def own_keys(flat: dict[str, Any], domain: str) -> dict[str, Any]:
    """`flat` ({"section.key": value}) with each domain's own settings checked: `DOMAIN.key` must
    name a setting of the run's own domain; the older spelling `corpus.key` of one becomes
    `DOMAIN.key`, and is dropped where it belongs to another domain only (a run folder of an older
    version stores every domain's corpus fields, the others at their defaults, unused). Another
    domain's plugin is imported only to read such an older key."""
    from domains.base import domain_names  # lazy: domains.base imports this module for its type hints

    names = domain_names()
    shared = {f.name for f in dataclasses.fields(CorpusConfig)}
    own_fields = settings_fields(domain)
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        section, _, key = dotted.partition(".")
        if dotted == "corpus.own":
            raise ConfigError(f"corpus.own holds the domain's own settings; write them as {domain}.KEY=VALUE")
        if section == "corpus" and key not in shared:
            if key in own_fields:
                dotted = f"{domain}.{key}"
            elif any(key in settings_fields(name) for name in names if name != domain):
                continue
        elif section in names:
            if section != domain:
                raise ConfigError(f"setting {dotted!r} belongs to the {section} domain, and this run's domain is "
                                  f"{domain}; drop it or pass --domain {section}")
            if not own_fields:
                raise ConfigError(f"setting {dotted!r}: the {domain} domain has no settings of its own")
            if key not in own_fields:
                close = get_close_matches(key, list(own_fields), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(own_fields))})"
                raise ConfigError(f"unknown setting {dotted!r}{hint}")
        out[dotted] = value
    return out


def settings_fields(domain: str) -> dict[str, dataclasses.Field]:
    """The fields of a domain's own settings ({} where it has none)."""
    from domains.base import domain_class, domain_names  # lazy: domains.base imports this module for its type hints

    if domain not in domain_names():
        return {}
    settings = domain_class(domain).settings
    return {} if settings is None else {f.name: f for f in dataclasses.fields(settings)}


def stored_corpus(config: dict[str, Any]) -> CorpusConfig:
    """The corpus settings of a stored run's config (`Config.to_dict()` of any version: the domain's
    own settings under its name, or, from older versions, among the corpus section's)."""
    corpus = dict(config.get("corpus") or {})
    name = domain_name_of(corpus.get("domain"), corpus.get("path"))
    flat = {f"corpus.{k}": v for k, v in corpus.items() if k != "own"}
    flat.update({f"{name}.{k}": v for k, v in (config.get(name) or {}).items()})
    flat = own_keys(flat, name)
    shared = {f.name for f in dataclasses.fields(CorpusConfig)} - {"own"}
    return CorpusConfig(**{k: v for k, v in ((d.split(".", 1)[1], v) for d, v in flat.items() if d.startswith("corpus."))
                           if k in shared},
                        own={d.split(".", 1)[1]: v for d, v in flat.items() if d.startswith(f"{name}.")} or None)
