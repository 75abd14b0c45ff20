"""Recover the two per-run values behind each figure of a discovery JSON over 2 training seeds.

A discovery JSON over training seeds written before it kept each run's own means holds, per sampler
and figure, only the mean and the Student-t 95% interval over the runs. With n = 2 that pair
determines the two values exactly: half width = t(0.975, 1) * sd / sqrt(2) and sd = |a - b| / sqrt(2),
so a, b = mean +- (hi - mean) / t(0.975, 1). This writes them as a JSON that
`python run.py experiment discovery --run RUN --add-results OUT.json` joins to further runs.

Which of the two values belongs to which run is not recoverable from the interval: the larger goes
to the first run named in the JSON. The intervals over training seeds are computed figure by figure,
so they do not depend on that assignment; a comparison of two figures within one run would.

    python docs/scripts/two_seed_values.py docs/discovery-molecules-faithful.json /tmp/two-seeds.json
"""
from __future__ import annotations

import json
import sys

from scipy import stats


def split(c: dict) -> tuple[float | None, float | None]:
    if c.get("mean") is None:
        return None, None
    if c.get("n") == 1:  # one run alone had the figure; which one is not recorded
        return c["mean"], None
    if c.get("n") != 2 or c.get("method") != "t":
        raise SystemExit(f"expected a Student-t interval over 2 runs, got {c}")
    d = (c["hi"] - c["mean"]) / float(stats.t.ppf(0.975, 1))
    return c["mean"] + d, c["mean"] - d


def main(src: str, dst: str) -> None:
    d = json.loads(open(src).read())
    runs = list(d["runs"])
    if len(runs) != 2:
        raise SystemExit(f"{src} is over {len(runs)} runs; this recovers the values of exactly 2")
    per = [{}, {}]
    for sampler, figs in d["combined"]["per_sampler"].items():
        for i in (0, 1):
            per[i][sampler] = {}
        for key, c in figs.items():
            for i, v in enumerate(split(c)):
                if v is not None:
                    per[i][sampler][key] = {"mean": v}
    extra = sorted({k for figs in d["combined"]["per_sampler"].values() for k in figs if k.endswith("_per_1000")
                    and k not in ("true_new_per_1000", "true_new_distinct_per_1000")})
    out = {"runs": {r: {"seed": d["runs"][r]["seed"], "json": src,
                        "result": {"per_sampler": per[i], "domain_columns": [[k, k] for k in extra]},
                        "recovered_from": "mean and t-interval over 2 runs; the split between the runs is not recorded"}
                    for i, r in enumerate(runs)},
           "combined": d["combined"], "environment": d.get("environment")}
    open(dst, "w").write(json.dumps(out, indent=2))
    print(f"{dst}: {len(runs)} runs, {len(per[0])} samplers")


if __name__ == "__main__":
    main(*sys.argv[1:3])
