"""Writes chapters/03_sde.ipynb (unexecuted); run it, then execute the notebook.

    .venv/bin/python scripts/build_ch03.py
    DIFFEDU_STATIC=1 .venv/bin/jupyter nbconvert --to notebook --execute --inplace chapters/03_sde.ipynb
    .venv/bin/python -m diffedu.exercises --tag chapters/03_sde.ipynb
"""
import os

from chapter_kit import Chapter

WITH_NCSN = os.environ.get("CH03_NCSN", "1") != "0"  # the chapter-2 checkpoint section (needs ncsn_digits)

ch = Chapter()
md, code = ch.md, ch.code

md(r"""
# 3 · Score SDEs

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/diffedu/diffedu/blob/main/chapters/03_sde.ipynb)

Chapter 1 added noise in 1000 small steps; chapter 2 in a ladder of noise levels. Let the steps shrink to zero
and both become a **stochastic differential equation** (SDE) that turns data into noise continuously.
{cite:t}`song2021scorebased` showed that this one idea unifies DDPM and NCSN, and that everything we want follows
from the score $\nabla_x \log p_t(x)$: a reverse-time SDE that generates data {cite:p}`anderson1982reverse`, new
samplers, and a deterministic **probability-flow ODE** that gives exact likelihoods.

**You will learn to**

- write the forward SDE $\mathrm dx = f(t)\,x\,\mathrm dt + g(t)\,\mathrm dw$ of any schedule, and the VP, sub-VP
  and VE SDEs in particular;
- reverse it in time with the score, and solve the reverse SDE by Euler–Maruyama and predictor–corrector sampling;
- replace the SDE by an ODE with the same marginals, and compare their trajectories and their cost in network calls;
- compute exact log-likelihoods through the ODE (exact trace and Hutchinson's estimator) and bits per dimension;
- run chapter 1's DDPM and chapter 2's NCSN through the same SDE samplers, as the discretisations they are.

Every sampler here is checked against an *exact* score: Gaussian mixtures, whose noised densities are known in
closed form.
""")

ch.setup(r"""
import math
import matplotlib.pyplot as plt
import torch

from diffedu import ddpm, sde, viz
from diffedu.data import DIGITS_LEVELS, load_digits
from diffedu.metrics import digits_classifier, energy_distance
from diffedu.pretrained import load_pretrained
from diffedu.schedules import VE, SubVP, VPLinear, linear_schedule
from diffedu.toy import ExactModel, eight_gaussians, gaussian
from diffedu.utils import setup, show_source
""")

md(r"""
## 3.1 From a noising chain to an SDE

DDPM's step $x_i = \sqrt{1-\beta_i}\,x_{i-1} + \sqrt{\beta_i}\,z$ with $\beta_i = \beta(t_i)\,\Delta t$ and
$\Delta t = 1/N$ is, to first order, $x_{i} - x_{i-1} = -\tfrac12\beta(t_i)\,x_{i-1}\,\Delta t + \sqrt{\beta(t_i)\Delta t}\; z$.
As $N \to \infty$ this becomes the **VP SDE** (variance preserving); NCSN's step
$x_i = x_{i-1} + \sqrt{\sigma_i^2 - \sigma_{i-1}^2}\, z$ becomes the **VE SDE** (variance exploding):

$$
\underbrace{\mathrm dx = -\tfrac12 \beta(t)\, x\,\mathrm dt + \sqrt{\beta(t)}\,\mathrm dw}_{\text{VP}}
\qquad
\underbrace{\mathrm dx = \sqrt{\tfrac{\mathrm d\,\sigma(t)^2}{\mathrm dt}}\;\mathrm dw}_{\text{VE}}
\qquad
\underbrace{\mathrm dx = -\tfrac12 \beta(t)\, x\,\mathrm dt + \sqrt{\beta(t)\big(1 - e^{-2\int_0^t \beta}\big)}\,\mathrm dw}_{\text{sub-VP}}
$$

with $\mathrm dw$ Brownian increments ($\mathrm dw \sim \mathcal N(0, \mathrm dt\, I)$). Conversely, *any* schedule
$x_t = \alpha(t)\,x_0 + \sigma(t)\,\epsilon$ is the marginal of a linear SDE $\mathrm dx = f(t)\,x\,\mathrm dt + g(t)\,\mathrm dw$:
its mean obeys $\tfrac{\mathrm d}{\mathrm dt}\mathbb E[x_t] = f\,\mathbb E[x_t]$ and its variance
$\tfrac{\mathrm d}{\mathrm dt}\mathrm{Var}[x_t] = 2 f\,\mathrm{Var}[x_t] + g^2$ {cite:p}`sarkka2019applied`, so

$$
f(t) = \frac{\mathrm d \log \alpha(t)}{\mathrm dt}, \qquad g(t)^2 = \frac{\mathrm d\,\sigma(t)^2}{\mathrm dt} - 2 f(t)\,\sigma(t)^2 . \tag{1}
$$

The library gives the papers' closed forms, and eq. (1) by automatic differentiation for any other schedule (for
DDPM's chain, whose $\log\bar\alpha$ is piecewise linear in $t$, $f$ and $g$ are piecewise constant):
""")

