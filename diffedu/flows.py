"""A normalizing flow with affine coupling layers (RealNVP; Dinh et al. 2017): exact likelihood in one pass.

An invertible map z = f(x) with a tractable Jacobian turns a simple base density into a model density by the
change of variables (Dinh et al. eq. 3):

    log p(x) = log N(f(x); 0, I) + log |det df/dx|.

A coupling layer keeps one part x_a of the coordinates and moves the other by an affine map that depends only
on x_a (eq. 4-6):  y_a = x_a,  y_b = x_b * exp(s(x_a)) + t(x_a),  so log |det| = sum s(x_a), and the inverse is
x_b = (y_b - t(x_a)) * exp(-s(x_a)). Layers alternate which half moves. ``bits_per_dim`` reads a flow on
images with discrete levels the way ``likelihood.bits_per_dim`` reads the diffusion ODE (uniform
dequantisation), so the two are comparable.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .checks import check_finite, check_int

Tensor = torch.Tensor


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, d_out))


class AffineCoupling(nn.Module):
    """y_a = x_a, y_b = x_b exp(s(x_a)) + t(x_a); ``mask`` (D,) is 1 on the kept coordinates a."""

    def __init__(self, mask: Tensor, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mask", mask.float())
        d = mask.numel()
        self.net = _mlp(d, hidden, 2 * d)                  # x_a -> (s, t)
        nn.init.zeros_(self.net[-1].weight)                # starts as the identity
        nn.init.zeros_(self.net[-1].bias)

    def scale_shift(self, x_a: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.net(x_a).chunk(2, dim=1)               # (B, D) each
        s = torch.tanh(s) * (1 - self.mask)                # bounded, 0 on a
        return s, t * (1 - self.mask)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.scale_shift(x * self.mask)
        y = x * self.mask + (1 - self.mask) * (x * s.exp() + t)
        return y, s.sum(dim=1)                             # (B, D), log|det|

    def inverse(self, y: Tensor) -> Tensor:
        s, t = self.scale_shift(y * self.mask)
        return y * self.mask + (1 - self.mask) * (y - t) * (-s).exp()


class CouplingFlow(nn.Module):
    """RealNVP on vectors (B, D) or images (B, C, H, W) (flattened): ``layers`` couplings, alternating masks.

    ``log_prob(x)`` is exact; ``sample(n)`` inverts the layers from base noise. The masks alternate between
    the even and the odd coordinates (a checkerboard on images with odd width, halves of a pair in 2-D)."""

    def __init__(self, data_dim: int = 2, layers: int = 6, hidden: int = 64) -> None:
        super().__init__()
        check_int("data_dim", data_dim, 2)
        check_int("layers", layers, 1)
        check_int("hidden", hidden, 1)
        self.data_dim = data_dim
        self.config = {"name": type(self).__name__, "data_dim": data_dim, "layers": layers, "hidden": hidden}
        even = torch.arange(data_dim) % 2 == 0
        self.layers = nn.ModuleList([AffineCoupling(even if k % 2 == 0 else ~even, hidden) for k in range(layers)])

    def _flat(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.data_dim:
            raise ValueError(f"x must hold {self.data_dim} values per example, got {x.shape[1]}")
        return x

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """z = f(x) (B, D) and log |det df/dx| (B,)."""
        z, log_det = self._flat(x), x.new_zeros(x.shape[0])
        for layer in self.layers:
            z, ld = layer(z)
            log_det = log_det + ld
        return z, log_det

    def inverse(self, z: Tensor) -> Tensor:
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) = log N(f(x); 0, I) + log|det df/dx|  (Dinh et al. eq. 3), in nats, (B,)."""
        z, log_det = self(x)
        base = -0.5 * (z ** 2).sum(1) - 0.5 * self.data_dim * math.log(2 * math.pi)
        return base + log_det

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        n = check_int("n", n, 1)
        p = next(self.parameters())
        z = torch.randn(n, self.data_dim, generator=generator, device=p.device, dtype=p.dtype)
        return self.inverse(z)


def flow_nll_loss(flow: CouplingFlow, x: Tensor, generator: torch.Generator | None = None,
                  dequantize: float = 0.0) -> Tensor:
    """Mean negative log-likelihood (nats per example); ``dequantize`` = bin width Delta adds U(-Delta/2, Delta/2)
    noise (Theis et al. 2016), the right training signal for data on discrete levels."""
    if dequantize > 0:
        x = x + dequantize * (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 0.5)
    return -flow.log_prob(x).mean()


@torch.no_grad()
def bits_per_dim(log_prob: Tensor, dim: int, levels: int) -> Tensor:
    """Bits per dimension of images in [-1, 1] on ``levels`` values from a dequantised log-density (nats):
    -log P(x) <= -log p(x + u) - D log Delta with Delta = 2 / (levels - 1) (Theis et al. 2016), over D ln 2."""
    check_finite("log_prob", log_prob)
    check_int("levels", levels, 2)
    delta = 2.0 / (levels - 1)
    return (-log_prob - dim * math.log(delta)) / (dim * math.log(2.0))
