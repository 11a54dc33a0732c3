"""Captioned moving shapes: a procedural text-to-video data set and a probe that reads clips back (chapter 13b).

A clip is ``frames`` (8 by default) frames of 16x16 RGB in [-1, 1], shaped (C, F, H, W) = (3, 8, 16, 16), with one
of chapter 12's shapes (``diffedu.shapes``) moving in a straight line at constant speed, and a caption that says
what moves and how, e.g. "a red circle moving right quickly". The attributes:

    shape      circle, square, triangle, cross
    colour     red, green, blue, yellow
    direction  left, right, up, down
    speed      slowly, quickly            (SPEEDS: 0.6 or 1.2 pixels per frame)

The speed word is in the caption only half the time, so a prompt may leave it open. Every shape has radius 3 pixels
(+-5 %); the start is drawn so the whole path stays on the canvas. A single frame is a clip of length 1: its
caption names no motion ("a red circle", ``ClipSpec.caption(motion=False)``).

Held-out combinations: ``HELD_OUT_CLIPS`` lists (colour, shape, direction) triples that never occur in training.
Every colour-shape pair and every shape-direction pair of them does occur elsewhere, so asking for one tests
whether the model *composes* attributes it has only seen apart (as chapter 12's held-out triples do).

``ClipProbe`` reads (shape, colour, direction, speed) back from a clip: shape and colour frame by frame with chapter
12's rules (a majority vote over the frames), direction and speed from the least-squares velocity of the bright
pixels' centroid. It also measures temporal consistency: how many frames agree with the clip's majority reading,
and how far the centroid strays from a straight, uniform path.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .checks import check_choice, check_int
from .shapes import COLOURS, PALETTE, SHAPES, SUPERSAMPLE, ShapesProbe, shape_mask

IMAGE_SIZE = 16
MAX_FRAMES = 8
"""Frames of a training clip: the video model's ``max_frames``."""

DIRECTIONS = ("left", "right", "up", "down")
VELOCITY = {"left": (0.0, -1.0), "right": (0.0, 1.0), "up": (-1.0, 0.0), "down": (1.0, 0.0)}
"""Unit step of each direction as (row, col): rows grow downwards."""

SPEEDS = {"slowly": 0.6, "quickly": 1.2}
"""Pixels per frame."""

RADIUS = 3.0
MARGIN = RADIUS + 0.5
"""The centre stays in [MARGIN, 16 - MARGIN] on both axes, so the whole shape is always on the canvas."""

VOCABULARY = ("a", *COLOURS, *SHAPES, "moving", *DIRECTIONS, *SPEEDS)
"""Every word of the captions (the text encoder's known words; anything else becomes <unk>)."""

HELD_OUT_CLIPS = (("red", "circle", "right"), ("green", "square", "left"), ("blue", "triangle", "up"),
                  ("yellow", "cross", "down"), ("red", "triangle", "down"), ("green", "cross", "up"),
                  ("blue", "circle", "left"), ("yellow", "square", "right"))
"""(colour, shape, direction) triples kept out of training: 8 of the 64, two per shape, colour and direction."""


@dataclass(frozen=True)
class ClipSpec:
    """What one clip shows: a shape of a colour moving in a direction at a speed."""

    shape: str
    colour: str
    direction: str
    speed: str

    def caption(self, with_speed: bool = True, motion: bool = True) -> str:
        """"a red circle moving right quickly"; without the speed word, or (``motion=False``, a still frame)
        just "a red circle"."""
        if not motion:
            return f"a {self.colour} {self.shape}"
        speed = f" {self.speed}" if with_speed else ""
        return f"a {self.colour} {self.shape} moving {self.direction}{speed}"

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.colour, self.shape, self.direction)


def all_clip_specs() -> list[ClipSpec]:
    """Every combination of the four attributes (4 * 4 * 4 * 2 = 128)."""
    return [ClipSpec(s, c, d, v) for s in SHAPES for c in COLOURS for d in DIRECTIONS for v in SPEEDS]


def check_frames(frames: int) -> int:
    """A frame count must be an integer in [1, MAX_FRAMES]."""
    return check_int("frames", frames, 1, MAX_FRAMES)


