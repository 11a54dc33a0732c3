"""Writes chapters/05_solvers.ipynb (unexecuted); run it from the repository root, then execute the notebook:

    .venv/bin/python scripts/build_ch05.py
    DIFFEDU_STATIC=1 .venv/bin/jupyter nbconvert --to notebook --execute --inplace chapters/05_solvers.ipynb
    .venv/bin/python -m diffedu.exercises --tag chapters/05_solvers.ipynb
"""
from chapter_kit import Chapter

ch = Chapter()
md, code = ch.md, ch.code

md(r"""
# 5 · Fast solvers for the probability-flow ODE

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/diffedu/diffedu/blob/main/chapters/05_solvers.ipynb)

Chapter 4 ended with an observation: deterministic DDIM is Euler's method on the probability-flow ODE. Euler's
method is the crudest ODE solver there is. Numerical analysis has better ones, and this chapter puts them to
work: Heun's second-order method {cite:p}`karras2022elucidating`, pseudo linear multistep steps (PLMS)
{cite:p}`liu2022pseudo` and DPM-Solver++(2M) {cite:p}`lu2022dpmsolverpp`. A solver is only half of a sampler;
the other half is *where* it steps. We compare hand-made step grids with one found by dynamic programming
{cite:p}`watson2021learning`, and measure everything on a problem whose exact answer we know.

**You will learn to**

- write the probability-flow ODE of any schedule in Karras et al.'s $\tilde\sigma$ variables, where it needs
  only the denoiser $D$;
- derive and run Euler, Heun, PLMS and DPM-Solver++(2M), and count their network calls (NFE);
- build step grids (uniform in time, uniform in log-SNR, Karras' $\rho = 7$) and optimise one by dynamic
  programming over a fine grid;
- benchmark every sampler of the book on an exact Gaussian mixture: error against NFE, and each solver's
  observed order;
- check that the ranking carries over to a real network, the 8×8 digits model.
""")

ch.setup(r"""
import itertools
import math
import matplotlib.pyplot as plt
import numpy as np
import torch

from diffedu import benchmark, ddim, ddpm, samplers, schedule_search, viz
from diffedu.data import load_digits
from diffedu.metrics import digits_classifier, frechet_distance
from diffedu.pretrained import load_pretrained
from diffedu.schedules import linear_schedule
from diffedu.toy import ExactModel, eight_gaussians, gaussian
from diffedu.utils import setup, show_source
""")

md(r"""
## 5.1 The probability-flow ODE in $\tilde\sigma$

Every schedule of this book writes $x_t = \alpha(t)\, x_0 + \sigma(t)\, \epsilon$. Divide by $\alpha$:

$$
\tilde x = \frac{x}{\alpha} = x_0 + \tilde\sigma\, \epsilon, \qquad
\tilde\sigma = \frac{\sigma}{\alpha} = e^{-\lambda/2},
$$

with $\lambda = \log(\alpha^2/\sigma^2)$ the log-SNR. In these variables every process is variance
exploding, and time has disappeared: $\tilde\sigma$ itself is the clock. {cite:t}`karras2022elucidating` (their
eq. 4 and Sec. 2) show that the probability-flow ODE of chapter 3 then takes a form that involves only the
denoiser $D(\tilde x; \tilde\sigma) = \mathbb E[x_0 \mid \tilde x]$, the network's $\hat x_0$:

$$
\frac{d\tilde x}{d\tilde\sigma} = \frac{\tilde x - D(\tilde x; \tilde\sigma)}{\tilde\sigma} .
$$

(Check it on a point mass at $x_0$: $D = x_0$, and $\tilde x = x_0 + \tilde\sigma\epsilon$ solves it with a
constant $\epsilon$.) The right-hand side is the network's noise estimate $\hat\epsilon$. A sampler picks a
decreasing grid $\tilde\sigma_0 > \tilde\sigma_1 > \dots > \tilde\sigma_K = 0$ and integrates from
$\tilde x_0 = x_T / \alpha(1)$ down to the data. To call the network at $\tilde\sigma_k$ it needs the time:
the library inverts the schedule's log-SNR (`time_of_sigma`) and feeds $x = \alpha\, \tilde x$ at that time.
Any schedule and any prediction type (ε, $x_0$, v, score) plug in the same way.

**Euler** takes the slope at the start of each step:

$$
d_k = \frac{\tilde x_k - D(\tilde x_k; \tilde\sigma_k)}{\tilde\sigma_k}, \qquad
\tilde x_{k+1} = \tilde x_k + (\tilde\sigma_{k+1} - \tilde\sigma_k)\, d_k .
$$

Its local error is $O(h^2)$ per step, so $O(h)$ overall: first order, one network call per step. When
$\tilde\sigma_{k+1} = 0$ the step lands exactly on $D$, as DDIM's last step does.
""")

