"""The shipped checkpoints: present, hash-verified, within size, loadable, and the recipe reproduces the pipeline."""

import json

import pytest
import torch

from diffedu.ddpm import ddpm_loss
from diffedu.pretrained import MAX_CHECKPOINT_BYTES, checkpoint_dir, load_pretrained, read_manifest
from diffedu.ncsn import dsm_loss
from diffedu.recipes import (DigitsCFGConfig, DigitsDDPMConfig, DigitsNCSNConfig, cfg_digits, ddpm_digits,
                             ncsn_digits)
from diffedu.schedules import VE, linear_schedule

SHIPPED = ["ddpm_digits", "ncsn_digits", "cfg_digits", "classifier_digits", "text_shapes", "text_video",
           "progressive_digits", "consistency_digits", "consistency_training_digits", "reflow_digits",
           "vae_digits", "gan_digits", "made_digits", "flow_digits", "fm_digits"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_is_registered_and_loads(name):
    entry = read_manifest()[name]
    for key in ("recipe", "command", "config", "train_config", "seed", "steps", "wall_time_s", "machine", "metric",
                "sha256", "size_bytes"):
        assert key in entry, key
    assert (checkpoint_dir() / entry["file"]).stat().st_size == entry["size_bytes"] <= MAX_CHECKPOINT_BYTES
    assert entry["command"].startswith("python -m diffedu.recipes ")
    model = load_pretrained(name)  # verifies the sha256
    assert not model.training
    assert model.config == entry["config"]


def test_shipped_digits_model_denoises_far_better_than_chance():
    """The trained eps-model's loss on held-out digits is a small fraction of the untrained value (1.0)."""
    from diffedu.data import load_digits

    model = load_pretrained("ddpm_digits")
    test = load_digits(split="test")
    with torch.no_grad():
        loss = ddpm_loss(model, test.x, linear_schedule(), generator=torch.Generator().manual_seed(0)).item()
    assert loss < 0.15
    assert read_manifest()["ddpm_digits"]["train_config"]["eval"]["confident_fraction"] > 0.5


def test_shipped_ncsn_model_matches_the_noised_scores():
    """The sigma^2-weighted DSM loss on held-out digits is far below the untrained value (1.0 at zero output)."""
    from diffedu.data import load_digits

    model = load_pretrained("ncsn_digits")
    cfg = read_manifest()["ncsn_digits"]["train_config"]
    schedule = VE(cfg["sigma_min"], cfg["sigma_max"])
    test = load_digits(split="test")
    with torch.no_grad():
        loss = dsm_loss(model, test.x, schedule, generator=torch.Generator().manual_seed(0)).item()
    assert loss < 0.3
    assert cfg["eval"]["confident_fraction"] > 0.5


def test_shipped_cfg_model_follows_its_labels():
    """The recorded evaluation: guided samples are read as their label far more often than unguided ones."""
    ev = read_manifest()["cfg_digits"]["train_config"]["eval"]
    assert ev["accuracy_s0"] < 0.3  # s = 0 ignores the label: about chance (0.1)
    assert ev["accuracy_s2"] > ev["accuracy_s1"] > ev["accuracy_s0"]
    model = load_pretrained("cfg_digits")
    assert model.config["num_classes"] == 10


@pytest.mark.slow
def test_cfg_recipe_runs_end_to_end_into_a_temporary_folder(tmp_path):
    entry = cfg_digits(DigitsCFGConfig(steps=3, eval_per_class=1, eval_steps=2), out=str(tmp_path), device="cpu")
    assert entry["command"] == ("python -m diffedu.recipes cfg_digits --steps 3 --set eval_per_class=1 "
                                "--set eval_steps=2")  # every field that differs from the recipe's defaults
    assert set(entry["train_config"]["eval"]) >= {"accuracy_s0", "accuracy_s1", "accuracy_s2", "pixel_fd_s2"}


@pytest.mark.slow
def test_ncsn_recipe_runs_end_to_end_into_a_temporary_folder(tmp_path):
    cfg = DigitsNCSNConfig(steps=3, eval_samples=4, eval_levels=2, eval_steps_each=2)
    entry = ncsn_digits(cfg, out=str(tmp_path), device="cpu")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["ncsn_digits"]["sha256"] == entry["sha256"]
    assert entry["command"] == ("python -m diffedu.recipes ncsn_digits --steps 3 --set eval_samples=4 "
                                "--set eval_levels=2 --set eval_steps_each=2")
    assert entry["config"]["name"] == "InputScaled"
    assert set(entry["train_config"]["eval"]) >= {"pixel_fd", "confident_fraction"}


@pytest.mark.slow
def test_recipe_runs_end_to_end_into_a_temporary_folder(tmp_path):
    entry = ddpm_digits(DigitsDDPMConfig(steps=3, eval_samples=4), out=str(tmp_path), device="cpu")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["ddpm_digits"]["sha256"] == entry["sha256"]
    assert entry["command"] == "python -m diffedu.recipes ddpm_digits --steps 3 --set eval_samples=4"
    assert set(entry["train_config"]["eval"]) >= {"pixel_fd", "test_bpd", "confident_fraction"}


@pytest.mark.slow
def test_a_recipe_run_twice_writes_the_same_bytes(tmp_path):
    """Reproducible bytes (one thread, deterministic algorithms, seeded): two runs, one sha256. The manifest
    records what the bytes depend on."""
    from diffedu.recipes import DigitsClassifierConfig, run_recipe

    cfg = DigitsClassifierConfig(steps=20, batch_size=32, eval_times=(0.0,))
    first = run_recipe("classifier_digits", cfg, out=str(tmp_path / "a"), device="cpu")
    second = run_recipe("classifier_digits", cfg, out=str(tmp_path / "b"), device="cpu")
    assert first["sha256"] == second["sha256"]
    assert (tmp_path / "a" / first["file"]).read_bytes() == (tmp_path / "b" / second["file"]).read_bytes()
    machine = first["machine"]
    assert machine["threads"] == 1 and machine["deterministic_algorithms"] is True
    assert machine["torch"] == torch.__version__ and machine["cpu_capability"]
    assert first["command"] == ("python -m diffedu.recipes classifier_digits --steps 20 --set batch_size=32 "
                                "--set eval_times=0.0")  # the command that remakes these very bytes
    assert torch.get_num_threads() >= 1 and not torch.are_deterministic_algorithms_enabled()  # restored after


def test_shipped_distilled_students_reach_the_chapter_6_targets():
    """The recorded evaluations (200 samples, the seed-5 noises of chapters 4-5): the 4-step progressive student
    is within 1.2 x the teacher's converged FD (about 1.1), the 1-step consistency model beats the teacher's
    5-call DDIM (1.88 in chapter 5), and every progressive round was scored."""
    manifest = read_manifest()
    pd = manifest["progressive_digits"]["train_config"]
    assert pd["eval"]["pixel_fd_nfe4"] < 1.2 * 1.1
    assert [h["steps"] for h in pd["history"]] == [32, 16, 8, 4, 2, 1]
    assert manifest["consistency_digits"]["train_config"]["eval"]["pixel_fd_nfe1"] < 1.88
    model = load_pretrained("progressive_digits")
    assert model.steps == 4 and model.prediction == "v"