def centre_paths(specs: list[ClipSpec], frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The shape's centre (row, col) in pixels at every frame, (N, F, 2): c_f = c_0 + f * speed * direction.

    c_0 is uniform over the starts whose whole path stays in [MARGIN, 16 - MARGIN] on both axes.
    """
    frames = check_frames(frames)
    n = len(specs)
    u = torch.rand(n, 2, generator=generator)                                    # (N, 2) in [0, 1)
    span = IMAGE_SIZE - 2 * MARGIN                                               # room for the centre
    paths = torch.empty(n, frames, 2)
    steps = torch.arange(frames, dtype=torch.float32)                            # (F,)
    for k, spec in enumerate(specs):
        v = torch.tensor(VELOCITY[spec.direction]) * SPEEDS[spec.speed]          # (2,) pixels per frame
        travel = v * (frames - 1)                                                # (2,) displacement
        low = MARGIN - torch.clamp(travel, max=0.0)                              # start so the end fits too
        start = low + u[k] * (span - travel.abs())                               # (2,)
        paths[k] = start + steps[:, None] * v                                    # (F, 2)
    return paths


def render_clips(specs: list[ClipSpec], frames: int = MAX_FRAMES,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw each spec's moving shape; returns clips (N, 3, F, 16, 16) in [-1, 1] (black background = -1).

    Every frame is rendered like chapter 12's images (``diffedu.shapes.render``): each pixel's colour is the
    shape's colour times the fraction of its 4x4 sub-pixels inside the shape; the radius varies by +-5 % per clip.
    """
    for spec in specs:
        for name, choices in (("shape", SHAPES), ("colour", COLOURS), ("direction", DIRECTIONS), ("speed", SPEEDS)):
            check_choice(name, getattr(spec, name), tuple(choices))
    paths = centre_paths(specs, frames, generator)                               # (N, F, 2)
    scales = 1 + (torch.rand(len(specs), generator=generator) * 2 - 1) * 0.05     # (N,)
    S = IMAGE_SIZE * SUPERSAMPLE
    fine = (torch.arange(S, dtype=torch.float32) + 0.5) / SUPERSAMPLE             # sub-pixel centres, pixel units
    clips = torch.empty(len(specs), 3, frames, IMAGE_SIZE, IMAGE_SIZE)
    for k, spec in enumerate(specs):
        dy = fine[None, :, None] - paths[k, :, 0, None, None]                    # (F, S, 1)
        dx = fine[None, None, :] - paths[k, :, 1, None, None]                    # (F, 1, S)
        inside = shape_mask(spec.shape, dy, dx, RADIUS * scales[k]).float()      # (F, S, S)
        coverage = F.avg_pool2d(inside[:, None], SUPERSAMPLE)[:, 0]              # (F, 16, 16) in [0, 1]
        colour = torch.tensor(PALETTE[spec.colour])[:, None, None, None]          # (3, 1, 1, 1)
        clips[k] = 2 * colour * coverage - 1                                     # (3, F, 16, 16)
    return clips


@dataclass
class CaptionedClips:
    """Clips (N, 3, F, 16, 16) in [-1, 1], their captions, the still captions of their frames, and specs."""

    x: torch.Tensor
    captions: list[str]
    still_captions: list[str]
    specs: list[ClipSpec]

    def __len__(self) -> int:
        return self.x.shape[0]

    def __repr__(self) -> str:
        return f"CaptionedClips({len(self)} clips {tuple(self.x.shape[1:])}, e.g. {self.captions[0]!r})"


def make_clips(n: int, split: str = "train", frames: int = MAX_FRAMES, seed: int = 0) -> CaptionedClips:
    """``n`` random captioned clips. split "train" never draws a ``HELD_OUT_CLIPS`` triple; "held_out" draws only
    those; "all" draws from every combination. Specs are uniform over the allowed ones; the speed word is in
    half of the captions."""
    check_int("n", n, 1)
    check_choice("split", split, ("train", "held_out", "all"))
    check_int("seed", seed, 0)
    held = set(HELD_OUT_CLIPS)
    allowed = [s for s in all_clip_specs() if split == "all" or (s.triple in held) == (split == "held_out")]
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(allowed), (n,), generator=g).tolist()
    with_speed = (torch.rand(n, generator=g) < 0.5).tolist()
    specs = [allowed[k] for k in picks]
    return CaptionedClips(x=render_clips(specs, frames, generator=g),
                          captions=[s.caption(w) for s, w in zip(specs, with_speed)],
                          still_captions=[s.caption(motion=False) for s in specs], specs=specs)


