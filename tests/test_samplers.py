"""Fast samplers against closed forms: exact probability-flow flows, observed orders, identities, bad input.

For Gaussian data N(m, diag(s^2)) the probability-flow ODE is solved exactly: in the sigma view x~ = x / alpha,
x~(sigma~) = m + sqrt(s^2 + sigma~^2) / sqrt(s^2 + sigma~_0^2) (x~_0 - m) per coordinate, whatever the schedule
(the flow depends only on the end points' alpha and sigma). Observed orders are log2(err(K) / err(2K)).
"""

import math

import pytest
import torch

from diffedu.ddim import ddim_invert, ddim_sample, slerp
from diffedu.ddpm import ddpm_sample
from diffedu.grids import (discrete_sigmas, index_grid, karras_sigmas, sigma_grid, sigma_range, sigma_tilde,
                           spaced_indices, time_of_sigma)
from diffedu.predictions import predict_x0_eps, predict_x0_eps_at
from diffedu.samplers import dpmpp_2m_sample, euler_sample, heun_sample, plms_sample
from diffedu.schedules import VE, VPCosine, VPLinear, cosine_schedule, linear_schedule
from diffedu.toy import ExactModel, GaussianMixture, gaussian

F64 = torch.float64
M = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
S = torch.tensor([0.3, 1.0, 2.0], dtype=F64)
GAUSS = gaussian(M, torch.diag(S ** 2))
MIXTURE = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.5, 1.0], [0.0, -1.5]]), torch.tensor([0.3, 0.5, 0.4]),
                          torch.tensor([0.2, 0.5, 0.3]))
SCHED = linear_schedule(1000)


def ig(K, spacing="trailing", **kw):
    """The index grid of K steps on SCHED."""
    return index_grid(SCHED, K, spacing, **kw)


def sg(K, grid="karras", schedule=SCHED, **kw):
    """A named sigma~ grid of K steps."""
    return sigma_grid(schedule, K, grid, **kw)


