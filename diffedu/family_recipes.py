"""The recipes of chapter 14 (the other families on 8x8 digits) and the book's scoreboard.

Each family is trained on the train split of the digits as 64-vectors in [-1, 1] (17 levels), by MLPs
(0.1-0.6 M parameters), on one CPU thread, in a few minutes. 1,437 training images overfit a likelihood model
fast: the held-out bits/dim of MADE, the flow and the VAE reach their minimum after about 1,000, 1,000 and
3,000+ steps of batch 128 and then rise (MADE at 4,000 steps: 0.96 bits/dim on the training images, 3.29
held out, and better-looking samples: pixel FD 1.30 against 3.78 at 1,000 steps), so those are their step counts (chosen on the held-out split, which is also the scoreboard's: a
separate validation split would be cleaner):

* ``vae_digits``: a VAE, 8 latents, trained on the dequantised digits (its -ELBO bounds the bits/dim);
* ``gan_digits``: a GAN with the non-saturating loss (no likelihood);
* ``made_digits``: MADE, exact likelihood of the 17-level pixels;
* ``flow_digits``: a RealNVP coupling flow, exact density of the dequantised digits;
* ``fm_digits``: a flow-matching velocity MLP, sampled by Heun's method on dx/dt = u.

Their entries are in ``recipes.RECIPES`` (``python -m diffedu.recipes made_digits``). ``scoreboard`` scores
every digits generator of the book the same way: ``n`` samples against the held-out digits (pixel FD,
feature FD, k-NN precision/recall in the feature space of chapter 11's classifier), NLL in bits/dim where the
model defines one, network calls per sample, sampling time per sample and training time (from the manifest).
``scripts/benchmark.py --scoreboard`` prints it and records it in data/scoreboard.json.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .autoregressive import MADE, made_loss
from .data import DIGITS_LEVELS, load_digits
from .evaluation import precision_recall
from .families import GAN, VAE, elbo, train_gan, vae_loss
from .flow_matching import FlowMatchingModel, cfm_loss, flow_sample, flow_times
from .flows import CouplingFlow, bits_per_dim, flow_nll_loss
from .metrics import digits_feature_classifier, frechet_distance
from .nets import MLPDenoiser
from .pretrained import data_dir, pretrained_info
from .train import TrainResult

DELTA = 2.0 / (DIGITS_LEVELS - 1)   # the width of one pixel level in [-1, 1]


@dataclass
class FamilyConfig:
    """What the family recipes share (``run_recipe`` reads these fields)."""

    steps: int = 4_000
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 100
    ema_decay: float = 0.99
    grad_clip: float = 1.0
    hidden: int = 512
    seed: int = 0
    eval_samples: int = 200


@dataclass
class VAEConfig(FamilyConfig):
    steps: int = 3_000
    hidden: int = 256
    latent_dim: int = 8
    depth: int = 2


@dataclass
class GANConfig(FamilyConfig):
    lr: float = 2e-4
    ema_decay: float = 0.999            # unused: the generator itself is shipped
    latent_dim: int = 16
    depth: int = 2


@dataclass
class MADEConfig(FamilyConfig):
    steps: int = 1_000
    hidden: int = 256
    depth: int = 2


@dataclass
class FlowConfig(FamilyConfig):
    steps: int = 1_000
    hidden: int = 64
    layers: int = 8


@dataclass
class FMConfig(FamilyConfig):
    ema_decay: float = 0.999
    hidden: int = 256
    depth: int = 4
    sample_steps: int = 10


def digits64(cfg: FamilyConfig) -> torch.Tensor:
    """The train split as (N, 64) vectors in [-1, 1]."""
    x = load_digits(size=8, split="train").x
    return x.reshape(len(x), -1)


def dequantised(loss: Callable) -> Callable:
    """loss on x + U(-Delta/2, Delta/2): a density model of the 17-level pixels (Theis et al. 2016)."""
    def loss_fn(model, x, g):
        u = DELTA * (torch.rand(x.shape, generator=g, device=x.device) - 0.5)
        return loss(model, x + u, g)
    return loss_fn


# --- samplers and likelihoods of the families (what the scoreboard runs) -------------------------------------

def family_sampler(name: str, model: nn.Module, cfg: Any = None) -> tuple[Callable, int]:
    """(sample(n, generator) -> images (n, 1, 8, 8), network calls per sample) for a family checkpoint."""
    if name == "fm_digits":
        steps = (cfg or FMConfig()).sample_steps

        def sample(n, g):
            z = torch.randn(n, 64, generator=g)
            return flow_sample(model, z, flow_times(steps), method="heun")
        return (lambda n, g: sample(n, g).reshape(n, 1, 8, 8)), 2 * steps - 1
    nfe = 64 if name == "made_digits" else 1
    return (lambda n, g: model.sample(n, g).reshape(n, 1, 8, 8)), nfe


@torch.no_grad()
def family_bits_per_dim(name: str, model: nn.Module, x: torch.Tensor, seed: int = 0) -> float | None:
    """Test bits/dim: exact for MADE; dequantised exact density for the flow; the -ELBO bound for the VAE
    (one draw of z per image); None for the GAN and flow matching (not computed here)."""
    x = x.reshape(len(x), -1)
    g = torch.Generator().manual_seed(seed)
    if name == "made_digits":
        return float(-model.log_prob(x).mean() / (64 * math.log(2)))
    u = DELTA * (torch.rand(x.shape, generator=g) - 0.5)
    if name == "flow_digits":
        return float(bits_per_dim(model.log_prob(x + u), 64, DIGITS_LEVELS).mean())
    if name == "vae_digits":
        return float(bits_per_dim(elbo(model, x + u, g), 64, DIGITS_LEVELS).mean())
    return None


def image_scores(x: torch.Tensor, k: int = 3) -> dict[str, float]:
    """pixel FD, feature FD, feature-space precision and recall (k-NN, k = 3) against the held-out digits."""
    x = x.clamp(-1, 1).reshape(len(x), 1, 8, 8).cpu()
    test = load_digits(split="test").x
    clf = digits_feature_classifier()
    precision, recall = precision_recall(clf.features(test), clf.features(x), k=k)
    return {"pixel_fd": frechet_distance(x.reshape(len(x), -1), test.reshape(len(test), -1)),
            "feature_fd": clf.frechet_distance(x, test), "precision": precision, "recall": recall}


def evaluate_family(name: str) -> Callable:
    def evaluate(model: nn.Module, cfg: Any, device: torch.device) -> dict:
        model = model.cpu().eval()
        sample, _ = family_sampler(name, model, cfg)
        x = sample(cfg.eval_samples, torch.Generator().manual_seed(cfg.seed + 5))
        out = image_scores(x)
        bpd = family_bits_per_dim(name, model, load_digits(split="test").x, cfg.seed)
        return {**out, **({"test_bpd": bpd} if bpd is not None else {})}
    return evaluate


def fit_gan(model: GAN, cfg: GANConfig, data: torch.Tensor, **train_kwargs: Any) -> TrainResult:
    """The GAN's own loop (two optimisers); its result has no EMA copy (the generator itself is shipped)."""
    start = time.perf_counter()
    history = train_gan(model, data.to(train_kwargs["device"]), cfg.steps, cfg.batch_size, cfg.lr, cfg.seed)
    result = TrainResult(model=model, ema_model=model, losses=[d + g for d, g in history])
    result.wall_time_s = time.perf_counter() - start
    return result


