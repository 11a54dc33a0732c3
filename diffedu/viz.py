"""Plot helpers for the book: image grids, 2-D point clouds, trajectories, schedules, score fields, animations.

Every helper accepts torch tensors (on any device; they are detached and copied to the CPU) or NumPy arrays,
draws into ``ax`` when one is given (else makes a small figure sized for the ~700 px book column), gives its
axes labels and an optional title, and returns the Axes (``compare_2d`` returns the Figure). Nothing here is
random, so a re-executed notebook draws the same figure.

Animations (``animate_reverse``) are self-contained JavaScript (``FuncAnimation.to_jshtml``): they play in the
static book with no kernel. Their size is kept small: at most ``max_frames`` frames of a small, low-dpi figure
(40 frames of an 8x8 grid of 8x8 images is about 0.5 MB of HTML).
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

ArrayLike = Any  # a torch.Tensor (any device) or anything np.asarray accepts
Limits = float | tuple[float, float] | tuple[tuple[float, float], tuple[float, float]] | None

BOOK_WIDTH_IN = 7.0  # inches; at figure.dpi = 100 this is the ~700 px book column

# Okabe & Ito's colour-blind-safe palette, used as the default colour cycle.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]

STYLE: dict[str, Any] = {
    "figure.dpi": 100,  # inline size: 1 inch = 100 px, so BOOK_WIDTH_IN fills the column
    "figure.figsize": (6.0, 3.6),
    "figure.constrained_layout.use": True,
    "figure.facecolor": "white",
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "savefig.facecolor": "white",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "figure.titlesize": 12,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.6,
    "axes.prop_cycle": mpl.cycler(color=PALETTE),
    "lines.linewidth": 1.6,
    "image.interpolation": "nearest",  # 8x8 images stay crisp pixels, not blurred blobs
    "image.cmap": "viridis",
    "animation.html": "jshtml",  # a bare FuncAnimation in a cell also becomes self-contained JS
    "animation.embed_limit": 8.0,  # MB; our animations are far below, this only guards mistakes
    "svg.hashsalt": "diffedu",  # deterministic SVG ids, should anyone save SVG
}


def set_style() -> None:
    """Apply the book's matplotlib style (idempotent: it only sets fixed rcParams).

    The backend is left alone: inside IPython/Jupyter the inline backend draws the figures, and in scripts
    matplotlib already falls back to the non-interactive Agg backend when there is no display.
    """
    mpl.rcParams.update(STYLE)


# --------------------------------------------------------------------------------------------------- helpers


def to_numpy(x: ArrayLike) -> np.ndarray:
    """A float NumPy copy of ``x``; torch tensors are detached and moved to the CPU first."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize)
    return ax


def _limits(lim: Limits, *clouds: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """(xlim, ylim) from ``lim`` (±a, (lo, hi) for both axes, or per axis) or, if None, a square box around
    the 0.5–99.5 % quantiles of all points, so a few outliers do not squash the picture."""
    if lim is None:
        pts = np.concatenate([c.reshape(-1, 2) for c in clouds], axis=0)
        pts = pts[np.isfinite(pts).all(axis=1)]
        if len(pts) == 0:
            return (-1.0, 1.0), (-1.0, 1.0)
        lo, hi = np.quantile(pts, [0.005, 0.995], axis=0)
        center, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-3) * 1.08
        return (center[0] - half, center[0] + half), (center[1] - half, center[1] + half)
    if np.isscalar(lim):
        return (-float(lim), float(lim)), (-float(lim), float(lim))
    if np.isscalar(lim[0]):
        return (float(lim[0]), float(lim[1])), (float(lim[0]), float(lim[1]))
    return tuple(map(float, lim[0])), tuple(map(float, lim[1]))  # type: ignore[return-value]


def _style_plane(ax: Axes, lim: tuple[tuple[float, float], tuple[float, float]], title: str | None) -> None:
    ax.set_xlim(*lim[0])
    ax.set_ylim(*lim[1])
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if title:
        ax.set_title(title)


# ----------------------------------------------------------------------------------------------- image grids


