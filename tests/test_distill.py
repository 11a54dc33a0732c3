"""Chapter 6: distillation against closed forms (Gaussian data), 1-D oracles (mixture CDFs) and exact models."""

import math

import pytest
import torch
from torch import nn

from diffedu import distill
from diffedu.ddim import ddim_step
from diffedu.grids import index_grid
from diffedu.nets import ConsistencyModel, MLPDenoiser, StepStudent, UNet, build_net
from diffedu.predictions import to_x0
from diffedu.schedules import VPLinear, linear_schedule
from diffedu.toy import ExactModel, GaussianMixture

SCHEDULE = linear_schedule()
MU, S = 0.7, 0.5  # Gaussian data N(MU, S^2) in every dimension


def gaussian_f(x, alpha, sigma, mu=MU, s=S):
    """The consistency function of N(mu, s^2 I) data: the PF-ODE map from time t to 0, per direction."""
    return mu + s * (x - alpha * mu) / math.sqrt(alpha ** 2 * s ** 2 + sigma ** 2)


class GaussianConsistency(nn.Module):
    """The exact consistency function of the Gaussian data as a network (predicts x0)."""

    prediction = "x0"

    def __init__(self, schedule):
        super().__init__()
        self.schedule, self.w = schedule, nn.Parameter(torch.zeros(()))

    def forward(self, x, t, cond=None):
        alpha, sigma = self.schedule.coefficients(t, x.double())
        out = MU + S * (x.double() - alpha * MU) / torch.sqrt(alpha ** 2 * S ** 2 + sigma ** 2)
        return out.to(x.dtype) + 0 * self.w


def gaussian_teacher(schedule=SCHEDULE, dim=2):
    return ExactModel(GaussianMixture(torch.full((1, dim), MU), torch.tensor([S])), schedule, "eps")


# --- oracles -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", [SCHEDULE, VPLinear()], ids=["ddpm_chain", "vp_linear"])
def test_the_ode_flow_map_of_gaussian_data_is_the_closed_form_consistency_function(schedule):
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for t in (0.3, 1.0):
        alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
        out = distill.flow_map(gaussian_teacher(schedule), x, schedule, t)
        assert torch.allclose(out, gaussian_f(x, alpha, sigma), atol=1e-6)


def test_in_one_dimension_the_flow_map_is_the_quantile_map_of_the_mixture():
    mix = GaussianMixture(torch.tensor([[-1.0], [0.5], [2.0]]), torch.tensor([0.2, 0.4, 0.3]),
                          torch.tensor([0.3, 0.5, 0.2]))
    x = torch.linspace(-2.5, 2.5, 11, dtype=torch.float64)[:, None]
    for t in (0.2, 1.0):
        alpha, sigma = float(SCHEDULE.alpha(t)), float(SCHEDULE.sigma(t))
        ode = distill.flow_map(ExactModel(mix, SCHEDULE), x, SCHEDULE, t)
        assert torch.allclose(ode, distill.quantile_flow_map(mix, x, alpha, sigma), atol=1e-6)
    with pytest.raises(ValueError, match="one-dimensional"):
        distill.quantile_flow_map(GaussianMixture(torch.zeros(1, 2)), torch.zeros(3, 2), 1.0, 0.0)


def test_teacher_pairs_in_one_dimension_are_the_monotone_optimal_transport_map():
    """One reflow's coupling (z, ODE(z)) in 1-D: monotone, and equal to F_0^-1(Phi(z)), the OT map."""
    mix = GaussianMixture(torch.tensor([[-1.0], [1.5]]), torch.tensor([0.3, 0.5]))
    teacher = ExactModel(mix, SCHEDULE)
    z, x0 = distill.teacher_pairs(teacher, 200, (1,), SCHEDULE, steps=200, dtype=torch.float64,
                                  generator=torch.Generator().manual_seed(0))  # DPM-Solver++: max error 1e-3
    order = z[:, 0].argsort()
    assert bool((x0[order, 0].diff() > 0).all())  # the coupling is monotone
    alpha, sigma = float(SCHEDULE.alpha(1.0)), float(SCHEDULE.sigma(1.0))
    assert torch.allclose(x0.double(), distill.quantile_flow_map(mix, z, alpha, sigma), atol=3e-3)


# --- progressive distillation ----------------------------------------------------------------------------------

def test_student_grids_are_every_other_point_of_the_teacher_grid():
    for K in (1, 2, 4, 8, 16, 32, 64, 128):
        assert torch.equal(index_grid(SCHEDULE, K), index_grid(SCHEDULE, 2 * K)[::2])


def test_progressive_target_of_an_exact_gaussian_teacher_is_the_product_of_two_affine_ddim_steps():
    """For N(mu, s^2) data each exact DDIM step is affine, z -> c z + d; two steps compose; the target solves
    alpha_j x + sigma_j (z_i - alpha_i x) / sigma_i = z_j for x. Coefficients computed here by hand."""
    a = SCHEDULE.alpha_bars
    z = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def step(i, j):  # the exact teacher's DDIM step i -> j as (c, d): z_j = c z_i + d
        al_i, s_i, al_j, s_j = math.sqrt(a[i]), math.sqrt(1 - a[i]), math.sqrt(a[j]), math.sqrt(1 - a[j])
        gain = S ** 2 * al_i / (al_i ** 2 * S ** 2 + s_i ** 2)          # x0-hat = mu + gain (z - al_i mu)
        A, b = gain, MU - gain * al_i * MU                             # x0-hat = A z + b
        # eps-hat = (z - al_i x0-hat) / s_i;  z_j = al_j x0-hat + s_j eps-hat
        return al_j * A + s_j * (1 - al_i * A) / s_i, al_j * b - s_j * al_i * b / s_i

    for i, m, j in [(1000, 750, 500), (500, 250, 0), (62, 31, 0), (16, 15, 14)]:
        (c1, d1), (c2, d2) = step(i, m), step(m, j)
        z_j = c2 * (c1 * z + d1) + d2
        r = math.sqrt(1 - a[j]) / math.sqrt(1 - a[i])
        expected = (z_j - r * z) / (math.sqrt(a[j]) - r * math.sqrt(a[i]))
        idx = lambda k: torch.full((5,), k)
        target = distill.progressive_target(gaussian_teacher(), z, idx(i), idx(m), idx(j), SCHEDULE)
        assert torch.allclose(target, expected, atol=1e-7)  # the mixture's x0-hat is exact to ~1e-8
        # and one student DDIM step with x0-hat = target lands where the teacher's two steps did
        eps = (z - math.sqrt(a[i]) * target) / math.sqrt(1 - a[i])
        assert torch.allclose(ddim_step(target, eps, float(a[i]), float(a[j])), z_j, atol=1e-10)


def test_progressive_loss_is_zero_for_a_student_that_is_the_exact_two_step_map():
    """At K = 1 the target of every row is the teacher's two-step DDIM output: a student returning it scores 0."""
    teacher = gaussian_teacher()

    class TwoStep(nn.Module):
        prediction = "x0"

        def forward(self, x, t, cond=None):
            i = torch.full((x.shape[0],), 1000)
            return distill.progressive_target(teacher, x, i, torch.full_like(i, 500), torch.zeros_like(i), SCHEDULE)

    x0 = torch.randn(16, 2, dtype=torch.float64)
    loss = distill.ProgressiveDistillation(teacher, SCHEDULE, 1)(TwoStep(), x0, torch.Generator().manual_seed(0))
    assert float(loss) < 1e-20
    wrong = distill.ProgressiveDistillation(teacher, SCHEDULE, 1)(
        ExactModel(teacher.mixture, SCHEDULE, "x0"), x0, torch.Generator().manual_seed(0))
    assert float(wrong) > 1e-6  # the exact x0-hat is not the two-step map


def test_a_progressive_round_on_2d_data_halves_the_steps_and_matches_its_teacher():
    """A tiny MLP student distilled from an exact 8-step DDIM teacher: its 4-step samples are closer to the
    teacher's 8-step samples than the teacher's own 4-step DDIM is."""
    from diffedu.ddim import ddim_sample
    from diffedu.toy import eight_gaussians
    from diffedu.train import train

    mix = eight_gaussians()
    teacher = ExactModel(mix, SCHEDULE)
    student = StepStudent(MLPDenoiser(2, hidden=64, depth=2, prediction="v").config, 4)
    data = mix.sample(4096, generator=torch.Generator().manual_seed(0))[0].float()
    result = train(student, distill.ProgressiveDistillation(teacher, SCHEDULE, 4), data, steps=400,
                   batch_size=256, lr=2e-3, progress=False, device="cpu")
    z = torch.randn(512, 2, generator=torch.Generator().manual_seed(1))
    ref = ddim_sample(teacher, z, SCHEDULE, index_grid(SCHEDULE, 8), progress=False)
    own = ddim_sample(teacher, z, SCHEDULE, index_grid(SCHEDULE, 4), progress=False)
    out = ddim_sample(result.ema_model, z, SCHEDULE, distill.student_grid(result.ema_model, SCHEDULE, 4),
                      progress=False)
    assert (out - ref).norm(dim=1).mean() < 0.5 * (own - ref).norm(dim=1).mean()


# --- consistency models ---------------------------------------------------------------------------------------

