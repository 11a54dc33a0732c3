"""The KL-regularised autoencoder of latent diffusion (Rombach et al., 2022, Sec. 3.1 and Appendix G), shrunk.

The encoder E maps an image x (B, C, H, W) to a diagonal Gaussian q(z | x) over latents z of shape
(B, c, H / f, W / f); the decoder D maps a latent back to an image. The downsampling factor f = 2 ** (L - 1) for
L = len(channel_mults) levels and the latent channel count c are the knobs of the rate-distortion trade-off: the
latent has c (H / f)(W / f) numbers instead of C H W. A light KL term towards N(0, I) (their "KL-f" models) keeps
the latent space smooth without squeezing information out of it; there is no perceptual or adversarial loss
(LPIPS needs downloaded weights).

Layout (``Autoencoder.encode`` / ``decode``): a 3x3 conv, then at every level ``num_res_blocks`` residual blocks
(GroupNorm, SiLU, 3x3 conv, twice) and a stride-2 conv except at the last level; GroupNorm, SiLU and a 3x3 conv
to 2c channels (mean and log-variance). The decoder mirrors it with nearest-neighbour upsampling.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..checks import check_finite, check_int, check_scalar
from .unet import Downsample, Upsample


class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))): the encoder's posterior over latents of shape (B, c, h, w)."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        self.mean = mean                                         # (B, c, h, w)
        self.logvar = logvar.clamp(-30.0, 20.0)                  # (B, c, h, w), as Rombach et al. clamp it
        self.std = torch.exp(0.5 * self.logvar)                  # (B, c, h, w)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + std * eps, eps ~ N(0, I) (the reparameterisation of Kingma & Welling, 2014)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps                        # (B, c, h, w)

    def kl(self) -> torch.Tensor:
        """KL(q(z | x) || N(0, I)) per example, summed over the latent's numbers: (B,).
        KL = 1/2 sum(mean^2 + var - 1 - log var) (Kingma & Welling, 2014, Appendix B)."""
        terms = self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar
        return 0.5 * terms.flatten(1).sum(dim=1)                 # (B,)


class ConvBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))): the UNet's residual block without a time embedding; a 1x1 conv on
    the skip path when the channel count changes."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm_1 = nn.GroupNorm(groups, in_channels)
        self.conv_1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm_2 = nn.GroupNorm(groups, out_channels)
        self.conv_2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_1(F.silu(self.norm_1(x)))                  # (B, C_out, H, W)
        h = self.conv_2(F.silu(self.norm_2(h)))                  # (B, C_out, H, W)
        return self.skip(x) + h                                  # (B, C_out, H, W)


class Autoencoder(nn.Module):
    """Encoder q(z | x) and decoder D(z) for images (B, in_channels, image_size, image_size).

    Args:
        in_channels: image channels.
        image_size: height and width of the images; must be divisible by the factor f.
        base_channels: channels of the first level; level i has base_channels * channel_mults[i].
        channel_mults: one multiplier per level; f = 2 ** (len(channel_mults) - 1).
        latent_channels: c, the latent's channels.
        num_res_blocks: residual blocks per level (each way).
        groups: GroupNorm groups; must divide every level's channels.
        scale_factor: s, the factor that brings the latents to unit variance for diffusion (z = s E(x);
            :func:`diffedu.latent.latent_scale_factor`); the training recipe measures it and stores it here.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 32, base_channels: int = 32,
                 channel_mults: Sequence[int] = (1, 2, 2), latent_channels: int = 4, num_res_blocks: int = 1,
                 groups: int = 8, scale_factor: float = 1.0) -> None:
        super().__init__()
        self.scale_factor = check_scalar("scale_factor", scale_factor, 0.0, low_inclusive=False)
        check_int("in_channels", in_channels, 1)
        check_int("latent_channels", latent_channels, 1)
        check_int("num_res_blocks", num_res_blocks, 1)
        check_int("groups", groups, 1)
        if isinstance(channel_mults, (str, bytes)) or not isinstance(channel_mults, Sequence) or not channel_mults:
            raise ValueError(f"channel_mults must be a non-empty sequence of positive integers, got "
                             f"{channel_mults!r}")
        channel_mults = tuple(check_int("channel_mults", m, 1) for m in channel_mults)
        widths = [check_int("base_channels", base_channels, 1) * m for m in channel_mults]
        if any(w % groups for w in widths):
            raise ValueError(f"groups ({groups}) must divide every level's channels {widths}")
        self.factor = 2 ** (len(channel_mults) - 1)
        check_int("image_size", image_size, 1)
        if image_size % self.factor:
            raise ValueError(f"image_size must be divisible by the downsampling factor f = {self.factor} "
                             f"(2 ** (len(channel_mults) - 1)), got {image_size}")
        self.in_channels, self.image_size, self.latent_channels = in_channels, image_size, latent_channels
        self.latent_size = image_size // self.factor
        self.config = {"name": type(self).__name__, "in_channels": in_channels, "image_size": image_size,
                       "base_channels": base_channels, "channel_mults": list(channel_mults),
                       "latent_channels": latent_channels, "num_res_blocks": num_res_blocks, "groups": groups,
                       "scale_factor": self.scale_factor}

        self.enc_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.enc_blocks, self.downsamples = nn.ModuleList(), nn.ModuleList()
        channels = widths[0]
        for level, width in enumerate(widths):
            self.enc_blocks.append(nn.Sequential(*[ConvBlock(channels if j == 0 else width, width, groups)
                                                   for j in range(num_res_blocks)]))
            channels = width
            if level < len(widths) - 1:
                self.downsamples.append(Downsample(width))
        self.enc_norm = nn.GroupNorm(groups, channels)
        self.enc_out = nn.Conv2d(channels, 2 * latent_channels, 3, padding=1)  # mean and log-variance

        self.dec_in = nn.Conv2d(latent_channels, channels, 3, padding=1)
        self.dec_blocks, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            self.dec_blocks.append(nn.Sequential(*[ConvBlock(channels if j == 0 else width, width, groups)
                                                   for j in range(num_res_blocks)]))
            channels = width
            if level > 0:
                self.upsamples.append(Upsample(width))
        self.dec_norm = nn.GroupNorm(groups, channels)
        self.dec_out = nn.Conv2d(channels, in_channels, 3, padding=1)

    def set_scale_factor(self, scale_factor: float) -> "Autoencoder":
        """Store s (in the config too, so a checkpoint keeps it)."""
        self.scale_factor = check_scalar("scale_factor", scale_factor, 0.0, low_inclusive=False)
        self.config["scale_factor"] = self.scale_factor
        return self

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(c, H / f, W / f): the shape of one latent."""
        return self.latent_channels, self.latent_size, self.latent_size

    def check_images(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming ``x`` unless it is a finite image batch this encoder takes."""
        check_finite("x", x)
        shape = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != shape:
            hint = ""
            if x.dim() == 4 and x.shape[2] % self.factor:
                hint = f" (its size {x.shape[2]} is not divisible by the factor f = {self.factor})"
            raise ValueError(f"x must be images of shape (B, {', '.join(map(str, shape))}), got "
                             f"{tuple(x.shape)}{hint}")

    def check_latents(self, z: torch.Tensor) -> None:
        """Raise a ValueError naming ``z`` unless it is a finite batch of latents (B, c, H / f, W / f)."""
        check_finite("z", z)
        if z.dim() != 4 or tuple(z.shape[1:]) != self.latent_shape:
            hint = ""
            if z.dim() == 4 and tuple(z.shape[1:]) == (self.in_channels, self.image_size, self.image_size):
                hint = " - these are pixel-space images; encode them first"
            raise ValueError(f"z must be latents of shape (B, {', '.join(map(str, self.latent_shape))}), got "
                             f"{tuple(z.shape)}{hint}")

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """q(z | x) for images x (B, C, H, W) in [-1, 1]."""
        h = self.enc_in(x)                                       # (B, C_0, H, W)
        for level, blocks in enumerate(self.enc_blocks):
            h = blocks(h)                                        # (B, C_level, H / 2**level, W / 2**level)
            if level < len(self.downsamples):
                h = self.downsamples[level](h)                   # (B, C_level, H / 2**(level+1), ...)
        moments = self.enc_out(F.silu(self.enc_norm(h)))         # (B, 2c, H / f, W / f)
        mean, logvar = moments.chunk(2, dim=1)                   # (B, c, H / f, W / f) each
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """D(z): images (B, C, H, W) from latents (B, c, H / f, W / f)."""
        h = self.dec_in(z)                                       # (B, C_L, H / f, W / f)
        for i, blocks in enumerate(self.dec_blocks):
            h = blocks(h)                                        # (B, C_level, ...)
            if i < len(self.upsamples):
                h = self.upsamples[i](h)                         # twice the size
        return self.dec_out(F.silu(self.dec_norm(h)))            # (B, C, H, W)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Encode, sample z ~ q(z | x), decode: the reconstruction (B, C, H, W) and the posterior."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior
