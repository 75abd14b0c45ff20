"""`python run.py experiment {discovery,holdout}`: parse, build the config, run one experiment."""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from common.errors import ConfigError, UserError
from domains.base import get_domain
from experiments.discovery import all_samplers, combine_training_seeds, discovery
from experiments.generations import (DEFAULT_REPLAY_SAMPLER, DEFAULT_VARIANTS, REPLAY, check_variants,
                                     generations_experiment)
from experiments.holdout import combine_holdout_seeds, holdout
from experiments.holdout_knowledge import holdout_knowledge
from loop.options import build_from_args, parser as run_parser, set_overrides
from loop.runner import Loop, environment, run_config

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- CLI
EXPERIMENTS = {"discovery": "same decode budget per sampler; yields with 95% CIs over seeds; a picture",
               "holdout": "the NN1/NN2 test: NN1 without topic T, NN2 continued with it; dark share and decodes "
                          "(a domain with a held-out knowledge set, e.g. molecules: T = that set, NN1 = a run's "
                          "generation 0)",
               "generations": "the loop for G generations from one generation 0, learning from dark, prior or lm "
                              "candidates, or from corpus texts in their place (replay); what each model knows a "
                              "generation, with 95% intervals over training seeds"}
CHOICES = tuple(EXPERIMENTS)  # what `run.py --help` lists


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in EXPERIMENTS:
        print(f"usage: python run.py experiment {{{','.join(EXPERIMENTS)}}} [options]; see --help of each",
              file=sys.stderr)
        return 2
    name = argv[0]
    about = EXPERIMENTS
    p = argparse.ArgumentParser(prog=f"run.py experiment {name}", parents=[run_parser()], add_help=False,
                                description=about[name])
    p.add_argument("--json", help="where to write the figures (default RUN_DIR/experiments/NAME-TIME.json)")
    if name == "discovery":
        p.add_argument("--run", action="append", help="an existing run folder to use (default: run or resume --out for 1 "
                       "generation); repeat it with runs of other training seeds (--seed) for intervals over them")
        p.add_argument("--generation", type=int, help="generation whose SLLM and map to use (default: the latest mapped)")
        p.add_argument("--budget", type=int, default=200, help="decodes per sampler per seed (default 200)")
        p.add_argument("--seeds", type=int, default=3, help="seeds; the 95%% CI is over them (default 3)")
        p.add_argument("--png", help="picture path (default RUN_DIR/experiments/discovery-TIME.png)")
        p.add_argument("--only", help=f"comma-separated subset of samplers (default {','.join(all_samplers())})")
        p.add_argument("--add-results", action="append", metavar="JSON",
                       help="the figures of runs measured earlier (a discovery JSON: of one run, or of several "
                            "training seeds) joined to the runs of --run in the intervals over training seeds, "
                            "without measuring them again; repeatable")
    elif name == "generations":
        p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                       help=f"comma-separated variants: a loop sampler (it draws the candidates, the loop learns the "
                            f"accepted ones) or {REPLAY} (corpus texts learnt in their place) "
                            f"(default {','.join(DEFAULT_VARIANTS)})")
        p.add_argument("--replay-sampler", default=DEFAULT_REPLAY_SAMPLER,
                       help=f"the sampler {REPLAY} decodes and judges with (default {DEFAULT_REPLAY_SAMPLER})")
        p.add_argument("--train-seeds", default="0,1,2", help="training seeds: one generation 0 (a start run at "
                       "OUT/start/seed-S, resumable) and every variant from it, per seed (default 0,1,2)")
        p.add_argument("--run", action="append", help="a finished run to start from (its generation 0's base model, "
                       "SLLM and map), in place of making one; repeat it with runs of other training seeds")
        p.add_argument("--png", help="picture path (default OUT/experiments/generations-TIME.png)")
    else:
        p.add_argument("--topic", help="topic T held out of NN1, one of the domain's topics (maths: required); a "
                       "domain with a held-out knowledge set (molecules: the scaffold-test molecules) holds that out")
        p.add_argument("--control", help="a topic NN1 did see (default: another one); a domain with a held-out "
                       "knowledge set measures its own control set (molecules: MOSES test molecules)")
        p.add_argument("--continue-epochs", type=int, help="NN2's continued epochs (default sllm.continue_epochs)")
        p.add_argument("--max-texts", type=int, default=96, help="texts per topic encoded and decoded (default 96); "
                       "molecules: the size of part B and of the control")
        p.add_argument("--base-sees-topic", action="store_true",
                       help="maths: train the base LM on every topic (default: without T, the cleanest test)")
        p.add_argument("--run", action="append", help="molecules: a finished molecules run whose generation 0 (base "
                       "model, SLLM, map) is NN1 (default: make one, resumable, at OUT/run); repeat it with runs of "
                       "other training seeds (--seed) for intervals over them")
        p.add_argument("--train-seeds", help="comma-separated training seeds, e.g. 0,1,2: the whole experiment once "
                       "per seed (its models in OUT/seed-S, resumable), then every figure's mean and 95%% interval "
                       "over the seeds")
        p.add_argument("--part-a", type=int, help="molecules: scaffold-test molecules NN2 continues on (default 1000)")
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
            torch.set_num_threads(cfg.run.threads)
        if name == "discovery":
            return _main_discovery(args, cfg)
        if name == "generations":
            return _main_generations(args, cfg)
        return _main_holdout(args, cfg)
    except (UserError, ValueError) as e:  # ValueError: a bad argument the experiment code checks itself
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: trained models are saved; rerun the same command to resume", file=sys.stderr)
        return 130


