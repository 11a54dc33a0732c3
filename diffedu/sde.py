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
are piecewise constant). The samplers are pure functions over a model (any prediction type, read as the score
-eps-hat / sigma), running on a grid t_0 = t_max > t_1 > ... > t_K = t_min (``grids.time_grid``):

* ``euler_maruyama_sample``: the reverse SDE, one Euler–Maruyama step per grid interval;
* ``predictor_corrector_sample``: a predictor step (Euler–Maruyama or reverse diffusion) followed by Langevin
  corrector steps with a signal-to-noise step size (Song et al. Algorithms 2-5);
* ``ode_sample``: the probability-flow ODE with fixed steps (Euler, Heun or RK4).

The exact likelihood through the probability-flow ODE is in ``diffedu.likelihood``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from .checks import check_choice, check_finite, check_int, check_scalar
from .grids import check_time_grid, time_grid  # noqa: F401  (time_grid: the grid these samplers walk)
from .predictions import predict_x0_eps_at
from .sampling import Recorder, Trajectory, check_sampler_inputs
from .schedules import VE, NoiseSchedule, SubVP, VPLinear, as_time

Tensor = torch.Tensor

PREDICTORS = ("euler_maruyama", "reverse_diffusion")
ODE_METHODS = ("euler", "heun", "rk4")


# --- the forward SDE of a schedule ---------------------------------------------------------------------------


def sde_coefficients(
    schedule: NoiseSchedule, t: Tensor | float
) -> tuple[Tensor, Tensor]:
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
        return torch.zeros_like(t), schedule.sigma(t) * math.sqrt(
            2 * math.log(schedule.sigma_max / schedule.sigma_min)
        )
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
        z = torch.randn(
            x.shape, generator=generator, device=x.device, dtype=x.dtype
        )
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


# --- the model's score at one time ---------------------------------------------------------------------------

def default_t_min(schedule: NoiseSchedule) -> float:
    """Where sampling stops: 1e-3 for VP-type schedules (sigma(0) = 0 makes the score blow up at t = 0), and 0
    for VE, whose sigma(0) = sigma_min > 0 (Song et al. use eps = 1e-5 and 1e-3; we keep one round number)."""
    return 0.0 if isinstance(schedule, VE) else 1e-3


def _at(schedule: NoiseSchedule, t: float) -> tuple[float, float, float, float]:
    """f(t), g(t), alpha(t), sigma(t) as Python floats: one step's coefficients."""
    f, g = sde_coefficients(schedule, t)
    alpha, sigma = schedule.at(torch.tensor([float(t)], dtype=torch.float64))
    return float(f), float(g), alpha[0], sigma[0]


# --- reverse-time SDE samplers -----------------------------------------------------------------------------------


