"""Writes chapters/11_cfg.ipynb (unexecuted); run it from the repository root, then execute the notebook:

    .venv/bin/python scripts/build_ch11.py
    OMP_NUM_THREADS=1 DIFFEDU_STATIC=1 .venv/bin/jupyter nbconvert --to notebook --execute --inplace chapters/11_cfg.ipynb
    .venv/bin/python -m diffedu.exercises --tag chapters/11_cfg.ipynb
"""
from chapter_kit import Chapter

ch = Chapter()
md, code = ch.md, ch.code

md(r"""
# 11 · Classifier-free guidance

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/diffedu/diffedu/blob/main/chapters/11_cfg.ipynb)

Chapter 10 steered a diffusion model with the gradient of a separate classifier, one that had to be trained on
*noisy* images. {cite:t}`ho2022classifierfree` showed that the classifier is not needed. Train one network
that is sometimes told the label and sometimes not. The difference between its two predictions then acts as the
classifier's gradient, and scaling that difference up trades diversity for fidelity. This *classifier-free
guidance* (CFG) is in almost every conditional diffusion model today, from class-conditional ImageNet models to
text-to-image systems.

**You will learn to**

- train one network as both a conditional and an unconditional model with *condition dropout* (a null label);
- write the guided prediction $\epsilon_u + s\,(\epsilon_c - \epsilon_u)$, and convert between the two scale
  conventions of the literature ($s$ and $w$, with $s = 1 + w$);
- see the *implicit classifier* $\epsilon_c - \epsilon_u \propto -\nabla \log p_t(y \mid x_t)$, checked on an exact
  model;
- find out on an exact Gaussian mixture what CFG does to a distribution, and that for $s > 1$ it does **not**
  sample the "sharpened" $p(x)\, p(y \mid x)^s$ it is usually said to;
- measure the fidelity/diversity trade-off of a trained digits model as $s$ sweeps from 0 to 8, with a classifier's
  accuracy and a Fréchet distance in that classifier's feature space, and choose a default scale from it.
""")

ch.setup(r"""
import math
import matplotlib.pyplot as plt
import numpy as np
import torch

from diffedu import guidance, metrics, recipes, viz
from diffedu.data import load_digits
from diffedu.ddim import ddim_sample
from diffedu.ddpm import ddpm_sample
from diffedu.guidance import ClassifierFreeGuidance, ExactClassifier, drop_labels
from diffedu.pretrained import load_pretrained, pretrained_info
from diffedu.schedules import linear_schedule
from diffedu.toy import ExactModel, GaussianMixture
from diffedu.utils import setup, show_source
from diffedu.widgets import timestep_slider
""")

md(r"""
## 11.1 One network, two models: condition dropout

By Bayes' rule, $p_t(y \mid x_t) = p_t(x_t \mid y)\, p(y) / p_t(x_t)$, so the classifier's gradient is a
difference of two scores:

$$
\nabla_{x_t} \log p_t(y \mid x_t) = \nabla_{x_t} \log p_t(x_t \mid y) - \nabla_{x_t} \log p_t(x_t).
$$

Both scores are what a diffusion model learns: a conditional model $\epsilon_\theta(x_t, t, y)$ and an
unconditional one $\epsilon_\theta(x_t, t, \varnothing)$, with $\epsilon = -\sigma_t \times$ score
(chapter 1). Ho & Salimans train *one* network for both. The label $y$ gets an extra value, the **null label**
$\varnothing$, and during training each label is replaced by $\varnothing$ with probability $p_\text{uncond}$
(their Algorithm 1; $p_\text{uncond} = 0.1$ or $0.2$ worked best in their experiments). The network then sees the pairs
$(x_t, \varnothing)$ for a random fraction of all images, which is exactly the unconditional training problem.
The library's condition dropout takes a few lines:
""")

code(r"""
show_source(drop_labels)
""")

code(r"""
y = torch.arange(20) % 10
print("labels     ", y.tolist())
print("after drop ", drop_labels(y, 0.15, null_label=10, generator=torch.Generator().manual_seed(0)).tolist())
many = drop_labels(torch.arange(100_000) % 10, 0.15, null_label=10, generator=torch.Generator().manual_seed(1))
print(f"share replaced by the null label 10 among 100 000 labels: {(many == 10).float().mean().item():.4f} "
      f"(p_uncond = 0.15)")
""")

