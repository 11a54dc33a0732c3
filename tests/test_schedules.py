"""Closed-form checks of the noise schedules and the prediction converter."""

import math

import pytest
import torch

from diffedu.predictions import PREDICTIONS, convert, predict_x0_eps, targets, to_eps, to_x0
from diffedu.schedules import (VE, DiscreteSchedule, NoiseSchedule, SubVP, VPCosine, VPLinear, cosine_alpha_bar,
                               cosine_schedule, linear_schedule)


def test_linear_schedule_matches_ho_et_al():
    sch = linear_schedule()
    assert sch.N == 1000
    assert sch.betas.dtype == torch.float64
    assert sch.betas[1].item() == pytest.approx(1e-4, abs=1e-15)
    assert sch.betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    # alpha_bar_i = prod_{j <= i} (1 - beta_j), computed independently with a Python loop
    prod, ref = 1.0, []
    for b in torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64).tolist():
        prod *= 1 - b
        ref.append(prod)
    assert torch.allclose(sch.alpha_bars[1:], torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=0)
    # Ho et al. report alpha_bar_N ~ 4e-5 (L_T ~ 1e-5 bits/dim): the final state is almost pure noise
    assert 1e-5 < sch.alpha_bars[-1].item() < 1e-4


def test_grid_times_are_exact_and_vp_holds():
    sch = cosine_schedule(N=50)
    t = torch.arange(51, dtype=torch.float64) / 50
    assert torch.allclose(sch.alpha(t) ** 2, sch.alpha_bars, rtol=1e-12, atol=1e-300)
    mid = torch.rand(100, dtype=torch.float64)
    assert torch.allclose(sch.alpha(mid) ** 2 + sch.sigma(mid) ** 2, torch.ones(100, dtype=torch.float64))
    # between grid points alpha_bar is log-linear: monotone decreasing
    dense = sch.alpha_bar(torch.linspace(0, 1, 1001, dtype=torch.float64))
    assert bool((dense.diff() < 0).all())


def test_cosine_schedule_matches_nichol_dhariwal():
    s, N = 0.008, 1000
    sch = cosine_schedule(N=N, s=s)
    f = lambda t: math.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    for i in [1, 10, 500, 900, 999]:
        beta = min(1 - f(i / N) / f((i - 1) / N), 0.999)
        assert sch.betas[i].item() == pytest.approx(beta, rel=1e-10)
    assert sch.betas[N].item() == pytest.approx(0.999)  # the clipped last step
    assert sch.betas.max().item() <= 0.999
    # away from the clip the chain reproduces alpha_bar(t) = f(t) / f(0)
    assert sch.alpha_bars[700].item() == pytest.approx(f(0.7) / f(0), rel=1e-10)


def test_continuous_vp_linear_is_the_limit_of_ddpm_linear():
    """beta_i = beta(t_i) / N: the discrete chain approaches the VP SDE's marginal as N grows (Song et al. eq. 29)."""
    vp = VPLinear(0.1, 20.0)
    t = torch.linspace(0.0, 1.0, 21, dtype=torch.float64)
    err = [(linear_schedule(N, 0.1 / N, 20.0 / N).alpha(t) - vp.alpha(t)).abs().max().item() for N in (100, 1000)]
    assert err[1] < 2e-3
    assert err[1] < err[0] / 5  # first order in 1 / N
    assert torch.allclose(vp.alpha(t) ** 2 + vp.sigma(t) ** 2, torch.ones_like(t))


def test_vp_linear_alpha_solves_the_sde_mean_ode():
    """d log alpha / dt = -beta(t) / 2, checked with autograd against the closed form for alpha."""
    vp = VPLinear(0.1, 20.0)
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64).requires_grad_()
    (grad,) = torch.autograd.grad(vp.log_alpha(t).sum(), t)
    assert torch.allclose(grad, -0.5 * vp.beta(t.detach()), rtol=1e-12)


def test_vp_cosine_matches_formula_and_endpoints():
    vp = VPCosine()
    assert vp.alpha(0.0).item() == pytest.approx(1.0)
    assert vp.alpha(1.0).item() == pytest.approx(0.0, abs=1e-12)
    t = torch.tensor([0.3], dtype=torch.float64)
    assert vp.alpha(t).item() ** 2 == pytest.approx(cosine_alpha_bar(t).item())
    snr = vp.log_snr(torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64))
    assert bool((snr.diff() < 0).all())


