"""The shipped checkpoints: ``data/checkpoints/*.safetensors`` and the manifest that describes them.

Chapters that cannot train an image model inside their CPU budget load one of these instead. Every entry of
``manifest.json`` records how it was made (recipe, the exact command, train config, seed, steps, wall time,
machine), the metric it reached, and the file's sha256 and size; :func:`load_pretrained` checks the hash before it
reads a byte of weights, and reading is safetensors only, so nothing is unpickled.

The data folder is ``$DIFFEDU_DATA`` if set, else ``data/`` next to the ``diffedu`` package (a git checkout); if
it does not exist, reading the manifest raises :class:`MissingDataFolderError` naming it, never an empty list.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable

import torch
from torch import nn

from .checkpoints import load_state, save_checkpoint, sha256_file
from .checks import check_int, check_scalar
from .distributed import check_rank_zero, rank_and_world
from .utils import pick_device

MAX_CHECKPOINT_BYTES = 5_000_000
"""Each shipped checkpoint must stay within 5 MB, so the repository stays small."""

MANIFEST_NAME = "manifest.json"

ENTRY_KEYS = ("file", "recipe", "command", "config", "train_config", "seed", "steps", "wall_time_s", "machine",
              "metric", "sha256", "size_bytes", "created")
"""The keys of a manifest entry: :func:`register_checkpoint` writes all of them, and reading an entry requires them."""


class ChecksumError(ValueError):
    """A checkpoint file's sha256 differs from the one recorded in the manifest."""


class MissingDataFolderError(FileNotFoundError, ValueError):
    """The data folder (``$DIFFEDU_DATA`` or ``data/`` next to the package) or the ``directory`` argument names a
    folder that does not exist. Both a ``FileNotFoundError`` and a ``ValueError`` (like ``io.UnsupportedOperation``
    is both an ``OSError`` and a ``ValueError``)."""


