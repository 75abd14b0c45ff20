"""`python run.py experiment {discovery,holdout}`: the idea's own experiments.

discovery: the same decode budget for each sampler (dark, prior, interpolate, lm), judged by the
  loop's judges and combiner; per sampler: decoded, parseable, true, true-and-new, accepted,
  novelty, with 95% confidence intervals over seeds, and a 2-D picture of the latent space.
holdout: the NN1/NN2 test. NN1 = SLLM trained without topic T; NN2 = NN1 continued on the corpus
  with T. T's texts encoded by NN2: what share falls in NN1's dark zones; decoded by NN1's and by
  NN2's decoder: how alike the two decodes are, and how close to the originals. A control topic
  that NN1 did see is measured beside it.

Each prints a table, writes JSON, and stores an ExperimentRun row plus one ExperimentSample row
per decoded text in the run folder's database (`python run.py inspect RUN_DIR experiments`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SAMPLERS = ("dark", "prior", "interpolate", "lm")
# per-seed figures of one sampler, in table order: (key, column header)
DISCOVERY_COLUMNS = [
    ("decoded", "decoded"), ("parseable", "parseable"), ("true", "true"), ("true_new", "true-new"),
    ("true_new_distinct", "distinct true-new"), ("accepted", "accepted"), ("novelty", "mean novelty"),
    ("dark_share", "dark share"), ("true_new_per_1000", "true-new /1000"),
]


# ---------------------------------------------------------------------------- statistics
def ci95(values: list[float]) -> dict:
    """Mean and 95% confidence interval over seeds: Student t (scipy) with n-1 degrees of freedom,
    or the normal approximation when scipy is missing. One seed gives no interval (None)."""
    v = np.asarray([x for x in values if x is not None and not np.isnan(x)], dtype=float)
    n = len(v)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0, "method": None}
    mean = float(v.mean())
    if n < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": 1, "method": None}
    try:
        from scipy import stats

        q, method = float(stats.t.ppf(0.975, n - 1)), "t"
    except ImportError:  # pragma: no cover - scipy is a dependency of scikit-learn
        q, method = 1.959964, "normal"
    half = q * float(v.std(ddof=1)) / np.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n, "method": method}


def _fmt_ci(c: dict, digits: int = 1) -> str:
    if c["mean"] is None:
        return "–"
    if c["lo"] is None:
        return f"{c['mean']:.{digits}f}"
    return f"{c['mean']:.{digits}f} [{c['lo']:.{digits}f}, {c['hi']:.{digits}f}]"


def plain_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


# ---------------------------------------------------------------------------- judging
def make_judges(cfg, data, model, tok, previous: list[str], seed: int) -> list:
    """The judges the loop's judge stage uses (controller.Loop.stage_judge), built the same way."""
    from judges import CoherenceJudge, CriticJudge, NoveltyJudge, VerifierJudge, embed

    rng = np.random.default_rng(seed)
    ref_idx = rng.choice(len(data.train), size=min(256, len(data.train)), replace=False)
    js = [
        CoherenceJudge(model, tok, [data.train[i].text for i in sorted(ref_idx)]),
        NoveltyJudge(embed, data.train_texts, cfg.judges.min_novelty),
        CriticJudge(model, tok),
    ]
    if data.verify is not None:
        js.append(VerifierJudge(data.verify))
    if previous:
        js[1].add_accepted(previous)
    return js