_CAPTION = re.compile(r"^a (red|green|blue|yellow) (circle|square|triangle|cross)"
                      r"(?: moving (left|right|up|down)(?: (slowly|quickly))?)?$")


def parse_clip_caption(caption: str, require_motion: bool = True) -> dict[str, str | None]:
    """The attributes a caption of the data set's grammar asks for (speed None if unspecified; direction and speed
    None for a still caption, allowed only with ``require_motion=False``)."""
    match = _CAPTION.match(caption.strip().lower()) if isinstance(caption, str) else None
    if match is None:
        raise ValueError(f"caption must read 'a <colour> <shape> moving <direction> [slowly|quickly]' with colour "
                         f"in {COLOURS}, shape in {SHAPES}, direction in {DIRECTIONS}; got {caption!r}")
    colour, shape, direction, speed = match.groups()
    if require_motion and direction is None:
        raise ValueError(f"caption must name a motion ('moving <direction>', direction in {DIRECTIONS}) for a "
                         f"clip of more than one frame; got {caption!r}")
    return {"colour": colour, "shape": shape, "direction": direction, "speed": speed}


def check_clips(x: torch.Tensor, name: str = "x") -> None:
    """Raise unless x is a finite float batch of clips (N, 3, F, 16, 16) with 1 <= F <= MAX_FRAMES."""
    if not torch.is_tensor(x) or x.dim() != 5 or x.shape[1] != 3 or tuple(x.shape[3:]) != (16, 16):
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name} must be clips of shape (N, 3, F, 16, 16), got {shape}")
    check_int(f"{name}'s frame count", x.shape[2], 1, MAX_FRAMES)
    if not x.is_floating_point() or not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be a finite floating-point tensor")


def frames_of(x: torch.Tensor) -> torch.Tensor:
    """Clips (N, 3, F, H, W) -> their frames as images (N * F, 3, H, W), clip by clip."""
    N, C, Fr, H, W = x.shape
    return x.transpose(1, 2).reshape(N * Fr, C, H, W)


