"""SQLModel tables: one run per database file, its generations' stages, candidates and results."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Column, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 1


def now() -> datetime:
    return datetime.now(timezone.utc)


class Run(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=now)
    schema_version: int = SCHEMA_VERSION
    seed: int
    config_json: str  # full config snapshot
    config_hash: str  # hash of the settings that change results (resume key)
    versions_json: str  # python, torch, transformers, peft, ... at creation


class Stage(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("generation", "name"),)
    id: int | None = Field(default=None, primary_key=True)
    generation: int = Field(index=True)
    name: str  # base, sllm, map, sample, decode, judge, retrain, evaluate
    status: str = "done"  # a row exists only once the stage committed
    started_at: datetime
    finished_at: datetime = Field(default_factory=now)
    seconds: float
    detail_json: str = "{}"  # artifacts written, losses, counts


class Candidate(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("generation", "seq"),)
    id: int | None = Field(default=None, primary_key=True)
    generation: int = Field(index=True)
    seq: int  # index within the generation (stable across resumes)
    sampler: str = Field(index=True)  # a registered sampler's name (latent.samplers)
    zone_id: int | None = None  # zone label within the generation, for dark samples
    # JSON: where a sampler took the point from; compose: {"features": [kept, added], "base_row", "p"}
    provenance: str | None = None
    latent: bytes | None = Field(default=None, sa_column=Column(LargeBinary))  # float32 bytes
    latent_norm: float | None = None
    density_score: float | None = None  # kNN distance / dark threshold (> 1 = dark)
    text: str | None = None  # set by the decode stage
    verdict: str | None = None  # verifier status: true / false / unparseable
    fact_key: str | None = None
    true_new: bool | None = None  # verified true and absent from the training corpus
    total: float | None = None  # combiner's weighted score
    decision: str | None = Field(default=None, index=True)  # accepted / rejected
    reason: str | None = None


class Score(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("candidate_id", "judge"),)
    id: int | None = Field(default=None, primary_key=True)
    candidate_id: int = Field(foreign_key="candidate.id", index=True)
    judge: str
    score: float | None
    reason: str
    detail_json: str = "{}"


class Zone(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("generation", "label"),)
    id: int | None = Field(default=None, primary_key=True)
    generation: int = Field(index=True)
    label: int
    n_points: int  # dark probe points in the zone
    centre: bytes = Field(sa_column=Column(LargeBinary))
    radius: float  # mean distance of its points to the centre
    volume: float  # share of the envelope's probe points that fell in this zone
    axes_json: str = "[]"  # principal-axis spreads (std along each of the top axes)
    neighbours_json: str = "[]"  # nearest occupied (corpus) texts to the centre
    decoded: str | None = None  # what the centre decodes to


class Metric(SQLModel, table=True):
    generation: int = Field(primary_key=True)
    acceptance_rate: float
    truth_rate: float | None  # share of decoded texts the verifier calls true
    true_new: int
    accepted: int
    candidates: int
    heldout_ppl: float
    novelty: float | None  # mean novelty distance of accepted texts
    distinct_2: float | None  # distinct bigram share of accepted texts
    dark_share: float | None  # share of samples whose density score marks them dark
    timings_json: str = "{}"
    line: str  # the printed metrics line


class ExperimentRun(SQLModel, table=True):
    """One `python run.py experiment NAME` invocation: its settings, result tables, artifacts."""
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)  # discovery, holdout
    created_at: datetime = Field(default_factory=now)
    seconds: float | None = None  # wall time of the experiment
    settings_json: str = "{}"  # the experiment's own flags plus the run config snapshot
    result_json: str = "{}"  # the figures: per-sampler (or per-group) means, CIs, yields
    table: str = ""  # the printed table, as printed
    artifacts_json: str = "{}"  # paths of the PNG / JSON written


class ExperimentSample(SQLModel, table=True):
    """One decoded text of an experiment: a sampler's candidate (discovery) or one decoder's
    reconstruction of a topic text (holdout; `kind` is GROUP/DECODER, `source` the original)."""
    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experimentrun.id", index=True)
    kind: str = Field(index=True)  # sampler name or e.g. topic/nn1
    seed: int = 0
    text: str | None = None
    source: str | None = None  # holdout: the original text encoded
    verdict: str | None = None  # verifier status: true / false / unparseable
    fact_key: str | None = None
    true_new: bool | None = None
    accepted: bool | None = None
    reason: str | None = None
    novelty: float | None = None  # cosine distance to the nearest corpus text
    density_score: float | None = None  # kNN distance / dark threshold (> 1 = dark)
    dark: bool | None = None  # dark and inside the envelope
    x: float | None = None  # 2-D projection (PCA of the corpus latents), for the picture
    y: float | None = None
    detail_json: str = "{}"