code(r"""
show_source(sde.sde_coefficients)
""")

md(r"""
Below, the three SDEs of {cite:t}`song2021scorebased` with their usual parameters: VP and sub-VP with $\beta(t)$
linear from 0.1 to 20, VE with $\sigma$ geometric from $\sigma_{\min} = 0.01$ to $\sigma_{\max} = 10$ (chapter 2's
choice for the digits). Sub-VP shares VP's signal but keeps its noise variance below VP's at every $t$:
$\sigma_{\text{sub-VP}} = 1 - \alpha^2 \le \sqrt{1-\alpha^2}$.
""")

code(r"""
vp, subvp, ve = VPLinear(beta_min=0.1, beta_max=20.0), SubVP(beta_min=0.1, beta_max=20.0), VE(sigma_min=0.01, sigma_max=10.0)
schedules = {"VP": vp, "sub-VP": subvp, "VE": ve}
t = torch.linspace(0, 1, 201, dtype=torch.float64)
fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
for (name, s), style in zip(schedules.items(), ["-", "--", "-"]):
    f, g = sde.sde_coefficients(s, t)
    axes[0].plot(t, s.alpha(t), style, label=name)
    axes[1].plot(t, s.sigma(t), style, label=name)
    axes[2].plot(t, g ** 2, style, label=name)
axes[0].set(title=r"signal $\alpha(t)$", xlabel="$t$", ylim=(-0.05, 1.1))
axes[1].set(title=r"noise $\sigma(t)$", xlabel="$t$", yscale="log")
axes[2].set(title=r"diffusion $g(t)^2$", xlabel="$t$", yscale="log")
for ax in axes:
    ax.legend()
plt.show()

for name, s in {**schedules, "DDPM chain (N = 1000)": linear_schedule()}.items():
    f, g = sde.sde_coefficients(s, 0.5)
    f1, g1 = sde.generic_sde_coefficients(s, 0.5)
    print(f"{name:>21}: f(0.5) = {f.item():8.4f}, g(0.5) = {g.item():7.4f}   eq. (1) by autograd: "
          f"f = {f1.item():8.4f}, g = {g1.item():7.4f}")
""")

md(r"""
**Expected output:** the closed forms and eq. (1) agree to every printed digit, and the DDPM chain's coefficients
at $t = 0.5$ are within a fraction of a percent of VP's: the chain with $\beta_i$ from $10^{-4}$ to $0.02$ over
1000 steps *is* the VP SDE with $\beta(t) = N\beta_i$ from 0.1 to 20, observed on a grid.

## 3.2 Running the forward SDE

The SDE can be simulated with the simplest scheme there is, **Euler–Maruyama**:
$x_{t+h} = x_t + f(t)\,x_t\,h + g(t)\sqrt h\, z$. Here are paths of the first coordinate of points from the
eight-Gaussian mixture. VP shrinks the data towards zero while noise flows in; VE leaves the data in place and adds
noise until it dwarfs it. The dashed lines are $\pm 2$ standard deviations of the exact marginal $p_t$; the simulated
cloud fills them.
""")

code(r"""
gmm = eight_gaussians()  # the book's closed-form 2-D problem: eight Gaussians of std 0.15 on a circle of radius 2
x0 = gmm.sample(1000, torch.Generator().manual_seed(1))[0]
var0 = gmm.covariance()[0, 0]  # variance of the first coordinate under the data
fig, axes = plt.subplots(1, 2, figsize=(9, 3.3))
for ax, (name, s) in zip(axes, [("VP", vp), ("VE", ve)]):
    x1, path = sde.simulate_forward_sde(x0, s, steps=500, generator=torch.Generator().manual_seed(2),
                                        return_trajectory=True)
    path = torch.stack(path)[:, :, 0]  # (501, 1000): the first coordinate of every path
    tt = torch.linspace(0, 1, 501, dtype=torch.float64)
    ax.plot(tt, path[:, :25], lw=0.6, alpha=0.7)
    std = (s.alpha(tt) ** 2 * var0 + s.sigma(tt) ** 2).sqrt()
    ax.plot(tt, 2 * std, "k--", lw=1.2, label=r"$\pm 2$ std of $p_t$")
    ax.plot(tt, -2 * std, "k--", lw=1.2)
    ax.set(title=f"{name} SDE: 25 forward paths", xlabel="$t$", ylabel="first coordinate of $x_t$")
    ax.legend(loc="upper left")
    print(f"{name}: std of the 1000 simulated x_1 (first coordinate) {path[-1].std().item():.2f}, "
          f"exact marginal {std[-1].item():.2f}")
plt.show()
""")

