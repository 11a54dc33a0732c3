"""Writes chapters/02_ncsn.ipynb (unexecuted); run it from the repository root, then execute the notebook:

    .venv/bin/python scripts/build_ch02.py
    DIFFEDU_STATIC=1 .venv/bin/jupyter nbconvert --to notebook --execute --inplace chapters/02_ncsn.ipynb
    .venv/bin/python -m diffedu.exercises --tag chapters/02_ncsn.ipynb
"""
from chapter_kit import Chapter

ch = Chapter()
md, code = ch.md, ch.code

md(r"""
# 2 · Score matching and noise-conditional score networks

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/diffedu/diffedu/blob/main/chapters/02_ncsn.ipynb)

Chapter 1 learned to *denoise*. This chapter learns something that sounds different: the **score**
$\nabla_x \log p(x)$, a vector field that points towards the data. A score is all a sampler needs — Langevin
dynamics follows it uphill, with noise — and, unlike the density itself, it can be learned from samples without
ever computing a normalising constant {cite:p}`hyvarinen2005estimation`. Learning it well *everywhere* needs one
more idea: blur the data with noise at many levels. That gives the noise-conditional score networks (NCSN) of
{cite:t}`song2019generative`, and, as we will see, the very same network as a DDPM.

**You will learn to**

- read a score field, and compute the score of a Gaussian mixture exactly;
- learn a score with explicit, sliced and denoising score matching, and check each against closed forms;
- see why plain Langevin dynamics fails in low-density regions and gets mixture weights wrong;
- train a noise-conditional score network over a geometric noise ladder and sample it with annealed Langevin
  dynamics, live on 2-D data;
- sample 8×8 digits from a shipped NCSN checkpoint.
""")

ch.setup(r"""
import math
import time
import matplotlib.pyplot as plt
import torch
from torch import nn

from diffedu import ncsn, viz
from diffedu.data import load_digits
from diffedu.metrics import digits_classifier, energy_distance
from diffedu.nets import InputScaled, MLPDenoiser
from diffedu.pretrained import load_pretrained, pretrained_info
from diffedu.schedules import VE
from diffedu.toy import ExactModel, GaussianMixture
from diffedu.train import train
from diffedu.utils import setup, show_source
""")

md(r"""
## 2.1 The score: a vector field that points to the data

The **score** of a density $p$ is the gradient of its logarithm, $s(x) = \nabla_x \log p(x)$. Write an
unnormalised density as $p(x) = \tilde p(x) / Z$: then $\nabla_x \log p = \nabla_x \log \tilde p$, because the
constant $Z = \int \tilde p$ — the intractable part of most models — drops out of the gradient.

Our running example is a mixture of three Gaussians with *unequal* weights $w = (0.6, 0.3, 0.1)$,
$p(x) = \sum_k w_k\, \mathcal N(x; \mu_k, s^2 I)$. Its score is a responsibility-weighted average of the
components' scores,

$$
\nabla_x \log p(x) = \sum_k r_k(x)\, \frac{\mu_k - x}{s^2}, \qquad
r_k(x) = \frac{w_k\, \mathcal N(x; \mu_k, s^2 I)}{\sum_j w_j\, \mathcal N(x; \mu_j, s^2 I)},
$$

which `diffedu.toy.GaussianMixture` computes exactly (also for the noised data, in §2.4). Below: the score field
over the log-density. Every arrow has the same length; its colour shows the true length on a log scale.
""")

code(r"""
angles = torch.tensor([90.0, 210.0, 330.0]) * math.pi / 180
means = 2.5 * torch.stack([angles.cos(), angles.sin()], dim=1)  # (3, 2): three modes on a circle
mix = GaussianMixture(means, 0.35, weights=torch.tensor([0.6, 0.3, 0.1]))  # s = 0.35 for every component
components = ["top (w = 0.6)", "lower left (w = 0.3)", "lower right (w = 0.1)"]
exact_score = lambda x: mix.score(x.double(), 1.0, 0.0).float()  # grad log p(x), exact; (B, 2) -> (B, 2)
log_p = lambda x: mix.log_prob(x)

data = mix.sample(10_000, torch.Generator().manual_seed(1))[0].float()  # the training set
fig = viz.compare_score_fields({"score of the mixture, ∇ log p(x)": exact_score}, lim=4, n=21,
                               log_density=log_p, points=data[:1500], panel_size=4.2)
plt.show()
""")

