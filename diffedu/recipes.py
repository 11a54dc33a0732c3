"""Recipes: the commands that make every shipped checkpoint.

Each recipe trains a model from a fixed seed, measures it, and registers it in data/checkpoints/ with its
manifest entry (config, seed, steps, wall time, machine, metric, sha256). Run one with

    python -m diffedu.recipes ddpm_digits            # the shipped configuration
    python -m diffedu.recipes ddpm_digits --steps 200 --out /tmp/ckpt   # a quick smoke run elsewhere

Chapters load the result with ``diffedu.pretrained.load_pretrained(name)``; the cell that would retrain it is
one flag away (``DIFFEDU_FULL=1`` or ``retrain = True``).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .data import DIGITS_LEVELS, load_digits
from .ddpm import ddpm_loss, ddpm_sample, elbo_terms
from .metrics import digits_classifier, frechet_distance
from .guidance import ClassifierFreeGuidance, drop_labels
from .classifier_training import noisy_accuracy, noisy_classifier_loss
from .ncsn import annealed_langevin_sample, dsm_loss
from .ddim import ddim_sample
from .grids import geometric_sigmas, index_grid
from .nets import InputScaled, NoisyClassifier, TextToImageUNet, UNet
from .pretrained import register_checkpoint
from .schedules import VE, linear_schedule
from .shapes import HELD_OUT, SIZES, VOCABULARY, ShapeSpec, make_shapes, shapes_probe
from .train import TrainResult, train
from .utils import pick_device, seed_everything


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


def digits_unet(cfg: DigitsTrainConfig) -> UNet:
    """The network of the digits recipes: a two-level UNet with attention at 4x4."""
    return UNet(in_channels=1, base_channels=cfg.base_channels, channel_mults=cfg.channel_mults,
                dropout=cfg.dropout, prediction="eps")


@torch.no_grad()
def evaluate_digits_model(model: torch.nn.Module, num_samples: int, seed: int = 0,
                          device: torch.device | str | None = None) -> dict[str, float]:
    """Pixel FD of DDPM samples against the held-out digits, the classifier's view of them, and test bits/dim."""
    device = pick_device(device)
    schedule = linear_schedule()
    g = torch.Generator(device=device).manual_seed(seed)
    x_T = torch.randn(num_samples, 1, 8, 8, generator=g, device=device)
    samples = ddpm_sample(model, x_T, schedule, index_grid(schedule, schedule.N), clip_x0=True, generator=g,
                          progress=False).cpu()
    test, train_split = load_digits(split="test"), load_digits(split="train")
    flat = lambda x: x.reshape(len(x), -1)
    bpd = elbo_terms(model, test.x.to(device), schedule, num_bins=DIGITS_LEVELS, num_terms=100, generator=g)["bpd"]
    reader = digits_classifier().summary(samples)
    return {"pixel_fd": frechet_distance(flat(samples), flat(test.x)),
            "pixel_fd_train_vs_test": frechet_distance(flat(train_split.x), flat(test.x)),
            "test_bpd": float(bpd.mean()), **reader}


def train_digits(model: torch.nn.Module, loss_fn, data, cfg: DigitsTrainConfig, device) -> TrainResult:
    """``train`` with a digits recipe's optimiser, EMA and seed settings (logging every 1000 steps)."""
    return train(model, loss_fn, data, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                 warmup_steps=cfg.warmup_steps, ema_decay=cfg.ema_decay, grad_clip=cfg.grad_clip, device=device,
                 seed=cfg.seed, progress=True, log_every=1000)


