"""Closed-form test problems and 2-D toy data.

A Gaussian mixture p0(x0) = sum_k w_k N(x0; mu_k, Sigma_k) stays a Gaussian mixture under the forward process:
x_t = alpha x0 + sigma eps gives

    p_t(x_t) = sum_k w_k N(x_t; alpha mu_k, alpha^2 Sigma_k + sigma^2 I).                              (1)

So its log-density, score and ideal denoiser E[x0 | x_t] are exact at every t. With Sigma_k = U_k diag(lam_k) U_k^T
and C_k = alpha^2 Sigma_k + sigma^2 I, per component

    grad log N_k = -C_k^{-1} (x_t - alpha mu_k),
    E[x0 | x_t, k] = mu_k + alpha Sigma_k C_k^{-1} (x_t - alpha mu_k)       (Gaussian conditioning),   (2)

and the mixture weights them by the posterior responsibilities r_k(x_t) = w_k N_k / sum_j w_j N_j. Tweedie's
formula E[x0 | x_t] = (x_t + sigma^2 grad log p_t(x_t)) / alpha ties (1) and (2) together; the tests check it.

``ExactModel`` wraps such a mixture as a perfect network ``net(x, t, cond=None)`` that plugs into every sampler,
so samplers can be tested without training anything, and chapters can show what a perfect model would do.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .checks import check_choice, check_finite, check_int, check_scalar
from .predictions import PREDICTIONS, convert
from .schedules import NoiseSchedule, as_time

Tensor = torch.Tensor


class GaussianMixture:
    """sum_k w_k N(mu_k, Sigma_k) in D dimensions, computed in float64.

    Args:
        means:   (K, D) component means mu_k.
        covs:    (K, D, D) covariances, or (K,) isotropic standard deviations s_k (Sigma_k = s_k^2 I),
                 or a single float for all components.
        weights: (K,) positive mixture weights (normalised here); uniform if None.
    """

    def __init__(self, means: Tensor, covs: Tensor | float = 1.0, weights: Tensor | None = None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        check_finite("means", means)
        K, D = means.shape
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.dim() <= 1:  # isotropic standard deviations
            stds = covs.expand(K) if covs.dim() == 0 else covs
            if stds.shape != (K,) or not bool((stds > 0).all()):
                raise ValueError(f"covs as standard deviations must be positive with shape ({K},), "
                                 f"got {tuple(covs.shape)}")
            covs = stds[:, None, None] ** 2 * torch.eye(D, dtype=torch.float64)
        if covs.shape != (K, D, D):
            raise ValueError(f"covs must have shape ({K}, {D}, {D}), got {tuple(covs.shape)}")
        check_finite("covs", covs)
        if not torch.allclose(covs, covs.transpose(1, 2)):
            raise ValueError("covs must be symmetric")
        lam, U = torch.linalg.eigh(covs)  # Sigma_k = U_k diag(lam_k) U_k^T;  lam (K, D), U (K, D, D)
        if float(lam.min()) <= 0:
            raise ValueError("covs must be positive definite")
        if weights is None:
            weights = torch.ones(K, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (K,) or not bool((weights > 0).all()) or not bool(torch.isfinite(weights).all()):
            raise ValueError(f"weights must be positive and finite with shape ({K},), got {weights}")
        self.means, self.covs, self.weights = means, covs, weights / weights.sum()
        self.lam, self.U = lam, U
        self.K, self.D = K, D

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.K}, D={self.D})"

    # --- moments and samples ---------------------------------------------------------------------------------
    def mean(self) -> Tensor:
        """E[x0] = sum_k w_k mu_k, shape (D,)."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Cov[x0] = sum_k w_k (Sigma_k + mu_k mu_k^T) - m m^T, shape (D, D)."""
        m = self.mean()
        second = torch.einsum("k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :])
        return second - torch.outer(m, m)

    def sample(self, n: int, generator: torch.Generator | None = None,
               component: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """n exact samples x0 (n, D) and their component ids (n,); ``component`` fixes the ids if given."""
        n = check_int("n", n, 1)
        if component is None:
            component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        component = self._check_component(torch.as_tensor(component), n)
        z = torch.randn(n, self.D, generator=generator, dtype=torch.float64)
        # x = mu_k + U_k diag(sqrt(lam_k)) z  has covariance U diag(lam) U^T = Sigma_k
        x = self.means[component] + torch.einsum("nij,nj->ni", self.U[component], self.lam[component].sqrt() * z)
        return x, component

    def _check_component(self, component: Tensor, n: int) -> Tensor:
        if component.shape != (n,) or component.is_floating_point():
            raise ValueError(f"component (class ids) must be an integer tensor of shape ({n},)")
        if n and (int(component.min()) < 0 or int(component.max()) >= self.K):
            raise ValueError(f"component (class ids) must lie in [0, {self.K - 1}]")
        return component.long().cpu()

    # --- the noised marginal p_t, eq. (1) ---------------------------------------------------------------------
    def _per_component(self, x: Tensor, alpha: Tensor, sigma: Tensor):
        """d = U_k^T (x - alpha mu_k) and c = alpha^2 lam_k + sigma^2 (eigenvalues of C_k), per row and k."""
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.dim() != 2 or x.shape[1] != self.D:
            raise ValueError(f"x must have shape (B, {self.D}), got {tuple(x.shape)}")
        check_finite("x", x)
        a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1, 1, 1)  # (B or 1, 1, 1)
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1)
        if a.shape[0] not in (1, x.shape[0]) or s.shape[0] not in (1, x.shape[0]):
            raise ValueError("alpha and sigma must be scalars or have one entry per row of x")
        diff = x[:, None, :] - a * self.means[None]  # (B, K, D)
        d = torch.einsum("kji,bkj->bki", self.U, diff)  # U_k^T diff, (B, K, D)
        c = a ** 2 * self.lam[None] + s ** 2  # (B, K, D)
        return d, c, a

    def _log_components(self, d: Tensor, c: Tensor) -> Tensor:
        """log w_k + log N(x; alpha mu_k, C_k), shape (B, K)."""
        return (torch.log(self.weights)[None] - 0.5 * (d ** 2 / c).sum(-1)
                - 0.5 * torch.log(2 * math.pi * c).sum(-1))

    def log_prob(self, x: Tensor, alpha: Tensor | float = 1.0, sigma: Tensor | float = 0.0) -> Tensor:
        """log p_t(x) for the marginal at (alpha, sigma), shape (B,); the defaults give the data density p0."""
        d, c, _ = self._per_component(x, alpha, sigma)
        return torch.logsumexp(self._log_components(d, c), dim=1)

    def responsibilities(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """Posterior component probabilities r_k(x_t) = p(k | x_t), shape (B, K)."""
        d, c, _ = self._per_component(x, alpha, sigma)
        return torch.softmax(self._log_components(d, c), dim=1)

    def score(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float,
              component: Tensor | None = None) -> Tensor:
        """grad_x log p_t(x), shape (B, D); with ``component`` the score of that component alone."""
        d, c, _ = self._per_component(x, alpha, sigma)
        per_k = -torch.einsum("kij,bkj->bki", self.U, d / c)  # -C_k^{-1} (x - alpha mu_k), (B, K, D)
        return self._combine(per_k, d, c, component)

    def denoise(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float,
                component: Tensor | None = None) -> Tensor:
        """The ideal denoiser E[x0 | x_t = x], eq. (2), shape (B, D); with ``component``, given that component."""
        d, c, a = self._per_component(x, alpha, sigma)
        shift = torch.einsum("kij,bkj->bki", self.U, a * self.lam[None] * d / c)  # alpha Sigma_k C_k^{-1} diff
        return self._combine(self.means[None] + shift, d, c, component)

    def _combine(self, per_k: Tensor, d: Tensor, c: Tensor, component: Tensor | None) -> Tensor:
        if component is None:
            r = torch.softmax(self._log_components(d, c), dim=1)  # (B, K)
            return torch.einsum("bk,bki->bi", r, per_k)
        component = self._check_component(torch.as_tensor(component), per_k.shape[0])
        return per_k[torch.arange(per_k.shape[0]), component]

    def marginal(self, alpha: float, sigma: float) -> "GaussianMixture":
        """p_t itself as a GaussianMixture, eq. (1), for scalar alpha and sigma."""
        a, s = float(alpha), float(sigma)
        covs = a ** 2 * self.covs + s ** 2 * torch.eye(self.D, dtype=torch.float64)
        return GaussianMixture(a * self.means, covs, self.weights)


def gaussian(mean: Tensor, cov: Tensor | float = 1.0) -> GaussianMixture:
    """A single Gaussian N(mean, cov) as a one-component mixture (cov: (D, D) matrix or a standard deviation)."""
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    return GaussianMixture(mean, cov[None] if cov.dim() == 2 else cov.reshape(1))


class ExactModel(nn.Module):
    """A perfect 'network' for a GaussianMixture: ``net(x, t, cond=None)`` returns the exact prediction.

    It predicts ``prediction`` (eps, x0, v or score) under ``schedule``; ``cond`` (B,) picks a component, giving
    the exact *conditional* model p(x0 | k); the id K (the null label) gives the unconditional model in that row. Output has x's dtype and device; the maths runs in float64 on the CPU.
    The output is differentiable with respect to x (autograd flows through the closed form), so divergences and
    Jacobians of a perfect model (``diffedu.sde.log_likelihood``) are exact too.
    """

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule, prediction: str = "eps"):
        super().__init__()
        self.mixture, self.schedule = mixture, schedule
        self.prediction = check_choice("prediction", prediction, PREDICTIONS)

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor | None = None
    ) -> Tensor:
        t = as_time(t.detach().cpu() if torch.is_tensor(t) else t).expand(x.shape[0])  # (B,)
        if bool((t == t[0]).all()):
            t = t[:1]  # one time for the whole batch: compute the schedule once
        x64 = x.cpu().to(torch.float64)  # (B, D); not detached, so gradients reach x
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)  # (B,) or (1,) each
        null = None if cond is None else torch.as_tensor(cond).cpu() == self.mixture.K  # (B,): the null label K
        if null is None or bool(null.all()):
            x0 = self.mixture.denoise(x64, alpha, sigma)  # (B, D), unconditional
        else:
            cond = torch.as_tensor(cond).cpu()
            x0 = self.mixture.denoise(x64, alpha, sigma, component=torch.where(null, 0, cond))  # (B, D)
            if bool(null.any()):  # rows with the null label (classifier-free guidance) stay unconditional
                x0 = torch.where(null[:, None], self.mixture.denoise(x64, alpha, sigma), x0)
        out = convert(x0, "x0", self.prediction, x64, alpha[:, None], sigma[:, None])
        return out.to(device=x.device, dtype=x.dtype)