md(r"""
Near a mode the arrows point straight at its mean and are short; between modes the responsibilities switch over
and the field has saddle points; far out the arrows are long (the score grows linearly with the distance). The
weights are invisible here: far from the ridges between modes the score of a component does not care how
heavy it is. Remember this — it is why §2.5's sampler gets them wrong.

## 2.2 Explicit score matching

We want a network $s_\theta(x) \approx \nabla_x \log p(x)$, but we only have samples of $p$. The natural loss,
the **Fisher divergence** $\tfrac12 \mathbb E_p \|s_\theta(x) - \nabla_x \log p(x)\|^2$, contains the unknown
score. {cite:t}`hyvarinen2005estimation` integrated it by parts (the boundary terms vanish when $p$ decays) and
found an equivalent loss without it:

$$
J(\theta) = \mathbb E_{p}\Big[\operatorname{tr}\big(\nabla_x s_\theta(x)\big) + \tfrac12 \|s_\theta(x)\|^2\Big]
= \tfrac12\, \mathbb E_p \|s_\theta - \nabla_x \log p\|^2 - \tfrac12\, \mathbb E_p \|\nabla_x \log p\|^2 .
$$

So $J$ is minimised by the true score, where it equals $-\tfrac12 \mathbb E_p\|\nabla_x \log p\|^2$: for a
Gaussian $\mathcal N(\mu, s^2 I)$ in $D$ dimensions that is $-D/(2s^2)$. The trace of the Jacobian is what
makes this *explicit* score matching expensive: one backward pass per dimension.
""")

code(r"""
show_source(ncsn.explicit_score_matching)
""")

md(r"""
First a check against the closed form: with the *exact* score, $J$ is $-\tfrac12\mathbb E\|\nabla\log p\|^2$,
which for our mixture is the Gaussian value $-D/(2s^2) = -8.16$ up to a tiny correction (the modes barely overlap).
""")

code(r"""
x_check = mix.sample(20_000, torch.Generator().manual_seed(2))[0].float()
per_point = ncsn.explicit_score_matching(exact_score, x_check, reduction="none")  # (20000,)
esm_exact = per_point.mean().item()
print(f"J(exact score) = {esm_exact:.2f} ± {per_point.std().item() / math.sqrt(len(per_point)):.2f}"
      f"  (Monte Carlo estimate ± standard error);  -D / (2 s^2) = {-2 / (2 * 0.35 ** 2):.2f}")
""")

md(r"""
Now learn it. The score network here is a plain MLP from $\mathbb R^2$ to $\mathbb R^2$ with smooth (SiLU)
activations — $J$ differentiates the network twice, so ReLU's zero curvature would be a poor choice. The library's
training loop only needs the loss.
""")

code(r"""
def score_mlp(hidden=64):
    # s_theta: R^2 -> R^2. No time input: this learns the score of the clean data only.
    return nn.Sequential(nn.Linear(2, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))

steps_sm = 3000 if cfg.full else 800
torch.manual_seed(0)
esm_run = train(score_mlp(), lambda model, x, gen: ncsn.explicit_score_matching(model, x), data, steps=steps_sm,
                batch_size=256, lr=3e-3, warmup_steps=50, device="cpu", progress=False)
esm_net = esm_run.ema_model

window = 50
smooth = torch.tensor(esm_run.losses).unfold(0, window, 1).mean(1)
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(esm_run.losses, lw=0.5, alpha=0.4, label="loss per step")
ax.plot(range(window - 1, len(esm_run.losses)), smooth, label=f"mean of {window} steps")
ax.axhline(esm_exact, color="k", ls="--", lw=1, label=f"exact score: {esm_exact:.2f}")
ax.set(xlabel="training step", ylabel="explicit score matching J", ylim=(esm_exact - 2, 2),
       title="Learning the score with Hyvärinen's loss")
ax.legend()
plt.show()
print(f"final loss (mean of last 100 steps): {sum(esm_run.losses[-100:]) / 100:.1f};  exact score: {esm_exact:.1f}")
""")

md(r"""
**Expected output:** the loss starts at 0 (the last layer's small initial output), falls fast, and settles within
a few tenths of the dashed line. It can wander *below* the line by a little: the line is a Monte Carlo
estimate, and so is each minibatch loss.

How good is the learned field? Compare it with the exact one, and measure the Fisher divergence
$\tfrac12 \mathbb E\|s_\theta - \nabla \log p\|^2$ on the data and on points spread uniformly over the plot:
""")

code(r"""
fig = viz.compare_score_fields({"exact ∇ log p": exact_score, "learned by explicit SM": esm_net}, lim=4, n=17,
                               log_density=log_p, points=data[:1000], title="Exact and learned score fields")
plt.show()
uniform = (2 * torch.rand(4000, 2, generator=torch.Generator().manual_seed(3)) - 1) * 4  # uniform on [-4, 4]^2
held_out = mix.sample(4000, torch.Generator().manual_seed(4))[0].float()
on_data, off_data = (ncsn.fisher_divergence(esm_net, exact_score, pts) for pts in (held_out, uniform))
print(f"Fisher divergence on the data: {on_data:.2f};  on the whole square: {off_data:.1f}  "
      f"(E||score||^2 / 2 there: {0.5 * (exact_score(uniform) ** 2).sum(1).mean():.0f})")
""")

