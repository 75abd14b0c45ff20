"""Settings of the occupancy map, the samplers and the zones."""
from __future__ import annotations

from dataclasses import dataclass, field

from common.errors import check as _check

ENVELOPES = ("ppca", "subspace")  # sample.envelope: how OccupancyMap.envelope_samples draws (see there)



@dataclass
class SampleConfig:
    # Per generation, split over `samplers`. 1000 so that a generation's yield (about 10% accepted,
    # a few % true and new) is counted in hundreds rather than tens, while decode + judge stay under
    # a quarter of a generation's time on 2 CPU cores (docs/generate-side.md). Decode and
    # judge take them in chunks (decode.chunk_size, judges.batch_size), so memory does not grow with it.
    n_candidates: int = 1000
    # Registered samplers (latent.samplers), checked against the registry when the run's settings are
    # built (loop.config.build_config), since plugins may register more than the built-in ones.
    samplers: list[str] = field(default_factory=lambda: ["dark"])
    k: int = 5  # neighbours for the kNN occupancy score
    pool_factor: int = 20  # dark sampler: proposals drawn per kept candidate
    envelope_quantile: float = 0.99  # Mahalanobis radius of corpus latents that bounds the envelope
    # How envelope proposals (the dark and prior samplers, the zone probes) are drawn: "ppca", the
    # corpus latents' probabilistic PCA, principal coordinates plus the discarded directions' noise;
    # "subspace", the principal coordinates alone (nearer the corpus than its own texts in the
    # discarded directions: on molecules no proposal is dark). Not a map setting: a saved map serves both.
    envelope: str = "ppca"
    # Dark = k-NN distance above this quantile of the corpus texts' own k-NN distances. 1.0 is
    # "darker than every corpus text", which one isolated corpus text can make all but unreachable;
    # 0.99 ignores the sparsest 1%.
    dark_quantile: float = 0.99
    n_zones: int = 8  # clusters of dark points described as zones
    # The occupancy map at scale (figures in docs/bench-map.md). Up to exact_max corpus
    # latents kNN search is exact (FAISS IndexFlatL2); above, an IVF-SQ8 index whose nprobe is
    # raised at fit time until its recall@k, measured against brute force, reaches min_recall.
    exact_max: int = 25_000  # the default maths corpus (~17,000 texts) stays exact
    min_recall: float = 0.95
    ivf_nlist: int = 0  # IVF lists; 0 = about sqrt(corpus size)
    # Above these sizes the dark threshold's leave-one-out quantile is estimated on a random
    # sample of threshold_sample corpus latents (queried against all of them), and the PCA
    # envelope and the GMM are fitted on fit_sample of them.
    threshold_sample: int = 20_000
    fit_sample: int = 20_000

    def __post_init__(self):
        _check(self.n_candidates >= 1, f"sample.n_candidates must be >= 1, got {self.n_candidates}")
        _check(len(self.samplers) >= 1, "sample.samplers must name at least one sampler")
        _check(self.k >= 1, f"sample.k must be >= 1, got {self.k}")
        _check(self.pool_factor >= 1, f"sample.pool_factor must be >= 1, got {self.pool_factor}")
        _check(0.5 <= self.dark_quantile <= 1, f"sample.dark_quantile must be in [0.5, 1], got {self.dark_quantile}")
        _check(0.5 <= self.envelope_quantile <= 1, f"sample.envelope_quantile must be in [0.5, 1], got {self.envelope_quantile}")
        _check(self.envelope in ENVELOPES, f"sample.envelope must be one of {', '.join(ENVELOPES)}, got {self.envelope!r}")
        _check(self.n_zones >= 1, f"sample.n_zones must be >= 1, got {self.n_zones}")
        _check(self.exact_max >= 0, f"sample.exact_max must be >= 0 (0: always the approximate index), got {self.exact_max}")
        _check(0 < self.min_recall <= 1, f"sample.min_recall must be in (0, 1], got {self.min_recall}")
        _check(self.ivf_nlist >= 0, f"sample.ivf_nlist must be >= 0 (0: about sqrt of the corpus size), got {self.ivf_nlist}")
        _check(self.threshold_sample >= 1000, f"sample.threshold_sample must be >= 1000 (fewer makes the "
               f"{self.dark_quantile} quantile noisy), got {self.threshold_sample}")
        _check(self.fit_sample >= 1000, f"sample.fit_sample must be >= 1000 (the PCA and GMM fits), got {self.fit_sample}")


@dataclass
class FeatureConfig:
    """The feature dictionary the map stage fits over the corpus latents (latent.features): a TopK
    sparse autoencoder whose features are directions, each text a few of them at once, and the
    dark combinations of its features (pairs that each fire often but far more rarely together than
    independence predicts). Defaults measured in docs/features.md."""
    n_features: int = 256  # dictionary size (0: fit no dictionary; the compose sampler then has nothing to draw)
    active: int = 8  # features in each text's code (TopK)
    # of those, a slot counts as active (for frequencies, co-activation and the checks) from this share
    # of the code's strongest activation: the weakest slots of a TopK code are the fit's noise
    floor: float = 0.1
    steps: int = 300  # Adam steps of the fit: a fixed cost whatever the corpus size (at most 100 passes over it)
    batch_size: int = 256  # corpus latents per step
    lr: float = 3e-3
    min_freq: float = 0.01  # a combination's features must each be active in at least this share of the corpus
    # A pair is a dark combination when its co-activation count is this improbable under independence
    # (Poisson lower tail at the expected count n * f_i * f_j); 1e-3 over a few thousand tested pairs
    # leaves a handful of chance ones.
    combo_p: float = 1e-3
    max_combos: int = 256  # dark combinations kept, most improbable first

    def __post_init__(self):
        _check(self.n_features == 0 or 2 <= self.n_features <= 4096,
               f"features.n_features must be 0 (none) or in [2, 4096], got {self.n_features}")
        _check(self.active >= 1 and (self.n_features == 0 or self.active < self.n_features),
               f"features.active must be >= 1 and below features.n_features, got {self.active}")
        _check(0 <= self.floor < 1, f"features.floor must be in [0, 1), got {self.floor}")
        _check(self.steps >= 1, f"features.steps must be >= 1, got {self.steps}")
        _check(self.batch_size >= 1, f"features.batch_size must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, f"features.lr must be > 0, got {self.lr}")
        _check(0 <= self.min_freq < 1, f"features.min_freq must be in [0, 1), got {self.min_freq}")
        _check(0 < self.combo_p <= 1, f"features.combo_p must be in (0, 1], got {self.combo_p}")
        _check(self.max_combos >= 1, f"features.max_combos must be >= 1, got {self.max_combos}")
