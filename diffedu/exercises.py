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
import re
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


BOOK_ONLY = re.compile(r"\s*<!-- BEGIN BOOK ONLY -->.*?<!-- END BOOK ONLY -->", re.DOTALL)
COLAB_BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\((https://colab\.research\.google\.com/[^)]*)\)")
REMOTE_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
STUDENT_NOTE = """**Student version.** Write your answer in place of each `# YOUR CODE HERE`, and delete the
line under it that raises an error. Run the whole notebook from the top (*Run All*) before you trust a
check: each check cell uses what the cells above it computed. A check that passes prints nothing; one that fails
stops with an `AssertionError` that says what is wrong. Do not edit the check cells: grading runs the original
ones."""


def _student_badge(source: str, filename: str | None, colab_base: str | None) -> str:
    """The chapter's Colab badge pointed at this student copy (``colab_base``: the GitHub folder URL of the
    published student versions), or, without one, replaced by how to open the file in Colab."""
    def badge(match: re.Match) -> str:
        if colab_base and filename:
            target = re.sub(r"^https://github\.com/", "https://colab.research.google.com/github/",
                            colab_base.rstrip("/")) + "/" + filename
            return f"[![Open In Colab]({REMOTE_BADGE})]({target})"
        return "*To run this notebook in Colab, upload it there (File → Upload notebook).*"
    return COLAB_BADGE.sub(badge, source)


def make_student_version(nb: NotebookNode, name: str = "notebook", filename: str | None = None,
                         colab_base: str | None = None) -> NotebookNode:
    """A copy of ``nb`` with solutions replaced by stubs and all code outputs cleared (``nb`` is unchanged).

    Cells without markers, such as the check cells, keep their source. Unbalanced or nested markers raise
    ValueError naming ``name`` and the cell index. Text between ``<!-- BEGIN BOOK ONLY -->`` and
    ``<!-- END BOOK ONLY -->`` (what the book says about its folded solutions) is dropped, the Colab badge
    opens this student copy (see ``_student_badge``), a note on how to work through the exercises follows the
    title cell, and every cell carries nbgrader's metadata.
    """
    student = copy.deepcopy(nb)
    add_nbgrader_metadata(student, name)
    if student.cells and student.cells[0].cell_type == "markdown":
        student.cells[0].source = _student_badge(_source(student.cells[0]), filename, colab_base)
        note = nbformat.v4.new_markdown_cell(STUDENT_NOTE)
        note.metadata["nbgrader"] = nbformat.NotebookNode(_nbgrader("cell-student-note", locked=True))
        student.cells.insert(1, note)
    for cell in student.cells:
        if cell.cell_type == "markdown" and "BOOK ONLY" in _source(cell):
            cell.source = BOOK_ONLY.sub("", _source(cell))
        cell.get("metadata", {}).pop("mystnb", None)  # the book's toggle texts
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


# --------------------------------------------------------------------------------------------- nbgrader metadata

NBGRADER_SCHEMA = 3
POINTS = 1  # each exercise's check cell is worth one point


def _nbgrader(grade_id: str, *, solution: bool = False, grade: bool = False, locked: bool = False,
              points: float | None = None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": NBGRADER_SCHEMA,
            "solution": solution, "task": False}
    if grade:
        meta["points"] = points if points is not None else POINTS
    return meta


def exercises(nb: NotebookNode, name: str = "notebook") -> list[tuple[int, int | None]]:
    """(solution cell, check cell) of each exercise, in order; the check is the next code cell after a code
    solution (None for a written answer, which is its own graded cell)."""
    found = []
    for index in solution_cells(nb, name):
        if nb.cells[index].cell_type == "markdown":
            found.append((index, None))
            continue
        after = [k for k in range(index + 1, len(nb.cells)) if nb.cells[k].cell_type == "code"]
        found.append((index, after[0] if after else None))
    return found


def add_nbgrader_metadata(nb: NotebookNode, name: str = "notebook") -> int:
    """Give every cell nbgrader's cell metadata (schema 3), in place; returns the number of exercises.

    Exercise k (from 1) has a solution cell ``exK-solution`` (nbgrader's "autograded answer") and a check cell
    ``exK-check`` (its "autograder tests": graded, locked, ``POINTS`` points); a written answer in a Markdown
    cell is ``exK-answer`` (a "manually graded answer"). Every other cell is read-only (locked), so grading
    restores it if a student edits it. Cell ids name the locked cells. Idempotent.
    """
    graded: dict[int, dict] = {}
    for k, (solution, check) in enumerate(exercises(nb, name), start=1):
        if nb.cells[solution].cell_type == "markdown":
            graded[solution] = _nbgrader(f"ex{k}-answer", solution=True, grade=True)
            continue
        graded[solution] = _nbgrader(f"ex{k}-solution", solution=True)
        if check is None:
            raise ValueError(f"{name}: exercise {k} (cell {solution}) has no check cell after it")
        graded[check] = _nbgrader(f"ex{k}-check", grade=True, locked=True)
    for index, cell in enumerate(nb.cells):
        cell_id = cell.get("id") or f"{index}"
        meta = graded.get(index) or _nbgrader(f"cell-{cell_id}", locked=True)
        cell.setdefault("metadata", nbformat.NotebookNode())["nbgrader"] = nbformat.NotebookNode(meta)
    return sum(1 for _ in exercises(nb, name))


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


def write_student_versions(src_dir: str | Path, out_dir: str | Path, colab_base: str | None = None) -> list[Path]:
    """Write the student version of every ``src_dir/*.ipynb`` (or of one notebook) into ``out_dir``."""
    src, out = Path(src_dir), Path(out_dir)
    notebooks = [src] if src.suffix == ".ipynb" else sorted(src.glob("*.ipynb"))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        target = out / path.name
        nbformat.write(make_student_version(nb, name=str(path), filename=path.name, colab_base=colab_base), target)
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
    parser.add_argument("--colab-base", metavar="URL", help="the GitHub folder where you publish the student "
                        "versions (https://github.com/ORG/REPO/blob/BRANCH/FOLDER): their Colab badges open "
                        "them there; without it the badge says how to upload the file to Colab")
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
    for path in write_student_versions(*args.paths, colab_base=args.colab_base):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