md(r"""
The shipped model `cfg_digits` is chapter 1's digits UNet with a class embedding for the ten digits plus the
null label (id 10), trained with $p_\text{uncond} = 0.15$. This is the recipe that made it: the same loss as
chapter 1, with the labels passed through `drop_labels` first. Retraining takes about 27 minutes on one CPU
thread (`python -m diffedu.recipes cfg_digits`), so the chapter loads the checkpoint.
""")

code(r"""
show_source(recipes.cfg_digits)
""")

code(r"""
schedule = linear_schedule()  # the chain cfg_digits was trained on: N = 1000, beta from 1e-4 to 0.02
model = load_pretrained("cfg_digits", device=device)  # the sha256 is checked on load
info = pretrained_info("cfg_digits")
train_cfg = info["train_config"]
print(f"cfg_digits: {train_cfg['steps']} steps, batch {train_cfg['batch_size']}, p_uncond {train_cfg['p_uncond']}, "
      f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, trained in "
      f"{info['wall_time_s'] / 60:.0f} min on {info['machine']['device']}")
print("the recipe's own check (logistic digit reader, 200 ancestral samples with 100 steps): accuracy "
      + ", ".join(f"{train_cfg['eval'][f'accuracy_s{s}']:.1%} at s = {s}" for s in (0, 1, 2)))
""")

md(r"""
## 11.2 The guided prediction and its two conventions

With both predictions in hand, CFG moves the unconditional prediction towards the conditional one and
beyond it by a factor $s$ (GLIDE's form {cite:p}`nichol2022glide`):

$$
\tilde\epsilon_s(x_t, t, y) = \epsilon_\theta(x_t, t, \varnothing)
  + s\,\big(\epsilon_\theta(x_t, t, y) - \epsilon_\theta(x_t, t, \varnothing)\big).
$$

$s = 0$ is the unconditional model, $s = 1$ the conditional one, and $s > 1$ extrapolates past it. In scores,
with $\epsilon = -\sigma_t\,\nabla \log p_t$ and the Bayes identity above,

$$
\nabla \log p_t(x_t) + s\,\big(\nabla \log p_t(x_t \mid y) - \nabla \log p_t(x_t)\big)
 = \nabla \log p_t(x_t) + s\, \nabla \log p_t(y \mid x_t),
$$

which is classifier guidance (chapter 10, {cite:p}`dhariwal2021diffusion`) with scale $s$, for the
**implicit classifier** $p_t(y \mid x_t) \propto p_t(x_t \mid y) / p_t(x_t)$. In $\epsilon$ units,
$\epsilon_c - \epsilon_u = -\sigma_t\, \nabla_{x_t} \log p_t(y \mid x_t)$. No classifier is trained: there is no
extra network to fit to noisy data, and no classifier whose gradients the sampler could exploit like an
adversarial attack, which was Ho & Salimans' worry about classifier guidance.

**Two conventions.** Papers and libraries write the same knob in two ways, and a number quoted without its
convention is ambiguous:

| source | guided prediction | plain conditional model at | relation to $s$ |
|---|---|---|---|
| {cite:t}`ho2022classifierfree` | $(1 + w)\,\epsilon_c - w\,\epsilon_u$ | $w = 0$ | $s = 1 + w$ |
| GLIDE {cite:p}`nichol2022glide`, this book | $\epsilon_u + s\,(\epsilon_c - \epsilon_u)$ | $s = 1$ | $s$ |
| Imagen {cite:p}`saharia2022photorealistic`, diffusers' `guidance_scale` | $w\,\epsilon_c + (1 - w)\,\epsilon_u$ | $w = 1$ | $s = w$ |

So Ho & Salimans' $w = 1$ is $s = 2$, and diffusers' Stable Diffusion default `guidance_scale = 7.5` is
$s = 7.5$, i.e. $w = 6.5$. The library uses $s$. Its wrapper turns any class-conditional model into a guided
model with the same `net(x, t, cond)` interface, so every sampler of the book runs it unchanged. Both
predictions come from one batched call:
""")

code(r"""
show_source(ClassifierFreeGuidance)
""")

md(r"""
**The implicit classifier, checked.** For a Gaussian mixture the exact model is available in closed form
(`ExactModel`, where the component plays the label and the id $K$ is the null label), and so is the exact noisy
classifier $p_t(k \mid x_t)$ (`ExactClassifier`, chapter 10). The difference of the two exact $\epsilon$
predictions must equal $-\sigma_t$ times the classifier's gradient at every $x_t$ and $t$:
""")

