"""Measuring a generative model by its samples: what each measure sees, and what it misses.

* ``gaussian_frechet_distance``: the closed form between two Gaussians (Dowson & Landau 1982), the quantity
  ``metrics.frechet_distance`` estimates from two sample sets (FID, Heusel et al. 2017, eq. 6).
* ``fd_against_n``: the Fréchet distance between two *independent* sets from one distribution, against their
  size N: its bias (it is never 0, and falls like 1/N), the floor any model's FD must be read against.
* ``kernel_distance``: the unbiased squared MMD with the cubic polynomial kernel of the kernel inception
  distance (KID, Binkowski et al. 2018, eq. 3): its mean over draws is 0 when the distributions agree.
* ``precision_recall``: the k-nearest-neighbour precision and recall of Kynkaanniemi et al. (2019, eq. 1-2):
  precision = share of samples inside the real data's manifold estimate (a model that blurs loses it),
  recall = share of the data inside the samples' manifold estimate (a model that drops a mode loses it).

Every function takes two sets of points a (N, ...) and b (M, ...) (tensors or arrays; images are flattened),
computes in float64 and raises a ValueError naming the argument for NaNs, mismatched sizes or too few points.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .checks import check_finite, check_int
from .metrics import _sqrtm_psd, frechet_distance

Tensor = torch.Tensor


def _points(name: str, x: Tensor | np.ndarray, at_least: int) -> Tensor:
    """x as float64 (N, F); raises unless finite with N >= at_least."""
    if not torch.is_tensor(x):
        x = torch.as_tensor(np.asarray(x))
    x = x.detach().cpu().to(torch.float64)
    check_finite(name, x)
    if x.dim() < 2 or x.shape[0] < at_least:
        raise ValueError(f"{name} must hold at least {at_least} points of shape (N, ...), "
                         f"got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)


def _pair(a, b, at_least: int) -> tuple[Tensor, Tensor]:
    a, b = _points("a", a, at_least), _points("b", b, at_least)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same dimension, got {a.shape[1]} and {b.shape[1]}")
    return a, b


def gaussian_frechet_distance(m_a: Tensor, c_a: Tensor, m_b: Tensor, c_b: Tensor) -> float:
    """||m_a - m_b||^2 + Tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2)   (Dowson & Landau 1982)."""
    m_a, m_b, c_a, c_b = (torch.as_tensor(v, dtype=torch.float64) for v in (m_a, m_b, c_a, c_b))
    root_a = _sqrtm_psd(c_a)
    cross = _sqrtm_psd(root_a @ c_b @ root_a)
    return float(((m_a - m_b) ** 2).sum() + torch.trace(c_a + c_b - 2 * cross))


def fd_against_n(pool: Tensor | np.ndarray, sizes: list[int], repeats: int = 5,
                 generator: torch.Generator | None = None) -> list[tuple[int, float, float]]:
    """Real-vs-real Fréchet distance: for each N in ``sizes``, two disjoint random subsets of ``pool`` of N points
    each, ``repeats`` times; returns [(N, mean FD, std FD)]. Needs 2 max(sizes) <= len(pool)."""
    pool = _points("pool", pool, 4)
    repeats = check_int("repeats", repeats, 1)
    for n in sizes:
        check_int("sizes", n, 2, pool.shape[0] // 2)
    rows = []
    for n in sizes:
        fds = []
        for _ in range(repeats):
            idx = torch.randperm(pool.shape[0], generator=generator)
            fds.append(frechet_distance(pool[idx[:n]], pool[idx[n:2 * n]]))
        fds = torch.tensor(fds, dtype=torch.float64)
        rows.append((int(n), float(fds.mean()), float(fds.std()) if repeats > 1 else 0.0))
    return rows


def kernel_distance(a: Tensor | np.ndarray,
                    b: Tensor | np.ndarray) -> float:
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 (KID; Binkowski et al. 2018, eq. 3):

        MMD^2_u = sum_{i != j} k(a_i, a_j) / (m (m - 1)) + sum_{i != j} k(b_i, b_j) / (n (n - 1))
                  - 2 sum_{i, j} k(a_i, b_j) / (m n).

    a (m, d), b (n, d) with m, n >= 2. Its expectation is 0 when a and b come from the same distribution, so
    single draws can be negative."""
    a, b = _pair(a, b, 2)
    m, n, d = a.shape[0], b.shape[0], a.shape[1]
    k_aa = (a @ a.T / d + 1) ** 3                          # (m, m)
    k_bb = (b @ b.T / d + 1) ** 3                          # (n, n)
    k_ab = (a @ b.T / d + 1) ** 3                          # (m, n)
    within_a = (k_aa.sum() - k_aa.diagonal().sum()) / (m * (m - 1))
    within_b = (k_bb.sum() - k_bb.diagonal().sum()) / (n * (n - 1))
    return float(within_a + within_b - 2 * k_ab.mean())


def knn_radii(x: Tensor, k: int) -> Tensor:
    """Distance from each point of x (N, d) to its k-th nearest *other* point: the radius of its ball."""
    dist = torch.cdist(x, x)                               # (N, N), 0 on the diagonal
    return dist.kthvalue(k + 1, dim=1).values              # k + 1: the point itself is the 1st


def precision_recall(real: Tensor | np.ndarray, fake: Tensor | np.ndarray,
                     k: int = 3) -> tuple[float, float]:
    """k-NN precision and recall (Kynkaanniemi et al. 2019, eq. 1-2).

    The manifold of a set is the union of balls around its points, each of radius the distance to its k-th
    nearest neighbour in the set. precision = share of ``fake`` inside the manifold of ``real``; recall = share
    of ``real`` inside the manifold of ``fake``. real (N, ...), fake (M, ...), each with more than k points."""
    k = check_int("k", k, 1)
    real = _points("real", real, k + 1)                     # (N, d)
    fake = _points("fake", fake, k + 1)                     # (M, d)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake must have the same dimension, "
                         f"got {real.shape[1]} and {fake.shape[1]}")
    r_real, r_fake = knn_radii(real, k), knn_radii(fake, k)  # (N,), (M,)
    d = torch.cdist(fake, real)                             # (M, N)
    precision = (d <= r_real[None, :]).any(dim=1).double().mean()
    recall = (d.T <= r_fake[None, :]).any(dim=1).double().mean()
    return float(precision), float(recall)


def mmd_std_error(values: list[float]) -> float:
    """Standard error of the mean of repeated kernel distances (for reporting KID as mean +- s.e.)."""
    v = torch.tensor(values, dtype=torch.float64)
    return float(v.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0
