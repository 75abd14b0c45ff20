"""The generations experiment: the loop as a loop, over many generations, against its baselines.

Each variant is the same loop with another source of the texts it learns from, run for G
generations from the same generation 0 (one per training seed; `loop.branch`):

- dark: candidates from the dark zones (the method);
- prior: candidates from the latent prior (the envelope), not aimed at dark zones;
- lm: the base model's own samples (the self-training baseline of ReST-EM and STaR);
- replay: decoded and judged as dark, but the base model and SLLM learn as many corpus texts in
  place of the accepted ones (`retrain.source=corpus`): the same fine-tuning steps, no generated
  text, the control for "more training".

Every variant gets the same decode budget (sample.n_candidates a generation) and the same judges.
Each generation's evaluate stage measures what the model it leaves knows (`Domain.knowledge_figures`)
and its collapse telemetry; this module reads those figures back from every variant's database
and gives, per variant, curves against generation with 95% intervals over training seeds, the last
generation's figures, their rise from generation 0 (per seed) and each curve's mean level (its
area over the generations run, divided by their number). Every variant is a run folder (OUT/VARIANT/seed-S), so the experiment resumes after
a kill and reuses a finished variant.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from sqlmodel import Session, select

from common.errors import ConfigError
from experiments.common import _fmt_ci, ci95, plain_table, store_experiment
from experiments.plots import _plt
from latent.samplers import check_loop_samplers
from loop.branch import branch
from loop.config import build_config
from loop.runner import Loop, environment, run_config
from storage.db import open_db
from storage.models import Candidate, Metric, Stage

log = logging.getLogger(__name__)

# A variant is a loop sampler's name (that sampler draws the candidates, the loop learns what is
# accepted) or REPLAY (the replay sampler draws them, the loop learns corpus texts in their place).
REPLAY = "replay"
DEFAULT_VARIANTS = ("dark", "prior", "lm", REPLAY)
DEFAULT_REPLAY_SAMPLER = "dark"
# The CPU protocol: generation 0's SLLM is kept (continued SLLM training on the 16,000 maths language
# texts is 80 s a generation, 2 hours over 96 generations); the base model under it is LoRA-retrained
# every generation. `--set sllm.continue_epochs=1` restores the full loop (the GPU protocol).
PROTOCOL = {"sllm.continue_epochs": 0}
# domain metrics of each generation's decodes that add up over generations
CUMULATIVE = ("rediscovered", "novel_scaffolds")


def check_variants(variants: tuple[str, ...], replay_sampler: str) -> None:
    """Refuse an unknown variant, a repeated one, or a sampler the loop cannot run, before any work."""
    if not variants or len(set(variants)) < len(variants):
        raise ConfigError(f"--variants {','.join(variants)!r}: give distinct variants, e.g. {','.join(DEFAULT_VARIANTS)}")
    try:
        check_loop_samplers([v for v in variants if v != REPLAY] + [replay_sampler], features=True)
    except ConfigError as e:
        raise ConfigError(f"--variants: {e} (or {REPLAY}: the replay control)") from None


def variant_config(start_cfg, variant: str, generations: int, out: Path, overrides: dict,
                   replay_sampler: str = DEFAULT_REPLAY_SAMPLER):
    """A variant's settings: its start run's, the protocol, the user's overrides, then the variant's own."""
    sampler, source = (replay_sampler, "corpus") if variant == REPLAY else (variant, "accepted")
    values = {**PROTOCOL, **overrides, "sample.samplers": sampler, "retrain.source": source,
              "run.generations": generations, "run.out": str(out)}
    return build_config(start_cfg.to_dict(), values)


def run_variants(starts: dict[int, Path], variants: tuple[str, ...], generations: int, out: Path, overrides: dict,
                 threads: int, replay_sampler: str = DEFAULT_REPLAY_SAMPLER) -> dict[tuple[str, int], Path]:
    """Every variant on every training seed's start run, each branched once and then resumed."""
    folders = {}
    for seed, start in starts.items():
        start_cfg = run_config(start)
        for v in variants:
            dst = out / v / f"seed-{seed}"
            cfg = variant_config(start_cfg, v, generations, dst, overrides, replay_sampler)
            cfg.run.threads = threads
            if branch(start, cfg):
                log.info("%s: branched from %s", dst, start)
            t0 = time.perf_counter()
            Loop(cfg).run()  # a finished variant: every stage done, nothing runs
            log.info("%s: %d generation(s) in %.0f s", dst, generations, time.perf_counter() - t0)
            folders[(v, seed)] = dst
    return folders