def judge_batch(judges: list, texts: list[str], cfg, train_fact_keys) -> list[dict]:
    """Score a batch with every judge and decide with the loop's combiner; an accepted text
    repeated within the batch is rejected as a duplicate, as in one generation of the loop."""
    from judges import decide, safe_score

    scores = {j.name: safe_score(j, texts) for j in judges}
    seen: set[str] = set()
    out = []
    for i, t in enumerate(texts):
        per = {name: sc[i] for name, sc in scores.items()}
        d = decide(per, cfg.judges)
        ver = per.get("verifier")
        verdict = None if ver is None else ver.detail.get("status")
        fact_key = None if ver is None else ver.detail.get("fact_key")
        accepted, reason = d.accepted, d.reason
        if accepted and t in seen:
            accepted, reason = False, "rejected: duplicate of an accepted text in this batch"
        if accepted:
            seen.add(t)
        out.append({
            "verdict": verdict, "fact_key": fact_key, "topic": None if ver is None else ver.detail.get("topic"),
            "true_new": verdict == "true" and fact_key not in train_fact_keys,
            "accepted": accepted, "reason": reason, "novelty": per["novelty"].detail.get("distance"),
        })
    return out


def per_seed_figures(rows: list[dict], budget: int, dark: np.ndarray, gmm_dark: np.ndarray) -> dict:
    texts = [r["text"] for r in rows]
    nov = [r["novelty"] for r, t in zip(rows, texts) if t and r["novelty"] is not None]
    tn = sum(bool(r["true_new"]) for r in rows)
    return {
        "decoded": sum(1 for t in texts if t),
        "parseable": sum(r["verdict"] in ("true", "false") for r in rows),
        "true": sum(r["verdict"] == "true" for r in rows),
        "true_new": tn,
        "true_new_distinct": len({r["fact_key"] for r in rows if r["true_new"]}),
        "accepted": sum(bool(r["accepted"]) for r in rows),
        "novelty": float(np.mean(nov)) if nov else None,
        "dark_share": float(np.mean(dark)) if len(dark) else None,
        "gmm_dark_share": float(np.mean(gmm_dark)) if len(gmm_dark) else None,
        "true_new_per_1000": 1000.0 * tn / budget,
        "true_new_distinct_per_1000": 1000.0 * len({r["fact_key"] for r in rows if r["true_new"]}) / budget,
    }


# ---------------------------------------------------------------------------- storage
def store_experiment(run_dir: Path, name: str, settings: dict, result: dict, table: str, artifacts: dict,
                     seconds: float, samples: list[dict]) -> int:
    """One transaction: the ExperimentRun row and its samples. Returns the experiment id."""
    from sqlmodel import Session

    from storage.db import open_db
    from storage.models import ExperimentRun, ExperimentSample

    engine = open_db(run_dir, create=True)  # creates the experiment tables in an older run database
    try:
        with Session(engine) as s:
            ex = ExperimentRun(name=name, seconds=seconds, settings_json=json.dumps(settings, default=str),
                               result_json=json.dumps(result, default=str), table=table,
                               artifacts_json=json.dumps(artifacts))
            s.add(ex)
            s.flush()
            fields = set(ExperimentSample.model_fields) - {"id", "experiment_id"}
            for d in samples:
                row = {k: d.get(k) for k in fields if k in d}
                row["detail_json"] = json.dumps(d.get("detail", {}), default=str)
                s.add(ExperimentSample(experiment_id=ex.id, **row))
            s.commit()
            return int(ex.id)
    finally:
        engine.dispose()


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


def _run_config(run_dir: Path):
    from loop.config import build_config
    from storage import queries
    from storage.db import open_db

    engine = open_db(run_dir)
    try:
        info = queries.run_info(engine)
    finally:
        engine.dispose()
    if info is None:
        raise ValueError(f"run {run_dir} has no run row; pass a run folder made by `python run.py --out DIR`")
    cfg = build_config(info["config"])
    cfg.run.out = str(run_dir)
    return cfg