def noise(seed, shape=(32, 3)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def exact_flow(schedule, x_start, t_start, t_end):
    """The exact PF-ODE map x(t_start) -> x(t_end) for GAUSS, in x-space of ``schedule``."""
    a0, a1 = float(schedule.alpha(t_start)), float(schedule.alpha(t_end))
    s0, s1 = float(sigma_tilde(schedule, t_start)), float(sigma_tilde(schedule, t_end))
    x_tilde = M + torch.sqrt(S ** 2 + s1 ** 2) / torch.sqrt(S ** 2 + s0 ** 2) * (x_start / a0 - M)
    return a1 * x_tilde


def orders(errors):
    return [math.log2(a / b) for a, b in zip(errors[:-1], errors[1:])]


# --- DDIM ----------------------------------------------------------------------------------------------------

def test_ddim_eta0_follows_the_exact_flow_at_first_order():
    """DDIM eta = 0 is the exponential-Euler step of the PF-ODE: its error against the exact flow is O(1/K)."""
    model = ExactModel(GAUSS, SCHED)
    x_T = noise(0)
    x0_exact = exact_flow(SCHED, x_T, 1.0, 0.0)
    errors = []
    for K in (10, 20, 40):
        x, traj, _ = ddim_sample(model, x_T, SCHED, ig(K), progress=False, return_trajectory=True)
        errors.append((x - x0_exact).abs().max().item())
        # every intermediate state is close to the exact flow at its own time, too
        idx = spaced_indices(SCHED.N, K).tolist() + [0]
        mid = len(idx) // 2
        assert (traj[mid] - exact_flow(SCHED, x_T, 1.0, SCHED.times[idx[mid]])).abs().max() < 5 * errors[-1] + 1e-9
    observed = orders(errors)
    assert all(0.8 < p < 1.3 for p in observed), (errors, observed)


def test_ddim_eta1_is_ddpm_ancestral_with_beta_tilde():
    """eta = 1 gives sigma^2 = beta_tilde of the jump: the same chain as ddpm_sample, noise for noise."""
    model = ExactModel(MIXTURE, SCHED)
    x_T = noise(1, (16, 2))
    for K in (25, 7):
        a = ddim_sample(model, x_T, SCHED, ig(K, "trailing"), eta=1.0, progress=False,
                        generator=torch.Generator().manual_seed(3))
        b = ddpm_sample(model, x_T, SCHED, ig(K), variance="beta_tilde", progress=False,
                        generator=torch.Generator().manual_seed(3))
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_ddim_inversion_then_regeneration_reconstructs_x0():
    """Encode with ddim_invert, decode with ddim_sample: the round-trip error falls like 1/K."""
    model = ExactModel(GAUSS, SCHED)
    x0 = GAUSS.sample(64, torch.Generator().manual_seed(2))[0]
    errors = []
    for K in (10, 20, 40):
        x_T = ddim_invert(model, x0, SCHED, ig(K), progress=False)
        errors.append((ddim_sample(model, x_T, SCHED, ig(K), progress=False) - x0).abs().max().item())
    observed = orders(errors)
    assert all(0.7 < p < 1.3 for p in observed), (errors, observed)
    # the mixture: the mean error falls too (points near the components' boundaries converge late)
    model = ExactModel(MIXTURE, SCHED)
    x0 = MIXTURE.sample(64, torch.Generator().manual_seed(2))[0]
    err = [(ddim_sample(model, ddim_invert(model, x0, SCHED, ig(K), progress=False), SCHED, ig(K), progress=False)
            - x0).abs().mean().item() for K in (10, 40)]
    assert err[1] < 0.5 * err[0], err
    # the encoding is approximately Gaussian noise
    x_T = ddim_invert(ExactModel(MIXTURE, SCHED), MIXTURE.sample(4000, torch.Generator().manual_seed(5))[0], SCHED,
                      ig(50), progress=False)
    assert x_T.mean(0).abs().max() < 0.1 and (x_T.std(0) - 1).abs().max() < 0.1


def test_ddim_eta0_is_euler_and_first_order_dpm_solver_on_the_same_grid():
    """Karras et al. Sec. 3: DDIM is Euler's method in (x~, sigma~); it is also first-order DPM-Solver++."""
    model = ExactModel(MIXTURE, SCHED)
    x_T = noise(4, (8, 2))
    K = 12
    sig = discrete_sigmas(SCHED, spaced_indices(SCHED.N, K, "leading"))
    a = ddim_sample(model, x_T, SCHED, ig(K, "leading"), progress=False)
    b = euler_sample(model, x_T, SCHED, sig, progress=False)
    c = plms_sample(model, x_T, SCHED, ig(1), progress=False)
    d = ddim_sample(model, x_T, SCHED, ig(1), progress=False)
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)
    assert torch.allclose(c, d, rtol=1e-12, atol=1e-12)
    # a 2-step DPM-Solver++ to sigma = 0 is all first order: DDIM again
    sig2 = discrete_sigmas(SCHED, spaced_indices(SCHED.N, 2))
    assert torch.allclose(dpmpp_2m_sample(model, x_T, SCHED, sig2, progress=False),
                          ddim_sample(model, x_T, SCHED, ig(2), progress=False), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["x0", "v", "score"])
def test_prediction_type_does_not_change_the_sampler(kind):
    x_T = noise(5, (8, 2))
    eps_model, other = ExactModel(MIXTURE, SCHED, "eps"), ExactModel(MIXTURE, SCHED, kind)
    for run in (lambda m: ddim_sample(m, x_T, SCHED, ig(10), eta=0.5, generator=torch.Generator().manual_seed(0),
                                      progress=False),
                lambda m: dpmpp_2m_sample(m, x_T, SCHED, sg(10, "logsnr"), progress=False),
                lambda m: plms_sample(m, x_T, SCHED, ig(10), progress=False)):
        assert torch.allclose(run(eps_model), run(other), rtol=1e-8, atol=1e-8)


