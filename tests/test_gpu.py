"""GPU checks (skipped without CUDA): a training step, sampling and bf16 autocast on the device."""

import pytest
import torch

from diffedu.ddpm import ddpm_loss, ddpm_sample
from diffedu.nets import MLPDenoiser, UNet
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


def test_sampling_on_gpu_matches_the_exact_model_moments():
    sch, gm = linear_schedule(), eight_gaussians()
    g = torch.Generator("cuda").manual_seed(0)
    x_T = torch.randn(2000, 2, device="cuda", generator=g)
    x = ddpm_sample(ExactModel(gm, sch), x_T, sch, steps=200, generator=g, progress=False)
    assert x.device.type == "cuda"
    assert torch.allclose(x.mean(0).cpu().double(), gm.mean(), atol=0.15)


def test_unet_bf16_autocast_sampling():
    sch = linear_schedule()
    net = UNet().cuda().eval()
    x_T = torch.randn(8, 1, 8, 8, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        x = ddpm_sample(net, x_T, sch, steps=20, progress=False, generator=torch.Generator("cuda").manual_seed(0))
    assert bool(torch.isfinite(x).all())
