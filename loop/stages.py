"""The stages of one generation, each defined once: name, run, artifact, what it clears.

The runner (`loop.runner.Loop`, on a `loop.context.RunContext`), resume (`verify_artifacts`, `invalidate_from`) and the crash
harness (`cli.crashtest`) all read `STAGES`; nothing else lists the stages. Each `run` reads
what earlier stages stored, writes its artifact atomically (`loop.artifacts.atomic_dir`), adds
its rows to the open session and returns the stage's detail; the runner commits the rows with
the Stage row in one transaction. `clear` deletes (or blanks) the rows the stage wrote for a
generation, so that a stage made not-done leaves nothing of itself behind.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from sqlmodel import Session, delete, select

from judges.base import judge_with_role
from judges.coherence import token_nll
from judges.panel import build_panel, judge_texts
from latent.features import FeatureDictionary
from latent.samplers import draw
from latent.zones import find_zones, zones_from_rows
from lm import distributed
from lm.base_model import perplexity, train_small_base
from lm.embedder import embed_cached
from lm.lora import lora_finetune, retrain_texts
from loop.artifacts import MANIFEST, atomic_dir, check
from sllm.codec import Codec
from storage.db import stage_detail
from storage.models import Candidate, Metric, Score, Stage as StageRow, Zone
from storage.layout import RunLayout
from storage.queries import generate_share

if TYPE_CHECKING:
    from loop.context import RunContext


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RunContext, Session, int, int], dict]  # (loop, session, generation, seed) -> detail
    # The folder a done stage wrote, from the run folder, its generation and detail; None when it
    # wrote none (or a user's base model was used in place).
    artifact: Callable[[Path, int, dict], Path | None] = lambda out, g, detail: None
    clear: Callable[[Session, int], None] = lambda s, g: None  # delete/blank its rows of generation g
    first_generation_only: bool = False
    # The stages whose rows or artifacts it reads: this generation's, or, for a stage later in the
    # order (judge, retrain), earlier generations' (accepted texts, the adapter it starts with).
    reads: tuple[str, ...] = ()
    # It trains under several processes (torchrun): every rank runs it, rank 0 alone writes.
    every_rank: bool = False
    # Its detail["line"] is the generation's metrics line: printed, and the run report refreshed.
    ends_generation: bool = False


# ------------------------------------------------------------------------------------ base
def run_base(loop: RunContext, s: Session, g: int, seed: int) -> dict:
    cfg = loop.cfg
    if cfg.base.model:
        tok, model = loop.model(None)  # validates the folder through the same loading code
        return {"path": cfg.base.model, "trained": False, "params": sum(p.numel() for p in model.parameters())}
    d = loop.data
    extra = (loop.domain.base_texts(cfg.corpus, seed, cfg.base.extra_texts, set(d.train_texts))
             if cfg.base.extra_texts else [])
    with atomic_dir(loop.layout.base, (g, "base")) as tmp:
        info = train_small_base(d.train_texts + extra, cfg.base, tmp, seed,
                                groups=[t.fact_key for t in d.train] + [None] * len(extra),
                                copy_texts=[t.text for t in loop.language_texts()],
                                tokenizer_fn=loop.domain.train_tokenizer)
    return {"path": str(loop.layout.base), "trained": True, "params": info["params"], "final_loss": info["final_loss"],
            "texts": len(d.train_texts) + len(extra), "extra_texts": len(extra)}


# ------------------------------------------------------------------------------------ sllm
def run_sllm(loop: RunContext, s: Session, g: int, seed: int) -> dict:
    from sllm.train import train_sllm  # lazy: scikit-learn's clustering start-up, not needed for --help

    cfg = loop.cfg
    if g > 0 and cfg.sllm.continue_epochs == 0:  # nothing to learn: generation g-1's SLLM as it was, no model load
        if distributed.is_main():
            check(loop.layout.sllm(g - 1), f"the SLLM checkpoint of generation {g - 1}")
            with atomic_dir(loop.layout.sllm(g), (g, "sllm")) as tmp:
                shutil.copytree(loop.layout.sllm(g - 1), tmp, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns(MANIFEST))
        return {"texts": 0, "accepted_texts": 0, "epochs": 0, "kept_from": g - 1}
    tok, model = loop.model(loop.adapter_for(s, g))
    accepted = loop.learned_texts(s, g - 1)
    language, own = [t.text for t in loop.language_texts()], loop.sllm_file_texts()
    extra = language + own  # e.g. the maths domain's false sentences, and the user's own (sllm.texts_file)
    texts = loop.data.train_texts + accepted + extra
    keys = [t.fact_key for t in loop.data.train] + [None] * (len(accepted) + len(extra))
    embedder = loop.domain.meaning_target(cfg.corpus.meaning)
    targets = None
    if cfg.sllm.meaning_weight > 0:  # corpus + language texts are the same every generation: cached
        with distributed.main_first():  # several processes: rank 0 writes the cache, the others then read it
            fixed = embed_cached(loop.data.train_texts + extra, loop.layout.cache, embedder)
        n = len(loop.data.train_texts)
        targets = np.concatenate([fixed[:n], embedder.embed(accepted), fixed[n:]])
    if g == 0 and cfg.sllm.init:  # another run's SLLM, trained further here
        codec = loop.init_codec(model, tok)
        epochs = cfg.sllm.epochs
    elif g == 0:
        codec = Codec.new(cfg.sllm, model, tok, embedder.dim)
        loop.share_model(model, codec.model)
        epochs = cfg.sllm.epochs
    else:
        codec = loop.codec(g - 1, model, tok)
        epochs = cfg.sllm.continue_epochs
    torch.manual_seed(seed)
    loop.layout.gen(g).mkdir(parents=True, exist_ok=True)
    info = train_sllm(codec.sllm, codec.model, tok, texts, targets, epochs, cfg.sllm.lr, cfg.sllm.batch_size, seed,
                      fact_keys=keys, desc=f"SLLM gen {g}",
                      checkpoint=loop.layout.gen(g) / "sllm-training.ckpt")  # a killed stage resumes at its last epoch
    if distributed.is_main():  # several processes (torchrun): every rank trained, rank 0 alone writes
        with atomic_dir(loop.layout.sllm(g), (g, "sllm")) as tmp:
            codec.save(tmp)
    return {"texts": len(texts), "accepted_texts": len(accepted), "false_texts": len(language),
            "file_texts": len(own), "epochs": epochs,
            "final": info["final"]}


# ------------------------------------------------------------------------------------- map
def run_map(loop: RunContext, s: Session, g: int, seed: int) -> dict:
    from latent.occupancy import OccupancyMap  # lazy: faiss start-up, not needed for --help

    cfg = loop.cfg
    tok, model = loop.model(loop.adapter_for(s, g))
    codec = loop.codec(g, model, tok)
    texts = loop.data.train_texts + loop.accepted_texts(s, g - 1)
    latents = codec.encode(texts)
    # fitted once (sample and decode load it); FAISS on torch's thread count, so that it never changes
    # the OpenMP threads torch's later arithmetic runs on (a resumed run must equal an uninterrupted one)
    occ = OccupancyMap.fit(latents, cfg.sample, seed=seed % 2**31, threads=torch.get_num_threads())
    # the feature dictionary and its dark combinations, over the same latents (the compose sampler's map)
    fd = FeatureDictionary.fit(latents, cfg.features, seed % 2**31) if cfg.features.n_features else None
    rng = np.random.default_rng(seed)
    n_probe = max(2000, 20 * cfg.sample.n_zones)
    probe = occ.envelope_samples(n_probe, rng, cfg.sample.envelope)
    dark = probe[occ.density_score(probe) > 1]
    zones = find_zones(occ, dark, n_probe, cfg.sample.n_zones, seed % 2**31)
    decoded = []
    if zones:
        be = loop.backend(loop.adapter_for(s, g), (tok, codec.model))
        decoded = codec.decode(np.stack([z.centre for z in zones]), be, loop.gen_params(seed, temperature=0.0))
    s.exec(delete(Zone).where(Zone.generation == g))
    for z, text in zip(zones, decoded):
        s.add(Zone(generation=g, label=z.label, n_points=z.n_points, centre=z.centre.tobytes(), radius=z.radius,
                   volume=z.volume, axes_json=json.dumps(z.axes),
                   neighbours_json=json.dumps([texts[i] for i in z.neighbours]), decoded=text))
    heldout = codec.encode([t.text for t in loop.data.eval])  # (N_eval, latent_dim)
    with atomic_dir(loop.layout.map(g), (g, "map")) as tmp:
        occ.save(tmp)  # latents.npy, the index settings and figures: no refit later
        if fd is not None:
            fd.save(tmp)
            (tmp / "features-described.json").write_text(json.dumps(fd.describe(texts)))  # for the run report
        # for the run report's map (report/): held-out real texts and (at most 2,000) dark probe points
        np.save(tmp / "eval_latents.npy", heldout)
        np.save(tmp / "probes.npy", dark[:2000])
    norms = np.linalg.norm(latents, axis=1)
    return {"texts": len(texts), "threshold": occ.threshold, "envelope_radius": occ.radius,
            "components": int(occ.pca.n_components_), "dark_probe_share": len(dark) / n_probe,
            "zones": len(zones), "latent_norm_mean": float(norms.mean()), "latent_norm_std": float(norms.std()),
            "knn_index": occ.stats.get("index"), "knn_recall": occ.stats.get("recall"),
            "features": fd.summary() if fd is not None else None,
            # real texts never trained on (the eval split) should mostly not be dark
            **occ.calibrate(heldout)}


def clear_map(s: Session, g: int) -> None:
    s.exec(delete(Zone).where(Zone.generation == g))


def load_map(loop: RunContext, g: int):
    """Generation g's occupancy map as the map stage saved it (no refit)."""
    from latent.occupancy import OccupancyMap  # lazy: faiss start-up, not needed for --help

    check(loop.layout.map(g), f"the latent map of generation {g}")
    return OccupancyMap.load(loop.layout.map(g), loop.cfg.sample, threads=torch.get_num_threads())


