"""Denoising diffusion implicit models (Song, Meng & Ermon 2021): fewer steps, optional noise, invertible.

DDIM keeps DDPM's marginals q(x_i | x_0) but replaces the Markov chain by a family of non-Markovian processes
indexed by eta. Sampling jumps along a grid of DDPM indices i_0 > i_1 > ... > i_K (``grids.index_grid``; the
network sees t = schedule.times[i]); for a jump from i to the next index j, with a_i = alpha_bar_i:

    x0_hat  = (x_i - sqrt(1 - a_i) eps_hat) / sqrt(a_i)                                                  (eq. 12)
    x_j     = sqrt(a_j) x0_hat + sqrt(1 - a_j - sigma^2) eps_hat + sigma z
    sigma   = eta sqrt((1 - a_j) / (1 - a_i)) sqrt(1 - a_i / a_j)                                          (eq. 16)

eta = 1 gives sigma^2 = beta_tilde of the jump (DDPM's ancestral sampler with the "fixedsmall" variance) and
eta = 0 a deterministic map: the first-order (exponential-Euler) discretisation of the probability-flow ODE,
which can be run backwards to *encode* data into noise (``ddim_invert``, Sec. 5.4) and lets one interpolate in
noise space (``slerp``, Sec. 5.3).

With diffusers' 'leading' spacing, steps_offset = 0 and final index 1 the grid ends 1 -> 1: that last jump
changes nothing and still costs one network call, as in diffusers.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from .checks import check_finite, check_same_shape, check_scalar
from .grids import check_index_grid, index_coefficients
from .predictions import predict_x0_eps_at
from .sampling import Recorder, Trajectory, check_sampler_inputs
from .schedules import DiscreteSchedule

Tensor = torch.Tensor


def ddim_step(
    x0_hat: Tensor,
    eps_hat: Tensor,
    a_i: float,
    a_j: float,
    eta: float = 0.0,
    noise: Tensor | None = None,
) -> Tensor:
    """One DDIM jump from index i to j (eq. 12 with sigma of eq. 16); a_i, a_j are alpha_bar_i, alpha_bar_j.

    ``noise`` (like x0_hat) is needed only when eta > 0. Coefficients are float64 numbers, so x keeps its dtype.
    """
    var = (
        eta**2 * (1 - a_j) / (1 - a_i) * (1 - a_i / a_j) if eta > 0 else 0.0
    )  # sigma^2, eq. 16
    x_j = (
        math.sqrt(a_j) * x0_hat + math.sqrt(max(1 - a_j - var, 0.0)) * eps_hat
    )
    if var > 0:
        x_j = x_j + math.sqrt(var) * noise
    return x_j


@torch.no_grad()
def ddim_sample(
    model: Callable,
    x_T: Tensor,
    schedule: DiscreteSchedule,
    indices: Tensor,
    *,
    eta: float = 0.0,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
) -> Tensor | Trajectory:
    """DDIM sampling (Song et al. 2021, eq. 12 and 16) along the index grid ``indices``: NFE = K = len - 1.

    x_T (B, ...) is N(0, I) noise at the first index; ``indices`` = ``index_grid(schedule, K, spacing)``;
    eta in [0, 1] (0: deterministic DDIM, 1: DDPM's beta_tilde); ``generator`` (on x_T's device) draws the noise z
    when eta > 0. Returns x (B, ...) at the final index, or a ``Trajectory``.
    """
    seq = check_index_grid(schedule, indices)
    eta = check_scalar("eta", eta, 0.0, 1.0)
    a, t, alpha, sigma = index_coefficients(
        schedule, seq
    )  # alpha_bar, t, alpha(t), sigma(t) at each index
    check_sampler_inputs(model, x_T, t[0], cond)
    x, out = x_T, Recorder(x_T, return_trajectory)
    for k in tqdm(
        range(len(seq) - 1), disable=not progress, desc="DDIM sampling"
    ):
        x0_hat, eps_hat = predict_x0_eps_at(
            model, x, t[k], alpha[k], sigma[k], cond
        )
        z = (
            torch.randn(
                x.shape, generator=generator, device=x.device, dtype=x.dtype
            )
            if eta > 0
            else None
        )
        x = ddim_step(x0_hat, eps_hat, a[k], a[k + 1], eta, z)
        out.add(x, x0_hat)
    return out.result(x)


@torch.no_grad()
def ddim_invert(
    model: Callable,
    x0: Tensor,
    schedule: DiscreteSchedule,
    indices: Tensor,
    *,
    cond: Tensor | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
) -> Tensor | Trajectory:
    """Deterministic encoding (DDIM inversion, Song et al. 2021 Sec. 5.4): eta = 0 DDIM run backwards, NFE = K.

    It walks the grid ``ddim_sample`` would, from its final index up to its first. The jump j -> i (j < i) is
    eq. 12 read upwards,

        x_i = sqrt(a_i / a_j) x_j + (sqrt(1 - a_i) - sqrt(a_i / a_j) sqrt(1 - a_j)) eps_hat(x_j, t_i),

    with the network shown the *target* time t_i: the explicit approximation eps(x_i, t_i) ~ eps(x_j, t_i) of the
    implicit inverse of the sampler's jump, as diffusers' DDIMInverseScheduler does (it avoids t = 0, where eps is
    undefined). Its error falls as O(1/K). Returns x at the first index (B, ...), or a ``Trajectory`` whose states
    run from x0 up.
    """
    seq = check_index_grid(schedule, indices)[
        ::-1
    ]  # increasing: final index first
    a, t, alpha, sigma = index_coefficients(schedule, seq)
    check_sampler_inputs(model, x0, t[1], cond, name="x0")
    x, out = x0, Recorder(x0, return_trajectory)
    for k in tqdm(
        range(len(seq) - 1), disable=not progress, desc="DDIM inversion"
    ):
        x0_hat, eps_hat = predict_x0_eps_at(
            model, x, t[k + 1], alpha[k + 1], sigma[k + 1], cond
        )
        ratio = math.sqrt(a[k + 1] / a[k])
        x = (
            ratio * x
            + (math.sqrt(1 - a[k + 1]) - ratio * math.sqrt(1 - a[k])) * eps_hat
        )
        out.add(x, x0_hat)
    return out.result(x)


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