md(r"""
Where there is data the two fields agree. Between and beyond the modes — where $p$ is tiny, so the loss never
looks — the learned arrows are anything the network happened to produce. This is the first of the two failures
that {cite:t}`song2019generative` point out, and it matters because a sampler must *travel through* those
regions to reach the data.

## 2.3 Sliced score matching

The trace $\operatorname{tr}\nabla_x s_\theta$ needs $D$ backward passes: fine in 2-D, hopeless for a
$256\times256$ image. {cite:t}`song2020sliced` project the score onto random directions $v$ with
$\mathbb E[v v^\top] = I$ (Gaussian or Rademacher), using $\mathbb E_v[v^\top A v] = \operatorname{tr} A$:

$$
J_{\text{SSM}}(\theta) = \mathbb E_{v}\,\mathbb E_p\Big[v^\top \nabla_x s_\theta(x)\, v + \tfrac12 \big(v^\top s_\theta(x)\big)^2\Big],
\qquad
J_{\text{SSM-VR}}(\theta) = \mathbb E_{v}\,\mathbb E_p\Big[v^\top \nabla_x s_\theta(x)\, v\Big] + \tfrac12\,\mathbb E_p\|s_\theta(x)\|^2 .
$$

Both are unbiased for $J$; SSM-VR computes the second term's average over $v$ exactly (less variance).
$v^\top \nabla_x s_\theta\, v$ costs a single vector–Jacobian product, $\nabla_x (v \cdot s_\theta)$, whatever
the dimension.
""")

code(r"""
show_source(ncsn.sliced_score_matching)
""")

md(r"""
On the network we just trained, the sliced estimates (4 directions per point) agree with the explicit one within
a few standard errors; Gaussian directions are the noisiest, and computing the second term exactly (VR) or
using Rademacher directions (for which $v^\top A v$ gets $A$'s diagonal exactly) removes part of the noise. Then
the same network trained from scratch with SSM-VR learns the same field:
""")

code(r"""
explicit = ncsn.explicit_score_matching(esm_net, held_out, reduction="none")  # (4000,)
print(f"explicit score matching: J = {explicit.mean().item():.2f}")
for name, options in [("SSM, Gaussian v", {}), ("SSM, Rademacher v", {"projection": "rademacher"}),
                      ("SSM-VR, Gaussian v", {"variance_reduction": True})]:
    sliced = ncsn.sliced_score_matching(esm_net, held_out, n_projections=4, reduction="none",
                                        generator=torch.Generator().manual_seed(5), **options)  # (4000,)
    gap = sliced - explicit
    print(f"{name:>23}: J = {sliced.mean().item():.2f};  minus explicit: {gap.mean().item():5.2f} ± "
          f"{gap.std().item() / math.sqrt(len(gap)):.2f}  (std per example {sliced.std().item():.1f})")

torch.manual_seed(0)
ssm_run = train(score_mlp(), lambda model, x, gen: ncsn.sliced_score_matching(model, x, variance_reduction=True,
                                                                             generator=gen),
                data, steps=steps_sm, batch_size=256, lr=3e-3, warmup_steps=50, device="cpu", progress=False)
ssm_net = ssm_run.ema_model
print(f"Fisher divergence on the data: explicit SM {on_data:.2f}, sliced SM-VR "
      f"{ncsn.fisher_divergence(ssm_net, exact_score, held_out):.2f}")
""")

md(r"""
And the reason to bother, measured: the time of one loss-and-gradient evaluation as the dimension grows
(a random MLP on 256 points; your times will differ, the slopes will not).
""")

code(r"""
def seconds_per_step(loss_fn, D, repeats=2):
    net = nn.Sequential(nn.Linear(D, 128), nn.SiLU(), nn.Linear(128, D))
    x = torch.randn(256, D)
    loss_fn(net, x).backward()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        loss_fn(net, x).backward()
    return (time.perf_counter() - start) / repeats

dims = [2, 8, 32, 64]
cost = {"explicit (D backward passes)": [seconds_per_step(ncsn.explicit_score_matching, D) for D in dims],
        "sliced (1 backward pass)": [seconds_per_step(ncsn.sliced_score_matching, D) for D in dims]}
fig, ax = plt.subplots(figsize=(5, 3))
for name, seconds in cost.items():
    ax.plot(dims, [1000 * s for s in seconds], "o-", label=name)
ax.set(xlabel="data dimension D", ylabel="ms per loss + gradient", title="The cost of the Jacobian trace")
ax.legend()
plt.show()
""")

