"""Pictures of the sphere and the torus (chapter 9): a globe, a world map, the flat torus, the donut, animations.

* ``globe``: the sphere seen from a viewpoint (orthographic, like a photo of the Earth): a density painted on the
  visible hemisphere and/or points, those on the far side faint, with a graticule every 30 degrees.
* ``world_map``: the whole sphere at once on a Mollweide (equal-area) map, so that areas of density compare.
* ``flat_torus``: the torus as the square [-180, 180)^2 with opposite edges glued (how a Ramachandran plot is drawn).
* ``donut``: the same torus embedded in 3-D, coloured by a density.
* ``animate_globe``: a self-contained JS animation of point clouds on the globe (plays in the static book).

Helpers take torch tensors or arrays; densities are callables ``log_density(points) -> (N,)`` on float64 points.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes

from .viz import PALETTE, _deterministic_ids, _palette_frames, to_numpy

LogDensity = Callable[[torch.Tensor], torch.Tensor]


def view_basis(elev: float, azim: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The unit vector towards the viewer c (elevation, azimuth in degrees) and the screen's right and up axes."""
    e, a = math.radians(elev), math.radians(azim)
    c = np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    right = np.array([-math.sin(a), math.cos(a), 0.0])
    return c, right, np.cross(c, right)


def _graticule(ax: Axes, basis, step: int = 30) -> None:
    c, right, up = basis
    s = np.linspace(-np.pi, np.pi, 181)
    lines = [np.stack([np.cos(la) * np.cos(s), np.cos(la) * np.sin(s), np.full_like(s, np.sin(la))], 1)
             for la in np.radians(np.arange(-90 + step, 90, step))]
    lines += [np.stack([np.cos(s / 2) * np.cos(lo), np.cos(s / 2) * np.sin(lo), np.sin(s / 2)], 1)
              for lo in np.radians(np.arange(-180, 180, step))]
    for p in lines:
        front = np.where(p @ c > 0, 1.0, np.nan)
        ax.plot(front * (p @ right), front * (p @ up), color="0.45", lw=0.4, alpha=0.6)
    ax.add_patch(plt.Circle((0, 0), 1, fill=False, color="0.3", lw=0.8, zorder=3))


def globe(points=None, log_density: LogDensity | None = None, ax: Axes | None = None, elev: float = 25,
          azim: float = -20, title: str | None = None, resolution: int = 160, s: float = 2, color: str = PALETTE[1],
          cmap: str = "YlGnBu", vmax: float | None = None) -> Axes:
    """The sphere seen from (elev, azim): ``log_density`` painted on the visible hemisphere as exp(log p), and
    ``points`` (N, 3) on top (those behind the sphere faint). Returns the Axes."""
    ax = ax or plt.subplots(figsize=(3.2, 3.2))[1]
    basis = view_basis(elev, azim)
    c, right, up = basis
    if log_density is None:
        ax.add_patch(plt.Circle((0, 0), 1, color="0.96", zorder=0))            # the sphere's body
    else:
        u = np.linspace(-1, 1, resolution)
        U, V = np.meshgrid(u, u)
        inside = U ** 2 + V ** 2 < 1
        W = np.sqrt(np.clip(1 - U ** 2 - V ** 2, 0, None))
        pts = U[..., None] * right + V[..., None] * up + W[..., None] * c                # (R, R, 3)
        dens = np.exp(to_numpy(log_density(torch.as_tensor(pts[inside], dtype=torch.float64))))
        image = np.full(U.shape, np.nan)
        image[inside] = dens
        ax.imshow(image, origin="lower", extent=(-1, 1, -1, 1), cmap=cmap, vmin=0,
                  vmax=vmax if vmax is not None else np.nanmax(image), interpolation="bilinear")
    if points is not None:
        p = to_numpy(points).astype(np.float64)
        front = p @ c > 0
        ax.scatter(p[~front] @ right, p[~front] @ up, s=s, color="0.6", alpha=0.15, linewidths=0)
        ax.scatter(p[front] @ right, p[front] @ up, s=s, color=color, alpha=0.7, linewidths=0)
    _graticule(ax, basis)
    ax.set(xlim=(-1.03, 1.03), ylim=(-1.03, 1.03), aspect="equal")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def lat_lon(points) -> tuple[np.ndarray, np.ndarray]:
    """Latitude and longitude in radians of unit vectors (N, 3)."""
    p = to_numpy(points).astype(np.float64)
    return np.arcsin(np.clip(p[:, 2], -1, 1)), np.arctan2(p[:, 1], p[:, 0])


