"""Training on several processes: PyTorch's own DistributedDataParallel (DDP), started by ``torchrun``.

    torchrun --standalone --nproc_per_node=2 -m diffedu.recipes ddpm_digits     # two processes, one machine

``torchrun`` starts W processes (ranks) and tells each its rank in environment variables; :func:`init_distributed`
joins them into one process group (gloo on the CPU, NCCL on CUDA GPUs, one GPU per rank). :func:`diffedu.train.train`
then runs the very loop of one process, with three marked changes (``# DDP:``):

1. **The same global batch, split by rows.** Every rank draws the same ``batch_size`` row indices from the same
   seeded CPU generator (as one process does) and the same noise: the loss function runs on the whole global batch
   on every rank, so every random draw (times, noise, dropped labels) is the one-process draw. Only the network is
   split: :class:`RowSharded` runs it on this rank's ``batch_size / W`` rows and all-gathers the outputs of all
   ranks, so every rank computes the one-process loss over the global batch.
2. **Gradients are averaged by DDP.** The all-gather's backward hands each rank the gradient of its rows, summed
   over the W identical losses (W times its share); DDP's mean over ranks turns that into exactly the gradient of
   the global-batch loss. Clipping, AdamW, the learning-rate schedule and the EMA then see the same numbers on
   every rank, so the weights stay identical without ever being broadcast again (DDP broadcasts rank 0's initial
   weights once).
3. **Rank 0 alone** evaluates, writes the checkpoint and the manifest (a write from another rank is refused).

So W processes follow the one-process loss trajectory up to float rounding (the net's matmuls see B/W rows instead
of B, and the gradient sums are grouped differently). One exception: dropout masks come from torch's global
generator, seeded ``seed + rank``, so with dropout > 0 the runs agree in distribution, not draw for draw.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of processes): (0, 1) unless a process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher setting WORLD_SIZE and RANK) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(device: torch.device | str | None = None, backend: str | None = None) -> torch.device:
    """Join the process group torchrun set up (reading RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); return
    this rank's device: ``cuda:LOCAL_RANK`` (made the current CUDA device) on GPUs, else the CPU.

    ``backend``: "gloo" (CPU tensors) or "nccl" (CUDA tensors); default: nccl on CUDA, gloo on the CPU. Raises
    ValueError for a backend that this torch build lacks or that cannot move tensors of the device.
    """
    if dist.is_initialized():
        raise ValueError("init_distributed was called twice: the process group is already initialised")
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed; run with one process (no torchrun)")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind not in ("cuda", "cpu"):
        raise ValueError(f"device must be cuda or cpu for several processes (DDP), got {device!r}")
    backend = backend or ("nccl" if kind == "cuda" else "gloo")
    available = {"gloo": dist.is_gloo_available(), "nccl": dist.is_nccl_available()}
    if backend not in available:
        raise ValueError(f"backend must be one of {sorted(available)}, got {backend!r}")
    if not available[backend]:
        raise ValueError(f"backend {backend!r} is not available in this torch build "
                         f"(available: {[b for b, ok in available.items() if ok]})")
    if backend == "nccl" and kind != "cuda":
        raise ValueError(f"backend 'nccl' moves CUDA tensors only, but the device is {kind}: use backend 'gloo'")
    if kind == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"--nproc_per_node must be at most the {torch.cuda.device_count()} CUDA devices of "
                             f"this machine (one GPU per rank), got LOCAL_RANK {local_rank}")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    return torch.device("cuda", local_rank) if kind == "cuda" else torch.device("cpu")


def check_same_on_all_ranks(name: str, value: Any) -> None:
    """Raise ValueError on every rank unless ``value`` (JSON-serialisable) is the same on all ranks: its hash is
    all-gathered and compared, so ranks started with different arguments stop before they train different models."""
    rank, world = rank_and_world()
    if world == 1:
        return
    digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()[:16]
    digests: list[str] = [""] * world
    dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        ranks = {d: [r for r in range(world) if digests[r] == d] for d in dict.fromkeys(digests)}
        raise ValueError(f"{name} must be the same on every rank, but the ranks disagree (ranks by the hash of "
                         f"their value: {ranks}); start every rank with the same command")


def check_rank_zero(what: str) -> None:
    """Raise ValueError unless this is rank 0 (or a single process): only rank 0 writes files."""
    rank, world = rank_and_world()
    if rank != 0:
        raise ValueError(f"{what} must run on rank 0 only (this is rank {rank} of {world}): one checkpoint and one "
                         f"manifest entry per run, written by rank 0")


def check_world_fits(batch_size: int, rows: int) -> None:
    """Raise ValueError unless the ``batch_size`` rows of every step split evenly into one equal shard per rank,
    and the data has at least one row per rank."""
    _, world = rank_and_world()
    if world > rows:
        raise ValueError(f"--nproc_per_node (world size {world}) must be at most the {rows} rows of data, one shard "
                         f"per rank")
    if batch_size % world:
        raise ValueError(f"batch_size must be divisible by the world size (torchrun --nproc_per_node x nodes = "
                         f"{world}) so that every rank gets an equal shard, got {batch_size}")


def row_sharded_ddp(net: nn.Module, device: torch.device, batch_size: int) -> "RowSharded":
    """``net`` wrapped in DistributedDataParallel (on ``device``: one GPU per rank, or the CPU) and in
    :class:`RowSharded`, which feeds it this rank's rows of every global batch of ``batch_size`` rows."""
    from torch.nn.parallel import DistributedDataParallel

    ids = None if device.type != "cuda" else [device.index if device.index is not None else torch.cuda.current_device()]
    return RowSharded(DistributedDataParallel(net, device_ids=ids), batch_size)


class GatherRows(torch.autograd.Function):
    """All-gather of every rank's rows (b, ...) into the global batch (W b, ...), rank by rank. Backward is its
    adjoint, a reduce-scatter: this rank's rows of the gradient, summed over the ranks (made of all_reduce + slice,
    which every backend has)."""

    @staticmethod
    def forward(ctx: Any, part: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(part) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, part.contiguous())
        ctx.rows = part.shape[0]
        return torch.cat(parts)                                      # (W b, ...)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)                                        # sum over the ranks' (identical) losses
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]                          # (b, ...)


class RowSharded(nn.Module):
    """``net(*args)`` on the global batch, computed by ``module`` (the DDP-wrapped net) on this rank's rows only.

    Every tensor argument whose first dimension is ``batch_size`` is cut to rows [rank * b, (rank + 1) * b) with
    b = batch_size / world; the outputs of all ranks are gathered (:class:`GatherRows`) into the global batch's
    output. Every rank then holds the same global loss L; the gather's backward hands this rank W dL/d(its rows)
    (the sum of the W copies) and DDP divides the ranks' summed parameter gradients by W: exactly dL/dtheta. Other
    attributes (``prediction``, ``null_label``, ...) are those of the wrapped net.
    """

    def __init__(self, module: nn.Module, batch_size: int) -> None:
        super().__init__()
        self.module = module
        self.batch_size = batch_size

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        rank, world = rank_and_world()
        B, b = self.batch_size, self.batch_size // world
        shard = lambda a: a[rank * b:(rank + 1) * b] if torch.is_tensor(a) and a.dim() and a.shape[0] == B else a
        out = self.module(*map(shard, args), **{key: shard(value) for key, value in kwargs.items()})  # (b, ...)
        return GatherRows.apply(out)                                                                 # (B, ...)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = super().__getattr__("module")
            return getattr(getattr(inner, "module", inner), name)  # through the DDP wrapper to the net
