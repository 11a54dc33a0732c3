"""A residual MLP denoiser for low-dimensional toy data (2-D mixtures, moons, spirals).

The network is the fully connected analogue of the DDPM UNet (Ho et al., 2020): the input is lifted to ``hidden``
features, passed through ``depth`` residual blocks, each of which adds the time (and class) embedding inside
its branch, and projected back to the data dimension. As in DDPM, the last layer of every residual branch and the
output layer start at zero, so every block starts as the identity and the net's first prediction is exactly 0.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..checks import check_choice, check_finite, check_int
from .embeddings import PREDICTIONS, TimeMLP, check_time_and_labels, time_and_labels


class MLPBlock(nn.Module):
    """h + W_2 SiLU(W_1 SiLU(LN(h)) + emb): a pre-activation residual block with the embedding added inside."""

    def __init__(self, hidden: int, layer_norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden) if layer_norm else nn.Identity()
        self.linear_1 = nn.Linear(hidden, hidden)
        self.linear_2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        r = self.linear_1(F.silu(self.norm(h)))   # (B, hidden)
        r = self.linear_2(F.silu(r + emb))        # (B, hidden); emb: time (+ class) embedding, (B, hidden)
        return h + r                              # (B, hidden)


def init_residual_mlp(net: nn.Module) -> None:
    """Xavier-uniform weights and zero biases (DDPM's choice), then zeros for the last layer of every residual
    branch (``net.blocks``: each starts as the identity) and for the output layer ``net.linear_out``."""
    for module in net.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    for block in net.blocks:
        nn.init.zeros_(block.linear_2.weight)
    nn.init.zeros_(net.linear_out.weight)


class MLPDenoiser(nn.Module):
    """Residual MLP ``net(x, t, cond=None)`` for x of shape (B, data_dim), time t in [0, 1].

    Args:
        data_dim: dimension D of the data.
        hidden: width of the residual stream and of the time embedding.
        depth: number of residual blocks.
        time_dim: size of the sinusoidal time features (even, >= 4).
        num_classes: None for an unconditional net; otherwise labels 0..num_classes-1, plus the null label
            ``num_classes`` used for classifier-free guidance (``cond=None`` means null for every row).
        prediction: what the output means: "eps", "x0", "v" or "score".
        layer_norm: put a LayerNorm at the start of every residual branch and before the output layer. Keep it:
            without it the same net learns the 8-Gaussians toy far worse in 2000 steps.
    """

    def __init__(self, data_dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 64,
                 num_classes: int | None = None, prediction: str = "eps", layer_norm: bool = True) -> None:
        super().__init__()
        check_int("data_dim", data_dim, 1)
        check_int("hidden", hidden, 1)
        check_int("depth", depth, 0)
        check_int("time_dim", time_dim, 4)
        if time_dim % 2:
            raise ValueError(f"time_dim must be even, got {time_dim}")
        if num_classes is not None:
            check_int("num_classes", num_classes, 1)
        check_choice("prediction", prediction, PREDICTIONS)
        if not isinstance(layer_norm, bool):
            raise ValueError(f"layer_norm must be True or False, got {layer_norm!r}")
        self.data_dim = data_dim
        self.num_classes = num_classes
        self.prediction = prediction
        self.config = {"name": type(self).__name__, "data_dim": data_dim, "hidden": hidden, "depth": depth,
                       "time_dim": time_dim, "num_classes": num_classes, "prediction": prediction,
                       "layer_norm": layer_norm}

        self.time_mlp = TimeMLP(time_dim, hidden)
        # Row num_classes is the null label of classifier-free guidance.
        self.class_embedding = nn.Embedding(num_classes + 1, hidden) if num_classes is not None else None
        self.linear_in = nn.Linear(data_dim, hidden)
        self.blocks = nn.ModuleList([MLPBlock(hidden, layer_norm) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(hidden) if layer_norm else nn.Identity()
        self.linear_out = nn.Linear(hidden, data_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """All initialisation in one place (``init_residual_mlp``): the first prediction is exactly 0, the mean of
        the eps target, so the loss starts near E|eps|^2."""
        init_residual_mlp(self)

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> None:
        """Raise a ValueError naming the argument unless ``net(x, t, cond)`` is a valid call. Samplers call this
        once, at their entry; ``forward`` checks nothing, so it makes no host sync."""
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got "
                             f"{f'dtype {x.dtype}' if torch.is_tensor(x) else type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.data_dim:
            raise ValueError(f"x must have shape (B, {self.data_dim}), got {tuple(x.shape)}")
        check_finite("x", x)
        check_time_and_labels(x, t, cond, self.num_classes)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict ``self.prediction`` for noisy points x (B, D) at times t (B,) or (); returns (B, D)."""
        t, cond = time_and_labels(x, t, cond, self.num_classes)  # (B,), (B,) or None

        emb = self.time_mlp(t)                                  # (B, hidden)
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(cond)              # (B, hidden)
        emb = F.silu(emb)                                       # (B, hidden), shared by all blocks

        h = self.linear_in(x)                                   # (B, hidden)
        for block in self.blocks:
            h = block(h, emb)                                   # (B, hidden)
        return self.linear_out(F.silu(self.norm_out(h)))        # (B, D)
