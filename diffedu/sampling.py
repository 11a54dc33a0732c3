"""What every sampler shares: one check of its inputs, one return convention, one check of its result.

Every sampler of the book has the signature

    name_sample(model, x_T, schedule, grid, *, <its own knobs>, cond=None, generator=None (stochastic ones only),
                progress=True, return_trajectory=False)

where ``grid`` comes from a grid function of ``diffedu.grids`` (chain indices, sigma~ values, times or a noise
ladder). It returns the sample x (B, ...) or, with ``return_trajectory=True``, a ``Trajectory`` (x, states,
x0_preds): the K + 1 states on the grid and the model's x0-hat at each of the K steps, on the CPU. A sampler
validates its arguments once, at its entry (``check_sampler_inputs``), makes no host sync while it runs, and checks
its result once at the end (``Recorder.result``): a non-finite sample raises a ValueError that names the model's
output as the likely cause instead of returning NaN.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .checks import check_start

Tensor = torch.Tensor


class Trajectory(NamedTuple):
    """What a sampler returns with ``return_trajectory=True``."""

    x: Tensor                # (B, ...) the sample, as without return_trajectory
    states: list[Tensor]     # K + 1 states: x at every grid point, [x_T, ..., x_K], on the CPU
    x0_preds: list[Tensor]   # K predictions: the model's x0-hat at grid points 0..K-1, on the CPU


def check_sampler_inputs(model: Callable, x_T: Tensor, t: float, cond: Tensor | None, name: str = "x_T") -> None:
    """The checks every sampler makes once, at its entry: x_T is a finite float batch (B, ...); ``cond`` has one
    row per example; and a model that declares ``check_inputs(x, t, cond)`` (the book's nets and the guidance
    wrappers do) checks the call ``model(x_T, t, cond)`` at the grid's first time t, here and not at every step."""
    check_start(name, x_T)
    if cond is not None and (not torch.is_tensor(cond) or cond.dim() < 1 or cond.shape[0] != x_T.shape[0]):
        shape = tuple(cond.shape) if torch.is_tensor(cond) else type(cond).__name__
        raise ValueError(f"cond must have one entry per example of {name} ({x_T.shape[0]}), got shape {shape}")
    check = getattr(model, "check_inputs", None)
    if check is not None:
        check(x_T, torch.full((x_T.shape[0],), float(t), device=x_T.device, dtype=x_T.dtype), cond)


class Recorder:
    """Keeps a sampler's states and x0-hats when ``keep`` (return_trajectory), and checks its result.

    ``Recorder(x_T, keep)`` records the start; ``add(x, x0_hat)`` one step; ``result(x)`` returns x, or the
    ``Trajectory`` when keeping, after one finiteness check of x (the only host sync of a sampler run).
    """

    def __init__(self, x_T: Tensor, keep: bool):
        self.keep = keep
        self.states, self.x0_preds = ([x_T.cpu()] if keep else []), []

    def add(self, x: Tensor, x0_hat: Tensor | None = None, scale: float = 1.0) -> None:
        """Record the state ``scale * x`` (scale: alpha_k from the sigma view back to x-space) and x0-hat."""
        if self.keep:
            self.states.append((x if scale == 1.0 else scale * x).cpu())
            if x0_hat is not None:
                self.x0_preds.append(x0_hat.cpu())

    def result(self, x: Tensor) -> Tensor | Trajectory:
        if not bool(torch.isfinite(x).all()):
            step = next((k for k, s in enumerate(self.states) if not bool(torch.isfinite(s).all())), None)
            where = (f"; the state first went non-finite at grid point {step}" if step is not None else
                     "; run with return_trajectory=True to see at which step")
            raise ValueError("the sample contains NaN or inf values: the model's output was most likely not finite "
                             f"(or the grid is too coarse for this model){where}")
        return Trajectory(x, self.states, self.x0_preds) if self.keep else x
