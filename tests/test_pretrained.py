"""Checkpoints (safetensors round trip, no pickle) and the registry of shipped checkpoints."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import diffedu
from diffedu import pretrained
from diffedu.checkpoints import load_state, save_checkpoint, sha256_file
from diffedu.pretrained import (MAX_CHECKPOINT_BYTES, ChecksumError, checkpoint_dir, data_dir, list_pretrained,
                                load_pretrained, read_manifest, register_checkpoint)


class TinyNet(nn.Module):
    """A stand-in for a diffedu network: built from a config dict with a "name" key."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.config = {"name": "tiny", "width": width}
        self.inp = nn.Linear(2, width)
        self.out = nn.Linear(width, 2)
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.inp(x))) * self.scale


def build_tiny(config: dict) -> nn.Module:
    assert config["name"] == "tiny"
    return TinyNet(config["width"])


def _trained_tiny(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet(8)
    with torch.no_grad():
        net.scale.fill_(3.0)  # a buffer that differs from its initial value
    return net


REGISTER_ARGS = dict(recipe="recipes/tiny.py", command="python -m recipes.tiny --steps 10",
                     train_config={"lr": 1e-3, "batch_size": 4}, seed=0, steps=10, wall_time_s=1.234,
                     metric=("mse", 0.5))


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DIFFEDU_DATA", str(tmp_path))
    return tmp_path


# --- checkpoints ---------------------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    net = _trained_tiny()
    path = save_checkpoint(net, tmp_path / "net.safetensors", net.config, metadata={"steps": 10, "note": "x"})
    state, config, metadata = load_state(path)
    assert config == {"name": "tiny", "width": 8}
    assert metadata == {"steps": 10, "note": "x"}
    assert set(state) == set(net.state_dict())
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in state.values())
    rebuilt = build_tiny(config)
    rebuilt.load_state_dict(state)
    x = torch.randn(5, 2)
    assert torch.equal(rebuilt(x), net(x))


def test_checkpoint_bytes_are_reproducible(tmp_path):
    net = _trained_tiny()
    a = save_checkpoint(net, tmp_path / "a.safetensors", net.config, {"k": 1, "j": 2, "z": [1, 2]})
    b = save_checkpoint(net, tmp_path / "b.safetensors", net.config, {"z": [1, 2], "j": 2, "k": 1})
    assert sha256_file(a) == sha256_file(b)
    assert len(sha256_file(a)) == 64


def test_checkpoint_tied_weights(tmp_path):
    net = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    net[1].weight = net[0].weight
    state, _, _ = load_state(save_checkpoint(net, tmp_path / "tied.safetensors", {"name": "tied"}))
    assert torch.equal(state["0.weight"], state["1.weight"])


def test_checkpoint_bad_config(tmp_path):
    with pytest.raises(ValueError, match="config"):
        save_checkpoint(nn.Linear(1, 1), tmp_path / "x.safetensors", {"name": object()})
    with pytest.raises(ValueError, match="config"):
        save_checkpoint(nn.Linear(1, 1), tmp_path / "x.safetensors", ["not", "a", "dict"])
    assert not (tmp_path / "x.safetensors").exists()


class _Trap:
    """Unpickling this calls ``_sprung``: proof that something unpickled."""

    sprung = False

    def __reduce__(self):
        return (_sprung, ())


def _sprung():
    _Trap.sprung = True


def test_load_state_never_unpickles(tmp_path):
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(_Trap()))
    with pytest.raises(ValueError, match="safetensors"):
        load_state(path)
    assert not _Trap.sprung
    torch.save({"w": torch.zeros(2)}, tmp_path / "torch.safetensors")
    with pytest.raises(ValueError):
        load_state(tmp_path / "torch.safetensors")
    with pytest.raises(FileNotFoundError):
        load_state(tmp_path / "absent.safetensors")


# --- registry ------------------------------------------------------------------------------------------------


def test_data_dir_default_and_override(tmp_path, monkeypatch):
    monkeypatch.delenv("DIFFEDU_DATA", raising=False)
    assert data_dir() == Path(diffedu.__file__).resolve().parent.parent / "data"
    monkeypatch.setenv("DIFFEDU_DATA", str(tmp_path))
    assert data_dir() == tmp_path and checkpoint_dir() == tmp_path / "checkpoints"
    assert read_manifest() == {} and list_pretrained() == []


