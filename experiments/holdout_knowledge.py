"""The holdout of a domain's knowledge set (the idea's NN1/NN2 test against a finished run).

NN1 = generation 0's SLLM (and base model, and map) of a run on the domain's own corpus, which holds
nothing of the domain's held-out knowledge set (`Domain.knowledge_holdout`; molecules: the MOSES
scaffold-test molecules, whose scaffolds occur in neither MOSES train nor test). NN2 = NN1 continued
on the run's training texts plus part A of the held-out set: a run of its own (OUT/nn2, up to its
SLLM stage, `sllm.init` = NN1's SLLM, `sllm.texts_file` = part A, on NN1's base model). Measured: part B (disjoint from A) and,
as the control, as many texts of the domain's control set (unseen texts the corpus does resemble;
NN2 is not continued on them). Each is encoded by NN2 and located in NN1's map (the figures every
domain shares, `experiments.holdout.locate`), then decoded by both decoders and compared with the
original as the domain says (`KnowledgeHoldout.compare`: on molecules, validity, canonical SMILES,
Tanimoto, scaffolds, rediscoveries).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from sqlmodel import Session

from common.errors import ConfigError
from domains.base import get_domain
from domains.files import CorpusError
from experiments.common import plain_table
from experiments.holdout import (_check_holdout_folder, _ensure_run_row, calibration_line, continued, locate,
                                 location_rows, reencode, nn1_reencode_figures, save_holdout, MEASURE_ONLY)
from latent.features import FeatureDictionary
from loop.context import RunContext
from loop.runner import Loop
from loop.stages import load_map
from sllm.codec import GenParams
from storage.db import RunLock, done_stages, open_db

log = logging.getLogger(__name__)

GROUPS = ("topic", "control")
# the decodes compared: (key, what it is). NN1 and NN2 decode NN2's latent; nn1_own is NN1's
# plain round trip of its own latent, the reference for how much any NN1 decode keeps
DECODERS = (("nn1", "NN1 decode"), ("nn2", "NN2 decode"), ("nn1_own", "NN1 round trip (NN1's own latent)"))


def split_parts(texts: list[str], n_b: int, n_a: int, seed: int) -> tuple[list[str], list[str]]:
    """(part A, part B): disjoint, `n_a` and `n_b` distinct texts drawn by one seeded permutation."""
    uniq = list(dict.fromkeys(texts))
    if len(uniq) < n_a + n_b:
        raise ValueError(f"{len(uniq)} held-out texts cannot give part A {n_a} + part B {n_b}")
    perm = np.random.default_rng([seed, 15]).permutation(len(uniq))  # 15: a stream of its own, so A/B differ from other draws
    return [uniq[i] for i in perm[n_b:n_b + n_a]], [uniq[i] for i in perm[:n_b]]


def decode_figures(holdout, arr: dict[str, dict[str, np.ndarray]], mask: np.ndarray,
                   reencoded: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """The decode figures of the texts in `mask`: each decoder's (the domain's `figures`, suffixed
    with the decoder), the pair figures of NN1's and NN2's decodes, and the round-trip check."""
    idx = np.flatnonzero(mask)
    out: dict = {"texts": int(len(idx))}
    if not len(idx):
        return out
    sub = {d: {k: v[idx] for k, v in a.items()} for d, a in arr.items()}
    for d, _ in DECODERS:
        out.update({f"{k}_{d}": v for k, v in holdout.figures(sub[d]).items()})
    out.update(holdout.pair_figures(sub["nn1"], sub["nn2"]))
    if reencoded is not None:  # (dark, density score) of NN1's decodes encoded again by NN1
        out.update(nn1_reencode_figures(*reencoded, idx))
    return out


def _check_run_mapped(run_dir: Path) -> None:
    """The run has generation 0's SLLM and map (its `map` stage is done)."""
    engine = open_db(run_dir)
    try:
        with Session(engine) as s:
            done = (0, "map") in done_stages(s)
    finally:
        engine.dispose()
    if not done:
        raise ConfigError(f"run {run_dir} has no generation-0 map yet (its map stage is not done); let the run "
                          f"finish, or resume it with `python run.py --out {run_dir}`")