md(r"""
## 2.4 Denoising score matching

{cite:t}`vincent2011connection` found a third way, with no derivatives of the network at all. Perturb the data,
$\tilde x = x + \sigma z$ with $z \sim \mathcal N(0, I)$, and regress the network on the score of the
perturbation kernel, $\nabla_{\tilde x} \log q_\sigma(\tilde x \mid x) = -z/\sigma$:

$$
J_{\text{DSM}}(\theta; \sigma) = \mathbb E_{x, z}\, \tfrac12 \big\| s_\theta(x + \sigma z) + z / \sigma \big\|^2 .
$$

Its minimiser is $\mathbb E[-z/\sigma \mid \tilde x] = \nabla \log p_\sigma(\tilde x)$, the score of the
**noised** data $p_\sigma = p * \mathcal N(0, \sigma^2 I)$. More precisely, for *every* $s_\theta$,

$$
J_{\text{DSM}}(\theta; \sigma) = J_{\text{explicit}}(\theta; p_\sigma) + \frac{D}{2\sigma^2},
$$

so explicit score matching on $p_\sigma$ and denoising score matching have the same minimiser, and their values
differ by a constant we can write down. Let's check it on the network we trained — any $s_\theta$ will do:
""")

code(r"""
sigma = 0.5
noised = mix.marginal(1.0, sigma)  # p_sigma is again a Gaussian mixture, in closed form
dsm = ncsn.denoising_score_matching(esm_net, mix.sample(40_000, torch.Generator().manual_seed(6))[0].float(),
                                    sigma, generator=torch.Generator().manual_seed(7), reduction="none")
esm_noised = ncsn.explicit_score_matching(esm_net, noised.sample(40_000, torch.Generator().manual_seed(8))[0].float(),
                                          reduction="none")
se = math.sqrt(dsm.var().item() / len(dsm) + esm_noised.var().item() / len(esm_noised))
print(f"DSM = {dsm.mean().item():.2f},  explicit SM on p_sigma = {esm_noised.mean().item():.2f},  "
      f"difference {dsm.mean().item() - esm_noised.mean().item():.2f} ± {se:.2f}  vs  D / (2 sigma^2) = {2 / (2 * sigma ** 2):.2f}")
""")

md(r"""
**Expected output:** a difference within two or three standard errors of $D/(2\sigma^2) = 4$ (both terms are
Monte Carlo estimates).

The price: DSM learns the score of $p_\sigma$, not of $p$. Small $\sigma$ is faithful to the data but, like
explicit score matching, only learns near it; large $\sigma$ fills the whole space with training signal but
blurs the data. NCSN's answer (§2.6) is to learn *all* of them, with one network that takes $\sigma$ as input.

For such a network $s_\theta(x, \sigma)$, {cite:t}`song2019generative` weight each level by
$\lambda(\sigma) = \sigma^2$, which makes every level's loss of the same size:
$\sigma^2 \| s_\theta + z/\sigma\|^2 = \|\sigma s_\theta + z\|^2$. Write the network as
$s_\theta = -\hat\epsilon_\theta / \sigma$ and this is $\|\hat\epsilon_\theta - z\|^2$ — chapter 1's
$\epsilon$-prediction loss, on the variance-exploding process $x_t = x_0 + \sigma(t)\,\epsilon$ with
$\sigma(t) = \sigma_{\min} (\sigma_{\max}/\sigma_{\min})^t$. A score network and a denoiser are the same object,
related by Tweedie's formula $\mathbb E[x_0 \mid x_t] = x_t + \sigma^2 \nabla \log p_\sigma(x_t)$
{cite:p}`efron2011tweedie` (Exercise 2.2).
""")

code(r"""
show_source(ncsn.dsm_loss)
""")

md(r"""
## 2.5 Langevin dynamics, and where it fails

Given a score, **Langevin dynamics** samples $p$ without knowing $Z$
{cite:p}`roberts1996exponential,welling2011bayesian`:

$$
x_{k+1} = x_k + \frac{\alpha}{2}\, \nabla_x \log p(x_k) + \sqrt{\alpha}\; z_k, \qquad z_k \sim \mathcal N(0, I).
$$

As $\alpha \to 0$ and $k \to \infty$, $x_k$ is distributed as $p$ (without a Metropolis correction a small bias
of order $\alpha$ remains).
""")

code(r"""
show_source(ncsn.langevin_dynamics)
""")

md(r"""
Run it with the **exact** score from points spread uniformly over the square, and with the score learned by
explicit score matching:
""")

code(r"""
def fractions(x):
    # share of samples nearest (by responsibility) to each component: compare with the weights (0.6, 0.3, 0.1)
    k = mix.responsibilities(x.double(), 1.0, 0.0).argmax(dim=1)
    return torch.bincount(k, minlength=3).double() / len(x)

def weight_error(x):
    return 0.5 * (fractions(x) - mix.weights).abs().sum().item()  # total variation, 0 = perfect

n = 1000
start = (2 * torch.rand(n, 2, generator=torch.Generator().manual_seed(9)) - 1) * 4  # uniform on [-4, 4]^2
plain_exact = ncsn.langevin_dynamics(exact_score, start, step_size=0.01, n_steps=300,
                                     generator=torch.Generator().manual_seed(10))
with torch.no_grad():
    plain_learned = ncsn.langevin_dynamics(esm_net, start, step_size=0.01, n_steps=300,
                                           generator=torch.Generator().manual_seed(10))
reference = mix.sample(n, torch.Generator().manual_seed(11))[0].float()

viz.compare_2d({"data": reference, "Langevin, exact score": plain_exact, "Langevin, learned score": plain_learned},
               lim=4, title="Plain Langevin dynamics from uniform starting points")
plt.show()
for name, x in [("exact score", plain_exact), ("learned score", plain_learned)]:
    print(f"plain Langevin, {name:<13}: fractions {fractions(x).numpy().round(2)}, weight error {weight_error(x):.2f}")
""")

