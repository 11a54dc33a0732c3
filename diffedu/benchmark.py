"""The sampler benchmark: error against the number of network calls (NFE) on a closed-form Gaussian mixture.

With the exact denoiser of a Gaussian mixture (``toy.ExactModel``) every error is the *solver's* error, nothing
learned. For the deterministic samplers (DDIM eta = 0, Euler, Heun, PLMS, DPM-Solver++(2M)) the target is the
exact probability-flow endpoint from the *same* x_T: a very fine RK4 run of the exact flow
(``schedule_search.exact_flow``, error ~1e-9, checked by halving the step) from sigma~_max down to sigma~_min =
sigma~(t_1) followed by the exact denoiser D(.; sigma~_min) -- the point every grid [..., sigma~_min, 0] converges
to. The error is the RMS over the batch of the Euclidean distance, and a slope p of log error against log NFE is
the observed order: error ~ C NFE^-p. Stochastic samplers (DDPM ancestral, the SDE samplers of ``sde``) have no
per-sample target; their error is the energy distance of their samples to exact mixture samples (``metrics``),
whose finite-sample floor is reported with them.

Later chapters add rows by calling ``sampler_benchmark`` with ``extra={name: fn}``.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from .checks import check_int
from .ddim import ddim_sample
from .ddpm import ddpm_sample
from .metrics import energy_distance
from .grids import index_grid, sigma_grid, sigma_range, time_grid
from .samplers import dpmpp_2m_sample, euler_sample, heun_sample, plms_sample
from .schedule_search import exact_flow, mixture_denoiser, optimise_schedule
from .schedules import DiscreteSchedule, linear_schedule
from .toy import ExactModel, GaussianMixture, eight_gaussians

Tensor = torch.Tensor
NFES = (4, 6, 8, 10, 15, 20, 50, 100, 200, 1000)
QUICK_NFES = (4, 6, 10, 20, 50, 200)
DETERMINISTIC = ("ddim", "euler", "heun", "plms", "dpmpp_2m")
STOCHASTIC = ("ddpm", "euler_maruyama", "predictor_corrector")
# which local-error cost the DP uses for each sampler's optimised schedule (None: no optimised schedule)
DP_SOLVER = {"ddim": "ddim", "euler": "euler", "heun": "heun", "plms": "ddim", "dpmpp_2m": "dpmpp_2m",
             "ddpm": "ddim", "euler_maruyama": None, "predictor_corrector": None}


class _Counter:
    """Wraps a model and counts its calls: the NFE reported is measured, not computed."""

    def __init__(self, model: Callable):
        self.model, self.calls = model, 0

    def __call__(self, x, t, cond=None):
        self.calls += 1
        return self.model(x, t, cond)


def steps_for_nfe(sampler: str, nfe: int) -> int | None:
    """The step count K whose NFE is at most ``nfe`` (None if none): Heun 2K - 1, PLMS K + 1, Euler-Maruyama
    K + 1 and predictor-corrector 2K + 1 (a final Tweedie denoising call), the others K."""
    if sampler not in DP_SOLVER:
        raise ValueError(f"sampler must be one of {list(DP_SOLVER)}, got {sampler!r}")
    nfe = check_int("nfe", nfe, 1)
    k = {"heun": (nfe + 1) // 2, "plms": nfe - 1, "euler_maruyama": nfe - 1,
         "predictor_corrector": (nfe - 1) // 2}.get(sampler, nfe)
    return k if k >= 1 else None


SIGMA_GRID = {"euler": "karras", "heun": "karras", "dpmpp_2m": "logsnr"}  # each solver's grid in the benchmark


def _run(sampler: str, model: Callable, x_T: Tensor, schedule: DiscreteSchedule, K: int, opt, generator):
    """One run with K steps; ``opt`` an OptimisedSchedule or None (the sampler's default grid)."""
    kw = dict(progress=False)
    if sampler in ("euler", "heun", "dpmpp_2m"):
        fn = {"euler": euler_sample, "heun": heun_sample, "dpmpp_2m": dpmpp_2m_sample}[sampler]
        sigmas = sigma_grid(schedule, K, SIGMA_GRID[sampler]) if opt is None else opt.sigmas
        return fn(model, x_T, schedule, sigmas, **kw)
    if sampler in ("ddim", "plms", "ddpm"):
        indices = index_grid(schedule, K) if opt is None else opt.indices
        if sampler == "ddim":
            return ddim_sample(model, x_T, schedule, indices, **kw)
        if sampler == "plms":
            return plms_sample(model, x_T, schedule, indices, **kw)
        return ddpm_sample(model, x_T, schedule, indices, variance="beta_tilde", generator=generator, **kw)
    from . import sde  # chapter 3's module
    times = time_grid(K, sde.default_t_min(schedule))
    if sampler == "euler_maruyama":
        return sde.euler_maruyama_sample(model, x_T, schedule, times, generator=generator, **kw)
    return sde.predictor_corrector_sample(model, x_T, schedule, times, corrector_steps=1, generator=generator, **kw)


def reference_endpoint(mixture: GaussianMixture, schedule: DiscreteSchedule, x_T: Tensor,
                       steps_per_unit: int = 200) -> tuple[Tensor, float]:
    """The exact PF-ODE endpoint from x_T (module docstring) and its estimated error (half-step run difference)."""
    lo, hi = sigma_range(schedule)
    grid = torch.tensor([hi, lo, 0.0], dtype=torch.float64)
    x = x_T.double() / float(schedule.alpha(1.0))
    fine = exact_flow(mixture_denoiser(mixture), x, grid, steps_per_unit)[-1]
    coarse = exact_flow(mixture_denoiser(mixture), x, grid, steps_per_unit // 2)[-1]
    return fine, float((fine - coarse).abs().max()) / 15  # RK4: error(h) ~ 16 error(h / 2)


def sampler_benchmark(mixture: GaussianMixture | None = None, schedule: DiscreteSchedule | None = None,
                      samplers: tuple[str, ...] = DETERMINISTIC + STOCHASTIC, nfes: tuple[int, ...] = NFES,
                      optimised: bool = True, max_optimised_nfe: int = 50, batch: int = 256,
                      stochastic_batch: int = 1000, seed: int = 0, quick: bool = False,
                      extra: dict[str, Callable] | None = None) -> list[dict]:
    """Error against NFE for every sampler, with its default grid and (``optimised``) the DP-optimised one.

    Defaults: ``toy.eight_gaussians()`` under ``linear_schedule(1000)``; ``quick`` uses ``QUICK_NFES``.
    Optimised grids (``optimise_schedule`` with the sampler's cost in ``DP_SOLVER``, DP data seed ``seed``,
    measured on x_T of seed ``seed + 1``) are computed for NFE <= ``max_optimised_nfe``. ``extra`` maps
    names to ``fn(model, x_T, schedule, nfe) -> sample`` (deterministic, judged against the exact endpoint).

    Returns a tidy list of dicts, one per run: sampler, schedule ('default' / 'optimised'), nfe (measured
    calls, at most the budget), budget (the NFE asked for), steps, error, metric ('rms_to_exact_endpoint' or 'energy_distance'), floor (reference error, or the
    energy distance between two exact sample sets), seconds.
    """
    mixture = eight_gaussians() if mixture is None else mixture
    schedule = linear_schedule(1000) if schedule is None else schedule
    for s in samplers:
        if s not in DP_SOLVER:
            raise ValueError(f"samplers must be drawn from {list(DP_SOLVER)}, got {s!r}")
    nfes = QUICK_NFES if quick else nfes
    model = ExactModel(mixture, schedule, "eps")
    g = torch.Generator().manual_seed(seed + 1)
    x_T = torch.randn(batch, mixture.D, generator=g, dtype=torch.float64)
    ref, ref_err = reference_endpoint(mixture, schedule, x_T)
    xs_T = torch.randn(stochastic_batch, mixture.D, generator=g, dtype=torch.float64)
    data = mixture.sample(stochastic_batch, generator=g)[0]
    ed_floor = energy_distance(mixture.sample(stochastic_batch, generator=g)[0], data)
    if any(s in STOCHASTIC[1:] for s in samplers):
        try:
            from . import sde  # noqa: F401
        except ImportError:  # chapter 3's module missing: skip its rows
            samplers = tuple(s for s in samplers if s not in STOCHASTIC[1:])
    rows, cache = [], {}
    for sampler in samplers:
        for nfe in nfes:
            K = steps_for_nfe(sampler, nfe)
            if K is None or K > schedule.N:
                continue
            kinds = ["default"]
            if optimised and DP_SOLVER[sampler] and nfe <= max_optimised_nfe:
                kinds.append("optimised")
            for kind in kinds:
                opt = None
                if kind == "optimised":
                    key = (DP_SOLVER[sampler], K)
                    if key not in cache:
                        cache[key] = optimise_schedule(mixture, schedule, K, key[0], grid_size=max(64, 2 * K + 4),
                                                       seed=seed)
                    opt = cache[key]
                counter = _Counter(model)
                stochastic = sampler in STOCHASTIC
                start = time.perf_counter()
                out = _run(sampler, counter, xs_T if stochastic else x_T, schedule, K, opt,
                           torch.Generator().manual_seed(seed + 2))
                seconds = time.perf_counter() - start
                if stochastic:
                    error, metric, floor = energy_distance(out, data), "energy_distance", ed_floor
                else:
                    error = float((out.double() - ref).pow(2).sum(1).mean().sqrt())
                    metric, floor = "rms_to_exact_endpoint", ref_err
                rows.append(dict(sampler=sampler, schedule=kind, budget=nfe, nfe=counter.calls, steps=K, error=error,
                                 metric=metric, floor=floor, seconds=seconds))
    for name, fn in (extra or {}).items():
        for nfe in nfes:
            counter = _Counter(model)
            start = time.perf_counter()
            out = fn(counter, x_T, schedule, nfe)
            rows.append(dict(sampler=name, schedule="default", budget=nfe, nfe=counter.calls, steps=None,
                             error=float((out.double() - ref).pow(2).sum(1).mean().sqrt()),
                             metric="rms_to_exact_endpoint", floor=ref_err, seconds=time.perf_counter() - start))
    return rows


def observed_orders(rows: list[dict], nfe_min: int = 10, nfe_max: int = 200,
                    floor_factor: float = 100.0) -> dict[tuple[str, str], float]:
    """Observed order p per (sampler, schedule): minus the least-squares slope of log error on log NFE over the
    runs with nfe_min <= NFE <= nfe_max whose error is above ``floor_factor`` times their floor (needs 2 runs)."""
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in rows:
        if nfe_min <= r["nfe"] <= nfe_max and r["error"] > floor_factor * r["floor"] and r["error"] > 0:
            groups.setdefault((r["sampler"], r["schedule"]), []).append((math.log(r["nfe"]), math.log(r["error"])))
    orders = {}
    for key, pts in groups.items():
        if len(pts) >= 2:
            x, y = torch.tensor(pts, dtype=torch.float64).T
            xc = x - x.mean()
            orders[key] = float(-(xc * (y - y.mean())).sum() / (xc ** 2).sum())
    return orders


def format_table(rows: list[dict]) -> str:
    """A plain-text table: one line per (sampler, schedule), one column per NFE budget (error, 3 digits; Heun
    uses 2K - 1 <= budget calls, predictor-corrector 2K + 1)."""
    keys = list(dict.fromkeys((r["sampler"], r["schedule"]) for r in rows))
    nfes = sorted({r["budget"] for r in rows})
    cells = {(r["sampler"], r["schedule"], r["budget"]): r["error"] for r in rows}
    head = ["sampler", "schedule"] + [f"NFE {n}" for n in nfes]
    lines = [head] + [[s, k] + [f"{cells[(s, k, n)]:.2e}" if (s, k, n) in cells else "" for n in nfes]
                      for s, k in keys]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(" ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines)


_LABELS = {"ddim": "DDIM (η=0)", "euler": "Euler", "heun": "Heun", "plms": "PLMS", "dpmpp_2m": "DPM-Solver++(2M)",
           "ddpm": "DDPM ancestral", "euler_maruyama": "Euler–Maruyama", "predictor_corrector": "PC (EM + Langevin)"}


# fixed colours (colour-blind safe, no yellow), so a sampler keeps its colour in every figure
_COLOURS = {"ddim": "#0072B2", "euler": "#D55E00", "heun": "#009E73", "plms": "#CC79A7", "dpmpp_2m": "#E69F00",
            "ddpm": "#56B4E9", "euler_maruyama": "#8C564B", "predictor_corrector": "#000000"}


def _plot_panel(ax, rows: list[dict], colours: dict, slopes: tuple[int, ...]) -> None:
    """One log-log panel: solid = default grid, dashed = DP-optimised; dotted slope guides."""
    for name in dict.fromkeys(r["sampler"] for r in rows):
        for kind, style, marker in (("default", "-", "o"), ("optimised", "--", "s")):
            pts = sorted((r["nfe"], r["error"]) for r in rows if r["sampler"] == name and r["schedule"] == kind)
            if pts:
                ax.loglog(*zip(*pts), style, marker=marker, ms=3.5, color=colours[name], lw=1.4,
                          label=_LABELS.get(name, name) + (", DP grid" if kind == "optimised" else ""))
    if slopes:
        n = torch.tensor([10.0, 100.0])
        near10 = sorted(r["error"] for r in rows if 8 <= r["nfe"] <= 12 and r["schedule"] == "default")
        y0 = 2 * near10[len(near10) // 2] if near10 else 0.3  # twice the median error at about 10 calls
        for p in slopes:
            ax.loglog(n.numpy(), (y0 * (n / 10) ** -p).numpy(), ":", color="grey", lw=1)
            ax.annotate(f"slope −{p}", (100, y0 * 10.0 ** -p), fontsize=8, color="grey", va="center",
                        xytext=(3, 0), textcoords="offset points")
    ax.set_xlabel("network calls (NFE)")
    ax.grid(True, which="major", alpha=0.3)


def plot_benchmark(rows: list[dict], ax=None, title: str = "Sampler error against network calls (exact model)"):
    """Log-log error vs NFE, one colour per sampler, solid = default grid, dashed = DP-optimised.

    With ``ax=None``: two panels, the deterministic samplers (RMS to the exact ODE endpoint, slope guides) and
    the stochastic ones (energy distance to exact samples, with its finite-sample floor), legends below each
    panel, outside the data. With an ``ax``: every row on that one axis (legend outside, to the right).
    """
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["sampler"] for r in rows))
    from matplotlib.colors import to_hex

    taken = {c.lower() for c in _COLOURS.values()}
    cycle = [c for c in plt.rcParams["axes.prop_cycle"].by_key()["color"] if to_hex(c) not in taken] or ["0.4"]
    free = iter(cycle * 3)
    colours = {n: _COLOURS.get(n) or next(free) for n in names}
    ode = [r for r in rows if r["metric"] == "rms_to_exact_endpoint"]
    sde_rows = [r for r in rows if r["metric"] == "energy_distance"]
    if ax is not None:
        _plot_panel(ax, rows, colours, (1, 2))
        ax.set_ylabel("error (RMS to exact endpoint / energy distance)")
        ax.set_title(title)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        return ax.figure
    panels = [(ode, "ODE solvers: RMS to the exact endpoint", (1, 2))] if ode else []
    if sde_rows:
        panels.append((sde_rows, "Stochastic samplers: energy distance", ()))
    fig, axes = plt.subplots(1, len(panels), figsize=(7.2, 4.6), squeeze=False, layout="constrained")
    for ax_, (sub, sub_title, slopes) in zip(axes[0], panels):
        _plot_panel(ax_, sub, colours, slopes)
        ax_.set_title(sub_title, fontsize=10)
        if slopes == ():
            floor = sub[0]["floor"]
            ax_.axhline(floor, color="k", ls=":", lw=1, label="floor: two exact sample sets")
        ax_.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    axes[0][0].set_ylabel("error (lower is better)")
    fig.suptitle(title, fontsize=11)
    return fig
