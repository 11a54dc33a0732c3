"""Every chapter opens in Colab and sets itself up there without touching Colab's torch.

For each ``chapters/*.ipynb``:

* the first cell is markdown with a Colab badge linking to
  ``https://colab.research.google.com/github/<org>/<repo>/blob/<branch>/chapters/<file>``, where <org>/<repo> and
  <branch> are the book's repository in ``_config.yml``;
* one of the first three code cells is the setup cell: under ``if "google.colab" in sys.modules:`` it
  ``git clone``s that same repository and ``pip install``s it, and the install names no torch package.

The checker itself is tested on notebooks generated here (a good one and broken variants), so this file tests
something even before the first chapter lands; the per-chapter test picks up every notebook in ``chapters/``.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
REPO_URL = CONFIG["repository"]["url"].rstrip("/")
BRANCH = CONFIG["repository"].get("branch", "main")
CHAPTER_FILES = sorted((ROOT / "chapters").glob("*.ipynb"))

GUARD = re.compile(r"""^(\s*)if\s+\(?\s*["']google\.colab["']\s+in\s+sys\.modules\s*\)?\s*:""")
CLONE = re.compile(r"^\s*[!%]?\s*git\s+clone\b")
INSTALL = re.compile(r"^\s*(?:[!%]\s*pip|!\s*python3?\s+-m\s+pip|%pip)\s+install\b")
TORCH = re.compile(r"\btorch(?:vision|audio|text)?\b", re.IGNORECASE)
MAX_SETUP_POSITION = 3  # the setup cell is one of the first three code cells


def _org_repo(url: str) -> str:
    match = re.match(r"^https://github\.com/([^/]+/[^/]+?)(?:\.git)?/?$", url)
    if not match:
        raise ValueError(f"_config.yml repository url is not a GitHub repository: {url}")
    return match.group(1)


def colab_url(filename: str, repo_url: str = REPO_URL, branch: str = BRANCH) -> str:
    return f"https://colab.research.google.com/github/{_org_repo(repo_url)}/blob/{branch}/chapters/{filename}"


def _guarded_block(lines: list[str]) -> tuple[int, list[str]] | None:
    """The lines inside the first ``if "google.colab" in sys.modules:`` block: (index of the if, body lines)."""
    for k, line in enumerate(lines):
        match = GUARD.match(line)
        if match:
            indent = len(match.group(1))
            body = []
            for nxt in lines[k + 1:]:
                if not nxt.strip():
                    continue
                if len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                body.append(nxt)
            return k, body
    return None


def check_notebook(nb, filename: str, repo_url: str = REPO_URL, branch: str = BRANCH) -> list[str]:
    """Every problem with a chapter's Colab badge and setup cell; an empty list means it is fine."""
    problems: list[str] = []
    if not nb.cells:
        return ["the notebook has no cells"]

    first = nb.cells[0]
    badge = colab_url(filename, repo_url, branch)
    if first.cell_type != "markdown":
        problems.append(f"the first cell must be markdown (title, objectives, Colab badge), got {first.cell_type}")
    elif badge not in first.source:
        found = re.findall(r"https://colab\.research\.google\.com/github/[^\s)\"'>]+", first.source)
        problems.append(f"the first cell has no Colab badge linking to {badge}" +
                        (f" (found {found})" if found else ""))
    elif "colab-badge.svg" not in first.source and "Open In Colab" not in first.source:
        problems.append("the Colab link in the first cell should be the 'Open In Colab' badge")

    code_cells = [c for c in nb.cells if c.cell_type == "code"][:MAX_SETUP_POSITION]
    setup = [c for c in code_cells if _guarded_block(c.source.splitlines()) is not None]
    if not setup:
        return problems + [f'none of the first {MAX_SETUP_POSITION} code cells has an '
                           f'`if "google.colab" in sys.modules:` setup block']
    lines = setup[0].source.splitlines()
    if not re.search(r"^\s*import\s+.*\bsys\b|^\s*import\s+sys\b", setup[0].source, re.MULTILINE):
        problems.append("the setup cell uses sys.modules but does not import sys")
    _, body = _guarded_block(lines)

    clones = [ln for ln in body if CLONE.match(ln)]
    repo_re = re.compile(re.escape(repo_url) + r"(?:\.git)?(?=\s|$)")
    if not clones:
        problems.append("the Colab block does not `git clone` the repository")
    elif not any(repo_re.search(ln) for ln in clones):
        problems.append(f"the Colab block clones {clones} instead of {repo_url}")

    installs = [ln for ln in body if INSTALL.match(ln)]
    if not installs:
        problems.append("the Colab block does not `pip install` diffedu")
    for ln in installs:
        if TORCH.search(ln):
            problems.append(f"the install line names torch (Colab's own torch must be kept): {ln.strip()}")

    # nothing is cloned or installed outside the guard: on a reader's own machine the cell does nothing
    inside = set(body)
    for cell in code_cells:
        for ln in cell.source.splitlines():
            if (CLONE.match(ln) or INSTALL.match(ln)) and not (cell is setup[0] and ln in inside):
                problems.append(f"clone/install outside the Colab guard: {ln.strip()}")
    return problems


# --------------------------------------------------------------------------------------------- the checker itself

SETUP_CELL = f'''# Setup: inside Colab, fetch the book's repository and install diffedu (Colab's own torch is kept).
import os, sys
if "google.colab" in sys.modules:
    !git clone -q --depth 1 {REPO_URL} /content/diffedu
    %pip install -q /content/diffedu
    os.environ["DIFFEDU_DATA"] = "/content/diffedu/data"'''


def make_chapter(filename: str = "99_fixture.ipynb", badge: str | None = None, setup: str = SETUP_CELL,
                 code_before: int = 0, first_is_code: bool = False):
    badge = colab_url(filename) if badge is None else badge
    title = nbformat.v4.new_markdown_cell(
        f"# 99 · Fixture chapter\n\n[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"({badge})\n\nBy the end you will be able to run a chapter in Colab.")
    cells = [nbformat.v4.new_code_cell("x = 1")] if first_is_code else [title]
    cells += [nbformat.v4.new_code_cell(f"y{k} = {k}") for k in range(code_before)]
    cells += [nbformat.v4.new_code_cell(setup),
              nbformat.v4.new_code_cell("import diffedu\nprint(diffedu.__version__)")]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


@pytest.fixture
def fixture_chapter(tmp_path):
    """A well-formed chapter written to and read back from disk, like a real one."""
    path = tmp_path / "chapters" / "99_fixture.ipynb"
    path.parent.mkdir()
    nbformat.write(make_chapter(path.name), path)
    return path


def test_config_repository_is_the_books():
    assert REPO_URL == "https://github.com/diffedu/diffedu"
    assert BRANCH == "main"
    assert colab_url("01_ddpm.ipynb") == \
        "https://colab.research.google.com/github/diffedu/diffedu/blob/main/chapters/01_ddpm.ipynb"


def test_checker_accepts_a_good_chapter(fixture_chapter):
    nb = nbformat.read(fixture_chapter, as_version=4)
    nbformat.validate(nb)
    assert check_notebook(nb, fixture_chapter.name) == []


def test_checker_accepts_setup_as_third_code_cell():
    assert check_notebook(make_chapter(code_before=2), "99_fixture.ipynb") == []


@pytest.mark.parametrize("broken, expected", [
    (dict(badge="https://colab.research.google.com/github/someone/else/blob/main/chapters/99_fixture.ipynb"),
     "Colab badge"),
    (dict(badge="https://colab.research.google.com/github/diffedu/diffedu/blob/main/chapters/01_other.ipynb"),
     "Colab badge"),
    (dict(first_is_code=True), "first cell must be markdown"),
    (dict(code_before=3), "setup block"),
    (dict(setup=SETUP_CELL.replace('if "google.colab" in sys.modules:', 'if True:')), "setup block"),
    (dict(setup=SETUP_CELL.replace("%pip install -q /content/diffedu",
                                   "%pip install -q torch /content/diffedu")), "names torch"),
    (dict(setup=SETUP_CELL.replace("%pip install -q /content/diffedu",
                                   "!pip install -q --upgrade torchvision /content/diffedu")), "names torch"),
    (dict(setup=SETUP_CELL.replace(REPO_URL, "https://github.com/someone/fork")), "instead of"),
    (dict(setup=SETUP_CELL.replace("    %pip install -q /content/diffedu\n", "")), "does not `pip install`"),
    (dict(setup=SETUP_CELL.replace("    !git clone", "!git clone")), "outside the Colab guard"),
])
def test_checker_rejects_broken_chapters(broken, expected):
    problems = check_notebook(make_chapter(**broken), "99_fixture.ipynb")
    assert any(expected in p for p in problems), f"expected a problem about {expected!r}, got {problems}"


# --------------------------------------------------------------------------------------------- the real chapters

@pytest.mark.parametrize("path", CHAPTER_FILES, ids=[p.name for p in CHAPTER_FILES])
def test_chapter_opens_in_colab(path):
    nb = nbformat.read(path, as_version=4)
    problems = check_notebook(nb, path.name)
    assert not problems, f"{path.relative_to(ROOT)}:\n  " + "\n  ".join(problems)