code(r"""
show_source(samplers.euler_sample)
""")

md(r"""
**Heun** (Karras et al.'s Algorithm 1) is the trapezoidal rule with an Euler predictor: it takes the Euler
step, evaluates the slope $d'$ where it landed, and redoes the step with the average slope,

$$
\tilde x' = \tilde x_k + (\tilde\sigma_{k+1} - \tilde\sigma_k)\, d_k, \qquad
\tilde x_{k+1} = \tilde x_k + (\tilde\sigma_{k+1} - \tilde\sigma_k)\, \tfrac12\big(d_k + d'(\tilde x', \tilde\sigma_{k+1})\big).
$$

Two calls per step, local error $O(h^3)$, second order. The slope at $\tilde\sigma = 0$ is undefined, so the
last step into the data is a plain Euler step: $K$ steps cost $2K - 1$ calls.
""")

code(r"""
show_source(samplers.heun_sample)
""")

md(r"""
Both solvers on the eight-Gaussian mixture of chapter 1, whose denoiser is exact (`ExactModel`): the black
curves are the exact ODE paths (a very fine RK4 run of the exact flow, `schedule_search.exact_flow`), and the
markers are the solvers' states on the same 8-step grid, uniform in log-SNR (section 5.2). The $x$-axis is $\tilde\sigma$ on a log scale, falling from
left to right (the last point, $\tilde\sigma = 0$, is drawn at the right edge). We plot $x = \alpha\tilde x$,
the schedule's own variable, which stays of order one.
""")

code(r"""
schedule = linear_schedule()  # Ho et al.'s chain: N = 1000, beta from 1e-4 to 0.02 (float64)
gmm = eight_gaussians()
exact = ExactModel(gmm, schedule, prediction="eps")  # a perfect eps-network, in closed form
sigma_min, sigma_max = samplers.sigma_range(schedule)
alpha_of = lambda s: 1 / np.sqrt(1 + np.asarray(s) ** 2)  # VP: alpha = 1 / sqrt(1 + sigma~^2)
print(f"this chain's sigma~ runs from sigma~_max = {sigma_max:.1f} (t = 1) to sigma~_min = {sigma_min:.4f} (t_1)")

starts = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
K = 8
grid8 = samplers.sigma_grid(schedule, K, "logsnr")
fine = torch.cat([torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), 300, dtype=torch.float64)),
                  torch.zeros(1, dtype=torch.float64)])
path = schedule_search.exact_flow(schedule_search.mixture_denoiser(gmm), starts / alpha_of(sigma_max), fine, 100)
runs = {}
for name, fn in (("Euler", samplers.euler_sample), ("Heun", samplers.heun_sample)):
    _, traj, _ = fn(exact, starts, schedule, K, sigmas=grid8, progress=False, return_trajectory=True)
    runs[name] = torch.stack(traj).numpy()  # (K + 1, 5, 2) in x-space
end_pos = sigma_min / 4  # where sigma~ = 0 is drawn

def xpos(s):
    s = np.asarray(s, dtype=float).copy()
    s[s == 0] = end_pos
    return s

fig, ax = plt.subplots(figsize=(7.2, 3.2))
xs = (path[:, :, 0] * torch.as_tensor(alpha_of(fine.numpy()))[:, None]).numpy()
for j in range(len(starts)):
    ax.plot(xpos(fine), xs[:, j], color="k", lw=1, label="exact flow" if j == 0 else None)
for (name, tr), marker, colour in zip(runs.items(), "os", viz.PALETTE):
    for j in range(len(starts)):
        ax.plot(xpos(grid8), tr[:, j, 0], marker=marker, ms=4, lw=0.8, ls="--", color=colour,
                label=f"{name}, {K} steps" if j == 0 else None)
ax.set_xscale("log")
ax.invert_xaxis()
ax.set_xticks([100, 10, 1, 0.1, 0.01, end_pos], ["100", "10", "1", "0.1", "0.01", "0"])
ax.minorticks_off()
ax.set(xlabel="noise level σ̃ (log scale, falling →)", ylabel="first coordinate of x = α x̃",
       title="Probability-flow ODE of the 8-Gaussian mixture: exact paths and two solvers")
ax.legend(loc="upper left", fontsize=8)
plt.show()
err = {n: np.sqrt(((tr[-1] - path[-1].numpy()) ** 2).sum(1).mean()) for n, tr in runs.items()}
print(f"RMS error of the end point, 5 paths: Euler {err['Euler']:.3f} ({K} calls), Heun {err['Heun']:.3f} "
      f"({2 * K - 1} calls)")
""")

