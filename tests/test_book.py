"""The built book: it builds with warnings as errors, every chapter has a page with its figures and no errors,
math is typeset by the vendored MathJax (never a CDN), every chapter links to Colab, and a headless Chromium
with no network renders the math.

The book is built once per session with ``jupyter-book build <root> --all -W --keep-going``. By default it goes
to ``<root>/_build/html`` (what ``make book`` produces, so a passing test leaves a fresh book behind); under
pytest-xdist each worker builds into its own temporary directory. Environment overrides:

    DIFFEDU_BOOK_ROOT   build another copy of the repository (e.g. one with a throwaway chapter)
    DIFFEDU_BOOK_OUT    the --path-output directory (the html lands in <it>/_build/html)
    CHROMIUM            the Chromium/Chrome binary to use (default: the first of chromium, chromium-browser,
                        google-chrome, ... on PATH; the Chromium test is skipped when there is none)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

bs4 = pytest.importorskip("bs4", reason="beautifulsoup4 comes with the book toolchain (pydata-sphinx-theme)")

ROOT = Path(os.environ.get("DIFFEDU_BOOK_ROOT", Path(__file__).resolve().parents[1])).resolve()
BUILD_TIMEOUT_S = 1200
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome",
                  "headless_shell")
# Hosts that serve MathJax (or any other script library) and must never appear in a script the book loads.
CDN_PATTERN = re.compile(r"cdn\.jsdelivr|cdnjs\.cloudflare|unpkg\.com|polyfill\.io|mathjax\.org|"
                         r"googleapis\.com|bootstrapcdn\.com", re.IGNORECASE)


# --------------------------------------------------------------------------------------------- the book's files

def _toc_files(node) -> list[str]:
    """Every ``file:`` (and the root) named in a _toc.yml structure, in order."""
    found: list[str] = []
    if isinstance(node, dict):
        for key in ("root", "file"):
            if isinstance(node.get(key), str):
                found.append(node[key])
        for value in node.values():
            if isinstance(value, (dict, list)):
                found.extend(_toc_files(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_toc_files(item))
    return found


def _strip_suffix(name: str) -> str:
    return re.sub(r"\.(ipynb|md)$", "", name)


TOC = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
PAGES = [_strip_suffix(f) for f in _toc_files(TOC)]
CHAPTERS = [p for p in PAGES if p.startswith("chapters/")]
REPO_URL = CONFIG["repository"]["url"].rstrip("/")
BRANCH = CONFIG["repository"].get("branch", "main")


def test_toc_lists_only_existing_files_and_every_chapter():
    missing = [p for p in PAGES if not any((ROOT / f"{p}{ext}").exists() for ext in (".md", ".ipynb"))]
    assert not missing, f"_toc.yml names files that do not exist: {missing}"
    assert TOC.get("root") == "book/intro", "the book's root page must be book/intro"
    on_disk = sorted(f"chapters/{p.stem}" for p in (ROOT / "chapters").glob("[0-9][0-9]*_*.ipynb"))
    left_out = [c for c in on_disk if c not in CHAPTERS]
    assert not left_out, f"chapter notebooks not listed in _toc.yml (add them under their part): {left_out}"


def test_config_is_offline_and_static():
    sphinx = CONFIG["sphinx"]["config"]
    assert str(CONFIG["execute"]["execute_notebooks"]) in ("off", "False"), "the book must never re-execute"
    path = sphinx["mathjax_path"]
    assert not re.match(r"^(https?:)?//", path), f"mathjax_path must be local, got {path}"
    static_dirs = sphinx["html_static_path"]
    assert any((ROOT / d / path).is_file() for d in static_dirs), f"{path} not found in {static_dirs}"
    assert sphinx.get("nb_ipywidgets_js") == {}, "nb_ipywidgets_js must stay empty (it defaults to CDN scripts)"
    assert not CONFIG["launch_buttons"].get("thebe"), "thebe loads its library from a CDN: keep it off"
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"


# --------------------------------------------------------------------------------------------- building it

def _jupyter_book() -> str:
    local = Path(sys.executable).with_name("jupyter-book")
    found = str(local) if local.exists() else shutil.which("jupyter-book")
    if found is None:
        pytest.fail("jupyter-book is not installed (it is part of the book toolchain: see requirements)")
    return found


@pytest.fixture(scope="session")
def book_html(tmp_path_factory) -> Path:
    """Build the book once (all pages, warnings as errors) and return its html directory."""
    if os.environ.get("DIFFEDU_BOOK_OUT"):
        out = Path(os.environ["DIFFEDU_BOOK_OUT"]).resolve()
    elif os.environ.get("PYTEST_XDIST_WORKER"):
        out = tmp_path_factory.mktemp("book")
    else:
        out = ROOT
    cmd = [_jupyter_book(), "build", str(ROOT), "--path-output", str(out), "--all",
           "--warningiserror", "--keep-going"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    seconds = time.perf_counter() - start
    log = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)  # drop ANSI colours
    (out / "_build").mkdir(parents=True, exist_ok=True)
    (out / "_build" / "book-build.log").write_text(log, encoding="utf-8")
    if proc.returncode != 0:
        problems = [line for line in log.splitlines() if re.search(r"WARNING|ERROR|Error|Traceback", line)]
        tail = "\n".join(line[:300] for line in log.splitlines()[-40:])
        pytest.fail(f"book build failed (exit {proc.returncode}) after {seconds:.0f} s: {' '.join(cmd)}\n\n"
                    f"warnings and errors:\n" + "\n".join(problems[:40]) + f"\n\nlog tail:\n{tail}",
                    pytrace=False)
    html = out / "_build" / "html"
    assert (html / "index.html").is_file(), f"no index.html in {html}"
    print(f"book built in {seconds:.1f} s into {html}")
    return html


def _page(html: Path, page: str) -> Path:
    return html / f"{page}.html"


def _soup(path: Path):
    return bs4.BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


@pytest.mark.slow
def test_book_builds_with_warnings_as_errors(book_html):
    for page in PAGES:
        assert _page(book_html, page).is_file(), f"no html page for {page}"


# --------------------------------------------------------------------------------------------- each chapter

@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_page_has_figures(book_html, chapter):
    path = _page(book_html, chapter)
    assert path.is_file(), f"{chapter} is in _toc.yml but has no page {path}"
    soup = _soup(path)
    pngs = []
    for img in soup.select("article img, main img"):
        src = img.get("src", "")
        if src.startswith("data:image/png") or (src.endswith(".png") and "_static/" not in src):
            pngs.append(src)
    assert pngs, f"{chapter}: no PNG figure in the page (are the notebook's outputs committed?)"
    for src in pngs:
        if not src.startswith("data:"):
            target = (path.parent / src).resolve()
            assert target.is_file() and target.stat().st_size > 0, f"{chapter}: figure {src} is missing"


def _output_blocks(soup):
    """The rendered outputs of code cells (myst-nb wraps each in div.cell_output)."""
    return soup.select("div.cell_output")


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_page_has_no_error_outputs(book_html, chapter):
    soup = _soup(_page(book_html, chapter))
    problems = []
    for block in _output_blocks(soup):
        text = block.get_text(" ", strip=True)
        classes = " ".join(" ".join(el.get("class", [])) for el in [block, *block.find_all(True)])
        if "traceback" in classes or re.search(r"\boutput[ _-]error\b|\berror\b", classes):
            problems.append(f"error output: {text[:300]}")
        elif "Traceback (most recent call last)" in text:
            problems.append(f"traceback in output: {text[:300]}")
        for err in block.select(".stderr"):
            err_text = err.get_text(" ", strip=True)
            if re.search(r"[A-Za-z]*Error\b", err_text):
                problems.append(f"stderr with an error: {err_text[:300]}")
    assert not problems, f"{chapter} shows failed cells:\n" + "\n".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_page_has_colab_launch_link(book_html, chapter):
    parsed = urlparse(REPO_URL)
    org_repo = parsed.path.strip("/")
    expected = f"https://colab.research.google.com/github/{org_repo}/blob/{BRANCH}/{chapter}.ipynb"
    hrefs = {a.get("href") for a in _soup(_page(book_html, chapter)).find_all("a")}
    assert expected in hrefs, f"{chapter}: no Colab launch link {expected}"


# --------------------------------------------------------------------------------------------- math, offline

@pytest.mark.slow
@pytest.mark.parametrize("page", ["book/notation", *CHAPTERS])
def test_math_markup_and_local_mathjax(book_html, page):
    path = _page(book_html, page)
    soup = _soup(path)
    assert soup.select(".math"), f"{page}: no math markup (class 'math') in the html"
    scripts = [s.get("src", "") for s in soup.find_all("script") if "mathjax" in s.get("src", "").lower()]
    assert scripts, f"{page}: MathJax is not loaded"
    for src in scripts:
        assert not re.match(r"^(https?:)?//", src), f"{page}: MathJax loaded from the network: {src}"
        local = (path.parent / src.split("?")[0]).resolve()
        assert local.is_file(), f"{page}: MathJax script {src} is not in the build"


@pytest.mark.slow
def test_no_page_loads_scripts_or_math_from_a_cdn(book_html):
    """No page loads a script from the network; MathJax is never mentioned with a remote URL. Remote
    stylesheets and images (which degrade gracefully offline) are reported as warnings."""
    bad, soft = [], []
    for path in sorted(book_html.rglob("*.html")):
        rel = path.relative_to(book_html)
        text = path.read_text(encoding="utf-8")
        if re.search(r"https?://[^\s\"'<>]*mathjax", text, re.IGNORECASE):
            bad.append(f"{rel}: a remote MathJax URL")
        soup = bs4.BeautifulSoup(text, "html.parser")
        for script in soup.find_all("script"):
            src = script.get("src") or ""
            if re.match(r"^(https?:)?//", src):
                bad.append(f"{rel}: <script src={src}>")
            for attr in ("data-jupyter-widgets-cdn",):
                if script.get(attr):
                    bad.append(f"{rel}: <script {attr}={script.get(attr)}>")
        for link in soup.find_all("link"):
            href = link.get("href") or ""
            if re.match(r"^(https?:)?//", href) and "stylesheet" in (link.get("rel") or []):
                (bad if "mathjax" in href.lower() else soft).append(f"{rel}: stylesheet {href}")
        for img in soup.find_all("img"):
            src = img.get("src") or ""
            if re.match(r"^(https?:)?//", src):
                soft.append(f"{rel}: image {src}")
    assert not bad, "pages that need the network for scripts or math:\n" + "\n".join(bad)
    if soft:
        warnings.warn("remote resources that fail (harmlessly) offline:\n" + "\n".join(sorted(set(soft))),
                      stacklevel=1)


# --------------------------------------------------------------------------------------------- headless Chromium

def _chromium() -> str | None:
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def served_book(book_html, tmp_path_factory):
    """Serve the built html on 127.0.0.1 with python -m http.server; yields (base url, request log path)."""
    log_path = tmp_path_factory.mktemp("http") / "requests.log"
    port = _free_port()
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                   "--directory", str(book_html)], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 20
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.time() > deadline or server.poll() is not None:
                        pytest.fail(f"http.server did not start on port {port}")
                    time.sleep(0.1)
            yield f"http://127.0.0.1:{port}", log_path
        finally:
            server.terminate()
            server.wait(timeout=10)


def _chromium_run(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
           "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


BROWSER_PAGES = list(dict.fromkeys(["book/notation", *CHAPTERS[:1], *CHAPTERS[-1:]]))


@pytest.mark.slow
@pytest.mark.parametrize("page", BROWSER_PAGES)
def test_headless_chromium_typesets_math_offline(served_book, book_html, tmp_path, page):
    binary = _chromium()
    if binary is None:
        pytest.skip("no Chromium binary on PATH (install it: apt-get install -y chromium; or set CHROMIUM=...)")
    base, log_path = served_book
    url = f"{base}/{page}.html"
    log_offset = Path(log_path).stat().st_size  # only this page's requests count below
    proc = _chromium_run(binary, tmp_path / "profile", "--dump-dom", url)
    dom = proc.stdout
    assert proc.returncode == 0 and dom.strip(), f"chromium failed on {url}:\n{proc.stderr[-2000:]}"
    assert "<mjx-container" in dom, f"{page}: MathJax did not typeset (no mjx-container in the DOM)"
    assert "<mjx-merror" not in dom, f"{page}: MathJax reports a TeX error on the page"
    (book_html.parent / "screenshots").mkdir(exist_ok=True)
    (book_html.parent / "screenshots" / f"{page.replace('/', '_')}.dom.html").write_text(dom, encoding="utf-8")
    with open(log_path, encoding="utf-8", errors="replace") as log:
        log.seek(log_offset)
        requests = log.read().splitlines()
    missing = [line for line in requests
               if re.search(r'" 404 ', line) and "favicon.ico" not in line]
    assert not missing, "the browser asked the local server for files the build lacks:\n" + "\n".join(missing)


@pytest.mark.slow
@pytest.mark.parametrize("page", list(dict.fromkeys(["book/intro", *CHAPTERS[:1]])))
def test_headless_chromium_screenshots(served_book, book_html, tmp_path, page):
    binary = _chromium()
    if binary is None:
        pytest.skip("no Chromium binary on PATH (install it: apt-get install -y chromium; or set CHROMIUM=...)")
    base, _ = served_book
    shots = book_html.parent / "screenshots"
    shots.mkdir(exist_ok=True)
    target = shots / f"{page.replace('/', '_')}.png"
    target.unlink(missing_ok=True)
    proc = _chromium_run(binary, tmp_path / "profile", "--window-size=1280,2400", f"--screenshot={target}",
                         f"{base}/{page}.html")
    assert target.is_file(), f"no screenshot of {page}:\n{proc.stderr[-2000:]}"
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert target.stat().st_size > 20_000, f"the screenshot of {page} looks blank ({target.stat().st_size} B)"
