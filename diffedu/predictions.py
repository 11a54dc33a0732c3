"""One converter between what a network predicts: eps, x0, v or the score.

Given x_t = alpha * x0 + sigma * eps, any one of these determines the others (Salimans & Ho 2022, Appendix D;
Song et al. 2021, eq. for the Gaussian score):

    x0    = (x_t - sigma * eps) / alpha                 eps   = (x_t - alpha * x0) / sigma
    v     = alpha * eps - sigma * x0                    score = grad log p_t(x_t) = -eps / sigma
    x0    = (alpha * x_t - sigma * v) / (alpha^2 + sigma^2)
    eps   = (sigma * x_t + alpha * v) / (alpha^2 + sigma^2)

(the last two reduce to x0 = alpha x_t - sigma v and eps = sigma x_t + alpha v when alpha^2 + sigma^2 = 1).
Samplers never look at a network's raw output: they call ``predict_x0_eps_at`` and use x0-hat and eps-hat (and the
score -eps-hat / sigma).
"""

from __future__ import annotations

from typing import Callable

import torch

from .checks import check_choice, check_finite
from .schedules import NoiseSchedule, as_time

Tensor = torch.Tensor

PREDICTIONS = ("eps", "x0", "v", "score")


def to_eps(pred: Tensor, kind: str, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """eps-hat from a prediction of the given ``kind``; alpha and sigma broadcast against x_t."""
    check_choice("kind", kind, PREDICTIONS)
    if kind == "eps":
        return pred
    if kind == "x0":
        return (x_t - alpha * pred) / sigma
    if kind == "v":
        return (sigma * x_t + alpha * pred) / (alpha ** 2 + sigma ** 2)
    return -sigma * pred  # score


def to_x0(pred: Tensor, kind: str, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """x0-hat from a prediction of the given ``kind``."""
    check_choice("kind", kind, PREDICTIONS)
    if kind == "x0":
        return pred
    if kind == "eps":
        return (x_t - sigma * pred) / alpha
    if kind == "v":
        return (alpha * x_t - sigma * pred) / (alpha ** 2 + sigma ** 2)
    return (x_t + sigma ** 2 * pred) / alpha  # score: Tweedie's formula


def convert(pred: Tensor, kind: str, to: str, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Turn a prediction of ``kind`` into one of kind ``to`` (any of 'eps', 'x0', 'v', 'score')."""
    check_choice("to", to, PREDICTIONS)
    x0 = to_x0(pred, kind, x_t, alpha, sigma)
    eps = to_eps(pred, kind, x_t, alpha, sigma)
    if to == "x0":
        return x0
    if to == "eps":
        return eps
    if to == "score":
        return -eps / sigma
    return alpha * eps - sigma * x0  # v


def targets(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor, kind: str) -> Tensor:
    """The regression target for a network that predicts ``kind``, given the clean x0 and the noise eps used."""
    check_choice("kind", kind, PREDICTIONS)
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "v":
        return alpha * eps - sigma * x0
    return -eps / sigma  # score of the Gaussian q(x_t | x0)


def prediction_of(model: Callable) -> str:
    """What ``model`` predicts: its ``prediction`` attribute, one of PREDICTIONS (default 'eps')."""
    kind = getattr(model, "prediction", "eps")
    return check_choice("model.prediction", kind, PREDICTIONS)


def predict_x0_eps_at(model: Callable, x_t: Tensor, t: float | Tensor, alpha: float | Tensor, sigma: float | Tensor,
                      cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(x0-hat, eps-hat) of ``model`` at x_t (B, ...), whatever it predicts: every sampler calls a model here.

    t is one time for the whole batch (a float) or one per row ((B,)); alpha = alpha(t) and sigma = sigma(t)
    are given (floats, or tensors that broadcast against x_t): a sampler computes them once for its whole grid.
    """
    if not torch.is_tensor(t):
        t = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=x_t.dtype)  # (B,)
    pred = model(x_t, t, cond)                                                     # (B, ...)
    if pred.shape != x_t.shape:
        raise ValueError(f"model output must have the shape of x_t {tuple(x_t.shape)}, got {tuple(pred.shape)}")
    kind = prediction_of(model)
    x0_hat = to_x0(pred, kind, x_t, alpha, sigma)
    eps_hat = pred if kind == "eps" else to_eps(pred, kind, x_t, alpha, sigma)
    return x0_hat, eps_hat


def predict_x0_eps(model: Callable, x_t: Tensor, t: Tensor | float, schedule: NoiseSchedule,
                   cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``predict_x0_eps_at`` with alpha(t), sigma(t) taken from ``schedule``: the checked entry point for one call.

    x_t: (B, ...) finite; t: a scalar or (B,) continuous times in [0, 1].
    """
    check_finite("x_t", x_t)
    t = as_time(t)
    alpha, sigma = schedule.coefficients(t, x_t)  # each (B, 1, ...), or scalars when t is one time for all
    return predict_x0_eps_at(model, x_t, t.expand(x_t.shape[0]).to(device=x_t.device, dtype=x_t.dtype), alpha,
                             sigma, cond)
