"""The discovery experiment: the same decode budget per sampler, judged by the loop's panel.

Every decode is encoded again and its own latent density-scored (the round-trip check of
Meta's LCM evaluation): a dark latent whose text re-encodes into an occupied region snapped
back to known content, so the table gives both "dark as sampled" and "dark once re-encoded".
Every registered sampler (latent.samplers) runs, feedback samplers too: this experiment hands
them a decoder and an encoder (`dark-kept` aims at dark TEXTS: its cost is the decodes spent per
decode kept). With several `--run`s (one per training seed), the headline intervals are over
training seeds.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sqlmodel import Session, select

from experiments.common import DUPLICATE, ci95, judged_row, per_seed_figures, plain_table, store_experiment, _fmt_ci
from experiments.plots import discovery_png
from judges.panel import build_panel, judge_texts
from latent.features import FeatureDictionary
from latent.samplers import SamplerContext, get_sampler, samplers as registered_samplers
from latent.zones import zones_from_rows
from loop.context import RunContext
from loop.runner import environment
from storage.db import RunLock, open_db
from storage.models import Stage, Zone

log = logging.getLogger(__name__)

# per-seed figures of one sampler, in table order: (key, column header)
DISCOVERY_COLUMNS = [
    ("decoded", "decoded"), ("parseable", "parseable"), ("true", "true"), ("true_new", "true-new"),
    ("true_new_distinct", "distinct true-new"), ("accepted", "accepted"), ("novelty", "mean novelty"),
    ("dark_share", "dark latents"), ("text_dark_share", "dark once re-encoded"),
    ("combo_text_share", "dark combination once re-encoded"), ("features_kept", "composed features kept"),
    ("true_new_per_1000", "true-new /1000"), ("true_new_per_1000_spent", "true-new /1000 spent"),
    ("decodes_per_kept", "decodes per kept"),
]


def all_samplers() -> tuple[str, ...]:
    """The samplers the experiment runs by default: every registered one, in registration order."""
    return tuple(registered_samplers())


# ---------------------------------------------------------------------------- discovery
def _latest_map_generation(run_dir: Path) -> int:
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
              json_path: Path | None, samplers: tuple[str, ...] | None = None) -> dict:
    from latent.occupancy import OccupancyMap  # lazy: faiss start-up, not needed for --help

    samplers = all_samplers() if samplers is None else tuple(samplers)
    t0 = time.perf_counter()
    g = _latest_map_generation(run_dir) if generation is None else generation
    loop = RunContext(cfg)
    data = loop.data
    with RunLock(run_dir):
        engine = open_db(run_dir, create=True)
        with Session(engine) as s:
            adapter = loop.adapter_for(s, g)
            previous = loop.accepted_texts(s, g - 1)
            zones = zones_from_rows(s.exec(select(Zone).where(Zone.generation == g).order_by(Zone.label)).all())
        engine.dispose()
        tok, model = loop.model(adapter)
        codec = loop.codec(g, model, tok)
        model = codec.model
        be = loop.backend(adapter, (tok, model))

        def decode_latents(points, temperature, seed):
            return codec.decode(points, be, loop.gen_params(seed, temperature))

        encode_texts = codec.encode

        map_dir = loop.layout.map(g)
        latents = np.load(map_dir / "latents.npy", allow_pickle=False)
        if (map_dir / "occupancy.json").is_file():  # the map the loop fitted, as it was
            occ = OccupancyMap.load(map_dir, cfg.sample, threads=torch.get_num_threads())
        else:  # a run mapped before maps were saved whole
            occ = OccupancyMap.fit(latents, cfg.sample, threads=torch.get_num_threads())
        features = FeatureDictionary.of_map(map_dir, cfg.features, cfg.run.seed)
        calib = occ.calibrate(codec.encode([t.text for t in data.eval]))
        if data.knowledge:
            # the domain's held-out knowledge (maths: held-out true facts) is exactly what "true and new"
            # means: where does it lie?
            calib["heldout_facts"] = occ.calibrate(codec.encode([t.text for t in data.knowledge]))
        proj = PCA(n_components=2, random_state=0).fit(latents)
        panel = build_panel(loop.domain, cfg.judges, model, tok, data.train, previous, cfg.run.seed)
        dc = cfg.decode
        samples: list[dict] = []
        per_seed: dict[str, list[dict]] = {n: [] for n in samplers}
        probe_rng = np.random.default_rng([cfg.run.seed, 7919])
        probe = occ.envelope_samples(2000, probe_rng, cfg.sample.envelope)
        probe = probe[occ.is_dark(probe)]
        for seed in range(seeds):
            for si, name in enumerate(samplers):
                rng = np.random.default_rng([cfg.run.seed, seed, si])
                torch.manual_seed(1000 * seed + si)
                spec = get_sampler(name)
                spent = budget
                if not spec.latent:
                    texts = be.sample(budget, dc.max_new_tokens, dc.lm_temperature, 1000 * seed + si)
                    # no latent was sampled: place each text at its SLLM encoding (for the picture)
                    pts = codec.reencode(texts)
                    z2 = pts
                    zone_ids, provenance = [None] * len(pts), None
                else:
                    ctx = SamplerContext(occ, cfg.sample, rng, zones, 1000 * seed + si, decode_latents, encode_texts,
                                         features)
                    d = spec.fn(ctx, budget)
                    pts, zone_ids, provenance = d.points, d.zone_ids, d.provenance
                    if d.texts is not None:  # the sampler decoded as it sampled
                        texts, z2, spent = d.texts, d.reencoded, d.spent
                    else:
                        texts = decode_latents(pts, dc.temperature, 1000 * seed + si)
                        z2 = encode_texts([t or " " for t in texts])
                if len(pts):
                    dens, dens2, dark2 = occ.density_score(pts), occ.density_score(z2), occ.is_dark(z2)
                    dark, gdark, xy = occ.is_dark(pts), occ.gmm_dark(pts), proj.transform(pts)
                else:  # a feedback sampler found no decode it keeps
                    dens = dens2 = np.zeros(0)
                    dark = dark2 = gdark = np.zeros(0, dtype=bool)
                    xy = np.zeros((0, 2))
                snap = np.linalg.norm(pts - z2, axis=1)
                combo2, kept = feature_checks(features, z2, provenance)
                verdicts = [judged_row(j) for j in judge_texts(panel, texts, cfg.judges, data.train_fact_keys, DUPLICATE,
                                                                 canonical=loop.domain.canonical)]
                rows = []
                for i, (t, v) in enumerate(zip(texts, verdicts)):
                    rows.append({"kind": name, "sampler": name, "seed": seed, "text": t, **v,
                                 "density_score": float(dens[i]), "dark": bool(dark[i]),
                                 "x": float(xy[i, 0]), "y": float(xy[i, 1]),
                                 "detail": {"gmm_dark": bool(gdark[i]), "zone": zone_ids[i],
                                            "reencoded_density": float(dens2[i]), "reencoded_dark": bool(dark2[i]),
                                            "snap": float(snap[i]),
                                            "latent": "sampled" if spec.latent else "SLLM encoding of the text",
                                            **({"provenance": provenance[i]} if provenance and provenance[i] else {}),
                                            **({"reencoded_dark_combination": bool(combo2[i])}
                                               if combo2 is not None else {}),
                                            **({"features_kept": bool(kept[i])}
                                               if kept is not None and kept[i] is not None else {})}})
                samples.extend(rows)
                figs = per_seed_figures(rows, budget, dark, gdark)
                figs.update(reencode_figures(dens, dens2, dark2, snap, spent, len(texts), figs["true_new"]))
                figs.update(feature_figures(combo2, kept))
                figs.update(domain_figures(loop.domain.generation_metrics(texts, data), budget,
                                           loop.domain.count_figures))
                per_seed[name].append(figs)
                log.info("seed %d %s: %s", seed, name, per_seed[name][-1])
    result = summarise_discovery(per_seed, budget, seeds)
    # the domain's published benchmark (molecules: the MOSES table), each sampler's decodes of all seeds pooled
    c = cfg
    trained = (f"Training budget: generation {g} of run {run_dir.name} ({len(data.train)} training texts; base model "
               + (c.base.model if c.base.model else f"trained {c.base.epochs} epochs")
               + f"; SLLM {c.sllm.epochs} epochs + {c.sllm.continue_epochs} per later generation).")
    ref = loop.domain.reference_table({n: [r["text"] for r in samples if r["sampler"] == n] for n in samplers}, data,
                                      trained)
    if ref is not None:
        result["reference"] = {"rows": ref["rows"], "n": ref["n"], "table": ref["table"]}
    result.update({"domain_columns": [list(c) for c in loop.domain.report_columns],
                   "generation": g, "budget_per_sampler": budget, "seeds": seeds, "calibration": calib,
                   "dark_threshold": occ.threshold, "envelope_radius": occ.radius,
                   "gmm_components": int(occ.gmm.n_components) if occ.gmm is not None else None,
                   "zones": len(zones), "features": features.summary() if features is not None else None})
    table = discovery_table(result)
    if ref is not None:
        table += "\n\n" + ref["table"]
    seconds = time.perf_counter() - t0
    result["seconds"] = seconds
    exp_dir = loop.layout.experiments
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
                                     "artifacts": artifacts, "environment": environment()}, indent=2, default=str))
    result["table"], result["artifacts"] = table, artifacts
    return result


def domain_figures(metrics: dict, budget: int, counts: tuple[str, ...] = ()) -> dict:
    """The domain's own figures of one sampler's decodes (molecules: the MOSES metrics), with the
    counts it names (Domain.count_figures; molecules: rediscoveries, novel scaffolds) also per 1000 decodes."""
    out = {f"domain/{k}": v for k, v in metrics.items() if k != "decodes"}
    for k in counts:
        if k in metrics:
            out[f"{k}_per_1000"] = 1000.0 * metrics[k] / budget
    return out


def reencode_figures(dens: np.ndarray, dens2: np.ndarray, dark2: np.ndarray, snap: np.ndarray, spent: int,
                     kept: int, true_new: int) -> dict:
    """The round-trip check of one sampler's decodes: how many are still dark once re-encoded,
    how far the decode moved them, and what the sampler paid in decodes."""
    med = lambda v: float(np.median(v)) if len(v) else None  # noqa: E731
    return {"text_dark_share": float(np.mean(dark2)) if len(dark2) else None,
            "density_median": med(dens), "reencoded_density_median": med(dens2), "snap_median": med(snap),
            "decodes_spent": spent, "decodes_per_kept": spent / kept if kept else None,
            "true_new_per_1000_spent": 1000.0 * true_new / spent if spent else None}


def feature_checks(features, z2: np.ndarray, provenance: list[dict | None] | None):
    """Read through the feature dictionary, per decode: does its re-encoded latent hold a dark
    combination (any sampler), and does it still hold every feature it was composed from (a sampler
    whose provenance names "features"; None for the others)?"""
    if features is None or not len(z2):
        return None, None
    combo2, _ = features.dark_combination_share(z2)
    kept = features.kept(z2, provenance) if provenance else None
    return combo2, kept if kept and any(k is not None for k in kept) else None


def feature_figures(combo2: np.ndarray | None, kept: list[bool | None] | None) -> dict:
    out = {}
    if combo2 is not None and len(combo2):
        out["combo_text_share"] = float(combo2.mean())
    ks = [k for k in (kept or []) if k is not None]
    if ks:
        out["features_kept"] = float(np.mean(ks))
    return out


def summarise_discovery(per_seed: dict[str, list[dict]], budget: int, seeds: int) -> dict:
    out = {"per_sampler": {}, "per_seed": per_seed, "ci_method": None}
    for name, figs in per_seed.items():
        agg = {}
        for key in dict.fromkeys(k for f in figs for k in f):  # a figure a seed lacks counts as missing there
            agg[key] = ci95([f.get(key) for f in figs])
            out["ci_method"] = out["ci_method"] or agg[key]["method"]
        out["per_sampler"][name] = agg
    head = {}
    for method, spec in registered_samplers().items():  # each sampler's own claims (SamplerSpec.beats)
        mine = out["per_sampler"].get(method, {}).get("true_new_per_1000", {}).get("mean")
        for base, target in spec.beats.items():
            other = out["per_sampler"].get(base, {}).get("true_new_per_1000", {}).get("mean")
            if mine is None or other is None:
                continue
            ratio = None if other == 0 else mine / other
            head[f"{method}_vs_{base}"] = {"ratio": ratio, "target": target, "method": method, "yield": mine,
                                           "baseline": other, "met": (mine > 0 if other == 0 else ratio >= target)}
    yields = {n: a.get("true_new_per_1000", {}).get("mean") or 0.0 for n, a in out["per_sampler"].items()}
    out["headline"] = head
    best = max(yields.values(), default=0.0)
    out["winner"] = [n for n, y in yields.items() if y == best] if best > 0 else []
    return out


# figures that are shares (0-1): printed with 3 digits
SHARES = ("dark_share", "text_dark_share", "combo_text_share", "features_kept")
HEADLINE_KEYS = ("true_new_per_1000", "true_new_per_1000_spent", "true_new_distinct_per_1000", "dark_share",
                 "text_dark_share", "combo_text_share", "features_kept", "decodes_per_kept", "accepted")


def combine_training_seeds(results: dict[str, dict]) -> dict:
    """Intervals over training seeds: per sampler and figure, the 95% CI over the runs' means
    (each run: one training seed, its mean over sampling seeds)."""
    per_sampler: dict[str, dict] = {}
    first = next(iter(results.values()))
    names = [n for n in first["per_sampler"]]
    # the domain's per-1000 counts (its report columns) join the headline
    headline_keys = HEADLINE_KEYS + tuple(k for k, _ in first.get("domain_columns", []) if k.endswith("_per_1000"))
    for name in names:
        per_sampler[name] = {}
        for key in headline_keys:
            vals = [r["per_sampler"].get(name, {}).get(key, {}).get("mean") for r in results.values()]
            per_sampler[name][key] = ci95([v for v in vals if v is not None])
    keys = [k for k in headline_keys if any(per_sampler[n][k]["mean"] is not None for n in names)]
    headers = ["sampler"] + [k.replace("_", " ") for k in keys]
    rows = [[n] + [_fmt_ci(per_sampler[n][k], 3 if k in SHARES else 1) for k in keys] for n in names]
    lines = [plain_table(headers, rows),
             f"mean [95% CI, Student t over {len(results)} training seeds (runs); each run's figure is its mean "
             f"over sampling seeds]"]
    means = {n: per_sampler[n]["true_new_per_1000"]["mean"] or 0.0 for n in names}
    best = max(means, key=means.get) if means else None
    if best is not None:
        b = per_sampler[best]["true_new_per_1000"]
        lines.append(f"highest true-new yield per 1000 decodes: {best} ({_fmt_ci(b)})")
        for other in names:
            o = per_sampler[other]["true_new_per_1000"]
            if other == best or o["mean"] is None:
                continue
            overlap = None if b["lo"] is None or o["hi"] is None else not (b["lo"] > o["hi"])
            lines.append(f"  vs {other}: {_fmt_ci(o)}; "
                         + ("no interval" if overlap is None else ("intervals overlap" if overlap else "intervals do not overlap")))
    return {"per_sampler": per_sampler, "runs": list(results), "table": "\n".join(lines)}


def discovery_table(result: dict) -> str:
    first = next(iter(result["per_sampler"].values()), {})
    columns = DISCOVERY_COLUMNS + [tuple(c) for c in result.get("domain_columns", []) if c[0] in first]
    headers = ["sampler"] + [h for _, h in columns]
    rows = []
    for name, agg in result["per_sampler"].items():
        row = [name]
        for key, _ in columns:
            digits = 3 if key in SHARES or key == "novelty" or key.startswith("domain/") else 1
            row.append(_fmt_ci(agg.get(key, {"mean": None}), digits))
        rows.append(row)
    method = {"t": "Student t over seeds", "normal": "normal approximation over seeds", None: "one seed: no interval"}
    lines = [plain_table(headers, rows),
             f"counts per {result['budget_per_sampler']} decodes per sampler; mean [95% CI, "
             f"{method[result.get('ci_method')]}] over {result['seeds']} seed(s)"]
    for key, h in result["headline"].items():
        if h["ratio"] is None:
            r = f"{h['method']} > 0, baseline 0" if h["yield"] > 0 else "both 0"
        else:
            r = f"{h['ratio']:.2f}x"
        lines.append(f"{key.replace('_', ' ')}: true-new per 1000 {h['yield']:.1f} vs {h['baseline']:.1f} = {r} "
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
