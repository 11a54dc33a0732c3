"""Two compact manifolds and Brownian motion on them (De Bortoli et al. 2022, Riemannian score-based models).

**The sphere** S^2 = {x in R^3 : |x| = 1}: a point is a unit vector (B, 3); a tangent vector at x is a v in R^3
with <v, x> = 0. **The flat torus** T^d = [-pi, pi)^d with opposite edges glued: a point is d angles (B, d); a
tangent vector is any v in R^d. Each manifold M gives the few operations a diffusion model needs:

    proju(x, v)    the tangent part of an ambient vector v at x     sphere: v - <v, x> x;   torus: v
    expmap(x, v)   walk the geodesic from x with initial velocity v sphere: cos|v| x + sin|v| v/|v|;  torus: wrap(x + v)
    logmap(x, y)   the v with expmap(x, v) = y, |v| = dist(x, y)    (the inverse, away from the cut locus)
    random_uniform the stationary law of Brownian motion, which replaces N(0, I) as the prior

Brownian motion (generator 1/2 Laplacian, the Riemannian analogue of dx = dB) is simulated by the geodesic
random walk (De Bortoli et al. 2022, Sec. 3.1): X_{k+1} = exp_{X_k}(sqrt(gamma) Z_k), Z_k ~ N(0, I) in T_{X_k}M.
"""

from __future__ import annotations

import math

import torch

from .checks import check_finite, check_int

Tensor = torch.Tensor


def _check_shape(name: str, x: Tensor, size: int) -> None:
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of shape (B, {size})")
    if x.dim() != 2 or x.shape[1] != size:
        raise ValueError(f"{name} must have shape (B, {size}), got {tuple(x.shape)}")
    check_finite(name, x)