def _main_discovery(args, cfg) -> int:
    if args.budget < 1 or args.seeds < 1:
        raise ConfigError(f"--budget and --seeds must be >= 1, got {args.budget} and {args.seeds}")
    samplers = all_samplers()
    if args.only:
        known = samplers
        samplers = tuple(s.strip() for s in args.only.split(",") if s.strip())
        bad = [s for s in samplers if s not in known]
        if bad or not samplers:
            raise ConfigError(f"--only: unknown sampler(s) {bad}; choose from {', '.join(known)}")
    if args.add_results and not args.run:
        raise ConfigError("--add-results joins earlier figures to the runs measured now; pass at least one --run")
    if args.run and (len(args.run) > 1 or args.add_results):
        return _main_discovery_seeds(args, cfg, samplers)
    if args.run:
        run_dir = Path(args.run[0])
        ignored = [i.split("=")[0] for i in args.set if not i.startswith(MEASURE_SETTINGS)]
        ignored += [f"--{a.replace('_', '-')}" for a in ("generations", "out", "seed", "base_model", "domain", "corpus", "rubric", "samplers")
                    if getattr(args, a) is not None]
        if ignored:
            log.warning("--run uses that run's own settings (but run.threads, decode.* and sample.envelope); ignoring %s",
                        ", ".join(ignored))
        cfg = _measured_with(run_dir, cfg, args)
    else:
        if args.generations is None:
            cfg.run.generations = 1
        run_dir = Path(cfg.run.out)
        print(f"making sure run {run_dir} has {cfg.run.generations} generation(s) (resumable)", file=sys.stderr)
        Loop(cfg).run()
    if get_domain(cfg.corpus.domain_name).verifier is None:
        log.warning("this domain has no verifier: parseable/true/true-new stay 0; accepted and novelty still count")
    res = discovery(cfg, run_dir, args.generation, args.budget, args.seeds, Path(args.png) if args.png else None,
                    Path(args.json) if args.json else None, samplers)
    print(res["table"])
    print(f"\nexperiment {res['experiment_id']} stored in {run_dir / 'runs.db'}; "
          f"picture {res['artifacts']['png']}; figures {res['artifacts']['json']}; {res['seconds']:.0f} s")
    return 0


