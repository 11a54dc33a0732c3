"""Checkpoints (safetensors round trip, no pickle) and the registry of shipped checkpoints."""

import json
import pickle
import re
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


# --- the manifest's entries are checked before use -----------------------------------------------------------


def _edit_entry(data_root: Path, name: str, **changes) -> None:
    """Set (or, with value None, delete) keys of one manifest entry, keeping the file's JSON format."""
    path = data_root / "checkpoints" / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            del manifest[name][key]
        else:
            manifest[name][key] = value
    path.write_text(json.dumps(manifest, indent=2) + "\n")


@pytest.mark.parametrize("file", ["../outside.safetensors", "/etc/passwd", "sub/tiny.safetensors", "..", ".",
                                  "..\\outside.safetensors", "C:outside.safetensors", ""])
def test_manifest_file_must_be_a_plain_name_inside_the_folder(data_root, file):
    """Issue 1: an entry's file such as ../x.safetensors loaded from outside the folder, /etc/passwd was hashed."""
    register_checkpoint("tiny", _trained_tiny(), **REGISTER_ARGS)
    folder = data_root / "checkpoints"
    # a valid copy of the checkpoint outside the folder: before the fix "../outside.safetensors" loaded it
    (data_root / "outside.safetensors").write_bytes((folder / "tiny.safetensors").read_bytes())
    _edit_entry(data_root, "tiny", file=file)
    for call in (lambda: load_pretrained("tiny", device="cpu", builder=build_tiny),
                 lambda: pretrained.pretrained_info("tiny")):
        with pytest.raises(ValueError, match="file must be") as info:
            call()
        assert "'tiny'" in str(info.value) and repr(file) in str(info.value)


def test_manifest_file_symlinked_out_of_the_folder_is_refused(data_root):
    """The resolved path must lie inside the folder: a symlink to a file elsewhere is refused."""
    register_checkpoint("tiny", _trained_tiny(), **REGISTER_ARGS)
    folder = data_root / "checkpoints"
    outside = data_root / "outside.safetensors"
    outside.write_bytes((folder / "tiny.safetensors").read_bytes())
    (folder / "link.safetensors").symlink_to(outside)
    _edit_entry(data_root, "tiny", file="link.safetensors")
    with pytest.raises(ValueError, match="outside the folder") as info:
        load_pretrained("tiny", device="cpu", builder=build_tiny)
    assert "'link.safetensors'" in str(info.value) and "'tiny'" in str(info.value)


@pytest.mark.parametrize("missing", [["sha256"], ["file", "command"], ["created"]])
def test_manifest_entry_missing_keys_names_checkpoint_and_keys(data_root, missing):
    """Issue 2: an entry without sha256 raised a bare KeyError."""
    register_checkpoint("tiny", _trained_tiny(), **REGISTER_ARGS)
    _edit_entry(data_root, "tiny", **{key: None for key in missing})
    for call in (lambda: load_pretrained("tiny", device="cpu", builder=build_tiny),
                 lambda: pretrained.pretrained_info("tiny")):
        with pytest.raises(ValueError, match="missing the key") as info:
            call()
        assert "'tiny'" in str(info.value) and all(repr(key) in str(info.value) for key in missing)


def test_manifest_entry_keys_are_the_ones_register_writes(data_root):
    entry = register_checkpoint("tiny", _trained_tiny(), **REGISTER_ARGS)
    assert set(entry) == set(pretrained.ENTRY_KEYS)


@pytest.mark.parametrize("key, value", [("sha256", 123), ("sha256", "ABC"), ("sha256", "A" * 64), ("command", ""),
                                        ("file", ["tiny.safetensors"])])
def test_manifest_entry_bad_values(data_root, key, value):
    register_checkpoint("tiny", _trained_tiny(), **REGISTER_ARGS)
    _edit_entry(data_root, "tiny", **{key: value})
    with pytest.raises(ValueError, match=key) as info:
        load_pretrained("tiny", device="cpu", builder=build_tiny)
    assert "'tiny'" in str(info.value) and not isinstance(info.value, ChecksumError)


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"), ("", "not valid JSON"), ("[1, 2]", "JSON array"), ('"tiny"', "JSON string"),
    ('{"tiny": 3}', "'tiny' must be a JSON object"), ('{"tiny": null}', "JSON null"),
    ('{"a": {}, "a": {}}', "appears twice"), ('{"a": {"v": NaN}}', "NaN"), (b"\xff\xfe{}", "UTF-8"),
])
def test_corrupt_manifest_names_the_file(data_root, content, problem):
    """Issue 3: a corrupt manifest raised a bare JSON error (or, for a JSON array, listed its items)."""
    folder = data_root / "checkpoints"
    folder.mkdir()
    path = folder / "manifest.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    calls = (read_manifest, list_pretrained, lambda: pretrained.pretrained_info("tiny"),
             lambda: load_pretrained("tiny", builder=build_tiny),
             lambda: register_checkpoint("tiny", _trained_tiny(), **REGISTER_ARGS))
    for call in calls:
        with pytest.raises(ValueError, match=re.escape(str(path))) as info:
            call()
        assert problem in str(info.value) and "corrupt" in str(info.value)
    # registering into a folder with a corrupt manifest writes nothing
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"]
    assert path.read_bytes() == (content if isinstance(content, bytes) else content.encode())


# --- a missing data folder is named, never an empty list -----------------------------------------------------


