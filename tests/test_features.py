"""The feature dictionary and the compose sampler, on latents with planted features."""
import numpy as np
import pytest

from common.errors import ConfigError
from latent.config import FeatureConfig, SampleConfig
from latent.features import FeatureDictionary
from latent.occupancy import OccupancyMap
from latent.samplers import draw

D = 16
K = 10  # planted features
NEVER = (0, 3)  # each as common as the others, never together


def planted(n: int = 2000, seed: int = 0):
    """Texts = one to three of K orthonormal directions with positive weights, small noise; every
    pair of features occurs together except NEVER."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(D, D)))[0][:K]
    x = np.zeros((n, D))
    for r in range(n):
        while True:
            fs = rng.choice(K, rng.integers(1, 4), replace=False)
            if not set(NEVER) <= set(fs.tolist()):
                break
        x[r] = (rng.uniform(2, 3, (len(fs), 1)) * basis[fs]).sum(0)
    x += 0.05 * rng.normal(size=x.shape)
    return x.astype(np.float32), basis


@pytest.fixture(scope="module")
def fitted():
    x, basis = planted()
    fd = FeatureDictionary.fit(x, FeatureConfig(n_features=K, active=3, steps=600, batch_size=256, lr=1e-2,
                                                min_freq=0.05), seed=0)
    # which learned feature stands for which planted direction
    match = {p: int(np.argmax(fd.atoms @ basis[p])) for p in range(K)}
    return x, fd, match


def test_dictionary_recovers_the_planted_features_and_the_dark_pair(fitted):
    x, fd, match = fitted
    assert fd.stats["relative_error"] < 0.2, fd.stats
    assert len(set(match.values())) == K, match  # one learned feature per planted direction
    assert fd.freq.min() > 0.1  # every planted feature is common
    dark = {tuple(sorted(c)) for c in fd.combos[: fd.significant].tolist()}
    assert tuple(sorted((match[NEVER[0]], match[NEVER[1]]))) in dark
    assert len(dark) <= 2, dark  # the pairs the corpus does hold are not (one chance pair at most)
    # the corpus itself holds no dark combination; a text made of the missing pair does
    hit, share = fd.dark_combination_share(x)
    assert share < 0.02
    _, basis = planted()
    odd = (2.5 * basis[NEVER[0]] + 2.5 * basis[NEVER[1]])[None].astype(np.float32)
    assert fd.dark_combination_share(odd)[0].all()
    # the rarest pair a latent holds, against chance: the missing pair near 0, a common pair near 1
    common = (2.5 * basis[1] + 2.5 * basis[4])[None].astype(np.float32)
    assert fd.rarest_pair_lift(odd)[0] < 0.1 and 0.5 < fd.rarest_pair_lift(common)[0] < 2


def test_compose_draws_the_dark_pair_and_the_dictionary_reads_it_back(fitted, tmp_path):
    x, fd, match = fitted
    occ = OccupancyMap.fit(x, SampleConfig())
    d = draw("compose", occ, 40, SampleConfig(), np.random.default_rng(1), [], fd)
    assert d.points.shape == (40, D) and len(d.provenance) == 40
    assert all(len(p["features"]) == 2 and p["p"] <= FeatureConfig().combo_p for p in d.provenance)
    assert occ.inside(d.points).mean() > 0.9
    assert fd.keeps(d.points, [p["features"] for p in d.provenance]).mean() > 0.8
    # same rng, same draw; a saved dictionary loads equal and draws the same
    fd.save(tmp_path)
    fd2 = FeatureDictionary.load(tmp_path)
    d2 = draw("compose", occ, 40, SampleConfig(), np.random.default_rng(1), [], fd2)
    assert np.array_equal(d.points, d2.points) and d.provenance == d2.provenance
    assert FeatureDictionary.load(tmp_path / "nothing-here") is None


def test_compose_without_a_dictionary_says_what_to_set(fitted):
    x, _, _ = fitted
    occ = OccupancyMap.fit(x, SampleConfig())
    with pytest.raises(ConfigError, match="features.n_features"):
        draw("compose", occ, 4, SampleConfig(), np.random.default_rng(0), [], None)


def test_compose_in_the_loop_needs_a_dictionary():
    from loop.config import build_config

    with pytest.raises(ConfigError, match="features.n_features=0 fits none"):
        build_config(None, {"sample.samplers": "dark,compose", "features.n_features": "0"})
    assert build_config(None, {"sample.samplers": "dark,compose"}).sample.samplers == ["dark", "compose"]


@pytest.mark.parametrize("kw, msg", [({"n_features": 1}, "n_features"), ({"active": 0}, "active"),
                                      ({"n_features": 8, "active": 8}, "below"), ({"combo_p": 0}, "combo_p")])
def test_feature_settings_are_checked(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        FeatureConfig(**kw)


def test_a_database_made_before_provenance_gains_the_column(tmp_path):
    """Candidates gained a provenance column; an older run's database opens, reads and resumes."""
    import sqlite3

    from sqlmodel import Session, select

    from storage.db import open_db
    from storage.models import Candidate

    engine = open_db(tmp_path, create=True)
    with Session(engine) as s:
        s.add(Candidate(generation=0, seq=0, sampler="dark", text="1 plus 1 equals 2."))
        s.commit()
    engine.dispose()
    con = sqlite3.connect(tmp_path / "runs.db")
    con.execute("ALTER TABLE candidate DROP COLUMN provenance")  # as an older version made it
    con.commit()
    con.close()
    for create in (False, True):  # a reader (report, inspect) and a writer (resume)
        engine = open_db(tmp_path, create=create)
        with Session(engine) as s:
            c = s.exec(select(Candidate)).one()
            assert c.text == "1 plus 1 equals 2." and c.provenance is None
        engine.dispose()
