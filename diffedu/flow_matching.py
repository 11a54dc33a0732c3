"""Flow matching (Lipman et al. 2023; Liu et al. 2022): regress a velocity, then integrate an ODE.

Conditional flow matching with the straight ("optimal-transport") path draws t ~ U(0, 1), eps ~ N(0, I) and

    x_t = (1 - t) x0 + t eps,        target u = d x_t / dt = eps - x0,                  (Lipman et al. eq. 23)

and trains a net u_theta(x_t, t) by least squares. Sampling integrates dx/dt = u_theta(x, t) from t = 1 (noise)
to t = 0 (data). In the book's language this is nothing new:

* x_t = alpha x0 + sigma eps with alpha = 1 - t, sigma = t is a noise schedule (``FlowMatchingSchedule``);
* the regression's optimum is u*(x, t) = E[eps - x0 | x_t] = (x_t - E[x0 | x_t]) / t: a denoiser in disguise
  (``FlowMatchingModel`` hands the library x0-hat = x_t - t u), and
* dx/dt = u* is exactly the probability-flow ODE dx/dt = f x - g^2 score / 2 of that schedule (Song et al. 2021,
  eq. 13), so every sampler of the library runs a flow-matching model, and an Euler step of dx/dt = u is a DDIM
  step: x_s = (s / t) x_t + (1 - s / t) x0-hat. The tests check all three on the exact mixture model.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .checks import check_finite, check_int
from .predictions import predict_x0_eps
from .schedules import NoiseSchedule, as_time, broadcast_to

Tensor = torch.Tensor


class FlowMatchingSchedule(NoiseSchedule):
    """alpha(t) = 1 - t, sigma(t) = t: the straight path between data (t = 0) and noise (t = 1).

    Not variance preserving (alpha^2 + sigma^2 = 1 - 2t + 2t^2 < 1 inside); sigma~ = t / (1 - t)."""

    variance_preserving = False

    def __repr__(self) -> str:
        return "FlowMatchingSchedule()"

    def alpha(self, t: Tensor | float) -> Tensor:
        return 1.0 - as_time(t)

    def sigma(self, t: Tensor | float) -> Tensor:
        return as_time(t)


class FlowMatchingModel(nn.Module):
    """A velocity net u(x, t) seen by the library as an x0-predictor: x0-hat = x - t u  (x_t = (1-t) x0 + t eps).

    ``inner`` is any ``net(x, t, cond)`` config (an MLPDenoiser, a UNet); its raw output is read as u."""

    prediction = "x0"

    def __init__(self, inner: dict) -> None:
        from .nets import build_net  # here: nets registers this class

        super().__init__()
        self.inner = build_net(inner)
        self.config = {"name": type(self).__name__, "inner": dict(self.inner.config)}

    def velocity(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.inner(x, t, cond)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return x - broadcast_to(t, x) * self.velocity(x, t, cond)   # x0-hat


def cfm_loss(model: FlowMatchingModel, x0: Tensor,
             generator: torch.Generator | None = None) -> Tensor:
    """Conditional flow matching: E ||u(x_t, t) - (eps - x0)||^2."""
    t = torch.rand(x0.shape[0], generator=generator, device=x0.device,
                   dtype=x0.dtype)                         # (B,)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device,
                      dtype=x0.dtype)                      # (B, ...)
    tb = broadcast_to(t, x0)                               # (B, 1, ...)
    x_t = (1 - tb) * x0 + tb * eps                         # the straight path
    u = model.velocity(x_t, t)                             # (B, ...)
    return ((u - (eps - x0)) ** 2).mean()


def velocity(model: Callable, x: Tensor, t: float) -> Tensor:
    """u(x, t) = (x - x0-hat) / t for any model of the library under ``FlowMatchingSchedule`` (t in (0, 1])."""
    if not 0.0 < t <= 1.0:
        raise ValueError(f"t must lie in (0, 1], got {t}")
    x0_hat, _ = predict_x0_eps(model, x, t, FlowMatchingSchedule())
    return (x - x0_hat) / t


@torch.no_grad()
def flow_sample(model: Callable, x_T: Tensor, times: Tensor,
                method: str = "euler") -> Tensor:
    """Integrate dx/dt = u(x, t) along ``times`` (decreasing, from t_max <= 1 to t_min >= 0)."""
    check_finite("x_T", x_T)
    t = [float(v) for v in as_time(times)]
    if len(t) < 2 or any(b >= a for a, b in zip(t, t[1:])):
        raise ValueError(f"times must hold at least 2 decreasing values, got {t}")
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    x = x_T
    for k in range(len(t) - 1):
        h = t[k + 1] - t[k]                                # < 0
        u = velocity(model, x, t[k])
        x_next = x + h * u                                 # Euler
        if method == "heun" and t[k + 1] > 0:
            x_next = x + h * (u + velocity(model, x_next, t[k + 1])) / 2
        x = x_next
    return x


def flow_times(steps: int, t_max: float = 1.0, t_min: float = 0.0) -> Tensor:
    """``steps`` + 1 evenly spaced times from t_max down to t_min (float64)."""
    steps = check_int("steps", steps, 1)
    return torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)