def data_dir() -> Path:
    """The folder of shipped data: ``$DIFFEDU_DATA`` if set, else ``<repo root>/data``."""
    override = os.environ.get("DIFFEDU_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "data"


def checkpoint_dir() -> Path:
    """The folder holding the checkpoint files and ``manifest.json``."""
    return data_dir() / "checkpoints"


def _existing_checkpoint_dir(directory: str | Path | None) -> Path:
    """``directory`` (or :func:`checkpoint_dir`), after checking that the folder it lives in exists.

    A data folder without ``checkpoints/``, or a ``directory`` without a manifest, simply holds no checkpoints; a
    folder that does not exist at all is an error (usually a mistyped ``$DIFFEDU_DATA``), never an empty list.
    """
    if directory:
        folder = Path(directory)
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "does not exist"
            raise MissingDataFolderError(f"directory must be an existing checkpoint folder, but {folder} {what}")
        return folder
    data = data_dir()
    if not data.is_dir():
        what = "is not a folder" if data.exists() else "does not exist"
        if os.environ.get("DIFFEDU_DATA"):
            raise MissingDataFolderError(f"the data folder {data} {what}; it comes from the DIFFEDU_DATA "
                                         f"environment variable, which must name an existing folder (holding "
                                         f"checkpoints/{MANIFEST_NAME}), or be unset")
        raise MissingDataFolderError(f"the data folder {data} {what} (diffedu looks for data/ next to the package, "
                                     f"as in a git checkout); set DIFFEDU_DATA to the folder that holds "
                                     f"checkpoints/{MANIFEST_NAME}")
    return data / "checkpoints"


class _BadJSON(Exception):
    """A duplicate key or a NaN / Infinity constant, found while parsing (json accepts both)."""


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise _BadJSON(f"the key {key!r} appears twice in one object")
        result[key] = value
    return result


def _reject_constant(constant: str) -> float:
    raise _BadJSON(f"{constant} is not a JSON number (register_checkpoint never writes it)")


def _json_kind(value: object) -> str:
    """What ``value`` is called in JSON: object, array, string, number, boolean or null."""
    kinds = ((dict, "object"), (list, "array"), (str, "string"), (bool, "boolean"), ((int, float), "number"))
    return next((kind for types, kind in kinds if isinstance(value, types)), "null")


def _read_manifest_file(path: Path) -> tuple[str, dict[str, dict]]:
    """The manifest's text and contents (name -> entry, in the file's order); ``("", {})`` if there is no file.

    Raises ``ValueError`` naming ``path`` if it is not UTF-8 JSON (NaN and Infinity included), repeats a key, or is
    not an object of objects.
    """
    if not path.is_file():
        return "", {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"manifest {path} is corrupt: it is not UTF-8 text ({err})") from None
    try:
        manifest = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise ValueError(f"manifest {path} is corrupt: not valid JSON ({err.msg} at line {err.lineno} column "
                         f"{err.colno})") from None
    except _BadJSON as err:
        raise ValueError(f"manifest {path} is corrupt: {err}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"manifest {path} is corrupt: it must be a JSON object mapping checkpoint names to entry "
                         f"objects, got a JSON {_json_kind(manifest)}")
    for name, entry in manifest.items():
        if not isinstance(entry, dict):
            raise ValueError(f"manifest {path} is corrupt: entry {name!r} must be a JSON object, got a JSON "
                             f"{_json_kind(entry)}")
    return text, manifest


def read_manifest(directory: str | Path | None = None) -> dict[str, dict]:
    """The manifest as a dict name -> entry, in the file's order (empty if there is no manifest yet).

    Raises :class:`MissingDataFolderError` if the folder does not exist, ``ValueError`` if the manifest is corrupt.
    """
    return _read_manifest_file(_existing_checkpoint_dir(directory) / MANIFEST_NAME)[1]


def list_pretrained(directory: str | Path | None = None) -> list[str]:
    """Names of the shipped checkpoints, sorted."""
    return sorted(read_manifest(directory))


def _checked_entry(name: str, folder: Path) -> dict:
    """The manifest entry ``name`` in ``folder``, after checking its keys and that its file lies inside ``folder``."""
    manifest = _read_manifest_file(folder / MANIFEST_NAME)[1]
    if not isinstance(name, str) or name not in manifest:
        if not manifest:
            raise ValueError(f"name must be a registered checkpoint, but {folder} holds none (no {MANIFEST_NAME} "
                             f"entries); got {name!r}")
        raise ValueError(f"name must be one of the shipped checkpoints {sorted(manifest)}, got {name!r}")
    entry = manifest[name]
    where = f"manifest entry {name!r} in {folder / MANIFEST_NAME}"
    missing = [key for key in ENTRY_KEYS if key not in entry]
    if missing:
        raise ValueError(f"{where} is missing the key(s) {missing}; every entry needs {list(ENTRY_KEYS)} "
                         f"(register_checkpoint writes them all)")
    for key in ("file", "command", "sha256"):
        if not isinstance(entry[key], str) or not entry[key]:
            raise ValueError(f"{where}: {key} must be a non-empty string, got {entry[key]!r}")
    if not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]):
        raise ValueError(f"{where}: sha256 must be 64 lower-case hex digits, got {entry['sha256']!r}")
    file = entry["file"]
    # a plain file name: no directories (either separator), no drive, not '.' or '..', no NUL
    if (file in (".", "..") or "\0" in file or PurePosixPath(file).name != file
            or PureWindowsPath(file).name != file):
        raise ValueError(f"{where}: file must be a plain file name inside {folder} (no absolute path, no '..', no "
                         f"path separators), got {file!r}")
    resolved = (folder / file).resolve()
    if resolved.parent != folder.resolve():
        raise ValueError(f"{where}: file must be a plain file name inside {folder}, but {file!r} resolves to "
                         f"{resolved}, outside the folder")
    return entry


def pretrained_info(name: str, directory: str | Path | None = None) -> dict:
    """The manifest entry of checkpoint ``name``: how it was made, its metric, its hash.

    Raises ``ValueError`` for an unknown name, an entry missing one of :data:`ENTRY_KEYS`, or an entry whose
    ``file`` is not a plain file name inside the checkpoint folder; :class:`MissingDataFolderError` for a missing
    folder.
    """
    return _checked_entry(name, _existing_checkpoint_dir(directory))


def load_pretrained(name: str, device: torch.device | str | None = None, verify: bool = True,
                    builder: Callable[[dict], nn.Module] | None = None,
                    directory: str | Path | None = None) -> nn.Module:
    """Rebuild the network ``name`` from its config, load its verified weights, and return it in eval mode.

    ``builder(config) -> nn.Module`` makes the bare network; it defaults to :func:`diffedu.nets.build_net`.
    Raises ``ValueError`` for an unknown name or a malformed manifest entry (see :func:`pretrained_info`),
    :class:`MissingDataFolderError` for a missing checkpoint folder, ``FileNotFoundError`` (naming the recipe
    command that recreates it) for a missing file, and :class:`ChecksumError` when the file's sha256 differs from
    the manifest's.
    """
    folder = _existing_checkpoint_dir(directory)
    entry = _checked_entry(name, folder)
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


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(model: nn.Module, threads: int | None = None) -> dict:
    """Where a model was trained, and what its bytes depend on: OS, Python and torch versions, device type (and
    GPU name), CPU count, CPU model and the vector instructions torch used, the thread count, deterministic
    algorithms."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    description = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device.type,
        "cpu_count": os.cpu_count(),
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads() if threads is None else threads,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }
    if device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(device)
    world = rank_and_world()[1]
    if world > 1:  # several processes (torchrun + DDP); one-process entries keep their keys
        description["processes"] = world
    return description


def _metric_entry(metric: tuple[str, float] | dict) -> dict:
    """``(name, value)`` or ``{"name": ..., "value": ...}`` as the manifest's ``{"name", "value"}``."""
    if isinstance(metric, dict):
        metric = (metric.get("name"), metric.get("value"))
    if not (isinstance(metric, (tuple, list)) and len(metric) == 2 and isinstance(metric[0], str)):
        raise ValueError(f"metric must be a (name, value) pair, got {metric!r}")
    return {"name": metric[0], "value": check_scalar("metric value", metric[1])}