def register_digits(name: str, recipe: Callable, cfg: DigitsTrainConfig, result: TrainResult,
                    metrics: dict[str, float], metric: str, out: str | None, *, schedule: str, loss: str,
                    data: str) -> dict:
    """Register the EMA model of digits ``recipe`` with its command, config, training data and metrics.

    The command names ``--steps`` only when it differs from the recipe's default; ``metric`` is the key of
    ``metrics`` the manifest shows.
    """
    command = f"python -m diffedu.recipes {name}" + ("" if cfg.steps == type(cfg)().steps
                                                     else f" --steps {cfg.steps}")
    train_config = {**asdict(cfg), "channel_mults": list(cfg.channel_mults), "schedule": schedule, "loss": loss,
                    "data": data,
                    "final_loss_mean_last_500": sum(result.losses[-500:]) / min(500, len(result.losses)),
                    "eval": metrics}
    return register_checkpoint(name, result.ema_model, recipe=f"diffedu.recipes.{recipe.__name__}", command=command,
                               train_config=train_config, seed=cfg.seed, steps=cfg.steps,
                               wall_time_s=result.wall_time_s, metric=(metric, round(metrics[metric], 3)),
                               directory=out)


def ddpm_digits(cfg: DigitsDDPMConfig, out: str | None = None, device: str | None = None,
                name: str = "ddpm_digits") -> dict:
    """Train, measure and register the chapter 1 digits DDPM."""
    seed_everything(cfg.seed)
    device = pick_device(device)
    data = load_digits(size=8, split="train")
    schedule = linear_schedule(N=cfg.N)
    model = digits_unet(cfg)
    result = train_digits(model, lambda m, x, g: ddpm_loss(m, x, schedule, generator=g), data.x, cfg, device)
    start = time.perf_counter()
    metrics = evaluate_digits_model(result.ema_model, cfg.eval_samples, seed=cfg.seed, device=device)
    print(f"evaluation took {time.perf_counter() - start:.1f} s: {metrics}")
    return register_digits(name, ddpm_digits, cfg, result, metrics, "pixel_fd", out, schedule="linear(N=1000)",
                           loss="ddpm_loss eps (Ho et al. eq. 14)", data="sklearn digits 8x8, train split")


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


def ncsn_digits(cfg: DigitsNCSNConfig, out: str | None = None, device: str | None = None,
                name: str = "ncsn_digits") -> dict:
    """Train, measure and register the chapter 2 digits NCSN."""
    seed_everything(cfg.seed)
    device = pick_device(device)
    data = load_digits(size=8, split="train")
    schedule = VE(cfg.sigma_min, cfg.sigma_max)
    model = digits_ncsn(cfg)
    result = train_digits(model, lambda m, x, g: dsm_loss(m, x, schedule, generator=g), data.x, cfg, device)
    start = time.perf_counter()
    metrics = evaluate_ncsn_digits(result.ema_model, cfg, device=device)
    print(f"evaluation took {time.perf_counter() - start:.1f} s: {metrics}")
    return register_digits(name, ncsn_digits, cfg, result, metrics, "pixel_fd", out,
                           schedule=f"VE(sigma_min={cfg.sigma_min}, sigma_max={cfg.sigma_max})",
                           loss="dsm_loss, lambda = sigma^2 (Song & Ermon 2019, eq. 6)",
                           data="sklearn digits 8x8, train split")


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


def cfg_digits(cfg: DigitsCFGConfig, out: str | None = None, device: str | None = None,
               name: str = "cfg_digits") -> dict:
    """Train, measure and register the class-conditional digits DDPM of the guidance chapters."""
    seed_everything(cfg.seed)
    device = pick_device(device)
    data = load_digits(size=8, split="train")
    schedule = linear_schedule(N=cfg.N)
    model = digits_cfg_unet(cfg)

    def loss_fn(m, batch, g):
        x, y = batch
        return ddpm_loss(m, x, schedule, cond=drop_labels(y, cfg.p_uncond, 10, generator=g), generator=g)

    result = train_digits(model, loss_fn, (data.x, data.y), cfg, device)
    start = time.perf_counter()
    metrics = evaluate_cfg_digits(result.ema_model, cfg, device=device)
    print(f"evaluation took {time.perf_counter() - start:.1f} s: {metrics}")
    return register_digits(name, cfg_digits, cfg, result, metrics, f"accuracy_s{cfg.eval_scale:g}", out,
                           schedule="linear(N=1000)", loss="ddpm_loss eps with condition dropout (Ho & Salimans 2022)",
                           data="sklearn digits 8x8, train split, labels 0-9 (null label 10)")


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