def _main_discovery_seeds(args, cfg, samplers) -> int:
    """The discovery experiment on each run (one per training seed), then the headline figures
    with intervals over the runs: each run's mean over its sampling seeds is one observation."""
    runs = [Path(r) for r in args.run]
    if len(set(runs)) < len(runs):
        raise ConfigError("--run: the same run folder is given twice; pass runs of different training seeds")
    earlier: dict[str, dict] = {}
    for f in args.add_results or ():  # read and checked before anything is measured
        for k, v in earlier_results(Path(f)).items():
            if Path(k).resolve() in {Path(r).resolve() for r in [*runs, *earlier]}:
                raise ConfigError(f"--add-results {f}: run {k} is measured twice; pass each run once")
            earlier[k] = v
    results = {}
    for r in runs:
        rcfg = _measured_with(r, cfg, args)
        res = discovery(rcfg, r, args.generation, args.budget, args.seeds, None, None, samplers)
        print(f"--- {r} (training seed {rcfg.run.seed})\n{res['table']}\n")
        results[str(r)] = {"seed": rcfg.run.seed, "result": res}
    results.update(earlier)
    seeds = [v["seed"] for v in results.values()]
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"--run: the runs share a training seed ({seeds}); make them with different --seed")
    combined = combine_training_seeds({k: v["result"] for k, v in results.items()})
    print(combined["table"])
    out = Path(args.json) if args.json else runs[0] / "experiments" / f"discovery-seeds-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    # each run's own means are kept, so that a later --add-results can join them to more runs
    out.write_text(json.dumps({"runs": {k: {"seed": v["seed"], "experiment_id": v["result"].get("experiment_id"),
                                             "json": v["result"].get("artifacts", {}).get("json", v.get("json")),
                                             "result": {f: v["result"].get(f) for f in SEED_FIELDS}}
                                         for k, v in results.items()},
                               "combined": combined, "environment": environment()}, indent=2, default=str))
    print(f"\nfigures over {len(results)} training seeds: {out}")
    return 0


# what --set may change of a finished run's settings: how its latents are drawn and written out
MEASURE_SETTINGS = ("run.threads", "decode.", "sample.envelope")


def _measured_with(run_dir: Path, cfg, args):
    """A finished run's own settings, so its models load as they were trained, with this command's
    thread count and the decode settings it --set (how latents are written out, e.g. decode.beams,
    decode.pick) and sample.envelope (how envelope proposals are drawn): they change what is
    measured, never what was trained."""
    rcfg = run_config(run_dir)
    rcfg.run.threads = cfg.run.threads
    if any(i.startswith("sample.envelope=") for i in args.set):
        rcfg.sample = dataclasses.replace(rcfg.sample, envelope=cfg.sample.envelope)
    names = {i.split("=")[0].split(".", 1)[1] for i in args.set if i.startswith("decode.")}
    if names:
        rcfg.decode = dataclasses.replace(rcfg.decode, **{k: getattr(cfg.decode, k) for k in names})
    return rcfg


SEED_FIELDS = ("per_sampler", "domain_columns")  # what combine_training_seeds reads of one run's result


def earlier_results(path: Path) -> dict[str, dict]:
    """The per-run results a discovery JSON holds, {run folder: {"seed", "result", "json"}}: the one
    run of a single-run JSON, or each run of a JSON over training seeds."""
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"--add-results {path}: cannot read it as JSON ({e}); pass a JSON written by "
                          "`python run.py experiment discovery --json FILE`") from None
    if isinstance(d.get("result"), dict) and "per_sampler" in d["result"]:
        s = d.get("settings", {})
        return {s.get("run_dir", str(path)): {"seed": s.get("config", {}).get("run", {}).get("seed"),
                                               "result": d["result"], "json": str(path)}}
    runs = d.get("runs")
    if isinstance(runs, dict) and runs and all("result" in v for v in runs.values()):
        return {k: {"seed": v["seed"], "result": v["result"], "json": v.get("json")} for k, v in runs.items()}
    raise ConfigError(f"--add-results {path}: holds no per-run discovery figures (a JSON over training seeds from "
                      "an older version keeps only the combined ones); pass a discovery JSON of one run, or rerun "
                      "the experiment on those runs")


