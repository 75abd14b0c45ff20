"""Several processes (lm.distributed): SLLM, LoRA and base-model training under `torchrun` with 2
processes on gloo (CPU) give the losses and weights of one process on the same global batch, and
the loop under torchrun completes with one writer.

The 2-process side runs this file as torchrun's script (`main` at the bottom), so it goes through
the launcher's environment exactly as `torchrun run.py` does.
"""
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import TINY_TEXTS

RTOL, ATOL = 1e-5, 1e-6  # float rounding: the ranks' gradients are summed in another order than one batch's
SLLM_TEXTS, SLLM_BATCH = 40, 12  # batches of 12, 12, 12, 4: split 6/6 and 2/2
LORA_TEXTS, LORA_BATCH = 25, 8  # batches of 8, 8, 8, 1: the last one has fewer rows than ranks


def torchrun(args: list[str], nproc: int = 2, timeout: int = 300, env_extra: dict | None = None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1", PYTHONHASHSEED="0", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", **(env_extra or {}))
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                        *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout, check=False)
    if p.returncode != 0:
        raise AssertionError(f"torchrun exit {p.returncode}\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}")
    return p


# ------------------------------------------------------------------ the trainings, 1 or N processes
def sllm_run(lm_dir: Path, ckpt: Path | None = None) -> dict:
    """A tiny SLLM with every term: reconstruction, meaning, latent L2, paraphrase (hard batches).

    In float64: the SLLM has weights its loss does not depend on (the key bias of an attention:
    softmax ignores a shift shared by all keys; the biases before the batch norm, which subtracts
    the batch mean). Their gradients are pure rounding noise, and AdamW scales noise to full steps,
    so in float32 those weights are noise in one process and in two alike; in float64 the noise is
    far below Adam's eps and every weight can be compared."""
    import dataclasses

    from lm.base_model import load_base_model
    from loop.config import SLLMConfig
    from sllm.model import SLLM
    from sllm.train import train_sllm

    tok, model = load_base_model(str(lm_dir))
    model.double()
    torch.manual_seed(0)
    cfg = SLLMConfig(latent_dim=16, enc_dim=32, enc_layers=1, n_prompt=4)
    sllm = SLLM(model.get_input_embeddings().weight.shape[1], dataclasses.replace(cfg, paraphrase_weight=0.5), 8)
    sllm.double()
    targets = np.random.default_rng(0).normal(size=(SLLM_TEXTS, 8))
    keys = [f"fact{i // 2}" if i < 16 else None for i in range(SLLM_TEXTS)]
    info = train_sllm(sllm, model, tok, TINY_TEXTS[:SLLM_TEXTS], targets, 3, 2e-3, SLLM_BATCH, 0, fact_keys=keys,
                      checkpoint=ckpt)
    return {"history": info["history"], "weights": {k: v.clone() for k, v in sllm.state_dict().items()}}


def lora_run(lm_dir: Path, out: Path) -> dict:
    from lm.config import RetrainConfig
    from lm.lora import lora_finetune

    info = lora_finetune(str(lm_dir), None, TINY_TEXTS[:LORA_TEXTS], RetrainConfig(epochs=2, batch_size=LORA_BATCH),
                         out, seed=0)
    return {"losses": info["losses"]}


def base_run(out: Path) -> dict:
    """Pretraining from scratch: packed rows re-drawn every epoch, copy units (train_lm, pack=True)."""
    from lm.base_model import train_small_base
    from loop.config import BaseConfig

    cfg = BaseConfig(vocab_size=300, hidden=32, layers=1, heads=2, max_len=256, pack_len=64, epochs=2, lr=5e-3,
                     batch_size=6, copy_units=20)
    return {"losses": train_small_base(TINY_TEXTS, cfg, out, seed=0)["losses"]}


