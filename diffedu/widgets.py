"""Interactive explorers where a kernel runs, with a static fallback that the book always shows.

``timestep_slider(render, values)`` always draws a static strip of a few values (so the rendered book and
re-executed notebooks show something meaningful and deterministic) and, only in a live Jupyter/Colab
kernel, adds a slider over all ``values`` below it.

When is it interactive?  ``interactive_available()`` is True only if all of these hold:

1. the environment variable ``DIFFEDU_STATIC`` is not set to 1/true/yes/on,
2. ``ipywidgets`` imports,
3. we run inside an IPython *kernel* (Jupyter, JupyterLab, Colab, VS Code), not a script or terminal, and
4. the kernel was not started by a headless runner: on Linux, none of the kernel's ancestor processes is
   pytest (nbval), nbconvert, nbclient, papermill, jupyter-book or jupyter-cache. ``DIFFEDU_STATIC=0`` skips
   this check (for an unusual front end whose parent process looks like a runner).

Headless runs must stay static because a widget's output carries a random model id and its state lands in
the notebook's metadata; the test command sets ``DIFFEDU_STATIC=1`` (rule 1) and rule 4 catches a forgotten
variable, e.g. ``jupyter nbconvert --execute`` run by hand to refresh a chapter's outputs.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .viz import BOOK_WIDTH_IN

# argv entries (file names) of programs that execute notebooks without a person watching
HEADLESS_RUNNERS = frozenset({
    "pytest", "py.test", "nbval", "nbconvert", "jupyter-nbconvert", "nbclient", "jupyter-execute",
    "papermill", "jupyter-book", "jb", "jcache", "sphinx-build",
})
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def interactive_available() -> bool:
    """True when a slider can actually be used: see the module docstring for the four rules."""
    flag = os.environ.get("DIFFEDU_STATIC", "").strip().lower()
    if flag in _TRUE:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    if not _in_kernel():
        return False
    return flag in _FALSE or not _started_by_headless_runner()


def _in_kernel() -> bool:
    """Inside an IPython kernel (a notebook front end), not a script or a terminal IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


@functools.lru_cache(maxsize=1)
def _started_by_headless_runner(max_depth: int = 8) -> bool:
    """Whether this process or an ancestor is a notebook runner (Linux /proc only; elsewhere False)."""
    pid = os.getpid()
    for _ in range(max_depth):
        if pid <= 1:
            return False
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        names = [os.path.basename(arg) for arg in argv[:4]]
        if any(name in HEADLESS_RUNNERS for name in names):
            return True
        if "jupyter" in names and any(name in ("nbconvert", "execute", "book") for name in names):
            return True
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4 of /proc/PID/stat: the parent's pid
    return False


# ------------------------------------------------------------------------------------------------- rendering


def _format(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.3g}"
    return str(value)


def _takes_ax(render: Callable) -> bool:
    try:
        return "ax" in inspect.signature(render).parameters
    except (TypeError, ValueError):
        return False


def evenly_spaced(values: Sequence, k: int = 5) -> list:
    """``k`` evenly spaced entries of ``values``, first and last included."""
    idx = np.unique(np.linspace(0, len(values) - 1, min(k, len(values))).round().astype(int))
    return [values[i] for i in idx]


def static_strip(
    render: Callable[..., Figure | None],
    values: Sequence,
    description: str = "t",
    ncols: int | None = None,
) -> Figure:
    """One figure with a panel per value: the static stand-in for a slider.

    ``render(value, ax)`` (preferred) draws into the panel's Axes, so the strip keeps vector-sharp text.
    ``render(value) -> Figure`` also works: each figure is rasterised into a panel and closed, so make it
    small (about 3 in wide) for legible text. Panels are titled ``"{description} = {value}"`` unless
    ``render`` gave its axes a title.
    """
    values = list(values)
    n = len(values)
    if n == 0:
        raise ValueError("static_strip needs at least one value")
    if _takes_ax(render):
        ncols = ncols or min(n, 5)
        nrows = math.ceil(n / ncols)
        width = min(BOOK_WIDTH_IN, 2.4 * ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, nrows * width / ncols + 0.2), squeeze=False)
        for ax, value in zip(axes.flat, values):
            render(value, ax=ax)
            if not ax.get_title():
                ax.set_title(f"{description} = {_format(value)}")
    else:
        images = []
        first_size = None
        for value in values:
            figure = render(value)
            first_size = first_size or tuple(figure.get_size_inches())
            images.append(_rasterize(figure))
            plt.close(figure)
        w0, h0 = first_size
        ncols = ncols or min(n, max(2, min(5, int(1.5 * BOOK_WIDTH_IN // w0))))
        nrows = math.ceil(n / ncols)
        width = min(BOOK_WIDTH_IN, ncols * w0)
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, nrows * (width / ncols * h0 / w0 + 0.3)),
                                 squeeze=False)
        for ax, value, image in zip(axes.flat, values, images):
            ax.imshow(image, interpolation="antialiased")
            ax.set_axis_off()
            ax.set_title(f"{description} = {_format(value)}", fontsize=9)
    for ax in axes.flat[n:]:
        ax.remove()
    return fig


def _rasterize(figure: Figure, dpi: int = 150) -> np.ndarray:
    """The figure as an (H, W, 4) uint8 array, drawn by Agg whatever the current backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    figure.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def timestep_slider(
    render: Callable[..., Figure | None],
    values: Sequence,
    description: str = "t",
    static_values: Sequence | None = None,
    ncols: int | None = None,
) -> None:
    """Explore ``render`` over ``values``: a static strip of ``static_values`` always, a slider when live.

    ``render(value, ax)`` draws into an Axes (preferred) or ``render(value) -> Figure`` makes a figure.
    ``static_values`` defaults to 5 evenly spaced ``values``. In a notebook the strip is displayed at once
    (and closed, so it appears once); in a script it stays open as the current figure (``plt.gcf()``).
    The slider is added below the strip only if ``interactive_available()``; see this module's docstring.
    """
    values = list(values)
    shown = list(static_values) if static_values is not None else evenly_spaced(values, 5)
    strip = static_strip(render, shown, description, ncols=ncols)
    if _in_kernel():
        from IPython.display import display

        display(strip)
        plt.close(strip)
        if interactive_available():
            display(_slider(render, values, description))


def _slider(render: Callable[..., Figure | None], values: list, description: str):
    """An ipywidgets slider over ``values`` whose output area shows ``render(value)``."""
    import ipywidgets as widgets

    slider = widgets.SelectionSlider(
        options=[(_format(v), v) for v in values], value=values[0], description=description,
        continuous_update=False, layout=widgets.Layout(width="70%"),
    )

    def show(value: Any) -> None:
        if _takes_ax(render):
            _, ax = plt.subplots(figsize=(4.5, 3.6))
            render(value, ax=ax)
            if not ax.get_title():
                ax.set_title(f"{description} = {_format(value)}")
        else:
            render(value)
        plt.show()

    return widgets.interactive(show, value=slider)
