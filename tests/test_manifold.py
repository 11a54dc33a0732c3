"""Chapter 9: geometry, Brownian motion, heat kernels, closed-form data and the Riemannian samplers, against
closed forms (generator 1/2 Laplacian: E<X_t, x0> = e^{-t} on S^2, E cos(theta_t - theta_0) = e^{-t/2} per angle)."""

import math

import numpy as np
import pytest
import torch
from scipy.special import dawsn

from diffedu.grids import time_grid
from diffedu.heat_kernel import (circle_heat_kernel_fourier, heat_kernel_score, log_heat_kernel, sphere_heat_kernel,
                                 sphere_terms, wrapped_normal_log_prob)
from diffedu.manifold_toy import (ExactManifoldModel, VonMisesFisherMixture, WrappedNormalMixture,
                                  degrees_to_unit, ramachandran_mixture, sphere_mixture)
from diffedu.manifolds import Sphere, Torus, geodesic_random_walk, wrap
from diffedu.nets import TangentMLP, build_net
from diffedu.riemannian import (geodesic_random_walk_sample, log_likelihood, log_time_grid, ode_sample, rfm_loss,
                                rsgm_loss)

S, T2 = Sphere(), Torus(2)
F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def quadrature(n=4001):
    """Simpson weights on c in [-1, 1]: int f(c) dc ~ sum w f(c)."""
    c = torch.linspace(-1, 1, n, dtype=F64)
    w = torch.ones(n, dtype=F64)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return c, w * (2 / (n - 1)) / 3


# --- geometry ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("manifold", [S, T2])
def test_exp_and_log_are_inverse_and_log_has_length_dist(manifold):
    x, y = manifold.random_uniform(500, gen(0), F64), manifold.random_uniform(500, gen(1), F64)
    v = manifold.logmap(x, y)
    assert torch.allclose(manifold.expmap(x, v), y, atol=1e-9)
    assert torch.allclose(v.norm(dim=1), manifold.dist(x, y), atol=1e-12)
    assert torch.allclose(manifold.proju(x, v), v, atol=1e-12)  # tangent
    w = 0.3 * manifold.random_tangent(x, gen(2))
    assert torch.allclose(manifold.logmap(x, manifold.expmap(x, w)), w, atol=1e-9)


def test_sphere_geodesic_is_a_great_circle_at_constant_speed():
    x = torch.tensor([[1.0, 0, 0]], dtype=F64)
    v = torch.tensor([[0, 0.5 * math.pi, 0]], dtype=F64)  # a quarter turn towards +y
    assert torch.allclose(S.expmap(x, v), torch.tensor([[0.0, 1, 0]], dtype=F64), atol=1e-15)
    assert torch.allclose(S.expmap(x, 2 * v), -x, atol=1e-15)
    assert torch.allclose(S.dist(x, -x), torch.tensor([math.pi], dtype=F64))


def test_torus_wraps_to_the_shortest_way_round():
    a, b = torch.tensor([[3.0, -3.0]], dtype=F64), torch.tensor([[-3.0, 3.0]], dtype=F64)
    assert torch.allclose(T2.logmap(a, b), torch.tensor([[2 * math.pi - 6, 6 - 2 * math.pi]], dtype=F64))
    assert float(wrap(torch.tensor(math.pi, dtype=F64))) == -math.pi


# --- Brownian motion -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("t, steps", [(0.5, 1), (1.0, 8), (2.0, 4)])
def test_geodesic_random_walk_on_the_sphere_matches_its_exact_discrete_law(t, steps):
    """E<X_{k+1}, x0 | X_k> = m(gamma) <X_k, x0> with m(gamma) = E cos(sqrt(gamma) R), R ~ Rayleigh, in closed form
    1 - sqrt(2 gamma) D(sqrt(gamma / 2)) (Dawson's D); so E<X_n, x0> = m^n, which tends to e^{-t} as gamma -> 0."""
    x0 = S.random_uniform(1, gen(0), F64).expand(100_000, 3).contiguous()
    x = geodesic_random_walk(S, x0, t, steps, gen(1))
    assert torch.allclose(x.norm(dim=1), torch.ones(len(x), dtype=F64), atol=1e-12)
    c = (x * x0).sum(1)
    a = math.sqrt(t / steps)
    m = 1 - math.sqrt(2) * a * dawsn(a / math.sqrt(2))
    assert abs(c.mean().item() - m ** steps) < 4 * c.std().item() / math.sqrt(len(c))


def test_geodesic_random_walk_on_the_sphere_converges_to_e_minus_t():
    t = 1.0
    for steps, tol in [(64, 3e-3), (1024, 2e-4)]:
        a = math.sqrt(t / steps)
        assert abs((1 - math.sqrt(2) * a * dawsn(a / math.sqrt(2))) ** steps - math.exp(-t)) < tol