def adapter_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def base_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def assert_close(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k, v in a.items():
        torch.testing.assert_close(v, b[k], rtol=RTOL, atol=ATOL, msg=lambda m, k=k: f"{what} {k}: {m}")


@pytest.fixture(scope="module")
def two_processes(tiny_lm_dir, tmp_path_factory):
    """The three trainings under torchrun, 2 processes on gloo (this file's `main`)."""
    out = tmp_path_factory.mktemp("dist")
    torchrun([str(Path(__file__)), str(tiny_lm_dir), str(out)])
    return out


def test_sllm_two_processes_equal_one(tiny_lm_dir, two_processes, tmp_path):
    one = sllm_run(tiny_lm_dir)
    ranks = [torch.load(two_processes / f"sllm-rank{r}.pt", weights_only=True) for r in (0, 1)]
    for r, got in enumerate(ranks):
        assert len(got["history"]) == 3
        for h1, h2 in zip(one["history"], got["history"]):
            assert h1.keys() == h2.keys() == {"rec", "l2", "meaning", "para"}
            np.testing.assert_allclose([h2[k] for k in h1], [h1[k] for k in h1], rtol=RTOL, atol=ATOL)
        assert_close(got["weights"], one["weights"], f"SLLM rank {r}")  # running statistics of the norm too
    assert not (two_processes / "sllm.ckpt").exists()  # rank 0 wrote it each epoch, and removed it at the end


def test_lora_two_processes_equal_one(tiny_lm_dir, two_processes, tmp_path):
    one = lora_run(tiny_lm_dir, tmp_path / "adapter")
    got = json.loads((two_processes / "lora.json").read_text())
    assert len(got["losses"]) == 2
    np.testing.assert_allclose(got["losses"], one["losses"], rtol=RTOL, atol=ATOL)
    assert_close(adapter_weights(two_processes / "adapter-rank0"), adapter_weights(tmp_path / "adapter"), "adapter")
    assert not (two_processes / "adapter-rank1").exists()  # rank 1 trained, and saved nothing


def test_base_pretraining_two_processes_equal_one(two_processes, tmp_path):
    one = base_run(tmp_path / "base")
    got = json.loads((two_processes / "base.json").read_text())
    np.testing.assert_allclose(got["losses"], one["losses"], rtol=RTOL, atol=ATOL)
    assert_close(base_weights(two_processes / "base-rank0"), base_weights(tmp_path / "base"), "base model")


def test_share_splits_rows_contiguously_and_whole_when_too_few(monkeypatch):
    import lm.distributed as D

    monkeypatch.setattr(D, "world", lambda: 3)
    shares = []
    for r in range(3):
        monkeypatch.setattr(D.dist, "get_rank", lambda r=r: r)
        shares.append(D.share(8))
    assert [(s.lo, s.hi) for s in shares] == [(0, 3), (3, 6), (6, 8)] and all(s.scale == 3 for s in shares)
    small = D.share(2)  # fewer rows than ranks: every rank the whole batch, DDP averages equal gradients
    assert (small.lo, small.hi, small.split, small.scale) == (0, 2, False, 1.0)
    monkeypatch.undo()
    assert D.share(8) is None and D.world() == 1 and D.is_main()  # a plain process: no-ops


# ----------------------------------------------------------------------------- the loop, torchrun
def loop_args(out: Path) -> list[str]:
    from tests.test_loop import TINY

    return [str(ROOT / "run.py"), "--generations", "1", "--out", str(out), *TINY]


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchrun") / "run"
    return out, torchrun(loop_args(out), timeout=600)


def test_loop_under_torchrun_has_one_writer(one_generation_run, torchrun_run):
    from tests.test_loop import db_content

    out, p = torchrun_run
    assert p.stdout.count("gen 0 |") == 1  # rank 0 alone prints the metrics line
    assert sorted(x.name for x in out.iterdir() if x.name.endswith(".tmp")) == []
    two, one = db_content(out), db_content(one_generation_run)
    assert two["stages"] == one["stages"]  # each stage once: one writer
    assert len(two["candidates"]) == len(one["candidates"])
    # The base model (rank 0 alone) is bit for bit one process's; the SLLM and the adapter (DDP)
    # within float rounding (the tests above). So the latents and what the map computes from them
    # differ in their last bits, and the rest is equal as long as that rounding flips no greedy
    # decoding choice (it flips none here, in 1 or 2 generations).
    def latents(rows):
        return np.stack([np.frombuffer(bytes.fromhex(c[5]), np.float32) for c in rows if c[5]])

    np.testing.assert_allclose(latents(two["candidates"]), latents(one["candidates"]), rtol=1e-4, atol=1e-4)
    same_text = sum(a[7] == b[7] for a, b in zip(two["candidates"], one["candidates"]))
    assert same_text == len(one["candidates"]), f"{same_text} of {len(one['candidates'])} decoded texts equal"
    assert [c[12] for c in two["candidates"]] == [c[12] for c in one["candidates"]]  # decisions
    assert two["scores"] == one["scores"]  # judged on the same texts with the same (rank 0's) base model
    np.testing.assert_allclose(np.array(two["metrics"], float), np.array(one["metrics"], float), rtol=1e-5)
    con = sqlite3.connect(out / "runs.db")
    assert con.execute("SELECT count(*) FROM run").fetchone() == (1,)
    con.close()


def test_loop_under_torchrun_resumes_after_rank_0_is_killed(torchrun_run, tmp_path):
    """Rank 0 killed (kill -9) with the adapter half written: torchrun stops rank 1; the same
    command again resumes to the database an uninterrupted 2-process run made, bit for bit."""
    from tests.test_loop import db_content

    out = tmp_path / "run"
    with pytest.raises(AssertionError, match="torchrun exit"):
        torchrun(loop_args(out), env_extra={"DARKZONES_CRASH_AT": "0:retrain:mid_artifact"})
    torchrun(loop_args(out))
    assert db_content(out) == db_content(torchrun_run[0])


# ------------------------------------------------------------------------ torchrun's script: main
def main(lm_dir: str, out: str) -> None:
    from lm import distributed

    torch.set_num_threads(1)
    distributed.init()
    r, out = distributed.rank(), Path(out)
    got = sllm_run(Path(lm_dir), ckpt=out / "sllm.ckpt")
    torch.save(got, out / f"sllm-rank{r}.pt")  # each rank's own result, to check they agree
    lora = lora_run(Path(lm_dir), out / f"adapter-rank{r}")  # rank 0 alone saves the adapter
    base = base_run(out / f"base-rank{r}")  # train_small_base saves in every process: a folder each
    if distributed.is_main():
        (out / "lora.json").write_text(json.dumps(lora))
        (out / "base.json").write_text(json.dumps(base))
    distributed.barrier()


if __name__ == "__main__":
    main(*sys.argv[1:])
