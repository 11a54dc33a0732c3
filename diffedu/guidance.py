"""Guiding a diffusion model towards a condition (Dhariwal & Nichol 2021; Ho & Salimans 2022).

Guidance is written as a *model wrapper*: a guided model is again ``net(x, t, cond)`` with a ``prediction``, so
every sampler in the book runs it unchanged. Both kinds of guidance add a multiple of the classifier's gradient
to the score; by Bayes' rule grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t), so at s = 1 they give
the conditional model and for s > 1 they sample (approximately) the sharpened p(x) p(y | x)^s:

    classifier guidance        score_s = score(x, t) + s * grad_x log p_phi(y | x_t, t)     (Dhariwal & Nichol, Alg. 1)
                               eps_s   = eps(x, t) - s * sigma(t) * grad_x log p_phi(y | x_t, t)       (their eq. 14)
    classifier-free guidance   eps_s   = eps(x, t, null) + s * (eps(x, t, y) - eps(x, t, null))   (Ho & Salimans eq. 6)

The second line is the first multiplied by -sigma (score = -eps / sigma); with DDPM's sigma = sqrt(1 - alpha_bar)
it is Dhariwal & Nichol's eps-hat = eps - sqrt(1 - alpha_bar) grad log p(y | x_t).

Two conventions for the scale are in use: ``s`` as above (s = 0 unconditional, s = 1 conditional, s > 1 guided),
and Ho & Salimans' ``w`` in eps_w = (1 + w) eps(y) - w eps(null), so s = 1 + w. This library uses s.
Training needs the unconditional model too: ``drop_labels`` replaces a fraction p_uncond of the labels by the
null label (id ``num_classes``) so that one network learns both.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .checks import check_finite, check_int, check_scalar
from .predictions import convert, prediction_of
from .schedules import NoiseSchedule, as_time
from .toy import GaussianMixture

Tensor = torch.Tensor


def drop_labels(
    y: Tensor,
    p_uncond: float,
    null_label: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Condition dropout: each row of y becomes ``null_label`` with probability ``p_uncond``. y is (B,) class ids,
    or (B, T) token ids of captions, whose dropped rows become all ``null_label`` (the empty caption)."""
    p_uncond = check_scalar("p_uncond", p_uncond, 0.0, 1.0)
    null_label = check_int("null_label", null_label, 0)
    drop = (
        torch.rand(y.shape[:1], generator=generator, device=y.device)
        < p_uncond
    )  # (B,)
    drop = drop.reshape(-1, *[1] * (y.dim() - 1))  # (B, 1, ...): whole rows
    return torch.where(drop, torch.full_like(y, null_label), y)


def check_scale(scale: float) -> float:
    """The guidance scale s must be a finite real number >= 0 (0 = unconditional, 1 = conditional)."""
    return check_scalar("scale", scale, 0.0, math.inf, high_inclusive=False)


def check_labels(cond: Tensor | None, batch: int, high: int | None, what: str) -> Tensor:
    """Raise unless ``cond`` is an integer tensor (batch,) of class ids in [0, high] (high=None: shape and type
    only, the range is checked later) or (batch, T) of token ids (checked by the text model); ``what`` names the
    wrapper in the message."""
    if cond is None:
        ids = f" in [0, {high}]" if high is not None else ""
        raise ValueError(f"cond must be a ({batch},) tensor of class ids{ids} for {what}, got None")
    if (not torch.is_tensor(cond) or cond.dim() not in (1, 2) or cond.shape[0] != batch or cond.is_floating_point()
            or cond.dtype == torch.bool):
        shape = tuple(cond.shape) if torch.is_tensor(cond) else type(cond).__name__
        raise ValueError(f"cond must be an integer tensor of shape ({batch},) (class ids) or ({batch}, T) (token "
                         f"ids) for {what}, got {shape}")
    if high is not None and batch and (int(cond.min()) < 0 or int(cond.max()) > high):
        raise ValueError(f"cond (class ids) must lie in [0, {high}] for {what}, got values in "
                         f"[{int(cond.min())}, {int(cond.max())}]")
    return cond