def holdout_knowledge(cfg, run_dir: Path, out: Path, part_a: int, max_texts: int, continue_epochs: int,
                      json_path: Path | None) -> dict:
    """The NN1/NN2 test on a domain's knowledge set against run `run_dir` (cfg = that run's own
    settings). NN2 is a run folder, `out`/nn2 (resumed as any run); nothing is written into `run_dir`."""
    t0 = time.perf_counter()
    domain = cfg.corpus.domain_name
    holdout = get_domain(domain).knowledge_holdout
    if holdout is None:
        raise ConfigError(f"run {run_dir} is a {domain} run, a domain without a held-out knowledge set; this holdout "
                          "needs a run of a domain that has one (python run.py --domain DOMAIN --out DIR)")
    _check_run_mapped(run_dir)
    loop = RunContext(cfg)
    if cfg.corpus.path is not None:
        raise ConfigError(f"run {run_dir} trained on a user corpus ({cfg.corpus.path}), which may hold {holdout.name} "
                          f"texts; the holdout needs a run on the {domain} domain's own corpus (no --corpus)")
    seed = cfg.run.seed
    try:  # the held-out set (parts A and B) and the control set, seeded subsets
        held, control = holdout.sets(cfg.corpus, seed, part_a + max_texts, max_texts)
    except CorpusError as e:
        raise ConfigError(f"--part-a {part_a} + --max-texts {max_texts}: more texts than the {domain} domain holds "
                          f"({e}); ask for fewer") from None
    a_list, b_list = split_parts(held, max_texts, part_a, seed)
    data = loop.data  # the run's own training corpus, as NN1 trained on it
    a_set = frozenset(a_list)
    assert not a_set & set(b_list), "parts A and B overlap"
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    with RunLock(out):
        _check_holdout_folder(out, {"domain": domain, "run": str(run_dir.resolve()), "part_a": part_a,
                                    "max_texts": max_texts, "continue_epochs": continue_epochs, "nn_runs": True,
                                    "config_hash": cfg.result_hash(leave_out=MEASURE_ONLY)}, cfg)
        engine = open_db(out, create=True)
        _ensure_run_row(engine, cfg)
        engine.dispose()
        (out / "parts.json").write_text(json.dumps({"A": a_list, "B": b_list, "control": control}))
        tok, model = loop.model(None)  # generation 0's base model: no adapter
        nn1 = loop.codec(0, model, tok)
        occ = load_map(loop, 0)
        features = FeatureDictionary.of_map(loop.layout.map(0), cfg.features, seed)

        # NN2: a run of its own, up to its SLLM stage: the run's SLLM trained on the run's corpus and part A
        part_a_file = out / "part-a.txt"
        if not part_a_file.is_file() or part_a_file.read_text().splitlines() != a_list:
            tmp = out / f".{part_a_file.name}.tmp"
            tmp.write_text("".join(f"{t}\n" for t in a_list))
            os.replace(tmp, part_a_file)
        c2 = continued(cfg, out / "nn2", loop.base_path(), loop.layout.sllm(0), continue_epochs, str(part_a_file))
        t1 = time.perf_counter()
        Loop(c2).run(until="sllm")
        timings["nn2_s"] = time.perf_counter() - t1
        ctx2 = RunContext(c2)
        nn2 = ctx2.codec(0, ctx2.model(None)[1], tok)  # its own copy of the base model, wearing NN2's adapter

        t1 = time.perf_counter()
        eval_latents = loop.layout.map(0) / "eval_latents.npy"
        calib = occ.calibrate(np.load(eval_latents) if eval_latents.is_file()
                              else nn1.encode([t.text for t in data.eval]))
        greedy = GenParams(cfg.decode.max_new_tokens, 0.0, seed)
        per_group, samples = {}, []
        for gname, orig in (("topic", b_list), ("control", control)):
            z2 = nn2.encode(orig)  # (N, latent)
            z1 = nn1.encode(orig)
            where, (dark2, gdark2, inside2, dens2) = locate(occ, z1, z2, features)
            dec = {}
            for dname, net, z in (("nn1", nn1, z2), ("nn2", nn2, z2), ("nn1_own", nn1, z1)):
                dec[dname] = net.decode(z, loop.backend(None, (tok, net.model)), greedy)  # NN2's base model is the run's
            arr = {d: holdout.compare(orig, dec[d], a_set, data.train_fact_keys) for d, _ in DECODERS}
            rdark, rdens = reencode(occ, nn1, dec["nn1"])
            per_group[gname] = {
                "topic": holdout.name if gname == "topic" else holdout.control, "texts": len(orig),
                "seen_by_nn1": False, "seen_by_nn2": False,  # B: NN2 saw part A only; control: neither
                **holdout.group_figures(orig, data, a_list, held=gname == "topic"),
                **where,
                # as on maths: the subset uses the density criterion alone (kNN-darker than NN1's texts)
                "all": decode_figures(holdout, arr, np.ones(len(orig), bool), (rdark, rdens)),
                "dark_only": decode_figures(holdout, arr, dens2 > 1, (rdark, rdens)),
            }
            for i, o in enumerate(orig):
                for d, _ in DECODERS:
                    a = arr[d]
                    samples.append({
                        "kind": f"{gname}/{d}", "seed": seed, "text": dec[d][i], "source": o,
                        "verdict": "true" if a["valid"][i] else "unparseable", "fact_key": a["canonical"][i],
                        "true_new": bool(a["valid_new"][i]), "density_score": float(dens2[i]), "dark": bool(dark2[i]),
                        "detail": {"group": gname, "gmm_dark": bool(gdark2[i]), "inside": bool(inside2[i]),
                                   **holdout.sample_detail(a, i),
                                   **({"reencoded_density": float(rdens[i]), "reencoded_dark": bool(rdark[i])}
                                      if d == "nn1" else {})},
                    })
        timings["measure_s"] = time.perf_counter() - t1
    result = {"domain": domain, "topic": holdout.name, "control": holdout.control, "run": str(run_dir),
              "continue_epochs": continue_epochs, "part_a": len(a_list), "part_b": len(b_list),
              "train_texts": len(data.train), "groups": per_group, "calibration_nn1_map": calib, "timings": timings}
    table = holdout_knowledge_table(result)
    seconds = time.perf_counter() - t0
    result["seconds"] = seconds
    json_path = json_path or out / "experiments" / f"holdout-{holdout.name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    settings = {"out": str(out), "run": str(run_dir), "domain": domain, "part_a": part_a, "max_texts": max_texts,
                "continue_epochs": continue_epochs, "config": cfg.to_dict()}
    artifacts = {"json": str(json_path), "base": loop.base_path(), "nn1": str(loop.layout.sllm(0)),
                 "map": str(loop.layout.map(0)), "nn2": str(ctx2.layout.sllm(0)), "nn2_run": c2.run.out,
                 "parts": str(out / "parts.json")}
    return save_holdout(out, settings, result, table, artifacts, seconds, samples, json_path)


