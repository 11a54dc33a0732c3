"""Plot helpers and the widget fallback: right axes, titles, pixel values, animation size, static strips."""

from __future__ import annotations

import re
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from diffedu import viz, widgets  # noqa: E402

FRAME = re.compile(r'frames\[\d+\] = "data:image/png;base64,')


@pytest.fixture(autouse=True)
def _style_and_cleanup():
    viz.set_style()
    yield
    plt.close("all")


def digits_like(n: int = 64, generator_seed: int = 0) -> torch.Tensor:
    """(n, 1, 8, 8) images in [-1, 1]: smooth blobs, deterministic."""
    g = torch.Generator().manual_seed(generator_seed)
    return torch.tanh(2 * torch.randn(n, 1, 8, 8, generator=g))


def test_set_style_is_idempotent():
    viz.set_style()
    first = dict(matplotlib.rcParams)
    viz.set_style()
    assert dict(matplotlib.rcParams) == first
    assert not matplotlib.rcParams["axes.spines.top"] and not matplotlib.rcParams["axes.spines.right"]
    assert matplotlib.rcParams["figure.constrained_layout.use"]


def test_tile_images_shape_and_value_mapping():
    x = torch.linspace(-1, 1, 6 * 4 * 5).reshape(6, 1, 4, 5)
    grid = viz.tile_images(x, nrow=3, padding=1, pad_value=0.5)
    assert grid.shape == (2 * (4 + 1) + 1, 3 * (5 + 1) + 1)
    assert grid[1, 1] == 0.0  # first pixel of the first image: -1 -> 0
    assert grid[2 * 5 - 1, 3 * 6 - 1] == 1.0  # last pixel of the last image: 1 -> 1
    assert grid[0, 0] == 0.5 and grid[:, 0].tolist() == [0.5] * grid.shape[0]  # border
    assert viz.tile_images(torch.full((2, 1, 3, 3), 5.0)).max() == 1.0  # clipped

    colour = viz.tile_images(np.zeros((5, 3, 4, 4)), nrow=5)
    assert colour.shape == (4 + 2, 5 * 5 + 1, 3)
    stretched = viz.tile_images(np.array([[[[2.0, 4.0]]]]), value_range=None, padding=0)
    assert stretched.tolist() == [[0.0, 1.0]]


def test_image_grid_accepts_grad_tensors_and_labels():
    x = digits_like(10).requires_grad_()
    ax = viz.image_grid(x, nrow=5, title="samples", labels=[str(i) for i in range(10)])
    assert ax.get_title() == "samples"
    assert len(ax.figure.axes) == 1 and len(ax.images) == 1
    assert [t.get_text() for t in ax.texts] == [str(i) for i in range(10)]
    with pytest.raises(ValueError, match="labels"):
        viz.image_grid(x, labels=["a"])


def test_image_grid_draws_into_given_axes():
    fig, axes = plt.subplots(1, 2)
    out = viz.image_grid(digits_like(4), ax=axes[1])
    assert out is axes[1] and len(fig.axes) == 2 and out.get_title() == ""


def test_scatter_2d():
    ax = viz.scatter_2d(torch.randn(100, 2), title="data", label="x", lim=3)
    assert ax.get_title() == "data" and len(ax.figure.axes) == 1
    assert ax.get_xlim() == (-3.0, 3.0) and ax.get_ylim() == (-3.0, 3.0)
    assert ax.get_xlabel() == "$x_1$" and ax.get_legend() is not None
    ax2 = viz.scatter_2d(np.array([[0.0, 0.0], [1.0, 2.0]]), lim=((0, 1), (0, 2)))
    assert ax2.get_ylim() == (0.0, 2.0)


def test_plot_trajectories_draws_n_paths():
    steps, total, n = 11, 300, 25
    traj = torch.randn(steps, total, 2).cumsum(0)
    ax = viz.plot_trajectories(traj, n=n, title="paths")
    (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(lines.get_segments()) == (steps - 1) * n
    assert ax.get_title() == "paths" and len(ax.figure.axes) == 1
    starts = ax.collections[1].get_offsets()
    assert len(starts) == n
    with pytest.raises(ValueError):
        viz.plot_trajectories(torch.randn(5, 2))


def test_compare_2d_shares_limits():
    fig = viz.compare_2d({"data": torch.randn(200, 2), "noise": 3 * torch.randn(200, 2), "model": np.ones((5, 2))},
                         title="three clouds")
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["data", "noise", "model"]
    assert len({ax.get_xlim() for ax in fig.axes}) == 1 and len({ax.get_ylim() for ax in fig.axes}) == 1
    assert fig.get_suptitle() == "three clouds"


def test_plot_schedules_log_axis():
    t = torch.linspace(0, 1, 50, dtype=torch.float64)
    ax = viz.plot_schedules({"a": (t, torch.exp(-5 * t)), "b": (t.numpy(), np.exp(-t.numpy()))},
                            ylabel="SNR", logy=True, title="SNR")
    assert len(ax.lines) == 2 and ax.get_yscale() == "log"
    assert ax.get_ylabel() == "SNR" and ax.get_title() == "SNR"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]


def test_score_field_quiver_and_colourbar():
    ax = viz.score_field(lambda x: -x, lim=2.0, n=7, title="score of N(0, I)")
    (quiver,) = [c for c in ax.collections if c.__class__.__name__ == "Quiver"]
    assert quiver.N == 49
    assert ax.get_title() == "score of N(0, I)"
    assert len(ax.figure.axes) == 2  # plot + colour bar
    raw = viz.score_field(lambda x: -x.numpy(), lim=(-1, 1), n=5, normalize=False)
    assert len(raw.figure.axes) == 1


