"""Closed-form data on the sphere and the torus, exact at every time of Brownian motion.

* ``VonMisesFisherMixture`` on S^2: sum_k w_k vMF(mu_k, kappa_k), vMF(x) = kappa / (4 pi sinh kappa) e^{kappa <mu, x>}.
  Exact samples (Wood 1994) and density. Brownian motion acts on each component's Legendre coefficients:
  a vMF is sum_l (2l+1)/(4 pi) rho_l(kappa) P_l(<mu, x>) with rho_l = I_{l+1/2}(kappa) / I_{1/2}(kappa), and the heat
  semigroup multiplies rho_l by e^{-l(l+1)t/2}, so p_t, its score and log p_t are exact series.
* ``WrappedNormalMixture`` on T^d: a Gaussian mixture wrapped around the torus, i.e. a Gaussian mixture over the
  lattice of images mu_k + 2 pi n (a ``diffedu.toy.GaussianMixture``, with as many images as float64 needs).
  Brownian motion adds t I to every covariance.
* ``ExactManifoldModel``: the exact score of either, as a model ``net(x, t)`` (prediction 'score'): the perfect
  network the samplers and the likelihood are tested with.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from scipy.special import ive
from torch import nn

from .checks import check_finite, check_int
from .heat_kernel import sphere_terms, torus_terms, zonal_series
from .manifolds import Sphere, Torus, wrap
from .toy import GaussianMixture

Tensor = torch.Tensor


def _weights(weights: Tensor | None, K: int) -> Tensor:
    w = torch.ones(K, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (K,) or not bool((w > 0).all()) or not bool(torch.isfinite(w).all()):
        raise ValueError(f"weights must be positive and finite with shape ({K},), got {w}")
    return w / w.sum()


def _check_time(t: Tensor | float, B: int) -> Tensor:
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
    if t.shape[0] not in (1, B):
        raise ValueError(f"t must be a scalar or have shape ({B},), got {tuple(t.shape)}")
    check_finite("t", t)
    if float(t.min()) < 0:
        raise ValueError(f"t must be >= 0, got values down to {float(t.min()):.3g}")
    return t


class VonMisesFisherMixture:
    """sum_k w_k vMF(mu_k, kappa_k) on the sphere S^2; means (K, 3) unit vectors, kappas (K,) > 0."""

    manifold = Sphere()

    def __init__(self, means: Tensor, kappas: Tensor, weights: Tensor | None = None) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        self.manifold.check_points("means", means)
        kappas = torch.as_tensor(kappas, dtype=torch.float64)
        if kappas.shape != (means.shape[0],) or not bool((kappas > 0).all()) or not bool(torch.isfinite(kappas).all()):
            raise ValueError(f"kappas must be positive and finite with shape ({means.shape[0]},), got {kappas}")
        self.means, self.kappas = means / means.norm(dim=1, keepdim=True), kappas
        self.weights, self.K = _weights(weights, means.shape[0]), means.shape[0]

    def __repr__(self) -> str:
        return f"VonMisesFisherMixture(K={self.K}, kappas={[round(k, 3) for k in self.kappas.tolist()]})"

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n exact samples (n, 3) float64 and their component ids (n,), by Wood's (1994) method on S^2."""
        n = check_int("n", n, 1)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)         # (n,)
        mu, kappa = self.means[k], self.kappas[k]                                               # (n, 3), (n,)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        w = 1 + torch.log(u + (1 - u) * torch.exp(-2 * kappa)) / kappa                          # <x, mu>, exact
        v = self.manifold.random_tangent(mu, generator)                                         # (n, 3)
        v = v / v.norm(dim=1, keepdim=True)                                                     # uniform direction
        x = w[:, None] * mu + (1 - w[:, None] ** 2).clamp_min(0).sqrt() * v
        return x / x.norm(dim=1, keepdim=True), k

    def _coefficients(self, t: Tensor, terms: int) -> Tensor:
        """a_{b,k,l} = w_k (2l+1)/(4 pi) rho_l(kappa_k) e^{-l(l+1) t_b/2}, shape (B or 1, K, L + 1)."""
        l = np.arange(terms + 1)
        rho = ive(l[None] + 0.5, self.kappas.numpy()[:, None]) / ive(0.5, self.kappas.numpy()[:, None])  # (K, L+1)
        l = torch.as_tensor(l, dtype=torch.float64)
        a = self.weights[:, None] * (2 * l + 1) / (4 * math.pi) * torch.as_tensor(rho)               # (K, L + 1)
        return a[None] * torch.exp(-l * (l + 1) * t[:, None, None] / 2)                          # (B, K, L + 1)

    def _series(self, x: Tensor, t: Tensor | float, terms: int | None) -> tuple[Tensor, Tensor]:
        """p_t(x) (B,) and grad_x p_t(x) (B, 3) by the Legendre series (t > 0)."""
        x = torch.as_tensor(x, dtype=torch.float64)
        self.manifold.check_points("x", x)
        t = _check_time(t, x.shape[0])
        terms = terms or sphere_terms(float(t.min()) + 1 / float(self.kappas.max()))
        a = self._coefficients(t, terms)                                                        # (B|1, K, L+1)
        c = x @ self.means.T                                                                    # (B, K)
        B, K = c.shape
        f, df = zonal_series(c.reshape(-1), a.expand(B, K, -1).reshape(B * K, -1))             # (B K,) each
        grad = (df.reshape(B, K, 1) * (self.means[None] - c[..., None] * x[:, None])).sum(1)    # (B, 3)
        return f.reshape(B, K).sum(1), grad

    def log_prob(self, x: Tensor, t: Tensor | float = 0.0, terms: int | None = None) -> Tensor:
        """log p_t(x) (B,), float64, with respect to area; t = 0 by the closed form, t > 0 by the series."""
        if float(torch.as_tensor(t).max()) == 0.0:
            x = torch.as_tensor(x, dtype=torch.float64)
            self.manifold.check_points("x", x)
            k = self.kappas                                                  # log of kappa/(4 pi sinh kappa) e^{kappa c}:
            log_norm = torch.log(k / (2 * math.pi)) - torch.log1p(-torch.exp(-2 * k)) - k
            return torch.logsumexp(torch.log(self.weights) + log_norm + k * (x @ self.means.T), dim=1)
        return self._series(x, t, terms)[0].log()

    def score(self, x: Tensor, t: Tensor | float, terms: int | None = None) -> Tensor:
        """grad_x log p_t(x) (B, 3) float64, a tangent vector: the exact score of the noised data (t > 0)."""
        p, grad = self._series(x, t, terms)
        return grad / p[:, None]

    def entropy(self, n: int = 100_000, seed: int = 0) -> float:
        """The differential entropy -E log p(x) in nats, by Monte Carlo with n exact samples (std error ~1e-3)."""
        return -float(self.log_prob(self.sample(n, torch.Generator().manual_seed(seed))[0]).mean())


