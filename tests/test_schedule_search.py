"""Optimised step schedules (Watson et al. 2021 DP): exact optimum by brute force, and measured gains.

Gains are measured out of sample: the DP sees trajectories from seed 0, the errors are measured on seed 1, against
the exact PF-ODE endpoint of the eight-Gaussians mixture (a 200-steps-per-unit RK4 run, converged to ~1e-9).
"""

import math

import pytest
import torch

from diffedu.ddim import ddim_sample
from diffedu.grids import discrete_sigmas, index_grid, karras_sigmas, sigma_range, spaced_indices
from diffedu.samplers import dpmpp_2m_sample, euler_sample, heun_sample
from diffedu.schedule_search import (brute_force_path, candidate_grid, exact_flow, log_snr_sigmas,
                                     mixture_denoiser, optimal_path, optimal_path_multistep, optimise_schedule)
from diffedu.schedules import VPLinear, linear_schedule
from diffedu.toy import ExactModel, eight_gaussians

F64 = torch.float64
MIX = eight_gaussians()
SCHED = linear_schedule(1000)
MODEL = ExactModel(MIX, SCHED)
X_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=F64)


def reference():
    lo, hi = sigma_range(SCHED)
    grid = torch.tensor([hi, lo, 0.0], dtype=F64)
    return exact_flow(mixture_denoiser(MIX), X_T / float(SCHED.alpha(1.0)), grid, 200)[-1]


REF = reference()


def rms(x):
    return float((x - REF).pow(2).sum(1).mean().sqrt())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("K", [1, 2, 3, 5])
def test_dp_is_the_brute_force_optimum(seed, K):
    g = torch.Generator().manual_seed(seed)
    G = 8
    cost = torch.rand(G, G, generator=g, dtype=F64)
    path, total = optimal_path(cost, K)
    bf_path, bf_total = brute_force_path(cost, K)
    assert total == pytest.approx(bf_total, rel=1e-12) and path == bf_path
    assert path[0] == 0 and path[-1] == G - 1 and len(path) == K + 1
    cost3 = torch.rand(G, G, G, generator=g, dtype=F64)
    path, total = optimal_path_multistep(cost, cost3, K)
    bf_path, bf_total = brute_force_path(cost, K, cost3)
    assert total == pytest.approx(bf_total, rel=1e-12) and path == bf_path


def test_exact_flow_reference_is_converged():
    lo, hi = sigma_range(SCHED)
    grid = torch.tensor([hi, lo, 0.0], dtype=F64)
    coarse = exact_flow(mixture_denoiser(MIX), X_T / float(SCHED.alpha(1.0)), grid, 100)[-1]
    assert (coarse - REF).abs().max() < 1e-6  # RK4: halving h shrinks it 16x, so REF is good to ~1e-8


@pytest.mark.parametrize("solver,sampler", [("euler", euler_sample), ("heun", heun_sample),
                                            ("dpmpp_2m", dpmpp_2m_sample)])
@pytest.mark.parametrize("K", [5, 10])
def test_optimised_grid_beats_the_standard_grids(solver, sampler, K):
    opt = optimise_schedule(MIX, SCHED, K, solver)
    assert opt.sigmas.shape == (K + 1,) and float(opt.sigmas[-1]) == 0 and bool((opt.sigmas.diff() < 0).all())
    assert opt.indices.shape == (K + 1,) and int(opt.indices[0]) == SCHED.N and int(opt.indices[-1]) == 0
    assert torch.allclose(discrete_sigmas(SCHED, opt.indices[:-1]), opt.sigmas)
    lo, hi = sigma_range(SCHED)
    grids = {"karras rho=7": karras_sigmas(K, lo, hi), "uniform log-SNR": log_snr_sigmas(SCHED, K),
             "uniform t": discrete_sigmas(SCHED, spaced_indices(SCHED.N, K, "trailing"))}
    ours = rms(sampler(MODEL, X_T, SCHED, opt.sigmas, progress=False))
    for name, grid in grids.items():
        theirs = rms(sampler(MODEL, X_T, SCHED, grid, progress=False))
        assert ours < 0.8 * theirs, (name, ours, theirs)


def test_ddim_indices_are_an_index_grid():
    K = 5
    opt = optimise_schedule(MIX, SCHED, K, "ddim")
    ours = rms(ddim_sample(MODEL, X_T, SCHED, opt.indices, progress=False))
    trailing = rms(ddim_sample(MODEL, X_T, SCHED, index_grid(SCHED, K), progress=False))
    assert ours < 0.8 * trailing
    # the same as DDIM on the respaced chain that visits only those indices
    respaced = SCHED.respace(opt.indices[:-1].flip(0))
    assert torch.allclose(ddim_sample(MODEL, X_T, respaced, index_grid(respaced, K), progress=False),
                          ddim_sample(MODEL, X_T, SCHED, opt.indices, progress=False), rtol=1e-10, atol=1e-10)


def test_continuous_schedule_grid():
    grid, idx = candidate_grid(VPLinear(), 16)
    assert idx is None and grid.shape == (16,) and float(grid[-1]) == 0 and bool((grid.diff() < 0).all())
    opt = optimise_schedule(MIX, VPLinear(), 4, "euler", grid_size=16, batch=32)
    assert opt.sigmas.shape == (5,) and opt.indices is None


def test_bad_input():
    with pytest.raises(ValueError, match="steps"):
        optimal_path(torch.rand(5, 5), 5)
    with pytest.raises(ValueError, match="steps"):
        optimise_schedule(MIX, SCHED, 0)
    with pytest.raises(ValueError, match="solver"):
        optimise_schedule(MIX, SCHED, 4, "rk45")
    with pytest.raises(ValueError, match="cost"):
        optimal_path(torch.rand(5, 4), 2)
    with pytest.raises(ValueError, match="mixture"):
        optimise_schedule("mix", SCHED, 4)
    with pytest.raises(ValueError, match="grid_size"):
        optimise_schedule(MIX, SCHED, 4, grid_size=2)
    assert math.isfinite(optimise_schedule(MIX, SCHED, 3, grid_size=8, batch=8).cost)