md(r"""
Every cluster has the right shape, yet the proportions are wrong: about one third each instead of
$(0.6, 0.3, 0.1)$. Each sample slides into the mode whose basin it started in and practically never crosses the
low-density gap to another one; the mixing time grows exponentially with the gap. This is the second failure
{cite:p}`song2019generative`: the score of a mixture with separated modes carries no information about their
weights (§2.1), so a local sampler cannot find them in any reasonable time. With the learned score the
weights are just as wrong, and every sample's path to its mode crosses the region where §2.2 found the learned
score unreliable: the two failures compound.

## 2.6 Noise-conditional score networks and annealed Langevin dynamics

Noise fixes both failures at once. Blurred by a large $\sigma$, the modes merge into one bump: the score is
accurate everywhere (training samples are everywhere), and Langevin mixes freely, so the mass of each mode is
set correctly while the modes are still connected. Then anneal: run Langevin at a sequence of decreasing levels,
each started from the previous one's output — {cite:t}`song2019generative`'s Algorithm 1. The levels form a
geometric ladder $\sigma_1 > \dots > \sigma_L$, with $\sigma_1$ about the largest distance between data points
{cite:p}`song2020improved`, and level $i$ uses the step size

$$
\alpha_i = \epsilon\, \sigma_i^2 / \sigma_L^2 ,
$$

which keeps the "signal-to-noise ratio" $\|\tfrac{\alpha_i}{2} s\| / \|\sqrt{\alpha_i} z\|$ of every step the
same at every level (the score of $p_{\sigma_i}$ scales like $1/\sigma_i$). A last Tweedie step
$x \leftarrow x + \sigma_L^2\, s_\theta(x, \sigma_L)$ removes the final level's noise
{cite:p}`jolicoeur2021adversarial`.
""")

code(r"""
show_source(ncsn.annealed_langevin)
""")

md(r"""
First with a perfect model: `ExactModel` wraps the mixture's closed-form noised score as a network on the VE
process with $\sigma_{\min} = 0.01$, $\sigma_{\max} = 6$ (the modes are 4.3 apart), and the ladder has $L = 10$
levels, with 100 Langevin steps at each.
""")

code(r"""
ve = VE(sigma_min=0.01, sigma_max=6.0)
sigmas = ncsn.geometric_sigmas(6.0, 0.01, 10)  # float64, 6.0 -> 0.01, ratio 2.03 between levels
epsilon = 5e-5  # alpha_L = epsilon: step sizes from 18 (sigma = 6) down to 5e-5
print("ladder:", ", ".join(f"{s:.3g}" for s in sigmas.tolist()))
x_start = 6.0 * torch.randn(n, 2, generator=torch.Generator().manual_seed(12))
annealed_exact = ncsn.annealed_langevin(ExactModel(mix, ve), x_start, ve, sigmas, n_steps_each=100, epsilon=epsilon,
                                        generator=torch.Generator().manual_seed(13), progress=False)
print(f"annealed Langevin, exact score: fractions {fractions(annealed_exact).numpy().round(2)}, "
      f"weight error {weight_error(annealed_exact):.2f}")
""")

md(r"""
Now the learned version. The network is chapter 1's residual MLP predicting $\hat\epsilon$ (so
$s_\theta = -\hat\epsilon/\sigma$), fed $c_{\text{in}}(\sigma)\, x$ with
$c_{\text{in}} = 1/\sqrt{\sigma^2 + \sigma_{\text{data}}^2}$ {cite:p}`karras2022elucidating` so that its input has
about unit scale at every level. It trains with `dsm_loss` on the ladder: each example gets a level $\sigma_i$
drawn uniformly (Song & Ermon's eq. 6). The best possible loss is that of the exact model.
""")

code(r"""
ncsn_net = InputScaled(MLPDenoiser(data_dim=2, hidden=128, depth=3, prediction="eps").config,
                       sigma_min=0.01, sigma_max=6.0, sigma_data=1.5)
best_loss = ncsn.dsm_loss(ExactModel(mix, ve), data, ve, sigmas=sigmas, generator=torch.Generator().manual_seed(14)).item()
steps_ncsn = 6000 if cfg.full else 1500
ncsn_run = train(ncsn_net, lambda model, x, gen: ncsn.dsm_loss(model, x, ve, generator=gen, sigmas=sigmas), data,
                 steps=steps_ncsn, batch_size=256, lr=2e-3, warmup_steps=100, device=device, progress=False)
score_model = ncsn_run.ema_model

smooth = torch.tensor(ncsn_run.losses).unfold(0, 100, 1).mean(1)
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(ncsn_run.losses, lw=0.5, alpha=0.4, label="loss per step")
ax.plot(range(99, len(ncsn_run.losses)), smooth, label="mean of 100 steps")
ax.axhline(best_loss, color="k", ls="--", lw=1, label=f"exact score: {best_loss:.3f}")
ax.set(xlabel="training step", ylabel=r"$\sigma^2$-weighted DSM ($\epsilon$ MSE)", ylim=(0.4, 1.1),
       title="Training a noise-conditional score network")
ax.legend()
plt.show()
print(f"final loss (mean of last 500 steps): {sum(ncsn_run.losses[-500:]) / 500:.2f};  best possible: {best_loss:.2f}")
""")

