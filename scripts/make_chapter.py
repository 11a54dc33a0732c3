"""Re-make a chapter from its MyST source: sync, execute, tag.  Usage (from the repository root):

    make chapter N=05                # = .venv/bin/python scripts/make_chapter.py 05

1. sync: chapters/md/05_*.md (the source you edit) -> chapters/05_*.ipynb (jupytext; paired by jupytext.toml);
2. execute the notebook in place as the tests do (quick mode, static widgets, one torch thread, cwd chapters/);
3. tag: exercise solutions and long plotting-only cells get the ``hide-input`` tag (folded in the book behind
   "Show solution" / "Show plotting code"), written back to the .md too; every cell gets nbgrader's metadata
   (solution, graded check with points, locked), kept in the .ipynb only.

It prints the wall time: each chapter must run in <= 60 s on a 2-core CPU where you measure it (<= 90 s on the
slowest machine). Commit both files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def source_of(number: str) -> Path:
    found = sorted((ROOT / "chapters" / "md").glob(f"{number}_*.md"))
    if len(found) != 1:
        raise SystemExit(f"expected one chapters/md/{number}_*.md, found {[p.name for p in found]}")
    return found[0]


def stable_ids(nb) -> None:
    """Cell ids from the cells' content (jupytext draws random ones), so a re-made notebook's diff shows only
    what changed."""
    import hashlib

    seen: dict[str, int] = {}
    for cell in nb.cells:
        digest = hashlib.sha1((cell.cell_type + "\0" + cell.source).encode("utf-8")).hexdigest()[:12]
        seen[digest] = seen.get(digest, 0) + 1
        cell.id = digest if seen[digest] == 1 else f"{digest}-{seen[digest]}"


def make(number: str) -> float:
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    from diffedu.exercises import add_nbgrader_metadata, solution_cells, tag_solutions_hidden
    from diffedu.layout import collapse_cells

    md = source_of(number)
    ipynb = ROOT / "chapters" / (md.stem + ".ipynb")
    nb = jupytext.read(md)
    if ipynb.exists():  # keep the notebook's own metadata (kernelspec, Colab), take everything else from the source
        old = nbformat.read(ipynb, as_version=4)
        nb.metadata = {**old.metadata, **{k: v for k, v in nb.metadata.items() if k != "jupytext"}}
    nb.metadata.pop("jupytext", None)
    stable_ids(nb)
    tag_solutions_hidden(nb, name=str(md))
    collapse_cells(nb, solution_cells(nb, name=str(md)))
    add_nbgrader_metadata(nb, name=str(md))
    os.environ.update(DIFFEDU_STATIC="1", OMP_NUM_THREADS="1")  # what `make test` runs the notebooks with
    os.environ.pop("DIFFEDU_FULL", None)
    start = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(ipynb.parent)}}).execute()
    seconds = time.perf_counter() - start
    nbformat.write(nb, ipynb)
    # the tags go back into the source, with jupytext.toml's pairing and filters
    subprocess.run([sys.executable, "-m", "jupytext", "--sync", "--quiet", str(ipynb)], check=True, cwd=ROOT)
    print(f"{ipynb.relative_to(ROOT)}: executed in {seconds:.1f} s")
    return seconds


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    for n in sys.argv[1:]:
        make(n)