NETWORKS = {
    "vae_digits": lambda cfg: VAE(64, cfg.latent_dim, cfg.hidden, cfg.depth),
    "gan_digits": lambda cfg: GAN(64, cfg.latent_dim, cfg.hidden, cfg.depth),
    "made_digits": lambda cfg: MADE(64, DIGITS_LEVELS, (cfg.hidden,) * cfg.depth),
    "flow_digits": lambda cfg: CouplingFlow(64, cfg.layers, cfg.hidden),
    "fm_digits": lambda cfg: FlowMatchingModel(MLPDenoiser(64, hidden=cfg.hidden, depth=cfg.depth).config),
}
LOSSES = {
    "vae_digits": lambda cfg: dequantised(vae_loss),
    "gan_digits": lambda cfg: None,
    "made_digits": lambda cfg: made_loss,
    "flow_digits": lambda cfg: dequantised(flow_nll_loss),
    "fm_digits": lambda cfg: cfm_loss,
}
CONFIGS = {"vae_digits": VAEConfig, "gan_digits": GANConfig, "made_digits": MADEConfig, "flow_digits": FlowConfig,
           "fm_digits": FMConfig}
TEXTS = {
    "vae_digits": "-ELBO per dimension, one z, dequantised digits (Kingma & Welling 2014)",
    "gan_digits": "non-saturating GAN loss, simultaneous Adam steps (Goodfellow et al. 2014)",
    "made_digits": "exact NLL of the 17-level pixels in bits/dim (Germain et al. 2015)",
    "flow_digits": "exact NLL of the dequantised digits (Dinh et al. 2017)",
    "fm_digits": "conditional flow matching, straight path (Lipman et al. 2023)",
}
FAMILIES = tuple(NETWORKS)