def world_map(points=None, log_density: LogDensity | None = None, ax: Axes | None = None,
              title: str | None = None, resolution: int = 120, s: float = 1.5, color: str = PALETTE[1],
              cmap: str = "YlGnBu", vmax: float | None = None, colorbar: bool = True) -> Axes:
    """The whole sphere on a Mollweide (equal-area) map: density as colour and/or points. ``ax`` must have been
    made with ``projection='mollweide'`` (one is made when None). Returns the Axes."""
    if ax is None:
        ax = plt.figure(figsize=(5.0, 2.9)).add_subplot(projection="mollweide")
    if log_density is not None:
        lon = np.linspace(-np.pi, np.pi, 2 * resolution + 1)
        lat = np.linspace(-np.pi / 2, np.pi / 2, resolution + 1)
        LON, LAT = np.meshgrid((lon[1:] + lon[:-1]) / 2, (lat[1:] + lat[:-1]) / 2)
        pts = np.stack([np.cos(LAT) * np.cos(LON), np.cos(LAT) * np.sin(LON), np.sin(LAT)], -1).reshape(-1, 3)
        dens = np.exp(to_numpy(log_density(torch.as_tensor(pts, dtype=torch.float64)))).reshape(LAT.shape)
        mesh = ax.pcolormesh(lon, lat, dens, cmap=cmap, vmin=0, vmax=vmax, shading="flat", rasterized=True)
        if colorbar:
            plt.colorbar(mesh, ax=ax, shrink=0.6, pad=0.02, label="density per unit area")
    if points is not None:
        la, lo = lat_lon(points)
        ax.scatter(lo, la, s=s, color=color, alpha=0.6, linewidths=0)
    ax.set_xticklabels([])
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.4)
    if title:
        ax.set_title(title)
    return ax


def flat_torus(points=None, log_density: LogDensity | None = None, ax: Axes | None = None,
               title: str | None = None, resolution: int = 120, s: float = 1.5, color: str = PALETTE[1],
               cmap: str = "YlGnBu", vmax: float | None = None, labels: Sequence[str] = ("φ (degrees)", "ψ (degrees)"),
               ) -> Axes:
    """The torus as the square [-180, 180)^2 with opposite edges glued: density and/or points (N, 2) in radians."""
    ax = ax or plt.subplots(figsize=(3.3, 3.2))[1]
    if log_density is not None:
        g = np.linspace(-np.pi, np.pi, resolution + 1)
        centres = (g[1:] + g[:-1]) / 2
        P, Q = np.meshgrid(centres, centres)
        pts = torch.as_tensor(np.stack([P, Q], -1).reshape(-1, 2), dtype=torch.float64)
        dens = np.exp(to_numpy(log_density(pts))).reshape(P.shape)
        ax.imshow(dens, origin="lower", extent=(-180, 180, -180, 180), cmap=cmap, interpolation="bilinear",
                  norm=mpl.colors.PowerNorm(0.5, vmin=0, vmax=vmax))          # colour ~ sqrt(p): faint modes show
    if points is not None:
        p = np.degrees(to_numpy(points).astype(np.float64))
        ax.scatter(p[:, 0], p[:, 1], s=s, color=color, alpha=0.6, linewidths=0)
    ax.set(xlim=(-180, 180), ylim=(-180, 180), xticks=range(-180, 181, 90), yticks=range(-180, 181, 90),
           xlabel=labels[0], ylabel=labels[1], aspect="equal")
    ax.grid(False)
    if title:
        ax.set_title(title)
    return ax