def tile_images(
    x: ArrayLike,
    nrow: int | None = None,
    value_range: tuple[float, float] | None = (-1.0, 1.0),
    padding: int = 1,
    pad_value: float = 1.0,
    row_gap: int | None = None,
) -> np.ndarray:
    """Tile a batch of images into one array in [0, 1].

    ``x`` is (N, C, H, W) with C = 1 or 3, or (N, H, W). ``value_range`` (lo, hi) maps lo → 0 and hi → 1
    (clipped); None stretches the batch's own min/max. Images are laid out ``nrow`` per row (default: a
    near-square grid) with ``padding`` pixels of ``pad_value`` between and around them (``row_gap`` pixels
    below each row instead, if given). Returns (H', W') for grey images or (H', W', 3) for colour.
    """
    a = to_numpy(x)
    if a.ndim == 2:
        a = a[None, None]
    elif a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or a.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, C, H, W) with C in (1, 3), got shape {tuple(to_numpy(x).shape)}")
    lo, hi = value_range if value_range is not None else (float(a.min()), float(a.max()))
    a = np.clip((a - lo) / max(hi - lo, 1e-12), 0.0, 1.0)

    n, c, h, w = a.shape
    ncol = nrow if nrow is not None else int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncol))
    p, g = padding, padding if row_gap is None else row_gap
    grid = np.full((c, nrows * (h + g) + p, ncol * (w + p) + p), pad_value, dtype=np.float32)
    for k in range(n):
        r, q = divmod(k, ncol)
        top, left = p + r * (h + g), p + q * (w + p)
        grid[:, top : top + h, left : left + w] = a[k]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def image_grid(
    x: ArrayLike,
    nrow: int | None = None,
    title: str | None = None,
    ax: Axes | None = None,
    labels: Sequence[str] | None = None,
    cmap: str = "gray",
    value_range: tuple[float, float] | None = (-1.0, 1.0),
    padding: int = 1,
    pad_value: float = 1.0,
) -> Axes:
    """Show a batch of images (N, C, H, W) in [-1, 1] as one tiled picture with thin borders.

    ``nrow`` is the number of images per row (torchvision's name); ``labels`` (one per image) are written
    under each tile. Returns the Axes.
    """
    shape = to_numpy(x).shape
    n = shape[0] if len(shape) >= 3 else 1
    h, w = shape[-2:]
    ncol = nrow if nrow is not None else int(np.ceil(np.sqrt(n)))
    gap = padding + max(3, int(np.ceil(0.2 * h))) if labels is not None else padding  # room for a label
    grid = tile_images(x, nrow=ncol, value_range=value_range, padding=padding, pad_value=pad_value, row_gap=gap)
    if ax is None:
        width = float(np.clip(0.8 * ncol, 2.5, BOOK_WIDTH_IN))
        height = width * grid.shape[0] / grid.shape[1] + (0.35 if title else 0.05)
        ax = _new_axes(None, (width, height))
    ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if labels is not None:
        if len(labels) != n:
            raise ValueError(f"got {len(labels)} labels for {n} images")
        for k, label in enumerate(labels):  # each label is centred in the gap under its tile
            r, q = divmod(k, ncol)
            cx = padding + q * (w + padding) + (w - 1) / 2
            cy = padding + r * (h + gap) + h - 0.5 + (gap - padding) / 2
            ax.text(cx, cy, str(label), ha="center", va="center", fontsize=8)
    if title:
        ax.set_title(title)
    return ax


# --------------------------------------------------------------------------------------------- 2-D point data


def scatter_2d(
    points: ArrayLike,
    ax: Axes | None = None,
    title: str | None = None,
    s: float = 2,
    alpha: float = 0.5,
    label: str | None = None,
    lim: Limits = None,
    color: str | None = None,
) -> Axes:
    """Scatter a 2-D point cloud (N, 2) on equal axes; ``lim`` is ±a, (lo, hi) or ((x0, x1), (y0, y1))."""
    pts = to_numpy(points).reshape(-1, 2)
    ax = _new_axes(ax, (3.6, 3.6))
    ax.scatter(pts[:, 0], pts[:, 1], s=s, alpha=alpha, label=label, color=color, linewidths=0)
    _style_plane(ax, _limits(lim, pts), title)
    if label is not None:
        ax.legend(loc="upper right", markerscale=max(1.0, 12.0 / max(s, 1e-3)) ** 0.5)
    return ax