def test_spaced_indices():
    assert spaced_indices(1000, 10, "leading").tolist() == list(range(901, 0, -100))
    assert spaced_indices(1000, 10, "leading", 1).tolist() == list(range(902, 1, -100))
    assert spaced_indices(1000, 10, "trailing").tolist() == list(range(1000, 0, -100))
    lin = spaced_indices(1000, 10, "linspace")
    assert lin[0] == 1000 and lin[-1] == 1
    # trailing = the respacing ddpm_sample uses
    for K in (3, 7, 64):
        assert spaced_indices(1000, K).flip(0).tolist() == \
            torch.round(torch.arange(1, K + 1, dtype=F64) * 1000 / K).long().tolist()


def test_slerp():
    z0, z1 = noise(6, (5, 64)), noise(7, (5, 64))
    assert torch.allclose(slerp(z0, z1, 0.0), z0) and torch.allclose(slerp(z0, z1, 1.0), z1)
    # orthogonal unit vectors stay on the unit circle: (cos, sin) of a * pi / 2
    e0, e1 = torch.tensor([[1.0, 0.0]], dtype=F64), torch.tensor([[0.0, 1.0]], dtype=F64)
    mid = slerp(e0, e1, 0.5)
    assert torch.allclose(mid, torch.tensor([[math.sqrt(0.5), math.sqrt(0.5)]], dtype=F64))
    # Gaussian noise keeps its norm ~ sqrt(D) along the path; the straight line loses ~ 1/sqrt(2) mid-way
    norms = slerp(z0, z1, torch.full((5,), 0.5, dtype=F64)).norm(dim=1) / 8
    assert ((norms - 1).abs() < 0.2).all() and ((0.5 * (z0 + z1)).norm(dim=1) / 8 < 0.85).all()
    assert torch.allclose(slerp(z0, z0, 0.3), z0)  # parallel: no division by sin(0)


# --- Karras sigma view: Euler, Heun, DPM-Solver++(2M) ---------------------------------------------------------

def test_karras_sigmas():
    s = karras_sigmas(10, 0.002, 80.0)
    assert s.shape == (11,) and s[0].item() == pytest.approx(80.0) and s[-2].item() == pytest.approx(0.002)
    assert s[-1] == 0 and bool((s.diff() < 0).all())
    assert torch.allclose(karras_sigmas(5, 1.0, 5.0, rho=1.0, append_zero=False),
                          torch.linspace(5, 1, 5, dtype=F64))
    # rho = 7 puts more steps at small sigma than a uniform grid (rho = 1) does
    assert (s[:-1] < 1.0).sum() > (karras_sigmas(10, 0.002, 80.0, rho=1.0)[:-1] < 1.0).sum()


@pytest.mark.parametrize("schedule", [SCHED, cosine_schedule(200), VPLinear(), VE(0.01, 50.0), VPCosine()])
def test_time_of_sigma_inverts_sigma_tilde(schedule):
    t = torch.tensor([0.002, 0.1, 0.5, 0.93], dtype=F64)
    assert torch.allclose(time_of_sigma(schedule, sigma_tilde(schedule, t)), t, atol=1e-12)
    with pytest.raises(ValueError, match="sigma"):
        time_of_sigma(schedule, torch.tensor([1e20 if isinstance(schedule, VPCosine) else 1e9], dtype=F64))
    with pytest.raises(ValueError, match="sigma"):
        time_of_sigma(schedule, torch.tensor([0.0], dtype=F64))


