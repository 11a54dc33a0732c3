"""Our samplers against diffusers' schedulers, step by step, with the same perfect model and the same noise.

Set-up: a 2-D three-component Gaussian mixture, its exact eps model (``ExactModel``) under our linear DDPM chain,
and each diffusers scheduler built on the *same* betas (``trained_betas``) with every schedule buffer replaced by
our float64 values after ``set_timesteps`` (alphas_cumprod, final/initial alpha, sigmas), ``clip_sample`` and
thresholding off. Both sides call the same model; stochastic samplers get the same seeded ``torch.Generator``
stream (diffusers draws with ``randn_tensor(shape, generator, dtype=model_output.dtype)``, i.e. ``torch.randn``
exactly as we do, after each network call). We require agreement to 1e-6 relative along the whole trajectory.

Convention differences found (diffusers 0.42), each handled or pinned below:

* Index offset. diffusers' timestep k in 0..N-1 is our index i = k + 1 (its alphas_cumprod[k] = our
  alpha_bars[k + 1]; our alpha_bars[0] = 1 is the data). A network trained with our t = i / N must be called with
  t = (k + 1) / N from a diffusers loop (``test_index_convention`` verifies it on ``add_noise``).
* Final alpha. DDIM/PNDM's ``set_alpha_to_one=True`` (final_alpha_cumprod = 1) is our final index 0; False
  (alphas_cumprod[0]) is our final index 1, so the output is x_1, not x_0. The DDIM inverse's
  ``initial_alpha_cumprod`` is the same choice at the start.
* Spacings. 'leading' / 'trailing' / 'linspace' of DDIM/DDPM/PNDM/Euler equal our ``spaced_indices`` + 1 offset
  (tested for many N, K). DPMSolverMultistepScheduler's differ: 'linspace' is round(linspace(0, N-1, K+1))[1:]
  and 'leading' uses N // (K + 1); we feed its own timesteps to our solver through ``discrete_sigmas``.
* DDIMScheduler (and PNDM, and the DDIM inverse) step from k to k - N // K *whatever the spacing*, so with
  'linspace', or 'trailing' when K does not divide N, its jumps do not land on its own listed timesteps; we jump
  to the next listed index. The cross-checks use K | N (``test_ddim_fixed_stride_quirk`` pins the quirk).
* DDPMScheduler with respaced steps draws noise at every listed k > 0, including the last jump (to alpha_bar = 1)
  whenever the last listed k > 0 ('trailing'/'linspace'): with 'fixed_small' that noise has variance clamped to
  1e-20 (harmless), with 'fixed_large' it is beta of the jump (not harmless); ``ddpm_sample`` adds no noise on the
  last step. Cross-checked: full chain (both variances) and trailing respacing with beta_tilde.
* DDIM eta > 0 draws a noise tensor on every step, the last included (times sigma = 0 with final alpha 1); we draw
  on every step too, so the streams agree. ``ddpm_sample`` skips the last draw: same values, since it is last.
* Euler (EulerDiscreteScheduler) works on x~ = x / alpha with sigma~ = sqrt((1 - abar) / abar) and scales the
  network input by 1 / sqrt(sigma~^2 + 1) = alpha (``scale_model_input``): the same as our sigma view. Its
  ``init_noise_sigma`` is sqrt(sigma_max^2 + 1) = 1 / alpha for 'leading' but sigma_max for 'linspace' and
  'trailing' (relative difference 1 / (2 sigma_max^2) ~ 2e-5 here); we start both from x~ = x_T / alpha.
  Its ``step`` (and DPM-Solver's) casts the sample to float32 before updating, so agreement there is ~1e-7, not
  1e-12. With 'linspace' its timesteps are fractional and it interpolates sigma~ linearly in k, while our chain
  interpolates log alpha_bar in t; not compared.
* DPM-Solver++ (DPMSolverMultistepScheduler, algorithm_type='dpmsolver++', solver_type='midpoint', order 2) is
  our ``dpmpp_2m_sample`` in x-space (sample = x, init_noise_sigma = 1). Its last step is first order if
  final_sigmas_type = 'zero' (always: lambda = inf) or lower_order_final and K < 15; ours has the same rule.
* PNDM: ``skip_prk_steps=True`` is our warmup='lower_order' (one pseudo improved Euler jump, 2 calls, its
  predictor's eps dropped, then Adams-Bashforth 2, 3, 4); False is warmup='prk' (three pseudo Runge-Kutta jumps
  of 4 calls with half-way index k - (N // K) // 2). Its default ``set_alpha_to_one`` is False; we set True.
  Its transfer phi (``_get_prev_sample``) is DDIM's eta = 0 jump written differently (equal to ~1e-15).
* PNDM with v-prediction: diffusers combines the raw v-hats with the Adams-Bashforth weights and converts the
  combination to eps at the current sample; ``plms_sample`` converts every prediction to eps-hat where it was
  evaluated (the sampler only ever sees eps-hat, whatever the model predicts). Both are consistent; on the test's
  problem (K = 20, leading) the outputs differ by up to 0.16. ``test_plms_with_v_prediction_has_two_readings``
  checks both readings: ours equals the eps-model's run, diffusers' equals the combined-v reading rebuilt here.
"""

