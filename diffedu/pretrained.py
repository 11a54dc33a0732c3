"""The shipped checkpoints: ``data/checkpoints/*.safetensors`` and the manifest that describes them.

Chapters that cannot train an image model inside their CPU budget load one of these instead. Every entry of
``manifest.json`` records how it was made (recipe, the exact command, train config, seed, steps, wall time,
machine), the metric it reached, and the file's sha256 and size; :func:`load_pretrained` checks the hash before it
reads a byte of weights, and reading is safetensors only, so nothing is unpickled.

The data folder is ``$DIFFEDU_DATA`` if set, else ``data/`` next to the ``diffedu`` package (a git checkout).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .checkpoints import load_state, save_checkpoint, sha256_file
from .checks import check_int, check_scalar
from .utils import pick_device

MAX_CHECKPOINT_BYTES = 5_000_000
"""Each shipped checkpoint must stay within 5 MB, so the repository stays small."""

MANIFEST_NAME = "manifest.json"


class ChecksumError(ValueError):
    """A checkpoint file's sha256 differs from the one recorded in the manifest."""


def data_dir() -> Path:
    """The folder of shipped data: ``$DIFFEDU_DATA`` if set, else ``<repo root>/data``."""
    override = os.environ.get("DIFFEDU_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "data"


def checkpoint_dir() -> Path:
    """The folder holding the checkpoint files and ``manifest.json``."""
    return data_dir() / "checkpoints"


def read_manifest(directory: str | Path | None = None) -> dict[str, dict]:
    """The manifest as a dict name -> entry (empty if there is no manifest yet)."""
    path = Path(directory or checkpoint_dir()) / MANIFEST_NAME
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def list_pretrained(directory: str | Path | None = None) -> list[str]:
    """Names of the shipped checkpoints, sorted."""
    return sorted(read_manifest(directory))


def pretrained_info(name: str, directory: str | Path | None = None) -> dict:
    """The manifest entry of checkpoint ``name``: how it was made, its metric, its hash."""
    manifest = read_manifest(directory)
    if name not in manifest:
        raise ValueError(f"name must be one of the shipped checkpoints {sorted(manifest)}, got {name!r}")
    return manifest[name]


def load_pretrained(name: str, device: torch.device | str | None = None, verify: bool = True,
                    builder: Callable[[dict], nn.Module] | None = None,
                    directory: str | Path | None = None) -> nn.Module:
    """Rebuild the network ``name`` from its config, load its verified weights, and return it in eval mode.

    ``builder(config) -> nn.Module`` makes the bare network; it defaults to :func:`diffedu.nets.build_net`.
    Raises ``ValueError`` for an unknown name, ``FileNotFoundError`` (naming the recipe command that recreates it)
    for a missing file, and :class:`ChecksumError` when the file's sha256 differs from the manifest's.
    """
    folder = Path(directory or checkpoint_dir())
    entry = pretrained_info(name, folder)
    path = folder / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} for {name!r} is missing; recreate it with:\n"
                                f"  {entry['command']}")
    if verify:
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise ChecksumError(f"checkpoint {path} has sha256 {actual}, but the manifest records "
                                f"{entry['sha256']}; the file is corrupt or stale. Recreate it with:\n"
                                f"  {entry['command']}")
    state, config, _ = load_state(path)
    if builder is None:
        from .nets import build_net  # imported here: the nets package is only needed once a model is loaded

        builder = build_net
    model = builder(config)
    model.load_state_dict(state)
    return model.to(pick_device(device)).eval()


def machine_description(model: nn.Module) -> dict:
    """Where a model was trained: OS, Python and torch versions, device type (and GPU name), CPU count."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    description = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device.type,
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(device)
    return description


def _metric_entry(metric: tuple[str, float] | dict) -> dict:
    """``(name, value)`` or ``{"name": ..., "value": ...}`` as the manifest's ``{"name", "value"}``."""
    if isinstance(metric, dict):
        metric = (metric.get("name"), metric.get("value"))
    if not (isinstance(metric, (tuple, list)) and len(metric) == 2 and isinstance(metric[0], str)):
        raise ValueError(f"metric must be a (name, value) pair, got {metric!r}")
    return {"name": metric[0], "value": check_scalar("metric value", metric[1])}


def register_checkpoint(name: str, model: nn.Module, *, recipe: str, command: str, train_config: dict,
                        seed: int, steps: int, wall_time_s: float, metric: tuple[str, float] | dict,
                        config: dict | None = None, directory: str | Path | None = None) -> dict:
    """Save ``model`` as ``<name>.safetensors`` and record it in the manifest; returns the new manifest entry.

    ``config`` is the network config that ``diffedu.nets.build_net`` turns back into the architecture (it needs
    a ``"name"`` key); by default it is ``model.config``. Raises ``ValueError`` if the file exceeds
    :data:`MAX_CHECKPOINT_BYTES`, in which case nothing is written.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"name must be letters, digits, '_', '-' or '.', starting with a letter or digit, "
                         f"got {name!r}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    config = getattr(model, "config", None) if config is None else config
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError("config must be a dict with a 'name' key (pass config=..., or give the model a .config)")
    for arg_name, value in (("recipe", recipe), ("command", command)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{arg_name} must be a non-empty string, got {value!r}")
    if not isinstance(train_config, dict):
        raise ValueError(f"train_config must be a dict, got {type(train_config).__name__}")
    try:
        json.dumps(train_config, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"train_config must be JSON-serialisable: {err}") from None
    check_int("seed", seed, 0)
    check_int("steps", steps, 0)
    check_scalar("wall_time_s", wall_time_s, 0.0, math.inf)
    metric_entry = _metric_entry(metric)

    folder = Path(directory or checkpoint_dir())
    file_name = f"{name}.safetensors"
    temporary = folder / (file_name + ".tmp")
    # the file's own metadata holds nothing time-dependent, so retraining on the same machine gives the same bytes
    save_checkpoint(model, temporary, config, metadata={"name": name, "recipe": recipe, "seed": seed,
                                                        "steps": steps})
    size_bytes = temporary.stat().st_size
    if size_bytes > MAX_CHECKPOINT_BYTES:
        temporary.unlink()
        raise ValueError(f"model's checkpoint would be {size_bytes:,} bytes; shipped checkpoints must be at most "
                         f"{MAX_CHECKPOINT_BYTES:,} bytes (make the network smaller)")
    os.replace(temporary, folder / file_name)

    entry = {
        "file": file_name,
        "recipe": recipe,
        "command": command,
        "config": config,
        "train_config": train_config,
        "seed": int(seed),
        "steps": int(steps),
        "wall_time_s": round(float(wall_time_s), 1),
        "machine": machine_description(model),
        "metric": metric_entry,
        "sha256": sha256_file(folder / file_name),
        "size_bytes": size_bytes,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    manifest = read_manifest(folder)
    manifest[name] = entry
    text = json.dumps(manifest, sort_keys=True, indent=2, allow_nan=False) + "\n"
    manifest_temporary = folder / (MANIFEST_NAME + ".tmp")
    manifest_temporary.write_text(text, encoding="utf-8")
    os.replace(manifest_temporary, folder / MANIFEST_NAME)
    return entry