def velocity(centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares straight line through each clip's centroids (N, F, 2): c_f ~ c + f v.

    Returns the velocity v (N, 2) in pixels per frame (row, col) and the root-mean-square distance (N,) of the
    centroids from the fitted line (0 for a uniform straight motion; 0 velocity for one frame).
    """
    f = torch.arange(centroids.shape[1], dtype=centroids.dtype)
    fc = f - f.mean()                                                            # (F,)
    denom = (fc ** 2).sum().clamp(min=1e-12)
    mean = centroids.mean(dim=1, keepdim=True)                                   # (N, 1, 2)
    v = (fc[None, :, None] * (centroids - mean)).sum(dim=1) / denom              # (N, 2)
    fit = mean + fc[None, :, None] * v[:, None, :]                               # (N, F, 2)
    rms = ((centroids - fit) ** 2).sum(dim=2).mean(dim=1).sqrt()                 # (N,)
    return v, rms


def read_motion(v: torch.Tensor, still_below: float = 0.25) -> list[tuple[str, str | None]]:
    """(direction, speed) from velocities (N, 2): the axis of the larger component and its sign; "slowly" below
    0.9 pixels per frame (half way between the two speeds), else "quickly"; ("none", None) if |v| < still_below."""
    out = []
    threshold = (SPEEDS["slowly"] + SPEEDS["quickly"]) / 2
    for vy, vx in v.tolist():
        if max(abs(vy), abs(vx)) < still_below:
            out.append(("none", None))
            continue
        direction = ("down" if vy > 0 else "up") if abs(vy) >= abs(vx) else ("right" if vx > 0 else "left")
        out.append((direction, "slowly" if max(abs(vy), abs(vx)) < threshold else "quickly"))
    return out


class ClipProbe(ShapesProbe):
    """Reads (shape, colour, direction, speed) back from clips (N, 3, F, 16, 16) in [-1, 1].

    Frame by frame it uses chapter 12's probe (``diffedu.shapes.ShapesProbe``): colour from the weighted mean colour
    of the bright pixels, shape from a logistic-regression classifier of the centred brightness map, here trained on
    ``train_size`` clean frames of this data set. A clip's shape and colour are the majority over its frames;
    direction and speed come from ``velocity`` of the frames' centroids (``read_motion``).
    """

    def __init__(self, train_size: int = 500, seed: int = 1):
        from sklearn.linear_model import LogisticRegression

        data = make_clips(train_size, split="all", frames=MAX_FRAMES, seed=seed)
        labels = np.repeat([SHAPES.index(s.shape) for s in data.specs], MAX_FRAMES)
        self.classifier = LogisticRegression(C=0.5, max_iter=3000)
        self.classifier.fit(self._centred_weights(frames_of(data.x)), labels)

    def read_frames(self, x: torch.Tensor) -> tuple[list[list[str]], list[list[str]], torch.Tensor]:
        """Per-frame shapes and colours (N lists of F names each) and centroids (N, F, 2) of clips x."""
        check_clips(x)
        N, Fr = x.shape[0], x.shape[2]
        frames = frames_of(x.detach().cpu().float())                              # (N F, 3, 16, 16)
        w = self._weights(frames)                                                 # (N F, 16, 16)
        u = (frames.clamp(-1, 1) + 1) / 2                                         # (N F, 3, 16, 16) in [0, 1]
        rgb = (u * w[:, None]).sum(dim=(2, 3)) / w.sum(dim=(1, 2)).clamp(min=1e-6)[:, None]  # (N F, 3)
        rgb = rgb / rgb.amax(dim=1, keepdim=True).clamp(min=1e-6)
        palette = torch.tensor([PALETTE[c] for c in COLOURS])                     # (4, 3)
        colours = [COLOURS[k] for k in torch.cdist(rgb, palette).argmin(dim=1).tolist()]
        shapes = [SHAPES[k] for k in self.classifier.predict(self._centred_weights(frames)).tolist()]
        centroids = self._centroids(w).reshape(N, Fr, 2)                          # (N, F, 2)
        return ([shapes[k * Fr:(k + 1) * Fr] for k in range(N)], [colours[k * Fr:(k + 1) * Fr] for k in range(N)],
                centroids)

    def read(self, x: torch.Tensor) -> list[dict]:
        """Every clip's attributes: dicts with shape, colour, direction, speed (the clip's readings), and
        ``consistency`` (the fraction of frames whose shape and colour equal the clip's) and ``path_rms`` (pixels
        from a straight uniform path: ``velocity``)."""
        shapes, colours, centroids = self.read_frames(x)
        v, rms = velocity(centroids)
        out = []
        for s, c, (direction, speed), r in zip(shapes, colours, read_motion(v), rms.tolist()):
            shape, colour = Counter(s).most_common(1)[0][0], Counter(c).most_common(1)[0][0]
            same = np.mean([a == shape and b == colour for a, b in zip(s, c)])
            out.append({"shape": shape, "colour": colour, "direction": direction, "speed": speed,
                        "consistency": float(same), "path_rms": r})
        return out

    def agreement(self, x: torch.Tensor, captions: list[str]) -> dict[str, float]:
        """Fraction of clips whose readings match their caption, per attribute and for every attribute the caption
        names ("all"); plus the mean ``consistency`` and ``path_rms`` over the clips."""
        if len(captions) != len(x):
            raise ValueError(f"captions must have one entry per clip ({len(x)}), got {len(captions)}")
        asked = [parse_clip_caption(c) for c in captions]
        read = self.read(x)
        hits = {key: [] for key in ("shape", "colour", "direction", "speed", "all")}
        for a, r in zip(asked, read):
            for key in ("shape", "colour", "direction"):
                hits[key].append(a[key] == r[key])
            if a["speed"] is not None:
                hits["speed"].append(a["speed"] == r["speed"])
            hits["all"].append(all(a[k] == r[k] for k in a if a[k] is not None))
        out = {key: float(np.mean(v)) if v else float("nan") for key, v in hits.items()}
        out["consistency"] = float(np.mean([r["consistency"] for r in read]))
        out["path_rms"] = float(np.mean([r["path_rms"] for r in read]))
        return out


@lru_cache(maxsize=1)
def clip_probe() -> ClipProbe:
    """A cached :class:`ClipProbe` (training takes a few seconds)."""
    return ClipProbe()
