"""Distillation: a student that samples in a few steps what its teacher needs many for.

Three routes, each one function a chapter can print (DDPM's chain; index i <-> t_i; alpha_i, sigma_i):

* **Progressive distillation** (Salimans & Ho 2022, Alg. 2): one student DDIM step i -> j does what two teacher
  DDIM steps i -> m -> j do. Its target is the x0 that makes one DDIM step land where the teacher did
  (``progressive_target``); the loss weights x0's error by max(SNR, 1) ("truncated SNR"). Halving rounds
  K -> K/2 -> ... -> 1, each student the next round's teacher (``progressive_distillation``).
* **Consistency models** (Song et al. 2023): f(x_t, t) maps every point of a probability-flow path to its end
  x0 (``nets.ConsistencyModel``). Distillation (Alg. 2) asks f_theta(x_{i_n}) = f_theta-(x^_{i_{n+1}}), where
  x^ is one teacher ODE step down from x_{i_n} and theta- an EMA of theta; training without a teacher (Alg. 3)
  uses the same noise at both levels instead. ``consistency_sample`` is their Alg. 1.
* **Reflow** (Liu et al. 2022): draw noise z, let the teacher's ODE carry it to x0, and train on those
  *coupled* pairs (``teacher_pairs``, ``reflow_loss``): the paths x~ = x0 + sigma~ z are straight, so the refit
  flow is straighter and one step goes far. Regressing x0 on z alone at t = 1 is direct distillation (Luhman &
  Luhman 2021).

Oracles for the tests and the chapter: ``flow_map`` (the probability-flow ODE solved to float64 tolerance) and,
in one dimension, ``quantile_flow_map`` (the ODE map is monotone, so it is F_0^-1(F_t(x))).
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .checks import check_finite, check_int, check_scalar
from .grids import check_index_grid, index_coefficients, index_grid, sigma_grid, time_of_sigma
from .predictions import predict_x0_eps_at, prediction_of, targets
from .sampling import Recorder, Trajectory, check_sampler_inputs
from .samplers import dpmpp_2m_sample
from .schedules import DiscreteSchedule, NoiseSchedule, broadcast_to, check_discrete
from .toy import GaussianMixture

Tensor = torch.Tensor


def chain_coefficients(schedule: DiscreteSchedule, i: Tensor, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(t_i, alpha_i, sigma_i) for (B,) chain indices: t as (B,), alpha and sigma as (B, 1, ...), in like's dtype
    and device (the float64 tables are indexed on the indices' device: no host sync)."""
    a = schedule.alpha_bars.to(i.device)[i]                                # (B,) float64
    t = schedule.times.to(i.device)[i].to(device=like.device, dtype=like.dtype)
    return t, broadcast_to(a.sqrt(), like), broadcast_to((1 - a).sqrt(), like)


def _unwrap(net: nn.Module) -> nn.Module:
    """The module under DDP (``.module``) or torch.compile (``._orig_mod``) wrappers."""
    while hasattr(net, "module") or hasattr(net, "_orig_mod"):
        net = getattr(net, "module", None) or getattr(net, "_orig_mod")
    return net


# --- progressive distillation (Salimans & Ho 2022) -------------------------------------------------------------

def student_grid(student: nn.Module, schedule: DiscreteSchedule, steps: int) -> Tensor:
    """The index grid a distilled student samples on: ``index_grid(schedule, steps)``, whose K = ``steps`` points
    are every other point of its teacher's 2K-step grid ('trailing' spacing nests). A ``StepStudent`` runs only
    with the K it was distilled for."""
    steps = check_int("steps", steps, 1, check_discrete(schedule).N)
    trained = getattr(student, "steps", None)
    if trained is not None and steps != trained:
        raise ValueError(f"steps must be {trained}: the student was distilled for a {trained}-step sampler, "
                         f"got steps={steps}")
    return index_grid(schedule, steps)


