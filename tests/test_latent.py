"""The occupancy map on synthetic latents: two Gaussian blobs with an empty gap between them."""
import numpy as np
import pytest

from latent.config import SampleConfig
from latent.occupancy import OccupancyMap
from latent.samplers import sample_dark, sample_interpolate, sample_prior
from latent.zones import assign_zone, find_zones

D = 6


def blobs(n: int, seed: int) -> np.ndarray:
    """(2n, D): blob A centred at -6 e0, blob B at +6 e0, unit spread; nothing near the origin."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, D))
    a[:, 0] -= 6
    b = rng.standard_normal((n, D))
    b[:, 0] += 6
    return np.concatenate([a, b]).astype(np.float32)


@pytest.fixture(scope="module")
def occ():
    return OccupancyMap.fit(blobs(300, 0), SampleConfig())


def gap_points(n=20, seed=3):
    g = np.zeros((n, D), np.float32)
    g[:, 1:] = np.random.default_rng(seed).standard_normal((n, D - 1)) * 0.3
    return g


def test_gap_is_dark_and_inside(occ):
    gap = gap_points()
    assert (occ.density_score(gap) > 1).all()
    assert occ.inside(gap).all()
    assert occ.is_dark(gap).all()
    assert occ.gmm_dark(gap).all()  # the density model agrees


def test_corpus_points_are_not_dark(occ):
    assert occ.is_dark(occ.latents).mean() <= 0.01  # sample.dark_quantile=0.99: the sparsest 1% at most
    strict = OccupancyMap.fit(occ.latents, SampleConfig(dark_quantile=1.0))
    assert not strict.is_dark(strict.latents).any()  # 1.0: darker than every corpus text
    assert strict.threshold > occ.threshold
    assert not occ.gmm_dark(occ.latents).any()  # the GMM threshold is the lowest corpus likelihood


def test_far_outside_is_outside_the_envelope(occ):
    far = np.zeros((5, D), np.float32)
    far[:, 0] = 60
    assert not occ.inside(far).any()
    assert not occ.is_dark(far).any()  # far away is "outside", not "dark"


def test_heldout_from_the_same_blobs_is_rarely_dark(occ):
    c = occ.calibrate(blobs(200, 1))
    assert c["heldout"] == 400
    assert c["false_dark_rate"] <= 0.05
    assert c["false_dark_rate_gmm"] <= 0.05
    assert 0 <= c["outside_rate"] <= 0.05
    assert occ.calibrate(np.zeros((0, D)))["false_dark_rate"] is None


def test_zones_found_in_the_gap(occ):
    probe = occ.envelope_samples(2000, np.random.default_rng(2))
    dark = probe[occ.is_dark(probe)]
    zones = find_zones(occ, dark, 2000, 4, seed=0)
    assert 1 <= len(zones) <= 4
    assert any(abs(float(z.centre[0])) < 3 for z in zones)  # a zone between the blobs
    for z in zones:
        assert z.n_points > 0 and z.radius > 0 and 0 < z.volume < 1 and len(z.neighbours) == 3
    assert set(assign_zone(zones, gap_points())) <= {z.label for z in zones}


def test_samplers_shapes_and_darkness(occ):
    rng = np.random.default_rng(0)
    pts, dens, pool_dark = sample_dark(occ, 16, SampleConfig(), rng)
    assert pts.shape == (16, D) and dens.shape == (16,)
    prior, pdens = sample_prior(occ, 16, rng)
    interp, _ = sample_interpolate(occ, 16, rng)
    assert prior.shape == interp.shape == (16, D)
    assert occ.inside(pts).all() and occ.inside(prior).all()
    assert dens.mean() > pdens.mean()  # the dark sampler keeps the darkest proposals
    assert (occ.density_score(pool_dark) > 1).all()


def test_too_few_points_is_a_clear_error():
    with pytest.raises(ValueError, match="at least"):
        OccupancyMap.fit(np.zeros((3, D), np.float32), SampleConfig())


def test_envelope_draws_the_discarded_directions_too():
    """96 dimensions, 8 of them structured, the map's PCA keeps 32: the other 64 hold most of each
    latent's spread. Probabilistic-PCA proposals are spread like the corpus there, so their k-NN
    distances are the corpus texts' own; principal-subspace proposals sit at the mean there, nearer
    every corpus text than the texts lie to each other, and read as occupied."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 96)).astype(np.float32)
    x[:, :8] *= 3
    x[:1500, 0] += 12
    m = OccupancyMap.fit(x, SampleConfig())
    assert m.pca.n_components_ == 32

    def residual(p):
        return np.median(np.linalg.norm(p - m.pca.inverse_transform(m.pca.transform(p)), axis=1))

    ppca = m.envelope_samples(2000, np.random.default_rng(1))
    flat = m.envelope_samples(2000, np.random.default_rng(1), "subspace")
    # the same principal coordinates (drawn first), inside the envelope either way
    np.testing.assert_allclose(m.pca.transform(ppca), m.pca.transform(flat), atol=1e-3)
    assert m.inside(ppca).all() and m.inside(flat).all()
    assert residual(flat) < 1e-3
    assert abs(residual(ppca) / residual(x) - 1) < 0.05
    corpus = np.median(m.loo_distance(np.arange(500))) / m.threshold
    assert abs(np.median(m.density_score(ppca)) / corpus - 1) < 0.05
    assert np.median(m.density_score(flat)) < 0.9 * corpus
    assert m.is_dark(ppca).mean() > 5 * m.is_dark(flat).mean()
    with pytest.raises(Exception, match="sample.envelope"):
        m.envelope_samples(4, np.random.default_rng(0), "sphere")
    with pytest.raises(Exception, match="sample.envelope"):
        SampleConfig(envelope="sphere")
