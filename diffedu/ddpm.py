"""Denoising diffusion probabilistic models (Ho et al. 2020): forward process, losses, ancestral sampling, ELBO.

Index conventions follow the paper: the chain runs over i = 1..N, x_0 is data, x_N is (nearly) pure noise, and
the network sees the continuous time t_i = schedule.times[i] (i / N for a plain chain).

    forward marginal      q(x_i | x_0)      = N(sqrt(alpha_bar_i) x_0, (1 - alpha_bar_i) I)              (eq. 4)
    true posterior        q(x_{i-1}|x_i,x_0) = N(mu_tilde_i(x_i, x_0), beta_tilde_i I)                   (eq. 6-7)
    reverse model         p(x_{i-1} | x_i)   = N(mu_tilde_i(x_i, x0_hat), sigma_i^2 I),
                          sigma_i^2 = beta_i ('beta', "fixedlarge") or beta_tilde_i ('beta_tilde', "fixedsmall")
    simple loss           E || eps - eps_hat(x_i, t_i) ||^2                                              (eq. 14)
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from .checks import check_choice, check_finite, check_int, check_same_shape
from .predictions import predict_x0_eps, prediction_of, targets
from .schedules import DiscreteSchedule, broadcast_to

Tensor = torch.Tensor
VARIANCES = ("beta", "beta_tilde")


def _check_schedule(schedule) -> DiscreteSchedule:
    if not isinstance(schedule, DiscreteSchedule):
        raise ValueError(f"schedule must be a DiscreteSchedule (DDPM's chain), got {type(schedule).__name__}")
    return schedule


def q_sample(schedule: DiscreteSchedule, x0: Tensor, i: Tensor, noise: Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Draw x_i ~ q(x_i | x_0) = N(sqrt(alpha_bar_i) x_0, (1 - alpha_bar_i) I) in one shot (eq. 4).

    x0: (B, ...), i: (B,) integer steps in [0, N]. Returns (x_i, eps), both (B, ...).
    """
    schedule = _check_schedule(schedule)
    check_finite("x0", x0)
    i = schedule.check_index(i, low=0)
    if i.shape != (x0.shape[0],):
        raise ValueError(f"i must have shape ({x0.shape[0]},) to match x0, got {tuple(i.shape)}")
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    check_same_shape("noise", noise, "x0", x0)
    ab = broadcast_to(schedule.alpha_bars[i.cpu()], x0)  # (B, 1, ...)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise, noise


def q_posterior(schedule: DiscreteSchedule, x0: Tensor, x_i: Tensor, i: Tensor) -> tuple[Tensor, Tensor]:
    """Mean mu_tilde_i (B, ...) and variance beta_tilde_i (B, 1, ...) of q(x_{i-1} | x_i, x_0) (eq. 6-7)."""
    schedule = _check_schedule(schedule)
    check_same_shape("x0", x0, "x_i", x_i)
    check_finite("x0", x0)
    check_finite("x_i", x_i)
    i = schedule.check_index(i)
    if i.shape not in ((), (x0.shape[0],)):
        raise ValueError(f"i must be a scalar or have shape ({x0.shape[0]},) to match x0, got {tuple(i.shape)}")
    c0, ci = schedule.posterior_coefficients(i)  # (B,) each, or scalars
    mean = broadcast_to(c0, x0) * x0 + broadcast_to(ci, x0) * x_i
    return mean, broadcast_to(schedule.posterior_variance(i), x0)


def ddpm_loss(model: Callable, x0: Tensor, schedule: DiscreteSchedule, cond: Tensor | None = None,
              generator: torch.Generator | None = None) -> Tensor:
    """The 'simple' DDPM objective (eq. 14) for whatever the model predicts: eps, x0 or v.

    Draw i ~ U{1..N} and eps ~ N(0, I), form x_i, and regress the model's output on its target:
    eps (Ho et al.), x0, or v = alpha eps - sigma x0 (Salimans & Ho 2022). Returns the batch mean of the
    per-example mean squared error, a scalar.
    """
    schedule = _check_schedule(schedule)
    check_finite("x0", x0)
    kind = prediction_of(model)
    if kind == "score":
        raise ValueError("model.prediction must be 'eps', 'x0' or 'v' for ddpm_loss (score models: see ncsn)")
    B = x0.shape[0]
    i = torch.randint(1, schedule.N + 1, (B,), generator=generator, device=x0.device).cpu()  # (B,)
    x_i, eps = q_sample(schedule, x0, i, generator=generator)
    alpha, sigma = schedule.coefficients(schedule.times[i], x0)  # (B, 1, ...)
    target = targets(x0, eps, alpha, sigma, kind)
    t = schedule.times[i].to(device=x0.device, dtype=x0.dtype)  # (B,)
    pred = model(x_i, t, cond)
    return ((pred - target) ** 2).reshape(B, -1).mean(dim=1).mean()


