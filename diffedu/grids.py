"""Grids: the points where a sampler calls the model, built once and passed in.

Every sampler walks a decreasing grid that a grid function builds and the caller hands over (k-diffusion's
``sigmas`` style): no sampler builds its own, so the same grid can be compared across samplers. Three kinds:

* chain indices i_0 > i_1 > ... > i_K of DDPM's chain, the last one the final index (0: clean data), for the
  discrete samplers (``ddpm_sample``, ``ddim_sample``, ``plms_sample``, ``inpaint``): ``index_grid``;
* noise levels sigma~_0 > ... > sigma~_K (the last usually 0, the data), sigma~ = sigma / alpha, for the ODE
  solvers of the sigma view (``euler_sample``, ``heun_sample``, ``dpmpp_2m_sample``): ``sigma_grid``,
  ``karras_sigmas``, ``discrete_sigmas``;
* times t_0 = t_max > ... > t_K = t_min for the SDE samplers (``time_grid``), and a noise ladder
  sigma_1 > ... > sigma_L for annealed Langevin (``geometric_sigmas``).

Builders from numbers share one argument order, ``(steps, low end, high end, options)``; builders on a schedule
take ``(schedule, steps, options)``. All return float64 (or int64 indices), decreasing.

Index spacings (``spaced_indices``; K = steps, diffusers' names for the three rules):

* 'leading'  : i = k (N // K) + steps_offset + 1, k = 0..K-1 (DDIM's own code and diffusers' default). It never
  reaches i = N, and with steps_offset = 0 it ends at i = 1.
* 'trailing' : i = round(k N / K), k = K..1 (Lin et al. 2024). Starts at i = N, where x_T ~ N(0, I) is right;
  with K = N it is every index. Default here.
* 'linspace' : i = round(linspace(0, N - 1, K)) + 1 (DPM-Solver's and Euler's default in diffusers).

diffusers' timestep k in 0..N-1 is our index i = k + 1; its ``set_alpha_to_one=False`` is ``final=1`` here.
"""

from __future__ import annotations

import math

import torch

from .checks import check_choice, check_finite, check_int, check_scalar
from .schedules import VE, DiscreteSchedule, NoiseSchedule, as_time, check_discrete

Tensor = torch.Tensor
SPACINGS = ("leading", "trailing", "linspace")
SIGMA_GRIDS = ("karras", "logsnr", "time_uniform")


# --- chain indices ------------------------------------------------------------------------------------------


