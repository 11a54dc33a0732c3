"""Noise schedules: how much signal and how much noise at each time.

The whole book uses one forward process (Kingma et al. 2021, eq. 1; Karras et al. 2022, eq. 7 with s = alpha):

    x_t = alpha(t) * x0 + sigma(t) * eps,    eps ~ N(0, I),    t in [0, 1].

``alpha`` and ``sigma`` are standard deviations (scales), never variances. A *variance-preserving* (VP) process
has alpha^2 + sigma^2 = 1. Every schedule is computed in float64 and cast to the data's dtype only when used
(``coefficients``), so that 1 - alpha_bar near t = 0 keeps its digits.

Two families live here:

* ``DiscreteSchedule``: DDPM's Markov chain with N steps, beta_1 ... beta_N (Ho et al. 2020, eq. 2).
  Index i in {0, ..., N} sits at time t_i = i / N, and alpha(t_i)^2 = alpha_bar_i = prod_{j<=i} (1 - beta_j).
  Between grid points log(alpha_bar) is interpolated linearly, so a continuous-time sampler can use it too.
  ``linear_schedule`` (Ho et al. 2020) and ``cosine_schedule`` (Nichol & Dhariwal 2021, eq. 17) build one.
* ``VPLinear`` and ``VPCosine``: the continuous-time VP view (Song et al. 2021, eq. 11 and 29), with
  beta(t) linear from beta_min = 0.1 to beta_max = 20, or the cosine alpha_bar(t) without discretisation;
  ``SubVP`` (Song et al. 2021, eq. 16) and the variance-exploding ``VE`` of NCSN (alpha = 1, geometric sigma).
"""

from __future__ import annotations

import math

import torch

from .checks import check_batch_time, check_finite, check_int, check_scalar, check_time

Tensor = torch.Tensor


def as_time(t: Tensor | float) -> Tensor:
    """Any time (float, list, tensor) as a float64 tensor, validated to lie in [0, 1]."""
    t = torch.as_tensor(t, dtype=torch.float64)
    check_time("t", t)
    return t


