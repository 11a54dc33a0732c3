"""Grade a folder of submitted student notebooks into a per-exercise score table, without a server.

    python -m diffedu.grade submitted/ [--source chapters] [--csv grades.csv]

``submitted/`` holds one folder per student, each with the chapter notebooks that student handed in under
their original names (``submitted/ada/01_ddpm.ipynb``: nbgrader's own layout). For every submission:

1. the cells that are not the student's to change (every cell that is not a solution, the check cells above
   all) are put back from the chapter in ``--source`` (matched by nbgrader ``grade_id``), so an edited or
   deleted check cannot pass;
2. the notebook runs from the top in a fresh kernel (quick mode, one thread, errors do not stop it), in the
   chapter folder so it finds what the chapter finds;
3. each exercise's check cell earns its points (nbgrader ``points``) when it ran without an error.

It prints one row per student and chapter (a column per exercise, then the total) and, with ``--csv``, writes the
same table. Written answers (Markdown) are listed as "manual": they need a person. The chapters' nbgrader
metadata comes from ``diffedu.exercises.add_nbgrader_metadata``; nbgrader's ``autograde`` reads the same
metadata if you prefer its gradebook.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from diffedu.exercises import add_nbgrader_metadata


def _meta(cell: NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def restore_locked_cells(submitted: NotebookNode, source: NotebookNode) -> NotebookNode:
    """The source chapter's cells, with the student's solution cells (by grade_id) in place of its solutions.

    Everything else (prose, setup, checks) comes from ``source``: cells a student added, deleted or edited
    outside the answers do not count. A solution the student deleted stays the stub of the student version.
    """
    from diffedu.exercises import make_student_version

    answers = {_meta(c).get("grade_id"): c for c in submitted.cells if _meta(c).get("solution")}
    graded = make_student_version(source)  # nbgrader metadata, stubs in place of the solutions
    graded.cells = [c for c in graded.cells if _meta(c).get("grade_id") != "cell-student-note"]
    for k, cell in enumerate(graded.cells):
        grade_id = _meta(cell).get("grade_id")
        if _meta(cell).get("solution") and grade_id in answers:
            graded.cells[k] = answers[grade_id]
    return graded


def score(executed: NotebookNode) -> dict[str, float | str]:
    """``{grade_id: points earned}`` for each graded cell of an executed notebook; "manual" for written answers."""
    scores: dict[str, float | str] = {}
    for cell in executed.cells:
        meta = _meta(cell)
        if not meta.get("grade"):
            continue
        if cell.cell_type == "markdown":
            scores[meta["grade_id"]] = "manual"
            continue
        failed = any(o.get("output_type") == "error" for o in cell.get("outputs", []))
        ran = cell.get("execution_count") is not None
        scores[meta["grade_id"]] = float(meta.get("points", 0)) if ran and not failed else 0.0
    return scores


def grade_notebook(submitted_path: Path, source_path: Path, timeout: int = 600) -> dict[str, float | str]:
    """Restore, execute and score one submission (see the module docstring)."""
    from nbclient import NotebookClient

    source = nbformat.read(source_path, as_version=4)
    add_nbgrader_metadata(source, name=str(source_path))
    graded = restore_locked_cells(nbformat.read(submitted_path, as_version=4), source)
    env = {"DIFFEDU_STATIC": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    saved = {k: os.environ.get(k) for k in [*env, "DIFFEDU_FULL"]}
    os.environ.update(env)
    os.environ.pop("DIFFEDU_FULL", None)
    try:
        NotebookClient(graded, timeout=timeout, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": str(source_path.parent)}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return score(graded)


def grade_folder(submitted: Path, source: Path, timeout: int = 600) -> list[dict]:
    """One row per (student, chapter): ``{"student", "chapter", <grade_id>: points..., "total", "max"}``."""
    rows = []
    for path in sorted(submitted.glob("*/*.ipynb")):
        chapter = source / path.name
        if not chapter.is_file():
            print(f"skipped {path}: no chapter {chapter}", file=sys.stderr)
            continue
        scores = grade_notebook(path, chapter, timeout)
        reference = nbformat.read(chapter, as_version=4)
        add_nbgrader_metadata(reference, name=str(chapter))
        most = sum(float(_meta(c).get("points", 0)) for c in reference.cells
                   if _meta(c).get("grade") and c.cell_type == "code")
        earned = sum(v for v in scores.values() if isinstance(v, float))
        rows.append({"student": path.parent.name, "chapter": path.stem, **scores, "total": earned, "max": most})
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table, exercises in order (ex1-check, ex2-check, ...)."""
    if not rows:
        return "(no submissions found)"
    columns = ["student", "chapter"]
    for row in rows:
        columns += [k for k in row if k not in columns and k not in ("total", "max")]
    columns += ["total", "max"]

    def show(v) -> str:
        return "" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(show(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffedu.grade", description=__doc__.split("\n\n")[0])
    parser.add_argument("submitted", type=Path, help="folder with one subfolder of notebooks per student")
    parser.add_argument("--source", type=Path, default=Path("chapters"),
                        help="the chapters with solutions (default: chapters)")
    parser.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    args = parser.parse_args(argv)
    rows = grade_folder(args.submitted, args.source, args.timeout)
    print(table(rows))
    if args.csv:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with open(args.csv, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