def spaced_indices(
    N: int, steps: int, spacing: str = "trailing", steps_offset: int = 0
) -> Tensor:
    """The K = ``steps`` chain indices a few-step sampler visits, decreasing, each in 1..N (module docstring).

    ``steps_offset`` shifts 'leading' indices up (diffusers' ``steps_offset``; Stable Diffusion uses 1); the other
    two rules ignore it, as diffusers' DDIMScheduler does. Returns a LongTensor (K,).
    """
    N, steps, steps_offset = _check_spacing(N, steps, spacing, steps_offset)
    k = torch.arange(steps, dtype=torch.float64)  # 0 .. K-1
    if spacing == "leading":
        i = k * (N // steps) + steps_offset + 1
    elif spacing == "trailing":
        i = torch.round((k + 1) * N / steps)  # round half to even, as numpy
    else:
        i = (
            torch.round(torch.linspace(0, N - 1, steps, dtype=torch.float64))
            + 1
        )
    return i.long().flip(0)


def _check_spacing(N: int, steps: int, spacing: str, steps_offset: int) -> tuple[int, int, int]:
    N = check_int("N", N, 1)
    steps = check_int("steps", steps, 1, N)
    check_choice("spacing", spacing, SPACINGS)
    steps_offset = check_int("steps_offset", steps_offset, 0, N - 1)
    if spacing == "leading" and (steps - 1) * (N // steps) + steps_offset + 1 > N:
        raise ValueError(f"steps_offset must keep the 'leading' indices within [1, {N}], got steps_offset="
                         f"{steps_offset} with steps={steps}")
    return N, steps, steps_offset


def index_grid(schedule: DiscreteSchedule, steps: int, spacing: str = "trailing", steps_offset: int = 0,
               final: int = 0) -> Tensor:
    """``spaced_indices`` of the chain followed by the ``final`` index: (K + 1,) LongTensor, decreasing.

    final = 0 ends on the clean data (alpha_bar_0 = 1); final = 1 stops at alpha_bar_1 = 1 - beta_1, diffusers'
    ``set_alpha_to_one=False`` (Stable Diffusion's setting). With 'trailing' spacing and steps = N this is
    N, N - 1, ..., 1, 0: every step of DDPM's chain.
    """
    schedule = check_discrete(schedule)
    final = check_int("final", final, 0, 1)
    indices = spaced_indices(schedule.N, steps, spacing, steps_offset)
    return torch.cat([indices, torch.tensor([final])])


def check_index_grid(schedule: DiscreteSchedule, indices: Tensor) -> list[int]:
    """Validate a chain-index grid (``index_grid``): integers in [0, N], at least two, decreasing.

    The last index may repeat the one before it (diffusers' 'leading' spacing with final = 1 ends 1 -> 1).
    Returns the indices as a list of ints.
    """
    schedule = check_discrete(schedule)
    i = torch.as_tensor(indices)
    if i.is_floating_point() or i.dtype == torch.bool or i.dim() != 1 or i.numel() < 2:
        raise ValueError(f"indices must be a 1-D integer tensor of at least two chain indices (index_grid), got "
                         f"{tuple(i.shape)} of dtype {i.dtype}")
    seq = i.tolist()
    if min(seq) < 0 or max(seq) > schedule.N:
        raise ValueError(f"indices must lie in [0, {schedule.N}], got values in [{min(seq)}, {max(seq)}]")
    steps = list(zip(seq[:-2], seq[1:-1])) + [(seq[-2] + 1, seq[-1])]  # the last pair may be equal
    if any(j >= i for i, j in steps):
        raise ValueError(f"indices must be strictly decreasing (only the final index may repeat), got {seq}")
    return seq


def index_coefficients(schedule: DiscreteSchedule, seq: list[int]) -> tuple[list[float], ...]:
    """alpha_bar_i, t_i, alpha(t_i) and sigma(t_i) at every index of a grid, as Python floats (float64), computed
    once from the chain's table: the discrete samplers' loops then do no schedule arithmetic of their own."""
    alphas, sigmas = schedule.at(schedule.times)  # (N + 1) each
    return ([float(schedule.alpha_bars[i]) for i in seq], [float(schedule.times[i]) for i in seq],
            [alphas[i] for i in seq], [sigmas[i] for i in seq])


# --- noise levels sigma~ = sigma / alpha ----------------------------------------------------------------------

def _check_range(steps: int, sigma_min: float, sigma_max: float) -> tuple[int, float, float]:
    """steps >= 1 and 0 < sigma_min <= sigma_max, all finite."""
    steps = check_int("steps", steps, 1)
    sigma_min = check_scalar("sigma_min", sigma_min, 0.0, math.inf, low_inclusive=False)
    sigma_max = check_scalar("sigma_max", sigma_max, sigma_min, math.inf, high_inclusive=False)
    return steps, sigma_min, sigma_max


def karras_sigmas(
    steps: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    append_zero: bool = True,
) -> Tensor:
    """Karras et al. (2022, eq. 5): sigma_k = (sigma_max^(1/rho) + k/(K-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.

    K = steps values from sigma_max down to sigma_min, then 0 (``append_zero``): (K + 1,) float64. rho = 1 is
    uniform in sigma, rho -> inf uniform in log sigma; Karras et al. found rho = 7 best.
    """
    steps, sigma_min, sigma_max = _check_range(steps, sigma_min, sigma_max)
    rho = check_scalar("rho", rho, 0.0, math.inf, low_inclusive=False)
    ramp = (
        torch.linspace(0, 1, steps, dtype=torch.float64)
        if steps > 1
        else torch.zeros(1, dtype=torch.float64)
    )
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return (
        torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])
        if append_zero
        else sigmas
    )


def geometric_sigmas(steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """NCSN's noise ladder sigma_1 > ... > sigma_L, geometric from sigma_max to sigma_min: (L,) float64, L = steps."""
    L, sigma_min, sigma_max = _check_range(steps, sigma_min, sigma_max)
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), L, dtype=torch.float64))


def sigma_tilde(schedule: NoiseSchedule, t: Tensor | float) -> Tensor:
    """sigma~(t) = sigma(t) / alpha(t), float64: the noise level of x / alpha (Karras et al. eq. 4)."""
    t = as_time(t)
    return schedule.sigma(t) / schedule.alpha(t)


