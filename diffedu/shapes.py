"""Captioned coloured shapes: a procedural text-to-image data set that needs no download (chapter 12).

Every image is 16x16 RGB in [-1, 1] (black background = -1) with one shape drawn on it, and a caption that says
what and where it is, e.g. "a large red circle at the top left". The attributes:

    shape     circle, square, triangle, cross
    colour    red, green, blue, yellow
    position  top left, top right, bottom left, bottom right   (the quadrant of the shape's centre)
    size      small, large                                      (radius 2.2 or 3.4 pixels)

The size word is part of the caption only half the time ("a red circle at the top left" then means either size),
so a prompt may leave attributes open. Shapes are rendered with 4x4 supersampling (anti-aliased edges) and a
random sub-pixel jitter of the centre, so no two images are identical.

Held-out combinations: ``HELD_OUT`` lists (colour, shape, position) triples that never occur in the training set
(in either size). Every colour-shape pair and every shape-position pair of them does occur elsewhere, so asking for
a held-out triple tests whether the model *composes* attributes it has only seen apart.

``ShapesProbe`` reads the attributes back from an image: colour, position and size by simple rules on the bright
pixels, shape by a small classifier trained on clean renders. It is how the chapter measures whether a generated
image agrees with its caption.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .checks import check_choice, check_finite, check_int

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
SIZES = ("small", "large")

PALETTE = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.35, 1.0), "yellow": (1.0, 1.0, 0.0)}
"""Each colour as (R, G, B) in [0, 1]; blue gets a little green so it is not too dark on black."""

RADIUS = {"small": 2.2, "large": 3.4}
"""Shape radius in pixels (half the side of the square's bounding box; the circle's radius)."""

IMAGE_SIZE = 16
SUPERSAMPLE = 4

VOCABULARY = ("a", "small", "large", *COLOURS, *SHAPES, "at", "the", "top", "bottom", "left", "right")
"""Every word of the captions (the text encoder's known words; anything else becomes <unk>)."""

HELD_OUT = (("red", "circle", "top left"), ("green", "square", "bottom right"), ("blue", "triangle", "top right"),
            ("yellow", "cross", "bottom left"), ("red", "triangle", "bottom right"), ("green", "cross", "top left"),
            ("blue", "circle", "bottom left"), ("yellow", "square", "top right"))
"""(colour, shape, position) triples kept out of training: 8 of the 64, two per shape and two per colour."""


@dataclass(frozen=True)
class ShapeSpec:
    """What one image shows: shape, colour, position, size."""

    shape: str
    colour: str
    position: str
    size: str

    def caption(self, with_size: bool = True) -> str:
        size = f"{self.size} " if with_size else ""
        return f"a {size}{self.colour} {self.shape} at the {self.position}"

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.colour, self.shape, self.position)


def all_specs() -> list[ShapeSpec]:
    """Every combination of the four attributes (4 * 4 * 4 * 2 = 128)."""
    return [ShapeSpec(s, c, p, z) for s in SHAPES for c in COLOURS for p in POSITIONS for z in SIZES]


def _centre_of(position: str) -> tuple[float, float]:
    """Pixel coordinates (row, col) of a quadrant's centre; pixel k covers [k, k + 1)."""
    row = 4.0 if position.startswith("top") else 12.0
    col = 4.0 if position.endswith("left") else 12.0
    return row, col


