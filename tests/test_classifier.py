"""Chapter 10: the noise-aware classifier, its loss, and classifier guidance measured against closed forms.

The exact Gaussian mixture gives every reference: its exact noisy classifier is Bayes-optimal (no classifier has a
lower expected cross-entropy), guided sampling at s = 1 must reproduce the conditional model's class masses, and
for s > 1 guidance with the *noisy* classifier is measurably not the tilted target p(x) p(y | x)^s.
"""

import math

import pytest
import torch

from diffedu.grids import index_grid
from diffedu.classifier_training import noisy_accuracy, noisy_classifier_loss, sample_times
from diffedu.ddim import ddim_sample
from diffedu.ddpm import ddpm_sample
from diffedu.guidance import ClassifierGuidance, ExactClassifier
from diffedu.metrics import energy_distance
from diffedu.nets import NETS, NoisyClassifier, build_net
from diffedu.schedules import VPCosine, linear_schedule
from diffedu.toy import ExactModel, GaussianMixture

SCH = linear_schedule()  # DDPM's chain, N = 1000, the one ddpm_digits and classifier_digits use


def three_blobs() -> GaussianMixture:
    """3 overlapping components in 2-D with unequal weights and shapes (chapter 10's running example)."""
    means = torch.tensor([[-1.5, 0.0], [1.5, 0.0], [0.0, 2.0]])
    covs = torch.stack([torch.tensor([[1.0, 0.3], [0.3, 0.6]]), torch.tensor([[0.5, -0.2], [-0.2, 0.8]]),
                        0.4 * torch.eye(2)])
    return GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2]))


def owner(mix: GaussianMixture, x0: torch.Tensor) -> torch.Tensor:
    """argmax_k p(k | x0), shape (B,)."""
    return mix.responsibilities(x0.double(), 1.0, 0.0).argmax(dim=1)


# --- the network --------------------------------------------------------------------------------------------------

def test_noisy_classifier_shapes_config_rebuild_and_uniform_start():
    net = NoisyClassifier(num_classes=10, base_channels=16, channel_mults=(1, 2))
    x, t = torch.randn(5, 1, 8, 8), torch.rand(5)
    logits = net(x, t)
    assert logits.shape == (5, 10)
    # the head starts at zero: the untrained classifier says 1/C for every class
    assert torch.equal(logits, torch.zeros(5, 10))
    assert NETS["NoisyClassifier"] is NoisyClassifier
    torch.manual_seed(0)
    for p in net.parameters():  # random weights everywhere, so the rebuilt copy can differ if loading is broken
        p.data.normal_(0, 0.1)
    rebuilt = build_net(net.config)
    assert rebuilt.config == net.config
    rebuilt.load_state_dict(net.state_dict())
    torch.testing.assert_close(rebuilt(x, t), net(x, t))
    assert net(x, t).std() > 0
    # a scalar time is used for the whole batch, and the time matters
    torch.testing.assert_close(net(x, 0.3), net(x, torch.full((5,), 0.3)))
    assert (net(x, 0.1) - net(x, 0.9)).abs().max() > 1e-4
    # three levels on 16x16, no attention, two classes
    small = NoisyClassifier(num_classes=2, in_channels=3, base_channels=8, channel_mults=(1, 1, 2),
                            attention_at_lowest=False)
    assert small(torch.randn(2, 3, 16, 16), 0.5).shape == (2, 2)


def test_noisy_classifier_gradient_reaches_the_input():
    net = NoisyClassifier(base_channels=8, num_heads=2)
    torch.manual_seed(1)
    for p in net.parameters():
        p.data.normal_(0, 0.1)
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    torch.log_softmax(net(x, 0.2), dim=1)[:, 4].sum().backward()
    assert x.grad.shape == x.shape and x.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_classes=1), "num_classes"),
    (dict(base_channels=7), "base_channels must be even"),
    (dict(base_channels=12, groups=8), "divisible by groups"),
    (dict(channel_mults=()), "channel_mults"),
    (dict(channel_mults=(1, 0)), "channel_mults"),
    (dict(base_channels=16, channel_mults=(1, 2), num_heads=3), "num_heads"),
    (dict(dropout=1.0), "dropout"),
    (dict(attention_at_lowest=1), "attention_at_lowest"),
])
def test_noisy_classifier_rejects_bad_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoisyClassifier(**kwargs)