@pytest.mark.parametrize("kind", ["eps", "x0", "v", "score"])
def test_predict_x0_eps_at_is_predict_x0_eps_with_known_coefficients(kind):
    """The samplers' fast path (alpha, sigma precomputed as floats) gives predict_x0_eps's answer."""
    model, x = ExactModel(MIXTURE, SCHED, kind), noise(14, (8, 2))
    for t in (0.001, 0.37, 1.0):
        a, s = float(SCHED.alpha(t)), float(SCHED.sigma(t))
        for fast, ref in zip(predict_x0_eps_at(model, x, t, a, s), predict_x0_eps(model, x, t, SCHED)):
            assert torch.allclose(fast, ref, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="shape"):
        predict_x0_eps_at(lambda x, t, cond=None: x[:1], x, 0.5, 0.7, 0.7)


@pytest.mark.parametrize("schedule", [SCHED, cosine_schedule(200), VPLinear(), VE(0.01, 50.0)],
                         ids=["linear", "cosine", "vp", "ve"])
def test_sigma_grids(schedule):
    lo, hi = sigma_range(schedule)
    for K in (1, 4, 10):
        grids = {g: sigma_grid(schedule, K, g) for g in ("logsnr", "time_uniform", "karras")}
        for g, sig in grids.items():
            assert sig.dtype == F64 and sig.shape == (K + 1,) and sig[-1] == 0 and bool((sig.diff() < 0).all()), g
        assert torch.allclose(grids["karras"], karras_sigmas(K, lo, hi))
        # logsnr: K + 1 equal steps in log sigma~ from sigma~_max to sigma~_min, the last replaced by 0
        log_s = torch.log(grids["logsnr"][:-1])
        assert log_s[0].item() == pytest.approx(math.log(hi))
        assert torch.allclose(log_s.diff(), torch.full((K - 1,), (math.log(lo) - math.log(hi)) / K, dtype=F64))
        # time_uniform: equally spaced times from t_max, so t_{K-1} = t_max / K
        t = time_of_sigma(schedule, grids["time_uniform"][:-1])
        assert torch.allclose(t, torch.linspace(1.0, 0.0, K + 1, dtype=F64)[:-1], atol=1e-10)
    with pytest.raises(ValueError, match="grid"):
        sigma_grid(schedule, 4, "cosine")


def test_dpmpp_2m_default_grid_beats_diffusers_default_steps():
    """The default 'logsnr' grid (10 NFE) against diffusers' default DPMSolverMultistepScheduler steps ('linspace':
    K + 1 rounded times from t_N, the last dropped, then sigma = 0), run by our solver (the same as diffusers'
    up to 1e-6, tests/test_crosscheck_diffusers.py) on an 8-Gaussian mixture with its exact flow's endpoint."""
    from diffedu.benchmark import reference_endpoint
    from diffedu.toy import eight_gaussians
    mixture, K = eight_gaussians(), 10
    x_T = noise(15, (128, 2))
    ref, _ = reference_endpoint(mixture, SCHED, x_T)
    model = ExactModel(mixture, SCHED)
    default = dpmpp_2m_sample(model, x_T, SCHED, sg(K, "logsnr"), progress=False)
    k = torch.round(torch.linspace(0, SCHED.N - 1, K + 1, dtype=F64)).long().flip(0)[:-1]  # diffusers' timesteps
    theirs = dpmpp_2m_sample(model, x_T, SCHED, discrete_sigmas(SCHED, k + 1), progress=False)
    rms = lambda x: (x - ref).pow(2).sum(1).mean().sqrt().item()  # noqa: E731
    assert rms(default) < 0.8 * rms(theirs), (rms(default), rms(theirs))
    assert rms(dpmpp_2m_sample(model, x_T, SCHED, sg(K, "karras"), progress=False)) > rms(default)


def gaussian_run(sampler, schedule, K, x_T, **kw):
    smin, smax = sigma_range(schedule)
    sig = karras_sigmas(K, smin, smax, append_zero=False)  # end at sigma_min: the exact flow is known there
    x = sampler(ExactModel(GAUSS, schedule), x_T, schedule, sig, progress=False, **kw)
    t0, t1 = time_of_sigma(schedule, sig[0]), time_of_sigma(schedule, sig[-1])
    return (x - exact_flow(schedule, x_T, t0, t1)).abs().max().item()


