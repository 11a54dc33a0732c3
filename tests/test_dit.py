"""Chapter 8: the diffusion transformer. Patchify is a bijection that cuts the right patches, the 2-D positions
are translation-invariant, adaLN-Zero blocks start as the identity and the output layer at zero, the four
conditionings run and differ, the flop count matches a hand count, and bad input is refused."""

import pytest
import torch

from diffedu.ddim import ddim_sample
from diffedu.grids import index_grid
from diffedu.guidance import ClassifierFreeGuidance
from diffedu.nets import DiT, build_net, set_fused_attention
from diffedu.nets.dit import CONDITIONINGS, patchify, sincos_1d, sincos_2d, unpatchify
from diffedu.schedules import linear_schedule
from diffedu.utils import forward_gflops


def perturbed(net: DiT, seed: int = 0, std: float = 0.05) -> DiT:
    """The net with every parameter moved by noise: a stand-in for a trained net (no zero-initialised layer)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return net


def test_patchify_cuts_row_major_patches_and_inverts():
    x = torch.randn(2, 3, 8, 8)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 16, 12)
    for r in range(4):
        for c in range(4):
            patch = x[:, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2]        # (B, C, p, p)
            assert torch.equal(tokens[:, 4 * r + c], patch.permute(0, 2, 3, 1).reshape(2, 12))
    for p in (1, 2, 4, 8):
        assert torch.equal(unpatchify(patchify(x, p), p, 3, 8, 8), x)


def test_sincos_positions():
    pe = sincos_2d(16, 4)                                            # (16 tokens, 16)
    assert pe.shape == (16, 16)
    row, col = sincos_1d(8, torch.arange(4)), sincos_1d(8, torch.arange(4))
    assert torch.allclose(pe[4 * 2 + 3], torch.cat([row[2], col[3]]).float())
    # <P(r, c), P(r', c')> depends only on the offset (r - r', c - c'): cos(a - b) = sin a sin b + cos a cos b
    gram = pe.double() @ pe.double().T
    assert gram[0, 5] == pytest.approx(float(gram[5, 10]), abs=1e-5)  # offset (1, 1) twice
    assert gram[1, 4] == pytest.approx(float(gram[6, 9]), abs=1e-5)   # offset (1, -1) twice
    assert gram[0, 5] != pytest.approx(float(gram[0, 6]), abs=1e-3)   # and offsets are told apart


def test_adaln_zero_blocks_start_as_identity_and_output_zero():
    torch.manual_seed(0)
    net = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=3, num_heads=4)
    x, t, y = torch.randn(5, 4, 8, 8), torch.rand(5), torch.randint(0, 11, (5,))
    h = torch.randn(5, 16, 32)
    c, c_tokens = torch.randn(5, 32), torch.randn(5, 2, 32)
    for block in net.blocks:
        assert torch.equal(block(h, c, c_tokens), h)
    assert torch.equal(net(x, t, y), torch.zeros_like(x))
    perturbed(net)  # a trained net is neither
    assert not torch.allclose(net.blocks[0](h, c, c_tokens), h, atol=1e-3)
    assert net(x, t, y).abs().max().item() > 1e-3


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_conditionings_run_use_the_label_and_round_trip(conditioning):
    torch.manual_seed(0)
    net = perturbed(DiT(hidden_size=32, depth=2, num_heads=4, conditioning=conditioning))
    x, t = torch.randn(3, 4, 8, 8), torch.full((3,), 0.4)
    a, b = net(x, t, torch.tensor([1, 2, 3])), net(x, t, torch.tensor([4, 2, 3]))
    assert a.shape == x.shape
    assert not torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1:], b[1:], atol=1e-6)
    clone = build_net(net.config)
    clone.load_state_dict(net.state_dict())
    assert torch.equal(clone(x, t, None), net(x, t, torch.full((3,), 10)))  # cond=None is the null label
    maps = net.attention_maps(x, t, torch.tensor([1, 2, 3]))
    n = 16 + 2 * (conditioning == "in-context")
    assert len(maps) == 2 and maps[0].shape == (3, 4, n, n)
    assert torch.allclose(maps[0].sum(-1), torch.ones(3, 4, n), atol=1e-5)


def test_fused_attention_matches_the_explicit_formula():
    torch.manual_seed(0)
    net = perturbed(DiT(hidden_size=32, depth=2, num_heads=4, conditioning="cross-attention"))
    x, t, y = torch.randn(3, 4, 8, 8), torch.rand(3), torch.tensor([0, 5, 10])
    explicit = net(x, t, y)
    assert torch.allclose(set_fused_attention(net, True)(x, t, y), explicit, atol=1e-5)
    assert net.attention_maps(x, t, y)[0].shape == (3, 4, 16, 16)  # maps still come from the explicit path
    assert net.blocks[0].attn.fused


def test_flop_count_matches_a_hand_count():
    d, depth, p, C, N, r = 32, 2, 2, 4, 16, 3.0
    net = DiT(input_size=8, patch_size=p, in_channels=C, hidden_size=d, depth=depth, num_heads=4, mlp_ratio=r)
    hidden = int(d * r)
    per_block = (d * d + d * 2 * d + d * d + 2 * d * hidden) * N + 2 * N * N * d + d * 6 * d
    macs = (p * p * C * d * N + 256 * d + d * d + depth * per_block + d * 2 * d + d * p * p * C * N)
    assert forward_gflops(net, torch.zeros(1, C, 8, 8)) == pytest.approx(2 * macs / 1e9, rel=1e-9)


def test_dit_samples_with_guidance():
    torch.manual_seed(0)
    net = perturbed(DiT(hidden_size=32, depth=2, num_heads=4), std=0.02)
    schedule = linear_schedule()
    z_T = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    guided = ClassifierFreeGuidance(net, 3.0, null_label=10)
    out = ddim_sample(guided, z_T, schedule, index_grid(schedule, 5), cond=torch.arange(4), progress=False)
    assert out.shape == z_T.shape and bool(torch.isfinite(out).all())


def test_dit_bad_input():
    with pytest.raises(ValueError, match="input_size .* divisible by patch_size"):
        DiT(input_size=8, patch_size=3)
    with pytest.raises(ValueError, match="conditioning"):
        DiT(conditioning="film")
    with pytest.raises(ValueError, match="hidden_size"):
        DiT(hidden_size=30, num_heads=4)
    net = DiT(hidden_size=32, depth=1, num_heads=4)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 4, 8, 8\)"):
        net.check_inputs(torch.zeros(2, 1, 32, 32), 0.5)
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        net.check_inputs(torch.zeros(2, 4, 7, 7), 0.5)
    with pytest.raises(ValueError, match="cond ids must lie in"):
        net.check_inputs(torch.zeros(2, 4, 8, 8), 0.5, torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="t"):
        net.check_inputs(torch.zeros(2, 4, 8, 8), 1.5)
    with pytest.raises(ValueError, match="scale"):
        ClassifierFreeGuidance(net, -1.0, null_label=10)
    schedule = linear_schedule()
    with pytest.raises(ValueError, match=r"cond \(class ids\) must lie in \[0, 10\]"):
        ddim_sample(ClassifierFreeGuidance(net, 2.0, null_label=10), torch.zeros(2, 4, 8, 8), schedule,
                    index_grid(schedule, 2), cond=torch.tensor([3, 12]), progress=False)
