"""Writes chapters/04_ddim.ipynb (unexecuted); run it from the repository root, then execute the notebook:

    .venv/bin/python scripts/build_ch04.py
    DIFFEDU_STATIC=1 .venv/bin/jupyter nbconvert --to notebook --execute --inplace chapters/04_ddim.ipynb
    .venv/bin/python -m diffedu.exercises --tag chapters/04_ddim.ipynb
"""
from chapter_kit import Chapter

ch = Chapter()
md, code = ch.md, ch.code

md(r"""
# 4 · Denoising diffusion implicit models

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/diffedu/diffedu/blob/main/chapters/04_ddim.ipynb)

The DDPM of chapter 1 needs a thousand network calls per sample. {cite:t}`song2021denoising` noticed that its
training loss only constrains the *marginals* $q(x_i \mid x_0)$, not the chain that connects them. Pick a
different chain with the same marginals and the same trained network samples it, in far fewer steps and, if
we like, with no randomness at all. That sampler, DDIM, is the starting point of every fast sampler in this
part of the book.

**You will learn to**

- derive DDIM's update from a non-Markovian forward process, and its noise knob $\eta$ ($\eta = 1$ is DDPM's
  ancestral step, $\eta = 0$ a deterministic map);
- check on an exact 2-D model that DDIM with $\eta = 0$ is a deterministic map from noise to data, and that
  every $\eta$ gives the same marginals;
- measure how sample quality falls as the number of steps $K$ shrinks, for DDPM and DDIM;
- choose *which* $K$ steps to take ('leading', 'trailing', 'linspace' spacing) and see what each does at the ends;
- encode data into noise by running DDIM backwards, and interpolate between samples along a great circle.
""")

ch.setup(r"""
import math
import matplotlib.pyplot as plt
import numpy as np
import torch

from diffedu import ddim, ddpm, viz
from diffedu.data import load_digits
from diffedu.metrics import digits_classifier, energy_distance, frechet_distance
from diffedu.pretrained import load_pretrained
from diffedu.schedules import linear_schedule
from diffedu.toy import ExactModel, eight_gaussians, gaussian
from diffedu.utils import setup, show_source
""")

md(r"""
## 4.1 Same marginals, a different process

Recall chapter 1. DDPM's loss draws $x_i = \sqrt{\bar\alpha_i}\, x_0 + \sqrt{1 - \bar\alpha_i}\,\epsilon$ and
regresses $\epsilon$: it only ever uses the marginal

$$
q(x_i \mid x_0) = \mathcal N\big(\sqrt{\bar\alpha_i}\, x_0,\ (1 - \bar\alpha_i) I\big).
$$

The joint law $q(x_{1:N} \mid x_0)$ of the Markov chain, which ancestral sampling reverses, never enters. So
any other process with the same marginals is "explained" by the same network. Song et al. build a whole family
of them, indexed by variances $\sigma_1, \dots, \sigma_N$, by specifying the process *backwards*. (The paper
writes $\alpha_t$ for our $\bar\alpha_i$; we keep the book's notation.) The family is

$$
q_\sigma(x_N \mid x_0) = \mathcal N\big(\sqrt{\bar\alpha_N}\, x_0,\ (1 - \bar\alpha_N) I\big),
$$

$$
q_\sigma(x_{i-1} \mid x_i, x_0) = \mathcal N\Big(\sqrt{\bar\alpha_{i-1}}\, x_0
  + \sqrt{1 - \bar\alpha_{i-1} - \sigma_i^2}\ \frac{x_i - \sqrt{\bar\alpha_i}\, x_0}{\sqrt{1 - \bar\alpha_i}},\ \
  \sigma_i^2 I\Big) \qquad \text{(their eq. 7)}.
$$

**The marginals are DDPM's** (their Lemma 1). Go down from $i = N$. Suppose
$x_i = \sqrt{\bar\alpha_i}\, x_0 + \sqrt{1-\bar\alpha_i}\,\epsilon$ with $\epsilon \sim \mathcal N(0, I)$. Then the
fraction in the mean is exactly $\epsilon$, and a draw from eq. 7 is

$$
x_{i-1} = \sqrt{\bar\alpha_{i-1}}\, x_0 + \sqrt{1 - \bar\alpha_{i-1} - \sigma_i^2}\ \epsilon + \sigma_i z,
\qquad z \sim \mathcal N(0, I) \text{ independent of } \epsilon .
$$

The two noise terms are independent Gaussians with variances $1 - \bar\alpha_{i-1} - \sigma_i^2$ and $\sigma_i^2$,
which add up to $1 - \bar\alpha_{i-1}$. So $q_\sigma(x_{i-1} \mid x_0)$ is DDPM's marginal too, for *any* choice
of $\sigma_i^2 \le 1 - \bar\alpha_{i-1}$. By Bayes' rule the forward step
$q_\sigma(x_i \mid x_{i-1}, x_0)$ (their eq. 8) still depends on $x_0$, so the process is not Markovian. Its
variational bound equals DDPM's weighted loss up to a constant (their Theorem 1). So a network trained with
chapter 1's loss serves every member of the family.

**The sampler.** To generate, replace the unknown $x_0$ by the network's guess
$\hat x_0 = (x_i - \sqrt{1 - \bar\alpha_i}\,\hat\epsilon)/\sqrt{\bar\alpha_i}$ (their eq. 9), and the fraction by
$\hat\epsilon$. One step of eq. 7 then reads

$$
x_{i-1} = \sqrt{\bar\alpha_{i-1}}\ \hat x_0
  + \sqrt{1 - \bar\alpha_{i-1} - \sigma_i^2}\ \hat\epsilon + \sigma_i z \qquad \text{(their eq. 12)}.
$$

Three terms: where the data is predicted to be, the direction pointing back to $x_i$, and fresh noise. The
noise is set by one number $\eta \ge 0$ (their eq. 16):

$$
\sigma_i(\eta) = \eta\, \sqrt{\frac{1 - \bar\alpha_{i-1}}{1 - \bar\alpha_i}}\ \sqrt{1 - \frac{\bar\alpha_i}{\bar\alpha_{i-1}}} .
$$

For consecutive steps $1 - \bar\alpha_i/\bar\alpha_{i-1} = \beta_i$. Then $\sigma_i(1)^2$ is DDPM's posterior
variance $\tilde\beta_i$, eq. 7 becomes DDPM's posterior $q(x_{i-1} \mid x_i, x_0)$ (the process is Markovian
again), and eq. 12 is DDPM's ancestral step. With $\eta = 0$ the step is deterministic: that is the
*denoising diffusion implicit model*, an implicit generative model like a GAN's generator, but evaluated in
steps.

**Skipping steps.** Nothing above needs $i - 1$ to be the *next* index. The same construction works on any
increasing sub-sequence $\tau_1 < \dots < \tau_K$ of $1, \dots, N$ (their Sec. 4.2): replace $(i - 1, i)$ by
$(\tau_{k-1}, \tau_k)$ everywhere, eq. 16 included. The network is unchanged, and the sampler makes $K \ll N$
calls. Here is the library's step, exactly as it runs ($a_i, a_j$ are $\bar\alpha$ at the current and the next,
smaller index):
""")