code(r"""
mix = GaussianMixture(torch.tensor([[1.5, 0.0], [-0.75, 1.3], [-0.75, -1.3]]),
                      torch.stack([torch.tensor([[0.5, 0.15], [0.15, 0.3]]), 0.4 * torch.eye(2), 0.25 * torch.eye(2)]),
                      torch.tensor([0.5, 0.3, 0.2]))  # three overlapping classes; the null label is K = 3
exact = ExactModel(mix, schedule, "eps")
g = torch.Generator().manual_seed(2)
x_t = 2 * torch.randn(500, 2, generator=g, dtype=torch.float64)
t = torch.rand(500, generator=g, dtype=torch.float64) * 0.9 + 0.05
y = torch.randint(0, 3, (500,), generator=g)
eps_c, eps_u = exact(x_t, t, y), exact(x_t, t, torch.full((500,), 3))
x_req = x_t.clone().requires_grad_(True)
log_p_y = ExactClassifier(mix, schedule)(x_req, t)[torch.arange(500), y]  # log p_t(y | x_t), (500,)
(grad,) = torch.autograd.grad(log_p_y.sum(), x_req)
sigma = schedule.sigma(t)[:, None]
print(f"max |(eps_c - eps_u) + sigma_t grad log p_t(y | x_t)| over 500 random (x_t, t, y): "
      f"{((eps_c - eps_u) + sigma * grad).abs().max().item():.1e}  (size of the terms: "
      f"{(eps_c - eps_u).abs().max().item():.1f})")
""")

md(r"""
## 11.3 What guidance does to a distribution

At $s = 0$ and $s = 1$ CFG samples the unconditional and the conditional distribution. What does it sample for
$s > 1$? The guided score at each time is the gradient of a *product of powers*:

$$
\nabla \log p_t(x_t) + s\,\big(\nabla \log p_t(x_t \mid y) - \nabla \log p_t(x_t)\big)
 = \nabla_{x_t} \log \big[p_t(x_t \mid y)^{s}\; p_t(x_t)^{1 - s}\big].
$$

As $t \to 0$ this becomes the score of

$$
\tilde p_s(x \mid y) \;\propto\; p(x \mid y)^{s}\, p(x)^{1-s} \;\propto\; p(x)\, p(y \mid x)^{s},
$$

the data distribution reweighted by the classifier's probability raised to the power $s$. That is the usual
account of CFG: it samples $p(x)\,p(y \mid x)^s$, which for $s > 1$ concentrates on points the classifier is
*sure* about. The account is not exact. Adding noise does not commute with raising densities to powers: the
noised version of $\tilde p_s$ is not $p_t(x \mid y)^s p_t(x)^{1-s}$. So at $t > 0$ the guided field is not the
score of any noised version of $\tilde p_s$, and neither the ancestral (SDE) nor the deterministic (ODE) sampler
has a reason to end at $\tilde p_s$. The exact mixture lets us look. Below, the contours are $\tilde p_s$ for
class $y = 1$ (top left) of three equal, overlapping Gaussian classes, computed on a grid; the dots are CFG samples
of the exact model (ancestral sampling, 200 steps).
""")

code(r"""
angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3], dtype=torch.float64)
mix2 = GaussianMixture(1.2 * torch.stack([angles.cos(), angles.sin()], 1), 0.5)  # three equal, overlapping classes
exact2 = ExactModel(mix2, schedule, "eps")  # null label: 3
y_show, scales_2d, n_2d = 1, (0.0, 1.0, 3.0, 8.0), 1000
u = torch.linspace(-3, 3, 201, dtype=torch.float64)
grid2 = torch.stack(torch.meshgrid(u, u, indexing="xy"), -1).reshape(-1, 2)  # (201^2, 2)
log_p = mix2.log_prob(grid2)
log_r = torch.log(mix2.responsibilities(grid2, 1.0, 0.0)[:, y_show])  # log p(y | x)

fig, axes = plt.subplots(1, 4, figsize=(7.2, 2.35), sharex=True, sharey=True)
offsets = []
for ax, s in zip(axes, scales_2d):
    gen = torch.Generator().manual_seed(3)
    x0 = ddpm_sample(ClassifierFreeGuidance(exact2, s, null_label=3),
                     torch.randn(n_2d, 2, generator=gen, dtype=torch.float64), schedule, steps=200,
                     cond=torch.full((n_2d,), y_show), generator=gen, progress=False)
    w = torch.softmax(log_p + s * log_r, 0)  # p(x) p(y|x)^s, normalised on the grid
    offsets.append((s, (w[:, None] * grid2).sum(0).norm().item(), x0.mean(0).norm().item()))
    density = w.reshape(201, 201)
    ax.scatter(*x0.T, s=1.2, alpha=0.5, color=viz.PALETTE[0], linewidths=0)
    ax.contour(u, u, density / density.max(), levels=[0.05, 0.25, 0.5, 0.75], colors="k", linewidths=0.7)
    ax.scatter(*mix2.means.T, marker="x", s=25, color=viz.PALETTE[1], zorder=3)
    ax.set(title=f"s = {s:g}", xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xlabel="$x_1$")
axes[0].set_ylabel("$x_2$")
fig.suptitle("CFG samples (dots) and the tilted target p(x) p(y=1 | x)^s (contours), exact model", fontsize=10)
plt.show()
print("distance of the mean from the centre of the three classes (class 1's own mean: 1.20):")
for s, target, sampled in offsets:
    print(f"  s = {s:g}: target {target:.2f}, CFG samples {sampled:.2f}")
""")

