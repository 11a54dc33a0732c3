"""The DDPM UNet (Ho et al., 2020), shrunk for 8x8 digits and 16x16 or 28x28 MNIST.

Architecture, from top to bottom of ``UNet.forward``:

- a 3x3 conv lifts the image to ``base_channels``;
- the down path: at each of ``len(channel_mults)`` resolutions, ``num_res_blocks`` residual blocks with
  ``base_channels * mult`` channels, then a stride-2 conv halves H and W (except at the last level);
- the middle: residual block, self-attention, residual block, at the lowest resolution;
- the up path mirrors the down path with one extra residual block per level; every block takes the activation
  saved at the same place on the way down, concatenated along channels (the UNet's skip connections);
- GroupNorm, SiLU and a 3x3 conv back to ``in_channels``, initialised to zero.

Every residual block receives the time embedding (and the class embedding, Dhariwal & Nichol, 2021), either added
to its activations (DDPM) or as a scale and shift of its second GroupNorm (``scale_shift=True``; Nichol &
Dhariwal, 2021; "AdaGN" in Dhariwal & Nichol, 2021). Self-attention (Vaswani et al., 2017) runs at the lowest
resolution, where H*W is smallest; DDPM uses it at 16x16.

Sizes: H and W must be divisible by 2 ** (len(channel_mults) - 1). 8x8 and 16x16 work with up to 4 levels; 28x28
works with 2 levels (28, 14) or 3 (28, 14, 7), not with 4 (7 is odd).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..checks import check_choice, check_finite, check_int, check_scalar
from .embeddings import PREDICTIONS, TimeMLP, check_time_and_labels, time_and_labels


class ResBlock(nn.Module):
    """Residual block of Ho et al. (2020): x + conv(SiLU(GN(conv(SiLU(GN(x))) + emb))), 1x1 conv on the skip path
    when the channel count changes. With ``scale_shift`` the embedding enters as GN(h) * (1 + scale) + shift."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, groups: int, dropout: float,
                 scale_shift: bool) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm_1 = nn.GroupNorm(groups, in_channels)
        self.conv_1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels if scale_shift else out_channels)
        self.norm_2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv_2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv_1(F.silu(self.norm_1(x)))                  # (B, C_out, H, W)
        e = self.emb_proj(emb)[:, :, None, None]                  # (B, C_out or 2 C_out, 1, 1); emb is SiLU'd
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)                      # (B, C_out, 1, 1) each
            h = self.norm_2(h) * (1 + scale) + shift              # (B, C_out, H, W)
        else:
            h = self.norm_2(h + e)                                # (B, C_out, H, W)
        h = self.conv_2(self.dropout(F.silu(h)))                  # (B, C_out, H, W)
        return self.skip(x) + h                                   # (B, C_out, H, W)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(d)) V (Vaswani et al., 2017, Eq. 1), per head, with the weights' softmax in float32.

    q: (B, heads, d, N) queries; k, v: (B, heads, d, M) keys and values. Returns the outputs (B, heads, d, N) and
    the weights (B, heads, N, M), whose rows sum to 1: how much each query position listens to each key.
    """
    logits = q.transpose(-1, -2) @ k / math.sqrt(q.shape[2])       # (B, heads, N, M)
    weights = torch.softmax(logits.float(), dim=-1).to(v.dtype)     # (B, heads, N, M)
    return v @ weights.transpose(-1, -2), weights                   # (B, heads, d, N), (B, heads, N, M)


def heads_first(tokens: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, heads * d) -> (B, heads, N, d): the layout of torch's fused attention kernel (d contiguous, as the CPU
    flash kernel needs; with another layout torch falls back to the explicit math)."""
    B, N, C = tokens.shape
    return tokens.reshape(B, N, num_heads, C // num_heads).transpose(1, 2)


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The outputs of :func:`attention` from torch's fused kernel ``F.scaled_dot_product_attention`` (flash
    attention: the (N, M) weights are never stored). q: (B, heads, N, d); k, v: (B, heads, M, d); returns
    (B, N, heads * d), the heads concatenated."""
    h = F.scaled_dot_product_attention(q, k, v)                     # (B, heads, N, d)
    return h.transpose(1, 2).flatten(2)                             # (B, N, heads * d)


def conv1x1(conv: nn.Conv2d, tokens: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv applied to tokens (B, N, C_in) as the matmul it is, with its own weights: (B, N, C_out)."""
    return F.linear(tokens, conv.weight.flatten(1), conv.bias)


