"""Fast samplers: the probability-flow ODE solved in few steps (Karras et al. 2022; Liu et al. 2022; Lu et al. 2022).

**The sigma view (Karras et al. 2022, Sec. 2 and eq. 4).** Dividing x_t = alpha x0 + sigma eps by alpha gives

    x~ = x / alpha = x0 + sigma~ eps,     sigma~ = sigma / alpha = exp(-lambda / 2),   lambda = log-SNR,

a variance-exploding process for *any* schedule (VP, sub-VP, discrete DDPM; for VE alpha = 1 and nothing changes).
Its probability-flow ODE needs only the denoiser D(x~; sigma~) = E[x0 | x~] (= x0-hat):

    dx~ / dsigma~ = (x~ - D(x~; sigma~)) / sigma~.                                              (Karras eq. 3-4)

So a solver works on a decreasing grid sigma~_0 > ... > sigma~_K (``grids.sigma_grid``; the last may be 0: clean
data) and calls the network at t = ``time_of_sigma(schedule, sigma~)`` on x = alpha(t) x~ (``Denoiser``). Any
schedule and any prediction type plug in. ``x_T`` and every returned state are in the schedule's own x-space: x_T
is x at the first grid point (N(0, I) for VP; sigma_max N(0, I) for VE), the output alpha x~ at the last.

Network evaluations (NFE) for a grid of K steps:
    euler_sample K;  heun_sample 2K - 1 when the grid ends at 0 (no correction on the last step), else 2K;
    dpmpp_2m_sample K;  plms_sample K + 1 (lower-order warm-up, K >= 2), K + 9 ('prk' warm-up);  ddim_sample K.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from .checks import check_choice
from .ddim import ddim_step
from .grids import check_index_grid, check_sigma_grid, index_coefficients
from .predictions import predict_x0_eps_at
from .sampling import Recorder, Trajectory, check_sampler_inputs
from .schedules import DiscreteSchedule, NoiseSchedule

Tensor = torch.Tensor
WARMUPS = ("lower_order", "prk")


class Denoiser:
    """D(x~; sigma~_k): the network's x0-hat at x = alpha_k x~ and time t_k, for the points k of a sigma~ grid.

    The grid is checked and each point's sigma~_k, t_k, alpha_k and sigma_k are computed once, in float64, as
    Python numbers (``sigmas``, ``times``, ``alphas``, ``stds``): a step then costs the network call and a few
    tensor operations, and no schedule evaluation.
    """

    def __init__(self, model: Callable, schedule: NoiseSchedule, sigmas: Tensor, cond: Tensor | None = None):
        self.model, self.cond = model, cond
        self.sigmas, self.times = check_sigma_grid(schedule, sigmas)
        self.alphas, self.stds = schedule.at(torch.tensor(self.times, dtype=torch.float64))

    def __call__(self, x_tilde: Tensor, k: int) -> Tensor:
        alpha = self.alphas[k]
        return predict_x0_eps_at(self.model, alpha * x_tilde, self.times[k], alpha, self.stds[k], self.cond)[0]


# --- Karras et al. 2022: Euler and Heun --------------------------------------------------------------------


@torch.no_grad()
def euler_sample(
    model: Callable,
    x_T: Tensor,
    schedule: NoiseSchedule,
    sigmas: Tensor,
    *,
    cond: Tensor | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
) -> Tensor | Trajectory:
    """Euler's method on the probability-flow ODE in sigma~ (Karras et al. 2022, Alg. 1 without its Heun step).

        d = (x~_k - D(x~_k; sigma~_k)) / sigma~_k,     x~_{k+1} = x~_k + (sigma~_{k+1} - sigma~_k) d.

    NFE = K for a grid ``sigmas`` (K + 1,). The step into sigma~ = 0 lands on D itself: that last step *is*
    DDIM's. Returns x (B, ...) at the last grid point, or a ``Trajectory``.
    """
    D = Denoiser(model, schedule, sigmas, cond)
    check_sampler_inputs(model, x_T, D.times[0], cond)
    s, a = D.sigmas, D.alphas
    x, out = x_T / a[0], Recorder(x_T, return_trajectory)  # x~_0
    for k in tqdm(
        range(len(s) - 1), disable=not progress, desc="Euler sampling"
    ):
        x0_hat = D(x, k)
        d = (x - x0_hat) / s[k]  # dx~/dsigma~ (Karras eq. 3)
        x = x + (s[k + 1] - s[k]) * d
        out.add(x, x0_hat, scale=a[k + 1])
    return out.result(a[-1] * x)


@torch.no_grad()
def heun_sample(
    model: Callable,
    x_T: Tensor,
    schedule: NoiseSchedule,
    sigmas: Tensor,
    *,
    cond: Tensor | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
) -> Tensor | Trajectory:
    """Heun's second-order method, Karras et al. (2022) Algorithm 1 (deterministic: S_churn = 0).

        d  = (x~_k - D(x~_k; sigma~_k)) / sigma~_k,                 x' = x~_k + (sigma~_{k+1} - sigma~_k) d
        d' = (x' - D(x'; sigma~_{k+1})) / sigma~_{k+1},             x~_{k+1} = x~_k + (sigma~_{k+1} - sigma~_k)(d + d') / 2

    with the correction skipped when sigma~_{k+1} = 0 (line 8 of Alg. 1). NFE = 2K - 1 for a grid ending at 0,
    else 2K. Arguments and returns as ``euler_sample``.
    """
    D = Denoiser(model, schedule, sigmas, cond)
    check_sampler_inputs(model, x_T, D.times[0], cond)
    s, a = D.sigmas, D.alphas
    x, out = x_T / a[0], Recorder(x_T, return_trajectory)
    for k in tqdm(
        range(len(s) - 1), disable=not progress, desc="Heun sampling"
    ):
        x0_hat = D(x, k)
        d = (x - x0_hat) / s[k]
        x_next = x + (s[k + 1] - s[k]) * d  # Euler's predictor
        if s[k + 1] > 0:  # the trapezoidal corrector
            d_next = (x_next - D(x_next, k + 1)) / s[k + 1]
            x_next = x + (s[k + 1] - s[k]) * 0.5 * (d + d_next)
        x = x_next
        out.add(x, x0_hat, scale=a[k + 1])
    return out.result(a[-1] * x)


# --- DPM-Solver++(2M), Lu et al. 2022b ----------------------------------------------------------------------


@torch.no_grad()
def dpmpp_2m_sample(
    model: Callable,
    x_T: Tensor,
    schedule: NoiseSchedule,
    sigmas: Tensor,
    *,
    lower_order_final: bool = True,
    cond: Tensor | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
) -> Tensor | Trajectory:
    """DPM-Solver++(2M): Lu et al. (2022b) Algorithm 2, the multistep second-order solver on the data prediction.

    With lambda = log(alpha / sigma) = -log sigma~ and h_k = lambda_{k+1} - lambda_k, the exponential
    integrator of x_t = alpha_t x~_t reads (divide Lu et al.'s update by alpha_{k+1}; e^{-h} = sigma~_{k+1} / sigma~_k)

        x~_{k+1} = (sigma~_{k+1} / sigma~_k) x~_k + (1 - sigma~_{k+1} / sigma~_k) D_k,
        D_k = x0_k                                                     first step (DDIM / first order),
        D_k = (1 + 1 / (2 r_k)) x0_k - 1 / (2 r_k) x0_{k-1},  r_k = h_{k-1} / h_k        afterwards,

    where x0_k = D(x~_k; sigma~_k). The last step is first order when it goes to sigma~ = 0 (lambda = inf: the
    correction is undefined) and, with ``lower_order_final``, when K < 15 (Lu et al.'s advice for few steps;
    diffusers' rule too). NFE = K. Lu et al. derive it in lambda, so equal steps in lambda (``sigma_grid(...,
    'logsnr')``) suit it. Arguments and returns as ``euler_sample``.
    """
    D = Denoiser(model, schedule, sigmas, cond)
    check_sampler_inputs(model, x_T, D.times[0], cond)
    s, a, K = D.sigmas, D.alphas, len(D.sigmas) - 1
    x, out = x_T / a[0], Recorder(x_T, return_trajectory)
    x0_prev, h_prev = None, None
    for k in tqdm(range(K), disable=not progress, desc="DPM-Solver++(2M)"):
        x0 = D(x, k)
        if (
            x0_prev is None
            or s[k + 1] == 0
            or (lower_order_final and k == K - 1 and K < 15)
        ):
            d = x0  # first order
        else:
            r = h_prev / math.log(s[k] / s[k + 1])  # h_{k-1} / h_k
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = (s[k + 1] / s[k]) * x + (1 - s[k + 1] / s[k]) * d
        if s[k + 1] > 0:
            h_prev = math.log(s[k] / s[k + 1])
        x0_prev = x0
        out.add(x, x0, scale=a[k + 1])
    return out.result(a[-1] * x)


# --- PLMS / PNDM, Liu et al. 2022 ---------------------------------------------------------------------------

def _transfer(x: Tensor, eps: Tensor, a_i: float, a_j: float) -> Tensor:
    """Liu et al.'s transfer phi(x, eps, i -> j) (eq. 11): the deterministic DDIM jump with a given eps-hat."""
    x0_hat = (x - math.sqrt(1 - a_i) * eps) / math.sqrt(a_i)
    return ddim_step(x0_hat, eps, a_i, a_j)