@torch.no_grad()
def progressive_target(
    teacher: Callable,
    z_i: Tensor,
    i: Tensor,
    m: Tensor,
    j: Tensor,
    schedule: DiscreteSchedule,
    cond: Tensor | None = None,
) -> Tensor:
    """x~ such that one DDIM step i -> j from z_i with x0-hat = x~ lands where two teacher steps i -> m -> j do.

    Salimans & Ho 2022, Alg. 2: z_m and z_j are the teacher's DDIM steps (eq. 12 with eta = 0), and

        x~ = (z_j - (sigma_j / sigma_i) z_i) / (alpha_j - (sigma_j / sigma_i) alpha_i).

    z_i: (B, ...); i > m > j: (B,) chain indices (j = 0: x~ = z_0, the teacher's end point).
    """
    t_i, alpha_i, sigma_i = chain_coefficients(schedule, i, z_i)
    t_m, alpha_m, sigma_m = chain_coefficients(schedule, m, z_i)
    _, alpha_j, sigma_j = chain_coefficients(schedule, j, z_i)
    x0, eps = predict_x0_eps_at(teacher, z_i, t_i, alpha_i, sigma_i, cond)
    z_m = alpha_m * x0 + sigma_m * eps  # teacher step i -> m
    x0, eps = predict_x0_eps_at(teacher, z_m, t_m, alpha_m, sigma_m, cond)
    z_j = alpha_j * x0 + sigma_j * eps  # teacher step m -> j
    ratio = sigma_j / sigma_i
    return (z_j - ratio * z_i) / (alpha_j - ratio * alpha_i)


def progressive_loss(
    student: Callable,
    teacher: Callable,
    x0: Tensor,
    schedule: DiscreteSchedule,
    student_steps: int,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
) -> Tensor:
    """Salimans & Ho 2022, Alg. 2: a random student step k of K, its x0 against the teacher's two-step target,
    weighted by max(SNR_i, 1) (the truncated-SNR weighting, their eq. 10)."""
    # the teacher's 2K + 1 indices; student step k is i -> j, via m
    grid = index_grid(schedule, 2 * student_steps).to(x0.device)
    B, dev, dt = x0.shape[0], x0.device, x0.dtype
    k = torch.randint(student_steps, (B,), generator=generator, device=dev)
    i, m, j = grid[2 * k], grid[2 * k + 1], grid[2 * k + 2]  # (B,) each
    t_i, alpha_i, sigma_i = chain_coefficients(schedule, i, x0)
    eps = torch.randn(x0.shape, generator=generator, device=dev, dtype=dt)
    z_i = alpha_i * x0 + sigma_i * eps
    x_target = progressive_target(teacher, z_i, i, m, j, schedule, cond)
    x0_hat = predict_x0_eps_at(student, z_i, t_i, alpha_i, sigma_i, cond)[0]
    weight = (alpha_i**2 / sigma_i**2).clamp(min=1.0)  # max(SNR, 1)
    return (weight * (x0_hat - x_target) ** 2).mean()


