"""A factorised space-time denoiser for text to video (Ho et al., 2022, Video Diffusion Models, Sec. 3).

Ho et al. extend the image UNet to video by *factorising* space and time: every 2-D layer runs on each frame on
its own (a 3x3 conv is a 1x3x3 space-only 3-D conv), and after each spatial attention a *temporal attention* lets
every pixel attend to the same pixel in the other frames. Here:

- ``TemporalAttention``: x + W_o MultiHead(GN(x) + e_f) over the F frames at every position (h, w), with a
  learned frame-position embedding e_f (Ho et al. use relative position embeddings; an absolute one is simpler
  and the clips always start at frame 0). Without e_f it is permutation-equivariant in time: it cannot tell
  frame order, which is why the embedding is there. Its output projection starts at zero (the block starts as
  the identity) and a clip of one frame skips it: there is no other frame to attend to.
- ``TemporalConv``: x + Conv3d(SiLU(GN(x))), a 3x3x3 convolution over (frame, row, column), the temporal
  3-D convolution layers Video LDM (Blattmann et al., 2023) adds beside temporal attention. Attention at one
  position sees the same pixel in every frame; the convolution sees the neighbouring pixels of the neighbouring
  frames, which is the shape of a small motion. Also zero-initialised and skipped for one frame.
- ``TextToVideoUNet``: chapter 12's ``TextToImageUNet`` (text encoder, UNet with cross-attention) whose every
  cross-attention block is followed by a ``TemporalAttention`` (and, at ``conv_levels``, a ``TemporalConv``).
  ``TextToVideoUNet.from_image_model`` builds it around a trained image model (Make-A-Video, Video LDM): the
  image weights are copied, the new temporal layers start as the identity, so training starts from the image
  model's frames. Frames are folded into the batch, (B, C, F, H, W)
  -> (B F, C, H, W), for the 2-D layers, and each frame sees the whole clip's caption and noise level.

Joint training on clips and images (Ho et al., Sec. 3.1): a single image is a clip of length 1, for which the
network *is* the image model ``net.image`` (the temporal layers drop out), so one set of weights learns both,
and the image path gives the frame-independent baseline of the chapter.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..checks import check_int
from .text import TextToImageUNet
from .unet import attention


class TemporalAttention(nn.Module):
    """x + W_o MultiHead(GN(x) + e_f) across frames: softmax(Q K^T / sqrt(d)) V (Vaswani et al., 2017, Eq. 1)
    with the F frames of one position (h, w) as the tokens (Ho et al., 2022, Sec. 3).

    ``frame_positions=False`` builds it without the frame-position embedding e_f (then it is permutation-
    equivariant in time). The weights of the last call are kept in ``last_weights`` (B, H*W, heads, F, F).
    """

    def __init__(self, channels: int, num_heads: int, groups: int, max_frames: int,
                 frame_positions: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.frame_embedding = nn.Parameter(torch.randn(max_frames, channels) * 0.1) if frame_positions else None
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj_out = nn.Linear(channels, channels)
        self.last_weights: torch.Tensor | None = None

    def forward(self, h: torch.Tensor, frames: int) -> torch.Tensor:
        BF, C, H, W = h.shape
        if frames == 1:  # one frame: nothing to attend to, the image model
            self.last_weights = None
            return h
        B, heads, d = BF // frames, self.num_heads, C // self.num_heads
        # (B, HW, F, C)
        u = self.norm(h).reshape(B, frames, C, H * W).permute(0, 3, 1, 2)
        if self.frame_embedding is not None:
            u = u + self.frame_embedding[:frames]  # (B, HW, F, C), + e_f
        # (B HW, F, 3, heads, d)
        qkv = self.qkv(u).reshape(B * H * W, frames, 3, heads, d)
        # (B HW, heads, d, F) each
        q, k, v = qkv.permute(2, 0, 3, 4, 1).unbind(0)
        out, weights = attention(q, k, v)  # (B HW, heads, d, F)
        self.last_weights = weights.detach().reshape(
            B, H * W, heads, frames, frames
        )
        # (B, F, HW, C)
        out = out.reshape(B, H * W, C, frames).permute(0, 3, 1, 2)
        out = self.proj_out(out)  # (B, F, HW, C)
        # (B F, C, H, W)
        return h + out.transpose(2, 3).reshape(BF, C, H, W)


class TemporalConv(nn.Module):
    """x + Conv3d(SiLU(GN(x))) with a 3x3x3 kernel over (frame, row, column) (Blattmann et al., 2023, Sec. 3.1):
    frame f at pixel p reads frames f - 1, f, f + 1 around p, enough to move a feature by a pixel per frame.
    Zero-initialised (the block starts as the identity); a clip of one frame skips it."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.conv = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, h: torch.Tensor, frames: int) -> torch.Tensor:
        if frames == 1:  # one frame: the image model
            return h
        BF, C, H, W = h.shape
        u = F.silu(self.norm(h)).reshape(BF // frames, frames, C, H, W)
        u = self.conv(u.transpose(1, 2))  # (B, C, F, H, W): 3x3x3 over f, h, w
        return h + u.transpose(1, 2).reshape(BF, C, H, W)  # (B F, C, H, W)


class NoTemporal(nn.Module):
    """A level without temporal attention: its frames stay independent there."""

    def forward(self, h: torch.Tensor, frames: int) -> torch.Tensor:
        return h


class TextToVideoUNet(nn.Module):
    """``net(x, t, cond)`` for clips x (B, C, F, H, W), 1 <= F <= max_frames; ``cond`` = token ids (B, max_len) of
    captions (``net.tokenize``), None = the empty caption. Returns the prediction (B, C, F, H, W).

    Args:
        vocabulary, max_len, text_dim, text_layers, text_heads, unet: as ``TextToImageUNet`` (chapter 12), whose
            network this one contains as ``net.image``.
        max_frames: the longest clip (the size of the frame-position embedding).
        frame_positions: give the temporal attention its frame-position embedding (default True).
        temporal_levels: the UNet levels (0 = full resolution) that get temporal attention (default: all; the
            middle counts as the lowest level). Attention over 8 frames at every one of the 16x16 pixels is what
            costs most on a CPU, so the shipped net uses (1, 2): time is mixed at 8x8 and 4x4.
        conv_levels: the UNet levels that also get a ``TemporalConv`` after the temporal attention (default: none).
        frame_time: add a learned embedding of the frame's position to each frame's time embedding, so that every
            2-D layer knows which frame it draws (zero-initialised; default False).

    ``null_label`` = 0 (``<pad>``): ``ClassifierFreeGuidance(net, s, null_label=net.null_label)`` guides it.
    """

    null_label = 0

    def __init__(self, vocabulary: Sequence[str], max_len: int = 8, max_frames: int = 8, text_dim: int = 32,
                 text_layers: int = 2, text_heads: int = 4, unet: dict[str, Any] | None = None,
                 frame_positions: bool = True, temporal_levels: Sequence[int] | None = None,
                 conv_levels: Sequence[int] = (), frame_time: bool = False) -> None:
        super().__init__()
        self.max_frames = check_int("max_frames", max_frames, 1)
        for name, value in (("frame_positions", frame_positions), ("frame_time", frame_time)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        self.image = TextToImageUNet(vocabulary, max_len, text_dim, text_layers, text_heads, unet)
        self.tokenizer, self.prediction = self.image.tokenizer, self.image.prediction
        u = self.image.unet
        heads, groups = u.config["num_heads"], u.config["groups"]

        L = len(u.channel_mults)
        levels = list(range(L)) if temporal_levels is None else [check_int("temporal_levels", k, 0, L - 1)
                                                                 for k in temporal_levels]
        convs = [check_int("conv_levels", k, 0, L - 1) for k in conv_levels]

        def temporal(cross: nn.Module, level: int) -> nn.Module:
            if level not in levels:
                return NoTemporal()
            return TemporalAttention(cross.to_q.in_channels, heads, groups, max_frames, frame_positions)

        def conv(cross: nn.Module, level: int) -> nn.Module:
            return TemporalConv(cross.to_q.in_channels, groups) if level in convs else NoTemporal()

        self.down_temporal = nn.ModuleList(nn.ModuleList(temporal(b, k) for b in u.down_cross[k]) for k in range(L))
        self.mid_temporal = temporal(u.mid_cross, L - 1)
        self.up_temporal = nn.ModuleList(nn.ModuleList(temporal(b, L - 1 - i) for b in u.up_cross[i])
                                         for i in range(L))
        self.down_conv = nn.ModuleList(nn.ModuleList(conv(b, k) for b in u.down_cross[k]) for k in range(L))
        self.mid_conv = conv(u.mid_cross, L - 1)
        self.up_conv = nn.ModuleList(nn.ModuleList(conv(b, L - 1 - i) for b in u.up_cross[i]) for i in range(L))
        E = u.context_embedding.out_features  # the time embedding's width
        self.frame_time = nn.Parameter(torch.zeros(max_frames, E)) if frame_time else None
        for block in self.temporal_blocks():                  # every temporal block starts as the identity
            nn.init.zeros_(block.proj_out.weight)
            nn.init.zeros_(block.proj_out.bias)
        self.config = {**self.image.config, "name": type(self).__name__, "max_frames": max_frames,
                       "frame_positions": frame_positions, "temporal_levels": sorted(levels),
                       "conv_levels": sorted(convs), "frame_time": frame_time}

    @classmethod
    def from_image_model(
        cls, image: TextToImageUNet, vocabulary: Sequence[str], **video: Any
    ) -> "TextToVideoUNet":
        """A video net around a trained text-to-image net (Singer et al., 2023; Blattmann et al., 2023): the same
        encoder and UNet sizes, every image weight copied, the temporal layers new (they start as the identity).
        ``vocabulary`` may add words: a word the image model knew keeps its embedding, a new one starts random.
        ``video``: ``max_frames``, ``frame_positions``, ``temporal_levels``, ``conv_levels``, ``frame_time``."""
        if not isinstance(image, TextToImageUNet):
            raise ValueError("image must be a TextToImageUNet (chapter 12), "
                             f"got {type(image).__name__}")
        c = image.config
        net = cls(vocabulary, c["max_len"], text_dim=c["text_dim"],
                  text_layers=c["text_layers"], text_heads=c["text_heads"],
                  unet=c["unet"], **video)
        state = image.state_dict()
        key = "encoder.token_embedding.weight"
        old = state[key]                          # (old vocabulary, text_dim)
        new = net.image.state_dict()[key]         # (new vocabulary, text_dim)
        for k, word in enumerate(net.tokenizer.words):
            if word in image.tokenizer.id_of:  # a known word: its vector
                new[k] = old[image.tokenizer.id_of[word]]
        net.image.load_state_dict({**state, key: new})
        return net.to(old.device)

    def temporal_blocks(self) -> list[TemporalAttention]:
        """The temporal attention blocks in the order they run (down path, middle, up path)."""
        blocks = [b for level in self.down_temporal for b in level] + [self.mid_temporal] + \
                 [b for level in self.up_temporal for b in level]
        return [b for b in blocks if isinstance(b, TemporalAttention)]

    def tokenize(self, captions: Sequence[str] | str) -> torch.Tensor:
        """Captions -> token ids (B, max_len) on the net's device (``Tokenizer.encode``; unknown words -> <unk>)."""
        return self.image.tokenize(captions)

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> None:
        """Raise a ValueError naming the argument unless ``net(x, t, cond)`` is a valid call (samplers call this once,
        at their entry; ``forward`` checks nothing)."""
        C = self.image.unet.in_channels
        if not torch.is_tensor(x) or x.dim() != 5 or x.shape[1] != C:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"x must be clips of shape (B, {C}, F, H, W), got {shape}")
        check_int("x's frame count F", x.shape[2], 1, self.max_frames)
        self.image.check_inputs(x[:, :, 0], t, cond)         # the first frame as an image: H, W, t, cond

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        B, C, Fr, H, W = x.shape
        if cond is None:
            cond = self.tokenizer.null_tokens(B).to(x.device)                # the empty caption
        context = self.image.encoder(cond.to(x.device))                      # (B, T, text_dim)
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype).reshape(-1).expand(B)  # (B,)
        frames = x.transpose(1, 2).reshape(B * Fr, C, H, W)                  # (B F, C, H, W), clip by clip
        out = self.space_time_unet(frames, t.repeat_interleave(Fr), context.repeat_interleave(Fr, dim=0), Fr)
        return out.reshape(B, Fr, C, H, W).transpose(1, 2)                   # (B, C, F, H, W)

    def space_time_unet(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        frames: int,
    ) -> torch.Tensor:
        """``UNet.forward`` of chapter 12's net on frames (B F, C, H, W), with a temporal attention after every
        cross-attention (Ho et al., 2022, Sec. 3). With frames = 1 it is exactly ``net.image.unet``."""
        u = self.image.unet
        # (B F, E): time + pooled text (+ frame position)
        emb = u.time_mlp(t) + u.context_embedding(context.mean(dim=1))
        if self.frame_time is not None and frames > 1:
            emb = emb + self.frame_time[:frames].repeat(len(x) // frames, 1)
        emb = F.silu(emb)

        h = u.conv_in(x)  # (B F, C_0, H, W)
        skips = [h]
        for level in range(len(u.channel_mults)):
            blocks = zip(u.down_blocks[level], u.down_attns[level])
            for j, (block, attn) in enumerate(blocks):
                # per frame: space and text
                h = u.down_cross[level][j](attn(block(h, emb)), context)
                # across frames: time
                h = self.down_temporal[level][j](h, frames)
                h = self.down_conv[level][j](h, frames)
                skips.append(h)
            if level < len(u.channel_mults) - 1:
                # (B F, C, H / 2**(level+1), ...)
                h = u.downsamples[level](h)
                skips.append(h)

        # (B F, C_L, H_L, W_L)
        h = u.mid_cross(u.mid_attn(u.mid_block_1(h, emb)), context)
        h = self.mid_conv(self.mid_temporal(h, frames), frames)
        h = u.mid_block_2(h, emb)

        for i, level in enumerate(reversed(range(len(u.channel_mults)))):
            blocks = zip(u.up_blocks[i], u.up_attns[i])
            for j, (block, attn) in enumerate(blocks):
                # (B F, C + C_skip, ...)
                h = torch.cat([h, skips.pop()], dim=1)
                # per frame: space and text
                h = u.up_cross[i][j](attn(block(h, emb)), context)
                h = self.up_temporal[i][j](h, frames)  # across frames: time
                h = self.up_conv[i][j](h, frames)
            if level > 0:
                h = u.upsamples[i](h)  # (B F, C, H / 2**(level-1), ...)

        return u.conv_out(F.silu(u.norm_out(h)))  # (B F, C, H, W)

    def temporal_attention_maps(self) -> list[torch.Tensor]:
        """The weights (B, H*W, heads, F, F) of every temporal attention in the last forward call (of more than
        one frame), in the order the blocks ran."""
        return [b.last_weights for b in self.temporal_blocks() if b.last_weights is not None]