def _main_generations(args, cfg) -> int:
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    check_variants(variants, args.replay_sampler)
    generations = 8 if args.generations is None else args.generations
    if generations < 2:
        raise ConfigError(f"--generations must be >= 2 for curves over generations, got {generations}")
    if args.samplers is not None:
        raise ConfigError("--samplers: each variant sets its own sampler; choose them with --variants")
    out = Path(args.out) if args.out else Path("runs") / f"generations-{cfg.corpus.domain_name}"
    overrides = set_overrides(args.set)
    starts: dict[int, Path] = {}
    if args.run:
        runs = [Path(r) for r in args.run]
        for r in runs:
            _check_run_dir(r)
        seeds = [run_config(r).run.seed for r in runs]
        if len(set(seeds)) < len(seeds) or len(set(runs)) < len(runs):
            raise ConfigError(f"--run: the runs share a training seed ({seeds}); make them with different --seed")
        starts = dict(zip(seeds, runs))
    else:
        protocol = get_domain(cfg.corpus.domain_name).generations_protocol
        cfg = build_from_args(args, protocol)
        values = cfg.to_dict()  # what the start runs got: a protocol value the user's file or --set replaced is not named
        taken = {k: v for k, v in protocol.items() if values[k.split(".")[0]][k.split(".")[1]] == v}
        if taken:
            print(f"the {cfg.corpus.domain_name} domain's CPU protocol for the start runs: "
                  f"{', '.join(f'{k}={v}' for k, v in taken.items())} (--set any of them to change it)", file=sys.stderr)
        for s in _train_seeds(args.train_seeds):
            c = copy.deepcopy(cfg)
            c.run.seed, c.run.generations, c.run.out = s, 1, str(out / "start" / f"seed-{s}")
            print(f"making sure start run {c.run.out} has generation 0 (resumable)", file=sys.stderr)
            Loop(c).run()
            starts[s] = Path(c.run.out)
    res = generations_experiment(starts, variants, generations, out, overrides, cfg.run.threads,
                                 Path(args.png) if args.png else None, Path(args.json) if args.json else None,
                                 args.replay_sampler)
    print(res["table"])
    print(f"\nexperiment stored in {', '.join(str(p / 'runs.db') for p in starts.values())}; picture "
          f"{res['artifacts']['png']}; figures {res['artifacts']['json']}; {res['seconds']:.0f} s")
    return 0


def _train_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--train-seeds {text!r}: give comma-separated integers, e.g. 0,1,2") from None
    if len(seeds) < 2 or len(set(seeds)) < len(seeds):
        raise ConfigError(f"--train-seeds {text!r}: give at least 2 different seeds, e.g. 0,1,2")
    return seeds


def _main_holdout(args, cfg) -> int:
    seeds = _train_seeds(args.train_seeds)
    runs = [Path(r) for r in args.run or []]
    if seeds and runs:
        raise ConfigError("--train-seeds makes one run per seed; to use runs you have, repeat --run instead")
    if len(set(runs)) < len(runs):
        raise ConfigError("--run: the same run folder is given twice; pass runs of different training seeds")
    if len(runs) > 1 or seeds:
        return _main_holdout_seeds(args, cfg, runs, seeds)
    res = _holdout_one(args, cfg, runs[0] if runs else None, None, Path(args.json) if args.json else None)
    print(res["table"])
    print(f"\nexperiment {res['experiment_id']} stored in {res['out'] / 'runs.db'}; figures {res['artifacts']['json']}; "
          f"{res['seconds']:.0f} s")
    return 0


