"""The GPU path, measured in one command (a few minutes on one GPU); prints a table and writes one JSON file.

    python scripts/gpu_check.py                      # on a CUDA machine: everything below, into gpu_check.json
    python scripts/gpu_check.py --device cpu --batch 4 --steps 2 --recipe-steps 2   # a smoke run of the code

1. runs the tests marked ``gpu`` (tests/test_gpu.py) with pytest;
2. for every shipped model architecture (one per recipe) times a training step (``diffedu.train.train``: the
   recipe's loss, AdamW, clipping, EMA) and sampling (model evaluations per second at the same batch, as a sampler
   makes them) at batch 256, in three modes: float32 with the explicit attention, float32 with the fused attention,
   and bf16 autocast with the fused attention;
3. times one full-mode recipe (``FULL_MODE["ddpm_digits"]``: batch 256, fused attention, bf16) for a fixed number
   of steps and projects every full-mode recipe's GPU time from the step times of 2.

Without a CUDA device (and no ``--device``) it says so, writes ``{"status": "unrun", ...}`` and exits 0.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffedu.nets import Autocast, set_fused_attention  # noqa: E402
from diffedu.recipes import FULL_MODE, RECIPES  # noqa: E402
from diffedu.train import train  # noqa: E402

MODES = {"fp32": (False, None), "fp32+fused": (True, None), "bf16+fused": (True, torch.bfloat16)}
"""Name -> (fused attention, autocast dtype)."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def recipe_parts(name: str, batch: int) -> tuple[Any, Any, Any]:
    """The recipe's config (text_shapes and text_video with just enough images or clips, reflow with just enough
    pairs), training data and loss (progressive distillation: its first round's)."""
    recipe = RECIPES[name]
    small = {"text_shapes": dict(train_images=max(batch, 512)), "text_video": dict(train_clips=max(batch, 64)),
             "reflow_digits": dict(pairs=batch, pair_steps=2)}
    cfg = recipe.config(**small.get(name, {}))
    if name == "gan_digits":  # two players, two optimisers: time one step on the sum of their losses
        from diffedu.families import gan_losses

        return cfg, recipe.data(cfg), lambda m, x, g: sum(gan_losses(m, x, g))
    if recipe.fit is not None:  # progressive_digits: several rounds; time the first round's loss
        from diffedu.distill import ProgressiveDistillation
        from diffedu.distill_recipes import teacher_of
        from diffedu.schedules import linear_schedule

        return cfg, recipe.data(cfg), ProgressiveDistillation(teacher_of(cfg), linear_schedule(),
                                                              cfg.teacher_steps // 2)
    return cfg, recipe.data(cfg), recipe.loss(cfg)


def plain_call(model: torch.nn.Module, dtype: torch.dtype | None):
    """``model(x)`` (a network with no time argument), under autocast when ``dtype`` is given."""
    def call(x: torch.Tensor) -> Any:
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            return model(x)
    return call


def time_architecture(name: str, device: torch.device, batch: int, steps: int) -> dict[str, dict[str, float]]:
    """Training steps/s and model evaluations/s (no grad) of recipe ``name``'s network in every mode."""
    cfg, data, loss_fn = recipe_parts(name, batch)
    tensors = data if isinstance(data, tuple) else (data,)
    x = tensors[0][:batch].to(device)
    x = torch.cat([x] * (-(-batch // len(x))))[:batch]                          # (batch, ...)
    cond = tensors[1][:batch].to(device) if len(tensors) > 1 else None
    cond = None if cond is None else torch.cat([cond] * (-(-batch // len(cond))))[:batch]
    out = {}
    for mode, (fused, dtype) in MODES.items():
        model = set_fused_attention(RECIPES[name].network(cfg), fused)
        kwargs = dict(batch_size=batch, lr=cfg.lr, device=device, progress=False, autocast=dtype)
        train(model, loss_fn, data, steps=2, **kwargs)                           # warm-up (kernels, autotuning)
        result = train(model, loss_fn, data, steps=steps, **kwargs)
        net = Autocast(model, dtype) if dtype is not None else model
        args = (x, torch.full((batch,), 0.5, device=device)) + ((cond,) if name != "classifier_digits" else ())
        if not hasattr(model, "prediction") and name != "classifier_digits":  # no time argument: chapter 14's
            args, net = (x,), plain_call(model, dtype)                            # families, the reader, the AE
        if name == "mnist_reader":  # a classifier of the 28x28 centre of the padded digits
            args = (x[..., 2:30, 2:30],)
        with torch.no_grad():
            net(*args)                                                            # warm-up
            synchronize(device)
            start = time.perf_counter()
            for _ in range(steps):
                net(*args)
            synchronize(device)
        out[mode] = {"train_steps_per_s": result.steps_per_s,
                     "evals_per_s": steps / (time.perf_counter() - start)}
    return out


def time_full_recipe(device: torch.device, steps: int) -> dict[str, Any]:
    """``steps`` training steps of ddpm_digits' full-mode configuration (its fast paths on): steps/s and the
    projected time of the whole full-mode run."""
    recipe, full = RECIPES["ddpm_digits"], FULL_MODE["ddpm_digits"]
    cfg = recipe.config(**full.overrides)
    model = set_fused_attention(recipe.network(cfg), full.fused_attention)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[full.autocast]
    result = train(model, recipe.loss(cfg), recipe.data(cfg), steps=steps, batch_size=cfg.batch_size, lr=cfg.lr,
                   warmup_steps=cfg.warmup_steps, ema_decay=cfg.ema_decay, grad_clip=cfg.grad_clip, device=device,
                   seed=cfg.seed, progress=False, autocast=dtype)
    return {"recipe": "ddpm_digits", "steps": steps, "steps_per_s": result.steps_per_s,
            "projected_full_s": cfg.steps / result.steps_per_s}


def run_gpu_tests() -> dict[str, Any]:
    """pytest -m gpu tests/test_gpu.py: its exit code and last line."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "test_gpu.py")], capture_output=True, text=True, cwd=ROOT)
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return {"returncode": proc.returncode, "summary": lines[-1] if lines else ""}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="default: cuda if available, else the check is unrun")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--recipe-steps", type=int, default=300, help="timed steps of the full-mode recipe")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the tests marked gpu")
    parser.add_argument("--out", default="gpu_check.json")
    args = parser.parse_args(argv)

    report: dict[str, Any] = {"torch": torch.__version__, "platform": platform.platform(), "batch": args.batch}
    if args.device is None and not torch.cuda.is_available():
        report.update(status="unrun", reason="no CUDA device on this machine: the GPU part is skipped")
        print(f"gpu_check: {report['reason']} (GPU table: unrun)")
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        return report
    device = torch.device(args.device or "cuda")
    report.update(status="run", device=str(device),
                  gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    if not args.skip_tests:
        report["gpu_tests"] = run_gpu_tests() if device.type == "cuda" else {"summary": "skipped: not on CUDA"}
        print(f"tests marked gpu: {report['gpu_tests']['summary']}")
    report["architectures"] = {name: time_architecture(name, device, args.batch, args.steps) for name in RECIPES}
    report["full_recipe"] = time_full_recipe(device, args.recipe_steps)
    report["full_mode_projection_s"] = {
        name: FULL_MODE[name].overrides.get("steps", RECIPES[name].config().steps)
        / report["architectures"][name]["bf16+fused"]["train_steps_per_s"] for name in RECIPES}

    print(f"\n{report['gpu'] or device}, torch {torch.__version__}, batch {args.batch}")
    print(f"{'model':18} {'mode':11} {'train steps/s':>14} {'evals/s':>10}")
    for name, modes in report["architectures"].items():
        for mode, row in modes.items():
            print(f"{name:18} {mode:11} {row['train_steps_per_s']:14.1f} {row['evals_per_s']:10.1f}")
    full = report["full_recipe"]
    print(f"\nfull-mode ddpm_digits: {full['steps_per_s']:.1f} steps/s over {full['steps']} steps, "
          f"whole run ~ {full['projected_full_s'] / 60:.1f} min")
    for name, seconds in report["full_mode_projection_s"].items():
        print(f"full mode {name:18} projected {seconds / 60:7.1f} min (training only, at batch {args.batch})")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