def donut(log_density: LogDensity, ax=None, title: str | None = None, resolution: int = 64, R: float = 2.0,
          r: float = 0.9, cmap: str = "Blues", elev: float = -35, azim: float = -60):
    """The torus embedded in 3-D, ((R + r cos psi) cos phi, (R + r cos psi) sin phi, r sin psi), coloured by a
    density of (phi, psi). ``ax`` must be a 3-D Axes (one is made when None)."""
    if ax is None:
        ax = plt.figure(figsize=(3.6, 3.0)).add_subplot(projection="3d")
    g = np.linspace(-np.pi, np.pi, resolution + 1)
    P, Q = np.meshgrid(g, g)                                              # phi, psi
    pts = torch.as_tensor(np.stack([P, Q], -1).reshape(-1, 2), dtype=torch.float64)
    dens = np.exp(to_numpy(log_density(pts))).reshape(P.shape)
    colours = mpl.colormaps[cmap](np.sqrt(dens / dens.max()))               # sqrt: the faint modes show too
    normal = np.stack([np.cos(Q) * np.cos(P), np.cos(Q) * np.sin(P), np.sin(Q)], -1)
    light = np.array(view_basis(elev + 20, azim - 30)[0])                   # lit from above the viewer
    colours[..., :3] *= (0.6 + 0.4 * np.clip(normal @ light, 0, None))[..., None]  # Lambert shading
    X, Y, Z = (R + r * np.cos(Q)) * np.cos(P), (R + r * np.cos(Q)) * np.sin(P), r * np.sin(Q)
    ax.plot_surface(X, Y, Z, facecolors=colours, rstride=1, cstride=1, linewidth=0, antialiased=False, shade=False)
    ax.set(xlim=(-2.6, 2.6), ylim=(-2.6, 2.6), zlim=(-1.6, 1.6))
    ax.set_box_aspect((1, 1, 0.6))
    ax.view_init(elev=elev, azim=azim)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def animate_globe(frames: Sequence, titles: Sequence[str], interval: int = 150, size: float = 3.0, dpi: int = 72,
                  elev: float = 25, azim: float = -20, s: float = 2):
    """A self-contained JS animation (``IPython.display.HTML``) of point clouds (T, N, 3) on the globe."""
    from IPython.display import HTML
    from matplotlib.animation import FuncAnimation

    data = [to_numpy(f).astype(np.float64) for f in frames]
    if len(titles) != len(data):
        raise ValueError(f"got {len(titles)} titles for {len(data)} frames")
    c, right, up = view_basis(elev, azim)
    rc = {"figure.dpi": dpi, "savefig.dpi": dpi, "savefig.bbox": "standard", "figure.constrained_layout.use": False}
    with mpl.rc_context(rc):
        fig, ax = plt.subplots(figsize=(size, size + 0.25))
        fig.subplots_adjust(0, 0, 1, 0.92)
        back = ax.scatter([], [], s=s, color="0.6", alpha=0.15, linewidths=0)
        ax.add_patch(plt.Circle((0, 0), 1, color="0.96", zorder=0))
        front = ax.scatter([], [], s=s, color=PALETTE[1], alpha=0.7, linewidths=0)
        _graticule(ax, (c, right, up))
        ax.set(xlim=(-1.03, 1.03), ylim=(-1.03, 1.03), aspect="equal")
        ax.set_axis_off()
        title = ax.set_title(titles[0], fontsize=10)

        def update(k: int):
            p = data[k]
            visible = p @ c > 0
            back.set_offsets(np.stack([p[~visible] @ right, p[~visible] @ up], 1))
            front.set_offsets(np.stack([p[visible] @ right, p[visible] @ up], 1))
            title.set_text(titles[k])
            return back, front, title

        update(0)
        html = FuncAnimation(fig, update, frames=len(data), interval=interval, blit=False).to_jshtml(
            default_mode="once")
        plt.close(fig)
    return HTML(_deterministic_ids(_palette_frames(html)))