def test_respace_keeps_alpha_bars_and_times():
    sch = linear_schedule()
    sub = sch.evenly_spaced(10)
    idx = torch.tensor([100, 200, 300, 400, 500, 600, 700, 800, 900, 1000])
    assert sub.N == 10
    assert torch.allclose(sub.alpha_bars[1:], sch.alpha_bars[idx], rtol=1e-12)
    assert torch.allclose(sub.times[1:], idx.double() / 1000)
    assert torch.allclose(sub.alpha(sub.times), sch.alpha(sub.times), rtol=1e-12)


def test_posterior_variance_formula():
    sch = linear_schedule(N=10, beta_start=0.1, beta_end=0.5)
    i = torch.arange(1, 11)
    ab = sch.alpha_bars
    expected = torch.tensor([(1 - ab[k - 1]) / (1 - ab[k]) * sch.betas[k] for k in range(1, 11)])
    assert torch.allclose(sch.posterior_variance(i), expected.double())
    assert sch.posterior_variance(torch.tensor([1])).item() == 0.0


# --- the converter ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variance_preserving", [True, False])
def test_all_conversions_round_trip(variance_preserving):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(64, 3, generator=g, dtype=torch.float64), torch.randn(64, 3, generator=g,
                                                                                 dtype=torch.float64)
    alpha = torch.rand(64, 1, generator=g, dtype=torch.float64) * 0.9 + 0.05
    sigma = torch.sqrt(1 - alpha ** 2) if variance_preserving else torch.rand(64, 1, generator=g,
                                                                              dtype=torch.float64) * 3 + 0.1
    x_t = alpha * x0 + sigma * eps
    truth = {k: targets(x0, eps, alpha, sigma, k) for k in PREDICTIONS}
    assert torch.allclose(truth["v"], alpha * eps - sigma * x0)
    assert torch.allclose(truth["score"], -eps / sigma)  # score of N(alpha x0, sigma^2 I) at x_t
    for kind in PREDICTIONS:
        assert torch.allclose(to_x0(truth[kind], kind, x_t, alpha, sigma), x0, atol=1e-10)
        assert torch.allclose(to_eps(truth[kind], kind, x_t, alpha, sigma), eps, atol=1e-10)
        for to in PREDICTIONS:
            assert torch.allclose(convert(truth[kind], kind, to, x_t, alpha, sigma), truth[to], atol=1e-9), (kind, to)


def test_predict_x0_eps_uses_the_declared_prediction():
    sch = cosine_schedule(N=100)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 2, generator=g, dtype=torch.float64)
    t = torch.full((8,), 0.37, dtype=torch.float64)
    a, s = sch.coefficients(t, x0)
    x_t = a * x0 + s * eps

    class Oracle(torch.nn.Module):  # returns the true target of its declared kind
        def __init__(self, kind):
            super().__init__()
            self.prediction = kind

        def forward(self, x, t, cond=None):
            return targets(x0, eps, a, s, self.prediction)

    for kind in PREDICTIONS:
        x0_hat, eps_hat = predict_x0_eps(Oracle(kind), x_t, t, sch)
        assert torch.allclose(x0_hat, x0, atol=1e-10) and torch.allclose(eps_hat, eps, atol=1e-10)


def test_ve_is_geometric_and_inverts():
    sch = VE(sigma_min=0.01, sigma_max=50.0)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.equal(sch.alpha(t), torch.ones_like(t)) and not sch.variance_preserving
    assert sch.sigma(0.0).item() == pytest.approx(0.01, rel=1e-14)
    assert sch.sigma(1.0).item() == pytest.approx(50.0, rel=1e-14)
    ratios = sch.sigma(t[1:]) / sch.sigma(t[:-1])  # a geometric ladder: constant ratio (50 / 0.01)^(1/10)
    assert torch.allclose(ratios, torch.full_like(ratios, 5000.0 ** 0.1), rtol=1e-12)
    assert torch.allclose(sch.time_of_sigma(sch.sigma(t)), t, atol=1e-12)
    # log-SNR falls linearly in t: lambda(t) = -2 log sigma(t)
    lam = sch.log_snr(t)
    assert torch.allclose(lam.diff(), torch.full((10,), -0.2 * math.log(5000.0), dtype=torch.float64), atol=1e-10)


