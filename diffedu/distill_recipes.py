"""The recipes of chapter 6: students of the ``ddpm_digits`` teacher (its table entries are in ``recipes``).

* ``progressive_digits``: progressive distillation 64 -> 32 -> ... -> 1 teacher steps (6 rounds); the 4-step
  student is shipped, every round's scores are recorded in its manifest entry.
* ``consistency_digits``: consistency distillation with one teacher DDIM step per pair (Song et al. Alg. 2).
* ``consistency_training_digits``: the same loss with no teacher (Alg. 3): the ablation of the teacher's step.
* ``reflow_digits``: the teacher's ODE couples noise and digits; a v-prediction student is refit on the pairs.

Every student starts from the teacher's weights (same UNet; only what its output means changes), trains with
dropout off, and is scored as chapters 4-5 score samplers: 200 samples from the noises of seed 5, pixel FD to
the held-out digits, the digit reader's confident-read rate, and the FD in the feature classifier's space.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import torch
from torch import nn

from .data import load_digits
from .ddim import ddim_sample
from .distill import (ConsistencyLoss, progressive_distillation, reflow_loss, student_grid, teacher_pairs,
                      consistency_sample)
from .grids import index_grid, sigma_grid
from .metrics import digits_classifier, digits_feature_classifier, frechet_distance
from .nets import ConsistencyModel, StepStudent, UNet
from .pretrained import load_pretrained
from .samplers import dpmpp_2m_sample
from .schedules import linear_schedule
from .train import TrainResult, train

NFES = (1, 2, 4, 8)


@dataclass
class DistillConfig:
    """What the students share: the teacher, the optimiser (no warm-up: they start from trained weights)."""

    teacher: str = "ddpm_digits"
    steps: int = 2_500
    batch_size: int = 64
    lr: float = 2e-4
    warmup_steps: int = 0
    ema_decay: float = 0.995
    grad_clip: float = 1.0
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    dropout: float = 0.0
    seed: int = 0
    eval_samples: int = 200


@dataclass
class ProgressiveConfig(DistillConfig):
    """Salimans & Ho 2022: ``rounds`` halvings from ``teacher_steps``; ``steps`` training steps per round
    (``first_round_steps`` for the first, where the output changes meaning from eps to v)."""

    steps: int = 600
    first_round_steps: int = 1_000
    teacher_steps: int = 64
    rounds: int = 6
    ship_steps: int = 4


@dataclass
class ConsistencyConfig(DistillConfig):
    """Song et al. 2023: ``grid_steps`` levels of the chain, target EMA rate ``target_decay``."""

    grid_steps: int = 18
    target_decay: float = 0.95
    sigma_data: float = 0.5


@dataclass
class ReflowConfig(DistillConfig):
    """Liu et al. 2022: ``pairs`` noise-digit pairs from the teacher's ODE (``pair_steps`` DPM-Solver++ calls)."""

    pairs: int = 6_000
    pair_steps: int = 20


def teacher_of(cfg: DistillConfig) -> nn.Module:
    """The frozen teacher: a shipped checkpoint (EMA weights), loaded on the CPU and moved by the losses."""
    return load_pretrained(cfg.teacher, device="cpu").eval().requires_grad_(False)


def student_unet(cfg: DistillConfig, prediction: str) -> UNet:
    """The teacher's UNet (its weights), predicting ``prediction``, dropout ``cfg.dropout``."""
    teacher = teacher_of(cfg)
    net = UNet(in_channels=1, base_channels=cfg.base_channels, channel_mults=cfg.channel_mults,
               dropout=cfg.dropout, prediction=prediction)
    net.load_state_dict(teacher.state_dict())
    return net


def digits(cfg: DistillConfig) -> torch.Tensor:
    return load_digits(size=8, split="train").x


# --- scoring --------------------------------------------------------------------------------------------------

def noise_for_eval(n: int, device: torch.device | str) -> torch.Tensor:
    """The 200 noises chapters 4-5 score samplers from (seed 5)."""
    return torch.randn(n, 1, 8, 8, generator=torch.Generator(device).manual_seed(5), device=device)