def reverse_step_variance(schedule: DiscreteSchedule, i: Tensor, variance: str) -> Tensor:
    """sigma_i^2 of the reverse model: beta_i ('beta') or beta_tilde_i ('beta_tilde') (Ho et al. Sec. 3.2)."""
    check_choice("variance", variance, VARIANCES)
    i = schedule.check_index(i)
    return schedule.betas[i.cpu()] if variance == "beta" else schedule.posterior_variance(i)


def p_mean(model: Callable, x_i: Tensor, i: Tensor, schedule: DiscreteSchedule, cond: Tensor | None = None,
           clip_x0: bool = False) -> tuple[Tensor, Tensor]:
    """Mean of p(x_{i-1} | x_i): the posterior mean with x0 replaced by the model's x0-hat. Returns (mean, x0_hat)."""
    x0_hat, _ = predict_x0_eps(model, x_i, schedule.times[i.cpu()], schedule, cond)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
    mean, _ = q_posterior(schedule, x0_hat, x_i, i)
    return mean, x0_hat


@torch.no_grad()
def ddpm_sample(model: Callable, x_T: Tensor, schedule: DiscreteSchedule, steps: int | None = None,
                variance: str = "beta", cond: Tensor | None = None, clip_x0: bool = False,
                generator: torch.Generator | None = None, progress: bool = True,
                return_trajectory: bool = False) -> Tensor | tuple[Tensor, list[Tensor], list[Tensor]]:
    """Ancestral sampling, Ho et al. Algorithm 2: x_{i-1} = mu_theta(x_i, i) + sigma_i z, and no noise at i = 1.

    Args:
        model: ``net(x, t, cond)`` predicting eps, x0, v or the score (converted by ``predict_x0_eps``).
        x_T: (B, ...) starting noise, N(0, I).
        schedule: the DDPM chain; with ``steps`` = K < N it is respaced onto K evenly spaced indices
            (``DiscreteSchedule.evenly_spaced``), the sub-chain keeping the original alpha_bars.
        variance: 'beta' (sigma_i^2 = beta_i) or 'beta_tilde' (sigma_i^2 = beta_tilde_i).
        clip_x0: clamp x0-hat to [-1, 1] at every step (for images in [-1, 1]).
        generator: a torch.Generator on x_T's device, for reproducible noise.
    Returns:
        x_0 (B, ...); with ``return_trajectory``, also the list [x_N, ..., x_0] and the list of x0-hat per step.
    """
    schedule = _check_schedule(schedule)
    check_finite("x_T", x_T)
    check_choice("variance", variance, VARIANCES)
    if steps is not None:
        schedule = schedule.evenly_spaced(check_int("steps", steps, 1, schedule.N))
    x = x_T
    trajectory, x0_preds = [x.cpu()], []
    for i in tqdm(range(schedule.N, 0, -1), disable=not progress, desc="DDPM sampling"):
        i_now = torch.tensor(i)  # one step index for the whole batch
        mean, x0_hat = p_mean(model, x, i_now, schedule, cond, clip_x0)
        if i > 1:
            var = broadcast_to(reverse_step_variance(schedule, i_now, variance), x)  # scalar
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = mean + var.sqrt() * z
        else:
            x = mean
        if return_trajectory:
            trajectory.append(x.cpu())
            x0_preds.append(x0_hat.cpu())
    return (x, trajectory, x0_preds) if return_trajectory else x


# --- the variational bound (Ho et al. eq. 5; Sohl-Dickstein et al. 2015) ---------------------------------------

