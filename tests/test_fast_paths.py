"""The fast paths, each checked against the plain path on the CPU: torch's fused attention kernel against the
explicit softmax(Q K^T / sqrt(d)) V, bf16 autocast in training and sampling against float32, torch.compile against
eager, and no host synchronisation inside any shipped network's forward pass."""

import copy
import math

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.profiler import profile

from diffedu.ddpm import ddpm_loss, ddpm_sample
from diffedu.grids import index_grid
from diffedu.guidance import ClassifierFreeGuidance
from diffedu.nets import Autocast, MLPDenoiser, TextToImageUNet, UNet, set_fused_attention
from diffedu.nets.unet import AttentionBlock, CrossAttentionBlock, attention, fused_attention, heads_first
from diffedu.pretrained import load_pretrained
from diffedu.recipes import RECIPES
from diffedu.schedules import linear_schedule
from diffedu.shapes import VOCABULARY
from diffedu.train import train


def randomised(net: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """``net`` with every parameter drawn N(0, std^2): no zero-initialised branch hides a difference."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return net


def text_unet() -> TextToImageUNet:
    return TextToImageUNet(VOCABULARY, max_len=10, text_dim=32, text_layers=1,
                           unet=dict(in_channels=3, base_channels=16, channel_mults=(1, 2, 2)))


# ------------------------------------------------------------------------------------------ the fused attention
def test_fused_attention_is_softmax_qk_v_head_by_head():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g) for n in (5, 7, 7))   # (B, heads, N or M, d)
    out = fused_attention(q, k, v)                                          # (B, N, heads * d)
    for b in range(2):
        for h in range(3):  # Vaswani et al. eq. 1 in float64, one head at a time
            w = torch.softmax(q[b, h].double() @ k[b, h].double().T / math.sqrt(8), dim=-1)   # (N, M)
            assert torch.allclose(out[b, :, 8 * h:8 * (h + 1)].double(), w @ v[b, h].double(), atol=1e-6)
    explicit, _ = attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))  # (B, heads, d, N)
    assert torch.allclose(heads_first(out, 3), explicit.transpose(-1, -2), atol=1e-6)


@pytest.mark.parametrize("cross", [False, True])
def test_attention_blocks_fused_equal_explicit_outputs_and_gradients(cross):
    torch.manual_seed(0)
    block = CrossAttentionBlock(16, 8, num_heads=4, groups=4) if cross else AttentionBlock(16, num_heads=4, groups=4)
    block = randomised(block)
    fused = set_fused_attention(copy.deepcopy(block), True)
    x = torch.randn(3, 16, 6, 5, requires_grad=True)
    args = (torch.randn(3, 7, 8),) if cross else ()
    outs, grads = [], []
    for b in (block, fused):
        x.grad = None
        y = b(x, *args)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        outs.append(y.detach())
        grads.append([x.grad.clone()] + [p.grad.clone() for p in b.parameters()])
    assert torch.allclose(outs[0], outs[1], atol=1e-5) and not torch.equal(outs[0], x.detach())
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(*grads))
    if cross:
        assert block.last_weights.shape == (3, 4, 30, 7) and fused.last_weights is None


def test_whole_nets_agree_fused_and_explicit_at_28x28_and_with_text():
    torch.manual_seed(0)
    unet = randomised(UNet(), std=0.1)                    # attention over 14 x 14 = 196 positions
    x, t = torch.randn(4, 1, 28, 28), torch.rand(4)
    with torch.no_grad():
        assert torch.allclose(unet(x, t), set_fused_attention(copy.deepcopy(unet))(x, t), atol=1e-4)
    net = randomised(text_unet(), std=0.1)
    ids = net.tokenize(["a red circle at the top left", "a small blue square"] * 2)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        explicit = net(x, t, ids)
        maps = net.cross_attention_maps()
        fused_net = set_fused_attention(copy.deepcopy(net))
        assert torch.allclose(explicit, fused_net(x, t, ids), atol=1e-4)
    assert len(maps) == 10 and all(torch.allclose(m.sum(-1), torch.ones(())) for m in maps)
    with pytest.raises(RuntimeError, match="set_fused_attention"):
        fused_net.cross_attention_maps()
    set_fused_attention(fused_net, False)
    with torch.no_grad():
        fused_net(x, t, ids)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(fused_net.cross_attention_maps(), maps))


def test_the_explicit_formula_is_the_default_and_the_fused_path_runs_the_flash_kernel():
    net = UNet()
    assert not any(m.fused for m in net.modules() if isinstance(m, AttentionBlock))
    set_fused_attention(net)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    with profile() as prof:
        net(x, t).sum().backward()
    kernels = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in kernels
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in kernels
    assert "aten::_softmax" not in kernels                   # no explicit (N, M) weights anywhere


def test_set_fused_attention_checks_its_arguments():
    with pytest.raises(ValueError, match="fused must be True or False"):
        set_fused_attention(UNet(), 1)
    with pytest.raises(ValueError, match="net must be a torch.nn.Module"):
        set_fused_attention("unet")


# ----------------------------------------------------------------------------------------------- bf16 autocast
def test_bf16_training_follows_float32():
    sch = linear_schedule()
    data = torch.randn(256, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    loss = lambda m, x, g: ddpm_loss(m, x, sch, generator=g)  # noqa: E731
    runs = []
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(0)
        runs.append(train(set_fused_attention(UNet(base_channels=16)), loss, data, steps=6, batch_size=32,
                          lr=1e-3, device="cpu", progress=False, autocast=dtype))
    assert runs[1].losses == pytest.approx(runs[0].losses, rel=2e-2)
    assert runs[1].losses != runs[0].losses                  # bf16 did run
    assert next(runs[1].model.parameters()).dtype == torch.float32  # weights, AdamW and EMA stay float32
    with pytest.raises(ValueError, match="autocast must be None, torch.bfloat16 or torch.float16"):
        train(MLPDenoiser(), loss, torch.randn(8, 2), steps=1, autocast=torch.float64)


def test_bf16_sampling_follows_float32_on_a_shipped_model():
    sch, net = linear_schedule(), load_pretrained("ddpm_digits", device="cpu")
    x, t = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.rand(32)
    fast = Autocast(net)
    with torch.no_grad():
        exact, low = net(x, t), fast(x, t)
    assert low.dtype == torch.float32 and 0 < float((low - exact).norm() / exact.norm()) < 2e-2
    assert fast.prediction == "eps" and fast.check_inputs == net.check_inputs
    x_T = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    runs = [ddpm_sample(m, x_T, sch, index_grid(sch, 20), clip_x0=True, progress=False,
                        generator=torch.Generator().manual_seed(2)) for m in (net, fast)]
    assert (runs[1] - runs[0]).abs().mean() < 1e-2
    with pytest.raises(ValueError, match="dtype must be torch.bfloat16 or torch.float16"):
        Autocast(net, torch.float64)


# ------------------------------------------------------------------------------------------------ torch.compile
def test_compiled_training_equals_eager():
    class Traced(MLPDenoiser):
        compiled_calls = 0

        def forward(self, x, t, cond=None):
            Traced.compiled_calls += torch.compiler.is_compiling()
            return super().forward(x, t, cond)

    sch = linear_schedule()
    loss = lambda m, x, g: ddpm_loss(m, x, sch, generator=g)  # noqa: E731
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    runs = []
    for compile in (False, "aot_eager"):  # dynamo + AOT autograd, without a C++ toolchain's minutes of inductor
        torch.manual_seed(0)
        runs.append(train(Traced(), loss, data, steps=4, batch_size=32, device="cpu", progress=False,
                          compile=compile).losses)
    assert Traced.compiled_calls >= 1
    assert runs[1] == pytest.approx(runs[0], rel=1e-6)
    with pytest.raises(ValueError, match="compile must be True, False or the name"):
        train(MLPDenoiser(), loss, data, steps=1, compile=1.5)


# ------------------------------------------------------------------------------------------------ no host syncs
class HostSyncSpy(TorchFunctionMode):
    """Records every tensor operation that makes the host wait for the device (a value read back, a branch)."""

    SYNCS = {"item", "__bool__", "tolist", "cpu", "numpy", "__float__", "__int__", "__index__", "nonzero",
             "unique", "masked_select", "is_nonzero", "any", "all"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.SYNCS:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("fused", [False, True])
def test_no_host_sync_in_any_shipped_network_forward(fused):
    for name, recipe in RECIPES.items():
        small = {"text_shapes": dict(train_images=8), "text_video": dict(train_clips=8),
                 "reflow_digits": dict(pairs=8, pair_steps=2)}
        cfg = recipe.config(**small.get(name, {}))
        data = recipe.data(cfg)
        x, cond = (data[0][:4], data[1][:4]) if isinstance(data, tuple) else (data[:4], None)
        net = set_fused_attention(recipe.network(cfg).eval(), fused)
        t = torch.rand(4)
        calls = [lambda: net(x, t)] if name == "classifier_digits" else [lambda: net(x, t, cond)]
        if not hasattr(net, "prediction") and name != "classifier_digits":  # chapter 14's VAE, GAN, MADE, flow
            calls = [lambda: net(x)]
        if name == "mnist_reader":  # a plain classifier of the 28x28 centre
            calls = [lambda: net(x[..., 2:30, 2:30])]
        if name == "autoencoder_mnist":  # not a denoiser: encode and decode
            calls = [lambda: net.decode(net.encode(x).mean)]
        if name in ("cfg_digits", "text_shapes", "text_video", "latent_unet_mnist", "dit_mnist"):  # and CFG
            null = net.null_label if name in ("text_shapes", "text_video") else 10
            calls.append(lambda: ClassifierFreeGuidance(net, 2.0, null_label=null)(x, t, cond))
        for call in calls:
            with torch.no_grad(), HostSyncSpy() as spy:
                call()
            assert spy.seen == [], (name, spy.seen)
    with HostSyncSpy() as spy:  # the spy sees a sync when there is one
        bool(torch.ones(1) > 0)
    assert spy.seen == ["__bool__"]
