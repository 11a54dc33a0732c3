"""A tiny text-to-image denoiser: a word tokenizer, a small Transformer text encoder, and the UNet with
cross-attention to the encoded words (chapter 12).

The pieces follow latent diffusion and Imagen at toy size:

- ``Tokenizer``: lower-case words from a fixed vocabulary (accents folded: "Café" reads as "cafe"); a word outside
  it becomes ``<unk>`` (id 1), and every caption is padded with ``<pad>`` (id 0) to ``max_len`` tokens. The
  all-``<pad>`` sequence is the *empty caption*, the null condition of classifier-free guidance (Ho & Salimans,
  2022), which training shows the net by dropping captions.
- ``TextEncoder``: word + position embeddings, then Transformer encoder layers (Vaswani et al., 2017), giving one
  vector per token, ``context`` (B, T, d). As in Stable Diffusion no padding mask is used: the pad tokens are
  ordinary learned inputs, so the empty caption needs no special case.
- ``TextToImageUNet``: ``net(x, t, cond=token ids)``: the encoder's output is the ``context`` of a ``UNet`` built
  with ``context_dim``, which attends to it after every residual block (Rombach et al., 2022, eq. 3) and adds its
  mean to the time embedding (Saharia et al., 2022). Encoder and UNet are trained together from scratch by the
  denoising loss (Imagen instead freezes a large pretrained text encoder).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Sequence

import torch
from torch import nn

from ..checks import check_int
from .unet import UNet

PAD, UNK = "<pad>", "<unk>"


class Tokenizer:
    """Words -> ids. ids 0 and 1 are ``<pad>`` and ``<unk>``; ``vocabulary`` lists the other words in id order."""

    def __init__(self, vocabulary: Sequence[str], max_len: int) -> None:
        words = list(vocabulary)
        if len(set(words)) != len(words) or PAD in words or UNK in words or not words:
            raise ValueError(f"vocabulary must be a non-empty list of distinct words without {PAD} and {UNK}, "
                             f"got {words!r:.80}")
        self.vocabulary = words
        self.max_len = check_int("max_len", max_len, 1)
        self.id_of = {word: k for k, word in enumerate([PAD, UNK] + words)}
        self.words = [PAD, UNK] + words  # id -> word

    def __len__(self) -> int:
        return len(self.words)

    @staticmethod
    def split(caption: str) -> list[str]:
        """The caption's words: lower-case runs of the letters a-z (punctuation and digits separate words).

        The caption is first normalised to Unicode NFKD and its combining marks dropped, so accented letters read
        as their base letter ("Café" -> "cafe", "Rougé" -> "rouge") and compatibility forms (full-width letters,
        ligatures such as "ﬁ") as plain letters; a letter with no such decomposition (e.g. "ß", "ø") still
        separates words. An ASCII caption is unchanged by this, so its ids are the same as without it.
        """
        if not isinstance(caption, str):
            raise ValueError(f"caption must be a string, got {type(caption).__name__}")
        decomposed = unicodedata.normalize("NFKD", caption)
        folded = "".join(c for c in decomposed if not unicodedata.combining(c))
        return re.findall(r"[a-z]+", folded.lower())

    def encode(self, captions: Sequence[str] | str) -> torch.Tensor:
        """Token ids (B, max_len), int64: known words -> their id, unknown words -> ``<unk>``, then ``<pad>``.

        ``captions`` is one string or a list (or tuple) of strings; words are read by :meth:`split`. Raises
        ValueError for anything else, for an empty caption (no words; the empty caption is the null condition, made
        with ``null_tokens``) and for a caption longer than ``max_len`` words.
        """
        if isinstance(captions, str):
            captions = [captions]
        elif not isinstance(captions, (list, tuple)):
            raise ValueError(f"captions must be a string or a list of strings, got {type(captions).__name__}")
        rows = []
        for caption in captions:
            words = self.split(caption)
            if not words:
                raise ValueError(f"caption must contain at least one word, got {caption!r}")
            if len(words) > self.max_len:
                raise ValueError(f"caption must have at most max_len = {self.max_len} words, got {len(words)}: "
                                 f"{caption!r}")
            ids = [self.id_of.get(word, 1) for word in words]
            rows.append(ids + [0] * (self.max_len - len(ids)))
        if not rows:
            raise ValueError("captions must contain at least one caption")
        return torch.tensor(rows, dtype=torch.long)  # (B, max_len)

    def null_tokens(self, batch: int) -> torch.Tensor:
        """The empty caption (all ``<pad>``), (batch, max_len): the unconditional input of the text model."""
        return torch.zeros(check_int("batch", batch, 1), self.max_len, dtype=torch.long)

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Token ids (B, T) back to captions (pads dropped, unknown words shown as ``<unk>``)."""
        return [" ".join(self.words[k] for k in row if k != 0) for row in ids.tolist()]


