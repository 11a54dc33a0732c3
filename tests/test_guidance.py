"""Guidance against closed forms: with the exact Gaussian-mixture model and its exact noisy classifier,
Bayes' rule grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t) makes every guidance identity checkable."""

import math

import pytest
import torch

from diffedu.grids import index_grid
from diffedu.ddpm import ddpm_sample
from diffedu.guidance import ClassifierFreeGuidance, ClassifierGuidance, ExactClassifier, drop_labels
from diffedu.schedules import linear_schedule
from diffedu.toy import ExactModel, GaussianMixture

SCH = linear_schedule()  # DDPM's chain, N = 1000


def triangle() -> GaussianMixture:
    """3 components in 2-D, unequal weights and shapes, separated enough that each sample has a clear owner."""
    means = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    covs = torch.stack([torch.tensor([[0.3, 0.1], [0.1, 0.2]]), 0.25 * torch.eye(2), 0.16 * torch.eye(2)])
    return GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2]))


def owner(mix: GaussianMixture, x0: torch.Tensor) -> torch.Tensor:
    """The most responsible component at t = 0, argmax_k p(k | x0), shape (B,)."""
    return mix.responsibilities(x0.double(), 1.0, 0.0).argmax(dim=1)


# --- (a), (b): the identities at fixed (x, t) ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["eps", "score", "x0", "v"])
def test_classifier_guidance_at_scale_one_is_the_conditional_model(kind):
    """score(x_t) + grad log p(y | x_t) = grad log p(x_t | y): the guided exact model is ExactModel(cond=y)."""
    mix = triangle()
    g = torch.Generator().manual_seed(0)
    x = 2.0 * torch.randn(64, 2, generator=g, dtype=torch.float64)  # (B, 2)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.98 + 0.01  # (B,) one time per row
    y = torch.randint(0, 3, (64,), generator=g)
    uncond = ExactModel(mix, SCH, kind)
    guided = ClassifierGuidance(uncond, ExactClassifier(mix, SCH), 1.0, SCH)
    assert guided.prediction == kind
    with torch.no_grad():  # as inside a sampler: the wrapper enables grad itself
        out = guided(x, t, y)
    expected = uncond(x, t, y)  # the exact conditional model
    assert not out.requires_grad
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-8)
    # and it is not the unconditional model (the test can fail)
    assert (out - uncond(x, t)).abs().max() > 1e-2


def test_exact_classifier_is_the_log_responsibility():
    mix, x = triangle(), torch.randn(32, 2, dtype=torch.float64)
    t = torch.full((32,), 0.3, dtype=torch.float64)
    logits = ExactClassifier(mix, SCH)(x, t)  # (B, K)
    r = mix.responsibilities(x, SCH.alpha(t), SCH.sigma(t))
    torch.testing.assert_close(logits.exp(), r, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["eps", "x0"])
