"""Generative models on the sphere and the torus: Riemannian score-based models (De Bortoli et al. 2022) and
Riemannian flow matching (Chen & Lipman 2024).

**Score-based.** Noise the data by Brownian motion on the manifold (``manifolds.geodesic_random_walk``) for a time
t in [t_min, T]; at T it is close to the uniform law. Learn the score by denoising score matching against the heat
kernel's score (``rsgm_loss``), then run time backwards: the reverse geodesic random walk
(``geodesic_random_walk_sample``), or the probability-flow ODE dx/dt = -1/2 s(x, t), whose flow also gives exact
likelihoods (``log_likelihood``).

**Flow matching.** Join a data point x0 and a uniform point x1 by the geodesic x_t = exp_{x0}(t log_{x0} x1),
regress a velocity field on its speed (``rfm_loss``), and integrate the ODE from t = 1 to 0. Time runs as in the
rest of the book, t = 0 at the data (Chen & Lipman run it the other way).

Every sampler has the book's signature ``name_sample(model, x_T, manifold, times, *, generator=None,
progress=True, return_trajectory=False)``: the manifold plays the role of the noise schedule, and ``times`` is a
decreasing grid (``log_time_grid`` for Brownian motion, ``grids.time_grid`` for flow matching). Every model call
goes through ``velocity`` (the one converter: a score model's flow is -1/2 of its score).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from .checks import check_int, check_scalar, check_start
from .heat_kernel import heat_kernel_score, sphere_terms
from .likelihood import divergence_exact
from .manifolds import Manifold, Sphere, Torus, geodesic_random_walk
from .sampling import Recorder, Trajectory

Tensor = torch.Tensor


def time_range(t_min: float, t_max: float) -> tuple[float, float]:
    """Check 0 < t_min < t_max < inf (a ValueError names the argument) and return them as floats."""
    t_min = check_scalar("t_min", t_min, 0.0, math.inf, low_inclusive=False, high_inclusive=False)
    return t_min, check_scalar("t_max", t_max, t_min, math.inf, low_inclusive=False, high_inclusive=False)


def log_time_grid(steps: int, t_min: float, t_max: float) -> Tensor:
    """steps + 1 times t_max = t_0 > ... > t_steps = t_min, evenly spaced in log t (float64): Brownian motion
    changes fastest at small t, so the grid is finest there."""
    steps = check_int("steps", steps, 1)
    t_min, t_max = time_range(t_min, t_max)
    return torch.logspace(math.log10(t_max), math.log10(t_min), steps + 1, dtype=torch.float64)


def rsgm_loss(
    model: Callable,
    x0: Tensor,
    manifold: Manifold,
    t_min: float,
    t_max: float,
    walk_steps: int = 16,
    t_switch: float = 0.02,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Denoising score matching on a manifold (De Bortoli et al. 2022, eq. 7), weighted by lambda(t) = t:

        E_t E_{x_t ~ p_t(. | x0)} t |s_theta(x_t, t) - grad log p_t(x_t | x0)|^2,   log t ~ U[log t_min, log t_max].

    x_t comes from a ``walk_steps``-step geodesic random walk; the target is the heat kernel's score, by its
    series for t >= ``t_switch`` and by Varadhan's log_x(x0) / t below (where the series needs many terms).
    With log-uniform t, the weight t per sample is the likelihood weighting g(t)^2 = 1 per unit of time.
    """
    t_min, t_max = time_range(t_min, t_max)
    u = torch.rand(
        x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device
    )
    t = t_min * (t_max / t_min) ** u  # (B,), log-uniform
    x_t = geodesic_random_walk(
        manifold, x0, t, walk_steps, generator
    )  # (B, coords)
    target = heat_kernel_target(manifold, x_t, x0, t, t_switch)  # (B, coords)
    return (t * ((model(x_t, t) - target) ** 2).sum(-1)).mean()


def heat_kernel_target(manifold: Manifold, x: Tensor, x0: Tensor, t: Tensor, t_switch: float = 0.02) -> Tensor:
    """grad_x log p_t(x | x0): the series where t >= t_switch, Varadhan's formula where t < t_switch."""
    series_t = t.clamp_min(t_switch)                                         # keeps the series at few terms
    terms = sphere_terms(t_switch) if isinstance(manifold, Sphere) else None
    series = heat_kernel_score(manifold, x, x0, series_t, terms=terms)
    return torch.where((t < t_switch)[:, None], heat_kernel_score(manifold, x, x0, t, method="varadhan"), series)


