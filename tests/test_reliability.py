"""Bad input that once gave a silent wrong answer, a hang or an unclear error (issue 11); each case failed before.

* a model that returns NaN: every sampler raises one ValueError at the end that names the model's output;
* an integer x_T is refused by every sampler (it was rounded, or failed deep inside torch);
* a time tensor that does not broadcast against x; beta = 1 in a discrete chain;
* a log-likelihood on a discrete chain at a tolerance its kinks make minutes-long is refused at once.
"""

import math

import pytest
import torch

from diffedu import ddim, ddpm, editing, likelihood, ncsn, samplers, sde
from diffedu.grids import geometric_sigmas, index_grid, sigma_grid, time_grid
from diffedu.schedules import VE, DiscreteSchedule, VPLinear, cosine_schedule, linear_schedule
from diffedu.toy import ExactModel, eight_gaussians

SCH = linear_schedule(100)
VPL, VES = VPLinear(), VE(0.01, 5.0)


class NaNAfter(torch.nn.Module):
    """An eps-model (eps-hat = x / 2, no checks of its own) that returns NaN from its n-th call on."""

    def __init__(self, schedule, n: int):
        super().__init__()
        self.n, self.calls, self.prediction = n, 0, "eps"

    def forward(self, x, t, cond=None):
        self.calls += 1
        return 0.5 * x * (float("nan") if self.calls >= self.n else 1.0)


def runs(schedule_kind):
    """(name, schedule, call(model, x_T, **kw)) for every sampler of the book."""
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    ig, sg = index_grid(SCH, 10), sigma_grid(SCH, 10, "karras")
    return [
        ("ddpm", SCH, lambda m, x, **kw: ddpm.ddpm_sample(m, x, SCH, ig, generator=g(), progress=False, **kw)),
        ("ddim", SCH, lambda m, x, **kw: ddim.ddim_sample(m, x, SCH, ig, progress=False, **kw)),
        ("ddim_eta", SCH, lambda m, x, **kw: ddim.ddim_sample(m, x, SCH, ig, eta=1.0, generator=g(), progress=False,
                                                            **kw)),
        ("ddim_invert", SCH, lambda m, x, **kw: ddim.ddim_invert(m, x, SCH, ig, progress=False, **kw)),
        ("euler", SCH, lambda m, x, **kw: samplers.euler_sample(m, x, SCH, sg, progress=False, **kw)),
        ("heun", SCH, lambda m, x, **kw: samplers.heun_sample(m, x, SCH, sg, progress=False, **kw)),
        ("dpmpp_2m", SCH, lambda m, x, **kw: samplers.dpmpp_2m_sample(m, x, SCH, sg, progress=False, **kw)),
        ("plms", SCH, lambda m, x, **kw: samplers.plms_sample(m, x, SCH, ig, progress=False, **kw)),
        ("euler_maruyama", VPL, lambda m, x, **kw: sde.euler_maruyama_sample(m, x, VPL, time_grid(10, 1e-3),
                                                                             generator=g(), progress=False, **kw)),
        ("predictor_corrector", VPL, lambda m, x, **kw: sde.predictor_corrector_sample(
            m, x, VPL, time_grid(10, 1e-3), generator=g(), progress=False, **kw)),
        ("ode", VPL, lambda m, x, **kw: sde.ode_sample(m, x, VPL, time_grid(10, 1e-3), progress=False, **kw)),
        ("annealed_langevin", VES, lambda m, x, **kw: ncsn.annealed_langevin_sample(
            m, x, VES, geometric_sigmas(3, 0.1, 5.0), n_steps_each=2, generator=g(), progress=False, **kw)),
        ("inpaint", SCH, lambda m, x, **kw: editing.inpaint(m, x, torch.tensor([1.0, 0.0]), SCH, ig,
                                                            generator=g(), progress=False, **kw)),
    ]


RUNS = runs(None)


@pytest.mark.parametrize("name,schedule,run", RUNS, ids=[r[0] for r in RUNS])
def test_a_model_that_returns_nan_is_named_not_returned(name, schedule, run):
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    run(ExactModel(eight_gaussians(), schedule), x)  # the exact model: no error
    with pytest.raises(ValueError, match="model's output"):
        run(NaNAfter(schedule, 3), x)
    with pytest.raises(ValueError, match=r"non-finite at grid point \d"):  # with the trajectory: where it went wrong
        run(NaNAfter(schedule, 3), x, return_trajectory=True)


@pytest.mark.parametrize("name,schedule,run", RUNS, ids=[r[0] for r in RUNS])
def test_integer_x_T_is_refused(name, schedule, run):
    with pytest.raises(ValueError, match="floating-point"):
        run(ExactModel(eight_gaussians(), schedule), torch.zeros(4, 2, dtype=torch.long))


def test_times_that_do_not_broadcast_are_refused():
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(4,\)"):
        VPLinear().coefficients(torch.full((3,), 0.5), torch.zeros(4, 2))
    alpha, sigma = VPLinear().coefficients(torch.full((4,), 0.5), torch.zeros(4, 2))
    assert alpha.shape == sigma.shape == (4, 1)


def test_beta_one_is_refused_where_the_chain_is_built():
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\)"):
        DiscreteSchedule(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match="max_beta"):
        cosine_schedule(100, max_beta=1.0)
    with pytest.raises(ValueError, match="beta_end"):
        linear_schedule(10, beta_end=1.0)


def test_likelihood_on_a_discrete_chain_refuses_a_tolerance_it_cannot_meet_quickly():
    model = ExactModel(eight_gaussians(), SCH)
    x = torch.randn(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"rtol and atol must be >= 1e-06 for a DiscreteSchedule"):
        likelihood.log_likelihood(model, x, SCH, rtol=1e-9, atol=1e-9)
    result = likelihood.log_likelihood(model, x, SCH)  # the default tolerance runs (seconds)
    assert bool(torch.isfinite(result.log_prob).all())
    assert math.isfinite(float(likelihood.log_likelihood(ExactModel(eight_gaussians(), VPL), x, VPL, rtol=1e-9,
                                                         atol=1e-9).log_prob[0]))
