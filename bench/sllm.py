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

import numpy as np

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


def roundtrip(sllm, model, tok, backend, texts: list[str], max_new_tokens: int) -> list[str]:
    from sllm.train import encode, soft_prompts

    z = encode(sllm, model, tok, texts)
    emb, _ = soft_prompts(sllm, model, tok, z)
    return backend.generate_from_embeds(emb, max_new_tokens, 0.0, 0)


def evaluate(sllm, model, tok, heldout, train, domain, max_new_tokens: int = 32, n_pairs: int = 100,
             seed: int = 0, n_prior: int = 200) -> dict:
    """All bench figures for one trained SLLM on `domain`'s texts."""
    import sacrebleu

    from backends.transformers_backend import TransformersBackend
    from sllm.train import encode, soft_prompts

    verify, embed = domain.verifier, domain.meaning_embedder().embed

    be = TransformersBackend("")
    be.tokenizer, be.model = tok, model
    texts = [t.text for t in heldout]
    t0 = time.perf_counter()
    out = roundtrip(sllm, model, tok, be, texts, max_new_tokens)
    decode_s = time.perf_counter() - t0
    em = float(np.mean([domain.canonical(a) == domain.canonical(b) for a, b in zip(texts, out)]))
    bleu = sacrebleu.corpus_bleu(out, [texts]).score
    f1 = float(np.mean([token_f1(a, b) for a, b in zip(texts, out)]))
    ea, eb = embed(texts), embed(out)
    cos = float(np.mean((ea * eb).sum(1)))
    z_held = encode(sllm, model, tok, texts)
    z_train = encode(sllm, model, tok, [t.text for t in train])
    norms = np.linalg.norm(z_train, axis=1)
    res = {
        "heldout_texts": len(texts), "exact_match": em, "bleu": bleu, "token_f1": f1, "embedding_cosine": cos,
        "latent_norm_mean": float(norms.mean()), "latent_norm_std": float(norms.std()),
        "effective_dimension": effective_dimension(z_train), "latent_dim": int(z_train.shape[1]),
        "paraphrase_closer_than_other_fact": paraphrase_closeness(z_held, [t.fact_key for t in heldout]),
        "decode_seconds": decode_s,
        "examples": [{"text": a, "decoded": b} for a, b in list(zip(texts, out))[:8]],
    }
    if verify is not None:
        rng = np.random.default_rng(seed)
        i, j = rng.integers(0, len(z_train), n_pairs), rng.integers(0, len(z_train), n_pairs)
        ts = np.linspace(0, 1, 7)[1:-1]  # 5 interior points
        pts = np.concatenate([(1 - t) * z_train[i] + t * z_train[j] for t in ts]).astype(np.float32)
        emb, _ = soft_prompts(sllm, model, tok, pts)
        dec = be.generate_from_embeds(emb, max_new_tokens, 0.0, 0)
        verdicts = [verify(x).status for x in dec]
        res["interpolation_parseable"] = float(np.mean([v != "unparseable" for v in verdicts]))
        res["interpolation_true"] = float(np.mean([v == "true" for v in verdicts]))
        # random latents of the corpus's own Gaussian (the `prior` sampler's model): what decodes
        # where no text was encoded (molecules: the validity of decodes of random prior latents)
        mu, cov = z_train.mean(0), np.cov(z_train, rowvar=False)
        pts = rng.multivariate_normal(mu, cov, size=n_prior, method="eigh").astype(np.float32)
        emb, _ = soft_prompts(sllm, model, tok, pts)
        dec = be.generate_from_embeds(emb, max_new_tokens, 0.0, 0)
        verdicts = [verify(x).status for x in dec]
        res["prior_parseable"] = float(np.mean([v != "unparseable" for v in verdicts]))
        res["prior_true"] = float(np.mean([v == "true" for v in verdicts]))
        res["prior_unique"] = len({domain.canonical(x) for x, v in zip(dec, verdicts) if v == "true"}) / n_prior
    return res