code(r"""
show_source(ddim.ddim_step)
""")

md(r"""
The sampler walks down a sub-sequence of indices (section 4.4 says which), calling the network once per jump.
After the last listed index it takes one more jump to $\bar\alpha = 1$, i.e. clean data:
""")

code(r"""
show_source(ddim.ddim_sample)
""")

md(r"""
**An ODE in disguise.** Divide the $\eta = 0$ step by $\sqrt{\bar\alpha_j}$ and write
$\tilde\sigma = \sqrt{(1 - \bar\alpha)/\bar\alpha}$ for the noise-to-signal ratio. The step becomes
$x_j/\sqrt{\bar\alpha_j} = x_i/\sqrt{\bar\alpha_i} + (\tilde\sigma_j - \tilde\sigma_i)\,\hat\epsilon$: an Euler
step of $d(x/\alpha)/d\tilde\sigma = \hat\epsilon$ (their Sec. 4.3). That ODE is the probability-flow ODE of
chapter 3 {cite:p}`song2021scorebased`, so deterministic DDIM is a first-order ODE solver. It becomes exact as
$K \to \infty$, and it is exact at any $K$ when $\hat x_0$ does not change along the path. Chapter 5 builds
higher-order solvers on this view {cite:p}`lu2022dpmsolverpp,karras2022elucidating`.

## 4.2 A deterministic map, with the marginals of DDPM: checked on an exact model

The eight-Gaussian mixture of chapter 1 has an exact $\epsilon$-predictor, `ExactModel`. Any error we see with
it is the sampler's, not a network's. First, **determinism**. Below, every point of a grid of starting noises
$x_N$ is coloured by the cluster its sample lands in. With $\eta = 0$ noise space splits into eight clean
sectors: DDIM is a function from noise to data. With $\eta = 1$ the same starting point can end in different
clusters, so the picture is speckled. On the right, paths from the same ten starting points: $\eta = 0$ run
twice (the thin black path runs inside the thick grey one) and $\eta = 1$ with two noise seeds.
""")

code(r"""
schedule = linear_schedule()  # Ho et al.'s chain: N = 1000, beta from 1e-4 to 0.02 (float64)
gmm = eight_gaussians()
exact = ExactModel(gmm, schedule, prediction="eps")  # a perfect eps-network, in closed form
cluster_of = lambda x: torch.cdist(x.double(), gmm.means).argmin(1)  # nearest of the eight means

side = 100
u = torch.linspace(-3, 3, side, dtype=torch.float64)
grid = torch.stack(torch.meshgrid(u, u.flip(0), indexing="xy"), -1).reshape(-1, 2)  # rows from top to bottom
basins = {eta: cluster_of(ddim.ddim_sample(exact, grid, schedule, 20, eta=eta, progress=False,
                                           generator=torch.Generator().manual_seed(0))).reshape(side, side)
          for eta in (0.0, 1.0)}

starts = 1.5 * torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
paths = {}
for label, eta, seed in [("η = 0, run 1", 0.0, 0), ("η = 0, run 2", 0.0, 1), ("η = 1, seed 2", 1.0, 2),
                         ("η = 1, seed 3", 1.0, 3)]:
    _, traj, _ = ddim.ddim_sample(exact, starts, schedule, 50, eta=eta, progress=False, return_trajectory=True,
                                  generator=torch.Generator().manual_seed(seed))
    paths[label] = torch.stack(traj).numpy()  # (51, 6, 2)

cmap = plt.matplotlib.colors.ListedColormap(viz.PALETTE)
fig, axes = plt.subplots(1, 3, figsize=(7.2, 2.9))
for ax, eta in zip(axes[:2], (0.0, 1.0)):
    ax.imshow(basins[eta].numpy(), cmap=cmap, extent=(-3, 3, -3, 3), vmin=-0.5, vmax=7.5)
    ax.scatter(*gmm.means.T, s=14, c="white", edgecolors="k", linewidths=0.6)
    ax.set(title=f"η = {eta:g}: cluster reached", xlabel="start $x_N$, coordinate 1", ylabel="coordinate 2")
    ax.grid(False)
ax = axes[2]
styles = {"η = 0, run 1": dict(color="0.7", lw=3.5, zorder=2), "η = 0, run 2": dict(color="k", lw=1.0, zorder=3),
          "η = 1, seed 2": dict(color=viz.PALETTE[1], lw=0.7, alpha=0.7, zorder=1),
          "η = 1, seed 3": dict(color=viz.PALETTE[0], lw=0.7, alpha=0.7, zorder=1)}
for label, tr in paths.items():
    for k in range(tr.shape[1]):
        ax.plot(tr[:, k, 0], tr[:, k, 1], label=label if k == 0 else None, **styles[label])
ax.scatter(*starts.T, s=16, facecolors="white", edgecolors="k", linewidths=0.8, zorder=4)
ax.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal", title="Paths from six starts ○", xlabel="$x_1$", ylabel="$x_2$")
fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize=8)
fig.suptitle("DDIM with the exact model: η = 0 is a map from noise to data", fontsize=11)
plt.show()
same = (paths["η = 0, run 1"] == paths["η = 0, run 2"]).all()
ends = [cluster_of(torch.tensor(paths[f"η = 1, seed {s}"][-1])) for s in (2, 3)]
print(f"eta = 0: the two runs are identical: {bool(same)}.  eta = 1: the two seeds end in the same cluster "
      f"for {int((ends[0] == ends[1]).sum())} of {len(starts)} starts")
""")

