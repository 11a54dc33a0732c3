"""Several processes (torchrun + DistributedDataParallel, gloo on the CPU): a 2-process recipe follows the
1-process run, writes one checkpoint and one manifest entry; the pieces on real ranks; the bad-input errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffedu import distributed, recipes
from diffedu.checkpoints import load_state, save_checkpoint
from diffedu.ddpm import ddpm_loss
from diffedu.nets import MLPDenoiser
from diffedu.pretrained import read_manifest, register_checkpoint
from diffedu.schedules import linear_schedule
from diffedu.train import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["classifier_digits", "--steps", "8", "--set", "batch_size=32", "--set", "dropout=0", "--set", "lr=0.01",
        "--set", "warmup_steps=0"]  # dropout 0: dropout masks are per rank (see diffedu.distributed)


def torchrun(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 args`` on the CPU, one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("DIFFEDU_FULL", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


@pytest.mark.ddp
def test_a_recipe_on_two_processes_follows_the_one_process_run(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    run = torchrun("-m", "diffedu.recipes", *TINY, "--out", str(two), "--losses", str(two / "losses.json"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("registered classifier_digits") == 1  # rank 0 alone reports and writes
    recipes.main(TINY + ["--out", str(one), "--losses", str(one / "losses.json")])

    a, b = (json.loads((d / "losses.json").read_text()) for d in (one, two))
    assert len(b["losses"]) == 8
    assert b["losses"] == pytest.approx(a["losses"], rel=1e-5, abs=1e-6)
    assert b["grad_norms"] == pytest.approx(a["grad_norms"], rel=1e-4)  # Adam would hide a wrong gradient scale
    assert max(a["losses"]) - min(a["losses"]) > 0.01  # the trajectory moves, so agreement means something
    assert sorted(p.name for p in two.iterdir()) == ["classifier_digits.safetensors", "losses.json", "manifest.json"]
    manifest = read_manifest(two)
    assert list(manifest) == ["classifier_digits"]
    entry = manifest["classifier_digits"]
    assert entry["command"].startswith("torchrun --nproc_per_node=2 -m diffedu.recipes classifier_digits --steps 8")
    assert entry["machine"]["processes"] == 2 and "processes" not in read_manifest(one)["classifier_digits"]["machine"]
    w1, w2 = (load_state(d / "classifier_digits.safetensors")[0] for d in (one, two))
    assert all(torch.allclose(w1[k], w2[k], atol=1e-4) for k in w1)  # 8 Adam steps of lr 0.01 move them ~0.05


@pytest.mark.ddp
def test_the_pieces_on_two_real_ranks(tmp_path):
    for rank in (0, 1):
        (tmp_path / f"ckpt{rank}").mkdir()
    run = torchrun(str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, report in enumerate(reports):
        assert report["rank"] == r and report["world"] == 2 and report["device"] == "cpu"
        assert report["seen"] == [4]                 # the net ran on its half of the global batch of 8
        assert report["prediction"] == "eps"         # the wrapped net's attributes show through
        assert report["output_error"] == 0.0         # the gathered outputs are the global batch's
        assert report["grad_error"] < 1e-6 * max(1.0, report["grad_scale"])  # = the 1-process gradient
        assert "the config must be the same on every rank" in report["mismatch"]
    assert reports[0]["register"] == "written"
    assert "must run on rank 0 only (this is rank 1 of 2)" in reports[1]["register"]
    assert (tmp_path / "ckpt0" / "probe.safetensors").is_file() and not any((tmp_path / "ckpt1").iterdir())


def pretend_world(monkeypatch, rank: int, world: int) -> None:
    """Make the library believe it is rank ``rank`` of ``world`` (for the checks made before any collective)."""
    monkeypatch.setattr(distributed, "rank_and_world", lambda: (rank, world))
    monkeypatch.setattr("diffedu.train.rank_and_world", lambda: (rank, world))


def test_uneven_shards_and_too_many_ranks_are_refused(monkeypatch):
    sch = linear_schedule()
    loss = lambda m, x, g: ddpm_loss(m, x, sch, generator=g)  # noqa: E731
    pretend_world(monkeypatch, 0, 4)
    with pytest.raises(ValueError, match=r"batch_size must be divisible by the world size .*4.*got 10"):
        train(MLPDenoiser(), loss, torch.randn(64, 2), steps=1, batch_size=10, progress=False)
    with pytest.raises(ValueError, match=r"--nproc_per_node \(world size 4\) must be at most the 3 rows"):
        train(MLPDenoiser(), loss, torch.randn(3, 2), steps=1, batch_size=8, progress=False)


def test_only_rank_zero_writes_checkpoints(monkeypatch, tmp_path):
    pretend_world(monkeypatch, 1, 2)
    net = MLPDenoiser()
    with pytest.raises(ValueError, match=r"register_checkpoint must run on rank 0 only \(this is rank 1 of 2\)"):
        register_checkpoint("x", net, recipe="r", command="c", train_config={}, seed=0, steps=1, wall_time_s=0.0,
                            metric=("m", 0.0), directory=str(tmp_path))
    with pytest.raises(ValueError, match="save_checkpoint must run on rank 0 only"):
        save_checkpoint(net, tmp_path / "x.safetensors", net.config)
    assert not any(tmp_path.iterdir())


def test_a_backend_the_device_cannot_use_is_refused(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match=r"backend must be one of \['gloo', 'nccl'\], got 'mpi'"):
        distributed.init_distributed("cpu", backend="mpi")
    with pytest.raises(ValueError, match="backend 'nccl'"):  # not in a CPU build, and never for CPU tensors
        distributed.init_distributed("cpu", backend="nccl")
    with pytest.raises(ValueError, match="device must be cuda or cpu"):
        distributed.init_distributed("mps")
    assert not torch.distributed.is_initialized()
    with pytest.raises(ValueError, match="--backend gloo needs several processes"):
        recipes.main(["classifier_digits", "--backend", "gloo"])


def test_one_process_is_rank_zero_of_one():
    assert distributed.rank_and_world() == (0, 1)
    distributed.check_same_on_all_ranks("anything", {"a": 1})  # nothing to compare
    distributed.check_rank_zero("writing")


def test_config_overrides_and_the_recorded_command():
    cfg_type = recipes.DigitsDDPMConfig
    assert recipes.parse_overrides(cfg_type, ["batch_size=64", "lr=0.5", "channel_mults=1,2,2"]) == \
        {"batch_size": 64, "lr": 0.5, "channel_mults": (1, 2, 2)}
    assert recipes.parse_overrides(recipes.DigitsClassifierConfig, ["eval_times=0,0.5"]) == {"eval_times": (0.0, 0.5)}
    with pytest.raises(ValueError, match="--set must be KEY=VALUE with KEY one of"):
        recipes.parse_overrides(cfg_type, ["nonsense=1"])
    with pytest.raises(ValueError, match="--set batch_size must be a int, got 'x'"):
        recipes.parse_overrides(cfg_type, ["batch_size=x"])
    video = recipes.TextVideoConfig                                   # a bool reads its word, not bool("false")
    assert recipes.parse_overrides(video, ["frame_time=False"]) == {"frame_time": False}
    assert recipes.parse_overrides(video, ["frame_time=true"]) == {"frame_time": True}
    with pytest.raises(ValueError, match="--set frame_time must be a bool, got 'yes'"):
        recipes.parse_overrides(video, ["frame_time=yes"])
    recipe = recipes.RECIPES["ddpm_digits"]
    assert recipes.recipe_command(recipe, cfg_type()) == "python -m diffedu.recipes ddpm_digits"
    full = cfg_type(**recipes.FULL_MODE["ddpm_digits"].overrides)
    assert recipes.recipe_command(recipe, full, full=True, fused_attention=True, autocast="bf16", world=4) == \
        "torchrun --nproc_per_node=4 -m diffedu.recipes ddpm_digits --full"
    assert recipes.recipe_command(recipe, cfg_type(steps=5, dropout=0.0), fused_attention=True, compile=True) == \
        "python -m diffedu.recipes ddpm_digits --steps 5 --set dropout=0.0 --fused-attention --compile"


def test_the_recorded_command_rebuilds_the_config():
    recipe = recipes.RECIPES["classifier_digits"]
    cfg = recipe.config(steps=7, batch_size=16, eval_times=(0.0, 0.5), channel_mults=(1, 2, 2), lr=3e-4)
    words = recipes.recipe_command(recipe, cfg).split()
    sets = [words[k + 1] for k, w in enumerate(words) if w == "--set"]
    steps = int(words[words.index("--steps") + 1])
    assert recipe.config(steps=steps, **recipes.parse_overrides(recipe.config, sets)) == cfg


def test_every_shipped_model_has_a_full_mode_configuration():
    assert set(recipes.FULL_MODE) == set(recipes.RECIPES)
    for name, full in recipes.FULL_MODE.items():
        cfg = recipes.RECIPES[name].config(**full.overrides)  # every override is a field of the recipe's config
        assert cfg.steps > recipes.RECIPES[name].config().steps and cfg.batch_size % 8 == 0
        assert full.gpu_time == "unmeasured"
