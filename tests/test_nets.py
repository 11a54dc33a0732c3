"""Tests of diffedu.nets: shapes, the time embedding's closed form, config round trips, conditioning, zero-init,
batch independence, a tiny overfitting run, and the ValueErrors bad input must raise."""

from __future__ import annotations

import json
import math

import pytest
import torch

from diffedu.nets import MLPDenoiser, SinusoidalEmbedding, UNet, build_net, sinusoidal_embedding



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These nets are tiny: one thread is faster than two, and immune to a busy machine's thread contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomise(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values, so zero-initialised layers do not hide differences."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return net


def sample_input(net: torch.nn.Module, batch: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if isinstance(net, MLPDenoiser):
        return torch.randn(batch, net.data_dim, generator=g)
    return torch.randn(batch, net.in_channels, size, size, generator=g)


NET_CONFIGS = [
    dict(name="MLPDenoiser"),
    dict(name="MLPDenoiser", data_dim=3, hidden=32, depth=2, time_dim=16, num_classes=4, prediction="v",
         layer_norm=True),
    dict(name="MLPDenoiser", data_dim=5, hidden=16, depth=0, time_dim=8),
    dict(name="UNet", base_channels=16, groups=4),
    dict(name="UNet", in_channels=3, base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=2, groups=4,
         num_classes=3, scale_shift=True, dropout=0.1, prediction="x0"),
    dict(name="UNet", base_channels=8, channel_mults=(1,), attention_at_lowest=False, groups=2,
         prediction="score"),
]


# ----------------------------------------------------------------------------------------------------- shapes --


@pytest.mark.parametrize("config", NET_CONFIGS, ids=lambda c: json.dumps(c))
def test_output_shape_finite_and_config(config: dict) -> None:
    net = build_net(config)
    assert net.config["name"] == config["name"]
    assert net.prediction == config.get("prediction", "eps")
    json.dumps(net.config)  # plain JSON
    for batch in (1, 3):
        x = sample_input(net, batch)
        out = net(x, torch.rand(batch))
        assert out.shape == x.shape and out.dtype == x.dtype
        assert torch.isfinite(out).all()
    out = net(x, torch.tensor(0.5))  # a 0-d t is broadcast to the batch
    assert out.shape == x.shape


@pytest.mark.parametrize("size, mults", [(8, (1, 2)), (16, (1, 2)), (16, (1, 2, 2)), (28, (1, 2)),
                                         (28, (1, 2, 2)), (12, (1, 2))])
def test_unet_image_sizes(size: int, mults: tuple) -> None:
    net = randomise(UNet(base_channels=8, channel_mults=mults, groups=4))
    x = torch.randn(2, 1, size, size)
    out = net(x, torch.rand(2))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_unet_rectangular_image() -> None:
    net = randomise(UNet(base_channels=8, groups=4))
    x = torch.randn(2, 1, 8, 12)
    assert net(x, torch.rand(2)).shape == (2, 1, 8, 12)


# -------------------------------------------------------------------------------------------- time embedding --


@pytest.mark.parametrize("dim", [4, 6, 16, 64])
def test_sinusoidal_embedding_closed_form(dim: int) -> None:
    t = torch.tensor([0.0, 0.001, 0.25, 0.5, 1.0], dtype=torch.float64)
    emb = sinusoidal_embedding(t, dim)
    assert emb.shape == (5, dim) and emb.dtype == torch.float64
    half = dim // 2
    for b, tb in enumerate(t.tolist()):
        for k in range(half):
            angle = 1000.0 * tb * 10000.0 ** (-k / (half - 1))
            assert emb[b, k].item() == pytest.approx(math.sin(angle), abs=1e-9)
            assert emb[b, half + k].item() == pytest.approx(math.cos(angle), abs=1e-9)


def test_sinusoidal_embedding_matches_ddpm_integer_steps() -> None:
    # DDPM's code embeds the integer step i with frequencies exp(-log(10000) k / (half - 1)); t = i / 1000 agrees.
    i = torch.tensor([0.0, 1.0, 17.0, 500.0, 999.0], dtype=torch.float64)
    half = 8
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / (half - 1))
    ddpm = torch.cat([torch.sin(i[:, None] * freqs), torch.cos(i[:, None] * freqs)], dim=1)
    torch.testing.assert_close(sinusoidal_embedding(i / 1000, 2 * half), ddpm, rtol=0, atol=1e-9)


