"""How good are the samples? Small, honest measures that run on a laptop.

* ``frechet_distance``: the Fréchet distance between Gaussians fitted to two sets of features (Heusel et al. 2017),
  ||m_a - m_b||^2 + Tr(C_a + C_b - 2 (C_a^{1/2} C_b C_a^{1/2})^{1/2}). On raw 8x8 pixels it is the 'pixel FD';
  the distance between the training and the held-out set is its floor.
* ``energy_distance``: a two-sample distance for point clouds (Székely & Rizzo 2013), zero iff the
  distributions agree: 2 E|X - Y| - E|X - X'| - E|Y - Y'|.
* ``DigitsClassifier``: a logistic-regression reader of 8x8 digits (scikit-learn), trained on the training split,
  to say which digit a sample looks like and how sure it is.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .checks import check_finite

Tensor = torch.Tensor


def _as_2d_float64(name: str, x: Tensor | np.ndarray) -> Tensor:
    x = torch.as_tensor(np.asarray(x.detach().cpu() if torch.is_tensor(x) else x), dtype=torch.float64)
    check_finite(name, x)
    if x.dim() < 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must hold at least 2 samples of shape (N, ...), got {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)


def _sqrtm_psd(c: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix through its eigendecomposition."""
    lam, U = torch.linalg.eigh(c)
    return (U * lam.clamp(min=0).sqrt()) @ U.T


def frechet_distance(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """Fréchet distance between N(m_a, C_a) and N(m_b, C_b) fitted to feature sets a (N, F) and b (M, F)."""
    a, b = _as_2d_float64("a", a), _as_2d_float64("b", b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same feature size, got {a.shape[1]} and {b.shape[1]}")
    m_a, m_b = a.mean(0), b.mean(0)
    c_a, c_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _sqrtm_psd(c_a)
    cross = _sqrtm_psd(root_a @ c_b @ root_a)  # (C_a^1/2 C_b C_a^1/2)^1/2, symmetric PSD
    return float(((m_a - m_b) ** 2).sum() + torch.trace(c_a + c_b - 2 * cross))


def energy_distance(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between samples a (N, D) and b (M, D) (V-statistic)."""
    a, b = _as_2d_float64("a", a), _as_2d_float64("b", b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same dimension, got {a.shape[1]} and {b.shape[1]}")
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


class DigitsClassifier:
    """Multinomial logistic regression on 8x8 digits in [-1, 1] (about 97 % accurate on the held-out split)."""

    def __init__(self, seed: int = 0):
        from sklearn.linear_model import LogisticRegression

        from .data import load_digits

        train = load_digits(size=8, split="train", seed=seed)
        self.model = LogisticRegression(C=1.0, max_iter=3000)
        self.model.fit(train.x.reshape(len(train), -1).numpy(), train.y.numpy())

    def _features(self, x: Tensor | np.ndarray) -> np.ndarray:
        x = _as_2d_float64("x", x)
        if x.shape[1] != 64:
            raise ValueError(f"x must be 8x8 digit images (N, 1, 8, 8), got {x.shape[1]} values per image")
        return x.numpy()

    def predict_proba(self, x: Tensor | np.ndarray) -> np.ndarray:
        """Class probabilities (N, 10)."""
        return self.model.predict_proba(self._features(x))

    def accuracy(self, x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> float:
        return float((self.predict_proba(x).argmax(1) == np.asarray(y)).mean())

    def summary(self, x: Tensor | np.ndarray, confident: float = 0.9) -> dict[str, float]:
        """How digit-like samples are: the share read with probability >= ``confident``, and how evenly the ten
        digits appear (entropy of the predicted-class histogram, in bits; log2(10) = 3.32 is perfectly even)."""
        p = self.predict_proba(x)
        hist = np.bincount(p.argmax(1), minlength=10) / len(p)
        nz = hist[hist > 0]
        return {"confident_fraction": float((p.max(1) >= confident).mean()),
                "class_entropy_bits": float(-(nz * np.log2(nz)).sum())}


@lru_cache(maxsize=2)
def digits_classifier(seed: int = 0) -> DigitsClassifier:
    """A cached ``DigitsClassifier`` (training it takes about a second)."""
    return DigitsClassifier(seed)
