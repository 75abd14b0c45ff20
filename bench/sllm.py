"""`python run.py bench sllm [--domain maths|molecules]`: round-trip quality of the SLLM on held-out texts.

Trains a base model and an SLLM on the training corpus (or loads them from a run folder),
then decodes held-out texts never seen in training (maths: held-out facts; molecules: MOSES
scaffold-test molecules) in ONE greedy pass from ONE latent each: exact match of the domain's
canonical forms (molecules: canonical SMILES), BLEU (sacrebleu), token F1, and the cosine
between the domain's meaning embeddings of the original and the decoded text; latent
statistics; the share of parseable and of verified decodes along interpolations between
corpus latents and from random latents of a Gaussian fitted to the corpus latents (molecules:
validity); and how often paraphrases land closer together than the nearest different fact.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import faiss
import numpy as np
import sacrebleu
import torch
from sqlmodel import Session, select

from backends.transformers_backend import TransformersBackend
from common.errors import ConfigError
from common.stats import ci95
from domains.base import Text, get_domain
from latent.config import SampleConfig
from latent.occupancy import OccupancyMap
from latent.samplers import sample_dark
from lm.base_model import load_base_model, train_small_base
from loop.config import build_config
from loop.context import RunContext
from loop.options import build_from_args, parser as run_parser
from loop.runner import environment, run_config
from sllm.codec import Codec, GenParams, first_error, teacher_forced
from sllm.train import train_sllm
from storage.db import open_db
from storage.models import Candidate, Stage

log = logging.getLogger(__name__)


def token_f1(a: str, b: str) -> float:
    ta, tb = a.split(), b.split()
    if not ta and not tb:
        return 1.0
    common = sum((Counter(ta) & Counter(tb)).values())
    if common == 0:
        return 0.0
    p, r = common / len(tb), common / len(ta)
    return 2 * p * r / (p + r)


def effective_dimension(z: np.ndarray) -> float:
    """Participation ratio of the covariance spectrum: (sum l)^2 / sum l^2."""
    lam = np.clip(np.linalg.eigvalsh(np.cov(z, rowvar=False)), 0, None)
    return float(lam.sum() ** 2 / (lam**2).sum())


def paraphrase_closeness(z: np.ndarray, keys: list[str | None]) -> float | None:
    """Share of paraphrase pairs (a, b) with |z_a - z_b| < distance from z_a to the nearest other fact."""
    keys_arr = np.array([k or f"#{i}" for i, k in enumerate(keys)])
    d = np.linalg.norm(z[:, None] - z[None], axis=-1)
    wins, total = 0, 0
    for i in range(len(z)):
        same = (keys_arr == keys_arr[i]) & (np.arange(len(z)) != i)
        other = keys_arr != keys_arr[i]
        if not same.any() or not other.any():
            continue
        nearest_other = d[i, other].min()
        for j in np.flatnonzero(same):
            wins += d[i, j] < nearest_other
            total += 1
    return wins / total if total else None


def roundtrip(codec, backend, texts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy decodes of `texts`, each from its own latent."""
    return codec.decode(codec.encode(texts), backend, GenParams(max_new_tokens, 0.0, 0))


def single_words(texts: list[str]) -> bool:
    """Texts of one whitespace word each (SMILES): token F1 over words is then exact match again."""
    return all(len(t.split()) <= 1 for t in texts)


