"""The holdout experiment on molecules (the idea's NN1/NN2 test).

NN1 = generation 0's SLLM (and base model, and map) of a molecules run: it trained on MOSES train
only, so it never saw the scaffold-test molecules (real molecules whose Bemis-Murcko scaffolds occur
in neither MOSES train nor test). NN2 = NN1 continued on the run's training molecules plus part A
of the scaffold-test molecules. Measured: part B (disjoint from A) and, as the control, as many
MOSES test molecules (unseen molecules whose scaffolds MOSES train holds; NN2 is not continued on
them). Each is encoded by NN2 and located in NN1's map (the figures every domain shares,
`experiments.holdout.locate`), then decoded by both decoders and compared with the original
through the chemistry the molecules domain provides (RDKit validity and canonical SMILES, Morgan
fingerprints, scaffolds, the scaffold-test set): those figures live here, not in the domain,
because they are this experiment's comparison, not a property of the domain's texts.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
from sqlmodel import Session

from common.errors import ConfigError
from domains.base import get_domain
from domains.files import CorpusError
from domains.molecules.domain import canonical, fingerprints, scaffold_test_set, train_scaffolds
from experiments.common import plain_table, store_experiment
from experiments.holdout import (_check_holdout_folder, _ensure_run_row, _ready, _save_codec_atomic, calibration_line,
                                 locate, location_rows, reencode, nn1_reencode_figures, MEASURE_ONLY)
from latent.features import FeatureDictionary
from lm.base_model import load_base_model
from loop.context import RunContext
from loop.runner import environment
from loop.stages import load_map
from sllm.codec import Codec, GenParams
from storage.db import RunLock, done_stages, open_db

log = logging.getLogger(__name__)

TOPIC = "scaffold-test"  # the held-out "topic" of the molecules domain
GROUPS = ("topic", "control")
# the decodes compared: (key, what it is). NN1 and NN2 decode NN2's latent; nn1_own is NN1's
# plain round trip of its own latent, the reference for how much any NN1 decode keeps
DECODERS = (("nn1", "NN1 decode"), ("nn2", "NN2 decode"), ("nn1_own", "NN1 round trip (NN1's own latent)"))


def split_parts(smiles: list[str], n_b: int, n_a: int, seed: int) -> tuple[list[str], list[str]]:
    """(part A, part B): disjoint, `n_a` and `n_b` distinct molecules drawn by one seeded permutation."""
    uniq = list(dict.fromkeys(smiles))
    if len(uniq) < n_a + n_b:
        raise ValueError(f"{len(uniq)} scaffold-test molecules cannot give part A {n_a} + part B {n_b}")
    perm = np.random.default_rng([seed, 15]).permutation(len(uniq))  # 15: a stream of its own, so A/B differ from other draws
    return [uniq[i] for i in perm[n_b:n_b + n_a]], [uniq[i] for i in perm[:n_b]]


def tanimoto_pairs(a: list[str], b: list[str]) -> np.ndarray:
    """Tanimoto similarity of a[i] and b[i] on Morgan bits (the domain's fingerprints); 0 where
    either is invalid."""
    fa, fb = fingerprints(a).astype(bool), fingerprints(b).astype(bool)  # (N, 1024) each
    inter, union = (fa & fb).sum(1), (fa | fb).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def decode_arrays(orig: list[str], dec: list[str], part_a: frozenset[str], train_keys) -> dict[str, np.ndarray]:
    """Per-molecule comparison of decodes `dec` with the originals `orig`."""
    from domains.molecules.metrics import scaffold  # lazy: RDKit start-up, not needed for --help

    can = [canonical(t) if t else None for t in dec]
    ref = [canonical(t) or t for t in orig]
    valid = np.array([c is not None for c in can])
    sf = scaffold_test_set()
    redisc = np.array([c is not None and c in sf for c in can])
    exact = np.array([c is not None and c == r for c, r in zip(can, ref)])
    scaf_o = [scaffold(r) for r in ref]
    return {
        "canonical": np.array(can, dtype=object), "valid": valid, "exact": exact,
        "tanimoto": tanimoto_pairs(ref, [c or "" for c in can]),
        "same_scaffold": np.array([c is not None and s is not None and scaffold(c) == s for c, s in zip(can, scaf_o)]),
        "rediscovered": redisc, "rediscovered_other": redisc & ~exact,
        "rediscovered_in_a": np.array([c is not None and c in part_a for c in can]),
        "valid_new": np.array([c is not None and c not in train_keys for c in can]),
    }


def decode_figures(arr: dict[str, dict[str, np.ndarray]], mask: np.ndarray,
                   reencoded: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """The decode figures of the texts in `mask`: shares in [0, 1], Tanimoto means over valid
    decodes (None when none is valid), counts prefixed n_."""
    idx = np.flatnonzero(mask)
    out: dict = {"texts": int(len(idx))}
    if not len(idx):
        return out
    for d, _ in DECODERS:
        a = {k: v[idx] for k, v in arr[d].items()}
        out[f"valid_{d}"] = float(a["valid"].mean())
        out[f"exact_{d}"] = float(a["exact"].mean())
        out[f"tanimoto_{d}"] = float(a["tanimoto"][a["valid"]].mean()) if a["valid"].any() else None
        out[f"same_scaffold_{d}"] = float(a["same_scaffold"].mean())
        out[f"valid_new_{d}"] = float(a["valid_new"].mean())
        for k in ("rediscovered", "rediscovered_other", "rediscovered_in_a"):
            out[f"n_{k}_{d}"] = int(a[k].sum())
    c1, c2 = arr["nn1"]["canonical"][idx], arr["nn2"]["canonical"][idx]
    both = np.array([x is not None and y is not None for x, y in zip(c1, c2)])
    out["identical_nn1_nn2"] = float(np.mean([x is not None and x == y for x, y in zip(c1, c2)]))
    t12 = tanimoto_pairs([x or "" for x in c1], [y or "" for y in c2])
    out["tanimoto_nn1_vs_nn2"] = float(t12[both].mean()) if both.any() else None
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


def holdout_molecules(cfg, run_dir: Path, out: Path, part_a: int, max_texts: int, continue_epochs: int,
                      json_path: Path | None) -> dict:
    """The NN1/NN2 test on molecules against run `run_dir` (cfg = that run's own settings).
    Resumable: NN2 is reused from `out` when there; nothing is written into `run_dir`."""
    from domains.molecules.metrics import scaffold  # lazy: RDKit start-up, not needed for --help
    from sllm.train import train_sllm  # lazy: scikit-learn's clustering start-up, not needed for --help

    t0 = time.perf_counter()
    domain = cfg.corpus.domain_name
    if get_domain(domain).knowledge_holdout != TOPIC:
        raise ConfigError(f"run {run_dir} is a {domain} run; this holdout needs a run of a domain whose held-out "
                          f"knowledge set is {TOPIC} (python run.py --domain DOMAIN --out DIR)")
    _check_run_mapped(run_dir)
    loop = RunContext(cfg)
    if cfg.corpus.path is not None:
        raise ConfigError(f"run {run_dir} trained on a user corpus ({cfg.corpus.path}), which may hold scaffold-test "
                          "molecules; the molecules holdout needs a run on MOSES train (no --corpus)")
    seed = cfg.run.seed
    # scaffold-test molecules (parts A and B) and MOSES test molecules (the control), seeded subsets
    corpus = dataclasses.replace(cfg.corpus, own=dataclasses.replace(cfg.corpus.own, knowledge_texts=part_a + max_texts,
                                                                      eval_texts=max_texts))
    try:
        held = loop.domain.load(corpus, seed)
    except CorpusError as e:
        raise ConfigError(f"--part-a {part_a} + --max-texts {max_texts}: more molecules than MOSES holds ({e}); "
                          "ask for fewer") from None
    a_list, b_list = split_parts([t.text for t in held.knowledge], max_texts, part_a, seed)
    control = [t.text for t in held.eval]
    data = loop.data  # the run's own training corpus, as NN1 trained on it
    a_set = frozenset(a_list)
    assert not a_set & set(b_list), "parts A and B overlap"
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    with RunLock(out):
        _check_holdout_folder(out, {"domain": domain, "run": str(run_dir.resolve()), "part_a": part_a,
                                    "max_texts": max_texts, "continue_epochs": continue_epochs,
                                    "config_hash": cfg.result_hash(leave_out=MEASURE_ONLY)})
        engine = open_db(out, create=True)
        _ensure_run_row(engine, cfg)
        engine.dispose()
        (out / "parts.json").write_text(json.dumps({"A": a_list, "B": b_list, "control": control}))
        tok, model = loop.model(None)  # generation 0's base model: no adapter
        nn1 = loop.codec(0, model, tok)
        occ = load_map(loop, 0)
        features = FeatureDictionary.of_map(loop.layout.map(0), cfg.features, seed)

        def second_copy():  # NN2 wears its own decoder adapter: a model of its own
            return load_base_model(loop.base_path(), cfg.run.device)[1]

        if not _ready(out / "nn2"):
            t1 = time.perf_counter()
            extra = loop.language_texts()
            items = data.train + extra
            texts = [t.text for t in items] + a_list
            embed = loop.domain.meaning_target(cfg.corpus.meaning).embed
            nn2 = Codec.load(loop.layout.sllm(0), second_copy(), tok)
            train_sllm(nn2.sllm, nn2.model, tok, texts, embed(texts) if cfg.sllm.meaning_weight > 0 else None,
                       continue_epochs, cfg.sllm.lr, cfg.sllm.batch_size, seed + 1,
                       fact_keys=[t.fact_key for t in items] + a_list, desc="NN2 (continued with scaffold-test A)")
            _save_codec_atomic(nn2, out / "nn2")
            timings["nn2_s"] = time.perf_counter() - t1
        nn2 = Codec.load(out / "nn2", second_copy(), tok)

        t1 = time.perf_counter()
        eval_latents = loop.layout.map(0) / "eval_latents.npy"
        calib = occ.calibrate(np.load(eval_latents) if eval_latents.is_file()
                              else nn1.encode([t.text for t in data.eval]))
        greedy = GenParams(cfg.decode.max_new_tokens, 0.0, seed)
        train_scaf = train_scaffolds(data)
        a_scaf = {scaffold(x) for x in a_list} - {None}
        per_group, samples = {}, []
        for gname, orig in (("topic", b_list), ("control", control)):
            z2 = nn2.encode(orig)  # (N, latent)
            z1 = nn1.encode(orig)
            where, (dark2, gdark2, inside2, dens2) = locate(occ, z1, z2, features)
            dec = {}
            for dname, net, z in (("nn1", nn1, z2), ("nn2", nn2, z2), ("nn1_own", nn1, z1)):
                dec[dname] = net.decode(z, loop.backend(None, (tok, net.model)), greedy)
            arr = {d: decode_arrays(orig, dec[d], a_set, data.train_fact_keys) for d, _ in DECODERS}
            rdark, rdens = reencode(occ, nn1, dec["nn1"])
            scaf = [scaffold(s) for s in orig]
            per_group[gname] = {
                "topic": TOPIC if gname == "topic" else "MOSES test", "texts": len(orig),
                "seen_by_nn1": False, "seen_by_nn2": False,  # B: NN2 saw part A only; control: neither
                "scaffold_in_nn1_training": float(np.mean([s in train_scaf for s in scaf])),
                "scaffold_in_part_a": float(np.mean([s in a_scaf for s in scaf])) if gname == "topic" else None,
                **where,
                # as on maths: the subset uses the density criterion alone (kNN-darker than NN1's texts)
                "all": decode_figures(arr, np.ones(len(orig), bool), (rdark, rdens)),
                "dark_only": decode_figures(arr, dens2 > 1, (rdark, rdens)),
            }
            for i, o in enumerate(orig):
                for d, _ in DECODERS:
                    a = arr[d]
                    samples.append({
                        "kind": f"{gname}/{d}", "seed": seed, "text": dec[d][i], "source": o,
                        "verdict": "true" if a["valid"][i] else "unparseable", "fact_key": a["canonical"][i],
                        "true_new": bool(a["valid_new"][i]), "density_score": float(dens2[i]), "dark": bool(dark2[i]),
                        "detail": {"group": gname, "gmm_dark": bool(gdark2[i]), "inside": bool(inside2[i]),
                                   "exact": bool(a["exact"][i]), "tanimoto": float(a["tanimoto"][i]),
                                   "same_scaffold": bool(a["same_scaffold"][i]),
                                   "rediscovered": bool(a["rediscovered"][i]),
                                   **({"reencoded_density": float(rdens[i]), "reencoded_dark": bool(rdark[i])}
                                      if d == "nn1" else {})},
                    })
        timings["measure_s"] = time.perf_counter() - t1
    result = {"domain": domain, "topic": TOPIC, "control": "MOSES test", "run": str(run_dir),
              "continue_epochs": continue_epochs, "part_a": len(a_list), "part_b": len(b_list),
              "train_texts": len(data.train), "groups": per_group, "calibration_nn1_map": calib, "timings": timings}
    table = holdout_molecules_table(result)
    seconds = time.perf_counter() - t0
    result["seconds"] = seconds
    json_path = json_path or out / "experiments" / f"holdout-{TOPIC}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    settings = {"out": str(out), "run": str(run_dir), "domain": domain, "part_a": part_a, "max_texts": max_texts,
                "continue_epochs": continue_epochs, "config": cfg.to_dict()}
    artifacts = {"json": str(json_path), "base": loop.base_path(), "nn1": str(loop.layout.sllm(0)),
                 "map": str(loop.layout.map(0)), "nn2": str(out / "nn2"), "parts": str(out / "parts.json")}
    eid = store_experiment(out, "holdout", settings, result, table, artifacts, seconds, samples)
    result["experiment_id"] = eid
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"settings": settings, "result": result, "table": table, "artifacts": artifacts,
                                     "environment": environment()}, indent=2, default=str))
    result["table"], result["artifacts"] = table, artifacts
    return result


DECODE_ROWS = [  # (key prefix, label, format); each cell: NN1 decode / NN2 decode / NN1 round trip (DECODERS)
    ("valid", "valid (RDKit)", "{:.1%}"),
    ("exact", "exact canonical match with the original", "{:.1%}"),
    ("tanimoto", "mean Tanimoto to the original (valid decodes)", "{:.3f}"),
    ("same_scaffold", "same Bemis-Murcko scaffold as the original", "{:.1%}"),
    ("n_rediscovered", "decodes that are scaffold-test molecules (n)", "{:d}"),
    ("n_rediscovered_other", "... other than the original (n)", "{:d}"),
    ("valid_new", "valid and absent from MOSES train", "{:.1%}"),
]
PAIR_ROWS = [("identical_nn1_nn2", "NN1 and NN2 decode the same molecule", "{:.1%}"),
             ("tanimoto_nn1_vs_nn2", "mean Tanimoto NN1 vs NN2 decode (both valid)", "{:.3f}"),
             ("reencoded_dark_nn1", "NN1 decode dark once re-encoded by NN1", "{:.1%}"),
             ("reencoded_density_median_nn1", "median density score of NN1 decode re-encoded", "{:.2f}")]


def _cell(d: dict, key: str, fmt: str) -> str:
    return "–" if d.get(key) is None else fmt.format(d[key])


def holdout_molecules_table(result: dict) -> str:
    g = result["groups"]
    headers = ["figure", "scaffold-test B (unseen by NN1; NN2 saw part A)", "control: MOSES test (seen by neither)"]
    rows = [["molecules encoded by NN2", *[str(g[n]["texts"]) for n in GROUPS]],
            ["scaffold occurs in NN1's training molecules", *[_cell(g[n], "scaffold_in_nn1_training", "{:.1%}")
                                                              for n in GROUPS]],
            ["scaffold occurs in part A (NN2's extra molecules)", *[_cell(g[n], "scaffold_in_part_a", "{:.1%}")
                                                                    for n in GROUPS]]]
    rows += location_rows(g, GROUPS)[1:]  # its first row (texts) is the one above
    for sub, title in (("all", "all molecules"), ("dark_only", "only NN2 latents kNN-darker than NN1's texts")):
        rows.append([f"-- decodes of {title}: n", *[str(g[n][sub]["texts"]) for n in GROUPS]])
        rows.append(["   (each cell: NN1 decode / NN2 decode / NN1 round trip)", "", ""])
        for key, label, fmt in DECODE_ROWS:
            rows.append([f"   {label}", *[" / ".join(_cell(g[n][sub], f"{key}_{d}", fmt) for d, _ in DECODERS)
                                          if g[n][sub]["texts"] else "–" for n in GROUPS]])
        for key, label, fmt in PAIR_ROWS:
            rows.append([f"   {label}", *[_cell(g[n][sub], key, fmt) for n in GROUPS]])
    lines = [plain_table(headers, rows),
             f"setup: NN1 = generation 0's SLLM of run {result['run']} (trained on {result['train_texts']} MOSES train "
             f"molecules; its base model and latent map are the run's); NN2 = NN1 continued "
             f"{result['continue_epochs']} epoch(s) on those plus {result['part_a']} scaffold-test molecules (part A, "
             f"disjoint from B). NN1 and NN2 decode NN2's latent; the round trip decodes NN1's own. Tanimoto: Morgan "
             "radius 2, 1024 bits."]
    c = calibration_line(result["calibration_nn1_map"], "held-out MOSES test molecules")
    if c:
        lines.append(c)
    return "\n".join(lines)
