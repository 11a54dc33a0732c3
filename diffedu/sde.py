"""Score-based generative modelling through stochastic differential equations (Song et al. 2021).

Continuous time t in [0, 1] turns the noising process into an SDE, and sampling into solving it backwards:

    forward SDE         dx = f(t) x dt + g(t) dw                                                     (Song eq. 5)
    reverse SDE         dx = [f(t) x - g(t)^2 grad_x log p_t(x)] dt + g(t) dw_bar,   t: 1 -> 0   (eq. 6; Anderson 1982)
    probability flow    dx/dt = f(t) x - g(t)^2 grad_x log p_t(x) / 2                                   (eq. 13)

All three share the marginals p_t of x_t = alpha(t) x0 + sigma(t) eps. A linear SDE moves the mean of x_t | x0 by
d(mean)/dt = f mean and its variance by d(var)/dt = 2 f var + g^2, so any schedule fixes its SDE:

    f(t) = d log alpha / dt,        g(t)^2 = d sigma^2 / dt - 2 f(t) sigma^2.                           (1)

``sde_coefficients`` gives the papers' closed forms (VP eq. 11, sub-VP eq. 16, VE eq. 9) and (1) by automatic
differentiation for any other ``NoiseSchedule`` (DDPM's chain: log alpha_bar is piecewise linear in t, so f and g
are piecewise constant). The samplers are pure functions over a model (any prediction type, read as a score
through ``diffedu.ncsn.model_score``), running on the grid t_0 = t_max > t_1 > ... > t_steps = t_min:

* ``euler_maruyama``: the reverse SDE, one Euler–Maruyama step per grid interval;
* ``predictor_corrector``: a predictor step (Euler–Maruyama or reverse diffusion) followed by Langevin corrector
  steps with a signal-to-noise step size (Song et al. Algorithms 2-5);
* ``ode_sample``: the probability-flow ODE with fixed steps (Euler, Heun or RK4).

``log_likelihood`` integrates the probability-flow ODE with an adaptive solver (Chen et al. 2018; Grathwohl et al.
2019; Song et al. 2021, App. D.2) for the exact log-density, and ``bits_per_dim`` turns it into bits on images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .checks import check_choice, check_finite, check_int, check_scalar
from .ncsn import model_score
from .predictions import predict_x0_eps
from .schedules import VE, NoiseSchedule, SubVP, VPLinear, as_time

Tensor = torch.Tensor

PREDICTORS = ("euler_maruyama", "reverse_diffusion")
ODE_METHODS = ("euler", "heun", "rk4")
TRACES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


# --- the forward SDE of a schedule ---------------------------------------------------------------------------

def sde_coefficients(schedule: NoiseSchedule, t: Tensor | float) -> tuple[Tensor, Tensor]:
    """Drift and diffusion coefficients (f(t), g(t)) of dx = f(t) x dt + g(t) dw, float64, shaped like t.

    Closed forms (Song et al. 2021):
        VPLinear   f = -beta(t) / 2,   g = sqrt(beta(t))                                           (eq. 11)
        SubVP      f = -beta(t) / 2,   g = sqrt(beta(t) (1 - exp(-2 int_0^t beta)))                (eq. 16)
                   (exp(-int_0^t beta) = alpha(t)^2, so g^2 = beta (1 - alpha^4))
        VE         f = 0,              g = sigma(t) sqrt(2 log(sigma_max / sigma_min))              (eq. 9 with
                   d sigma^2/dt for the geometric sigma(t) = sigma_min (sigma_max / sigma_min)^t)
    any other schedule: eq. (1) of the module docstring, differentiated exactly (``generic_sde_coefficients``).
    """
    t = as_time(t)
    if isinstance(schedule, (VPLinear, SubVP)):
        beta = schedule.beta(t)
        if isinstance(schedule, VPLinear):
            return -0.5 * beta, torch.sqrt(beta)
        alpha4 = torch.exp(4 * schedule.vp.log_alpha(t))
        return -0.5 * beta, torch.sqrt(beta * (1 - alpha4))
    if isinstance(schedule, VE):
        return torch.zeros_like(t), schedule.sigma(t) * math.sqrt(2 * math.log(schedule.sigma_max / schedule.sigma_min))
    return generic_sde_coefficients(schedule, t)


def generic_sde_coefficients(schedule: NoiseSchedule, t: Tensor | float) -> tuple[Tensor, Tensor]:
    """(f, g) from eq. (1), f = d log alpha/dt and g^2 = d sigma^2/dt - 2 f sigma^2, for any schedule.

    The derivatives are taken by autograd through the schedule's own float64 formulas, so they are exact: for
    ``DiscreteSchedule`` (log alpha_bar linear between grid times t_{i-1} < t <= t_i) they are the constant slopes
    of the segment that ends at or after t (the left segment on a grid point). Where autograd cannot help (a
    formula singular at t, such as sigma = sqrt(1 - alpha^2) at t = 0, or one not written in torch) a
    second-order finite difference with step 1e-5 takes over.
    """
    t = as_time(t)
    tt = t.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        log_alpha = torch.log(schedule.alpha(tt))
        var = schedule.sigma(tt) ** 2
        f = _time_derivative(lambda s: torch.log(schedule.alpha(s)), log_alpha, tt)
        dvar = _time_derivative(lambda s: schedule.sigma(s) ** 2, var, tt)
    g2 = dvar - 2 * f * var.detach()
    return f, torch.sqrt(torch.clamp(g2, min=0.0))  # g^2 < 0 only by rounding


def _time_derivative(fn: Callable[[Tensor], Tensor], value: Tensor, t: Tensor) -> Tensor:
    """d value / dt elementwise: autograd where it is finite, else a second-order finite difference.

    (Autograd fails where a formula is singular, e.g. sigma = sqrt(1 - alpha^2) at t = 0, and gives 0 for a
    value that does not depend on t through torch operations; both are caught here.)
    """
    if value.requires_grad:
        (grad,) = torch.autograd.grad(value.sum(), t)
        grad = grad.detach()
        bad = ~torch.isfinite(grad)
        if not bool(bad.any()):
            return grad
        return torch.where(bad, _finite_difference(fn, t.detach()), grad)
    return _finite_difference(fn, t.detach())


def _finite_difference(fn: Callable[[Tensor], Tensor], t: Tensor, h: float = 1e-5) -> Tensor:
    """Second-order differences: central inside [h, 1 - h], one-sided (3-point) at the ends of [0, 1]."""
    with torch.no_grad():
        central = (fn((t + h).clamp(max=1.0)) - fn((t - h).clamp(min=0.0))) / (2 * h)
        s = t.clamp(max=1.0 - 2 * h)  # forward: (-3 u(t) + 4 u(t + h) - u(t + 2h)) / 2h
        forward = (-3 * fn(s) + 4 * fn(s + h) - fn(s + 2 * h)) / (2 * h)
        s = t.clamp(min=2 * h)  # backward
        backward = (3 * fn(s) - 4 * fn(s - h) + fn(s - 2 * h)) / (2 * h)
    return torch.where(t < h, forward, torch.where(t > 1 - h, backward, central))


def forward_drift(schedule: NoiseSchedule, x: Tensor, t: float) -> Tensor:
    """The forward SDE's drift f(t) x, shaped like x."""
    f, _ = sde_coefficients(schedule, t)
    return float(f) * x