def train_and_evaluate(cfg, base_dir: Path) -> dict:
    """Build the data, train the base model into `base_dir` (or reuse the one there), train an
    SLLM, evaluate it."""
    import torch

    from domains.base import get_domain
    from lm.base_model import load_base_model, train_small_base
    from sllm.model import SLLM
    from sllm.train import train_sllm

    domain = get_domain(cfg.corpus.domain_name)
    embedder = domain.meaning_target(cfg.corpus.meaning)  # the meaning term's target (the figures use the domain's own)
    train, heldout = domain.texts(cfg.corpus, cfg.run.seed)
    timings = {}
    # the domain's language texts (maths: verifier-checked false sentences: no true fact, held out or not)
    extra = domain.language_texts(cfg.corpus, cfg.run.seed, cfg.sllm.false_texts)
    if not (base_dir / "config.json").is_file():
        t0 = time.perf_counter()
        train_small_base([t.text for t in train], cfg.base, base_dir, cfg.run.seed, groups=[t.fact_key for t in train],
                         copy_texts=[t.text for t in extra], tokenizer_fn=domain.train_tokenizer)
        timings["base_s"] = time.perf_counter() - t0
    tok, model = load_base_model(str(base_dir), cfg.run.device)
    texts = [t.text for t in train + extra]
    targets = embedder.embed(texts) if cfg.sllm.meaning_weight > 0 else None
    torch.manual_seed(cfg.run.seed)
    sllm = SLLM(model.get_input_embeddings().weight.shape[1], cfg.sllm, embedder.dim)
    t0 = time.perf_counter()
    info = train_sllm(sllm, model, tok, texts, targets, cfg.sllm.epochs, cfg.sllm.lr, cfg.sllm.batch_size,
                      cfg.run.seed, fact_keys=[t.fact_key for t in train + extra], desc="SLLM")
    timings["sllm_s"] = time.perf_counter() - t0
    res = evaluate(sllm, model, tok, heldout, train, domain, cfg.decode.max_new_tokens, seed=cfg.run.seed)
    res["train_texts"] = len(train)
    res["false_texts"] = len(extra)
    res["meaning_target"] = {"name": embedder.name, "dim": embedder.dim}
    res["final_losses"] = info["final"]
    res.update(timings)
    return res


def evaluate_run(run_dir: Path, generation: int | None = None, heldout_set: str = "knowledge") -> tuple[dict, object]:
    """(figures, the run's settings) for a run's own SLLM (generation `generation`, default the latest trained) and
    base model (wearing that generation's adapter). Held-out facts the run accepted before that
    generation, and so trained on, are left out of the measure."""
    from sqlmodel import Session, select

    from common.errors import ConfigError
    from loop.runner import Loop, run_config
    from storage.db import open_db
    from storage.models import Candidate, Stage

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
            loop = Loop(cfg)
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
        raise ConfigError(f"--run {run_dir} holds out no fact it has not trained on (corpus.holdout_share="
                          f"{c.holdout_share} of facts_per_topic={c.facts_per_topic}); nothing to measure")
    tok, model = loop.model(adapter)
    sllm = loop.load_sllm(g, model)
    res = evaluate(sllm, model, tok, heldout, loop.data.train, loop.domain, cfg.decode.max_new_tokens,
                   seed=cfg.run.seed)
    res.update(run=str(run_dir), generation=g, heldout_left_out=len(loop.data.knowledge) - len(heldout))
    return res, cfg


FIGURES = [("exact_match", "{:.1%}"), ("bleu", "{:.1f}"), ("token_f1", "{:.3f}"), ("embedding_cosine", "{:.3f}"),
           ("paraphrase_closer_than_other_fact", "{:.1%}"), ("interpolation_parseable", "{:.1%}"),
           ("interpolation_true", "{:.1%}"), ("prior_parseable", "{:.1%}"), ("prior_true", "{:.1%}"),
           ("prior_unique", "{:.1%}"), ("effective_dimension", "{:.1f}"), ("latent_norm_mean", "{:.2f}"),
           ("latent_norm_std", "{:.2f}"), ("sllm_s", "{:.0f}")]


