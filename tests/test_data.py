"""The shipped image data: shapes, exact pixel levels, deterministic disjoint splits."""

import pytest
import torch

from diffedu.data import (DIGITS_LEVELS, MNIST_LEVELS, ImageData, from_unit, load_digits, load_mnist5k,
                          to_unit)


def _check_images(data: ImageData, n: int, size: int) -> None:
    assert data.x.shape == (n, 1, size, size)
    assert data.x.dtype == torch.float32
    assert data.y.shape == (n,) and data.y.dtype == torch.int64
    assert float(data.x.min()) >= -1.0 and float(data.x.max()) <= 1.0
    assert set(data.y.tolist()) == set(range(10))
    assert len(data) == n


@pytest.mark.parametrize("size", [8, 16])
def test_digits_shapes_and_exact_levels(size):
    data = load_digits(size=size, split="all")
    _check_images(data, 1797, size)
    assert data.levels == DIGITS_LEVELS == 17
    counts = data.x * 8 + 8  # v / 8 - 1 inverted: must be the original integers 0..16
    assert torch.equal(counts, counts.round())
    assert set(counts.unique().tolist()) <= set(range(17))
    assert float(data.x.min()) == -1.0 and float(data.x.max()) == 1.0


def test_digits16_is_nearest_upsampling_of_digits8():
    small, big = load_digits(8, "all"), load_digits(16, "all")
    assert torch.equal(big.x[:, :, ::2, ::2], small.x)
    assert torch.equal(big.x[:, :, 1::2, 1::2], small.x)


def test_digits_split_sizes_disjoint_deterministic():
    train, test = load_digits(split="train"), load_digits(split="test")
    assert len(train) + len(test) == 1797
    assert abs(len(test) - 0.2 * 1797) <= 1
    assert set(train.index.tolist()).isdisjoint(test.index.tolist())
    again = load_digits(split="train")
    assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y)
    other = load_digits(split="train", seed=1)
    assert not torch.equal(other.index, train.index)
    every = load_digits(split="all")
    assert torch.equal(every.x[train.index], train.x) and torch.equal(every.y[test.index], test.y)
    half = load_digits(split="test", test_fraction=0.5)
    assert abs(len(half) - 1797 / 2) <= 1


def test_unit_maps_are_inverse():
    x = load_digits(split="test").x
    u = to_unit(x)
    assert float(u.min()) == 0.0 and float(u.max()) == 1.0
    assert torch.equal(from_unit(u), x)


@pytest.mark.parametrize("size", [28, 16])
def test_mnist5k_shapes_range_levels(size):
    data = load_mnist5k(size=size, split="all")
    _check_images(data, 5000, size)
    assert data.levels == MNIST_LEVELS == 256
    pixels = (data.x + 1) * 127.5
    assert torch.allclose(pixels, pixels.round(), atol=1e-4)
    assert float(data.x.min()) == -1.0 and float(data.x.max()) > 0.99
    assert torch.bincount(data.y).tolist() == [500] * 10


def test_mnist5k_split():
    train, test = load_mnist5k(split="train"), load_mnist5k(split="test")
    assert (len(train), len(test)) == (4000, 1000)
    assert torch.bincount(test.y).tolist() == [100] * 10  # stratified
    assert set(train.index.tolist()).isdisjoint(test.index.tolist())
    small = load_mnist5k(size=16, split="test")
    assert torch.equal(small.y, test.y)
    # 16x16 is the 2x2 average of the padded 28x28 image, rounded to 8 bits
    padded = torch.nn.functional.pad((test.x + 1) * 127.5, (2, 2, 2, 2))
    pooled = torch.nn.functional.avg_pool2d(padded, 2)
    assert (pooled - (small.x + 1) * 127.5).abs().max() <= 0.5 + 1e-3


@pytest.mark.parametrize("kwargs", [dict(size=12), dict(size="8"), dict(split="valid"), dict(test_fraction=0.0),
                                    dict(test_fraction=1.0), dict(seed=-1)])
def test_bad_arguments(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        load_digits(**kwargs)


def test_mnist_bad_size():
    with pytest.raises(ValueError, match="size"):
        load_mnist5k(size=8)
