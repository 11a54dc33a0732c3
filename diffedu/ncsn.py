"""Score matching and noise-conditional score networks (Hyvärinen 2005; Vincent 2011; Song & Ermon 2019, 2020).

The score of a density p is s(x) = grad_x log p(x). It ignores p's normalising constant, so a network can learn it
from samples alone by minimising the Fisher divergence 1/2 E_p || s_theta(x) - grad log p(x) ||^2 -- once that is
rewritten without the unknown grad log p. Three ways to do so live here, for a score given as a callable
``score(x) -> (B, D)`` on points x (B, D) (a network at one fixed noise level: ``score_fn(model, t, schedule)``):

    explicit SM   J(theta) = E_p [ tr grad_x s_theta(x) + 1/2 ||s_theta(x)||^2 ]              (Hyvärinen 2005, eq. 4)
    sliced SM     E_v E_p [ v^T grad_x s_theta(x) v + 1/2 (v^T s_theta(x))^2 ],  E[v v^T] = I (Song et al. 2020, eq. 7)
                  SSM-VR: the last term replaced by its mean over v, 1/2 ||s_theta(x)||^2      (Song et al. 2020, eq. 8)
    denoising SM  E_{x, z} 1/2 || s_theta(x + sigma z) + z / sigma ||^2                          (Vincent 2011, eq. 7)

Explicit SM equals the Fisher divergence minus a constant (integration by parts); denoising SM equals explicit SM
*on the noised density* p_sigma plus the constant D / (2 sigma^2) (Vincent 2011), so both have the same minimiser,
the score of p_sigma.

A noise-conditional score network s(x, sigma) ~ grad_x log p_sigma(x) learns the score of the data blurred by
Gaussian noise of every level sigma in a geometric ladder sigma_1 > ... > sigma_L; annealed Langevin dynamics then
samples by running Langevin at each level in turn, large to small, with step size alpha_i = epsilon sigma_i^2 /
sigma_L^2.

In this library the noise process is the ``VE`` schedule (x_t = x0 + sigma(t) eps), a model is any
``net(x, t, cond)`` whose prediction converts to a score (``score = -eps / sigma``), and a ladder level sigma is
shown to the network at its time t = ``schedule.time_of_sigma(sigma)``.

    NCSN loss, weighted by lambda = sigma^2 (Song & Ermon 2019, eq. 6):  E || sigma s + z ||^2 = E || eps_hat - z ||^2
    Langevin dynamics          x <- x + (alpha / 2) s(x) + sqrt(alpha) z                   (Song & Ermon 2019, eq. 4)
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from .checks import check_choice, check_finite, check_int, check_scalar, check_same_shape, check_start
from .grids import check_sigma_ladder, geometric_sigmas  # noqa: F401  (geometric_sigmas: NCSN's ladder)
from .predictions import convert, predict_x0_eps_at, prediction_of
from .sampling import Recorder, Trajectory, check_sampler_inputs
from .schedules import VE, as_time

Tensor = torch.Tensor


# --- score matching for a score callable x -> s(x) ---------------------------------------------------------------

REDUCTIONS = ("mean", "none")
PROJECTIONS = ("gaussian", "rademacher")


def _check_points(name: str, x: Tensor) -> Tensor:
    """x must be a finite floating-point batch of points (B, D), B >= 1."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point torch.Tensor of shape (B, D), got {type(x).__name__}"
                         + (f" of dtype {x.dtype}" if torch.is_tensor(x) else ""))
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must have shape (B, D) with B, D >= 1, got {tuple(x.shape)}")
    check_finite(name, x)
    return x


