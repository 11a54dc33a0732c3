"""Score SDEs against closed forms: SDE coefficients vs the schedules' marginals, the samplers on exact mixture
scores, the probability-flow ODE's convergence order on a Gaussian, and the ODE likelihood vs exact densities."""

import math

import pytest
import torch

from diffedu import likelihood, sde
from diffedu.grids import time_grid


def tg(steps, schedule=None):
    """The time grid of ``steps`` steps from 1 down to the schedule's default t_min (1e-3, or 0 for VE)."""
    return time_grid(steps, 1e-3 if schedule is None else sde.default_t_min(schedule))
from diffedu.metrics import energy_distance
from diffedu.schedules import VE, DiscreteSchedule, SubVP, VPCosine, VPLinear, cosine_schedule, linear_schedule
from diffedu.toy import ExactModel, GaussianMixture, eight_gaussians, gaussian

SCHEDULES = {
    "vp": VPLinear(),
    "subvp": SubVP(),
    "ve": VE(sigma_min=0.01, sigma_max=10.0),
    "ddpm": linear_schedule(),
}


def small_mixture():
    """A 3-component mixture in 3-D with full covariances: asymmetric, so a wrong sampler shows. It is centred
    (mean zero), as data should be for the VE prior N(0, (1 + sigma_max^2) I): the ODE has no noise to forget
    a prior that is off-centre by a fraction of sigma_max."""
    g = torch.Generator().manual_seed(0)
    means = 1.5 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    means = means - torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64) @ means
    A = torch.randn(3, 3, 3, generator=g, dtype=torch.float64)
    covs = 0.3 * A @ A.transpose(1, 2) / 3 + 0.05 * torch.eye(3, dtype=torch.float64)
    return GaussianMixture(means, covs, torch.tensor([0.2, 0.3, 0.5]))


# --- the forward SDE of each schedule ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "ddpm", "cosine", "vpcosine"])
def test_coefficients_reproduce_the_marginals(name):
    """d alpha/dt = f alpha and d sigma^2/dt = 2 f sigma^2 + g^2, checked with central differences of the
    schedule's own alpha and sigma (inside the segments of the discrete chains, where they are smooth)."""
    sch = {**SCHEDULES, "cosine": cosine_schedule(N=100), "vpcosine": VPCosine()}[name]
    t = torch.tensor([0.0123, 0.1057, 0.3331, 0.5047, 0.7779, 0.9412], dtype=torch.float64)
    h = 1e-7 if name in ("ddpm", "cosine") else 1e-5  # the chains' segments are 1e-3 and 1e-2 wide
    f, g = sde.sde_coefficients(sch, t)
    d_alpha = (sch.alpha(t + h) - sch.alpha(t - h)) / (2 * h)
    d_var = (sch.sigma(t + h) ** 2 - sch.sigma(t - h) ** 2) / (2 * h)
    assert torch.allclose(d_alpha, f * sch.alpha(t), rtol=1e-5, atol=1e-9)
    assert torch.allclose(d_var, 2 * f * sch.sigma(t) ** 2 + g ** 2, rtol=1e-5, atol=1e-9)
    assert f.dtype == g.dtype == torch.float64 and bool((g > 0).all())


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_closed_forms_equal_the_generic_route(name):
    sch = SCHEDULES[name]
    t = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    f, g = sde.sde_coefficients(sch, t)
    f_gen, g_gen = sde.generic_sde_coefficients(sch, t)
    assert torch.allclose(f, f_gen, rtol=1e-10, atol=1e-12)
    assert torch.allclose(g, g_gen, rtol=1e-8, atol=1e-10)


def test_papers_closed_forms():
    vp, subvp, ve = SCHEDULES["vp"], SCHEDULES["subvp"], SCHEDULES["ve"]
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    beta = 0.1 + t * 19.9
    assert torch.allclose(sde.sde_coefficients(vp, t)[1] ** 2, beta)
    integral = 0.1 * t + 0.5 * 19.9 * t ** 2  # int_0^t beta
    assert torch.allclose(sde.sde_coefficients(subvp, t)[1] ** 2, beta * (1 - torch.exp(-2 * integral)))
    sigma = 0.01 * 1000.0 ** t
    assert torch.allclose(sde.sde_coefficients(ve, t)[1], sigma * math.sqrt(2 * math.log(1000.0)))
    assert torch.equal(sde.sde_coefficients(ve, t)[0], torch.zeros(3, dtype=torch.float64))