def test_cfg_at_zero_and_one_is_the_unconditional_and_the_conditional_model(kind):
    mix = triangle()
    g = torch.Generator().manual_seed(1)
    x = 2.0 * torch.randn(50, 2, generator=g, dtype=torch.float64)
    t = torch.rand(50, generator=g, dtype=torch.float64) * 0.98 + 0.01
    y = torch.randint(0, 3, (50,), generator=g)
    model = ExactModel(mix, SCH, kind)  # cond = K = 3 is the null label: the unconditional model
    # CFG calls the model once on the 2B rows [x, x] with labels [y, null]; compare with those very rows (a batch
    # of another size may round differently on another CPU: vectorised kernels split it differently)
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, 3)]))
    cond_out, uncond_out = both[:50], both[50:]
    torch.testing.assert_close(cond_out, model(x, t, y), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(uncond_out, model(x, t), rtol=1e-12, atol=1e-12)
    # u + 0 (c - u) is u bit for bit; u + 1 (c - u) is c up to one rounding of the subtraction
    assert torch.equal(ClassifierFreeGuidance(model, 0.0, null_label=3)(x, t, y), uncond_out)
    torch.testing.assert_close(ClassifierFreeGuidance(model, 1.0, null_label=3)(x, t, y), cond_out,
                               rtol=1e-15, atol=1e-15)
    assert (cond_out - uncond_out).abs().max() > 1e-2  # the two models differ: the checks can fail
    s = 2.5  # in between and beyond: the linear formula, eps_u + s (eps_c - eps_u)
    torch.testing.assert_close(ClassifierFreeGuidance(model, s, null_label=3)(x, t, y),
                               uncond_out + s * (cond_out - uncond_out), rtol=0, atol=1e-12)


def test_cfg_and_classifier_guidance_agree_for_exact_models():
    """With exact models both guidances are score + s grad log p(y | x_t), for every s."""
    mix = triangle()
    x, t = torch.randn(40, 2, dtype=torch.float64), torch.full((40,), 0.4, dtype=torch.float64)
    y = torch.arange(40) % 3
    model = ExactModel(mix, SCH, "eps")
    for s in (0.5, 3.0):
        cfg = ClassifierFreeGuidance(model, s, null_label=3)(x, t, y)
        cg = ClassifierGuidance(model, ExactClassifier(mix, SCH), s, SCH)(x, t, y)
        torch.testing.assert_close(cfg, cg, rtol=0, atol=1e-8)


# --- (c) guided sampling lands on the requested component -----------------------------------------------------------

@pytest.mark.parametrize("guidance", ["cfg", "classifier"])
def test_guided_sampling_lands_on_the_requested_component(guidance):
    mix, n = triangle(), 300
    model = ExactModel(mix, SCH, "eps")
    guided = (ClassifierFreeGuidance(model, 1.0, null_label=3) if guidance == "cfg"
              else ClassifierGuidance(model, ExactClassifier(mix, SCH), 1.0, SCH))
    g = torch.Generator().manual_seed(2)
    for k in range(3):
        y = torch.full((n,), k)
        x0 = ddpm_sample(guided, torch.randn(n, 2, generator=g, dtype=torch.float64), SCH, index_grid(SCH, 50), cond=y,
                         generator=g, progress=False)
        frac = (owner(mix, x0) == k).double().mean().item()
        # the same fraction for exact samples of component k (Monte Carlo, 20 000 draws): the target
        ref = (owner(mix, mix.sample(20_000, g, component=torch.full((20_000,), k))[0]) == k).double().mean().item()
        print(f"{guidance} s=1 class {k}: fraction owned by the requested component {frac:.4f} "
              f"(exact samples of component {k}: {ref:.4f}; prior weight {mix.weights[k].item():.2f})")
        assert frac >= 0.97
        assert abs(frac - ref) < 4 * math.sqrt(max(ref * (1 - ref), 1e-3) / n)


# --- (d) scale > 1 sharpens ------------------------------------------------------------------------------------------

def tilted_mass(mix: GaussianMixture, y: int, s: float) -> float:
    """Mass of {argmax_k p(k | x) = y} under p(x) p(y | x)^s / Z, by quadrature on a fine 1-D grid."""
    x = torch.linspace(-8, 8, 160_001, dtype=torch.float64)[:, None]
    logp = mix.log_prob(x)  # (G,)
    r = mix.responsibilities(x, 1.0, 0.0)  # (G, K)
    logw = logp + s * torch.log(r[:, y])
    w = torch.softmax(logw, dim=0)  # normalised weights on the uniform grid
    return float(w[r.argmax(1) == y].sum())


def test_larger_scale_sharpens_towards_the_requested_class():
    """Classifier guidance at s targets p(x) p(y | x)^s: the mass on class y grows with s, from the prior mass
    of its region at s = 0, through the conditional mass at s = 1 (both exact), to near 1."""
    mix = GaussianMixture(torch.tensor([[-1.0], [1.0]]), 0.8, torch.tensor([0.75, 0.25]))
    y, n = 1, 2000
    model, clf = ExactModel(mix, SCH, "eps"), ExactClassifier(mix, SCH)
    fracs = []
    for s in (0.0, 1.0, 2.0, 4.0):
        g = torch.Generator().manual_seed(3)
        x0 = ddpm_sample(ClassifierGuidance(model, clf, s, SCH), torch.randn(n, 1, generator=g, dtype=torch.float64),
                         SCH, index_grid(SCH, 50), cond=torch.full((n,), y), generator=g, progress=False)
        frac = (owner(mix, x0) == y).double().mean().item()
        exact = tilted_mass(mix, y, s)
        fracs.append(frac)
        print(f"1-D s={s}: sampled fraction {frac:.4f}, tilted p(x) p(y|x)^s mass {exact:.4f}")
        if s in (0.0, 1.0):  # exactly the unconditional / conditional model: binomial tolerance
            assert abs(frac - exact) < 4 * math.sqrt(exact * (1 - exact) / n) + 0.01
    assert all(a < b for a, b in zip(fracs, fracs[1:])), fracs


# --- (e) condition dropout -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_drop_labels_drops_at_rate_p_and_keeps_the_rest(p):
    n, null = 20_000, 10
    y = torch.arange(n) % 10
    out = drop_labels(y, p, null, generator=torch.Generator().manual_seed(4))
    dropped = out == null
    assert abs(dropped.double().mean().item() - p) <= 5 * math.sqrt(p * (1 - p) / n)
    assert torch.equal(out[~dropped], y[~dropped])
    assert out.shape == y.shape and out.dtype == y.dtype


# --- (f) bad input -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [float("nan"), -0.5, float("inf"), "big"])
def test_bad_scales_are_rejected(scale):
    mix = triangle()
    model = ExactModel(mix, SCH)
    message = r"scale must be a real number" if isinstance(scale, str) else r"scale must lie in \[0\.0, inf\)"
    with pytest.raises(ValueError, match=message):
        ClassifierFreeGuidance(model, scale, null_label=3)
    with pytest.raises(ValueError, match=message):
        ClassifierGuidance(model, ExactClassifier(mix, SCH), scale, SCH)


def test_bad_class_ids_and_missing_cond_are_rejected():
    mix = triangle()
    model = ExactModel(mix, SCH)
    x, t = torch.randn(4, 2, dtype=torch.float64), torch.full((4,), 0.5, dtype=torch.float64)
    cfg = ClassifierFreeGuidance(model, 2.0, null_label=3)
    cg = ClassifierGuidance(model, ExactClassifier(mix, SCH), 2.0, SCH)
    for wrapper, high in ((cfg, 3), (cg, 2)):
        with pytest.raises(ValueError, match=rf"cond .*\[0, {high}\]"):
            wrapper.check_inputs(x, t, torch.tensor([0, 1, high + 1, 0]))
        with pytest.raises(ValueError, match=rf"cond .*\[0, {high}\]"):
            wrapper.check_inputs(x, t, torch.tensor([0, -1, 0, 0]))
        with pytest.raises(ValueError, match=r"cond must be .*class ids.*got None"):
            wrapper.check_inputs(x, t, None)
        with pytest.raises(ValueError, match=r"cond must be an integer tensor of shape \(4,\)"):
            wrapper.check_inputs(x, t, torch.tensor([0.0, 1.0, 2.0, 0.0]))
    cfg(x, t, torch.tensor([0, 1, 2, 3]))  # the null label itself is a valid id for CFG
    with pytest.raises(ValueError, match="p_uncond must lie in"):
        drop_labels(torch.zeros(3, dtype=torch.long), 1.5, 3)
    with pytest.raises(ValueError, match="p_uncond must lie in"):
        drop_labels(torch.zeros(3, dtype=torch.long), float("nan"), 3)
    with pytest.raises(ValueError, match="classifier must return logits"):
        ClassifierGuidance(model, lambda x, t: x.sum(1), 1.0, SCH)(x, t, torch.zeros(4, dtype=torch.long))