md(r"""
**Expected output:** nothing happens for $\tilde\sigma \gtrsim 10$ (the data's scale is 2, invisible under that
much noise). The paths split between $\tilde\sigma \approx 3$ and $0.3$, where each chooses its cluster, and
are flat again below $0.1$. Euler's circles lag behind where the paths bend: each step uses the slope at its
start, where the path is still flat. Heun's squares turn on time, but its long steps through the bend
overshoot. Its end points are slightly closer to the exact ones, for twice the calls: at this coarse grid the
$O(h^3)$ local error has not yet taken over. Section 5.6 shows when it does.

## 5.2 Where to step: grids in $\tilde\sigma$

The grid matters as much as the solver. The error of a step grows with the curvature of the path it crosses,
and the figure above shows where that is: in a band of $\tilde\sigma$ around the data's own scale. Common
choices, all from $\tilde\sigma_{\max}$ to $\tilde\sigma_{\min}$ and then 0:

- **uniform in time** $t$ (Lu et al.'s 'time_uniform'; what diffusers' 'linspace' rounds to integers). For
  DDPM's linear chain it spends most steps at large $\tilde\sigma$;
- **uniform in log-SNR** $\lambda$, i.e. geometric in $\tilde\sigma$ (Lu et al.'s 'logSNR');
- **Karras et al.'s** $\rho$-spacing (their eq. 5), uniform in $\tilde\sigma^{1/\rho}$:

$$
\tilde\sigma_k = \Big(\tilde\sigma_{\max}^{1/\rho} + \tfrac{k}{K-1}\big(\tilde\sigma_{\min}^{1/\rho}
- \tilde\sigma_{\max}^{1/\rho}\big)\Big)^{\rho}, \qquad k = 0, \dots, K-1, \qquad \tilde\sigma_K = 0 .
$$

$\rho = 1$ is uniform in $\tilde\sigma$ and $\rho \to \infty$ uniform in $\log\tilde\sigma$; Karras et al.
found $\rho = 7$ best for EDM's range $[0.002, 80]$: short steps near the data, long ones at high noise.
""")

code(r"""
show_source(samplers.karras_sigmas)
""")

md(r"""
The fourth grid is *learned* for this problem by the dynamic program of section 5.5 (for DPM-Solver++(2M),
10 steps). All four on one log axis:
""")

code(r"""
K = 10
opt10 = schedule_search.optimise_schedule(gmm, schedule, K, "dpmpp_2m")  # section 5.5
grids = {"uniform in t": samplers.sigma_grid(schedule, K, "time_uniform"),
         "uniform in log-SNR": samplers.sigma_grid(schedule, K, "logsnr"),
         "Karras, ρ = 7": samplers.sigma_grid(schedule, K, "karras"),
         "DP-optimised (2M)": opt10.sigmas}
fig, ax = plt.subplots(figsize=(7.2, 2.8))
ax.axvspan(0.3, 3, color="0.92", label="paths choose their cluster")
for row, (name, g) in enumerate(grids.items()):
    pos = g[g > 0].numpy()
    ax.plot(pos, [row] * len(pos), "o", ms=5, color=viz.PALETTE[row])
    ax.plot([end_pos], [row], "o", ms=5, mfc="white", color=viz.PALETTE[row])
ax.set_xscale("log")
ax.invert_xaxis()
ax.set_xticks([100, 10, 1, 0.1, 0.01, end_pos], ["100", "10", "1", "0.1", "0.01", "0"])
ax.minorticks_off()
ax.set(yticks=range(len(grids)), yticklabels=list(grids), ylim=(-0.6, len(grids) - 0.4),
       xlabel="noise level σ̃ (log scale, falling →; ○ the final 0)",
       title=f"Four grids of K = {K} steps on DDPM's linear chain")
ax.legend(loc="lower left", fontsize=8)
plt.show()
for name, g in grids.items():
    inside = int(((g > 0.3) & (g < 3)).sum())
    print(f"{name:>20}: " + " ".join(f"{s:.3g}" for s in g.tolist()) + f"   ({inside} in [0.3, 3])")
""")