def test_register_and_load_round_trip(data_root, monkeypatch):
    net = _trained_tiny()
    entry = register_checkpoint("tiny-a", net, **REGISTER_ARGS)
    path = data_root / "checkpoints" / "tiny-a.safetensors"
    assert entry["file"] == "tiny-a.safetensors" and path.is_file()
    assert entry["sha256"] == sha256_file(path) and entry["size_bytes"] == path.stat().st_size
    assert entry["config"] == {"name": "tiny", "width": 8}
    assert entry["metric"] == {"name": "mse", "value": 0.5}
    assert entry["machine"]["torch"] == torch.__version__ and entry["machine"]["device"] == "cpu"
    assert entry["machine"]["cpu_count"] >= 1 and entry["machine"]["platform"]
    assert {"recipe", "command", "train_config", "seed", "steps", "wall_time_s", "created"} <= set(entry)

    register_checkpoint("tiny-b", _trained_tiny(1), **{**REGISTER_ARGS, "metric": {"name": "mse", "value": 0.25}})
    assert list_pretrained() == ["tiny-a", "tiny-b"]
    text = (data_root / "checkpoints" / "manifest.json").read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"  # stable formatting

    def refuse(*args, **kwargs):
        raise AssertionError("load_pretrained must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded = load_pretrained("tiny-a", device="cpu", builder=build_tiny)
    assert not loaded.training
    x = torch.randn(4, 2)
    assert torch.equal(loaded(x), net(x))
    assert loaded.scale.item() == 3.0


def test_register_overwrites_entry(data_root):
    register_checkpoint("tiny", _trained_tiny(0), **REGISTER_ARGS)
    first = read_manifest()["tiny"]["sha256"]
    register_checkpoint("tiny", _trained_tiny(1), **REGISTER_ARGS)
    assert list_pretrained() == ["tiny"] and read_manifest()["tiny"]["sha256"] != first


def test_register_into_explicit_directory(tmp_path):
    folder = tmp_path / "elsewhere"
    register_checkpoint("tiny", _trained_tiny(), directory=folder, **REGISTER_ARGS)
    assert list_pretrained(folder) == ["tiny"]
    assert isinstance(load_pretrained("tiny", device="cpu", builder=build_tiny, directory=folder), TinyNet)


def test_corrupt_file_raises_checksum_error(data_root):
    register_checkpoint("tiny", _trained_tiny(), **REGISTER_ARGS)
    path = data_root / "checkpoints" / "tiny.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # flip the bits of one weight byte
    path.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match="sha256"):
        load_pretrained("tiny", device="cpu", builder=build_tiny)
    assert issubclass(ChecksumError, ValueError)
    load_pretrained("tiny", device="cpu", builder=build_tiny, verify=False)  # still a valid file, just altered


def test_missing_file_names_the_recipe_command(data_root):
    register_checkpoint("tiny", _trained_tiny(), **REGISTER_ARGS)
    (data_root / "checkpoints" / "tiny.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="python -m recipes.tiny --steps 10"):
        load_pretrained("tiny", device="cpu", builder=build_tiny)


def test_unknown_name_lists_known(data_root):
    register_checkpoint("tiny", _trained_tiny(), **REGISTER_ARGS)
    with pytest.raises(ValueError, match="tiny") as info:
        load_pretrained("nope", builder=build_tiny)
    assert "nope" in str(info.value)


def test_too_large_checkpoint_rejected(data_root):
    register_checkpoint("tiny", _trained_tiny(), **REGISTER_ARGS)
    manifest_before = read_manifest()
    big = nn.Linear(1200, 1200)  # 1.44 M float32 weights: about 5.8 MB
    with pytest.raises(ValueError, match="at most"):
        register_checkpoint("big", big, config={"name": "big"}, **REGISTER_ARGS)
    assert MAX_CHECKPOINT_BYTES == 5_000_000
    assert sorted(p.name for p in (data_root / "checkpoints").iterdir()) == ["manifest.json", "tiny.safetensors"]
    assert read_manifest() == manifest_before


@pytest.mark.parametrize("change, name", [
    (dict(metric=0.5), "metric"), (dict(metric=("mse", float("nan"))), "metric"), (dict(command=""), "command"),
    (dict(train_config={"f": object()}), "train_config"), (dict(seed=-1), "seed"), (dict(steps=1.5), "steps"),
    (dict(wall_time_s=-1.0), "wall_time_s"),
])
def test_register_bad_arguments(data_root, change, name):
    with pytest.raises(ValueError, match=name):
        register_checkpoint("tiny", _trained_tiny(), **{**REGISTER_ARGS, **change})
    assert not (data_root / "checkpoints").exists() or list_pretrained() == []


def test_register_bad_name_and_config(data_root):
    with pytest.raises(ValueError, match="name"):
        register_checkpoint("../escape", _trained_tiny(), **REGISTER_ARGS)
    with pytest.raises(ValueError, match="config"):
        register_checkpoint("plain", nn.Linear(1, 1), **REGISTER_ARGS)  # no .config and none given


def test_module_never_imports_pickle_loaders():
    for module in (pretrained, __import__("diffedu.checkpoints", fromlist=["x"])):
        source = Path(module.__file__).read_text()
        assert "torch.load(" not in source and "import pickle" not in source


def test_load_state_malformed_header_names_the_file(tmp_path):
    """A header entry that is not JSON, or lacks config / metadata, is a ValueError naming the file (not a bare
    JSONDecodeError or KeyError)."""
    from safetensors.torch import save_file

    for text in ("{not json", '{"config": {"name": "tiny"}}', "[1, 2]"):
        path = tmp_path / "bad.safetensors"
        save_file({"w": torch.zeros(2)}, str(path), metadata={"diffedu": text})
        with pytest.raises(ValueError, match="bad.safetensors") as info:
            load_state(path)
        assert type(info.value) is ValueError