def sigma_range(schedule: NoiseSchedule, t_min: float | None = None, t_max: float = 1.0) -> tuple[float, float]:
    """(sigma~(t_min), sigma~(t_max)): the ends of the default sigma~ grids.

    t_min defaults to the first step t_1 of a DiscreteSchedule, 0 for VE (sigma_min > 0 there) and 1e-3 for
    continuous VP-type schedules (Song et al. 2021's epsilon). VPCosine has sigma~(1) = inf: pass t_max < 1.
    """
    if t_min is None:
        t_min = float(schedule.times[1]) if isinstance(schedule, DiscreteSchedule) else \
            0.0 if isinstance(schedule, VE) else 1e-3
    t_max = check_scalar("t_max", t_max, 0.0, 1.0)
    t_min = check_scalar("t_min", t_min, 0.0, t_max)
    lo, hi = float(sigma_tilde(schedule, t_min)), float(sigma_tilde(schedule, t_max))
    if not (0 < lo < hi < math.inf):
        raise ValueError(f"the schedule's sigma~ range must be finite and positive; got [{lo}, {hi}] on "
                         f"[t_min, t_max] = [{t_min}, {t_max}] (choose t_min > 0 or t_max < 1)")
    return lo, hi


def time_of_sigma(schedule: NoiseSchedule, sigmas: Tensor | float) -> Tensor:
    """Invert sigma~(t): the time t at which the schedule's log-SNR lambda(t) equals -2 log sigma~ (float64).

    The schedule's ``time_of_log_snr`` does the work: exact for DDPM's chain (a binary search in its table and a
    linear solve), closed forms for VE, VPLinear and VPCosine, 64 bisection steps (float64 precision) otherwise.
    Sigmas outside [sigma~(0), sigma~(1)] raise a ValueError.
    """
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    check_finite("sigmas", s)
    if s.numel() and float(s.min()) <= 0:
        raise ValueError("sigmas must be positive to have a time (sigma~ = 0 is the data itself)")
    if isinstance(schedule, VE):
        return schedule.time_of_sigma(s)
    lo_s, hi_s = sigma_tilde(schedule, torch.tensor([0.0, 1.0], dtype=torch.float64)).abs().tolist()
    if s.numel() and (float(s.max()) > hi_s * (1 + 1e-12) or float(s.min()) < lo_s * (1 - 1e-12)):
        raise ValueError(f"sigmas must lie in the schedule's range [{lo_s:.6g}, {hi_s:.6g}], got values in "
                         f"[{float(s.min()):.6g}, {float(s.max()):.6g}]")
    return schedule.time_of_log_snr(-2.0 * torch.log(s))  # lambda = -2 log sigma~


def sigma_grid(schedule: NoiseSchedule, steps: int, grid: str = "karras", rho: float = 7.0,
               log_snr_min: float | None = None) -> Tensor:
    """A named grid of K = ``steps`` steps on the schedule, ending at sigma~ = 0 (the data): (K + 1,) float64.

    * 'karras': ``karras_sigmas(steps, *sigma_range(schedule), rho)`` (Karras et al. 2022, eq. 5).
    * 'logsnr': Lu et al.'s (2022a) 'logSNR' steps: K + 1 values of lambda = -2 log sigma~ equally spaced from
      lambda(t_max) to lambda(t_min) (``sigma_range``'s ends), the last one replaced by 0: every step but the
      last has the same size h in lambda. ``log_snr_min`` starts the grid at lambda = log_snr_min instead
      (sigma~ = exp(-log_snr_min / 2)) when that is below sigma~_max, skipping the noisiest part (diffusers'
      ``lambda_min_clipped``).
    * 'time_uniform': K + 1 equally spaced times from t_max (1, or t_N of a DiscreteSchedule) down to 0, as
      sigma~(t), the last (t = 0) replaced by 0. diffusers' 'linspace' spacing is this grid rounded to the chain.
    """
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    steps = check_int("steps", steps, 1)
    check_choice("grid", grid, SIGMA_GRIDS)
    zero = torch.zeros(1, dtype=torch.float64)
    if log_snr_min is not None:
        if grid != "logsnr":
            raise ValueError(f"log_snr_min applies to grid='logsnr' only, got grid={grid!r}")
        lo = sigma_range(schedule)[0]
        check_scalar("log_snr_min", log_snr_min, -math.inf, -2 * math.log(lo), low_inclusive=False,
                     high_inclusive=False)
    if grid == "karras":
        return karras_sigmas(steps, *sigma_range(schedule), rho=rho)
    if grid == "logsnr":
        lo, hi = sigma_range(schedule)
        if log_snr_min is not None:
            hi = min(hi, math.exp(-log_snr_min / 2))  # lambda = -2 log sigma~
        log_sigmas = torch.linspace(math.log(hi), math.log(lo), steps + 1, dtype=torch.float64)[:-1]
        return torch.cat([torch.exp(log_sigmas), zero])
    t_max = float(schedule.times[-1]) if isinstance(schedule, DiscreteSchedule) else 1.0
    t = torch.linspace(t_max, 0.0, steps + 1, dtype=torch.float64)[:-1]
    return torch.cat([sigma_tilde(schedule, t), zero])