# --- the scoreboard ------------------------------------------------------------------------------------------

SCOREBOARD_FILE = "scoreboard.json"


def _book_rows(n: int) -> dict[str, tuple[str, Callable[[], torch.Tensor], int, str]]:
    """name -> (chapter, sample() -> (n, 1, 8, 8), NFE, checkpoint) for the diffusion models of chapters 1-11."""
    from .ddim import ddim_sample
    from .ddpm import ddpm_sample
    from .distill import consistency_sample, student_grid
    from .distill_recipes import noise_for_eval
    from .grids import geometric_sigmas, index_grid, sigma_grid
    from .guidance import ClassifierFreeGuidance
    from .ncsn import annealed_langevin_sample
    from .pretrained import load_pretrained
    from .samplers import dpmpp_2m_sample
    from .schedules import VE, linear_schedule
    from .sde import ode_sample
    from .grids import time_grid

    s = linear_schedule()
    z = noise_for_eval(n, "cpu")
    load = lambda name: load_pretrained(name, device="cpu")
    g = lambda: torch.Generator().manual_seed(0)

    def ncsn():
        cfg = pretrained_info("ncsn_digits")["train_config"]
        sig = geometric_sigmas(cfg["eval_levels"], cfg["sigma_min"], cfg["sigma_max"])
        return annealed_langevin_sample(load("ncsn_digits"), cfg["sigma_max"] * z, VE(cfg["sigma_min"],
                                        cfg["sigma_max"]), sig, n_steps_each=cfg["eval_steps_each"],
                                        epsilon=cfg["eval_epsilon"], generator=g(), progress=False)

    def cfg_model():
        y = torch.arange(n) % 10
        guided = ClassifierFreeGuidance(load("cfg_digits"), 1.0, null_label=10)
        return ddpm_sample(guided, z, s, index_grid(s, 100), cond=y, clip_x0=True, generator=g(), progress=False)

    pd = lambda: load("progressive_digits")
    return {
        "DDPM, ancestral": ("1", lambda: ddpm_sample(load("ddpm_digits"), z, s, index_grid(s, 1000), clip_x0=True,
                                                     generator=g(), progress=False), 1000, "ddpm_digits"),
        "NCSN, annealed Langevin": ("2", ncsn, 20 * 20 + 1, "ncsn_digits"),
        "DDPM, PF-ODE (Heun)": ("3", lambda: ode_sample(load("ddpm_digits"), z, s, time_grid(25, 1e-3),
                                                        progress=False), 51, "ddpm_digits"),
        "DDPM, DDIM": ("4", lambda: ddim_sample(load("ddpm_digits"), z, s, index_grid(s, 50), progress=False), 50,
                       "ddpm_digits"),
        "DDPM, DPM-Solver++(2M)": ("5", lambda: dpmpp_2m_sample(load("ddpm_digits"), z, s,
                                                                sigma_grid(s, 20, "logsnr"), progress=False),
                                   20, "ddpm_digits"),
        "progressive student": ("6", lambda: ddim_sample(pd(), z, s, student_grid(pd(), s, 4), progress=False), 4,
                                "progressive_digits"),
        "consistency distillation": ("6", lambda: consistency_sample(load("consistency_digits"), z, s,
                                                                     index_grid(s, 1), generator=g(),
                                                                     progress=False), 1, "consistency_digits"),
        "reflow student": ("6", lambda: ddim_sample(load("reflow_digits"), z, s, index_grid(s, 2), progress=False),
                           2, "reflow_digits"),
        "CFG, s = 1 (labels)": ("11", cfg_model, 100, "cfg_digits"),
    }


ODE_DIGITS = 48


def ode_bits_per_dim(x: torch.Tensor) -> float:
    """``ddpm_digits``' exact bits/dim through the probability-flow ODE of VPLinear, as chapter 3 computes it
    (t_min = 0.01, one Hutchinson probe per digit, tolerances 1e-4): the mean over the digits x."""
    from .likelihood import bits_per_dim as ode_bpd
    from .pretrained import load_pretrained
    from .schedules import VPLinear

    bpd = ode_bpd(load_pretrained("ddpm_digits", device="cpu"), x, VPLinear(), levels=DIGITS_LEVELS, t_min=1e-2,
                  trace="hutchinson", generator=torch.Generator().manual_seed(13), rtol=1e-4, atol=1e-4)
    return float(bpd.mean())


