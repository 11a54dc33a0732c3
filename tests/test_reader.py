"""What a reader and a teacher meet, checked in the sources of every chapter found on disk.

* no control character in any notebook, chapter source or front-matter page (a ``"\\a"`` in a non-raw string
  once put a BEL into ``$s \\approx 1$``: MathJax showed "Math input error");
* no Markdown line that continues inline math but starts like a list item or heading (``+ (1 - e^{-h})``
  became a bullet and left the TeX unrendered);
* every code line the book shows (code cells and the library source they print) fits ``CODE_WIDTH``
  characters: what the column shows at 1280 px without scrolling (book/_static/custom.css);
* long plotting-only cells are collapsed behind "Show plotting code", solutions behind "Show solution";
* the committed nbgrader metadata is what ``add_nbgrader_metadata`` writes and nbgrader's validator accepts;
* the student versions open themselves and say nothing of the book's folded solutions;
* the Colab badge is served from the book; every chapter ends with "Further reading".

The rendered pages are checked in headless Chromium by tests/test_book.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from diffedu.exercises import STUDENT_NOTE, add_nbgrader_metadata, make_student_version, solution_cells
from diffedu.layout import HIDE_TAG, MIN_PLOT_LINES, PROMPTS, is_long_plotting_cell, is_plotting_only

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]*_*.ipynb"))
SOURCES = sorted((ROOT / "chapters" / "md").glob("[0-9][0-9]*_*.md"))
PAGES = sorted((ROOT / "book").glob("*.md")) + [ROOT / "book" / "references.bib", ROOT / "README.md"]
CODE_WIDTH = 79
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
ids = lambda p: p.stem  # noqa: E731


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


# --------------------------------------------------------------------------------------------- control characters

def control_characters(nb) -> list[str]:
    """Every control character in a notebook's sources and outputs (tab, newline and carriage return are fine;
    ANSI colour codes are fine in stream and error outputs)."""
    found = []
    for k, cell in enumerate(nb.cells):
        for m in CONTROL.finditer(cell.source):
            found.append(f"cell {k} source: {m.group()!r} in {cell.source[max(0, m.start() - 30):m.end() + 30]!r}")
        for output in cell.get("outputs", []):
            texts = [output.get("text", "")] + [output.get("traceback", [])]
            texts += [v for key, v in output.get("data", {}).items() if key.startswith("text/")]
            for text in texts:
                text = _text(text)
                if output.get("output_type") in ("stream", "error"):
                    text = ANSI.sub("", text)
                for m in CONTROL.finditer(text):
                    found.append(f"cell {k} output: {m.group()!r} in {text[max(0, m.start() - 30):m.end() + 30]!r}")
    return found


def test_control_character_check_catches_a_bel():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("fine"),
                                         nbformat.v4.new_markdown_cell("$s \x07pprox 1$")])
    assert control_characters(nb) and "cell 1" in control_characters(nb)[0]
    nb.cells[1].source = "$s \\approx 1$"
    assert control_characters(nb) == []


@pytest.mark.parametrize("path", CHAPTERS, ids=ids)
def test_no_control_characters_in_notebooks(path):
    problems = control_characters(nbformat.read(path, as_version=4))
    assert not problems, f"{path.name}:\n" + "\n".join(problems[:10])


@pytest.mark.parametrize("path", SOURCES + PAGES, ids=lambda p: p.name)
def test_no_control_characters_in_sources(path):
    text = path.read_text(encoding="utf-8")
    found = [(text.count("\n", 0, m.start()) + 1, m.group()) for m in CONTROL.finditer(text)]
    assert not found, f"{path.name}: control characters (line, char): {found[:10]}"


# --------------------------------------------------------------------------------------------- Markdown and math

LIST_OR_HEADING = re.compile(r"^\s{0,3}(?:[-+*]|\d{1,9}[.)])(?:\s|$)|^\s{0,3}(?:#{1,6}\s|>)")
INLINE_DOLLAR = re.compile(r"(?<![\\$])\$(?!\$)")


def broken_math_lines(markdown: str) -> list[str]:
    """Lines that continue an inline ``$...$`` opened on the line before, but start like a list item, a heading
    or a quote: Markdown reads them as such, and the math is left as raw TeX."""
    problems, inside, display = [], False, False
    lines = markdown.splitlines()
    for k, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("$$") or stripped.endswith("$$"):
            if stripped == "$$" or stripped.count("$$") == 1:
                display = not display
            inside = False
            continue
        if display or not stripped or stripped.startswith("```"):
            inside = False
            continue
        if inside and LIST_OR_HEADING.match(line):
            problems.append(f"line {k + 1}: {line[:60]!r} continues the math of {lines[k - 1][-40:]!r}")
        inside ^= len(INLINE_DOLLAR.findall(line)) % 2 == 1
    return problems


def test_broken_math_check_catches_a_plus_line():
    bad = "Freezing it gives $\\tilde x_{k+1} = e^{-h}\\tilde x_k\n+ (1 - e^{-h}) D_k$, which is DDIM.\n"
    assert broken_math_lines(bad)
    assert not broken_math_lines("Freezing it gives\n$x = a + b$, and\n- a real list item\n")
    assert not broken_math_lines("$$\nx = a\n+ b\n$$\n")


@pytest.mark.parametrize("path", CHAPTERS, ids=ids)
def test_inline_math_never_starts_a_list_item(path):
    nb = nbformat.read(path, as_version=4)
    problems = [f"cell {k}, {p}" for k, c in enumerate(nb.cells) if c.cell_type == "markdown"
                for p in broken_math_lines(c.source)]
    assert not problems, f"{path.name}: rewrap these lines:\n" + "\n".join(problems)


# --------------------------------------------------------------------------------------------- code width

def long_code_lines(nb, width: int = CODE_WIDTH) -> list[str]:
    """Code lines wider than ``width``: in code cells, and in the library source they print (show_source)."""
    found = []
    for k, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        found += [f"cell {k} ({len(line)}): {line}" for line in cell.source.splitlines() if len(line) > width]
        for output in cell.get("outputs", []):
            printed = _text(output.get("data", {}).get("text/markdown", ""))
            if printed.startswith("```"):
                found += [f"cell {k}, printed source ({len(line)}): {line}" for line in printed.splitlines()
                          if len(line) > width]
    return found


@pytest.mark.parametrize("path", CHAPTERS, ids=ids)
def test_code_lines_fit_the_column(path):
    problems = long_code_lines(nbformat.read(path, as_version=4))
    assert not problems, (f"{path.name}: {len(problems)} code lines wider than {CODE_WIDTH} characters "
                          f"(the book's column scrolls past that):\n" + "\n".join(problems[:15]))


# --------------------------------------------------------------------------------------------- collapsed cells

def test_plotting_only_detection():
    assert is_plotting_only("fig, axes = plt.subplots(1, 2)\nfor ax, t in zip(axes, ts):\n"
                            "    ax.plot(t)\n    ax.set_title(f'{t}')\naxes[0].legend()\nplt.show()\n")
    assert is_plotting_only("labels = ['a', 'b']\nviz.image_grid(x, labels=labels)\nplt.show()\n")
    assert not is_plotting_only("x = model(z)\nplt.plot(x)\n")  # computes, then plots: stays visible
    assert not is_plotting_only("fig, ax = plt.subplots()\nfor t in ts:\n    y = f(t)\n    ax.plot(y)\n")
    assert not is_plotting_only("!pip install x\nplt.show()\n")
    assert not is_plotting_only("labels = ['a']\n")  # draws nothing


@pytest.mark.parametrize("path", CHAPTERS, ids=ids)
def test_plotting_cells_and_solutions_are_collapsed_with_their_toggle(path):
    nb = nbformat.read(path, as_version=4)
    solutions = solution_cells(nb, path.name)
    problems = []
    for k, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.get("tags", [])
        prompt = cell.metadata.get("mystnb", {}).get("code_prompt_show")
        if k in solutions:
            if HIDE_TAG not in tags or prompt != PROMPTS["solution"][0]:
                problems.append(f"cell {k}: a solution, collapsed behind {PROMPTS['solution'][0]!r}?")
        elif is_long_plotting_cell(cell):
            if HIDE_TAG not in tags or prompt != PROMPTS["plot"][0]:
                problems.append(f"cell {k}: {len(cell.source.splitlines())} lines of plotting only, not collapsed "
                                f"behind {PROMPTS['plot'][0]!r}")
        elif HIDE_TAG in tags:
            problems.append(f"cell {k}: collapsed, but neither a solution nor plotting-only "
                            f"(>= {MIN_PLOT_LINES} lines): the reader should see it")
    assert not problems, f"{path.name} (re-make it: make chapter N={path.stem.split('_')[0]}):\n" + "\n".join(problems)


# --------------------------------------------------------------------------------------------- classroom

@pytest.mark.parametrize("path", CHAPTERS, ids=ids)
def test_nbgrader_metadata_is_committed_and_valid(path):
    nb = nbformat.read(path, as_version=4)
    committed = [c.metadata.get("nbgrader") for c in nb.cells]
    expected = nbformat.read(path, as_version=4)
    exercises = add_nbgrader_metadata(expected, path.name)
    assert committed == [c.metadata["nbgrader"] for c in expected.cells], \
        f"re-make the chapter (make chapter N={path.stem.split('_')[0]}): its nbgrader metadata is stale"
    points = [c.metadata["nbgrader"] for c in nb.cells if c.metadata["nbgrader"]["grade"]]
    assert len(points) == exercises and all(m["points"] > 0 for m in points)
    validator = pytest.importorskip("nbgrader.nbgraderformat").MetadataValidator()
    validator.validate_nb(nb)  # nbgrader's own schema and rules (raises ValidationError)


@pytest.mark.parametrize("path", CHAPTERS, ids=ids)
def test_student_version_is_self_contained(path):
    student = make_student_version(nbformat.read(path, as_version=4), path.name, filename=path.name)
    text = "\n".join(c.source for c in student.cells)
    for book_only in ("folded away", "Show solution", "BOOK ONLY", "colab.research.google.com/github/diffedu"):
        assert book_only not in text, f"{path.name}: the student version says {book_only!r}"
    assert student.cells[1].source == STUDENT_NOTE
    published = make_student_version(nbformat.read(path, as_version=4), path.name, filename=path.name,
                                     colab_base="https://github.com/teacher/course/blob/main/week1")
    assert (f"(https://colab.research.google.com/github/teacher/course/blob/main/week1/{path.name})"
            in published.cells[0].source)


# --------------------------------------------------------------------------------------------- badge, reading

@pytest.mark.parametrize("path", CHAPTERS, ids=ids)
def test_colab_badge_is_served_by_the_book(path):
    first = nbformat.read(path, as_version=4).cells[0].source
    images = re.findall(r"!\[Open In Colab\]\(([^)]+)\)", first)
    assert images == ["../book/_static/colab-badge.svg"], f"{path.name}: badge image {images}"
    assert (path.parent / images[0]).resolve().is_file()


@pytest.mark.parametrize("path", CHAPTERS, ids=ids)
def test_chapter_ends_with_further_reading(path):
    nb = nbformat.read(path, as_version=4)
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    sections = re.split(r"^(?=## )", markdown[-1], flags=re.MULTILINE)
    last = sections[-1]
    assert last.startswith("## Further reading"), f"{path.name}: the chapter must end with '## Further reading'"
    items = [line for line in last.splitlines() if line.startswith("- ")]
    assert 3 <= len(items) <= 5, f"{path.name}: {len(items)} further-reading items (3-5)"
    for item in items:
        assert re.search(r"\{cite(:t|:p)?\}`[^`]+`", item), f"{path.name}: cite the paper: {item}"
        assert len(item) > 60, f"{path.name}: say in one line why to read it: {item}"