def simulate_forward_sde(x0: Tensor, schedule: NoiseSchedule, steps: int, t_start: float = 0.0, t_end: float = 1.0,
                         generator: torch.Generator | None = None,
                         return_trajectory: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Run the forward SDE dx = f x dt + g dw from t_start to t_end with ``steps`` Euler–Maruyama steps.

    x0: (B, ...) the state at t_start. Started from data at t_start = 0 (where sigma = 0 for VP-type schedules) the
    result is distributed like x_t = alpha(t) x0 + sigma(t) eps, up to the O(1/steps) discretisation error.
    With ``return_trajectory``, also the list of the steps + 1 states (on the CPU).
    """
    check_finite("x0", x0)
    steps = check_int("steps", steps, 1)
    t_start = check_scalar("t_start", t_start, 0.0, 1.0)
    t_end = check_scalar("t_end", t_end, 0.0, 1.0)
    if t_start >= t_end:
        raise ValueError(f"t_start must be smaller than t_end, got t_start={t_start} and t_end={t_end}")
    ts = torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)
    x, trajectory = x0, [x0.cpu()]
    for i in range(steps):
        h = float(ts[i + 1] - ts[i])
        f, g = sde_coefficients(schedule, ts[i])
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x + float(f) * x * h + float(g) * math.sqrt(h) * z  # dx = f x dt + g dw,  dw ~ N(0, dt)
        if return_trajectory:
            trajectory.append(x.cpu())
    return (x, trajectory) if return_trajectory else x


# --- the prior at t = 1 ----------------------------------------------------------------------------------------

def prior_std(schedule: NoiseSchedule, t: float = 1.0) -> float:
    """Standard deviation of the prior N(0, (alpha(t)^2 + sigma(t)^2) I) that sampling starts from.

    It is the marginal p_t of data with zero mean and unit variance per dimension, matched in its first two
    moments: exactly Song et al.'s N(0, I) for VP (alpha^2 + sigma^2 = 1), and for VE sqrt(1 + sigma_max^2),
    within 0.5 % of their sigma_max when sigma_max >= 10. At t = 1 the data's own contribution alpha^2 Var[x0] is
    negligible for VP (alpha(1)^2 = 4e-5) and small against sigma_max^2 for VE, so the choice hardly matters.
    """
    t = as_time(t)
    return float(torch.sqrt(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2))


def prior_sample(schedule: NoiseSchedule, shape: tuple[int, ...], generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 t: float = 1.0) -> Tensor:
    """x_T ~ N(0, prior_std(schedule, t)^2 I) of the given shape (B, ...): where the reverse processes start."""
    z = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    return prior_std(schedule, t) * z


def prior_log_prob(schedule: NoiseSchedule, x: Tensor, t: float = 1.0) -> Tensor:
    """log N(x; 0, prior_std^2 I) per example, summed over all but the first dimension: shape (B,), float64."""
    check_finite("x", x)
    s = prior_std(schedule, t)
    x64 = x.detach().double().reshape(x.shape[0], -1)
    D = x64.shape[1]
    return -0.5 * (x64 ** 2).sum(1) / s ** 2 - 0.5 * D * math.log(2 * math.pi * s ** 2)


# --- time grids and checks -------------------------------------------------------------------------------------

def default_t_min(schedule: NoiseSchedule) -> float:
    """Where sampling stops: 1e-3 for VP-type schedules (sigma(0) = 0 makes the score blow up at t = 0), and 0
    for VE, whose sigma(0) = sigma_min > 0 (Song et al. use eps = 1e-5 and 1e-3; we keep one round number)."""
    return 0.0 if isinstance(schedule, VE) else 1e-3


def _check_interval(schedule: NoiseSchedule, t_min: float | None, t_max: float) -> tuple[float, float]:
    t_min = default_t_min(schedule) if t_min is None else t_min
    t_min = check_scalar("t_min", t_min, 0.0, 1.0)
    t_max = check_scalar("t_max", t_max, 0.0, 1.0)
    if t_min >= t_max:
        raise ValueError(f"t_min must be smaller than t_max, got t_min={t_min} and t_max={t_max}")
    if float(schedule.sigma(t_min)) <= 0.0:
        raise ValueError(f"t_min must be > 0 for {schedule!r}: sigma(t_min) = 0 there and the score is infinite "
                         f"(try t_min = 1e-3)")
    return t_min, t_max


def time_grid(steps: int, t_min: float, t_max: float = 1.0) -> Tensor:
    """The steps + 1 times t_0 = t_max > t_1 > ... > t_steps = t_min, evenly spaced (float64), as in Song et al."""
    steps = check_int("steps", steps, 1)
    t_min = check_scalar("t_min", t_min, 0.0, 1.0)
    t_max = check_scalar("t_max", t_max, 0.0, 1.0)
    if t_min >= t_max:
        raise ValueError(f"t_min must be smaller than t_max, got t_min={t_min} and t_max={t_max}")
    return torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)


def _check_start(name: str, x: Tensor, cond: Tensor | None) -> None:
    check_finite(name, x)
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape (B, ...) with a batch dimension, got {tuple(x.shape)}")
    if cond is not None and cond.shape[0] != x.shape[0]:
        raise ValueError(f"cond must have one entry per row of {name} ({x.shape[0]}), got shape {tuple(cond.shape)}")


def tweedie_denoise(model: Callable, x: Tensor, t: float, schedule: NoiseSchedule,
                    cond: Tensor | None = None) -> Tensor:
    """The last, noise-free step: x0_hat = E[x0 | x_t] = (x_t + sigma^2 score) / alpha (Tweedie; Efron 2011)."""
    return predict_x0_eps(model, x, t, schedule, cond)[0]


def _finish(model, x, t_min, schedule, cond, denoise, trajectory, return_trajectory):
    if denoise:
        x = tweedie_denoise(model, x, t_min, schedule, cond)
        if return_trajectory:
            trajectory.append(x.cpu())
    return (x, trajectory) if return_trajectory else x


# --- reverse-time SDE samplers -----------------------------------------------------------------------------------

def reverse_drift(model: Callable, x: Tensor, t: float, schedule: NoiseSchedule,
                  cond: Tensor | None = None) -> Tensor:
    """The reverse SDE's drift f(t) x - g(t)^2 s(x, t) (Song eq. 6), with the model's score s."""
    f, g = sde_coefficients(schedule, t)
    return float(f) * x - float(g) ** 2 * model_score(model, x, t, schedule, cond)


def euler_maruyama_step(model: Callable, x: Tensor, t: float, s: float, schedule: NoiseSchedule,
                        cond: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """One Euler–Maruyama step of the reverse SDE from t down to s < t, h = t - s:

        x_s = x_t - [f(t) x_t - g(t)^2 s(x_t, t)] h + g(t) sqrt(h) z,    z ~ N(0, I).
    """
    h = float(t) - float(s)
    _, g = sde_coefficients(schedule, t)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x - reverse_drift(model, x, t, schedule, cond) * h + float(g) * math.sqrt(h) * z


def reverse_diffusion_step(model: Callable, x: Tensor, t: float, s: float, schedule: NoiseSchedule,
                           cond: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """One reverse-diffusion step from t down to s (Song et al. eq. 46), built on the forward step's own kernel.

    Between s and t the forward process is exactly x_t = a x_s + b z with a = alpha(t) / alpha(s) and
    b^2 = sigma(t)^2 - a^2 sigma(s)^2; read as one step x_t = x_s + f_s(x_s) + b z with f_s(x) = (a - 1) x, its
    reverse is
        x_s = x_t - (a - 1) x_t + b^2 s(x_t, t) + b z.
    For VE (a = 1) this is NCSN's b^2 = sigma_t^2 - sigma_s^2 (Song et al. Alg. 2); for DDPM's chain
    (a = sqrt(1 - beta_i), b^2 = beta_i) it is the first-order expansion of DDPM's ancestral step.
    """
    t64, s64 = as_time(t), as_time(s)
    a = float(schedule.alpha(t64) / schedule.alpha(s64))
    b2 = max(float(schedule.sigma(t64) ** 2 - a ** 2 * schedule.sigma(s64) ** 2), 0.0)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (2 - a) * x + b2 * model_score(model, x, t, schedule, cond) + math.sqrt(b2) * z


def langevin_corrector_step(model: Callable, x: Tensor, t: float, schedule: NoiseSchedule, snr: float,
                            alpha_i: float = 1.0, cond: Tensor | None = None,
                            generator: torch.Generator | None = None) -> Tensor:
    """One Langevin step at fixed time t with the signal-to-noise step size (Song et al. Alg. 4 (VE), 5 (VP)):

        eps = 2 alpha_i (r ||z|| / ||s||)^2,     x <- x + eps s(x, t) + sqrt(2 eps) z.

    r = ``snr``; alpha_i = 1 for VE and 1 - beta_i of the current step for VP. As in the reference code the two
    norms are per-example norms averaged over the batch (a per-example ratio explodes where the score vanishes).
    """
    score = model_score(model, x, t, schedule, cond)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    B = x.shape[0]
    score_norm = score.reshape(B, -1).norm(dim=1).mean()
    noise_norm = z.reshape(B, -1).norm(dim=1).mean()
    eps = 2 * alpha_i * (snr * noise_norm / score_norm.clamp(min=1e-12)) ** 2
    return x + eps * score + torch.sqrt(2 * eps) * z


@torch.no_grad()
def euler_maruyama(model: Callable, x_T: Tensor, schedule: NoiseSchedule, steps: int, t_min: float | None = None,
                   t_max: float = 1.0, cond: Tensor | None = None, denoise: bool = True,
                   generator: torch.Generator | None = None, progress: bool = True,
                   return_trajectory: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Sample by solving the reverse SDE (Song eq. 6) with ``steps`` Euler–Maruyama steps from t_max to t_min.

    Args:
        model: ``net(x, t, cond)`` predicting eps, x0, v or the score (read as a score by ``model_score``).
        x_T: (B, ...) the start, drawn from the prior (``prior_sample``).
        schedule: any ``NoiseSchedule``; its SDE comes from ``sde_coefficients``.
        t_min: where to stop (default ``default_t_min``: 1e-3, or 0 for VE); t_max: where to start (1).
        denoise: finish with Tweedie's x0_hat at t_min (one more model call); otherwise x ~ p_{t_min}.
        generator: a torch.Generator on x_T's device, for reproducible noise.
    Returns:
        the sample (B, ...); with ``return_trajectory``, also the list of states [x_{t_0}, ..., x_{t_steps}]
        (and x0_hat last, if ``denoise``), on the CPU. The number of model calls is steps (+ 1 with denoise).
    """
    _check_start("x_T", x_T, cond)
    t_min, t_max = _check_interval(schedule, t_min, t_max)
    ts = time_grid(steps, t_min, t_max)
    x, trajectory = x_T, [x_T.cpu()]
    for i in tqdm(range(len(ts) - 1), disable=not progress, desc="Euler–Maruyama"):
        x = euler_maruyama_step(model, x, ts[i], ts[i + 1], schedule, cond, generator)
        if return_trajectory:
            trajectory.append(x.cpu())
    return _finish(model, x, t_min, schedule, cond, denoise, trajectory, return_trajectory)


@torch.no_grad()
def predictor_corrector(model: Callable, x_T: Tensor, schedule: NoiseSchedule, steps: int,
                        predictor: str = "reverse_diffusion", corrector_steps: int = 1, snr: float = 0.16,
                        t_min: float | None = None, t_max: float = 1.0, cond: Tensor | None = None,
                        denoise: bool = True, generator: torch.Generator | None = None, progress: bool = True,
                        return_trajectory: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Predictor–corrector sampling (Song et al. 2021, Alg. 1; Alg. 2 for VE, Alg. 3 for VP).

    At each grid step t_i -> t_{i+1}: one predictor step ('euler_maruyama' or 'reverse_diffusion') moves x down
    in time, then ``corrector_steps`` Langevin steps (``langevin_corrector_step``, signal-to-noise ratio ``snr``;
    Song et al. use 0.16 on CIFAR-10) pull it towards p_{t_{i+1}}. alpha_i = alpha(t_i)^2 / alpha(t_{i+1})^2 is the
    1 - beta of the step just taken (1 for VE). With ``corrector_steps = 0`` this is the predictor alone.
    Other arguments and the return value as in ``euler_maruyama``; model calls: steps (1 + corrector_steps).
    """
    _check_start("x_T", x_T, cond)
    check_choice("predictor", predictor, PREDICTORS)
    corrector_steps = check_int("corrector_steps", corrector_steps, 0)
    snr = check_scalar("snr", snr, 0.0, math.inf, low_inclusive=False)
    t_min, t_max = _check_interval(schedule, t_min, t_max)
    ts = time_grid(steps, t_min, t_max)
    step = euler_maruyama_step if predictor == "euler_maruyama" else reverse_diffusion_step
    x, trajectory = x_T, [x_T.cpu()]
    for i in tqdm(range(len(ts) - 1), disable=not progress, desc="predictor–corrector"):
        t, s = ts[i], ts[i + 1]
        x = step(model, x, t, s, schedule, cond, generator)                        # predictor: t -> s
        alpha_i = float(schedule.alpha(t) / schedule.alpha(s)) ** 2
        for _ in range(corrector_steps):                                           # corrector at s
            x = langevin_corrector_step(model, x, s, schedule, snr, alpha_i, cond, generator)
        if return_trajectory:
            trajectory.append(x.cpu())
    return _finish(model, x, t_min, schedule, cond, denoise, trajectory, return_trajectory)


# --- the probability-flow ODE ------------------------------------------------------------------------------------

def probability_flow_drift(model: Callable, x: Tensor, t: float, schedule: NoiseSchedule,
                           cond: Tensor | None = None) -> Tensor:
    """dx/dt = f(t) x - g(t)^2 s(x, t) / 2 (Song eq. 13): a deterministic flow with the SDE's marginals p_t."""
    f, g = sde_coefficients(schedule, t)
    return float(f) * x - 0.5 * float(g) ** 2 * model_score(model, x, t, schedule, cond)


@torch.no_grad()
def ode_sample(model: Callable, x_T: Tensor, schedule: NoiseSchedule, steps: int, method: str = "heun",
               t_min: float | None = None, t_max: float = 1.0, cond: Tensor | None = None, denoise: bool = True,
               generator: torch.Generator | None = None, progress: bool = True,
               return_trajectory: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Sample by integrating the probability-flow ODE from t_max down to t_min with fixed steps.

    ``method``: 'euler' (order 1, 1 model call per step), 'heun' (the trapezoidal predictor-corrector, order 2,
    2 calls) or 'rk4' (classical Runge–Kutta, order 4, 4 calls). With h = t_{i+1} - t_i < 0 and v the drift:
        euler  x + h v(x, t)
        heun   x + h (v1 + v2) / 2,           v1 = v(x, t), v2 = v(x + h v1, t + h)
        rk4    x + h (k1 + 2 k2 + 2 k3 + k4) / 6
    The map x_T -> x_{t_min} is deterministic: ``generator`` is accepted only so that every sampler has the same
    signature. Other arguments and the return value as in ``euler_maruyama``.
    """
    _check_start("x_T", x_T, cond)
    check_choice("method", method, ODE_METHODS)
    t_min, t_max = _check_interval(schedule, t_min, t_max)
    ts = time_grid(steps, t_min, t_max)

    def v(y, t):
        return probability_flow_drift(model, y, t, schedule, cond)

    x, trajectory = x_T, [x_T.cpu()]
    for i in tqdm(range(len(ts) - 1), disable=not progress, desc=f"probability flow ({method})"):
        t, t_next = float(ts[i]), float(ts[i + 1])
        h = t_next - t
        k1 = v(x, t)
        if method == "euler":
            x = x + h * k1
        elif method == "heun":
            k2 = v(x + h * k1, t_next)
            x = x + h * (k1 + k2) / 2
        else:
            t_mid = t + h / 2
            k2 = v(x + h / 2 * k1, t_mid)
            k3 = v(x + h / 2 * k2, t_mid)
            k4 = v(x + h * k3, t_next)
            x = x + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6
        if return_trajectory:
            trajectory.append(x.cpu())
    return _finish(model, x, t_min, schedule, cond, denoise, trajectory, return_trajectory)


def model_calls(sampler: str, steps: int, corrector_steps: int = 1, method: str = "heun",
                denoise: bool = True) -> int:
    """Number of function (model) evaluations, NFE, of a sampler run: 'euler_maruyama', 'predictor_corrector'
    or 'ode' with the given steps (and corrector steps / ODE method), counting the final denoising call."""
    check_choice("sampler", sampler, ("euler_maruyama", "predictor_corrector", "ode"))
    steps = check_int("steps", steps, 1)
    per_step = {"euler_maruyama": 1, "predictor_corrector": 1 + check_int("corrector_steps", corrector_steps, 0),
                "ode": {"euler": 1, "heun": 2, "rk4": 4}[check_choice("method", method, ODE_METHODS)]}[sampler]
    return steps * per_step + int(bool(denoise))


# --- exact likelihood through the ODE ----------------------------------------------------------------------------

def divergence_exact(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """(fn(x), div fn(x)) with the exact trace of the Jacobian, one backward pass per dimension.

    x: (B, ...) with each example independent of the others; returns fn(x) (B, ...) and the divergence (B,).
    Cost: D backward passes, so use it for low dimension D (2-D toys) and Hutchinson's estimator above that.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x)
        flat_out, B = out.reshape(x.shape[0], -1), x.shape[0]
        div = torch.zeros(B, dtype=out.dtype, device=out.device)
        for i in range(flat_out.shape[1]):
            (grad,) = torch.autograd.grad(flat_out[:, i].sum(), x, retain_graph=i < flat_out.shape[1] - 1)
            div = div + grad.reshape(B, -1)[:, i]  # d out_i / d x_i
    return out.detach(), div.detach()


def divergence_hutchinson(fn: Callable[[Tensor], Tensor], x: Tensor, probe: Tensor) -> tuple[Tensor, Tensor]:
    """(fn(x), probe^T J probe): Hutchinson's (1989) unbiased estimate of the divergence tr(J), J = d fn / d x,
    for a probe with E[probe probe^T] = I (Rademacher or standard Gaussian entries); one backward pass."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x)
        (vjp,) = torch.autograd.grad((out * probe).sum(), x)  # probe^T J
    return out.detach(), (vjp * probe).reshape(x.shape[0], -1).sum(1).detach()


@dataclass
class ODELikelihood:
    """What ``log_likelihood`` returns, per example (all float64 on the CPU).

    log_prob = prior_log_prob + delta_log_prob: log p_{t_min}(x) in nats; latent: x carried to t_max by the flow;
    nfe: how many times the solver evaluated the drift (and its divergence).
    """

    log_prob: Tensor        # (B,)
    prior_log_prob: Tensor  # (B,)  log N(latent; 0, prior_std^2 I)
    delta_log_prob: Tensor  # (B,)  int_{t_min}^{t_max} div v(x_t, t) dt
    latent: Tensor          # (B, ...)
    nfe: int


def log_likelihood(model: Callable, x: Tensor, schedule: NoiseSchedule, t_min: float | None = None,
                   t_max: float = 1.0, cond: Tensor | None = None, trace: str = "exact",
                   probe: str = "rademacher", generator: torch.Generator | None = None, rtol: float = 1e-5,
                   atol: float = 1e-5) -> ODELikelihood:
    """The exact log-density log p_{t_min}(x) of the probability-flow model (Song et al. 2021, App. D.2).

    The instantaneous change of variables (Chen et al. 2018) for dx/dt = v(x, t) says d log p_t(x_t)/dt = -div v,
    so integrating the pair [x_t, delta_t] with d delta/dt = div v(x_t, t) from t_min to t_max gives

        log p_{t_min}(x) = log p_prior(x_{t_max}) + delta(t_max).

    The divergence is exact (``trace='exact'``, D backward passes) or Hutchinson's estimate (``'hutchinson'``,
    one probe per example held fixed along the path, as in FFJORD; ``probe`` 'rademacher' or 'gaussian'); the
    solve is scipy's adaptive RK45 with Song et al.'s tolerances rtol = atol = 1e-5, the whole batch in one state.
    x: (B, ...) data; the model runs in x's dtype on x's device. Returns an ``ODELikelihood``.
    """
    from scipy.integrate import solve_ivp  # a well-kept adaptive solver; the diffusion maths is ours

    _check_start("x", x, cond)
    check_choice("trace", trace, TRACES)
    check_choice("probe", probe, PROBES)
    rtol = check_scalar("rtol", rtol, 0.0, 1.0, low_inclusive=False)
    atol = check_scalar("atol", atol, 0.0, 1.0, low_inclusive=False)
    t_min, t_max = _check_interval(schedule, t_min, t_max)
    shape, B = x.shape, x.shape[0]
    n = x[0].numel()
    eps = None
    if trace == "hutchinson":
        eps = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
        if probe == "rademacher":
            eps = torch.sign(eps)  # +-1 with probability 1/2 each

    def rhs(t: float, state: np.ndarray) -> np.ndarray:
        y = torch.from_numpy(state[: B * n]).reshape(shape).to(device=x.device, dtype=x.dtype)
        t = min(max(t, t_min), t_max)  # the solver may probe a hair outside [t_min, t_max]

        def v(z):
            return probability_flow_drift(model, z, t, schedule, cond)

        out, div = divergence_exact(v, y) if eps is None else divergence_hutchinson(v, y, eps)
        return np.concatenate([out.reshape(-1).double().cpu().numpy(), div.double().cpu().numpy()])

    start = np.concatenate([x.detach().double().cpu().reshape(-1).numpy(), np.zeros(B)])
    sol = solve_ivp(rhs, (t_min, t_max), start, method="RK45", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"the ODE solver failed: {sol.message}")
    end = torch.from_numpy(sol.y[:, -1])
    latent = end[: B * n].reshape(shape)
    delta = end[B * n:]
    prior = prior_log_prob(schedule, latent, t_max)
    return ODELikelihood(log_prob=prior + delta, prior_log_prob=prior, delta_log_prob=delta, latent=latent,
                         nfe=int(sol.nfev))


def bits_per_dim(model: Callable, x: Tensor, schedule: NoiseSchedule, levels: int, t_min: float | None = None,
                 dequantize: bool = True, trace: str = "hutchinson", generator: torch.Generator | None = None,
                 **kwargs) -> Tensor:
    """Bits per dimension of images x in [-1, 1] on ``levels`` evenly spaced values, through the ODE likelihood.

    A density p on the continuous image space becomes a model of the discrete pixels by integrating it over each
    pixel's bin, of width Delta = 2 / (levels - 1). With uniform dequantisation u ~ U(-Delta/2, Delta/2)^D
    (Theis et al. 2016; Jensen's inequality) the discrete log-likelihood is bounded below by
    E_u log p(x + u) + D log Delta, so

        bpd = -(log p_{t_min}(x + u) + D log Delta) / (D log 2)     (an upper bound, in bits per dimension),

    directly comparable with DDPM's ELBO in bits/dim. (For the digits, 17 levels: Delta = 1/8 and the D log Delta
    term adds 3 bits; a uniform guess over the 17 levels costs log2 17 = 4.09.) The bound is tight only where
    p_{t_min} is nearly flat inside a bin, which is what t_min controls for a model trained on exact levels.
    ``dequantize=False`` evaluates at the bin centres (not a bound). Other keywords go to ``log_likelihood``.
    Returns (B,) bits/dim (float64).
    """
    levels = check_int("levels", levels, 2)
    check_finite("x", x)
    if x.numel() and (float(x.min()) < -1 - 1e-6 or float(x.max()) > 1 + 1e-6):
        raise ValueError(f"x must lie in [-1, 1] (images on {levels} levels), got values in "
                         f"[{float(x.min()):.4g}, {float(x.max()):.4g}]")
    delta = 2.0 / (levels - 1)
    if dequantize:
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 0.5
        x = x + delta * u
    D = x[0].numel()
    logp = log_likelihood(model, x, schedule, t_min=t_min, trace=trace, generator=generator, **kwargs).log_prob
    return -(logp + D * math.log(delta)) / (D * math.log(2.0))