md(r"""
**Expected output:** eight wedge-shaped sectors on the left (each a cluster's share of noise space, about one
eighth each) and salt and pepper in the middle. On the right, each black $\eta = 0$ path runs exactly inside
its grey twin, while the two coloured $\eta = 1$ runs zigzag apart.

**Same marginals.** The derivation says every $\eta$ has DDPM's marginals at every step. With the exact model
we can check that along the way, not only at the end. $q(x_i)$ is itself a Gaussian mixture with known
components: its density is drawn as contours below, under the sampler's $x_i$ for three values of $\eta$. In
each panel's corner is the energy distance (chapter 1) between the sampler's points and a direct sample of
$q(x_i)$. Two independent samples of $q(x_i)$ set the floor, printed below the figure.
""")

code(r"""
n, K = 2000, 50
x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
seq = ddim.spaced_indices(schedule.N, K).tolist() + [0]  # the visited indices: 1000, 980, ..., 20, then 0
shown = [600, 300, 100, 0]


def exact_marginal(i):
    a = schedule.alpha_bars[i].sqrt().item()
    return gmm.marginal(a, math.sqrt(1 - a ** 2))


etas = (0.0, 0.5, 1.0)
states = {}
for eta in etas:
    _, traj, _ = ddim.ddim_sample(exact, x_T, schedule, K, eta=eta, progress=False, return_trajectory=True,
                                  generator=torch.Generator().manual_seed(3))
    states[eta] = {i: traj[seq.index(i)] for i in shown}
reference = {i: exact_marginal(i).sample(n, torch.Generator().manual_seed(10 + i))[0] for i in shown}
floor = {i: energy_distance(exact_marginal(i).sample(n, torch.Generator().manual_seed(5000 + i))[0], reference[i])
         for i in shown}

u = torch.linspace(-3.2, 3.2, 121, dtype=torch.float64)
mesh = torch.stack(torch.meshgrid(u, u, indexing="xy"), -1).reshape(-1, 2)
fig, axes = plt.subplots(3, 4, figsize=(7.2, 5.6), sharex=True, sharey=True)
for c, i in enumerate(shown):
    density = exact_marginal(i).log_prob(mesh).exp().reshape(121, 121)
    for r, eta in enumerate(etas):
        ax = axes[r, c]
        ax.contour(u, u, density, levels=5, colors="0.5", linewidths=0.6)
        ax.scatter(*states[eta][i][:600].T, s=1.5, alpha=0.6, color=viz.PALETTE[r], linewidths=0)
        ed = energy_distance(states[eta][i], reference[i])
        ax.text(0.03, 0.03, f"ED {ed:.3f}", transform=ax.transAxes, fontsize=8)
        ax.set(xlim=(-3.2, 3.2), ylim=(-3.2, 3.2), aspect="equal", xticks=[-2, 0, 2], yticks=[-2, 0, 2])
        if r == 0:
            ax.set_title(f"i = {i}")
        if c == 0:
            ax.set_ylabel(f"η = {eta:g}")
fig.suptitle(f"DDIM's x_i (dots) over the exact marginal q(x_i) (contours), exact model, K = {K}", fontsize=11)
plt.show()
print("floor, energy distance between two samples of q(x_i): "
      + ", ".join(f"i = {i}: {floor[i]:.3f}" for i in shown))
""")

md(r"""
**Expected output:** the three rows look alike, and every energy distance is within a few thousandths of the
floor. The samplers differ in *how* they move each point, not in *where the cloud is*.

And $\eta = 1$ really is DDPM. On the same indices and with the same noise stream it reproduces ancestral
sampling with $\sigma^2 = \tilde\beta$ (chapter 1's `ddpm_sample`, respaced to the same $K$ steps) to rounding
error:
""")

code(r"""
g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
via_ddpm = ddpm.ddpm_sample(exact, x_T[:500], schedule, steps=50, variance="beta_tilde", generator=g1, progress=False)
via_ddim = ddim.ddim_sample(exact, x_T[:500], schedule, 50, eta=1.0, generator=g2, progress=False)
print(f"max |DDPM(beta_tilde) - DDIM(eta = 1)| over 500 samples, K = 50: {(via_ddpm - via_ddim).abs().max().item():.0e}")
""")

md(r"""
## 4.3 Fewer steps on a real model

Now the chapter 1 digits model (`ddpm_digits`: a small UNet trained on 8×8 digits with the 1000-step linear
chain). We sample it with $K$ network calls in three ways:

- DDPM's ancestral sampler on the respaced chain, with its default variance $\sigma^2 = \beta$ of each jump;
- DDIM with $\eta = 1$, which is the same sampler with $\sigma^2 = \tilde\beta$ (section 4.2);
- DDIM with $\eta = 0$, deterministic.

All three start from the same noises. Two measures from chapter 1 score the samples. The **pixel Fréchet
distance** to the held-out digits compares means and covariances of the raw pixels. With a few hundred samples
it has a floor of its own, given by as many *training* digits. The **reader** is a logistic-regression digit
classifier, and we report the share of samples it reads with at least 90 % confidence. In quick mode we draw 200
samples at $K$ = 5 to 100; full mode adds $K$ = 1000 and uses 1000 samples.
""")