import math

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers", exc_type=ImportError)  # missing, or broken by its own deps
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 copy= notes inside diffusers
from diffusers import (DDIMInverseScheduler, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,  # noqa: E402
                       EulerDiscreteScheduler, PNDMScheduler)

from diffedu.ddim import ddim_invert, ddim_sample  # noqa: E402
from diffedu.ddpm import ddpm_sample, q_sample  # noqa: E402
from diffedu.grids import discrete_sigmas, index_grid, spaced_indices  # noqa: E402
from diffedu.samplers import dpmpp_2m_sample, euler_sample, plms_sample  # noqa: E402
from diffedu.schedules import linear_schedule  # noqa: E402
from diffedu.toy import ExactModel, GaussianMixture  # noqa: E402

F64 = torch.float64
TOL = 1e-6
MIXTURE = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.5, 1.0], [0.0, -1.5]]), torch.tensor([0.3, 0.5, 0.4]),
                          torch.tensor([0.2, 0.5, 0.3]))
SCHED = linear_schedule(1000)
SMALL = linear_schedule(100, beta_start=1e-3, beta_end=0.2)  # a short chain for full-length DDPM runs
B = 8


def noise(seed, shape=(B, 2)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def theirs_model(schedule):
    """diffusers calls the network with its timestep k; our network wants t = (k + 1) / N."""
    model = ExactModel(MIXTURE, schedule, "eps")
    return lambda x, k: model(x, torch.tensor((float(k) + 1) / schedule.N, dtype=F64))


def make(cls, schedule, **config):
    """A diffusers scheduler on our betas; float64 buffers are put in by ``promote`` after set_timesteps."""
    kwargs = dict(num_train_timesteps=schedule.N, trained_betas=schedule.betas[1:].numpy())
    if cls in (DDIMScheduler, DDPMScheduler, DDIMInverseScheduler):
        kwargs["clip_sample"] = False
    return cls(**kwargs, **config)


def promote(sch, schedule):
    """Replace diffusers' float32 schedule buffers by our float64 ones (index k <-> our k + 1)."""
    sch.betas = schedule.betas[1:].clone()
    sch.alphas = schedule.alphas[1:].clone()
    sch.alphas_cumprod = schedule.alpha_bars[1:].clone()
    if hasattr(sch, "final_alpha_cumprod"):
        sch.final_alpha_cumprod = torch.tensor(1.0 if sch.config.set_alpha_to_one else
                                               float(schedule.alpha_bars[1]), dtype=F64)
    if hasattr(sch, "initial_alpha_cumprod"):
        sch.initial_alpha_cumprod = torch.tensor(1.0 if sch.config.set_alpha_to_one else
                                                 float(schedule.alpha_bars[1]), dtype=F64)
    if hasattr(sch, "one"):
        sch.one = torch.tensor(1.0, dtype=F64)
    if getattr(sch, "sigmas", None) is not None and getattr(sch, "timesteps", None) is not None \
            and len(sch.sigmas) == len(sch.timesteps) + 1:
        last = float(sch.sigmas[-1])
        final = 0.0 if last == 0 else math.sqrt(float(schedule.betas[1] / schedule.alphas[1]))
        sch.sigmas = discrete_sigmas(schedule, sch.timesteps.round().long() + 1, final)
    return sch


def rel_dev(ours, theirs):
    """max over the trajectory of max|ours - theirs| / max|theirs| at that step."""
    assert len(ours) == len(theirs)
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(ours, theirs))


