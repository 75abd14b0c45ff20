"""`python run.py inspect RUN_DIR export --format hf --out DIR`: the candidates as a Hugging Face
dataset folder, laid out as on the Hub (Parquet under data/, a dataset card in README.md), so
that `datasets.load_dataset(DIR)` opens it and the card travels with the data.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from domains.config import domain_name_of
from storage import queries

_TYPES = {"id": "int64", "generation": "int64", "sampler": "string", "text": "string", "decision": "string",
          "reason": "string", "verdict": "string", "true_new": "bool", "total": "float64"}
_COLUMN_NOTES = {
    "id": "candidate id in the run's database",
    "generation": "the loop generation that proposed it",
    "sampler": "the sampler that drew its latent, or drew it from the base model without one (run settings list them)",
    "text": "the decoded text",
    "decision": "accepted or rejected by the combiner (pending: not judged yet)",
    "reason": "the combiner's reason for the decision",
    "verdict": "the domain verifier's verdict (true, false, unparseable), where the domain has one",
    "true_new": "verified true and absent from the training texts",
    "total": "the combiner's weighted score",
}


def write(engine, run_dir: str, out: Path, include_all: bool) -> int:
    """Write the folder atomically (a sibling .part folder renamed into place); -> rows written."""
    from datasets import Dataset, Features, Value, disable_progress_bars  # lazy: datasets start-up, only for --format hf

    disable_progress_bars()
    judges = queries.judges(engine)
    features = Features({**{k: Value(t) for k, t in _TYPES.items()}, **{f"score_{j}": Value("float64") for j in judges}})
    columns: dict[str, list] = {k: [] for k in features}
    for rec in queries.iter_export(engine, include_all=include_all):
        scores = rec.pop("scores")
        for k in _TYPES:
            columns[k].append(rec[k])
        for j in judges:
            columns[f"score_{j}"].append(scores.get(j))
    ds = Dataset.from_dict(columns, features=features)
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    ds.to_parquet(str(tmp / "data" / "train-00000-of-00001.parquet"))
    (tmp / "README.md").write_text(card(engine, run_dir, judges, include_all, len(ds)), encoding="utf-8")
    os.replace(tmp, out)
    return len(ds)


def card(engine, run_dir: str, judges: list[str], include_all: bool, n: int) -> str:
    """The dataset card: the Hub's YAML header, then the run's settings, samplers, judges and
    acceptance per generation, and what each column holds."""
    s = queries.summary(engine)
    run = s["run"] or {}
    cfg = run.get("config", {})
    j = cfg.get("judges", {})
    corpus = cfg.get("corpus", {})
    domain = domain_name_of(corpus.get("domain"), corpus.get("path"))
    lines = ["---", "configs:", "- config_name: default", "  data_files:", "  - split: train",
             "    path: data/train-*", "tags:", "- synthetic", "- dark-zones", "---", "",
             f"# Candidates of the dark-zone run `{Path(run_dir).name}`", "",
             f"{n} {'candidates (every one)' if include_all else 'accepted candidates'} of the run in `{run_dir}`, "
             "exported by `python run.py inspect RUN_DIR export --format hf`. Each text was decoded from a "
             "latent of the SLLM (or sampled from the base model, sampler `lm`), judged by the panel below "
             "and accepted or rejected by the combiner.", "",
             "## Settings", "",
             f"- domain: {domain}; seed: {run.get('seed')}; settings hash: `{run.get('config_hash')}`",
             f"- samplers: {', '.join(cfg.get('sample', {}).get('samplers', [])) or 'n/a'}",
             f"- judges with scores here: {', '.join(judges) or 'none'}",
             f"- combiner weights (critic / coherence / novelty): {j.get('critic_weight')} / "
             f"{j.get('coherence_weight')} / {j.get('novelty_weight')}; thresholds: coherence >= "
             f"{j.get('min_coherence')}, novelty >= {j.get('min_novelty')}, critic >= {j.get('min_critic')}, "
             f"verified true required: {j.get('require_true')}, weighted score >= {j.get('accept_score')}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in sorted(run.get('versions', {}).items())) or 'n/a'}",
             "", "The full settings:", "", "```json", json.dumps(cfg, indent=1, sort_keys=True), "```", "",
             "## Acceptance per generation", "",
             "| generation | candidates | accepted | share | true and new |", "| --- | --- | --- | --- | --- |"]
    for g in s["generations"]:
        share = f"{g['accepted'] / g['candidates']:.1%}" if g["candidates"] else "n/a"
        lines.append(f"| {g['generation']} | {g['candidates']} | {g['accepted']} | {share} | {g['true_new']} |")
    lines += ["", "## Columns", ""]
    lines += [f"- `{k}`: {v}" for k, v in _COLUMN_NOTES.items()]
    lines += [f"- `score_{name}`: the {name} judge's score in [0, 1] (empty where it gave none)" for name in judges]
    return "\n".join(lines) + "\n"