def test_geodesic_random_walk_on_the_torus_is_exact():
    x0 = wrap(torch.tensor([[3.0, -1.0]], dtype=F64)).expand(100_000, 2)
    t = torch.full((100_000,), 0.8, dtype=F64)
    x = geodesic_random_walk(T2, x0, t, 3, gen(2))
    assert float(x.abs().max()) <= math.pi
    c = torch.cos(x - x0)
    se = c.std(0) / math.sqrt(len(c))
    assert ((c.mean(0) - math.exp(-0.4)).abs() < 4 * se).all()


# --- heat kernels --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [0.02, 0.2, 1.0, 5.0])
def test_sphere_heat_kernel_integrates_to_one_and_has_mean_e_minus_t(t):
    c, w = quadrature()
    p, _ = sphere_heat_kernel(c, t, sphere_terms(t))
    assert float(p.min()) > -1e-12
    assert abs(float(2 * math.pi * (w * p).sum()) - 1) < 1e-6
    assert abs(float(2 * math.pi * (w * p * c).sum()) - math.exp(-t)) < 1e-6


def test_sphere_heat_kernel_converges_in_terms_and_tends_to_uniform():
    c = torch.linspace(-1, 1, 101, dtype=F64)
    exact = sphere_heat_kernel(c, 0.05, 200)[0]
    errors = [float((sphere_heat_kernel(c, 0.05, L)[0] - exact).abs().max()) for L in (5, 10, 20, 40)]
    assert all(a > b for a, b in zip(errors, errors[1:])) and errors[-1] < 1e-12 < errors[0]
    assert float(sphere_heat_kernel(c, 0.01, 5)[0].min()) < 0  # too few terms at small t: not even positive
    assert torch.allclose(sphere_heat_kernel(c, 20.0, 50)[0], torch.full_like(c, 1 / (4 * math.pi)), atol=1e-9)


@pytest.mark.parametrize("t", [0.01, 0.3, 3.0])
def test_torus_images_equal_the_fourier_series(t):
    d = torch.linspace(-math.pi, math.pi, 201, dtype=F64)
    images = wrapped_normal_log_prob(d, t, 8).exp()
    fourier = circle_heat_kernel_fourier(d, t, 400)
    assert torch.allclose(images, fourier, rtol=1e-10, atol=1e-12)  # Poisson summation
    assert abs(float(images[:-1].sum() * (2 * math.pi / 200)) - 1) < 1e-9
    assert abs(float((images[:-1] * torch.cos(d[:-1])).sum() * (2 * math.pi / 200)) - math.exp(-t / 2)) < 1e-9


@pytest.mark.parametrize("manifold", [S, T2])
@pytest.mark.parametrize("t", [0.05, 0.5, 3.0])
def test_heat_kernel_score_is_the_gradient_of_the_log_kernel(manifold, t):
    x0 = manifold.random_uniform(64, gen(3), F64)
    x = geodesic_random_walk(manifold, x0, t, 4, gen(4))  # where the kernel has its mass
    score = heat_kernel_score(manifold, x, x0, t)
    y = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_heat_kernel(manifold, manifold.retract(y), x0, t).sum(), y)
    assert torch.allclose(score, manifold.proju(x, grad), rtol=1e-7, atol=1e-7)
    assert torch.allclose(manifold.proju(x, score), score, atol=1e-10)  # tangent


def test_varadhan_is_the_short_time_limit_of_the_score():
    x0 = S.random_uniform(256, gen(5), F64)
    errors = []
    for t in (0.1, 0.01, 0.001):
        x = geodesic_random_walk(S, x0, t, 4, gen(6))
        exact, short = heat_kernel_score(S, x, x0, t), heat_kernel_score(S, x, x0, t, method="varadhan")
        errors.append(float(((exact - short).norm(dim=1) / exact.norm(dim=1)).mean()))
    assert errors[0] > errors[1] > errors[2]
    assert 0.1 / 12 < errors[0] < 0.1 / 3  # about t / 6: log p = -theta^2 / 2t + (1/2) log(theta / sin theta) + ...
    t = torch.tensor([0.3], dtype=F64)
    x, x0 = torch.tensor([[0.9, 0.1]], dtype=F64), torch.tensor([[-0.2, 0.4]], dtype=F64)
    nearest = heat_kernel_score(T2, x, x0, t, method="varadhan")
    assert torch.allclose(nearest, (x0 - x) / t, atol=1e-15)


# --- closed-form data -----------------------------------------------------------------------------------------

def test_vmf_samples_have_the_exact_mean_resultant_length():
    for kappa in (0.5, 5.0, 50.0):
        vmf = VonMisesFisherMixture(degrees_to_unit([[30, 40]]), [kappa])
        x, _ = vmf.sample(200_000, gen(7))
        c = x @ vmf.means[0]
        assert abs(float(c.mean()) - (1 / math.tanh(kappa) - 1 / kappa)) < 4 * float(c.std()) / math.sqrt(len(c))