@lru_cache(maxsize=1)
def held_out_digits() -> torch.Tensor:
    """The held-out split, read once (``load_digits`` takes about half a second)."""
    return load_digits(split="test").x


@torch.no_grad()
def sample_scores(x: torch.Tensor) -> dict[str, float]:
    """Pixel FD to the held-out digits, the reader's confident share, feature-space FD (chapter 11)."""
    x = x.clamp(-1, 1).cpu()
    test = held_out_digits()
    flat = lambda v: v.reshape(len(v), -1)
    return {"pixel_fd": frechet_distance(flat(x), flat(test)),
            "read": digits_classifier().summary(x)["confident_fraction"],
            "feature_fd": digits_feature_classifier().frechet_distance(x, test)}


def score_sampler(sample: Callable[[torch.Tensor, int], torch.Tensor], nfes: tuple[int, ...], n: int,
                  device: torch.device | str) -> dict[str, float]:
    """``sample(z, nfe)`` scored at each NFE: keys like 'pixel_fd_nfe4'."""
    z = noise_for_eval(n, device)
    out = {}
    for nfe in nfes:
        for key, value in sample_scores(sample(z, nfe)).items():
            out[f"{key}_nfe{nfe}"] = value
    return out


# --- progressive distillation ----------------------------------------------------------------------------------