class ProgressiveDistillation:
    """``loss_fn(student, x0, generator)`` for one round of progressive distillation (for ``diffedu.train``).

    Checks: ``student_steps`` >= 1 with 2 x student_steps <= N; a teacher distilled before (a ``StepStudent``)
    must be the 2K-step one and predict what the student predicts; a teacher on another chain is refused.
    """

    def __init__(self, teacher: nn.Module, schedule: DiscreteSchedule, student_steps: int):
        self.schedule = check_discrete(schedule)
        self.student_steps = check_int("student_steps", student_steps, 1, self.schedule.N // 2)
        teacher_steps = getattr(teacher, "steps", None)
        if teacher_steps is not None and teacher_steps != 2 * self.student_steps:
            raise ValueError(f"teacher must sample in 2 x student_steps = {2 * self.student_steps} steps, got a "
                             f"teacher distilled for {teacher_steps}")
        check_same_chain("teacher", teacher, self.schedule)
        self.teacher = teacher.eval().requires_grad_(False)

    def __call__(self, student: nn.Module, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if prediction_of(student) == "eps":
            raise ValueError("student must predict 'v' or 'x0': an eps student cannot take few steps "
                             "(x0 = (x - sigma eps) / alpha amplifies its error by 1 / alpha near t = 1)")
        if getattr(self.teacher, "steps", None) is not None and prediction_of(self.teacher) != prediction_of(student):
            raise ValueError(f"student must predict what its distilled teacher predicts "
                             f"({prediction_of(self.teacher)!r}), got {prediction_of(student)!r}")
        return progressive_loss(student, self.teacher.to(x0.device), x0, self.schedule, self.student_steps,
                                generator)


def check_same_chain(name: str, net: object, schedule: DiscreteSchedule) -> None:
    """A net that carries its chain (``schedule`` or ``N``) must be on ``schedule``'s: else a ValueError."""
    other = getattr(net, "schedule", None)
    if isinstance(other, DiscreteSchedule) and (other.N != schedule.N or not torch.allclose(
            other.alpha_bars, schedule.alpha_bars)):
        raise ValueError(f"{name} must use the student's chain {schedule}, got {other}")
    n = getattr(net, "N", None)
    if isinstance(n, int) and n != schedule.N:
        raise ValueError(f"{name} must use the student's chain with N = {schedule.N}, got N = {n}")


def progressive_distillation(teacher: nn.Module, make_student: Callable[[nn.Module, int], nn.Module],
                             data: Tensor, schedule: DiscreteSchedule, teacher_steps: int, rounds: int,
                             train_fn: Callable, evaluate: Callable | None = None, **train_kwargs) -> list[dict]:
    """Salimans & Ho's outer loop: ``rounds`` halvings teacher_steps -> teacher_steps / 2 -> ... .

    Each round builds the student from the current teacher (``make_student(teacher, K)``), trains it with
    ``train_fn(student, ProgressiveDistillation(teacher, schedule, K), data, **train_kwargs)`` (``diffedu.train``)
    and makes its EMA the next teacher. ``evaluate(student, K)`` (optional) returns metrics per round.
    Returns one dict per round: steps, result (the TrainResult), metrics.
    """
    rounds = check_int("rounds", rounds, 1)
    teacher_steps = check_int("teacher_steps", teacher_steps, 2, check_discrete(schedule).N)
    if teacher_steps % 2 ** rounds:
        raise ValueError(f"teacher_steps must be divisible by 2^rounds = {2 ** rounds}, got {teacher_steps}")
    history = []
    for r in range(rounds):
        K = teacher_steps // 2 ** (r + 1)
        student = make_student(teacher, K)
        result = train_fn(student, ProgressiveDistillation(teacher, schedule, K), data, **train_kwargs)
        teacher = result.ema_model
        history.append(dict(steps=K, result=result, metrics=evaluate(teacher, K) if evaluate else {}))
    return history


# --- consistency models (Song et al. 2023) -------------------------------------------------------------------

def consistency_grid(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """The discretisation of consistency training: ``steps`` chain indices from N down to 1, the boundary
    (sigma~_min = sigma~ at index 1): (steps + 1,) decreasing."""
    steps = check_int("steps", steps, 1, check_discrete(schedule).N // 2)
    return index_grid(schedule, steps, final=1)


class ConsistencyLoss:
    """``loss_fn(f_theta, x0, generator)`` of consistency distillation (``teacher`` given; Song et al. Alg. 2)
    or consistency training (``teacher=None``; Alg. 3), for ``diffedu.train``.

    Each call first moves the target theta- towards the live weights, theta- <- mu theta- + (1 - mu) theta
    (the update Alg. 2 makes after each optimiser step; on the first call theta- = theta), so it is never stale.
    Then for a random adjacent pair i_n > i_{n+1} of ``consistency_grid(schedule, steps)``:

        x_n = alpha_n x0 + sigma_n eps,
        x^_{n+1} = one teacher DDIM step n -> n+1      (CD)   or   alpha_{n+1} x0 + sigma_{n+1} eps  (CT),
        loss = | f_theta(x_n, t_n) - f_theta-(x^_{n+1}, t_{n+1}) |^2      (d = squared L2, lambda = 1).
    """

    def __init__(self, schedule: DiscreteSchedule, steps: int, teacher: nn.Module | None = None,
                 target_decay: float = 0.95):
        self.schedule = check_discrete(schedule)
        self.grid = consistency_grid(self.schedule, steps)
        self.mu = check_scalar("target_decay", target_decay, 0.0, 1.0, high_inclusive=False)
        if teacher is not None:
            check_same_chain("teacher", teacher, self.schedule)
            teacher = teacher.eval().requires_grad_(False)
        self.teacher, self.target, self.updates = teacher, None, 0

    @torch.no_grad()
    def update_target(self, online: nn.Module) -> nn.Module:
        """theta- <- mu theta- + (1 - mu) theta (theta- = theta the first time); returns theta-'s module."""
        online = _unwrap(online)
        if self.target is None:
            self.target = copy.deepcopy(online).eval().requires_grad_(False)
        else:
            for p_target, p in zip(self.target.parameters(), online.parameters()):
                p_target.lerp_(p.detach(), 1 - self.mu)
        self.updates += 1
        return self.target

    def __call__(
        self,
        f_theta: nn.Module,
        x0: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        if prediction_of(f_theta) != "x0":
            raise ValueError(
                "f_theta must be a consistency model "
                "(prediction 'x0': nets.ConsistencyModel)"
            )
        target = self.update_target(f_theta)  # theta- <- EMA of theta
        B, dev, dt = x0.shape[0], x0.device, x0.dtype
        grid = self.grid.to(dev)
        n = torch.randint(len(grid) - 1, (B,), generator=generator, device=dev)
        i, j = grid[n], grid[n + 1]  # (B,) adjacent levels, i noisier
        t_i, alpha_i, sigma_i = chain_coefficients(self.schedule, i, x0)
        t_j, alpha_j, sigma_j = chain_coefficients(self.schedule, j, x0)
        eps = torch.randn(x0.shape, generator=generator, device=dev, dtype=dt)
        x_i = alpha_i * x0 + sigma_i * eps
        with torch.no_grad():
            if self.teacher is None:  # CT: the same noise one level down
                x_j = alpha_j * x0 + sigma_j * eps
            else:  # CD: one teacher DDIM step
                teacher = self.teacher.to(dev)
                x0_t, eps_t = predict_x0_eps_at(
                    teacher, x_i, t_i, alpha_i, sigma_i
                )
                x_j = alpha_j * x0_t + sigma_j * eps_t
            f_target = target(x_j, t_j)
        return ((f_theta(x_i, t_i) - f_target) ** 2).mean()


@torch.no_grad()
def consistency_sample(model: Callable, x_T: Tensor, schedule: DiscreteSchedule, indices: Tensor, *,
                       cond: Tensor | None = None, generator: torch.Generator | None = None,
                       progress: bool = True, return_trajectory: bool = False) -> Tensor | Trajectory:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1): NFE = K = len(indices) - 1.

    x0^ = f(x_T, t_0); then at each later grid index n < K: x_n = alpha_n x0^ + sigma_n z (fresh noise z, the
    whole of it: unlike DDIM nothing of the previous noise is kept) and x0^ = f(x_n, t_n). Returns the last x0^.
    ``indices`` = ``index_grid(schedule, K)``: its final index (0) is where the samples land.
    """
    seq = check_index_grid(schedule, indices)
    _, t, alpha, sigma = index_coefficients(schedule, seq)
    check_sampler_inputs(model, x_T, t[0], cond)
    x, out = x_T, Recorder(x_T, return_trajectory)
    for n in tqdm(range(len(seq) - 1), disable=not progress, desc="consistency sampling"):
        if n > 0:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = alpha[n] * x0_hat + sigma[n] * z
        x0_hat = predict_x0_eps_at(model, x, t[n], alpha[n], sigma[n], cond)[0]
        out.add(x0_hat, x0_hat)
    return out.result(x0_hat)


# --- reflow and direct distillation (Liu et al. 2022; Luhman & Luhman 2021) -------------------------------------

@torch.no_grad()
def teacher_pairs(teacher: Callable, n: int, shape: tuple[int, ...], schedule: DiscreteSchedule,
                  steps: int = 20, batch_size: int = 500, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """n coupled pairs (z, x0): z ~ N(0, I) and x0 = the teacher's probability-flow ODE from z (DPM-Solver++(2M),
    ``steps`` calls on the log-SNR grid: chapter 5's best few-step solver). The cost: n x steps teacher calls."""
    n = check_int("n", n, 1)
    z = torch.randn((n, *shape), generator=generator, device=device, dtype=dtype)
    grid = sigma_grid(schedule, steps, "logsnr")
    x0 = torch.cat([dpmpp_2m_sample(teacher, z[k:k + batch_size], schedule, grid, progress=False)
                    for k in range(0, n, batch_size)])
    return z, x0


def reflow_loss(model: Callable, pair: tuple[Tensor, Tensor], schedule: DiscreteSchedule,
                generator: torch.Generator | None = None, direct: bool = False) -> Tensor:
    """The denoising loss on *coupled* pairs (Liu et al. 2022, eq. 1 in the sigma view): x_i = alpha_i x0 +
    sigma_i z with the teacher's own z for that x0, i ~ U{1..N}, the model's prediction against its target.

    ``direct=True`` trains only at i = N: the student learns the teacher's whole ODE map z -> x0 in one call
    (direct distillation, Luhman & Luhman 2021)."""
    z, x0 = pair
    B = x0.shape[0]
    i = torch.full((B,), schedule.N, device=x0.device) if direct else \
        torch.randint(1, schedule.N + 1, (B,), generator=generator, device=x0.device)
    t, alpha, sigma = chain_coefficients(schedule, i, x0)
    x_i = alpha * x0 + sigma * z
    return ((model(x_i, t) - targets(x0, z, alpha, sigma, prediction_of(model))) ** 2).mean()


# --- oracles ------------------------------------------------------------------------------------------------

@torch.no_grad()
def flow_map(model: Callable, x: Tensor, schedule: NoiseSchedule, t_start: float, t_end: float = 0.0,
             rtol: float = 1e-8, atol: float = 1e-8) -> Tensor:
    """The probability-flow ODE from t_start down to t_end, solved to tolerance (scipy's RK45, float64): the
    reference a one-step student is measured against. In the sigma view dx~/dsigma~ = eps-hat (Karras eq. 3),
    integrated from sigma~(t_start) to sigma~(t_end) (0 at t_end = 0). x: (B, D); returns x at t_end (B, D)."""
    from scipy.integrate import solve_ivp  # a well-kept adaptive solver; the diffusion maths is ours

    check_finite("x", x)
    t_start = check_scalar("t_start", t_start, 0.0, 1.0, low_inclusive=False)
    t_end = check_scalar("t_end", t_end, 0.0, t_start, high_inclusive=False)
    ts = torch.tensor([t_start, t_end], dtype=torch.float64)
    alpha, sigma = schedule.alpha(ts), schedule.sigma(ts)
    s0, s1 = float(sigma[0] / alpha[0]), float(sigma[1] / alpha[1])
    shape = x.shape

    def rhs(s: float, y: np.ndarray) -> np.ndarray:
        t = float(time_of_sigma(schedule, s)) if s > 0 else 0.0
        a, sd = (float(v) for v in schedule.coefficients(t, torch.zeros(1, 1, dtype=torch.float64)))
        x_t = torch.from_numpy(a * y).reshape(shape).to(x.dtype)
        eps = predict_x0_eps_at(model, x_t, t, a, sd)[1]
        return eps.double().reshape(-1).numpy()

    y0 = (x.double() / float(alpha[0])).reshape(-1).numpy()
    sol = solve_ivp(rhs, (s0, max(s1, 1e-8)), y0, method="RK45", rtol=rtol, atol=atol)
    return torch.from_numpy(sol.y[:, -1] * float(alpha[1])).reshape(shape).to(x.dtype)


def quantile_flow_map(mixture: GaussianMixture, x: Tensor, alpha: float, sigma: float,
                      iterations: int = 200) -> Tensor:
    """In one dimension the probability-flow map from time t to 0 is monotone, so it is F_0^-1(F_t(x)) with the
    CDFs of the data (F_0) and of its noisy marginal (F_t, for alpha = alpha(t), sigma = sigma(t)): an oracle with
    no ODE solver. ``mixture`` must be 1-D; x: (B,) or (B, 1); returns the same shape (float64 bisection)."""
    if mixture.D != 1:
        raise ValueError(f"mixture must be one-dimensional, got D = {mixture.D}")
    mu = mixture.means[:, 0]                                               # (K,)
    var = mixture.covs.reshape(mixture.K, -1)[:, 0]                        # (K,)
    w = mixture.weights

    def cdf(y: Tensor, a: float, s: float) -> Tensor:
        std = torch.sqrt(a ** 2 * var + s ** 2)                           # (K,)
        return (w * torch.special.ndtr((y[:, None] - a * mu) / std)).sum(-1)

    u = cdf(x.double().reshape(-1), alpha, sigma)                         # F_t(x) in (0, 1)
    lo = torch.full_like(u, float((mu - 40 * var.sqrt()).min()))
    hi = torch.full_like(u, float((mu + 40 * var.sqrt()).max()))
    for _ in range(iterations):                                            # F_0^-1 by bisection
        mid = 0.5 * (lo + hi)
        below = cdf(mid, 1.0, 0.0) < u
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (0.5 * (lo + hi)).reshape(x.shape).to(x.dtype)
