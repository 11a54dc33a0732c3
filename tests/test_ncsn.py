"""Score matching (explicit, sliced, denoising), the NCSN loss and (annealed) Langevin dynamics against closed forms.

Every expectation is checked against its closed form within a few standard errors of its own Monte Carlo estimate
(never against a stored number), and every sampler against exact samples with the energy distance, whose noise
floor is measured from two independent exact sample sets.
"""

import math

import pytest
import torch
from torch import nn

from diffedu import ncsn
from diffedu.grids import check_sigma_ladder
from diffedu.predictions import predict_x0_eps
from diffedu.metrics import energy_distance
from diffedu.schedules import VE, linear_schedule
from diffedu.toy import ExactModel, GaussianMixture, gaussian

Z = 4.5  # standard errors allowed for a Monte Carlo mean (a false alarm about once in 150 000 runs)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_mean_zero(values: torch.Tensor, what: str) -> None:
    """The sample mean of ``values`` is within Z standard errors of 0."""
    mean, se = values.mean().item(), values.std().item() / math.sqrt(len(values))
    assert abs(mean) < Z * se + 1e-12, f"{what}: mean {mean:.4g} is {abs(mean) / se:.1f} standard errors from 0"


def anisotropic_gaussian(D: int = 3) -> tuple[GaussianMixture, torch.Tensor, torch.Tensor]:
    A = torch.randn(D, D, generator=gen(11), dtype=torch.float64)
    cov = A @ A.T / D + 0.3 * torch.eye(D, dtype=torch.float64)
    mu = torch.randn(D, generator=gen(12), dtype=torch.float64)
    return gaussian(mu, cov), mu, cov


def wiggly_score(x: torch.Tensor) -> torch.Tensor:
    """A nonlinear score field with a non-symmetric Jacobian (not the score of anything)."""
    return torch.stack([torch.tanh(x[:, 0] * x[:, 1]) - x[:, 0], torch.sin(x[:, 0]) - 0.5 * x[:, 1] ** 3], dim=1)


def unequal_mixture() -> GaussianMixture:
    """Three well-separated components on a circle with weights 0.6 / 0.3 / 0.1 (chapter 2's running example)."""
    angles = torch.tensor([90.0, 210.0, 330.0], dtype=torch.float64) * math.pi / 180
    means = 2.5 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(means, 0.35, torch.tensor([0.6, 0.3, 0.1]))


