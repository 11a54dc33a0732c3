"""Grading: ``python -m diffedu.grade`` turns a folder of submissions into a per-exercise table, and nbgrader
itself accepts a chapter: its ``generate_assignment`` and ``autograde`` run on one real chapter and score it as
our grader does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from diffedu.exercises import add_nbgrader_metadata, make_student_version
from diffedu.grade import grade_folder, main, score, table

ROOT = Path(__file__).resolve().parents[1]
# The chapter nbgrader grades in the test: one of the quicker ones (it runs once, in nbgrader's autograde).
NBGRADER_CHAPTER = ROOT / "chapters" / "04_ddim.ipynb"


def course_notebook() -> nbformat.NotebookNode:
    """Two exercises with checks, like a chapter: a setup cell, then prompt / solution / check twice."""
    nb = new_notebook(cells=[
        new_markdown_cell("# 99 · A tiny chapter"),
        new_code_cell("import math\nBASE = 3.0"),
        new_markdown_cell("**Exercise 1.** Return 2x + 1."),
        new_code_cell("def affine(x):\n    ### BEGIN SOLUTION\n    return 2 * x + 1\n    ### END SOLUTION"),
        new_code_cell("assert affine(0) == 1 and affine(2) == 5"),
        new_markdown_cell("**Exercise 2.** Return the square root of BASE."),
        new_code_cell("def root():\n    ### BEGIN SOLUTION\n    return math.sqrt(BASE)\n    ### END SOLUTION"),
        new_code_cell("assert abs(root() ** 2 - BASE) < 1e-12"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


@pytest.fixture
def course(tmp_path):
    """chapters/99_tiny.ipynb with solutions, and submitted/<student>/99_tiny.ipynb for three students."""
    chapters, submitted = tmp_path / "chapters", tmp_path / "submitted"
    chapters.mkdir()
    source = course_notebook()
    nbformat.write(source, chapters / "99_tiny.ipynb")
    student = make_student_version(source, filename="99_tiny.ipynb")

    def hand_in(name: str, edit) -> None:
        nb = nbformat.from_dict(student)
        edit(nb)
        (submitted / name).mkdir(parents=True)
        nbformat.write(nb, submitted / name / "99_tiny.ipynb")

    def only_first(nb):  # solves exercise 1, and deletes the check of exercise 2 to "pass" it
        nb.cells[4].source = "def affine(x):\n    return 2 * x + 1"
        nb.cells[8].source = "pass"

    def both(nb):
        nb.cells[4].source = "def affine(x):\n    return x + x + 1"
        nb.cells[7].source = "def root():\n    return BASE ** 0.5"

    hand_in("ada", only_first)
    hand_in("bob", lambda nb: None)  # the stubs as handed out
    hand_in("cy", both)
    return tmp_path


def test_grade_folder_scores_each_exercise_and_restores_the_checks(course, monkeypatch):
    monkeypatch.chdir(course)
    rows = {row["student"]: row for row in grade_folder(course / "submitted", course / "chapters", timeout=120)}
    assert rows["ada"]["ex1-check"] == 1.0 and rows["ada"]["ex2-check"] == 0.0  # the deleted check came back
    assert rows["bob"]["total"] == 0.0 and rows["bob"]["max"] == 2.0
    assert rows["cy"]["total"] == 2.0
    text = table(list(rows.values()))
    assert text.splitlines()[0] == "| student | chapter | ex1-check | ex2-check | total | max |"
    assert "| ada | 99_tiny | 1 | 0 | 1 | 2 |" in text


def test_grade_command_writes_the_table(course, capsys):
    main([str(course / "submitted"), "--source", str(course / "chapters"), "--csv", str(course / "grades.csv"),
          "--timeout", "120"])
    assert "| cy | 99_tiny | 1 | 1 | 2 | 2 |" in capsys.readouterr().out
    lines = (course / "grades.csv").read_text().splitlines()
    assert lines[0] == "student,chapter,ex1-check,ex2-check,total,max" and len(lines) == 4


def test_score_reads_errors_and_unrun_cells():
    nb = course_notebook()
    add_nbgrader_metadata(nb)
    nb.cells[4].execution_count = 1
    nb.cells[7].execution_count = 2
    nb.cells[7].outputs = [nbformat.v4.new_output("error", ename="AssertionError", evalue="", traceback=[])]
    assert score(nb) == {"ex1-check": 1.0, "ex2-check": 0.0}
    nb.cells[4].execution_count = None  # never ran (the kernel died before it)
    assert score(nb)["ex1-check"] == 0.0


# --------------------------------------------------------------------------------------------- nbgrader itself

def _nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1", "DIFFEDU_STATIC": "1"}
    env.pop("DIFFEDU_FULL", None)
    cmd = [sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={course}",
           f"--CourseDirectory.db_url=sqlite:///{course / 'gradebook.db'}"]
    proc = subprocess.run(cmd, cwd=course, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.mark.slow
def test_nbgrader_generates_and_autogrades_a_chapter(tmp_path):
    """nbgrader's own generate_assignment accepts a committed chapter as it is (its metadata, its markers), and
    its autograde scores a submission that solves exercise 1 only: 1 point of 3, as diffedu.grade reads it."""
    pytest.importorskip("nbgrader", reason="nbgrader is a test-only dependency in requirements.txt")
    from nbgrader.api import Gradebook

    name = NBGRADER_CHAPTER.name
    (tmp_path / "source" / "ch").mkdir(parents=True)
    shutil.copy(NBGRADER_CHAPTER, tmp_path / "source" / "ch" / name)
    _nbgrader(tmp_path, "generate_assignment", "ch", "--force")
    release = nbformat.read(tmp_path / "release" / "ch" / name, as_version=4)
    text = "\n".join(c.source for c in release.cells)
    assert "### BEGIN SOLUTION" not in text and text.count("raise NotImplementedError()") == 3

    source = nbformat.read(NBGRADER_CHAPTER, as_version=4)
    solution = next(c for c in source.cells if c.metadata["nbgrader"]["grade_id"] == "ex1-solution")
    for cell in release.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "ex1-solution":
            cell.source = solution.source.replace("### BEGIN SOLUTION\n", "").replace("### END SOLUTION\n", "")
    (tmp_path / "submitted" / "ada" / "ch").mkdir(parents=True)
    nbformat.write(release, tmp_path / "submitted" / "ada" / "ch" / name)
    _nbgrader(tmp_path, "autograde", "ch", "--create", "--force", "--ExecutePreprocessor.timeout=600")

    with Gradebook(f"sqlite:///{tmp_path / 'gradebook.db'}") as gb:
        submission = gb.find_submission_notebook(NBGRADER_CHAPTER.stem, "ch", "ada")
        theirs = {g.name: g.score for g in submission.grades}
        assert submission.max_score == 3 and submission.score == 1
    assert theirs == {"ex1-check": 1, "ex2-check": 0, "ex3-check": 0}
    autograded = nbformat.read(tmp_path / "autograded" / "ada" / "ch" / name, as_version=4)
    assert score(autograded) == {k: float(v) for k, v in theirs.items()}
