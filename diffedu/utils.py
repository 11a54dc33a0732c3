"""Device choice, seeding and the notebook set-up call.

Every chapter starts with ``setup()``: it seeds every generator, picks the device once (cuda, then mps, then
cpu), sets the plot style and reads the mode: quick (default, for CI and the book) or full (``DIFFEDU_FULL=1``).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch


def pick_device(prefer: str | torch.device | None = None) -> torch.device:
    """The device every chapter uses: ``prefer`` if given, else CUDA, then Apple's MPS, then the CPU."""
    if prefer is not None:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices) so a run repeats exactly; returns a CPU generator too."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def full_mode() -> bool:
    """True when ``DIFFEDU_FULL=1``: train longer, sample more (meant for a GPU)."""
    return os.environ.get("DIFFEDU_FULL", "0") not in ("", "0", "false", "False")


@dataclass
class Setup:
    device: torch.device
    full: bool
    seed: int

    def __repr__(self) -> str:  # what the notebook prints: no addresses, no timings
        return f"diffedu setup: device={self.device.type}, mode={'full' if self.full else 'quick'}, seed={self.seed}"


def setup(seed: int = 0, device: str | None = None) -> Setup:
    """The one call at the top of each chapter: seed, device, plot style, mode."""
    seed_everything(seed)
    from . import viz  # imported here so the library does not need matplotlib until a chapter runs

    viz.set_style()
    return Setup(device=pick_device(device), full=full_mode(), seed=seed)


def strip_docstrings(source: str) -> str:
    """``source`` without the docstrings of the functions and classes it defines (and of their methods)."""
    import ast
    import textwrap

    lines = source.splitlines()
    drop: set[int] = set()
    for node in ast.walk(ast.parse(textwrap.dedent(source))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str) and len(node.body) > 1:
                drop.update(range(first.lineno - 1, first.end_lineno))
    return "\n".join(line for k, line in enumerate(lines) if k not in drop)


def show_source(obj, docstring: bool = False) -> "IPython.display.Markdown":
    """Display the library's real source of ``obj`` (a function or class) as a highlighted code block.

    The book prints the code that runs, never a second copy of it. Docstrings are left out unless ``docstring``
    is set: the chapter's prose carries the maths, and the printed code reads like the paper's algorithm box.
    """
    import inspect

    from IPython.display import Markdown

    source = inspect.getsource(obj).rstrip()
    return Markdown(f"```python\n{source if docstring else strip_docstrings(source)}\n```")


def forward_gflops(net: torch.nn.Module, x: torch.Tensor, t: float = 0.5, cond: torch.Tensor | None = None) -> float:
    """Gflops of one forward pass ``net(x, t, cond)``, counted by torch's flop counter (``FlopCounterMode``:
    matrix products and convolutions, 2 flops per multiply-add; elementwise operations are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, torch.full((x.shape[0],), float(t), device=x.device), cond)
    return counter.get_total_flops() / 1e9