def discovery(cfg, run_dir: Path, generation: int | None, budget: int, seeds: int, png: Path | None,
              json_path: Path | None, samplers: tuple[str, ...] = SAMPLERS) -> dict:
    import torch
    from sklearn.decomposition import PCA
    from sqlmodel import Session, select

    from loop.controller import Loop
    from loop.occupancy import OccupancyMap, ZoneInfo, assign_zone, sample_dark, sample_interpolate, sample_prior
    from loop.plots import discovery_png
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
            zone_rows = s.exec(select(Zone).where(Zone.generation == g).order_by(Zone.label)).all()
            zones = [ZoneInfo(z.label, z.n_points, np.frombuffer(z.centre, dtype=np.float32).copy(), z.radius,
                              z.volume, [], []) for z in zone_rows]
        engine.dispose()
        tok, model = loop.model(adapter)
        sllm = loop.load_sllm(g, model)
        be = loop.backend(adapter, (tok, model))
        latents = np.load(loop.gen_dir(g) / "map" / "latents.npy", allow_pickle=False)
        occ = OccupancyMap.fit(latents, cfg.sample)
        calib = occ.calibrate(encode(sllm, model, tok, [t.text for t in data.eval]))
        if cfg.corpus.path is None:
            # the held-out true facts are exactly what "true and new" means: where do they lie?
            from corpus import MathsConfig, build_maths_corpus

            c = cfg.corpus
            held = build_maths_corpus(MathsConfig(seed=cfg.run.seed, facts_per_topic=c.facts_per_topic,
                                                  phrasings_per_fact=c.phrasings_per_fact,
                                                  holdout_share=c.holdout_share)).heldout
            calib["heldout_facts"] = occ.calibrate(encode(sllm, model, tok, [t.text for t in held]))
        proj = PCA(n_components=2, random_state=0).fit(latents)
        judges = make_judges(cfg, data, model, tok, previous, cfg.run.seed)
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
                    if name == "dark":
                        pts, _, _ = sample_dark(occ, budget, cfg.sample, rng)
                    elif name == "prior":
                        pts, _ = sample_prior(occ, budget, rng)
                    else:
                        pts, _ = sample_interpolate(occ, budget, rng)
                    emb, _ = soft_prompts(sllm, model, tok, pts)
                    texts = be.generate_from_embeds(emb, dc.max_new_tokens, dc.temperature, 1000 * seed + si)
                dens = occ.density_score(pts)
                dark, gdark = occ.is_dark(pts), occ.gmm_dark(pts)
                xy = proj.transform(pts)
                zone_ids = assign_zone(zones, pts) if name == "dark" else [None] * len(pts)
                verdicts = judge_batch(judges, texts, cfg, data.train_fact_keys)
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


# ---------------------------------------------------------------------------- holdout
def _save_sllm_atomic(sllm, folder: Path) -> None:
    from loop.controller import atomic_dir
    from sllm.model import save_sllm

    with atomic_dir(folder) as tmp:
        save_sllm(sllm, tmp / "sllm.safetensors")


def _ready(folder: Path) -> bool:
    from loop.artifacts import verify

    return folder.is_dir() and verify(folder) is None


