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
from typing import Callable, NamedTuple

import torch
from tqdm.auto import tqdm

from .checks import check_choice, check_finite, check_int, check_same_shape
from .grids import check_index_grid, index_coefficients
from .predictions import predict_x0_eps, predict_x0_eps_at, prediction_of, targets
from .sampling import Recorder, Trajectory, check_sampler_inputs
from .schedules import DiscreteSchedule, broadcast_to, check_discrete

Tensor = torch.Tensor
VARIANCES = ("beta", "beta_tilde")


def _check_q_sample(schedule: DiscreteSchedule, x0: Tensor, i: Tensor, noise: Tensor | None) -> Tensor:
    schedule = check_discrete(schedule)
    check_finite("x0", x0)
    i = schedule.check_index(i, low=0)
    if i.shape != (x0.shape[0],):
        raise ValueError(f"i must have shape ({x0.shape[0]},) to match x0, got {tuple(i.shape)}")
    if noise is not None:
        check_same_shape("noise", noise, "x0", x0)
    return i


def q_sample(
    schedule: DiscreteSchedule,
    x0: Tensor,
    i: Tensor,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw x_i ~ q(x_i | x_0) = N(sqrt(alpha_bar_i) x_0, (1 - alpha_bar_i) I) in one shot (eq. 4).

    x0: (B, ...), i: (B,) integer steps in [0, N]. Returns (x_i, eps), both (B, ...).
    """
    i = _check_q_sample(schedule, x0, i, noise)  # (B,) steps in [0, N]
    if noise is None:
        noise = torch.randn(
            x0.shape, generator=generator, device=x0.device, dtype=x0.dtype
        )
    ab = broadcast_to(schedule.alpha_bars[i.cpu()], x0)  # (B, 1, ...)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise, noise


def q_posterior(schedule: DiscreteSchedule, x0: Tensor, x_i: Tensor, i: Tensor) -> tuple[Tensor, Tensor]:
    """Mean mu_tilde_i (B, ...) and variance beta_tilde_i (B, 1, ...) of q(x_{i-1} | x_i, x_0) (eq. 6-7)."""
    schedule = check_discrete(schedule)
    check_same_shape("x0", x0, "x_i", x_i)
    check_finite("x0", x0)
    check_finite("x_i", x_i)
    i = schedule.check_index(i)
    if i.shape not in ((), (x0.shape[0],)):
        raise ValueError(f"i must be a scalar or have shape ({x0.shape[0]},) to match x0, got {tuple(i.shape)}")
    c0, ci = schedule.posterior_coefficients(i)  # (B,) each, or scalars
    mean = broadcast_to(c0, x0) * x0 + broadcast_to(ci, x0) * x_i
    return mean, broadcast_to(schedule.posterior_variance(i), x0)


def ddpm_loss(
    model: Callable,
    x0: Tensor,
    schedule: DiscreteSchedule,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The 'simple' DDPM objective (eq. 14) for whatever the model predicts: eps, x0 or v.

    Draw i ~ U{1..N} and eps ~ N(0, I), form x_i, and regress the model's output on its target:
    eps (Ho et al.), x0, or v = alpha eps - sigma x0 (Salimans & Ho 2022). Returns the batch mean of the
    per-example mean squared error, a scalar.
    """
    schedule = check_discrete(schedule)
    check_finite("x0", x0)
    kind = prediction_of(model)
    if kind == "score":
        raise ValueError(
            "model.prediction must be 'eps', 'x0' or 'v' for ddpm_loss "
            "(score models: see ncsn)"
        )
    B = x0.shape[0]
    i = torch.randint(
        1, schedule.N + 1, (B,), generator=generator, device=x0.device
    ).cpu()  # (B,)
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


class ReverseSteps(NamedTuple):
    """The numbers of the reverse steps p(x_{k-1} | x_k), k = 1..K, of a K-step chain (index 0 unused)."""

    chain: DiscreteSchedule  # the K-step chain
    t: list[float]           # t_k: the time the model is shown
    alpha: list[float]       # alpha(t_k), sigma(t_k): for the model's prediction
    sigma: list[float]
    c0: list[float]          # the posterior mean mu_tilde_k = c0_k x0 + ci_k x_k (eq. 7)
    ci: list[float]
    std: list[float]         # the standard deviation of the added noise, sqrt(beta_k) or sqrt(beta_tilde_k)


def reverse_steps(schedule: DiscreteSchedule, indices: Tensor, variance: str) -> ReverseSteps:
    """Check an index grid ending at 0 and compute, once, every number its ancestral steps use (``ReverseSteps``).

    The K-step chain through the grid keeps the original alpha_bars (``DiscreteSchedule.respace``; K = N is the
    chain itself), so its step k jumps from index indices[K - k] to indices[K - k + 1].
    """
    seq = check_index_grid(schedule, indices)
    if seq[-1] != 0:
        raise ValueError(f"indices must end at index 0 (the data) for ancestral sampling, got final index {seq[-1]}")
    check_choice("variance", variance, VARIANCES)
    chain = schedule.respace(seq[-2::-1])
    k = torch.arange(chain.N + 1).clamp(min=1)  # 1, 1, 2, ..., K
    _, t, alpha, sigma = index_coefficients(chain, list(range(chain.N + 1)))
    c0, ci = chain.posterior_coefficients(k)
    std = reverse_step_variance(chain, k, variance).sqrt()
    return ReverseSteps(chain, t, alpha, sigma, c0.tolist(), ci.tolist(), std.tolist())


@torch.no_grad()
def ddpm_sample(
    model: Callable,
    x_T: Tensor,
    schedule: DiscreteSchedule,
    indices: Tensor,
    *,
    variance: str = "beta",
    clip_x0: bool = False,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
) -> Tensor | Trajectory:
    """Ancestral sampling, Ho et al. Algorithm 2: x_{k-1} = mu_theta(x_k, k) + sigma_k z, no noise at the last step.

    ``indices`` = ``index_grid(schedule, K)`` ending at 0 (K = N: every step); x_T (B, ...) is N(0, I) noise;
    variance: sigma_k^2 = beta_k ('beta') or beta_tilde_k ('beta_tilde'); clip_x0 clamps x0-hat to [-1, 1] (images);
    ``generator`` (on x_T's device) draws z. Returns x_0 (B, ...), or a ``Trajectory`` [x_K, ..., x_0].
    """
    r = reverse_steps(schedule, indices, variance)
    check_sampler_inputs(model, x_T, r.t[-1], cond)
    x, out = x_T, Recorder(x_T, return_trajectory)
    for k in tqdm(
        range(r.chain.N, 0, -1), disable=not progress, desc="DDPM sampling"
    ):
        x0_hat, _ = predict_x0_eps_at(
            model, x, r.t[k], r.alpha[k], r.sigma[k], cond
        )
        if clip_x0:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        x = (
            r.c0[k] * x0_hat + r.ci[k] * x
        )  # the posterior mean mu_tilde_k(x_k, x0_hat), eq. 7
        if k > 1:
            x = x + r.std[k] * torch.randn(
                x.shape, generator=generator, device=x.device, dtype=x.dtype
            )
        out.add(x, x0_hat)
    return out.result(x)


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
    schedule = check_discrete(schedule)
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
        noise = torch.randn(
            x0.shape, generator=generator, device=x0.device, dtype=x0.dtype
        )
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