def test_discrete_chain_has_piecewise_constant_coefficients():
    """DDPM's chain: log alpha_bar is linear between t_{i-1} and t_i, so f = g^2 / -2 = log(1 - beta_i) N / 2."""
    sch = linear_schedule(N=10, beta_start=0.01, beta_end=0.3)
    i = torch.arange(1, 11)
    mid = (i - 0.5) / 10
    f, g = sde.sde_coefficients(sch, mid.double())
    expected = 0.5 * torch.log(1 - sch.betas[1:]) * 10
    assert torch.allclose(f, expected, rtol=1e-10)
    assert torch.allclose(g ** 2, -2 * expected, rtol=1e-8)
    # on a grid point the left segment's slope is used
    f_grid, _ = sde.sde_coefficients(sch, torch.tensor([0.3], dtype=torch.float64))
    assert torch.allclose(f_grid, expected[2:3], rtol=1e-10)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "ddpm"])
def test_forward_sde_moments_follow_the_marginals(name):
    """The mean m and variance v of x_t | x0 under Euler–Maruyama obey m <- (1 + f h) m, v <- (1 + f h)^2 v + g^2 h.
    With small steps they must land on alpha(t) x0 and sigma(t)^2 - a^2 sigma(0)^2 (a = alpha(t) / alpha(0))."""
    sch = SCHEDULES[name]
    steps = 4000
    ts = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    f, g = sde.sde_coefficients(sch, ts[:-1])
    h = 1.0 / steps
    m, v = torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    for k in range(steps):
        m, v = (1 + f[k] * h) * m, (1 + f[k] * h) ** 2 * v + g[k] ** 2 * h
        if k + 1 in (steps // 4, steps):
            t = ts[k + 1]
            a = float(sch.alpha(t) / sch.alpha(0.0))
            var = float(sch.sigma(t) ** 2 - a ** 2 * sch.sigma(0.0) ** 2)
            assert float(m) == pytest.approx(a * 0.8, rel=5e-3)
            assert float(v) == pytest.approx(var, rel=5e-3)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_forward_simulation_has_the_marginal_moments(name):
    """Monte Carlo: simulated paths from x0 at t = 0 have the marginal's mean and variance at t = 1."""
    sch = SCHEDULES[name]
    x0 = torch.full((10_000, 1), 0.8, dtype=torch.float64)
    x, traj = sde.simulate_forward_sde(x0, sch, steps=400, generator=torch.Generator().manual_seed(1),
                                       return_trajectory=True)
    assert len(traj) == 401 and torch.equal(traj[-1], x)
    a, var = float(sch.alpha(1.0)), float(sch.sigma(1.0) ** 2 - sch.sigma(0.0) ** 2)
    assert abs(x.mean().item() - a * 0.8) < 5 * math.sqrt(var / len(x))
    assert x.var().item() == pytest.approx(var, rel=0.06)
    # the check can fail: without the -2 f sigma^2 term in g^2 the VP variance would be far larger at t = 1
    if name == "vp":
        f, g = sde.sde_coefficients(sch, torch.linspace(0, 1, 401, dtype=torch.float64))
        assert float((g ** 2).mean()) > 5 * var


# --- samplers on an exact score ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixture_reference():
    """Exact samples and the exact-vs-exact floor of the energy distance (the median over 5 fresh sets: in 3-D
    with 1200 points a single pair's distance varies by a factor of 3)."""
    gm = small_mixture()
    ref = gm.sample(1200, torch.Generator().manual_seed(10))[0]
    floors = [energy_distance(ref, gm.sample(1200, torch.Generator().manual_seed(s))[0]) for s in range(11, 16)]
    return gm, ref, float(torch.tensor(floors).median())


@pytest.mark.parametrize("sampler,name", [("em", "vp"), ("em", "ve"), ("pc", "vp"), ("pc", "ve"), ("pc", "ddpm"),
                                          ("ode", "vp"), ("ode", "ve"), ("ode", "ddpm")])
def test_samplers_reproduce_the_mixture(mixture_reference, sampler, name):
    gm, ref, floor = mixture_reference
    sch = SCHEDULES[name]
    model = ExactModel(gm, sch, "eps")
    x_T = sde.prior_sample(sch, (1200, 3), torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    if sampler == "em":
        x = sde.euler_maruyama_sample(model, x_T, sch, tg(200, sch), generator=g, progress=False)
    elif sampler == "pc":
        x = sde.predictor_corrector_sample(model, x_T, sch, tg(100, sch), snr=0.16, generator=g, progress=False)
    else:
        x = sde.ode_sample(model, x_T, sch, tg(40, sch), method="heun", progress=False)
    assert x.shape == x_T.shape and x.dtype == torch.float64
    assert torch.allclose(x.mean(0), gm.mean(), atol=0.12)
    assert torch.allclose(torch.cov(x.T), gm.covariance(), atol=0.25)
    assert energy_distance(x, ref) < 2.5 * floor


def test_a_wrong_score_is_detected(mixture_reference):
    """The same check fails for a sampler that uses the score with the wrong scale (half of it)."""
    gm, ref, floor = mixture_reference
    sch = SCHEDULES["vp"]
    model = ExactModel(gm, sch, "score")
    half = lambda x, t, cond=None: 0.5 * model(x, t, cond)  # noqa: E731
    half.prediction = "score"
    x_T = sde.prior_sample(sch, (1200, 3), torch.Generator().manual_seed(0), dtype=torch.float64)
    x = sde.euler_maruyama_sample(half, x_T, sch, tg(200, sch), generator=torch.Generator().manual_seed(1),
                                  progress=False)
    assert energy_distance(x, ref) > 5 * floor


def test_samplers_are_reproducible_and_return_trajectories():
    gm, sch = eight_gaussians(), VPLinear()
    model = ExactModel(gm, sch)
    x_T = sde.prior_sample(sch, (50, 2), torch.Generator().manual_seed(0))
    a, traj, x0s = sde.predictor_corrector_sample(model, x_T, sch, tg(20, sch),
                                                  generator=torch.Generator().manual_seed(2), progress=False,
                                                  return_trajectory=True)
    b = sde.predictor_corrector_sample(model, x_T, sch, tg(20, sch), generator=torch.Generator().manual_seed(2),
                                       progress=False)
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert len(traj) == 20 + 1 and len(x0s) == 20 and torch.equal(traj[0], x_T)  # a: the denoised last state
    c, traj, _ = sde.ode_sample(model, x_T, sch, tg(10, sch), method="rk4", denoise=False, progress=False,
                                return_trajectory=True)
    assert len(traj) == 11 and torch.equal(traj[-1], c)
    assert sde.model_calls("ode", 10, method="rk4", denoise=False) == 40
    assert sde.model_calls("predictor_corrector", 20, corrector_steps=2) == 61


def test_predictor_alone_and_reverse_diffusion_on_ve_is_ncsn_step():
    """Reverse diffusion on VE: x_s = x_t + (sigma_t^2 - sigma_s^2) score + sqrt(sigma_t^2 - sigma_s^2) z."""
    gm, sch = eight_gaussians(), VE(0.01, 10.0)
    model = ExactModel(gm, sch, "score")
    x = torch.randn(8, 2, dtype=torch.float64) * 3
    t, s = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.55, dtype=torch.float64)
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out, _ = sde.reverse_diffusion_step(model, x, t, s, sch, generator=torch.Generator().manual_seed(0))
    d = float(sch.sigma(t) ** 2 - sch.sigma(s) ** 2)
    score = gm.score(x, 1.0, sch.sigma(t))
    assert torch.allclose(out, x + d * score + math.sqrt(d) * z, atol=1e-10)


# --- the probability-flow ODE on a Gaussian: exact map and convergence order -------------------------------------

def gaussian_flow(sch, x1, mu, s, t):
    """The PF-ODE of N(mu, s^2) data maps x_1 to alpha mu + sqrt(alpha^2 s^2 + sigma^2) (x_1 - a1 mu) / sqrt(v_1)."""
    a1, s1 = float(sch.alpha(1.0)), float(sch.sigma(1.0))
    a, sg = float(sch.alpha(t)), float(sch.sigma(t))
    return a * mu + math.sqrt(a ** 2 * s ** 2 + sg ** 2) * (x1 - a1 * mu) / math.sqrt(a1 ** 2 * s ** 2 + s1 ** 2)


@pytest.mark.parametrize("name", ["vp", "ve"])
@pytest.mark.parametrize("method,order,steps", [("euler", 1, (32, 64, 128)), ("heun", 2, (32, 64, 128)),
                                                ("rk4", 4, (16, 32, 64))])
def test_ode_converges_at_the_solvers_order(name, method, order, steps):
    mu, s = 0.7, 0.5
    sch = SCHEDULES[name]
    model = ExactModel(gaussian(torch.tensor([mu]), s), sch, "eps")
    x1 = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None] * sde.prior_std(sch)
    t_min = sde.default_t_min(sch)
    exact = gaussian_flow(sch, x1, mu, s, t_min)
    errors = [(sde.ode_sample(model, x1, sch, tg(n, sch), method=method, denoise=False, progress=False) - exact).abs().max()
              for n in steps]
    observed = [math.log2(errors[k] / errors[k + 1]) for k in range(len(errors) - 1)]
    assert all(order - 0.35 < p < order + 0.7 for p in observed), observed
    assert errors[-1] < {1: 0.2, 2: 2e-3, 4: 1e-5}[order]