class WrappedNormalMixture:
    """sum_k w_k WN(mu_k, Sigma_k) on the flat torus T^d: means (K, d) angles; covs (K, d, d) or stds (K,)."""

    def __init__(self, means: Tensor, covs: Tensor | float, weights: Tensor | None = None) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(means.shape)}")
        self.manifold, self.K = Torus(means.shape[1]), means.shape[0]
        self.base = GaussianMixture(wrap(means), covs, _weights(weights, self.K))  # checks covs
        self.means, self.covs, self.weights = self.base.means, self.base.covs, self.base.weights
        self._lattices: dict[int, tuple[GaussianMixture, float]] = {}

    def __repr__(self) -> str:
        return f"WrappedNormalMixture(K={self.K}, d={self.manifold.dim})"

    def lattice(self, t: float) -> tuple[GaussianMixture, float]:
        """The mixture over the images mu_k + 2 pi n, |n_i| <= K, with K enough for float64 accuracy at time t
        (wider Gaussians need more images), and the log of the number of images per component."""
        images = torus_terms(float(self.base.lam.max()) + t)
        if images not in self._lattices:
            K, d = self.means.shape
            shifts = torch.tensor(list(itertools.product(range(-images, images + 1), repeat=d)), dtype=torch.float64)
            n = shifts.shape[0]                                                # (2 images + 1)^d lattice points
            mixture = GaussianMixture((self.means[:, None] + 2 * math.pi * shifts[None]).reshape(K * n, d),
                                      self.covs.repeat_interleave(n, 0), self.weights.repeat_interleave(n))
            self._lattices[images] = mixture, math.log(n)                    # its weights are w_k / n
        return self._lattices[images]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n exact samples (n, d) float64 in [-pi, pi) and their component ids: Gaussian samples, wrapped."""
        x, k = self.base.sample(n, generator)
        return wrap(x), k

    def log_prob(self, x: Tensor, t: Tensor | float = 0.0) -> Tensor:
        """log p_t(x) (B,) with respect to d theta_1 ... d theta_d: the images' Gaussians, each widened by t I."""
        x = torch.as_tensor(x, dtype=torch.float64)
        self.manifold.check_points("x", x)
        t = _check_time(t, x.shape[0])
        lattice, log_copies = self.lattice(float(t.max()))
        return lattice.log_prob(x, 1.0, t.sqrt()) + log_copies

    def score(self, x: Tensor, t: Tensor | float) -> Tensor:
        """grad_x log p_t(x) (B, d) float64."""
        x = torch.as_tensor(x, dtype=torch.float64)
        self.manifold.check_points("x", x)
        t = _check_time(t, x.shape[0])
        return self.lattice(float(t.max()))[0].score(x, 1.0, t.sqrt())

    def entropy(self, n: int = 100_000, seed: int = 0) -> float:
        return -float(self.log_prob(self.sample(n, torch.Generator().manual_seed(seed))[0]).mean())