md(r"""
## 3.3 Reversing time: the reverse SDE

{cite:t}`anderson1982reverse` showed that a diffusion run backwards is again a diffusion, whose drift needs one
extra ingredient, the score of the marginals:

$$
\mathrm dx = \big[f(t)\,x - g(t)^2\,\nabla_x \log p_t(x)\big]\,\mathrm dt + g(t)\,\mathrm d\bar w,
\qquad t: 1 \to 0, \tag{2}
$$

with $\bar w$ a Brownian motion running backwards in time {cite:p}`song2021scorebased` (their eq. 6). Replace the
score by a network's, $s_\theta(x, t) = -\hat\epsilon/\sigma(t)$ (chapter 2), start from the prior
$x_1 \sim \mathcal N(0, (\alpha(1)^2 + \sigma(1)^2) I)$ and integrate down to a small $t_{\min}$ (here $10^{-3}$; 0
for VE, whose $\sigma(0) = \sigma_{\min} > 0$). One Euler–Maruyama step from $t$ to $t - h$:
""")

code(r"""
show_source(sde.euler_maruyama_step)
""")

md(r"""
A last, noise-free step replaces $x_{t_{\min}}$ by Tweedie's estimate $\hat x_0 = \mathbb E[x_0 \mid x_{t_{\min}}]$
{cite:p}`efron2011tweedie`, one more network call (`denoise=True`). With the **exact** score of the mixture, the
reverse SDE must give back the mixture: the energy distance to fresh data should sit at the floor set by two
independent data sets.
""")

code(r"""
exact_vp = ExactModel(gmm, vp)  # the perfect eps-model of the mixture under the VP schedule
n = 1000
x_T = sde.prior_sample(vp, (n, 2), generator=torch.Generator().manual_seed(3))
samples_em, traj_em = sde.euler_maruyama(exact_vp, x_T, vp, steps=200, generator=torch.Generator().manual_seed(4),
                                         progress=False, return_trajectory=True)
data_a, data_b = (gmm.sample(n, torch.Generator().manual_seed(s))[0] for s in (5, 6))
floor = energy_distance(data_a, data_b)

fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.8))
viz.plot_trajectories(torch.stack(traj_em[:-1]), n=10, ax=axes[0], lim=3.5, title="Reverse-SDE paths (VP, 200 steps)")
viz.scatter_2d(data_a, ax=axes[1], lim=3.5, label="data", color="0.6")
viz.scatter_2d(samples_em, ax=axes[1], lim=3.5, label="Euler–Maruyama", title="Samples with the exact score")
plt.show()
print(f"energy distance to data: Euler–Maruyama {energy_distance(samples_em, data_a):.4f};  "
      f"floor (data vs data) {floor:.4f}")
""")

md(r"""
**Expected output:** eight tight clusters, and an energy distance within a few thousandths of the floor.

## 3.4 Predictor–corrector sampling

A numerical step of eq. (2) makes a small error; then $x$ is no longer distributed exactly as $p_t$. But at a fixed
$t$ we know *how to sample* $p_t$: Langevin dynamics with the score (chapter 2). The **predictor–corrector**
sampler of {cite:t}`song2021scorebased` (their Algorithms 2–5) alternates the two: a *predictor* step of the
reverse SDE (Euler–Maruyama, or the "reverse diffusion" step that reverses each forward step exactly in form) and
one or more *corrector* steps of Langevin dynamics at the new time,

$$
x \leftarrow x + \varepsilon\, s_\theta(x, t) + \sqrt{2\varepsilon}\, z, \qquad
\varepsilon = 2\,\alpha_i \left(\frac{r\,\lVert z\rVert}{\lVert s_\theta(x, t)\rVert}\right)^2,
$$

whose step size is set by a target **signal-to-noise ratio** $r$ (0.16 in the paper) rather than by hand
($\alpha_i = 1$ for VE, $1 - \beta_i$ of the current step for VP). NCSN's annealed Langevin dynamics is the
corrector alone; PC adds the predictor. (`corrector_steps=0` gives the predictor alone.)
""")

code(r"""
show_source(sde.langevin_corrector_step)
""")

md(r"""
Each sampler below gets the same budget of 40 network calls (plus the final denoising call) on the VE SDE: the
reverse-diffusion predictor alone with 40 steps, 20 predictor steps each followed by one corrector step (PC), or
Euler–Maruyama with 40 steps.
""")