# --- likelihood through the ODE ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "ddpm"])
def test_ode_likelihood_of_a_gaussian_and_a_mixture(name):
    """The ODE part (delta plus the *exact* log p_1 of the latent) is exact to solver accuracy; with the library's
    prior N(0, (alpha^2 + sigma^2) I) in place of p_1 it stays close (for VE the data's mean is off-centre by a
    fraction of sigma_max, which the prior ignores)."""
    sch = SCHEDULES[name]
    t_min = sde.default_t_min(sch)
    a, s = float(sch.alpha(t_min)), float(sch.sigma(t_min))
    a1, s1 = float(sch.alpha(1.0)), float(sch.sigma(1.0))
    for dist in (gaussian(torch.tensor([0.7, -0.3]), 0.5), eight_gaussians()):
        x = dist.sample(40, torch.Generator().manual_seed(0))[0]
        result = likelihood.log_likelihood(ExactModel(dist, sch), x, sch)
        exact = dist.marginal(a, s).log_prob(x)
        ode = result.delta_log_prob + dist.marginal(a1, s1).log_prob(result.latent)
        assert (ode - exact).mean().abs() < 1e-2
        assert (ode - exact).abs().median() < 1e-3
        assert (result.log_prob - exact).mean().abs() < (5e-2 if name == "ve" else 1e-2)
        assert torch.allclose(result.log_prob, result.prior_log_prob + result.delta_log_prob)
        assert result.latent.shape == x.shape and result.nfe > 10


