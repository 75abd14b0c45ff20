"""The holdout experiment (the idea's NN1/NN2 test): where does an unseen topic fall in NN1's map?"""
from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import numpy as np
from sqlmodel import Session

from common.errors import ConfigError
from domains.base import get_domain
from experiments.common import _fmt_ci, ci95, plain_table, store_experiment
from latent.features import FeatureDictionary
from loop.context import RunContext
from loop.runner import Loop, environment, run_config, run_versions
from loop.stages import load_map
from sllm.codec import GenParams
from storage.db import RunLock, get_run, open_db
from storage.layout import RunLayout
from storage.models import Run

log = logging.getLogger(__name__)

# Settings the NN2 a holdout folder trains does not depend on (the feature dictionary is NN1's map's,
# whose own run checks its settings; the evaluate stage's knowledge probe never runs): left out of
# the key a holdout folder's models were trained under.
MEASURE_ONLY = ("features", "evaluate")


# ---------------------------------------------------------------------------- shared by every domain
def locate(occ, z1: np.ndarray, z2: np.ndarray, features=None) -> tuple[dict, tuple[np.ndarray, ...]]:
    """Where one group's NN2 latents `z2` (N, D) fall in NN1's map `occ`, beside NN1's own latents
    `z1` of the same texts: (the HOLDOUT_ROWS figures, (dark, gmm_dark, inside, density score) per text).
    With NN1's feature dictionary `features`, also the holdout test at feature level: the share of
    the texts whose code holds one of NN1's dark combinations."""
    dark2, gdark2, inside2 = occ.is_dark(z2), occ.gmm_dark(z2), occ.inside(z2)
    dens2 = occ.density_score(z2)
    drift = np.linalg.norm(z2 - z1, axis=1) / occ.threshold
    figures = {
        "dark_share_nn2_in_nn1_map": float(dark2.mean()),
        "gmm_dark_share_nn2_in_nn1_map": float(gdark2.mean()),
        "outside_envelope_share": float((~inside2).mean()),
        "knn_dark_share_ignoring_envelope": float((dens2 > 1).mean()),
        "dark_share_nn1_own_encoding": float(occ.is_dark(z1).mean()),
        "density_score_median": float(np.median(dens2)),
        "drift_nn1_to_nn2": float(np.median(drift)),
    }
    if features is not None:
        figures["dark_combination_share_nn1_own_encoding"] = features.dark_combination_share(z1)[1]
        figures["dark_combination_share_nn2"] = features.dark_combination_share(z2)[1]
        for key, z in (("nn1_own_encoding", z1), ("nn2", z2)):
            lift = features.rarest_pair_lift(z)
            figures[f"rarest_pair_lift_median_{key}"] = float(np.nanmedian(lift)) if np.isfinite(lift).any() else None
    return figures, (dark2, gdark2, inside2, dens2)


