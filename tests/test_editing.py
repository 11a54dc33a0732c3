"""SDEdit and inpainting against closed forms, with the exact Gaussian models of diffedu.toy.

For Gaussian data N(mu, Sigma) every piece is linear-Gaussian, so the law of each algorithm's output is known:

* SDEdit with the stochastic reverse process (eta = 1) draws x_0 ~ p(x_0 | x_t0), x_t0 = alpha x_g + sigma eps:
  the data posterior averaged over the noised guide. With eta = 0 it is the probability-flow map of x_t0.
* Inpainting (replacement, RePaint) keeps the state (x_known part, x_unknown part) jointly Gaussian, so its mean
  and covariance can be carried through every down- and up-step exactly (``_inpaint_moments`` below, written
  from Ho et al.'s formulas, independently of the library). The true target is the conditional
  N(mu_2|1, Sigma_2|1); the tests measure how far each method's exact law is from it.
"""

import math

import pytest
import torch

from diffedu.grids import index_grid
from diffedu.editing import check_mask, inpaint, repaint_levels, sdedit, start_index, truncated_chain
from diffedu.guidance import ClassifierFreeGuidance
from diffedu.schedules import VPLinear, linear_schedule
from diffedu.toy import ExactModel, GaussianMixture, gaussian

SCH = linear_schedule()  # DDPM's chain, N = 1000
I2 = torch.eye(2, dtype=torch.float64)
MU = torch.tensor([0.5, -0.3], dtype=torch.float64)
SIGMA = torch.tensor([[0.5, 0.3], [0.3, 0.4]], dtype=torch.float64)  # correlation 0.67


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _coef(i: int, schedule=SCH) -> tuple[float, float]:
    ab = float(schedule.alpha_bars[i])
    return math.sqrt(ab), math.sqrt(1 - ab)


def _assert_moments(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, z: float = 4.5):
    """Sample mean and covariance of x (B, D) within z standard errors of (mean, cov)."""
    B = x.shape[0]
    se_mean = (torch.diagonal(cov) / B).sqrt()
    assert ((x.mean(0) - mean).abs() <= z * se_mean + 1e-9).all(), (x.mean(0), mean)
    d = torch.diagonal(cov)
    se_cov = ((cov ** 2 + torch.outer(d, d)) / B).sqrt()  # Var of a sample covariance entry, Gaussian data
    assert ((torch.cov(x.T) - cov).abs() <= z * se_cov + 1e-9).all(), (torch.cov(x.T), cov)


# --- SDEdit ----------------------------------------------------------------------------------------------------