def _default_out(args, cfg) -> Path:
    if args.out:
        return Path(args.out)
    domain = cfg.corpus.domain_name
    if args.run and (Path(args.run[0]) / "runs.db").is_file():  # the runs' own domain, not the command's default
        domain = run_config(Path(args.run[0])).corpus.domain_name
    held = get_domain(domain).knowledge_holdout
    return Path("runs") / f"holdout-{held.name if held else args.topic}"


def _check_run_dir(run_dir: Path) -> None:
    if not (run_dir / "runs.db").is_file():
        raise ConfigError(f"--run {run_dir}: no runs.db there; pass a run folder made by "
                          "`python run.py --seed S --out DIR` (with the experiment's --domain)")


def _main_holdout_seeds(args, cfg, runs: list[Path], seeds: list[int] | None) -> int:
    """The holdout once per training seed (a run of each, or one made per seed), then every figure's
    mean and 95% interval over the seeds (`experiments.holdout.combine_holdout_seeds`)."""
    out = _default_out(args, cfg)
    results, jobs = {}, []
    if runs:
        for r in runs:
            _check_run_dir(r)
        rseeds = [run_config(r).run.seed for r in runs]
        if len(set(rseeds)) < len(rseeds):
            raise ConfigError(f"--run: the runs share a training seed ({rseeds}); make them with different --seed")
        jobs = [(s, r, cfg) for s, r in zip(rseeds, runs)]
    else:
        for s in seeds:
            c = copy.deepcopy(cfg)
            c.run.seed = s
            jobs.append((s, None, c))
    for s, r, c in jobs:
        res = _holdout_one(args, c, r, out / f"seed-{s}", None)
        print(f"--- training seed {s} ({res['out']})\n{res['table']}\n")
        results[f"seed-{s}"] = {"seed": s, "result": res}
    combined = combine_holdout_seeds({k: v["result"] for k, v in results.items()})
    print(combined["table"])
    path = Path(args.json) if args.json else out / "experiments" / f"holdout-seeds-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": {k: {"seed": v["seed"], "out": str(v["result"]["out"]),
                                             "experiment_id": v["result"]["experiment_id"],
                                             "json": v["result"]["artifacts"]["json"],
                                             "seconds": v["result"]["seconds"]} for k, v in results.items()},
                                "combined": combined, "environment": environment()}, indent=2, default=str))
    print(f"\nfigures over {len(results)} training seeds: {path}")
    return 0


def _holdout_one(args, cfg, run: Path | None, out: Path | None, json_path: Path | None) -> dict:
    """One holdout experiment (a held-out topic, or a domain's knowledge set with or without `run`);
    its result, with `out`."""
    if run is not None or get_domain(cfg.corpus.domain_name).knowledge_holdout:
        return _holdout_knowledge_one(args, cfg, run, out or _default_out(args, cfg), json_path)
    domain = get_domain(cfg.corpus.domain_name)
    if not domain.topics or domain.verifier is None or cfg.corpus.path is not None:
        raise ConfigError("experiment holdout needs a domain's own corpus with topics and a verifier (maths); "
                          "drop --corpus and --domain")
    topics = domain.topics
    if args.topic is None or args.topic not in topics:
        raise ConfigError(f"--topic {args.topic or '(missing)'}: the {domain.name} holdout needs --topic, one of "
                          f"{', '.join(topics)}")
    if args.part_a is not None:
        raise ConfigError(f"--part-a is for the holdout of a domain's knowledge set (e.g. --domain molecules); "
                          f"drop it on {domain.name}")
    if cfg.base.model:
        raise ConfigError("experiment holdout trains its own base model without the topic; drop --base-model")
    if cfg.corpus.leave_out or cfg.sllm.init:
        raise ConfigError("experiment holdout sets corpus.leave_out and sllm.init of its own runs; drop them")
    control = args.control or next(t for t in topics if t != args.topic)
    if control == args.topic:
        raise ConfigError(f"--control must differ from --topic ({args.topic}); pick a topic NN1 sees")
    if control not in topics:
        raise ConfigError(f"--control {control}: not a topic of the {domain.name} domain; pick one of "
                          f"{', '.join(t for t in topics if t != args.topic)}")
    out = out or _default_out(args, cfg)
    cont = cfg.sllm.continue_epochs if args.continue_epochs is None else args.continue_epochs
    if cont < 1:
        raise ConfigError(f"--continue-epochs must be >= 1, got {cont}")
    res = holdout(cfg, out, args.topic, control, cont, args.max_texts, args.base_sees_topic, json_path)
    res["out"] = out
    return res