def test_noisy_classifier_rejects_bad_input():
    net = NoisyClassifier(base_channels=8)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="x must be finite|x .*NaN|x contains"):
        net.check_inputs(torch.full((2, 1, 8, 8), float("nan")), 0.5)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, H, W\)"):
        net.check_inputs(torch.randn(2, 3, 8, 8), 0.5)
    with pytest.raises(ValueError, match="divisible by 2"):
        net.check_inputs(torch.randn(2, 1, 7, 7), 0.5)
    with pytest.raises(ValueError, match="floating-point"):
        net.check_inputs(torch.zeros(2, 1, 8, 8, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match=r"t .*\[0(\.0)?, 1(\.0)?\]"):
        net.check_inputs(x, 1.5)
    with pytest.raises(ValueError, match="integer step indices"):
        net.check_inputs(x, torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="build_net|config"):
        build_net({"name": "NoisyClassifier", "num_clases": 3})


# --- the loss -----------------------------------------------------------------------------------------------------

def linear_classifier(W: torch.Tensor, c: torch.Tensor):
    """logits = x W + t c: a hand-checkable noisy classifier of 2-D points, (B, 2) -> (B, C)."""
    return lambda x, t: x @ W + t[:, None] * c


def test_loss_is_the_cross_entropy_on_noised_data_by_hand():
    """Redraw the loss's i ~ U{1..N} and eps from the same seed and compute -log softmax by hand (float64)."""
    g0 = torch.Generator().manual_seed(0)
    x0, y = torch.randn(64, 2, generator=g0, dtype=torch.float64), torch.randint(0, 3, (64,), generator=g0)
    W, c = torch.randn(2, 3, generator=g0, dtype=torch.float64), torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    clf = linear_classifier(W, c)
    loss = noisy_classifier_loss(clf, x0, y, SCH, generator=torch.Generator().manual_seed(7))

    g = torch.Generator().manual_seed(7)
    i = torch.randint(1, SCH.N + 1, (64,), generator=g)  # as ddpm_loss draws it
    eps = torch.randn(64, 2, generator=g, dtype=torch.float64)
    ab = SCH.alpha_bars[i][:, None]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    t = i.double() / SCH.N
    logits = x_t @ W + t[:, None] * c
    by_hand = (-(logits[torch.arange(64), y] - logits.exp().sum(1).log())).mean()
    assert abs(loss.item() - by_hand.item()) < 1e-12
    # and another seed gives another value: the noise really is drawn
    assert abs(noisy_classifier_loss(clf, x0, y, SCH, generator=torch.Generator().manual_seed(8)).item()
               - by_hand.item()) > 1e-6


def test_loss_on_a_continuous_schedule_draws_uniform_times():
    sch = VPCosine()
    t = sample_times(sch, 20_000, torch.Generator().manual_seed(0))
    assert t.dtype == torch.float64 and 0 <= t.min() and t.max() <= 1
    assert abs(t.mean().item() - 0.5) < 0.01 and abs(t.var().item() - 1 / 12) < 0.003
    g0 = torch.Generator().manual_seed(1)
    x0, y = torch.randn(8, 2, generator=g0, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g0)
    W, c = torch.randn(2, 3, generator=g0, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    loss = noisy_classifier_loss(linear_classifier(W, c), x0, y, sch, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    t = torch.rand(8, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 2, generator=g, dtype=torch.float64)
    x_t = sch.alpha(t)[:, None] * x0 + sch.sigma(t)[:, None] * eps
    by_hand = torch.nn.functional.cross_entropy(x_t @ W, y)
    assert abs(loss.item() - by_hand.item()) < 1e-12


def test_the_exact_noisy_classifier_minimises_the_loss():
    """p(y | x_t) itself is Bayes-optimal: its expected cross-entropy is below any other classifier's, e.g. the
    prior (log-weights, the best classifier that ignores x) and a sharpened or a blurred copy of itself."""
    mix = three_blobs()
    x0, y = mix.sample(20_000, torch.Generator().manual_seed(0))
    exact = ExactClassifier(mix, SCH)
    prior = lambda x, t: mix.weights.log().expand(x.shape[0], -1)
    sharp = lambda x, t: 2.0 * exact(x, t)
    blurred = lambda x, t: 0.5 * exact(x, t)
    losses = {name: noisy_classifier_loss(c, x0, y, SCH, generator=torch.Generator().manual_seed(1)).item()
              for name, c in (("exact", exact), ("prior", prior), ("sharp", sharp), ("blurred", blurred))}
    entropy = -(mix.weights * mix.weights.log()).sum().item()
    print({k: round(v, 4) for k, v in losses.items()}, "prior entropy", round(entropy, 4))
    assert abs(losses["prior"] - entropy) < 0.02  # the prior's loss is the label entropy H(y)
    assert losses["exact"] < min(losses["prior"], losses["sharp"], losses["blurred"]) - 0.02


def test_loss_and_accuracy_reject_bad_labels_and_times():
    x0 = torch.randn(4, 2, dtype=torch.float64)
    clf = linear_classifier(torch.randn(2, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"y \(class ids\) must lie in \[0, 2\]"):
        noisy_classifier_loss(clf, x0, torch.tensor([0, 1, 3, 0]), SCH)
    with pytest.raises(ValueError, match=r"y \(class ids\) must be >= 0"):
        noisy_classifier_loss(clf, x0, torch.tensor([0, -1, 2, 0]), SCH)
    with pytest.raises(ValueError, match=r"y must be an integer tensor of class ids of shape \(4,\)"):
        noisy_classifier_loss(clf, x0, torch.tensor([0.0, 1.0, 2.0, 0.0]), SCH)
    with pytest.raises(ValueError, match=r"y must be an integer tensor"):
        noisy_classifier_loss(clf, x0, torch.tensor([0, 1]), SCH)
    with pytest.raises(ValueError, match="x0"):
        noisy_classifier_loss(clf, torch.full((4, 2), float("nan"), dtype=torch.float64),
                              torch.zeros(4, dtype=torch.long), SCH)
    with pytest.raises(ValueError, match="classifier must return logits"):
        noisy_classifier_loss(lambda x, t: x.sum(1), x0, torch.zeros(4, dtype=torch.long), SCH)
    with pytest.raises(ValueError, match="schedule must be a NoiseSchedule"):
        noisy_classifier_loss(clf, x0, torch.zeros(4, dtype=torch.long), "linear")
    y = torch.zeros(4, dtype=torch.long)
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="t "):
            noisy_accuracy(clf, x0, y, SCH, bad)


def test_noisy_accuracy_of_the_exact_classifier_is_the_bayes_accuracy():
    """At t = 0 the exact classifier's accuracy is E[max_k p(k | x0)] (Bayes), at t = 1 that of the prior."""
    mix = three_blobs()
    x0, y = mix.sample(20_000, torch.Generator().manual_seed(3))
    exact = ExactClassifier(mix, SCH)
    acc0 = noisy_accuracy(exact, x0, y, SCH, 0.0)
    bayes = mix.responsibilities(x0, 1.0, 0.0).max(1).values.mean().item()
    acc1 = noisy_accuracy(exact, x0, y, SCH, 1.0, generator=torch.Generator().manual_seed(4))
    print(f"exact classifier accuracy: t=0 {acc0:.4f} (Bayes {bayes:.4f}), t=1 {acc1:.4f} (max weight 0.5)")
    assert abs(acc0 - bayes) < 4 * math.sqrt(bayes * (1 - bayes) / 20_000)
    assert abs(acc1 - 0.5) < 4 * math.sqrt(0.25 / 20_000)  # at t = 1 x_t is (nearly) pure noise: say class 0


# --- guidance on the exact mixture --------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_guided_sampling_with_the_exact_mixture_lands_on_the_requested_component(sampler):
    """At s = 1 the fraction of samples owned by component k is that of exact samples of component k (closed form
    model, Monte Carlo reference); at s = 4 guidance sharpens it to (almost) all of them."""
    mix, n = three_blobs(), 1000
    model, clf = ExactModel(mix, SCH, "eps"), ExactClassifier(mix, SCH)
    for k in range(3):
        g = torch.Generator().manual_seed(10 + k)
        ref = (owner(mix, mix.sample(40_000, g, component=torch.full((40_000,), k))[0]) == k).double().mean().item()
        fracs = {}
        for s in (1.0, 4.0):
            g = torch.Generator().manual_seed(k)
            x_T, y = torch.randn(n, 2, generator=g, dtype=torch.float64), torch.full((n,), k)
            guided = ClassifierGuidance(model, clf, s, SCH)
            x0 = (ddim_sample(guided, x_T, SCH, index_grid(SCH, 50), cond=y, progress=False) if sampler == "ddim" else
                  ddpm_sample(guided, x_T, SCH, index_grid(SCH, 50), cond=y, generator=g, progress=False))
            fracs[s] = (owner(mix, x0) == k).double().mean().item()
        print(f"{sampler} class {k}: owned fraction s=1 {fracs[1.0]:.3f} (exact conditional {ref:.3f}), "
              f"s=4 {fracs[4.0]:.3f}; prior weight {mix.weights[k].item():.2f}")
        # 50 DDIM steps add a small discretisation bias (measured: up to +0.017), hence the 0.02
        assert abs(fracs[1.0] - ref) < 4 * math.sqrt(ref * (1 - ref) / n) + (0.02 if sampler == "ddim" else 0.0)
        assert fracs[4.0] >= 0.99 > ref + 0.05


def tilted_grid_samples(mix: GaussianMixture, y: int, s: float, n: int, g: torch.Generator) -> torch.Tensor:
    """n samples of p(x) p(y | x)^s / Z in 2-D: draw cells of a fine grid (0.015 wide) by their tilted mass."""
    xs = torch.linspace(-6, 6, 801, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)  # (G, 2)
    log_w = mix.log_prob(pts) + s * mix.responsibilities(pts, 1.0, 0.0)[:, y].log()
    idx = torch.multinomial(torch.softmax(log_w, 0), n, replacement=True, generator=g)
    h = float(xs[1] - xs[0])
    return pts[idx] + h * (torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5)


def test_noisy_guidance_at_large_scale_is_not_the_tilted_density():
    """Noising and tilting do not commute: at s = 1 guided samples match p(x) p(y | x) = p(x, y) (energy distance
    at the level of two exact samples), at s = 10 they are far from p(x) p(y | x)^s (pushed past its mode)."""
    mix, n, y = three_blobs(), 1500, 1
    model, clf = ExactModel(mix, SCH, "eps"), ExactClassifier(mix, SCH)
    out = {}
    for s in (1.0, 10.0):
        g = torch.Generator().manual_seed(5)
        x0 = ddpm_sample(ClassifierGuidance(model, clf, s, SCH), torch.randn(n, 2, generator=g, dtype=torch.float64),
                         SCH, index_grid(SCH, 100), cond=torch.full((n,), y), generator=g, progress=False)
        a, b = tilted_grid_samples(mix, y, s, n, g), tilted_grid_samples(mix, y, s, n, g)
        out[s] = (energy_distance(x0, a), energy_distance(a, b))
        print(f"s={s}: energy distance guided-vs-tilted {out[s][0]:.4f}, tilted-vs-tilted {out[s][1]:.4f}; "
              f"means {x0.mean(0).tolist()} vs {a.mean(0).tolist()}")
    assert out[1.0][0] < 3 * out[1.0][1] + 0.005
    assert out[10.0][0] > 20 * out[10.0][1] and out[10.0][0] > 0.1


def test_guidance_rejects_unknown_class_ids_and_bad_scales_with_the_noisy_classifier():
    model = ExactModel(three_blobs(), SCH)
    clf = NoisyClassifier(num_classes=3, base_channels=8)
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError, match="scale"):
            ClassifierGuidance(model, clf, bad, SCH)
    images = ClassifierGuidance(lambda x, t, cond=None: torch.zeros_like(x), clf, 2.0, SCH)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"cond .*\[0, 2\]"):
        images.check_inputs(x, torch.full((2,), 0.5), torch.tensor([0, 3]))
    assert images(x, torch.full((2,), 0.5), torch.tensor([0, 2])).shape == x.shape


# --- the shipped digits classifier and guidance of the shipped digits DDPM ----------------------------------------

def test_shipped_classifier_is_accurate_on_clean_digits_and_at_chance_on_pure_noise():
    """Measured when shipped (seed 0): 0.989 at t = 0, 0.775 at t = 0.25, 0.081 at t = 1 on the 360 held-out
    digits. At t = 1 the linear chain keeps sqrt(alpha_bar_N) = 0.006 of the image, so nothing can beat chance."""
    from diffedu.data import load_digits
    from diffedu.pretrained import load_pretrained, read_manifest

    clf = load_pretrained("classifier_digits")
    assert clf.config["name"] == "NoisyClassifier"
    test = load_digits(split="test")
    acc = {t: noisy_accuracy(clf, test.x, test.y, SCH, t, generator=torch.Generator().manual_seed(0))
           for t in (0.0, 0.25, 1.0)}
    print("shipped classifier accuracy by t:", acc)
    assert acc[0.0] >= 0.95
    assert acc[0.0] > acc[0.25] > acc[1.0]
    assert acc[1.0] < 0.1 + 4 * math.sqrt(0.1 * 0.9 / len(test.y))  # chance is 0.1 (classes are balanced)
    ev = read_manifest()["classifier_digits"]["train_config"]["eval"]
    assert ev["test_accuracy_t0"] == pytest.approx(acc[0.0], abs=1e-9)  # the recorded metric is reproducible


def test_guiding_the_unconditional_digits_ddpm_with_the_shipped_classifier_follows_the_label():
    """s = 0 ignores the label (reader accuracy about 0.1); s = 4 makes the digits reader (an independent logistic
    regression) read the requested digit (measured 1.0 with 5 per class and 20 ancestral steps)."""
    from diffedu.metrics import digits_classifier
    from diffedu.pretrained import load_pretrained

    unet, clf, reader = load_pretrained("ddpm_digits"), load_pretrained("classifier_digits"), digits_classifier()
    y = torch.arange(10).repeat_interleave(5)  # (50,)
    acc = {}
    for s in (0.0, 4.0):
        g = torch.Generator().manual_seed(0)
        x = ddpm_sample(ClassifierGuidance(unet, clf, s, SCH), torch.randn(len(y), 1, 8, 8, generator=g), SCH,
                        index_grid(SCH, 20), cond=y, clip_x0=True, generator=g, progress=False)
        acc[s] = reader.accuracy(x, y)
    print("reader accuracy of guided digits:", acc)
    assert acc[0.0] < 0.3
    assert acc[4.0] >= 0.85


@pytest.mark.slow
def test_classifier_recipe_runs_end_to_end_into_a_temporary_folder(tmp_path):
    from diffedu.recipes import DigitsClassifierConfig, classifier_digits

    entry = classifier_digits(DigitsClassifierConfig(steps=3), out=str(tmp_path), device="cpu")
    assert entry["command"] == "python -m diffedu.recipes classifier_digits --steps 3"
    assert entry["config"]["name"] == "NoisyClassifier"
    assert set(entry["train_config"]["eval"]) == {f"test_accuracy_t{t:g}" for t in (0, 0.25, 0.5, 0.75, 1)}
    assert entry["size_bytes"] < 1_000_000