def _batch_times(t: Tensor | float, x: Tensor) -> Tensor:
    """t as one time per row of x: (B,), in x's dtype and device."""
    return torch.as_tensor(t, device=x.device, dtype=x.dtype).reshape(-1).expand(x.shape[0])


class ClassifierFreeGuidance(nn.Module):
    """``net(x, t, cond)`` = the guided prediction eps_u + s (eps_c - eps_u) of a class-conditional ``model``.

    ``model`` must accept the null label (id ``null_label``, i.e. num_classes) for the unconditional prediction
    and declare its ``prediction``; the combination is linear, so it is applied to the raw output of any
    prediction type (for eps, x0, v and score it is the same guided model, as each is an affine function of the
    score at fixed x, t). Both predictions come from one batched call of 2B rows. ``scale`` is s (s = 1 + w in
    Ho & Salimans' w). ``cond`` (B,) holds class ids in [0, null_label]; the null label itself gives the
    unconditional prediction whatever s is. For a text model ``cond`` is (B, T) token ids and the null condition is
    every token set to ``null_label`` (the ``<pad>`` id: the empty caption).
    """

    def __init__(self, model: nn.Module, scale: float, null_label: int):
        super().__init__()
        self.model = model
        self.scale = check_scale(scale)
        self.null_label = check_int("null_label", null_label, 0)
        self.prediction = getattr(model, "prediction", "eps")

    def check_inputs(
        self, x: Tensor, t: Tensor | float, cond: Tensor | None = None
    ) -> None:
        """Raise a ValueError naming the argument unless ``guided(x, t, cond)`` is a valid call: cond (B,) class
        ids in [0, null_label] or (B, T) token ids, then the model's own checks (once, at a sampler's entry)."""
        check_finite("x", x)
        cond = check_labels(cond, x.shape[0], None, "classifier-free guidance")
        if (
            cond.dim() == 1
        ):  # class ids; token ids (B, T) are checked by the text model
            check_labels(
                cond, x.shape[0], self.null_label, "classifier-free guidance"
            )
        check = getattr(self.model, "check_inputs", None)
        if check is not None:
            check(x, t, cond)

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor | None = None
    ) -> Tensor:
        B = x.shape[0]
        t = _batch_times(t, x)  # (B,)
        null = torch.full_like(cond, self.null_label)  # (B,) or (B, T)
        out = self.model(
            torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null])
        )  # (2B, ...)
        out_c, out_u = out[:B], out[B:]
        return out_u + self.scale * (
            out_c - out_u
        )  # s = 0 gives out_u exactly, s = 1 out_c up to rounding


