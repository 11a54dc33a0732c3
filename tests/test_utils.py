"""Set-up helpers: device pick, seeding, mode, and printing the library's own source."""

import torch

from diffedu import ddpm
from diffedu.utils import pick_device, seed_everything, setup, show_source


def test_seed_everything_repeats_runs():
    seed_everything(3)
    a = torch.randn(5)
    seed_everything(3)
    assert torch.equal(a, torch.randn(5))


def test_setup_reads_the_mode(monkeypatch):
    monkeypatch.setenv("DIFFEDU_FULL", "1")
    assert setup(seed=1).full
    monkeypatch.setenv("DIFFEDU_FULL", "0")
    cfg = setup(seed=1, device="cpu")
    assert not cfg.full and cfg.device == torch.device("cpu")
    assert "0x" not in repr(cfg)  # deterministic notebook output
    assert pick_device().type in ("cuda", "mps", "cpu")


def test_show_source_prints_the_real_code():
    md = show_source(ddpm.q_sample)
    assert md.data.startswith("```python\ndef q_sample(")
    assert "sqrt()" in md.data
