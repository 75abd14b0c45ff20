"""The occupancy map on FAISS: the exact path matches scikit-learn, the approximate
path reaches its recall floor, save/load round-trips, bad settings are clear errors."""
import json

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from bench.map import synthetic_latents
from common.errors import ConfigError
from latent.config import SampleConfig
from latent.occupancy import OccupancyMap


@pytest.fixture(scope="module")
def corpus():
    return synthetic_latents(3000, dim=64, seed=0)  # a mixture of anisotropic Gaussian clusters


@pytest.fixture(scope="module")
def exact(corpus):
    return OccupancyMap.fit(corpus, SampleConfig())


APPROX = SampleConfig(exact_max=1000, min_recall=0.9)  # 3000 latents > 1000: the IVF index


@pytest.fixture(scope="module")
def approx(corpus):
    return OccupancyMap.fit(corpus, APPROX)


def probes(occ, n=400, seed=1):
    return occ.envelope_samples(n, np.random.default_rng(seed))


def test_exact_path_matches_sklearn(corpus, exact):
    """The earlier map: sklearn NearestNeighbors, leave-one-out over every corpus latent."""
    k = exact.k
    nn = NearestNeighbors(n_neighbors=k + 1).fit(corpus)
    dist, _ = nn.kneighbors(corpus)  # column 0 is the point itself
    threshold = float(np.quantile(dist[:, k], SampleConfig().dark_quantile))
    assert exact.stats["index"] == "flat"
    assert exact.threshold == pytest.approx(threshold, rel=1e-5)
    q = np.concatenate([probes(exact), synthetic_latents(200, dim=64, seed=0, draw=7)])
    d_ref, i_ref = nn.kneighbors(q, n_neighbors=k)
    np.testing.assert_allclose(exact.density_score(q), d_ref[:, -1] / threshold, rtol=1e-5)
    np.testing.assert_array_equal(exact.nearest(q, k), i_ref)  # the same neighbours, in order
    d, i = exact.kneighbors(q, 3)
    np.testing.assert_allclose(d, d_ref[:, :3], rtol=1e-5)


def test_duplicates_count_as_neighbours_like_before():
    x = np.repeat(synthetic_latents(200, dim=16, seed=2), 3, axis=0)  # every text three times
    occ = OccupancyMap.fit(x, SampleConfig(k=2, dark_quantile=1.0))
    nn = NearestNeighbors(n_neighbors=3).fit(x)
    assert occ.threshold == pytest.approx(nn.kneighbors(x)[0][:, 2].max(), abs=1e-5)  # 0: two copies each (sklearn: ~3e-7 of rounding)


def test_approximate_path_reaches_its_recall_floor(exact, approx):
    occ = approx
    assert occ.stats["index"] == "ivf-sq8" and occ.stats["nprobe"] >= 1
    assert occ.stats["recall"] >= 0.9  # measured at fit time against brute force
    q = probes(exact, 300, seed=5)
    truth = exact.nearest(q, exact.k)
    found = occ.nearest(q, exact.k)
    recall = np.mean([len(set(a) & set(b)) / exact.k for a, b in zip(found, truth)])
    assert recall >= 0.85  # fresh queries, a little below the calibration floor at most
    assert occ.threshold == pytest.approx(exact.threshold, rel=0.02)
    d, i = occ.kneighbors(q, exact.k)
    assert (np.diff(d, axis=1) >= 0).all() and (i >= 0).all()


def test_threshold_on_a_sample_is_close_to_the_full_one(corpus, exact):
    occ = OccupancyMap.fit(corpus, SampleConfig(threshold_sample=1000, fit_sample=1000))
    assert occ.stats["threshold_sample"] == 1000 and occ.stats["fit_sample"] == 1000
    assert occ.threshold == pytest.approx(exact.threshold, rel=0.05)
    assert occ.is_dark(corpus).mean() <= 0.03


@pytest.mark.parametrize("name, cfg", [("exact", SampleConfig()), ("approx", APPROX)], ids=["flat", "ivf"])
def test_save_load_round_trip(tmp_path, request, name, cfg):
    occ = request.getfixturevalue(name)
    occ.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"latents.npy", "occupancy.json", "occupancy.npz"}
    back = OccupancyMap.load(tmp_path, cfg)
    q = probes(occ, 300, seed=9)
    np.testing.assert_array_equal(back.density_score(q), occ.density_score(q))
    np.testing.assert_array_equal(back.gmm_loglik(q), occ.gmm_loglik(q))
    np.testing.assert_array_equal(back.inside(q), occ.inside(q))
    np.testing.assert_array_equal(back.nearest(q), occ.nearest(q))
    assert (back.threshold, back.radius, back.gmm_threshold, back.k) == (occ.threshold, occ.radius, occ.gmm_threshold, occ.k)
    a, b = back.envelope_samples(50, np.random.default_rng(0)), occ.envelope_samples(50, np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
    assert back.calibrate(q) == occ.calibrate(q)


def test_load_refuses_other_settings_and_missing_files(tmp_path, exact):
    with pytest.raises(ConfigError, match="no saved occupancy map"):
        OccupancyMap.load(tmp_path)
    exact.save(tmp_path)
    with pytest.raises(ConfigError, match=r"sample\.k 5 -> 7"):
        OccupancyMap.load(tmp_path, SampleConfig(k=7))
    meta = json.loads((tmp_path / "occupancy.json").read_text())
    meta["format"] = 99
    (tmp_path / "occupancy.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="format"):
        OccupancyMap.load(tmp_path)


@pytest.mark.parametrize("setting, value, message", [
    ("exact_max", -1, "sample.exact_max must be >= 0"),
    ("min_recall", 0.0, r"sample.min_recall must be in \(0, 1\]"),
    ("min_recall", 1.5, r"sample.min_recall must be in \(0, 1\]"),
    ("ivf_nlist", -3, "sample.ivf_nlist must be >= 0"),
    ("threshold_sample", 10, "sample.threshold_sample must be >= 1000"),
    ("fit_sample", 0, "sample.fit_sample must be >= 1000"),
])
def test_bad_settings_are_clear_errors(setting, value, message):
    with pytest.raises(ConfigError, match=message):
        SampleConfig(**{setting: value})


def test_too_many_ivf_lists_is_a_clear_error(corpus):
    with pytest.raises(ConfigError, match="sample.ivf_nlist=500 needs at least 19500"):
        OccupancyMap.fit(corpus, SampleConfig(exact_max=0, ivf_nlist=500))