md(r"""
**Expected output:** for DDPM's linear chain, 'uniform in t' is already fairly even in $\log\tilde\sigma$ at
high noise and stops at $\tilde\sigma \approx 0.34$, leaving one long final jump to the data. Karras'
$\rho = 7$ spends four of its ten nodes above $\tilde\sigma = 20$, where nothing happens: it was tuned for
EDM's range $[0.002, 80]$, and this chain's $\tilde\sigma_{\max} \approx 157$ stretches its coarse end. Log-SNR
spreads the nodes evenly and puts only two in the band. The DP grid jumps from $\tilde\sigma_{\max}$ straight
to 5 and puts five nodes in the band and the rest just below it.

## 5.3 Reusing old slopes: PLMS

A *multistep* method reuses the slopes of earlier steps instead of making new calls. The classical
Adams–Bashforth formula of order 4 extrapolates the slope over the next step from the last four:
$e' = (55 e_k - 59 e_{k-1} + 37 e_{k-2} - 9 e_{k-3})/24$. {cite:t}`liu2022pseudo` apply it to the noise
estimates $e = \hat\epsilon$ and feed the result to DDIM's deterministic jump (their "transfer" $\phi$, eq. 11)
instead of Euler's step:

$$
x_j = \phi(x_i, e', i \to j) = \sqrt{\bar\alpha_j}\,\frac{x_i - \sqrt{1 - \bar\alpha_i}\, e'}{\sqrt{\bar\alpha_i}}
+ \sqrt{1 - \bar\alpha_j}\, e' .
$$

This *pseudo* linear multistep method (PLMS) costs one call per step, like DDIM. It needs three earlier slopes,
so it must be warmed up. The paper uses pseudo Runge–Kutta steps (four calls each, `warmup='prk'`); the
default here, as in Stable Diffusion's PNDM scheduler, is a pseudo improved-Euler first step (two calls), then
Adams–Bashforth of orders 2 and 3: $K$ steps cost $K + 1$ calls. The weights assume equal steps, which is
why PLMS walks DDIM's evenly spaced chain indices.
""")

code(r"""
show_source(samplers.plms_sample)
""")

md(r"""
## 5.4 DPM-Solver++(2M): exact where it can be

The ODE has a linear part that the solvers above approximate too. {cite:t}`lu2022dpmsolverpp` integrate it
exactly. Change the clock to $\ell = \log(\alpha/\sigma) = -\log\tilde\sigma = \lambda/2$ (Lu et al. call it
$\lambda$: half our log-SNR). Then $d\tilde\sigma = -\tilde\sigma\, d\ell$, the ODE becomes
$d\tilde x/d\ell = D - \tilde x$, and the variation-of-constants formula gives, exactly, with
$h_k = \ell_{k+1} - \ell_k$ and $e^{-h_k} = \tilde\sigma_{k+1}/\tilde\sigma_k$,

$$
\tilde x_{k+1} = e^{-h_k}\, \tilde x_k
+ \int_{\ell_k}^{\ell_{k+1}} e^{-(\ell_{k+1} - \ell)}\, D(\tilde x_\ell; \ell)\, d\ell .
$$

Only the denoiser must be approximated, and it is the smoothest thing in sight: it varies between the cluster
means, not over the noise's huge range. Freezing it at $D_k$ gives $\tilde x_{k+1} = e^{-h}\tilde x_k
+ (1 - e^{-h}) D_k$, which is DDIM (DPM-Solver++ 1). Extrapolating it linearly from the last two calls gives
the multistep second-order solver, their Algorithm 2:

$$
\tilde x_{k+1} = e^{-h_k}\, \tilde x_k + (1 - e^{-h_k})\Big[\Big(1 + \frac1{2r_k}\Big) D_k - \frac1{2r_k} D_{k-1}\Big],
\qquad r_k = \frac{h_{k-1}}{h_k} .
$$

One call per step, second order, and stable because it extrapolates $\hat x_0$ (bounded) rather than
$\hat\epsilon$. The first step has no history and is first order. So is the last, into $\tilde\sigma = 0$, and
for fewer than 15 steps the library also takes the step *before* it at first order (Lu et al.'s advice for very
few steps, `lower_order_final`). The default grid is uniform in log-SNR.
""")

code(r"""
show_source(samplers.dpmpp_2m_sample)
""")

md(r"""
## 5.5 Optimising the grid: dynamic programming

Which $K$ of a fine grid's $G$ candidate nodes should a sampler visit? {cite:t}`watson2021learning` note that if
a run's cost is a *sum of per-step costs* $C(a \to b)$, the best $K$-step path from the first node to the last
is a shortest path with exactly $K$ edges, and dynamic programming finds it in $O(K G^2)$:

$$
V_k(b) = \min_{a < b}\ \big[V_{k-1}(a) + C(a \to b)\big], \qquad V_0(\text{start}) = 0, \qquad
\text{answer } V_K(\text{end}) .
$$

Keep the minimising $a$ at every stage and walk back from the end to read off the path:
""")

code(r"""
show_source(schedule_search.optimal_path)
""")

