"""A residual MLP whose output is a tangent vector field on the sphere or the torus (chapter 9).

``TangentMLP(manifold)(x, t)`` sees the point through ``manifold.features`` (the unit vector on S^2; cos and sin of
each angle on the torus, so that it is continuous across the edge), adds a time embedding in every residual block
(``MLPBlock``, as ``MLPDenoiser``), and projects its output onto the tangent space at x. It predicts either

* ``'score'``: grad log p_t(x), as out / sqrt(t) — the score of Brownian motion grows like 1/sqrt(t), so the
  network's own output stays O(1) at every time (the manifold analogue of eps-prediction); time enters as
  log t rescaled to [0, 1] over [t_min, t_max];
* ``'velocity'``: a flow-matching vector field, with t in [0, 1] entering as it is.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..checks import check_choice, check_int, check_scalar, check_time
from ..manifolds import Sphere, Torus
from .embeddings import TimeMLP
from .mlp import MLPBlock, init_residual_mlp

MANIFOLDS = {"sphere": Sphere, "torus": Torus}


class TangentMLP(nn.Module):
    """``net(x, t)`` -> a tangent vector at x (B, coords): a score (``prediction='score'``) or a velocity.

    Args:
        manifold: 'sphere' (S^2, points (B, 3)) or 'torus' (T^2, points (B, 2) of angles).
        hidden, depth, time_dim: width, residual blocks and sinusoidal time features, as ``MLPDenoiser``.
        prediction: 'score' or 'velocity'.
        t_min, t_max: the time range the net is trained on (a score net's log-time is rescaled over it).
    """

    def __init__(self, manifold: str = "sphere", hidden: int = 128, depth: int = 3, time_dim: int = 32,
                 prediction: str = "score", t_min: float = 1e-3, t_max: float = 1.0) -> None:
        super().__init__()
        check_choice("manifold", manifold, tuple(MANIFOLDS))
        check_int("hidden", hidden, 1)
        check_int("depth", depth, 0)
        check_int("time_dim", time_dim, 4)
        check_choice("prediction", prediction, ("score", "velocity"))
        t_min = check_scalar("t_min", t_min, 0.0, math.inf, low_inclusive=prediction == "velocity")
        t_max = check_scalar("t_max", t_max, t_min, math.inf, low_inclusive=False)
        self.manifold = MANIFOLDS[manifold]()
        self.prediction, self.t_min, self.t_max = prediction, t_min, t_max
        self.config = {"name": type(self).__name__, "manifold": manifold, "hidden": hidden, "depth": depth,
                       "time_dim": time_dim, "prediction": prediction, "t_min": t_min, "t_max": t_max}
        features = self.manifold.features(torch.zeros(1, self.manifold.coords)).shape[1]  # 3 or 2d
        self.time_mlp = TimeMLP(time_dim, hidden)
        self.linear_in = nn.Linear(features, hidden)
        self.blocks = nn.ModuleList([MLPBlock(hidden, layer_norm=True) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(hidden)
        self.linear_out = nn.Linear(hidden, self.manifold.coords)
        init_residual_mlp(self)                         # as MLPDenoiser: blocks start as the identity, output 0

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> None:
        """Raise a ValueError naming the argument unless ``net(x, t)`` is valid: points on the manifold, times in
        [t_min, t_max], no condition. ``forward`` checks nothing."""
        self.manifold.check_points("x", x)
        check_time("t", torch.as_tensor(t, dtype=torch.float64).reshape(-1), self.t_min, self.t_max)
        if cond is not None:
            raise ValueError("cond must be None: TangentMLP is unconditional")

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])   # (B,)
        if self.prediction == "score":
            tau = (t.log() - math.log(self.t_min)) / math.log(self.t_max / self.t_min)          # (B,) in [0, 1]
        else:
            tau = t
        emb = F.silu(self.time_mlp(tau))                                    # (B, hidden)
        h = self.linear_in(self.manifold.features(x))                       # (B, hidden)
        for block in self.blocks:
            h = block(h, emb)                                               # (B, hidden)
        v = self.manifold.proju(x, self.linear_out(F.silu(self.norm_out(h))))  # (B, coords), tangent at x
        return v / t.sqrt()[:, None] if self.prediction == "score" else v