def progressive_student(cfg: ProgressiveConfig) -> StepStudent:
    """The first round's student: the teacher's UNet predicting v, for teacher_steps / 2 steps."""
    unet = student_unet(cfg, "v")
    student = StepStudent(unet.config, cfg.teacher_steps // 2)
    student.inner.load_state_dict(unet.state_dict())
    return student


def fit_progressive(model: StepStudent, cfg: ProgressiveConfig, data: torch.Tensor,
                    **train_kwargs: Any) -> TrainResult:
    """All rounds (``progressive_distillation``); returns the shipped round's result with every round's scores in
    ``result.history`` and the total wall time."""
    schedule, device = linear_schedule(), train_kwargs["device"]

    def make_student(teacher: nn.Module, K: int) -> StepStudent:
        if K == model.steps:  # the first round: ``model`` already holds the teacher's weights
            return model
        student = StepStudent(model.inner.config, K)
        student.inner.load_state_dict(teacher.inner.state_dict())  # the previous round's student
        return student

    def train_round(student, loss, x, **kw):
        steps = cfg.first_round_steps if student.steps == cfg.teacher_steps // 2 else cfg.steps
        return train(student, loss, x, **{**kw, "steps": steps})

    def evaluate(student: StepStudent, K: int) -> dict:
        sample = lambda z, nfe: ddim_sample(student, z, schedule, student_grid(student, schedule, nfe),
                                            progress=False)
        scores = score_sampler(sample, (K,), cfg.eval_samples, device)
        print(f"round to {K} steps: {scores}")
        return scores

    history = progressive_distillation(teacher_of(cfg), make_student, data, schedule, cfg.teacher_steps,
                                       cfg.rounds, train_round, evaluate, **train_kwargs)
    shipped = next(h for h in history if h["steps"] == cfg.ship_steps)
    result = shipped["result"]
    result.history = [dict(steps=h["steps"], wall_time_s=h["result"].wall_time_s,
                           final_loss=h["result"].losses[-1], **h["metrics"]) for h in history]
    result.losses = [v for h in history for v in h["result"].losses]
    result.wall_time_s = sum(h["result"].wall_time_s for h in history)
    return result


def evaluate_progressive(model: nn.Module, cfg: ProgressiveConfig, device: torch.device) -> dict:
    schedule = linear_schedule()
    sample = lambda z, nfe: ddim_sample(model, z, schedule, student_grid(model, schedule, nfe), progress=False)
    return score_sampler(sample, (model.steps,), cfg.eval_samples, device)


# --- consistency distillation and training ------------------------------------------------------------------------

def consistency_model(cfg: ConsistencyConfig) -> ConsistencyModel:
    """f = c_skip x~ + c_out F with F the teacher's UNet (its weights as the start)."""
    inner = student_unet(cfg, "x0")
    cm = ConsistencyModel(inner.config, sigma_data=cfg.sigma_data)
    cm.inner.load_state_dict(inner.state_dict())
    return cm


def consistency_distillation_loss(cfg: ConsistencyConfig) -> ConsistencyLoss:
    return ConsistencyLoss(linear_schedule(), cfg.grid_steps, teacher_of(cfg), cfg.target_decay)


def consistency_training_loss(cfg: ConsistencyConfig) -> ConsistencyLoss:
    return ConsistencyLoss(linear_schedule(), cfg.grid_steps, None, cfg.target_decay)


def evaluate_consistency(model: nn.Module, cfg: ConsistencyConfig, device: torch.device) -> dict:
    schedule = linear_schedule()
    g = torch.Generator(device).manual_seed(cfg.seed)
    sample = lambda z, nfe: consistency_sample(model, z, schedule, index_grid(schedule, nfe), generator=g,
                                               progress=False)
    return score_sampler(sample, NFES, cfg.eval_samples, device)


# --- reflow ------------------------------------------------------------------------------------------------

def reflow_student(cfg: ReflowConfig) -> UNet:
    return student_unet(cfg, "v")


def reflow_data(cfg: ReflowConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, x0) pairs of the teacher's ODE, made on the CPU from seed ``cfg.seed`` (the recipe's first minutes)."""
    g = torch.Generator("cpu").manual_seed(cfg.seed + 1000)
    return teacher_pairs(teacher_of(cfg), cfg.pairs, (1, 8, 8), linear_schedule(), cfg.pair_steps, generator=g)


def reflow_digits_loss(cfg: ReflowConfig) -> Callable:
    schedule = linear_schedule()
    return lambda m, pair, g: reflow_loss(m, pair, schedule, generator=g)


def evaluate_reflow(model: nn.Module, cfg: ReflowConfig, device: torch.device) -> dict:
    schedule = linear_schedule()
    sample = lambda z, nfe: ddim_sample(model, z, schedule, index_grid(schedule, nfe), progress=False)
    return score_sampler(sample, NFES, cfg.eval_samples, device)


# --- the scoreboard (chapter 6's table; ``scripts/benchmark.py --distilled``) -------------------------------------

@torch.no_grad()
def distillation_scoreboard(n: int = 200, nfes: tuple[int, ...] = NFES,
                            device: torch.device | str = "cpu") -> dict[tuple[str, int], dict[str, float]]:
    """Every shipped student of ``ddpm_digits`` and the teacher's DDIM and DPM-Solver++(2M), each at the NFEs its
    method allows, scored by ``sample_scores`` on ``n`` samples from the seed-5 noises: {(method, nfe): scores}."""
    schedule = linear_schedule()
    z = noise_for_eval(n, device)
    teacher = load_pretrained("ddpm_digits", device=device)
    pd = load_pretrained("progressive_digits", device=device)
    reflow = load_pretrained("reflow_digits", device=device)
    runs = {
        "teacher DDIM": lambda k: ddim_sample(teacher, z, schedule, index_grid(schedule, k), progress=False),
        "teacher DPM-Solver++(2M)": lambda k: dpmpp_2m_sample(teacher, z, schedule, sigma_grid(schedule, k, "logsnr"),
                                                              progress=False),
        "progressive": lambda k: ddim_sample(pd, z, schedule, student_grid(pd, schedule, k), progress=False)
        if k == pd.steps else None,
        "reflow": lambda k: ddim_sample(reflow, z, schedule, index_grid(schedule, k), progress=False),
    }
    for name, label in [("consistency_digits", "consistency distillation"),
                        ("consistency_training_digits", "consistency training")]:
        cm = load_pretrained(name, device=device)
        runs[label] = lambda k, cm=cm: consistency_sample(cm, z, schedule, index_grid(schedule, k), progress=False,
                                                          generator=torch.Generator(device).manual_seed(0))
    table = {}
    for method, run in runs.items():
        for k in nfes:
            x = run(k)
            if x is not None:
                table[method, k] = sample_scores(x)
    return table