def broadcast_to(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-example coefficient (B,) or scalar to broadcast against x (B, ...), in x's dtype/device."""
    coef = coef.to(device=x.device, dtype=x.dtype)
    if coef.dim() == 0:
        return coef
    return coef.reshape(coef.shape[0], *([1] * (x.dim() - 1)))


class NoiseSchedule:
    """Base class: subclasses give ``alpha(t)`` and ``sigma(t)`` as float64 tensors for t in [0, 1]."""

    variance_preserving: bool = True

    def alpha(self, t: Tensor | float) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor | float) -> Tensor:
        raise NotImplementedError

    def log_snr(self, t: Tensor | float) -> Tensor:
        """lambda(t) = log(alpha^2 / sigma^2), the log signal-to-noise ratio (Kingma et al. 2021)."""
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def snr(self, t: Tensor | float) -> Tensor:
        """SNR(t) = alpha(t)^2 / sigma(t)^2."""
        return self.alpha(t) ** 2 / self.sigma(t) ** 2

    def coefficients(self, t: Tensor | float, x: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha(t), sigma(t)) shaped to broadcast against x (B, ...) and cast to x's dtype and device.

        t is one time for the whole batch (a scalar or shape (1,)) or one per row of x (shape (B,)).
        """
        t = as_time(t)
        check_batch_time("x", x, "t", t)
        return broadcast_to(self.alpha(t), x), broadcast_to(self.sigma(t), x)

    def at(self, times: Tensor) -> tuple[list[float], list[float]]:
        """alpha(t_k) and sigma(t_k) at every point of a sampler's time grid, as Python floats (float64).

        A sampler knows its grid before it starts, so it evaluates the schedule here once; each step then costs
        the network call and a few tensor operations, and no schedule arithmetic of its own.
        """
        times = as_time(times)
        return self.alpha(times).tolist(), self.sigma(times).tolist()

    def time_of_log_snr(self, lam: Tensor) -> Tensor:
        """The time t in [0, 1] with log_snr(t) = lam (float64), for lam inside the schedule's range.

        lambda(t) decreases in t, so 64 bisection steps pin t to float64 precision for any schedule. Subclasses
        with a closed-form inverse override this (DiscreteSchedule, VPLinear, VPCosine, VE).
        """
        lam = torch.as_tensor(lam, dtype=torch.float64)
        lo, hi = torch.zeros_like(lam), torch.ones_like(lam)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam  # lambda(mid) too large: mid is too early
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)


class DiscreteSchedule(NoiseSchedule):
    """DDPM's discrete chain q(x_i | x_{i-1}) = N(sqrt(1 - beta_i) x_{i-1}, beta_i I), i = 1..N (Ho et al. eq. 2).

    Attributes (all float64, index 0 is the clean data, so ``alpha_bars[0] = 1``):
        betas:      (N + 1,)  beta_i, with betas[0] = 0
        alphas:     (N + 1,)  alpha_i = 1 - beta_i   (DDPM's alpha: a *variance* ratio, not our alpha(t))
        alpha_bars: (N + 1,)  alpha_bar_i = prod_{j <= i} alpha_j = alpha(t_i)^2
        times:      (N + 1,)  t_i, the continuous time each index is shown to the network at (i / N by default)

    ``times`` differs from i / N only for a respaced chain (``respace``), whose steps jump over indices of a
    longer chain but must still tell the network the original time.
    """

    def __init__(self, betas: Tensor, times: Tensor | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        check_finite("betas", betas)
        if float(betas.min()) <= 0.0 or float(betas.max()) >= 1.0:  # beta = 1 would make alpha_bar 0: no signal
            raise ValueError(f"betas must lie in (0, 1), got values in [{float(betas.min()):.4g}, "
                             f"{float(betas.max()):.4g}]")
        self.N = betas.numel()
        self.betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas])  # (N + 1,)
        self.alphas = 1.0 - self.betas  # (N + 1,)
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)  # (N + 1,)
        if times is None:
            times = torch.arange(self.N + 1, dtype=torch.float64) / self.N
        times = torch.as_tensor(times, dtype=torch.float64)
        if times.shape != (self.N + 1,) or float(times[0]) != 0.0 or not bool((times.diff() > 0).all()) \
                or float(times[-1]) > 1.0:
            raise ValueError("times must be increasing with shape (N + 1,), start at 0 and end at or before 1")
        self.times = times

    def __repr__(self) -> str:
        return f"DiscreteSchedule(N={self.N}, beta_1={float(self.betas[1]):.3g}, beta_N={float(self.betas[-1]):.3g})"

    # --- the continuous view: alpha(t), sigma(t) -------------------------------------------------------------
    def alpha_bar(self, t: Tensor | float) -> Tensor:
        """alpha_bar at continuous t: exact on the grid t_i, log-linear in between; t past t_N is clamped to it."""
        t = as_time(t)
        s = torch.clamp(t, max=float(self.times[-1]))
        hi = torch.searchsorted(self.times, s.reshape(-1)).clamp(1, self.N).reshape(s.shape)  # right grid index
        lo = hi - 1
        w = (s - self.times[lo]) / (self.times[hi] - self.times[lo])  # in [0, 1]
        log_ab = torch.log(self.alpha_bars)
        return torch.exp((1 - w) * log_ab[lo] + w * log_ab[hi])

    def alpha(self, t: Tensor | float) -> Tensor:
        return torch.sqrt(self.alpha_bar(t))

    def sigma(self, t: Tensor | float) -> Tensor:
        return torch.sqrt(-torch.expm1(torch.log(self.alpha_bar(t))))  # sqrt(1 - alpha_bar), accurate near 0

    def time_of_log_snr(self, lam: Tensor) -> Tensor:
        """Exact inverse of ``log_snr``: no iteration, because log alpha_bar is piecewise linear in t.

        alpha_bar = sigmoid(lambda), so L = log alpha_bar = -log(1 + e^-lambda). Find the grid segment
        [t_lo, t_hi] whose log alpha_bar values bracket L (a binary search in the monotone table), then solve
        the linear interpolation for t. lam past the last grid point gives its time t_N.
        """
        lam = torch.as_tensor(lam, dtype=torch.float64)
        L = -torch.nn.functional.softplus(-lam)  # log alpha_bar, accurate for large lambda (t near 0)
        log_ab = torch.log(self.alpha_bars)  # (N + 1,) decreasing from 0
        hi = torch.searchsorted(-log_ab, -L.reshape(-1)).clamp(1, self.N).reshape(L.shape)  # right grid index
        lo = hi - 1
        w = ((L - log_ab[lo]) / (log_ab[hi] - log_ab[lo])).clamp(0.0, 1.0)
        return self.times[lo] + w * (self.times[hi] - self.times[lo])

    # --- the discrete chain ----------------------------------------------------------------------------------
    def check_index(self, i: Tensor, low: int = 1) -> Tensor:
        """Validate an integer step index tensor with values in [low, N]."""
        i = torch.as_tensor(i)
        if i.is_floating_point() or i.dtype == torch.bool:
            raise ValueError(f"i must be an integer step index tensor, got dtype {i.dtype}")
        if i.numel() and (int(i.min()) < low or int(i.max()) > self.N):
            raise ValueError(f"i must lie in [{low}, {self.N}], got values in [{int(i.min())}, {int(i.max())}]")
        return i.long()

    def posterior_variance(self, i: Tensor) -> Tensor:
        """beta_tilde_i = (1 - alpha_bar_{i-1}) / (1 - alpha_bar_i) * beta_i  (Ho et al. eq. 7); 0 at i = 1."""
        i = self.check_index(i).cpu()
        return (1 - self.alpha_bars[i - 1]) / (1 - self.alpha_bars[i]) * self.betas[i]

    def posterior_coefficients(self, i: Tensor) -> tuple[Tensor, Tensor]:
        """The two weights of mu_tilde_i(x_i, x0) = c0 * x0 + ci * x_i  (Ho et al. eq. 7)."""
        i = self.check_index(i).cpu()
        ab, ab_prev = self.alpha_bars[i], self.alpha_bars[i - 1]
        c0 = torch.sqrt(ab_prev) * self.betas[i] / (1 - ab)
        ci = torch.sqrt(self.alphas[i]) * (1 - ab_prev) / (1 - ab)
        return c0, ci

    def respace(self, indices: Tensor | list[int]) -> "DiscreteSchedule":
        """The chain that visits only ``indices`` (increasing, within 1..N): K steps instead of N.

        Its betas are chosen so its alpha_bars equal the original's at the kept indices (Nichol & Dhariwal 2021,
        Sec. 4): beta'_k = 1 - alpha_bar_{tau_k} / alpha_bar_{tau_{k-1}}, tau_0 = 0. Times are kept too. All N
        indices give the chain itself.
        """
        tau = torch.as_tensor(indices, dtype=torch.long)
        if tau.dim() != 1 or tau.numel() < 1 or not bool((tau.diff() > 0).all()):
            raise ValueError("indices must be a non-empty, strictly increasing 1-D list of step indices")
        self.check_index(tau)
        if tau.numel() == self.N:  # every index, 1..N: the chain itself (recomputed betas would differ by rounding)
            return self
        tau = torch.cat([torch.zeros(1, dtype=torch.long), tau])
        ab = self.alpha_bars[tau]
        return DiscreteSchedule(1 - ab[1:] / ab[:-1], times=self.times[tau])

    def evenly_spaced(self, steps: int) -> "DiscreteSchedule":
        """``respace`` onto K = steps indices round(k N / K), k = 1..K: always ends at i = N and starts near 0."""
        steps = check_int("steps", steps, 1, self.N)
        k = torch.arange(1, steps + 1, dtype=torch.float64)
        return self.respace(torch.round(k * self.N / steps).long())


def check_discrete(schedule) -> DiscreteSchedule:
    """Raise unless ``schedule`` is a DiscreteSchedule: DDPM, DDIM and PLMS step between indices of DDPM's chain."""
    if not isinstance(schedule, DiscreteSchedule):
        raise ValueError(f"schedule must be a DiscreteSchedule (DDPM's chain), got {type(schedule).__name__}")
    return schedule


