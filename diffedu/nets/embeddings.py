"""How a denoising network is told the time t and the class label.

Time enters every network the way it does in DDPM (Ho et al., 2020, Appendix B): t goes through the Transformer's
sinusoidal position embedding (Vaswani et al., 2017, Sec. 3.5) and then a small MLP, and the resulting vector is
added inside every residual block. A class label enters through a learned ``nn.Embedding`` added to that vector
(Dhariwal & Nichol, 2021); its last row is reserved for the "null" label that classifier-free guidance uses.

``check_time_and_labels`` is where every network's ``check_inputs`` checks the library's contract
``net(x, t, cond=None)``; ``forward`` itself makes no checks (a sampler checks its inputs once, at its entry).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..checks import check_batch_time, check_finite, check_int, check_scalar, check_time

# What a network can be trained to predict (eps, x0, v or the score) is defined once, in diffedu.predictions,
# next to the converter that turns any of them into the others.
from ..predictions import PREDICTIONS  # noqa: E402


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of continuous time t in [0, 1] (Vaswani et al., 2017, Sec. 3.5; Ho et al., 2020).

    Time is first scaled to s = 1000 t, so t = i / 1000 gives exactly the features DDPM's code gives its integer
    step i. With half = dim / 2 and the frequencies of DDPM's code, geometrically spaced from 1 to 1/max_period,

        omega_k = max_period ** (-k / (half - 1)),   k = 0, ..., half - 1,
        emb(t)  = [sin(s omega_0), ..., sin(s omega_{half-1}), cos(s omega_0), ..., cos(s omega_{half-1})].

    Convention: first half sines, second half cosines (DDPM's order; the Transformer interleaves them, which is
    the same features in another order).

    Args:
        t: times, shape (B,) or () (a 0-d tensor gives a (dim,) result).
        dim: embedding size, even and at least 4.
        max_period: the longest period, 2 pi max_period, in units of s.

    Returns:
        (B, dim) tensor, float64 if ``t`` is float64 and float32 otherwise.
    """
    check_int("dim", dim, 4)
    if dim % 2:
        raise ValueError(f"dim must be even (half sines, half cosines), got {dim}")
    check_scalar("max_period", max_period, 1.0, math.inf, low_inclusive=False)
    check_finite("t", t)
    if t.dim() > 1:
        raise ValueError(f"t must be a scalar or have shape (B,), got {tuple(t.shape)}")
    return _sinusoidal(t, dim, max_period)


def _sinusoidal(t: torch.Tensor, dim: int, max_period: float) -> torch.Tensor:
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32  # float32 at least, even for half t
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=dtype)                    # (half,)
    omega = torch.exp(-math.log(max_period) * k / (half - 1))               # (half,)
    angles = 1000.0 * t.to(dtype)[..., None] * omega                        # (B, half)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)        # (B, dim)


class SinusoidalEmbedding(nn.Module):
    """Module form of :func:`sinusoidal_embedding` (no parameters): (B,) times -> (B, dim) features."""

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        check_int("dim", dim, 4)
        if dim % 2:
            raise ValueError(f"dim must be even (half sines, half cosines), got {dim}")
        self.dim = dim
        self.max_period = check_scalar("max_period", max_period, 1.0, math.inf, low_inclusive=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return _sinusoidal(t, self.dim, self.max_period)  # (B, dim); the net's check_inputs checked t

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period}"


class TimeMLP(nn.Module):
    """t -> sinusoidal embedding -> Linear -> SiLU -> Linear: the time vector of DDPM (Ho et al., 2020, `temb`).

    Its output has no final activation: each residual block applies SiLU and its own projection to it.
    """

    def __init__(self, time_dim: int, emb_dim: int) -> None:
        super().__init__()
        check_int("emb_dim", emb_dim, 1)
        self.embedding = SinusoidalEmbedding(time_dim)
        self.linear_1 = nn.Linear(time_dim, emb_dim)
        self.linear_2 = nn.Linear(emb_dim, emb_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(t).to(self.linear_1.weight.dtype)  # (B, time_dim), in the weights' dtype
        emb = F.silu(self.linear_1(emb))                        # (B, emb_dim)
        return self.linear_2(emb)                               # (B, emb_dim)


def check_time_and_labels(x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None,
                          num_classes: int | None) -> None:
    """Check the contract's ``t`` and ``cond`` against a batch ``x`` (every net's ``check_inputs`` calls this).

    ``t`` is continuous time in [0, 1]: a floating-point tensor of shape (B,), or a scalar (a 0-d tensor, shape
    (1,), or a Python float) used for the whole batch. Integer tensors are refused: they are usually DDPM step
    indices i that should have been divided by the number of steps.

    ``cond`` is None or a LongTensor of class ids, shape (B,), in [0, num_classes]; id ``num_classes`` is the null
    label (Ho & Salimans, 2022), and ``cond=None`` on a class-conditional net means the null label for every row.
    An unconditional net (``num_classes=None``) accepts only ``cond=None``.
    """
    B = x.shape[0]
    if isinstance(t, (float, int)) and not isinstance(t, bool):
        t = torch.tensor(float(t))
    if not torch.is_tensor(t):
        raise ValueError(f"t must be a float tensor of times in [0, 1], got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"t must be a floating-point tensor of continuous times in [0, 1], got dtype {t.dtype} "
                         "(integer step indices i must be divided by the number of steps)")
    check_batch_time("x", x, "t", t)
    check_time("t", t)
    if num_classes is None:
        if cond is not None:
            raise ValueError("cond must be None for an unconditional net (built with num_classes=None)")
        return
    if cond is None:
        return
    if not torch.is_tensor(cond) or cond.is_floating_point() or cond.dtype == torch.bool:
        raise ValueError(f"cond must be None or an integer tensor of class ids, got {cond!r:.60}")
    if cond.shape != (B,):
        raise ValueError(f"cond must have shape ({B},) to match x of shape {tuple(x.shape)}, got {tuple(cond.shape)}")
    if B and (int(cond.min()) < 0 or int(cond.max()) > num_classes):
        raise ValueError(f"cond ids must lie in [0, {num_classes}] ({num_classes} is the null label), got values in "
                         f"[{int(cond.min())}, {int(cond.max())}]")


def time_and_labels(x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None,
                    num_classes: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """t as (B,) on x's device, and the labels (B,) (the null label for ``cond=None`` on a class-conditional net)
    or None. No checks: ``check_time_and_labels`` is the entry point's."""
    B = x.shape[0]
    t = torch.as_tensor(t, device=x.device).reshape(-1).expand(B)  # (B,)
    if num_classes is None:
        return t, None
    if cond is None:
        return t, torch.full((B,), num_classes, dtype=torch.long, device=x.device)  # (B,) all null labels
    return t, cond.to(device=x.device, dtype=torch.long)