def component_fractions(mix: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    k = mix.responsibilities(x.double(), 1.0, 0.0).argmax(dim=1)
    return torch.bincount(k, minlength=mix.K).double() / len(x)


# --- the noise ladder --------------------------------------------------------------------------------------------

def test_geometric_sigmas_endpoints_and_constant_ratio():
    sigmas = ncsn.geometric_sigmas(232, 0.01, 50.0)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (232,)
    assert sigmas[0].item() == pytest.approx(50.0, rel=1e-12) and sigmas[-1].item() == pytest.approx(0.01, rel=1e-12)
    ratios = sigmas[:-1] / sigmas[1:]
    assert torch.allclose(ratios, torch.full_like(ratios, (50 / 0.01) ** (1 / 231)), rtol=1e-10)
    assert check_sigma_ladder(VE(0.01, 50.0), sigmas)[0] == sigmas.tolist()
    assert ncsn.geometric_sigmas(1, 1.0, 2.0).tolist() == [2.0]  # one level: sigma_max


@pytest.mark.parametrize("bad", [[1.0, 2.0], [1.0, 1.0], [1.0, -0.5], [1.0, float("nan")], [[1.0, 0.5]], []])
def test_check_sigmas_rejects_bad_ladders(bad):
    with pytest.raises(ValueError, match="sigmas"):
        check_sigma_ladder(VE(0.01, 50.0), torch.tensor(bad))


def test_geometric_sigmas_bad_input():
    with pytest.raises(ValueError, match="sigma_max"):
        ncsn.geometric_sigmas(10, 1.0, 0.5)
    with pytest.raises(ValueError, match="sigma_min"):
        ncsn.geometric_sigmas(10, 0.0, 1.0)
    with pytest.raises(ValueError, match="steps"):
        ncsn.geometric_sigmas(0, 0.1, 1.0)


# --- explicit score matching ---------------------------------------------------------------------------------------

def test_explicit_score_matching_of_the_exact_gaussian_score():
    """For p = N(mu, Sigma) and s = grad log p = -Sigma^-1 (x - mu): tr J = -tr Sigma^-1 at every x, and
    J = -tr Sigma^-1 + 1/2 E||Sigma^-1 (x - mu)||^2 = -1/2 tr Sigma^-1 (isotropic: -D / (2 s^2))."""
    p, mu, cov = anisotropic_gaussian(3)
    x = p.sample(40_000, gen(0))[0]
    score = lambda y: p.score(y, 1.0, 0.0)
    per_example = ncsn.explicit_score_matching(score, x, reduction="none")
    prec = torch.linalg.inv(cov)
    trace = per_example - 0.5 * (score(x) ** 2).sum(1)
    assert torch.allclose(trace, torch.full_like(trace, -prec.trace().item()), atol=1e-9)
    assert_mean_zero(per_example + 0.5 * prec.trace(), "ESM of the exact score vs -tr(Sigma^-1) / 2")
    iso = gaussian(torch.zeros(4), 0.7)
    value = ncsn.explicit_score_matching(lambda y: iso.score(y, 1.0, 0.0), iso.sample(40_000, gen(1))[0])
    assert value.item() == pytest.approx(-4 / (2 * 0.7 ** 2), rel=0.02)


def test_explicit_score_matching_of_a_linear_field_and_its_minimiser():
    """s(x) = W x + b: J = tr W + 1/2 [tr(W Sigma W^T) + ||W mu + b||^2], minimised by the Gaussian's score:
    W = -Sigma^-1, b = Sigma^-1 mu."""
    p, mu, cov = anisotropic_gaussian(3)
    x = p.sample(20_000, gen(2))[0]
    W = torch.randn(3, 3, generator=gen(3), dtype=torch.float64)
    b = torch.randn(3, generator=gen(4), dtype=torch.float64)
    per_example = ncsn.explicit_score_matching(lambda y: y @ W.T + b, x, reduction="none")
    closed = W.trace() + 0.5 * ((W @ cov @ W.T).trace() + ((W @ mu + b) ** 2).sum())
    assert_mean_zero(per_example - closed, "ESM of a linear field vs its closed form")

    # the minimiser over the linear family, on this sample: the exact score of N(sample mean, sample covariance)
    lin = nn.Linear(3, 3).double()
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = ncsn.explicit_score_matching(lin, x)
        loss.backward()
        return loss

    opt.step(closure)
    emp_prec = torch.linalg.inv(torch.cov(x.T, correction=0))
    assert torch.allclose(lin.weight.detach(), -emp_prec, atol=1e-6)
    assert torch.allclose(lin.bias.detach(), emp_prec @ x.mean(0), atol=1e-6)
    assert torch.allclose(lin.weight.detach(), -torch.linalg.inv(cov), rtol=0.05, atol=0.05)


def test_explicit_score_matching_is_the_fisher_divergence_minus_a_constant():
    """Hyvärinen's Theorem 1 on a mixture: J(s) = 1/2 E||s - grad log p||^2 - 1/2 E||grad log p||^2 for any s."""
    mix = unequal_mixture()
    x = mix.sample(20_000, gen(5))[0]
    true = lambda y: mix.score(y, 1.0, 0.0)
    s = lambda y: 0.5 * true(y) + wiggly_score(y)
    per_example = ncsn.explicit_score_matching(s, x, reduction="none")
    with torch.no_grad():
        fisher_terms = 0.5 * ((s(x) - true(x)) ** 2).sum(1) - 0.5 * (true(x) ** 2).sum(1)
    assert_mean_zero(per_example - fisher_terms, "ESM vs Fisher divergence - const")
    assert ncsn.fisher_divergence(s, true, x) == pytest.approx(0.5 * ((s(x) - true(x)) ** 2).sum(1).mean().item())
    assert ncsn.fisher_divergence(true, true, x) == 0.0


# --- sliced score matching -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("projection", ["gaussian", "rademacher"])
@pytest.mark.parametrize("variance_reduction", [False, True])
def test_sliced_score_matching_is_unbiased_for_explicit(projection, variance_reduction):
    """E_v[v^T J v] = tr J and E_v[(v^T s)^2] = ||s||^2: SSM and SSM-VR average to ESM, example by example."""
    mix = unequal_mixture()
    x = mix.sample(20_000, gen(6))[0]
    s = lambda y: mix.score(y, 1.0, 0.0) + wiggly_score(y)
    esm = ncsn.explicit_score_matching(s, x, reduction="none")
    ssm = ncsn.sliced_score_matching(s, x, projection=projection, variance_reduction=variance_reduction,
                                     generator=gen(7), reduction="none")
    assert ssm.shape == esm.shape == (20_000,)
    assert_mean_zero(ssm - esm, f"SSM ({projection}, VR={variance_reduction}) - ESM")
    # more projections per point: the same mean, less variance
    ssm4 = ncsn.sliced_score_matching(s, x[:5000], n_projections=4, projection=projection,
                                      variance_reduction=variance_reduction, generator=gen(8), reduction="none")
    assert_mean_zero(ssm4 - esm[:5000], "SSM with 4 projections - ESM")
    assert (ssm4 - esm[:5000]).var() < 0.5 * (ssm[:5000] - esm[:5000]).var()


def test_sliced_score_matching_gradient_trains_the_same_minimiser():
    """SSM-VR with many projections, minimised over a linear family, lands near the Gaussian's exact score."""
    p, mu, cov = anisotropic_gaussian(3)
    x = p.sample(20_000, gen(9))[0]
    lin = nn.Linear(3, 3).double()
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = ncsn.sliced_score_matching(lin, x, n_projections=2, variance_reduction=True, generator=gen(10))
        loss.backward()
        return loss

    opt.step(closure)
    prec = torch.linalg.inv(cov)
    assert torch.allclose(lin.weight.detach(), -prec, atol=0.1 * prec.abs().max().item())
    assert torch.allclose(lin.bias.detach(), prec @ mu, atol=0.1 * (prec @ mu).abs().max().item())


# --- denoising score matching --------------------------------------------------------------------------------------

def test_denoising_score_matching_is_explicit_on_the_noised_data_plus_d_over_2_sigma2():
    """Vincent (2011): DSM(s; sigma) = J_ESM(s; p_sigma) + D / (2 sigma^2) for every s."""
    mix = unequal_mixture()
    sigma, n = 0.6, 40_000
    s = lambda y: 0.7 * mix.score(y, 1.0, sigma) + wiggly_score(y)
    dsm = ncsn.denoising_score_matching(s, mix.sample(n, gen(13))[0], sigma, generator=gen(14), reduction="none")
    noised = mix.marginal(1.0, sigma).sample(n, gen(15))[0]
    esm = ncsn.explicit_score_matching(s, noised, reduction="none")
    diff = dsm.mean().item() - esm.mean().item()
    se = math.sqrt(dsm.var().item() / n + esm.var().item() / n)
    assert abs(diff - 2 / (2 * sigma ** 2)) < Z * se


def test_denoising_score_matching_minimiser_is_the_noised_gaussian_score():
    """Over s(x) = W x + b the DSM minimiser is the score of N(mu, Sigma + sigma^2 I): W = -(Sigma + sigma^2 I)^-1."""
    p, mu, cov = anisotropic_gaussian(3)
    sigma = 0.5
    x0 = p.sample(100_000, gen(16))[0]
    lin = nn.Linear(3, 3).double()
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = ncsn.denoising_score_matching(lin, x0, sigma, generator=gen(17))  # same noise every call
        loss.backward()
        return loss

    opt.step(closure)
    prec = torch.linalg.inv(cov + sigma ** 2 * torch.eye(3, dtype=torch.float64))
    assert torch.allclose(lin.weight.detach(), -prec, atol=0.03)
    assert torch.allclose(lin.bias.detach(), prec @ mu, atol=0.03)
    # and the exact noised score's DSM value: D / (2 sigma^2) - 1/2 E||grad log p_sigma||^2 = (D/sigma^2 - tr prec) / 2
    exact = lambda y: -(y - mu) @ prec
    value = ncsn.denoising_score_matching(exact, x0, sigma, generator=gen(18), reduction="none")
    assert_mean_zero(value - 0.5 * (3 / sigma ** 2 - prec.trace()), "DSM of the exact noised score")


class EpsOf:
    """A deterministic eps-model for dsm_loss that records the times it was shown."""

    prediction = "eps"

    def __init__(self):
        self.times = []

    def __call__(self, x, t, cond=None):
        self.times.append(t)
        return 0.3 * x + t[:, None] - 0.2


def test_dsm_loss_of_an_eps_model_is_the_eps_mse():
    ve = VE(0.02, 5.0)
    x0 = torch.randn(512, 2, generator=gen(19), dtype=torch.float64)
    model = EpsOf()
    loss = ncsn.dsm_loss(model, x0, ve, generator=gen(20))
    g = gen(20)  # replay dsm_loss's draws: t ~ U[0, 1], then z
    t = torch.rand(512, generator=g, dtype=torch.float64)
    z = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x = x0 + ve.sigma(t)[:, None] * z
    assert loss.item() == pytest.approx(((model(x, t) - z) ** 2).mean().item(), rel=1e-12)


def test_dsm_loss_on_a_ladder_draws_its_levels_and_has_the_closed_form_minimum():
    """With the exact eps-model of N(mu, s^2 I), the loss per dimension is the mean over the ladder of
    Var(z | x) = s^2 / (s^2 + sigma_i^2)."""
    ve = VE(0.01, 10.0)
    sigmas = ncsn.geometric_sigmas(6, 0.1, 10.0)
    recorder = EpsOf()
    ncsn.dsm_loss(recorder, torch.zeros(3000, 2), ve, generator=gen(21), sigmas=sigmas)
    t = recorder.times[0].double()
    levels = ve.time_of_sigma(sigmas)
    hits = (t[:, None] - levels[None]).abs() < 1e-6
    assert bool((hits.sum(1) == 1).all())  # every t is a ladder level
    counts = hits.sum(0).double()
    assert bool(((counts - 500).abs() < 5 * math.sqrt(500)).all())  # drawn uniformly

    s = 0.8
    p = gaussian(torch.tensor([0.5, -1.0]), s)
    exact = ExactModel(p, ve, prediction="eps")
    losses = torch.stack([ncsn.dsm_loss(exact, p.sample(20_000, gen(22 + k))[0], ve, generator=gen(40 + k),
                                        sigmas=sigmas) for k in range(4)])
    expected = (s ** 2 / (s ** 2 + sigmas ** 2)).mean().item()
    assert losses.mean().item() == pytest.approx(expected, rel=0.02)


# --- Langevin dynamics -----------------------------------------------------------------------------------------------

def test_langevin_with_the_exact_score_samples_the_target():
    """Overlapping modes: plain Langevin mixes, and its samples are as close to exact ones as exact ones are."""
    mix = GaussianMixture(torch.tensor([[-0.8, 0.0], [0.8, 0.3]]), torch.tensor([0.6, 0.5]), torch.tensor([0.3, 0.7]))
    n = 1500
    x = ncsn.langevin_dynamics(lambda y: mix.score(y, 1.0, 0.0), 3 * torch.randn(n, 2, generator=gen(23),
                                                                                 dtype=torch.float64),
                               step_size=0.01, n_steps=800, generator=gen(24))
    ref = mix.sample(n, gen(25))[0]
    floor = sum(energy_distance(mix.sample(n, gen(26 + k))[0], ref) for k in range(3)) / 3
    assert energy_distance(x, ref) < 3 * floor
    assert energy_distance(x[:, [1, 0]], ref) > 10 * floor  # the test can tell a wrong sample apart


def test_plain_langevin_gets_the_weights_wrong_and_annealed_langevin_gets_them_right():
    """Song & Ermon (2019, Sec. 3.2.2): separated modes keep the fractions of the starting basins under plain
    Langevin; annealing the noise from sigma_max down restores the mixture weights."""
    mix = unequal_mixture()
    n = 1500
    ref = mix.sample(n, gen(30))[0]
    floor = sum(energy_distance(mix.sample(n, gen(31 + k))[0], ref) for k in range(3)) / 3
    start = (2 * torch.rand(n, 2, generator=gen(34), dtype=torch.float64) - 1) * 4  # uniform on [-4, 4]^2

    plain = ncsn.langevin_dynamics(lambda y: mix.score(y, 1.0, 0.0), start, step_size=0.01, n_steps=300,
                                   generator=gen(35))
    plain_error = 0.5 * (component_fractions(mix, plain) - mix.weights).abs().sum().item()  # total variation

    ve = VE(0.01, 6.0)
    sigmas = ncsn.geometric_sigmas(10, 0.01, 6.0)
    annealed = ncsn.annealed_langevin_sample(ExactModel(mix, ve), 6.0 * torch.randn(n, 2, generator=gen(36),
                                                                             dtype=torch.float64),
                                      ve, sigmas, n_steps_each=60, epsilon=0.5 * 0.01 ** 2, generator=gen(37),
                                      progress=False)
    annealed_error = 0.5 * (component_fractions(mix, annealed) - mix.weights).abs().sum().item()
    assert plain_error > 0.15 and annealed_error < 0.05
    assert energy_distance(annealed, ref) < 3 * floor
    assert energy_distance(plain, ref) > 10 * floor


def test_langevin_trajectory_and_annealed_trajectory_lengths():
    x0 = torch.zeros(5, 2)
    x, traj, _ = ncsn.langevin_dynamics(lambda y: -y, x0, 0.1, 7, generator=gen(0), return_trajectory=True)
    assert len(traj) == 8 and torch.equal(traj[-1], x) and torch.equal(traj[0], x0)
    ve = VE(0.1, 2.0)
    model = ExactModel(gaussian(torch.zeros(2), 1.0), ve)
    out, levels, x0s = ncsn.annealed_langevin_sample(model, torch.zeros(5, 2), ve, ncsn.geometric_sigmas(4, 0.1, 2.0),
                                                     n_steps_each=3, generator=gen(0), progress=False,
                                                     return_trajectory=True)
    assert len(levels) == 1 + 4 and len(x0s) == 4  # start and each level; out is the denoised last level
    undenoised = ncsn.annealed_langevin_sample(model, torch.zeros(5, 2), ve, ncsn.geometric_sigmas(4, 0.1, 2.0),
                                               n_steps_each=3, generator=gen(0), progress=False, denoise=False)
    assert torch.equal(levels[-1], undenoised)


def test_score_fn_freezes_a_network_at_one_time():
    ve = VE(0.01, 5.0)
    mix = unequal_mixture()
    model = ExactModel(mix, ve, prediction="x0")
    x = torch.randn(64, 2, generator=gen(1), dtype=torch.float64)
    t = ve.time_of_sigma(0.7)
    assert torch.allclose(ncsn.score_fn(model, t, ve)(x), mix.score(x, 1.0, 0.7), atol=1e-9)
    assert torch.allclose(ncsn.score_fn(model, t, ve)(x), -predict_x0_eps(model, x, t, ve)[1] / ve.sigma(t))


# --- bad input -------------------------------------------------------------------------------------------------------

def test_bad_input_raises_value_errors():
    x = torch.randn(8, 2)
    ok = lambda y: -y
    ve = VE(0.01, 5.0)
    cases = [
        (lambda: ncsn.langevin_dynamics(ok, x, -0.1, 10), "step_size"),
        (lambda: ncsn.langevin_dynamics(ok, x, 0.1, -1), "n_steps"),
        (lambda: ncsn.langevin_dynamics(ok, x.clone().fill_(float("nan")), 0.1, 1), "x"),
        (lambda: ncsn.langevin_dynamics(lambda y: y[:, :1], x, 0.1, 1), "same shape"),
        (lambda: ncsn.explicit_score_matching(lambda y: y[:, :1], x), "shape of x"),
        (lambda: ncsn.explicit_score_matching(ok, torch.randn(8)), r"\(B, D\)"),
        (lambda: ncsn.explicit_score_matching(ok, torch.ones(8, 2, dtype=torch.long)), "floating-point"),
        (lambda: ncsn.explicit_score_matching(lambda y: y.detach(), x), "differentiable"),
        (lambda: ncsn.explicit_score_matching(ok, torch.full((8, 2), float("inf"))), "finite"),
        (lambda: ncsn.explicit_score_matching(ok, x, reduction="sum"), "reduction"),
        (lambda: ncsn.sliced_score_matching(ok, x, n_projections=0), "n_projections"),
        (lambda: ncsn.sliced_score_matching(ok, x, projection="sphere"), "projection"),
        (lambda: ncsn.denoising_score_matching(ok, x, 0.0), "sigma"),
        (lambda: ncsn.denoising_score_matching(ok, x, -1.0), "sigma"),
        (lambda: ncsn.fisher_divergence(ok, lambda y: y[:, :1], x), "same shape"),
        (lambda: ncsn.dsm_loss(EpsOf(), x, linear_schedule()), "VE"),
        (lambda: ncsn.dsm_loss(EpsOf(), x, ve, sigmas=torch.tensor([0.1, 1.0])), "decreasing"),
        (lambda: ncsn.dsm_loss(EpsOf(), x, ve, sigmas=torch.tensor([50.0, 1.0])), "range"),
        (lambda: ncsn.annealed_langevin_sample(EpsOf(), x, ve, torch.tensor([1.0, 1.0]), progress=False), "decreasing"),
        (lambda: ncsn.annealed_langevin_sample(EpsOf(), x, ve, torch.tensor([1.0, 0.1]), n_steps_each=0,
                                        progress=False), "n_steps_each"),
        (lambda: ncsn.annealed_langevin_sample(EpsOf(), x, ve, torch.tensor([1.0, 0.1]), epsilon=-1e-5,
                                        progress=False), "epsilon"),
        (lambda: ncsn.score_fn(EpsOf(), torch.tensor([0.1, 0.2]), ve), "single time"),
        (lambda: ncsn.score_fn(EpsOf(), 1.5, ve), "t must lie"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
