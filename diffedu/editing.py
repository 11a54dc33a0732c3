"""Editing with a trained diffusion model, no retraining: SDEdit and inpainting (replacement and RePaint).

Both reuse an unconditional (or class-conditional) model trained with DDPM's loss on the chain x_0 .. x_N,
x_i = sqrt(alpha_bar_i) x_0 + sqrt(1 - alpha_bar_i) eps. Neither needs the model to know about the edit.

SDEdit (Meng et al. 2022, Sec. 3; here on DDPM's chain): a guide x_g (a stroke painting, a crude sketch, another
image) is pushed to an intermediate noise level t_0 = ``strength`` and the reverse process is run from there to 0,

    x_{t0} = alpha(t0) x_g + sigma(t0) eps,      then  x_{t0} -> ... -> x_0 with the model's reverse steps.

The noise washes out the guide's details (sigma(t0) large) but keeps its coarse layout (alpha(t0) x_g): strength
0 returns the guide, strength 1 forgets it (unconditional sampling), and in between realism trades against
faithfulness to the guide. With an exact model the stochastic reverse process draws x_0 ~ p(x_0 | x_{t0}), so the
output law is the data posterior averaged over the noised guide (the tests check this in closed form).

Inpainting: given ``x_known`` and a ``mask`` (1 = known pixel, 0 = to fill in), sample the unknown pixels so the
whole image looks like data. At every reverse step i -> j the known part is replaced by the known image noised
to level j, the unknown part comes from the model's reverse step:

    x_j = m * q_sample(x_known, j) + (1 - m) * [mu_theta(x_i, i) + sigma_i z]          (RePaint, eq. 8-10)

That alone is the *replacement* method (Song et al. 2021, App. I; "replacement" in Ho et al. 2022). It is
biased: the known part's noise is drawn afresh each step, independent of the generated part, so the two halves
never quite agree ("harmonise"). RePaint (Lugmayr et al. 2022, Alg. 1 and Sec. 4.2) resamples: after going
down ``jump_length`` levels it jumps back up by the same amount with the forward kernel q(x_k | x_{k-1}),
``resample`` - 1 times, giving the model more chances to make the unknown part consistent with the known part.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from .checks import check_choice, check_finite, check_int, check_scalar
from .ddim import ddim_sample
from .ddpm import q_sample, reverse_steps
from .grids import index_grid
from .predictions import predict_x0_eps_at
from .sampling import Recorder, Trajectory, check_sampler_inputs
from .schedules import DiscreteSchedule, check_discrete

Tensor = torch.Tensor
METHODS = ("replace", "repaint")


def start_index(schedule: DiscreteSchedule, strength: float) -> int:
    """The chain index i0 = round(strength * N) that SDEdit starts from (t_{i0} = strength for a plain chain)."""
    schedule = check_discrete(schedule)
    strength = check_scalar("strength", strength, 0.0, 1.0)
    return int(round(strength * schedule.N))


def truncated_chain(schedule: DiscreteSchedule, i0: int) -> DiscreteSchedule:
    """The first i0 steps of the chain as a chain of its own: indices 0..i0, same alpha_bars, same times.

    Any sampler that starts at its chain's top index (``ddpm_sample``, ``ddim_sample``) then starts at x_{i0}.
    """
    schedule = check_discrete(schedule)
    i0 = check_int("i0", i0, 1, schedule.N)
    return schedule.respace(torch.arange(1, i0 + 1))


@torch.no_grad()
def sdedit(
    model: Callable,
    x_guide: Tensor,
    schedule: DiscreteSchedule,
    strength: float,
    steps: int | None = None,
    eta: float = 1.0,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    return_start: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """SDEdit (Meng et al. 2022, Sec. 3): noise the guide to t0 = ``strength``, then run the reverse process to 0.

    Args:
        model: ``net(x, t, cond)`` predicting eps, x0, v or the score (through ``diffedu.predictions``).
        x_guide: (B, ...) the guide images, finite (a painting, a sketch, a photo to edit).
        schedule: the model's DDPM chain (a DiscreteSchedule).
        strength: t0 in [0, 1]: the chain index i0 = round(strength * N). 0 returns the guide unchanged,
            1 starts from x_N, nearly pure noise (unconditional sampling).
        steps: reverse steps a run from strength 1 would take (None: all N). A run from i0 takes
            max(1, round(steps * i0 / N)) steps, the same step size, so its cost is proportional to strength
            (diffusers' img2img convention).
        eta: the DDIM noise knob (Song et al. 2021, eq. 16): 1 (default) is DDPM's ancestral step with
            variance beta_tilde, i.e. SDEdit's stochastic reverse process; 0 the deterministic probability-flow
            (DDIM) map.
        cond: passed to the model (class labels for a conditional or guided model).
        generator: a torch.Generator on x_guide's device: first the noise eps of x_{t0}, then the sampler's.
        return_start: also return x_{t0}, the noised guide the reverse process started from.
    Returns:
        the edited images (B, ...); with ``return_start`` also x_{t0} (B, ...).
    """
    schedule = check_discrete(schedule)
    check_finite("x_guide", x_guide)
    i0 = start_index(schedule, strength)
    eta = check_scalar("eta", eta, 0.0, 1.0)
    steps = (
        schedule.N
        if steps is None
        else check_int("steps", steps, 1, schedule.N)
    )
    if i0 == 0:  # strength 0: no noise, nothing to undo
        return (
            (x_guide.clone(), x_guide.clone())
            if return_start
            else x_guide.clone()
        )
    B = x_guide.shape[0]
    x_t0, _ = q_sample(
        schedule, x_guide, torch.full((B,), i0), generator=generator
    )  # alpha x_g + sigma eps
    K = min(
        i0, max(1, round(steps * i0 / schedule.N))
    )  # reverse steps from i0 down to 0
    chain = truncated_chain(schedule, i0)
    out = ddim_sample(
        model,
        x_t0,
        chain,
        index_grid(chain, K),
        eta=eta,
        cond=cond,
        generator=generator,
        progress=progress,
    )
    return (out, x_t0) if return_start else out


# --- inpainting ----------------------------------------------------------------------------------------------

def check_mask(mask: Tensor, x: Tensor, x_name: str = "x_known") -> Tensor:
    """Validate an inpainting mask (1 = known, 0 = unknown) against x; return it in x's dtype and device.

    The mask must broadcast to x's shape (e.g. (1, 1, H, W) or (B, 1, H, W) for images (B, 1, H, W), or (D,)
    for points (B, D)) and hold only the values 0 and 1 (booleans are accepted).
    """
    if not torch.is_tensor(mask):
        raise ValueError(f"mask must be a torch.Tensor of 0s and 1s, got {type(mask).__name__}")
    try:
        shape = torch.broadcast_shapes(mask.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(f"mask must have a shape that broadcasts to {x_name}'s {tuple(x.shape)}, "
                         f"got {tuple(mask.shape)}")
    m = mask.to(device=x.device, dtype=x.dtype)
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("mask must hold only the values 0 (unknown, to fill in) and 1 (known); "
                         "got other values (or NaN)")
    return m


def repaint_levels(K: int, jump_length: int, resample: int) -> list[int]:
    """The levels k (of a K-step chain) that RePaint visits, in order, from K down to 0 (Lugmayr et al. Sec. 4.2).

    Go down one level at a time. At each checkpoint k = K - jump_length, K - 2 jump_length, ... (k >= 1), reached
    going down, climb back up ``jump_length`` levels one at a time and come down again, ``resample`` - 1 times.
    With jump_length = 1 this is the paper's Alg. 1 with U = resample (no resampling at the last step), and with
    resample = 1 it is the plain descent K, K-1, ..., 0 (the replacement method). The number of network calls
    is the number of down-steps, about K * resample.
    """
    K = check_int("K", K, 1)
    jump_length = check_int("jump_length", jump_length, 1, K)
    resample = check_int("resample", resample, 1)
    jumps_left = {
        k: resample - 1 for k in range(K - jump_length, 0, -jump_length)
    }  # checkpoint -> jumps to do
    levels, k = [K], K
    while k > 0:
        k -= 1
        levels.append(k)
        if jumps_left.get(k, 0) > 0:
            jumps_left[k] -= 1
            for _ in range(jump_length):
                k += 1
                levels.append(k)
    return levels


@torch.no_grad()
def inpaint(
    model: Callable,
    x_known: Tensor,
    mask: Tensor,
    schedule: DiscreteSchedule,
    indices: Tensor,
    *,
    method: str = "repaint",
    jump_length: int | None = None,
    resample: int | None = None,
    variance: str = "beta_tilde",
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
) -> Tensor | Trajectory:
    """Fill in the pixels where ``mask`` is 0, keeping those where it is 1, with a model that never saw a mask.

    Every down-step from level k to k - 1 of the K-step chain through ``indices`` does (Lugmayr et al. 2022,
    eq. 8-10)

        x_unknown = mu_theta(x_k, k) + sigma_k z               the model's ancestral step (no noise at k = 1)
        x_known   = sqrt(abar_{k-1}) x_known + sqrt(1 - abar_{k-1}) eps     the known image at level k - 1
        x_{k-1}   = mask * x_known + (1 - mask) * x_unknown,

    and RePaint's up-steps re-noise the whole image with q(x_k | x_{k-1}) = N(sqrt(1 - beta_k) x_{k-1}, beta_k I).

    x_known (B, ...): its masked-in pixels are kept (the others are ignored but must be finite); mask: 1 where
    known, broadcastable to x_known (``check_mask``); indices: ``index_grid(schedule, K)`` ending at 0; method:
    'repaint' (default) or 'replace' (no resampling); jump_length, resample: RePaint's j and r
    (``repaint_levels``), defaults min(10, K) and 10 as in the paper; variance: the ancestral step's sigma_k^2,
    'beta_tilde' (default) or 'beta'. Returns x_0 (B, ...), equal to x_known where mask = 1, or a
    ``Trajectory`` whose states are x at every visited level (``repaint_levels`` lists them).
    """
    r = reverse_steps(schedule, indices, variance)
    check_sampler_inputs(model, x_known, r.t[-1], cond, name="x_known")
    m = check_mask(mask, x_known)
    check_choice("method", method, METHODS)
    K = r.chain.N
    if method == "replace":
        if resample is not None and check_int("resample", resample, 1) != 1:
            raise ValueError(
                "resample must be 1 (or None) for method='replace', "
                f"got {resample}; use method='repaint' to resample"
            )
        jump_length, resample = 1, 1
    else:
        jump_length = (
            min(10, K)
            if jump_length is None
            else check_int("jump_length", jump_length, 1, K)
        )
        resample = (
            10 if resample is None else check_int("resample", resample, 1)
        )
    levels = repaint_levels(K, jump_length, resample)

    B = x_known.shape[0]
    x = torch.randn(
        x_known.shape,
        generator=generator,
        device=x_known.device,
        dtype=x_known.dtype,
    )  # x_K
    out = Recorder(x, return_trajectory)
    for k, k_next in tqdm(
        list(zip(levels[:-1], levels[1:])),
        disable=not progress,
        desc=f"inpainting ({method})",
    ):
        # down: one reverse step for the unknown part, the known part noised
        # to k - 1
        if k_next == k - 1:
            x0_hat, _ = predict_x0_eps_at(
                model, x, r.t[k], r.alpha[k], r.sigma[k], cond
            )
            x_unknown = (
                r.c0[k] * x0_hat + r.ci[k] * x
            )  # mu_tilde_k(x_k, x0_hat)
            if k > 1:
                z = torch.randn(
                    x.shape,
                    generator=generator,
                    device=x.device,
                    dtype=x.dtype,
                )
                x_unknown = x_unknown + r.std[k] * z
            if k_next > 0:
                x_kn, _ = q_sample(
                    r.chain,
                    x_known,
                    torch.full((B,), k_next),
                    generator=generator,
                )
            else:
                x_kn = x_known
            x = m * x_kn + (1 - m) * x_unknown
        else:
            # up: x_{k+1} ~ q(x_{k+1} | x_k)
            #   = N(sqrt(1 - beta_{k+1}) x_k, beta_{k+1} I)
            beta = float(r.chain.betas[k_next])
            z = torch.randn(
                x.shape, generator=generator, device=x.device, dtype=x.dtype
            )
            x, x0_hat = math.sqrt(1 - beta) * x + math.sqrt(beta) * z, None
        out.add(x, x0_hat)
    return out.result(x)
