"""Fast samplers: the probability-flow ODE solved in few steps (Karras et al. 2022; Liu et al. 2022; Lu et al. 2022).

Every sampler here is a pure function ``name(model, x_T, schedule, steps, ..., cond=None, generator=None,
progress=True, return_trajectory=False)``. DDIM (and its inversion, ``slerp``) lives in ``ddim`` and is re-exported.

**The sigma view (Karras et al. 2022, Sec. 2 and eq. 4).** Dividing x_t = alpha x0 + sigma eps by alpha gives

    x~ = x / alpha = x0 + sigma~ eps,     sigma~ = sigma / alpha = exp(-lambda / 2),   lambda = log-SNR,

a variance-exploding process for *any* schedule (VP, sub-VP, discrete DDPM; for VE alpha = 1 and nothing changes).
Its probability-flow ODE needs only the denoiser D(x~; sigma~) = E[x0 | x~] (= x0-hat):

    dx~ / dsigma~ = (x~ - D(x~; sigma~)) / sigma~.                                              (Karras eq. 3-4)

So a solver works on a decreasing grid sigma~_0 > ... > sigma~_K (the last may be 0: clean data) and calls the
network at t = ``time_of_sigma(schedule, sigma~)`` (found from the schedule's log-SNR) on x = alpha(t) x~. Any
schedule and any prediction type (eps / x0 / v / score, through ``predict_x0_eps``) plug in. ``x_T`` and every
returned state are in the schedule's own x-space: x_T is x at the first grid time (N(0, I) for VP; sigma_max times
N(0, I) for VE), the output is alpha x~ at the last (x~ itself when the last sigma~ is 0).

Network evaluations (NFE) for K = steps:
    euler_sample K;  heun_sample 2K - 1 when the grid ends at 0 (no correction on the last step), else 2K;
    dpmpp_2m_sample K;  plms_sample K + 1 (lower-order warm-up, K >= 2), K + 9 ('prk' warm-up);  ddim_sample K.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from .checks import check_choice, check_finite, check_int, check_scalar
from .ddim import (SPACINGS, check_discrete, ddim_invert, ddim_sample, ddim_step, slerp,  # noqa: F401
                   spaced_indices)
from .predictions import predict_x0_eps_at
from .schedules import VE, DiscreteSchedule, NoiseSchedule, as_time

Tensor = torch.Tensor
WARMUPS = ("lower_order", "prk")
GRIDS = ("logsnr", "time_uniform", "karras")


# --- the sigma grid ----------------------------------------------------------------------------------------

def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                  append_zero: bool = True) -> Tensor:
    """Karras et al. (2022, eq. 5): sigma_k = (sigma_max^(1/rho) + k/(K-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.

    K = steps values from sigma_max down to sigma_min, then 0 (``append_zero``): (K + 1,) float64. rho = 1 is uniform
    in sigma, rho -> inf uniform in log sigma; Karras et al. found rho = 7 best: short steps near the data, where
    the truncation error matters most, without wasting steps at the very smallest sigmas.
    """
    steps = check_int("steps", steps, 1)
    sigma_min = check_scalar("sigma_min", sigma_min, 0.0, math.inf, low_inclusive=False)
    sigma_max = check_scalar("sigma_max", sigma_max, sigma_min, math.inf)
    rho = check_scalar("rho", rho, 0.0, math.inf, low_inclusive=False)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]) if append_zero else sigmas


def sigma_tilde(schedule: NoiseSchedule, t: Tensor | float) -> Tensor:
    """sigma~(t) = sigma(t) / alpha(t), float64: the noise level of x / alpha (Karras et al. eq. 4)."""
    t = as_time(t)
    return schedule.sigma(t) / schedule.alpha(t)


def sigma_range(schedule: NoiseSchedule, t_min: float | None = None, t_max: float = 1.0) -> tuple[float, float]:
    """(sigma~(t_min), sigma~(t_max)): the default Karras grid's ends.

    t_min defaults to the first step t_1 of a DiscreteSchedule, 0 for VE (sigma_min > 0 there) and 1e-3 for
    continuous VP-type schedules (Song et al. 2021's epsilon). VPCosine has sigma~(1) = inf: pass t_max < 1.
    """
    if t_min is None:
        t_min = float(schedule.times[1]) if isinstance(schedule, DiscreteSchedule) else \
            0.0 if isinstance(schedule, VE) else 1e-3
    t_max = check_scalar("t_max", t_max, 0.0, 1.0)
    t_min = check_scalar("t_min", t_min, 0.0, t_max)
    lo, hi = float(sigma_tilde(schedule, t_min)), float(sigma_tilde(schedule, t_max))
    if not (0 < lo < hi < math.inf):
        raise ValueError(f"the schedule's sigma~ range must be finite and positive; got [{lo}, {hi}] on "
                         f"[t_min, t_max] = [{t_min}, {t_max}] (choose t_min > 0 or t_max < 1)")
    return lo, hi


def time_of_sigma(schedule: NoiseSchedule, sigmas: Tensor | float) -> Tensor:
    """Invert sigma~(t): the time t at which the schedule's log-SNR lambda(t) equals -2 log sigma~ (float64).

    The schedule's ``time_of_log_snr`` does the work: exact for DDPM's chain (a binary search in its table and a
    linear solve), closed forms for VE, VPLinear and VPCosine, 64 bisection steps (float64 precision) otherwise.
    Sigmas outside [sigma~(0), sigma~(1)] raise a ValueError.
    """
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    check_finite("sigmas", s)
    if s.numel() and float(s.min()) <= 0:
        raise ValueError("sigmas must be positive to have a time (sigma~ = 0 is the data itself)")
    if isinstance(schedule, VE):
        return schedule.time_of_sigma(s)
    lo_s, hi_s = sigma_tilde(schedule, torch.tensor([0.0, 1.0], dtype=torch.float64)).abs().tolist()
    if s.numel() and (float(s.max()) > hi_s * (1 + 1e-12) or float(s.min()) < lo_s * (1 - 1e-12)):
        raise ValueError(f"sigmas must lie in the schedule's range [{lo_s:.6g}, {hi_s:.6g}], got values in "
                         f"[{float(s.min()):.6g}, {float(s.max()):.6g}]")
    return schedule.time_of_log_snr(-2.0 * torch.log(s))  # lambda = -2 log sigma~


def sigma_grid(schedule: NoiseSchedule, steps: int, grid: str = "karras", rho: float = 7.0,
               log_snr_min: float | None = None) -> Tensor:
    """A named grid of K = ``steps`` steps on the schedule, ending at sigma~ = 0 (the data): (K + 1,) float64.

    * 'karras': ``karras_sigmas(steps, *sigma_range(schedule), rho)`` (Karras et al. 2022, eq. 5), K values from
      sigma~_max to sigma~_min, then 0.
    * 'logsnr': Lu et al.'s (2022a) 'logSNR' steps: K + 1 values of lambda = -2 log sigma~ equally
      spaced from lambda(t_max) to lambda(t_min) (``sigma_range``'s ends), the last one replaced by 0. All steps
      but the last have the same size h in lambda; the last is a first-order jump to x0-hat. (It differs from
      ``schedule_search.log_snr_sigmas``, the DP's baseline, which puts K nodes on [sigma~_min, sigma~_max].)
      ``log_snr_min`` (None: off) starts the grid at lambda = log_snr_min instead, i.e. sigma~ =
      exp(-log_snr_min / 2), when that is below sigma~_max: the noisiest part, where the flow barely moves x, is
      skipped and x_T is taken as the state there (diffusers' ``lambda_min_clipped``; -5.1 in its cosine
      configs).
    * 'time_uniform': Lu et al.'s 'time_uniform': K + 1 equally spaced times from t_max (1, or t_N of a
      DiscreteSchedule) down to 0, as sigma~(t), the last (t = 0) replaced by 0. diffusers' 'linspace' spacing
      is this grid rounded to the chain's integer steps.
    """
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    steps = check_int("steps", steps, 1)
    check_choice("grid", grid, GRIDS)
    zero = torch.zeros(1, dtype=torch.float64)
    if log_snr_min is not None:
        if grid != "logsnr":
            raise ValueError(f"log_snr_min applies to grid='logsnr' only, got grid={grid!r}")
        lo = sigma_range(schedule)[0]
        check_scalar("log_snr_min", log_snr_min, -math.inf, -2 * math.log(lo), low_inclusive=False,
                     high_inclusive=False)
    if grid == "karras":
        return karras_sigmas(steps, *sigma_range(schedule), rho=rho)
    if grid == "logsnr":
        lo, hi = sigma_range(schedule)
        if log_snr_min is not None:
            hi = min(hi, math.exp(-log_snr_min / 2))  # lambda = -2 log sigma~
        log_sigmas = torch.linspace(math.log(hi), math.log(lo), steps + 1, dtype=torch.float64)[:-1]
        return torch.cat([torch.exp(log_sigmas), zero])
    t_max = float(schedule.times[-1]) if isinstance(schedule, DiscreteSchedule) else 1.0
    t = torch.linspace(t_max, 0.0, steps + 1, dtype=torch.float64)[:-1]
    return torch.cat([sigma_tilde(schedule, t), zero])


def _sigma_grid(schedule: NoiseSchedule, steps: int, sigmas: Tensor | None, rho: float,
                grid: str = "karras", log_snr_min: float | None = None) -> tuple[Tensor, Tensor]:
    """Validated (sigmas (K + 1,), times (K + 1,)); the time of a final sigma~ = 0 is reported as 0."""
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    steps = check_int("steps", steps, 1)
    if sigmas is None:
        sigmas = sigma_grid(schedule, steps, grid, rho, log_snr_min)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    if sigmas.shape != (steps + 1,):
        raise ValueError(f"sigmas must have shape (steps + 1,) = ({steps + 1},), got {tuple(sigmas.shape)}")
    check_finite("sigmas", sigmas)
    if not bool((sigmas.diff() < 0).all()) or float(sigmas[:-1].min()) <= 0 or float(sigmas[-1]) < 0:
        raise ValueError("sigmas must be strictly decreasing and positive (only the last may be 0)")
    positive = sigmas > 0
    times = torch.zeros_like(sigmas)
    times[positive] = time_of_sigma(schedule, sigmas[positive])
    return sigmas, times


class _Denoiser:
    """D(x~; sigma~_k) = x0-hat of the network called on x = alpha_k x~ at the grid's time t_k; counts calls (NFE).

    The whole grid is known before the first step, so its sigma~_k, t_k, alpha_k = alpha(t_k) and sigma_k are
    computed once, in float64, and kept as Python numbers (lists indexed by k): a step then costs the network
    call and a few tensor operations, and no schedule evaluation.
    """

    def __init__(self, model: Callable, schedule: NoiseSchedule, cond: Tensor | None, sigmas: Tensor, times: Tensor):
        self.model, self.cond, self.nfe = model, cond, 0
        self.sigma_tildes, self.times = sigmas.tolist(), times.tolist()
        self.alphas, self.sigmas = schedule.alpha(times).tolist(), schedule.sigma(times).tolist()

    def __call__(self, x_tilde: Tensor, k: int) -> Tensor:
        self.nfe += 1
        alpha = self.alphas[k]
        x0_hat, _ = predict_x0_eps_at(self.model, alpha * x_tilde, self.times[k], alpha, self.sigmas[k], self.cond)
        return x0_hat

    def to_tilde(self, x: Tensor, k: int) -> Tensor:
        """From the schedule's x-space at grid point k to the sigma view: x~ = x / alpha_k."""
        return x / self.alphas[k]

    def to_x(self, x_tilde: Tensor, k: int) -> Tensor:
        """Back to the schedule's x-space: alpha_k x~, or x~ itself at sigma~ = 0 (clean data)."""
        return x_tilde if self.sigma_tildes[k] == 0 else self.alphas[k] * x_tilde


# --- Karras et al. 2022: Euler and Heun --------------------------------------------------------------------

@torch.no_grad()
def euler_sample(model: Callable, x_T: Tensor, schedule: NoiseSchedule, steps: int, sigmas: Tensor | None = None,
                 grid: str = "karras", rho: float = 7.0, cond: Tensor | None = None,
                 generator: torch.Generator | None = None,
                 progress: bool = True, return_trajectory: bool = False):
    """Euler's method on the probability-flow ODE in sigma~ (Karras et al. 2022, Alg. 1 without its Heun step).

        d = (x~_k - D(x~_k; sigma~_k)) / sigma~_k,     x~_{k+1} = x~_k + (sigma~_{k+1} - sigma~_k) d.

    NFE = steps. The grid is ``sigma_grid(schedule, steps, grid, rho)``: by default Karras et al.'s
    ``karras_sigmas(steps, *sigma_range(schedule), rho)``, or 'logsnr' / 'time_uniform'; ``sigmas`` (steps + 1,)
    overrides it.
    The step into sigma~ = 0 lands on D itself: that last step *is* DDIM's. ``generator`` is unused
    (deterministic). Returns x (B, ...) at the last sigma~; with ``return_trajectory`` also the K + 1 states and
    the K denoised x0-hat.
    """
    check_finite("x_T", x_T)
    D = _Denoiser(model, schedule, cond, *_sigma_grid(schedule, steps, sigmas, rho, grid))
    x = D.to_tilde(x_T, 0)  # x~_0
    trajectory, x0_preds = [x_T.cpu()], []
    for k in tqdm(range(steps), disable=not progress, desc="Euler sampling"):
        s, s_next = D.sigma_tildes[k], D.sigma_tildes[k + 1]  # Python floats
        denoised = D(x, k)
        d = (x - denoised) / s
        x = x + (s_next - s) * d
        if return_trajectory:
            trajectory.append(D.to_x(x, k + 1).cpu())
            x0_preds.append(denoised.cpu())
    out = D.to_x(x, steps)
    return (out, trajectory, x0_preds) if return_trajectory else out


@torch.no_grad()
def heun_sample(model: Callable, x_T: Tensor, schedule: NoiseSchedule, steps: int, sigmas: Tensor | None = None,
                grid: str = "karras", rho: float = 7.0, cond: Tensor | None = None,
                generator: torch.Generator | None = None,
                progress: bool = True, return_trajectory: bool = False):
    """Heun's second-order method, Karras et al. (2022) Algorithm 1 (deterministic: S_churn = 0).

        d  = (x~_k - D(x~_k; sigma~_k)) / sigma~_k,                 x' = x~_k + (sigma~_{k+1} - sigma~_k) d
        d' = (x' - D(x'; sigma~_{k+1})) / sigma~_{k+1},             x~_{k+1} = x~_k + (sigma~_{k+1} - sigma~_k)(d + d') / 2

    with the correction skipped when sigma~_{k+1} = 0 (line 8 of Alg. 1). NFE = 2 steps - 1 for a grid ending at
    0, else 2 steps. Arguments and returns as ``euler_sample``.
    """
    check_finite("x_T", x_T)
    D = _Denoiser(model, schedule, cond, *_sigma_grid(schedule, steps, sigmas, rho, grid))
    x = D.to_tilde(x_T, 0)
    trajectory, x0_preds = [x_T.cpu()], []
    for k in tqdm(range(steps), disable=not progress, desc="Heun sampling"):
        s, s_next = D.sigma_tildes[k], D.sigma_tildes[k + 1]
        denoised = D(x, k)
        d = (x - denoised) / s
        x_euler = x + (s_next - s) * d
        if s_next == 0:
            x = x_euler
        else:
            d_next = (x_euler - D(x_euler, k + 1)) / s_next
            x = x + (s_next - s) * 0.5 * (d + d_next)
        if return_trajectory:
            trajectory.append(D.to_x(x, k + 1).cpu())
            x0_preds.append(denoised.cpu())
    out = D.to_x(x, steps)
    return (out, trajectory, x0_preds) if return_trajectory else out


# --- DPM-Solver++(2M), Lu et al. 2022b ----------------------------------------------------------------------

@torch.no_grad()
def dpmpp_2m_sample(model: Callable, x_T: Tensor, schedule: NoiseSchedule, steps: int,
                    sigmas: Tensor | None = None, grid: str = "logsnr", rho: float = 7.0,
                    log_snr_min: float | None = None, lower_order_final: bool = True,
                    cond: Tensor | None = None, generator: torch.Generator | None = None, progress: bool = True,
                    return_trajectory: bool = False):
    """DPM-Solver++(2M): Lu et al. (2022b) Algorithm 2, the multistep second-order solver on the data prediction.

    With lambda = log(alpha / sigma) = -log sigma~ and h_k = lambda_{k+1} - lambda_k, the exponential
    integrator of x_t = alpha_t x~_t reads (divide Lu et al.'s update by alpha_{k+1}; e^{-h} = sigma~_{k+1} / sigma~_k)

        x~_{k+1} = (sigma~_{k+1} / sigma~_k) x~_k + (1 - sigma~_{k+1} / sigma~_k) D_k,
        D_k = x0_k                                                     first step (DDIM / first order),
        D_k = (1 + 1 / (2 r_k)) x0_k - 1 / (2 r_k) x0_{k-1},  r_k = h_{k-1} / h_k        afterwards,

    where x0_k = D(x~_k; sigma~_k) is the network's x0-hat. The last step is first order when it goes to
    sigma~ = 0 (lambda = inf there: the correction is undefined; x~ = x0_k) and, with ``lower_order_final``, when
    steps < 15 (Lu et al.'s advice for few steps; diffusers' rule too). NFE = steps.

    **The default grid** (``sigmas=None``) is ``sigma_grid(schedule, steps, grid)`` with grid = 'logsnr': equal
    steps h in log-SNR down to sigma~_min, then the jump to the data. The solver is derived in lambda and its
    local error is O(h^3), so equal h spreads the error evenly; Lu et al.'s code recommends these steps
    ('logSNR') for low-resolution images and 'time_uniform' for high-resolution ones, and the book's data are
    2-D points and 8x8 images. RMS error to the exact endpoint, 8-Gaussian benchmark, linear DDPM chain, 10 NFE:

        'logsnr' 0.086   diffusers' DPMSolverMultistepScheduler (default 'linspace') 0.139
        'time_uniform' 0.137 (diffusers' steps without rounding to integers)   'karras' (rho = 7) 0.31

    'time_uniform' ends with a jump from t = 1 / K to 0 that costs O(1/K) (first order overall); 'logsnr' keeps
    the observed second order. Karras et al.'s rho = 7 was tuned for EDM's sigma in [0.002, 80]; with this chain's
    sigma~_max ~ 157 it spends its steps at tiny sigma~ and leaves the early, mode-choosing ones coarse. On the
    cosine chain, whose last beta is clipped to 0.999 (sigma~_max ~ 2e4), lambda-uniform steps are wasted on pure
    noise: 0.22 at 10 NFE against 0.08 for 'time_uniform'. ``log_snr_min`` (see ``sigma_grid``) starts the grid
    at that log-SNR instead; with -5.1 the error at 10 NFE is 0.049 (cosine) and 0.042 (linear), at the price of a
    floor of about 1e-3 from the skipped range (at 200 NFE: 9e-4 against 3e-4 unclipped). ``sigmas``
    (steps + 1,) overrides the grid. Other arguments and returns as ``euler_sample``; ``generator`` is unused.
    """
    check_finite("x_T", x_T)
    D = _Denoiser(model, schedule, cond, *_sigma_grid(schedule, steps, sigmas, rho, grid, log_snr_min))
    x = D.to_tilde(x_T, 0)
    trajectory, x0_preds = [x_T.cpu()], []
    x0_prev, h_prev = None, None
    for k in tqdm(range(steps), disable=not progress, desc="DPM-Solver++(2M)"):
        s, s_next = D.sigma_tildes[k], D.sigma_tildes[k + 1]
        x0 = D(x, k)
        last = k == steps - 1
        first_order = x0_prev is None or s_next == 0 or (lower_order_final and last and steps < 15)
        if first_order:
            d = x0
        else:
            r = h_prev / math.log(s / s_next)  # h_{k-1} / h_k
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = (s_next / s) * x + (1 - s_next / s) * d
        if s_next > 0:
            h_prev = math.log(s / s_next)
        x0_prev = x0
        if return_trajectory:
            trajectory.append(D.to_x(x, k + 1).cpu())
            x0_preds.append(x0.cpu())
    out = D.to_x(x, steps)
    return (out, trajectory, x0_preds) if return_trajectory else out


# --- PLMS / PNDM, Liu et al. 2022 ---------------------------------------------------------------------------

def _transfer(x: Tensor, eps: Tensor, a_i: float, a_j: float) -> Tensor:
    """Liu et al.'s transfer phi(x, eps, i -> j) (eq. 11): the deterministic DDIM jump with a given eps-hat."""
    x0_hat = (x - math.sqrt(1 - a_i) * eps) / math.sqrt(a_i)
    return ddim_step(x, x0_hat, eps, a_i, a_j)


@torch.no_grad()
def plms_sample(model: Callable, x_T: Tensor, schedule: DiscreteSchedule, steps: int, spacing: str = "trailing",
                steps_offset: int = 0, set_alpha_to_one: bool = True, warmup: str = "lower_order",
                cond: Tensor | None = None, generator: torch.Generator | None = None, progress: bool = True,
                return_trajectory: bool = False):
    """Pseudo linear multistep sampling, PLMS (Liu et al. 2022, "Pseudo numerical methods", eq. 11-13).

    It walks DDIM's index sequence (``spaced_indices``; final index as in ``ddim_sample``) and at each jump feeds
    the transfer phi (DDIM's deterministic jump) an Adams-Bashforth combination of past eps-hats e_k, e_{k-1}, ...
    taken at the grid points (equal steps assumed):

        e' = (55 e_k - 59 e_{k-1} + 37 e_{k-2} - 9 e_{k-3}) / 24                             (eq. 12, 4th order)

    It needs three earlier eps-hats, hence a warm-up:
      * 'lower_order' (default): diffusers' PNDMScheduler with ``skip_prk_steps=True`` (Stable Diffusion's
        setting) and latent-diffusion's PLMSSampler: the first jump is a pseudo improved Euler step,
        e' = (e(x_i, t_i) + e(phi(x_i, e, i -> j), t_j)) / 2 (its predictor's e is then dropped), the next two use
        the 2nd- and 3rd-order Adams-Bashforth weights (3, -1) / 2 and (23, -16, 5) / 12. NFE = steps + 1
        (steps = 1: one plain DDIM jump).
      * 'prk': the paper's PNDM: the first three jumps use pseudo Runge-Kutta (eq. 13: four calls each, two at the
        half-way index i - (i - j) // 2), as diffusers' ``skip_prk_steps=False``. Needs steps >= 4; NFE = steps + 9.
    ``generator`` is unused (deterministic). Returns x (B, ...); with ``return_trajectory`` also the K + 1 states
    at the grid indices and the K x0-hat at each grid point.
    """
    schedule = check_discrete(schedule)
    check_finite("x_T", x_T)
    check_choice("warmup", warmup, WARMUPS)
    steps = check_int("steps", steps, 4 if warmup == "prk" else 1, schedule.N)
    seq = spaced_indices(schedule.N, steps, spacing, steps_offset).tolist()
    seq.append(0 if set_alpha_to_one else 1)
    # the chain's float64 numbers as Python floats, once: alpha_bar_i, t_i, alpha(t_i), sigma(t_i)
    ab, times = schedule.alpha_bars.tolist(), schedule.times.tolist()
    alphas, sigmas = schedule.alpha(schedule.times).tolist(), schedule.sigma(schedule.times).tolist()

    def eps_at(x: Tensor, i: int) -> tuple[Tensor, Tensor]:
        return predict_x0_eps_at(model, x, times[i], alphas[i], sigmas[i], cond)

    x = x_T
    trajectory, x0_preds, ets = [x.cpu()], [], []  # ets: eps-hat at the grid points, newest last
    for k, (i, j) in enumerate(tqdm(list(zip(seq[:-1], seq[1:])), disable=not progress, desc="PLMS sampling")):
        a_i, a_j = ab[i], ab[j]
        x0_hat, e = eps_at(x, i)
        ets.append(e)
        if warmup == "prk" and k < 3:  # pseudo Runge-Kutta (eq. 13)
            m = i - (i - j) // 2
            a_m = ab[m]
            e2 = eps_at(_transfer(x, e, a_i, a_m), m)[1]
            e3 = eps_at(_transfer(x, e2, a_i, a_m), m)[1]
            e4 = eps_at(_transfer(x, e3, a_i, a_j), j)[1]
            e_prime = (e + 2 * e2 + 2 * e3 + e4) / 6
        elif warmup == "lower_order" and k == 0 and steps > 1:  # pseudo improved Euler
            e_prime = (e + eps_at(_transfer(x, e, a_i, a_j), j)[1]) / 2
        elif len(ets) == 1:
            e_prime = e
        elif len(ets) == 2:
            e_prime = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            e_prime = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            e_prime = (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]) / 24
        ets = ets[-3:]
        x = _transfer(x, e_prime, a_i, a_j)
        if return_trajectory:
            trajectory.append(x.cpu())
            x0_preds.append(x0_hat.cpu())
    return (x, trajectory, x0_preds) if return_trajectory else x


def discrete_sigmas(schedule: DiscreteSchedule, indices: Tensor, final: float = 0.0) -> Tensor:
    """The sigma~ grid of chain indices (decreasing), sigma~_i = sqrt((1 - alpha_bar_i) / alpha_bar_i), then
    ``final`` (0: to clean data): lets Euler / Heun / DPM-Solver++ walk the same steps as DDIM or diffusers'
    discrete schedulers (``discrete_sigmas(s, spaced_indices(s.N, K, 'trailing'))``). Returns (K + 1,) float64."""
    schedule = check_discrete(schedule)
    i = schedule.check_index(torch.as_tensor(indices))
    ab = schedule.alpha_bars[i.cpu()]
    final = check_scalar("final", final, 0.0, math.inf)
    return torch.cat([torch.sqrt((1 - ab) / ab), torch.tensor([final], dtype=torch.float64)])
