"""Speed and quality of the book on this machine, printed as one table (not a test: numbers, not pass/fail).

    python scripts/benchmark.py                 # everything
    python scripts/benchmark.py --skip-chapters # only the training throughput

Rows: each chapter's execution time in quick mode (executed with nbclient, outputs discarded) and the sample-quality
figure it reports; training steps/s of the MLP (2-D) and the UNet (8x8 digits) at batch 128.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffedu.ddpm import ddpm_loss  # noqa: E402
from diffedu.nets import MLPDenoiser, UNet  # noqa: E402
from diffedu.pretrained import read_manifest  # noqa: E402
from diffedu.schedules import linear_schedule  # noqa: E402

# What each chapter prints as its quality figure: a regex over its text outputs.
QUALITY = {"01_ddpm": r"energy distance to data:.*?learned (\d+\.\d+)"}


def steps_per_second(model: torch.nn.Module, x: torch.Tensor, steps: int = 30) -> float:
    """Forward + backward + Adam steps per second of the DDPM loss at the batch ``x``."""
    schedule = linear_schedule()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    for k in range(steps + 5):
        if k == 5:
            start = time.perf_counter()
        optimizer.zero_grad()
        ddpm_loss(model, x, schedule, generator=g).backward()
        optimizer.step()
    return steps / (time.perf_counter() - start)


def run_chapter(path: Path) -> tuple[float, str]:
    """Execute a chapter as the tests do (static widgets, quick mode); return seconds and its text output."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    os.environ["DIFFEDU_STATIC"] = "1"
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    return seconds, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-chapters", action="store_true")
    args = parser.parse_args()
    rows = []
    if not args.skip_chapters:
        for path in sorted((ROOT / "chapters").glob("*.ipynb")):
            seconds, text = run_chapter(path)
            match = re.search(QUALITY.get(path.stem, r"$^"), text, re.S)
            quality = f"energy distance {match.group(1)}" if match else "-"
            rows.append((f"chapter {path.stem}", f"{seconds:.1f} s", "<= 90 s", quality))
    torch.manual_seed(0)
    mlp = steps_per_second(MLPDenoiser(), torch.randn(128, 2))
    rows.append(("MLPDenoiser train, batch 128 (2-D)", f"{mlp:.0f} steps/s", "", ""))
    unet = steps_per_second(UNet(), torch.randn(128, 1, 8, 8))
    rows.append(("UNet train, batch 128 (1x8x8)", f"{unet:.1f} steps/s", "", ""))
    for name, entry in read_manifest().items():
        metric = entry["metric"]
        rows.append((f"checkpoint {name}", f"{entry['size_bytes'] / 1e6:.2f} MB",
                     f"{entry['steps']} steps, {entry['wall_time_s'] / 60:.0f} min",
                     f"{metric['name']} {metric['value']}"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    widths = [max(len(r[k]) for r in rows + [("what", "value", "budget / note", "quality")]) for k in range(4)]
    for r in [("what", "value", "budget / note", "quality")] + rows:
        print(" | ".join(cell.ljust(w) for cell, w in zip(r, widths)))
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
