"""Data-parallel training on the one engine: N processes launched by ``torchrun`` (gloo on CPU, nccl on GPU) train
the same model as one process with the same global batch.

Every process reads the same seeded batches (``qpolicy.data.ArrayLoader`` depends only on (seed, epoch)) and keeps
its contiguous share of each one (:func:`shard`); the loss of a share is weighted by its size, and the gradients are
summed over the processes and divided by their number (:func:`all_reduce_grads`), which is the gradient of the
global batch's mean loss. BatchNorm layers in training mode use the statistics of the **global** batch
(:class:`GlobalBatchNorm2d`: sums all-reduced with autograd, since ``torch.nn.SyncBatchNorm`` refuses CPU tensors),
and BatchQuant activation quantizers use the global batch's range (:class:`GlobalBatchQuantizer`: per-channel
minima and maxima all-reduced, which is exact). Only rank 0 writes checkpoints, results and progress bars; every
rank resumes from the same checkpoint.

Float training then matches a single process to rounding error. Quantized training (QAT, supernets) matches it
only as far as rounding-level differences (the order of the all-reduced sums) leave every quantizer's rounding
alone, which they do not for long: see ``benchmarks/results/ddp_equivalence.md``. Gaussian noise is drawn for the
whole batch by every process (a ``whole_batch`` transform), as one process draws it; adversarial examples are
crafted per share (their random starts differ from one process's).

Launch::

    torchrun --standalone --nproc_per_node 2 -m qpolicy.cli finetune --model resnet20 --uniform w4a4 -o runs/qat
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..quant.batchquant import BatchQuantizer, channel_range

__all__ = ["world", "init_from_env", "shutdown", "spawn_local", "GlobalBatchNorm2d", "GlobalBatchQuantizer",
           "global_batchnorm", "shard", "all_reduce_grads", "all_reduce_sum", "is_main"]


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialized process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init_from_env(device: str | torch.device | None = None) -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment): nccl when the device
    is CUDA, else gloo. Returns whether this process is one of several."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        from ..evaluate import resolve_device

        dev = resolve_device(device)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        if dev.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        atexit.register(shutdown)
    return True


def spawn_local(fn, *args, nprocs: int = 2, threads: int = 1) -> None:
    """Run ``fn(*args)`` in ``nprocs`` new local processes joined in one gloo group (``torchrun`` without the
    launcher: tests, benchmarks). ``fn`` must be importable (module level); ``is_main()`` picks the process that
    writes. Each process uses ``threads`` torch threads. Raises when a process fails."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_spawned, args=(nprocs, port, threads, fn, args), nprocs=nprocs, join=True,
                       start_method="spawn")


def _spawned(rank: int, size: int, port: int, threads: int, fn, args: tuple) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    try:
        fn(*args)
    finally:
        shutdown()


def shutdown() -> None:
    """Leave the process group: collect garbage, then destroy it (a no-op outside one).

    The differentiable all-reduces leave gloo work objects in reference cycles; destroyed only at interpreter
    finalization, they aborted the process (SIGABRT, "terminate called without an active exception") in 4 of 40
    two-process runs here, after all the work was done. Collected first: 0 of 45."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training mode inside a process group, normalizes with the mean and variance of the
    global batch (per-process sums all-reduced, differentiably) and updates its running statistics with them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rank, size = world()
        if not self.training or size == 1:
            return super().forward(x)
        import warnings

        from torch.distributed.nn.functional import all_reduce  # differentiable (its successor is not yet)

        c = x.shape[1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # two passes, as torch computes a batch's variance: the global mean, then the global squared deviation
            n_local = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
            first = all_reduce(torch.cat([x.sum((0, 2, 3)), n_local]))
            n = first[-1]
            mean = first[:c] / n
            var = all_reduce(((x - mean.view(1, -1, 1, 1)) ** 2).sum((0, 2, 3))) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach() * m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)) * m)
        y = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y


class GlobalBatchQuantizer(BatchQuantizer):
    """BatchQuant whose training-mode range is the global batch's: each channel's min and max all-reduced (MIN,
    MAX) over the processes, then averaged over the channels, as one process computes it on the whole batch."""

    def _batch_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if world()[1] == 1:
            return super()._batch_range(x)
        lo, hi = channel_range(x)
        lo, hi = lo.clone(), hi.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        return lo.mean(), hi.mean()


@contextlib.contextmanager
def global_batchnorm(model: nn.Module) -> Iterator[None]:
    """Within a process group, make every ``nn.BatchNorm2d`` of ``model`` a :class:`GlobalBatchNorm2d` and every
    BatchQuant quantizer a :class:`GlobalBatchQuantizer` (same state, class swapped) for the duration; outside one,
    do nothing."""
    if world()[1] == 1:
        yield
        return
    swaps = {nn.BatchNorm2d: GlobalBatchNorm2d, BatchQuantizer: GlobalBatchQuantizer}
    swapped = [(m, type(m)) for m in model.modules() if type(m) in swaps]
    for m, cls in swapped:
        m.__class__ = swaps[cls]
    try:
        yield
    finally:
        for m, cls in swapped:
            m.__class__ = cls


def shard(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """This process's contiguous share of a global batch, and the weight of its mean loss (``n_r * W / n``) that
    makes the averaged gradients those of the global mean."""
    rank, size = world()
    if size == 1:
        return x, y, 1.0
    n = len(y)
    bounds = [n * r // size for r in range(size + 1)]
    lo, hi = bounds[rank], bounds[rank + 1]
    return x[lo:hi], y[lo:hi], (hi - lo) * size / n


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients over the processes (one flat all-reduce)."""
    _, size = world()
    if size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= size
    i = 0
    for g in grads:
        g.copy_(flat[i:i + g.numel()].view_as(g))
        i += g.numel()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over the processes (``t`` itself with one)."""
    if world()[1] == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t