def test_subsample_frames_keeps_ends():
    idx = viz.subsample_frames(1000, 40)
    assert len(idx) <= 40 and idx[0] == 0 and idx[-1] == 999
    assert viz.subsample_frames(7, 40).tolist() == list(range(7))


def test_animate_images_small_deterministic_and_closed(capsys):
    """A typical reverse process: 100 steps from noise to data of an 8x8 grid of 8x8 images."""
    data, noise = digits_like(64, 0), torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ts = torch.linspace(1, 0, 100)
    frames = torch.stack([((1 - t) * data + t * noise).clamp(-1, 1) for t in ts])  # (100, 64, 1, 8, 8)
    open_figures = plt.get_fignums()

    html = viz.animate_reverse(frames, titles=[f"t = {t:.2f}" for t in ts], max_frames=40)
    assert plt.get_fignums() == open_figures  # closed: no duplicate static image in the notebook
    assert "<script" in html.data
    assert len(FRAME.findall(html.data)) == 40
    size = len(html.data.encode())
    assert size < 1.5e6
    assert viz.animate_reverse(frames, titles=[f"t = {t:.2f}" for t in ts]).data == html.data  # no random id
    with capsys.disabled():  # reported in the test log: the size a chapter pays per animation
        print(f"\nanimate_reverse: 40 frames of an 8x8 grid of 8x8 images = {size / 1e6:.2f} MB")


def test_animate_points_and_list_input():
    frames = [torch.randn(300, 2, generator=torch.Generator().manual_seed(i)) * (1 - i / 12) for i in range(12)]
    html = viz.animate_reverse(frames, max_frames=5)
    assert "<script" in html.data and len(FRAME.findall(html.data)) == 5
    with pytest.raises(ValueError, match="titles"):
        viz.animate_reverse(frames, titles=["only one"])


def test_interactive_needs_a_kernel(monkeypatch):
    monkeypatch.setenv("DIFFEDU_STATIC", "0")
    assert not widgets.interactive_available()  # pytest is no kernel
    monkeypatch.setenv("DIFFEDU_STATIC", "1")
    assert not widgets.interactive_available()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process ancestry read from /proc")
def test_pytest_counts_as_headless_runner():
    assert widgets._started_by_headless_runner()


def test_timestep_slider_static_fallback(monkeypatch):
    monkeypatch.setenv("DIFFEDU_STATIC", "1")
    images = digits_like(16)

    def render_into(t: float, ax) -> None:
        viz.image_grid((1 - t) * images, ax=ax)

    widgets.timestep_slider(render_into, np.linspace(0, 1, 11), static_values=[0.0, 0.5, 1.0])
    fig = plt.gcf()
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["t = 0", "t = 0.5", "t = 1"]

    def render_figure(sigma: float):
        fig, ax = plt.subplots(figsize=(3, 3))
        viz.scatter_2d(sigma * torch.randn(50, 2, generator=torch.Generator().manual_seed(0)), ax=ax, lim=4)
        return fig

    before = len(plt.get_fignums())
    widgets.timestep_slider(render_figure, [0.5, 1, 1.5, 2, 2.5, 3, 3.5], description="σ")
    assert len(plt.get_fignums()) == before + 1  # the rendered figures were closed, the strip is open
    strip = plt.gcf()
    assert len(strip.axes) == 5  # default: 5 evenly spaced values
    assert strip.axes[0].get_title() == "σ = 0.5" and strip.axes[-1].get_title() == "σ = 3.5"


def test_static_strip_deterministic():
    def render(t: float, ax) -> None:
        viz.scatter_2d(torch.randn(30, 2, generator=torch.Generator().manual_seed(0)) * t, ax=ax, lim=3)

    def pixels() -> np.ndarray:
        fig = widgets.static_strip(render, [1, 2])
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba()).copy()

    assert np.array_equal(pixels(), pixels())


def test_compare_score_fields_shares_one_colour_scale():
    fields = {"exact": lambda x: -x, "learned": lambda x: -2 * x, "third": lambda x: x.flip(1)}
    fig = viz.compare_score_fields(fields, lim=2.0, n=8, ncols=2, points=torch.randn(50, 2),
                                   log_density=lambda x: -0.5 * (x ** 2).sum(1), title="fields")
    plot_axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(fig.axes) == 5  # 2 x 2 panels (one switched off) + one colour bar
    assert [ax.get_title() for ax in plot_axes[:3]] == ["exact", "learned", "third"]
    quivers = [c for ax in plot_axes for c in ax.collections if c.__class__.__name__ == "Quiver"]
    assert len(quivers) == 3 and all(q.N == 64 for q in quivers)
    assert len({(q.norm.vmin, q.norm.vmax) for q in quivers}) == 1  # one colour scale for all panels
    # colours encode log10 of the true length: the learned field (twice as long) is log10(2) brighter
    assert np.allclose(quivers[1].get_array() - quivers[0].get_array(), np.log10(2), atol=1e-6)
    assert fig.get_suptitle() == "fields"
    with pytest.raises(ValueError, match="fields"):
        viz.compare_score_fields({}, lim=1.0)


def test_plot_weights_bars_and_labels():
    ax = viz.plot_weights({"true": torch.tensor([0.6, 0.3, 0.1]), "plain": np.array([0.34, 0.33, 0.33])},
                          title="weights", component_labels=["a", "b", "c"])
    assert len(ax.patches) == 6
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert ax.get_title() == "weights" and ax.get_ylabel() == "fraction of samples"
    assert "0.60" in [t.get_text() for t in ax.texts]
    with pytest.raises(ValueError, match="same number"):
        viz.plot_weights({"a": [0.5, 0.5], "b": [1.0]})
    with pytest.raises(ValueError, match="labels"):
        viz.plot_weights({"a": [0.5, 0.5]}, component_labels=["x"])