def discrete_sigmas(schedule: DiscreteSchedule, indices: Tensor, final: float = 0.0) -> Tensor:
    """The sigma~ grid of chain indices (decreasing), sigma~_i = sqrt((1 - alpha_bar_i) / alpha_bar_i), then
    ``final`` (0: to clean data): lets Euler / Heun / DPM-Solver++ walk the same steps as DDIM or diffusers'
    discrete schedulers (``discrete_sigmas(s, spaced_indices(s.N, K, 'trailing'))``). Returns (K + 1,) float64."""
    schedule = check_discrete(schedule)
    i = schedule.check_index(torch.as_tensor(indices))
    ab = schedule.alpha_bars[i.cpu()]
    final = check_scalar("final", final, 0.0, math.inf)
    return torch.cat([torch.sqrt((1 - ab) / ab), torch.tensor([final], dtype=torch.float64)])


def check_sigma_grid(schedule: NoiseSchedule, sigmas: Tensor) -> tuple[list[float], list[float]]:
    """Validate a sigma~ grid: finite, strictly decreasing, positive (only the last may be 0), inside the
    schedule's range. Returns (sigma~_k, t_k) as lists of floats; the time of a final sigma~ = 0 is 0."""
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    s = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    if s.dim() != 1 or s.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D grid of at least two noise levels (sigma_grid), got shape "
                         f"{tuple(s.shape)}")
    check_finite("sigmas", s)
    if not bool((s.diff() < 0).all()) or float(s[:-1].min()) <= 0 or float(s[-1]) < 0:
        raise ValueError("sigmas must be strictly decreasing and positive (only the last may be 0)")
    times = torch.zeros_like(s)
    times[s > 0] = time_of_sigma(schedule, s[s > 0])
    return s.tolist(), times.tolist()


# --- times ----------------------------------------------------------------------------------------------------

def time_grid(steps: int, t_min: float, t_max: float = 1.0) -> Tensor:
    """The steps + 1 times t_0 = t_max > t_1 > ... > t_steps = t_min, evenly spaced (float64), as in Song et al.

    t_min > 0 for VP-type schedules (sigma(0) = 0 makes the score infinite there; Song et al. use 1e-3 or 1e-5);
    0 is fine for VE, whose sigma(0) = sigma_min > 0.
    """
    steps = check_int("steps", steps, 1)
    t_min = check_scalar("t_min", t_min, 0.0, 1.0)
    t_max = check_scalar("t_max", t_max, 0.0, 1.0)
    if t_min >= t_max:
        raise ValueError(f"t_min must be smaller than t_max, got t_min={t_min} and t_max={t_max}")
    return torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)


def check_time_grid(schedule: NoiseSchedule, times: Tensor) -> list[float]:
    """Validate a time grid (``time_grid``): at least two times in [0, 1], strictly decreasing, with
    sigma(t) > 0 at every point (the score is infinite where sigma = 0). Returns the times as floats."""
    t = torch.as_tensor(times, dtype=torch.float64).cpu()
    if t.dim() != 1 or t.numel() < 2:
        raise ValueError(f"times must be a 1-D grid of at least two times (time_grid), got shape {tuple(t.shape)}")
    t = as_time(t)
    if not bool((t.diff() < 0).all()):
        raise ValueError("times must be strictly decreasing (from t_max down to t_min)")
    if float(schedule.sigma(t[-1])) <= 0.0:
        raise ValueError(f"t_min must be > 0 for {schedule!r} (the last of the times): sigma(t_min) = 0 there and "
                         f"the score is infinite (try t_min = 1e-3)")
    return t.tolist()


def check_sigma_ladder(schedule: VE, sigmas: Tensor) -> tuple[list[float], list[float]]:
    """Validate a noise ladder (``geometric_sigmas``): finite, positive, strictly decreasing, inside the VE
    schedule's range. Returns (sigma_l, t_l) as lists of floats."""
    if not isinstance(schedule, VE):
        raise ValueError(
            f"schedule must be a VE schedule (NCSN's noise process), got {type(schedule).__name__}"
        )
    s = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    if s.dim() != 1 or s.numel() < 1:
        raise ValueError(f"sigmas must be a non-empty 1-D tensor, got shape {tuple(s.shape)}")
    check_finite("sigmas", s)
    if float(s.min()) <= 0 or not bool((s.diff() < 0).all()):
        raise ValueError("sigmas must be positive and strictly decreasing (sigma_1 > ... > sigma_L)")
    return s.tolist(), schedule.time_of_sigma(s).tolist()