def plot_trajectories(
    traj: ArrayLike,
    ax: Axes | None = None,
    n: int = 64,
    title: str | None = None,
    lim: Limits = None,
    cmap: str = "viridis",
    lw: float = 0.7,
    alpha: float = 0.6,
    start_label: str = "start",
    end_label: str = "end",
) -> Axes:
    """Draw ``n`` of the paths in ``traj`` (T+1, N, 2), from ``traj[0]`` (start, hollow grey circle) to
    ``traj[-1]`` (end, filled dot). Each line is coloured by its step along ``cmap`` (dark = start), so the
    direction of travel is visible. The ``n`` paths are evenly spaced indices, not a random draw."""
    tr = to_numpy(traj)
    if tr.ndim != 3 or tr.shape[-1] != 2:
        raise ValueError(f"expected a trajectory (T+1, N, 2), got shape {tr.shape}")
    steps, total, _ = tr.shape
    idx = np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(int))
    tr = tr[:, idx]
    ax = _new_axes(ax, (3.6, 3.6))

    # one segment per (step, path): colour by step
    segments = np.stack([tr[:-1], tr[1:]], axis=2).reshape(-1, 2, 2)  # ((T)*n, 2 points, 2 coords)
    step_of_segment = np.repeat(np.arange(steps - 1), len(idx))
    lines = LineCollection(segments, cmap=cmap, linewidths=lw, alpha=alpha)
    lines.set_array(0.85 * step_of_segment / max(steps - 2, 1))  # stop short of viridis' pale yellow
    lines.set_clim(0.0, 1.0)
    ax.add_collection(lines)
    ax.scatter(tr[0, :, 0], tr[0, :, 1], s=14, facecolors="none", edgecolors="0.45", linewidths=0.8,
               label=start_label, zorder=3)
    ax.scatter(tr[-1, :, 0], tr[-1, :, 1], s=12, color=mpl.colormaps[cmap](0.85), edgecolors="black",
               linewidths=0.3, label=end_label, zorder=4)
    _style_plane(ax, _limits(lim, tr), title)
    ax.legend(loc="upper right")
    return ax


def compare_2d(
    panels: Mapping[str, ArrayLike],
    lim: Limits = None,
    s: float = 2,
    alpha: float = 0.5,
    title: str | None = None,
    panel_size: float = 2.6,
) -> Figure:
    """Point clouds side by side, one panel per ``name -> (N, 2) points``, all with the same limits."""
    clouds = {name: to_numpy(p).reshape(-1, 2) for name, p in panels.items()}
    shared = _limits(lim, *clouds.values())
    k = len(clouds)
    size = min(panel_size, BOOK_WIDTH_IN / k)
    fig, axes = plt.subplots(1, k, figsize=(size * k, size + (0.55 if title else 0.3)),
                             sharex=True, sharey=True, squeeze=False)
    for i, (ax, (name, pts)) in enumerate(zip(axes[0], clouds.items())):
        ax.scatter(pts[:, 0], pts[:, 1], s=s, alpha=alpha, linewidths=0, color=PALETTE[i % len(PALETTE)])
        _style_plane(ax, shared, name)
        if i > 0:
            ax.set_ylabel("")
    if title:
        fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------------------- schedules, fields


