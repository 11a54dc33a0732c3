"""Training and measuring a noise-aware classifier p_phi(y | x_t, t) for classifier guidance.

Dhariwal & Nichol (2021, Sec. 4) train the guiding classifier on the same noised images the diffusion model sees:
draw a time, noise the image with the forward process, and minimise the cross-entropy of the true label,

    L(phi) = E_{x0, y, t, eps} [ -log p_phi(y | x_t = alpha(t) x0 + sigma(t) eps, t) ].

The time is drawn the way the denoiser's loss draws it (``diffedu.ddpm.ddpm_loss``): for DDPM's discrete chain
an index i ~ U{1, ..., N} shown to the network as t_i; for a continuous schedule t ~ U(0, 1). A classifier trained
this way is accurate on nearly clean images and, necessarily, at chance once x_t has forgotten x0 (t -> 1).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

from .checks import check_finite, check_time
from .schedules import DiscreteSchedule, NoiseSchedule

Tensor = torch.Tensor


def _check_labels(y: Tensor, x0: Tensor) -> Tensor:
    if not torch.is_tensor(y) or y.is_floating_point() or y.dtype == torch.bool or y.shape != (x0.shape[0],):
        shape = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
        raise ValueError(f"y must be an integer tensor of class ids of shape ({x0.shape[0]},), got {shape}")
    if len(y) and int(y.min()) < 0:
        raise ValueError(f"y (class ids) must be >= 0, got {int(y.min())}")
    return y.to(device=x0.device, dtype=torch.long)


def _check_logits(logits: Tensor, y: Tensor) -> None:
    if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
        raise ValueError(f"classifier must return logits of shape ({y.shape[0]}, C), got {tuple(logits.shape)}")
    if len(y) and int(y.max()) >= logits.shape[1]:
        raise ValueError(f"y (class ids) must lie in [0, {logits.shape[1] - 1}] for a classifier with "
                         f"{logits.shape[1]} classes, got {int(y.max())}")


def sample_times(schedule: NoiseSchedule, batch: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> Tensor:
    """Training times (batch,) in float64 on the cpu: t_i with i ~ U{1..N} for a DiscreteSchedule (as
    ``ddpm_loss`` draws them), t ~ U(0, 1) otherwise. ``generator`` lives on ``device``."""
    if isinstance(schedule, DiscreteSchedule):
        i = torch.randint(1, schedule.N + 1, (batch,), generator=generator, device=device).cpu()  # (B,)
        return schedule.times[i]                                                                   # (B,)
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    return torch.rand(batch, generator=generator, device=device, dtype=torch.float64).cpu()       # (B,)


def noise_images(schedule: NoiseSchedule, x0: Tensor, t: Tensor,
                 generator: torch.Generator | None = None) -> Tensor:
    """x_t = alpha(t) x0 + sigma(t) eps, eps ~ N(0, I) drawn with ``generator`` on x0's device; t (B,) or ()."""
    alpha, sigma = schedule.coefficients(t, x0)                                                   # (B, 1, ...) each
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)           # (B, ...)
    return alpha * x0 + sigma * eps


def noisy_classifier_loss(
    classifier: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    y: Tensor,
    schedule: NoiseSchedule,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Cross-entropy of a noise-aware classifier on noised data (Dhariwal & Nichol 2021, Sec. 4), a scalar.

    Draws t as :func:`sample_times` does, then eps ~ N(0, I) (in that order, from ``generator``), forms
    x_t = alpha(t) x0 + sigma(t) eps and returns mean_b [ -log softmax(classifier(x_t, t))_b[y_b] ].

    Args:
        classifier: ``classifier(x, t) -> logits (B, C)``.
        x0: clean data (B, ...); y: its class ids (B,) in [0, C - 1].
        schedule: the forward process the guided diffusion model uses.
    """
    check_finite("x0", x0)
    y = _check_labels(y, x0)
    t = sample_times(
        schedule, x0.shape[0], generator, x0.device
    )  # (B,) float64
    x_t = noise_images(schedule, x0, t, generator)  # (B, ...)
    logits = classifier(x_t, t.to(device=x0.device, dtype=x0.dtype))  # (B, C)
    _check_logits(logits, y)
    return F.cross_entropy(logits, y)


@torch.no_grad()
def noisy_accuracy(classifier: Callable[[Tensor, Tensor], Tensor], x0: Tensor, y: Tensor, schedule: NoiseSchedule,
                   t: float, generator: torch.Generator | None = None, batch_size: int = 512) -> float:
    """Accuracy of ``classifier`` on x_t = alpha(t) x0 + sigma(t) eps at one time t in [0, 1] (t = 0: clean)."""
    check_finite("x0", x0)
    y = _check_labels(y, x0)
    t_tensor = torch.as_tensor(t, dtype=torch.float64)
    check_finite("t", t_tensor)
    check_time("t", t_tensor)
    correct = 0
    for start in range(0, len(x0), batch_size):
        xb, yb = x0[start:start + batch_size], y[start:start + batch_size]
        t_b = t_tensor.expand(len(xb))                                                            # (b,)
        x_t = noise_images(schedule, xb, t_b, generator)                                          # (b, ...)
        logits = classifier(x_t, t_b.to(device=xb.device, dtype=xb.dtype))                      # (b, C)
        _check_logits(logits, yb)
        correct += int((logits.argmax(dim=1) == yb).sum())
    return correct / max(len(x0), 1)


__all__ = ["sample_times", "noise_images", "noisy_classifier_loss", "noisy_accuracy"]
