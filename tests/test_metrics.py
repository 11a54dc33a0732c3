"""Sample-quality measures against closed forms."""

import math

import numpy as np
import pytest
import torch

from diffedu.data import load_digits
from diffedu.metrics import digits_classifier, energy_distance, frechet_distance


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    """For 1-D Gaussians FD = (m1 - m2)^2 + (s1 - s2)^2; for diagonal ones it sums over dimensions."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200_000, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0])
    b = torch.randn(200_000, 2, generator=g, dtype=torch.float64) * torch.tensor([3.0, 0.5]) + torch.tensor([1.0, -2.0])
    expected = (1 + 4) + ((1 - 3) ** 2 + (2 - 0.5) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.01)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a.numpy(), b.numpy()) == pytest.approx(frechet_distance(a, b))


def test_energy_distance_is_near_zero_for_equal_laws_and_positive_otherwise():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2000, 2, generator=g), torch.randn(2000, 2, generator=g)
    shifted = torch.randn(2000, 2, generator=g) + 0.5
    assert abs(energy_distance(a, b)) < 0.01
    # closed form for a shift d of a standard normal in 1-D direction: grows like d^2 for small d; just order here
    assert energy_distance(a, shifted) > 10 * abs(energy_distance(a, b))


def test_digits_classifier_reads_held_out_digits():
    test = load_digits(split="test")
    clf = digits_classifier()
    assert clf.accuracy(test.x, test.y) > 0.93
    summary = clf.summary(test.x)
    assert summary["class_entropy_bits"] > 3.2  # all ten digits, evenly
    noise = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert clf.summary(noise)["confident_fraction"] < summary["confident_fraction"]


def test_metrics_bad_input():
    with pytest.raises(ValueError, match="a and b"):
        frechet_distance(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="a contains NaN"):
        energy_distance(torch.full((4, 2), math.nan), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(torch.zeros(1, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="8x8"):
        digits_classifier().predict_proba(np.zeros((3, 16)))