def test_sinusoidal_embedding_module_scalar_and_dtype() -> None:
    module = SinusoidalEmbedding(8, max_period=100.0)
    assert module(torch.tensor(0.3)).shape == (8,)
    t_half = torch.tensor([0.3], dtype=torch.float16)
    out = module(t_half)
    assert out.dtype == torch.float32  # computed in float32 at least: 1000 t needs the precision
    torch.testing.assert_close(out, sinusoidal_embedding(t_half.float(), 8, 100.0), rtol=0, atol=0)
    assert list(module.parameters()) == []


# ------------------------------------------------------------------------------------------- config round trip --


@pytest.mark.parametrize("config", NET_CONFIGS, ids=lambda c: json.dumps(c))
def test_build_net_round_trip(config: dict) -> None:
    net = randomise(build_net(config)).eval()
    rebuilt = build_net(json.loads(json.dumps(net.config))).eval()
    assert rebuilt.config == net.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    rebuilt.load_state_dict(net.state_dict())
    x, t = sample_input(net, 3), torch.rand(3)
    torch.testing.assert_close(rebuilt(x, t), net(x, t), rtol=0, atol=0)


def test_build_net_rejects_bad_configs() -> None:
    with pytest.raises(ValueError, match="config"):
        build_net({"hidden": 3})
    with pytest.raises(ValueError, match="config"):
        build_net({"name": "NoSuchNet"})
    with pytest.raises(ValueError, match="config"):
        build_net({"name": "UNet", "no_such_argument": 1})


# ------------------------------------------------------------------------------------------ class conditioning --


@pytest.mark.parametrize("net", [MLPDenoiser(hidden=32, time_dim=16, num_classes=3),
                                 UNet(base_channels=8, groups=4, num_classes=3)], ids=["mlp", "unet"])
def test_class_conditioning(net: torch.nn.Module) -> None:
    net = randomise(net).eval()
    x, t = sample_input(net, 4), torch.rand(4)
    out_0 = net(x, t, torch.zeros(4, dtype=torch.long))
    out_2 = net(x, t, torch.full((4,), 2, dtype=torch.long))
    assert not torch.allclose(out_0, out_2, atol=1e-4)  # the label changes the output
    null = torch.full((4,), 3, dtype=torch.long)  # id num_classes is the null label
    torch.testing.assert_close(net(x, t), net(x, t, null), rtol=0, atol=0)
    assert not torch.allclose(net(x, t), out_0, atol=1e-4)


# ----------------------------------------------------------------------------------------------- initialisation --


def test_unet_output_is_zero_at_init_and_moves_after_one_step() -> None:
    torch.manual_seed(0)
    net = UNet(base_channels=16, groups=4)
    x, t = torch.randn(8, 1, 8, 8), torch.rand(8)
    out = net(x, t)
    assert torch.equal(out, torch.zeros_like(x))  # zero-initialised final conv
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss = ((out - torch.randn_like(x)) ** 2).mean()
    loss.backward()
    opt.step()
    assert net(x, t).abs().max() > 0


def test_mlp_output_is_zero_at_init() -> None:
    net = MLPDenoiser(hidden=32, time_dim=16)
    x = torch.randn(5, 2)
    assert torch.equal(net(x, torch.rand(5)), torch.zeros_like(x))


# ------------------------------------------------------------------------------------------- batch independence --


@pytest.mark.parametrize("net", [MLPDenoiser(hidden=32, time_dim=16, num_classes=3, layer_norm=True),
                                 UNet(base_channels=16, groups=4, num_classes=3, dropout=0.1)],
                         ids=["mlp", "unet"])