md(r"""
**Expected output:** at $s = 0$ dots on all three classes (CFG ignores the label); at $s = 1$ only on the
top-left one, matching its contours. At $s = 3$ and $8$ the target moves a little away from the other two classes
(its mean from 1.20 to about 1.27 and 1.31 from the centre), but the dots move much further (about 1.5 and 1.7)
and spill over the target's outer contour.

A one-dimensional mixture makes this quantitative. Two classes, $p(x \mid y) = \mathcal N(\pm 1, 0.5^2)$ with
equal weights, and $y = 1$. The target $\tilde p_s$ is computed by quadrature; CFG is run with the ancestral
sampler (DDPM, 250 steps) and the deterministic one (DDIM, 100 steps) from the same noise.
""")

code(r"""
mix1 = GaussianMixture(torch.tensor([[-1.0], [1.0]]), 0.5)
exact1 = ExactModel(mix1, schedule, "eps")
xs = torch.linspace(-2.5, 4.5, 1401, dtype=torch.float64)[:, None]
n_1d = 3000


def tilted(s):
    # p(x) p(y = 1 | x)^s normalised on the grid: a density on xs
    w = torch.softmax(mix1.log_prob(xs) + s * torch.log(mix1.responsibilities(xs, 1.0, 0.0)[:, 1]), 0)
    return w / (xs[1, 0] - xs[0, 0])


rows, hists = [], {}
for s in (1.0, 3.0, 8.0):
    gen = torch.Generator().manual_seed(4)
    x_T1 = torch.randn(n_1d, 1, generator=gen, dtype=torch.float64)
    guided = ClassifierFreeGuidance(exact1, s, null_label=2)
    cond = torch.ones(n_1d, dtype=torch.long)
    anc = ddpm_sample(guided, x_T1, schedule, steps=250, cond=cond, generator=gen, progress=False)[:, 0]
    ode = ddim_sample(guided, x_T1, schedule, 100, cond=cond, progress=False)[:, 0]
    dens = tilted(s)
    m = (dens * xs[:, 0]).sum().item() * (xs[1, 0] - xs[0, 0]).item()
    sd = math.sqrt((dens * (xs[:, 0] - m) ** 2).sum().item() * (xs[1, 0] - xs[0, 0]).item())
    rows.append((s, m, sd, anc.mean().item(), anc.std().item(), ode.mean().item(), ode.std().item()))
    hists[s] = (dens, anc, ode)

fig, axes = plt.subplots(1, 3, figsize=(7.2, 2.4), sharey=True)
for ax, (s, (dens, anc, ode)) in zip(axes, hists.items()):
    bins = np.linspace(-1.5, 4.0, 56)
    ax.hist(anc.numpy(), bins=bins, density=True, alpha=0.45, color=viz.PALETTE[0], label="CFG + DDPM")
    ax.hist(ode.numpy(), bins=bins, density=True, histtype="step", lw=1.3, color=viz.PALETTE[1], label="CFG + DDIM")
    ax.plot(xs[:, 0], dens, "k", lw=1.4, label="p(x) p(y|x)^s")
    ax.plot(xs[:, 0], mix1.log_prob(xs).exp() * 2 * mix1.responsibilities(xs, 1.0, 0.0)[:, 1], "k:", lw=1,
            label="p(x | y)")
    ax.set(title=f"s = {s:g}", xlabel="x", xlim=(-1.5, 4.0))
axes[0].set_ylabel("density")
axes[0].legend(fontsize=7, loc="upper left")
fig.suptitle("1-D exact mixture, class y = 1: CFG against the tilted target", fontsize=10)
plt.show()
print(f"{'s':>3} | {'target mean, sd':>16} | {'CFG + DDPM':>14} | {'CFG + DDIM':>14}")
for s, m, sd, am, asd, om, osd in rows:
    print(f"{s:>3g} | {m:>9.3f} {sd:6.3f} | {am:7.3f} {asd:6.3f} | {om:7.3f} {osd:6.3f}")
print(f"Monte Carlo standard error of a mean: about {0.5 / math.sqrt(n_1d):.3f}")
""")

