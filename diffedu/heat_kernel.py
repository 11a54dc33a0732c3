"""Heat kernels: the transition densities of Brownian motion on the sphere and the torus, and their scores.

Brownian motion (generator 1/2 Laplacian) started at x0 has density p_t(x | x0) with respect to the area (volume)
measure. Denoising score matching on a manifold regresses on its score grad_x log p_t(x | x0) (De Bortoli et al.
2022, Sec. 3.2), so we need it exactly:

* **Sphere S^2**, by the Laplacian's eigenfunctions (Legendre polynomials P_l of the angle, eigenvalues
  -l(l+1)):          p_t(x | x0) = sum_l (2l + 1) / (4 pi) e^{-l(l+1) t / 2} P_l(<x, x0>).
  The grad of c = <x, x0> on the sphere is x0 - c x, so the score is p'(c) / p(c) (x0 - c x).
* **Flat torus**, one angle at a time, by images (a wrapped Gaussian of variance t) or by Fourier (theta series):
      p_t(d) = sum_n N(d + 2 pi n; 0, t) = 1/(2 pi) [1 + 2 sum_{m>=1} e^{-m^2 t / 2} cos(m d)],  d = x - x0.

Both series are truncated. Few terms suffice at large t; at small t the sphere's needs L ~ sqrt(1/t) terms, and
there **Varadhan's formula** log p_t(x | x0) ~ -dist(x, x0)^2 / (2t) gives the short-time score log_x(x0) / t.
"""

from __future__ import annotations

import math

import torch

from .checks import check_choice, check_finite, check_int
from .manifolds import Manifold, Sphere, Torus

Tensor = torch.Tensor
METHODS = ("series", "varadhan")


def sphere_terms(t_min: float, tol: float = 1e-16) -> int:
    """How many Legendre terms make the sphere's series accurate to ``tol`` at times >= t_min: the smallest L
    with e^{-L (L + 1) t_min / 2} < tol (the neglected terms are smaller still)."""
    return max(2, math.ceil(math.sqrt(2 * math.log(1 / tol) / t_min)))


def torus_terms(t_max: float, tol: float = 1e-16) -> int:
    """How many images n = -K..K make the wrapped Gaussian accurate to ``tol`` at times <= t_max."""
    return max(1, math.ceil(math.sqrt(2 * math.log(1 / tol) * t_max) / (2 * math.pi)) + 1)


def zonal_series(c: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    """f(c) = sum_{l=0}^{L} a_l P_l(c) and f'(c), by Bonnet's recurrence (l+1) P_{l+1} = (2l+1) c P_l - l P_{l-1}
    and P'_{l+1} = P'_{l-1} + (2l+1) P_l. c: (B,); a: (B, L+1) or (L+1,) coefficients. Float64 throughout."""
    c = c.double()
    a = a.double().expand(c.shape[0], -1)                                    # (B, L + 1)
    P_prev, P, dP_prev, dP = torch.ones_like(c), c, torch.zeros_like(c), torch.ones_like(c)
    f, df = a[:, 0] + a[:, 1] * c, a[:, 1].clone()                           # l = 0, 1
    for l in range(1, a.shape[1] - 1):
        P_prev, P, dP_prev, dP = P, ((2 * l + 1) * c * P - l * P_prev) / (l + 1), dP, dP_prev + (2 * l + 1) * P
        f, df = f + a[:, l + 1] * P, df + a[:, l + 1] * dP
    return f, df                                                             # (B,), (B,)


def sphere_heat_kernel(
    c: Tensor, t: Tensor | float, terms: int
) -> tuple[Tensor, Tensor]:
    """p_t(c) = sum_{l <= terms} (2l+1)/(4 pi) e^{-l(l+1)t/2} P_l(c) and dp/dc, for c = <x, x0> (B,), t > 0."""
    l = torch.arange(
        terms + 1, dtype=torch.float64, device=c.device
    )  # (L + 1,)
    t = torch.as_tensor(t, dtype=torch.float64, device=c.device).reshape(
        -1, 1
    )  # (B, 1) or (1, 1)
    a = (
        (2 * l + 1) / (4 * math.pi) * torch.exp(-l * (l + 1) * t / 2)
    )  # (B or 1, L + 1)
    return zonal_series(c, a)


def wrapped_normal_log_prob(d: Tensor, var: Tensor | float, terms: int) -> Tensor:
    """log sum_{n=-K..K} N(d + 2 pi n; 0, var), per entry of d: the images of a Gaussian on the circle."""
    n = torch.arange(-terms, terms + 1, dtype=d.dtype, device=d.device)     # (2K + 1,)
    var = torch.as_tensor(var, dtype=d.dtype, device=d.device)[..., None]
    z = d[..., None] + 2 * math.pi * n                                       # (..., 2K + 1)
    return torch.logsumexp(-z ** 2 / (2 * var), dim=-1) - 0.5 * torch.log(2 * math.pi * var[..., 0])


def circle_heat_kernel_fourier(d: Tensor, t: Tensor | float, terms: int) -> Tensor:
    """The same density by its Fourier (theta) series, 1/(2 pi) [1 + 2 sum_{m=1}^{M} e^{-m^2 t/2} cos(m d)]."""
    m = torch.arange(1, terms + 1, dtype=d.dtype, device=d.device)           # (M,)
    t = torch.as_tensor(t, dtype=d.dtype, device=d.device)[..., None]
    return (1 + 2 * (torch.exp(-m ** 2 * t / 2) * torch.cos(m * d[..., None])).sum(-1)) / (2 * math.pi)


def _check(manifold: Manifold, x: Tensor, x0: Tensor, t: Tensor | float, terms: int | None) -> Tensor:
    if not isinstance(manifold, (Sphere, Torus)):
        raise ValueError(f"manifold must be a Sphere or a Torus, got {type(manifold).__name__}")
    manifold.check_points("x", x)
    manifold.check_points("x0", x0)
    if x.shape != x0.shape:
        raise ValueError(f"x and x0 must have the same shape, got {tuple(x.shape)} and {tuple(x0.shape)}")
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, x.shape[0])):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    check_finite("t", t)
    if t.numel() and float(t.min()) <= 0:
        raise ValueError(f"t must be > 0, got values down to {float(t.min()):.3g}")
    if terms is not None:
        check_int("terms", terms, 1)
    return t.cpu()


