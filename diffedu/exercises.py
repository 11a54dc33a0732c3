"""Student versions of the chapters: strip exercise solutions, keep the checks.

An exercise is a prompt, a code cell whose solution sits between nbgrader's markers, and a check cell::

    def q_sample(x0, t, eps):
        ### BEGIN SOLUTION
        return alpha(t) * x0 + sigma(t) * eps
        ### END SOLUTION

    assert torch.allclose(q_sample(x0, t, eps), expected)      # the check cell, left untouched

``make_student_version`` replaces each marked region by nbgrader's stub (indented like the BEGIN line)::

        # YOUR CODE HERE
        raise NotImplementedError()

and a written answer between ``<!-- BEGIN SOLUTION -->`` and ``<!-- END SOLUTION -->`` in a Markdown cell by
``YOUR ANSWER HERE``. It also clears every code cell's outputs and execution count, since outputs can give
the answer away. In the book the solutions stay visible but collapsed: ``tag_solutions_hidden`` gives each
solution cell Jupyter Book's ``hide-input`` tag.

Command line::

    python -m diffedu.exercises chapters student           # write student/*.ipynb from chapters/*.ipynb
    python -m diffedu.exercises --tag chapters/01_ddpm.ipynb  # tag solution cells hide-input, in place
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence
from pathlib import Path

import nbformat
from nbformat import NotebookNode

CODE_BEGIN, CODE_END = "### BEGIN SOLUTION", "### END SOLUTION"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
MARKDOWN_BEGIN, MARKDOWN_END = "<!-- BEGIN SOLUTION -->", "<!-- END SOLUTION -->"
MARKDOWN_STUB = ("YOUR ANSWER HERE",)
HIDE_TAG = "hide-input"  # Jupyter Book: input collapsed behind a "show" toggle, outputs shown


def _markers(cell: NotebookNode) -> tuple[str, str, tuple[str, ...]] | None:
    if cell.cell_type == "code":
        return CODE_BEGIN, CODE_END, CODE_STUB
    if cell.cell_type == "markdown":
        return MARKDOWN_BEGIN, MARKDOWN_END, MARKDOWN_STUB
    return None


def _source(cell: NotebookNode) -> str:
    return "".join(cell.source) if isinstance(cell.source, list) else cell.source


def _solution_regions(source: str, begin: str, end: str, where: str) -> list[tuple[int, int]]:
    """(first, last) line numbers of each BEGIN...END region; ValueError if unbalanced or nested."""
    regions, start = [], None
    for number, line in enumerate(source.splitlines()):
        marker = line.strip()
        if marker == begin:
            if start is not None:
                raise ValueError(f"{where}: nested {begin!r} (line {number + 1}; previous at line {start + 1})")
            start = number
        elif marker == end:
            if start is None:
                raise ValueError(f"{where}: {end!r} without {begin!r} (line {number + 1})")
            regions.append((start, number))
            start = None
    if start is not None:
        raise ValueError(f"{where}: {begin!r} at line {start + 1} has no {end!r}")
    return regions


def strip_solutions(source: str, begin: str = CODE_BEGIN, end: str = CODE_END,
                    stub: Sequence[str] = CODE_STUB, where: str = "cell") -> str:
    """``source`` with every BEGIN...END region replaced by ``stub``, indented like its BEGIN line."""
    regions = _solution_regions(source, begin, end, where)
    if not regions:
        return source
    lines = source.splitlines()
    out: list[str] = []
    previous_end = -1
    for first, last in regions:
        indent = lines[first][: len(lines[first]) - len(lines[first].lstrip())]
        out += lines[previous_end + 1 : first] + [indent + s for s in stub]
        previous_end = last
    out += lines[previous_end + 1 :]
    return "\n".join(out) + ("\n" if source.endswith("\n") else "")


def solution_cells(nb: NotebookNode, name: str = "notebook") -> list[int]:
    """Indices of the cells (code or Markdown) that contain a solution region."""
    found = []
    for index, cell in enumerate(nb.cells):
        markers = _markers(cell)
        if markers and _solution_regions(_source(cell), markers[0], markers[1], f"{name}, cell {index}"):
            found.append(index)
    return found


def make_student_version(nb: NotebookNode, name: str = "notebook") -> NotebookNode:
    """A copy of ``nb`` with solutions replaced by stubs and all code outputs cleared (``nb`` is unchanged).

    Cells without markers, such as the check cells, keep their source. Unbalanced or nested markers raise
    ValueError naming ``name`` and the cell index.
    """
    student = copy.deepcopy(nb)
    for index, cell in enumerate(student.cells):
        markers = _markers(cell)
        if markers is None:
            continue
        begin, end, stub = markers
        source = _source(cell)
        stripped = strip_solutions(source, begin, end, stub, where=f"{name}, cell {index}")
        if stripped != source:
            cell.source = stripped
            tags = cell.get("metadata", {}).get("tags", [])
            if HIDE_TAG in tags:  # students should see their stub, not a collapsed cell
                tags.remove(HIDE_TAG)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    student.metadata.pop("widgets", None)  # saved widget state can hold outputs too
    return student


def tag_solutions_hidden(nb: NotebookNode, name: str = "notebook") -> int:
    """Give every code cell holding a solution the ``hide-input`` tag, in place; returns how many changed.

    Idempotent: a cell that already has the tag is left alone.
    """
    changed = 0
    for index in solution_cells(nb, name):
        cell = nb.cells[index]
        if cell.cell_type != "code":
            continue
        tags = cell.setdefault("metadata", nbformat.NotebookNode()).setdefault("tags", [])
        if HIDE_TAG not in tags:
            tags.append(HIDE_TAG)
            changed += 1
    return changed


def write_student_versions(src_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the student version of every ``src_dir/*.ipynb`` (or of one notebook) into ``out_dir``."""
    src, out = Path(src_dir), Path(out_dir)
    notebooks = [src] if src.suffix == ".ipynb" else sorted(src.glob("*.ipynb"))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        target = out / path.name
        nbformat.write(make_student_version(nb, name=str(path)), target)
        written.append(target)
    return written


def _notebooks(paths: Sequence[str]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        found += sorted(p.glob("*.ipynb")) if p.is_dir() else [p]
    return found


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m diffedu.exercises",
        description="Write student versions of the chapters (solutions stubbed, outputs cleared), "
        "or with --tag collapse the solution cells in the book.",
    )
    parser.add_argument("paths", nargs="+", help="SRC OUT (a folder or notebook, and an output folder); "
                        "with --tag: the notebooks or folders to tag")
    parser.add_argument("--tag", action="store_true", help="add the hide-input tag to solution cells, in place")
    args = parser.parse_args(argv)

    if args.tag:
        for path in _notebooks(args.paths):
            nb = nbformat.read(path, as_version=4)
            changed = tag_solutions_hidden(nb, name=str(path))
            if changed:
                nbformat.write(nb, path)
            print(f"{path}: tagged {changed} solution cell(s) {HIDE_TAG}")
        return
    if len(args.paths) != 2:
        parser.error("expected SRC OUT")
    for path in write_student_versions(*args.paths):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