# ---------------------------------------------------------------------------- figures
def run_figures(run_dir: Path) -> dict[int, dict[str, float]]:
    """Per generation, the figures of one variant run: the metrics row, the evaluate stage's knowledge
    figures, the running totals (distinct true-new facts; CUMULATIVE domain metrics of the decodes)
    and the number of collapse flags."""
    engine = open_db(run_dir)
    try:
        with Session(engine) as s:
            metrics = {m.generation: m for m in s.exec(select(Metric))}
            details = {st.generation: json.loads(st.detail_json) for st in s.exec(select(Stage).where(Stage.name == "evaluate"))}
            new_keys = s.exec(select(Candidate.generation, Candidate.fact_key).where(Candidate.true_new == True)).all()  # noqa: E712
    finally:
        engine.dispose()
    out, seen, totals = {}, set(), {k: 0.0 for k in CUMULATIVE}
    for g in sorted(metrics):
        m, d = metrics[g], details.get(g, {})
        seen |= {k for gg, k in new_keys if gg == g}
        f = {"heldout_ppl": m.heldout_ppl, "distinct_2": m.distinct_2, "acceptance_rate": m.acceptance_rate,
             "accepted": float(m.accepted), "true_new": float(m.true_new), "true_new_distinct_cumulative": float(len(seen)),
             "collapse_flags": float(len(d.get("collapse") or []))}
        f.update({f"knowledge_{k}": v for k, v in (d.get("knowledge") or {}).items() if isinstance(v, (int, float))})
        dm = d.get("domain_metrics") or {}
        for k in CUMULATIVE:
            if isinstance(dm.get(k), (int, float)):
                totals[k] += dm[k]
                f[f"{k}_cumulative"] = totals[k]
        out[g] = {k: (None if v is None or not np.isfinite(v) else float(v)) for k, v in f.items()}
    return out


def combine(per_run: dict[tuple[str, int], dict[int, dict]], generations: int) -> dict:
    """Per variant and figure: the curve (mean and 95% interval over training seeds a generation),
    the last generation's figure and the mean level (area under the curve over the generations run,
    divided by their number), each with its interval over seeds."""
    variants = list(dict.fromkeys(v for v, _ in per_run))  # in the order they ran
    keys = sorted({k for figs in per_run.values() for f in figs.values() for k in f})
    out: dict = {}
    for v in variants:
        runs = [figs for (vv, _), figs in per_run.items() if vv == v]
        out[v] = {}
        for k in keys:
            curve = [ci95([r.get(g, {}).get(k) for r in runs]) for g in range(generations)]
            last = ci95([r.get(generations - 1, {}).get(k) for r in runs])
            level = ci95([_level([r.get(g, {}).get(k) for g in range(generations)]) for r in runs])
            rise = ci95([_rise(r.get(0, {}).get(k), r.get(generations - 1, {}).get(k)) for r in runs])
            out[v][k] = {"curve": curve, "last": last, "level": level, "rise": rise}
    return out


def _rise(first: float | None, last: float | None) -> float | None:
    """Last generation's figure minus generation 0's, on one seed: the seed's own starting point taken
    out, so that the interval over seeds measures the change, not how the seeds differ."""
    return None if first is None or last is None else last - first


def _level(values: list) -> float | None:
    """The area under a figure's curve over generations 0..G-1 (trapezoid), divided by G-1: its mean
    level; None where a generation lacks the figure."""
    if any(x is None for x in values):
        return None
    if len(values) == 1:
        return float(values[0])
    return float(np.trapezoid(values) / (len(values) - 1))


def table(combined: dict, keys: list[str], which: str) -> str:
    variants = list(combined)
    rows = [[k] + [_fmt_ci(combined[v][k][which], 3) if k in combined[v] else "–" for v in variants] for k in keys]
    return plain_table(["figure"] + variants, rows)


# figures in the tables and the picture, in order, where a run has them
SHOWN = ("knowledge_heldout_auc", "knowledge_corpus_auc", "knowledge_heldout_recall", "knowledge_corpus_recall",
         "knowledge_sample_truth", "knowledge_valid", "knowledge_unique", "knowledge_novel", "knowledge_FCD/Test",
         "knowledge_SNN/Test", "rediscovered_cumulative", "novel_scaffolds_cumulative", "true_new_distinct_cumulative",
         "accepted", "heldout_ppl", "distinct_2", "collapse_flags")