def classifier_digits(cfg: DigitsClassifierConfig, out: str | None = None, device: str | None = None,
                      name: str = "classifier_digits") -> dict:
    """Train, measure and register the noise-aware digits classifier of chapter 10."""
    seed_everything(cfg.seed)
    device = pick_device(device)
    data = load_digits(size=8, split="train")
    schedule = linear_schedule(N=cfg.N)
    model = digits_noisy_classifier(cfg)

    def loss_fn(m, batch, g):
        x, y = batch
        return noisy_classifier_loss(m, x, y, schedule, generator=g)

    result = train_digits(model, loss_fn, (data.x, data.y), cfg, device)
    start = time.perf_counter()
    metrics = evaluate_digits_classifier(result.ema_model, cfg, device=device)
    print(f"evaluation took {time.perf_counter() - start:.1f} s: {metrics}")
    return register_digits(name, classifier_digits, cfg, result, metrics, "test_accuracy_t0", out,
                           schedule="linear(N=1000)",
                           loss="noisy_classifier_loss: cross-entropy on x_t, i ~ U{1..N} (Dhariwal & Nichol 2021)",
                           data="sklearn digits 8x8, train split, labels 0-9")


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


def text_shapes(cfg: TextShapesConfig, out: str | None = None, device: str | None = None,
                name: str = "text_shapes") -> dict:
    """Train, measure and register the text-to-image model of chapter 12."""
    seed_everything(cfg.seed)
    device = pick_device(device)
    data = make_shapes(cfg.train_images, split="train", seed=cfg.seed)
    schedule = linear_schedule()
    model = text_shapes_unet(cfg)
    tokens = model.tokenizer.encode(data.captions)  # (N, max_len)

    def loss_fn(m, batch, g):
        x, ids = batch
        return ddpm_loss(m, x, schedule, cond=drop_labels(ids, cfg.p_uncond, m.null_label, generator=g),
                         generator=g)

    result = train_digits(model, loss_fn, (data.x, tokens), cfg, device)
    start = time.perf_counter()
    metrics = evaluate_text_shapes(result.ema_model, cfg, device=device)
    print(f"evaluation took {time.perf_counter() - start:.1f} s: {metrics}")
    return register_digits(name, text_shapes, cfg, result, metrics, "held_out_all", out, schedule="linear(N=1000)",
                           loss="ddpm_loss eps with caption dropout (Ho & Salimans 2022)",
                           data=f"diffedu.shapes.make_shapes({cfg.train_images}, split='train', seed={cfg.seed}); "
                                f"held out: {[' '.join(t) for t in HELD_OUT]}")


RECIPES = {"ddpm_digits": (ddpm_digits, DigitsDDPMConfig), "ncsn_digits": (ncsn_digits, DigitsNCSNConfig),
           "cfg_digits": (cfg_digits, DigitsCFGConfig),
           "classifier_digits": (classifier_digits, DigitsClassifierConfig),
           "text_shapes": (text_shapes, TextShapesConfig)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train and register a shipped diffedu checkpoint.")
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--out", default=None, help="checkpoint directory (default: data/checkpoints)")
    args = parser.parse_args(argv)
    fn, config_cls = RECIPES[args.name]
    cfg = config_cls() if args.steps is None else config_cls(steps=args.steps)
    entry = fn(cfg, out=args.out, device=args.device, name=args.name)
    print(f"registered {args.name}: {entry['file']} ({entry['size_bytes'] / 1e6:.2f} MB), "
          f"{entry['metric']}, sha256 {entry['sha256'][:12]}")


if __name__ == "__main__":
    main()
