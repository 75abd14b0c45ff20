"""The generation controller: stages, their artifacts, and resume.

Each stage reads what earlier stages stored, writes its artifacts atomically (temp folder,
fsync, rename), adds its rows, and commits them together with its Stage row in ONE
transaction. A stage with a Stage row is done and never redone; a stage killed before its
commit left no rows, and is redone from its start with the same seed, so a resumed run ends
with the same database an uninterrupted one would have.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import platform
import shutil
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from sqlmodel import Session, delete, select

from loop.artifacts import check, fault, verify, write_manifest
from loop.config import Config, ConfigError
from loop.data import RunData, build_data
from storage.db import RunLock, done_stages, get_run, open_db, stage_detail
from storage.models import Candidate, Metric, Run, Score, Stage, Zone

log = logging.getLogger(__name__)

STAGES = ("base", "sllm", "map", "sample", "decode", "judge", "retrain", "evaluate")


def crash_point(g: int, name: str, when: str) -> None:
    """Fault injection for the resume tests: DARKZONES_CRASH_AT=GEN:STAGE:WHEN kills the process
    with SIGKILL (as kill -9 would) at that point; GEN:STAGE:WHEN:sigint sends it SIGINT (Ctrl-C)
    instead, and GEN:STAGE:WHEN:enospc raises "no space left on device" there.

    WHEN: before_commit (the stage's rows are flushed inside its open transaction),
    after_commit, and, for stages writing an artifact, mid_artifact (files written to the temp
    folder, not yet fsynced or renamed) and artifact_renamed (in place, not yet committed)."""
    kind = fault(f"{g}:{name}:{when}")
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "sigint":
        os.kill(os.getpid(), signal.SIGINT)  # Python raises KeyboardInterrupt right here
    elif kind == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{name} artifact of generation {g}")


def stage_seed(seed: int, generation: int, name: str) -> int:
    return int(hashlib.sha256(f"{seed}:{generation}:{name}".encode()).hexdigest()[:8], 16)


def fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")) + [path]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_dir(final: Path, point: tuple[int, str] | None = None):
    """Yield a temp folder; on success write its MANIFEST.json (sha256 of every file), fsync it and
    rename it to `final` (replacing a stale one). `point` = (generation, stage) names its fault points."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if point:
            crash_point(*point, "mid_artifact")
        write_manifest(tmp)
        fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fd = os.open(final.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write (disk full, Ctrl-C) leaves no temp folder
        raise
    if point:
        crash_point(*point, "artifact_renamed")


def versions() -> dict[str, str]:
    import peft
    import sklearn
    import sqlmodel
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "sqlmodel": sqlmodel.__version__, "scikit-learn": sklearn.__version__,
            "numpy": np.__version__}


class Loop:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.out = Path(cfg.run.out)
        self.models: dict = {}
        self._data: RunData | None = None

    # ----------------------------------------------------------------- helpers
    @property
    def data(self) -> RunData:
        if self._data is None:
            self._data = build_data(self.cfg)
        return self._data

    def gen_dir(self, g: int) -> Path:
        return self.out / f"gen-{g:03d}"

    def base_path(self) -> str:
        return self.cfg.base.model or str(self.out / "base")

    def adapter_for(self, session: Session, g: int) -> str | None:
        """The adapter the base model wears in generation g: the one retrained at the end of g-1."""
        if g == 0:
            return None
        d = stage_detail(session, g - 1, "retrain")
        return None if d is None else d.get("adapter")

    def model(self, adapter: str | None):
        from loop.base_model import load_base_model

        key = (self.base_path(), adapter)
        if key not in self.models:
            self.models.clear()  # one model in memory at a time
            self.check_inputs(adapter)
            self.models[key] = load_base_model(self.base_path(), self.cfg.run.device, adapter=adapter)
        return self.models[key]

    def backend(self, adapter: str | None, loaded):
        """The decoding backend for this generation's model (transformers shares `loaded`)."""
        from backends.base import get_backend

        return get_backend(self.cfg.decode.backend, self.base_path(), adapter, self.cfg.run.device,
                           self.cfg.decode.batch_size, loaded=loaded, base_url=self.cfg.decode.base_url)

    def free(self) -> None:
        self.models.clear()
        import gc

        gc.collect()

    def accepted_texts(self, session: Session, upto: int) -> list[str]:
        rows = session.exec(select(Candidate.text).where(Candidate.generation <= upto, Candidate.decision == "accepted")
                            .order_by(Candidate.generation, Candidate.seq))
        return [t for t in rows]

    def check_inputs(self, adapter: str | None) -> None:
        """Verify the trained base folder and `adapter` against their manifests before loading them."""
        if not self.cfg.base.model:
            check(self.out / "base", "the trained base model")
        if adapter is not None:
            check(adapter, "the LoRA adapter")

    def load_sllm(self, g: int, model):
        from sllm.model import load_sllm

        check(self.gen_dir(g) / "sllm", f"the SLLM checkpoint of generation {g}")
        return load_sllm(self.gen_dir(g) / "sllm" / "sllm.safetensors", model.get_input_embeddings().weight.shape[1],
                         self.cfg.sllm, next(model.parameters()).device)

    # -------------------------------------------------------------- run setup
    def ensure_run(self, engine) -> None:
        with Session(engine) as s:
            run = get_run(s)
            if run is None:
                s.add(Run(seed=self.cfg.run.seed, config_json=json.dumps(self.cfg.to_dict()),
                          config_hash=self.cfg.result_hash(), versions_json=json.dumps(versions())))
                s.commit()
                return
            if run.config_hash != self.cfg.result_hash():
                from loop.config import build_config

                old = build_config(json.loads(run.config_json)).result_settings()
                new = self.cfg.result_settings()
                diff = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(new) if old.get(k) != new.get(k)]
                raise ConfigError(
                    f"run folder {self.out} was made with other settings ({'; '.join(diff[:4])}); "
                    f"rerun with the same settings to resume, or pass a new --out"
                )

    def artifact_of(self, g: int, name: str, detail: dict) -> Path | None:
        """The folder a done stage wrote, or None (no artifact, or a user's base model used in place)."""
        if name == "base":
            return self.out / "base" if detail.get("trained") else None
        if name in ("sllm", "map"):
            return self.gen_dir(g) / name
        if name == "retrain":
            return self.gen_dir(g) / "adapter" if detail.get("trained") else None
        return None

    def verify_artifacts(self, engine) -> None:
        """On start, check every done stage's artifact against its manifest. The first that fails
        (truncated, edited, deleted) makes its stage and every later one not done, in one
        transaction; they are then redone from their seeds, as after a crash."""
        with Session(engine) as s:
            done = sorted(s.exec(select(Stage)), key=lambda st: (st.generation, STAGES.index(st.name)))
            for st in done:
                path = self.artifact_of(st.generation, st.name, json.loads(st.detail_json))
                problem = None if path is None else verify(path)
                if problem is not None:
                    log.warning("the %s artifact of generation %d at %s is damaged (%s): redoing that stage and "
                                "every later one", st.name, st.generation, path, problem)
                    invalidate_from(s, st.generation, st.name)
                    s.commit()
                    return

    def preflight(self) -> None:
        """Check the inputs before anything is written: bad input leaves no trace."""
        from loop.base_model import check_model_path

        if self.cfg.base.model:
            check_model_path(self.cfg.base.model)
        if len(self.data.train) < self.cfg.sample.k + 2:
            raise ConfigError(f"the corpus has {len(self.data.train)} training texts; the latent map needs at least {self.cfg.sample.k + 2}")

    def run(self) -> None:
        self.preflight()
        self.out.mkdir(parents=True, exist_ok=True)
        if not os.access(self.out, os.W_OK):
            raise ConfigError(f"run folder {self.out} is not writable; fix its permissions or pass another --out")
        if self.cfg.run.threads:
            torch.set_num_threads(self.cfg.run.threads)
        with RunLock(self.out):
            engine = open_db(self.out, create=True)
            self.ensure_run(engine)
            self.verify_artifacts(engine)
            (self.out / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
            for g in range(self.cfg.run.generations):
                for name in STAGES:
                    if name == "base" and g > 0:
                        continue
                    with Session(engine) as s:
                        if (g, name) in done_stages(s):
                            continue
                    self.run_stage(engine, g, name)
            engine.dispose()

    def run_stage(self, engine, g: int, name: str) -> None:
        started = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        seed = stage_seed(self.cfg.run.seed, g, name)
        torch.manual_seed(seed)
        log.info("generation %d: %s", g, name)
        with Session(engine) as s:
            detail = getattr(self, f"stage_{name}")(s, g, seed)
            s.add(Stage(generation=g, name=name, started_at=started, seconds=time.perf_counter() - t0,
                        detail_json=json.dumps(detail)))
            s.flush()
            crash_point(g, name, "before_commit")
            s.commit()
        crash_point(g, name, "after_commit")
        if name == "evaluate":
            print(detail["line"], flush=True)

    # ----------------------------------------------------------------- stages
    def stage_base(self, s: Session, g: int, seed: int) -> dict:
        from loop.base_model import train_small_base
        from loop.data import language_texts

        if self.cfg.base.model:
            tok, model = self.model(None)  # validates the folder through the same loading code
            return {"path": self.cfg.base.model, "trained": False,
                    "params": sum(p.numel() for p in model.parameters())}
        d = self.data
        with atomic_dir(self.out / "base", (g, "base")) as tmp:
            info = train_small_base(d.train_texts, self.cfg.base, tmp, seed, groups=[t.fact_key for t in d.train],
                                    copy_texts=[t.text for t in language_texts(self.cfg)])
        return {"path": str(self.out / "base"), "trained": True, "params": info["params"],
                "final_loss": info["final_loss"]}

    def stage_sllm(self, s: Session, g: int, seed: int) -> dict:
        from judges import embed
        from judges.embedder import embed_cached
        from loop.data import language_texts
        from sllm.model import SLLM, save_sllm
        from sllm.train import train_sllm

        tok, model = self.model(self.adapter_for(s, g))
        accepted = self.accepted_texts(s, g - 1)
        extra = [t.text for t in language_texts(self.cfg)]  # false sentences (built-in domain)
        texts = self.data.train_texts + accepted + extra
        keys = [t.fact_key for t in self.data.train] + [None] * (len(accepted) + len(extra))
        targets = None
        if self.cfg.sllm.meaning_weight > 0:  # corpus + false sentences are the same every generation: cached
            fixed = embed_cached(self.data.train_texts + extra, self.out / "cache")
            n = len(self.data.train_texts)
            targets = np.concatenate([fixed[:n], embed(accepted), fixed[n:]])
        if g == 0:
            sllm = SLLM(model.get_input_embeddings().weight.shape[1], self.cfg.sllm)
            epochs = self.cfg.sllm.epochs
        else:
            sllm = self.load_sllm(g - 1, model)
            epochs = self.cfg.sllm.continue_epochs
        torch.manual_seed(seed)
        self.gen_dir(g).mkdir(parents=True, exist_ok=True)
        info = train_sllm(sllm, model, tok, texts, targets, epochs, self.cfg.sllm.lr, self.cfg.sllm.batch_size, seed,
                          fact_keys=keys, desc=f"SLLM gen {g}",
                          checkpoint=self.gen_dir(g) / "sllm-training.ckpt")  # a killed stage resumes at its last epoch
        with atomic_dir(self.gen_dir(g) / "sllm", (g, "sllm")) as tmp:
            save_sllm(sllm, tmp / "sllm.safetensors")
        return {"texts": len(texts), "accepted_texts": len(accepted), "false_texts": len(extra), "epochs": epochs,
                "final": info["final"]}

    def stage_map(self, s: Session, g: int, seed: int) -> dict:
        from loop.occupancy import OccupancyMap, find_zones
        from sllm.train import encode, soft_prompts

        tok, model = self.model(self.adapter_for(s, g))
        sllm = self.load_sllm(g, model)
        texts = self.data.train_texts + self.accepted_texts(s, g - 1)
        latents = encode(sllm, model, tok, texts)
        occ = OccupancyMap.fit(latents, self.cfg.sample)
        rng = np.random.default_rng(seed)
        n_probe = max(2000, 20 * self.cfg.sample.n_zones)
        probe = occ.envelope_samples(n_probe, rng)
        dark = probe[occ.density_score(probe) > 1]
        zones = find_zones(occ, dark, n_probe, self.cfg.sample.n_zones, seed % 2**31)
        decoded = []
        if zones:
            be = self.backend(self.adapter_for(s, g), (tok, model))
            emb, _ = soft_prompts(sllm, model, tok, np.stack([z.centre for z in zones]))
            decoded = be.generate_from_embeds(emb, self.cfg.decode.max_new_tokens, 0.0, seed)
        s.exec(delete(Zone).where(Zone.generation == g))
        for z, text in zip(zones, decoded):
            s.add(Zone(generation=g, label=z.label, n_points=z.n_points, centre=z.centre.tobytes(), radius=z.radius,
                       volume=z.volume, axes_json=json.dumps(z.axes),
                       neighbours_json=json.dumps([texts[i] for i in z.neighbours]), decoded=text))
        with atomic_dir(self.gen_dir(g) / "map", (g, "map")) as tmp:
            np.save(tmp / "latents.npy", latents)
        norms = np.linalg.norm(latents, axis=1)
        return {"texts": len(texts), "threshold": occ.threshold, "envelope_radius": occ.radius,
                "components": int(occ.pca.n_components_), "dark_probe_share": len(dark) / n_probe,
                "zones": len(zones), "latent_norm_mean": float(norms.mean()), "latent_norm_std": float(norms.std()),
                # real texts never trained on (the eval split) should mostly not be dark
                **occ.calibrate(encode(sllm, model, tok, [t.text for t in self.data.eval]))}

    def stage_sample(self, s: Session, g: int, seed: int) -> dict:
        from loop.occupancy import OccupancyMap, assign_zone, sample_dark, sample_interpolate, sample_prior

        check(self.gen_dir(g) / "map", f"the latent map of generation {g}")
        latents = np.load(self.gen_dir(g) / "map" / "latents.npy", allow_pickle=False)
        occ = OccupancyMap.fit(latents, self.cfg.sample)
        zones_rows = s.exec(select(Zone).where(Zone.generation == g).order_by(Zone.label)).all()
        from loop.occupancy import ZoneInfo

        zones = [ZoneInfo(z.label, z.n_points, np.frombuffer(z.centre, dtype=np.float32), z.radius, z.volume, [], [])
                 for z in zones_rows]
        rng = np.random.default_rng(seed)
        samplers = self.cfg.sample.samplers
        n = self.cfg.sample.n_candidates
        counts = [n // len(samplers) + (1 if i < n % len(samplers) else 0) for i in range(len(samplers))]
        s.exec(delete(Candidate).where(Candidate.generation == g))
        seq = 0
        per = {}
        for name, m in zip(samplers, counts):
            if m == 0:
                continue
            if name == "lm":
                pts, dens = None, None
            elif name == "dark":
                pts, dens, _ = sample_dark(occ, m, self.cfg.sample, rng)
            elif name == "prior":
                pts, dens = sample_prior(occ, m, rng)
            else:
                pts, dens = sample_interpolate(occ, m, rng)
            zone_ids = assign_zone(zones, pts) if (pts is not None and name == "dark") else [None] * m
            for i in range(m):
                s.add(Candidate(
                    generation=g, seq=seq, sampler=name, zone_id=zone_ids[i],
                    latent=None if pts is None else pts[i].astype(np.float32).tobytes(),
                    latent_norm=None if pts is None else float(np.linalg.norm(pts[i])),
                    density_score=None if dens is None else float(dens[i]),
                ))
                seq += 1
            per[name] = m
        return {"candidates": seq, "per_sampler": per}

    def stage_decode(self, s: Session, g: int, seed: int) -> dict:
        from sllm.train import soft_prompts

        tok, model = self.model(self.adapter_for(s, g))
        sllm = self.load_sllm(g, model)
        be = self.backend(self.adapter_for(s, g), (tok, model))
        cands = s.exec(select(Candidate).where(Candidate.generation == g).order_by(Candidate.seq)).all()
        dc = self.cfg.decode
        with_latent = [c for c in cands if c.latent is not None]
        plain = [c for c in cands if c.latent is None]
        if with_latent:
            z = np.stack([np.frombuffer(c.latent, dtype=np.float32) for c in with_latent])
            emb, _ = soft_prompts(sllm, model, tok, z)
            for c, t in zip(with_latent, be.generate_from_embeds(emb, dc.max_new_tokens, dc.temperature, seed)):
                c.text = t
                s.add(c)
        if plain:
            for c, t in zip(plain, be.sample(len(plain), dc.max_new_tokens, dc.lm_temperature, seed + 1)):
                c.text = t
                s.add(c)
        return {"decoded": len(cands), "empty": sum(1 for c in cands if not c.text)}

    def stage_judge(self, s: Session, g: int, seed: int) -> dict:
        from judges import CoherenceJudge, CriticJudge, NoveltyJudge, VerifierJudge, decide, embed, safe_score

        tok, model = self.model(self.adapter_for(s, g))
        d = self.data
        cands = s.exec(select(Candidate).where(Candidate.generation == g).order_by(Candidate.seq)).all()
        texts = [c.text or "" for c in cands]
        rng = np.random.default_rng(seed)
        ref_idx = rng.choice(len(d.train), size=min(256, len(d.train)), replace=False)
        judges = [
            CoherenceJudge(model, tok, [d.train[i].text for i in sorted(ref_idx)]),
            NoveltyJudge(embed, d.train_texts, self.cfg.judges.min_novelty),
            CriticJudge(model, tok),
        ]
        if d.verify is not None:
            judges.append(VerifierJudge(d.verify))
        previous = self.accepted_texts(s, g - 1)
        if previous:
            judges[1].add_accepted(previous)
        scores = {j.name: safe_score(j, texts) for j in judges}
        s.exec(delete(Score).where(Score.candidate_id.in_([c.id for c in cands])))
        seen: dict[str, int] = {}
        accepted = 0
        for i, c in enumerate(cands):
            per = {name: sc[i] for name, sc in scores.items()}
            for name, sc in per.items():
                s.add(Score(candidate_id=c.id, judge=name, score=sc.score, reason=sc.reason,
                            detail_json=json.dumps(sc.detail, default=str)))
            decision = decide(per, self.cfg.judges)
            if "verifier" in per:
                c.verdict = per["verifier"].detail.get("status")
                c.fact_key = per["verifier"].detail.get("fact_key")
                c.true_new = c.verdict == "true" and c.fact_key not in d.train_fact_keys
            c.total = decision.total
            if decision.accepted and c.text in seen:
                c.decision, c.reason = "rejected", f"rejected: duplicate of candidate seq {seen[c.text]} in this generation"
            else:
                c.decision, c.reason = ("accepted" if decision.accepted else "rejected"), decision.reason
            if c.decision == "accepted":
                seen[c.text] = c.seq
                accepted += 1
            s.add(c)
        return {"judged": len(cands), "accepted": accepted}

    def stage_retrain(self, s: Session, g: int, seed: int) -> dict:
        from loop.retrain import lora_finetune, retrain_texts

        prev = self.adapter_for(s, g)
        new = s.exec(select(Candidate).where(Candidate.generation == g, Candidate.decision == "accepted")).all()
        if not new or self.cfg.retrain.epochs == 0:
            return {"adapter": prev, "trained": False, "reason": "no texts accepted in this generation" if not new else "retrain.epochs is 0"}
        self.free()  # unload the generator before training (house style, rule 6)
        texts = retrain_texts(self.accepted_texts(s, g), self.data.train_texts, self.cfg.retrain.replay_texts, seed)
        final = self.gen_dir(g) / "adapter"
        self.check_inputs(prev)
        with atomic_dir(final, (g, "retrain")) as tmp:
            info = lora_finetune(self.base_path(), prev, texts, self.cfg.retrain, tmp, seed, self.cfg.run.device)
        return {"adapter": str(final), "trained": True, **info}

    def stage_evaluate(self, s: Session, g: int, seed: int) -> dict:
        from loop.base_model import perplexity

        adapter = (stage_detail(s, g, "retrain") or {}).get("adapter")
        tok, model = self.model(adapter)
        ppl = perplexity(model, tok, [t.text for t in self.data.eval]) if self.data.eval else float("nan")
        cands = s.exec(select(Candidate).where(Candidate.generation == g)).all()
        acc = [c for c in cands if c.decision == "accepted"]
        verdicts = [c.verdict for c in cands if c.verdict is not None]
        truth = (sum(v == "true" for v in verdicts) / len(verdicts)) if verdicts else None
        true_new = sum(1 for c in cands if c.true_new)
        dens = [c.density_score for c in cands if c.density_score is not None]
        dark_share = (sum(x > 1 for x in dens) / len(dens)) if dens else None
        nov = []
        if acc:
            ids = [c.id for c in acc]
            for sc in s.exec(select(Score).where(Score.candidate_id.in_(ids), Score.judge == "novelty")):
                dist = json.loads(sc.detail_json).get("distance")
                if dist is not None:
                    nov.append(dist)
        novelty = float(np.mean(nov)) if nov else None
        distinct2 = distinct_n([c.text for c in acc], 2) if acc else None
        timings = {st.name: round(st.seconds, 1) for st in s.exec(select(Stage).where(Stage.generation == g))}
        rate = len(acc) / max(len(cands), 1)
        line = (f"gen {g} | candidates {len(cands)} | accepted {len(acc)} ({rate:.1%}) | "
                f"truth {'n/a' if truth is None else f'{truth:.1%}'} | true-new {true_new} | "
                f"heldout ppl {ppl:.2f} | novelty {'n/a' if novelty is None else f'{novelty:.3f}'} | "
                f"distinct-2 {'n/a' if distinct2 is None else f'{distinct2:.2f}'} | "
                f"dark {'n/a' if dark_share is None else f'{dark_share:.0%}'} | "
                + " ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
        s.exec(delete(Metric).where(Metric.generation == g))
        s.add(Metric(generation=g, acceptance_rate=rate, truth_rate=truth, true_new=true_new, accepted=len(acc),
                     candidates=len(cands), heldout_ppl=ppl, novelty=novelty, distinct_2=distinct2,
                     dark_share=dark_share, timings_json=json.dumps(timings), line=line))
        return {"line": line, "heldout_ppl": ppl}


def invalidate_from(s: Session, g0: int, name0: str) -> None:
    """Make stage (g0, name0) and every later stage not done: delete their Stage rows and the rows
    they wrote (the caller commits, so it happens in one transaction)."""
    start = (g0, STAGES.index(name0))
    gone = [st for st in s.exec(select(Stage)) if (st.generation, STAGES.index(st.name)) >= start]
    for g in sorted({st.generation for st in gone}):
        names = {st.name for st in gone if st.generation == g}
        ids = select(Candidate.id).where(Candidate.generation == g)
        if "map" in names:
            s.exec(delete(Zone).where(Zone.generation == g))
        if "judge" in names or "sample" in names:
            s.exec(delete(Score).where(Score.candidate_id.in_(ids)))
        if "sample" in names:
            s.exec(delete(Candidate).where(Candidate.generation == g))
        else:
            for c in s.exec(select(Candidate).where(Candidate.generation == g)):
                if "decode" in names:
                    c.text = None
                if "judge" in names:
                    c.verdict = c.fact_key = c.true_new = c.total = c.decision = c.reason = None
                s.add(c)
        if "evaluate" in names:
            s.exec(delete(Metric).where(Metric.generation == g))
    for st in gone:
        s.delete(st)


def distinct_n(texts: list[str], n: int) -> float:
    grams = [tuple(t.split()[i : i + n]) for t in texts for i in range(max(0, len(t.split()) - n + 1))]
    return len(set(grams)) / len(grams) if grams else 0.0