def linear_schedule(N: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteSchedule:
    """Ho et al. (2020, Sec. 4): beta_i linear from beta_1 = 1e-4 to beta_N = 0.02 over N = 1000 steps."""
    N = check_int("N", N, 1)
    beta_start = check_scalar("beta_start", beta_start, 0.0, 1.0, low_inclusive=False)
    beta_end = check_scalar("beta_end", beta_end, beta_start, 1.0, high_inclusive=False)
    return DiscreteSchedule(torch.linspace(beta_start, beta_end, N, dtype=torch.float64))


def cosine_alpha_bar(t: Tensor, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal (2021, eq. 17): alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t + s) / (1 + s) * pi / 2)."""
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


def cosine_schedule(N: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> DiscreteSchedule:
    """Nichol & Dhariwal (2021, eq. 17): beta_i = min(1 - alpha_bar(i/N) / alpha_bar((i-1)/N), 0.999).

    The clip at 0.999 stops the last step from being a pure-noise singularity (alpha_bar(1) = 0).
    """
    N = check_int("N", N, 1)
    s = check_scalar("s", s, 0.0, 1.0)
    max_beta = check_scalar("max_beta", max_beta, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    t = torch.arange(N + 1, dtype=torch.float64) / N
    ab = cosine_alpha_bar(t, s)
    return DiscreteSchedule(torch.clamp(1 - ab[1:] / ab[:-1], max=max_beta))


class VPLinear(NoiseSchedule):
    """Continuous VP process of Song et al. (2021, eq. 11) with beta(t) = beta_min + t (beta_max - beta_min).

    alpha(t) = exp(-t^2 (beta_max - beta_min) / 4 - t beta_min / 2)   (eq. 29),   sigma(t) = sqrt(1 - alpha^2).
    DDPM's linear chain is its discretisation: beta_i ~ beta(t_i) / N with beta_min = N * 1e-4, beta_max = N * 0.02.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min = check_scalar("beta_min", beta_min, 0.0, math.inf, low_inclusive=False)
        self.beta_max = check_scalar("beta_max", beta_max, self.beta_min, math.inf)

    def __repr__(self) -> str:
        return f"VPLinear(beta_min={self.beta_min}, beta_max={self.beta_max})"

    def beta(self, t: Tensor | float) -> Tensor:
        """The instantaneous noise rate beta(t) of the VP SDE dx = -beta x / 2 dt + sqrt(beta) dw."""
        return self.beta_min + as_time(t) * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Tensor | float) -> Tensor:
        t = as_time(t)
        return -0.25 * t ** 2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: Tensor | float) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensor | float) -> Tensor:
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def time_of_log_snr(self, lam: Tensor) -> Tensor:
        """Closed form: log alpha = -log(1 + e^-lambda) / 2 =: -c is a quadratic in t, so
        t = 2c / (beta_min / 2 + sqrt(beta_min^2 / 4 + c (beta_max - beta_min)))  (the root without cancellation)."""
        c = 0.5 * torch.nn.functional.softplus(-torch.as_tensor(lam, dtype=torch.float64))
        b = 0.5 * self.beta_min
        return (2 * c / (b + torch.sqrt(b ** 2 + c * (self.beta_max - self.beta_min)))).clamp(0.0, 1.0)


