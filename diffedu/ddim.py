"""Denoising diffusion implicit models (Song, Meng & Ermon 2021): fewer steps, optional noise, invertible.

DDIM keeps DDPM's marginals q(x_i | x_0) but replaces the Markov chain by a family of non-Markovian processes
indexed by eta. Sampling jumps along a sub-sequence tau_K > ... > tau_1 > tau_0 of DDPM indices (our index i
runs over 0..N with alpha_bar_0 = 1; the network sees t = schedule.times[i]):

    x0_hat  = (x_i - sqrt(1 - a_i) eps_hat) / sqrt(a_i),           a_i = alpha_bar_i                      (eq. 12)
    x_j     = sqrt(a_j) x0_hat + sqrt(1 - a_j - sigma^2) eps_hat + sigma z,      j the next (smaller) index
    sigma   = eta sqrt((1 - a_j) / (1 - a_i)) sqrt(1 - a_i / a_j)                                          (eq. 16)

eta = 1 gives sigma^2 = beta_tilde of the jump (DDPM's ancestral sampler with the "fixedsmall" variance) and
eta = 0 a deterministic map: the first-order (exponential-Euler) discretisation of the probability-flow ODE,
which can be run backwards to *encode* data into noise (``ddim_invert``, Sec. 5.4) and lets one interpolate in
noise space (``slerp``, Sec. 5.3).

Which indices (``spaced_indices``), with K = steps and diffusers' names for the three rules:

* 'leading'  : i = k * (N // K) + steps_offset + 1, k = 0..K-1 (DDIM's own code and diffusers' default). It
  never reaches i = N (it starts at (K - 1) N / K + 1), and with steps_offset = 0 it ends at i = 1.
* 'trailing' : i = round(k N / K), k = K..1 (Lin et al. 2024, "Common diffusion noise schedules and sample
  steps are flawed"). Starts at i = N, where x_T ~ N(0, I) is right; the same indices as ``ddpm_sample``'s
  ``DiscreteSchedule.evenly_spaced``. Default here.
* 'linspace' : i = round(linspace(0, N - 1, K)) + 1 (DPM-Solver's and Euler's default in diffusers): includes
  both i = 1 and i = N.

After the last listed index the sampler takes one more jump to the *final* index: 0 (alpha_bar = 1, clean data)
with ``set_alpha_to_one=True``, else 1 (alpha_bar_1 = 1 - beta_1: diffusers' ``set_alpha_to_one=False``, as in
Stable Diffusion's config). With 'leading', steps_offset = 0 and set_alpha_to_one = False that last jump goes
from i = 1 to i = 1 and changes nothing (it still costs one network call, as in diffusers).

Index conventions against diffusers: its timestep k in 0..N-1 is our i = k + 1 (its alphas_cumprod[k] is our
alpha_bars[k + 1]); its "final_alpha_cumprod" is our alpha_bars[0] = 1 or alpha_bars[1].
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from .checks import check_choice, check_finite, check_int, check_same_shape, check_scalar
from .predictions import predict_x0_eps_at
from .schedules import DiscreteSchedule

Tensor = torch.Tensor
SPACINGS = ("leading", "trailing", "linspace")


def check_discrete(schedule) -> DiscreteSchedule:
    """Raise unless ``schedule`` is a DiscreteSchedule (DDIM and PLMS jump between indices of DDPM's chain)."""
    if not isinstance(schedule, DiscreteSchedule):
        raise ValueError(f"schedule must be a DiscreteSchedule (DDPM's chain), got {type(schedule).__name__}")
    return schedule


def spaced_indices(N: int, steps: int, spacing: str = "trailing", steps_offset: int = 0) -> Tensor:
    """The K = ``steps`` chain indices a few-step sampler visits, decreasing, each in 1..N (module docstring).

    ``steps_offset`` shifts 'leading' indices up (diffusers' ``steps_offset``; Stable Diffusion uses 1); the other
    two rules ignore it, as diffusers' DDIMScheduler does. Returns a LongTensor (K,).
    """
    N = check_int("N", N, 1)
    steps = check_int("steps", steps, 1, N)
    check_choice("spacing", spacing, SPACINGS)
    steps_offset = check_int("steps_offset", steps_offset, 0, N - 1)
    k = torch.arange(steps, dtype=torch.float64)  # 0 .. K-1
    if spacing == "leading":
        i = k * (N // steps) + steps_offset + 1
        if int(i[-1]) > N:
            raise ValueError(f"steps_offset must keep the 'leading' indices within [1, {N}], got steps_offset="
                             f"{steps_offset} with steps={steps} (largest index {int(i[-1])})")
    elif spacing == "trailing":
        i = torch.round((k + 1) * N / steps)  # round half to even, as numpy
    else:
        i = torch.round(torch.linspace(0, N - 1, steps, dtype=torch.float64)) + 1
    return i.long().flip(0)


def ddim_step(x: Tensor, x0_hat: Tensor, eps_hat: Tensor, a_i: float, a_j: float, eta: float = 0.0,
              noise: Tensor | None = None) -> Tensor:
    """One DDIM jump from index i to j (eq. 12 with sigma of eq. 16); a_i, a_j are alpha_bar_i, alpha_bar_j.

    ``noise`` (like x) is needed only when eta > 0. Coefficients are float64 numbers, so x keeps its dtype.
    """
    var = eta ** 2 * (1 - a_j) / (1 - a_i) * (1 - a_i / a_j) if eta > 0 else 0.0  # sigma^2, eq. 16
    x_j = math.sqrt(a_j) * x0_hat + math.sqrt(max(1 - a_j - var, 0.0)) * eps_hat
    if var > 0:
        x_j = x_j + math.sqrt(var) * noise
    return x_j


def _final_index(set_alpha_to_one: bool) -> int:
    return 0 if set_alpha_to_one else 1


def _chain_numbers(schedule: DiscreteSchedule) -> tuple[list[float], list[float], list[float], list[float]]:
    """alpha_bar_i, t_i, alpha(t_i), sigma(t_i) for every index i, computed once in float64 as Python floats: the
    sampling loop then does no schedule arithmetic of its own."""
    t = schedule.times
    return (schedule.alpha_bars.tolist(), t.tolist(), schedule.alpha(t).tolist(), schedule.sigma(t).tolist())


@torch.no_grad()
def ddim_sample(model: Callable, x_T: Tensor, schedule: DiscreteSchedule, steps: int, eta: float = 0.0,
                spacing: str = "trailing", steps_offset: int = 0, set_alpha_to_one: bool = True,
                cond: Tensor | None = None, generator: torch.Generator | None = None, progress: bool = True,
                return_trajectory: bool = False) -> Tensor | tuple[Tensor, list[Tensor], list[Tensor]]:
    """DDIM sampling (Song et al. 2021, eq. 12 and 16) in ``steps`` jumps: NFE = steps.

    Args:
        model: ``net(x, t, cond)`` predicting eps, x0, v or the score (converted by ``predict_x0_eps_at``).
        x_T: (B, ...) starting noise at the first index of the sub-sequence, N(0, I).
        schedule: the DDPM chain (a DiscreteSchedule) whose indices are visited.
        steps: K, the number of jumps, in [1, N].
        eta: 0 (deterministic DDIM) to 1 (DDPM's posterior variance beta_tilde); must lie in [0, 1].
        spacing, steps_offset: which indices (``spaced_indices``); set_alpha_to_one: final index 0 or 1.
        generator: torch.Generator on x_T's device for the noise z (drawn after each network call when eta > 0).
    Returns:
        x (B, ...) at the final index; with ``return_trajectory`` also [x_T, ..., x] (K + 1 states) and the
        K x0-hat predictions.
    """
    schedule = check_discrete(schedule)
    check_finite("x_T", x_T)
    eta = check_scalar("eta", eta, 0.0, 1.0)
    seq = spaced_indices(schedule.N, steps, spacing, steps_offset).tolist()
    seq.append(_final_index(set_alpha_to_one))
    ab, times, alphas, sigmas = _chain_numbers(schedule)
    x = x_T
    trajectory, x0_preds = [x.cpu()], []
    for i, j in tqdm(list(zip(seq[:-1], seq[1:])), disable=not progress, desc="DDIM sampling"):
        x0_hat, eps_hat = predict_x0_eps_at(model, x, times[i], alphas[i], sigmas[i], cond)
        a_i, a_j = ab[i], ab[j]
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) if eta > 0 else None
        x = ddim_step(x, x0_hat, eps_hat, a_i, a_j, eta, z)
        if return_trajectory:
            trajectory.append(x.cpu())
            x0_preds.append(x0_hat.cpu())
    return (x, trajectory, x0_preds) if return_trajectory else x


@torch.no_grad()
def ddim_invert(model: Callable, x0: Tensor, schedule: DiscreteSchedule, steps: int, spacing: str = "trailing",
                steps_offset: int = 0, set_alpha_to_one: bool = True, cond: Tensor | None = None,
                generator: torch.Generator | None = None, progress: bool = True,
                return_trajectory: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Deterministic encoding (DDIM inversion, Song et al. 2021 Sec. 5.4): run eta = 0 DDIM backwards, NFE = steps.

    It visits the indices ``ddim_sample`` would, in increasing order, starting from the final index (0, or 1 with
    ``set_alpha_to_one=False``). The jump j -> i (j < i) is eq. 12 read upwards,

        x_i = sqrt(a_i / a_j) x_j + (sqrt(1 - a_i) - sqrt(a_i / a_j) sqrt(1 - a_j)) eps_hat(x_j, t_i),

    with the network shown the *target* time t_i: the explicit approximation eps(x_i, t_i) ~ eps(x_j, t_i) of the
    implicit inverse of the sampler's jump i -> j, which uses eps(x_i, t_i). It is what diffusers'
    DDIMInverseScheduler does, and it avoids t = 0, where eps is undefined (sigma = 0). Its error falls as O(1/K),
    so ``ddim_sample(ddim_invert(x0))`` -> x0 as steps grow. ``generator`` is unused (deterministic).

    Returns x at the top index (B, ...); with ``return_trajectory`` also the states [x0, ..., x_top].
    """
    schedule = check_discrete(schedule)
    check_finite("x0", x0)
    seq = spaced_indices(schedule.N, steps, spacing, steps_offset).flip(0).tolist()  # increasing
    seq.insert(0, _final_index(set_alpha_to_one))
    ab, times, alphas, sigmas = _chain_numbers(schedule)
    x = x0
    trajectory = [x.cpu()]
    for j, i in tqdm(list(zip(seq[:-1], seq[1:])), disable=not progress, desc="DDIM inversion"):
        _, eps_hat = predict_x0_eps_at(model, x, times[i], alphas[i], sigmas[i], cond)
        a_i, a_j = ab[i], ab[j]
        ratio = math.sqrt(a_i / a_j)
        x = ratio * x + (math.sqrt(1 - a_i) - ratio * math.sqrt(1 - a_j)) * eps_hat
        if return_trajectory:
            trajectory.append(x.cpu())
    return (x, trajectory) if return_trajectory else x


def slerp(z0: Tensor, z1: Tensor, alpha: float | Tensor) -> Tensor:
    """Spherical linear interpolation (Shoemake 1985), used by DDIM (Sec. 5.3) to interpolate between noises.

        slerp(z0, z1, a) = sin((1 - a) theta) / sin(theta) z0 + sin(a theta) / sin(theta) z1,
        theta = arccos(<z0, z1> / (|z0| |z1|)),  per example (the angle over all dims but the first).

    Unlike the straight line, it keeps |z| ~ sqrt(D) for Gaussian noise, so every point is typical noise.
    z0, z1: (B, ...); alpha: a number in [0, 1] or a (B,) tensor. Falls back to the straight line for parallel z.
    """
    check_same_shape("z0", z0, "z1", z1)
    check_finite("z0", z0)
    check_finite("z1", z1)
    if torch.is_tensor(alpha):
        check_finite("alpha", alpha)
        if alpha.numel() and (float(alpha.min()) < 0 or float(alpha.max()) > 1):
            raise ValueError("alpha must lie in [0, 1]")
        a = alpha.to(device=z0.device, dtype=torch.float64).reshape(-1, *([1] * (z0.dim() - 1)))
    else:
        a = torch.tensor(check_scalar("alpha", alpha, 0.0, 1.0), dtype=torch.float64, device=z0.device)
    u0, u1 = z0.double().flatten(1), z1.double().flatten(1)  # (B, D)
    cos = (u0 * u1).sum(1) / (u0.norm(dim=1) * u1.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1.0, 1.0)).reshape(-1, *([1] * (z0.dim() - 1)))  # (B, 1, ...)
    sin = torch.sin(theta)
    small = sin.abs() < 1e-8
    safe = torch.where(small, torch.ones_like(sin), sin)
    w0 = torch.where(small, 1 - a, torch.sin((1 - a) * theta) / safe)
    w1 = torch.where(small, a, torch.sin(a * theta) / safe)
    return (w0 * z0.double() + w1 * z1.double()).to(z0.dtype)