md(r"""
Watson et al. minimise the ELBO's terms. We want a small *solver* error, so our cost is the error of one solver
step from $a$ to $b$, started on the exact path of the mixture (a batch of exact RK4 trajectories):
$C(a \to b) = \mathrm{RMS}\,\lvert\mathrm{step}(\tilde x(\tilde\sigma_a); a \to b) - \tilde x(\tilde\sigma_b)\rvert$.

**Why errors are carried to the end.** A local error made at $\tilde\sigma_b$ does not stay the same size: the
rest of the flow transports it to the end point, multiplied by the Jacobian
$J_b = \partial\tilde x_{\text{end}} / \partial\tilde x_b$. Near a boundary between two clusters' basins the
flow pulls nearby points apart, so $\lVert J_b\rVert$ is large there and an early, small error decides the
cluster. To first order the global error is the sum of the propagated local errors ("Lady Windermere's fan"),

$$
\tilde x^{\text{solver}}_{\text{end}} - \tilde x_{\text{end}} \approx \sum_k J_{b_k}\, \delta_k ,
$$

so the cost uses $\lvert J_b\, \delta\rvert$ (`propagate=True`; the Jacobians come from finite differences of
the exact flow, cheap in 2-D). Without it the DP counts an early error at face value and under-spends early.
DPM-Solver++(2M) uses the previous call, so its step cost depends on three nodes, $C(a, b \to c)$; the DP then
runs over edges in $O(K G^3)$. The result is both a $\tilde\sigma$ grid (Euler, Heun, DPM-Solver++) and a
list of chain indices (DDIM, DDPM, PLMS). Below: the plain local cost against the carried one, for Euler.
""")

code(r"""
x_eval = torch.randn(256, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
ref_eval = benchmark.reference_endpoint(gmm, schedule, x_eval)[0]
rms = lambda x: float((x.double() - ref_eval).pow(2).sum(1).mean().sqrt())
errs = {(K, g): rms(samplers.euler_sample(exact, x_eval, schedule, K, sigmas=samplers.sigma_grid(schedule, K, g),
                                          progress=False)) for K in (5, 10) for g in ("karras", "logsnr")}
for propagate in (False, True):  # (this order computes each kind of exact flow once)
    for K in (5, 10):
        opt = schedule_search.optimise_schedule(gmm, schedule, K, "euler", propagate=propagate)
        errs[K, propagate] = rms(samplers.euler_sample(exact, x_eval, schedule, K, sigmas=opt.sigmas, progress=False))
lines = [f"{'Euler, K':>9} | {'Karras ρ=7':>10} | {'log-SNR':>8} | {'DP, plain cost':>14} | {'DP, carried cost':>16}"]
for K in (5, 10):
    lines.append(f"{K:>9} | {errs[K, 'karras']:10.3f} | {errs[K, 'logsnr']:8.3f} | {errs[K, False]:14.3f} | "
                 f"{errs[K, True]:16.3f}")
print("RMS error to the exact endpoint, 256 fresh starts (the DP was fitted on other ones):")
print("\n".join(lines))
""")

md(r"""
**Expected output:** the DP with the plain local cost is no better than the log-SNR grid; with the carried
cost it halves the error at both $K$. The plain cost sees large local errors at small $\tilde\sigma$, where
they are harmless (the flow contracts them), and spends its steps there; the carried cost moves them to the
band where the clusters are chosen. The grids were fitted on one batch of starting points and
evaluated on another, so this is not over-fitting to the batch. They *are* fitted to this mixture; on a real
model the same idea needs a cost that does not know the answer (Watson et al. use the ELBO terms).

## 5.6 The benchmark: error against network calls

Now every sampler of the book on the exact mixture, under DDPM's linear chain (`benchmark.sampler_benchmark`).
For the deterministic samplers the error is the RMS distance to the exact ODE end point from the *same* $x_T$,
so it is purely the solver's error, and the slope of log error against log NFE is the solver's **observed
order** $p$ (error $\approx C\,\mathrm{NFE}^{-p}$). The stochastic samplers (DDPM's ancestral sampler,
chapter 3's Euler–Maruyama and predictor–corrector) have no per-sample target; they are scored by the energy
distance of 500 samples to exact mixture samples, whose floor (two exact sample sets) is drawn in. Every
sampler that can take one also runs on its DP-optimised grid (dashed) for NFE ≤ 20. The NFE is counted, not
computed: Heun with $K$ steps uses $2K - 1 \le$ NFE calls, PLMS $K + 1$. In full mode the NFE go up to 1000.
""")

code(r"""
nfes = (5, 10, 20, 50, 100, 200, 1000) if cfg.full else (5, 10, 20, 50, 100, 200)
rows = benchmark.sampler_benchmark(gmm, schedule, nfes=nfes, max_optimised_nfe=20, batch=256, stochastic_batch=500)
print(benchmark.format_table(rows))
orders = benchmark.observed_orders(rows, nfe_min=10, nfe_max=200)
print("\nobserved order p (slope of log error on log NFE, NFE 10-200, default grids):")
print(", ".join(f"{benchmark._LABELS[s]} {p:.2f}" for (s, kind), p in orders.items()
                if kind == "default" and s in benchmark.DETERMINISTIC))
fig = benchmark.plot_benchmark(rows)
plt.show()
""")