code(r"""
exact_ve = ExactModel(gmm, ve)
x_T_ve = sde.prior_sample(ve, (n, 2), generator=torch.Generator().manual_seed(3))
runs = {
    "reverse diffusion, 40": sde.predictor_corrector(exact_ve, x_T_ve, ve, 40, corrector_steps=0,
                                                           generator=torch.Generator().manual_seed(7), progress=False),
    "PC, 20 + 20": sde.predictor_corrector(exact_ve, x_T_ve, ve, 20, corrector_steps=1, snr=0.16,
                                                             generator=torch.Generator().manual_seed(7), progress=False),
    "Euler–Maruyama, 40": sde.euler_maruyama(exact_ve, x_T_ve, ve, 40, generator=torch.Generator().manual_seed(7),
                                                    progress=False),
}
viz.compare_2d(runs, lim=3.5, title="VE SDE with 40 network calls each (exact score)")
plt.show()
for name, x in runs.items():
    print(f"{name:>22} steps: energy distance {energy_distance(x, data_a):.4f}  (floor {floor:.4f})")
""")

md(r"""
**Expected output:** all three within a few thousandths of the floor. On this easy problem with an *exact* score
the corrector buys nothing at equal cost: the predictor's errors are already small. It pays where they are not —
learned scores in high dimension, as in Song et al.'s CIFAR-10 experiments and on the digits in § 3.8.
""")

md(r"""
## 3.5 The probability-flow ODE

The SDE's randomness is not needed to get the right marginals. The Fokker–Planck equation of eq. (2) is also
satisfied by a deterministic flow, the **probability-flow ODE** {cite:p}`song2021scorebased` (their eq. 13):

$$
\frac{\mathrm dx}{\mathrm dt} = f(t)\,x - \tfrac12\, g(t)^2\, \nabla_x \log p_t(x). \tag{3}
$$

Started from $x_1 \sim p_1$ it gives $x_t \sim p_t$ at every $t$, exactly like the SDE, but each noise sample now
maps to *one* data point. This is a neural ODE {cite:p}`chen2018neural`; any ODE solver applies (chapter 5 is about
the best ones).
""")

code(r"""
show_source(sde.probability_flow_drift)
""")

md(r"""
From the same sixteen starting points: the SDE's paths jitter and end anywhere; the ODE's paths are smooth, and a
point's destination is a deterministic function of where it started.
""")

code(r"""
start = x_T[:16]
_, traj_sde = sde.euler_maruyama(exact_vp, start, vp, 200, denoise=False, generator=torch.Generator().manual_seed(8),
                                 progress=False, return_trajectory=True)
_, traj_ode = sde.ode_sample(exact_vp, start, vp, 100, method="heun", denoise=False, progress=False,
                             return_trajectory=True)
fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.8))
viz.plot_trajectories(torch.stack(traj_sde), ax=axes[0], lim=3.5, title="Reverse SDE (Euler–Maruyama)")
viz.plot_trajectories(torch.stack(traj_ode), ax=axes[1], lim=3.5, title="Probability-flow ODE (Heun)")
for ax in axes:
    ax.scatter(*gmm.means.T, marker="+", color="k", s=40, zorder=5)
plt.show()
""")

md(r"""
How fast do ODE solvers converge? For Gaussian data $\mathcal N(\mu, s^2)$ the flow (3) is known exactly: it maps
$x_1$ to $x_t = \alpha\mu + \sqrt{\alpha^2 s^2 + \sigma^2}\,(x_1 - \alpha_1\mu)/\sqrt{\alpha_1^2 s^2 + \sigma_1^2}$, a
straight rescaling. The error of `ode_sample` against it falls like $h^p$ with the solver's order $p$: Euler 1,
Heun 2, classical Runge–Kutta 4. Plotted against the number of network calls (NFE), a higher order wins quickly.
""")

code(r"""
show_source(sde.ode_sample)
""")

code(r"""
mu, s_data = 0.7, 0.5
exact_gauss = ExactModel(gaussian(torch.tensor([mu]), s_data), vp)
x1 = torch.linspace(-2.5, 2.5, 11, dtype=torch.float64)[:, None]
a1, sg1, a0, sg0 = (float(v) for v in (vp.alpha(1.0), vp.sigma(1.0), vp.alpha(1e-3), vp.sigma(1e-3)))
target = a0 * mu + math.sqrt(a0 ** 2 * s_data ** 2 + sg0 ** 2) * (x1 - a1 * mu) / math.sqrt(a1 ** 2 * s_data ** 2 + sg1 ** 2)
fig, ax = plt.subplots(figsize=(5.6, 3.4))
for method, calls_per_step in (("euler", 1), ("heun", 2), ("rk4", 4)):
    steps_list = [4, 8, 16, 32, 64]
    errors = [(sde.ode_sample(exact_gauss, x1, vp, k, method=method, denoise=False, progress=False) - target).abs().max().item()
              for k in steps_list]
    order = math.log2(errors[-2] / errors[-1])
    ax.loglog([calls_per_step * k for k in steps_list], errors, "o-", label=f"{method}: observed order {order:.1f}")
ax.set(xlabel="network calls (NFE)", ylabel="max error at $t_{min}$", title="Probability-flow ODE on Gaussian data")
ax.legend()
plt.show()
""")