code(r"""
unet = load_pretrained("ddpm_digits", device=device)
test, train_digits = load_digits(split="test"), load_digits(split="train")
reader = digits_classifier()
flat = lambda x: x.reshape(len(x), -1).cpu()
n_eval = 1000 if cfg.full else 200
Ks = [5, 10, 20, 50, 100, 1000] if cfg.full else [5, 10, 20, 50, 100]
z_digits = torch.randn(n_eval, 1, 8, 8, generator=torch.Generator(device).manual_seed(5), device=device)
gen = lambda: torch.Generator(device).manual_seed(6)
samplers = {
    "DDPM, σ² = β": lambda K: ddpm.ddpm_sample(unet, z_digits, schedule, steps=K, generator=gen(), progress=False),
    "DDIM, η = 1": lambda K: ddim.ddim_sample(unet, z_digits, schedule, K, eta=1.0, generator=gen(), progress=False),
    "DDIM, η = 0": lambda K: ddim.ddim_sample(unet, z_digits, schedule, K, eta=0.0, progress=False),
}
results, grids = {}, {}
for name, sample in samplers.items():
    for K in Ks:
        x = sample(K).clamp(-1, 1).cpu()
        results[name, K] = (frechet_distance(flat(x), flat(test.x)), reader.summary(x)["confident_fraction"])
        if K == 10:
            grids[name] = x[:24]
fd_floor = frechet_distance(flat(train_digits.x[:n_eval]), flat(test.x))
real_confident = reader.summary(test.x)["confident_fraction"]

print(f"{'K':>5} | " + " | ".join(f"{name:^17}" for name in samplers))
print(f"{'':>5} | " + " | ".join(f"{'pixel FD  read %':^17}" for _ in samplers))
for K in Ks:
    print(f"{K:>5} | " + " | ".join(f"{results[name, K][0]:7.2f}  {100 * results[name, K][1]:6.0f}  " for name in samplers))
print(f"reference: {n_eval} training digits have pixel FD {fd_floor:.2f}; the reader is sure of "
      f"{100 * real_confident:.0f} % of held-out digits")

fig, axes = plt.subplots(1, 2, figsize=(7.2, 2.9))
for (name, _), marker in zip(samplers.items(), "o^s"):
    axes[0].plot(Ks, [results[name, K][0] for K in Ks], marker=marker, ms=4, label=name)
    axes[1].plot(Ks, [100 * results[name, K][1] for K in Ks], marker=marker, ms=4, label=name)
axes[0].axhline(fd_floor, color="k", ls="--", lw=1, label=f"{n_eval} training digits")
axes[1].axhline(100 * real_confident, color="k", ls="--", lw=1, label="held-out digits")
axes[0].set(xscale="log", xlabel="network calls K", ylabel="pixel FD to held-out digits", title="Fréchet distance (lower is better)")
axes[1].set(xscale="log", xlabel="network calls K", ylabel="% read with ≥ 90 % confidence", title="Legibility (higher is better)")
for ax in axes:
    ax.set_xticks(Ks, [str(K) for K in Ks])
    ax.minorticks_off()
axes[0].legend()
plt.show()

fig, axes = plt.subplots(1, 3, figsize=(7.2, 2.3))
for ax, (name, x) in zip(axes, grids.items()):
    viz.image_grid(x, nrow=6, ax=ax, title=f"{name}, K = 10")
plt.show()
""")

md(r"""
**Expected output:** all three improve steeply from $K = 5$ to 20. At $K = 5$ the deterministic sampler
($\eta = 0$) is best or tied on both measures, while DDIM with $\eta = 1$ has by far the worst FD and DDPM's
$\sigma^2 = \beta$ the fewest legible digits. With more steps the ranking turns. By $K = 50$–100 the two
stochastic samplers reach the references (FD at or below that of 200 training digits, 85–90 % legible), while
$\eta = 0$ levels off just above them (FD about 1.05, about 80 % legible). Differences of about 0.1 in FD or 3 points of legibility are within the noise of 200
samples, so look at the samples too (bottom row).

Why does the ranking turn? Each stochastic jump replaces part of $x$ by fresh noise. With few, large jumps that
noise is itself a large error, which the next jump, a poor denoiser over a long stretch, cannot undo. With many
small jumps the same noise is what lets the sampler forget the network's earlier mistakes. The deterministic
sampler follows the flow of the *learned* model, errors included, all the way down.
{cite:t}`karras2022elucidating` study this trade-off. {cite:t}`song2021denoising` (their Table 1) see the
same pattern by FID on CIFAR-10 and CelebA: $\eta = 0$ is best at few steps and $\sigma^2 = \beta$ worst, yet
with all 1000 steps $\sigma^2 = \beta$ is best.

## 4.4 Which steps? Spacing, and what happens at the ends

A $K$-step sampler must pick $K$ of the $N = 1000$ indices. Three rules are in use, under diffusers' names
(`ddim.spaced_indices`):

- **'leading'** (the DDIM paper's code, and the default in many libraries): $i = k\,\lfloor N/K \rfloor + 1$
  (+ `steps_offset`), $k = 0, \dots, K-1$. It never visits $i = N$: it *starts* at
  $(K-1)N/K + 1$ (for $K$ dividing $N$), where $x$ still holds some signal, yet it is handed pure noise.
- **'trailing'**: $i = \mathrm{round}(kN/K)$, $k = K, \dots, 1$. It starts at $i = N$, where $x_N \sim \mathcal N(0, I)$ is (nearly)
  right. Its last listed index is $N/K$, so the final jump to clean data is a big one.
  {cite:t}`lin2024common` recommend it together
  with a schedule whose terminal SNR is zero.
- **'linspace'**: $K$ indices evenly spread from 1 to $N$ inclusive, so it has both ends.

After the last listed index every rule takes one more jump, to index 0 ($\bar\alpha = 1$,
`set_alpha_to_one=True`) or to index 1 ($\bar\alpha_1 = 1 - \beta_1$, as Stable Diffusion's configuration does).
""")