def run_discrete(sch, model, x, generator=None, **step_kwargs):
    """The canonical diffusers loop; returns the list of states [x_T, ...] after each step."""
    states = [x]
    for k in sch.timesteps:
        out = sch.step(model(x, k), k, x, generator=generator, **step_kwargs) if generator is not None else \
            sch.step(model(x, k), k, x, **step_kwargs)
        x = out.prev_sample
        states.append(x)
    return states


# --- conventions ---------------------------------------------------------------------------------------------

def test_index_convention():
    """diffusers' default linear betas are ours; its add_noise at timestep k is our q_sample at index k + 1."""
    d = DDPMScheduler(num_train_timesteps=1000)  # linear 1e-4 .. 0.02, float32
    assert torch.allclose(d.alphas_cumprod.double(), SCHED.alpha_bars[1:], rtol=1e-5)
    promote(d, SCHED)
    x0, eps = noise(0), noise(1)
    k = torch.tensor([0, 1, 499, 998, 999] + [7] * (B - 5))
    theirs = d.add_noise(x0, eps, k)
    ours, _ = q_sample(SCHED, x0, k + 1, noise=eps)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-14)


@pytest.mark.parametrize("N,K", [(1000, 10), (1000, 7), (1000, 50), (100, 3), (10, 4), (50, 50), (1000, 1)])
@pytest.mark.parametrize("spacing,offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
def test_spaced_indices_are_diffusers_timesteps_plus_one(N, K, spacing, offset):
    if spacing == "leading" and (K - 1) * (N // K) + offset > N - 1:
        pytest.skip("offset pushes past N")
    d = DDIMScheduler(num_train_timesteps=N, timestep_spacing=spacing, steps_offset=offset)
    d.set_timesteps(K)
    assert spaced_indices(N, K, spacing, offset).tolist() == (d.timesteps + 1).tolist()


def test_ddim_fixed_stride_quirk():
    """DDIMScheduler jumps k -> k - N // K even when its 'linspace' timesteps are not N // K apart."""
    d = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="linspace", clip_sample=False)
    d.set_timesteps(10)
    assert (d.timesteps[0] - d.timesteps[1]).item() == 111 and 1000 // 10 == 100


def test_euler_init_noise_sigma_differs_by_spacing():
    for spacing, expected in [("leading", lambda s: math.sqrt(s ** 2 + 1)), ("trailing", lambda s: s),
                              ("linspace", lambda s: s)]:
        e = make(EulerDiscreteScheduler, SCHED, timestep_spacing=spacing)
        e.set_timesteps(20)
        smax = float(e.sigmas.max())
        assert float(e.init_noise_sigma) == pytest.approx(expected(smax), rel=1e-6)


# --- samplers ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variance,steps", [("beta", None), ("beta_tilde", None), ("beta_tilde", 20)])
def test_ddpm_ancestral_matches_ddpm_scheduler(variance, steps):
    schedule = SMALL
    d = make(DDPMScheduler, schedule, variance_type={"beta": "fixed_large", "beta_tilde": "fixed_small"}[variance],
             timestep_spacing="trailing")
    d.set_timesteps(steps or schedule.N)
    promote(d, schedule)
    x_T = noise(2)
    theirs = run_discrete(d, theirs_model(schedule), x_T, generator=torch.Generator().manual_seed(5))
    _, ours, _ = ddpm_sample(ExactModel(MIXTURE, schedule), x_T, schedule, index_grid(schedule, steps or schedule.N),
                             variance=variance,
                             generator=torch.Generator().manual_seed(5), progress=False, return_trajectory=True)
    assert rel_dev(ours, theirs) < TOL


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("spacing,offset,alpha_one", [("leading", 0, True), ("leading", 1, False),
                                                      ("trailing", 0, True)])
def test_ddim_matches_ddim_scheduler(eta, spacing, offset, alpha_one):
    K = 20
    d = make(DDIMScheduler, SCHED, timestep_spacing=spacing, steps_offset=offset, set_alpha_to_one=alpha_one)
    d.set_timesteps(K)
    promote(d, SCHED)
    x_T = noise(3)
    theirs = run_discrete(d, theirs_model(SCHED), x_T, generator=torch.Generator().manual_seed(7), eta=eta)
    indices = index_grid(SCHED, K, spacing, steps_offset=offset, final=0 if alpha_one else 1)
    _, ours, _ = ddim_sample(ExactModel(MIXTURE, SCHED), x_T, SCHED, indices, eta=eta,
                             generator=torch.Generator().manual_seed(7), progress=False, return_trajectory=True)
    assert rel_dev(ours, theirs) < TOL


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_inversion_matches_ddim_inverse_scheduler(spacing):
    K = 20
    d = make(DDIMInverseScheduler, SCHED, timestep_spacing=spacing)
    d.set_timesteps(K)
    promote(d, SCHED)
    x0 = MIXTURE.sample(B, torch.Generator().manual_seed(4))[0]
    theirs = run_discrete(d, theirs_model(SCHED), x0)
    _, ours, _ = ddim_invert(ExactModel(MIXTURE, SCHED), x0, SCHED, index_grid(SCHED, K, spacing), progress=False,
                             return_trajectory=True)
    assert rel_dev(ours, theirs) < TOL


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_euler_matches_euler_discrete_scheduler(spacing):
    K = 20
    e = make(EulerDiscreteScheduler, SCHED, timestep_spacing=spacing)
    e.set_timesteps(K)
    promote(e, SCHED)
    sigmas = e.sigmas.clone()
    x_T = noise(6)
    model = theirs_model(SCHED)
    x = x_T * math.sqrt(float(sigmas[0]) ** 2 + 1)  # x~ = x_T / alpha: see the docstring on init_noise_sigma
    theirs = [x_T]
    for n, k in enumerate(e.timesteps):
        x = e.step(model(e.scale_model_input(x, k), k), k, x).prev_sample
        theirs.append(x / math.sqrt(float(sigmas[n + 1]) ** 2 + 1))  # back to x-space
    _, ours, _ = euler_sample(ExactModel(MIXTURE, SCHED), x_T, SCHED, sigmas, progress=False,
                              return_trajectory=True)
    assert rel_dev(ours, theirs) < TOL


@pytest.mark.parametrize("K,spacing,final,lower_order_final", [(10, "linspace", "zero", True),
                                                                (20, "linspace", "zero", True),
                                                                (10, "trailing", "sigma_min", True),
                                                                (10, "leading", "sigma_min", False)])
def test_dpmpp_2m_matches_dpm_solver_multistep(K, spacing, final, lower_order_final):
    s = make(DPMSolverMultistepScheduler, SCHED, algorithm_type="dpmsolver++", solver_order=2,
             solver_type="midpoint", timestep_spacing=spacing, final_sigmas_type=final,
             lower_order_final=lower_order_final)
    s.set_timesteps(K)
    promote(s, SCHED)
    sigmas = s.sigmas.clone()
    x_T = noise(8)
    theirs = run_discrete(s, theirs_model(SCHED), x_T)
    _, ours, _ = dpmpp_2m_sample(ExactModel(MIXTURE, SCHED), x_T, SCHED, sigmas,
                                 lower_order_final=lower_order_final, progress=False, return_trajectory=True)
    assert rel_dev(ours, theirs) < TOL


@pytest.mark.parametrize("warmup", ["lower_order", "prk"])
def test_plms_matches_pndm_scheduler(warmup):
    K = 20
    p = make(PNDMScheduler, SCHED, skip_prk_steps=warmup == "lower_order", set_alpha_to_one=True,
             timestep_spacing="leading")
    p.set_timesteps(K)
    promote(p, SCHED)
    x_T = noise(9)
    states = run_discrete(p, theirs_model(SCHED), x_T)
    # diffusers returns a state after every call; keep those on the grid (after each completed jump)
    keep = list(range(1, len(states) - 1)) if warmup == "lower_order" else \
        [3, 7, 11] + list(range(12, len(states) - 1))
    theirs = [states[0]] + [states[n + 1] for n in keep]
    _, ours, _ = plms_sample(ExactModel(MIXTURE, SCHED), x_T, SCHED, index_grid(SCHED, K, "leading"), warmup=warmup,
                             progress=False, return_trajectory=True)
    assert rel_dev(ours, theirs) < TOL


def _plms_combined_v(model, x_T, schedule, grid):
    """PLMS read the other way: combine the raw v-hats with the Adams-Bashforth weights, then convert the combination
    to eps at the current sample x_i (eps = sqrt(a_i) v + sqrt(1 - a_i) x_i for VP): diffusers' PNDM reading."""
    from diffedu.samplers import _transfer

    ab, times, seq = schedule.alpha_bars.tolist(), schedule.times, grid.tolist()
    x, vs = x_T, []
    for k, (i, j) in enumerate(zip(seq[:-1], seq[1:])):
        def eps_of(v):
            return math.sqrt(ab[i]) * v + math.sqrt(1 - ab[i]) * x
        v = model(x, times[i].expand(len(x)))
        vs.append(v)
        if k == 0 and len(seq) > 2:  # pseudo improved Euler: v at the transferred point, averaged with v
            v_comb = (v + model(_transfer(x, eps_of(v), ab[i], ab[j]), times[j].expand(len(x)))) / 2
        elif len(vs) == 2:
            v_comb = (3 * vs[-1] - vs[-2]) / 2
        elif len(vs) == 3:
            v_comb = (23 * vs[-1] - 16 * vs[-2] + 5 * vs[-3]) / 12
        else:
            v_comb = (55 * vs[-1] - 59 * vs[-2] + 37 * vs[-3] - 9 * vs[-4]) / 24
        vs = vs[-3:]
        x = _transfer(x, eps_of(v_comb), ab[i], ab[j])
    return x


def test_plms_with_v_prediction_has_two_readings():
    """A convention, pinned: PLMS combines past predictions with Adams-Bashforth weights. diffedu converts each v-hat
    to eps-hat where it was evaluated (so a v-model gives exactly the eps-model's samples: the sampler sees only
    eps-hat); diffusers' PNDMScheduler(prediction_type='v_prediction') combines the raw v-hats and converts the
    combination at the current sample. Both are consistent discretisations; they differ by O(step) per step."""
    K = 20
    x_T = noise(10)
    grid = index_grid(SCHED, K, "leading")
    v_model = ExactModel(MIXTURE, SCHED, "v")
    ours_v = plms_sample(v_model, x_T, SCHED, grid, progress=False)
    ours_eps = plms_sample(ExactModel(MIXTURE, SCHED, "eps"), x_T, SCHED, grid, progress=False)
    torch.testing.assert_close(ours_v, ours_eps, rtol=1e-9, atol=1e-9)  # reading 1: eps where evaluated
    p = make(PNDMScheduler, SCHED, skip_prk_steps=True, set_alpha_to_one=True, timestep_spacing="leading",
             prediction_type="v_prediction")
    p.set_timesteps(K)
    promote(p, SCHED)
    theirs_v = run_discrete(p, lambda x, k: v_model(x, torch.tensor((float(k) + 1) / SCHED.N, dtype=F64)), x_T)
    combined = _plms_combined_v(v_model, x_T, SCHED, grid)
    assert rel_dev([theirs_v[-1]], [combined]) < TOL  # reading 2: diffusers' v combination, reproduced here
    gap = (combined - ours_v).abs().max().item()
    assert gap > 0.05, gap  # the two readings really differ (not a rounding effect)