def test_ode_likelihood_of_a_3d_mixture_and_a_wrong_model_differs():
    gm, sch = small_mixture(), VPLinear()
    x = gm.sample(30, torch.Generator().manual_seed(0))[0]
    exact = gm.marginal(float(sch.alpha(1e-3)), float(sch.sigma(1e-3))).log_prob(x)
    good = likelihood.log_likelihood(ExactModel(gm, sch), x, sch).log_prob
    assert (good - exact).mean().abs() < 1e-2
    other = GaussianMixture(gm.means + 0.3, gm.covs, gm.weights)  # a slightly wrong model
    bad = likelihood.log_likelihood(ExactModel(other, sch), x, sch).log_prob
    assert (bad - exact).mean() < -0.1


def test_hutchinson_agrees_within_its_standard_error():
    gm, sch = eight_gaussians(), VPLinear()
    model = ExactModel(gm, sch)
    x = gm.sample(48, torch.Generator().manual_seed(0))[0]
    exact = likelihood.log_likelihood(model, x, sch).log_prob
    for probe in ("rademacher", "gaussian"):
        est = likelihood.log_likelihood(model, x, sch, trace="hutchinson", probe=probe,
                                 generator=torch.Generator().manual_seed(1)).log_prob
        diff = est - exact
        se = diff.std() / math.sqrt(len(diff))
        assert diff.std() > 1e-3  # it is an estimate: each example's value is off by a random amount
        assert diff.mean().abs() < 3.5 * se


def test_bits_per_dim_of_a_known_discrete_density():
    """Pixels uniform on K levels, modelled by the exact PF-ODE of a narrow mixture on the levels: the dequantised
    bound must lie above the true entropy log2 K and, with a smooth enough t_min, close to it."""
    K = 5
    levels = torch.linspace(-1, 1, K, dtype=torch.float64)
    grid = torch.cartesian_prod(levels, levels)  # (25, 2): every pixel pair, equally likely
    sch = VPLinear()
    model = ExactModel(GaussianMixture(grid, 0.02), sch)
    x = grid[torch.randint(0, len(grid), (30,), generator=torch.Generator().manual_seed(0))]
    bpd = likelihood.bits_per_dim(model, x, sch, levels=K, t_min=0.05, trace="exact",
                           generator=torch.Generator().manual_seed(1))  # sigma(t_min) = 0.17, bins 0.5 wide
    assert bpd.shape == (30,)
    assert math.log2(K) - 0.02 < bpd.mean().item() < math.log2(K) + 0.2


# --- bad input --------------------------------------------------------------------------------------------------