code(r"""
show_source(ddim.spaced_indices)
""")

code(r"""
spacings = ("leading", "trailing", "linspace")
lam = schedule.log_snr(schedule.times[1:])  # log-SNR at i = 1..N (infinite at i = 0)
fig, axes = plt.subplots(1, 3, figsize=(7.2, 3.0), gridspec_kw={"width_ratios": [1.3, 1, 1]})
ax = axes[0]
for row, spacing in enumerate(spacings):
    idx = ddim.spaced_indices(schedule.N, 10, spacing)
    ax.plot([int(idx[-1]), 0], [row, row], color=viz.PALETTE[row], ls=":", lw=1.2)  # the final jump
    ax.scatter(idx, [row] * len(idx), color=viz.PALETTE[row], s=18, zorder=3)
    ax.scatter([0], [row], facecolors="white", edgecolors=viz.PALETTE[row], s=18, zorder=3)
ax.axvline(schedule.N, color="k", lw=0.8, ls="--")
ax.set(yticks=range(3), yticklabels=spacings, xlabel="index i (N = 1000)", title="K = 10 (○ final index 0)",
       ylim=(-0.6, 2.6), xlim=(-30, 1060))
Kr = np.arange(2, 101)
styles = [dict(lw=2.2), dict(lw=1.4, ls="--"), dict(lw=1.4, ls=":")]
for row, spacing in enumerate(spacings):
    first = torch.tensor([int(ddim.spaced_indices(schedule.N, int(K), spacing)[0]) for K in Kr])
    last = torch.tensor([int(ddim.spaced_indices(schedule.N, int(K), spacing)[-1]) for K in Kr])
    for ax, ends in zip(axes[1:], (first, last)):
        ax.plot(Kr, lam[ends - 1], color=viz.PALETTE[row], label=spacing, **styles[row])
axes[1].set(ylabel="log-SNR λ at the first index", title="Where it starts")
axes[2].set(ylabel="log-SNR λ at the last index", title="Where it hands over")
axes[1].text(2.2, lam[-1] - 0.2, "trailing, linspace: i = N", fontsize=8, va="top")
axes[1].set_ylim(lam[-1] - 1.1, None)
axes[2].text(3, lam[0] - 1.2, "leading, linspace: i = 1", fontsize=8)
for ax in axes[1:]:
    ax.set_xscale("log")
    ax.set_xticks([2, 5, 10, 20, 50, 100], ["2", "5", "10", "20", "50", "100"])
    ax.minorticks_off()
    ax.set_xlabel("steps K")
axes[2].legend(loc="center right", fontsize=8)
fig.suptitle("Three ways to pick K of the N indices", fontsize=11)
plt.show()

for spacing in spacings:
    idx = ddim.spaced_indices(schedule.N, 10, spacing)
    a_first, a_last = schedule.alpha_bars[idx[0]].item(), schedule.alpha_bars[idx[-1]].item()
    print(f"{spacing:>8}, K = 10: first i = {int(idx[0]):4d} (alpha_bar {a_first:.1e}, signal std {math.sqrt(a_first):.3f}), "
          f"last i = {int(idx[-1]):3d} (alpha_bar {a_last:.4f})")
print(f"pure noise would be i = {schedule.N}: alpha_bar {schedule.alpha_bars[-1].item():.1e}, "
      f"signal std {schedule.alpha_bars[-1].sqrt().item():.3f}")
""")

md(r"""
**Expected output:** 'leading' starts at $i = 901$, where a fraction $\sqrt{\bar\alpha} \approx 0.016$ of the
image should still be there, and its start drifts further from pure noise as $K$ shrinks (middle panel).
'Trailing' always starts at $N$. At the other end, 'trailing' hands over at $\lambda \approx 2$ for $K = 10$,
leaving the last jump to do a lot, while 'leading' and 'linspace' have already reached $i = 1$ ($\lambda \approx 9$).
For Ho et al.'s linear schedule the start mismatch is small: $\bar\alpha_N \approx 4 \cdot 10^{-5}$, not 0.
For schedules trained up to a larger $\bar\alpha_N$ it matters a lot {cite:p}`lin2024common`.

How much does it matter here? DDIM ($\eta = 0$) on the digits at $K = 5$ and $10$, same noises as above:
""")

code(r"""
lines = [f"{'spacing':>9} | {'K = 5: FD  read %':^19} | {'K = 10: FD  read %':^19}"]
for spacing in spacings:
    row = []
    for K in (5, 10):
        if spacing == "trailing":
            fd, conf = results["DDIM, η = 0", K]  # computed above: trailing is the library's default
        else:
            x = ddim.ddim_sample(unet, z_digits, schedule, K, spacing=spacing, progress=False).clamp(-1, 1).cpu()
            fd, conf = frechet_distance(flat(x), flat(test.x)), reader.summary(x)["confident_fraction"]
        row.append(f"{fd:9.2f}  {100 * conf:6.0f}  ")
    lines.append(f"{spacing:>9} | " + " | ".join(row))
print("\n".join(lines))
""")