md(r"""
## 3.6 Sample quality against the number of network calls

The real cost of a sampler is its number of network evaluations (NFE). Here all of them run on the exact mixture
score with a growing budget; the energy distance to data measures what they get for it. (The floor wanders a little
from run to run: it is itself a random quantity.)
""")

code(r"""
n_big = 2000
x_T_big = sde.prior_sample(vp, (n_big, 2), generator=torch.Generator().manual_seed(20))
data_big = gmm.sample(n_big, torch.Generator().manual_seed(21))[0]
floors = torch.tensor([energy_distance(gmm.sample(n_big, torch.Generator().manual_seed(30 + k))[0], data_big)
                       for k in range(8)])  # exact samples vs the same data: how low any sampler can get
budgets = [10, 20, 40, 80, 160]
samplers = {
    "Euler–Maruyama": lambda k, g: sde.euler_maruyama(exact_vp, x_T_big, vp, k, generator=g, progress=False),
    "predictor–corrector": lambda k, g: sde.predictor_corrector(exact_vp, x_T_big, vp, k // 2, generator=g, progress=False),
    "ODE, Euler": lambda k, g: sde.ode_sample(exact_vp, x_T_big, vp, k, method="euler", progress=False),
    "ODE, Heun": lambda k, g: sde.ode_sample(exact_vp, x_T_big, vp, k // 2, method="heun", progress=False),
}
fig, ax = plt.subplots(figsize=(6, 3.6))
ax.axhspan(floors.min().item(), floors.max().item(), color="0.85", label="exact samples (8 draws)")
for name, run in samplers.items():
    dist = [energy_distance(run(k, torch.Generator().manual_seed(9)), data_big) for k in budgets]
    ax.loglog(budgets, dist, "o-", label=name)
    print(f"{name:>20}: " + "  ".join(f"{k} NFE {d:.4f}" for k, d in zip(budgets, dist)))
print(f"{'exact samples':>20}: {floors.min().item():.4f} to {floors.max().item():.4f}")
ax.set(xlabel="network calls (NFE, + 1 denoising call)", ylabel="energy distance to data",
       title="Sample quality against cost (VP, exact score)")
ax.legend(ncol=2, fontsize=8)
plt.show()
""")

md(r"""
**Expected output:** every curve reaches the grey band of exact samples. The ODE samplers get there with the
fewest calls, while the stochastic samplers need more steps: their injected noise corrects earlier errors (which
makes them robust to an imperfect score) but only once the steps are small enough.

## 3.7 Exact likelihood through the ODE

A deterministic, invertible flow carries densities with it. For $\mathrm dx/\mathrm dt = v(x, t)$, the
*instantaneous change of variables* {cite:p}`chen2018neural` says
$\frac{\mathrm d}{\mathrm dt}\log p_t(x_t) = -\nabla\!\cdot v(x_t, t)$, so integrating the pair
$[x_t,\ \delta_t]$ with $\mathrm d\delta/\mathrm dt = \nabla\!\cdot v$ from $t_{\min}$ to 1 gives

$$
\log p_{t_{\min}}(x) = \log p_1(x_1) + \int_{t_{\min}}^{1} \nabla\!\cdot v(x_t, t)\,\mathrm dt . \tag{4}
$$

The divergence $\nabla\!\cdot v = \operatorname{tr}(\partial v / \partial x)$ costs $D$ backward passes exactly; in high
dimension {cite:t}`grathwohl2019ffjord` replace it by Hutchinson's unbiased estimate
$\mathbb E[\epsilon^\top (\partial v/\partial x)\,\epsilon]$ with a random probe $\epsilon$
{cite:p}`hutchinson1989stochastic`, one backward pass. The integral is done by an adaptive Runge–Kutta solver
(scipy's RK45, tolerances $10^{-5}$ as in {cite:t}`song2021scorebased`, App. D.2).
""")

code(r"""
show_source(sde.log_likelihood)
""")

md(r"""
For the mixture the answer is known: $p_{t_{\min}}$ is the mixture noised to $t_{\min}$. We evaluate 150 data points
and 50 points off the data (uniform in a square) so the values span a wide range.
""")

