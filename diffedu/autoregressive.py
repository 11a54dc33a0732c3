"""An autoregressive model with exact likelihood: MADE on discrete pixels (Germain et al. 2015).

The chain rule p(x) = prod_d p(x_d | x_<d) holds for any order; MADE computes all D conditionals in one pass of
an MLP whose weights are masked so that output d sees only inputs < d (Germain et al. eq. 12-13): each hidden
unit k gets a degree m(k) in {1, ..., D - 1}; a weight from unit j to unit k is kept iff m(k) >= m(j) (hidden
layers) and an output d is connected to unit k iff d > m(k). Each output is a categorical over the ``levels``
pixel values, so

    log p(x) = sum_d log softmax(logits_d)[x_d]          (exact: no bound, no dequantisation)

and bits/dim = -log p(x) / (D ln 2), the same unit as DDPM's ELBO on the 17-level digits (chapter 1).
Sampling takes D passes, one pixel at a time.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .checks import check_int

Tensor = torch.Tensor


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out, in)."""

    def __init__(self, d_in: int, d_out: int, mask: Tensor) -> None:
        super().__init__(d_in, d_out)
        self.register_buffer("mask", mask.float(), persistent=False)  # rebuilt from the config

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def made_masks(D: int, hidden: list[int], levels: int) -> list[Tensor]:
    """The masks of MADE in the natural order 1..D (Germain et al. eq. 12-13)."""
    m_in = torch.arange(1, D + 1)                               # degrees of the inputs
    degrees = [m_in]
    for h in hidden:                                            # cycle 1..D-1
        degrees.append(torch.arange(h) % max(D - 1, 1) + 1)
    masks = [(d_out[:, None] >= d_in[None, :])                  # hidden: >=
             for d_in, d_out in zip(degrees[:-1], degrees[1:])]
    m_out = m_in.repeat_interleave(levels)                      # (D * L,)
    masks.append(m_out[:, None] > degrees[-1][None, :])         # output: >
    return masks


class MADE(nn.Module):
    """p(x) = prod_d Cat(x_d; softmax(logits_d(x_<d))) for x of D values on ``levels`` levels of [-1, 1]."""

    def __init__(self, data_dim: int = 64, levels: int = 17, hidden: tuple[int, ...] = (512, 512)) -> None:
        super().__init__()
        check_int("data_dim", data_dim, 1)
        check_int("levels", levels, 2)
        self.data_dim, self.levels = data_dim, levels
        self.config = {"name": type(self).__name__, "data_dim": data_dim, "levels": levels,
                       "hidden": list(hidden)}
        masks = made_masks(data_dim, list(hidden), levels)
        sizes = [data_dim, *hidden, data_dim * levels]
        self.layers = nn.ModuleList([MaskedLinear(a, b, m) for a, b, m in zip(sizes[:-1], sizes[1:], masks)])

    def to_index(self, x: Tensor) -> Tensor:
        """Pixel values in [-1, 1] on the levels -> integer level 0..levels-1, (B, D)."""
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.data_dim:
            raise ValueError(f"x must hold {self.data_dim} values per example, got {x.shape[1]}")
        return ((x + 1) * (self.levels - 1) / 2).round().clamp(0, self.levels - 1).long()

    def to_value(self, index: Tensor) -> Tensor:
        dtype = self.layers[0].weight.dtype
        return index.to(dtype) * 2 / (self.levels - 1) - 1

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, D, levels) of p(x_d | x_<d) for every d at once."""
        h = self.to_value(self.to_index(x))                     # (B, D) on the grid
        for k, layer in enumerate(self.layers):
            h = layer(h if k == 0 else F.relu(h))
        return h.reshape(h.shape[0], self.data_dim, self.levels)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) = sum_d log softmax(logits_d)[x_d], exact, in nats, (B,)."""
        logp = F.log_softmax(self(x), dim=-1)                   # (B, D, L)
        idx = self.to_index(x)[..., None]                       # (B, D, 1)
        return logp.gather(-1, idx).squeeze(-1).sum(1)          # (B,)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """D passes: pixel d is drawn from p(x_d | x_<d) given the pixels drawn so far; (n, D) in [-1, 1]."""
        n = check_int("n", n, 1)
        w = self.layers[0].weight
        x = torch.zeros(n, self.data_dim, device=w.device, dtype=w.dtype)
        for d in range(self.data_dim):
            probs = F.softmax(self(x)[:, d], dim=-1)            # (n, L)
            idx = torch.multinomial(probs, 1, generator=generator)[:, 0]
            x[:, d] = self.to_value(idx)
        return x


def made_loss(model: MADE, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mean negative log-likelihood in bits per dimension (the training loss is the reported number)."""
    return -model.log_prob(x).mean() / (model.data_dim * math.log(2.0))
