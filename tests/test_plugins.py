"""A sampler, a judge and a domain defined in this file alone, registered through the public
registries, and run through a tiny loop and the discovery experiment: no product file names them."""
import json
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from common.errors import ConfigError
from domains.base import Domain, Text, Verdict, register_domain, unregister_domain
from judges.base import JudgeScore, JudgeSpec, register_judge, unregister_judge
from latent.samplers import Draw, SamplerSpec, register_sampler, unregister_sampler
from tests.test_loop import ROOT, TINY_MODELS, other_domain

_CLAIM = re.compile(r"^(\d+) is (even|odd)\.$")


def _verify(text: str) -> Verdict:
    m = _CLAIM.match(text.strip())
    if not m:
        return Verdict("unparseable", None, None)
    n, said = int(m.group(1)), m.group(2)
    truth = "even" if n % 2 == 0 else "odd"
    return Verdict("true" if said == truth else "false", f"parity:{n}:{said}", "parity")


@dataclass
class ParitySettings:
    """The domain's own settings, written parity-test.KEY: how many numbers to learn from."""
    numbers: int = 60

    def __post_init__(self):
        if self.numbers < 2:
            raise ConfigError(f"parity-test.numbers must be >= 2, got {self.numbers}")


class ParityDomain(Domain):
    """Claims about the parity of numbers: 0 to numbers-1 to learn from, the next 20 held out as knowledge."""
    name = "parity-test"
    rubric = "Rate 1 to 5 how clearly the text states whether a number is even or odd. Answer with one digit.\n"
    extensions = (".parity",)
    settings = ParitySettings

    def texts(self, cfg, seed):
        claim = lambda n: Text(f"{n} is {'even' if n % 2 == 0 else 'odd'}.", "parity",  # noqa: E731
                               f"parity:{n}:{'even' if n % 2 == 0 else 'odd'}")
        n = cfg.own.numbers
        return [claim(i) for i in range(n)], [claim(i) for i in range(n, n + 20)]

    @property
    def verifier(self):
        return _verify


class LengthJudge:
    """Prefers texts of about a dozen characters."""
    name = "length-test"

    def score(self, texts):
        return [JudgeScore(min(1.0, len(t) / 12), f"{len(t)} characters", {"chars": len(t)}) for t in texts]


def _shell(ctx, n):
    """Envelope proposals pushed 1.5x away from the corpus latents' mean."""
    mean = ctx.occ.latents.mean(axis=0)
    pts = (mean + 1.5 * (ctx.occ.envelope_samples(n, ctx.rng) - mean)).astype(np.float32)
    return Draw(pts, ctx.occ.density_score(pts), [None] * n)


@pytest.fixture(scope="module")
def plugins():
    register_domain(ParityDomain)
    register_judge(JudgeSpec("length-test", lambda ctx: LengthJudge(), weight=0.3, threshold=0.1))
    register_sampler(SamplerSpec("shell-test", _shell, "pushed outwards", colour="#123456", marker="v"))
    threads = torch.get_num_threads()  # the run sets run.threads in this process
    yield
    torch.set_num_threads(threads)
    unregister_sampler("shell-test")
    unregister_judge("length-test")
    unregister_domain("parity-test")


@pytest.fixture(scope="module")
def plugin_run(plugins, tmp_path_factory):
    from cli.main import main

    out = tmp_path_factory.mktemp("plugins") / "run"
    rc = main(["--generations", "1", "--out", str(out), "--domain", "parity-test", *other_domain(TINY_MODELS), "-q",
               "--set", "sample.samplers=shell-test,dark,lm", "--set", "judges.min_coherence=0",
               "--set", "judges.thresholds=length-test:0.5", "--set", "parity-test.numbers=50"])
    assert rc == 0
    return out


def test_plugins_run_through_the_loop(plugin_run):
    con = sqlite3.connect(plugin_run / "runs.db")
    per_sampler = dict(con.execute("SELECT sampler, count(*) FROM candidate GROUP BY sampler").fetchall())
    judges = {j for (j,) in con.execute("SELECT DISTINCT judge FROM score")}
    rows = con.execute("SELECT c.text, c.reason, c.verdict, s.score FROM candidate c JOIN score s "
                       "ON s.candidate_id = c.id AND s.judge = 'length-test'").fetchall()
    con.close()
    assert set(per_sampler) == {"shell-test", "dark", "lm"} and sum(per_sampler.values()) == 8 == len(rows)
    settings = json.loads((plugin_run / "config.json").read_text())
    assert settings["parity-test"] == {"numbers": 50}  # the domain's own settings, under its name
    assert judges == {"verifier", "coherence", "novelty", "critic", "length-test"}
    for text, reason, verdict, score in rows:
        assert verdict == _verify(text or "").status  # the domain's verifier decided the verdict
        assert score == pytest.approx(min(1.0, len(text or "") / 12))
        if reason.startswith("accepted"):  # the run's threshold for the new judge held
            assert score >= 0.5 and "length-test (" in reason
        elif verdict == "true" and score < 0.5 and "near-duplicate" not in reason:
            assert "length-test score" in reason  # the only rule left to reject it


def test_plugins_run_through_the_discovery_experiment(plugin_run, tmp_path):
    from cli.main import main

    js = tmp_path / "disc.json"
    rc = main(["experiment", "discovery", "--run", str(plugin_run), "--budget", "4", "--seeds", "1",
               "--only", "shell-test,dark,lm", "--json", str(js), "--png", str(tmp_path / "d.png"), "-q"])
    assert rc == 0
    res = json.loads(js.read_text())["result"]
    assert list(res["per_sampler"]) == ["shell-test", "dark", "lm"]
    assert res["per_sampler"]["shell-test"]["decoded"]["mean"] <= 4
    assert "dark_vs_lm" in res["headline"]  # the dark sampler's own claim, read from its registration
    con = sqlite3.connect(plugin_run / "runs.db")
    kinds = dict(con.execute("SELECT kind, count(*) FROM experimentsample GROUP BY kind").fetchall())
    con.close()
    assert kinds == {"shell-test": 4, "dark": 4, "lm": 4}


def test_registries_refuse_taken_names_and_unknown_plugins(plugins, tmp_path):
    import judges.panel  # noqa: F401  (the panel's import registers the built-in judges)
    from common.errors import ConfigError
    from latent.samplers import check_loop_samplers

    with pytest.raises(ValueError, match="already registered"):
        register_sampler(SamplerSpec("dark", _shell))
    with pytest.raises(ValueError, match="already registered"):
        register_judge(JudgeSpec("novelty", lambda ctx: None))
    with pytest.raises(ConfigError, match="decodes while it samples"):
        check_loop_samplers(["dark-kept"])
    from domains.config import CorpusConfig

    assert CorpusConfig(path="numbers.parity").domain_name == "parity-test"  # claimed by its extension
    # --plugin imports a module that registers on import, for the loop and every subcommand
    (tmp_path / "my_plugin.py").write_text(
        "from latent.samplers import SamplerSpec, register_sampler, samplers\n"
        "register_sampler(SamplerSpec('ring-test', samplers()['prior'].fn))\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "--plugin", "my_plugin", "--help"], capture_output=True,
                       text=True, cwd=ROOT, env=env, timeout=120)
    assert p.returncode == 0 and "ring-test" in p.stdout
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "--plugin", "no_such_plugin", "--help"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error: --plugin no_such_plugin: cannot import it")