def _posterior_pipeline(x_g: torch.Tensor, i0: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Law of x_0 ~ p(x_0 | x_t), x_t ~ N(alpha x_g, sigma^2 I), for data N(MU, SIGMA).

    p(x_0 | x_t) = N(MU + G (x_t - alpha MU), SIGMA - G alpha SIGMA), G = alpha SIGMA (alpha^2 SIGMA + sigma^2 I)^-1;
    averaging over x_t adds G sigma^2 G^T to the covariance.
    """
    a, s = _coef(i0)
    G = a * SIGMA @ torch.linalg.inv(a ** 2 * SIGMA + s ** 2 * I2)
    return MU + G @ (a * x_g - a * MU), SIGMA - a * G @ SIGMA + s ** 2 * G @ G.T


def _flow_map(i0: int) -> tuple[torch.Tensor, float]:
    """The probability-flow map from level i0 to 0 for data N(MU, SIGMA): x_0 = MU + A (x_t - alpha MU),
    A = U diag(sqrt(lam / (alpha^2 lam + sigma^2))) U^T (each eigen-direction is rescaled to its data scale)."""
    a, s = _coef(i0)
    lam, U = torch.linalg.eigh(SIGMA)
    return U @ torch.diag((lam / (a ** 2 * lam + s ** 2)).sqrt()) @ U.T, a


def test_strength_zero_returns_the_guide_unchanged():
    model = ExactModel(gaussian(MU, SIGMA), SCH)
    x_g = torch.randn(5, 2, generator=_gen(0), dtype=torch.float64)
    calls = []
    counting = lambda x, t, cond=None: calls.append(1) or model(x, t, cond)
    assert torch.equal(sdedit(counting, x_g, SCH, 0.0, progress=False), x_g)
    assert torch.equal(sdedit(counting, x_g, SCH, 0.0004, progress=False), x_g)  # rounds to index 0
    assert not calls


def test_sdedit_starts_from_the_forward_noised_guide_and_takes_proportional_steps():
    model = ExactModel(gaussian(MU, SIGMA), SCH)
    x_g = torch.randn(6, 2, generator=_gen(1), dtype=torch.float64)
    calls = []
    counting = lambda x, t, cond=None: calls.append(float(t[0])) or model(x, t, cond)
    _, x_t0 = sdedit(counting, x_g, SCH, 0.37, steps=50, generator=_gen(2), progress=False, return_start=True)
    i0 = start_index(SCH, 0.37)
    assert i0 == 370
    a, s = _coef(i0)
    eps = torch.randn(6, 2, generator=_gen(2), dtype=torch.float64)  # the first draw of the same generator
    assert torch.allclose(x_t0, a * x_g + s * eps, atol=1e-12)
    assert len(calls) == round(50 * 0.37)  # the same step size as a 50-step run from strength 1
    assert math.isclose(calls[0], 0.37) and calls == sorted(calls, reverse=True)
    # the truncated chain keeps the original alpha_bars and times
    chain = truncated_chain(SCH, i0)
    assert chain.N == i0
    assert torch.allclose(chain.alpha_bars, SCH.alpha_bars[: i0 + 1], rtol=1e-12)
    assert torch.equal(chain.times, SCH.times[: i0 + 1])


@pytest.mark.parametrize("strength", [0.3, 0.6])
def test_stochastic_sdedit_samples_the_posterior_of_the_noised_guide(strength):
    model = ExactModel(gaussian(MU, SIGMA), SCH)
    x_g = torch.tensor([2.0, 1.0], dtype=torch.float64)
    out = sdedit(model, x_g.expand(8000, 2).clone(), SCH, strength, eta=1.0, generator=_gen(3), progress=False)
    mean, cov = _posterior_pipeline(x_g, start_index(SCH, strength))
    _assert_moments(out, mean, cov)
    # and the edit is pulled from the guide towards the data: between the two, closer to the data at higher strength
    assert ((mean - MU).norm() < (x_g - MU).norm())


def test_deterministic_sdedit_is_the_probability_flow_map_sample_by_sample():
    model = ExactModel(gaussian(MU, SIGMA), SCH)
    x_g = torch.randn(200, 2, generator=_gen(4), dtype=torch.float64) * 2
    out, x_t0 = sdedit(model, x_g, SCH, 0.5, eta=0.0, generator=_gen(5), progress=False, return_start=True)
    A, a = _flow_map(500)
    expected = MU + (x_t0 - a * MU) @ A.T
    err = (out - expected).abs().max().item()
    assert err < 1e-2  # DDIM's first-order discretisation error with K = 500 steps, on values up to ~2.5
    coarse = sdedit(model, x_g, SCH, 0.5, steps=100, eta=0.0, generator=_gen(5), progress=False)  # K = 50
    assert 5 < (coarse - expected).abs().max().item() / err < 20  # first order: 10x the steps, ~1/10 the error


def test_sdedit_at_strength_one_is_unconditional_sampling():
    model = ExactModel(gaussian(MU, SIGMA), SCH)
    x_g = torch.tensor([3.0, -3.0], dtype=torch.float64)  # far from the data
    out = sdedit(model, x_g.expand(8000, 2).clone(), SCH, 1.0, steps=250, generator=_gen(6), progress=False)
    mean, cov = _posterior_pipeline(x_g, SCH.N)
    assert (mean - MU).abs().max() < 0.02 and (cov - SIGMA).abs().max() < 1e-3  # the guide's trace is negligible
    _assert_moments(out, MU, SIGMA, z=5.0)


@pytest.mark.parametrize("kind", ["x0", "v", "score"])
def test_sdedit_is_the_same_for_every_prediction_type(kind):
    mix = GaussianMixture(torch.tensor([[1.0, 0.0], [-1.0, 0.5]]), 0.3)
    x_g = torch.randn(16, 2, generator=_gen(7), dtype=torch.float64)
    ref = sdedit(ExactModel(mix, SCH, "eps"), x_g, SCH, 0.5, steps=40, generator=_gen(8), progress=False)
    out = sdedit(ExactModel(mix, SCH, kind), x_g, SCH, 0.5, steps=40, generator=_gen(8), progress=False)
    assert torch.allclose(out, ref, atol=1e-8)


# --- inpainting ------------------------------------------------------------------------------------------------

def _inpaint_moments(mean0, cov0, a_known: float, K: int, levels: list[int]):
    """Exact mean (2,) and covariance (2, 2) of inpaint's output for data N(mean0, cov0), coordinate 0 known
    (= a_known), coordinate 1 unknown, on the K-step evenly spaced chain, variance beta_tilde. The state starts
    at N(0, I) and every move is an affine map plus independent Gaussian noise."""
    tau = [round(k * SCH.N / K) for k in range(K + 1)]  # the chain's indices, tau_0 = 0
    ab = [float(SCH.alpha_bars[i]) for i in tau]
    m, P = torch.zeros(2, dtype=torch.float64), I2.clone()
    for k, k_next in zip(levels[:-1], levels[1:]):
        if k_next == k - 1:
            beta = 1 - ab[k] / ab[k - 1]
            c0 = math.sqrt(ab[k - 1]) * beta / (1 - ab[k])  # Ho et al. eq. 7: mu = c0 x0 + ci x_k
            ci = math.sqrt(1 - beta) * (1 - ab[k - 1]) / (1 - ab[k])
            var = (1 - ab[k - 1]) / (1 - ab[k]) * beta if k > 1 else 0.0
            a, s = math.sqrt(ab[k]), math.sqrt(1 - ab[k])
            G = a * cov0 @ torch.linalg.inv(a ** 2 * cov0 + s ** 2 * I2)  # x0_hat = mean0 + G (x - a mean0)
            L, c = c0 * G + ci * I2, c0 * (mean0 - a * G @ mean0)  # unknown part = L x + c + noise
            m_u, P_u = L @ m + c, L @ P @ L.T
            a1, s1 = math.sqrt(ab[k - 1]), math.sqrt(1 - ab[k - 1])
            m = torch.stack([torch.tensor(a1 * a_known, dtype=torch.float64), m_u[1]])
            P = torch.tensor([[s1 ** 2, 0.0], [0.0, float(P_u[1, 1]) + var]], dtype=torch.float64)
        else:
            beta = 1 - ab[k_next] / ab[k]
            m, P = math.sqrt(1 - beta) * m, (1 - beta) * P + beta * I2
    return m, P


def _gaussian_problem(rho: float = 0.9):
    cov = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
    return gaussian(torch.zeros(2), cov), cov


def test_known_pixels_are_kept_exactly_and_a_full_mask_returns_the_input():
    model = ExactModel(gaussian(MU, SIGMA), SCH)
    x = torch.randn(8, 2, generator=_gen(9), dtype=torch.float64)
    for method in ("replace", "repaint"):
        out = inpaint(model, x, torch.tensor([1.0, 0.0]), SCH, index_grid(SCH, 20), method=method, resample=2 if
                      method == "repaint" else None, generator=_gen(10), progress=False)
        assert torch.equal(out[:, 0], x[:, 0]) and not torch.equal(out[:, 1], x[:, 1])
        full = inpaint(model, x, torch.ones(8, 2, dtype=torch.bool), SCH, index_grid(SCH, 20), method=method,
                       generator=_gen(10), progress=False)
        assert torch.equal(full, x)


def test_known_part_is_the_forward_noised_known_image_at_each_level():
    """After a down-step to level k the known coordinate is a fresh draw of q(x_k | x_0) = N(sqrt(abar) a, 1 - abar),
    independent of the generated coordinate (the source of replacement's bias)."""
    mix, _ = _gaussian_problem()
    x = torch.zeros(5000, 2, dtype=torch.float64)
    x[:, 0] = 1.5
    _, traj, _ = inpaint(ExactModel(mix, SCH), x, torch.tensor([1.0, 0.0]), SCH, index_grid(SCH, 20), jump_length=4,
                         resample=2, generator=_gen(19), progress=False, return_trajectory=True)
    levels = repaint_levels(20, 4, 2)
    assert len(traj) == len(levels) and levels == repaint_levels(20, 4, 2)
    checked = 0
    for n in range(1, len(levels)):
        k = levels[n]
        if levels[n - 1] == k + 1 and k in (19, 12, 5):  # reached by a down-step
            a, s = _coef(round(k * SCH.N / 20))
            state = traj[n]
            _assert_moments(state[:, :1], torch.tensor([a * 1.5], dtype=torch.float64),
                            torch.tensor([[s ** 2]], dtype=torch.float64))
            assert abs(torch.corrcoef(state.T)[0, 1]) < 0.06
            checked += 1
    assert checked >= 3


def test_replacement_is_repaint_without_resampling():
    model = ExactModel(gaussian(MU, SIGMA), SCH)
    x = torch.randn(8, 2, generator=_gen(11), dtype=torch.float64)
    mask = torch.tensor([0.0, 1.0])
    a = inpaint(model, x, mask, SCH, index_grid(SCH, 30), method="replace", generator=_gen(12), progress=False)
    b = inpaint(model, x, mask, SCH, index_grid(SCH, 30), method="repaint", jump_length=5, resample=1, generator=_gen(12),
                progress=False)
    assert torch.equal(a, b)


def test_repaint_levels_follow_algorithm_1_and_the_jump_schedule():
    # jump_length 1: Alg. 1 with U = 2 on K = 3: at t = 3 and t = 2 resample once, none at t = 1
    assert repaint_levels(3, 1, 2) == [3, 2, 3, 2, 1, 2, 1, 0]
    assert repaint_levels(4, 4, 5) == [4, 3, 2, 1, 0]  # no checkpoint below the top: plain descent
    assert repaint_levels(5, 2, 1) == [5, 4, 3, 2, 1, 0]
    # jump_length 2, resample 2 on K = 6: checkpoints at 4 and 2
    assert repaint_levels(6, 2, 2) == [6, 5, 4, 5, 6, 5, 4, 3, 2, 3, 4, 3, 2, 1, 0]
    for K, j, r in [(50, 10, 10), (20, 1, 4), (30, 7, 3)]:
        lv = repaint_levels(K, j, r)
        assert lv[0] == K and lv[-1] == 0 and min(lv) == 0 and max(lv) == K
        assert all(abs(b - a) == 1 for a, b in zip(lv[:-1], lv[1:]))
        downs = sum(b < a for a, b in zip(lv[:-1], lv[1:]))
        assert downs == K + len(range(K - j, 0, -j)) * (r - 1) * j  # network calls


def test_inpainting_independent_coordinates_samples_the_marginal():
    """If the unknown coordinate is independent of the known one, the right answer is its marginal, and both
    methods get it (the model's step for it does not look at the known coordinate). Unit data variance makes the
    ancestral step with sigma^2 = beta exact even on a 100-step chain (the reverse of a stationary AR(1) chain is
    the chain itself), so no discretisation error hides a bias."""
    model = ExactModel(gaussian(torch.tensor([0.0, 0.7]), torch.tensor([[0.3, 0.0], [0.0, 1.0]])), SCH)
    x = torch.zeros(6000, 2, dtype=torch.float64)
    x[:, 0] = 2.0
    for method in ("replace", "repaint"):
        out = inpaint(model, x, torch.tensor([1.0, 0.0]), SCH, index_grid(SCH, 100), method=method, jump_length=1,
                      resample=3 if method == "repaint" else None, variance="beta", generator=_gen(13),
                      progress=False)
        _assert_moments(out[:, 1:], torch.tensor([0.7], dtype=torch.float64),
                        torch.tensor([[1.0]], dtype=torch.float64))


@pytest.mark.parametrize("method, jump_length, resample", [("replace", None, None), ("repaint", 1, 5),
                                                           ("repaint", 5, 3)])
def test_inpainting_a_correlated_gaussian_matches_its_exact_law(method, jump_length, resample):
    """Monte Carlo moments of the library's sampler equal the exactly propagated moments of the same algorithm."""
    mix, cov = _gaussian_problem()
    model = ExactModel(mix, SCH)
    a_known, K = 1.5, 100
    x = torch.zeros(5000, 2, dtype=torch.float64)
    x[:, 0] = a_known
    out = inpaint(model, x, torch.tensor([1.0, 0.0]), SCH, index_grid(SCH, K), method=method, jump_length=jump_length,
                  resample=resample, generator=_gen(14), progress=False)
    levels = repaint_levels(K, jump_length or 1, resample or 1)
    m, P = _inpaint_moments(torch.zeros(2, dtype=torch.float64), cov, a_known, K, levels)
    assert torch.equal(out[:, 0], x[:, 0])
    _assert_moments(out[:, 1:], m[1:], P[1:, 1:])


def test_repaint_is_closer_than_replacement_to_the_true_conditional():
    """The true answer is N(rho a, 1 - rho^2). Replacement is biased towards the prior: its mean is shrunk towards 0
    and its variance too large, because each step conditions on a *noisy* known part. RePaint's resampling removes
    most of the bias. Exact laws (no Monte Carlo), K = 100 steps, rho = 0.9, a = 1.5."""
    _, cov = _gaussian_problem()
    rho, a_known, K = 0.9, 1.5, 100
    true_mean, true_var = rho * a_known, 1 - rho ** 2
    zero = torch.zeros(2, dtype=torch.float64)
    m_rep, P_rep = _inpaint_moments(zero, cov, a_known, K, repaint_levels(K, 1, 1))
    m_rp, P_rp = _inpaint_moments(zero, cov, a_known, K, repaint_levels(K, 1, 10))
    assert 0 < m_rep[1] < 0.8 * true_mean and P_rep[1, 1] > 1.3 * true_var  # replacement: shrunk, too wide
    assert abs(m_rp[1] - true_mean) < 0.25 * abs(m_rep[1] - true_mean)
    assert abs(P_rp[1, 1] - true_var) < 0.5 * abs(P_rep[1, 1] - true_var)
    # more resampling, less bias
    m_r3, _ = _inpaint_moments(zero, cov, a_known, K, repaint_levels(K, 1, 3))
    assert abs(m_rp[1] - true_mean) < abs(m_r3[1] - true_mean) < abs(m_rep[1] - true_mean)


def test_class_conditional_inpainting_passes_cond_through():
    """Two clusters that differ only in the unknown coordinate: the class label alone decides where it lands,
    with the exact conditional model and with classifier-free guidance at scale 1."""
    mix = GaussianMixture(torch.tensor([[0.0, 2.0], [0.0, -2.0]]), 0.3)
    model = ExactModel(mix, SCH)
    x = torch.zeros(200, 2, dtype=torch.float64)
    y = torch.arange(200) % 2
    for net in (model, ClassifierFreeGuidance(model, 1.0, null_label=2)):
        out = inpaint(net, x, torch.tensor([1.0, 0.0]), SCH, index_grid(SCH, 50), method="repaint", jump_length=5,
                      resample=2, cond=y, generator=_gen(15), progress=False)
        assert torch.equal(torch.sign(out[:, 1]).long(), 1 - 2 * y)
        out = sdedit(net, x, SCH, 0.8, steps=50, cond=y, generator=_gen(16), progress=False)
        assert torch.equal(torch.sign(out[:, 1]).long(), 1 - 2 * y)


def test_inpainting_images_with_a_broadcast_mask():
    mix = GaussianMixture(torch.zeros(1, 4), 0.5)
    model = ExactModel(mix, SCH)
    net = lambda x, t, cond=None: model(x.reshape(x.shape[0], -1), t).reshape(x.shape)  # (B, 1, 2, 2) images
    net.prediction = "eps"
    x = torch.randn(3, 1, 2, 2, generator=_gen(17), dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])[None, None]  # (1, 1, 2, 2): top row known
    out = inpaint(net, x, mask, SCH, index_grid(SCH, 10), resample=2, generator=_gen(18), progress=False)
    assert out.shape == x.shape and torch.equal(out[:, :, 0], x[:, :, 0])


# --- bad input -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("strength", [-0.1, 1.01, float("nan"), float("inf"), "half"])
def test_bad_strength_is_rejected(strength):
    model = ExactModel(gaussian(MU, SIGMA), SCH)
    with pytest.raises(ValueError, match="strength"):
        sdedit(model, torch.zeros(2, 2, dtype=torch.float64), SCH, strength, progress=False)


def test_bad_sdedit_arguments_are_rejected():
    model = ExactModel(gaussian(MU, SIGMA), SCH)
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="x_guide"):
        sdedit(model, torch.full((2, 2), float("nan")), SCH, 0.5, progress=False)
    with pytest.raises(ValueError, match="eta"):
        sdedit(model, x, SCH, 0.5, eta=1.5, progress=False)
    with pytest.raises(ValueError, match="steps"):
        sdedit(model, x, SCH, 0.5, steps=0, progress=False)
    with pytest.raises(ValueError, match="schedule"):
        sdedit(model, x, VPLinear(), 0.5, progress=False)