@pytest.mark.parametrize("sampler,lo,hi,kw", [(euler_sample, 0.8, 1.3, {}), (heun_sample, 1.7, 2.6, {}),
                                              (dpmpp_2m_sample, 1.6, 2.6, {"lower_order_final": False})],
                         ids=["euler", "heun", "dpmpp_2m"])
@pytest.mark.parametrize("schedule", [VPLinear(), VE(0.01, 50.0)], ids=["vp", "ve"])
def test_observed_order_on_the_exact_gaussian_flow(sampler, lo, hi, kw, schedule):
    scale = 1.0 if schedule.variance_preserving else 50.0  # x_T at t = 1: N(0, I) for VP, N(0, sigma_max^2) VE
    x_T = scale * noise(8)
    errors = [gaussian_run(sampler, schedule, K, x_T, **kw) for K in (11, 21, 41)]  # 10, 20, 40 steps
    observed = orders(errors)
    assert all(lo < p < hi for p in observed), (errors, observed)


@pytest.mark.parametrize("sampler,lo,hi", [(heun_sample, 1.6, 2.8), (dpmpp_2m_sample, 1.5, 2.8)],
                         ids=["heun", "dpmpp_2m"])
def test_observed_order_on_a_mixture_by_self_convergence(sampler, lo, hi):
    """No closed form for the mixture's flow: the differences |x_K - x_2K| fall like K^-p."""
    sch = VPLinear()
    smin, smax = sigma_range(sch, t_min=0.05)
    x_T = noise(9, (16, 2))
    wide = GaussianMixture(MIXTURE.means, torch.tensor([0.6, 0.8, 0.7]), MIXTURE.weights)
    xs = [sampler(ExactModel(wide, sch), x_T, sch, karras_sigmas(K + 1, smin, smax, append_zero=False),
                  progress=False) for K in (12, 24, 48)]
    diffs = [(a - b).abs().max().item() for a, b in zip(xs[:-1], xs[1:])]
    observed = orders(diffs)
    assert all(lo < p < hi for p in observed), (diffs, observed)


def test_few_step_samplers_reach_the_mixture():
    """With 20 steps the ODE samplers' outputs sit on the modes with the right frequencies (a loose check)."""
    x_T = noise(10, (1000, 2))
    for run in (lambda m: euler_sample(m, x_T, SCHED, sg(30), progress=False),
                lambda m: heun_sample(m, x_T, SCHED, sg(20), progress=False),
                lambda m: dpmpp_2m_sample(m, x_T, SCHED, sg(20, "logsnr"), progress=False),
                lambda m: plms_sample(m, x_T, SCHED, ig(20), progress=False),
                lambda m: ddim_sample(m, x_T, SCHED, ig(30), progress=False)):
        x = run(ExactModel(MIXTURE, SCHED))
        nearest = torch.cdist(x, MIXTURE.means).argmin(1)
        freq = torch.bincount(nearest, minlength=3).double() / len(x)
        assert torch.allclose(freq, MIXTURE.weights, atol=0.05), freq


# --- NFE, dtype, reproducibility ------------------------------------------------------------------------------

