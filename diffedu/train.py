"""One training loop for every model in the book.

Each chapter supplies only a loss, ``loss_fn(model, batch, generator) -> scalar``: DDPM's noise-prediction loss,
denoising score matching, a distillation target, ... The loop around it is always the same: sample a minibatch,
AdamW step (with optional linear warm-up and gradient-norm clipping), then update an exponential moving average
(EMA) of the weights, which is what we sample from (Ho et al. 2020, App. B; Song & Ermon 2020, Technique 5).

Runs repeat exactly: ``seed`` fixes the minibatches, the noise generator handed to ``loss_fn`` and torch's global
generator (dropout). On the CPU two runs with the same seed give bitwise-identical losses.

The same function trains on several processes when ``torchrun`` started them (DistributedDataParallel; see
``diffedu.distributed``): the lines marked ``# DDP:`` split every global batch by rows across the ranks, and W
processes follow the one-process loss trajectory up to float rounding. In one process those lines change nothing.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from .checks import check_int, check_scalar
from .distributed import check_same_on_all_ranks, check_world_fits, rank_and_world, row_sharded_ddp
from .utils import pick_device, seed_everything

Batch = Union[torch.Tensor, tuple[torch.Tensor, ...]]
LossFn = Callable[[nn.Module, Batch, torch.Generator], torch.Tensor]


def make_generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A seeded ``torch.Generator`` living on ``device``, for reproducible noise drawn there."""
    check_int("seed", seed, 0)
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


class EMA:
    """Exponential moving average of a model's parameters: theta_ema <- d * theta_ema + (1 - d) * theta.

    ``self.model`` is a deep copy of the model in eval mode without gradients. Buffers (e.g. batch-norm
    statistics) are copied as they are. With ``use_num_updates`` the decay is ramped up as
    d_n = min(decay, (1 + n) / (10 + n)) after n updates (as in Song et al.'s score_sde code), so a short run's
    EMA is not dominated by the random initial weights.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, use_num_updates: bool = True) -> None:
        self.decay = check_scalar("decay", decay, 0.0, 1.0, high_inclusive=False)
        self.use_num_updates = use_num_updates
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay d used by the next :meth:`update`."""
        if not self.use_num_updates:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current parameters."""
        d = self.current_decay()
        for p_ema, p in zip(self.model.parameters(), model.parameters()):
            p_ema.mul_(d).add_(p.detach(), alpha=1 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters and buffers with the averaged ones."""
        for p, p_ema in zip(model.parameters(), self.model.parameters()):
            p.copy_(p_ema)
        for b, b_ema in zip(model.buffers(), self.model.buffers()):
            b.copy_(b_ema)


@dataclass
class TrainResult:
    """What :func:`train` returns. ``losses[k]`` and ``grad_norms[k]`` are step k's loss and gradient norm
    (before clipping)."""

    model: nn.Module
    ema_model: nn.Module
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0
    steps_per_s: float = 0.0

    def __repr__(self) -> str:  # no timings, so a notebook that shows it stays deterministic
        return (f"TrainResult(steps={len(self.losses)}, first loss={self.losses[0]:.4f}, "
                f"last loss={self.losses[-1]:.4f})" if self.losses else "TrainResult(steps=0)")