@pytest.mark.parametrize("mask, match", [
    (torch.tensor([1.0, 0.0, 1.0]), "broadcast"),        # wrong size
    (torch.ones(3, 1, 2), "broadcast"),                  # broadcasts to a bigger shape than x
    (torch.tensor([0.5, 1.0]), "0"),                     # not binary
    (torch.tensor([float("nan"), 1.0]), "0"),            # NaN
    ([1.0, 0.0], "torch.Tensor"),                        # not a tensor
])
def test_bad_masks_are_rejected(mask, match):
    model = ExactModel(gaussian(MU, SIGMA), SCH)
    x = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="mask") as info:
        inpaint(model, x, mask, SCH, index_grid(SCH, 10), progress=False)
    assert match in str(info.value)


def test_bad_inpaint_arguments_are_rejected():
    model = ExactModel(gaussian(MU, SIGMA), SCH)
    x, mask = torch.zeros(4, 2, dtype=torch.float64), torch.tensor([1.0, 0.0])
    cases = [(dict(method="paint"), "method"), (dict(jump_length=0), "jump_length"),
             (dict(jump_length=11), "jump_length"), (dict(resample=0), "resample"),
             (dict(method="replace", resample=3), "resample"), (dict(variance="large"), "variance"),
             (dict(steps=0), "steps")]
    for kwargs, name in cases:
        steps = kwargs.pop("steps", 10)
        with pytest.raises(ValueError, match=name):
            inpaint(model, x, mask, SCH, index_grid(SCH, steps), **kwargs, progress=False)
    with pytest.raises(ValueError, match="x_known"):
        inpaint(model, torch.full((4, 2), float("nan")), mask, SCH, index_grid(SCH, 10), progress=False)
    with pytest.raises(ValueError, match="schedule"):
        inpaint(model, x, mask, VPLinear(), torch.tensor([10, 0]), progress=False)
    assert torch.equal(check_mask(torch.tensor([True, False]), x), torch.tensor([1.0, 0.0], dtype=torch.float64))