md(r"""
**Expected output:** at $s = 1$ all three agree (mean 1, sd 0.5). At $s = 3$ the target has barely moved
(mean 1.05): multiplying by $p(y \mid x)^3$ only removes the small tail of class 1 that overlaps class 0. CFG
pushes much harder: the ancestral sampler's mean is about 1.24 and the deterministic sampler's about 1.5, with
a much narrower spread. At $s = 8$ the gap widens. Two lessons:

1. CFG with $s > 1$ is not sampling $p(x)\, p(y \mid x)^s$. The gap comes from $t > 0$: there the guided field is
   not the score of the noised target, and its extra push towards class $y$ accumulates along the path.
   {cite:t}`chidambaram2024what` analyse this for mixtures, and {cite:t}`bradley2024classifier` prove that neither
   DDPM nor DDIM with CFG samples the tilted distribution.
2. For a true score the SDE and the ODE give the same distribution (chapter 3). Here they do not, which is a
   direct sign that the guided field is not a score of one consistent family of marginals. The choice of sampler
   therefore changes what CFG produces.

This is a feature in practice: the push away from other classes is what makes guided samples "more typical".
But it also explains why high scales lose diversity and over-saturate, which the next section measures.

## 11.4 Fidelity against diversity on digits

**A classifier and its feature space.** To score samples we need a judge that was not involved in making them.
FID {cite:p}`heusel2017gans` compares a generator's samples with real images through the activations of an
Inception network, by the Fréchet distance between Gaussians fitted to the two sets of features (chapter 1's
`frechet_distance`). Our version for 8×8 digits is a small multilayer perceptron (64 → 128 → 32 → 10, ReLU),
trained on the training split in about two seconds. Its accuracy on the held-out digits measures *fidelity* (is
the sample the digit we asked for?). Its 32 last-layer activations are the feature space for the
**Fréchet distance (FD)** to the held-out digits, which penalises both wrong-looking samples and missing
variety. The features are recomputed from the fitted weights:
""")

code(r"""
show_source(metrics.DigitsFeatureClassifier.features)
""")

code(r"""
clf = metrics.digits_feature_classifier()  # trained here, seeded: about 2 s
test, train_digits = load_digits(split="test"), load_digits(split="train")
print(f"the chapter's classifier: held-out accuracy {clf.accuracy(test.x, test.y):.1%} on {len(test)} digits "
      f"(chapter 1's logistic reader: {metrics.digits_classifier().accuracy(test.x, test.y):.1%})")
per_class = 10
rng = np.random.default_rng(0)
floor = []  # FD between 100 real training digits (10 per class) and the held-out set: the best a model can do
for _ in range(20):
    pick = np.concatenate([rng.choice(np.flatnonzero(train_digits.y.numpy() == k), per_class, replace=False)
                           for k in range(10)])
    floor.append(clf.frechet_distance(train_digits.x[pick], test.x))
print(f"FD floor, {10 * per_class} real digits against the held-out set: {np.mean(floor):.2f} "
      f"(± {np.std(floor):.2f} over 20 draws)")
""")

md(r"""
**The sweep.** For each scale $s \in \{0, 0.5, 1, 1.5, 2, 3, 4, 6, 8\}$ we draw 10 samples of every digit from
the *same* starting noises, with the chapter's sampler: deterministic DDIM (chapter 4) with 20 steps, i.e.
40 network evaluations per sample with CFG's two predictions. (The full mode uses 50 samples per digit.) Four
measures:

- **accuracy**: share of samples the classifier reads as their label (fidelity);
- **FD** in the classifier's feature space against the 360 held-out digits (quality and coverage; lower is better);
- **within-class spread**: the mean distance between two samples of the same label, in feature space (diversity;
  the held-out digits set the reference);
- **overshoot**: the share of pixels the sampler leaves outside $[-1.1, 1.1]$ before clipping to the image range
  (saturation).
""")