code(r"""
x_eval = torch.cat([gmm.sample(150, torch.Generator().manual_seed(10))[0],
                    6 * torch.rand(50, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64) - 3])
exact_logp = gmm.marginal(vp.alpha(1e-3).item(), vp.sigma(1e-3).item()).log_prob(x_eval)
ode_exact = sde.log_likelihood(exact_vp, x_eval, vp, trace="exact")
ode_hutch = sde.log_likelihood(exact_vp, x_eval, vp, trace="hutchinson", generator=torch.Generator().manual_seed(12))

fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
lo, hi = exact_logp.min().item() - 2, exact_logp.max().item() + 2
axes[0].plot([lo, hi], [lo, hi], "k-", lw=0.8, label="y = x")
axes[0].scatter(exact_logp, ode_hutch.log_prob, s=10, alpha=0.6, label="ODE, Hutchinson trace")
axes[0].scatter(exact_logp, ode_exact.log_prob, s=10, alpha=0.8, label="ODE, exact trace")
axes[0].set(xlabel=r"exact $\log p_{t_{min}}(x)$ (nats)", ylabel="ODE estimate (nats)", title="Log-likelihood: ODE vs exact")
axes[0].legend()
bins = torch.linspace(-6, 6, 49).numpy()
axes[1].hist((ode_hutch.log_prob - exact_logp).clamp(-6, 6).numpy(), bins=bins, alpha=0.7, label="Hutchinson")
axes[1].hist((ode_exact.log_prob - exact_logp).clamp(-6, 6).numpy(), bins=bins, alpha=0.9, label="exact trace")
axes[1].set(xlabel="ODE estimate - exact (nats, clipped to ±6)", ylabel="points", title="Errors", yscale="log")
axes[1].legend()
plt.show()
err_exact, err_hutch = ode_exact.log_prob - exact_logp, ode_hutch.log_prob - exact_logp
print(f"exact trace: mean error {err_exact.mean().item():+.4f} nats, mean |error| {err_exact.abs().mean().item():.4f} "
      f"({ode_exact.nfe} solver evaluations)")
print(f"Hutchinson:  mean error {err_hutch.mean().item():+.3f} ± {err_hutch.std().item() / math.sqrt(len(x_eval)):.3f} "
      f"(standard error), spread per point {err_hutch.std().item():.2f} nats")
""")

md(r"""
**Expected output:** exact-trace estimates on the diagonal to about $10^{-3}$ nats; Hutchinson's scatter around
it with a mean error within its standard error (it is unbiased, not exact).

### Bits per dimension for an image model

Images are discrete: the digits take 17 grey levels in $[-1, 1]$, bins of width $\Delta = 2/(K-1) = 1/8$. A density
$p$ becomes a model of discrete pixels by integrating it over each bin, and with *uniform dequantisation*
$u \sim \mathcal U(-\Delta/2, \Delta/2)^D$ Jensen's inequality gives
$\log P(x) \ge \mathbb E_u \log p(x + u) + D \log\Delta$, so

$$
\text{bits/dim} \le -\frac{\log p_{t_{\min}}(x + u) + D\log \Delta}{D \ln 2},
$$

an upper bound comparable with chapter 1's ELBO. It is tight only if $p_{t_{\min}}$ is flat inside a bin. A network
trained on exact grey levels has a spiky $p_t$ at tiny $t$ (noise $\sigma(10^{-3}) = 0.01$, bins $0.125$ wide), so
$t_{\min}$ matters: we try three. Chapter 1's model is run through the **continuous** VP schedule: its chain is
VP's discretisation, and its network sees the same times $t_i = i/N$.
""")

code(r"""
show_source(sde.bits_per_dim)
""")

code(r"""
unet = load_pretrained("ddpm_digits", device=device)  # chapter 1's eps-prediction UNet (linear chain, N = 1000)
test_digits = load_digits(split="test").x[:24].to(device)
for t_min in (1e-3, 1e-2, 3e-2):
    bpd = sde.bits_per_dim(unet, test_digits, vp, levels=DIGITS_LEVELS, t_min=t_min, trace="hutchinson",
                           generator=torch.Generator(device).manual_seed(13), rtol=1e-4, atol=1e-4)
    print(f"t_min = {t_min:<6}  sigma(t_min) = {vp.sigma(t_min).item():.3f}:  ODE bits/dim {bpd.mean().item():.2f} "
          f"± {bpd.std().item() / math.sqrt(len(bpd)):.2f}")
print(f"chapter 1's ELBO for the same network: 3.01 bits/dim;  uniform over {DIGITS_LEVELS} levels: "
      f"{math.log2(DIGITS_LEVELS):.2f}")
""")

md(r"""
**Expected output:** all three well below the ELBO of 3.01 bits/dim, the best near $t_{\min} = 10^{-2}$ where
$\sigma(t_{\min}) \approx \Delta/\sqrt{12}$, the standard deviation of the uniform dequantisation noise. Same
network, different bound: DDPM's ELBO with fixed reverse variances is loose, while the ODE computes the flow
model's density exactly. {cite:t}`song2021scorebased` observed the same on CIFAR-10. (To keep the chapter quick we
use 24 test digits, one Hutchinson probe each and tolerances $10^{-4}$; the ± is the standard error over digits.)

## 3.8 DDPM and NCSN are discretisations of VP and VE

Since the chain is the VP SDE on a grid, chapter 1's network runs as it is through every sampler of this
chapter: read its $\hat\epsilon$ as the score $-\hat\epsilon/\sigma(t)$ and pick a solver. DDPM's own ancestral step,
$x_{i-1} = (x_i + \beta_i s_\theta)/\sqrt{1-\beta_i} + \sqrt{\beta_i}\,z$, is to first order in $\beta_i$ the
reverse-diffusion predictor of § 3.4, $x_{i-1} = (2 - \sqrt{1-\beta_i})\,x_i + \beta_i s_\theta + \sqrt{\beta_i}\,z$: one more
discretisation of eq. (2). Here the same 36 starting noises go through the reverse SDE, predictor–corrector and the
ODE, with 5 to 10 times fewer network calls than chapter 1's 1000 steps.
""")