def test_missing_data_folder_from_environment_is_named(tmp_path, monkeypatch):
    """Issue 4: DIFFEDU_DATA naming a missing folder gave 'one of the shipped checkpoints []' and an empty list."""
    missing = tmp_path / "no-such-data"
    monkeypatch.setenv("DIFFEDU_DATA", str(missing))
    calls = (list_pretrained, read_manifest, lambda: pretrained.pretrained_info("ddpm_digits"),
             lambda: load_pretrained("ddpm_digits", builder=build_tiny))
    for call in calls:
        with pytest.raises(FileNotFoundError, match="DIFFEDU_DATA") as info:
            call()
        assert str(missing) in str(info.value) and "does not exist" in str(info.value)
        assert isinstance(info.value, ValueError) and isinstance(info.value, pretrained.MissingDataFolderError)
    missing.write_text("a file, not a folder")
    with pytest.raises(ValueError, match="is not a folder"):
        list_pretrained()


def test_missing_default_data_folder_is_named(tmp_path, monkeypatch):
    """Without DIFFEDU_DATA, a missing data/ next to the package (an installed copy) is named too."""
    monkeypatch.delenv("DIFFEDU_DATA", raising=False)
    monkeypatch.setattr(pretrained, "__file__", str(tmp_path / "site" / "diffedu" / "pretrained.py"))
    assert data_dir() == tmp_path / "site" / "data"
    with pytest.raises(ValueError, match="set DIFFEDU_DATA") as info:
        list_pretrained()
    assert str(tmp_path / "site" / "data") in str(info.value)


def test_missing_directory_argument_is_named(tmp_path):
    missing = tmp_path / "absent"
    for call in (lambda: list_pretrained(missing), lambda: load_pretrained("x", builder=build_tiny, directory=missing),
                 lambda: pretrained.pretrained_info("x", missing)):
        with pytest.raises(ValueError, match="directory") as info:
            call()
        assert str(missing) in str(info.value)


def test_existing_folder_without_manifest_lists_nothing(data_root):
    assert list_pretrained() == [] and list_pretrained(data_root) == []
    (data_root / "checkpoints").mkdir()
    assert list_pretrained() == []
    with pytest.raises(ValueError, match="holds none") as info:
        load_pretrained("tiny", builder=build_tiny)
    assert str(data_root / "checkpoints") in str(info.value) and "'tiny'" in str(info.value)


# --- re-registering keeps the manifest's order and the other entries' text -----------------------------------


HAND_WRITTEN_MANIFEST = """{
  "zeta": {
    "sha256": "%s",
    "file": "zeta.safetensors", "command": "python -m z"
  },
  "tiny": {"file": "tiny.safetensors", "sha256": "%s", "command": "old"},
  "alpha": {
      "note": 1.50,
      "file": "alpha.safetensors"
  }
}
""" % ("0" * 64, "1" * 64)


def test_register_keeps_order_and_other_entries_text(data_root):
    """Issue 5: re-registering one checkpoint re-sorted (and re-formatted) the whole manifest."""
    folder = data_root / "checkpoints"
    folder.mkdir()
    path = folder / "manifest.json"
    path.write_text(HAND_WRITTEN_MANIFEST)
    entry = register_checkpoint("tiny", _trained_tiny(), **REGISTER_ARGS)
    text = path.read_text()
    before = HAND_WRITTEN_MANIFEST[:HAND_WRITTEN_MANIFEST.index('"tiny": ') + len('"tiny": ')]
    after = HAND_WRITTEN_MANIFEST[HAND_WRITTEN_MANIFEST.index(',\n  "alpha"'):]
    assert text.startswith(before) and text.endswith(after)  # zeta and alpha byte for byte
    assert text[len(before):len(text) - len(after)] == json.dumps(entry, sort_keys=True, indent=2).replace("\n",
                                                                                                           "\n  ")
    assert list(read_manifest()) == ["zeta", "tiny", "alpha"] and read_manifest()["tiny"] == entry

    # a new name is appended at the end; everything before it is unchanged
    new = register_checkpoint("new", _trained_tiny(1), **REGISTER_ARGS)
    appended = path.read_text()
    head = text[:text.rindex("}")].rstrip()
    assert appended.startswith(head + ",\n") and appended.endswith("\n}\n")
    assert list(read_manifest()) == ["zeta", "tiny", "alpha", "new"] and read_manifest()["new"] == new


@pytest.mark.parametrize("name", ["ddpm_digits", "cfg_digits", "text_shapes"])
def test_reregistering_a_shipped_entry_changes_only_its_lines(tmp_path, name):
    """On (a copy of) the shipped manifest, re-registering one checkpoint is a diff inside that entry only."""
    import difflib

    shipped = Path(diffedu.__file__).resolve().parent.parent / "data" / "checkpoints" / "manifest.json"
    old = shipped.read_text()
    (tmp_path / "manifest.json").write_text(old)
    register_checkpoint(name, _trained_tiny(), directory=tmp_path, **REGISTER_ARGS)
    new = (tmp_path / "manifest.json").read_text()
    old_lines, new_lines = old.splitlines(keepends=True), new.splitlines(keepends=True)
    start = old_lines.index(f'  "{name}": {{\n')
    end = next(k for k in range(start + 1, len(old_lines)) if old_lines[k].startswith("  }"))
    changed = [op for op in difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False).get_opcodes()
               if op[0] != "equal"]
    assert changed and all(start < i1 and i2 <= end for _, i1, i2, _, _ in changed), changed
    assert list(json.loads(new)) == list(json.loads(old))
