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


# --- the MyST sources: chapters/md/NN_slug.md is the source, chapters/NN_slug.ipynb its executed twin --------------

SOURCES = sorted((Path(__file__).resolve().parents[1] / "chapters" / "md").glob("*.md"))
COLAB_SETUP = '''# Setup: inside Colab, fetch the book's repository and install diffedu
# (Colab's own torch is kept).
import os, sys

if "google.colab" in sys.modules:
    !git clone -q --depth 1 https://github.com/diffedu/diffedu /content/diffedu
    %pip install -q /content/diffedu
    os.environ["DIFFEDU_DATA"] = "/content/diffedu/data"
'''


def _cells(nb):
    """What a source and its notebook must share: each cell's type, source and tags."""
    return [(c.cell_type, c.source.strip("\n"), sorted(c.get("metadata", {}).get("tags", []))) for c in nb.cells]


def test_every_chapter_has_a_myst_source_and_every_source_a_chapter():
    assert [p.stem for p in SOURCES] == [p.stem for p in CHAPTERS]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_source_and_notebook_agree(path):
    """Cell types, sources and tags of chapters/md/X.md equal those of chapters/X.ipynb: re-make the chapter
    (make chapter N=..) after editing its source."""
    import jupytext

    source = jupytext.read(path)
    notebook = nbformat.read(path.parents[1] / (path.stem + ".ipynb"), as_version=4)
    ours, theirs = _cells(source), _cells(notebook)
    assert len(ours) == len(theirs), f"{len(ours)} cells in the source, {len(theirs)} in the notebook"
    for k, (a, b) in enumerate(zip(ours, theirs)):
        assert a == b, f"cell {k} differs between {path.name} and its notebook: run `make chapter N={path.stem[:2]}`"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_first_code_cell_is_the_colab_setup(path):
    import jupytext

    code = [c.source for c in jupytext.read(path).cells if c.cell_type == "code"]
    assert code and code[0].startswith(COLAB_SETUP), "the first code cell must start with the one Colab setup block"
    assert "cfg = setup(seed=0)" in code[0]