# The round-trip check of NN1's decodes, shown after the domain's pair figures.
REENCODE_ROWS = (("reencoded_dark_nn1", "NN1 decode dark once re-encoded by NN1", "{:.1%}"),
                 ("reencoded_density_median_nn1", "median density score of NN1 decode re-encoded", "{:.2f}"))


def _cell(d: dict, key: str, fmt: str) -> str:
    return "–" if d.get(key) is None else fmt.format(d[key])


def holdout_knowledge_table(result: dict) -> str:
    holdout = get_domain(result["domain"]).knowledge_holdout
    g = result["groups"]
    headers = ["figure", f"{result['topic']} B (unseen by NN1; NN2 saw part A)",
               f"control: {result['control']} (seen by neither)"]
    rows = [[f"{holdout.noun} encoded by NN2", *[str(g[n]["texts"]) for n in GROUPS]]]
    rows += [[label, *[_cell(g[n], key, fmt) for n in GROUPS]] for key, label, fmt in holdout.group_rows]
    rows += location_rows(g, GROUPS)[1:]  # its first row (texts) is the one above
    for sub, title in (("all", f"all {holdout.noun}"), ("dark_only", "only NN2 latents kNN-darker than NN1's texts")):
        rows.append([f"-- decodes of {title}: n", *[str(g[n][sub]["texts"]) for n in GROUPS]])
        rows.append(["   (each cell: NN1 decode / NN2 decode / NN1 round trip)", "", ""])
        for key, label, fmt in holdout.decode_rows:
            rows.append([f"   {label}", *[" / ".join(_cell(g[n][sub], f"{key}_{d}", fmt) for d, _ in DECODERS)
                                          if g[n][sub]["texts"] else "–" for n in GROUPS]])
        for key, label, fmt in (*holdout.pair_rows, *REENCODE_ROWS):
            rows.append([f"   {label}", *[_cell(g[n][sub], key, fmt) for n in GROUPS]])
    lines = [plain_table(headers, rows), holdout.setup_note(result)]
    c = calibration_line(result["calibration_nn1_map"], f"held-out {result['control']} {holdout.noun}")
    if c:
        lines.append(c)
    return "\n".join(lines)