class Sphere:
    """The unit sphere S^2 in R^3 (points (B, 3), tangent vectors (B, 3) with <v, x> = 0); area 4 pi."""

    name, dim, coords = "sphere", 2, 3      # intrinsic dimension, coordinates per point
    log_volume = math.log(4 * math.pi)      # the uniform density is 1 / (4 pi)

    def __repr__(self) -> str:
        return "Sphere()"

    def check_points(self, name: str, x: Tensor, atol: float = 1e-4) -> None:
        """Raise a ValueError naming ``x`` unless it is a finite batch of unit vectors (B, 3)."""
        _check_shape(name, x, 3)
        err = float((x.detach().norm(dim=1) - 1).abs().max()) if x.shape[0] else 0.0
        if err > atol:
            raise ValueError(f"{name} must lie on the sphere (|x| = 1 within {atol:g}), got | |x| - 1 | up to {err:.3g}")

    def proju(self, x: Tensor, v: Tensor) -> Tensor:
        return v - (v * x).sum(-1, keepdim=True) * x                         # (B, 3): v minus its normal part

    def expmap(self, x: Tensor, v: Tensor) -> Tensor:
        n = v.norm(dim=-1, keepdim=True)  # (B, 1) = geodesic distance walked
        sinc = torch.where(
            n > 1e-12, torch.sin(n) / n.clamp_min(1e-12), 1 - n**2 / 6
        )
        y = torch.cos(n) * x + sinc * v  # (B, 3)
        return y / y.norm(
            dim=-1, keepdim=True
        )  # remove rounding off the sphere

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        u = self.proju(x, y - x)                                             # (B, 3): direction towards y
        theta = self.dist(x, y)[:, None]                                     # (B, 1)
        return u * (theta / u.norm(dim=-1, keepdim=True).clamp_min(1e-30))  # |log| = theta

    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        """Great-circle distance, (B,): atan2(|x cross y|, <x, y>) is accurate at 0 and pi, unlike arccos."""
        return torch.atan2(torch.linalg.cross(x, y).norm(dim=-1), (x * y).sum(-1))

    def retract(self, x: Tensor) -> Tensor:
        return x / x.norm(dim=-1, keepdim=True)

    def features(self, x: Tensor) -> Tensor:
        return x                                                             # what a network sees: (B, 3)

    def random_uniform(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32,
                       device=None) -> Tensor:
        z = torch.randn(n, 3, generator=generator, dtype=dtype, device=device)
        return z / z.norm(dim=1, keepdim=True)                               # uniform: N(0, I) is isotropic

    def random_tangent(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Z ~ N(0, I) in the tangent plane at each x (B, 3): a standard normal vector, projected."""
        return self.proju(x, torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device))


def wrap(theta: Tensor) -> Tensor:
    """Angles mapped to [-pi, pi)."""
    return torch.remainder(theta + math.pi, 2 * math.pi) - math.pi


class Torus:
    """The flat torus T^d = [-pi, pi)^d (points (B, d) of angles; tangent vectors (B, d)); volume (2 pi)^d."""

    name = "torus"

    def __init__(self, dim: int = 2) -> None:
        self.dim = self.coords = check_int("dim", dim, 1)
        self.log_volume = dim * math.log(2 * math.pi)

    def __repr__(self) -> str:
        return f"Torus(dim={self.dim})"

    def check_points(self, name: str, x: Tensor, atol: float = 1e-4) -> None:
        """Raise a ValueError naming ``x`` unless it is a finite batch (B, d) of angles in [-pi, pi]."""
        _check_shape(name, x, self.dim)
        if x.numel() and float(x.detach().abs().max()) > math.pi + atol:
            raise ValueError(f"{name} must hold angles in [-pi, pi] (wrap them with diffedu.manifolds.wrap), got "
                             f"values up to {float(x.abs().max()):.4g} in absolute value")

    def proju(self, x: Tensor, v: Tensor) -> Tensor:
        return v                                                             # every direction is tangent

    def expmap(self, x: Tensor, v: Tensor) -> Tensor:
        return wrap(x + v)

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        return wrap(y - x)                                                   # the shortest way round, per angle

    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        return self.logmap(x, y).norm(dim=-1)

    def retract(self, x: Tensor) -> Tensor:
        return wrap(x)

    def features(self, x: Tensor) -> Tensor:
        return torch.cat([torch.cos(x), torch.sin(x)], dim=-1)               # (B, 2d): continuous across the edge

    def random_uniform(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32,
                       device=None) -> Tensor:
        u = torch.rand(n, self.dim, generator=generator, dtype=dtype, device=device)
        return (2 * u - 1) * math.pi

    def random_tangent(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


Manifold = Sphere | Torus


def check_walk(manifold: Manifold, x: Tensor, t: Tensor | float, steps: int) -> Tensor:
    """The checks of ``geodesic_random_walk``'s arguments (a ValueError names the argument); returns t as a tensor."""
    manifold.check_points("x", x)
    check_int("steps", steps, 1)
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != x.shape[0]):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    check_finite("t", t)
    if t.numel() and float(t.min()) <= 0:
        raise ValueError(f"t must be > 0, got values down to {float(t.min()):.3g}")
    return t


def geodesic_random_walk(
    manifold: Manifold,
    x: Tensor,
    t: Tensor | float,
    steps: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Brownian motion run for time t from x, by ``steps`` geodesic random-walk steps (De Bortoli et al. 2022,
    Sec. 3.1): X_{k+1} = exp_{X_k}(sqrt(gamma) Z_k), gamma = t / steps, Z_k ~ N(0, I) in the tangent space.

    x: (B, coords) points; t: a time > 0, or one per point (B,). On the flat torus the walk is exact for any
    ``steps`` (Gaussian steps add up); on the sphere E<X_t, x> = m(gamma)^steps -> e^{-t} as gamma -> 0.
    """
    t = check_walk(manifold, x, t, steps)  # (B,) or () times
    step_std = (
        (t / steps).sqrt().reshape(-1, 1)
    )  # sqrt(gamma): (B, 1) or (1, 1)
    for _ in range(steps):
        x = manifold.expmap(
            x, step_std * manifold.random_tangent(x, generator)
        )
    return x
