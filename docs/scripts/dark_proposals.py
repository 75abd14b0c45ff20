"""Does any way of placing a latent in a dark zone make its decode stay dark?

On one run's SLLM (its latest generation, wearing that generation's adapter), draws N latents a
scheme, each the least occupied of `--pool` x N proposals the scheme makes, decodes them greedily,
encodes the decodes again and prints, per scheme: the share of latents the map calls dark, the
share of decodes still dark, valid (the domain's verifier parses them) and in the corpus. The map
is the loop's, at the default settings, fitted on the corpus texts' latents. Schemes:

- `ppca`: the `dark` sampler (envelope proposals of the corpus latents' probabilistic PCA);
- `subspace`: the same without the discarded directions' noise (`sample.envelope=subspace`);
- `tangent-T`: a corpus latent plus Gaussian steps along the differences to its 16 nearest
  corpus latents, T times their spread (the local span of the data);
- `extrapolate-T`: a corpus latent pushed T times its distance away from its nearest neighbour.

    python docs/scripts/dark_proposals.py runs/mol6-s0 --json docs/sllm-reach/dark-proposals-s0.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sqlmodel import Session, select  # noqa: E402

from backends.transformers_backend import TransformersBackend  # noqa: E402
from latent.config import SampleConfig  # noqa: E402
from latent.occupancy import OccupancyMap  # noqa: E402
from latent.samplers import sample_dark  # noqa: E402
from loop.context import RunContext  # noqa: E402
from loop.runner import environment, run_config  # noqa: E402
from sllm.codec import GenParams  # noqa: E402
from storage.db import open_db  # noqa: E402
from storage.models import Stage  # noqa: E402

NEIGHBOURS = 16


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run folder with a trained SLLM")
    p.add_argument("--n", type=int, default=200, help="latents a scheme")
    p.add_argument("--pool", type=int, default=20, help="proposals per kept latent (the dark sampler's pool_factor)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    cfg = run_config(run)
    engine = open_db(run)
    with Session(engine) as s:
        g = max(s.exec(select(Stage.generation).where(Stage.name == "sllm")).all())
        loop = RunContext(cfg)
        adapter = loop.adapter_for(s, g)
    engine.dispose()
    tok, model = loop.model(adapter)
    codec = loop.codec(g, model, tok)
    be = TransformersBackend("")
    be.tokenizer, be.model = tok, model
    greedy = GenParams(cfg.decode.max_new_tokens, 0.0, 0)
    corpus = [t.text for t in loop.data.train]
    z = codec.encode(corpus)
    occ = OccupancyMap.fit(z, SampleConfig(), seed=cfg.run.seed % 2**31, threads=args.threads)
    rng = np.random.default_rng([cfg.run.seed, 97])
    n, m = args.n, args.n * args.pool
    verify, seen = loop.domain.verifier, set(corpus)

    def darkest(pts: np.ndarray) -> np.ndarray:
        pts = pts[occ.inside(pts)]
        return pts[np.argsort(-occ.density_score(pts), kind="stable")[:n]]

    schemes = {"ppca": sample_dark(occ, n, SampleConfig(), rng)[0],
               "subspace": sample_dark(occ, n, SampleConfig(envelope="subspace"), rng)[0]}
    nb = z[occ.nearest(z[rng.integers(0, len(z), m)], NEIGHBOURS + 1)]  # (m, K+1, D), itself first
    for t in (1.0, 2.0):
        coef = rng.standard_normal((m, NEIGHBOURS, 1)).astype(np.float32) * t / np.sqrt(NEIGHBOURS)
        schemes[f"tangent-{t:g}"] = darkest((nb[:, 0] + (coef * (nb[:, 1:] - nb[:, :1])).sum(1)).astype(np.float32))
    i = rng.integers(0, len(z), m)
    j = occ.nearest(z[i], 2)[:, 1]
    for t in (0.5, 1.0):
        schemes[f"extrapolate-{t:g}"] = darkest((z[i] + t * (z[i] - z[j])).astype(np.float32))
    out = {}
    for name, pts in schemes.items():
        dec = codec.decode(pts, be, greedy)
        back = codec.reencode(dec)
        out[name] = {"latents": len(pts), "sampled_dark": float(occ.is_dark(pts).mean()),
                     "still_dark": float(occ.is_dark(back).mean()),
                     "valid": None if verify is None else float(np.mean([verify(x).status != "unparseable" for x in dec])),
                     "in_corpus": float(np.mean([x in seen for x in dec]))}
        r = out[name]
        valid = "n/a" if r["valid"] is None else f"{r['valid']:.1%}"
        print(f"{name:16s} latents dark {r['sampled_dark']:6.1%}  decodes still dark {r['still_dark']:6.1%}  "
              f"valid {valid}  in corpus {r['in_corpus']:.1%}", flush=True)
    if args.json:
        env = environment()
        env["command"] = "python " + " ".join(sys.argv)  # this script, not run.py
        Path(args.json).write_text(json.dumps({"run": str(run), "generation": g, "environment": env,
                                               "schemes": out}, indent=2))


if __name__ == "__main__":
    main()