md(r"""
**Expected output:** at $K = 10$ the three spacings are within noise of each other. At $K = 5$ 'linspace' is
clearly worse. Its indices are 1000, 750, 501, 251 and 1, so it spends one of its five calls on the step from
$i = 1$ to 0, which changes almost nothing, and pays for it with a huge jump from 251 to 1. 'Leading' wastes
the same last call but starts at 801 and takes shorter jumps. Which rule wins depends on the model, the
schedule and $K$, so measure it rather than assume it. The library defaults to 'trailing', which is right by
construction at the noisy end and never wastes a call.

## 4.5 Deterministic encoding: running DDIM backwards

An ODE can be integrated in either direction. Running the $\eta = 0$ step upwards, from data to noise, gives
an *encoder* $x_0 \mapsto x_N$ that the sampler decodes back (their Sec. 5.4). No extra training is needed. The
library's inverse jump shows the network the *target* time, an explicit approximation of the exact inverse,
as diffusers' `DDIMInverseScheduler` does. That approximation, and the sampler's own Euler error, make
decode(encode($x_0$)) differ from $x_0$ by an amount that shrinks like $1/K$:
""")

code(r"""
show_source(ddim.ddim_invert)
""")

code(r"""
Ks_inv = [5, 10, 20, 50, 100, 200] if cfg.full else [5, 10, 20, 50]
digits_in = test.x[:32].to(device)
points_in = gmm.sample(500, torch.Generator().manual_seed(7))[0]
rmse = lambda a, b: (a.cpu().double() - b.cpu().double()).pow(2).mean().sqrt().item()
errors = {"digits UNet": [], "2-D exact model": []}
codes, decoded = {}, {}
for K in Ks_inv:
    codes[K] = ddim.ddim_invert(unet, digits_in, schedule, K, progress=False)
    decoded[K] = ddim.ddim_sample(unet, codes[K], schedule, K, progress=False)
    errors["digits UNet"].append(rmse(decoded[K], digits_in))
    z2 = ddim.ddim_invert(exact, points_in, schedule, K, progress=False)
    errors["2-D exact model"].append(rmse(ddim.ddim_sample(exact, z2, schedule, K, progress=False), points_in))

fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.0), gridspec_kw={"width_ratios": [1, 1.2]})
ax = axes[0]
for (name, err), marker in zip(errors.items(), "os"):
    ax.plot(Ks_inv, err, marker=marker, ms=4, label=name)
ref = errors["digits UNet"][-1] * Ks_inv[-1] / np.array(Ks_inv, dtype=float)
ax.plot(Ks_inv, ref, "k--", lw=1, label="∝ 1/K")
ax.set(xscale="log", yscale="log", xlabel="steps K (each way)", ylabel="RMSE of decode(encode(x₀))",
       title="Reconstruction error")
ax.set_xticks(Ks_inv, [str(K) for K in Ks_inv])
ax.set_yticks([0.02, 0.05, 0.1, 0.2], ["0.02", "0.05", "0.1", "0.2"])
ax.minorticks_off()
ax.legend()
K_lo, K_hi = Ks_inv[1], Ks_inv[-1]
rows = torch.cat([digits_in[:8], codes[K_hi][:8] / 3, decoded[K_lo][:8].clamp(-1, 1), decoded[K_hi][:8].clamp(-1, 1)])
viz.image_grid(rows.cpu(), nrow=8, ax=axes[1], title="Encode, then decode")
for r, label in enumerate(["data x₀", "code x_N ÷ 3", f"decoded, K = {K_lo}", f"decoded, K = {K_hi}"]):
    axes[1].text(-1.5, 1 + 9 * r + 3.5, label, ha="right", va="center", fontsize=8)
plt.show()
lines = ["RMSE of decode(encode(x0)), data in [-1, 1]:"]
for name, err in errors.items():
    lines.append(f"  {name:>16}: " + ", ".join(f"K={K} {e:.3f}" for K, e in zip(Ks_inv, err)))
lines.append(f"codes at K = {K_hi}: mean {codes[K_hi].mean().item():.2f}, std {codes[K_hi].std().item():.2f} "
             f"(pure noise: 0 and 1)")
print("\n".join(lines))
""")

md(r"""
**Expected output:** both errors fall with $K$, approaching the $1/K$ line, and at $K = 50$ the decoded digits
are hard to tell from the originals (RMSE about 0.04 on a [-1, 1] scale). The exact 2-D model has errors of the
same size: they come from the discretisation, not from the network. The codes look like noise, but they are
not samples of $\mathcal N(0, I)$: their spread is smaller (std about 0.8). A code is a deterministic function
of the image that decodes back to it, so it can be edited and decoded, which is the basis of chapter 13's
image editing.

## 4.6 Interpolating in noise space: slerp

With $\eta = 0$ a sample is a function of its starting noise, so moving the noise moves the sample smoothly.
How should we move between two noises $z_0, z_1 \in \mathbb R^{64}$? A straight line fails: independent
Gaussian vectors are nearly orthogonal with norm close to $\sqrt D$, and their midpoint
$\tfrac12(z_0 + z_1)$ has norm close to $\sqrt{D/2}$. That is far less than any noise the model has seen, since
in 64 dimensions the norm of $\mathcal N(0, I)$ concentrates near $8 \pm 0.7$. DDIM (their Sec. 5.3)
interpolates along the great circle instead, by spherical linear interpolation {cite:p}`shoemake1985animating`:

$$
\mathrm{slerp}(z_0, z_1; a) = \frac{\sin((1-a)\theta)}{\sin\theta}\, z_0 + \frac{\sin(a\theta)}{\sin\theta}\, z_1,
\qquad \cos\theta = \frac{\langle z_0, z_1\rangle}{\lVert z_0\rVert\, \lVert z_1\rVert}.
$$
""")