def _entry_spans(text: str) -> dict[str, tuple[int, int]]:
    """Where each top-level entry's value (from its ``{`` to its ``}``) lies in a manifest's valid JSON text."""
    decoder, space = json.JSONDecoder(), re.compile(r"[ \t\n\r]*")
    position = space.match(text, space.match(text).end() + 1).end()  # after the opening '{'
    spans: dict[str, tuple[int, int]] = {}
    while text[position] != "}":
        key, position = decoder.raw_decode(text, position)
        start = space.match(text, space.match(text, position).end() + 1).end()  # after the ':'
        _, end = decoder.raw_decode(text, start)
        spans[key] = (start, end)
        position = space.match(text, end).end()
        if text[position] == ",":
            position = space.match(text, position + 1).end()
    return spans


def _manifest_with_entry(text: str, manifest: dict[str, dict], name: str, entry: dict) -> str:
    """The manifest's new text with ``entry`` as ``name``: only that entry's lines change.

    The other entries keep their text byte for byte and the file keeps its order of entries (a new name goes at
    the end), so re-registering one checkpoint is a diff of that entry alone. The entry itself is written like the
    shipped ones: two-space indentation, keys sorted.
    """
    manifest = {**manifest, name: entry}  # an existing name keeps its place
    entry_text = json.dumps(entry, sort_keys=True, indent=2, allow_nan=False).replace("\n", "\n  ")
    spans = _entry_spans(text) if text else {}
    if name in spans:
        start, end = spans[name]
        new_text = text[:start] + entry_text + text[end:]
    elif spans:
        end = max(end for _, end in spans.values())
        new_text = text[:end] + f",\n  {json.dumps(name)}: {entry_text}" + text[end:]
    else:  # no manifest yet, or an empty one
        new_text = "{\n  " + f"{json.dumps(name)}: {entry_text}" + "\n}\n"
    if json.loads(new_text) != json.loads(json.dumps(manifest)):  # never write a manifest that reads differently
        new_text = json.dumps(manifest, indent=2, allow_nan=False) + "\n"
    return new_text


def register_checkpoint(name: str, model: nn.Module, *, recipe: str, command: str, train_config: dict,
                        seed: int, steps: int, wall_time_s: float, metric: tuple[str, float] | dict,
                        config: dict | None = None, directory: str | Path | None = None,
                        threads: int | None = None) -> dict:
    """Save ``model`` as ``<name>.safetensors`` and record it in the manifest; returns the new manifest entry.

    ``threads``: the torch thread count the model was trained with (default: the current one), recorded in
    ``machine`` with what else its bytes depend on.

    ``config`` is the network config that ``diffedu.nets.build_net`` turns back into the architecture (it needs
    a ``"name"`` key); by default it is ``model.config``. Raises ``ValueError`` if the file exceeds
    :data:`MAX_CHECKPOINT_BYTES`, in which case nothing is written, and if the existing manifest is corrupt.

    The manifest keeps its order of entries and the text of every other entry: re-registering a checkpoint
    changes only that entry's lines, and a new name is added at the end.

    Under torchrun only rank 0 may register (a ValueError on any other rank): one file and one entry per run.
    """
    check_rank_zero("register_checkpoint")
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
    # read the manifest first: a corrupt one stops the registration before anything is written
    manifest_text, manifest = _read_manifest_file(folder / MANIFEST_NAME)
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
        "machine": machine_description(model, threads),
        "metric": metric_entry,
        "sha256": sha256_file(folder / file_name),
        "size_bytes": size_bytes,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    text = _manifest_with_entry(manifest_text, manifest, name, entry)
    manifest_temporary = folder / (MANIFEST_NAME + ".tmp")
    manifest_temporary.write_text(text, encoding="utf-8")
    os.replace(manifest_temporary, folder / MANIFEST_NAME)
    return entry
