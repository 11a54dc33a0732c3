"""Student versions: solutions become stubs, checks stay, outputs go, and the original is untouched."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from diffedu.exercises import (
    HIDE_TAG,
    STUDENT_NOTE,
    add_nbgrader_metadata,
    main,
    make_student_version,
    solution_cells,
    strip_solutions,
    tag_solutions_hidden,
    write_student_versions,
)

SECRET = "return 2.0 * x + 1.0  # the secret solution line"
SECRET_PROSE = "Because the posterior is Gaussian (secret answer)."


def exercise_notebook() -> nbformat.NotebookNode:
    """Prompt, solution cell (with an output), check cell, written answer."""
    solution = new_code_cell(
        "import math\n\n"
        "def affine(x: float) -> float:\n"
        '    """Return 2x + 1."""\n'
        "    ### BEGIN SOLUTION\n"
        f"    {SECRET}\n"
        "    ### END SOLUTION\n\n"
        "affine(1.0)\n",
        execution_count=3,
        outputs=[new_output("execute_result", {"text/plain": "3.0"}, execution_count=3)],
    )
    check = new_code_cell("assert affine(0.0) == 1.0\nassert affine(2.0) == 5.0\n", execution_count=4)
    answer = new_markdown_cell(f"**Why?**\n\n<!-- BEGIN SOLUTION -->\n{SECRET_PROSE}\n<!-- END SOLUTION -->\n")
    return new_notebook(cells=[new_markdown_cell("## Exercise 1: an affine map"), solution, check, answer])


def run_code_cells(nb: nbformat.NotebookNode) -> dict:
    """Execute the code cells in order in one namespace, the way a kernel would (no kernel needed)."""
    namespace: dict = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            exec(compile(cell.source, "<cell>", "exec"), namespace)
    return namespace


def test_student_version_stubs_solutions_and_keeps_checks():
    nb = exercise_notebook()
    original = copy.deepcopy(nb)
    student = make_student_version(nb)

    assert student.cells[1].source == STUDENT_NOTE  # how to work through it, after the title cell
    solution, check, answer = student.cells[2], student.cells[3], student.cells[4]
    assert "    # YOUR CODE HERE\n    raise NotImplementedError()\n" in solution.source  # indented like BEGIN
    assert SECRET not in solution.source and "BEGIN SOLUTION" not in solution.source
    assert solution.source.startswith("import math") and solution.source.endswith("affine(1.0)\n")
    assert check.source == original.cells[2].source
    assert solution.metadata.nbgrader["solution"] and check.metadata.nbgrader["grade"]
    assert "YOUR ANSWER HERE" in answer.source and SECRET_PROSE not in answer.source
    assert answer.source.startswith("**Why?**")
    for cell in student.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    nbformat.validate(student)
    assert nb == original  # the input notebook is not modified


def test_student_check_fails_where_original_passes():
    nb = exercise_notebook()
    run_code_cells(nb)  # solution + check pass
    with pytest.raises(NotImplementedError):
        run_code_cells(make_student_version(nb))


def test_solution_cells_lists_code_and_markdown():
    assert solution_cells(exercise_notebook()) == [1, 3]


@pytest.mark.parametrize(
    "source",
    [
        "### BEGIN SOLUTION\nx = 1\n",  # never closed
        "x = 1\n### END SOLUTION\n",  # closed, never opened
        "### BEGIN SOLUTION\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n### END SOLUTION\n",  # nested
    ],
)
def test_unbalanced_markers_raise_with_location(source):
    nb = new_notebook(cells=[new_markdown_cell("prompt"), new_code_cell(source)])
    with pytest.raises(ValueError, match=r"ch01\.ipynb, cell 1"):
        make_student_version(nb, name="ch01.ipynb")


def test_several_regions_and_untouched_text():
    source = ("a = 1\n### BEGIN SOLUTION\nb = 2\n### END SOLUTION\nc = 3\n"
              "    ### BEGIN SOLUTION\n    d = 4\n    ### END SOLUTION")
    assert strip_solutions(source) == (
        "a = 1\n# YOUR CODE HERE\nraise NotImplementedError()\nc = 3\n"
        "    # YOUR CODE HERE\n    raise NotImplementedError()"
    )
    assert strip_solutions("print('### BEGIN SOLUTION')\r\n") == "print('### BEGIN SOLUTION')\r\n"


def test_tag_solutions_hidden_is_idempotent_and_student_drops_tag():
    nb = exercise_notebook()
    assert tag_solutions_hidden(nb) == 1  # only the code solution; Markdown has no hide-input
    assert tag_solutions_hidden(nb) == 0
    assert nb.cells[1].metadata.tags == [HIDE_TAG]
    assert "tags" not in nb.cells[2].metadata
    assert make_student_version(nb).cells[2].metadata.tags == []


def test_write_student_versions_and_cli(tmp_path: Path, capsys):
    src = tmp_path / "chapters"
    src.mkdir()
    for name in ("01_a.ipynb", "02_b.ipynb"):
        nbformat.write(exercise_notebook(), src / name)

    written = write_student_versions(src, tmp_path / "out")
    assert [p.name for p in written] == ["01_a.ipynb", "02_b.ipynb"]
    assert SECRET not in (tmp_path / "out" / "01_a.ipynb").read_text()

    main([str(src), str(tmp_path / "cli")])
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["01_a.ipynb", "02_b.ipynb"]

    main(["--tag", str(src / "01_a.ipynb")])
    assert HIDE_TAG in nbformat.read(src / "01_a.ipynb", as_version=4).cells[1].metadata.tags
    assert "tagged 1" in capsys.readouterr().out


def test_module_cli_runs(tmp_path: Path):
    nbformat.write(exercise_notebook(), tmp_path / "ch.ipynb")
    result = subprocess.run([sys.executable, "-m", "diffedu.exercises", str(tmp_path), str(tmp_path / "student")],
                            capture_output=True, text=True, check=True)
    assert "student" in result.stdout
    student = nbformat.read(tmp_path / "student" / "ch.ipynb", as_version=4)
    assert "raise NotImplementedError()" in student.cells[2].source


def test_nbgrader_metadata_marks_solution_check_and_locked_cells():
    nb = exercise_notebook()
    assert add_nbgrader_metadata(nb) == 2  # the code exercise and the written answer
    prompt, solution, check, answer = (c.metadata.nbgrader for c in nb.cells)
    assert prompt["locked"] and not prompt["grade"] and not prompt["solution"]
    assert solution["solution"] and not solution["grade"] and solution["grade_id"] == "ex1-solution"
    assert check["grade"] and check["locked"] and check["points"] == 1 and check["grade_id"] == "ex1-check"
    assert answer["solution"] and answer["grade"] and answer["grade_id"] == "ex2-answer"
    before = [dict(c.metadata.nbgrader) for c in nb.cells]
    add_nbgrader_metadata(nb)
    assert [dict(c.metadata.nbgrader) for c in nb.cells] == before  # idempotent


def test_student_version_drops_book_only_text_and_points_its_badge_at_itself():
    nb = exercise_notebook()
    nb.cells[0].source = ("# 99 · Fixture\n\n[![Open In Colab](../book/_static/colab-badge.svg)]"
                          "(https://colab.research.google.com/github/diffedu/diffedu/blob/main/chapters/99_x.ipynb)\n\n"
                          "Answer below.<!-- BEGIN BOOK ONLY --> In the book it is folded.<!-- END BOOK ONLY -->")
    student = make_student_version(nb, filename="99_x.ipynb")
    assert "folded" not in student.cells[0].source and "diffedu/diffedu" not in student.cells[0].source
    assert "upload it there" in student.cells[0].source
    published = make_student_version(nb, filename="99_x.ipynb", colab_base="https://github.com/t/c/blob/main/hw")
    assert "(https://colab.research.google.com/github/t/c/blob/main/hw/99_x.ipynb)" in published.cells[0].source