def test_sub_vp_variance_formula():
    """Song et al. (2021, eq. 29): sub-VP keeps VP's mean and has variance (1 - exp(-int_0^t beta))^2."""
    sub, vp = SubVP(0.1, 20.0), VPLinear(0.1, 20.0)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    integral = 0.1 * t + 0.5 * t ** 2 * (20.0 - 0.1)  # int_0^t beta(s) ds, by hand
    assert torch.allclose(sub.alpha(t), torch.exp(-0.5 * integral), rtol=1e-12)
    assert torch.allclose(sub.sigma(t) ** 2, (1 - torch.exp(-integral)) ** 2, rtol=1e-10, atol=1e-300)
    assert bool((sub.sigma(t[1:]) ** 2 <= vp.sigma(t[1:]) ** 2).all())  # below VP's variance
    assert sub.sigma(1e-6).item() == pytest.approx(1e-6 * 0.1, rel=1e-4)  # ~ int beta near 0, no cancellation


def test_schedule_bad_input():
    with pytest.raises(ValueError, match="betas"):
        DiscreteSchedule(torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError, match="betas"):
        DiscreteSchedule(torch.tensor([0.1, float("nan")]))
    with pytest.raises(ValueError, match="betas"):
        DiscreteSchedule(torch.tensor([0.0, 0.1]))
    with pytest.raises(ValueError, match="N"):
        linear_schedule(N=0)
    with pytest.raises(ValueError, match="beta_end"):
        linear_schedule(beta_start=0.02, beta_end=0.01)
    with pytest.raises(ValueError, match="beta_start"):
        linear_schedule(beta_start=-0.1)
    with pytest.raises(ValueError, match="max_beta"):
        cosine_schedule(max_beta=1.5)
    with pytest.raises(ValueError, match="s must"):
        cosine_schedule(s=-0.1)
    with pytest.raises(ValueError, match="beta_max"):
        VPLinear(beta_min=1.0, beta_max=0.5)
    with pytest.raises(ValueError, match="t must lie in"):
        linear_schedule().alpha(1.5)
    with pytest.raises(ValueError, match="t "):
        VPLinear().sigma(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="steps"):
        linear_schedule(N=10).evenly_spaced(11)
    with pytest.raises(ValueError, match="i must lie"):
        linear_schedule(N=10).posterior_variance(torch.tensor([11]))
    with pytest.raises(ValueError, match="indices"):
        linear_schedule(N=10).respace([5, 3])
    with pytest.raises(ValueError, match="sigma_max"):
        VE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="sigma_min"):
        VE(sigma_min=0.0)
    with pytest.raises(ValueError, match="sigma must lie"):
        VE(0.01, 10.0).time_of_sigma(20.0)
    with pytest.raises(ValueError, match="beta_min"):
        SubVP(beta_min=-1.0)
    with pytest.raises(ValueError, match="kind"):
        to_x0(torch.zeros(1), "noise", torch.zeros(1), torch.ones(1), torch.ones(1))


# --- time_of_log_snr: exact / closed-form inverses of the log-SNR --------------------------------------------

@pytest.mark.parametrize("schedule", [linear_schedule(1000), cosine_schedule(200),
                                      linear_schedule(1000).evenly_spaced(7),
                                      VPLinear(), VPLinear(0.5, 0.5), VPCosine(), VE(0.01, 50.0), SubVP()],
                         ids=["linear", "cosine", "respaced", "vp", "vp_const", "vp_cosine", "ve", "subvp"])
def test_time_of_log_snr_inverts_log_snr(schedule):
    t = torch.tensor([0.0015, 0.002, 0.1, 0.37, 0.5, 0.93, 0.999], dtype=torch.float64)
    if isinstance(schedule, DiscreteSchedule):
        t = torch.cat([t * float(schedule.times[-1]), schedule.times[1:]])  # between and on the grid points
    t_back = schedule.time_of_log_snr(schedule.log_snr(t))
    assert t_back.dtype == torch.float64 and t_back.shape == t.shape
    assert torch.allclose(t_back, t, rtol=0, atol=1e-11)
    # the closed forms agree with the generic bisection of the base class
    assert torch.allclose(NoiseSchedule.time_of_log_snr(schedule, schedule.log_snr(t)), t_back, rtol=0, atol=1e-11)