code(r"""
a = torch.linspace(0, 1, 11)
z0, z1 = torch.randn(2, 1, 1, 8, 8, generator=torch.Generator().manual_seed(8)).to(device)
z_slerp = ddim.slerp(z0.expand(11, -1, -1, -1), z1.expand(11, -1, -1, -1), a)
z_lerp = (1 - a.to(device))[:, None, None, None] * z0 + a.to(device)[:, None, None, None] * z1
# two real held-out digits (a 0 and a 7), through their K = 50 codes from section 4.5
pair = codes[50][[24, 0]]
z_real = ddim.slerp(pair[:1].expand(11, -1, -1, -1), pair[1:].expand(11, -1, -1, -1), a)
strip = ddim.ddim_sample(unet, torch.cat([z_slerp, z_lerp, z_real]), schedule, 50, progress=False).clamp(-1, 1).cpu()

ax = viz.image_grid(strip, nrow=11, title="Interpolating the starting noise, then sampling with DDIM (η = 0, K = 50)")
for r, label in enumerate(["slerp", "straight\nline", "slerp of two\nreal digits' codes"]):
    ax.text(-1.5, 1 + 9 * r + 3.5, label, ha="right", va="center", fontsize=8)
plt.show()

fig, axes = plt.subplots(1, 2, figsize=(7.2, 2.6))
axes[0].axhspan(8 - 0.7, 8 + 0.7, color="0.88", label="typical |z| ± 1 sd")
axes[0].plot(a, z_slerp.flatten(1).norm(dim=1).cpu(), marker="o", ms=3, label="slerp")
axes[0].plot(a, z_lerp.flatten(1).norm(dim=1).cpu(), marker="s", ms=3, label="straight line")
axes[0].set(xlabel="a", ylabel="norm |z|", title="Noise: norm along the path", ylim=(0, 10))
axes[0].legend(fontsize=8, loc="lower left")
axes[1].plot(a, strip[:11].flatten(1).std(dim=1), marker="o", ms=3, label="slerp")
axes[1].plot(a, strip[11:22].flatten(1).std(dim=1), marker="s", ms=3, label="straight line")
axes[1].axhline(test.x.flatten(1).std(dim=1).mean().item(), color="k", ls="--", lw=1, label="held-out digits (mean)")
axes[1].set(xlabel="a", ylabel="pixel std of the sample", title="Sample: pixel std along the path", ylim=(0, None))
axes[1].legend(fontsize=8, loc="lower left")
plt.show()
cos = torch.nn.functional.cosine_similarity(z0.flatten(), z1.flatten(), dim=0).item()
print(f"angle between the two noises: {math.degrees(math.acos(cos)):.0f} degrees; at a = 0.5 the norm is "
      f"{z_slerp[5].norm().item():.1f} (slerp) and {z_lerp[5].norm().item():.1f} (straight line), and the sample's "
      f"pixel std {strip[5].std().item():.2f} and {strip[16].std().item():.2f}")
""")

md(r"""
**Expected output:** the slerp row turns one digit into another through digit-like images. The bottom row
starts and ends at two real held-out digits (a 0 and a 7), decoded from their codes. The straight line's noise
shrinks to a norm of about 5.3 half-way, more than three standard deviations below typical noise, so the
network is fed inputs it never saw in training. This small model is forgiving: its straight-line row is almost
the same as the slerp row, and the samples keep their contrast (right). Large image models are less forgiving,
and the straight line's middle tends to come out blurry and washed out. Slerp costs nothing and keeps every
point typical, so it is the safe default.

## Exercises

Each exercise has a code cell for your answer (in the book the solution is folded away; click to show it) and a
check cell that compares it with a closed form.

**Exercise 4.1: the $\eta$ that gives DDPM.** Write `ddim_sigma2(a_i, a_j, eta)`, the variance
$\sigma(\eta)^2$ of eq. 16 for a jump from $\bar\alpha_i = $ `a_i` to $\bar\alpha_j = $ `a_j` ($j < i$). The check
confirms that $\eta = 1$ gives DDPM's $\tilde\beta_i$ on consecutive steps and the respaced chain's
$\tilde\beta$ on jumps. It also checks that with the true $x_0$ and $\epsilon$ the DDIM mean is DDPM's posterior
mean $\tilde\mu_i$.
""")

code(r"""
def ddim_sigma2(a_i, a_j, eta):
    ### BEGIN SOLUTION
    return eta ** 2 * (1 - a_j) / (1 - a_i) * (1 - a_i / a_j)
    ### END SOLUTION
""")

code(r"""
# check: eta = 1 is beta_tilde (consecutive steps and a respaced chain), eta = 0 is deterministic, and the mean is mu_tilde
ab = schedule.alpha_bars
for i in (2, 10, 500, 1000):
    assert math.isclose(float(ddim_sigma2(ab[i], ab[i - 1], 1.0)), float(schedule.posterior_variance(torch.tensor(i))), rel_tol=1e-9)
    assert float(ddim_sigma2(ab[i], ab[i - 1], 0.0)) == 0.0
sub = schedule.evenly_spaced(10)  # the respaced chain that ddpm_sample uses: its beta_tilde are those of the jumps
tau = ddim.spaced_indices(schedule.N, 10).flip(0).tolist()  # 100, 200, ..., 1000
for k in range(2, 11):
    assert math.isclose(float(ddim_sigma2(ab[tau[k - 1]], ab[tau[k - 2]], 1.0)),
                        float(sub.posterior_variance(torch.tensor(k))), rel_tol=1e-9)
x0_c, eps_c = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
i = 300
x_i = ab[i].sqrt() * x0_c + (1 - ab[i]).sqrt() * eps_c
mean_ddim = ddim.ddim_step(x_i, x0_c, eps_c, float(ab[i]), float(ab[i - 1]), eta=1.0, noise=torch.zeros_like(x_i))
assert torch.allclose(mean_ddim, ddpm.q_posterior(schedule, x0_c, x_i, torch.full((4,), i))[0])
print("Exercise 4.1 passed")
""")