class AttentionBlock(nn.Module):
    """x + W_o MultiHead(GN(x)) over the H*W positions: softmax(Q K^T / sqrt(d)) V (Vaswani et al., 2017, Eq. 1).

    With ``fused`` (default False; :func:`set_fused_attention`) the same block runs on torch's fused kernel.
    """

    fused = False

    def __init__(self, channels: int, num_heads: int, groups: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if self.fused:
            return x + self.fused_branch(x)                                  # (B, C, H, W)
        d = C // self.num_heads
        qkv = self.qkv(self.norm(x))                                         # (B, 3C, H, W)
        q, k, v = qkv.reshape(B, 3, self.num_heads, d, H * W).unbind(dim=1)  # (B, heads, d, HW) each
        h, _ = attention(q, k, v)                                            # (B, heads, d, HW)
        return x + self.proj_out(h.reshape(B, C, H, W))                      # (B, C, H, W)

    def fused_branch(self, x: torch.Tensor) -> torch.Tensor:
        """W_o MultiHead(GN(x)) by torch's fused kernel, on tokens (B, HW, C): same weights, same formula."""
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)                     # (B, HW, C)
        q, k, v = conv1x1(self.qkv, tokens).chunk(3, dim=-1)                 # (B, HW, C) each
        h = fused_attention(*(heads_first(a, self.num_heads) for a in (q, k, v)))  # (B, HW, C)
        return conv1x1(self.proj_out, h).transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)