class ClassifierGuidance(nn.Module):
    """``net(x, t, cond)`` = ``model`` guided by the gradient of a noise-aware classifier (Dhariwal & Nichol 2021).

        score_s(x_t, t, y) = score(x_t, t) + s * grad_x log p_phi(y | x_t, t)            (Alg. 1, eq. 14)

    Args:
        model:      ``net(x, t, cond)`` with a ``prediction`` (eps, x0, v or score); called with ``cond=None``
                    (an unconditional model) unless ``guide_conditional`` is set, when it gets ``cond`` too
                    (Dhariwal & Nichol guide conditional models as well).
        classifier: ``classifier(x, t) -> logits (B, C)`` of p_phi(y | x_t), trained on noisy x_t at time t.
        scale:      s >= 0 (0: the model's own prediction, untouched and without calling the classifier;
                    1: the conditional model if the classifier is exact).
        schedule:   the model's noise schedule, for alpha(t) and sigma(t).

    The output is the guided prediction in the model's own prediction type: eps and x0 and v are converted through
    eps-hat, which the gradient shifts by -s sigma grad log p (the score shifts by + s grad log p). The gradient is
    taken by autograd on log_softmax(logits)[y] with grad enabled inside, so it works under the samplers'
    ``torch.no_grad``; the returned tensor carries no graph.
    """

    def __init__(self, model: nn.Module, classifier: Callable[[Tensor, Tensor], Tensor], scale: float,
                 schedule: NoiseSchedule, guide_conditional: bool = False):
        super().__init__()
        self.model, self.classifier, self.schedule = model, classifier, schedule
        self.scale = check_scale(scale)
        self.guide_conditional = bool(guide_conditional)
        self.prediction = prediction_of(model)

    def classifier_grad(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """grad_x log p_phi(y = cond | x_t = x, t), shape like x; cond (B,) in [0, C - 1]."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)  # (B, ...)
            logits = self.classifier(x_in, t)  # (B, C)
            if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(
                    "classifier must return logits of shape "
                    f"({x.shape[0]}, C), got {tuple(logits.shape)}"
                )
            log_p = torch.log_softmax(logits, dim=1)  # (B, C)
            selected = log_p[
                torch.arange(x.shape[0], device=log_p.device),
                cond.to(log_p.device),
            ]  # (B,)
            # rows are independent, so the gradient of the sum is each row's
            # own gradient
            (grad,) = torch.autograd.grad(selected.sum(), x_in)
        return grad.detach()

    def check_inputs(
        self, x: Tensor, t: Tensor | float, cond: Tensor | None = None
    ) -> None:
        """Raise a ValueError naming the argument unless ``guided(x, t, cond)`` is a valid call: cond (B,) class
        ids in [0, C - 1] for the classifier's C classes (one classifier call finds C), then the model's and the
        classifier's own checks. Samplers call this once, at their entry; ``forward`` checks nothing."""
        check_finite("x", x)
        B = x.shape[0]
        cond = check_labels(cond, B, None, "classifier guidance")
        for net, args in ((self.model, (x, t, cond if self.guide_conditional else None)), (self.classifier, (x, t))):
            check = getattr(net, "check_inputs", None)
            if check is not None:
                check(*args)
        with torch.no_grad():
            logits = self.classifier(x, _batch_times(t, x))
        if logits.dim() != 2 or logits.shape[0] != B:
            raise ValueError(f"classifier must return logits of shape ({B}, C), got {tuple(logits.shape)}")
        check_labels(cond, B, logits.shape[1] - 1, "the classifier")

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor | None = None
    ) -> Tensor:
        B = x.shape[0]
        t = _batch_times(t, x)  # (B,)
        pred = self.model(
            x, t, cond if self.guide_conditional else None
        )  # (B, ...)
        if self.scale == 0.0:
            return pred
        grad = self.classifier_grad(x, t, cond)  # (B, ...)
        alpha, sigma = self.schedule.coefficients(
            t.detach().cpu(), x
        )  # (B, 1, ...) each
        eps = convert(pred, self.prediction, "eps", x, alpha, sigma)
        eps_guided = (
            eps - self.scale * sigma * grad
        )  # Dhariwal & Nichol eq. 14
        return convert(eps_guided, "eps", self.prediction, x, alpha, sigma)


class ExactClassifier(nn.Module):
    """The exact noisy classifier of a GaussianMixture: logits = log p(k | x_t), shape (B, K).

    By Bayes' rule with the noised components of eq. (1) in ``diffedu.toy``,

        log p(k | x_t) = log w_k + log N(x_t; alpha mu_k, alpha^2 Sigma_k + sigma^2 I) - log p_t(x_t),

    i.e. the log of the responsibilities r_k(x_t), computed as a log-softmax so that far-away components give
    large negative logits rather than log(0). Differentiable in x, so it drives ``ClassifierGuidance`` with no
    training: at s = 1 the guided exact model is the exact conditional model.
    """

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule):
        super().__init__()
        self.mixture, self.schedule = mixture, schedule
        # component k alone, as a one-component mixture, for log N(x_t; alpha mu_k, C_k)
        self.components = [GaussianMixture(mixture.means[k:k + 1], mixture.covs[k:k + 1])
                           for k in range(mixture.K)]

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        t = as_time(t.detach().cpu() if torch.is_tensor(t) else t).reshape(-1).expand(x.shape[0])  # (B,)
        if bool((t == t[0]).all()):
            t = t[:1]  # one time for the whole batch
        x64 = x.cpu().to(torch.float64)  # (B, D); not detached, so gradients reach x
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)  # (B,) or (1,) each
        log_joint = torch.stack([math.log(float(w)) + comp.log_prob(x64, alpha, sigma)
                                 for w, comp in zip(self.mixture.weights, self.components)], dim=1)  # (B, K)
        return torch.log_softmax(log_joint, dim=1).to(device=x.device, dtype=x.dtype)
