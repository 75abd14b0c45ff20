"""The discovery experiment: the same decode budget per sampler, judged by the loop's panel."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from experiments.common import DUPLICATE, ci95, judged_row, per_seed_figures, plain_table, store_experiment, _fmt_ci

log = logging.getLogger(__name__)

SAMPLERS = ("dark", "prior", "interpolate", "lm")
# per-seed figures of one sampler, in table order: (key, column header)
DISCOVERY_COLUMNS = [
    ("decoded", "decoded"), ("parseable", "parseable"), ("true", "true"), ("true_new", "true-new"),
    ("true_new_distinct", "distinct true-new"), ("accepted", "accepted"), ("novelty", "mean novelty"),
    ("dark_share", "dark share"), ("true_new_per_1000", "true-new /1000"),
]


# ---------------------------------------------------------------------------- discovery
def _latest_map_generation(run_dir: Path) -> int:
    from sqlmodel import Session, select

    from storage.db import open_db
    from storage.models import Stage

    engine = open_db(run_dir)
    try:
        with Session(engine) as s:
            gens = s.exec(select(Stage.generation).where(Stage.name == "map")).all()
    finally:
        engine.dispose()
    if not gens:
        raise ValueError(f"run {run_dir} has no finished map stage yet; run `python run.py --out {run_dir}` first")
    return max(gens)


def discovery(cfg, run_dir: Path, generation: int | None, budget: int, seeds: int, png: Path | None,
              json_path: Path | None, samplers: tuple[str, ...] = SAMPLERS) -> dict:
    import torch
    from sklearn.decomposition import PCA
    from sqlmodel import Session, select

    from experiments.plots import discovery_png
    from judges.panel import build_panel, judge_texts
    from latent.occupancy import OccupancyMap
    from latent.samplers import draw
    from latent.zones import assign_zone, zones_from_rows
    from loop.runner import Loop
    from sllm.train import encode, soft_prompts
    from storage.db import RunLock, open_db
    from storage.models import Zone

    t0 = time.perf_counter()
    g = _latest_map_generation(run_dir) if generation is None else generation
    loop = Loop(cfg)
    data = loop.data
    with RunLock(run_dir):
        engine = open_db(run_dir, create=True)
        with Session(engine) as s:
            adapter = loop.adapter_for(s, g)
            previous = loop.accepted_texts(s, g - 1)
            zones = zones_from_rows(s.exec(select(Zone).where(Zone.generation == g).order_by(Zone.label)).all())
        engine.dispose()
        tok, model = loop.model(adapter)
        sllm = loop.load_sllm(g, model)
        be = loop.backend(adapter, (tok, model))
        latents = np.load(loop.gen_dir(g) / "map" / "latents.npy", allow_pickle=False)
        occ = OccupancyMap.fit(latents, cfg.sample)
        calib = occ.calibrate(encode(sllm, model, tok, [t.text for t in data.eval]))
        if data.knowledge:
            # the domain's held-out knowledge (maths: held-out true facts) is exactly what "true and new"
            # means: where does it lie?
            calib["heldout_facts"] = occ.calibrate(encode(sllm, model, tok, [t.text for t in data.knowledge]))
        proj = PCA(n_components=2, random_state=0).fit(latents)
        panel = build_panel(loop.domain, cfg.judges, model, tok, data.train, previous, cfg.run.seed)
        dc = cfg.decode
        samples: list[dict] = []
        per_seed: dict[str, list[dict]] = {n: [] for n in samplers}
        probe_rng = np.random.default_rng([cfg.run.seed, 7919])
        probe = occ.envelope_samples(2000, probe_rng)
        probe = probe[occ.is_dark(probe)]
        for seed in range(seeds):
            for si, name in enumerate(samplers):
                rng = np.random.default_rng([cfg.run.seed, seed, si])
                torch.manual_seed(1000 * seed + si)
                if name == "lm":
                    texts = be.sample(budget, dc.max_new_tokens, dc.lm_temperature, 1000 * seed + si)
                    # no latent was sampled: place each text at its SLLM encoding (for the picture)
                    pts = encode(sllm, model, tok, [t or " " for t in texts])
                else:
                    pts = draw(name, occ, budget, cfg.sample, rng, zones).points
                    emb, _ = soft_prompts(sllm, model, tok, pts)
                    texts = be.generate_from_embeds(emb, dc.max_new_tokens, dc.temperature, 1000 * seed + si)
                dens = occ.density_score(pts)
                dark, gdark = occ.is_dark(pts), occ.gmm_dark(pts)
                xy = proj.transform(pts)
                zone_ids = assign_zone(zones, pts) if name == "dark" else [None] * len(pts)
                verdicts = [judged_row(j) for j in judge_texts(panel, texts, cfg.judges, data.train_fact_keys, DUPLICATE)]
                rows = []
                for i, (t, v) in enumerate(zip(texts, verdicts)):
                    rows.append({"kind": name, "sampler": name, "seed": seed, "text": t, **v,
                                 "density_score": float(dens[i]), "dark": bool(dark[i]),
                                 "x": float(xy[i, 0]), "y": float(xy[i, 1]),
                                 "detail": {"gmm_dark": bool(gdark[i]), "zone": zone_ids[i],
                                            "latent": "sampled" if name != "lm" else "SLLM encoding of the text"}})
                samples.extend(rows)
                per_seed[name].append(per_seed_figures(rows, budget, dark, gdark))
                log.info("seed %d %s: %s", seed, name, per_seed[name][-1])
    result = summarise_discovery(per_seed, budget, seeds)
    result.update({"generation": g, "budget_per_sampler": budget, "seeds": seeds, "calibration": calib,
                   "dark_threshold": occ.threshold, "envelope_radius": occ.radius,
                   "gmm_components": int(occ.gmm.n_components) if occ.gmm is not None else None,
                   "zones": len(zones)})
    table = discovery_table(result)
    seconds = time.perf_counter() - t0
    result["seconds"] = seconds
    exp_dir = run_dir / "experiments"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    png = png or exp_dir / f"discovery-{stamp}.png"
    json_path = json_path or exp_dir / f"discovery-{stamp}.json"
    zone_xy = proj.transform(np.stack([z.centre for z in zones])) if zones else np.zeros((0, 2))
    discovery_png(png, proj.transform(latents), proj.transform(probe) if len(probe) else np.zeros((0, 2)), zone_xy,
                  [z.volume for z in zones], samples,
                  f"discovery: generation {g}, {budget} decodes per sampler x {seeds} seed(s); "
                  f"rings = accepted by the judges")
    settings = {"run_dir": str(run_dir), "generation": g, "budget": budget, "seeds": seeds, "samplers": list(samplers),
                "config": cfg.to_dict()}
    artifacts = {"png": str(png), "json": str(json_path)}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    eid = store_experiment(run_dir, "discovery", settings, result, table, artifacts, seconds, samples)
    result["experiment_id"] = eid
    json_path.write_text(json.dumps({"settings": settings, "result": result, "table": table,
                                     "artifacts": artifacts}, indent=2, default=str))
    result["table"], result["artifacts"] = table, artifacts
    return result


def summarise_discovery(per_seed: dict[str, list[dict]], budget: int, seeds: int) -> dict:
    out = {"per_sampler": {}, "per_seed": per_seed, "ci_method": None}
    for name, figs in per_seed.items():
        agg = {}
        for key in figs[0] if figs else []:
            agg[key] = ci95([f[key] for f in figs])
            out["ci_method"] = out["ci_method"] or agg[key]["method"]
        out["per_sampler"][name] = agg
    head = {}
    dark = out["per_sampler"].get("dark", {}).get("true_new_per_1000", {}).get("mean")
    for base, target in (("lm", 3.0), ("prior", 1.5)):
        other = out["per_sampler"].get(base, {}).get("true_new_per_1000", {}).get("mean")
        if dark is None or other is None:
            continue
        ratio = None if other == 0 else dark / other
        head[f"dark_vs_{base}"] = {"ratio": ratio, "target": target, "dark": dark, "baseline": other,
                                   "met": (dark > 0 if other == 0 else ratio >= target)}
    yields = {n: a.get("true_new_per_1000", {}).get("mean") or 0.0 for n, a in out["per_sampler"].items()}
    out["headline"] = head
    best = max(yields.values(), default=0.0)
    out["winner"] = [n for n, y in yields.items() if y == best] if best > 0 else []
    return out


def discovery_table(result: dict) -> str:
    headers = ["sampler"] + [h for _, h in DISCOVERY_COLUMNS]
    rows = []
    for name, agg in result["per_sampler"].items():
        row = [name]
        for key, _ in DISCOVERY_COLUMNS:
            digits = 3 if key in ("novelty", "dark_share") else 1
            row.append(_fmt_ci(agg[key], digits))
        rows.append(row)
    method = {"t": "Student t over seeds", "normal": "normal approximation over seeds", None: "one seed: no interval"}
    lines = [plain_table(headers, rows),
             f"counts per {result['budget_per_sampler']} decodes per sampler; mean [95% CI, "
             f"{method[result.get('ci_method')]}] over {result['seeds']} seed(s)"]
    for key, h in result["headline"].items():
        if h["ratio"] is None:
            r = "dark > 0, baseline 0" if h["dark"] > 0 else "both 0"
        else:
            r = f"{h['ratio']:.2f}x"
        lines.append(f"{key.replace('_', ' ')}: true-new per 1000 {h['dark']:.1f} vs {h['baseline']:.1f} = {r} "
                     f"(target {h['target']}x): {'met' if h['met'] else 'NOT met'}")
    lines.append("highest true-new yield: " + (", ".join(result["winner"]) or "none (no sampler found a true new fact)"))
    c = result["calibration"]
    if c.get("false_dark_rate") is not None:
        lines.append(f"false-dark rate on {c['heldout']} held-out real texts: kNN {c['false_dark_rate']:.1%}, "
                     f"GMM {c['false_dark_rate_gmm']:.1%} (outside the envelope {c['outside_rate']:.1%})")
    h = c.get("heldout_facts") or {}
    if h.get("false_dark_rate") is not None:
        lines.append(f"held-out TRUE facts (the true-new targets, {h['heldout']} texts): dark kNN "
                     f"{h['false_dark_rate']:.1%}, GMM {h['false_dark_rate_gmm']:.1%}, outside the envelope "
                     f"{h['outside_rate']:.1%}, median density score {h['density_score_median']:.2f}")
    return "\n".join(lines)