md(r"""
**Expected output:** on the default grids DDIM and Euler are first order (slope 1.0–1.1), Heun, PLMS and
DPM-Solver++(2M) close to second order (1.9–2.4; PLMS's fourth-order formula is held back by its warm-up and
its first-order final jump). DPM-Solver++(2M) is the best ODE solver at every budget, 2–4 times better than
DDIM at 10–20 calls. Heun is the worst at 5–10 calls: with $K = 3$–5 steps on Karras' grid it crosses the
band where clusters are chosen in one or two steps, and its correction, evaluated after a jump over the
whole bend, throws points far off (RMS errors of 3 to 7, on data that lie on a circle of radius 2). From 50 calls on it overtakes the first-order solvers. The DP grids
(dashed) halve the error of DDIM, Euler and DPM-Solver++ at 5–10 calls, and rescue Heun. (DDIM and Euler coincide on the DP grid: in $\tilde\sigma$ DDIM's step is exactly
Euler's, chapter 4. Their default grids differ.) PLMS on a DP grid is
far *worse* at 5–10 calls: its Adams–Bashforth weights assume equal steps, and the grid was optimised for
DDIM's step, not for PLMS's. A grid is tuned for one solver.

The stochastic samplers (right) come within about twice the floor of the energy distance by 20 calls, and
DDPM's ancestral sampler on the DP-optimised indices is there already at 5. This is not a contradiction: they are asked for something weaker, samples from the right *distribution*, not the end point
of one particular path, and on an exact model their fresh noise does not hurt. With a learned model and few
steps the picture is different (chapter 4, section 4.3). The repository's `scripts/benchmark.py --samplers`
prints this table with finer NFE, and compares DPM-Solver++(2M) at 10 calls with the diffusers library's
scheduler (ours: lower error, on the log-SNR grid).

## 5.7 On a real network: the digits model

Does the ranking survive a learned denoiser? The chapter 1 digits UNet (`ddpm_digits`, 8×8 images, the linear
chain), with 200 samples from the same noises per sampler, scored as in chapter 4: the pixel Fréchet distance
to held-out digits (lower is better; 200 *training* digits set its floor) and the share of samples a digit
classifier reads with at least 90 % confidence. Each sampler gets 5, 10 and 20 network calls.
""")

code(r"""
unet = load_pretrained("ddpm_digits", device=device)
test, train_digits = load_digits(split="test"), load_digits(split="train")
reader = digits_classifier()
flat = lambda x: x.reshape(len(x), -1).cpu()
n_eval = 1000 if cfg.full else 200
budgets = [5, 10, 20]
z = torch.randn(n_eval, 1, 8, 8, generator=torch.Generator(device).manual_seed(5), device=device)
runners = {
    "DDIM": lambda n: ddim.ddim_sample(unet, z, schedule, n, progress=False),
    "Heun (Karras)": lambda n: samplers.heun_sample(unet, z, schedule, (n + 1) // 2, progress=False),
    "PLMS": lambda n: samplers.plms_sample(unet, z, schedule, n - 1, progress=False),
    "DPM-Solver++(2M)": lambda n: samplers.dpmpp_2m_sample(unet, z, schedule, n, progress=False),
    "DPM++(2M), DP grid": lambda n: samplers.dpmpp_2m_sample(
        unet, z, schedule, n, sigmas=schedule_search.optimise_schedule(gmm, schedule, n, "dpmpp_2m").sigmas,
        progress=False),
}
scores, shown = {}, {}
for name, run in runners.items():
    for n in budgets:
        x = run(n).clamp(-1, 1).cpu()
        scores[name, n] = (frechet_distance(flat(x), flat(test.x)), reader.summary(x)["confident_fraction"])
        if n == 10:
            shown[name] = x[:18]
fd_floor = frechet_distance(flat(train_digits.x[:n_eval]), flat(test.x))
print(f"{'sampler':>19} | " + " | ".join(f"NFE {n:>2}: FD  read %" for n in budgets))
for name in runners:
    print(f"{name:>19} | " + " | ".join(f"{scores[name, n][0]:9.2f}  {100 * scores[name, n][1]:6.0f}"
                                        for n in budgets))
print(f"reference: {n_eval} training digits have pixel FD {fd_floor:.2f}; the reader is sure of "
      f"{100 * reader.summary(test.x)['confident_fraction']:.0f} % of held-out digits")

fig, axes = plt.subplots(2, 3, figsize=(7.2, 3.4))
for ax, (name, x) in zip(axes.flat, shown.items()):
    viz.image_grid(x, nrow=6, ax=ax, title=name)
axes.flat[-1].set_visible(False)
fig.suptitle("Digits from the same 18 noises, 10 network calls each", fontsize=11)
plt.show()
""")