code(r"""
ddim_steps = 20
scales = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0]
per_class = 50 if cfg.full else 10
labels = torch.arange(10).repeat_interleave(per_class)  # (10 * per_class,): 0, 0, ..., 9, 9
x_T = torch.randn(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(5)).to(device)


def within_class_spread(x, y):
    # mean pairwise distance between the features of two different samples with the same label
    f, y = torch.as_tensor(clf.features(x)), torch.as_tensor(y)
    d = [torch.pdist(f[y == k]).mean().item() for k in range(10)]
    return float(np.mean(d))


sweep, samples = {}, {}
for s in scales:
    raw = ddim_sample(ClassifierFreeGuidance(model, s, null_label=10), x_T, schedule, ddim_steps,
                      cond=labels.to(device), progress=False).cpu()
    x = raw.clamp(-1, 1)
    samples[s] = x
    sweep[s] = dict(accuracy=clf.accuracy(x, labels), fd=clf.frechet_distance(x, test.x),
                    spread=within_class_spread(x, labels), overshoot=(raw.abs() > 1.1).float().mean().item())
real_spread = within_class_spread(test.x, test.y)

print(f"{'s':>4} | {'w = s - 1':>9} | {'accuracy':>8} | {'feature FD':>10} | {'spread':>6} | {'overshoot':>9}")
for s, r in sweep.items():
    print(f"{s:>4g} | {s - 1:>9g} | {r['accuracy']:>8.1%} | {r['fd']:>10.2f} | {r['spread']:>6.2f} | "
          f"{r['overshoot']:>9.1%}")
print(f"held-out digits: within-class spread {real_spread:.2f}; FD floor {np.mean(floor):.2f}")
""")

code(r"""
acc = np.array([sweep[s]["accuracy"] for s in scales])
fd = np.array([sweep[s]["fd"] for s in scales])
fig, axes = plt.subplots(1, 3, figsize=(7.2, 2.7), gridspec_kw={"width_ratios": [1.35, 1, 1]})
ax = axes[0]
ax.plot(100 * acc, fd, "-o", ms=4, color=viz.PALETTE[0])
knee = min(s for s in scales if sweep[s]["accuracy"] >= 0.995)  # the smallest s with >= 99.5 % read correctly
k = scales.index(knee)
ax.plot(100 * acc[k], fd[k], "*", ms=11, color=viz.PALETTE[1], zorder=3, label=f"first s ≥ 99.5 %")
for s, a, f in zip(scales, acc, fd):
    right = s >= 1  # the saturated points stack at 100 %: label them on the right
    ax.annotate(f"s={s:g}", (100 * a, f), textcoords="offset points", xytext=(6, -3) if right else (0, 6),
                ha="left" if right else "center", fontsize=7)
ax.axhline(np.mean(floor), color="k", ls="--", lw=1, label="real digits")
ax.set(xlabel="accuracy of the samples (%)", ylabel="FD in feature space", title="Fidelity against FD",
       xlim=(-5, 125), xticks=[0, 25, 50, 75, 100])
ax.legend(fontsize=7, loc="upper left")
ax = axes[1]
ax.plot(scales, [sweep[s]["spread"] for s in scales], "-o", ms=4, color=viz.PALETTE[2])
ax.axhline(real_spread, color="k", ls="--", lw=1, label="real digits")
ax.set(xlabel="guidance scale s", ylabel="within-class spread", title="Diversity", ylim=(0, None))
ax.legend(fontsize=7)
ax = axes[2]
ax.plot(scales, [100 * sweep[s]["overshoot"] for s in scales], "-o", ms=4, color=viz.PALETTE[1])
ax.set(xlabel="guidance scale s", ylabel="pixels beyond ±1.1 (%)", title="Saturation")
fig.suptitle(f"cfg_digits with CFG, DDIM {ddim_steps} steps, {per_class} samples per digit", fontsize=10)
plt.show()
""")

md(r"""
**Expected output:** a curve that runs right and then up. Between $s = 0$ and $s = 1$ the accuracy climbs from
chance (about 10 %) to about 98 % and the FD falls to its minimum, close to the floor of real digits: the
conditional model is the best *distribution* match. (At $s = 0.5$ the FD is higher than at either end: the
samples are neither the unconditional distribution nor clean class-conditional digits.) Beyond $s = 1$ the accuracy
is saturated at 100 %, but the FD rises steadily, the within-class spread falls below that of real digits, and
from $s \approx 4$ the sampler overshoots the pixel range more and more. This is the trade-off of
{cite:t}`ho2022classifierfree`: guidance buys fidelity (their Inception score) with diversity (their FID).

The samples show the same. Each row is one scale, from the same ten starting noises per digit; on the left one
sample of every digit, on the right ten samples of the label 2:
""")

