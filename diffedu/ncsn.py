"""Score matching and noise-conditional score networks (Song & Ermon 2019, 2020).

A score model s(x, sigma) ~ grad_x log p_sigma(x) learns the score of the data blurred by Gaussian noise of every
level sigma in a geometric ladder sigma_1 > ... > sigma_L; annealed Langevin dynamics then samples by running
Langevin at each level in turn, large to small, with step size alpha_i = epsilon * sigma_i^2 / sigma_L^2.

In this library the noise process is the ``VE`` schedule (x_t = x0 + sigma(t) eps), a model is any
``net(x, t, cond)`` whose prediction converts to a score (``score = -eps / sigma``), and a ladder level sigma is
shown to the network at its time t = ``schedule.time_of_sigma(sigma)``.

    denoising score matching   E || s(x0 + sigma z, sigma) + z / sigma ||^2                (Vincent 2011)
    weighted by lambda = sigma^2 (Song & Ermon 2019, eq. 6):  E || sigma s + z ||^2 = E || eps_hat - z ||^2
    Langevin dynamics          x <- x + (alpha / 2) s(x) + sqrt(alpha) z                   (Song & Ermon 2019, eq. 4)
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from .checks import check_finite, check_int, check_scalar, check_same_shape
from .predictions import convert, prediction_of, targets
from .schedules import VE, as_time, broadcast_to

Tensor = torch.Tensor


def geometric_sigmas(sigma_max: float, sigma_min: float, L: int) -> Tensor:
    """The noise ladder sigma_1 > ... > sigma_L, geometric from sigma_max to sigma_min (float64, shape (L,))."""
    sigma_min = check_scalar("sigma_min", sigma_min, 0.0, math.inf, low_inclusive=False)
    sigma_max = check_scalar("sigma_max", sigma_max, sigma_min, math.inf, low_inclusive=False)
    L = check_int("L", L, 1)
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), L, dtype=torch.float64))


def check_sigmas(sigmas: Tensor) -> Tensor:
    """Validate a noise ladder: a finite, positive, strictly decreasing 1-D tensor (returned as float64)."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if sigmas.dim() != 1 or sigmas.numel() < 1:
        raise ValueError(f"sigmas must be a non-empty 1-D tensor, got shape {tuple(sigmas.shape)}")
    check_finite("sigmas", sigmas)
    if float(sigmas.min()) <= 0 or not bool((sigmas.diff() < 0).all()):
        raise ValueError("sigmas must be positive and strictly decreasing (sigma_1 > ... > sigma_L)")
    return sigmas


def _check_ve(schedule) -> VE:
    if not isinstance(schedule, VE):
        raise ValueError(f"schedule must be a VE schedule (NCSN's noise process), got {type(schedule).__name__}")
    return schedule


def dsm_loss(model: Callable, x0: Tensor, schedule: VE, cond: Tensor | None = None,
             generator: torch.Generator | None = None) -> Tensor:
    """Denoising score matching with lambda(sigma) = sigma^2 over all noise levels (Song & Ermon 2019, eq. 6).

    Draw t ~ U[0, 1] (so log sigma is uniform between log sigma_min and log sigma_max) and z ~ N(0, I), and
    compare the model with the score of the noising kernel, -z / sigma, in the sigma^2-weighted norm:
    sigma^2 || s(x, sigma) + z / sigma ||^2 = || sigma s + z ||^2. For an eps-predicting model (s = -eps_hat / sigma)
    this is exactly DDPM's || eps_hat - z ||^2. Returns the batch mean of the per-example mean, a scalar.
    """
    schedule = _check_ve(schedule)
    check_finite("x0", x0)
    B = x0.shape[0]
    t = torch.rand(B, generator=generator, device=x0.device, dtype=torch.float64).cpu()  # (B,)
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)   # (B, ...)
    alpha, sigma = schedule.coefficients(t, x0)                                          # (B, 1, ...)
    x = x0 + sigma * z                                                                   # (B, ...)
    pred = model(x, t.to(device=x0.device, dtype=x0.dtype), cond)
    kind = prediction_of(model)
    score = convert(pred, kind, "score", x, alpha, sigma)                                # (B, ...)
    return ((sigma * score + z) ** 2).reshape(B, -1).mean(dim=1).mean()


