"""The built HTML book in a real browser: headless Debian Chromium driven by Selenium over every page.

Runs against the book named by ``IDCLAB_BOOK_HTML`` (its ``_build/html`` folder); scripts/test.sh sets it after its
build, and skips nothing then. By hand::

    IDCLAB_BOOK_HTML=book/_build/html pytest tests/test_browser.py

Needs ``apt-get install chromium chromium-driver`` (what .ci/run does; browsers downloaded by Selenium itself are not
used) and the ``dev`` extra (selenium). Checks per page: no stderr / error / traceback output in any cell, every local
image loaded (natural width > 0), every piece of math rendered by MathJax without a TeX error, the Colab links of a
chapter pointing at that chapter's notebook of this release, every link to a local page resolving; and the search
page finding "CIDEr". One screenshot per chapter goes to ``IDCLAB_BROWSER_SHOTS`` (default: a temporary folder; the
path is printed).
"""

from __future__ import annotations

import base64
import re
import os
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest

from idclab import project

BOOK_HTML = os.environ.get("IDCLAB_BOOK_HTML")
CHROMIUM = os.environ.get("IDCLAB_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("IDCLAB_CHROMEDRIVER", "/usr/bin/chromedriver")
CHAPTERS = sorted(p.stem for p in (Path(__file__).parent.parent / "book" / "chapters").glob("*.ipynb"))

pytestmark = pytest.mark.skipif(
    not BOOK_HTML, reason="IDCLAB_BOOK_HTML is not set: scripts/test.sh sets it to the book it has just built "
                          "(by hand: IDCLAB_BOOK_HTML=book/_build/html pytest tests/test_browser.py)")


def _pages() -> list[str]:
    """Every HTML page of the built book, relative to its root (theme assets and sources left out)."""
    if not BOOK_HTML:
        return []
    root = Path(BOOK_HTML)
    skip = ("_static", "_sources", "_images", "_downloads")
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.html") if not p.relative_to(root).parts[0] in skip)


PAGES = _pages()

# Cell outputs that must not appear: myst-nb renders errors (tracebacks) with these classes. Stderr streams
# (progress bars, warnings such as the smoke profile's tiny-corpus CIDEr notes) may appear, unless they report an
# exception (a line "SomethingError: ..." or "...Exception: ...").
ERROR_OUTPUTS = ".cell_output .traceback, .cell_output .error, div.output.error"
STDERR_OUTPUTS = ".cell_output .stderr, div.output.stderr"
EXCEPTION_LINE = r"^\s*[A-Za-z_.]*(Error|Exception)\b.*:"
MATH = "span.math.notranslate, div.math.notranslate"  # what Sphinx writes (MathJax 2 adds span.math inside)
RENDERED_MATH = "mjx-container, .MathJax, .MathJax_CHTML, .MathJax_SVG, .MathJax_Display"
MATH_ERRORS = "mjx-merror, .MathJax_Error, .merror, .mjx-merror"

# Wait (asynchronously) until MathJax has typeset the page: MathJax 3 (the public build, from its CDN) or MathJax 2
# (Debian's libjs-mathjax, what scripts/test.sh points the offline CI build at).
WAIT_FOR_MATHJAX = """
const done = arguments[arguments.length - 1];
const deadline = Date.now() + arguments[1] * 1000;
if (!document.querySelector(arguments[0])) { done("no math"); return; }  // Sphinx loads MathJax only where needed
(function poll() {
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.promise) { mj.startup.promise.then(() => done("3"), () => done("3 failed")); }
  else if (mj && mj.Hub && mj.Hub.Queue) { mj.Hub.Queue(() => done("2")); }
  else if (Date.now() > deadline) { done("not loaded"); }
  else { setTimeout(poll, 100); }
})();
"""


@pytest.fixture(scope="module")
def html() -> Path:
    root = Path(BOOK_HTML)
    assert (root / "index.html").is_file(), f"IDCLAB_BOOK_HTML={root} holds no index.html: build the book first"
    return root


@pytest.fixture(scope="module")
def shots() -> Path:
    folder = Path(os.environ.get("IDCLAB_BROWSER_SHOTS") or tempfile.mkdtemp(prefix="idclab-screenshots-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots of the chapters: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser():
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not Path(exe).is_file():
            pytest.fail(f"{exe} not found: apt-get install -y chromium chromium-driver (as .ci/run does), or point "
                        f"IDCLAB_CHROMIUM / IDCLAB_CHROMEDRIVER at a Chromium and its matching chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install -e '.[dev]'")
    profile = tempfile.mkdtemp(prefix="idclab-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", "--allow-file-access-from-files", "--window-size=1280,1600",
                "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    driver.set_script_timeout(90)
    yield driver
    driver.quit()


def _open(browser, path: Path, query: str = "", *, mathjax_wait: float = 60) -> str:
    """Load a page and wait for MathJax; -> what the wait saw ("3", "2", "not loaded", "no math")."""
    browser.get(path.as_uri() + query)
    return browser.execute_async_script(WAIT_FOR_MATHJAX, MATH, mathjax_wait)


def _local_target(href: str) -> Path | None:
    """The file a link points at, None for links off the book (http(s), mailto, javascript)."""
    parts = urllib.parse.urlsplit(href)
    if parts.scheme != "file":
        return None
    return Path(urllib.parse.unquote(parts.path))


def test_the_book_has_every_chapter():
    stems = {Path(p).stem for p in PAGES if p.startswith("chapters/")}
    assert "index.html" in PAGES and "search.html" in PAGES, PAGES
    assert stems == set(CHAPTERS), f"built chapters {sorted(stems)} differ from book/chapters {CHAPTERS}"


def page_problems(browser, path: Path, *, mathjax_wait: float = 60) -> tuple[list[str], list[str]]:
    """Load one page -> (what is wrong with it, the hrefs of its links)."""
    mathjax = _open(browser, path, mathjax_wait=mathjax_wait)
    problems = []

    texts = "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText.slice(0, 2000));"
    problems += [f"error output: {text[:300]!r}" for text in browser.execute_script(texts, ERROR_OUTPUTS)]
    problems += [f"stderr output reports an exception: {text[:300]!r}"
                 for text in browser.execute_script(texts, STDERR_OUTPUTS)
                 if re.search(EXCEPTION_LINE, text, flags=re.MULTILINE)]
    if "Traceback (most recent call last)" in browser.execute_script("return document.body?.innerText ?? ''"):
        problems.append("a traceback is shown on the page")

    images = browser.execute_script("""
        return Array.from(document.images).filter(i => /^(file|data):/.test(i.src))
            .map(i => [i.src.slice(0, 120), i.complete, i.naturalWidth]);""")
    problems += [f"image not loaded: {src}" for src, complete, width in images if not (complete and width > 0)]

    n_math, unrendered, errors = browser.execute_script("""
        const math = Array.from(document.querySelectorAll(arguments[0]));
        return [math.length, math.filter(m => !m.querySelector(arguments[1])).map(m => m.textContent.slice(0, 80)),
                document.querySelectorAll(arguments[2]).length];""", MATH, RENDERED_MATH, MATH_ERRORS)
    if n_math:
        if mathjax == "not loaded":
            problems.append(f"{n_math} pieces of math but MathJax never loaded (offline? see scripts/test.sh)")
        problems += [f"math not rendered: {tex!r}" for tex in unrendered[:5]]
        if errors:
            problems.append(f"{errors} TeX errors rendered by MathJax")

    hrefs = browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href);")
    for href in hrefs:
        target = _local_target(href)
        if target is not None and not target.exists():
            problems.append(f"broken link: {href}")
    return problems, hrefs


@pytest.mark.parametrize("page", PAGES)
def test_page(page, html, browser, shots):
    problems, hrefs = page_problems(browser, html / page)
    stem = Path(page).stem
    if page.startswith("chapters/") and stem in CHAPTERS:
        colab = sorted({h for h in hrefs if "colab.research.google.com/github/" in h})
        want = project.colab_url(f"{stem}.ipynb")
        assert colab, "no Colab button or badge on a chapter page"
        problems += [f"Colab link {h} is not {want}" for h in colab if h != want]
        # the screenshot shows the first figure of the chapter (the top of the page if it has none)
        browser.execute_script("""
            const fig = document.querySelector('.cell_output img');
            if (fig) fig.scrollIntoView({block: 'center'}); else window.scrollTo(0, 0);""")
        time.sleep(0.3)
        browser.save_screenshot(str(shots / f"{stem}.png"))
    assert not problems, f"{page}:\n  " + "\n  ".join(problems)


def test_the_checks_catch_a_broken_page(tmp_path, browser):
    """A page with each fault the book could have: every check above reports its fault."""
    (tmp_path / "good.png").write_bytes(base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="))
    page = tmp_path / "page.html"
    page.write_text("""<html><body>
        <div class="cell_output"><div class="output stderr"><pre>UserWarning: only a warning</pre></div></div>
        <div class="cell_output"><div class="output stderr"><pre>RuntimeError: boom</pre></div></div>
        <div class="cell_output"><div class="output error"><pre>ValueError: bad</pre></div></div>
        <pre>Traceback (most recent call last):</pre>
        <img src="good.png"><img src="missing.png">
        <span class="math notranslate nohighlight">\\(x^2\\)</span>
        <a href="elsewhere.html">a page that does not exist</a><a href="page.html">this page</a>
        <a href="https://example.org/">off the book</a></body></html>""")
    problems, _ = page_problems(browser, page, mathjax_wait=1)
    text = "\n".join(problems)
    assert "stderr output reports an exception: 'RuntimeError: boom'" in text and "a traceback is shown" in text
    assert "error output: 'ValueError: bad'" in text and "only a warning" not in text
    assert "missing.png" in text and "good.png" not in text
    assert "MathJax never loaded" in text and "math not rendered: '\\\\(x^2\\\\)'" in text
    assert "broken link: " in text and "elsewhere.html" in text and text.count("broken link") == 1


def test_search_finds_cider(html, browser):
    _open(browser, html / "search.html", "?q=CIDEr")
    deadline = time.time() + 60
    hits = []
    while time.time() < deadline and not hits:
        hits = browser.execute_script(
            "return Array.from(document.querySelectorAll('#search-results li a')).map(a => a.href);")
        time.sleep(0.5)
    assert hits, "the search page found nothing for 'CIDEr' (is searchindex.js in the build?)"
    assert any("02_datasets_and_metrics" in h for h in hits), hits