code(r"""
fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.6))
left = torch.cat([samples[s][::per_class] for s in scales])  # one sample per digit and scale
right = torch.cat([samples[s][labels == 2][:10] for s in scales])  # ten 2s per scale
viz.image_grid(left, nrow=10, ax=axes[0], title="One sample of each digit, by scale s")
viz.image_grid(right, nrow=10, ax=axes[1], title="Ten samples of the label 2, by scale s")
for r, s in enumerate(scales):
    axes[0].text(-1.5, 1 + 9 * r + 3.5, f"s = {s:g}", ha="right", va="center", fontsize=8)
plt.show()
""")

md(r"""
**Expected output:** at $s = 0$ the digits ignore their labels; from $s = 1$ on each column shows its digit.
With growing $s$ the ten 2s become more alike (one "prototypical" shape), and at $s = 6$ to $8$ the strokes
turn brighter, with harder edges.

**Choosing the default.** We take the smallest scale on the grid at which the classifier reads at least 99.5 % of
the sweep's samples as their label. Beyond it, more guidance only costs FD and diversity. This gives
$s = 1.5$ ($w = 0.5$ in Ho & Salimans' convention), which the rest of the book uses for this model. The test
suite checks it on fresh samples: at least 95 % must be read as their label; on 1000 samples (100 per digit,
DDIM 20 steps) the measured accuracy is 100 %.
""")

code(r"""
default_scale = 1.5
assert default_scale == knee, "the sweep moved: re-choose the default"
r = sweep[default_scale]
print(f"default scale s = {default_scale:g} (w = {default_scale - 1:g}): accuracy {r['accuracy']:.1%}, "
      f"FD {r['fd']:.2f} (s = 1: {sweep[1.0]['fd']:.2f}), within-class spread {r['spread']:.2f} "
      f"(real digits {real_spread:.2f})")
""")

md(r"""
**Explore.** In a live notebook the slider below shows the sweep's 100 samples at every scale (rows are digits
0 to 9). The rendered book shows six scales.
""")

code(r"""
def show_samples(s, ax):
    viz.image_grid(samples[s][torch.cat([torch.arange(k * per_class, k * per_class + 10) for k in range(10)])],
                   nrow=10, ax=ax)
    ax.set_title(f"s = {s:g}: {sweep[s]['accuracy']:.0%} read, FD {sweep[s]['fd']:.1f}", fontsize=9)


timestep_slider(show_samples, scales, description="s", static_values=[0.0, 0.5, 1.0, 1.5, 3.0, 8.0], ncols=3)
""")

md(r"""
## Exercises

Each exercise has a code cell for your answer (in the book the solution is folded away; click to show it) and a
check cell that compares it with the library or a closed form.

**Exercise 11.1: the guided prediction, in Ho & Salimans' convention.** Write `guided_eps_w(eps_u, eps_c, w)`,
the guided prediction $(1 + w)\,\epsilon_c - w\,\epsilon_u$. The check compares it with the library's wrapper
at the matching $s = 1 + w$ on the exact mixture, and checks the two ends ($w = -1$ is the unconditional model,
$w = 0$ the conditional one).
""")

code(r"""
def guided_eps_w(eps_u, eps_c, w):
    ### BEGIN SOLUTION
    return (1 + w) * eps_c - w * eps_u
    ### END SOLUTION
""")

code(r"""
# check: the library's wrapper at s = 1 + w gives your prediction; w = -1 and w = 0 are the two models
x_c = 2 * torch.randn(64, 2, generator=torch.Generator().manual_seed(20), dtype=torch.float64)
t_c = torch.full((64,), 0.3, dtype=torch.float64)
y_c = torch.arange(64) % 3
e_c, e_u = exact(x_c, t_c, y_c), exact(x_c, t_c, torch.full((64,), 3))
for w in (0.0, 0.5, 1.0, 6.5):
    lib = ClassifierFreeGuidance(exact, 1 + w, null_label=3)(x_c, t_c, y_c)
    assert torch.allclose(guided_eps_w(e_u, e_c, w), lib, atol=1e-10), w
assert torch.allclose(guided_eps_w(e_u, e_c, -1.0), e_u) and torch.allclose(guided_eps_w(e_u, e_c, 0.0), e_c)
print("Exercise 11.1 passed")
""")