def shape_mask(shape: str, dy: torch.Tensor, dx: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Inside-test of a shape of radius r centred at 0, at offsets dy (down) and dx (right); returns a bool mask.

    circle: dx^2 + dy^2 <= r^2;  square: max(|dx|, |dy|) <= 0.85 r (similar area to the circle);
    triangle: pointing up, apex at dy = -r, base at dy = 0.75 r, half-width at the base 1.05 r;
    cross: a plus sign whose arms are 0.36 r wide on each side of the centre line.
    """
    check_choice("shape", shape, SHAPES)
    if shape == "circle":
        return dx ** 2 + dy ** 2 <= r ** 2
    if shape == "square":
        return torch.maximum(dx.abs(), dy.abs()) <= 0.85 * r
    if shape == "triangle":
        height = 1.75 * r                          # from the apex (dy = -r) to the base (dy = 0.75 r)
        half_width = 1.05 * r * (dy + r) / height  # grows linearly from 0 at the apex
        return (dy >= -r) & (dy <= 0.75 * r) & (dx.abs() <= half_width)
    arm = 0.36 * r
    return ((dx.abs() <= arm) & (dy.abs() <= r)) | ((dy.abs() <= arm) & (dx.abs() <= r))


def render(specs: list[ShapeSpec], generator: torch.Generator | None = None, jitter: float = 1.0) -> torch.Tensor:
    """Draw each spec on a black 16x16 canvas; returns (N, 3, 16, 16) in [-1, 1].

    The centre moves by a uniform jitter in [-jitter, jitter] pixels on each axis and the radius by +-5 %; each
    pixel's colour is the shape's colour times the fraction of its 4x4 sub-pixels inside the shape.
    """
    n, S = len(specs), IMAGE_SIZE * SUPERSAMPLE
    shifts = (torch.rand(n, 2, generator=generator) * 2 - 1) * jitter            # (N, 2) pixels
    scales = 1 + (torch.rand(n, generator=generator) * 2 - 1) * 0.05              # (N,)
    fine = (torch.arange(S, dtype=torch.float32) + 0.5) / SUPERSAMPLE             # sub-pixel centres, pixel units
    images = torch.empty(n, 3, IMAGE_SIZE, IMAGE_SIZE)
    for k, spec in enumerate(specs):
        row, col = _centre_of(spec.position)
        dy = fine[:, None] - (row + shifts[k, 0])                                  # (S, 1)
        dx = fine[None, :] - (col + shifts[k, 1])                                  # (1, S)
        inside = shape_mask(spec.shape, dy, dx, RADIUS[spec.size] * scales[k]).float()  # (S, S)
        coverage = F.avg_pool2d(inside[None, None], SUPERSAMPLE)[0, 0]            # (16, 16) in [0, 1]
        colour = torch.tensor(PALETTE[spec.colour])[:, None, None]                 # (3, 1, 1)
        images[k] = 2 * colour * coverage - 1                                      # black background is -1
    return images


@dataclass
class CaptionedShapes:
    """Images (N, 3, 16, 16) in [-1, 1], their captions and specs."""

    x: torch.Tensor
    captions: list[str]
    specs: list[ShapeSpec]

    def __len__(self) -> int:
        return self.x.shape[0]

    def __repr__(self) -> str:
        return f"CaptionedShapes({len(self)} images {tuple(self.x.shape[1:])}, e.g. {self.captions[0]!r})"


def make_shapes(n: int, split: str = "train", seed: int = 0) -> CaptionedShapes:
    """``n`` random captioned images. split "train" never draws a ``HELD_OUT`` triple; "held_out" draws only
    those; "all" draws from every combination. Specs are drawn uniformly from the allowed ones."""
    check_int("n", n, 1)
    check_choice("split", split, ("train", "held_out", "all"))
    check_int("seed", seed, 0)
    held = set(HELD_OUT)
    allowed = [s for s in all_specs() if split == "all" or (s.triple in held) == (split == "held_out")]
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(allowed), (n,), generator=g).tolist()
    with_size = (torch.rand(n, generator=g) < 0.5).tolist()
    specs = [allowed[k] for k in picks]
    captions = [spec.caption(w) for spec, w in zip(specs, with_size)]
    return CaptionedShapes(x=render(specs, generator=g), captions=captions, specs=specs)


_CAPTION = re.compile(r"^a (?:(small|large) )?(red|green|blue|yellow) (circle|square|triangle|cross) "
                      r"at the (top left|top right|bottom left|bottom right)$")


def parse_caption(caption: str) -> dict[str, str | None]:
    """The attributes a caption of the data set's grammar asks for (size None if unspecified)."""
    match = _CAPTION.match(caption.strip().lower())
    if match is None:
        raise ValueError(f"caption must read 'a [small|large] <colour> <shape> at the <position>' with colour in "
                         f"{COLOURS}, shape in {SHAPES}, position in {POSITIONS}; got {caption!r}")
    size, colour, shape, position = match.groups()
    return {"size": size, "colour": colour, "shape": shape, "position": position}


class ShapesProbe:
    """Reads (shape, colour, position, size) back from images (N, 3, 16, 16) in [-1, 1].

    Bright pixels carry the shape: brightness b = max over channels of (x + 1) / 2, weight w = relu(b - 0.25).
    - position: the quadrant of the w-weighted centroid;
    - colour: the palette colour nearest (in RGB) to the w-weighted mean colour, normalised by its brightest channel;
    - shape and size: a logistic-regression classifier (scikit-learn) on the weight map shifted so that its centroid
      sits in the middle, trained on ``train_size`` clean renders of every combination.
    """

    def __init__(self, train_size: int = 4000, seed: int = 1):
        from sklearn.linear_model import LogisticRegression

        data = make_shapes(train_size, split="all", seed=seed)
        labels = [SHAPES.index(s.shape) * len(SIZES) + SIZES.index(s.size) for s in data.specs]
        self.classifier = LogisticRegression(C=0.5, max_iter=3000)
        self.classifier.fit(self._centred_weights(data.x), np.asarray(labels))

    @staticmethod
    def _weights(x: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(x) or x.dim() != 4 or tuple(x.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"x must be images of shape (N, 3, 16, 16), got {shape}")
        check_finite("x", x)
        b = ((x.detach().cpu().float().clamp(-1, 1) + 1) / 2).amax(dim=1)  # (N, 16, 16) brightness
        return torch.relu(b - 0.25)                                         # (N, 16, 16)

    @staticmethod
    def _centroids(w: torch.Tensor) -> torch.Tensor:
        grid = torch.arange(IMAGE_SIZE, dtype=torch.float32) + 0.5
        mass = w.sum(dim=(1, 2)).clamp(min=1e-6)                            # (N,)
        rows = (w.sum(dim=2) * grid).sum(dim=1) / mass                      # (N,)
        cols = (w.sum(dim=1) * grid).sum(dim=1) / mass                      # (N,)
        return torch.stack([rows, cols], dim=1)                             # (N, 2)

    def _centred_weights(self, x: torch.Tensor) -> np.ndarray:
        w = self._weights(x)                                                # (N, 16, 16)
        shift = (IMAGE_SIZE / 2 - self._centroids(w)).round().long()        # (N, 2)
        padded = F.pad(w, (IMAGE_SIZE // 2,) * 4)                           # (N, 32, 32), zeros around
        rows = [torch.roll(p, (int(s[0]), int(s[1])), dims=(0, 1)) for p, s in zip(padded, shift)]
        centred = torch.stack(rows)[:, 4:28, 4:28] if rows else padded[:, 4:28, 4:28]  # (N, 24, 24)
        return centred.reshape(len(w), -1).numpy()

    def read(self, x: torch.Tensor) -> list[dict[str, str]]:
        """The attributes of every image, as dicts with keys shape, colour, position, size."""
        w = self._weights(x)                                                # (N, 16, 16)
        centroids = self._centroids(w)                                      # (N, 2)
        u = (x.detach().cpu().float().clamp(-1, 1) + 1) / 2                 # (N, 3, 16, 16) in [0, 1]
        mean_rgb = (u * w[:, None]).sum(dim=(2, 3)) / w.sum(dim=(1, 2)).clamp(min=1e-6)[:, None]  # (N, 3)
        mean_rgb = mean_rgb / mean_rgb.amax(dim=1, keepdim=True).clamp(min=1e-6)
        palette = torch.tensor([PALETTE[c] for c in COLOURS])               # (4, 3)
        colour_ids = torch.cdist(mean_rgb, palette).argmin(dim=1)           # (N,)
        shape_size = self.classifier.predict(self._centred_weights(x))      # (N,)
        out = []
        for (row, col), c, k in zip(centroids.tolist(), colour_ids.tolist(), shape_size.tolist()):
            position = f"{'top' if row < IMAGE_SIZE / 2 else 'bottom'} {'left' if col < IMAGE_SIZE / 2 else 'right'}"
            out.append({"shape": SHAPES[k // len(SIZES)], "colour": COLOURS[c], "position": position,
                        "size": SIZES[k % len(SIZES)]})
        return out

    def agreement(self, x: torch.Tensor, captions: list[str]) -> dict[str, float]:
        """Fraction of images whose read attributes match their caption: per attribute, and for shape and colour
        together ("shape+colour") and for every attribute the caption names ("all")."""
        if len(captions) != len(x):
            raise ValueError(f"captions must have one entry per image ({len(x)}), got {len(captions)}")
        asked = [parse_caption(c) for c in captions]
        read = self.read(x)
        hits = {key: [] for key in ("shape", "colour", "position", "size", "shape+colour", "all")}
        for a, r in zip(asked, read):
            for key in ("shape", "colour", "position"):
                hits[key].append(a[key] == r[key])
            if a["size"] is not None:
                hits["size"].append(a["size"] == r["size"])
            hits["shape+colour"].append(a["shape"] == r["shape"] and a["colour"] == r["colour"])
            hits["all"].append(all(a[k] == r[k] for k in a if a[k] is not None))
        return {key: float(np.mean(v)) if v else float("nan") for key, v in hits.items()}


@lru_cache(maxsize=1)
def shapes_probe() -> ShapesProbe:
    """A cached :class:`ShapesProbe` (training takes a few seconds)."""
    return ShapesProbe()