def holdout(cfg, out: Path, topic: str, control: str, continue_epochs: int, max_texts: int,
            base_sees_topic: bool, json_path: Path | None) -> dict:
    """The NN1/NN2 test. Resumable: the base model, NN1 and NN2 are reused from `out` when there."""
    import sacrebleu
    import torch

    from corpus import ALL_TOPICS, MathsConfig, build_maths_corpus, verify
    from judges import embed
    from loop.base_model import load_base_model, train_small_base
    from loop.controller import atomic_dir
    from loop.data import language_texts
    from loop.occupancy import OccupancyMap
    from sllm.model import SLLM, load_sllm
    from sllm.train import encode, soft_prompts, train_sllm
    from backends.transformers_backend import TransformersBackend
    from storage.db import RunLock, open_db

    t0 = time.perf_counter()
    c = cfg.corpus
    mc = build_maths_corpus(MathsConfig(seed=cfg.run.seed, facts_per_topic=c.facts_per_topic,
                                        phrasings_per_fact=c.phrasings_per_fact, holdout_share=c.holdout_share))
    train_all = list(mc.train)
    without = [t for t in train_all if t.topic != topic]
    groups = {"topic": [t for t in train_all if t.topic == topic][:max_texts],
              "control": [t for t in train_all if t.topic == control][:max_texts]}
    heldout_seen = [t for t in mc.heldout if t.topic != topic]  # real texts NN1 never trained on, topics it saw
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    with RunLock(out):
        _check_holdout_folder(out, {"topic": topic, "base_sees_topic": base_sees_topic, "continue_epochs": continue_epochs,
                                    "config_hash": cfg.result_hash()})
        engine = open_db(out, create=True)
        _ensure_run_row(engine, cfg)
        engine.dispose()
        base_texts = train_all if base_sees_topic else without
        if not _ready(out / "base"):
            t1 = time.perf_counter()
            # copy units: false sentences of the topics the base model may see
            copy = language_texts(cfg, ALL_TOPICS if base_sees_topic else tuple(t for t in ALL_TOPICS if t != topic))
            with atomic_dir(out / "base") as tmp:
                train_small_base([t.text for t in base_texts], cfg.base, tmp, cfg.run.seed,
                                 groups=[t.fact_key for t in base_texts], copy_texts=[t.text for t in copy])
            timings["base_s"] = time.perf_counter() - t1
        tok, model = load_base_model(str(out / "base"), cfg.run.device)
        E = model.get_input_embeddings().weight.shape[1]
        dev = next(model.parameters()).device
        if not _ready(out / "nn1"):
            t1 = time.perf_counter()
            # false sentences of the other topics only: NN1 never sees the held-out topic's language
            extra = language_texts(cfg, tuple(t for t in ALL_TOPICS if t != topic))
            texts = [t.text for t in without + extra]
            torch.manual_seed(cfg.run.seed)
            nn1 = SLLM(E, cfg.sllm)
            train_sllm(nn1, model, tok, texts, embed(texts) if cfg.sllm.meaning_weight > 0 else None,
                       cfg.sllm.epochs, cfg.sllm.lr, cfg.sllm.batch_size, cfg.run.seed,
                       fact_keys=[t.fact_key for t in without + extra], desc="NN1 (without topic)")
            _save_sllm_atomic(nn1, out / "nn1")
            timings["nn1_s"] = time.perf_counter() - t1
        nn1 = load_sllm(out / "nn1" / "sllm.safetensors", E, cfg.sllm, dev)
        if not _ready(out / "nn2"):
            t1 = time.perf_counter()
            extra = language_texts(cfg)
            texts = [t.text for t in train_all + extra]
            nn2 = load_sllm(out / "nn1" / "sllm.safetensors", E, cfg.sllm, dev)
            train_sllm(nn2, model, tok, texts, embed(texts) if cfg.sllm.meaning_weight > 0 else None,
                       continue_epochs, cfg.sllm.lr, cfg.sllm.batch_size, cfg.run.seed + 1,
                       fact_keys=[t.fact_key for t in train_all + extra], desc="NN2 (continued with topic)")
            _save_sllm_atomic(nn2, out / "nn2")
            timings["nn2_s"] = time.perf_counter() - t1
        nn2 = load_sllm(out / "nn2" / "sllm.safetensors", E, cfg.sllm, dev)

        t1 = time.perf_counter()
        occ = OccupancyMap.fit(encode(nn1, model, tok, [t.text for t in without]), cfg.sample)
        calib = occ.calibrate(encode(nn1, model, tok, [t.text for t in heldout_seen]))
        be = TransformersBackend("", device=cfg.run.device, batch_size=cfg.decode.batch_size)
        be.tokenizer, be.model = tok, model
        per_group, samples = {}, []
        for gname, items in groups.items():
            orig = [t.text for t in items]
            want = topic if gname == "topic" else control
            z2 = encode(nn2, model, tok, orig)  # (N, latent)
            z1 = encode(nn1, model, tok, orig)
            dark2, gdark2, inside2 = occ.is_dark(z2), occ.gmm_dark(z2), occ.inside(z2)
            dens2 = occ.density_score(z2)
            dec = {}
            for dname, net in (("nn1", nn1), ("nn2", nn2)):
                emb, _ = soft_prompts(net, model, tok, z2)
                dec[dname] = be.generate_from_embeds(emb, cfg.decode.max_new_tokens, 0.0, cfg.run.seed)
            e_orig, e1, e2 = embed(orig), embed(dec["nn1"]), embed(dec["nn2"])
            v1 = [verify(t) for t in dec["nn1"]]
            v2 = [verify(t) for t in dec["nn2"]]

            def figures(mask: np.ndarray) -> dict:
                if not mask.any():
                    return {"texts": 0}
                idx = np.flatnonzero(mask)
                pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
                bleu = lambda hyp, ref: sacrebleu.corpus_bleu(pick(hyp), [pick(ref)]).score / 100  # noqa: E731
                cos = lambda a, b: float(np.mean((a[idx] * b[idx]).sum(1)))  # noqa: E731
                return {
                    "texts": int(len(idx)),
                    "bleu_nn1_vs_nn2": bleu(dec["nn1"], dec["nn2"]), "cosine_nn1_vs_nn2": cos(e1, e2),
                    "bleu_nn1_vs_original": bleu(dec["nn1"], orig), "cosine_nn1_vs_original": cos(e1, e_orig),
                    "bleu_nn2_vs_original": bleu(dec["nn2"], orig), "cosine_nn2_vs_original": cos(e2, e_orig),
                    "exact_nn1": float(np.mean([dec["nn1"][i] == orig[i] for i in idx])),
                    "exact_nn2": float(np.mean([dec["nn2"][i] == orig[i] for i in idx])),
                    "true_nn1": float(np.mean([v1[i].status == "true" for i in idx])),
                    "true_nn2": float(np.mean([v2[i].status == "true" for i in idx])),
                    "on_topic_nn1": float(np.mean([v1[i].topic == want for i in idx])),
                    "on_topic_nn2": float(np.mean([v2[i].topic == want for i in idx])),
                }

            drift = np.linalg.norm(z2 - z1, axis=1) / occ.threshold
            per_group[gname] = {
                "topic": want, "texts": len(orig), "seen_by_nn1": gname == "control",
                "dark_share_nn2_in_nn1_map": float(dark2.mean()),
                "gmm_dark_share_nn2_in_nn1_map": float(gdark2.mean()),
                "outside_envelope_share": float((~inside2).mean()),
                "knn_dark_share_ignoring_envelope": float((dens2 > 1).mean()),
                "dark_share_nn1_own_encoding": float(occ.is_dark(z1).mean()),
                "density_score_median": float(np.median(dens2)),
                "drift_nn1_to_nn2": float(np.median(drift)),
                # the envelope test rejects most NN2 latents of the control too (encoder drift), so the
                # subset uses the density criterion alone: kNN-darker than NN1's texts (sample.dark_quantile)
                "all": figures(np.ones(len(orig), bool)), "dark_only": figures(dens2 > 1),
            }
            for i, o in enumerate(orig):
                for dname, vs in (("nn1", v1), ("nn2", v2)):
                    samples.append({
                        "kind": f"{gname}/{dname}", "seed": cfg.run.seed, "text": dec[dname][i], "source": o,
                        "verdict": vs[i].status, "fact_key": vs[i].fact_key,
                        "true_new": vs[i].status == "true" and vs[i].fact_key not in mc.train_fact_keys,
                        "density_score": float(dens2[i]), "dark": bool(dark2[i]),
                        "detail": {"topic": want, "decoded_topic": vs[i].topic, "gmm_dark": bool(gdark2[i]),
                                   "inside": bool(inside2[i])},
                    })
        timings["measure_s"] = time.perf_counter() - t1
    result = {"topic": topic, "control": control, "base_sees_topic": base_sees_topic,
              "continue_epochs": continue_epochs, "groups": per_group, "calibration_nn1_map": calib,
              "timings": timings}
    table = holdout_table(result)
    seconds = time.perf_counter() - t0
    result["seconds"] = seconds
    json_path = json_path or out / "experiments" / f"holdout-{topic}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    settings = {"out": str(out), "topic": topic, "control": control, "continue_epochs": continue_epochs,
                "max_texts": max_texts, "base_sees_topic": base_sees_topic, "config": cfg.to_dict()}
    artifacts = {"json": str(json_path), "base": str(out / "base"), "nn1": str(out / "nn1"), "nn2": str(out / "nn2")}
    eid = store_experiment(out, "holdout", settings, result, table, artifacts, seconds, samples)
    result["experiment_id"] = eid
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"settings": settings, "result": result, "table": table, "artifacts": artifacts},
                                    indent=2, default=str))
    result["table"], result["artifacts"] = table, artifacts
    return result