def log_heat_kernel(manifold: Manifold, x: Tensor, x0: Tensor, t: Tensor | float, terms: int | None = None) -> Tensor:
    """log p_t(x | x0) (B,), float64, by the truncated series (``terms`` None: accurate to float64)."""
    t = _check(manifold, x, x0, t, terms)
    if isinstance(manifold, Sphere):
        terms = terms or sphere_terms(float(t.min()))
        return sphere_heat_kernel((x * x0).sum(-1), t.to(x.device), terms)[0].log()
    terms = terms or torus_terms(float(t.max()))
    d = manifold.logmap(x0.double(), x.double())                             # (B, d)
    return wrapped_normal_log_prob(d, t.to(x.device).reshape(-1, 1), terms).sum(-1)


def heat_kernel_score(manifold: Manifold, x: Tensor, x0: Tensor, t: Tensor | float, terms: int | None = None,
                      method: str = "series") -> Tensor:
    """grad_x log p_t(x | x0), a tangent vector at x (B, coords) in x's dtype: the target of denoising score
    matching on a manifold (De Bortoli et al. 2022, eq. 7). ``method``: 'series' (exact, truncated after
    ``terms``; None: accurate to float64) or 'varadhan' (the short-time limit log_x(x0) / t)."""
    check_choice("method", method, METHODS)
    t = _check(manifold, x, x0, t, terms)
    if method == "varadhan":
        return manifold.logmap(x, x0) / t.to(device=x.device, dtype=x.dtype).reshape(-1, 1)
    if isinstance(manifold, Sphere):
        c = (x * x0).sum(-1)                                                 # (B,) cosine of the angle
        p, dp = sphere_heat_kernel(c, t.to(x.device), terms or sphere_terms(float(t.min())))
        coef = (dp / p).to(x.dtype)                                          # d log p / dc, (B,)
        return coef[:, None] * (x0 - c[:, None] * x)                         # (B, 3): grad of c is x0 - c x
    terms = terms or torus_terms(float(t.max()))                             # torus: images of a Gaussian
    n = torch.arange(-terms, terms + 1, dtype=torch.float64, device=x.device)  # (2K + 1,)
    z = manifold.logmap(x0.double(), x.double())[..., None] + 2 * math.pi * n  # (B, d, 2K + 1): x - x0 + 2 pi n
    t = t.to(x.device).reshape(-1, 1, 1)
    r = torch.softmax(-z ** 2 / (2 * t), dim=-1)                             # (B, d, 2K + 1): each image's share
    return (-(r * z).sum(-1) / t[..., 0]).to(x.dtype)                         # (B, d)
