"""Mixed precision for sampling: any net of the book evaluated under ``torch.autocast``.

``Autocast(net)`` is ``net(x, t, cond)`` with its convolutions and matmuls in bfloat16 (or float16) and its output
returned in x's dtype, so a sampler's state and its update arithmetic stay float32 (the schedules' float64 values
are cast as usual). Every sampler runs it unchanged, e.g. ``ddpm_sample(Autocast(net), x_T, schedule, grid)``.
Training has the same switch in ``diffedu.train.train(..., autocast=torch.bfloat16)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

DTYPES = (torch.bfloat16, torch.float16)


class Autocast(nn.Module):
    """``model`` under ``torch.autocast(x.device.type, dtype)``, output cast back to x's dtype.

    Attributes the samplers and chapters read (``prediction``, ``check_inputs``, ``tokenize``, ``null_label``...)
    are those of ``model``.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be torch.bfloat16 or torch.float16, got {dtype!r}")
        self.model = model
        self.dtype = dtype

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            out = self.model(x, t) if cond is None else self.model(x, t, cond)  # (B, ...), low precision
        return out.to(x.dtype)                                                # (B, ...) in x's dtype

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)