md(r"""
**Expected output:** the image model agrees with the benchmark. DPM-Solver++(2M) is the best or tied at every
budget: at 10 calls it matches what DDIM reaches with 20, and at 20 it is at the floor of 200 training digits.
Heun on Karras' grid is far off at 5 calls (FD near 80) and still the worst at 10 (harsh, over-sharpened
digits above), then catches up at 20. PLMS fails at 5 calls too: its four long steps extrapolate $\hat\epsilon$,
which changes fast, where DPM-Solver++ extrapolates the slowly varying $\hat x_0$. From 10 calls it is good.
The grid optimised for the *mixture* transfers only partly: more legible digits at 5 and 10 calls (76 % against
63 %, 80 % against 76 %), but no better FD. Where an 8×8 image "chooses its digit" need not be where a 2-D
point chooses its cluster. Differences of about 0.1 in FD or 3 points of legibility are within the noise of
200 samples.

## Exercises

Each exercise has a code cell for your answer (in the book the solution is folded away; click to show it) and a
check cell that compares it with a closed form.

**Exercise 5.1: one Heun step on a Gaussian.** For data $x_0 \sim \mathcal N(0, s^2 I)$ the denoiser is linear,
$D(\tilde x; \tilde\sigma) = \frac{s^2}{s^2 + \tilde\sigma^2}\,\tilde x$, so the ODE is
$d\tilde x / d\tilde\sigma = \frac{\tilde\sigma}{s^2 + \tilde\sigma^2}\, \tilde x$ and its exact flow is
$\tilde x(\tilde\sigma_1) = \sqrt{(s^2 + \tilde\sigma_1^2)/(s^2 + \tilde\sigma_0^2)}\ \tilde x(\tilde\sigma_0)$.
A Heun step from $\tilde\sigma_0$ to $\tilde\sigma_1 > 0$ multiplies $\tilde x$ by a number too. Write
`heun_gain(s2, s0, s1)` returning it. The check compares it with the library's `heun_sample` on the exact
model, and confirms that its local error shrinks like $h^3$ (halving the step divides it by about 8),
against $h^2$ for Euler.
""")

code(r"""
def heun_gain(s2, s0, s1):
    ### BEGIN SOLUTION
    d0 = s0 / (s2 + s0 ** 2)  # slope per unit x~ at the start
    g_euler = 1 + (s1 - s0) * d0
    d1 = s1 / (s2 + s1 ** 2) * g_euler  # slope at the Euler point
    return 1 + (s1 - s0) * (d0 + d1) / 2
    ### END SOLUTION
""")

code(r"""
# check: the library's Heun step on the exact Gaussian model, and the local error's order
s = 0.7
model = ExactModel(gaussian(torch.zeros(3), s), schedule)  # N(0, s^2 I) in 3-D, exact eps-predictor
x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
a = lambda sig: 1 / math.sqrt(1 + sig ** 2)  # alpha of the linear chain at sigma~ (VP)
for s0, s1 in ((2.0, 1.0), (0.5, 0.3), (20.0, 3.0)):
    x_s0 = a(s0) * x0  # a state at sigma~ = s0, in x-space
    out = samplers.heun_sample(model, x_s0, schedule, 1, sigmas=torch.tensor([s0, s1], dtype=torch.float64),
                               progress=False)
    assert torch.allclose(out, a(s1) / a(s0) * heun_gain(s ** 2, s0, s1) * x_s0, rtol=1e-6, atol=1e-9), (s0, s1)
exact_gain = lambda s0, s1: math.sqrt((s ** 2 + s1 ** 2) / (s ** 2 + s0 ** 2))
euler_gain = lambda s0, s1: 1 + (s1 - s0) * s0 / (s ** 2 + s0 ** 2)
s0, hs = 1.0, (0.2, 0.1, 0.05)
heun_err = [abs(heun_gain(s ** 2, s0, s0 - h) - exact_gain(s0, s0 - h)) for h in hs]
euler_err = [abs(euler_gain(s0, s0 - h) - exact_gain(s0, s0 - h)) for h in hs]
for e in (heun_err, euler_err):
    assert all(x > 0 for x in e)
assert all(6 < heun_err[i] / heun_err[i + 1] < 10 for i in range(2))  # O(h^3)
assert all(3 < euler_err[i] / euler_err[i + 1] < 5 for i in range(2))  # O(h^2)
print("Exercise 5.1 passed; local error for h = 0.2, 0.1, 0.05: Heun",
      ", ".join(f"{e:.1e}" for e in heun_err), "| Euler", ", ".join(f"{e:.1e}" for e in euler_err))
""")

md(r"""
**Exercise 5.2: the dynamic program.** Write `best_path(cost, K)`: given a $(G, G)$ matrix with the cost
`cost[a, b]` of a step from node `a` to node `b > a`, return the list of $K + 1$ nodes $0 = n_0 < n_1 < \dots
< n_K = G - 1$ with the smallest total cost, in $O(K G^2)$ time (the recursion of section 5.5). The check
compares it with trying every path on random matrices, and with the library's `optimal_path`.
""")