HOLDOUT_ROWS = [
    ("texts", "texts encoded by NN2", "{:.0f}"),
    ("dark_share_nn2_in_nn1_map", "share dark in NN1's map (kNN)", "{:.1%}"),
    ("gmm_dark_share_nn2_in_nn1_map", "share dark in NN1's map (GMM)", "{:.1%}"),
    ("outside_envelope_share", "share outside NN1's envelope", "{:.1%}"),
    ("knn_dark_share_ignoring_envelope", "share kNN-darker than NN1's texts, envelope ignored", "{:.1%}"),
    ("dark_share_nn1_own_encoding", "share dark, NN1's own encoding", "{:.1%}"),
    ("density_score_median", "median density score (NN2 latents)", "{:.2f}"),
    ("drift_nn1_to_nn2", "median |z_NN2 - z_NN1| / dark threshold", "{:.2f}"),
]
HOLDOUT_DECODE_ROWS = [
    ("bleu_nn1_vs_nn2", "BLEU NN1 decode vs NN2 decode (0-1)"), ("cosine_nn1_vs_nn2", "cosine NN1 vs NN2 decode"),
    ("bleu_nn1_vs_original", "BLEU NN1 decode vs original"), ("cosine_nn1_vs_original", "cosine NN1 decode vs original"),
    ("bleu_nn2_vs_original", "BLEU NN2 decode vs original"), ("cosine_nn2_vs_original", "cosine NN2 decode vs original"),
    ("exact_nn1", "exact match NN1 decode"), ("exact_nn2", "exact match NN2 decode"),
    ("true_nn1", "verifier true, NN1 decode"), ("true_nn2", "verifier true, NN2 decode"),
    ("on_topic_nn1", "parsed as the same topic, NN1 decode"), ("on_topic_nn2", "parsed as the same topic, NN2 decode"),
]