def test_consistency_model_meets_its_boundary_and_its_sigma_tilde_is_the_chains():
    cm = ConsistencyModel(MLPDenoiser(2, hidden=16, depth=1).config)
    x = torch.randn(4, 2, dtype=torch.float64)
    cm = cm.double()
    t1 = float(SCHEDULE.times[1])
    assert torch.allclose(cm(x, torch.full((4,), t1)), x / math.sqrt(SCHEDULE.alpha_bars[1]), atol=1e-12)
    t = torch.rand(50, dtype=torch.float64)
    expected = SCHEDULE.sigma(t) / SCHEDULE.alpha(t)
    assert torch.allclose(cm.sigma_tilde(t), expected, rtol=1e-10)
    assert build_net(cm.config).config == cm.config


def test_with_sigma_data_one_the_consistency_parametrisation_is_v_prediction():
    """f = c_skip x~ + c_out F with sigma_d = 1 and sigma~_min -> 0 is alpha x - sigma v for F = -v."""
    inner = MLPDenoiser(2, hidden=16, depth=1, prediction="v").double()
    cm = ConsistencyModel(inner.config, sigma_min=1e-12, sigma_data=1.0).double()
    cm.inner.load_state_dict(inner.state_dict())
    with torch.no_grad():
        for p in cm.inner.parameters():
            p.neg_() if p.dim() and p.shape[0] == 2 else None  # flip the output layer's sign: F = -v
    x, t = torch.randn(8, 2, dtype=torch.float64), torch.rand(8, dtype=torch.float64) * 0.9 + 0.05
    alpha, sigma = SCHEDULE.coefficients(t, x)
    with torch.no_grad():
        assert torch.allclose(cm(x, t), to_x0(inner(x, t), "v", x, alpha, sigma), atol=1e-9)


def test_consistency_distillation_loss_of_the_exact_function_vanishes_as_the_grid_refines():
    """With the exact f the only error left is the teacher's DDIM step (first order): the loss falls like h^4."""
    f = GaussianConsistency(SCHEDULE)
    x0 = MU + S * torch.randn(4000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    losses = [float(distill.ConsistencyLoss(SCHEDULE, K, gaussian_teacher(), 0.0)(
        f, x0, torch.Generator().manual_seed(1))) for K in (10, 100)]
    assert losses[1] < losses[0] / 100 and losses[1] < 1e-5


def test_consistency_target_is_an_ema_of_the_live_weights_and_never_stale():
    cm = ConsistencyModel(MLPDenoiser(2, hidden=8, depth=1).config)
    loss = distill.ConsistencyLoss(SCHEDULE, 10, None, target_decay=0.9)
    x0 = torch.randn(8, 2)
    loss(cm, x0)
    expected = [p.detach().clone() for p in cm.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(loss.target.parameters(), expected))  # first call: a copy
    for _ in range(3):
        with torch.no_grad():
            for p in cm.parameters():
                p.add_(0.1)
        loss(cm, x0)
        expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, cm.parameters())]
    assert all(torch.allclose(a, b) for a, b in zip(loss.target.parameters(), expected))
    assert loss.updates == 4 and not any(p.requires_grad for p in loss.target.parameters())