class CrossAttentionBlock(nn.Module):
    """x + W_o MultiHead(Q = GN(x), K = V = context): every pixel attends to the T tokens of a text encoding
    (Rombach et al., 2022, Sec. 3.3, eq. 3: softmax(Q K^T / sqrt(d)) V with Q from the image, K and V from the text).

    The attention weights of the last call are kept in ``last_weights`` (B, heads, H*W, T), detached, so that a
    chapter can show which pixels listen to which word. With ``fused`` (default False; :func:`set_fused_attention`)
    the same block runs on torch's fused kernel, which computes no weights: ``last_weights`` is then None.
    """

    fused = False

    def __init__(self, channels: int, context_dim: int, num_heads: int, groups: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.to_q = nn.Conv2d(channels, channels, 1)
        self.to_k = nn.Linear(context_dim, channels)
        self.to_v = nn.Linear(context_dim, channels)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        self.last_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if self.fused:  # torch's fused kernel: the same outputs, no weights
            self.last_weights = None
            return x + self.fused_branch(x, context)
        T, d = context.shape[1], C // self.num_heads
        q = self.to_q(self.norm(x)).reshape(
            B, self.num_heads, d, H * W
        )  # (B, heads, d, HW)
        k = (
            self.to_k(context)
            .reshape(B, T, self.num_heads, d)
            .permute(0, 2, 3, 1)
        )  # (B, heads, d, T)
        v = (
            self.to_v(context)
            .reshape(B, T, self.num_heads, d)
            .permute(0, 2, 3, 1)
        )  # (B, heads, d, T)
        h, weights = attention(q, k, v)  # (B, heads, d, HW)
        self.last_weights = weights.detach()  # (B, heads, HW, T)
        return x + self.proj_out(h.reshape(B, C, H, W))  # (B, C, H, W)

    def fused_branch(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """W_o MultiHead(GN(x), context) by torch's fused kernel, on tokens (B, HW, C): same weights and formula."""
        B, C, H, W = x.shape
        q = conv1x1(self.to_q, self.norm(x).flatten(2).transpose(1, 2))     # (B, HW, C)
        k, v = self.to_k(context), self.to_v(context)                      # (B, T, C) each
        h = fused_attention(*(heads_first(a, self.num_heads) for a in (q, k, v)))  # (B, HW, C)
        return conv1x1(self.proj_out, h).transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)


def set_fused_attention(net: nn.Module, fused: bool = True) -> nn.Module:
    """Run every attention block of ``net`` on torch's fused ``scaled_dot_product_attention`` (``fused=True``), or
    on the explicit formula :func:`attention` (``False``, the default: the code the book prints, the one the
    shipped checkpoints were trained with, and the only one that keeps chapter 12's cross-attention maps). The two
    agree to float rounding; the fused kernel is faster and needs no (N, M) weight matrix. Returns ``net``."""
    if not isinstance(fused, bool):
        raise ValueError(f"fused must be True or False, got {fused!r}")
    if not isinstance(net, nn.Module):
        raise ValueError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    for module in net.modules():
        if isinstance(module, (AttentionBlock, CrossAttentionBlock)) or hasattr(type(module), "fused"):
            module.fused = fused  # the UNet's blocks and any other attention layer with a fused path (DiT's)
    return net


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv (Ho et al., 2020)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a 3x3 conv (Ho et al., 2020)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        return self.conv(x)                                     # (B, C, 2H, 2W)


def init_residual_net(net: nn.Module) -> None:
    """DDPM's initialisation: Xavier-uniform weights and zero biases, then zero the last conv of every residual
    branch (ResBlock, AttentionBlock, CrossAttentionBlock), so each block starts as the identity."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    for module in net.modules():
        if isinstance(module, ResBlock):
            nn.init.zeros_(module.conv_2.weight)
        if isinstance(module, (AttentionBlock, CrossAttentionBlock)):
            nn.init.zeros_(module.proj_out.weight)


def check_architecture(in_channels: int, base_channels: int, channel_mults: Sequence[int], num_res_blocks: int,
                       attention_at_lowest: bool, num_heads: int, dropout: float,
                       groups: int) -> tuple[tuple[int, ...], float]:
    """Check the arguments that the UNet and the nets built from its parts (``NoisyClassifier``) share; return
    channel_mults as a tuple of ints and dropout as a float."""
    check_int("in_channels", in_channels, 1)
    check_int("base_channels", base_channels, 1)
    if isinstance(channel_mults, (str, bytes)) or not isinstance(channel_mults, Sequence) or not channel_mults:
        raise ValueError(f"channel_mults must be a non-empty sequence of positive integers, got {channel_mults!r}")
    channel_mults = tuple(check_int("channel_mults", m, 1) for m in channel_mults)
    check_int("num_res_blocks", num_res_blocks, 1)
    check_int("num_heads", num_heads, 1)
    check_int("groups", groups, 1)
    dropout = check_scalar("dropout", dropout, 0.0, 1.0, high_inclusive=False)
    if not isinstance(attention_at_lowest, bool):
        raise ValueError(f"attention_at_lowest must be True or False, got {attention_at_lowest!r}")
    if base_channels % 2 or base_channels < 4:
        raise ValueError(f"base_channels must be even and >= 4 (it is also the size of the sinusoidal time "
                         f"features), got {base_channels}")
    if base_channels % groups:
        raise ValueError(f"base_channels ({base_channels}) must be divisible by groups ({groups}) for GroupNorm")
    lowest_channels = base_channels * channel_mults[-1]
    if attention_at_lowest and lowest_channels % num_heads:
        raise ValueError(f"num_heads ({num_heads}) must divide the channels of the lowest level ({lowest_channels})")
    return channel_mults, dropout


def check_images(x: torch.Tensor, in_channels: int, channel_mults: Sequence[int]) -> None:
    """Raise unless x is a finite float batch (B, in_channels, H, W) whose H and W survive the
    len(channel_mults) - 1 halvings of the down path."""
    check_finite("x", x)
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(f"x must have shape (B, {in_channels}, H, W), got {tuple(x.shape)}")
    factor = 2 ** (len(channel_mults) - 1)
    if x.shape[2] % factor or x.shape[3] % factor:
        raise ValueError(f"x's height and width must be divisible by {factor} (2 ** (len(channel_mults) - 1)), "
                         f"got {tuple(x.shape[2:])}")


class UNet(nn.Module):
    """DDPM-style UNet ``net(x, t, cond=None)`` for images x of shape (B, in_channels, H, W), t in [0, 1].

    Args:
        in_channels: image channels (also the output channels).
        base_channels: channels at the first level; the time embedding has 4 * base_channels (as in DDPM).
        channel_mults: one multiplier per resolution level; level i has base_channels * channel_mults[i]
            channels and H / 2**i rows. H and W must be divisible by 2 ** (len(channel_mults) - 1).
        num_res_blocks: residual blocks per level on the down path (the up path has one more).
        attention_at_lowest: self-attention after every residual block of the lowest level and in the middle.
        num_heads: attention heads; must divide the channel count of the lowest level.
        num_classes: None for an unconditional net; otherwise labels 0..num_classes-1, plus the null label
            ``num_classes`` used for classifier-free guidance (``cond=None`` means null for every row).
        dropout: dropout rate inside the residual blocks (DDPM uses 0.1 on CIFAR-10).
        groups: GroupNorm groups; must divide base_channels.
        prediction: what the output means: "eps", "x0", "v" or "score".
        scale_shift: feed the embedding as a scale and shift of the second GroupNorm (AdaGN) instead of adding it.
        context_dim: None, or the size of the token vectors of a text encoding ``context`` (B, T, context_dim):
            then a cross-attention block follows every residual block (Rombach et al., 2022) and the mean of the
            tokens is added to the time embedding (the pooled text embedding of Saharia et al., 2022).
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 32, channel_mults: Sequence[int] = (1, 2),
                 num_res_blocks: int = 1, attention_at_lowest: bool = True, num_heads: int = 4,
                 num_classes: int | None = None, dropout: float = 0.0, groups: int = 8, prediction: str = "eps",
                 scale_shift: bool = False, context_dim: int | None = None) -> None:
        super().__init__()
        channel_mults, dropout = check_architecture(in_channels, base_channels, channel_mults, num_res_blocks,
                                                    attention_at_lowest, num_heads, dropout, groups)
        if num_classes is not None:
            check_int("num_classes", num_classes, 1)
        if context_dim is not None:
            check_int("context_dim", context_dim, 1)
        check_choice("prediction", prediction, PREDICTIONS)
        if not isinstance(scale_shift, bool):
            raise ValueError(f"scale_shift must be True or False, got {scale_shift!r}")
        if context_dim is not None and any(base_channels * m % num_heads for m in channel_mults):
            raise ValueError(f"num_heads ({num_heads}) must divide the channels of every level for cross-attention, "
                             f"got {[base_channels * m for m in channel_mults]}")

        self.in_channels = in_channels
        self.channel_mults = channel_mults
        self.num_classes = num_classes
        self.prediction = prediction
        self.config = {"name": type(self).__name__, "in_channels": in_channels, "base_channels": base_channels,
                       "channel_mults": list(channel_mults), "num_res_blocks": num_res_blocks,
                       "attention_at_lowest": attention_at_lowest, "num_heads": num_heads,
                       "num_classes": num_classes, "dropout": dropout, "groups": groups, "prediction": prediction,
                       "scale_shift": scale_shift}
        self.context_dim = context_dim
        if context_dim is not None:  # only then, so the config of a net without text stays as it was
            self.config["context_dim"] = context_dim

        emb_dim = 4 * base_channels
        self.time_mlp = TimeMLP(base_channels, emb_dim)  # sinusoidal features of size base_channels, as in DDPM
        # Row num_classes is the null label of classifier-free guidance.
        self.class_embedding = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None
        # The pooled text embedding joins the time embedding (Saharia et al., 2022).
        self.context_embedding = nn.Linear(context_dim, emb_dim) if context_dim is not None else None

        def res_block(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(c_in, c_out, emb_dim, groups, dropout, scale_shift)

        def attention(level: int) -> nn.Module:
            use = attention_at_lowest and level == len(channel_mults) - 1
            return AttentionBlock(base_channels * channel_mults[level], num_heads, groups) if use else nn.Identity()

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        # Down path; skip_channels records the channels of every activation saved for the up path.
        self.down_blocks, self.down_attns, self.downsamples = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        channels, skip_channels = base_channels, [base_channels]
        for level, mult in enumerate(channel_mults):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(res_block(channels, base_channels * mult))
                attns.append(attention(level))
                channels = base_channels * mult
                skip_channels.append(channels)
            self.down_blocks.append(blocks)
            self.down_attns.append(attns)
            if level < len(channel_mults) - 1:
                self.downsamples.append(Downsample(channels))
                skip_channels.append(channels)

        # Cross-attention after every residual block, down, middle and up (only with a context).
        def cross_attention(level: int) -> CrossAttentionBlock:
            return CrossAttentionBlock(base_channels * channel_mults[level], context_dim, num_heads, groups)

        if context_dim is not None:
            levels = range(len(channel_mults))
            self.down_cross = nn.ModuleList(nn.ModuleList(cross_attention(level) for _ in range(num_res_blocks))
                                            for level in levels)
            self.mid_cross = cross_attention(len(channel_mults) - 1)
            self.up_cross = nn.ModuleList(nn.ModuleList(cross_attention(level) for _ in range(num_res_blocks + 1))
                                          for level in reversed(levels))

        self.mid_block_1 = res_block(channels, channels)
        self.mid_attn = AttentionBlock(channels, num_heads, groups) if attention_at_lowest else nn.Identity()
        self.mid_block_2 = res_block(channels, channels)

        # Up path, stored in the order it runs (lowest level first); each block eats one saved activation.
        self.up_blocks, self.up_attns, self.upsamples = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(channel_mults))):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(res_block(channels + skip_channels.pop(), base_channels * channel_mults[level]))
                attns.append(attention(level))
                channels = base_channels * channel_mults[level]
            self.up_blocks.append(blocks)
            self.up_attns.append(attns)
            if level > 0:
                self.upsamples.append(Upsample(channels))

        self.norm_out = nn.GroupNorm(groups, channels)
        self.conv_out = nn.Conv2d(channels, in_channels, 3, padding=1)
        self._init_weights()

    def _init_weights(self) -> None:
        """All initialisation in one place, following DDPM's code (Ho et al., 2020): Xavier-uniform weights and
        zero biases, then zeros for the last conv of every residual branch (each ResBlock and AttentionBlock
        starts as the identity, so the signal passes through the untrained net unchanged in scale) and for the
        final conv. The zero final conv makes the first prediction exactly 0: for eps-prediction that is the mean
        of the target, so training starts at loss E|eps|^2 = 1 instead of from a random, badly scaled output."""
        init_residual_net(self)
        nn.init.zeros_(self.conv_out.weight)

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None,
                     context: torch.Tensor | None = None) -> None:
        """Raise a ValueError naming the argument unless ``net(x, t, cond, context)`` is a valid call. Samplers
        call this once, at their entry; ``forward`` checks nothing, so it makes no host sync."""
        check_images(x, self.in_channels, self.channel_mults)
        check_time_and_labels(x, t, cond, self.num_classes)
        if (context is None) != (self.context_dim is None):
            raise ValueError("context must be given exactly when the net was built with context_dim, got "
                             f"context={'None' if context is None else 'a tensor'}, context_dim={self.context_dim}")
        if context is not None:
            check_finite("context", context)
            if context.dim() != 3 or context.shape[0] != x.shape[0] or context.shape[2] != self.context_dim:
                raise ValueError(f"context must have shape ({x.shape[0]}, T, {self.context_dim}), "
                                 f"got {tuple(context.shape)}")

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """Predict ``self.prediction`` for noisy images x (B, C, H, W) at times t (B,) or (); returns (B, C, H, W).

        ``context`` (B, T, context_dim) is the text encoding a net built with ``context_dim`` attends to."""
        t, cond = time_and_labels(x, t, cond, self.num_classes)     # (B,), (B,) or None
        emb = self.time_mlp(t)                                       # (B, E)
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(cond)                   # (B, E)
        if context is not None:
            emb = emb + self.context_embedding(context.mean(dim=1))  # (B, E), pooled text
        emb = F.silu(emb)                                            # (B, E), shared by all blocks

        h = self.conv_in(x)  # (B, C_0, H, W)
        skips = [h]
        for level in range(len(self.channel_mults)):
            for j, (block, attn) in enumerate(zip(self.down_blocks[level], self.down_attns[level])):
                h = attn(block(h, emb))                              # (B, C_level, H / 2**level, W / 2**level)
                if context is not None:
                    h = self.down_cross[level][j](h, context)        # (B, C_level, H / 2**level, W / 2**level)
                skips.append(h)
            if level < len(self.channel_mults) - 1:
                h = self.downsamples[level](
                    h
                )  # (B, C_level, H / 2**(level+1), ...)
                skips.append(h)

        h = self.mid_block_1(h, emb)                                 # (B, C_L, H_L, W_L), L = lowest level
        h = self.mid_attn(h)  # (B, C_L, H_L, W_L)
        if context is not None:
            h = self.mid_cross(h, context)                           # (B, C_L, H_L, W_L)
        h = self.mid_block_2(h, emb)  # (B, C_L, H_L, W_L)

        for i, level in enumerate(reversed(range(len(self.channel_mults)))):
            for j, (block, attn) in enumerate(zip(self.up_blocks[i], self.up_attns[i])):
                h = torch.cat([h, skips.pop()], dim=1)               # (B, C + C_skip, H / 2**level, W / 2**level)
                h = attn(block(h, emb))                              # (B, C_level, H / 2**level, W / 2**level)
                if context is not None:
                    h = self.up_cross[i][j](h, context)              # (B, C_level, H / 2**level, W / 2**level)
            if level > 0:
                h = self.upsamples[i](h)                             # (B, C_level, H / 2**(level-1), ...)

        return self.conv_out(F.silu(self.norm_out(h)))               # (B, in_channels, H, W)