md(r"""
**Expected output:** the loss falls from 1 to within a few hundredths of the dashed line (about 0.6). Is the score
right? Here is the learned field beside the exact one at three levels of the ladder, over each level's noised
density, and the relative error $\mathbb E\|s_\theta - \nabla\log p_\sigma\|^2 / \mathbb E\|\nabla \log p_\sigma\|^2$
on samples of $p_\sigma$ at every level:
""")

code(r"""
def exact_noised_score(s):
    return lambda x: mix.score(x.double(), 1.0, s).float()

shown = [sigmas[1].item(), sigmas[3].item(), sigmas[5].item()]
fields, densities = {}, {}
for s in shown:
    fields[f"exact, σ = {s:.2f}"] = exact_noised_score(s)
    densities[f"exact, σ = {s:.2f}"] = lambda x, s=s: mix.log_prob(x, 1.0, s)
for s in shown:
    fields[f"learned, σ = {s:.2f}"] = lambda x, s=s: ncsn.score_fn(score_model, ve.time_of_sigma(s), ve)(x.to(device)).cpu()
    densities[f"learned, σ = {s:.2f}"] = lambda x, s=s: mix.log_prob(x, 1.0, s)
fig = viz.compare_score_fields(fields, lim=4.5, n=15, ncols=3, log_density=densities, panel_size=2.2,
                               title="Noise-conditional score: exact (top) and learned (bottom)")
plt.show()

errors = []
for k, s in enumerate(sigmas.tolist()):
    x_s = mix.marginal(1.0, s).sample(2000, torch.Generator().manual_seed(20 + k))[0].float()
    learned = ncsn.score_fn(score_model, ve.time_of_sigma(s), ve)(x_s.to(device)).cpu()
    truth = exact_noised_score(s)(x_s)
    errors.append(((learned - truth) ** 2).sum(1).mean().item() / (truth ** 2).sum(1).mean().item())
print("relative score error per level:\n" + "\n".join(f"  sigma = {s:6.3f}: {e:.3f}" for s, e in zip(sigmas.tolist(), errors)))
""")

md(r"""
**Expected output:** relative errors of a few percent or less at the large and middle levels, where annealed
Langevin decides where the mass goes, and larger at the smallest levels (there $\hat\epsilon$'s error is
multiplied by $1/\sigma$, but those steps are tiny and barely move a sample).

Finally, sample the learned model with annealed Langevin, from the same start as the exact one:
""")

code(r"""
with torch.no_grad():
    annealed_learned, levels = ncsn.annealed_langevin(score_model, x_start.to(device), ve, sigmas, n_steps_each=100,
                                                      epsilon=epsilon, generator=torch.Generator(device).manual_seed(13),
                                                      progress=False, return_trajectory=True)
annealed_learned = annealed_learned.cpu()
fig = viz.compare_2d({"data": reference, "annealed, exact score": annealed_exact,
                      "annealed, learned NCSN": annealed_learned}, lim=4, title="Annealed Langevin dynamics")
plt.show()

fig, ax = plt.subplots(figsize=(7, 3))
viz.plot_weights({"mixture weights": mix.weights, "plain Langevin (exact score)": fractions(plain_exact),
                  "annealed (exact score)": fractions(annealed_exact),
                  "annealed (learned NCSN)": fractions(annealed_learned)},
                 ax=ax, component_labels=components, title="Which mode do the samples land in?")
plt.show()

floor = energy_distance(mix.sample(n, torch.Generator().manual_seed(15))[0], reference)
for name, x in [("plain Langevin, exact score", plain_exact), ("annealed, exact score", annealed_exact),
                ("annealed, learned NCSN", annealed_learned)]:
    print(f"{name:<28}: weight error {weight_error(x):.2f}, energy distance to data {energy_distance(x, reference):.3f}")
print(f"{'noise floor (data vs data)':<28}: weight error {weight_error(mix.sample(n, torch.Generator().manual_seed(15))[0]):.2f}, "
      f"energy distance {floor:.3f}")
""")

md(r"""
**Expected output:** the annealed samples have the right proportions (weight errors of a few hundredths, as
for a second set of data points), and energy distances within a few thousandths of the floor; plain Langevin's
weight error is about 0.25.

Here are some paths — each line joins a sample's positions after every level, from the third level
on — and the whole run as an animation: one big blob that splits into three, with the right amount of mass in each.
""")