def model_score(model: Callable, x: Tensor, t: Tensor | float, schedule, cond: Tensor | None = None) -> Tensor:
    """grad_x log p_t(x) according to ``model`` (any prediction type) at time t (scalar or (B,))."""
    t = as_time(t)
    alpha, sigma = schedule.coefficients(t, x)
    pred = model(x, t.expand(x.shape[0]).to(device=x.device, dtype=x.dtype), cond)
    if pred.shape != x.shape:
        raise ValueError(f"model output must have the shape of x {tuple(x.shape)}, got {tuple(pred.shape)}")
    return convert(pred, prediction_of(model), "score", x, alpha, sigma)


def langevin_dynamics(score: Callable[[Tensor], Tensor], x: Tensor, step_size: float, n_steps: int,
                      generator: torch.Generator | None = None,
                      return_trajectory: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Unadjusted Langevin dynamics x <- x + (alpha / 2) score(x) + sqrt(alpha) z (Song & Ermon 2019, eq. 4).

    As alpha -> 0 and n_steps -> inf the iterates sample p, whose score ``score`` (a callable x -> grad log p(x))
    gives. x: (B, ...) starting points. With ``return_trajectory``, also the list of n_steps + 1 iterates.
    """
    check_finite("x", x)
    step_size = check_scalar("step_size", step_size, 0.0, math.inf, low_inclusive=False)
    n_steps = check_int("n_steps", n_steps, 0)
    trajectory = [x]
    for _ in range(n_steps):
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x + 0.5 * step_size * score(x) + math.sqrt(step_size) * z
        if return_trajectory:
            trajectory.append(x)
    return (x, trajectory) if return_trajectory else x


@torch.no_grad()
def annealed_langevin(model: Callable, x: Tensor, schedule: VE, sigmas: Tensor, n_steps_each: int = 100,
                      epsilon: float = 2e-5, cond: Tensor | None = None, denoise: bool = True,
                      generator: torch.Generator | None = None, progress: bool = True,
                      return_trajectory: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

    For each level sigma_i of the ladder ``sigmas`` (decreasing, inside the schedule's range), run
    ``n_steps_each`` Langevin steps with step size alpha_i = epsilon * sigma_i^2 / sigma_L^2, using the model's
    score at that level. With ``denoise`` (Jolicoeur-Martineau et al. 2021; Song & Ermon 2020) finish with one
    Tweedie step x <- x + sigma_L^2 s(x, sigma_L), which removes the last level's noise.
    x: (B, ...) start, usually sigma_1 * N(0, I). Returns the sample (and, if asked, x after every level).
    """
    schedule = _check_ve(schedule)
    check_finite("x", x)
    sigmas = check_sigmas(sigmas)
    times = schedule.time_of_sigma(sigmas)  # (L,), raises if a level is outside the schedule
    n_steps_each = check_int("n_steps_each", n_steps_each, 1)
    epsilon = check_scalar("epsilon", epsilon, 0.0, math.inf, low_inclusive=False)
    sigma_L = float(sigmas[-1])
    trajectory = [x]
    for sigma_i, t_i in tqdm(list(zip(sigmas.tolist(), times)), disable=not progress, desc="annealed Langevin"):
        alpha_i = epsilon * sigma_i ** 2 / sigma_L ** 2
        x = langevin_dynamics(lambda y: model_score(model, y, t_i, schedule, cond), x, alpha_i, n_steps_each,
                              generator=generator)
        if return_trajectory:
            trajectory.append(x)
    if denoise:
        x = x + sigma_L ** 2 * model_score(model, x, times[-1], schedule, cond)
        if return_trajectory:
            trajectory.append(x)
    return (x, trajectory) if return_trajectory else x