# --- 2-D toy data --------------------------------------------------------------------------------------------

TOY_2D = ("moons", "swiss_roll", "8gaussians", "checkerboard")


def eight_gaussians(radius: float = 2.0, std: float = 0.15) -> GaussianMixture:
    """Eight equal Gaussians on a circle: the 2-D closed-form problem used across the book."""
    radius = check_scalar("radius", radius, 0.0, math.inf, low_inclusive=False)
    std = check_scalar("std", std, 0.0, math.inf, low_inclusive=False)
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)  # (8, 2)
    return GaussianMixture(means, std)


def sample_2d(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n points (n, 2), float32, of a 2-D toy distribution, scaled to roughly unit spread around the origin.

    moons: two interleaved half circles; swiss_roll: a 2-D spiral; 8gaussians: ``eight_gaussians()``;
    checkerboard: uniform on the dark squares of a 4 x 4 board.
    """
    check_choice("name", name, TOY_2D)
    n = check_int("n", n, 1)
    g = generator
    if name == "8gaussians":
        return eight_gaussians().sample(n, g)[0].float()
    if name == "moons":
        upper = torch.rand(n, generator=g) < 0.5
        angle = torch.rand(n, generator=g) * math.pi
        x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
        y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
        pts = torch.stack([x - 0.5, y - 0.25], 1) + 0.06 * torch.randn(n, 2, generator=g)
        return (pts * 1.6).float()
    if name == "swiss_roll":
        u = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))  # angle in [1.5 pi, 4.5 pi]
        pts = torch.stack([u * torch.cos(u), u * torch.sin(u)], 1) / 6.0
        return (pts + 0.05 * torch.randn(n, 2, generator=g)).float()
    # checkerboard: pick a dark square uniformly, then a uniform point in it
    col = torch.randint(0, 4, (n,), generator=g)
    row = 2 * torch.randint(0, 2, (n,), generator=g) + (col % 2)  # dark squares: row + col even
    pts = torch.stack([col, row], 1).double() + torch.rand(n, 2, generator=g, dtype=torch.float64)
    return (pts - 2.0).float()