def reencode(occ, nn1, decodes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The round-trip check of NN1's decodes: each decode encoded again by NN1 (a `Codec`) and placed
    in NN1's map: (dark (N,), density score (N,)). A decode of a dark latent that re-encodes into an
    occupied region snapped back to known content."""
    z = nn1.reencode(decodes)
    return occ.is_dark(z), occ.density_score(z)


def nn1_reencode_figures(dark: np.ndarray, dens: np.ndarray, idx: np.ndarray) -> dict:
    """Of the texts `idx`: the share of NN1's decodes still dark once re-encoded, and their median density score."""
    return {"reencoded_dark_nn1": float(dark[idx].mean()), "reencoded_density_median_nn1": float(np.median(dens[idx]))}


def location_rows(groups: dict, names: tuple[str, ...]) -> list[list[str]]:
    """The HOLDOUT_ROWS lines of a holdout table, one column per group in `names` (rows no group has left out)."""
    return [[label] + [fmt.format(groups[n][key]) if key in groups[n] else "-" for n in names]
            for key, label, fmt in HOLDOUT_ROWS if any(key in groups[n] for n in names)]


def calibration_line(c: dict, what: str = "held-out texts of topics it saw") -> str | None:
    """The map's false-dark rate on real texts it never trained on (`OccupancyMap.calibrate`)."""
    if c.get("false_dark_rate") is None:
        return None
    return (f"NN1 map false-dark rate on {c['heldout']} {what}: kNN "
            f"{c['false_dark_rate']:.1%}, GMM {c['false_dark_rate_gmm']:.1%}")


# ---------------------------------------------------------------------------- holdout (maths)
def topic_runs(cfg, out: Path, topic: str, continue_epochs: int, base_sees_topic: bool) -> dict:
    """The settings of the runs a topic holdout is made of, each a run folder in `out`:
    NN1 (`nn1`) = generation 0's base model, SLLM and map of a run that leaves `topic` out
    (`corpus.leave_out`); NN2 (`nn2`) = NN1's SLLM trained `continue_epochs` more (`sllm.init`) on
    the whole corpus, on NN1's base model. With `base_sees_topic`, both use the base model of a run
    on the whole corpus (`base`) instead, so only the SLLM misses the topic."""
    runs = {}
    if base_sees_topic:
        runs["base"] = one_generation(cfg, out / "base")
    shared_base = str(RunLayout(out / "base").base) if base_sees_topic else ""
    runs["nn1"] = one_generation(cfg, out / "nn1")
    runs["nn1"].corpus.leave_out, runs["nn1"].base.model = topic, shared_base
    runs["nn2"] = continued(cfg, out / "nn2", shared_base or str(RunLayout(out / "nn1").base),
                            RunLayout(out / "nn1").sllm(0), continue_epochs)
    return runs


def one_generation(cfg, folder: Path):
    """`cfg` for a one-generation run in `folder` (its stages chosen by `Loop.run(until=...)`)."""
    c = copy.deepcopy(cfg)
    c.run.out, c.run.generations = str(folder), 1
    return c


def continued(cfg, folder: Path, base_model: str, sllm: Path, epochs: int, texts_file: str = ""):
    """`cfg` for an NN2 run in `folder`: the SLLM in `sllm` trained `epochs` more on `base_model`
    (and on `texts_file` besides the corpus)."""
    c = one_generation(cfg, folder)
    c.base.model = base_model
    c.sllm.init, c.sllm.epochs, c.sllm.texts_file = str(sllm), epochs, texts_file
    return c


# The last stage each of a topic holdout's runs needs: NN1 its map, NN2 its SLLM.
UNTIL = {"base": "base", "nn1": "map", "nn2": "sllm"}


def holdout(cfg, out: Path, topic: str, control: str, continue_epochs: int, max_texts: int,
            base_sees_topic: bool, json_path: Path | None) -> dict:
    """The NN1/NN2 test. Resumable: its runs (`topic_runs`) resume as any run does."""
    import sacrebleu  # lazy: sacrebleu start-up, not needed for --help

    t0 = time.perf_counter()
    domain = get_domain(cfg.corpus.domain_name)
    verify, embed = domain.verifier, domain.meaning_embedder().embed  # the figures' space
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    with RunLock(out):
        _check_holdout_folder(out, {"topic": topic, "base_sees_topic": base_sees_topic, "continue_epochs": continue_epochs,
                                    "nn_runs": True, "config_hash": cfg.result_hash(leave_out=MEASURE_ONLY)}, cfg)
        engine = open_db(out, create=True)
        _ensure_run_row(engine, cfg)
        engine.dispose()
        runs = topic_runs(cfg, out, topic, continue_epochs, base_sees_topic)
        for name, c in runs.items():
            t1 = time.perf_counter()
            Loop(c).run(until=UNTIL[name])
            timings[f"{name}_s"] = time.perf_counter() - t1
        ctx1, ctx2 = RunContext(runs["nn1"]), RunContext(runs["nn2"])
        # one copy of the base model per network: each wears its own decoder adapter
        tok, model1 = ctx1.model(None)
        nn1 = ctx1.codec(0, model1, tok)
        nn2 = ctx2.codec(0, ctx2.model(None)[1], tok)
        train_fact_keys = ctx2.data.train_fact_keys
        groups = {"topic": [t for t in ctx2.data.train if t.topic == topic][:max_texts],
                  "control": [t for t in ctx1.data.train if t.topic == control][:max_texts]}
        heldout_seen = ctx1.data.knowledge  # real texts NN1 never trained on, of the topics it saw

        t1 = time.perf_counter()
        occ = load_map(ctx1, 0)
        features = FeatureDictionary.of_map(ctx1.layout.map(0), cfg.features, cfg.run.seed)
        calib = occ.calibrate(nn1.encode([t.text for t in heldout_seen]))
        greedy = GenParams(cfg.decode.max_new_tokens, 0.0, cfg.run.seed)
        per_group, samples = {}, []
        for gname, items in groups.items():
            orig = [t.text for t in items]
            want = topic if gname == "topic" else control
            z2 = nn2.encode(orig)  # (N, latent)
            z1 = nn1.encode(orig)
            where, (dark2, gdark2, inside2, dens2) = locate(occ, z1, z2, features)
            dec = {}
            for dname, net in (("nn1", nn1), ("nn2", nn2)):  # one base model path: NN1's backend serves both
                dec[dname] = net.decode(z2, ctx1.backend(None, (tok, net.model)), greedy)
            rdark, rdens = reencode(occ, nn1, dec["nn1"])
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
                    **nn1_reencode_figures(rdark, rdens, idx),
                }

            per_group[gname] = {
                "topic": want, "texts": len(orig), "seen_by_nn1": gname == "control", **where,
                # the envelope test rejects most NN2 latents of the control too (encoder drift), so the
                # subset uses the density criterion alone: kNN-darker than NN1's texts (sample.dark_quantile)
                "all": figures(np.ones(len(orig), bool)), "dark_only": figures(dens2 > 1),
            }
            for i, o in enumerate(orig):
                for dname, vs in (("nn1", v1), ("nn2", v2)):
                    samples.append({
                        "kind": f"{gname}/{dname}", "seed": cfg.run.seed, "text": dec[dname][i], "source": o,
                        "verdict": vs[i].status, "fact_key": vs[i].fact_key,
                        "true_new": vs[i].status == "true" and vs[i].fact_key not in train_fact_keys,
                        "density_score": float(dens2[i]), "dark": bool(dark2[i]),
                        "detail": {"topic": want, "decoded_topic": vs[i].topic, "gmm_dark": bool(gdark2[i]),
                                   "inside": bool(inside2[i]),
                                   **({"reencoded_density": float(rdens[i]), "reencoded_dark": bool(rdark[i])}
                                      if dname == "nn1" else {})},
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
    artifacts = {"json": str(json_path), "base": ctx1.base_path(), "nn1": str(ctx1.layout.sllm(0)),
                 "map": str(ctx1.layout.map(0)), "nn2": str(ctx2.layout.sllm(0)),
                 "runs": {name: c.run.out for name, c in runs.items()}}
    return save_holdout(out, settings, result, table, artifacts, seconds, samples, json_path)


def save_holdout(out: Path, settings: dict, result: dict, table: str, artifacts: dict, seconds: float,
                 samples: list[dict], json_path: Path) -> dict:
    """Store a holdout's row and samples in `out`'s database and write its JSON; the result, with
    its experiment id, table and artifacts."""
    result["experiment_id"] = store_experiment(out, "holdout", settings, result, table, artifacts, seconds, samples)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"settings": settings, "result": result, "table": table, "artifacts": artifacts,
                                     "environment": environment()}, indent=2, default=str))
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
    ("dark_combination_share_nn1_own_encoding", "share holding a dark combination of NN1's features (NN1 encoding)",
     "{:.1%}"),
    ("dark_combination_share_nn2", "share holding a dark combination of NN1's features (NN2 latents)", "{:.1%}"),
    ("rarest_pair_lift_median_nn1_own_encoding", "median rarest-pair lift of NN1's features (NN1 encoding; < 1: rarer "
     "than chance)", "{:.2f}"),
    ("rarest_pair_lift_median_nn2", "median rarest-pair lift of NN1's features (NN2 latents)", "{:.2f}"),
]
HOLDOUT_DECODE_ROWS = [
    ("bleu_nn1_vs_nn2", "BLEU NN1 decode vs NN2 decode (0-1)"), ("cosine_nn1_vs_nn2", "cosine NN1 vs NN2 decode"),
    ("bleu_nn1_vs_original", "BLEU NN1 decode vs original"), ("cosine_nn1_vs_original", "cosine NN1 decode vs original"),
    ("bleu_nn2_vs_original", "BLEU NN2 decode vs original"), ("cosine_nn2_vs_original", "cosine NN2 decode vs original"),
    ("exact_nn1", "exact match NN1 decode"), ("exact_nn2", "exact match NN2 decode"),
    ("true_nn1", "verifier true, NN1 decode"), ("true_nn2", "verifier true, NN2 decode"),
    ("on_topic_nn1", "parsed as the same topic, NN1 decode"), ("on_topic_nn2", "parsed as the same topic, NN2 decode"),
    ("reencoded_dark_nn1", "NN1 decode dark once re-encoded by NN1"),
    ("reencoded_density_median_nn1", "median density score of NN1 decode re-encoded"),
]