def load_features(loop: RunContext, g: int):
    """Generation g's feature dictionary as the map stage saved it (None where it fitted none)."""
    return FeatureDictionary.load(loop.layout.map(g))


# ---------------------------------------------------------------------------------- sample
def run_sample(loop: RunContext, s: Session, g: int, seed: int) -> dict:
    cfg = loop.cfg
    occ = load_map(loop, g)
    features = load_features(loop, g)
    zones = zones_from_rows(s.exec(select(Zone).where(Zone.generation == g).order_by(Zone.label)).all())
    rng = np.random.default_rng(seed)
    samplers = cfg.sample.samplers
    n = cfg.sample.n_candidates
    counts = [n // len(samplers) + (1 if i < n % len(samplers) else 0) for i in range(len(samplers))]
    s.exec(delete(Candidate).where(Candidate.generation == g))
    seq = 0
    per = {}
    for name, m in zip(samplers, counts):
        if m == 0:
            continue
        d = draw(name, occ, m, cfg.sample, rng, zones, features)
        for i in range(m):
            s.add(Candidate(
                generation=g, seq=seq, sampler=name, zone_id=d.zone_ids[i],
                provenance=json.dumps(d.provenance[i]) if d.provenance and d.provenance[i] else None,
                latent=None if d.points is None else d.points[i].astype(np.float32).tobytes(),
                latent_norm=None if d.points is None else float(np.linalg.norm(d.points[i])),
                density_score=None if d.density is None else float(d.density[i]),
            ))
            seq += 1
        per[name] = m
    return {"candidates": seq, "per_sampler": per}


def clear_sample(s: Session, g: int) -> None:
    ids = select(Candidate.id).where(Candidate.generation == g)
    s.exec(delete(Score).where(Score.candidate_id.in_(ids)))
    s.exec(delete(Candidate).where(Candidate.generation == g))


# ---------------------------------------------------------------------------------- decode
def run_decode(loop: RunContext, s: Session, g: int, seed: int) -> dict:
    tok, model = loop.model(loop.adapter_for(s, g))
    codec = loop.codec(g, model, tok)
    be = loop.backend(loop.adapter_for(s, g), (tok, codec.model))
    cands = s.exec(select(Candidate).where(Candidate.generation == g).order_by(Candidate.seq)).all()
    dc = loop.cfg.decode
    with_latent = [c for c in cands if c.latent is not None]
    plain = [c for c in cands if c.latent is None]
    # Soft prompts (chunk, K+1, E) are built a chunk at a time, so memory does not grow with
    # sample.n_candidates. A chunk is a whole number of backend batches and starts its seeds at its
    # offset, so each batch gets the seed it would get in one call: the texts do not depend on the chunk size.
    chunk = max(1, dc.chunk_size // dc.batch_size) * dc.batch_size
    for a in range(0, len(with_latent), chunk):
        part = with_latent[a : a + chunk]
        z = np.stack([np.frombuffer(c.latent, dtype=np.float32) for c in part])  # (chunk, latent_dim)
        for c, t in zip(part, codec.decode(z, be, loop.gen_params(seed + a))):
            c.text = t
            s.add(c)
    if plain:
        for c, t in zip(plain, be.sample(len(plain), dc.max_new_tokens, dc.lm_temperature, seed + 1)):
            c.text = t
            s.add(c)
    # The round-trip check: each decode's own latent, density-scored in this generation's map. A
    # dark latent whose text re-encodes into an occupied region snapped back to known content.
    still_dark: dict[str, list[bool]] = {}
    latent_dark: list[bool] = []  # the candidates the samplers drew as latents
    kept: dict[str, list[bool]] = {}  # candidates composed from features: does the decode still hold them all?
    if cands:
        occ = load_map(loop, g)
        z2 = codec.reencode([c.text for c in cands])
        dark = occ.is_dark(z2)
        for c, d in zip(cands, dark):
            still_dark.setdefault(c.sampler, []).append(bool(d))
            if c.latent is not None:
                latent_dark.append(bool(d))
        provenance = [json.loads(c.provenance) if c.provenance else None for c in cands]
        features = load_features(loop, g) if any(p and "features" in p for p in provenance) else None
        if features is not None:
            for c, k in zip(cands, features.kept(z2, provenance)):
                if k is not None:
                    kept.setdefault(c.sampler, []).append(k)
    return {"decoded": len(cands), "empty": sum(1 for c in cands if not c.text),
            "dark_once_reencoded": {k: sum(v) / len(v) for k, v in still_dark.items()},
            "latent_dark_once_reencoded": sum(latent_dark) / len(latent_dark) if latent_dark else None,
            "features_kept_once_reencoded": {k: sum(v) / len(v) for k, v in kept.items()}}


def clear_decode(s: Session, g: int) -> None:
    for c in s.exec(select(Candidate).where(Candidate.generation == g)):
        c.text = None
        s.add(c)


# ----------------------------------------------------------------------------------- judge
def run_judge(loop: RunContext, s: Session, g: int, seed: int) -> dict:
    tok, model = loop.model(loop.adapter_for(s, g))
    d = loop.data
    cands = s.exec(select(Candidate).where(Candidate.generation == g).order_by(Candidate.seq)).all()
    embedder = loop.domain.meaning_embedder()
    corpus_emb = None
    if getattr(embedder, "metric", "cosine") == "cosine" and loop.cfg.sllm.meaning_weight > 0:
        # The novelty judge's corpus side, read from the cache the SLLM stage filled with the same
        # texts (corpus + language texts: the same key, so a hit) instead of embedding the corpus
        # again every generation: 12.6 s for the 1,095 maths training texts on 2 shared cores,
        # about as long as the 1,000 candidates themselves. (Without the meaning term there is no
        # such cache, and the judge embeds the corpus alone rather than 16,000 language texts too.)
        fixed = d.train_texts + [t.text for t in loop.language_texts()]
        corpus_emb = embed_cached(fixed, loop.layout.cache, embedder)[: len(d.train_texts)]
    panel = build_panel(loop.domain, loop.cfg.judges, model, tok, d.train, loop.accepted_texts(s, g - 1), seed,
                        corpus_embeddings=corpus_emb)
    judged = judge_texts(panel, [c.text or "" for c in cands], loop.cfg.judges, d.train_fact_keys,
                         lambda i: f"rejected: duplicate of candidate seq {cands[i].seq} in this generation",
                         canonical=loop.domain.canonical)
    s.exec(delete(Score).where(Score.candidate_id.in_([c.id for c in cands])))
    accepted = 0
    for c, j in zip(cands, judged):
        for name, sc in j.scores.items():
            s.add(Score(candidate_id=c.id, judge=name, score=sc.score, reason=sc.reason,
                        detail_json=json.dumps(sc.detail, default=str)))
        if j.truth_judged:
            c.verdict, c.fact_key, c.true_new = j.verdict, j.fact_key, j.true_new
        c.total = j.total
        c.decision, c.reason = ("accepted" if j.accepted else "rejected"), j.reason
        accepted += j.accepted
        s.add(c)
    return {"judged": len(cands), "accepted": accepted}


def clear_judge(s: Session, g: int) -> None:
    ids = select(Candidate.id).where(Candidate.generation == g)
    s.exec(delete(Score).where(Score.candidate_id.in_(ids)))
    for c in s.exec(select(Candidate).where(Candidate.generation == g)):
        c.verdict = c.fact_key = c.true_new = c.total = c.decision = c.reason = None
        s.add(c)


# --------------------------------------------------------------------------------- retrain
def run_retrain(loop: RunContext, s: Session, g: int, seed: int) -> dict:
    cfg = loop.cfg
    prev = loop.adapter_for(s, g)
    new = s.exec(select(Candidate).where(Candidate.generation == g, Candidate.decision == "accepted")).all()
    if not new or cfg.retrain.epochs == 0:
        return {"adapter": prev, "trained": False,
                "reason": "no texts accepted in this generation" if not new else "retrain.epochs is 0"}
    loop.free()  # unload the generator before training
    texts = retrain_texts(loop.learned_texts(s, g), loop.data.train_texts, cfg.retrain.replay_texts, seed)
    final = loop.layout.adapter(g)
    loop.check_inputs(prev)
    # several processes (torchrun): every rank trains, rank 0 alone writes the adapter (the others' tmp: None)
    with atomic_dir(final, (g, "retrain")) if distributed.is_main() else contextlib.nullcontext() as tmp:
        info = lora_finetune(loop.base_path(), prev, texts, cfg.retrain, tmp, seed, cfg.run.device)
    return {"adapter": str(final), "trained": True, **info}


# -------------------------------------------------------------------------------- evaluate
def run_evaluate(loop: RunContext, s: Session, g: int, seed: int) -> dict:
    adapter = (stage_detail(s, g, "retrain") or {}).get("adapter")
    tok, model = loop.model(adapter)
    ppl = perplexity(model, tok, [t.text for t in loop.data.eval]) if loop.data.eval else float("nan")
    cands = s.exec(select(Candidate).where(Candidate.generation == g)).all()
    acc = [c for c in cands if c.decision == "accepted"]
    verdicts = [c.verdict for c in cands if c.verdict is not None]
    truth = (sum(v == "true" for v in verdicts) / len(verdicts)) if verdicts else None
    true_new = sum(1 for c in cands if c.true_new)
    dens = [c.density_score for c in cands if c.density_score is not None]
    dark_share = (sum(x > 1 for x in dens) / len(dens)) if dens else None
    # of the candidates the samplers drew as latents, the share whose decode is still dark re-encoded
    text_dark = (stage_detail(s, g, "decode") or {}).get("latent_dark_once_reencoded")
    nov = []
    if acc:
        ids = [c.id for c in acc]
        for sc in s.exec(select(Score).where(Score.candidate_id.in_(ids), Score.judge == judge_with_role("novelty"))):
            dist = json.loads(sc.detail_json).get("distance")
            if dist is not None:
                nov.append(dist)
    novelty = float(np.mean(nov)) if nov else None
    distinct2 = distinct_n([c.text for c in acc], 2) if acc else None
    stage_rows = s.exec(select(StageRow).where(StageRow.generation == g)).all()
    timings = {st.name: round(st.seconds, 1) for st in stage_rows}
    share = generate_share({st.name: st.seconds for st in stage_rows})  # of this generation's stage time
    rate = len(acc) / max(len(cands), 1)
    dom = loop.domain
    line = (f"gen {g} | candidates {len(cands)} | accepted {len(acc)} ({rate:.1%}) | "
            f"{dom.truth_label} {'n/a' if truth is None else f'{truth:.1%}'} | {dom.new_label} {true_new} | "
            f"heldout ppl {ppl:.2f} | novelty {'n/a' if novelty is None else f'{novelty:.3f}'} | "
            f"distinct-2 {'n/a' if distinct2 is None else f'{distinct2:.2f}'} | "
            f"dark {'n/a' if dark_share is None else f'{dark_share:.0%}'} | "
            f"dark once re-encoded {'n/a' if text_dark is None else f'{text_dark:.0%}'} | "
            + " ".join(f"{k} {v:.0f}s" for k, v in timings.items())
            + (f" | decode+judge {share:.0%}" if share is not None else ""))
    extra = dom.generation_metrics([c.text or "" for c in cands], loop.data)
    if extra:
        line += " | " + " ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in extra.items())
    knowledge = knowledge_figures(loop, adapter, tok, model, seed)
    if knowledge:
        line += " | knowledge " + " ".join(f"{k} {v:.3g}" for k, v in knowledge.items())
        extra = {**extra, **{f"knowledge {k}": v for k, v in knowledge.items()}}  # the report's per-generation figures
    collapse = collapse_flags(s.get(Metric, 0) if g > 0 else None, ppl, distinct2)
    if collapse:
        line += " | COLLAPSE? " + "; ".join(collapse)
    if loop.fallback_note:
        line += " | FALLBACK base model (self-trained on this corpus): bring a pretrained one with --base-model"
    s.exec(delete(Metric).where(Metric.generation == g))
    s.add(Metric(generation=g, acceptance_rate=rate, truth_rate=truth, true_new=true_new, accepted=len(acc),
                 candidates=len(cands), heldout_ppl=ppl, novelty=novelty, distinct_2=distinct2,
                 dark_share=dark_share, timings_json=json.dumps(timings), line=line))
    return {"line": line, "heldout_ppl": ppl, "knowledge": knowledge, "collapse": collapse, **({"domain_metrics": extra} if extra else {})}


# Collapse telemetry: a generation is flagged when, against generation 0's figures, held-out
# perplexity rose by more than this share, or the accepted texts' distinct-2 fell by more than this share.
COLLAPSE_PPL_RISE = 0.10
COLLAPSE_DISTINCT_DROP = 0.20


def collapse_flags(first: Metric | None, ppl: float, distinct2: float | None) -> list[str]:
    """What degraded beyond the thresholds since generation 0 (`first`, None at generation 0), in words."""
    flags = []
    if first is None:
        return flags
    if np.isfinite(ppl) and np.isfinite(first.heldout_ppl) and ppl > first.heldout_ppl * (1 + COLLAPSE_PPL_RISE):
        flags.append(f"heldout ppl {first.heldout_ppl:.2f} -> {ppl:.2f} (over +{COLLAPSE_PPL_RISE:.0%})")
    if distinct2 is not None and first.distinct_2 and distinct2 < first.distinct_2 * (1 - COLLAPSE_DISTINCT_DROP):
        flags.append(f"distinct-2 {first.distinct_2:.2f} -> {distinct2:.2f} (over -{COLLAPSE_DISTINCT_DROP:.0%})")
    return flags


def knowledge_figures(loop: RunContext, adapter, tok, model, seed: int) -> dict:
    """What the model this generation leaves knows (`Domain.knowledge_figures`), measured the same
    way every generation: the texts' likelihoods under it and its own samples at the lm temperature."""
    ec, dc = loop.cfg.evaluate, loop.cfg.decode
    if not (ec.knowledge_texts or ec.knowledge_samples):
        return {}
    be = loop.backend(adapter, (tok, model))
    return loop.domain.knowledge_figures(
        loop.data, loop.cfg.corpus, seed, lambda texts: -np.asarray(token_nll(model, tok, texts)),
        lambda n: be.sample(n, dc.max_new_tokens, dc.lm_temperature, seed + 1), ec.knowledge_texts, ec.knowledge_samples)


def clear_evaluate(s: Session, g: int) -> None:
    s.exec(delete(Metric).where(Metric.generation == g))


def distinct_n(texts: list[str], n: int) -> float | None:
    """Share of distinct word n-grams; None where the texts hold none (one-word texts such as SMILES)."""
    grams = [tuple(t.split()[i : i + n]) for t in texts for i in range(max(0, len(t.split()) - n + 1))]
    return len(set(grams)) / len(grams) if grams else None


# ------------------------------------------------------------------------------ the stages
STAGES: tuple[Stage, ...] = (
    Stage("base", run_base, artifact=lambda out, g, d: RunLayout(out).base if d.get("trained") else None,
          first_generation_only=True),
    Stage("sllm", run_sllm, artifact=lambda out, g, d: RunLayout(out).sllm(g), reads=("base", "judge", "retrain"),
          every_rank=True),
    Stage("map", run_map, artifact=lambda out, g, d: RunLayout(out).map(g), clear=clear_map, reads=("sllm", "judge")),
    Stage("sample", run_sample, clear=clear_sample, reads=("map",)),
    Stage("decode", run_decode, clear=clear_decode, reads=("base", "sllm", "map", "sample", "retrain")),
    Stage("judge", run_judge, clear=clear_judge, reads=("base", "decode", "retrain")),
    Stage("retrain", run_retrain, artifact=lambda out, g, d: RunLayout(out).adapter(g) if d.get("trained") else None,
          reads=("base", "judge", "retrain"), every_rank=True),
    Stage("evaluate", run_evaluate, clear=clear_evaluate, reads=("base", "decode", "judge", "retrain"),
          ends_generation=True),
)
STAGE_NAMES = tuple(st.name for st in STAGES)
BY_NAME = {st.name: st for st in STAGES}


def invalidate_from(s: Session, g0: int, name0: str) -> None:
    """Make stage (g0, name0) and every later stage not done: delete their Stage rows and clear
    the rows they wrote, later stages first (the caller commits: one transaction)."""
    start = (g0, STAGE_NAMES.index(name0))
    gone = sorted((st for st in s.exec(select(StageRow)) if (st.generation, STAGE_NAMES.index(st.name)) >= start),
                  key=lambda st: (st.generation, STAGE_NAMES.index(st.name)), reverse=True)
    for st in gone:
        BY_NAME[st.name].clear(s, st.generation)
        s.flush()
    for st in gone:
        s.delete(st)