code(r"""
x_T_img = torch.randn(36, 1, 8, 8, generator=torch.Generator(device).manual_seed(14), device=device)
digit_runs = {
    "reverse SDE (EM), 200 NFE": sde.euler_maruyama(unet, x_T_img, vp, 200, generator=torch.Generator(device).manual_seed(15),
                                                    progress=False),
    "predictor–corrector, 200 NFE": sde.predictor_corrector(unet, x_T_img, vp, 100, snr=0.16, progress=False,
                                                             generator=torch.Generator(device).manual_seed(15)),
    "probability-flow ODE (Heun), 100 NFE": sde.ode_sample(unet, x_T_img, vp, 50, method="heun", progress=False),
}
fig, axes = plt.subplots(1, 3, figsize=(10, 3.9))
for ax, (name, x) in zip(axes, digit_runs.items()):
    viz.image_grid(x.clamp(-1, 1), nrow=6, ax=ax, title=name)
plt.show()
reader = digits_classifier()
for name, x in digit_runs.items():
    print(f"{name:>37}: the digits reader is >= 90 % sure of {100 * reader.summary(x.clamp(-1, 1))['confident_fraction']:.0f} % "
          f"of the samples")
""")

md(r"""
**Expected output:** recognisable digits from all three, and a reader about as confident as it is of chapter 1's
1000-step DDPM samples (86 %) and of real held-out digits (84 %), with 5–10 times fewer network calls.
""")

if WITH_NCSN:
    md(r"""
Chapter 2's NCSN is trained on the VE process ($\sigma$ from 0.01 to 10) with an $\epsilon$-prediction network behind
EDM's input scaling. Its annealed Langevin sampler is a corrector-only sampler; with the VE SDE it gets a predictor
too, or an ODE:
""")

    code(r"""
ncsn = load_pretrained("ncsn_digits", device=device)
x_T_ve_img = sde.prior_sample(ve, (36, 1, 8, 8), generator=torch.Generator(device).manual_seed(16), device=device)
ncsn_runs = {
    "VE predictor–corrector, 200 NFE": sde.predictor_corrector(ncsn, x_T_ve_img, ve, 100, snr=0.16, progress=False,
                                                                generator=torch.Generator(device).manual_seed(17)),
    "VE probability-flow ODE, 100 NFE": sde.ode_sample(ncsn, x_T_ve_img, ve, 50, method="heun", progress=False),
}
fig, axes = plt.subplots(1, 2, figsize=(7, 3.9))
for ax, (name, x) in zip(axes, ncsn_runs.items()):
    viz.image_grid(x.clamp(-1, 1), nrow=6, ax=ax, title=name)
plt.show()
for name, x in ncsn_runs.items():
    print(f"{name:>33}: the digits reader is >= 90 % sure of {100 * reader.summary(x.clamp(-1, 1))['confident_fraction']:.0f} % "
          f"of the samples")
""")

    md(r"""
**Expected output:** digits from both, read about as confidently as chapter 2's annealed-Langevin samples (80 % in
the checkpoint's own evaluation). One network, trained once, runs through every sampler of the chapter.
""")

md(r"""
## Exercises

Each exercise has a code cell for your answer (in the book the solution is folded away; click to show it) and a
check cell that compares it with a closed form.

**Exercise 3.1 — the SDE of a schedule.** Write `my_sde(alpha_fn, sigma_fn, t)` that returns $(f(t), g(t))$ of
eq. (1) for any schedule given as two functions of $t$, using central finite differences with a small step $h$.
""")

code(r"""
def my_sde(alpha_fn, sigma_fn, t, h=1e-6):
    ### BEGIN SOLUTION
    f = (math.log(alpha_fn(t + h)) - math.log(alpha_fn(t - h))) / (2 * h)
    dvar = (sigma_fn(t + h) ** 2 - sigma_fn(t - h) ** 2) / (2 * h)
    return f, math.sqrt(dvar - 2 * f * sigma_fn(t) ** 2)
    ### END SOLUTION
""")