def plot_schedules(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    ax: Axes | None = None,
    title: str | None = None,
    xlabel: str = "$t$",
    ylabel: str = "value",
    logy: bool = False,
) -> Axes:
    """One line per ``name -> (t, value)``, e.g. the log-SNR of several noise schedules (``logy=True``)."""
    ax = _new_axes(ax, (5.0, 3.2))
    for name, (t, value) in curves.items():
        ax.plot(to_numpy(t).ravel(), to_numpy(value).ravel(), label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if any(not name.startswith("_") for name in curves):  # matplotlib's rule: "_name" stays out of legends
        ax.legend()
    return ax


def score_field(
    fn: Callable[[torch.Tensor], ArrayLike],
    lim: Limits,
    n: int = 20,
    ax: Axes | None = None,
    title: str | None = None,
    normalize: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    cmap: str = "viridis",
) -> Axes:
    """Quiver plot of a vector field ``fn: (M, 2) tensor -> (M, 2)`` (e.g. a score ∇ log p) on an n×n grid.

    Scores span orders of magnitude (tiny near a mode, huge far away), so by default every arrow has the same
    length and its colour shows log10 of its true length (the colour bar). ``normalize=False`` draws true
    lengths. The grid is made on ``device`` in ``dtype`` and ``fn`` runs under ``torch.no_grad()``.
    """
    (x0, x1), (y0, y1) = _limits(lim)
    xs, ys = np.linspace(x0, x1, n), np.linspace(y0, y1, n)
    gx, gy = np.meshgrid(xs, ys)
    grid = torch.tensor(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=dtype, device=device)
    with torch.no_grad():
        v = to_numpy(fn(grid)).reshape(-1, 2)
    norm = np.linalg.norm(v, axis=1)
    ax = _new_axes(ax, (4.2, 3.6))
    if normalize:
        u = v / np.maximum(norm, 1e-12)[:, None]
        spacing = (x1 - x0) / max(n - 1, 1)
        q = ax.quiver(gx.ravel(), gy.ravel(), u[:, 0], u[:, 1], np.log10(np.maximum(norm, 1e-12)),
                      cmap=cmap, angles="xy", scale_units="xy", scale=1.0 / (0.8 * spacing), width=0.005)
        ax.figure.colorbar(q, ax=ax, label=r"$\log_{10}\,\|\mathrm{field}\|$", shrink=0.85)
    else:
        ax.quiver(gx.ravel(), gy.ravel(), v[:, 0], v[:, 1], color=PALETTE[0], angles="xy", width=0.004)
    _style_plane(ax, ((x0, x1), (y0, y1)), title)
    ax.grid(False)
    return ax


# ------------------------------------------------------------------------------------------------ animations


def subsample_frames(num_frames: int, max_frames: int) -> np.ndarray:
    """At most ``max_frames`` evenly spaced frame indices, always keeping the first and the last."""
    if num_frames <= max_frames:
        return np.arange(num_frames)
    return np.unique(np.linspace(0, num_frames - 1, max_frames).round().astype(int))


def _stack_frames(frames: ArrayLike | Sequence[ArrayLike]) -> np.ndarray:
    if isinstance(frames, (list, tuple)):
        return np.stack([to_numpy(f) for f in frames])
    return to_numpy(frames)


def animate_reverse(
    frames: ArrayLike | Sequence[ArrayLike],
    titles: Sequence[str] | None = None,
    interval: int = 120,
    kind: str | None = None,
    max_frames: int = 40,
    nrow: int | None = None,
    value_range: tuple[float, float] | None = (-1.0, 1.0),
    cmap: str = "gray",
    lim: Limits = None,
    s: float = 2,
    alpha: float = 0.5,
    size: float | None = None,
    dpi: int = 72,
    embed_limit_mb: float = 8.0,
):
    """A self-contained JS animation (``IPython.display.HTML``) of a reverse (or forward) process.

    ``frames`` is a list or array of image batches (T, N, C, H, W) -> one grid per frame, or of point clouds
    (T, N, 2) -> one scatter per frame; ``kind`` ("images" | "points") is inferred from the shape when None.
    ``titles`` (one per input frame) label the frames. To keep notebooks small, at most ``max_frames`` evenly
    spaced frames are kept (first and last included), drawn about ``size`` inches wide (default 4 for images,
    3.2 for points) at ``dpi`` and stored as 256-colour PNGs: 40 frames of an 8x8 grid of 8x8 digits going
    from noise to data take about 0.5 MB, 40 frames of 2,000 points about 0.6 MB. The element id is derived
    from the content (so re-running gives identical output) and the figure is closed (so the notebook shows
    no extra static image).
    """
    from IPython.display import HTML
    from matplotlib.animation import FuncAnimation

    data = _stack_frames(frames)
    if kind is None:
        kind = "points" if data.ndim == 3 and data.shape[-1] == 2 else "images"
    if kind not in ("images", "points"):
        raise ValueError(f"kind must be 'images' or 'points', got {kind!r}")
    if titles is not None and len(titles) != len(data):
        raise ValueError(f"got {len(titles)} titles for {len(data)} frames")
    size = size if size is not None else (4.0 if kind == "images" else 3.2)
    keep = subsample_frames(len(data), max_frames)
    data = data[keep]
    labels = [str(titles[i]) for i in keep] if titles is not None else [
        f"frame {i + 1}/{len(keep)}" for i in range(len(keep))]

    # frames are saved at `dpi`, untrimmed (a per-frame tight bbox would make the frames jump)
    rc = {"figure.dpi": dpi, "savefig.dpi": dpi, "savefig.bbox": "standard", "animation.embed_limit": embed_limit_mb,
          # layouts are fixed once (below); savefig would otherwise switch constrained layout back on per frame
          "figure.constrained_layout.use": False}
    with mpl.rc_context(rc):
        if kind == "images":
            grids = [tile_images(batch, nrow=nrow, value_range=value_range) for batch in data]
            fig, ax = _pixel_exact_axes(grids[0].shape[:2], size, dpi)
            artist = ax.imshow(grids[0], cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_axis_off()

            def update(k: int):
                artist.set_data(grids[k])
                title.set_text(labels[k])
                return artist, title

        else:
            if data.ndim != 3 or data.shape[-1] != 2:
                raise ValueError(f"expected point clouds (T, N, 2), got shape {data.shape}")
            fig, ax = plt.subplots(figsize=(size, size + 0.2), layout="constrained")
            artist = ax.scatter(data[0, :, 0], data[0, :, 1], s=s, alpha=alpha, linewidths=0, color=PALETTE[0])
            _style_plane(ax, _limits(lim, data), labels[0])
            fig.canvas.draw()  # lay out once, then freeze: same frame geometry throughout, and much faster
            fig.set_layout_engine("none")

            def update(k: int):
                artist.set_offsets(data[k])
                title.set_text(labels[k])
                return artist, title

        title = ax.set_title(labels[0], fontsize=10)
        anim = FuncAnimation(fig, update, frames=len(data), interval=interval, blit=False)
        html = anim.to_jshtml(default_mode="once")
        plt.close(fig)
    return HTML(_deterministic_ids(_palette_frames(html)))


def _pixel_exact_axes(grid_hw: tuple[int, int], size: float, dpi: int) -> tuple[Figure, Axes]:
    """A figure whose image axes cover an integer number of screen pixels per image pixel (crisp, and PNG
    compresses it well), with a 20 px strip on top for the title."""
    h, w = grid_hw
    k = max(1, round(size * dpi / w))
    title_px = 20
    fig = plt.figure(figsize=(k * w / dpi, (k * h + title_px) / dpi), layout="none")
    ax = fig.add_axes((0.0, 0.0, 1.0, k * h / (k * h + title_px)))
    return fig, ax


_FRAME = re.compile(r'(frames\[\d+\] = "data:image/png;base64,)([^"]*)(")')


def _palette_frames(html: str) -> str:
    """Re-encode each embedded PNG frame with a 256-colour palette: about half the bytes, same picture."""
    from PIL import Image

    def shrink(match: re.Match) -> str:
        png = base64.b64decode(match.group(2).replace("\\\n", ""))
        image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256)
        out = io.BytesIO()
        image.save(out, format="png")
        data = base64.encodebytes(out.getvalue()).decode("ascii").replace("\n", "\\\n")
        return match.group(1) + data + match.group(3)

    return _FRAME.sub(shrink, html)


def _deterministic_ids(html: str) -> str:
    """Replace matplotlib's random animation id (a uuid4) by a hash of the content."""
    match = re.search(r'id="_anim_img([0-9a-f]{32})"', html)
    if match is None:
        return html
    random_id = match.group(1)
    stable_id = hashlib.sha1(html.replace(random_id, "").encode()).hexdigest()[:32]
    return html.replace(random_id, stable_id)


# ------------------------------------------------------------------------------- score matching (chapter 2)


def compare_score_fields(
    fields: Mapping[str, Callable[[torch.Tensor], ArrayLike]],
    lim: Limits,
    n: int = 17,
    ncols: int | None = None,
    log_density: Callable[[torch.Tensor], ArrayLike] | Mapping[str, Callable[[torch.Tensor], ArrayLike]] | None = None,
    points: ArrayLike | None = None,
    title: str | None = None,
    panel_size: float = 2.6,
    dtype: torch.dtype = torch.float32,
    cmap: str = "viridis",
) -> Figure:
    """Vector fields side by side (e.g. a learned score beside the exact one), one panel per ``name -> fn``.

    Like :func:`score_field`, every arrow has the same length and its colour shows log10 of its true length, but
    here on one colour scale shared by all panels (one colour bar), so equal colours mean equal magnitudes.
    ``log_density`` (one function for all panels, or one per panel name) is drawn behind the arrows as grey
    filled contours (darker = more probable; e.g. the noised data's log-density), ``points`` as a light scatter.
    Panels wrap after ``ncols`` (default: all in one row). Returns the Figure.
    """
    if not fields:
        raise ValueError("fields must name at least one vector field")
    (x0, x1), (y0, y1) = _limits(lim)
    xs, ys = np.linspace(x0, x1, n), np.linspace(y0, y1, n)
    gx, gy = np.meshgrid(xs, ys)
    grid = torch.tensor(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=dtype)
    with torch.no_grad():
        vectors = {name: to_numpy(fn(grid)).reshape(-1, 2) for name, fn in fields.items()}
    norms = {name: np.linalg.norm(v, axis=1) for name, v in vectors.items()}
    logs = np.concatenate([np.log10(np.maximum(m, 1e-12)) for m in norms.values()])
    norm = mpl.colors.Normalize(vmin=float(np.quantile(logs, 0.02)), vmax=float(np.quantile(logs, 0.98)))

    k = len(fields)
    ncols = k if ncols is None else max(1, min(int(ncols), k))
    nrows = int(np.ceil(k / ncols))
    size = min(panel_size, (BOOK_WIDTH_IN - 0.8) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols + 0.8, size * nrows + (0.45 if title else 0.15)),
                             squeeze=False, sharex=True, sharey=True)
    if log_density is not None:
        fine = 80
        fx, fy = np.meshgrid(np.linspace(x0, x1, fine), np.linspace(y0, y1, fine))
        fine_grid = torch.tensor(np.stack([fx.ravel(), fy.ravel()], axis=1), dtype=torch.float64)
    spacing = (x1 - x0) / max(n - 1, 1)
    quiver = None
    for i, (name, v) in enumerate(vectors.items()):
        ax = axes[i // ncols][i % ncols]
        density_fn = log_density.get(name) if isinstance(log_density, Mapping) else log_density
        if density_fn is not None:
            with torch.no_grad():
                lp = to_numpy(density_fn(fine_grid)).reshape(fine, fine)
            lp = np.maximum(lp, lp.max() - 12.0)  # ~12 nats of dynamic range, then flat
            ax.contourf(fx, fy, lp, levels=10, cmap="Greys", alpha=0.45, zorder=0)
        if points is not None:
            pts = to_numpy(points).reshape(-1, 2)
            ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.3, color=PALETTE[1], linewidths=0, zorder=1)
        u = v / np.maximum(norms[name], 1e-12)[:, None]
        quiver = ax.quiver(gx.ravel(), gy.ravel(), u[:, 0], u[:, 1], np.log10(np.maximum(norms[name], 1e-12)),
                           cmap=cmap, norm=norm, angles="xy", scale_units="xy", scale=1.0 / (0.8 * spacing),
                           width=0.006, zorder=2)
        _style_plane(ax, ((x0, x1), (y0, y1)), name)
        ax.grid(False)
        if i % ncols:
            ax.set_ylabel("")
        if i // ncols < nrows - 1:
            ax.set_xlabel("")
    for j in range(k, nrows * ncols):
        axes[j // ncols][j % ncols].set_axis_off()
    fig.colorbar(quiver, ax=axes.ravel().tolist(), label=r"$\log_{10}\,\|\mathrm{field}\|$", shrink=0.85)
    if title:
        fig.suptitle(title)
    return fig


def plot_weights(
    fractions: Mapping[str, ArrayLike],
    ax: Axes | None = None,
    title: str | None = None,
    component_labels: Sequence[str] | None = None,
    ylabel: str = "fraction of samples",
) -> Axes:
    """Grouped bars of mixture-component fractions, one group per component and one bar per ``name -> (K,)``
    (e.g. the true weights, plain Langevin's and annealed Langevin's fractions), each bar labelled with its value."""
    if not fractions:
        raise ValueError("fractions must name at least one set of fractions")
    values = {name: to_numpy(f).ravel() for name, f in fractions.items()}
    K = {len(v) for v in values.values()}
    if len(K) != 1:
        raise ValueError(f"every entry of fractions must have the same number of components, got {sorted(K)}")
    K = K.pop()
    labels = list(component_labels) if component_labels is not None else [f"component {k + 1}" for k in range(K)]
    if len(labels) != K:
        raise ValueError(f"got {len(labels)} component labels for {K} components")
    ax = _new_axes(ax, (4.5, 3.0))
    width = 0.8 / len(values)
    for j, (name, v) in enumerate(values.items()):
        pos = np.arange(K) + (j - (len(values) - 1) / 2) * width
        bars = ax.bar(pos, v, width=width * 0.95, label=name, color=PALETTE[j % len(PALETTE)])
        ax.bar_label(bars, labels=[f"{x:.2f}" for x in v], fontsize=7, padding=1)
    ax.set_xticks(np.arange(K), labels)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(float(max(v.max() for v in values.values())) * 1.2, 0.1))
    ax.grid(axis="x", visible=False)
    ax.legend()
    if title:
        ax.set_title(title)
    return ax