def table(rows: dict[str, dict]) -> str:
    names = list(rows)
    lines = ["| figure | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for key, fmt in FIGURES:
        vals = []
        for n in names:
            v = rows[n].get(key)
            vals.append("–" if v is None else fmt.format(v))
        lines.append(f"| {key} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


ABLATIONS = {
    "full": {},
    "no meaning term": {"sllm.meaning_weight": 0.0},
    "no paraphrase term": {"sllm.paraphrase_weight": 0.0},
    "reconstruction only": {"sllm.meaning_weight": 0.0, "sllm.paraphrase_weight": 0.0},
}


def main(argv: list[str]) -> int:
    from domains import MathsConfig
    from domains.maths import heldout_per_topic
    from loop.options import build_from_args, parser as run_parser
    from loop.config import ConfigError

    p = argparse.ArgumentParser(prog="run.py bench sllm", parents=[run_parser()], add_help=False,
                                description="SLLM round-trip benchmark on held-out texts")
    p.add_argument("--ablation", action="store_true", help="also train without each loss term and compare")
    p.add_argument("--json", default="bench-sllm.json", help="where to write the figures (JSON)")
    p.add_argument("--run", help="measure this run folder's own SLLM and base model instead of training new ones")
    p.add_argument("--generation", type=int, help="with --run: which generation's SLLM (default: the latest)")
    p.add_argument("--heldout", choices=("knowledge", "eval"), default="knowledge",
                   help="with --run: the held-out set measured: the domain's held-out knowledge (maths facts, "
                        "molecules scaffold test; default) or its evaluation texts (molecules: MOSES test)")
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
        base_cfg = build_from_args(args)
        c = base_cfg.corpus
        if c.domain_name not in ("maths", "molecules"):
            raise ConfigError(f"bench sllm needs a domain with a held-out set: --domain maths or molecules, not {c.domain_name}")
        if c.domain_name == "maths" and heldout_per_topic(MathsConfig(facts_per_topic=c.facts_per_topic, holdout_share=c.holdout_share)) < 1:
            raise ConfigError(f"corpus.holdout_share={c.holdout_share} of corpus.facts_per_topic={c.facts_per_topic} "
                              "holds out no fact to measure on; raise either (e.g. --set corpus.facts_per_topic=10)")
    except ValueError as e:  # ConfigError, or MathsConfig's own check of the corpus settings
        print(f"error: {e}", file=sys.stderr)
        return 2
    if base_cfg.run.threads:
        import torch

        torch.set_num_threads(base_cfg.run.threads)
    if args.run:
        try:
            if args.ablation:
                raise ConfigError("--ablation trains new SLLMs; it does not combine with --run")
            if args.base_dir:
                raise ConfigError("--base-dir trains new SLLMs on a saved base model; it does not combine with --run")
            res, run_cfg = evaluate_run(Path(args.run), args.generation, args.heldout)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return _report({f"{args.run} gen {res['generation']}": res}, run_cfg, args.json)
    variants = ABLATIONS if args.ablation else {"full": {}}
    rows = {}
    from loop.config import build_config

    # One base model for every variant: --base-dir's (kept), or a temporary one removed when the bench
    # ends (it is ~1 MB a run). Comparing SLLM settings on one saved base model skips its training.
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
        else:
            base_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-base-")))
        for name, extra in variants.items():
            cfg = build_config(base_cfg.to_dict(), extra)
            print(f"training: {name}", file=sys.stderr, flush=True)
            rows[name] = train_and_evaluate(cfg, base_dir)
    return _report(rows, base_cfg, args.json)


def _report(rows: dict[str, dict], cfg, json_path: str) -> int:
    print(table(rows))
    print("\nexamples (held-out text -> decoded):")
    for ex in next(iter(rows.values()))["examples"][:5]:
        print(f"  {ex['text']!r} -> {ex['decoded']!r}")
    Path(json_path).write_text(json.dumps({"settings": cfg.to_dict(), "results": rows}, indent=2))
    print(f"\nwrote {json_path}")
    return 0