def normal_kl(mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor) -> Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) elementwise for diagonal Gaussians (in nats)."""
    return 0.5 * (torch.log(var2) - torch.log(var1) + var1 / var2 + (mean1 - mean2) ** 2 / var2 - 1.0)


def _log_diff_ndtr(a: Tensor, b: Tensor) -> Tensor:
    """log(Phi(b) - Phi(a)) for a < b, computed in the tail where it is accurate (Phi(-x) = 1 - Phi(x))."""
    upper = a > 0  # both in the upper tail: use the mirrored, small probabilities
    lo, hi = torch.where(upper, -b, a), torch.where(upper, -a, b)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(torch.clamp(log_lo - log_hi, max=0.0)))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, std: Tensor, num_bins: int = 256) -> Tensor:
    """log P(x) under N(mean, std^2) integrated over x's bin (Ho et al. eq. 13), elementwise.

    Data live on ``num_bins`` evenly spaced levels in [-1, 1] (bin width 2 / (num_bins - 1)); the two edge bins
    extend to -inf and +inf, so the probabilities of all levels sum to one.
    """
    num_bins = check_int("num_bins", num_bins, 2)
    half = 1.0 / (num_bins - 1)
    x64, mean64, std64 = x.double(), mean.double(), std.double().expand_as(x)
    lower = torch.where(x64 < -1 + 1e-6, torch.full_like(x64, -math.inf), (x64 - half - mean64) / std64)
    upper = torch.where(x64 > 1 - 1e-6, torch.full_like(x64, math.inf), (x64 + half - mean64) / std64)
    return _log_diff_ndtr(lower, upper).to(x.dtype)


@torch.no_grad()
def elbo_terms(model: Callable, x0: Tensor, schedule: DiscreteSchedule, num_bins: int = 256,
               variance: str = "beta_tilde", cond: Tensor | None = None, num_terms: int | None = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """The negative ELBO of Ho et al. eq. 5, L = L_N + sum_{i=2}^{N} L_{i-1} + L_0, per example, in nats.

        L_N     = KL(q(x_N | x_0) || N(0, I))                          the prior term (no parameters)
        L_{i-1} = KL(q(x_{i-1} | x_i, x_0) || p(x_{i-1} | x_i))         the denoising terms, x_i ~ q(x_i | x_0)
        L_0     = -log p(x_0 | x_1), discretised Gaussian decoder with mean mu_theta(x_1, 1)

    The decoder's standard deviation is sqrt(beta_tilde_2), Ho et al.'s clipped value at i = 1 (beta_tilde_1 = 0).
    With ``num_terms`` = M < N - 1 the middle sum is estimated without bias from M random i per example
    ((N - 1) times their mean). Returns 'prior', 'diffusion', 'decoder', 'total' (each (B,)) and 'bpd' (B,).
    """
    schedule = _check_schedule(schedule)
    check_finite("x0", x0)
    check_choice("variance", variance, VARIANCES)
    B, D, N = x0.shape[0], x0[0].numel(), schedule.N
    if N < 2:
        raise ValueError("schedule must have N >= 2 steps for the ELBO")
    x0_64 = x0.double()
    ab_N = broadcast_to(schedule.alpha_bars[N:], x0_64)
    prior = normal_kl(ab_N.sqrt() * x0_64, 1 - ab_N, torch.zeros_like(x0_64), torch.ones_like(x0_64))
    prior = prior.reshape(B, -1).sum(1)  # (B,)

    if num_terms is None or num_terms >= N - 1:
        index_sets = [torch.full((B,), i, dtype=torch.long) for i in range(2, N + 1)]
        scale = 1.0
    else:
        num_terms = check_int("num_terms", num_terms, 1)
        index_sets = [torch.randint(2, N + 1, (B,), generator=generator, device=x0.device).cpu()
                      for _ in range(num_terms)]
        scale = (N - 1) / num_terms
    diffusion = torch.zeros(B, dtype=torch.float64, device=x0.device)
    for i in index_sets:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_i, _ = q_sample(schedule, x0, i, noise=noise)
        true_mean, true_var = q_posterior(schedule, x0, x_i, i)
        model_mean, _ = p_mean(model, x_i, i, schedule, cond)
        model_var = broadcast_to(reverse_step_variance(schedule, i, variance), x0)
        kl = normal_kl(true_mean.double(), true_var.double(), model_mean.double(), model_var.double())
        diffusion += kl.reshape(B, -1).sum(1)
    diffusion *= scale

    one = torch.ones(B, dtype=torch.long)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_1, _ = q_sample(schedule, x0, one, noise=noise)
    decoder_mean, _ = p_mean(model, x_1, one, schedule, cond)
    decoder_std = float(schedule.posterior_variance(torch.tensor([2]))[0]) ** 0.5
    decoder = -discretized_gaussian_log_likelihood(x0, decoder_mean, torch.tensor(decoder_std, device=x0.device),
                                                   num_bins).double().reshape(B, -1).sum(1)
    total = prior + diffusion + decoder
    return {"prior": prior, "diffusion": diffusion, "decoder": decoder, "total": total,
            "bpd": total / (D * math.log(2.0))}
