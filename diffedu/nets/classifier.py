"""A noise-aware classifier p_phi(y | x_t, t) for classifier guidance (Dhariwal & Nichol, 2021, Sec. 4).

Classifier guidance needs grad_x log p(y | x_t) at every noise level the sampler visits, so the classifier is
trained on *noised* images x_t = alpha(t) x0 + sigma(t) eps and told t, exactly like a denoiser. Dhariwal &
Nichol build it from the downsampling half of their UNet with an (attention) pool at the lowest resolution and a
linear head; ``NoisyClassifier`` is that design at the book's scale, made of the UNet's own blocks:

- a 3x3 conv lifts the image to ``base_channels``;
- at each of ``len(channel_mults)`` resolutions, ``num_res_blocks`` time-conditioned residual blocks with
  ``base_channels * mult`` channels (self-attention after each one at the lowest level), then a stride-2 conv
  halves H and W (except at the last level);
- the middle of the UNet: residual block, self-attention, residual block;
- GroupNorm, SiLU, global average pooling over H x W, and a linear layer to ``num_classes`` logits.

``NoisyClassifier(x, t) -> logits (B, num_classes)``; t in [0, 1] is continuous time, as for every denoiser.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..checks import check_int
from .embeddings import TimeMLP, check_time_and_labels, time_and_labels
from .unet import AttentionBlock, Downsample, ResBlock, check_architecture, check_images, init_residual_net


class NoisyClassifier(nn.Module):
    """Time-conditioned image classifier ``classifier(x, t) -> logits (B, num_classes)`` (Dhariwal & Nichol, 2021).

    Args:
        num_classes: number of classes C (the logits' width).
        in_channels: image channels.
        base_channels: channels at the first level; the time embedding has 4 * base_channels (as in the UNet).
        channel_mults: one multiplier per resolution level; H and W must be divisible by
            2 ** (len(channel_mults) - 1).
        num_res_blocks: residual blocks per level.
        attention_at_lowest: self-attention after the residual blocks of the lowest level and in the middle.
        num_heads: attention heads; must divide the channels of the lowest level.
        dropout: dropout inside the residual blocks.
        groups: GroupNorm groups; must divide base_channels.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, base_channels: int = 16,
                 channel_mults: Sequence[int] = (1, 2), num_res_blocks: int = 1, attention_at_lowest: bool = True,
                 num_heads: int = 2, dropout: float = 0.0, groups: int = 8) -> None:
        super().__init__()
        check_int("num_classes", num_classes, 2)
        channel_mults, dropout = check_architecture(in_channels, base_channels, channel_mults, num_res_blocks,
                                                    attention_at_lowest, num_heads, dropout, groups)

        self.num_classes = num_classes
        self.in_channels = in_channels
        self.channel_mults = channel_mults
        self.config = {"name": type(self).__name__, "num_classes": num_classes, "in_channels": in_channels,
                       "base_channels": base_channels, "channel_mults": list(channel_mults),
                       "num_res_blocks": num_res_blocks, "attention_at_lowest": attention_at_lowest,
                       "num_heads": num_heads, "dropout": dropout, "groups": groups}

        emb_dim = 4 * base_channels
        self.time_mlp = TimeMLP(base_channels, emb_dim)
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        # The UNet's down path, without the skip connections (nothing comes back up).
        self.down_blocks, self.downsamples = nn.ModuleList(), nn.ModuleList()
        channels = base_channels
        for level, mult in enumerate(channel_mults):
            lowest = level == len(channel_mults) - 1
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(channels, base_channels * mult, emb_dim, groups, dropout, scale_shift=False))
                channels = base_channels * mult
                if attention_at_lowest and lowest:
                    blocks.append(AttentionBlock(channels, num_heads, groups))
            self.down_blocks.append(blocks)
            if not lowest:
                self.downsamples.append(Downsample(channels))

        self.mid_block_1 = ResBlock(channels, channels, emb_dim, groups, dropout, scale_shift=False)
        self.mid_attn = AttentionBlock(channels, num_heads, groups) if attention_at_lowest else nn.Identity()
        self.mid_block_2 = ResBlock(channels, channels, emb_dim, groups, dropout, scale_shift=False)

        self.norm_out = nn.GroupNorm(groups, channels)
        self.head = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """As the UNet: Xavier-uniform weights, zero biases, zero last conv of every residual branch (each block
        starts as the identity); and a zero head, so the untrained classifier says 1/C for every class."""
        init_residual_net(self)
        nn.init.zeros_(self.head.weight)

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor | float) -> None:
        """Raise a ValueError naming the argument unless ``classifier(x, t)`` is a valid call (checked once, by the
        caller's entry point; ``forward`` checks nothing)."""
        check_images(x, self.in_channels, self.channel_mults)
        check_time_and_labels(x, t, None, None)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | float
    ) -> torch.Tensor:
        """Logits of p_phi(y | x_t, t) for noisy images x (B, C, H, W) at times t (B,) or (); returns (B, classes)."""
        t, _ = time_and_labels(x, t, None, None)                    # (B,)

        emb = F.silu(self.time_mlp(t))  # (B, E), shared by all blocks
        h = self.conv_in(x)  # (B, C_0, H, W)
        for level in range(len(self.channel_mults)):
            for block in self.down_blocks[level]:
                h = (
                    block(h, emb) if isinstance(block, ResBlock) else block(h)
                )  # (B, C_level, H / 2**level, ...)
            if level < len(self.channel_mults) - 1:
                h = self.downsamples[level](
                    h
                )  # (B, C_level, H / 2**(level+1), ...)
        h = self.mid_block_1(h, emb)  # (B, C_L, H_L, W_L)
        h = self.mid_attn(h)  # (B, C_L, H_L, W_L)
        h = self.mid_block_2(h, emb)  # (B, C_L, H_L, W_L)
        h = F.silu(self.norm_out(h)).mean(
            dim=(2, 3)
        )  # (B, C_L): global average pool
        return self.head(h)  # (B, num_classes)


class DigitReader(nn.Module):
    """A plain CNN that reads 28x28 digits: ``reader(x) -> logits (B, 10)``; its last hidden layer
    (``features``) is the feature space of the 28x28 chapters' Fréchet distance (the role Inception's pool
    layer plays in FID, Heusel et al. 2017).

    conv3x3(1 -> c) ReLU, maxpool 2; conv3x3(c -> 2c) ReLU, maxpool 2; conv3x3(2c -> 2c) ReLU;
    flatten (2c * 7 * 7) -> Linear -> ReLU = features (feature_dim,) -> Linear -> logits (10,).
    """

    def __init__(self, channels: int = 16, feature_dim: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        check_int("channels", channels, 1)
        check_int("feature_dim", feature_dim, 1)
        check_int("num_classes", num_classes, 2)
        self.config = {"name": type(self).__name__, "channels": channels, "feature_dim": feature_dim,
                       "num_classes": num_classes}
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),            # (B, c, 14, 14)
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),        # (B, 2c, 7, 7)
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU(), nn.Flatten(),       # (B, 2c * 49)
            nn.Linear(2 * c * 49, feature_dim), nn.ReLU())                        # (B, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def check_inputs(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming ``x`` unless it is a finite batch of 28x28 images (B, 1, 28, 28)."""
        if not torch.is_tensor(x) or x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"x must be 28x28 digit images (B, 1, 28, 28) in [-1, 1], got "
                             f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x must be finite (no NaN or inf)")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)                                                       # (B, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))                                            # (B, num_classes)
