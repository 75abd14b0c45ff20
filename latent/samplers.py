"""The candidate samplers: one signature, one registry.

Every sampler is `fn(occ, n, cfg, rng, zones) -> Draw`. `dark` is the method; `prior`,
`interpolate` and `lm` are the baselines the idea must beat. `lm` draws no latent: its texts
come from the base model's own temperature sampling (Draw.points is None).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from latent.config import SAMPLERS as SAMPLER_NAMES
from latent.config import SampleConfig
from latent.occupancy import OccupancyMap
from latent.zones import ZoneInfo, assign_zone


@dataclass
class Draw:
    points: np.ndarray | None  # (n, D) latents to decode; None: texts sampled from the base model
    density: np.ndarray | None  # (n,) density scores (> 1 = dark)
    zone_ids: list[int | None]  # the dark zone each point falls in (dark sampler only)


def sample_dark(occ: OccupancyMap, n: int, cfg: SampleConfig, rng: np.random.Generator):
    """The method: from envelope proposals keep the dark ones farthest from any corpus latent.

    Returns (points (n, D), density scores (n,), all dark proposals (M, D)). When fewer than n
    proposals are dark, the farthest proposals fill the rest (their density score says so).
    """
    pool = occ.envelope_samples(n * cfg.pool_factor, rng)
    score = occ.density_score(pool)
    order = np.argsort(-score, kind="stable")[:n]
    return pool[order], score[order], pool[score > 1]


def sample_prior(occ: OccupancyMap, n: int, rng: np.random.Generator):
    pts = occ.envelope_samples(n, rng)
    return pts, occ.density_score(pts)


def sample_interpolate(occ: OccupancyMap, n: int, rng: np.random.Generator):
    i = rng.integers(0, len(occ.latents), n)
    j = rng.integers(0, len(occ.latents), n)
    t = rng.uniform(0.25, 0.75, (n, 1)).astype(np.float32)
    pts = (1 - t) * occ.latents[i] + t * occ.latents[j]
    return pts.astype(np.float32), occ.density_score(pts)


def _dark(occ, n, cfg, rng, zones):
    pts, dens, _ = sample_dark(occ, n, cfg, rng)
    return Draw(pts, dens, assign_zone(zones, pts))


def _prior(occ, n, cfg, rng, zones):
    pts, dens = sample_prior(occ, n, rng)
    return Draw(pts, dens, [None] * n)


def _interpolate(occ, n, cfg, rng, zones):
    pts, dens = sample_interpolate(occ, n, rng)
    return Draw(pts, dens, [None] * n)


def _lm(occ, n, cfg, rng, zones):
    return Draw(None, None, [None] * n)


Sampler = Callable[[OccupancyMap, int, SampleConfig, np.random.Generator, list[ZoneInfo]], Draw]
SAMPLERS: dict[str, Sampler] = {"dark": _dark, "prior": _prior, "interpolate": _interpolate, "lm": _lm}
assert tuple(SAMPLERS) == SAMPLER_NAMES  # the config validates names against latent.config.SAMPLERS


def draw(name: str, occ: OccupancyMap, n: int, cfg: SampleConfig, rng: np.random.Generator,
         zones: list[ZoneInfo]) -> Draw:
    return SAMPLERS[name](occ, n, cfg, rng, zones)
