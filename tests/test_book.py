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
    """No page loads a script or an image from the network (offline, a remote Colab badge showed its alt text);
    MathJax is never mentioned with a remote URL. Remote stylesheets are reported as warnings."""
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
                bad.append(f"{rel}: image {src}")
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


# --------------------------------------------------------------------------------------------- every chapter, read

# What a reader meets, measured in the rendered page by a script run in headless Chromium: MathJax errors, TeX left
# unrendered, code blocks that scroll, the header, the Colab badge, the toggles and the figures' scale. The page
# is loaded in an iframe of the given width (a phone's 412 px, a laptop's 1280 px) inside a wrapper page; the
# probe runs in the iframe once MathJax has typeset, and the wrapper copies its JSON into its own DOM for
# --dump-dom. Probe pages are written next to the chapter's page (same relative links) and removed after.
PROBE_JS = r"""
<script>
(function () {
  function collect() {
    var out = {width: window.innerWidth, merror: [], unrendered: [], overflow: [], figures: [], toggles: []};
    document.querySelectorAll("mjx-merror").forEach(function (e) {
      out.merror.push(e.getAttribute("data-mjx-error") || e.textContent.slice(0, 80));
    });
    var article = document.querySelector("article.bd-article") || document.body;
    var walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT, null);
    var skip = ["PRE", "CODE", "SCRIPT", "STYLE", "MJX-CONTAINER", "TEXTAREA"];
    var tex = /\$|\\\(|\\\[|\\[a-zA-Z]{2,}/;  // a dollar, \( or \[, or a TeX control word left in the text
    for (var node = walker.nextNode(); node; node = walker.nextNode()) {
      var inCode = false;
      for (var p = node.parentElement; p && p !== article; p = p.parentElement) {
        if (skip.indexOf(p.tagName) >= 0 || p.classList.contains("highlight")) { inCode = true; break; }
      }
      if (!inCode && tex.test(node.textContent)) out.unrendered.push(node.textContent.trim().slice(0, 120));
    }
    // code: cell inputs and the library source they print (highlighted as Python); printed text is not code
    var code = "div.cell_input pre, div.cell_output div.highlight-python pre, div.cell_output div.highlight-ipython3 pre";
    document.querySelectorAll(code).forEach(function (pre) {
      if (pre.clientWidth > 0 && pre.scrollWidth > pre.clientWidth + 1) {
        var lines = pre.textContent.split("\n");
        out.overflow.push(lines.reduce(function (a, b) { return b.length > a.length ? b : a; }, ""));
      }
    });
    document.querySelectorAll("div.cell_output img").forEach(function (img) {
      if (img.naturalWidth > 0) out.figures.push([img.getBoundingClientRect().width, img.naturalWidth]);
    });
    // the cells' toggles, as displayed (the sidebar's own toggles, e.g. of a chapter's sections, are icons)
    article.querySelectorAll("details summary").forEach(function (s) {
      var shown = Array.prototype.filter.call(s.querySelectorAll("span"), function (x) {
        return x.offsetParent !== null && x.children.length === 0 && x.textContent.trim(); });
      out.toggles.push(shown.length ? shown[0].textContent.trim() : s.textContent.trim().split("\n")[0]);
    });
    var header = document.getElementById("pst-header");
    out.header = header ? getComputedStyle(header).display : "absent";
    var badge = document.querySelector('img[alt="Open In Colab"]');
    out.badge = badge ? {src: badge.getAttribute("src"), loaded: badge.complete && badge.naturalWidth > 0} : null;
    var result = document.createElement("pre");
    result.id = "diffedu-probe";
    result.textContent = JSON.stringify(out);
    document.body.appendChild(result);
  }
  window.addEventListener("load", function () {
    var ready = window.MathJax && MathJax.startup && MathJax.startup.promise;
    (ready ? MathJax.startup.promise : Promise.resolve()).then(function () { setTimeout(collect, 300); });
  });
})();
</script>
"""
WRAPPER_HTML = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="page" src="{src}" width="{width}" height="2400" style="border:0"></iframe>
<script>
var timer = setInterval(function () {{
  var doc = document.getElementById("page").contentDocument;
  var found = doc && doc.getElementById("diffedu-probe");
  if (found) {{
    var copy = document.createElement("pre");
    copy.id = "probe-result";
    copy.textContent = found.textContent;
    document.body.appendChild(copy);
    clearInterval(timer);
  }}
}}, 100);
</script></body></html>"""
READER_WIDTHS = (1280, 412)
CODE_COLUMNS = 79  # tests/test_reader.py keeps every code line within this; here the page must show them all


@pytest.fixture(scope="session")
def probed(served_book, book_html, tmp_path_factory):
    """probe(page, width) -> the JSON the probe collected (cached: one Chromium run per page and width)."""
    import json

    binary = _chromium()
    if binary is None:
        pytest.skip("no Chromium binary on PATH (install it: apt-get install -y chromium; or set CHROMIUM=...)")
    base, _ = served_book
    cache: dict = {}

    def probe(page: str, width: int) -> dict:
        if (page, width) in cache:
            return cache[(page, width)]
        source = _page(book_html, page)
        probe_page = source.with_name(source.stem + ".probe.html")
        wrapper = source.with_name(source.stem + f".probe{width}.html")
        probe_page.write_text(source.read_text(encoding="utf-8").replace("</body>", PROBE_JS + "</body>"),
                              encoding="utf-8")
        wrapper.write_text(WRAPPER_HTML.format(src=probe_page.name, width=width), encoding="utf-8")
        try:
            url = f"{base}/{wrapper.relative_to(book_html).as_posix()}"
            proc = _chromium_run(binary, tmp_path_factory.mktemp("profile"), "--window-size=1400,2400",
                                 "--dump-dom", url)
        finally:
            probe_page.unlink(missing_ok=True)
            wrapper.unlink(missing_ok=True)
        found = re.search(r'<pre id="probe-result">(.*?)</pre>', proc.stdout, re.DOTALL)
        assert found, f"{page} at {width} px: the probe did not report (MathJax never finished?)\n{proc.stderr[-1500:]}"
        import html as html_lib
        cache[(page, width)] = json.loads(html_lib.unescape(found.group(1)))
        return cache[(page, width)]

    return probe


@pytest.mark.slow
@pytest.mark.parametrize("width", READER_WIDTHS)
@pytest.mark.parametrize("page", CHAPTERS)
def test_chromium_math_renders_without_errors(probed, page, width):
    found = probed(page, width)
    assert found["width"] == width
    assert not found["merror"], f"{page}: MathJax errors: {found['merror']}"
    assert not found["unrendered"], f"{page}: TeX left unrendered in the text:\n" + "\n".join(found["unrendered"])


@pytest.mark.slow
@pytest.mark.parametrize("page", CHAPTERS)
def test_chromium_code_fits_the_column_at_1280(probed, page):
    """No code block scrolls at 1280 px: every code line (<= 79 characters) is shown whole."""
    found = probed(page, 1280)
    assert not found["overflow"], (f"{page}: code blocks that scroll sideways at 1280 px (longest lines):\n"
                                   + "\n".join(found["overflow"]))


@pytest.mark.slow
@pytest.mark.parametrize("page", CHAPTERS)
def test_chromium_one_header_local_badge_and_named_toggles(probed, page):
    found = probed(page, 1280)
    assert found["header"] == "none", f"{page}: the theme's second top bar is shown ({found['header']})"
    badge = found["badge"]
    assert badge and badge["loaded"] and not re.match(r"^(https?:)?//", badge["src"]), f"{page}: badge {badge}"
    assert found["toggles"], f"{page}: no collapsed cell (every chapter has solutions)"
    wrong = [t for t in found["toggles"] if t not in ("Show solution", "Show plotting code")]
    assert not wrong, f"{page}: toggles that do not say what they hide: {sorted(set(wrong))}"


@pytest.mark.slow
@pytest.mark.parametrize("page", CHAPTERS)
def test_chromium_figures_stay_legible_on_a_phone(probed, page):
    """At 412 px a figure is shown at >= 0.55 of its own size (matplotlib text >= ~7 px); wider ones scroll."""
    found = probed(page, 412)
    small = [f"{shown:.0f} px shown of {natural} px" for shown, natural in found["figures"]
             if shown < 0.55 * natural - 1]
    assert found["figures"], f"{page}: no figures measured"
    assert not small, f"{page}: figures shrunk below 55 % at 412 px: {small}"


@pytest.mark.slow
@pytest.mark.parametrize("width", READER_WIDTHS)
@pytest.mark.parametrize("page", CHAPTERS)
def test_chromium_screenshot_every_chapter(served_book, book_html, tmp_path, page, width):
    """A screenshot of the top of every chapter at both widths, in _build/screenshots/, to look at."""
    binary = _chromium()
    if binary is None:
        pytest.skip("no Chromium binary on PATH")
    base, _ = served_book
    shots = book_html.parent / "screenshots"
    shots.mkdir(exist_ok=True)
    target = shots / f"{page.replace('/', '_')}-{width}.png"
    target.unlink(missing_ok=True)
    _chromium_run(binary, tmp_path / "profile", "--headless=new", f"--window-size={width},2400",
                  f"--screenshot={target}", f"{base}/{page}.html")
    assert target.is_file() and target.stat().st_size > 20_000, f"no usable screenshot of {page} at {width} px"


def test_reference_labels_match_the_citation_style(book_html):
    """Citations read "Ho et al. [2020]" (author_year), so the list is labelled by author and year too."""
    assert CONFIG["sphinx"]["config"]["bibtex_reference_style"] == "author_year"
    soup = _soup(book_html / "book" / "references.html")
    labels = [el.get_text(strip=True).strip("[]") for el in soup.select("span.label, dt.label")]
    assert len(labels) >= 10, f"no reference list labels found ({labels[:5]})"
    bad = [label for label in labels if not re.fullmatch(r"\D+, (19|20)\d\d[a-z]?", label)]
    assert not bad, f"reference labels that are not 'Author(s), year': {bad[:10]}"
    chapter = _soup(_page(book_html, CHAPTERS[0]))
    cited = chapter.select("a[href*='references.html#']")
    assert cited and all(re.search(r"(19|20)\d\d", a.get_text()) for a in cited), "citations carry no year"