def test_batch_independence(net: torch.nn.Module) -> None:
    """Row i's output depends on row i only: the same row alone or in a batch gives the same output (eval mode)."""
    net = randomise(net).eval()
    x, t = sample_input(net, 5), torch.rand(5)
    cond = torch.tensor([0, 1, 2, 3, 1])
    batched = net(x, t, cond)
    for i in range(5):
        alone = net(x[i:i + 1], t[i:i + 1], cond[i:i + 1])
        torch.testing.assert_close(alone, batched[i:i + 1], rtol=1e-4, atol=1e-5)
    # and a change to row 0 leaves the other rows untouched
    x2 = x.clone()
    x2[0] += 1.0
    torch.testing.assert_close(net(x2, t, cond)[1:], batched[1:], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------------- learning --


def test_mlp_overfits_a_tiny_denoising_task() -> None:
    torch.manual_seed(0)
    x0 = torch.randn(64, 2) * torch.tensor([1.0, 0.3])
    t = torch.rand(64)
    alpha, sigma = torch.cos(0.5 * math.pi * t)[:, None], torch.sin(0.5 * math.pi * t)[:, None]
    eps = torch.randn(64, 2)
    x_t = alpha * x0 + sigma * eps
    net = MLPDenoiser(hidden=64, depth=2, time_dim=32)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        loss = ((net(x_t, t) - eps) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5


# ------------------------------------------------------------------------------------------------- bad inputs --


def mlp() -> MLPDenoiser:
    return MLPDenoiser(hidden=16, depth=1, time_dim=8)


def unet() -> UNet:
    return UNet(base_channels=8, groups=4)


BAD_CALLS = [
    # (name, net factory, x, t, cond, argument named in the message)
    ("mlp x ndim", mlp, torch.randn(4), torch.rand(4), None, "x"),
    ("mlp x data_dim", mlp, torch.randn(4, 3), torch.rand(4), None, "x"),
    ("mlp x nan", mlp, torch.tensor([[0.0, float("nan")]]), torch.rand(1), None, "x"),
    ("mlp x integer", mlp, torch.zeros(4, 2, dtype=torch.long), torch.rand(4), None, "x"),
    ("unet x ndim", unet, torch.randn(4, 8, 8), torch.rand(4), None, "x"),
    ("unet x channels", unet, torch.randn(4, 3, 8, 8), torch.rand(4), None, "x"),
    ("unet x size", unet, torch.randn(4, 1, 7, 8), torch.rand(4), None, "x"),
    ("unet x inf", unet, torch.full((1, 1, 8, 8), float("inf")), torch.rand(1), None, "x"),
    ("t shape", mlp, torch.randn(4, 2), torch.rand(3), None, "t"),
    ("t 2-d", mlp, torch.randn(4, 2), torch.rand(4, 1), None, "t"),
    ("t above 1", mlp, torch.randn(4, 2), torch.tensor([0.1, 0.2, 0.3, 1.5]), None, "t"),
    ("t below 0", unet, torch.randn(2, 1, 8, 8), torch.tensor([-0.1, 0.5]), None, "t"),
    ("t nan", mlp, torch.randn(2, 2), torch.tensor([0.5, float("nan")]), None, "t"),
    ("t integer steps", mlp, torch.randn(2, 2), torch.tensor([10, 999]), None, "t"),
    ("t not a tensor", mlp, torch.randn(2, 2), "0.5", None, "t"),
    ("cond to unconditional mlp", mlp, torch.randn(2, 2), torch.rand(2), torch.tensor([0, 1]), "cond"),
    ("cond to unconditional unet", unet, torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([0, 1]), "cond"),
    ("cond too large", lambda: MLPDenoiser(hidden=16, time_dim=8, num_classes=3), torch.randn(2, 2),
     torch.rand(2), torch.tensor([0, 4]), "cond"),
    ("cond negative", lambda: UNet(base_channels=8, groups=4, num_classes=3), torch.randn(2, 1, 8, 8),
     torch.rand(2), torch.tensor([-1, 0]), "cond"),
    ("cond shape", lambda: MLPDenoiser(hidden=16, time_dim=8, num_classes=3), torch.randn(2, 2),
     torch.rand(2), torch.tensor([0, 1, 2]), "cond"),
    ("cond float", lambda: MLPDenoiser(hidden=16, time_dim=8, num_classes=3), torch.randn(2, 2),
     torch.rand(2), torch.tensor([0.0, 1.0]), "cond"),
]


@pytest.mark.parametrize("case", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_call_raises(case: tuple) -> None:
    _, factory, x, t, cond, name = case
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        factory().check_inputs(x, t, cond)


BAD_CONSTRUCTIONS = [
    (MLPDenoiser, dict(prediction="noise"), "prediction"),
    (MLPDenoiser, dict(data_dim=0), "data_dim"),
    (MLPDenoiser, dict(hidden=2.5), "hidden"),
    (MLPDenoiser, dict(depth=-1), "depth"),
    (MLPDenoiser, dict(time_dim=7), "time_dim"),
    (MLPDenoiser, dict(time_dim=2), "time_dim"),
    (MLPDenoiser, dict(num_classes=0), "num_classes"),
    (MLPDenoiser, dict(layer_norm="yes"), "layer_norm"),
    (MLPDenoiser, dict(num_classes=2.0), "num_classes"),
    (UNet, dict(prediction="epsilon"), "prediction"),
    (UNet, dict(channel_mults=()), "channel_mults"),
    (UNet, dict(channel_mults=(1, 0)), "channel_mults"),
    (UNet, dict(channel_mults=3), "channel_mults"),
    (UNet, dict(base_channels=36, groups=8), "base_channels"),
    (UNet, dict(base_channels=3, groups=1), "base_channels"),
    (UNet, dict(in_channels=0), "in_channels"),
    (UNet, dict(num_res_blocks=0), "num_res_blocks"),
    (UNet, dict(num_heads=5), "num_heads"),
    (UNet, dict(groups=0), "groups"),
    (UNet, dict(dropout=1.0), "dropout"),
    (UNet, dict(num_classes=-2), "num_classes"),
    (UNet, dict(attention_at_lowest=1), "attention_at_lowest"),
    (UNet, dict(scale_shift=None), "scale_shift"),
]


@pytest.mark.parametrize("cls, kwargs, name", BAD_CONSTRUCTIONS, ids=[f"{c.__name__}-{n}-{k}" for c, k, n in
                                                                       BAD_CONSTRUCTIONS])
def test_bad_constructor_argument_raises(cls: type, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        cls(**kwargs)


def test_bad_embedding_arguments_raise() -> None:
    with pytest.raises(ValueError, match="^dim"):
        sinusoidal_embedding(torch.rand(3), 5)
    with pytest.raises(ValueError, match="^dim"):
        SinusoidalEmbedding(2)
    with pytest.raises(ValueError, match="^max_period"):
        sinusoidal_embedding(torch.rand(3), 8, max_period=-1.0)
    with pytest.raises(ValueError, match="^t"):
        sinusoidal_embedding(torch.rand(3, 2), 8)
    with pytest.raises(ValueError, match="^t"):
        sinusoidal_embedding(torch.tensor([float("nan")]), 8)


# ------------------------------------------------------------------------------------------------------ dtypes --


@pytest.mark.parametrize("net, x", [(MLPDenoiser(hidden=32, time_dim=16, num_classes=3), torch.randn(4, 2)),
                                    (UNet(base_channels=8, groups=4, num_classes=3), torch.randn(4, 1, 8, 8))],
                         ids=["mlp", "unet"])
def test_float64_and_cpu_bfloat16_autocast(net: torch.nn.Module, x: torch.Tensor) -> None:
    net = randomise(net).eval()
    t, cond = torch.rand(4), torch.tensor([0, 1, 2, 3])
    out64 = net.double()(x.double(), t, cond)  # float32 t with float64 weights is fine
    assert out64.dtype == torch.float64
    net = net.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = net(x, t, cond)
    assert out16.shape == x.shape and torch.isfinite(out16.float()).all()


# ---------------------------------------------------------------------------------------------------------- GPU --

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_unet_forward_backward_on_cuda() -> None:
    net = randomise(UNet(num_classes=10)).cuda()
    x, t = torch.randn(16, 1, 16, 16, device="cuda"), torch.rand(16, device="cuda")
    cond = torch.randint(0, 11, (16,), device="cuda")
    out = net(x, t, cond)
    assert out.device == x.device and out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    # a 0-d t created on the CPU is accepted too
    assert net(x, torch.tensor(0.5)).device == x.device


@pytest.mark.gpu
@needs_cuda
def test_unet_and_mlp_under_bfloat16_autocast() -> None:
    unet_ = randomise(UNet(num_classes=10)).cuda()
    mlp_ = randomise(MLPDenoiser(num_classes=10)).cuda()
    for net, x in ((unet_, torch.randn(16, 1, 8, 8, device="cuda")), (mlp_, torch.randn(16, 2, device="cuda"))):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = net(x, torch.rand(16, device="cuda"), torch.randint(0, 10, (16,), device="cuda"))
        assert out.shape == x.shape and torch.isfinite(out.float()).all()
