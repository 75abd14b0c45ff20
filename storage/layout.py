"""Where a run folder keeps what: one object instead of path literals in every reader.

    RUN_DIR/runs.db            the database (SQLite; or the run's schema in --db)
    RUN_DIR/base/              the self-trained base model (absent with --base-model)
    RUN_DIR/cache/             embedding caches
    RUN_DIR/gen-NNN/sllm/      generation NNN's SLLM checkpoint
    RUN_DIR/gen-NNN/map/       its occupancy map (latents.npy, eval_latents.npy, probes.npy, ...)
    RUN_DIR/gen-NNN/adapter/   the LoRA adapter retrained at its end
    RUN_DIR/experiments/       experiment JSON and pictures
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from storage.db import DB_NAME


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    GEN_GLOB = "gen-*"  # every generation folder, for readers that walk them

    @property
    def db(self) -> Path:
        return self.root / DB_NAME

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def experiments(self) -> Path:
        return self.root / "experiments"

    def gen(self, g: int) -> Path:
        return self.root / f"gen-{g:03d}"

    def sllm(self, g: int) -> Path:
        return self.gen(g) / "sllm"

    def map(self, g: int) -> Path:
        return self.gen(g) / "map"

    def adapter(self, g: int) -> Path:
        return self.gen(g) / "adapter"