def _holdout_knowledge_one(args, cfg, run: Path | None, out: Path, json_path: Path | None) -> dict:
    """NN1 = generation 0 of a run of a domain with a held-out knowledge set (`run`, or one made at
    OUT/run); see experiments/holdout_knowledge.py."""
    if args.domain is not None and not get_domain(args.domain).knowledge_holdout:
        raise ConfigError(f"--run is for the holdout of a domain's knowledge set (e.g. molecules); --domain "
                          f"{args.domain} trains its own NN1 without the topic: drop --run")
    part_a = 1000 if args.part_a is None else args.part_a
    if part_a < 1 or args.max_texts < 1:
        raise ConfigError(f"--part-a and --max-texts must be >= 1, got {part_a} and {args.max_texts}")
    if run is not None:
        run_dir = run
        _check_run_dir(run_dir)
        ignored = [i.split("=")[0] for i in args.set if not i.startswith("run.threads")]
        ignored += [f"--{a.replace('_', '-')}" for a in ("generations", "seed", "base_model", "corpus", "rubric",
                                                          "samplers", "config") if getattr(args, a, None) is not None]
        threads = cfg.run.threads
        cfg = run_config(run_dir)  # the run's own settings, so its models load as they were trained
        cfg.run.threads = threads
    held = get_domain(cfg.corpus.domain_name).knowledge_holdout
    if held is None:
        raise ConfigError(f"run {run_dir} is a {cfg.corpus.domain_name} run, a domain without a held-out knowledge "
                          f"set; pass a run of a domain that has one, or drop --run and pass --topic")
    if args.topic not in (None, held.name):
        raise ConfigError(f"--topic {args.topic}: the {cfg.corpus.domain_name} holdout holds out its {held.name} "
                          f"{held.noun}; drop --topic")
    if args.control:
        raise ConfigError(f"--control {args.control}: the {cfg.corpus.domain_name} holdout's control is "
                          f"{held.control} {held.noun}; drop --control")
    if args.base_sees_topic:
        raise ConfigError(f"--base-sees-topic: the base model is the run's, trained on the {cfg.corpus.domain_name} "
                          "domain's own corpus; drop it")
    if run is not None:
        if ignored:
            log.warning("--run uses that run's own settings; ignoring %s", ", ".join(ignored))
    else:
        if cfg.corpus.path is not None:
            raise ConfigError(f"the {cfg.corpus.domain_name} holdout needs NN1 trained on the domain's own corpus, "
                              f"which holds no {held.name} {held.noun}; drop --corpus")
        run_dir = out / "run"
        cfg.run.out = str(run_dir)
        if args.generations is None:
            cfg.run.generations = 1
        print(f"making sure run {run_dir} has generation 0 (resumable)", file=sys.stderr)
        Loop(cfg).run()
    cont = cfg.sllm.continue_epochs if args.continue_epochs is None else args.continue_epochs
    if cont < 1:
        raise ConfigError(f"--continue-epochs must be >= 1, got {cont}")
    res = holdout_knowledge(cfg, run_dir, out, part_a, args.max_texts, cont, json_path)
    res["out"] = out
    return res