code(r"""
traj = torch.stack([x.cpu() for x in levels])  # (L + 2, n, 2): start, after each level, after the denoising step
viz.plot_trajectories(traj[3:], n=30, lim=4, start_label=f"after σ = {sigmas[2].item():.2f}",
                      title=f"Annealed Langevin paths, from σ = {sigmas[2].item():.2f} down")
plt.show()
titles = ["start: 6 N(0, I)"] + [f"after level σ = {s:.3g}" for s in sigmas.tolist()] + ["after the Tweedie step"]
viz.animate_reverse(list(traj), titles=titles, lim=(-7, 7), interval=400)
""")

md(r"""
## 2.7 Digits from a shipped NCSN

The same recipe on images: the digits UNet of chapter 1, predicting $\hat\epsilon$ behind the same input scaling,
trained with `dsm_loss` on the VE process with $\sigma_{\min} = 0.01$ and $\sigma_{\max} = 10$ (just above the
largest distance between two training digits, 9.6) by `python -m diffedu.recipes ncsn_digits`. It is sampled
with annealed Langevin using the settings recorded with the checkpoint. Set `retrain = True` (or run in full
mode on a GPU) to train it here instead.
""")

code(r"""
retrain = cfg.full
if retrain:
    from diffedu.recipes import DigitsNCSNConfig, ncsn_digits
    ncsn_digits(DigitsNCSNConfig(), device=str(device))
info = pretrained_info("ncsn_digits")
digits_model = load_pretrained("ncsn_digits", device=device)
tc = info["train_config"]
digits_ve = VE(tc["sigma_min"], tc["sigma_max"])
digits_sigmas = ncsn.geometric_sigmas(tc["sigma_max"], tc["sigma_min"], tc["eval_levels"])
print(f"ncsn_digits: {sum(p.numel() for p in digits_model.parameters()):,} parameters, {info['size_bytes'] / 1e6:.1f} MB, "
      f"trained {info['steps']:,} steps; recipe metric {info['metric']['name']} = {info['metric']['value']}")
print(f"sampler: {tc['eval_levels']} levels from {tc['sigma_max']} to {tc['sigma_min']}, {tc['eval_steps_each']} steps each, "
      f"epsilon = {tc['eval_epsilon']}")
""")

code(r"""
x_T = tc["sigma_max"] * torch.randn(36, 1, 8, 8, generator=torch.Generator(device).manual_seed(0), device=device)
digit_samples, digit_levels = ncsn.annealed_langevin(digits_model, x_T, digits_ve, digits_sigmas,
                                                     n_steps_each=tc["eval_steps_each"], epsilon=tc["eval_epsilon"],
                                                     generator=torch.Generator(device).manual_seed(1), progress=False,
                                                     return_trajectory=True)
digit_samples = digit_samples.clamp(-1, 1).cpu()
digits = load_digits(size=8, split="train")
fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
viz.image_grid(digit_samples, nrow=6, ax=axes[0], title="NCSN samples (annealed Langevin)")
viz.image_grid(digits.x[:36], nrow=6, ax=axes[1], title="Training digits")
plt.show()
reader = digits_classifier().summary(digit_samples)
print(f"a logistic-regression reader is >= 90 % sure of {100 * reader['confident_fraction']:.0f} % of the samples "
      f"(of held-out real digits: {100 * digits_classifier().summary(load_digits(split='test').x)['confident_fraction']:.0f} %)")
""")

md(r"""
Four of the samples after every third level of the ladder ($\sigma$ from large to small, left to right). The
digits take shape at the middle levels, where $\sigma$ is about the size of a stroke.
""")

code(r"""
shown_levels = list(range(0, len(digit_levels) - 1, 3)) + [len(digit_levels) - 1]  # start, every 3rd level, end
strip = torch.stack([digit_levels[k][j].cpu().clamp(-1, 1) for j in range(4) for k in shown_levels])
names = ["start"] + [f"σ={digits_sigmas[k - 1].item():.2g}" for k in shown_levels[1:-1]] + ["denoised"]
labels = [""] * (3 * len(shown_levels)) + names  # label the bottom row only
viz.image_grid(strip, nrow=len(shown_levels), labels=labels, title="Four samples, level by level")
plt.show()
""")

md(r"""
## Exercises

Each exercise has a code cell for your answer (in the book the solution is folded away; click to show it) and a
check cell that compares it with a closed form.

**Exercise 2.1 — the score of a mixture.** Write `my_mixture_score(x, means, std, weights)` returning
$\nabla_x \log \sum_k w_k \mathcal N(x; \mu_k, \text{std}^2 I)$ for a batch `x` (B, D), `means` (K, D) and
`weights` (K,). Hint: compute the responsibilities with a `softmax` of log-weights plus log-densities; constants
common to all components cancel.
""")