@torch.no_grad()
def plms_sample(
    model: Callable,
    x_T: Tensor,
    schedule: DiscreteSchedule,
    indices: Tensor,
    *,
    warmup: str = "lower_order",
    cond: Tensor | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
) -> Tensor | Trajectory:
    """Pseudo linear multistep sampling, PLMS (Liu et al. 2022, "Pseudo numerical methods", eq. 11-13).

    It walks DDIM's index grid and at each jump feeds the transfer phi (DDIM's deterministic jump) an
    Adams-Bashforth combination of past eps-hats e_k, e_{k-1}, ... taken at the grid points (equal steps assumed):

        e' = (55 e_k - 59 e_{k-1} + 37 e_{k-2} - 9 e_{k-3}) / 24                             (eq. 12, 4th order)

    It needs three earlier eps-hats, hence a warm-up:
      * 'lower_order' (default): diffusers' PNDMScheduler with ``skip_prk_steps=True`` and latent-diffusion's
        PLMSSampler: the first jump is a pseudo improved Euler step, e' = (e(x_i, t_i) + e(phi(x_i, e, i -> j),
        t_j)) / 2, the next two use the Adams-Bashforth weights (3, -1) / 2 and (23, -16, 5) / 12. NFE = K + 1
        (K = 1: one plain DDIM jump).
      * 'prk': the paper's PNDM: the first three jumps use pseudo Runge-Kutta (eq. 13: four calls each, two at the
        half-way index i - (i - j) // 2). Needs K >= 4; NFE = K + 9.
    Each eps-hat is the model's prediction converted to eps where it was evaluated (for an eps model, the raw
    output). Returns x (B, ...) at the final index, or a ``Trajectory``.
    """
    seq = check_index_grid(schedule, indices)
    check_choice("warmup", warmup, WARMUPS)
    if warmup == "prk" and len(seq) < 5:
        raise ValueError(
            "indices must have at least 5 entries (K >= 4 steps) for "
            f"warmup='prk', got {len(seq)}"
        )
    ab, times, alphas, sigmas = index_coefficients(
        schedule, list(range(schedule.N + 1))
    )  # every index
    check_sampler_inputs(model, x_T, times[seq[0]], cond)

    def eps_at(x: Tensor, i: int) -> tuple[Tensor, Tensor]:
        return predict_x0_eps_at(
            model, x, times[i], alphas[i], sigmas[i], cond
        )

    x, out, ets = (
        x_T,
        Recorder(x_T, return_trajectory),
        [],
    )  # ets: eps-hat at the grid points, newest last
    for k in tqdm(
        range(len(seq) - 1), disable=not progress, desc="PLMS sampling"
    ):
        i, j = seq[k], seq[k + 1]
        x0_hat, e = eps_at(x, i)
        ets.append(e)
        if warmup == "prk" and k < 3:  # pseudo Runge-Kutta (eq. 13)
            m = i - (i - j) // 2
            e2 = eps_at(_transfer(x, e, ab[i], ab[m]), m)[1]
            e3 = eps_at(_transfer(x, e2, ab[i], ab[m]), m)[1]
            e4 = eps_at(_transfer(x, e3, ab[i], ab[j]), j)[1]
            e_prime = (e + 2 * e2 + 2 * e3 + e4) / 6
        elif (
            warmup == "lower_order" and k == 0 and len(seq) > 2
        ):  # pseudo improved Euler
            e_prime = (e + eps_at(_transfer(x, e, ab[i], ab[j]), j)[1]) / 2
        elif len(ets) == 1:
            e_prime = e
        elif len(ets) == 2:
            e_prime = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            e_prime = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            e_prime = (
                55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]
            ) / 24
        ets = ets[-3:]
        x = _transfer(x, e_prime, ab[i], ab[j])
        out.add(x, x0_hat)
    return out.result(x)