class VPCosine(NoiseSchedule):
    """Continuous cosine VP process: alpha(t)^2 = alpha_bar(t) of Nichol & Dhariwal (2021, eq. 17), no clipping.

    alpha(1) = 0 exactly, so the log-SNR is -inf at t = 1: samplers start just below it.
    """

    def __init__(self, s: float = 0.008):
        self.s = check_scalar("s", s, 0.0, 1.0)

    def __repr__(self) -> str:
        return f"VPCosine(s={self.s})"

    def alpha(self, t: Tensor | float) -> Tensor:
        return torch.sqrt(torch.clamp(cosine_alpha_bar(as_time(t), self.s), min=0.0))

    def sigma(self, t: Tensor | float) -> Tensor:
        return torch.sqrt(torch.clamp(1 - cosine_alpha_bar(as_time(t), self.s), min=0.0))

    def time_of_log_snr(self, lam: Tensor) -> Tensor:
        """Closed form: with u = (t + s) / (1 + s) pi / 2, alpha_bar = cos^2 u / cos^2 u_0 = 1 / (1 + e^-lambda)
        gives tan^2 u = e^-lambda + tan^2 u_0 (1 + e^-lambda); t = u (1 + s) 2 / pi - s (atan: well conditioned)."""
        e = torch.exp(-torch.as_tensor(lam, dtype=torch.float64))  # sigma~^2
        tan0 = math.tan(self.s / (1 + self.s) * math.pi / 2)
        u = torch.atan(torch.sqrt(e + tan0 ** 2 * (1 + e)))
        return (u * (1 + self.s) * 2 / math.pi - self.s).clamp(0.0, 1.0)


