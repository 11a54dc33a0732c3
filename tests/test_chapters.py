"""Every chapter notebook: committed executed and error-free, with 2-4 exercises whose student version is stubbed."""

from pathlib import Path

import nbformat
import pytest

from diffedu.exercises import make_student_version, solution_cells

CHAPTERS = sorted((Path(__file__).resolve().parents[1] / "chapters").glob("*.ipynb"))


def test_there_are_chapters():
    assert CHAPTERS, "no chapter notebooks found"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_is_committed_executed_without_errors(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert all(c.execution_count is not None for c in code), "re-execute the notebook and commit its outputs"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert path.stat().st_size < 5_000_000, "keep notebooks small: fewer or smaller frames"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_exercises_and_student_version(path):
    nb = nbformat.read(path, as_version=4)
    solutions = solution_cells(nb, name=path.name)
    assert 2 <= len(solutions) <= 4
    for k in solutions:
        assert "hide-input" in nb.cells[k].metadata.get("tags", []), "run python -m diffedu.exercises --tag"
    student = make_student_version(nb, name=path.name)
    text = "\n".join(c.source for c in student.cells)
    assert "### BEGIN SOLUTION" not in text
    assert text.count("raise NotImplementedError()") == len(solutions)
    # every solution is followed by a check cell that asserts
    for k in solutions:
        following = [c for c in nb.cells[k + 1:] if c.cell_type == "code"][:1]
        assert following and "assert" in following[0].source