def error_positions(codec, texts: list[str], decoded: list[str]) -> dict:
    """Where greedy decodes first go wrong: the first differing token's index, over the decodes
    that are not exact copies (token level, so a different spelling of one canonical form counts)."""
    pos = [first_error(codec.tokenizer, a, b) for a, b in zip(texts, decoded)]
    wrong = [p for p in pos if p is not None]
    lengths = [len(codec.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts]
    if not wrong:
        return {"wrong": 0, "median": None, "first_two": None, "relative_median": None, "mean_tokens": float(np.mean(lengths))}
    rel = [p / n for p, n in zip(pos, lengths) if p is not None]
    return {"wrong": len(wrong), "median": float(np.median(wrong)), "first_two": float(np.mean([p < 2 for p in wrong])),
            "relative_median": float(np.median(rel)), "mean_tokens": float(np.mean(lengths))}


def diagnose(codec, texts: list[str], z: np.ndarray, seed: int = 0) -> dict:
    """Teacher-forced token accuracy and CE with each text's own latent and with the latents
    shuffled across texts (how much the decoder reads z)."""
    own = teacher_forced(codec.sllm, codec.model, codec.tokenizer, texts, z)
    perm = np.arange(len(z))
    if len(z) > 1:  # a derangement: no text keeps its own latent
        drawn = (np.random.default_rng(seed).permutation(len(z)) - 1) % len(z)
        perm = drawn if not (drawn == perm).any() else np.roll(perm, 1)
    shuf = teacher_forced(codec.sllm, codec.model, codec.tokenizer, texts, z[perm])
    return {"tf_accuracy": own["token_accuracy"], "tf_accuracy_shuffled": shuf["token_accuracy"],
            "tf_ce": own["ce"], "tf_ce_shuffled": shuf["ce"]}


def evaluate(codec, heldout, train, domain, max_new_tokens: int = 32, n_pairs: int = 100,
             seed: int = 0, n_prior: int = 200, n_dark: int = 200, beams: int = 1) -> dict:
    """All bench figures for one trained SLLM (a `Codec`) on `domain`'s texts. `beams` > 1 (a
    domain with a verifier): the held-out, prior and dark figures again with the decodes that
    `decode.beams=N` and `decode.pick` parseable or closest give (the `*_parseable` and `*_closest`
    figures): of N beams the verifier parses, the likeliest, or the one encoded nearest the latent."""
    verify, embed = domain.verifier, domain.meaning_embedder().embed
    be = TransformersBackend("")
    be.tokenizer, be.model = codec.tokenizer, codec.model
    greedy = GenParams(max_new_tokens, 0.0, 0)
    searches = {}
    if beams > 1 and domain.parses is not None:
        searches = {"parseable": GenParams(max_new_tokens, 0.0, 0, beams, domain.parses),
                    "closest": GenParams(max_new_tokens, 0.0, 0, beams, domain.parses, closest=True)}
    texts = [t.text for t in heldout]
    t0 = time.perf_counter()
    z_held = codec.encode(texts)
    out = codec.decode(z_held, be, greedy)
    decode_s = time.perf_counter() - t0
    em = float(np.mean([domain.canonical(a) == domain.canonical(b) for a, b in zip(texts, out)]))
    bleu = sacrebleu.corpus_bleu(out, [texts]).score
    f1 = None if single_words(texts) else float(np.mean([token_f1(a, b) for a, b in zip(texts, out)]))
    ea, eb = embed(texts), embed(out)
    cos = float(np.mean((ea * eb).sum(1)))
    z_train = codec.encode([t.text for t in train])
    norms = np.linalg.norm(z_train, axis=1)
    res = {
        "heldout_texts": len(texts), "exact_match": em, "bleu": bleu, "token_f1": f1, "embedding_cosine": cos,
        "latent_norm_mean": float(norms.mean()), "latent_norm_std": float(norms.std()),
        "effective_dimension": effective_dimension(z_train), "latent_dim": int(z_train.shape[1]),
        "paraphrase_closer_than_other_fact": paraphrase_closeness(z_held, [t.fact_key for t in heldout]),
        "decode_seconds": decode_s,
        "examples": [{"text": a, "decoded": b} for a, b in list(zip(texts, out))[:8]],
    }
    res.update(diagnose(codec, texts, z_held, seed))
    # the same on training texts: a gap to the held-out figure is generalisation, none is capacity or budget
    fit = [t.text for t in train[: len(texts)]]
    res["tf_accuracy_train"] = teacher_forced(codec.sllm, codec.model, codec.tokenizer, fit, codec.encode(fit))["token_accuracy"]
    res["first_error"] = error_positions(codec, texts, out)
    if verify is not None:
        rng = np.random.default_rng(seed)
        i, j = rng.integers(0, len(z_train), n_pairs), rng.integers(0, len(z_train), n_pairs)
        ts = np.linspace(0, 1, 7)[1:-1]  # 5 interior points
        pts = np.concatenate([(1 - t) * z_train[i] + t * z_train[j] for t in ts]).astype(np.float32)
        dec = codec.decode(pts, be, greedy)
        verdicts = [verify(x).status for x in dec]
        res["interpolation_parseable"] = float(np.mean([v != "unparseable" for v in verdicts]))
        res["interpolation_true"] = float(np.mean([v == "true" for v in verdicts]))
        # random latents of the corpus's own Gaussian (the `prior` sampler's model): what decodes
        # where no text was encoded (molecules: the validity of decodes of random prior latents)
        mu, cov = z_train.mean(0), np.cov(z_train, rowvar=False)
        pts = rng.multivariate_normal(mu, cov, size=n_prior, method="eigh").astype(np.float32)
        dec = codec.decode(pts, be, greedy)
        verdicts = [verify(x).status for x in dec]
        res["prior_parseable"] = float(np.mean([v != "unparseable" for v in verdicts]))
        res["prior_true"] = float(np.mean([v == "true" for v in verdicts]))
        res["prior_unique"] = len({domain.canonical(x) for x, v in zip(dec, verdicts) if v == "true"}) / n_prior
        # off the data: how far a latent moves in one decode + re-encode, against the corpus's own
        # nearest-neighbour distance scale
        res["nn_distance_median"] = step = nn_step(z_train)
        res["reencode_drift_heldout"] = drift(z_held, codec.reencode(out), step)
        res["reencode_drift_prior"] = drift(pts, codec.reencode(dec), step)
        for name, search in searches.items():
            t0 = time.perf_counter()
            out = codec.decode(z_held, be, search)
            res[f"decode_seconds_{name}"] = time.perf_counter() - t0
            res[f"exact_match_{name}"] = float(np.mean([domain.canonical(a) == domain.canonical(b)
                                                        for a, b in zip(texts, out)]))
            dec = codec.decode(pts, be, search)
            verdicts = [verify(x).status for x in dec]
            res[f"prior_true_{name}"] = float(np.mean([v == "true" for v in verdicts]))
            res[f"prior_unique_{name}"] = len({domain.canonical(x) for x, v in zip(dec, verdicts) if v == "true"}) / n_prior
        if searches:
            res["beams"] = beams
    # the loop's occupancy map of the training latents, at the default settings
    occ = OccupancyMap.fit(z_train, SampleConfig(), seed=seed % 2**31, threads=torch.get_num_threads())
    res.update(still_dark(codec, be, greedy, occ, z_train, seed, n_dark, searches))
    res.update(reach(codec, be, greedy, domain, occ, texts, z_held, seed, searches))
    return res


def still_dark(codec, be, greedy, occ: OccupancyMap, z_train: np.ndarray, seed: int, n: int,
               searches: dict | None = None) -> dict:
    """The `dark` sampler's latents in the occupancy map `occ`, decoded greedily and encoded again:
    the share still dark (the loop's "dark once re-encoded"), the share of the sampled latents the
    map calls dark at all (the sampler fills its quota with the least occupied proposals when too
    few are dark), and the median re-encode drift over the corpus's nearest-neighbour step.
    `searches`: the same latents decoded with each of these parameters too (`dark_still_dark_NAME`)."""
    pts, _, _ = sample_dark(occ, n, SampleConfig(), np.random.default_rng([seed, 31]))
    dec = codec.decode(pts, be, greedy)
    back = codec.reencode(dec)
    res = {"dark_still_dark": float(occ.is_dark(back).mean()), "dark_decodes": len(pts),
           "dark_sampled_dark": float(occ.is_dark(pts).mean()),
           "reencode_drift_dark": drift(pts, back, nn_step(z_train))}
    for name, search in (searches or {}).items():
        res[f"dark_still_dark_{name}"] = float(occ.is_dark(codec.reencode(codec.decode(pts, be, search))).mean())
    return res


EDIT_STEPS = (1, 4)  # Domain.edit steps away from a held-out text (`reach_dark_edit1`, `reach_dark_edit4`)
REACH_POOLS = ("heldout", *(f"edit{k}" for k in EDIT_STEPS), "shuffled", "random")


def reach(codec, be, greedy, domain, occ: OccupancyMap, texts: list[str], z_held: np.ndarray, seed: int,
          searches: dict | None = None) -> dict:
    """Which texts land in the dark zones: the share of each pool's latents the map `occ` calls dark
    (`reach_dark_POOL`) and the share outside its envelope, where nothing is dark by definition
    (`reach_outside_POOL`). Pools: the held-out texts; the same after 1 and 4 random edits that keep
    them texts of the domain (`edit1`, `edit4`: Domain.edit; molecules stay valid, maths sentences
    parseable); their tokens in a random order (`shuffled`); random token strings of their lengths
    (`random`). Then the once-edited texts, each decoded from its own latent: the share decoded
    exactly (`reach_edit1_exact`), and of those that land dark the same and the share whose decode
    is still dark (`reach_edit1_dark_exact`, `reach_edit1_dark_still_dark`): a dark latent some
    text does reach, carried through the SLLM. `searches`: the edited texts decoded with each of
    these parameters too (`reach_edit1_exact_NAME`, `reach_edit1_dark_exact_NAME`)."""
    rng = np.random.default_rng([seed, 37])
    tok = codec.tokenizer
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    vocab = np.array(sorted(set(range(len(tok))) - set(tok.all_special_ids)))
    pools = {"heldout": texts}
    for k in EDIT_STEPS:
        pools[f"edit{k}"] = [t for t in domain.edit(texts, k, seed) if t]
    pools["shuffled"] = [tok.decode(rng.permutation(x).tolist(), skip_special_tokens=True).strip() for x in ids]
    pools["random"] = [tok.decode(rng.choice(vocab, max(len(x), 1)).tolist(), skip_special_tokens=True).strip()
                       for x in ids]
    res, edited, z_edited, edited_dark = {}, [], None, None
    for name, pool in pools.items():
        if not pool:
            res[f"reach_dark_{name}"] = res[f"reach_outside_{name}"] = None
            continue
        pool = [t or " " for t in pool]  # an empty string (a scrambled text of spaces) encodes as a space
        z = z_held if name == "heldout" else codec.encode(pool)
        dark = occ.is_dark(z)
        res[f"reach_dark_{name}"] = float(dark.mean())
        res[f"reach_outside_{name}"] = float((~occ.inside(z)).mean())
        if name == "edit1":
            edited, z_edited, edited_dark = pool, z, dark
    res["reach_edit1_dark"] = int(edited_dark.sum()) if edited else 0
    res["reach_edit1_exact"] = res["reach_edit1_dark_exact"] = res["reach_edit1_dark_still_dark"] = None
    if not edited:
        return res
    for name, params in {"": greedy, **(searches or {})}.items():
        suffix = f"_{name}" if name else ""
        out = codec.decode(z_edited, be, params)
        exact = np.array([domain.canonical(a) == domain.canonical(b) for a, b in zip(edited, out)])
        res[f"reach_edit1_exact{suffix}"] = float(exact.mean())
        res[f"reach_edit1_dark_exact{suffix}"] = float(exact[edited_dark].mean()) if edited_dark.any() else None
        if not name and edited_dark.any():
            back = codec.reencode([o for o, d in zip(out, edited_dark) if d])
            res["reach_edit1_dark_still_dark"] = float(occ.is_dark(back).mean())
    return res


def nn_step(z_train: np.ndarray) -> float:
    """The median distance from a corpus latent to its nearest other corpus latent (FAISS, exact
    search over at most 20,000 of them): the unit in which re-encode drift is read."""
    x = np.ascontiguousarray(z_train[:20000], dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    d, _ = index.search(x[:2000], 2)
    return float(np.median(np.sqrt(np.maximum(d[:, 1], 0))))


def drift(z: np.ndarray, back: np.ndarray, step: float) -> float:
    """Median |z - enc(dec(z))| in units of `step` (1.0 = one neighbour step): how far one decode
    and re-encode moves a latent. `back`: the decodes' own latents."""
    return float(np.median(np.linalg.norm(back - z, axis=1)) / max(step, 1e-12))


def train_and_evaluate(cfg, base_dir: Path, curve: list[int] | None = None, curve_texts: int = 200,
                       heldout_set: str = "knowledge", beams: int = 1) -> dict:
    """Build the data, train the base model into `base_dir` (or reuse the one there), train an
    SLLM, evaluate it. `curve`: training steps at which the greedy exact match (and teacher-forced
    accuracy) of the first `curve_texts` held-out texts is measured, as training goes. `heldout_set`:
    "knowledge", the domain's held-out knowledge (maths: held-out facts; molecules: scaffold test),
    or "eval", its evaluation texts (molecules: MOSES test; maths: the corpus's evaluation split,
    which is then not trained on)."""
    domain = get_domain(cfg.corpus.domain_name)
    embedder = domain.meaning_target(cfg.corpus.meaning)  # the meaning term's target (the figures use the domain's own)
    if heldout_set == "eval":
        splits = domain.load(cfg.corpus, cfg.run.seed)
        train, heldout = splits.train, splits.eval
    else:
        train, heldout = domain.texts(cfg.corpus, cfg.run.seed)
    timings = {}
    # the domain's language texts (maths: verifier-checked false sentences: no true fact, held out or not;
    # molecules: further MOSES training molecules)
    extra = domain.language_texts(cfg.corpus, cfg.run.seed, cfg.sllm.false_texts)
    if not (base_dir / "config.json").is_file():
        t0 = time.perf_counter()
        train_small_base([t.text for t in train], cfg.base, base_dir, cfg.run.seed, groups=[t.fact_key for t in train],
                         copy_texts=[t.text for t in extra], tokenizer_fn=domain.train_tokenizer)
        timings["base_s"] = time.perf_counter() - t0
    tok, model = load_base_model(str(base_dir), cfg.run.device)
    # and the user's own (sllm.texts_file), for the SLLM alone, as the loop's SLLM stage adds them
    own = [Text(t, "texts_file") for t in RunContext(cfg).sllm_file_texts()]
    extra_language, extra = len(extra), extra + own
    texts = [t.text for t in train + extra]
    targets = embedder.embed(texts) if cfg.sllm.meaning_weight > 0 else None
    torch.manual_seed(cfg.run.seed)
    codec = Codec.new(cfg.sllm, model, tok, embedder.dim)
    points: list[dict] = []
    probe = [t.text for t in heldout[:curve_texts]]

    def measure(step: int) -> None:
        be = TransformersBackend("")
        be.tokenizer, be.model = tok, codec.model
        z = codec.encode(probe)
        out = codec.decode(z, be, GenParams(cfg.decode.max_new_tokens, 0.0, 0))
        em = float(np.mean([domain.canonical(a) == domain.canonical(b) for a, b in zip(probe, out)]))
        points.append({"step": step, "exact_match": em, **diagnose(codec, probe, z, cfg.run.seed)})
        log.info("step %d: exact %.3f", step, em)

    t0 = time.perf_counter()
    info = train_sllm(codec.sllm, codec.model, tok, texts, targets, cfg.sllm.epochs, cfg.sllm.lr, cfg.sllm.batch_size,
                      cfg.run.seed, fact_keys=[t.fact_key for t in train + extra], desc="SLLM",
                      on_step=measure if curve else None, at_steps=frozenset(curve or ()))
    timings["sllm_s"] = time.perf_counter() - t0
    if curve and info["steps"] not in curve:
        measure(info["steps"])
    res = evaluate(codec, heldout, train, domain, cfg.decode.max_new_tokens, seed=cfg.run.seed, beams=beams)
    res["heldout_set"] = heldout_set
    res["train_texts"] = len(train)
    res["false_texts"], res["file_texts"] = extra_language, len(own)
    res["steps"] = info["steps"]
    res["meaning_target"] = {"name": embedder.name, "dim": embedder.dim}
    res["final_losses"] = info["final"]
    res["exact_by_step"] = points
    res.update(timings)
    return res


def evaluate_run(run_dir: Path, generation: int | None = None, heldout_set: str = "knowledge",
                 beams: int = 1) -> tuple[dict, object]:
    """(figures, the run's settings) for a run's own SLLM (generation `generation`, default the latest trained) and
    base model (wearing that generation's adapter). Held-out facts the run accepted before that
    generation, and so trained on, are left out of the measure."""
    if not (run_dir / "runs.db").is_file():
        raise ConfigError(f"--run {run_dir}: no runs.db there; pass a run folder made by `python run.py --out DIR`")
    cfg = run_config(run_dir)
    engine = open_db(run_dir)
    try:
        with Session(engine) as s:
            done = sorted(s.exec(select(Stage.generation).where(Stage.name == "sllm")).all())
            if not done:
                raise ConfigError(f"--run {run_dir} has no trained SLLM yet; run `python run.py --out {run_dir}` first")
            g = done[-1] if generation is None else generation
            if g not in done:
                raise ConfigError(f"--generation {g}: run {run_dir} has SLLMs of generations {done}")
            seen = set(s.exec(select(Candidate.fact_key).where(Candidate.generation < g,
                                                               Candidate.decision == "accepted")).all())
            loop = RunContext(cfg)
            adapter = loop.adapter_for(s, g)
    finally:
        engine.dispose()
    c = cfg.corpus
    if not loop.data.knowledge:
        raise ConfigError(f"--run {run_dir} has no held-out knowledge set (a user corpus); bench sllm measures "
                          "the round trip on the domain's held-out facts")
    # "knowledge": the domain's held-out knowledge (maths: held-out facts; molecules: scaffold test);
    # "eval": its held-out evaluation texts (molecules: MOSES test, the set JT-VAE's anchors use)
    pool = loop.data.eval if heldout_set == "eval" else loop.data.knowledge
    heldout = [t for t in pool if t.fact_key not in seen]
    if not heldout:
        own = cfg.to_dict().get(c.domain_name, {})
        raise ConfigError(f"--run {run_dir} holds out no fact it has not trained on (its {c.domain_name} settings: "
                          f"{', '.join(f'{k}={v}' for k, v in own.items()) or 'none'}); nothing to measure")
    tok, model = loop.model(adapter)
    codec = loop.codec(g, model, tok)
    res = evaluate(codec, heldout, loop.data.train, loop.domain, cfg.decode.max_new_tokens, seed=cfg.run.seed,
                   beams=beams)
    res.update(run=str(run_dir), generation=g, heldout_left_out=len(loop.data.knowledge) - len(heldout))
    return res, cfg


PICKS = ("parseable", "closest")
SEARCH_FIGURES = [f"{f}_{pick}" for pick in PICKS for f in ("exact_match", "prior_true", "prior_unique", "dark_still_dark")]
REACH_SEARCH_FIGURES = [f"{f}_{pick}" for pick in PICKS for f in ("reach_edit1_exact", "reach_edit1_dark_exact")]
FIGURES = [("exact_match", "{:.1%}"), ("bleu", "{:.1f}"), ("token_f1", "{:.3f}"), ("embedding_cosine", "{:.3f}"),
           ("tf_accuracy", "{:.1%}"), ("tf_accuracy_train", "{:.1%}"), ("tf_accuracy_shuffled", "{:.1%}"), ("tf_ce", "{:.3f}"),
           ("tf_ce_shuffled", "{:.3f}"), ("first_error.median", "{:.1f}"), ("first_error.first_two", "{:.1%}"),
           ("paraphrase_closer_than_other_fact", "{:.1%}"), ("interpolation_parseable", "{:.1%}"),
           ("interpolation_true", "{:.1%}"), ("prior_parseable", "{:.1%}"), ("prior_true", "{:.1%}"),
           ("prior_unique", "{:.1%}"), ("reencode_drift_heldout", "{:.2f}"), ("reencode_drift_prior", "{:.2f}"),
           ("reencode_drift_dark", "{:.2f}"), ("dark_sampled_dark", "{:.1%}"), ("dark_still_dark", "{:.1%}"),
           *((key, "{:.1%}") for key in SEARCH_FIGURES),
           *((f"reach_dark_{pool}", "{:.1%}") for pool in REACH_POOLS),
           *((f"reach_outside_{pool}", "{:.1%}") for pool in REACH_POOLS),
           ("reach_edit1_exact", "{:.1%}"), ("reach_edit1_dark", "{:.0f}"), ("reach_edit1_dark_exact", "{:.1%}"),
           ("reach_edit1_dark_still_dark", "{:.1%}"), *((key, "{:.1%}") for key in REACH_SEARCH_FIGURES),
           ("effective_dimension", "{:.1f}"), ("latent_norm_mean", "{:.2f}"), ("latent_norm_std", "{:.2f}"),
           ("steps", "{:.0f}"), ("sllm_s", "{:.0f}")]


def figure(row: dict, key: str):
    """A figure of one result row; "first_error.median" reads a nested one."""
    for part in key.split("."):
        row = row.get(part) if isinstance(row, dict) else None
    return row


def _cell(v, fmt: str) -> str:
    return "n/a" if v is None else fmt.format(v)


def table(rows: dict[str, dict], summary: dict[str, dict] | None = None) -> str:
    """One column per result row; with `summary`, a last column of mean [95% interval] over them."""
    names = list(rows)
    head = names + (["mean [95% CI]"] if summary else [])
    lines = ["| figure | " + " | ".join(head) + " |", "| --- |" + " --- |" * len(head)]
    for key, fmt in FIGURES:
        if key in SEARCH_FIGURES + REACH_SEARCH_FIGURES and all(figure(rows[n], key) is None for n in names) \
                and (summary or {}).get(key, {}).get("mean") is None:
            continue  # measured only with --beams
        vals = [_cell(figure(rows[n], key), fmt) for n in names]
        if summary:
            c = summary.get(key) or {}
            if c.get("mean") is None:
                vals.append("n/a")
            elif c.get("lo") is None:
                vals.append(fmt.format(c["mean"]))
            else:
                vals.append(f"{fmt.format(c['mean'])} [{fmt.format(c['lo'])}, {fmt.format(c['hi'])}]")
        lines.append(f"| {key} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Mean and 95% interval (Student t over the rows, one per training seed) of every figure."""
    out = {}
    for key, _ in FIGURES:
        vals = [figure(r, key) for r in rows]
        out[key] = ci95([v for v in vals if v is not None]) if any(v is not None for v in vals) else {"mean": None}
    return out


def curve_table(rows: dict[str, dict]) -> str:
    """Greedy exact match (and teacher-forced accuracy) against training steps, one row per step."""
    by_step: dict[int, dict[str, dict]] = {}
    for name, r in rows.items():
        for pt in r.get("exact_by_step") or []:
            by_step.setdefault(pt["step"], {})[name] = pt
    if not by_step:
        return ""
    names = list(rows)
    lines = ["| step | " + " | ".join(f"{n}: exact / tf acc" for n in names) + " |", "| --- |" + " --- |" * len(names)]
    for step in sorted(by_step):
        cells = []
        for n in names:
            pt = by_step[step].get(n)
            cells.append("–" if pt is None else f"{pt['exact_match']:.1%} / {pt['tf_accuracy']:.1%}")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)




ABLATIONS = {
    # the loss terms
    "terms": {
        "full": {},
        "no meaning term": {"sllm.meaning_weight": 0.0},
        "no paraphrase term": {"sllm.paraphrase_weight": 0.0},
        "reconstruction only": {"sllm.meaning_weight": 0.0, "sllm.paraphrase_weight": 0.0},
    },
    # how the latent reaches the base model (each on top of the settings given)
    "channel": {
        "soft prompts": {"sllm.decoder_lora_r": 0, "sllm.word_dropout": 0.0},
        "+ decoder LoRA r16": {"sllm.decoder_lora_r": 16, "sllm.word_dropout": 0.0},
        "+ LoRA + word dropout 0.3": {"sllm.decoder_lora_r": 16, "sllm.word_dropout": 0.3},
        "soft prompts + word dropout 0.3": {"sllm.decoder_lora_r": 0, "sllm.word_dropout": 0.3},
    },
    # the decoder adapter alone, the pair to run over several training seeds
    "adapter": {
        "soft prompts": {"sllm.decoder_lora_r": 0},
        "+ decoder LoRA r16": {"sllm.decoder_lora_r": 16},
    },
    # per-layer latent injection (a key/value prefix of 8 slots in every layer) beside the adapter
    "inject": {
        "+ decoder LoRA r16": {"sllm.decoder_lora_r": 16, "sllm.kv_prefix": 0},
        "+ LoRA + KV prefix 8": {"sllm.decoder_lora_r": 16, "sllm.kv_prefix": 8},
        "soft prompts + KV prefix 8": {"sllm.decoder_lora_r": 0, "sllm.kv_prefix": 8},
    },
    # the SLLM's own size and latent width
    "size": {
        "latent 256, encoder 128 wide": {},
        "latent 512": {"sllm.latent_dim": 512},
        "encoder 256 wide": {"sllm.enc_dim": 256},
    },
    # the off-manifold cycle term, off and on
    "cycle": {
        "no cycle term": {"sllm.cycle_weight": 0.0},
        "cycle term 1.0": {"sllm.cycle_weight": 1.0},
    },
    # a variational latent: decode mu + sigma * eps in training, KL to N(0, I) at two weights
    "kl": {
        "plain autoencoder": {"sllm.kl_weight": 0.0},
        "KL 0.01": {"sllm.kl_weight": 0.01},
        "KL 0.1": {"sllm.kl_weight": 0.1},
    },
}


def parse_ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} {text!r}: pass whole numbers separated by commas, e.g. 0,1,2") from None
    if not vals or any(v < 0 for v in vals):
        raise ConfigError(f"{what} {text!r}: pass one or more numbers >= 0, separated by commas")
    return vals


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="run.py bench sllm", parents=[run_parser()], add_help=False,
                                description="SLLM round-trip benchmark on held-out texts")
    p.add_argument("--ablation", nargs="?", const="terms", choices=sorted(ABLATIONS),
                   help="train one SLLM per variant and compare: terms (without each loss term; the default), "
                        "channel (soft prompts, decoder LoRA, word dropout), adapter (without and with the decoder "
                        "LoRA), cycle (without and with the off-manifold cycle term), inject (a key/value prefix in every "
                        "layer), size (latent and encoder width) or kl (a variational latent at two KL weights)")
    p.add_argument("--seeds", help="training seeds, e.g. 0,1,2: one base model and SLLM per seed (one base model "
                                   "for all with --base-dir), and each figure's mean and 95%% interval over them; "
                                   "default: run.seed alone")
    p.add_argument("--curve", help="training steps at which to measure greedy exact match on 200 held-out texts "
                                   "as training goes, e.g. 200,400,800 (the last step is always measured)")
    p.add_argument("--json", default="bench-sllm.json", help="where to write the figures (JSON)")
    p.add_argument("--run", help="measure this run folder's own SLLM and base model instead of training new ones")
    p.add_argument("--generation", type=int, help="with --run: which generation's SLLM (default: the latest)")
    p.add_argument("--heldout", choices=("knowledge", "eval"), default="knowledge",
                   help="the held-out set measured: the domain's held-out knowledge (maths facts, molecules "
                        "scaffold test; default) or its evaluation texts (molecules: MOSES test; maths: the "
                        "evaluation split, which a new SLLM then does not train on)")
    p.add_argument("--beams", type=int, default=1,
                   help="also measure the decodes that decode.beams=N with decode.pick=parseable (the likeliest "
                        "of N beams the domain's verifier parses) and decode.pick=closest (the parseable beam "
                        "encoded nearest the latent) give: held-out exact match, prior validity and dark decodes "
                        "still dark, as the *_parseable and *_closest figures; needs a domain with a verifier")
    p.add_argument("--base-dir", help="a base-model folder to train SLLMs on: reused when it holds one (e.g. "
                                      "RUN_DIR/base), trained there and kept when empty; default: a temporary one")
    args = p.parse_args(argv[1:])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    logging.basicConfig(level=logging.WARNING)
    try:
        if args.corpus:
            raise ConfigError("bench sllm measures on a domain's own held-out set (maths: held-out facts; molecules: "
                              "MOSES scaffold test); drop --corpus")
        if args.beams < 1:
            raise ConfigError(f"--beams must be >= 1, got {args.beams}")
        base_cfg = build_from_args(args)
        c = base_cfg.corpus
        get_domain(c.domain_name).check_knowledge(c)
        if not args.run:  # an unreadable sllm.texts_file is refused before any training, not after
            RunContext(base_cfg).sllm_file_texts()
    except ValueError as e:  # ConfigError, or MathsConfig's own check of the corpus settings
        print(f"error: {e}", file=sys.stderr)
        return 2
    if base_cfg.run.threads:
        torch.set_num_threads(base_cfg.run.threads)
    if args.run:
        try:
            if args.ablation:
                raise ConfigError("--ablation trains new SLLMs; it does not combine with --run")
            if args.base_dir:
                raise ConfigError("--base-dir trains new SLLMs on a saved base model; it does not combine with --run")
            res, run_cfg = evaluate_run(Path(args.run), args.generation, args.heldout, args.beams)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return _report({f"{args.run} gen {res['generation']}": res}, run_cfg, args.json)
    variants = ABLATIONS[args.ablation] if args.ablation else {"full": {}}
    try:
        seeds = parse_ints(args.seeds, "--seeds") if args.seeds else [base_cfg.run.seed]
        curve = parse_ints(args.curve, "--curve") if args.curve else None
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows: dict[str, dict] = {}
    groups: dict[str, list[str]] = {}  # variant -> its rows, one per seed
    # One base model per seed for every variant: --base-dir's (kept; then one for every seed), or
    # temporary ones removed when the bench ends (~1 MB each). Comparing SLLM settings on one saved
    # base model skips its training.
    with contextlib.ExitStack() as stack:
        if args.base_dir:
            base_dir = Path(args.base_dir)
            if base_dir.exists() and not base_dir.is_dir():
                print(f"error: --base-dir {base_dir} is a file; pass a base-model folder (e.g. RUN_DIR/base)",
                      file=sys.stderr)
                return 2
            if base_dir.is_dir() and any(base_dir.iterdir()) and not (base_dir / "config.json").is_file():
                print(f"error: --base-dir {base_dir} holds no base model (no config.json) and is not empty; pass a "
                      "base-model folder (e.g. RUN_DIR/base) or an empty one", file=sys.stderr)
                return 2
            base_dir.mkdir(parents=True, exist_ok=True)
            base_for = lambda seed: base_dir  # noqa: E731
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-base-")))
            base_for = lambda seed: tmp / f"seed-{seed}"  # noqa: E731
        for seed in seeds:
            for name, extra in variants.items():
                cfg = build_config(base_cfg.to_dict(), {**extra, "run.seed": seed})
                row = name if len(seeds) == 1 else f"{name} s{seed}"
                print(f"training: {row}", file=sys.stderr, flush=True)
                base_for(seed).mkdir(parents=True, exist_ok=True)
                rows[row] = train_and_evaluate(cfg, base_for(seed), curve, heldout_set=args.heldout, beams=args.beams)
                rows[row]["seed"] = seed
                groups.setdefault(name, []).append(row)
    summary = {name: summarise([rows[r] for r in names]) for name, names in groups.items()} if len(seeds) > 1 else None
    return _report(rows, base_cfg, args.json, summary)


def _report(rows: dict[str, dict], cfg, json_path: str, summary: dict[str, dict] | None = None) -> int:
    env = environment()
    if summary and len(summary) == 1:
        print(table(rows, next(iter(summary.values()))))
    else:
        print(table(rows))
        for name, summ in (summary or {}).items():
            print(f"\n{name}: mean [95% CI] over seeds")
            print(table({}, summ))
    curves = curve_table(rows)
    if curves:
        print("\ngreedy exact match / teacher-forced token accuracy against training steps (200 held-out texts):")
        print(curves)
    print("\nexamples (held-out text -> decoded):")
    for ex in next(iter(rows.values()))["examples"][:5]:
        print(f"  {ex['text']!r} -> {ex['decoded']!r}")
    print(f"\n{env['threads']} threads, torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}")
    Path(json_path).write_text(json.dumps({"settings": cfg.to_dict(), "environment": env, "results": rows,
                                           "summary": summary}, indent=2))
    print(f"\nwrote {json_path}")
    return 0