def holdout_table(result: dict) -> str:
    g = result["groups"]
    headers = ["figure", f"topic {result['topic']} (unseen by NN1)", f"control {result['control']} (seen)"]
    rows = []
    for key, label, fmt in HOLDOUT_ROWS:
        rows.append([label] + [fmt.format(g[n][key]) for n in ("topic", "control")])
    for sub, title in (("all", "all texts"), ("dark_only", "only NN2 latents kNN-darker than NN1's texts")):
        rows.append([f"-- decodes of {title}: n", *[str(g[n][sub]["texts"]) for n in ("topic", "control")]])
        for key, label in HOLDOUT_DECODE_ROWS:
            rows.append(["   " + label] + [("–" if key not in g[n][sub] else f"{g[n][sub][key]:.3f}")
                                           for n in ("topic", "control")])
    c = result["calibration_nn1_map"]
    base = ("the base LM saw every topic (as a general pretrained LM would)" if result["base_sees_topic"]
            else f"the base LM was trained WITHOUT {result['topic']} too (NN1, NN2 and the decoders share it)")
    lines = [plain_table(headers, rows),
             f"setup: NN1 = SLLM trained without {result['topic']}; NN2 = NN1 continued {result['continue_epochs']} "
             f"epoch(s) on the corpus with it; {base}. BLEU is sacrebleu corpus BLEU / 100; cosine is MiniLM."]
    if c.get("false_dark_rate") is not None:
        lines.append(f"NN1 map false-dark rate on {c['heldout']} held-out texts of topics it saw: kNN "
                     f"{c['false_dark_rate']:.1%}, GMM {c['false_dark_rate_gmm']:.1%}")
    return "\n".join(lines)