md(r"""
**Exercise 4.2: DDIM on a Gaussian.** For data $x_0 \sim \mathcal N(0, s^2 I)$ the exact denoiser is linear,
$\hat x_0 = \sqrt{\bar\alpha_i}\, s^2 x_i / v_i$ with $v_i = \bar\alpha_i s^2 + 1 - \bar\alpha_i$. So one
deterministic DDIM jump is a multiplication, $x_j = g\, x_i$. Write `ddim_gain(s2, a_i, a_j)` returning $g$. The
check compares your gains with the library's sampler on the exact model, and with three closed forms. For a
point mass ($s = 0$) DDIM is exact, $g = \sqrt{(1 - \bar\alpha_j)/(1 - \bar\alpha_i)}$. For $s = 1$ the exact
flow is the identity, but one jump gives $g = \cos(\theta_i - \theta_j)$ with $\sqrt{\bar\alpha} = \cos\theta$,
which is less than 1. As $K$ grows the $K$-step gain tends to the exact flow's $\sqrt{v_0 / v_N}$.
""")

code(r"""
def ddim_gain(s2, a_i, a_j):
    ### BEGIN SOLUTION
    v_i = a_i * s2 + 1 - a_i
    x0_coef = math.sqrt(a_i) * s2 / v_i  # x0_hat = x0_coef * x_i
    eps_coef = (1 - math.sqrt(a_i) * x0_coef) / math.sqrt(1 - a_i)  # eps_hat = eps_coef * x_i
    return math.sqrt(a_j) * x0_coef + math.sqrt(1 - a_j) * eps_coef
    ### END SOLUTION
""")

code(r"""
# check: the library's DDIM on the exact Gaussian model multiplies x_N by the product of your gains
ab = schedule.alpha_bars.tolist()
def k_step_gain(s2, K):
    seq = ddim.spaced_indices(schedule.N, K).tolist() + [0]
    return math.prod(ddim_gain(s2, ab[i], ab[j]) for i, j in zip(seq[:-1], seq[1:]))

s = 0.5
model = ExactModel(gaussian(torch.zeros(3), s), schedule)  # N(0, s^2 I) in 3-D, exact eps-predictor
x_N = torch.randn(6, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
for K in (1, 3, 10):
    assert torch.allclose(ddim.ddim_sample(model, x_N, schedule, K, progress=False), k_step_gain(s ** 2, K) * x_N)
assert math.isclose(ddim_gain(0.0, ab[800], ab[300]), math.sqrt((1 - ab[300]) / (1 - ab[800])), rel_tol=1e-12)
th = lambda a: math.acos(math.sqrt(a))
assert math.isclose(ddim_gain(1.0, ab[800], ab[300]), math.cos(th(ab[800]) - th(ab[300])), rel_tol=1e-12)
exact_gain = math.sqrt(s ** 2 / (ab[-1] * s ** 2 + 1 - ab[-1]))  # the probability-flow ODE maps N(0, v_N) to N(0, s^2)
errs = [abs(k_step_gain(s ** 2, K) - exact_gain) for K in (10, 100, 1000)]
assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-2 * exact_gain
print("Exercise 4.2 passed; K-step gain - exact gain for K = 10, 100, 1000:", ", ".join(f"{e:.1e}" for e in errs))
""")

md(r"""
**Exercise 4.3: spherical interpolation.** Write `my_slerp(z0, z1, a)` for two vectors `z0`, `z1` of shape (D,)
and a number `a` in [0, 1], using the formula of section 4.6. The check compares it with the library. It also
checks that slerp keeps the norm of equal-norm vectors, moves at a constant angular speed, and that the
straight line's midpoint between two independent noises has norm close to $\sqrt{D/2}$.
""")

code(r"""
def my_slerp(z0, z1, a):
    ### BEGIN SOLUTION
    theta = torch.arccos(torch.dot(z0, z1) / (z0.norm() * z1.norm()))
    return (torch.sin((1 - a) * theta) * z0 + torch.sin(a * theta) * z1) / torch.sin(theta)
    ### END SOLUTION
""")

code(r"""
# check: the library, norm preservation, constant angular speed, and the straight line's shrinking midpoint
D = 4096
u0, u1 = torch.randn(2, D, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
for a_ in (0.0, 0.3, 0.5, 1.0):
    assert torch.allclose(my_slerp(u0, u1, a_), ddim.slerp(u0[None], u1[None], a_)[0])
w1 = u1 * u0.norm() / u1.norm()  # same norm as u0
theta = torch.arccos(torch.dot(u0, w1) / u0.norm() ** 2)
for a_ in (0.25, 0.5, 0.9):
    z = my_slerp(u0, w1, a_)
    assert math.isclose(z.norm().item(), u0.norm().item(), rel_tol=1e-9)
    assert math.isclose(torch.arccos(torch.dot(u0, z) / u0.norm() ** 2).item(), a_ * theta.item(), rel_tol=1e-6)
assert abs(((u0 + u1) / 2).norm().item() / math.sqrt(D / 2) - 1) < 0.05
print("Exercise 4.3 passed")
""")

md(r"""
## Summary

- DDPM's loss only sees the marginals $q(x_i \mid x_0)$. A family of non-Markovian processes shares them, and
  with them the trained network. Its reverse step (eq. 12) has one noise knob: $\eta = 1$ is DDPM's ancestral
  sampler with $\tilde\beta$, and $\eta = 0$ is deterministic DDIM.
- The construction works on any sub-sequence of indices, so $K \ll N$ network calls suffice. With few steps
  the deterministic sampler holds up best; with many, the stochastic ones catch up and pass it. Which indices
  you pick matters at both ends: 'trailing' starts from true noise, 'leading' and 'linspace' spend a call
  near clean data.
- Deterministic DDIM is an Euler solver of the probability-flow ODE. It can be run backwards to encode data
  (reconstruction error $\propto 1/K$), and slerp in its noise space interpolates between samples.

Next: chapter 5 replaces DDIM's first-order step by higher-order ODE solvers (Heun, PLMS, DPM-Solver++) and
asks how few network calls are enough.
""")

ch.write("chapters/04_ddim.ipynb")