def rfm_loss(
    model: Callable,
    x0: Tensor,
    manifold: Manifold,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Riemannian flow matching with geodesic paths (Chen & Lipman 2024, eq. 12; time reversed to the book's):

        x_t = exp_{x0}(t log_{x0}(x1)),  x1 ~ uniform,  t ~ U[0, 1];   E |v_theta(x_t, t) - d x_t / dt|^2.
    """
    manifold.check_points("x0", x0)
    x1 = manifold.random_uniform(
        x0.shape[0], generator, x0.dtype, x0.device
    )  # (B, coords): noise
    t = torch.rand(
        x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device
    )  # (B,)
    v = manifold.logmap(x0, x1)  # (B, coords)
    x_t, u_t = torch.func.jvp(
        lambda s: manifold.expmap(x0, s[:, None] * v),
        (t,),
        (torch.ones_like(t),),
    )
    return ((model(x_t, t) - u_t) ** 2).sum(-1).mean()  # u_t = d x_t / dt


def velocity(model: Callable, x: Tensor, t: Tensor | float) -> Tensor:
    """The ODE's vector field dx/dt: -1/2 s(x, t) for a score model (the probability-flow ODE of Brownian motion,
    whose Fokker-Planck equation is dp/dt = 1/2 Laplacian p = -div(p (-1/2 grad log p))); v(x, t) for flow matching."""
    out = model(x, t)
    return -0.5 * out if model.prediction == "score" else out


def _check(model: Callable, x: Tensor, manifold: Manifold, times: Tensor, decreasing: bool, name: str) -> list[float]:
    if not isinstance(manifold, (Sphere, Torus)):
        raise ValueError(f"manifold must be a Sphere or a Torus, got {type(manifold).__name__}")
    if getattr(model, "prediction", None) not in ("score", "velocity"):
        raise ValueError("model must declare prediction = 'score' or 'velocity' (e.g. a TangentMLP)")
    check_start(name, x)
    manifold.check_points(name, x)
    ts = torch.as_tensor(times, dtype=torch.float64).cpu()
    if ts.dim() != 1 or ts.numel() < 2 or not bool(torch.isfinite(ts).all()) or float(ts.min()) < 0:
        raise ValueError(f"times must be a 1-D grid of at least two finite times >= 0, got {ts}")
    if not bool(((ts.diff() < 0) if decreasing else (ts.diff() > 0)).all()):
        raise ValueError(f"times must be strictly {'decreasing' if decreasing else 'increasing'}")
    check = getattr(model, "check_inputs", None)
    if check is not None:
        for t in (ts[0], ts[-1]):
            check(x, torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device))
    return ts.tolist()


def geodesic_random_walk_sample(
    model: Callable,
    x_T: Tensor,
    manifold: Manifold,
    times: Tensor,
    *,
    generator: torch.Generator | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
) -> Tensor | Trajectory:
    """The reverse geodesic random walk (De Bortoli et al. 2022, Alg. 1 run backwards), along decreasing times:

        Y_{k+1} = exp_{Y_k}(gamma_k s(Y_k, t_k) + sqrt(gamma_k) Z_k),   gamma_k = t_k - t_{k+1},   Z_k ~ N(0, I) in T_Y M.

    x_T: (B, coords) points, uniform for a model trained up to T = times[0]; model: a score model.
    """
    ts = _check(model, x_T, manifold, times, True, "x_T")
    if model.prediction != "score":
        raise ValueError(
            "geodesic_random_walk_sample needs a score model "
            "(prediction 'score')"
        )
    rec, x = Recorder(x_T, return_trajectory), x_T
    for k in tqdm(
        range(len(ts) - 1), desc="reverse walk", disable=not progress
    ):
        gamma = ts[k] - ts[k + 1]
        drift = gamma * model(x, ts[k])  # (B, coords), tangent
        x = manifold.expmap(
            x, drift + math.sqrt(gamma) * manifold.random_tangent(x, generator)
        )
        rec.add(x)
    return rec.result(x)


def _rk4_step(model: Callable, manifold: Manifold, x: Tensor, t: float, h: float,
              divergence: bool) -> tuple[Tensor, Tensor | None]:
    """One classical Runge-Kutta step of dx/dt = v(x, t) in the ambient coordinates, each stage retracted onto
    the manifold; with ``divergence`` also the step's integral of div v (v is tangent, so the ambient divergence
    of y -> v(retract(y)) equals the manifold's)."""
    def field(y: Tensor, s: float) -> tuple[Tensor, Tensor | None]:
        fn = lambda z: velocity(model, manifold.retract(z), s)               # noqa: E731
        return divergence_exact(fn, y) if divergence else (fn(y), None)

    k1, d1 = field(x, t)
    k2, d2 = field(x + h / 2 * k1, t + h / 2)
    k3, d3 = field(x + h / 2 * k2, t + h / 2)
    k4, d4 = field(x + h * k3, t + h)
    x_next = manifold.retract(x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4))
    return x_next, (h / 6 * (d1 + 2 * d2 + 2 * d3 + d4).double() if divergence else None)


def ode_sample(model: Callable, x_T: Tensor, manifold: Manifold, times: Tensor, *, progress: bool = True,
               return_trajectory: bool = False) -> Tensor | Trajectory:
    """Integrate dx/dt = ``velocity(model, x, t)`` along the decreasing ``times`` (RK4, 4 evaluations a step): the
    probability-flow ODE of a score model, or the flow of a flow-matching model, from noise to data."""
    ts = _check(model, x_T, manifold, times, True, "x_T")
    rec, x = Recorder(x_T, return_trajectory), x_T
    with torch.no_grad():
        for k in tqdm(range(len(ts) - 1), desc="ODE", disable=not progress):
            x, _ = _rk4_step(model, manifold, x, ts[k], ts[k + 1] - ts[k], divergence=False)
            rec.add(x)
    return rec.result(x)


def log_likelihood(
    model: Callable,
    x: Tensor,
    manifold: Manifold,
    times: Tensor,
    progress: bool = False,
) -> Tensor:
    """log p(x) (B,) float64 of the model's ODE flow, in nats per point (density with respect to area/volume).

    The change of variables on a manifold (Mathieu & Nickel 2020): along dx/dt = v, d log p_t(x_t)/dt = -div v,
    so carrying x from the data end times[0] to the noise end times[-1] (increasing times) gives

        log p_{times[0]}(x) = log p_uniform(x_{times[-1]}) + int div v(x_t, t) dt,   log p_uniform = -log volume.
    """
    ts = _check(model, x, manifold, times, False, "x")
    delta = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for k in tqdm(range(len(ts) - 1), desc="likelihood", disable=not progress):
        x, d = _rk4_step(
            model, manifold, x, ts[k], ts[k + 1] - ts[k], divergence=True
        )
        delta = delta + d
    return delta - manifold.log_volume
