"""The candidate samplers: one signature, one registry that a sampler joins from its own file.

A sampler is a `SamplerSpec`: a name, a draw function `fn(ctx, n) -> Draw` and what the rest
of the tool needs to know about it (whether it draws latents at all, whether it decodes while it
samples, how pictures draw it, which baselines it claims to beat). `register_sampler(spec)`
adds one; the loop's settings, the sample stage, the discovery experiment, its pictures and the
CLI help read the registry, so a new sampler is one file:

    from latent.samplers import Draw, SamplerSpec, register_sampler

    def _corner(ctx, n):
        pts = ctx.occ.envelope_samples(n, ctx.rng) * 1.5
        return Draw(pts, ctx.occ.density_score(pts), [None] * n)

    register_sampler(SamplerSpec("corner", _corner, help="envelope proposals pushed outwards"))

Built in: `dark` (the method: geometric holes), `compose` (dark combinations of the map's feature
dictionary, `latent.features`), the baselines `prior`, `interpolate` and `lm` (the base model's
own sampling, no latent), and `dark-kept`, which decodes as it samples and keeps only decodes
still dark once re-encoded (so only the discovery experiment, which hands it a decoder, runs it).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from common.errors import ConfigError
from common.registry import Registry
from latent.config import SampleConfig
from latent.zones import ZoneInfo, assign_zone

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the map (FAISS, scikit-learn, torch) loads where a map is fitted or read, not with the registry
    from latent.features import FeatureDictionary
    from latent.occupancy import OccupancyMap


@dataclass
class Draw:
    points: np.ndarray | None  # (n, D) latents to decode; None: texts sampled from the base model
    density: np.ndarray | None  # (n,) density scores (> 1 = dark)
    zone_ids: list[int | None]  # the dark zone each point falls in (None outside a zone or not looked up)
    # A sampler that decodes as it samples (SamplerSpec.feedback) returns its decodes, their own
    # latents and the decodes it spent to find them (kept or not).
    texts: list[str] | None = None
    reencoded: np.ndarray | None = None
    spent: int | None = None
    # Where each point came from, stored with its candidate (JSON); a "features" list there is checked
    # once the decode is re-encoded: does the decode still activate every one of them?
    provenance: list[dict | None] | None = None


@dataclass(frozen=True)
class SamplerContext:
    """What a sampler may use. `features` is the map's feature dictionary (None where none was
    fitted). `decode(points, temperature, seed) -> texts` and `encode(texts) -> latents` are given
    to feedback samplers only."""
    occ: OccupancyMap
    cfg: SampleConfig
    rng: np.random.Generator
    zones: list[ZoneInfo] = field(default_factory=list)
    seed: int = 0
    decode: Callable[[np.ndarray, float, int], list[str]] | None = None
    encode: Callable[[list[str]], np.ndarray] | None = None
    features: FeatureDictionary | None = None


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    fn: Callable[[SamplerContext, int], Draw]
    help: str = ""
    # False: the sampler draws no latent; the caller asks the base model for texts (Draw.points None).
    latent: bool = True
    # True: the sampler decodes while it samples (needs SamplerContext.decode/encode), so the loop's
    # sample stage, which stores latents for the decode stage, cannot run it; the discovery experiment does.
    feedback: bool = False
    colour: str = "#7f7f7f"  # in the pictures and the report
    marker: str = "o"  # matplotlib marker in the discovery picture
    # It draws from the map's feature dictionary (SamplerContext.features): refused with features.n_features=0.
    needs_features: bool = False
    # The baselines this sampler is a method against, with the yield ratio it must reach over each:
    # the discovery experiment prints "<name> vs <baseline>" headlines for them.
    beats: dict[str, float] = field(default_factory=dict)


_REGISTRY: Registry[SamplerSpec] = Registry("sampler")


def register_sampler(spec: SamplerSpec) -> SamplerSpec:
    """Add a sampler; a second sampler under a taken name is refused (`unregister_sampler` the
    first to replace it)."""
    if "," in spec.name:  # settings list samplers comma-separated
        raise ValueError(f"sampler name {spec.name!r}: give a name without commas")
    return _REGISTRY.add(spec.name, spec)


def unregister_sampler(name: str) -> None:
    _REGISTRY.remove(name)


def samplers() -> dict[str, SamplerSpec]:
    """Every registered sampler, in registration order."""
    return _REGISTRY.items()


def get_sampler(name: str) -> SamplerSpec:
    spec = _REGISTRY.get(name)
    if spec is None:
        raise ConfigError(f"unknown sampler {name!r}; choose from {', '.join(samplers())} "
                          "(a plugin's sampler: pass --plugin MODULE)")
    return spec


def check_loop_samplers(names: list[str], features: bool = True) -> None:
    """Refuse, in one line, a `sample.samplers` entry the loop cannot run (`features`: whether the map
    stage fits a feature dictionary)."""
    for name in names:
        if name not in _REGISTRY:
            loopable = [n for n, s in samplers().items() if not s.feedback]
            raise ConfigError(f"sample.samplers: unknown sampler {name!r}; choose from {', '.join(loopable)} "
                              "(a plugin's sampler: pass --plugin MODULE)")
        if get_sampler(name).feedback:
            raise ConfigError(f"sample.samplers: {name!r} decodes while it samples, which the loop's sample stage "
                              f"cannot do; run it with `python run.py experiment discovery --only {name}`")
        if get_sampler(name).needs_features and not features:
            raise ConfigError(f"sample.samplers: {name!r} draws from the map's feature dictionary, and "
                              "features.n_features=0 fits none; set features.n_features (e.g. 256) or drop it")


def draw(name: str, occ: OccupancyMap, n: int, cfg: SampleConfig, rng: np.random.Generator,
         zones: list[ZoneInfo], features: FeatureDictionary | None = None) -> Draw:
    """n candidates from the named sampler (one without decode feedback)."""
    return get_sampler(name).fn(SamplerContext(occ, cfg, rng, zones, features=features), n)


# ----------------------------------------------------------------------------- built in
def sample_dark(occ: OccupancyMap, n: int, cfg: SampleConfig, rng: np.random.Generator):
    """The method: from envelope proposals keep the dark ones farthest from any corpus latent.

    Returns (points (n, D), density scores (n,), all dark proposals (M, D)). When fewer than n
    proposals are dark, the farthest proposals fill the rest (their density score says so).
    """
    pool = occ.envelope_samples(n * cfg.pool_factor, rng, cfg.envelope)
    score = occ.density_score(pool)
    order = np.argsort(-score, kind="stable")[:n]
    return pool[order], score[order], pool[score > 1]


def sample_prior(occ: OccupancyMap, n: int, rng: np.random.Generator, envelope: str = "ppca"):
    pts = occ.envelope_samples(n, rng, envelope)
    return pts, occ.density_score(pts)


def sample_interpolate(occ: OccupancyMap, n: int, rng: np.random.Generator):
    i = rng.integers(0, len(occ.latents), n)
    j = rng.integers(0, len(occ.latents), n)
    t = rng.uniform(0.25, 0.75, (n, 1)).astype(np.float32)
    pts = (1 - t) * occ.latents[i] + t * occ.latents[j]
    return pts.astype(np.float32), occ.density_score(pts)


KEPT_TRIES = 4  # decodes per proposed latent: greedy, then sampled at KEPT_TEMPERATURE
KEPT_TEMPERATURE = 0.8
KEPT_MAX_FACTOR = 10  # dark-kept stops after this many decodes per budget slot, kept or not


def kept_dark(occ: OccupancyMap, budget: int, cfg: SampleConfig, rng: np.random.Generator, zones: list[ZoneInfo],
              decode, encode, seed: int, tries: int = KEPT_TRIES, temperature: float = KEPT_TEMPERATURE,
              max_factor: int = KEPT_MAX_FACTOR):
    """Decodes whose own latent is dark: (sampled latents (n, D), texts, re-encoded latents (n, D),
    decodes spent), n <= budget. It proposes dark latents, decodes each several times (greedy,
    then sampled), re-encodes every decode and keeps distinct decodes still dark, until the
    budget is filled or max_factor * budget decodes are spent.
    `decode(points, temperature, seed) -> texts`, `encode(texts) -> latents`."""
    pts, texts, z2s, seen, spent, rnd = [], [], [], set(), 0, 0
    while len(texts) < budget and spent < max_factor * budget:
        z = sample_dark(occ, budget, cfg, rng)[0]
        for t in range(tries):
            out = decode(z, 0.0 if t == 0 else temperature, seed + 7919 * rnd + t)
            spent += len(out)
            z2 = encode([x or " " for x in out])
            for i in np.flatnonzero(occ.is_dark(z2)):
                if out[i] and out[i] not in seen and len(texts) < budget:
                    seen.add(out[i])
                    pts.append(z[i]), texts.append(out[i]), z2s.append(z2[i])
            if len(texts) >= budget or spent >= max_factor * budget:
                break
        rnd += 1
    d = z.shape[1]
    return (np.stack(pts) if pts else np.zeros((0, d), np.float32), texts,
            np.stack(z2s) if z2s else np.zeros((0, d), np.float32), spent)


def _dark(ctx: SamplerContext, n: int) -> Draw:
    pts, dens, _ = sample_dark(ctx.occ, n, ctx.cfg, ctx.rng)
    return Draw(pts, dens, assign_zone(ctx.zones, pts))


def _prior(ctx: SamplerContext, n: int) -> Draw:
    pts, dens = sample_prior(ctx.occ, n, ctx.rng, ctx.cfg.envelope)
    return Draw(pts, dens, [None] * n)


def _interpolate(ctx: SamplerContext, n: int) -> Draw:
    pts, dens = sample_interpolate(ctx.occ, n, ctx.rng)
    return Draw(pts, dens, [None] * n)


def _lm(ctx: SamplerContext, n: int) -> Draw:
    return Draw(None, None, [None] * n)


def _dark_kept(ctx: SamplerContext, n: int) -> Draw:
    if ctx.decode is None or ctx.encode is None:
        raise ConfigError("the dark-kept sampler decodes as it samples: call it with a decoder and an encoder")
    pts, texts, z2, spent = kept_dark(ctx.occ, n, ctx.cfg, ctx.rng, ctx.zones, ctx.decode, ctx.encode, ctx.seed)
    dens = ctx.occ.density_score(pts) if len(pts) else np.zeros(0)
    return Draw(pts, dens, assign_zone(ctx.zones, pts) if len(pts) else [], texts=texts, reencoded=z2, spent=spent)


COMPOSE_PROPOSALS = 4  # compose: proposals per candidate; the first inside the envelope is kept


def compose(occ: OccupancyMap, fd: FeatureDictionary, n: int, rng: np.random.Generator):
    """Latents that hold a dark combination of features: the dictionary's decoder on a sparse code
    with only the pair active, mixed w : 1-w (w uniform in [0.3, 0.7]) of each feature's median
    activation and scaled to the norm of a random corpus text's code, so the code is scaled like the
    corpus's codes. Of COMPOSE_PROPOSALS proposals per candidate the first inside the envelope is
    kept (the first proposal where none is).

    A corpus latent given the pair's missing feature does not hold the pair: the dictionary's own
    encoder then reads one of the two (8% kept on maths, 4% on molecules), so the code is built whole.

    Returns (points (n, D), provenance {"features": [i, j], "activations": [a_i, a_j], "p"} per point).
    Draws from the significant dark combinations; where the corpus has none (a small corpus), from
    the least co-active pairs, whose provenance carries their p."""
    m = fd.significant or len(fd.combos)
    if not fd.significant and len(fd.combos):
        log.warning("the feature dictionary found no dark combination at features.combo_p=%g over %d corpus latents; "
                    "compose draws from the %d least co-active pairs instead (their p is in each candidate's "
                    "provenance)", fd.stats.get("combo_p", float("nan")), len(fd.top), len(fd.combos))
    if m == 0:
        raise ConfigError("the compose sampler needs feature pairs to compose, and this map's feature dictionary "
                          "has none; raise features.n_features or lower features.min_freq")
    total = n * COMPOSE_PROPOSALS
    pick = rng.integers(0, m, total)
    w = rng.uniform(0.3, 0.7, total)
    code_norm = np.sqrt((fd.top_values.astype(np.float64) ** 2).sum(1))
    target = code_norm[rng.integers(0, len(code_norm), total)]
    i, j = fd.combos[pick, 0], fd.combos[pick, 1]
    act = np.stack([w * fd.typical[i], (1 - w) * fd.typical[j]], axis=1)
    act *= (target / np.maximum(np.linalg.norm(act, axis=1), 1e-12))[:, None]
    pts = (fd.mean + fd.scale * (act[:, :1] * fd.atoms[i] + act[:, 1:] * fd.atoms[j])).astype(np.float32)
    inside = occ.inside(pts).reshape(n, COMPOSE_PROPOSALS)
    keep = np.arange(n) * COMPOSE_PROPOSALS + np.where(inside.any(1), inside.argmax(1), 0)
    prov = [{"features": [int(i[t]), int(j[t])], "activations": [round(float(act[t, 0]), 4), round(float(act[t, 1]), 4)],
             "p": float(fd.combo_p[pick[t]])} for t in keep]
    return pts[keep], prov


def _compose(ctx: SamplerContext, n: int) -> Draw:
    if ctx.features is None:
        raise ConfigError("the compose sampler draws from the map's feature dictionary, and this map has none; "
                          "set features.n_features above 0 and run the map stage again")
    pts, prov = compose(ctx.occ, ctx.features, n, ctx.rng)
    return Draw(pts, ctx.occ.density_score(pts), [None] * n, provenance=prov)


register_sampler(SamplerSpec("dark", _dark, "envelope proposals farthest from every corpus latent (the method)",
                             colour="#313695", marker="o", beats={"lm": 3.0, "prior": 1.5}))
register_sampler(SamplerSpec("dark-kept", _dark_kept, "dark proposals decoded several times, only decodes "
                             "still dark once re-encoded kept", feedback=True, colour="#1a9850", marker="P"))
register_sampler(SamplerSpec("compose", _compose, "two features that no corpus text holds together (a dark "
                             "combination of the map's feature dictionary), decoded as one code", colour="#762a83", marker="*",
                             needs_features=True, beats={"lm": 2.0, "dark": 1.0}))
register_sampler(SamplerSpec("prior", _prior, "uniform draws in the corpus latents' envelope",
                             colour="#74add1", marker="s"))
register_sampler(SamplerSpec("interpolate", _interpolate, "points between two corpus latents",
                             colour="#f46d43", marker="^"))
register_sampler(SamplerSpec("lm", _lm, "the base model's own temperature sampling, no latent",
                             latent=False, colour="#a50026", marker="D"))