def _score_with_graph(score: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """(x as a leaf that requires grad, score(x)), checked: same shape as x and differentiable in x."""
    x = x.detach().requires_grad_(True)
    s = score(x)
    if not torch.is_tensor(s) or s.shape != x.shape:
        raise ValueError(f"score(x) must return a tensor of the shape of x {tuple(x.shape)}, got "
                         f"{tuple(s.shape) if torch.is_tensor(s) else type(s).__name__}")
    if not s.requires_grad:
        raise ValueError("score(x) must be differentiable in x (do not call this under torch.no_grad())")
    return x, s


def _grad(out: Tensor, x: Tensor) -> Tensor:
    """d out / d x, kept in the graph (so a loss built from it trains); zeros where out does not depend on x."""
    (g,) = torch.autograd.grad(out, x, create_graph=True, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def _reduce(per_example: Tensor, reduction: str) -> Tensor:
    return per_example.mean() if check_choice("reduction", reduction, REDUCTIONS) == "mean" else per_example


def score_fn(model: Callable, t: Tensor | float, schedule, cond: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """The callable x -> grad_x log p_t(x) = -eps-hat / sigma(t) of ``model`` (any prediction type) frozen at t.

    The adapter between the library's networks ``net(x, t, cond)`` and the score-matching objectives and
    ``langevin_dynamics``, which take a score callable; for a VE schedule pass ``t = schedule.time_of_sigma(sigma)``.
    """
    t = as_time(t)
    if t.numel() != 1:
        raise ValueError(f"t must be a single time, got shape {tuple(t.shape)}")
    (alpha,), (sigma,) = schedule.at(t.reshape(1))
    return lambda x: -predict_x0_eps_at(model, x, float(t), alpha, sigma, cond)[1] / sigma


def explicit_score_matching(
    score: Callable[[Tensor], Tensor], x: Tensor, reduction: str = "mean"
) -> Tensor:
    """Hyvärinen's score-matching objective J = E_p[ tr grad_x s(x) + 1/2 ||s(x)||^2 ] (Hyvärinen 2005, eq. 4).

    Integration by parts turns the Fisher divergence 1/2 E_p||s - grad log p||^2 into this expression plus the
    constant 1/2 E_p||grad log p||^2 (Hyvärinen 2005, Theorem 1), so it needs only samples x ~ p, not p's score.
    The Jacobian trace is exact: one backward pass per dimension (sum_i d s_i / d x_i), fine for low-D data and
    the reason sliced score matching exists. Rows must be independent (score(x)[b] depends on x[b] only).

    x: (B, D) samples of p. Returns the batch mean (a scalar that can be back-propagated to train ``score``'s
    parameters) or, with ``reduction="none"``, the per-example values (B,).
    """
    x = _check_points("x", x)
    with torch.enable_grad():
        x, s = _score_with_graph(score, x)                     # (B, D) each
        trace = torch.zeros(x.shape[0], dtype=s.dtype, device=s.device)
        for i in range(x.shape[1]):  # d s_i / d x_i, for all rows at once
            trace = trace + _grad(s[:, i].sum(), x)[:, i]      # (B,)
        per_example = trace + 0.5 * (s ** 2).sum(dim=1)       # (B,)
    return _reduce(per_example, reduction)


def sliced_score_matching(
    score: Callable[[Tensor], Tensor],
    x: Tensor,
    n_projections: int = 1,
    projection: str = "gaussian",
    variance_reduction: bool = False,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Sliced score matching (Song, Garg, Shi & Ermon 2020, eq. 7; SSM-VR, eq. 8).

    Project the score on random directions v with E[v v^T] = I (``projection``: "gaussian" v ~ N(0, I), or
    "rademacher" entries +-1): E_v[v^T J v] = tr J for the Jacobian J = grad_x s(x), so

        SSM     = E_v E_p [ v^T J v + 1/2 (v^T s(x))^2 ]
        SSM-VR  = E_v E_p [ v^T J v ] + E_p [ 1/2 ||s(x)||^2 ]     (``variance_reduction=True``: 1/2 (v^T s)^2's mean
                                                                     over v, computed exactly)

    are unbiased for explicit score matching's J. v^T J v costs one vector-Jacobian product v^T J = grad_x (v . s),
    a single backward pass whatever the dimension D. Each x gets ``n_projections`` directions.

    x: (B, D) samples. Returns the mean over the batch and the projections, or per example (B,) with
    ``reduction="none"`` (averaged over that example's projections).
    """
    x = _check_points("x", x)
    M = check_int("n_projections", n_projections, 1)
    check_choice("projection", projection, PROJECTIONS)
    B, D = x.shape
    xr = x.detach().unsqueeze(0).expand(M, B, D).reshape(M * B, D)  # (M B, D)
    v = torch.randn(
        xr.shape, generator=generator, device=x.device, dtype=x.dtype
    )  # (M B, D)
    if projection == "rademacher":
        v = v.sign()  # +-1 with probability 1/2 each
    with torch.enable_grad():
        xr, s = _score_with_graph(score, xr)  # (M B, D) each
        vJ = _grad((s * v).sum(), xr)  # v^T J per row, (M B, D)
        vJv = (vJ * v).sum(dim=1)  # (M B,)
        if variance_reduction:
            second = 0.5 * (s ** 2).sum(dim=1)
        else:
            second = 0.5 * (s * v).sum(dim=1) ** 2
        per_example = (vJv + second).reshape(M, B).mean(dim=0)  # (B,)
    return _reduce(per_example, reduction)


def denoising_score_matching(score: Callable[[Tensor], Tensor], x0: Tensor, sigma: float,
                             generator: torch.Generator | None = None, reduction: str = "mean") -> Tensor:
    """Denoising score matching at one noise level: E 1/2 || s(x0 + sigma z) + z / sigma ||^2 (Vincent 2011, eq. 7).

    -z / sigma is the score of the noising kernel q(x | x0) = N(x0, sigma^2 I) at x = x0 + sigma z. Its minimiser
    over all functions is E[-z / sigma | x] = grad log p_sigma(x), the score of the *noised* data, and for every s

        DSM(s) = J_ESM(s; p_sigma) + D / (2 sigma^2)      (in expectation; Vincent 2011, and the chapter's identity)

    where J_ESM is ``explicit_score_matching`` on samples of p_sigma. This is Song & Ermon's l(theta; sigma)
    (2019, eq. 5). x0: (B, D) clean samples. Returns the batch mean, or per example (B,) with ``reduction="none"``.
    """
    x0 = _check_points("x0", x0)
    sigma = check_scalar("sigma", sigma, 0.0, math.inf, low_inclusive=False)
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)   # (B, D)
    x = x0 + sigma * z                                                                  # (B, D)
    s = score(x)
    if not torch.is_tensor(s) or s.shape != x.shape:
        raise ValueError(f"score(x) must return a tensor of the shape of x {tuple(x.shape)}")
    per_example = 0.5 * ((s + z / sigma) ** 2).sum(dim=1)                               # (B,)
    return _reduce(per_example, reduction)


@torch.no_grad()
def fisher_divergence(score: Callable[[Tensor], Tensor], true_score: Callable[[Tensor], Tensor],
                      x: Tensor) -> float:
    """1/2 E_p || s(x) - grad log p(x) ||^2 estimated on samples x ~ p (B, D): what score matching minimises."""
    x = _check_points("x", x)
    s, s_true = score(x), true_score(x)
    check_same_shape("score(x)", s, "true_score(x)", s_true)
    return float(0.5 * ((s.double() - s_true.double()) ** 2).sum(dim=1).mean())


# --- noise-conditional score networks -----------------------------------------------------------------------------


def dsm_loss(
    model: Callable,
    x0: Tensor,
    schedule: VE,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    sigmas: Tensor | None = None,
) -> Tensor:
    """Denoising score matching with lambda(sigma) = sigma^2 over all noise levels (Song & Ermon 2019, eq. 6).

    Draw t ~ U[0, 1] (so log sigma is uniform between log sigma_min and log sigma_max) or, given a ladder
    ``sigmas``, sigma uniformly among its L levels (NCSN's discrete loss, eq. 6: (1/L) sum_i lambda(sigma_i)
    l(theta; sigma_i)); draw z ~ N(0, I), and compare the model with the score of the noising kernel, -z / sigma,
    in the sigma^2-weighted norm: sigma^2 || s(x, sigma) + z / sigma ||^2 = || sigma s + z ||^2. For an
    eps-predicting model (s = -eps_hat / sigma) this is exactly DDPM's || eps_hat - z ||^2. Per level it is
    (2 sigma^2 / D) times ``denoising_score_matching``, whose minimiser is the score of the noised data (Vincent 2011):
    explicit score matching on p_sigma has the same minimiser. Returns the batch mean of the per-example mean
    (over dimensions), a scalar.
    """
    if not isinstance(schedule, VE):
        raise ValueError(
            "schedule must be a VE schedule (NCSN's noise process), "
            f"got {type(schedule).__name__}"
        )
    check_finite("x0", x0)
    B = x0.shape[0]
    if sigmas is None:
        t = torch.rand(
            B, generator=generator, device=x0.device, dtype=torch.float64
        ).cpu()  # (B,)
    else:
        times = torch.tensor(
            check_sigma_ladder(schedule, sigmas)[1], dtype=torch.float64
        )  # (L,)
        level = torch.randint(
            len(times), (B,), generator=generator, device=x0.device
        ).cpu()
        t = times[level]  # (B,)
    z = torch.randn(
        x0.shape, generator=generator, device=x0.device, dtype=x0.dtype
    )  # (B, ...)
    alpha, sigma = schedule.coefficients(t, x0)  # (B, 1, ...)
    x = x0 + sigma * z  # (B, ...)
    pred = model(x, t.to(device=x0.device, dtype=x0.dtype), cond)
    if pred.shape != x0.shape:
        raise ValueError(
            f"model output must have the shape of x0 {tuple(x0.shape)}, "
            f"got {tuple(pred.shape)}"
        )
    kind = prediction_of(model)
    score = convert(pred, kind, "score", x, alpha, sigma)  # (B, ...)
    return ((sigma * score + z) ** 2).reshape(B, -1).mean(dim=1).mean()


def langevin_dynamics(
    score: Callable[[Tensor], Tensor],
    x: Tensor,
    step_size: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
) -> Tensor | Trajectory:
    """Unadjusted Langevin dynamics x <- x + (alpha / 2) score(x) + sqrt(alpha) z (Song & Ermon 2019, eq. 4).

    As alpha -> 0 and n_steps -> inf the iterates sample p, whose score ``score`` (a callable x -> grad log p(x))
    gives. x: (B, ...) starting points. Returns x, or a ``Trajectory`` of the n_steps + 1 iterates.
    """
    check_start("x", x)
    step_size = check_scalar(
        "step_size", step_size, 0.0, math.inf, low_inclusive=False
    )
    n_steps = check_int("n_steps", n_steps, 0)
    out = Recorder(x, return_trajectory)
    for _ in range(n_steps):
        z = torch.randn(
            x.shape, generator=generator, device=x.device, dtype=x.dtype
        )
        s = score(x)
        check_same_shape("score(x)", s, "x", x)
        x = x + 0.5 * step_size * s + math.sqrt(step_size) * z
        out.add(x)
    return out.result(x)


@torch.no_grad()
def annealed_langevin_sample(
    model: Callable,
    x_T: Tensor,
    schedule: VE,
    sigmas: Tensor,
    *,
    n_steps_each: int = 100,
    epsilon: float = 2e-5,
    denoise: bool = True,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
) -> Tensor | Trajectory:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

    For each level sigma_i of the ladder ``sigmas`` (``geometric_sigmas``, inside the schedule's range), run
    ``n_steps_each`` Langevin steps with step size alpha_i = epsilon * sigma_i^2 / sigma_L^2, using the model's
    score at that level. With ``denoise`` (Jolicoeur-Martineau et al. 2021; Song & Ermon 2020) finish with one
    Tweedie step x <- x + sigma_L^2 s(x, sigma_L), which removes the last level's noise. x_T: (B, ...), usually
    sigma_1 N(0, I). Returns the sample, or a ``Trajectory`` (x after each level; x0-hat at each level's last call).
    """
    sigma, t = check_sigma_ladder(
        schedule, sigmas
    )  # sigma_1 > ... > sigma_L and their times
    check_sampler_inputs(model, x_T, t[0], cond)
    n_steps_each = check_int("n_steps_each", n_steps_each, 1)
    epsilon = check_scalar(
        "epsilon", epsilon, 0.0, math.inf, low_inclusive=False
    )
    one, std = schedule.at(
        torch.tensor(t, dtype=torch.float64)
    )  # alpha = 1 and sigma(t_i) of the VE process
    x, out = x_T, Recorder(x_T, return_trajectory)
    for i in tqdm(
        range(len(sigma)), disable=not progress, desc="annealed Langevin"
    ):
        alpha_i = epsilon * sigma[i] ** 2 / sigma[-1] ** 2  # step size
        for _ in range(n_steps_each):
            z = torch.randn(
                x.shape, generator=generator, device=x.device, dtype=x.dtype
            )
            x0_hat, eps_hat = predict_x0_eps_at(
                model, x, t[i], one[i], std[i], cond
            )
            x = (
                x
                + 0.5 * alpha_i * (-eps_hat / std[i])
                + math.sqrt(alpha_i) * z
            )  # score = -eps-hat / sigma
        out.add(x, x0_hat)
    if denoise:
        eps_hat = predict_x0_eps_at(model, x, t[-1], one[-1], std[-1], cond)[1]
        x = x + sigma[-1] ** 2 * (-eps_hat / std[-1])
    return out.result(x)