def _as_tensors(data: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Check ``data`` (a tensor or a tuple of tensors with equal first dimension) and return it as a tuple."""
    tensors = (data,) if torch.is_tensor(data) else tuple(data) if isinstance(data, (tuple, list)) else None
    if not tensors or not all(torch.is_tensor(t) for t in tensors):
        raise ValueError(f"data must be a tensor or a tuple of tensors, got {type(data).__name__}")
    sizes = [t.shape[0] if t.dim() > 0 else 0 for t in tensors]
    if min(sizes) < 1 or len(set(sizes)) != 1:
        raise ValueError(f"data tensors must share a first dimension of at least 1, got first dimensions {sizes}")
    return tensors


def train(
    model: nn.Module,
    loss_fn: LossFn,
    data: torch.Tensor | Sequence[torch.Tensor],
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 2e-4,
    weight_decay: float = 0.0,
    ema_decay: float = 0.999,
    grad_clip: float | None = 1.0,
    warmup_steps: int = 0,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = True,
    log_every: int | None = None,
    autocast: torch.dtype | None = None,
    compile: bool | str = False,
) -> TrainResult:
    """Train ``model`` for ``steps`` AdamW steps on minibatches of ``data``; returns the model and its EMA.

    Each step draws ``batch_size`` rows of ``data`` uniformly with replacement and calls
    ``loss_fn(model, batch, generator)``, where ``batch`` is a tensor (or a tuple ``(x, y)`` when ``data`` is a
    tuple) already on the device and ``generator`` is a seeded generator on that device for the loss's noise.
    The learning rate rises linearly over the first ``warmup_steps`` steps; gradients are clipped to total norm
    ``grad_clip`` (None: no clipping). ``log_every`` prints the mean loss of every that many steps.
    The model is moved to ``device`` (default :func:`~diffedu.utils.pick_device`) and left in eval mode.

    Fast paths, off by default: ``autocast`` (``torch.bfloat16`` or ``torch.float16``) runs ``loss_fn`` under
    ``torch.autocast`` (mixed precision: weights, gradients, AdamW and the EMA stay float32); ``compile`` runs the
    net through ``torch.compile`` (True: its default backend, inductor; a string names another backend). The
    attention kernel is a property of the net: ``diffedu.nets.unet.set_fused_attention``.

    Under ``torchrun`` (a process group is initialised) every rank draws the same rows and the same noise, runs
    the net on its ``batch_size / W`` rows, and DDP averages the gradients; ``batch_size`` must be divisible by W,
    and ``loss_fn`` must call the net once per step, on tensors whose first dimension is the global batch.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise ValueError("loss_fn must be callable as loss_fn(model, batch, generator)")
    tensors = _as_tensors(data)
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    check_scalar("lr", lr, 0.0, math.inf, low_inclusive=False)
    check_scalar("weight_decay", weight_decay, 0.0)
    check_scalar("ema_decay", ema_decay, 0.0, 1.0, high_inclusive=False)
    if grad_clip is not None:
        check_scalar("grad_clip", grad_clip, 0.0, math.inf, low_inclusive=False)
    check_int("warmup_steps", warmup_steps, 0)
    check_int("seed", seed, 0)
    if log_every is not None:
        check_int("log_every", log_every, 1)
    if autocast not in (None, torch.bfloat16, torch.float16):
        raise ValueError(f"autocast must be None, torch.bfloat16 or torch.float16, got {autocast!r}")
    if not isinstance(compile, (bool, str)):
        raise ValueError(f"compile must be True, False or the name of a torch.compile backend, got {compile!r}")
    rank, world = rank_and_world()  # DDP: (0, 1) in one process
    if world > 1:  # DDP: every rank must run the same training on equal shards
        check_world_fits(batch_size, tensors[0].shape[0])
        check_same_on_all_ranks("train's arguments and data", dict(
            steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, ema_decay=ema_decay,
            grad_clip=grad_clip, warmup_steps=warmup_steps, seed=seed, autocast=str(autocast), compile=compile,
            data=[(list(t.shape), float(t.double().sum())) for t in tensors]))

    device = pick_device(device)
    seed_everything(seed + rank)  # torch's global generator drives dropout; DDP: different masks on each rank
    model.to(device).train()
    tensors = tuple(t.to(device) for t in tensors)
    n = tensors[0].shape[0]
    batch_generator = make_generator("cpu", seed + 1)  # which rows: drawn on the CPU, the same on every device
    noise_generator = make_generator(device, seed)  # handed to loss_fn
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    ema = EMA(model, ema_decay)
    max_norm = grad_clip if grad_clip is not None else math.inf  # inf: measure the norm, never clip
    net = model if not compile else torch.compile(model, **({} if compile is True else {"backend": compile}))
    if world > 1:
        net = row_sharded_ddp(net, device, batch_size)  # DDP: the net runs on this rank's rows of every batch
    precision = torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext()

    result = TrainResult(model=model, ema_model=ema.model)
    bar = tqdm(range(steps), desc="train", disable=not progress or rank != 0)  # DDP: rank 0 reports
    start = time.perf_counter()
    for step in bar:
        rows = torch.randint(n, (batch_size,), generator=batch_generator).to(device)
        batch = tensors[0][rows] if len(tensors) == 1 else tuple(t[rows] for t in tensors)
        if warmup_steps > 0:
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warmup_steps)

        optimizer.zero_grad(set_to_none=True)
        with precision:
            loss = loss_fn(net, batch, noise_generator)  # DDP: the global batch's loss, the same on every rank
        if not torch.is_tensor(loss) or loss.numel() != 1:
            raise ValueError("loss_fn must return a scalar tensor")
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}; try a smaller lr or check loss_fn")
        loss.backward()  # DDP: averages the ranks' gradients, which makes the global batch's gradient
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
        ema.update(model)

        result.losses.append(loss.item())
        result.grad_norms.append(float(grad_norm))
        if progress and (step % 10 == 0 or step == steps - 1):
            bar.set_postfix(loss=f"{result.losses[-1]:.4f}", refresh=False)
        if log_every is not None and (step + 1) % log_every == 0 and rank == 0:
            recent = result.losses[-log_every:]
            tqdm.write(f"step {step + 1:>6d}  loss {sum(recent) / len(recent):.4f}")
    bar.close()

    result.wall_time_s = time.perf_counter() - start
    result.steps_per_s = steps / max(result.wall_time_s, 1e-12)
    model.eval()
    return result