class TextEncoder(nn.Module):
    """Token ids (B, T) -> token vectors (B, T, dim): embeddings + learned positions, Transformer layers, LayerNorm."""

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
    ) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Parameter(
            torch.randn(max_len, dim) * 0.02
        )
        layer = nn.TransformerEncoderLayer(
            dim,
            num_heads,
            dim_feedforward=2 * dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(
            layer, num_layers, enable_nested_tensor=False
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = (
            self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        )  # (B, T, dim)
        return self.norm(self.layers(h))  # (B, T, dim)


class TextToImageUNet(nn.Module):
    """``net(x, t, cond)`` with ``cond`` = token ids (B, max_len) of captions (``net.tokenize``); None = empty caption.

    Args:
        vocabulary: the known words (ids 2, 3, ...; 0 is ``<pad>``, 1 ``<unk>``).
        max_len: tokens per caption.
        text_dim, text_layers, text_heads: size of the Transformer text encoder.
        unet: keyword arguments of the ``UNet`` (its ``context_dim`` is set to ``text_dim``).

    ``null_label`` = 0 (the ``<pad>`` id): ``ClassifierFreeGuidance(net, s, null_label=net.null_label)`` replaces
    every token by it, which is exactly the empty caption.
    """

    null_label = 0

    def __init__(self, vocabulary: Sequence[str], max_len: int = 12, text_dim: int = 64, text_layers: int = 2,
                 text_heads: int = 4, unet: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.tokenizer = Tokenizer(vocabulary, max_len)
        unet = dict(unet or {})
        if "context_dim" in unet or unet.get("num_classes") is not None:
            raise ValueError("unet must not set context_dim or num_classes: the text encoder provides the condition")
        self.encoder = TextEncoder(len(self.tokenizer), max_len, text_dim, text_layers, text_heads)
        self.unet = UNet(**unet, context_dim=text_dim)
        self.prediction = self.unet.prediction
        self.config = {"name": type(self).__name__, "vocabulary": list(vocabulary), "max_len": max_len,
                       "text_dim": text_dim, "text_layers": text_layers, "text_heads": text_heads,
                       "unet": {k: v for k, v in self.unet.config.items() if k not in ("name", "context_dim")}}

    def tokenize(self, captions: Sequence[str] | str) -> torch.Tensor:
        """Captions (a string or a list of strings) -> token ids (B, max_len) on the net's device (see
        ``Tokenizer.encode``)."""
        return self.tokenizer.encode(captions).to(next(self.parameters()).device)

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> None:
        """Raise a ValueError naming the argument unless ``net(x, t, cond)`` is a valid call (samplers call this once,
        at their entry; ``forward`` checks nothing)."""
        B, T = x.shape[0], self.tokenizer.max_len
        if cond is not None:
            if (not torch.is_tensor(cond) or cond.is_floating_point() or cond.dtype == torch.bool
                    or cond.shape != (B, T)):
                shape = tuple(cond.shape) if torch.is_tensor(cond) else type(cond).__name__
                raise ValueError(f"cond must be an integer tensor of token ids of shape ({B}, {T}) (use "
                                 f"net.tokenize), got {shape}")
            if B and (int(cond.min()) < 0 or int(cond.max()) >= len(self.tokenizer)):
                raise ValueError(f"cond token ids must lie in [0, {len(self.tokenizer) - 1}], got values in "
                                 f"[{int(cond.min())}, {int(cond.max())}]")
        self.unet.check_inputs(x, t, context=torch.zeros(B, T, self.unet.context_dim))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if cond is None:
            cond = self.tokenizer.null_tokens(x.shape[0]).to(
                x.device
            )  # the empty caption
        context = self.encoder(cond.to(x.device))    # (B, T, text_dim)
        return self.unet(x, t, context=context)      # (B, C, H, W)

    def cross_attention_maps(self) -> list[torch.Tensor]:
        """The attention weights (B, heads, H*W, T) of every cross-attention block in the last forward call, in
        the order the blocks ran (down path, middle, up path). Only the explicit attention keeps them: after
        ``set_fused_attention(net, True)`` this raises a RuntimeError."""
        blocks = [b for level in self.unet.down_cross for b in level] + [self.unet.mid_cross] + \
                 [b for level in self.unet.up_cross for b in level]
        if any(b.fused for b in blocks):
            raise RuntimeError("the fused attention keeps no weights: call set_fused_attention(net, False) and run "
                               "the net again to record its cross-attention maps")
        return [b.last_weights for b in blocks if b.last_weights is not None]
