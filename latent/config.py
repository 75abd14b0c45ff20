"""Settings of the occupancy map, the samplers and the zones."""
from __future__ import annotations

from dataclasses import dataclass, field

from common.errors import check as _check


SAMPLERS = ("dark", "prior", "interpolate", "lm")


@dataclass
class SampleConfig:
    n_candidates: int = 96  # per generation, split over `samplers`
    samplers: list[str] = field(default_factory=lambda: ["dark"])
    k: int = 5  # neighbours for the kNN occupancy score
    pool_factor: int = 20  # dark sampler: proposals drawn per kept candidate
    envelope_quantile: float = 0.99  # Mahalanobis radius of corpus latents that bounds the envelope
    # Dark = k-NN distance above this quantile of the corpus texts' own k-NN distances. 1.0 is
    # "darker than every corpus text", which one isolated corpus text can make all but unreachable;
    # 0.99 ignores the sparsest 1%.
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