def shown_keys(combined: dict) -> list[str]:
    have = {k for v in combined.values() for k, c in v.items() if any(p["mean"] is not None for p in c["curve"])}
    return [k for k in SHOWN if k in have]


def curves_png(path: Path, combined: dict, keys: list[str], title: str) -> Path:
    """One panel a figure: every variant's mean against generation, its 95% interval shaded."""
    plt = _plt()
    cols = 4
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    colours = dict(zip(combined, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, k in zip(axes.flat, keys):
        for v, figs in combined.items():
            curve = figs.get(k, {}).get("curve") or []
            gens = [g for g, p in enumerate(curve) if p["mean"] is not None]
            if not gens:
                continue
            mean = [curve[g]["mean"] for g in gens]
            ax.plot(gens, mean, marker="o", ms=3, label=v, color=colours.get(v))
            lo = [curve[g]["lo"] if curve[g]["lo"] is not None else curve[g]["mean"] for g in gens]
            hi = [curve[g]["hi"] if curve[g]["hi"] is not None else curve[g]["mean"] for g in gens]
            ax.fill_between(gens, lo, hi, alpha=0.15, color=colours.get(v))
        ax.set_title(k.replace("knowledge_", "knows: "), fontsize=10)
        ax.set_xlabel("generation", fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def generations_experiment(starts: dict[int, Path], variants: tuple[str, ...], generations: int, out: Path,
                           overrides: dict, threads: int, png: Path | None, json_path: Path | None,
                           replay_sampler: str = DEFAULT_REPLAY_SAMPLER) -> dict:
    """Run (or resume) every variant, then the figures, the tables, the picture; stored with each start run."""
    t0 = time.perf_counter()
    folders = run_variants(starts, variants, generations, out, overrides, threads, replay_sampler)
    per_run = {key: run_figures(f) for key, f in folders.items()}
    combined = combine(per_run, generations)
    keys = shown_keys(combined)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    png = png or out / "experiments" / f"generations-{stamp}.png"
    json_path = json_path or out / "experiments" / f"generations-{stamp}.json"
    seeds = sorted(starts)
    curves_png(png, combined, keys, f"{generations} generations, training seeds {seeds}: mean and 95% interval")
    text = (f"last generation ({generations - 1}), mean [95% interval] over training seeds {seeds}\n"
            + table(combined, keys, "last")
            + "\n\nrise from generation 0 to the last (per seed, then mean [95% interval])\n"
            + table(combined, keys, "rise")
            + "\n\nmean level over the generations (area under the curve / generations)\n"
            + table(combined, keys, "level"))
    flagged = {f"{v}/seed-{s}": [g for g, f in figs.items() if f.get("collapse_flags")]
               for (v, s), figs in per_run.items()}
    flagged = {k: g for k, g in flagged.items() if g}
    text += ("\n\ncollapse flags (generations): " + "; ".join(f"{k} {g}" for k, g in flagged.items())
             if flagged else "\n\nno variant flagged a collapse")
    seconds = time.perf_counter() - t0
    settings = {"variants": list(variants), "replay_sampler": replay_sampler, "generations": generations, "starts": {s: str(p) for s, p in starts.items()},
                "out": str(out), "overrides": {**PROTOCOL, **overrides}, "threads": threads}
    result = {"combined": combined, "per_run": {f"{v}/seed-{s}": figs for (v, s), figs in per_run.items()},
              "folders": {f"{v}/seed-{s}": str(p) for (v, s), p in folders.items()}, "collapse": flagged}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"settings": settings, "result": result, "table": text, "seconds": seconds,
                                     "environment": environment()}, indent=1, default=str))
    artifacts = {"png": str(png.resolve()), "json": str(json_path.resolve())}  # the start runs' reports find them
    ids = [store_experiment(p, "generations", settings, result, text, artifacts, seconds, []) for p in starts.values()]
    for p in starts.values():  # their reports show the curves from now on
        Loop(run_config(p)).refresh_report()
    return {"table": text, "artifacts": artifacts, "seconds": seconds, "experiment_ids": ids, "combined": combined}
