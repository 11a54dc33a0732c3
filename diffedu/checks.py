"""Input validation shared by the whole library.

Bad input must give a clear ``ValueError`` naming the argument and the allowed range, never a silent wrong answer.
These helpers keep those messages uniform; every public function calls them on its arguments.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise if tensor ``x`` holds a NaN or an infinity."""
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_floating_point() and not bool(torch.isfinite(x.detach()).all()):
        raise ValueError(f"{name} contains NaN or inf values; it must be finite")


def check_scalar(name: str, value: float, low: float = -math.inf, high: float = math.inf,
                 low_inclusive: bool = True, high_inclusive: bool = True) -> float:
    """Raise unless ``value`` is a finite real number inside the interval [low, high] (ends as flagged)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    lo_ok = v >= low if low_inclusive else v > low
    hi_ok = v <= high if high_inclusive else v < high
    if math.isnan(v) or not (lo_ok and hi_ok):
        lb = "[" if low_inclusive else "("
        rb = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must lie in {lb}{low}, {high}{rb}, got {value!r}")
    return v


def check_int(name: str, value: int, low: int, high: int | None = None) -> int:
    """Raise unless ``value`` is an integer with low <= value (<= high)."""
    is_int_tensor = torch.is_tensor(value) and value.numel() == 1 and not value.is_floating_point()
    if isinstance(value, bool) or not (isinstance(value, int) or is_int_tensor):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if v < low or (high is not None and v > high):
        raise ValueError(f"{name} must be an integer in [{low}, {high if high is not None else 'inf'}], "
                         f"got {v}")
    return v


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_time(name: str, t: torch.Tensor, low: float = 0.0, high: float = 1.0) -> None:
    """Raise unless every entry of the time tensor ``t`` is finite and inside [low, high]."""
    check_finite(name, t)
    t = t.detach()
    if t.numel() and (float(t.min()) < low or float(t.max()) > high):
        raise ValueError(f"{name} must lie in [{low}, {high}], got values in "
                         f"[{float(t.min()):.4g}, {float(t.max()):.4g}]")


def check_start(name: str, x: torch.Tensor) -> torch.Tensor:
    """Raise unless ``x`` is where a sampler can start: a finite floating-point tensor (B, ...) with B >= 1.

    Integer tensors are refused: noise must be drawn in floating point (a ``long`` x_T would be silently rounded).
    """
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, ...), got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (float32 or float64), got dtype {x.dtype}")
    if x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape (B, ...) with a batch dimension (B >= 1) and at least one data "
                         f"dimension, got {tuple(x.shape)}")
    check_finite(name, x)
    return x


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise unless tensors ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def check_batch_time(x_name: str, x: torch.Tensor, t_name: str, t: torch.Tensor) -> None:
    """Raise unless ``t`` is a scalar or a 1-D tensor with one time per row of ``x``."""
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, x.shape[0])):
        raise ValueError(f"{t_name} must be a scalar or have shape ({x.shape[0]},) to match {x_name} of shape "
                         f"{tuple(x.shape)}, got {tuple(t.shape)}")
