"""The closed-form problems against independent references (autograd, Monte Carlo, Gaussian conditioning)."""

import math

import pytest
import torch

from diffedu.schedules import VPLinear, linear_schedule
from diffedu.toy import TOY_2D, ExactModel, GaussianMixture, eight_gaussians, gaussian, sample_2d


def random_mixture(D=3, K=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(K, D, generator=g, dtype=torch.float64)
    A = torch.randn(K, D, D, generator=g, dtype=torch.float64)
    covs = A @ A.transpose(1, 2) / D + 0.1 * torch.eye(D, dtype=torch.float64)
    return GaussianMixture(means, covs, torch.tensor([0.2, 0.3, 0.5]))


def test_log_prob_matches_torch_distributions():
    gm = random_mixture()
    x = torch.randn(50, 3, dtype=torch.float64)
    alpha, sigma = 0.6, 0.8
    comps = torch.distributions.MultivariateNormal(alpha * gm.means, alpha ** 2 * gm.covs + sigma ** 2 * torch.eye(3))
    ref = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(gm.weights), comps).log_prob(x)
    assert torch.allclose(gm.log_prob(x, alpha, sigma), ref, atol=1e-10)
    assert torch.allclose(gm.marginal(alpha, sigma).log_prob(x), ref, atol=1e-10)


def test_score_is_gradient_of_log_prob_per_row_times():
    gm = random_mixture()
    x = torch.randn(40, 3, dtype=torch.float64, requires_grad=True)
    alpha = torch.rand(40, dtype=torch.float64) * 0.9 + 0.05
    sigma = (1 - alpha ** 2).sqrt()
    (grad,) = torch.autograd.grad(gm.log_prob(x, alpha, sigma).sum(), x)
    assert torch.allclose(gm.score(x.detach(), alpha, sigma), grad, atol=1e-10)


def test_denoiser_satisfies_tweedie_and_monte_carlo():
    gm = random_mixture()
    alpha, sigma = torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.9, dtype=torch.float64)
    x = torch.randn(30, 3, dtype=torch.float64)
    tweedie = (x + sigma ** 2 * gm.score(x, alpha, sigma)) / alpha
    assert torch.allclose(gm.denoise(x, alpha, sigma), tweedie, atol=1e-10)
    # Monte Carlo: regress x0 on x_t in a small window around one point: E[x0 | x_t] ~ the local average
    g = torch.Generator().manual_seed(3)
    x0, _ = gm.sample(400_000, g)
    xt = alpha * x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    point = xt[0]
    near = (xt - point).norm(dim=1) < 0.25
    assert near.sum() > 200
    # local average of x0 against the exact denoiser averaged over the same window
    assert torch.allclose(x0[near].mean(0), gm.denoise(xt[near], alpha, sigma).mean(0), atol=0.1)


def test_samples_have_the_exact_moments():
    gm = random_mixture()
    x, comp = gm.sample(200_000, torch.Generator().manual_seed(0))
    assert torch.allclose(x.mean(0), gm.mean(), atol=0.02)
    assert torch.allclose(torch.cov(x.T), gm.covariance(), atol=0.05)
    freq = torch.bincount(comp, minlength=3).double() / len(comp)
    assert torch.allclose(freq, gm.weights, atol=0.01)


def test_component_conditioning():
    gm = eight_gaussians()
    x = torch.randn(16, 2, dtype=torch.float64)
    k = torch.arange(16) % 8
    single = gm.score(x, 0.7, math.sqrt(0.51), component=k)
    for b in range(16):
        g1 = gaussian(gm.means[k[b]], gm.covs[k[b]])
        assert torch.allclose(single[b], g1.score(x[b:b + 1], 0.7, math.sqrt(0.51))[0])


def test_gaussian_denoiser_is_the_linear_wiener_filter():
    """For N(0, s^2 I): E[x0 | x_t] = alpha s^2 / (alpha^2 s^2 + sigma^2) x_t."""
    s = 0.5
    g = gaussian(torch.zeros(4), s)
    x = torch.randn(10, 4, dtype=torch.float64)
    a, sig = 0.3, 0.95
    assert torch.allclose(g.denoise(x, a, sig), a * s ** 2 / (a ** 2 * s ** 2 + sig ** 2) * x)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score"])
def test_exact_model_predictions_agree(prediction):
    gm, sch = eight_gaussians(), VPLinear()
    ref = ExactModel(gm, sch, "x0")
    model = ExactModel(gm, sch, prediction)
    from diffedu.predictions import predict_x0_eps
    x = torch.randn(32, 2)
    t = torch.rand(32) * 0.98 + 0.01
    x0a, eps_a = predict_x0_eps(ref, x, t, sch)
    x0b, eps_b = predict_x0_eps(model, x, t, sch)
    assert x0b.dtype == torch.float32
    assert torch.allclose(x0a, x0b, atol=1e-4) and torch.allclose(eps_a, eps_b, atol=1e-4)


def test_toy_2d_data():
    g = torch.Generator().manual_seed(0)
    for name in TOY_2D:
        x = sample_2d(name, 5000, g)
        assert x.shape == (5000, 2) and x.dtype == torch.float32
        assert bool(torch.isfinite(x).all())
        assert 0.5 < x.std(0).min() and x.abs().max() < 4.5
    board = sample_2d("checkerboard", 5000, g) + 2.0
    assert bool(((board.floor().sum(1) % 2) == 0).all())  # only the dark squares
    assert torch.equal(sample_2d("moons", 10, torch.Generator().manual_seed(5)),
                       sample_2d("moons", 10, torch.Generator().manual_seed(5)))


def test_toy_bad_input():
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(torch.zeros(3))
    with pytest.raises(ValueError, match="covs"):
        GaussianMixture(torch.zeros(2, 2), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="covs"):
        GaussianMixture(torch.zeros(1, 2), torch.tensor([[[1.0, 0.0], [0.0, -1.0]]]))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.zeros(2, 2), 1.0, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="x must have shape"):
        eight_gaussians().score(torch.zeros(3, 3), 1.0, 0.1)
    with pytest.raises(ValueError, match="x contains NaN"):
        eight_gaussians().denoise(torch.full((2, 2), float("nan")), 1.0, 0.1)
    with pytest.raises(ValueError, match="component"):
        eight_gaussians().sample(4, component=torch.tensor([0, 1, 2, 8]))
    with pytest.raises(ValueError, match="name"):
        sample_2d("spiral", 10)
    with pytest.raises(ValueError, match="n must"):
        sample_2d("moons", 0)
    with pytest.raises(ValueError, match="prediction"):
        ExactModel(eight_gaussians(), linear_schedule(), "noise")
    with pytest.raises(ValueError, match="t must lie"):
        ExactModel(eight_gaussians(), linear_schedule())(torch.zeros(2, 2), torch.tensor([0.5, 2.0]))