def holdout_table(result: dict) -> str:
    g = result["groups"]
    headers = ["figure", f"topic {result['topic']} (unseen by NN1)", f"control {result['control']} (seen)"]
    rows = location_rows(g, ("topic", "control"))
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
    if calibration_line(c):
        lines.append(calibration_line(c))
    return "\n".join(lines)


def _check_holdout_folder(out: Path, key: dict, cfg) -> None:
    """The folder's models were trained for one (topic, base, settings): refuse to mix them. A folder
    made before a setting was added (its settings hash differs, its settings do not) is the same
    setup: its key is brought up to date."""
    f = out / "holdout-settings.json"
    old = json.loads(f.read_text()) if f.is_file() else None
    if old == key:
        return
    if old is not None:
        diff = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in key.items() if old.get(k) != v and k != "config_hash"]
        if not diff:  # only the settings hash differs: compare the settings the folder's run row holds
            try:
                diff = cfg.settings_diff(run_config(out), leave_out=MEASURE_ONLY)
            except ValueError:  # a key written, its run row not (stopped in between)
                diff = ["config_hash " + repr(old.get("config_hash")) + " -> " + repr(key["config_hash"])]
        if diff:
            raise ConfigError(f"{out} holds models of another holdout setup ({', '.join(diff[:4])}); pass a new --out")
        log.info("holdout folder %s predates settings added since; they keep their defaults", out)
    f.write_text(json.dumps(key))