class ExactManifoldModel(nn.Module):
    """The exact score of a ``VonMisesFisherMixture`` or ``WrappedNormalMixture`` as a net ``model(x, t)``
    (prediction 'score'): output in x's dtype and device, differentiable with respect to x."""

    prediction = "score"

    def __init__(self, data: VonMisesFisherMixture | WrappedNormalMixture) -> None:
        super().__init__()
        self.data, self.manifold = data, data.manifold

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).detach().cpu().reshape(-1)
        return self.data.score(x.cpu().double(), t).to(device=x.device, dtype=x.dtype)


def degrees_to_unit(lat_lon: Tensor) -> Tensor:
    """(latitude, longitude) in degrees (K, 2) -> unit vectors (K, 3), z towards the north pole."""
    lat, lon = torch.deg2rad(torch.as_tensor(lat_lon, dtype=torch.float64)).unbind(-1)
    return torch.stack([lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()], dim=-1)


def sphere_mixture() -> VonMisesFisherMixture:
    """The chapter's sphere data: five vMF regions of different sizes (kappa 8..60) and weights."""
    centres = degrees_to_unit([[45, -30], [-20, 20], [10, 120], [-55, -120], [70, 150]])
    return VonMisesFisherMixture(centres, [20.0, 40.0, 8.0, 60.0, 30.0], [0.3, 0.25, 0.2, 0.15, 0.1])


def ramachandran_mixture() -> WrappedNormalMixture:
    """A Ramachandran-like set of backbone dihedral pairs (phi, psi) in radians: the right-handed alpha helix,
    the beta sheet (which wraps across psi = +-180 degrees) and the rarer left-handed helix."""
    deg = math.pi / 180
    means = torch.tensor([[-63.0, -43.0], [-120.0, 160.0], [60.0, 45.0]]) * deg
    stds = torch.tensor([[15.0, 15.0], [25.0, 22.0], [12.0, 15.0]]) * deg
    corr = torch.tensor([-0.5, -0.3, 0.0])
    covs = torch.stack([torch.tensor([[a * a, r * a * b], [r * a * b, b * b]]) for (a, b), r in zip(stds, corr)])
    return WrappedNormalMixture(means, covs, [0.55, 0.35, 0.1])
