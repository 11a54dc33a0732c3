"""The diffusion transformer, DiT (Peebles & Xie, 2023), at the book's scale.

``DiT.forward`` from top to bottom:

1. patchify: the input (B, C, H, W) is cut into p x p patches, each flattened and projected to a token of width d,
   giving N = (H / p)(W / p) tokens (B, N, d) (the ViT input of Dosovitskiy et al., 2021);
2. fixed 2-D sine-cosine positions are added (half of d encodes the row, half the column);
3. the conditioning vector c = time embedding + class embedding (the last class id is the null label of
   classifier-free guidance) enters every Transformer block in one of four ways (Sec. 3.2 of the paper):
   ``"adaLN-Zero"`` (default: LayerNorm's scale and shift, and a gate on every residual branch, regressed from c;
   the gates start at zero so every block starts as the identity), ``"adaLN"`` (scale and shift only),
   ``"in-context"`` (c's two vectors appended to the sequence as two extra tokens) or ``"cross-attention"`` (the
   tokens attend to the two-token sequence [t, y] in an extra attention layer after self-attention);
4. a final LayerNorm (modulated by c in the adaLN variants) and a linear layer map every token back to a p x p x C
   patch, initialised to zero so the untrained net outputs 0; unpatchify restores (B, C, H, W).

Sizes: H and W must be divisible by p. :func:`diffedu.utils.forward_gflops` counts a forward pass's Gflops.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..checks import check_choice, check_finite, check_int, check_scalar
from .embeddings import PREDICTIONS, TimeMLP, check_time_and_labels, time_and_labels
from .unet import attention

CONDITIONINGS = ("adaLN-Zero", "adaLN", "in-context", "cross-attention")


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p * p * C) with N = (H / p)(W / p), patches in row-major order."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p)      # (B, C, H/p, p, W/p, p)
    x = x.permute(0, 2, 4, 3, 5, 1)                # (B, H/p, W/p, p, p, C)
    return x.reshape(B, (H // p) * (W // p), p * p * C)   # (B, N, p p C)


def unpatchify(tokens: torch.Tensor, p: int, C: int, H: int, W: int) -> torch.Tensor:
    """(B, N, p * p * C) -> (B, C, H, W): the inverse of :func:`patchify`."""
    B = tokens.shape[0]
    x = tokens.reshape(B, H // p, W // p, p, p, C)                # (B, H/p, W/p, p, p, C)
    x = x.permute(0, 5, 1, 3, 2, 4)                               # (B, C, H/p, p, W/p, p)
    return x.reshape(B, C, H, W)


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Transformer positions (Vaswani et al., 2017, Sec. 3.5): [sin(pos w_k), cos(pos w_k)], w_k = 10000^(-2k/dim),
    k < dim / 2. positions (N,) -> (N, dim)."""
    k = torch.arange(dim // 2, dtype=torch.float64)
    omega = 10000.0 ** (-2.0 * k / dim)                           # (dim / 2,)
    angles = positions.double()[:, None] * omega                  # (N, dim / 2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D positions of a grid x grid patch grid, (grid * grid, dim): the first dim / 2 features encode the
    row, the last dim / 2 the column (as in DiT, following MAE). dim must be divisible by 4."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, rows.flatten()), sincos_1d(dim // 2, cols.flatten())],
                     dim=1).float()                                # (grid^2, dim)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, N, d) normalised, then scaled by (1 + scale) and shifted, scale and shift (B, d) from c."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class Attention(nn.Module):
    """Multi-head attention softmax(Q K^T / sqrt(d_h)) V (Vaswani et al., 2017, Eq. 1) of tokens x (B, N, d) to
    a context (B, M, d) (self-attention when context is x). ``record = True`` keeps the weights of the last call
    in ``last_weights`` (B, heads, N, M); ``fused`` runs torch's fused kernel (no weights)."""

    fused = False

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_q, self.to_kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.record = False
        self.last_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, N, d = x.shape
        h = self.num_heads
        q = self.to_q(x).reshape(B, N, h, d // h).transpose(1, 2)                   # (B, h, N, d_h)
        k, v = self.to_kv(context).reshape(B, -1, 2, h, d // h).permute(2, 0, 3, 1, 4)  # (B, h, M, d_h) each
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)                            # (B, h, N, d_h)
        else:
            out, weights = attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
            out = out.transpose(-1, -2)                                              # (B, h, N, d_h)
            self.last_weights = weights.detach() if self.record else None            # (B, h, N, M)
        return self.proj(out.transpose(1, 2).reshape(B, N, d))                        # (B, N, d)


class DiTBlock(nn.Module):
    """One Transformer block x + Attn(LN(x)) then x + MLP(LN(x)), conditioned on c (B, d) as ``conditioning``
    says. adaLN-Zero (Peebles & Xie, 2023, Sec. 3.2): (shift, scale, gate) for each branch regressed from c,
    x = x + gate_1 * Attn(modulate(LN(x), shift_1, scale_1)), likewise for the MLP; the regression is zero at
    initialisation, so the block starts as the identity."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, conditioning: str) -> None:
        super().__init__()
        self.conditioning = conditioning
        adaptive = conditioning in ("adaLN-Zero", "adaLN")
        self.norm_1 = nn.LayerNorm(dim, elementwise_affine=not adaptive, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm_2 = nn.LayerNorm(dim, elementwise_affine=not adaptive, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        if adaptive:  # (shift, scale, gate) x 2 for adaLN-Zero, (shift, scale) x 2 for adaLN
            self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, (6 if conditioning == "adaLN-Zero" else 4) * dim))
        if conditioning == "cross-attention":
            self.norm_c = nn.LayerNorm(dim, eps=1e-6)
            self.cross = Attention(dim, num_heads)

    def forward(self, x: torch.Tensor, c: torch.Tensor,
                c_tokens: torch.Tensor) -> torch.Tensor:
        """x (B, N, d) tokens, c (B, d) the conditioning vector, c_tokens (B, 2, d) its two parts [t, y]."""
        if self.conditioning == "adaLN-Zero":
            (shift_1, scale_1, gate_1,
             shift_2, scale_2, gate_2) = self.ada(c).chunk(6, dim=1)  # (B, d)
            h = modulate(self.norm_1(x), shift_1, scale_1)      # (B, N, d)
            x = x + gate_1[:, None] * self.attn(h, h)           # (B, N, d)
            h = modulate(self.norm_2(x), shift_2, scale_2)      # (B, N, d)
            return x + gate_2[:, None] * self.mlp(h)            # (B, N, d)
        if self.conditioning == "adaLN":
            shift_1, scale_1, shift_2, scale_2 = self.ada(c).chunk(4, dim=1)
            h = modulate(self.norm_1(x), shift_1, scale_1)      # (B, N, d)
            x = x + self.attn(h, h)                             # (B, N, d)
            h = modulate(self.norm_2(x), shift_2, scale_2)      # (B, N, d)
            return x + self.mlp(h)                              # (B, N, d)
        h = self.norm_1(x)                                      # (B, N, d)
        x = x + self.attn(h, h)                                 # (B, N, d)
        if self.conditioning == "cross-attention":  # keys and values: [t, y]
            x = x + self.cross(self.norm_c(x), c_tokens)        # (B, N, d)
        return x + self.mlp(self.norm_2(x))                     # (B, N, d)


class DiT(nn.Module):
    """Diffusion transformer ``net(x, t, cond=None)`` for inputs (B, in_channels, input_size, input_size).

    Args:
        input_size: H = W of the input (pixels or latents); must be divisible by patch_size.
        patch_size: p; the sequence has (input_size / p)^2 tokens.
        in_channels: channels of the input (also of the output).
        hidden_size: d, the token width; divisible by 4 (2-D positions) and by num_heads.
        depth: number of Transformer blocks.
        num_heads: attention heads.
        mlp_ratio: the MLP's hidden width over d (4 in DiT).
        num_classes: None (unconditional) or the class count; id num_classes is the null label.
        conditioning: one of CONDITIONINGS.
        prediction: what the output means: "eps", "x0", "v" or "score".
    """

    def __init__(self, input_size: int = 8, patch_size: int = 2, in_channels: int = 4, hidden_size: int = 128,
                 depth: int = 4, num_heads: int = 4, mlp_ratio: float = 4.0, num_classes: int | None = 10,
                 conditioning: str = "adaLN-Zero", prediction: str = "eps") -> None:
        super().__init__()
        check_int("input_size", input_size, 1)
        check_int("patch_size", patch_size, 1)
        if input_size % patch_size:
            raise ValueError(f"input_size ({input_size}) must be divisible by patch_size, got {patch_size}")
        check_int("in_channels", in_channels, 1)
        check_int("hidden_size", hidden_size, 4)
        check_int("depth", depth, 1)
        check_int("num_heads", num_heads, 1)
        if hidden_size % 4 or hidden_size % num_heads:
            raise ValueError(f"hidden_size must be divisible by 4 and by num_heads ({num_heads}), got {hidden_size}")
        mlp_ratio = check_scalar("mlp_ratio", mlp_ratio, 0.0, low_inclusive=False)
        if num_classes is not None:
            check_int("num_classes", num_classes, 1)
        check_choice("conditioning", conditioning, CONDITIONINGS)
        check_choice("prediction", prediction, PREDICTIONS)
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.num_classes, self.conditioning, self.prediction = num_classes, conditioning, prediction
        self.config = {"name": type(self).__name__, "input_size": input_size, "patch_size": patch_size,
                       "in_channels": in_channels, "hidden_size": hidden_size, "depth": depth,
                       "num_heads": num_heads, "mlp_ratio": mlp_ratio, "num_classes": num_classes,
                       "conditioning": conditioning, "prediction": prediction}
        d, grid = hidden_size, input_size // patch_size

        self.patch_embed = nn.Linear(patch_size * patch_size * in_channels, d)
        self.register_buffer("pos_embed", sincos_2d(d, grid), persistent=False)   # (N, d), fixed
        self.time_mlp = TimeMLP(256, d)                                           # DiT: 256 frequencies
        self.class_embedding = nn.Embedding(num_classes + 1, d) if num_classes is not None else None
        self.blocks = nn.ModuleList(DiTBlock(d, num_heads, mlp_ratio, conditioning) for _ in range(depth))
        adaptive = conditioning in ("adaLN-Zero", "adaLN")
        self.norm_out = nn.LayerNorm(d, elementwise_affine=not adaptive, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d)) if adaptive else None
        self.linear_out = nn.Linear(d, patch_size * patch_size * in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation in one place: Xavier-uniform linear layers with zero biases; the patch embedding
        like a conv; N(0, 0.02) class and time-MLP weights; then zeros for every adaLN-Zero regression (each block
        starts as the identity) and for the output layer (the net starts by predicting 0)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight)
        if self.class_embedding is not None:
            nn.init.normal_(self.class_embedding.weight, std=0.02)
        nn.init.normal_(self.time_mlp.linear_1.weight, std=0.02)
        nn.init.normal_(self.time_mlp.linear_2.weight, std=0.02)
        for block in self.blocks:
            if self.conditioning == "adaLN-Zero":
                nn.init.zeros_(block.ada[1].weight)
                nn.init.zeros_(block.ada[1].bias)
        if self.ada_out is not None:
            nn.init.zeros_(self.ada_out[1].weight)
            nn.init.zeros_(self.ada_out[1].bias)
        nn.init.zeros_(self.linear_out.weight)
        nn.init.zeros_(self.linear_out.bias)

    @property
    def num_tokens(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> None:
        """Raise a ValueError naming the argument unless ``net(x, t, cond)`` is a valid call (samplers call this
        once, at their entry; ``forward`` checks nothing)."""
        check_finite("x", x)
        shape = (self.in_channels, self.input_size, self.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != shape:
            hint = ""
            if x.dim() == 4 and (x.shape[2] % self.patch_size or x.shape[3] % self.patch_size):
                hint = f" (its size is not divisible by the patch size {self.patch_size})"
            raise ValueError(f"x must have shape (B, {', '.join(map(str, shape))}), got {tuple(x.shape)}{hint}")
        check_time_and_labels(x, t, cond, self.num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Predict ``self.prediction`` for noisy inputs x (B, C, H, W) at times t; returns (B, C, H, W)."""
        B, C, H, W = x.shape
        t, cond = time_and_labels(x, t, cond, self.num_classes)          # (B,), (B,) or None
        t_emb = self.time_mlp(t)                                          # (B, d)
        y_emb = self.class_embedding(cond) if cond is not None else torch.zeros_like(t_emb)  # (B, d)
        c = t_emb + y_emb                                                 # (B, d)
        c_tokens = torch.stack([t_emb, y_emb], dim=1)                     # (B, 2, d)

        h = self.patch_embed(patchify(x, self.patch_size)) + self.pos_embed  # (B, N, d)
        if self.conditioning == "in-context":
            h = torch.cat([h, c_tokens], dim=1)                           # (B, N + 2, d)
        for block in self.blocks:
            h = block(h, c, c_tokens)                                     # (B, N (+ 2), d)
        h = h[:, :self.num_tokens]                                        # (B, N, d), drop the extra tokens
        h = self.norm_out(h)
        if self.ada_out is not None:
            shift, scale = self.ada_out(c).chunk(2, dim=1)                # (B, d) each
            h = modulate(h, shift, scale)
        out = self.linear_out(h)                                          # (B, N, p p C)
        return unpatchify(out, self.patch_size, C, H, W)                  # (B, C, H, W)

    def attention_maps(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None
                       ) -> list[torch.Tensor]:
        """The self-attention weights of every block for one call, [(B, heads, N', N')] (N' = N + 2 with
        in-context conditioning), from the explicit formula."""
        self.check_inputs(x, t, cond)
        attns = [block.attn for block in self.blocks]
        fused = [a.fused for a in attns]
        for a in attns:
            a.record, a.fused = True, False
        try:
            with torch.no_grad():
                self(x, t, cond)
            return [a.last_weights for a in attns]
        finally:
            for a, f in zip(attns, fused):
                a.record, a.fused = False, f
