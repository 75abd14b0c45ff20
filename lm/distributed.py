"""Several processes through `torchrun` or `accelerate launch`: DistributedDataParallel training.

Nothing here starts a process: the launcher does, and describes the job in the environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). `init` joins that process group once
(gloo on CPU; gloo for CPU tensors and NCCL for CUDA ones where a GPU is visible); every helper
here is a no-op in a plain single process, so one process runs exactly the code it always ran.

How a global batch is shared (`share`): rank r takes its contiguous slice of the batch's rows; the
global batch stays the configured one. Each rank's loss is its rows' SUM over the global batch's
count, times the world size (`Share.scale`), so DDP's average of the ranks' gradients is exactly
the gradient of the global batch's mean loss (a per-rank mean would weight a short rank's tokens
more). A batch with fewer rows than ranks is computed whole on every rank (scale 1: DDP then
averages equal gradients). Recipes and what runs on which rank: docs/distributed.md.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# How long a rank waits at a collective: the loop's other ranks wait at a barrier while rank 0
# alone decodes and judges, which can take hours on a large run (torch's default is 30 minutes).
TIMEOUT_ENV, DEFAULT_TIMEOUT_S = "DARKZONES_DIST_TIMEOUT_S", 24 * 3600

_alone = 0  # > 0 inside `alone()`: this process acts as a single one


def launched() -> bool:
    """Whether a launcher started this process as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> bool:
    """Join the launcher's process group (once); False in a plain single process."""
    if dist.is_available() and dist.is_initialized():
        return True
    if not launched():
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} is not set; start "
                           "the processes with torchrun or accelerate launch (docs/distributed.md)")
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())  # "cuda" now means this rank's GPU
        backend = "cpu:gloo,cuda:nccl"  # each collective on the backend of its tensors' device
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=timeout)
    return True


def _on() -> bool:
    return not _alone and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> int:
    """The number of processes training together (1: a plain process, or inside `alone()`)."""
    return dist.get_world_size() if _on() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0: the one process that writes the database and the artifacts."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank. An all-reduce of a CPU tensor (gloo), so a long wait holds no GPU stream."""
    if _on():
        dist.all_reduce(torch.zeros(1))


def broadcast(obj):
    """Rank 0's `obj` (any picklable value), on every rank."""
    if not _on():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean(values: list[float]) -> list[float]:
    """The ranks' average of each value (per-rank losses scaled by `Share.scale` average to the global one)."""
    if not _on():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def sum_(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over ranks, in place (each rank filled its own part, zeros elsewhere: exact)."""
    if _on():
        dist.all_reduce(t)
    return t


@contextlib.contextmanager
def alone():
    """Inside, this process acts as a single one (world() == 1): for work rank 0 does by itself
    while the other ranks wait, so that no collective waits for a rank that is not there."""
    global _alone
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. fills a cache); the others then run it (and read the cache)."""
    if not _on():
        yield
        return
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


@dataclass(frozen=True)
class Share:
    """This rank's rows [lo, hi) of a global batch of `total` rows; `sizes`: every rank's count."""
    total: int
    lo: int
    hi: int
    sizes: tuple[int, ...]

    @property
    def split(self) -> bool:
        """False when every rank computes the whole batch (fewer rows than ranks)."""
        return self.hi - self.lo < self.total

    @property
    def scale(self) -> float:
        """Factor of a rank's loss (its rows' sum / the global count): the world size when the batch is
        split, so that DDP's average of gradients is the global batch's; 1 when every rank has it all."""
        return float(len(self.sizes)) if self.split else 1.0

    def take(self, rows: list) -> list:
        return rows[self.lo : self.hi]


def share(total: int) -> Share | None:
    """This rank's share of a global batch of `total` rows (contiguous, sizes differing by at most
    one, the first ranks taking the extra rows); None in a single process."""
    w = world()
    if w == 1:
        return None
    if total < w:
        return Share(total, 0, total, (total,) * w)
    base, extra = divmod(total, w)
    sizes = tuple(base + (r < extra) for r in range(w))
    r = dist.get_rank()
    lo = sum(sizes[:r])
    return Share(total, lo, lo + sizes[r], sizes)


class _AllGather(torch.autograd.Function):
    """Every rank's (n, ...) rows, stacked (world * n, ...); the backward sums each row's gradient
    over ranks and gives each rank its own rows' (an all-reduce: gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n : (dist.get_rank() + 1) * n]


def gather(x: torch.Tensor, sh: Share | None) -> torch.Tensor:
    """Every rank's rows of `x` (this rank's (n_r, ...)), in global order (total, ...), with
    gradients: the backward sums the ranks' gradients of each row (so a term every rank computes
    whole, then averaged by DDP, gets one process's gradient)."""
    if sh is None or not sh.split:
        return x
    n = max(sh.sizes)
    padded = torch.nn.functional.pad(x, (0, 0) * (x.dim() - 1) + (0, n - x.shape[0]))  # equal shapes for all_gather
    full = _AllGather.apply(padded)  # (world * n, ...)
    return torch.cat([full[r * n : r * n + k] for r, k in enumerate(sh.sizes)])


def wrap(module: torch.nn.Module, find_unused_parameters: bool = False) -> torch.nn.Module:
    """`module` under DistributedDataParallel (the module itself in a single process). Rank 0's
    trainable weights are broadcast first; frozen ones (a base model under LoRA) are not moved:
    every rank loaded the same ones. Buffers are not synced each step: the training keeps them
    equal on every rank."""
    if not _on():
        return module
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                dist.broadcast(p.data, src=0)
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=None, init_sync=False, forward_sync_buffers=False,
        find_unused_parameters=find_unused_parameters)
