"""The two kinds of distilled network: a few-step student and a consistency model.

* ``StepStudent`` is any network distilled for one fixed number of sampler steps K (progressive distillation,
  Salimans & Ho 2022): it predicts what its inner network predicts (v or x0) and remembers K, so a sampler
  with another step count is refused (``diffedu.distill.student_grid``).
* ``ConsistencyModel`` is the consistency function f(x, t) of Song et al. (2023, eq. 5 and Appendix C) with
  its boundary condition built in: on DDPM's linear chain, in the sigma view x~ = x / alpha, sigma~ = sigma / alpha,

      f(x, t) = c_skip(sigma~) x~ + c_out(sigma~) F(x, t),
      c_skip = sigma_d^2 / ((sigma~ - sigma~_min)^2 + sigma_d^2),
      c_out  = sigma_d (sigma~ - sigma~_min) / sqrt(sigma_d^2 + sigma~^2),

  so f(x, t_min) = x~ exactly at the boundary sigma~_min > 0. It predicts x0 ("x0"), so every sampler runs it.
  With sigma_d = 1 and sigma~_min = 0 this is exactly v-prediction: x0 = alpha x - sigma v, F = -v.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..checks import check_int, check_scalar


class StepStudent(nn.Module):
    """A network distilled for a ``steps``-step sampler: ``net(x, t, cond) = inner(x, t, cond)``.

    ``inner`` is the network's ``config`` (so the pair rebuilds from JSON); its prediction must be 'v' or 'x0'
    (eps cannot take one big step: x0 = (x - sigma eps) / alpha amplifies its error by 1 / alpha near t = 1).
    """

    def __init__(self, inner: dict[str, Any], steps: int) -> None:
        super().__init__()
        from . import build_net  # the registry lives in the package __init__

        self.steps = check_int("steps", steps, 1)
        self.inner = build_net(inner)
        if self.inner.prediction not in ("v", "x0"):
            raise ValueError(f"a step student must predict 'v' or 'x0', got inner prediction "
                             f"{self.inner.prediction!r}")
        self.prediction = self.inner.prediction
        self.config = {"name": "StepStudent", "inner": self.inner.config, "steps": self.steps}

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> None:
        self.inner.check_inputs(x, t, cond)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.inner(x, t, cond)


class ConsistencyModel(nn.Module):
    """f(x, t) = c_skip x~ + c_out F(x, t) on DDPM's linear chain (module docstring); predicts x0.

    ``inner`` (a config) is F, shown the chain's own x (already scaled: x = alpha x~) and t; ``sigma_min`` is the
    boundary sigma~ (> 0; default: the chain's first step); ``N``, ``beta_start``, ``beta_end`` name the chain.
    """

    prediction = "x0"

    def __init__(self, inner: dict[str, Any], sigma_min: float | None = None, sigma_data: float = 0.5,
                 N: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        super().__init__()
        from . import build_net
        from ..schedules import linear_schedule

        chain = linear_schedule(N, beta_start, beta_end)
        first = math.sqrt(float(chain.betas[1]) / (1 - float(chain.betas[1])))  # sigma~ at the first step
        sigma_min = first if sigma_min is None else sigma_min
        self.sigma_min = check_scalar("sigma_min", sigma_min, 0.0, math.inf, low_inclusive=False)
        self.sigma_data = check_scalar("sigma_data", sigma_data, 0.0, math.inf, low_inclusive=False)
        self.inner = build_net(inner)
        self.register_buffer("log_alpha_bars", torch.log(chain.alpha_bars), persistent=False)  # (N + 1,) float64
        self.N = chain.N
        self.config = {"name": "ConsistencyModel", "inner": self.inner.config, "sigma_min": self.sigma_min,
                       "sigma_data": self.sigma_data, "N": N, "beta_start": beta_start, "beta_end": beta_end}

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> None:
        self.inner.check_inputs(x, t, cond)

    def sigma_tilde(self, t: torch.Tensor) -> torch.Tensor:
        """sigma~(t) on the chain (log alpha_bar linear between its points, as DiscreteSchedule): no host sync."""
        pos = t.to(torch.float64).clamp(0, 1) * self.N                      # (B,)
        lo = pos.floor().clamp(max=self.N - 1).long()
        w = pos - lo
        log_ab = (1 - w) * self.log_alpha_bars[lo] + w * self.log_alpha_bars[lo + 1]
        return torch.sqrt(torch.expm1(-log_ab))                             # sqrt((1 - a) / a)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype).expand(x.shape[0])    # (B,)
        s = self.sigma_tilde(t).reshape(-1, *([1] * (x.dim() - 1)))                # (B, 1, ...)
        d, s_min = self.sigma_data, self.sigma_min
        c_skip = d ** 2 / ((s - s_min) ** 2 + d ** 2)
        c_out = d * (s - s_min) / torch.sqrt(d ** 2 + s ** 2)
        x_tilde = x * torch.sqrt(1 + s ** 2)                                # x / alpha
        return (c_skip * x_tilde).to(x.dtype) + c_out.to(x.dtype) * self.inner(x, t, cond)