def test_consistency_sampling_with_the_exact_function_draws_the_data_distribution():
    f = GaussianConsistency(SCHEDULE)
    z = torch.randn(20000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for K in (1, 2, 4):
        g = torch.Generator().manual_seed(K)
        x = distill.consistency_sample(f, z, SCHEDULE, index_grid(SCHEDULE, K), generator=g, progress=False)
        assert abs(float(x.mean()) - MU) < 0.01 and abs(float(x.std()) - S) < 0.01
    traj = distill.consistency_sample(f, z[:4], SCHEDULE, index_grid(SCHEDULE, 3), progress=False,
                                      generator=torch.Generator().manual_seed(0), return_trajectory=True)
    assert len(traj.states) == 4  # x_T and one x0-hat per network call


# --- reflow --------------------------------------------------------------------------------------------------

def test_reflow_loss_is_zero_at_the_exact_denoiser_of_a_deterministic_coupling_and_direct_uses_t_one():
    seen = []

    class Spy(nn.Module):
        prediction = "x0"

        def forward(self, x, t, cond=None):
            seen.append(t.clone())
            return pair[1]

    pair = (torch.randn(8, 2), torch.randn(8, 2))
    assert float(distill.reflow_loss(Spy(), pair, SCHEDULE, direct=True)) == 0.0  # x0-prediction of x0 itself
    assert torch.all(seen[-1] == 1.0)
    distill.reflow_loss(Spy(), pair, SCHEDULE, generator=torch.Generator().manual_seed(0))
    assert seen[-1].min() > 0 and len(seen[-1].unique()) > 1


# --- bad input ------------------------------------------------------------------------------------------------

def test_bad_input_raises_value_errors_naming_the_argument():
    student = StepStudent(MLPDenoiser(2, prediction="v").config, 4)
    with pytest.raises(ValueError, match="steps must be 4"):
        distill.student_grid(student, SCHEDULE, 3)
    with pytest.raises(ValueError, match="student_steps"):
        distill.ProgressiveDistillation(gaussian_teacher(), SCHEDULE, 0)
    with pytest.raises(ValueError, match="teacher must sample in 2 x student_steps = 2"):
        distill.ProgressiveDistillation(student, SCHEDULE, 1)  # a 4-step teacher for a 1-step student
    with pytest.raises(ValueError, match="teacher must use the student's chain"):
        distill.ProgressiveDistillation(gaussian_teacher(linear_schedule(N=500)), SCHEDULE, 2)
    with pytest.raises(ValueError, match="student must predict"):
        distill.ProgressiveDistillation(gaussian_teacher(), SCHEDULE, 2)(MLPDenoiser(2), torch.randn(4, 2))
    x0_student = StepStudent(MLPDenoiser(2, prediction="x0").config, 2)
    with pytest.raises(ValueError, match="student must predict what its distilled teacher predicts"):
        distill.ProgressiveDistillation(student, SCHEDULE, 2)(x0_student, torch.randn(4, 2))
    with pytest.raises(ValueError, match="must predict 'v' or 'x0'"):
        StepStudent(MLPDenoiser(2).config, 4)
    with pytest.raises(ValueError, match="rounds"):
        distill.progressive_distillation(gaussian_teacher(), None, torch.randn(4, 2), SCHEDULE, 8, 0, None)
    with pytest.raises(ValueError, match="teacher_steps must be divisible"):
        distill.progressive_distillation(gaussian_teacher(), None, torch.randn(4, 2), SCHEDULE, 12, 3, None)
    with pytest.raises(ValueError, match="sigma_min"):
        ConsistencyModel(MLPDenoiser(2).config, sigma_min=0.0)
    with pytest.raises(ValueError, match="f_theta must be a consistency model"):
        distill.ConsistencyLoss(SCHEDULE, 10)(MLPDenoiser(2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="target_decay"):
        distill.ConsistencyLoss(SCHEDULE, 10, target_decay=1.0)
    with pytest.raises(ValueError, match="teacher must use the student's chain"):
        distill.ConsistencyLoss(SCHEDULE, 10, gaussian_teacher(linear_schedule(N=500)))
    with pytest.raises(ValueError, match="steps"):
        distill.consistency_grid(SCHEDULE, 0)
    with pytest.raises(ValueError, match="t_start"):
        distill.flow_map(gaussian_teacher(), torch.zeros(2, 2), SCHEDULE, 0.0)


def test_distilled_unet_students_rebuild_from_their_configs():
    unet = UNet(in_channels=1, base_channels=8, channel_mults=(1, 2), groups=4, prediction="v")
    for net in (StepStudent(unet.config, 4), ConsistencyModel(unet.config)):
        again = build_net(net.config)
        again.load_state_dict(net.state_dict())
        x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 0.5)
        assert torch.equal(again(x, t), net(x, t))


# --- the recipes ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_progressive_recipe_runs_its_rounds_and_records_each(tmp_path):
    from diffedu.distill_recipes import ProgressiveConfig
    from diffedu.recipes import RECIPES

    cfg = ProgressiveConfig(steps=2, first_round_steps=2, teacher_steps=4, rounds=2, ship_steps=1, eval_samples=8,
                            batch_size=8)
    entry = RECIPES["progressive_digits"](cfg, out=str(tmp_path), device="cpu")
    assert entry["steps"] == 4 and entry["config"]["name"] == "StepStudent" and entry["config"]["steps"] == 1
    assert [h["steps"] for h in entry["train_config"]["history"]] == [2, 1]
    assert entry["metric"]["name"] == "pixel_fd_nfe1"
    assert entry["command"] == ("python -m diffedu.recipes progressive_digits --steps 2 --set batch_size=8 "
                                "--set eval_samples=8 --set first_round_steps=2 --set teacher_steps=4 "
                                "--set rounds=2 --set ship_steps=1")


@pytest.mark.slow
def test_consistency_recipe_trains_a_consistency_model_from_the_teacher(tmp_path):
    from diffedu.distill_recipes import ConsistencyConfig
    from diffedu.pretrained import load_pretrained
    from diffedu.recipes import RECIPES

    entry = RECIPES["consistency_digits"](ConsistencyConfig(steps=2, batch_size=8, eval_samples=8),
                                          out=str(tmp_path), device="cpu")
    assert entry["config"]["name"] == "ConsistencyModel"
    assert set(entry["train_config"]["eval"]) >= {f"pixel_fd_nfe{k}" for k in (1, 2, 4, 8)}
    model = load_pretrained("consistency_digits", directory=tmp_path)
    assert model.prediction == "x0"