def _check_holdout_folder(out: Path, key: dict) -> None:
    """The folder's models were trained for one (topic, base, settings): refuse to mix them."""
    from loop.config import ConfigError

    f = out / "holdout-settings.json"
    if f.is_file():
        old = json.loads(f.read_text())
        if old != key:
            diff = ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in key.items() if old.get(k) != v)
            raise ConfigError(f"{out} holds models of another holdout setup ({diff}); pass a new --out")
    else:
        f.write_text(json.dumps(key))


def _ensure_run_row(engine, cfg) -> None:
    from sqlmodel import Session

    from loop.controller import versions
    from storage.db import get_run
    from storage.models import Run

    with Session(engine) as s:
        if get_run(s) is None:
            s.add(Run(seed=cfg.run.seed, config_json=json.dumps(cfg.to_dict()), config_hash=cfg.result_hash(),
                      versions_json=json.dumps(versions())))
            s.commit()


# ---------------------------------------------------------------------------- CLI
def main(argv: list[str]) -> int:
    if "-q" in argv or "--quiet" in argv:  # before anything imports tqdm, which reads it at import
        os.environ["TQDM_DISABLE"] = "1"
    from corpus import ALL_TOPICS, CorpusError
    from loop.base_model import ModelError
    from loop.cli import build_from_args, parser as run_parser
    from loop.config import ConfigError
    from storage.db import StorageError

    if not argv or argv[0] not in ("discovery", "holdout"):
        print("usage: python run.py experiment {discovery,holdout} [options]; see --help of each", file=sys.stderr)
        return 2
    name = argv[0]
    about = {"discovery": "same decode budget per sampler; yields with 95% CIs over seeds; a picture",
             "holdout": "the NN1/NN2 test: NN1 without topic T, NN2 continued with it; dark share and decodes"}
    p = argparse.ArgumentParser(prog=f"run.py experiment {name}", parents=[run_parser()], add_help=False,
                                description=about[name])
    p.add_argument("--json", help="where to write the figures (default RUN_DIR/experiments/NAME-TIME.json)")
    if name == "discovery":
        p.add_argument("--run", help="an existing run folder to use (default: run or resume --out for 1 generation)")
        p.add_argument("--generation", type=int, help="generation whose SLLM and map to use (default: the latest mapped)")
        p.add_argument("--budget", type=int, default=200, help="decodes per sampler per seed (default 200)")
        p.add_argument("--seeds", type=int, default=3, help="seeds; the 95%% CI is over them (default 3)")
        p.add_argument("--png", help="picture path (default RUN_DIR/experiments/discovery-TIME.png)")
        p.add_argument("--only", help="comma-separated subset of samplers (default dark,prior,interpolate,lm)")
    else:
        p.add_argument("--topic", required=True, choices=ALL_TOPICS, help="topic T held out of NN1")
        p.add_argument("--control", choices=ALL_TOPICS, help="a topic NN1 did see (default: another one)")
        p.add_argument("--continue-epochs", type=int, help="NN2's continued epochs (default sllm.continue_epochs)")
        p.add_argument("--max-texts", type=int, default=96, help="texts per topic encoded and decoded (default 96)")
        p.add_argument("--base-sees-topic", action="store_true",
                       help="train the base LM on every topic (default: without T, the cleanest test)")
    args = p.parse_args(argv[1:])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    logging.basicConfig(level=logging.INFO if not args.quiet else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "sentence_transformers", "transformers", "peft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg = build_from_args(args)
        if cfg.run.threads:
            import torch

            torch.set_num_threads(cfg.run.threads)
        if name == "discovery":
            return _main_discovery(args, cfg)
        return _main_holdout(args, cfg)
    except (ConfigError, CorpusError, ModelError, StorageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: trained models are saved; rerun the same command to resume", file=sys.stderr)
        return 130
    except RuntimeError as e:
        if "state_dict" not in str(e):
            raise
        print("error: a saved SLLM does not fit the current model code or settings (made by an older version?); "
              "use a run folder made by this version, or a new --out", file=sys.stderr)
        return 2


def _main_discovery(args, cfg) -> int:
    from loop.config import ConfigError
    from loop.controller import Loop

    if args.budget < 1 or args.seeds < 1:
        raise ConfigError(f"--budget and --seeds must be >= 1, got {args.budget} and {args.seeds}")
    samplers = SAMPLERS
    if args.only:
        samplers = tuple(s.strip() for s in args.only.split(",") if s.strip())
        bad = [s for s in samplers if s not in SAMPLERS]
        if bad or not samplers:
            raise ConfigError(f"--only: unknown sampler(s) {bad}; choose from {', '.join(SAMPLERS)}")
    if args.run:
        run_dir = Path(args.run)
        ignored = [i.split("=")[0] for i in args.set if not i.startswith("run.threads")]
        ignored += [f"--{a.replace('_', '-')}" for a in ("generations", "out", "seed", "base_model", "corpus", "samplers")
                    if getattr(args, a) is not None]
        if ignored:
            log.warning("--run uses that run's own settings; ignoring %s", ", ".join(ignored))
        threads = cfg.run.threads
        cfg = _run_config(run_dir)  # the run's own settings, so the models load as they were trained
        cfg.run.threads = threads
    else:
        if args.generations is None:
            cfg.run.generations = 1
        run_dir = Path(cfg.run.out)
        print(f"making sure run {run_dir} has {cfg.run.generations} generation(s) (resumable)", file=sys.stderr)
        Loop(cfg).run()
    if cfg.corpus.path is not None:
        log.warning("a user corpus has no verifier: parseable/true/true-new stay 0; accepted and novelty still count")
    res = discovery(cfg, run_dir, args.generation, args.budget, args.seeds, Path(args.png) if args.png else None,
                    Path(args.json) if args.json else None, samplers)
    print(res["table"])
    print(f"\nexperiment {res['experiment_id']} stored in {run_dir / 'runs.db'}; "
          f"picture {res['artifacts']['png']}; figures {res['artifacts']['json']}; {res['seconds']:.0f} s")
    return 0


def _main_holdout(args, cfg) -> int:
    from corpus import ALL_TOPICS
    from loop.config import ConfigError

    if cfg.corpus.path is not None:
        raise ConfigError("experiment holdout needs the built-in maths corpus (topics and a verifier); drop --corpus")
    if cfg.base.model:
        raise ConfigError("experiment holdout trains its own base model without the topic; drop --base-model")
    control = args.control or next(t for t in ALL_TOPICS if t != args.topic)
    if control == args.topic:
        raise ConfigError(f"--control must differ from --topic ({args.topic}); pick a topic NN1 sees")
    out = Path(args.out) if args.out else Path("runs") / f"holdout-{args.topic}"
    cont = cfg.sllm.continue_epochs if args.continue_epochs is None else args.continue_epochs
    if cont < 1:
        raise ConfigError(f"--continue-epochs must be >= 1, got {cont}")
    res = holdout(cfg, out, args.topic, control, cont, args.max_texts, args.base_sees_topic,
                  Path(args.json) if args.json else None)
    print(res["table"])
    print(f"\nexperiment {res['experiment_id']} stored in {out / 'runs.db'}; figures {res['artifacts']['json']}; "
          f"{res['seconds']:.0f} s")
    return 0