def test_vmf_mixture_density_is_normalised_and_its_series_is_exact():
    vmf = sphere_mixture()
    u = S.random_uniform(400_000, gen(8), F64)
    for t in (0.0, 0.1, 1.0):
        assert abs(float(vmf.log_prob(u, t).exp().mean()) * 4 * math.pi - 1) < 0.01
    x = vmf.sample(500, gen(9))[0]
    assert torch.allclose(vmf.log_prob(x, 1e-12), vmf.log_prob(x), atol=1e-8)  # series at t -> 0 = closed form
    y = x.clone().requires_grad_(True)
    for t in (0.01, 0.5):
        (grad,) = torch.autograd.grad(vmf.log_prob(y / y.norm(dim=1, keepdim=True), t).sum(), y)
        assert torch.allclose(vmf.score(x, t), S.proju(x, grad), rtol=1e-8, atol=1e-8)


def test_vmf_mixture_diffuses_as_the_heat_kernel_says():
    """p_t = heat kernel applied to p_0: a vMF's <x, mu> moment decays like the l = 1 mode, by e^{-t}."""
    vmf = VonMisesFisherMixture(degrees_to_unit([[10, 20]]), [7.0])
    c, w = quadrature()
    for t in (0.0, 0.4, 1.5):
        x = torch.stack([torch.sqrt(1 - c ** 2), torch.zeros_like(c), c], 1)
        p = vmf.log_prob(x @ rotation_to(vmf.means[0]).T, t).exp()
        mean_c = float(2 * math.pi * (w * p * c).sum())
        assert abs(mean_c - (1 / math.tanh(7.0) - 1 / 7.0) * math.exp(-t)) < 1e-6


def rotation_to(mu):
    """A rotation taking the north pole to mu."""
    z = torch.tensor([0.0, 0, 1], dtype=F64)
    v, c = torch.linalg.cross(z, mu), float(z @ mu)
    K = torch.tensor([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]], dtype=F64)
    return torch.eye(3, dtype=F64) + K + K @ K / (1 + c)


def test_wrapped_normal_mixture_is_normalised_and_widens_by_t():
    data = ramachandran_mixture()
    g = torch.linspace(-math.pi, math.pi, 241, dtype=F64)[:-1]
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    for t in (0.0, 0.5, 4.0):
        assert abs(float(data.log_prob(grid, t).exp().sum()) * (2 * math.pi / 240) ** 2 - 1) < 1e-6
    one = WrappedNormalMixture(torch.tensor([[3.0, 0.0]]), 0.4)
    x, _ = one.sample(100_000, gen(10))
    assert abs(float(torch.cos(x[:, 0] - 3.0).mean()) - math.exp(-0.08)) < 0.01  # E cos = e^{-sigma^2 / 2}
    y = grid[::997].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(data.log_prob(y, 0.3).sum(), y)
    assert torch.allclose(data.score(grid[::997], 0.3), grad, rtol=1e-9, atol=1e-9)


# --- losses, samplers, likelihood -------------------------------------------------------------------------------

def test_geodesic_velocity_of_the_flow_matching_path():
    """rfm_loss's target d x_t / dt by jvp equals the closed form -|v| sin(t|v|) x0 + cos(t|v|) v on the sphere."""
    x0, x1 = S.random_uniform(100, gen(11), F64), S.random_uniform(100, gen(12), F64)
    t = torch.rand(100, generator=gen(13), dtype=F64)
    v = S.logmap(x0, x1)
    _, u = torch.func.jvp(lambda s: S.expmap(x0, s[:, None] * v), (t,), (torch.ones_like(t),))
    n = v.norm(dim=1, keepdim=True)
    assert torch.allclose(u, -n * torch.sin(t[:, None] * n) * x0 + torch.cos(t[:, None] * n) * v, atol=1e-10)


def test_rsgm_loss_is_smallest_at_the_exact_score():
    data = sphere_mixture()
    exact = ExactManifoldModel(data)
    x0 = data.sample(4000, gen(14))[0]

    def loss(scale):
        model = lambda x, t: scale * exact(x, t)  # noqa: E731
        return float(rsgm_loss(model, x0, S, 1e-3, 4.0, generator=gen(15)))

    assert loss(1.0) < min(loss(0.8), loss(1.2), loss(0.0))


@pytest.mark.parametrize("name", ["sphere", "torus"])
def test_ode_likelihood_of_the_exact_model_is_the_exact_density(name):
    data = sphere_mixture() if name == "sphere" else ramachandran_mixture()
    model, manifold = ExactManifoldModel(data), data.manifold
    x = data.sample(40, gen(16))[0]
    t_min, t_max = 0.01, (12.0 if name == "sphere" else 18.0)  # p_T is uniform to ~1e-4 (decay e^{-T}, e^{-T/2})
    ll = log_likelihood(model, x, manifold, log_time_grid(40, t_min, t_max).flip(0))
    assert torch.allclose(ll, data.log_prob(x, t_min), atol=2e-3)


