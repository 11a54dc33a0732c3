"""Guiding a diffusion model towards a condition (Dhariwal & Nichol 2021; Ho & Salimans 2022).

Guidance is written as a *model wrapper*: a guided model is again ``net(x, t, cond)`` with a ``prediction``, so
every sampler in the book runs it unchanged.

    classifier-free guidance   eps_s = eps(x, t, null) + s * (eps(x, t, y) - eps(x, t, null))     (Ho & Salimans eq. 6)

Two conventions for the scale are in use: ``s`` as above (s = 0 unconditional, s = 1 conditional, s > 1 guided),
and Ho & Salimans' ``w`` in eps_w = (1 + w) eps(y) - w eps(null), so s = 1 + w. This library uses s.
Training needs the unconditional model too: ``drop_labels`` replaces a fraction p_uncond of the labels by the
null label (id ``num_classes``) so that one network learns both.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .checks import check_finite, check_int, check_scalar

Tensor = torch.Tensor


def drop_labels(y: Tensor, p_uncond: float, null_label: int, generator: torch.Generator | None = None) -> Tensor:
    """Condition dropout: each label of y (B,) becomes ``null_label`` with probability ``p_uncond``."""
    p_uncond = check_scalar("p_uncond", p_uncond, 0.0, 1.0)
    null_label = check_int("null_label", null_label, 0)
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p_uncond  # (B,)
    return torch.where(drop, torch.full_like(y, null_label), y)


class ClassifierFreeGuidance(nn.Module):
    """``net(x, t, cond)`` = the guided prediction eps_u + s (eps_c - eps_u) of a class-conditional ``model``.

    ``model`` must accept ``cond=None`` (or the null label) for the unconditional prediction and declare its
    ``prediction``; the combination is linear, so it is applied to the raw output of any prediction type (for
    eps, x0, v and score it is the same guided model, as each is an affine function of the score at fixed x, t).
    Both predictions come from one batched call of 2B rows. ``scale`` is s (s = 1 + w in Ho & Salimans' w).
    """

    def __init__(self, model: nn.Module, scale: float, null_label: int):
        super().__init__()
        self.model = model
        self.scale = check_scalar("scale", scale, 0.0, math.inf)
        self.null_label = check_int("null_label", null_label, 0)
        self.prediction = getattr(model, "prediction", "eps")

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if cond is None:
            raise ValueError("cond must be a (B,) tensor of class ids for classifier-free guidance, got None")
        check_finite("x", x)
        B = x.shape[0]
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype).reshape(-1).expand(B)     # (B,)
        null = torch.full_like(cond, self.null_label)
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null]))  # (2B, ...)
        out_c, out_u = out[:B], out[B:]
        return out_u + self.scale * (out_c - out_u)
