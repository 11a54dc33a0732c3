"""scripts/gpu_check.py (unrun without CUDA, and its measuring code exercised on the CPU) and the benchmark's
diffusers peer of our UNet."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the check runs for real")
def test_gpu_check_without_cuda_says_unrun_and_exits_cleanly(tmp_path):
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", str(out)],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "no CUDA device" in run.stdout and "unrun" in run.stdout
    report = json.loads(out.read_text())
    assert report["status"] == "unrun" and "architectures" not in report


def test_gpu_check_measures_every_architecture_in_every_mode(tmp_path, capsys):
    """The measuring code, run on the CPU at a tiny batch, so it is known to work before a GPU runs it."""
    gpu_check = script("gpu_check")
    report = gpu_check.main(["--device", "cpu", "--batch", "4", "--steps", "1", "--recipe-steps", "1",
                             "--skip-tests", "--out", str(tmp_path / "gpu.json")])
    from diffedu.recipes import RECIPES

    names = set(RECIPES)  # every recipe's network, the distilled students included
    assert report["status"] == "run" and set(report["architectures"]) == names
    for modes in report["architectures"].values():
        assert set(modes) == {"fp32", "fp32+fused", "bf16+fused"}
        assert all(row["train_steps_per_s"] > 0 and row["evals_per_s"] > 0 for row in modes.values())
    assert report["full_recipe"]["steps_per_s"] > 0 and set(report["full_mode_projection_s"]) == names
    assert json.loads((tmp_path / "gpu.json").read_text())["architectures"].keys() == names
    assert "bf16+fused" in capsys.readouterr().out


def test_the_benchmark_peer_is_our_unet_in_diffusers():
    pytest.importorskip("diffusers")
    from diffedu.nets import UNet

    benchmark = script("benchmark")
    for size in (8, 16, 28):
        peer = benchmark.diffusers_peer_unet(size)
        assert sum(p.numel() for p in peer.parameters()) == sum(p.numel() for p in UNet().parameters()) == 701_345
        x = torch.randn(2, 1, size, size)
        assert peer(x, torch.rand(2)).shape == x.shape