def test_samplers_with_the_exact_score_reproduce_the_data():
    data = sphere_mixture()
    model = ExactManifoldModel(data)
    x_T = S.random_uniform(3000, gen(17), F64)
    entropy = data.entropy(50_000)
    walk = geodesic_random_walk_sample(model, x_T, S, log_time_grid(200, 1e-3, 6.0), generator=gen(18),
                                       progress=False)
    ode = ode_sample(model, x_T, S, log_time_grid(60, 1e-3, 6.0), progress=False)
    for x in (walk, ode):
        assert torch.allclose(x.norm(dim=1), torch.ones(len(x), dtype=F64), atol=1e-12)
        assert abs(-float(data.log_prob(x).mean()) - entropy) < 0.05  # cross-entropy = entropy for q = p
    x_T = T2.random_uniform(2000, gen(19), F64)
    rama = ramachandran_mixture()
    x = geodesic_random_walk_sample(ExactManifoldModel(rama), x_T, T2, log_time_grid(200, 1e-3, 12.0),
                                    generator=gen(20), progress=False)
    assert float(x.abs().max()) <= math.pi
    assert abs(-float(rama.log_prob(x).mean()) - rama.entropy(50_000)) < 0.05


def test_tangent_mlp_outputs_tangent_vectors_and_rebuilds():
    for name, manifold in [("sphere", S), ("torus", T2)]:
        net = TangentMLP(name, hidden=16, depth=1, t_min=1e-3, t_max=4.0)
        torch.nn.init.normal_(net.linear_out.weight)
        x = manifold.random_uniform(8, gen(21))
        out = net(x, torch.full((8,), 0.5))
        assert out.shape == x.shape and torch.allclose(manifold.proju(x, out), out, atol=1e-6)
        twin = build_net(net.config)
        twin.load_state_dict(net.state_dict())
        assert torch.equal(twin(x, 0.5), out)
    fm = TangentMLP("sphere", prediction="velocity", t_min=0.0, t_max=1.0)
    loss = rfm_loss(fm, sphere_mixture().sample(64, gen(22))[0].float(), S, generator=gen(23))
    assert loss.shape == () and float(loss.detach()) > 0


# --- bad input ---------------------------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    x = S.random_uniform(4, gen(24))
    with pytest.raises(ValueError, match="x must lie on the sphere"):
        geodesic_random_walk(S, 2 * x, 1.0, 4)
    with pytest.raises(ValueError, match="t must be > 0"):
        geodesic_random_walk(S, x, 0.0, 4)
    with pytest.raises(ValueError, match="steps"):
        geodesic_random_walk(S, x, 1.0, 0)
    with pytest.raises(ValueError, match="terms"):
        heat_kernel_score(S, x, x, 1.0, terms=0)
    with pytest.raises(ValueError, match="t must be > 0"):
        heat_kernel_score(S, x, x, -1.0)
    with pytest.raises(ValueError, match="kappas"):
        VonMisesFisherMixture(x[:2], [1.0, 0.0])
    with pytest.raises(ValueError, match="angles in"):
        T2.check_points("x", torch.full((2, 2), 4.0))
    net = TangentMLP("sphere", t_min=1e-3, t_max=4.0)
    with pytest.raises(ValueError, match="x_T must lie on the sphere"):
        geodesic_random_walk_sample(net, 2 * x, S, log_time_grid(4, 1e-3, 4.0), progress=False)
    with pytest.raises(ValueError, match="t must lie in"):
        ode_sample(net, x, S, log_time_grid(4, 1e-3, 8.0), progress=False)
    with pytest.raises(ValueError, match="decreasing"):
        ode_sample(net, x, S, log_time_grid(4, 1e-3, 4.0).flip(0), progress=False)
    with pytest.raises(ValueError, match="steps"):
        log_time_grid(0, 1e-3, 1.0)
    with pytest.raises(ValueError, match="t_min"):
        rsgm_loss(net, x, S, 0.0, 4.0)
    with pytest.raises(ValueError, match="t_max"):
        rsgm_loss(net, x, S, 1e-3, 1e-4)
    with pytest.raises(ValueError, match="x0 must lie on the sphere"):
        rfm_loss(net, 3 * x, S)
    with pytest.raises(ValueError, match="score model"):
        fm = TangentMLP("sphere", prediction="velocity", t_min=0.0, t_max=1.0)
        geodesic_random_walk_sample(fm, x, S, time_grid(4, 0.0, 1.0), progress=False)
