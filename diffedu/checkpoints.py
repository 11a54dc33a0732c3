"""Saving and loading weights as safetensors: plain tensors plus JSON text, never pickle.

A checkpoint file holds a model's state dict (contiguous CPU tensors) and, in the safetensors header, one JSON
string with the network config (enough to rebuild the architecture) and free-form metadata. Loading it runs no
code, so a shipped or downloaded checkpoint cannot execute anything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .distributed import check_rank_zero

HEADER_KEY = "diffedu"
"""The one safetensors metadata key we write. (One key keeps the file byte-for-byte reproducible: safetensors
writes several metadata keys in an arbitrary order.)"""


def _to_json(name: str, value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be JSON-serialisable (dicts, lists, str, int, finite float, bool, None): "
                         f"{err}") from None


def state_dict_for_saving(model: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's state dict as independent, contiguous CPU tensors (what safetensors can store)."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    # clone: tied weights share memory, which safetensors refuses to write twice
    return {key: value.detach().to("cpu").clone().contiguous() for key, value in state.items()}


def save_checkpoint(model: nn.Module | dict[str, torch.Tensor], path: str | Path, config: dict,
                    metadata: dict | None = None) -> Path:
    """Write ``model``'s weights to ``path`` (safetensors) with ``config`` and ``metadata`` as JSON in the header."""
    from safetensors.torch import save_file

    check_rank_zero("save_checkpoint")  # one writer under torchrun (DDP): rank 0
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    header = {"config": config, "metadata": metadata or {}}
    header_text = _to_json("config and metadata", header)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state_dict_for_saving(model), str(path), metadata={HEADER_KEY: header_text})
    return path


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Read a file written by :func:`save_checkpoint`: ``(state_dict, config, metadata)``, tensors on the CPU."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        state = load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own error type for a malformed file
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from None
    if HEADER_KEY not in header:
        raise ValueError(f"{path} has no '{HEADER_KEY}' entry in its header; was it written by save_checkpoint?")
    try:
        contents = json.loads(header[HEADER_KEY])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} has a '{HEADER_KEY}' header entry that is not valid JSON ({err})") from None
    if not (isinstance(contents, dict) and isinstance(contents.get("config"), dict)
            and isinstance(contents.get("metadata"), dict)):
        raise ValueError(f"{path} has a '{HEADER_KEY}' header entry without the 'config' and 'metadata' objects "
                         f"that save_checkpoint writes")
    return state, contents["config"], contents["metadata"]


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()