def euler_maruyama_step(
    model: Callable,
    x: Tensor,
    t: float,
    s: float,
    schedule: NoiseSchedule,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """One Euler–Maruyama step of the reverse SDE (Song eq. 6) from t down to s < t, h = t - s:

        x_s = x_t - [f(t) x_t - g(t)^2 score(x_t, t)] h + g(t) sqrt(h) z,    z ~ N(0, I).

    Returns x_s and the model's x0-hat at (x_t, t).
    """
    h = float(t) - float(s)
    f, g, alpha, sigma = _at(schedule, t)
    x0_hat, eps_hat = predict_x0_eps_at(model, x, float(t), alpha, sigma, cond)
    score = -eps_hat / sigma
    z = torch.randn(
        x.shape, generator=generator, device=x.device, dtype=x.dtype
    )
    return x - (f * x - g ** 2 * score) * h + g * math.sqrt(h) * z, x0_hat


def reverse_diffusion_step(model: Callable, x: Tensor, t: float, s: float, schedule: NoiseSchedule,
                           cond: Tensor | None = None,
                           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One reverse-diffusion step from t down to s (Song et al. eq. 46), built on the forward step's own kernel.

    Between s and t the forward process is exactly x_t = a x_s + b z with a = alpha(t) / alpha(s) and
    b^2 = sigma(t)^2 - a^2 sigma(s)^2; read as one step x_t = x_s + f_s(x_s) + b z with f_s(x) = (a - 1) x, its
    reverse is
        x_s = x_t - (a - 1) x_t + b^2 score(x_t, t) + b z.
    For VE (a = 1) this is NCSN's b^2 = sigma_t^2 - sigma_s^2 (Song et al. Alg. 2); for DDPM's chain
    (a = sqrt(1 - beta_i), b^2 = beta_i) it is the first-order expansion of DDPM's ancestral step.
    Returns x_s and the model's x0-hat at (x_t, t).
    """
    _, _, alpha_t, sigma_t = _at(schedule, t)
    _, _, alpha_s, sigma_s = _at(schedule, s)
    a = alpha_t / alpha_s
    b2 = max(sigma_t ** 2 - a ** 2 * sigma_s ** 2, 0.0)
    x0_hat, eps_hat = predict_x0_eps_at(model, x, float(t), alpha_t, sigma_t, cond)
    score = -eps_hat / sigma_t
    z = torch.randn(
        x.shape, generator=generator, device=x.device, dtype=x.dtype
    )
    return (2 - a) * x + b2 * score + math.sqrt(b2) * z, x0_hat


def langevin_corrector_step(
    model: Callable,
    x: Tensor,
    t: float,
    schedule: NoiseSchedule,
    snr: float,
    alpha_i: float = 1.0,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One Langevin step at fixed time t with the signal-to-noise step size (Song et al. Alg. 4 (VE), 5 (VP)):

        eps = 2 alpha_i (r ||z|| / ||s||)^2,     x <- x + eps s(x, t) + sqrt(2 eps) z.

    r = ``snr``; alpha_i = 1 for VE and 1 - beta_i of the current step for VP. As in the reference code the two
    norms are per-example norms averaged over the batch (a per-example ratio explodes where the score vanishes).
    """
    _, _, alpha, sigma = _at(schedule, t)
    score = (
        -predict_x0_eps_at(model, x, float(t), alpha, sigma, cond)[1] / sigma
    )
    z = torch.randn(
        x.shape, generator=generator, device=x.device, dtype=x.dtype
    )
    B = x.shape[0]
    score_norm = score.reshape(B, -1).norm(dim=1).mean()
    noise_norm = z.reshape(B, -1).norm(dim=1).mean()
    eps = 2 * alpha_i * (snr * noise_norm / score_norm.clamp(min=1e-12)) ** 2
    return x + eps * score + torch.sqrt(2 * eps) * z


def _denoise(model: Callable, x: Tensor, t: float, schedule: NoiseSchedule, cond: Tensor | None) -> Tensor:
    """The last, noise-free step: x0-hat = E[x0 | x_t] (Tweedie; Efron 2011), one more model call."""
    _, _, alpha, sigma = _at(schedule, t)
    return predict_x0_eps_at(model, x, float(t), alpha, sigma, cond)[0]


@torch.no_grad()
def euler_maruyama_sample(model: Callable, x_T: Tensor, schedule: NoiseSchedule, times: Tensor, *,
                          denoise: bool = True, cond: Tensor | None = None,
                          generator: torch.Generator | None = None, progress: bool = True,
                          return_trajectory: bool = False) -> Tensor | Trajectory:
    """Sample by solving the reverse SDE (Song eq. 6) with one Euler–Maruyama step per interval of ``times``.

    x_T (B, ...) from the prior (``prior_sample``); ``times`` = ``time_grid(K, t_min, t_max)``, decreasing;
    ``denoise``: finish with Tweedie's x0-hat at t_min (one more call), otherwise x ~ p_{t_min}; ``generator`` on
    x_T's device. NFE = K (+ 1 with denoise). Returns the sample (B, ...), or a ``Trajectory`` (its states: the
    K + 1 grid states, before the final denoising).
    """
    t = check_time_grid(schedule, times)
    check_sampler_inputs(model, x_T, t[0], cond)
    x, out = x_T, Recorder(x_T, return_trajectory)
    for k in tqdm(range(len(t) - 1), disable=not progress, desc="Euler–Maruyama"):
        x, x0_hat = euler_maruyama_step(model, x, t[k], t[k + 1], schedule, cond, generator)
        out.add(x, x0_hat)
    return out.result(
        _denoise(model, x, t[-1], schedule, cond) if denoise else x
    )


@torch.no_grad()
def predictor_corrector_sample(model: Callable, x_T: Tensor, schedule: NoiseSchedule, times: Tensor, *,
                               predictor: str = "reverse_diffusion", corrector_steps: int = 1, snr: float = 0.16,
                               denoise: bool = True, cond: Tensor | None = None,
                               generator: torch.Generator | None = None, progress: bool = True,
                               return_trajectory: bool = False) -> Tensor | Trajectory:
    """Predictor–corrector sampling (Song et al. 2021, Alg. 1; Alg. 2 for VE, Alg. 3 for VP).

    At each grid step t_k -> t_{k+1}: one predictor step ('euler_maruyama' or 'reverse_diffusion') moves x down
    in time, then ``corrector_steps`` Langevin steps (``langevin_corrector_step``, signal-to-noise ratio ``snr``;
    Song et al. use 0.16 on CIFAR-10) pull it towards p_{t_{k+1}}. alpha_i = alpha(t_k)^2 / alpha(t_{k+1})^2 is the
    1 - beta of the step just taken (1 for VE). With ``corrector_steps = 0`` this is the predictor alone.
    Other arguments and the return value as in ``euler_maruyama_sample``; NFE = K (1 + corrector_steps) (+ 1).
    """
    t = check_time_grid(schedule, times)
    check_sampler_inputs(model, x_T, t[0], cond)
    check_choice("predictor", predictor, PREDICTORS)
    corrector_steps = check_int("corrector_steps", corrector_steps, 0)
    snr = check_scalar("snr", snr, 0.0, math.inf, low_inclusive=False)
    step = euler_maruyama_step if predictor == "euler_maruyama" else reverse_diffusion_step
    x, out = x_T, Recorder(x_T, return_trajectory)
    for k in tqdm(range(len(t) - 1), disable=not progress, desc="predictor–corrector"):
        x, x0_hat = step(model, x, t[k], t[k + 1], schedule, cond, generator)        # predictor: t_k -> t_{k+1}
        alpha_i = float(schedule.alpha(t[k]) / schedule.alpha(t[k + 1])) ** 2
        for _ in range(corrector_steps):                                              # corrector at t_{k+1}
            x = langevin_corrector_step(model, x, t[k + 1], schedule, snr, alpha_i, cond, generator)
        out.add(x, x0_hat)
    return out.result(
        _denoise(model, x, t[-1], schedule, cond) if denoise else x
    )


# --- the probability-flow ODE ------------------------------------------------------------------------------------


def probability_flow_drift(
    model: Callable,
    x: Tensor,
    t: float,
    schedule: NoiseSchedule,
    cond: Tensor | None = None,
) -> Tensor:
    """dx/dt = f(t) x - g(t)^2 score(x, t) / 2 (Song eq. 13): a deterministic flow with the SDE's marginals p_t."""
    f, g, alpha, sigma = _at(schedule, t)
    score = (
        -predict_x0_eps_at(model, x, float(t), alpha, sigma, cond)[1] / sigma
    )
    return f * x - 0.5 * g ** 2 * score


@torch.no_grad()
def ode_sample(
    model: Callable,
    x_T: Tensor,
    schedule: NoiseSchedule,
    times: Tensor,
    *,
    method: str = "heun",
    denoise: bool = True,
    cond: Tensor | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
) -> Tensor | Trajectory:
    """Sample by integrating the probability-flow ODE along ``times`` (t_max down to t_min) with fixed steps.

    ``method``: 'euler' (order 1, 1 model call per step), 'heun' (the trapezoidal predictor-corrector, order 2,
    2 calls) or 'rk4' (classical Runge–Kutta, order 4, 4 calls). With h = t_{k+1} - t_k < 0 and v the drift:
        euler  x + h v(x, t)
        heun   x + h (v1 + v2) / 2,           v1 = v(x, t), v2 = v(x + h v1, t + h)
        rk4    x + h (k1 + 2 k2 + 2 k3 + k4) / 6
    Deterministic: no ``generator``. Other arguments and the return value as in ``euler_maruyama_sample``; its
    trajectory has no x0-hat (the drift holds the score).
    """
    t = check_time_grid(schedule, times)
    check_sampler_inputs(model, x_T, t[0], cond)
    check_choice("method", method, ODE_METHODS)

    def v(y, u):
        return probability_flow_drift(model, y, u, schedule, cond)

    x, out = x_T, Recorder(x_T, return_trajectory)
    for k in tqdm(
        range(len(t) - 1),
        disable=not progress,
        desc=f"probability flow ({method})",
    ):
        h = t[k + 1] - t[k]
        k1 = v(x, t[k])
        if method == "euler":
            x = x + h * k1
        elif method == "heun":
            k2 = v(x + h * k1, t[k + 1])
            x = x + h * (k1 + k2) / 2
        else:
            t_mid = t[k] + h / 2
            k2 = v(x + h / 2 * k1, t_mid)
            k3 = v(x + h / 2 * k2, t_mid)
            k4 = v(x + h * k3, t[k + 1])
            x = x + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6
        out.add(x)
    return out.result(
        _denoise(model, x, t[-1], schedule, cond) if denoise else x
    )


def model_calls(sampler: str, steps: int, corrector_steps: int = 1, method: str = "heun",
                denoise: bool = True) -> int:
    """Number of function (model) evaluations, NFE, of a sampler run: 'euler_maruyama', 'predictor_corrector'
    or 'ode' with the given steps (and corrector steps / ODE method), counting the final denoising call."""
    check_choice("sampler", sampler, ("euler_maruyama", "predictor_corrector", "ode"))
    steps = check_int("steps", steps, 1)
    per_step = {"euler_maruyama": 1, "predictor_corrector": 1 + check_int("corrector_steps", corrector_steps, 0),
                "ode": {"euler": 1, "heun": 2, "rk4": 4}[check_choice("method", method, ODE_METHODS)]}[sampler]
    return steps * per_step + int(bool(denoise))
