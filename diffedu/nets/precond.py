"""Input scaling for variance-exploding models (Karras et al. 2022, Table 1, c_in).

Under a VE process x_t = x0 + sigma * eps the network's input grows from the data's scale to sigma_max (tens),
which a network trained on all noise levels at once handles badly. EDM's fix is to feed it

    c_in(sigma) * x_t,    c_in(sigma) = 1 / sqrt(sigma^2 + sigma_data^2),

an input of roughly unit variance at every noise level. (With sigma_data = 1 that is exactly the VP process in
disguise: x_t / sqrt(1 + sigma^2) is the VP sample with alpha = 1 / sqrt(1 + sigma^2).)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..checks import check_scalar


class InputScaled(nn.Module):
    """``net(x, t, cond) = inner(c_in(sigma(t)) * x, t, cond)`` with the VE sigma(t) = s_min (s_max / s_min)^t.

    ``inner`` is any network (given as its ``config``, so the pair rebuilds from JSON); the prediction type is
    the inner network's. ``sigma_min`` and ``sigma_max`` must be the ``VE`` schedule the model is trained with.
    """

    def __init__(self, inner: dict[str, Any], sigma_min: float, sigma_max: float, sigma_data: float = 0.5) -> None:
        super().__init__()
        from . import build_net  # the registry lives in the package __init__

        self.sigma_min = check_scalar("sigma_min", sigma_min, 0.0, math.inf, low_inclusive=False)
        self.sigma_max = check_scalar("sigma_max", sigma_max, self.sigma_min, math.inf, low_inclusive=False)
        self.sigma_data = check_scalar("sigma_data", sigma_data, 0.0, math.inf, low_inclusive=False)
        self.inner = build_net(inner)
        self.prediction = self.inner.prediction
        self.config = {"name": "InputScaled", "inner": self.inner.config, "sigma_min": self.sigma_min,
                       "sigma_max": self.sigma_max, "sigma_data": self.sigma_data}

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> None:
        """The inner network's checks (once, at a sampler's entry)."""
        self.inner.check_inputs(x, t, cond)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
        sigma = self.sigma_min * (self.sigma_max / self.sigma_min) ** t   # (B,) or ()
        c_in = (sigma ** 2 + self.sigma_data ** 2).rsqrt()                # (B,) or ()
        if c_in.dim() == 1:
            c_in = c_in.reshape(-1, *([1] * (x.dim() - 1)))               # (B, 1, ...)
        return self.inner(c_in * x, t, cond)
