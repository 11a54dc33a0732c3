"""The training loop: it learns, repeats exactly, averages and clips as documented, and rejects bad input."""

import pytest
import torch
from torch import nn

from diffedu.train import EMA, TrainResult, make_generator, train


def _regression_data(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 2, generator=g)
    y = x @ torch.tensor([[2.0], [-1.0]]) + 0.5
    return x, y


def _mse_with_noise(model: nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
    """A regression loss whose input is jittered with the loop's generator (as diffusion losses draw noise)."""
    x, y = batch
    x = x + 0.01 * torch.randn(x.shape, generator=generator, device=x.device)
    return ((model(x) - y) ** 2).mean()


def _fresh_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(2, 1)


def _train(model=None, **kwargs) -> TrainResult:
    options = dict(steps=30, batch_size=16, lr=1e-2, device="cpu", progress=False)
    options.update(kwargs)
    return train(model or _fresh_model(), _mse_with_noise, _regression_data(), **options)


def test_train_reduces_loss():
    result = _train(steps=300, lr=3e-2)
    assert len(result.losses) == len(result.grad_norms) == 300
    assert sum(result.losses[-20:]) / 20 < 0.01 * sum(result.losses[:20]) / 20
    assert not result.model.training and not result.ema_model.training
    assert result.wall_time_s > 0 and result.steps_per_s > 0
    assert "steps=300" in repr(result)


def test_same_seed_bitwise_identical_different_seed_differs():
    a, b = _train(seed=7), _train(seed=7)
    assert a.losses == b.losses
    for p, q in zip(a.ema_model.parameters(), b.ema_model.parameters()):
        assert torch.equal(p, q)
    c = _train(seed=8)
    assert c.losses != a.losses


def test_single_tensor_data_and_batch_on_device():
    seen = []

    def loss_fn(model, batch, generator):
        seen.append((batch.shape, batch.device.type, generator.device.type))
        return model(batch).pow(2).mean()

    train(nn.Linear(3, 1), loss_fn, torch.randn(10, 3), steps=2, batch_size=4, device="cpu", progress=False)
    assert seen == [(torch.Size([4, 3]), "cpu", "cpu")] * 2


def test_ema_math_by_hand():
    """theta_ema <- d_n theta_ema + (1 - d_n) theta, with d_n = min(decay, (1 + n) / (10 + n))."""
    weights = []

    def loss_fn(model, batch, generator):
        weights.append(model.weight.detach().clone())  # weights after `step` updates
        return _mse_with_noise(model, batch, generator)

    decay = 0.2
    result = train(_fresh_model(), loss_fn, _regression_data(), steps=3, batch_size=8, lr=0.1, ema_decay=decay,
                   device="cpu", progress=False)
    weights.append(result.model.weight.detach())
    ema = weights[0]
    for n in range(3):
        d = min(decay, (1 + n) / (10 + n))  # 0.1, 2/11, 0.2
        ema = d * ema + (1 - d) * weights[n + 1]
    assert torch.allclose(result.ema_model.weight, ema, atol=1e-7, rtol=0)
    assert not torch.allclose(result.ema_model.weight, result.model.weight)


def test_ema_class_fixed_decay_and_copy_to():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.5, use_num_updates=False)
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())
    for value in (3.0, 5.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
    assert ema.model.weight.item() == 0.5 * (0.5 * 1.0 + 0.5 * 3.0) + 0.5 * 5.0  # = 3.5
    ema.copy_to(model)
    assert model.weight.item() == 3.5
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)


def test_grad_clipping_limits_the_applied_gradient():
    # after the last step the model keeps that step's gradient, as the optimizer applied it (clipped)
    clipped = _train(steps=1, grad_clip=0.05)
    norm = torch.cat([p.grad.flatten() for p in clipped.model.parameters()]).norm()
    assert clipped.grad_norms[0] > 0.05
    assert norm.item() == pytest.approx(0.05, rel=1e-4)
    free = _train(steps=1, grad_clip=None)
    norm = torch.cat([p.grad.flatten() for p in free.model.parameters()]).norm()
    assert norm.item() == pytest.approx(free.grad_norms[0], rel=1e-5)
    assert free.grad_norms[0] == pytest.approx(clipped.grad_norms[0])


def test_warmup_starts_from_a_tiny_learning_rate():
    before = _fresh_model().weight.detach().clone()
    slow = _train(steps=2, warmup_steps=10**9)
    fast = _train(steps=2, warmup_steps=0)
    assert (slow.model.weight - before).abs().max() < 1e-9
    assert (fast.model.weight - before).abs().max() > 1e-3


def test_log_every_prints(capsys):
    _train(steps=4, log_every=2)
    out = capsys.readouterr()
    assert (out.out + out.err).count("loss") >= 2


def test_make_generator():
    a = torch.randn(3, generator=make_generator("cpu", 5))
    b = torch.randn(3, generator=make_generator(torch.device("cpu"), 5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, name", [
    (dict(steps=0), "steps"), (dict(steps=2.5), "steps"), (dict(batch_size=0), "batch_size"),
    (dict(lr=0.0), "lr"), (dict(lr=-1e-3), "lr"), (dict(ema_decay=1.0), "ema_decay"),
    (dict(ema_decay=-0.1), "ema_decay"), (dict(grad_clip=0.0), "grad_clip"), (dict(warmup_steps=-1), "warmup"),
    (dict(weight_decay=-1.0), "weight_decay"), (dict(log_every=0), "log_every"), (dict(seed=-1), "seed"),
])
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        _train(**kwargs)


def test_bad_data_and_loss():
    with pytest.raises(ValueError, match="data"):
        train(nn.Linear(2, 1), _mse_with_noise, (torch.randn(5, 2), torch.randn(4, 1)), steps=1, progress=False)
    with pytest.raises(ValueError, match="data"):
        train(nn.Linear(2, 1), _mse_with_noise, [1, 2, 3], steps=1, progress=False)
    with pytest.raises(ValueError, match="scalar"):
        train(nn.Linear(2, 1), lambda m, b, g: m(b), torch.randn(5, 2), steps=1, device="cpu", progress=False)
    with pytest.raises(FloatingPointError, match="step 0"):
        train(nn.Linear(2, 1), lambda m, b, g: m(b).sum() * float("nan"), torch.randn(5, 2), steps=1,
              device="cpu", progress=False)