FAMILY_LABELS = {"vae_digits": "VAE", "gan_digits": "GAN", "made_digits": "MADE (autoregressive)",
                 "flow_digits": "RealNVP flow", "fm_digits": "flow matching (Heun)"}


@torch.no_grad()
def scoreboard(n: int = 200, rows: tuple[str, ...] | None = None) -> list[dict]:
    """Every digits generator of the book on one table: [{model, chapter, nfe, bpd, pixel_fd, feature_fd,
    precision, recall, sample_ms, train_min}], scored on ``n`` samples against the held-out digits.
    ``rows`` picks rows by model name (default: all). Bits/dim: DDPM's ELBO from its manifest entry (chapter 1),
    its exact value through the probability-flow ODE on the first ``ODE_DIGITS`` held-out digits (chapter 3), the
    families' own (``family_bits_per_dim``); the other rows define none here (``bpd_kind`` says which)."""
    book = _book_rows(n)
    out = []
    from .pretrained import load_pretrained

    candidates = [(name, "book") for name in book] + [(FAMILY_LABELS[f], f) for f in FAMILIES]
    test = load_digits(split="test").x
    for label, kind in candidates:
        if rows is not None and label not in rows:
            continue
        start = time.perf_counter()
        if kind == "book":
            chapter, run, nfe, ckpt = book[label]
            x = run()
            bpd, bpd_kind = None, None
            if label == "DDPM, ancestral":
                bpd, bpd_kind = pretrained_info(ckpt)["train_config"]["eval"]["test_bpd"], "ELBO bound (ch. 1)"
            if label == "DDPM, PF-ODE (Heun)":
                start_bpd = time.perf_counter()
                bpd, bpd_kind = ode_bits_per_dim(test[:ODE_DIGITS]), f"ODE, {ODE_DIGITS} digits (ch. 3)"
                start += time.perf_counter() - start_bpd   # sampling time only
        else:
            chapter, ckpt = "14", kind
            model = load_pretrained(kind, device="cpu")
            sample, nfe = family_sampler(kind, model)
            x = sample(n, torch.Generator().manual_seed(5))
            start_bpd = time.perf_counter()
            bpd = family_bits_per_dim(kind, model, test)
            bpd_kind = {"made_digits": "exact", "flow_digits": "exact, dequantised",
                        "vae_digits": "-ELBO bound"}.get(kind)
            start += time.perf_counter() - start_bpd   # sampling time only
        ms = 1000 * (time.perf_counter() - start) / n
        info = pretrained_info(ckpt)
        out.append({"model": label, "chapter": chapter, "nfe": nfe, "bpd": bpd, "bpd_kind": bpd_kind,
                    **image_scores(x),
                    "sample_ms": ms, "train_min": info["wall_time_s"] / 60, "checkpoint": ckpt})
    return out


def format_scoreboard(rows: list[dict]) -> str:
    """The table as text (numbers rounded to what 200 samples can tell)."""
    head = (f"{'model':<26}{'ch':>3}{'NFE':>6}{'bits/dim':>9}{'pix FD':>8}{'feat FD':>8}{'prec':>6}{'recall':>7}"
            f"{'ms/sample':>10}{'train min':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        bpd = f"{r['bpd']:9.2f}" if r.get("bpd") is not None else f"{'-':>9}"
        lines.append(f"{r['model']:<26}{r['chapter']:>3}{r['nfe']:>6}{bpd}{r['pixel_fd']:8.2f}{r['feature_fd']:8.1f}"
                     f"{r['precision']:6.2f}{r['recall']:7.2f}{r['sample_ms']:10.2f}{r['train_min']:10.1f}")
    return "\n".join(lines)


def write_scoreboard(rows: list[dict], path: str | Path | None = None) -> Path:
    path = Path(path) if path is not None else data_dir() / SCOREBOARD_FILE
    path.write_text(json.dumps({"n": 200, "rows": rows}, indent=1) + "\n", encoding="utf-8")
    return path


def read_scoreboard(path: str | Path | None = None) -> list[dict]:
    """The recorded scoreboard (data/scoreboard.json, written by ``scripts/benchmark.py --scoreboard``)."""
    path = Path(path) if path is not None else data_dir() / SCOREBOARD_FILE
    return json.loads(path.read_text(encoding="utf-8"))["rows"]
