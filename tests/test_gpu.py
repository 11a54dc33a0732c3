"""GPU checks (skipped without CUDA; ``scripts/gpu_check.py`` runs them): training, sampling, the fused attention
and bf16 autocast on the device, checked against the same computation on the CPU or in float32."""

import copy

import pytest
import torch

from diffedu.ddpm import ddpm_loss, ddpm_sample
from diffedu.grids import index_grid
from diffedu.nets import Autocast, MLPDenoiser, UNet, set_fused_attention
from diffedu.pretrained import load_pretrained
from diffedu.schedules import linear_schedule
from diffedu.toy import ExactModel, eight_gaussians
from diffedu.train import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_training_step_on_gpu():
    sch = linear_schedule()
    data = eight_gaussians().sample(2048, torch.Generator().manual_seed(0))[0].float()
    result = train(MLPDenoiser(), lambda m, x, g: ddpm_loss(m, x, sch, generator=g), data, steps=50,
                   batch_size=256, lr=1e-3, device="cuda", progress=False)
    assert next(result.model.parameters()).device.type == "cuda"
    assert result.losses[-1] < result.losses[0]


def test_bf16_training_follows_float32_on_gpu():
    sch = linear_schedule()
    data = torch.randn(512, 1, 8, 8)
    runs = [train(UNet(), lambda m, x, g: ddpm_loss(m, x, sch, generator=g), data, steps=5, batch_size=64,
                  device="cuda", progress=False, autocast=dtype).losses for dtype in (None, torch.bfloat16)]
    assert runs[1] == pytest.approx(runs[0], rel=3e-2)


def test_sampling_on_gpu_matches_the_exact_model_moments():
    sch, gm = linear_schedule(), eight_gaussians()
    g = torch.Generator("cuda").manual_seed(0)
    x_T = torch.randn(2000, 2, device="cuda", generator=g)
    x = ddpm_sample(ExactModel(gm, sch), x_T, sch, index_grid(sch, 200), generator=g, progress=False)
    assert x.device.type == "cuda"
    assert torch.allclose(x.mean(0).cpu().double(), gm.mean(), atol=0.15)


def test_fused_attention_on_gpu_matches_the_explicit_formula_on_the_cpu():
    net = load_pretrained("ddpm_digits", device="cpu")
    x, t = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.rand(64)
    with torch.no_grad():
        reference = net(x, t)
        fused = set_fused_attention(copy.deepcopy(net).cuda(), True)(x.cuda(), t.cuda()).cpu()
    assert torch.allclose(fused, reference, atol=1e-4)


def test_unet_bf16_autocast_sampling():
    sch = linear_schedule()
    net = load_pretrained("ddpm_digits", device="cuda")
    x_T = torch.randn(64, 1, 8, 8, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    runs = [ddpm_sample(m, x_T, sch, index_grid(sch, 50), progress=False, clip_x0=True,
                        generator=torch.Generator("cuda").manual_seed(1)) for m in (net, Autocast(net))]
    assert runs[1].dtype == torch.float32 and bool(torch.isfinite(runs[1]).all())
    assert (runs[1] - runs[0]).abs().mean() < 0.02  # bf16: ~3 significant digits per step (CPU: 0.001)