class Counting(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.prediction, self.calls = inner, inner.prediction, 0

    def forward(self, x, t, cond=None):
        self.calls += 1
        return self.inner(x, t, cond)


@pytest.mark.parametrize("K", [1, 2, 5])
def test_network_evaluation_counts(K):
    x_T = noise(11, (4, 2))
    cases = [(lambda m: ddim_sample(m, x_T, SCHED, ig(K), progress=False), K),
             (lambda m: ddim_invert(m, x_T, SCHED, ig(K), progress=False), K),
             (lambda m: euler_sample(m, x_T, SCHED, sg(K), progress=False), K),
             (lambda m: heun_sample(m, x_T, SCHED, sg(K), progress=False), 2 * K - 1),
             (lambda m: dpmpp_2m_sample(m, x_T, SCHED, sg(K, "logsnr"), progress=False), K),
             (lambda m: plms_sample(m, x_T, SCHED, ig(K), progress=False), K + 1 if K > 1 else 1)]
    if K >= 4:
        cases.append((lambda m: plms_sample(m, x_T, SCHED, ig(K), warmup="prk", progress=False), K + 9))
    sig = karras_sigmas(K, *sigma_range(SCHED), append_zero=False)
    cases.append((lambda m: heun_sample(m, x_T, SCHED, sig, progress=False), 2 * (K - 1))) \
        if K > 1 else None
    for run, nfe in cases:
        m = Counting(ExactModel(MIXTURE, SCHED))
        run(m)
        assert m.calls == nfe


def test_dtype_trajectory_and_reproducibility():
    x_T = noise(12, (6, 2)).float()
    model = ExactModel(MIXTURE, SCHED)
    for run in (lambda g: ddim_sample(model, x_T, SCHED, ig(8), eta=0.7, generator=g, progress=False,
                                      return_trajectory=True),
                lambda g: dpmpp_2m_sample(model, x_T, SCHED, sg(8, "logsnr"), progress=False, return_trajectory=True),
                lambda g: plms_sample(model, x_T, SCHED, ig(8), progress=False, return_trajectory=True),
                lambda g: heun_sample(model, x_T, SCHED, sg(8), progress=False, return_trajectory=True)):
        x, traj, x0s = run(torch.Generator().manual_seed(0))
        x2 = run(torch.Generator().manual_seed(0))[0]
        assert x.dtype == torch.float32 and torch.equal(x, x2)
        assert len(traj) == 9 and len(x0s) == 8 and torch.equal(traj[0], x_T) and torch.equal(traj[-1], x)


# --- bad input ------------------------------------------------------------------------------------------------

def test_bad_input_raises_clear_errors():
    model, x_T = ExactModel(MIXTURE, SCHED), noise(13, (4, 2))
    bad = [
        (lambda: ddim_sample(model, x_T, SCHED, ig(0)), "steps"),
        (lambda: ddim_sample(model, x_T, SCHED, ig(1001)), "steps"),
        (lambda: ddim_sample(model, x_T, SCHED, ig(2.5)), "steps"),
        (lambda: ddim_sample(model, x_T, SCHED, ig(10), eta=-0.1), "eta"),
        (lambda: ddim_sample(model, x_T, SCHED, ig(10), eta=float("nan")), "eta"),
        (lambda: ddim_sample(model, x_T, SCHED, ig(10), eta=1.5), "eta"),
        (lambda: ddim_sample(model, x_T, SCHED, ig(10, "uniform")), "spacing"),
        (lambda: ddim_sample(model, x_T, SCHED, ig(10, "leading", steps_offset=200)), "steps_offset"),
        (lambda: ddim_sample(model, x_T, VPLinear(), ig(10)), "DiscreteSchedule"),
        (lambda: ddim_sample(model, x_T * float("nan"), SCHED, ig(10)), "x_T"),
        (lambda: ddim_sample(model, x_T, SCHED, torch.tensor([500, 600, 0])), "indices"),
        (lambda: ddim_sample(model, x_T, SCHED, torch.tensor([1001, 0])), "indices"),
        (lambda: ddim_sample(model, x_T, SCHED, torch.tensor([500.0, 0.0])), "indices"),
        (lambda: ddim_sample(model, x_T.long(), SCHED, ig(10)), "x_T"),
        (lambda: ddim_invert(model, x_T, SCHED, ig(10, "bogus")), "spacing"),
        (lambda: plms_sample(model, x_T, SCHED, ig(3), warmup="prk"), "indices"),
        (lambda: plms_sample(model, x_T, SCHED, ig(10), warmup="rk4"), "warmup"),
        (lambda: ddpm_sample(model, x_T, SCHED, ig(10, final=1)), "indices"),
        (lambda: euler_sample(model, x_T, SCHED, sg(0)), "steps"),
        (lambda: euler_sample(model, x_T, SCHED, torch.tensor([3.0])), "sigmas"),
        (lambda: heun_sample(model, x_T, SCHED, torch.tensor([1.0, 3.0, 0.0])), "sigmas"),
        (lambda: dpmpp_2m_sample(model, x_T, SCHED, torch.tensor([1e6, 3.0, 0.0])), "sigmas"),
        (lambda: dpmpp_2m_sample(model, x_T, SCHED, torch.tensor([2.0, 0.0, 0.0])), "sigmas"),
        (lambda: karras_sigmas(10, 1.0, 0.5), "sigma_max"),
        (lambda: karras_sigmas(10, 0.1, 10.0, rho=0.0), "rho"),
        (lambda: sigma_range(VE(0.01, 50.0), t_min=0.5, t_max=0.2), "t_min"),
        (lambda: slerp(x_T, x_T, 1.5), "alpha"),
        (lambda: slerp(x_T, x_T[:2], 0.5), "z0"),
    ]
    for call, name in bad:
        with pytest.raises(ValueError, match=name):
            call()


@pytest.mark.parametrize("sampler", [euler_sample, heun_sample])
@pytest.mark.parametrize("grid", ["karras", "logsnr", "time_uniform"])
def test_euler_and_heun_take_a_named_grid(sampler, grid):
    """Any sigma_grid runs through Euler and Heun; the grids differ; a wrong name raises."""
    model = ExactModel(MIXTURE, SCHED)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    named = sampler(model, x_T, SCHED, sg(8, grid), progress=False)
    assert torch.equal(named, sampler(model, x_T, SCHED, sg(8, grid), progress=False))
    if grid != "karras":
        assert not torch.allclose(named, sampler(model, x_T, SCHED, sg(8), progress=False))
    with pytest.raises(ValueError, match="grid"):
        sampler(model, x_T, SCHED, sg(8, "uniform"), progress=False)


def test_log_snr_min_clips_the_grid_and_fixes_the_cosine_chain():
    """sigma_grid(..., log_snr_min) starts at lambda = log_snr_min with equal lambda steps; on the cosine chain
    (sigma~_max ~ 2e4) it cuts DPM-Solver++(2M)'s error at 10 NFE to well under the unclipped grid's."""
    from diffedu.benchmark import reference_endpoint
    from diffedu.toy import eight_gaussians

    cosine = cosine_schedule(1000)
    grid = sigma_grid(cosine, 10, "logsnr", log_snr_min=-5.1)
    assert math.isclose(float(grid[0]), math.exp(2.55), rel_tol=1e-12) and grid[-1] == 0
    steps = torch.diff(-2 * torch.log(grid[:-1]))
    assert torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-9)
    # a bound above the schedule's top leaves the grid unchanged
    assert torch.equal(sigma_grid(SCHED, 10, "logsnr", log_snr_min=-30.0), sigma_grid(SCHED, 10, "logsnr"))
    mixture = eight_gaussians()
    x_T = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = reference_endpoint(mixture, cosine, x_T)[0]
    model = ExactModel(mixture, cosine)
    err = {clip: (dpmpp_2m_sample(model, x_T, cosine, sg(10, "logsnr", cosine, log_snr_min=clip), progress=False) - ref)
           .pow(2).sum(1).mean().sqrt().item() for clip in (None, -5.1)}
    assert err[-5.1] < 0.4 * err[None], err


@pytest.mark.parametrize("bad, match", [(float("nan"), "log_snr_min"), (50.0, "log_snr_min"),
                                        (-math.inf, "log_snr_min")])
def test_log_snr_min_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        sigma_grid(SCHED, 10, "logsnr", log_snr_min=bad)
    with pytest.raises(ValueError, match="logsnr"):
        sigma_grid(SCHED, 10, "karras", log_snr_min=-5.0)