def _ensure_run_row(engine, cfg) -> None:
    with Session(engine) as s:
        if get_run(s) is None:
            s.add(Run(seed=cfg.run.seed, config_json=json.dumps(cfg.to_dict()), config_hash=cfg.result_hash(),
                      versions_json=json.dumps(run_versions())))
            s.commit()


# ---------------------------------------------------------------------------- intervals over training seeds
def _numeric_leaves(d: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_numeric_leaves(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def combine_holdout_seeds(results: dict[str, dict]) -> dict:
    """Intervals over training seeds: each run of the holdout (one training seed: its own NN1, NN2 and,
    on molecules, its own base model and map) is one observation of every figure; per figure the mean
    and 95% Student-t interval over them. Figures missing in a run (an empty dark-only subset) count
    only where present, and `n` says over how many."""
    leaves = {name: {**_numeric_leaves(r["groups"], "groups/"),
                     **_numeric_leaves(r.get("calibration_nn1_map", {}), "calibration/")}
              for name, r in results.items()}
    keys = list(dict.fromkeys(k for v in leaves.values() for k in v))
    figures = {k: ci95([v[k] for v in leaves.values() if k in v]) for k in keys}
    groups = ("topic", "control")
    first = next(iter(results.values()))
    names = [first["groups"][g]["topic"] for g in groups]
    rows = []
    loc = [key for key, _, _ in HOLDOUT_ROWS] + ["scaffold_in_nn1_training", "scaffold_in_part_a"]
    decode_keys = [k.split("/", 3)[3] for k in keys if k.startswith("groups/topic/all/") and k.count("/") == 3]
    labels = {key: label for key, label, _ in HOLDOUT_ROWS}
    labels.update(HOLDOUT_DECODE_ROWS)

    def cell(k: str) -> str:
        c = figures.get(k)
        if c is None or c["mean"] is None:
            return "–"
        digits = 0 if k.endswith("/texts") else (2 if "density" in k or "drift" in k else 3)
        return _fmt_ci(c, digits) + ("" if c["n"] == len(results) else f" (n={c['n']})")

    for key in loc:
        if any(f"groups/{g}/{key}" in figures for g in groups):
            rows.append([labels.get(key, key.replace("_", " "))] + [cell(f"groups/{g}/{key}") for g in groups])
    for sub, title in (("all", "all texts"), ("dark_only", "only NN2 latents kNN-darker than NN1's texts")):
        rows.append([f"-- decodes of {title}: n", *[cell(f"groups/{g}/{sub}/texts") for g in groups]])
        for key in decode_keys:
            if key != "texts":
                rows.append(["   " + labels.get(key, key.replace("_", " "))]
                            + [cell(f"groups/{g}/{sub}/{key}") for g in groups])
    for key in ("false_dark_rate", "false_dark_rate_gmm"):
        if f"calibration/{key}" in figures:
            rows.append([f"NN1 map {key.replace('_', ' ')} (held-out texts)", cell(f"calibration/{key}"), ""])
    headers = ["figure", f"{names[0]} (unseen by NN1)", f"control {names[1]}"]
    table = "\n".join([plain_table(headers, rows),
                       f"mean [95% CI, Student t over {len(results)} training seeds]; shares as fractions (0-1), "
                       "counts (n_) per run; (n=k): the figure exists in k runs only (an empty subset elsewhere)"])
    return {"figures": figures, "runs": list(results), "table": table}