class SubVP(NoiseSchedule):
    """The sub-VP process of Song et al. (2021, eq. 16): VP's mean, but a variance that stays below VP's.

    alpha(t) is VPLinear's, and sigma(t) = 1 - alpha(t)^2 (so sigma^2 = (1 - e^{-int beta})^2 <= 1 - alpha^2).
    """

    variance_preserving = False

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.vp = VPLinear(beta_min, beta_max)
        self.beta_min, self.beta_max = self.vp.beta_min, self.vp.beta_max

    def __repr__(self) -> str:
        return f"SubVP(beta_min={self.beta_min}, beta_max={self.beta_max})"

    def beta(self, t: Tensor | float) -> Tensor:
        return self.vp.beta(t)

    def alpha(self, t: Tensor | float) -> Tensor:
        return self.vp.alpha(t)

    def sigma(self, t: Tensor | float) -> Tensor:
        return -torch.expm1(2 * self.vp.log_alpha(t))  # 1 - alpha^2, accurate near t = 0


class VE(NoiseSchedule):
    """The variance-exploding process of NCSN (Song & Ermon 2019) in continuous time (Song et al. 2021, eq. 9).

    alpha(t) = 1 and sigma(t) = sigma_min (sigma_max / sigma_min)^t: a geometric sequence of noise levels, so
    log sigma is linear in t. Note sigma(0) = sigma_min > 0 (the data are never seen noise-free), and sigma_max
    should be about the largest distance between two training points (Song & Ermon 2020, technique 1).
    """

    variance_preserving = False

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self.sigma_min = check_scalar("sigma_min", sigma_min, 0.0, math.inf, low_inclusive=False)
        self.sigma_max = check_scalar("sigma_max", sigma_max, self.sigma_min, math.inf, low_inclusive=False)

    def __repr__(self) -> str:
        return f"VE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"

    def alpha(self, t: Tensor | float) -> Tensor:
        return torch.ones_like(as_time(t))

    def sigma(self, t: Tensor | float) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** as_time(t)

    def time_of_sigma(self, sigma: Tensor | float) -> Tensor:
        """The inverse of sigma(t): t = log(sigma / sigma_min) / log(sigma_max / sigma_min), sigma in range."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        check_finite("sigma", sigma)
        if sigma.numel() and (float(sigma.min()) < self.sigma_min * (1 - 1e-12)
                              or float(sigma.max()) > self.sigma_max * (1 + 1e-12)):
            raise ValueError(f"sigma must lie in [{self.sigma_min}, {self.sigma_max}] (the schedule's range), got "
                             f"values in [{float(sigma.min()):.4g}, {float(sigma.max()):.4g}]")
        t = torch.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)
        return t.clamp(0.0, 1.0)

    def time_of_log_snr(self, lam: Tensor) -> Tensor:
        """lambda = -2 log sigma here (alpha = 1): ``time_of_sigma`` of sigma = exp(-lambda / 2)."""
        return self.time_of_sigma(torch.exp(-0.5 * torch.as_tensor(lam, dtype=torch.float64)))
