"""A run's context: its settings, domain, data, models, codec, backend and adapters.

What the stages and the experiments use to reach a run's resources (`RunContext`); the runner
(`loop.runner.Loop`) adds the stages, resume and invalidation on top. An experiment that reads a
finished run holds a context of that run and never the runner.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import random
from collections import Counter
from pathlib import Path

from sqlmodel import Session, select

from backends.base import get_backend
from common.errors import ConfigError, CorpusError
from domains.base import CorpusSplits, Domain, Text, get_domain
from domains.files import load_corpus
from judges.critic import load_rubric
from lm.base_model import check_model_path, load_base_model
from loop.artifacts import check, verify
from loop.config import Config
from sllm.codec import Codec, GenParams
from sllm.config import TRAINING_ONLY
from sllm.model import saved_config
from storage.db import stage_detail
from storage.layout import RunLayout
from storage.models import Candidate

log = logging.getLogger(__name__)

FALLBACK_NOTE = ("note: a {domain} corpus on the self-trained fallback base model (no --base-model). A model this "
                 "small, trained on this corpus alone, mostly memorises or garbles it, so this run cannot test "
                 "the idea; for real work pass a pretrained model: --base-model PATH_OR_HUB_ID")


class RunContext:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.out = Path(cfg.run.out)
        self.layout = RunLayout(self.out)
        self.domain: Domain = get_domain(cfg.corpus.domain_name)
        self.models: dict = {}
        self._data: CorpusSplits | None = None
        self._file_texts: list[str] | None = None

    # ----------------------------------------------------------------- helpers
    @property
    def data(self) -> CorpusSplits:
        if self._data is None:
            self._data = self.domain.load(self.cfg.corpus, self.cfg.run.seed)
        return self._data

    @property
    def fallback_note(self) -> str | None:
        """Set when the domain needs a pretrained model and the run trains its own small one."""
        if self.domain.needs_pretrained and not self.cfg.base.model:
            return FALLBACK_NOTE.format(domain=self.domain.name)
        return None

    def language_texts(self, topics: tuple[str, ...] | None = None) -> list[Text]:
        """The SLLM's extra training texts from the domain (sllm.false_texts of them; maths: false
        sentences), of `topics`, or of every topic the run does not leave out."""
        if topics is None and self.cfg.corpus.left_out:
            topics = tuple(t for t in self.domain.topics if t not in self.cfg.corpus.left_out)
        return self.domain.language_texts(self.cfg.corpus, self.cfg.run.seed, self.cfg.sllm.false_texts, topics)

    def sllm_file_texts(self) -> list[str]:
        """The texts of `sllm.texts_file` (none when unset); a file that cannot be read is refused."""
        if not self.cfg.sllm.texts_file:
            return []
        if self._file_texts is None:
            try:
                self._file_texts = [t.text for t in load_corpus(self.cfg.sllm.texts_file)]
            except CorpusError as e:
                raise ConfigError(f"sllm.texts_file: {e}") from None
        return self._file_texts

    def base_path(self) -> str:
        return self.cfg.base.model or str(self.layout.base)

    def adapter_for(self, session: Session, g: int) -> str | None:
        """The adapter the base model wears in generation g: the one retrained at the end of g-1."""
        if g == 0:
            return None
        d = stage_detail(session, g - 1, "retrain")
        return None if d is None else d.get("adapter")

    def model(self, adapter: str | None):
        key = (self.base_path(), adapter)
        if key not in self.models:
            self.models.clear()  # one model in memory at a time
            self.check_inputs(adapter)
            self.models[key] = load_base_model(self.base_path(), self.cfg.run.device, adapter=adapter)
        return self.models[key]

    def backend(self, adapter: str | None, loaded):
        """The decoding backend for this generation's model (transformers shares `loaded`)."""
        return get_backend(self.cfg.decode.backend, self.base_path(), adapter, self.cfg.run.device,
                           self.cfg.decode.batch_size, loaded=loaded, base_url=self.cfg.decode.base_url,
                           tensor_parallel_size=self.cfg.decode.tensor_parallel_size,
                           data_parallel_size=self.cfg.decode.data_parallel_size)

    def free(self) -> None:
        self.models.clear()
        gc.collect()

    def accepted_texts(self, session: Session, upto: int) -> list[str]:
        rows = session.exec(select(Candidate.text).where(Candidate.generation <= upto, Candidate.decision == "accepted")
                            .order_by(Candidate.generation, Candidate.seq))
        return [t for t in rows]

    def learned_texts(self, session: Session, upto: int) -> list[str]:
        """What the SLLM and the base model train on besides the corpus: the accepted texts up to
        generation `upto`, or, with retrain.source=corpus, as many corpus texts in their place (drawn
        per generation from the run seed, so a resumed run draws the same)."""
        accepted = self.accepted_texts(session, upto)
        if self.cfg.retrain.source == "accepted" or not accepted:
            return accepted
        counts = Counter(session.exec(select(Candidate.generation).where(Candidate.generation <= upto,
                                                                         Candidate.decision == "accepted")))
        corpus, out = self.data.train_texts, []
        for g in sorted(counts):
            rng = random.Random(f"{self.cfg.run.seed}:corpus-in-place:{g}")
            out += [rng.choice(corpus) for _ in range(counts[g])]
        return out

    def check_inputs(self, adapter: str | None) -> None:
        """Verify the trained base folder and `adapter` against their manifests before loading them."""
        if not self.cfg.base.model:
            check(self.layout.base, "the trained base model")
        if adapter is not None:
            check(adapter, "the LoRA adapter")

    def codec(self, g: int, model, tok):
        """Generation g's SLLM on `model` (a `Codec`), its decoder adapter attached. The codec's model
        takes `model`'s place in the model cache: the adapter is off outside the codec's decodes, so
        every other user sees the same model, and the next codec finds the adapter to replace."""
        check(self.layout.sllm(g), f"the SLLM checkpoint of generation {g}")
        codec = Codec.load(self.layout.sllm(g), model, tok)
        self.share_model(model, codec.model)
        return codec

    def gen_params(self, seed: int, temperature: float | None = None) -> GenParams:
        """How the run decodes latents (`decode.*`; `temperature` overrides the setting): with
        `decode.pick` parseable or closest, among beams the domain's verifier parses. Beam search is
        a greedy search: a decode at a temperature above 0 samples one text."""
        dc = self.cfg.decode
        temperature = dc.temperature if temperature is None else temperature
        if temperature > 0:
            return GenParams(dc.max_new_tokens, temperature, seed)
        accept = self.domain.parses if dc.pick != "top" else None
        return GenParams(dc.max_new_tokens, 0.0, seed, dc.beams, accept, closest=dc.pick == "closest")

    def init_codec(self, model, tok):
        """The SLLM generation 0 starts from (`sllm.init`) on `model`, in the model cache as `codec` does."""
        codec = Codec.load(self.cfg.sllm.init, model, tok)
        codec.sllm.cfg = self.cfg.sllm  # the same SLLM (checked), saved with this run's budget
        self.share_model(model, codec.model)
        return codec

    def check_sllm_init(self) -> None:
        """`sllm.init` is an intact SLLM folder built with these SLLM settings (the budget aside)."""
        init = self.cfg.sllm.init
        problem = verify(init)
        if problem is not None:
            raise ConfigError(f"sllm.init {init}: not an SLLM folder a run saved ({problem}); pass a run's "
                              "gen-NNN/sllm folder, or drop the setting")
        try:
            saved = saved_config(init)
        except ValueError as e:
            raise ConfigError(f"sllm.init {init}: {e}; pass a run's gen-NNN/sllm folder") from None
        diff = [f"sllm.{f.name} {getattr(saved, f.name)!r}" for f in dataclasses.fields(saved)
                if f.name not in TRAINING_ONLY and getattr(saved, f.name) != getattr(self.cfg.sllm, f.name)]
        if diff:
            raise ConfigError(f"sllm.init {init} was trained with other SLLM settings ({', '.join(diff[:4])}); "
                              "set them as it was trained, or drop sllm.init")

    def share_model(self, old, new) -> None:
        """`new` (the same weights, wrapped) replaces `old` in the model cache."""
        for k, (tok, m) in list(self.models.items()):
            if m is old:
                self.models[k] = (tok, new)

    def preflight(self) -> None:
        """Check the inputs before anything is written: bad input leaves no trace."""
        if self.cfg.base.model:
            check_model_path(self.cfg.base.model)
        if self.cfg.sllm.init:
            self.check_sllm_init()
        if self.cfg.decode.pick == "parseable" and self.domain.parses is None:
            raise ConfigError(f"decode.pick=parseable needs a domain that parses its texts; the {self.domain.name} "
                              "domain has no verifier: drop the setting")
        self.sllm_file_texts()  # an unreadable file fails now, not after the base model's training
        if self.cfg.judges.rubric:
            load_rubric(self.cfg.judges.rubric)  # a bad rubric file fails now, not after hours of training
            if self.domain.rule_critic is not None:
                log.warning("--rubric is ignored: the %s domain's critic is rule-based, not an LLM with a rubric",
                            self.domain.name)
        if len(self.data.train) < self.cfg.sample.k + 2:
            raise ConfigError(f"the corpus has {len(self.data.train)} training texts; the latent map needs at least {self.cfg.sample.k + 2}")

