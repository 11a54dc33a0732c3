"""Chapter 14: the other families and the evaluation measures, checked against closed forms.

* a linear-Gaussian VAE trained on its exact ELBO reaches the probabilistic-PCA log-likelihood (tight bound);
* the coupling flow's density integrates to 1, inverts exactly, and equals a known affine transform's density;
* MADE's conditionals depend only on earlier pixels, and its probabilities over all sequences sum to 1;
* the Fréchet distance of sample sets equals the closed form of their Gaussians, and tends to the population's;
* the kernel distance is unbiased: its mean over seeds is 0 for equal distributions;
* precision and recall with a dropped or an added mode give the known fractions;
* flow matching: its velocity is the PF-ODE drift of alpha = 1 - t, sigma = t; its Euler sampler equals the
  library's Euler (DDIM) sampler of the VP schedule on the exact mixture model, and Heun converges to it;
* bad input raises a ValueError naming the argument.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from diffedu import evaluation as ev
from diffedu import families as fam
from diffedu import flow_matching as fm
from diffedu.autoregressive import MADE, made_masks
from diffedu.flows import AffineCoupling, CouplingFlow, bits_per_dim
from diffedu.metrics import frechet_distance
from diffedu.nets import MLPDenoiser, build_net
from diffedu.samplers import euler_sample
from diffedu.schedules import VPLinear
from diffedu.sde import probability_flow_drift
from diffedu.toy import ExactModel, GaussianMixture, eight_gaussians, gaussian


# --- VAE: the ELBO is tight for the linear-Gaussian model -----------------------------------------------------

def _gaussian_data(n=400, D=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(D, D, generator=g, dtype=torch.float64) * torch.tensor([2.0, 1.5, 0.4, 0.3, 0.2],
                                                                            dtype=torch.float64)
    return torch.randn(n, D, generator=g, dtype=torch.float64) @ A.T + 1.0


def test_ppca_fit_is_the_maximum_likelihood():
    x = _gaussian_data()
    W, b, s2 = fam.ppca_fit(x, 2)
    best = fam.ppca_log_likelihood(x, W, b, s2).mean()
    for scale in (0.9, 1.1):  # perturbing any parameter lowers the likelihood
        assert fam.ppca_log_likelihood(x, W * scale, b, s2).mean() < best
        assert fam.ppca_log_likelihood(x, W, b, s2 * scale).mean() < best
    assert fam.ppca_log_likelihood(x, W, b + 0.05, s2).mean() < best
    # the covariance of the fitted model matches the data in the top-2 subspace
    C = W @ W.T + s2 * torch.eye(5, dtype=torch.float64)
    S = torch.cov(x.T, correction=0)
    lam, U = torch.linalg.eigh(S)
    top = U[:, -2:]
    assert torch.allclose(top.T @ C @ top, top.T @ S @ top, atol=1e-9)


def test_linear_vae_elbo_is_a_bound_and_reaches_the_ppca_likelihood():
    torch.manual_seed(0)
    x = _gaussian_data()
    W, b, s2 = fam.ppca_fit(x, 2)
    target = float(fam.ppca_log_likelihood(x, W, b, s2).mean())
    vae = fam.LinearVAE(5, 2)
    Wv, bv, s2v = vae.W.detach(), vae.b.detach(), (2 * vae.log_sigma.detach()).exp()
    with torch.no_grad():  # a bound: never above the model's own marginal likelihood, at any parameters
        assert float(vae.elbo(x).mean()) <= float(fam.ppca_log_likelihood(x, Wv, bv, s2v).mean())
    opt = torch.optim.LBFGS(vae.parameters(), lr=1, max_iter=400, tolerance_grad=1e-12,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -vae.elbo(x).mean()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    reached = float(vae.elbo(x).mean().detach())
    assert reached <= target + 1e-6
    assert abs(reached - target) < 1e-6, (reached, target)
    # and the encoder is the exact posterior: its mean matches (W^T W + s2 I)^-1 W^T (x - b)
    Wv, s2v = vae.W.detach(), (2 * vae.log_sigma.detach()).exp()
    M = Wv.T @ Wv + s2v * torch.eye(2, dtype=torch.float64)
    post_mean = (x - vae.b.detach()) @ torch.linalg.solve(M, Wv.T).T
    assert torch.allclose(x @ vae.V.detach().T + vae.c.detach(), post_mean, atol=1e-4)


def test_vae_elbo_is_finite_and_its_sampler_has_the_data_shape():
    vae = fam.VAE(64, 4, 32)
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    value = fam.elbo(vae, x, torch.Generator().manual_seed(0))
    assert value.shape == (8,) and torch.isfinite(value).all()
    assert vae(x).shape == x.shape and vae.sample(3).shape == (3, 64)


# --- the coupling flow: exact density -----------------------------------------------------------------------

def _random_flow(seed=0):
    torch.manual_seed(seed)
    flow = CouplingFlow(2, layers=4, hidden=16).double()
    for layer in flow.layers:  # leave the identity start: a genuinely non-linear map
        torch.nn.init.normal_(layer.net[-1].weight, std=0.5)
        torch.nn.init.normal_(layer.net[-1].bias, std=0.3)
    return flow


def test_flow_density_integrates_to_one_and_inverts():
    flow = _random_flow()
    h = 0.04
    grid = torch.arange(-9, 9 + h / 2, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    with torch.no_grad():
        mass = float(flow.log_prob(pts).exp().sum() * h * h)
        z, _ = flow(pts[:100])
        back = flow.inverse(z)
    assert abs(mass - 1) < 2e-3, mass
    assert torch.allclose(back, pts[:100], atol=1e-10)


def test_flow_log_det_matches_autograd_jacobian():
    flow = _random_flow(1)
    x = torch.randn(5, 2, dtype=torch.float64)
    _, log_det = flow(x)
    for k in range(5):
        J = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], x[k])
        assert abs(float(torch.linalg.slogdet(J)[1]) - float(log_det[k].detach())) < 1e-10


def test_one_coupling_layer_is_a_known_affine_transform():
    """Net outputs s = atanh(0.5) (so tanh s = 0.5) and t = 1 for the moving coordinate: y_b = x_b e^0.5 + 1, so
    p(x) = N(x_a) N(x_b e^0.5 + 1) e^0.5 exactly."""
    flow = CouplingFlow(2, layers=1, hidden=4).double()
    layer = flow.layers[0]                       # keeps coordinate 0 (even), moves coordinate 1
    last = layer.net[-1]
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():
        last.bias.copy_(torch.tensor([0.0, math.atanh(0.5), 0.0, 1.0], dtype=torch.float64))
    x = torch.randn(7, 2, dtype=torch.float64)
    normal = torch.distributions.Normal(0.0, 1.0)
    expected = normal.log_prob(x[:, 0]) + normal.log_prob(x[:, 1] * math.exp(0.5) + 1.0) + 0.5
    assert torch.allclose(flow.log_prob(x), expected, atol=1e-12)


def test_bits_per_dim_of_a_uniform_density_is_log2_of_the_levels():
    # a density uniform over [-1 - D/2, 1 + D/2] per pixel puts 1/levels on each level
    levels, dim = 17, 64
    width = 2 + 2 / (levels - 1)
    log_p = torch.full((3,), -dim * math.log(width), dtype=torch.float64)
    assert torch.allclose(bits_per_dim(log_p, dim, levels), torch.full((3,), math.log2(levels),
                                                                       dtype=torch.float64))


# --- MADE: autoregressive and normalised ----------------------------------------------------------------------

def test_made_is_autoregressive_and_sums_to_one():
    torch.manual_seed(0)
    made = MADE(data_dim=3, levels=3, hidden=(16, 16)).double()
    for layer in made.layers:
        torch.nn.init.normal_(layer.weight, std=0.7)
        torch.nn.init.normal_(layer.bias, std=0.3)
    # sum of p over all 3^3 sequences is 1
    values = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    seqs = torch.tensor(list(itertools.product(range(3), repeat=3)))
    x = values[seqs]
    total = float(made.log_prob(x).exp().sum())
    assert abs(total - 1) < 1e-12, total
    # output d does not change when pixels >= d change
    a = x[5:6].clone()
    for d in range(3):
        b = a.clone()
        b[0, d:] = values[(seqs[5, d:] + 1) % 3]
        assert torch.allclose(made(a)[0, :d + 1], made(b)[0, :d + 1])
    masks = made_masks(4, [8], 2)
    assert masks[-1].shape == (8, 8) and not masks[-1][:2].any()  # pixel 1 sees nothing


def test_made_sample_lies_on_the_levels():
    made = MADE(16, 5, (32,))
    x = made.sample(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 16)
    assert torch.allclose((x + 1) * 2, ((x + 1) * 2).round())


# --- GAN and EBM: their losses and samplers ----------------------------------------------------------------

def test_gan_losses_at_an_undecided_discriminator_are_log2():
    gan = fam.GAN(2, 2, 8)
    torch.nn.init.zeros_(gan.discriminator[-1].weight)
    torch.nn.init.zeros_(gan.discriminator[-1].bias)
    d_loss, g_loss = fam.gan_losses(gan, torch.randn(16, 2), torch.Generator().manual_seed(0))
    assert abs(float(d_loss) - 2 * math.log(2)) < 1e-6 and abs(float(g_loss) - math.log(2)) < 1e-6


def test_langevin_with_a_quadratic_energy_samples_its_gaussian():
    class Quadratic(fam.EnergyMLP):
        def forward(self, x):
            return 0.5 * ((x - 1.0) ** 2).sum(1) / 0.25       # N(1, 0.5^2)

    energy = Quadratic(2)
    score = energy.score(torch.zeros(3, 2))
    assert torch.allclose(score, torch.full((3, 2), 4.0))
    x = fam.langevin_sample(energy, torch.zeros(4000, 2), 300, 0.01, torch.Generator().manual_seed(0))
    assert abs(float(x.mean()) - 1) < 0.03 and abs(float(x.std()) - 0.5) < 0.03


# --- Fréchet distance, kernel distance, precision and recall --------------------------------------------------

def test_frechet_distance_of_samples_equals_the_closed_form_of_their_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 3, generator=g, dtype=torch.float64)
    b = torch.randn(400, 3, generator=g, dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.3, 0.0], [0.0, 2.0, 0.5], [0.0, 0.0, 0.5]], dtype=torch.float64) + 1.0
    exact = ev.gaussian_frechet_distance(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))
    assert abs(frechet_distance(a, b) - exact) < 1e-9
    # commuting covariances: ||m||^2 + sum (sqrt(l_a) - sqrt(l_b))^2
    m = torch.tensor([1.0, -2.0], dtype=torch.float64)
    fd = ev.gaussian_frechet_distance(torch.zeros(2), torch.diag(torch.tensor([4.0, 1.0])), m,
                                      torch.diag(torch.tensor([1.0, 9.0])))
    assert abs(fd - (5 + 1 + 4)) < 1e-12


def test_frechet_distance_of_large_samples_tends_to_the_population_value():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(40_000, 2, generator=g, dtype=torch.float64) * 2.0
    b = torch.randn(40_000, 2, generator=g, dtype=torch.float64) + torch.tensor([1.0, 0.0], dtype=torch.float64)
    exact = 1 + 2 * (2 - 1) ** 2  # ||m||^2 + sum (sqrt(4) - sqrt(1))^2
    assert abs(frechet_distance(a, b) - exact) < 0.05


def test_fd_bias_falls_like_one_over_n():
    pool = torch.randn(4000, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    rows = ev.fd_against_n(pool, [50, 200, 800], repeats=6, generator=torch.Generator().manual_seed(3))
    means = [m for _, m, _ in rows]
    assert means[0] > means[1] > means[2] > 0
    # the mean term alone is 2 tr(C) / N = 8 / N; the total is of the same order
    assert 0.5 * 8 / 800 < means[2] < 6 * 8 / 800


def test_kernel_distance_is_unbiased_and_sees_a_shift():
    values = []
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        values.append(ev.kernel_distance(torch.randn(60, 3, generator=g), torch.randn(50, 3, generator=g)))
    mean, se = sum(values) / len(values), ev.mmd_std_error(values)
    assert abs(mean) < 3 * se, (mean, se)
    assert min(values) < 0 < max(values)  # unbiased: single draws go negative
    g = torch.Generator().manual_seed(99)
    shifted = ev.kernel_distance(torch.randn(60, 3, generator=g), torch.randn(50, 3, generator=g) + 0.5)
    assert shifted > 10 * se


def _modes(n_per, centres, seed, std=0.05):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([c + std * torch.randn(n_per, 2, generator=g, dtype=torch.float64) for c in centres])


def test_precision_recall_with_a_dropped_and_an_added_mode():
    centres = [torch.tensor([10.0 * k, 0.0], dtype=torch.float64) for k in range(8)]
    real = _modes(200, centres, 0)
    # the same points: exactly 1 and 1; drop a mode: recall 7/8; add one: precision 8/9
    assert ev.precision_recall(real, real.clone(), 3) == (1.0, 1.0)
    assert ev.precision_recall(real, real[:1400], 3) == (1.0, 7 / 8)
    extra = _modes(200, [torch.tensor([0.0, 50.0], dtype=torch.float64)], 1)
    assert ev.precision_recall(real, torch.cat([real, extra]), 3) == (8 / 9, 1.0)
    # fresh samples: the same fractions times what a finite sample covers of its own distribution
    p0, r0 = ev.precision_recall(real, _modes(200, centres, 2), 3)
    p1, r1 = ev.precision_recall(real, _modes(200, centres[:7], 3), 3)
    p2, r2 = ev.precision_recall(real, torch.cat([_modes(200, centres, 4), extra]), 3)
    assert p0 > 0.9 and r0 > 0.9
    assert abs(r1 - 7 / 8 * r0) < 0.03 and p1 > 0.9
    assert abs(p2 - 8 / 9 * p0) < 0.03 and r2 > 0.9


def test_precision_recall_catch_blur_and_dropped_modes_on_eight_gaussians():
    mix = eight_gaussians()
    real = mix.sample(800, torch.Generator().manual_seed(0))[0]
    blurred = real + 0.5 * torch.randn(real.shape, generator=torch.Generator().manual_seed(1), dtype=real.dtype)
    p, r = ev.precision_recall(real, blurred)
    assert p < 0.6
    half = real[(torch.atan2(real[:, 1], real[:, 0]) > -0.2) & (torch.atan2(real[:, 1], real[:, 0]) < 2.9)]
    p, r = ev.precision_recall(real, half)
    assert p > 0.9 and r < 0.6


# --- flow matching is the probability-flow ODE of alpha = 1 - t, sigma = t --------------------------------------

def _mixture():
    return GaussianMixture(torch.tensor([[1.0, 0.5], [-1.0, -0.5], [0.0, 1.5]], dtype=torch.float64),
                           torch.tensor([0.3, 0.2, 0.4], dtype=torch.float64))


def test_flow_matching_velocity_is_the_pf_ode_drift_of_its_schedule():
    mix = _mixture()
    sched = fm.FlowMatchingSchedule()
    model = ExactModel(mix, sched, prediction="x0")
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for t in (0.1, 0.5, 0.9):
        u = fm.velocity(model, x, t)
        x0 = mix.denoise(x, torch.tensor([1 - t], dtype=torch.float64), torch.tensor([t], dtype=torch.float64))
        eps = (x - (1 - t) * x0) / t
        assert torch.allclose(u, eps - x0, atol=1e-12)  # E[eps - x0 | x_t]
        assert torch.allclose(u, probability_flow_drift(model, x, t, sched), atol=1e-8)


def test_exact_velocity_minimises_the_cfm_loss():
    mix = _mixture()

    class Exact(torch.nn.Module):
        def __init__(self, shift=0.0):
            super().__init__()
            self.shift = shift

        def velocity(self, x, t, cond=None):  # (x - E[x0 | x_t]) / t, row by row
            x0 = mix.denoise(x, 1 - t, t)
            return (x - x0) / t[:, None] + self.shift

    x0 = mix.sample(4000, torch.Generator().manual_seed(0))[0]
    losses = [float(fm.cfm_loss(Exact(c), x0, torch.Generator().manual_seed(1))) for c in (0.0, 0.2)]
    # E (u* + c - y)^2 = E (u* - y)^2 + c^2, since E[y | x_t] = u*: the exact velocity is the minimiser
    assert abs((losses[1] - losses[0]) - 0.2 ** 2) < 0.01, losses


def test_flow_matching_euler_is_the_library_euler_sampler_of_the_vp_schedule():
    """An Euler step of dx/dt = u is a DDIM step, and DDIM steps depend only on sigma~ = sigma / alpha: so the
    flow-matching sampler on the grid t_k equals ``euler_sample`` of the VP schedule at sigma~_k = t_k / (1 - t_k)
    on the exact model, state for state (x_FM = (1 - t) x~, x_VP = alpha_VP x~)."""
    mix = _mixture()
    fm_model = ExactModel(mix, fm.FlowMatchingSchedule(), prediction="x0")
    vp = VPLinear()
    vp_model = ExactModel(mix, vp, prediction="eps")
    times = torch.linspace(0.99, 0.0, 31, dtype=torch.float64)
    sigmas = times / (1 - times)                                   # sigma~ of each time, ends at 0
    x_tilde = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
    ours = fm.flow_sample(fm_model, (1 - times[0]) * x_tilde, times)
    from diffedu.grids import time_of_sigma

    a0 = float(vp.alpha(time_of_sigma(vp, sigmas[0])))
    library = euler_sample(vp_model, a0 * x_tilde, vp, sigmas, progress=False)
    assert torch.allclose(ours, library, atol=1e-8), (ours - library).abs().max()
    # Heun is not invariant to the time change, but both converge to the same ODE end point
    fine = torch.linspace(0.99, 0.0, 401, dtype=torch.float64)
    heun_fm = fm.flow_sample(fm_model, (1 - times[0]) * x_tilde, fine, method="heun")
    lib_fine = euler_sample(vp_model, a0 * x_tilde, vp, fine / (1 - fine), progress=False)
    assert (heun_fm - lib_fine).norm(dim=1).max() < 0.05


def test_flow_matching_model_is_an_x0_predictor_for_the_library():
    net = fm.FlowMatchingModel(MLPDenoiser(2, hidden=8, depth=1).config)
    twin = build_net(net.config)
    twin.load_state_dict(net.state_dict())
    x, t = torch.randn(4, 2), torch.full((4,), 0.3)
    assert torch.allclose(net(x, t), x - 0.3 * net.velocity(x, t))
    assert torch.allclose(twin(x, t), net(x, t))
    loss = fm.cfm_loss(net, torch.randn(16, 2), torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)


# --- bad input ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: ev.kernel_distance(torch.randn(10, 3), torch.randn(10, 4)), "same dimension"),
    (lambda: ev.kernel_distance(torch.randn(1, 3), torch.randn(10, 3)), "a must hold at least 2"),
    (lambda: ev.kernel_distance(torch.randn(10, 3), torch.full((10, 3), float("nan"))), "b contains NaN"),
    (lambda: ev.precision_recall(torch.randn(10, 2), torch.randn(10, 2), k=0), "k must be"),
    (lambda: ev.precision_recall(torch.randn(10, 2), torch.randn(10, 2), k=-1), "k must be"),
    (lambda: ev.precision_recall(torch.randn(3, 2), torch.randn(10, 2), k=3), "real must hold at least 4"),
    (lambda: ev.precision_recall(torch.randn(10, 2), torch.randn(10, 3)), "same dimension"),
    (lambda: ev.precision_recall(torch.randn(10, 2), torch.tensor([[float("nan"), 0.0]] * 10)), "fake contains"),
    (lambda: ev.fd_against_n(torch.randn(100, 2), [60]), "sizes must be"),
    (lambda: ev.fd_against_n(torch.randn(100, 2), [10], repeats=0), "repeats must be"),
    (lambda: fm.flow_sample(ExactModel(_mixture(), fm.FlowMatchingSchedule(), "x0"), torch.randn(2, 2),
                            torch.tensor([0.1, 0.5])), "times must hold"),
    (lambda: fm.velocity(ExactModel(_mixture(), fm.FlowMatchingSchedule(), "x0"), torch.randn(2, 2), 0.0),
     "t must lie"),
    (lambda: CouplingFlow(2).log_prob(torch.randn(3, 3)), "x must hold 2"),
    (lambda: MADE(4, 3).log_prob(torch.randn(3, 5)), "x must hold 4"),
    (lambda: fam.ppca_fit(torch.randn(10, 3), 3), "latent_dim must be"),
    (lambda: bits_per_dim(torch.tensor([float("nan")]), 64, 17), "log_prob contains"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- the recipes and the scoreboard ----------------------------------------------------------------------------

def test_family_recipe_runs_end_to_end_into_a_temporary_folder(tmp_path):
    from diffedu.family_recipes import FlowConfig
    from diffedu.pretrained import load_pretrained
    from diffedu.recipes import RECIPES

    entry = RECIPES["flow_digits"](FlowConfig(steps=3, eval_samples=8, hidden=16, layers=2), out=str(tmp_path),
                                   device="cpu")
    assert entry["command"].startswith("python -m diffedu.recipes flow_digits --steps 3 ")
    assert {"--set hidden=16", "--set layers=2", "--set eval_samples=8"} <= {
        " ".join(p) for p in zip(entry["command"].split()[4::2], entry["command"].split()[5::2])}
    assert {"pixel_fd", "feature_fd", "precision", "recall", "test_bpd"} <= set(entry["train_config"]["eval"])
    model = load_pretrained("flow_digits", directory=tmp_path)
    assert model.config == entry["config"]


def test_scoreboard_rows_of_the_shipped_families():
    from diffedu.family_recipes import format_scoreboard, scoreboard

    rows = scoreboard(n=16, rows=("VAE", "GAN", "RealNVP flow"))
    assert [r["model"] for r in rows] == ["VAE", "GAN", "RealNVP flow"]
    by = {r["model"]: r for r in rows}
    assert by["GAN"]["bpd"] is None and by["VAE"]["bpd"] > 0 and by["RealNVP flow"]["nfe"] == 1
    assert all(0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and r["train_min"] > 0 for r in rows)
    text = format_scoreboard(rows)
    assert text.count("\n") == 4 and "bits/dim" in text