def test_bad_input():
    gm, sch = eight_gaussians(), VPLinear()
    model = ExactModel(gm, sch)
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="t must lie"):
        sde.sde_coefficients(sch, 1.5)
    with pytest.raises(ValueError, match="t_min must be smaller than t_max"):
        sde.euler_maruyama_sample(model, x, sch, time_grid(10, 0.5, 0.5), progress=False)
    with pytest.raises(ValueError, match="t_min must lie"):
        sde.ode_sample(model, x, sch, time_grid(10, -0.1), progress=False)
    with pytest.raises(ValueError, match="t_min must be > 0"):
        sde.ode_sample(model, x, sch, time_grid(10, 0.0), progress=False)
    with pytest.raises(ValueError, match="t_max must lie"):
        sde.euler_maruyama_sample(model, x, sch, time_grid(10, 1e-3, 2.0), progress=False)
    with pytest.raises(ValueError, match="times must be strictly decreasing"):
        sde.euler_maruyama_sample(model, x, sch, torch.tensor([0.5, 0.7, 0.1], dtype=torch.float64), progress=False)
    with pytest.raises(ValueError, match="steps must be an integer"):
        sde.euler_maruyama_sample(model, x, sch, tg(0), progress=False)
    with pytest.raises(ValueError, match="steps must be an integer"):
        sde.ode_sample(model, x, sch, tg(2.5), progress=False)
    with pytest.raises(ValueError, match="snr must lie"):
        sde.predictor_corrector_sample(model, x, sch, tg(10), snr=0.0, progress=False)
    with pytest.raises(ValueError, match="corrector_steps"):
        sde.predictor_corrector_sample(model, x, sch, tg(10), corrector_steps=-1, progress=False)
    with pytest.raises(ValueError, match="predictor must be one of"):
        sde.predictor_corrector_sample(model, x, sch, tg(10), predictor="ancestral", progress=False)
    with pytest.raises(ValueError, match="method must be one of"):
        sde.ode_sample(model, x, sch, tg(10), method="rk45", progress=False)
    with pytest.raises(ValueError, match="x_T contains NaN"):
        sde.euler_maruyama_sample(model, torch.full((4, 2), float("nan")), sch, tg(10), progress=False)
    with pytest.raises(ValueError, match="x_T must have shape"):
        sde.euler_maruyama_sample(model, torch.zeros(2), sch, tg(10), progress=False)
    with pytest.raises(ValueError, match="x_T must be a floating-point"):
        sde.euler_maruyama_sample(model, torch.zeros(4, 2, dtype=torch.long), sch, tg(10), progress=False)
    with pytest.raises(ValueError, match="cond must have one entry"):
        sde.euler_maruyama_sample(model, x, sch, tg(10), cond=torch.zeros(3, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="model output must have the shape"):
        bad = lambda y, t, cond=None: y[:, :1]  # noqa: E731
        sde.ode_sample(bad, x, sch, tg(10), progress=False)
    with pytest.raises(ValueError, match="trace must be one of"):
        likelihood.log_likelihood(model, x, sch, trace="skilling")
    with pytest.raises(ValueError, match="probe must be one of"):
        likelihood.log_likelihood(model, x, sch, trace="hutchinson", probe="uniform")
    with pytest.raises(ValueError, match="x contains NaN"):
        likelihood.log_likelihood(model, torch.full((4, 2), float("nan")), sch)
    with pytest.raises(ValueError, match="x must lie in"):
        likelihood.bits_per_dim(model, 3 * torch.ones(4, 2), sch, levels=17)
    with pytest.raises(ValueError, match="levels must be an integer"):
        likelihood.bits_per_dim(model, torch.zeros(4, 2), sch, levels=1)
    with pytest.raises(ValueError, match="t_start must be smaller"):
        sde.simulate_forward_sde(x, sch, 10, t_start=0.5, t_end=0.2)
    with pytest.raises(ValueError, match="sampler must be one of"):
        sde.model_calls("ddim", 10)
    assert sde.default_t_min(VE()) == 0.0 and sde.default_t_min(sch) == 1e-3
    assert isinstance(linear_schedule(), DiscreteSchedule)


def test_exact_model_is_differentiable_in_x():
    """The exact divergence of the exact score is the Laplacian of log p_t, computed here from log_prob's Hessian."""
    from diffedu.ncsn import score_fn

    gm, sch = small_mixture(), VPLinear()
    model = ExactModel(gm, sch, "eps")
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = 0.3
    _, div = likelihood.divergence_exact(score_fn(model, t, sch), x)
    a, s = sch.alpha(t), sch.sigma(t)
    laplacian = torch.stack([torch.trace(torch.autograd.functional.hessian(
        lambda y: gm.log_prob(y[None], a, s)[0], row)) for row in x])
    assert torch.allclose(div, laplacian, atol=1e-8)