code(r"""
# check: against the papers' closed forms for VP (f = -beta/2, g^2 = beta), sub-VP and VE at several times
for s in (vp, subvp, ve):
    for t_check in (0.1, 0.5, 0.9):
        f_ref, g_ref = (v.item() for v in sde.sde_coefficients(s, t_check))
        f_mine, g_mine = my_sde(lambda u: s.alpha(u).item(), lambda u: s.sigma(u).item(), t_check)
        assert math.isclose(f_mine, f_ref, rel_tol=1e-5, abs_tol=1e-7), (s, t_check)
        assert math.isclose(g_mine, g_ref, rel_tol=1e-4), (s, t_check)
assert math.isclose(my_sde(lambda u: vp.alpha(u).item(), lambda u: vp.sigma(u).item(), 0.5)[1] ** 2,
                    vp.beta(0.5).item(), rel_tol=1e-4)
print("Exercise 3.1 passed")
""")

md(r"""
**Exercise 3.2 — one reverse-SDE step.** Write `my_em_step(score, x, t, h, f, g, z)`: one Euler–Maruyama step of
eq. (2) from $t$ to $t - h$, given the score $s(x, t)$ as a tensor, the SDE's $f(t)$ and $g(t)$ as numbers and the
noise `z`.
""")

code(r"""
def my_em_step(score, x, t, h, f, g, z):
    ### BEGIN SOLUTION
    return x - (f * x - g ** 2 * score) * h + g * math.sqrt(h) * z
    ### END SOLUTION
""")

code(r"""
# check: the same step as the library, with the same noise, on the exact mixture score
x_check = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
for s, model in ((vp, exact_vp), (ve, exact_ve)):
    t_check, h = 0.6, 0.01
    f, g = (v.item() for v in sde.sde_coefficients(s, t_check))
    z = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    score = gmm.score(x_check, s.alpha(t_check), s.sigma(t_check))
    mine = my_em_step(score, x_check, t_check, h, f, g, z)
    ref = sde.euler_maruyama_step(model, x_check, t_check, t_check - h, s, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(mine, ref, atol=1e-8)
print("Exercise 3.2 passed")
""")

md(r"""
**Exercise 3.3 — the divergence of the probability flow.** For Gaussian data $\mathcal N(0, s^2 I)$ in $D$
dimensions, $p_t = \mathcal N(0, (\alpha^2 s^2 + \sigma^2) I)$, so the score is linear in $x$. Write
`my_pf_divergence(schedule, t, s, D)`: the divergence $\nabla\!\cdot v$ of the ODE drift (3), the integrand of eq. (4).
""")

code(r"""
def my_pf_divergence(schedule, t, s, D):
    ### BEGIN SOLUTION
    f, g = (v.item() for v in sde.sde_coefficients(schedule, t))
    var_t = schedule.alpha(t).item() ** 2 * s ** 2 + schedule.sigma(t).item() ** 2
    return D * (f + 0.5 * g ** 2 / var_t)  # v = f x + g^2 x / (2 var_t): a multiple of the identity
    ### END SOLUTION
""")

code(r"""
# check: against autograd's exact trace of the library's drift, and eq. (4) against the exact density
s_check, D_check = 0.5, 3
model = ExactModel(gaussian(torch.zeros(D_check), s_check), vp)
x_check = torch.randn(5, D_check, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
for t_check in (0.05, 0.5, 0.95):
    _, div = sde.divergence_exact(lambda y: sde.probability_flow_drift(model, y, t_check, vp), x_check)
    assert torch.allclose(div, torch.full((5,), my_pf_divergence(vp, t_check, s_check, D_check), dtype=torch.float64))
ts = torch.linspace(1e-3, 1, 2001, dtype=torch.float64)
integral = torch.trapezoid(torch.tensor([my_pf_divergence(vp, u.item(), s_check, D_check) for u in ts]), ts)
var = lambda u: vp.alpha(u).item() ** 2 * s_check ** 2 + vp.sigma(u).item() ** 2  # the flow scales x by sqrt(var)
assert math.isclose(integral.item(), 0.5 * D_check * math.log(var(1.0) / var(1e-3)), rel_tol=1e-3)
print("Exercise 3.3 passed")
""")

md(r"""
## Summary

- Every schedule $x_t = \alpha x_0 + \sigma\epsilon$ is the marginal of a linear SDE with $f = \mathrm d\log\alpha/\mathrm dt$
  and $g^2 = \mathrm d\sigma^2/\mathrm dt - 2f\sigma^2$; DDPM's chain discretises the VP SDE, NCSN's ladder the VE SDE.
- Run backwards, the SDE needs only the score: Euler–Maruyama on the reverse SDE, predictor–corrector sampling (a
  predictor step plus Langevin correction), or the deterministic probability-flow ODE with the same marginals.
- The ODE is a continuous normalising flow, so it gives exact log-likelihoods (exact trace in low dimension,
  Hutchinson's estimator in high) — and for the digits model a far tighter bits/dim than the ELBO.
- With an exact score every one of these samplers reproduces the data; what separates them is the number of
  network calls they need.

Next: chapter 4 (DDIM) is a first fast solver of the probability-flow ODE, and chapter 5 builds better ones.
""")

ch.write("chapters/03_sde.ipynb")