md(r"""
**Exercise 11.2: the implicit classifier.** From the two predictions of a CFG model and $\sigma_t$, recover the
gradient of the implicit classifier, $\nabla_{x_t} \log p_t(y \mid x_t)$. Write
`implicit_classifier_grad(eps_c, eps_u, sigma)`. The check compares it with the autograd gradient of the exact
noisy classifier of the mixture, and checks that a step along it raises $\log p_t(y \mid x_t)$.
""")

code(r"""
def implicit_classifier_grad(eps_c, eps_u, sigma):
    ### BEGIN SOLUTION
    return -(eps_c - eps_u) / sigma
    ### END SOLUTION
""")

code(r"""
# check: against the exact classifier's gradient, at three noise levels
clf_exact = ExactClassifier(mix, schedule)
for tt in (0.05, 0.3, 0.7):
    t_e = torch.full((64,), tt, dtype=torch.float64)
    xr = x_c.clone().requires_grad_(True)
    lp = clf_exact(xr, t_e)[torch.arange(64), y_c]
    (g_true,) = torch.autograd.grad(lp.sum(), xr)
    sig = schedule.sigma(t_e)[:, None]
    g_mine = implicit_classifier_grad(exact(x_c, t_e, y_c), exact(x_c, t_e, torch.full((64,), 3)), sig)
    assert torch.allclose(g_mine, g_true, atol=1e-8), tt
    step = x_c + 1e-3 * g_mine
    assert (clf_exact(step, t_e)[torch.arange(64), y_c] >= lp.detach() - 1e-12).all()
print("Exercise 11.2 passed")
""")

md(r"""
**Exercise 11.3: condition dropout.** Write `my_drop_labels(y, p_uncond, null_label, generator)`: draw one
uniform number per label with `torch.rand(y.shape, generator=generator)` and replace the label by `null_label`
where that number is below `p_uncond`. The check compares it with the library (the same random numbers give the
same result) and checks the rate on many labels.
""")

code(r"""
def my_drop_labels(y, p_uncond, null_label, generator):
    ### BEGIN SOLUTION
    u = torch.rand(y.shape, generator=generator)
    return torch.where(u < p_uncond, torch.full_like(y, null_label), y)
    ### END SOLUTION
""")

code(r"""
# check: identical to the library with the same generator, the right rate, labels kept otherwise
y_many = torch.arange(50_000) % 10
for p in (0.0, 0.15, 0.5, 1.0):
    mine = my_drop_labels(y_many, p, 10, torch.Generator().manual_seed(30))
    assert torch.equal(mine, drop_labels(y_many, p, 10, generator=torch.Generator().manual_seed(30))), p
    dropped = mine == 10
    assert abs(dropped.float().mean().item() - p) <= 5 * math.sqrt(p * (1 - p) / len(y_many)) + 1e-12
    assert torch.equal(mine[~dropped], y_many[~dropped]) and mine.dtype == y_many.dtype
print("Exercise 11.3 passed")
""")

md(r"""
## Summary

- **Condition dropout** trains one network as a conditional and an unconditional model: replace the label by a
  null label with probability $p_\text{uncond}$ (0.1 to 0.2).
- **CFG** combines the two predictions, $\epsilon_u + s\,(\epsilon_c - \epsilon_u)$. $s = 0$ is unconditional,
  $s = 1$ conditional. Ho & Salimans write $w = s - 1$; Imagen and diffusers' `guidance_scale` write $s$. The
  difference $\epsilon_c - \epsilon_u = -\sigma_t \nabla \log p_t(y \mid x_t)$ is an implicit classifier, so CFG
  is classifier guidance without a classifier.
- At $t \to 0$ the guided score is that of $p(x)\,p(y \mid x)^s$, but for $s > 1$ CFG does **not** sample that
  distribution: on an exact mixture it overshoots it, and the ancestral and deterministic samplers disagree.
- On digits, raising $s$ past 1 saturates the accuracy and then only costs FD, within-class diversity and pixel
  saturation. The knee of the curve, $s = 1.5$, is this model's default.

Guidance need not be applied at every step: {cite:t}`kynkaanniemi2024applying` apply it only in a middle interval
of noise levels and improve both FID and diversity. Chapter 12 uses CFG with text instead of class labels.
""")

ch.write("chapters/11_cfg.ipynb")