code(r"""
def best_path(cost, K):
    ### BEGIN SOLUTION
    G = cost.shape[0]
    V = [0.0] + [math.inf] * (G - 1)  # V[b]: best cost of reaching b in k steps
    back = []
    for _ in range(K):
        new, arg = [math.inf] * G, [0] * G
        for b in range(1, G):
            for a_ in range(b):
                c = V[a_] + float(cost[a_, b])
                if c < new[b]:
                    new[b], arg[b] = c, a_
        V = new
        back.append(arg)
    path = [G - 1]
    for arg in reversed(back):
        path.append(arg[path[-1]])
    return path[::-1]
    ### END SOLUTION
""")

code(r"""
# check: brute force over every K-step path, and the library's DP, on random cost matrices
def total(cost, p):
    return sum(float(cost[u, v]) for u, v in zip(p[:-1], p[1:]))

gen = torch.Generator().manual_seed(13)
for G, K in ((5, 2), (7, 3), (9, 4), (9, 8), (6, 1)):
    cost = torch.rand(G, G, generator=gen, dtype=torch.float64)
    p = list(best_path(cost, K))
    assert len(p) == K + 1 and p[0] == 0 and p[-1] == G - 1 and all(u < v for u, v in zip(p[:-1], p[1:])), p
    brute = min(total(cost, [0, *inner, G - 1]) for inner in itertools.combinations(range(1, G - 1), K - 1))
    assert math.isclose(total(cost, p), brute, rel_tol=1e-12), (G, K)
    assert math.isclose(total(cost, p), schedule_search.optimal_path(cost, K)[1], rel_tol=1e-12)
print("Exercise 5.2 passed")
""")

md(r"""
**Exercise 5.3: Karras' grid.** Write `my_karras(K, s_min, s_max, rho)` returning the $K$ positive nodes of eq. 5
(without the final 0) as a float64 tensor. The check compares it with the library, and with its two limits:
$\rho = 1$ is evenly spaced in $\tilde\sigma$, and a very large $\rho$ approaches the geometric (log-SNR
uniform) grid.
""")

code(r"""
def my_karras(K, s_min, s_max, rho):
    ### BEGIN SOLUTION
    k = torch.arange(K, dtype=torch.float64)
    return (s_max ** (1 / rho) + k / (K - 1) * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    ### END SOLUTION
""")

code(r"""
# check: the library, rho = 1 (uniform in sigma~) and rho -> infinity (uniform in log sigma~)
for K, lo, hi, rho in ((10, 0.002, 80.0, 7.0), (4, 0.01, 157.0, 3.0), (25, sigma_min, sigma_max, 7.0)):
    assert torch.allclose(my_karras(K, lo, hi, rho), samplers.karras_sigmas(K, lo, hi, rho, append_zero=False))
assert torch.allclose(my_karras(6, 0.5, 3.0, 1.0), torch.linspace(3.0, 0.5, 6, dtype=torch.float64))
geometric = torch.exp(torch.linspace(math.log(80.0), math.log(0.002), 8, dtype=torch.float64))
assert torch.allclose(my_karras(8, 0.002, 80.0, 1e5), geometric, rtol=1e-3)
print("Exercise 5.3 passed")
""")

md(r"""
## Summary

- In Karras et al.'s variables $\tilde x = x/\alpha$, $\tilde\sigma = \sigma/\alpha$ the probability-flow ODE of
  any schedule is $d\tilde x/d\tilde\sigma = (\tilde x - D)/\tilde\sigma$, which needs only the denoiser. Every
  deterministic sampler is an ODE solver on a grid of $\tilde\sigma$.
- Euler (= DDIM) is first order. Heun is second order at two calls per step; PLMS and DPM-Solver++(2M) reuse
  earlier calls and reach second order at one call per step. DPM-Solver++ integrates the linear part exactly
  and extrapolates the bounded $\hat x_0$, and is the best of them at 5–20 calls, on the exact mixture and on the
  digits model.
- The grid is half of the sampler. Hand-made grids (uniform in $t$, in log-SNR, Karras' $\rho$) put their
  steps in different places; dynamic programming over a fine grid finds the best $K$ steps for a given solver
  and cost, halving the error at few steps. The cost must carry each local error to the end with the flow's
  Jacobian, and a grid tuned for one solver can hurt another.
- Measure against an exact answer: on a closed-form mixture the error of each solver, and its observed order,
  can be read off a log–log plot.

Next: chapter 6 goes below 5 calls by *training* a student to take the big steps, distilling the solver into
the network {cite:p}`salimans2022progressive`.
""")

ch.write("chapters/05_solvers.ipynb")