code(r"""
def my_mixture_score(x, means, std, weights):
    ### BEGIN SOLUTION
    diff = x[:, None, :] - means[None]                                      # (B, K, D)
    logits = torch.log(weights) - (diff ** 2).sum(-1) / (2 * std ** 2)      # (B, K), up to a shared constant
    r = torch.softmax(logits, dim=1)                                        # responsibilities r_k(x)
    return -(r[:, :, None] * diff).sum(1) / std ** 2                        # sum_k r_k (mu_k - x) / std^2
    ### END SOLUTION
""")

code(r"""
# check: against the exact mixture score, on the data and far away; unnormalised weights give the same score
x_check = torch.cat([mix.sample(200, torch.Generator().manual_seed(0))[0], 6 * torch.randn(200, 2, dtype=torch.float64)])
mine = my_mixture_score(x_check, mix.means, 0.35, mix.weights)
assert torch.allclose(mine, mix.score(x_check, 1.0, 0.0), rtol=1e-6, atol=1e-8)
assert torch.allclose(my_mixture_score(x_check, mix.means, 0.35, 7 * mix.weights), mine, rtol=1e-6, atol=1e-8)
print("Exercise 2.1 passed")
""")

md(r"""
**Exercise 2.2 — Tweedie's formula.** A score model is a denoiser: for $x = x_0 + \sigma z$,
$\mathbb E[x_0 \mid x] = x + \sigma^2 \nabla_x \log p_\sigma(x)$. Write `tweedie_denoise(x, sigma, score)`, where
`score` is a callable $x \mapsto \nabla \log p_\sigma(x)$.
""")

code(r"""
def tweedie_denoise(x, sigma, score):
    ### BEGIN SOLUTION
    return x + sigma ** 2 * score(x)
    ### END SOLUTION
""")

code(r"""
# check: against the mixture's exact posterior mean E[x0 | x] at several noise levels
for s in (0.1, 0.7, 3.0):
    x_noisy = mix.marginal(1.0, s).sample(500, torch.Generator().manual_seed(1))[0]
    assert torch.allclose(tweedie_denoise(x_noisy, s, lambda y: mix.score(y, 1.0, s)), mix.denoise(x_noisy, 1.0, s),
                          atol=1e-9)
print("Exercise 2.2 passed")
""")

md(r"""
**Exercise 2.3 — annealed Langevin by hand.** Write `my_annealed_langevin(score, x, sigmas, n_steps_each, epsilon,
generator)`, where `score(x, sigma)` is the score of the data noised to level `sigma`: for each level $\sigma_i$,
run `n_steps_each` Langevin steps with $\alpha_i = \epsilon\, \sigma_i^2 / \sigma_L^2$ (no final denoising step).
The check samples the mixture with its exact noised score and counts the samples in each mode.
""")

code(r"""
def my_annealed_langevin(score, x, sigmas, n_steps_each, epsilon, generator=None):
    ### BEGIN SOLUTION
    for s in sigmas.tolist():
        alpha = epsilon * s ** 2 / sigmas[-1].item() ** 2
        for _ in range(n_steps_each):
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x = x + 0.5 * alpha * score(x, s) + math.sqrt(alpha) * z
    return x
    ### END SOLUTION
""")

code(r"""
# check: the right mode weights (plain Langevin gives ~1/3 each) and the mixture's mean and covariance
x_mine = my_annealed_langevin(lambda y, s: mix.score(y, 1.0, s), 6.0 * torch.randn(1000, 2, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(2)), sigmas, 100, epsilon,
                              generator=torch.Generator().manual_seed(3))
assert weight_error(x_mine) < 0.06, fractions(x_mine)
assert torch.allclose(x_mine.mean(0), mix.mean(), atol=0.2)
assert torch.allclose(torch.cov(x_mine.T), mix.covariance(), atol=0.4)
print("Exercise 2.3 passed")
""")

md(r"""
## Summary

- The score $\nabla_x \log p$ ignores the normalising constant, so it can be learned from samples: explicit score
  matching (Hyvärinen; exact but $D$ backward passes), sliced score matching (random projections; one), and
  denoising score matching (Vincent; no derivatives of the network, but it learns the score of the *noised* data).
- Langevin dynamics samples from a score, but plain Langevin fails where the data are not: scores are learned
  badly in low-density regions, and separated modes get the wrong weights.
- Noise-conditional score networks learn the score at a geometric ladder of noise levels with the
  $\sigma^2$-weighted DSM loss — which is chapter 1's $\epsilon$-prediction loss in disguise — and annealed
  Langevin walks down the ladder, with step sizes $\propto \sigma_i^2$.

Next: chapter 3 lets the ladder become continuous. DDPM and NCSN turn out to be two discretisations of one
stochastic differential equation, and its reverse gives new samplers and exact likelihoods.
""")

import sys
out = sys.argv[1] if len(sys.argv) > 1 else "chapters/02_ncsn.ipynb"
ch.write(out)
