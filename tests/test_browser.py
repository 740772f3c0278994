"""The built book as a reader meets it: offline, in a real browser.

Runs after ``test_book_builds`` (marked ``book``), on ``_build/html``. The first test reads the
HTML files and needs nothing else: no page loads a script, style sheet, font or image from
another host. The others serve ``_build/html`` from a local HTTP server on 127.0.0.1 and open
every page in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by
Selenium; skipped when they are missing). Other hosts do not resolve in that browser, so a
page that needs the network fails here as it would on a laptop without one. On every page:
no console error, no failed request, every formula typeset by MathJax, every image loaded,
the solutions closed until clicked, the launch buttons pointing at the page's own notebook,
saved widget state rendered; and the search page finds "attention". A screenshot of each
page goes to ``_build/screenshots/``.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import re
import shutil
import tempfile
import threading
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from test_book import BUILD, CONFIG, HTML, NOTEBOOKS, ROOT, page_path, toc_entries

pytestmark = [pytest.mark.book, pytest.mark.browser]

SCREENSHOTS = BUILD / "screenshots"
PAGES = [entry for entry in toc_entries() if page_path(entry)]  # "book/intro", "book/ch03_attention", ...
NOTEBOOK_PAGES = {nb.with_suffix("").as_posix() for nb in NOTEBOOKS}
WIDGET_PAGES = {"book/ch03_attention": "the attention explorer"}  # pages whose saved widgets must render
SEARCH_TERM = "attention"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # no host but this one: the book must not need one
    "--window-size=1280,1000", "--hide-scrollbars",
]
SCREENSHOT_PART = 4000  # pixels, the window's height while a page is saved in parts
WAIT_S = 30  # for MathJax, the widgets and the search to finish on a loaded two-core machine
# TeX the browser should have typeset: \( \) or \[ \] delimiters, $$, an environment, or $...$ holding TeX.
RAW_TEX = re.compile(r"\\\(|\\\[|\$\$|\\begin\{|\$[^$\s][^$]*?[\\^_{][^$]*?\$")


@pytest.fixture(scope="module")
def html_files() -> list[Path]:
    if not (HTML / "index.html").is_file():
        pytest.fail(f"no built book in {HTML}: build it first (python -m pytest -m book)", pytrace=False)
    return sorted(p for p in HTML.rglob("*.html") if p.relative_to(HTML).parts[0] not in ("_static", "_sources"))


# --- Without a browser: what the pages ask for -------------------------------------
class _Loads(HTMLParser):
    """The URLs an HTML page makes the browser fetch (not the links a reader may follow)."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "audio", "video", "embed", "track") and a.get("src"):
            self.urls.append(a["src"])
        if tag in ("img", "source") and a.get("srcset"):
            self.urls += [part.split()[0] for part in a["srcset"].split(",") if part.strip()]
        if tag == "object" and a.get("data"):
            self.urls.append(a["data"])
        rel = set((a.get("rel") or "").lower().split())
        if tag == "link" and a.get("href") and rel & {"stylesheet", "preload", "modulepreload", "icon", "prefetch"}:
            self.urls.append(a["href"])


def test_pages_load_nothing_from_another_host(html_files):
    remote, missing = [], []
    for path in html_files:
        parser = _Loads()
        parser.feed(path.read_text(encoding="utf-8"))
        for url in parser.urls:
            parts = urlsplit(url)
            if parts.scheme in ("data", "blob"):
                continue
            where = f"{path.relative_to(HTML)}: {url}"
            if parts.scheme or parts.netloc:
                remote.append(where)
            elif not (path.parent / parts.path).resolve().is_file():
                missing.append(where)
    for css in HTML.glob("_static/**/*.css"):
        text = css.read_text("utf-8", "replace")
        for url in re.findall(r"""(?:url\(|@import\s+)["']?((?:https?:)?//[^"')\s]+)""", text):
            remote.append(f"{css.relative_to(HTML)}: {url}")
    assert not remote, "the book loads from other hosts (serve these from _static):\n" + "\n".join(remote)
    assert not missing, (
        "pages load files the build does not hold (the widget manager comes from `make install`):\n"
        + "\n".join(missing)
    )


# --- A local server and a browser ---------------------------------------------------
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the test reports failed requests itself
        pass


@pytest.fixture(scope="module")
def site(html_files):
    """The base URL of ``_build/html`` served from 127.0.0.1 by a thread of this process."""
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _chromium() -> tuple[str, str] | None:
    browser = next((p for name in ("chromium", "chromium-browser") if (p := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser(site):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements.txt)")
    found = _chromium()
    if not found:
        pytest.skip("no Chromium: the browser tests need `apt-get install chromium chromium-driver` (Debian)")
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    profile = tempfile.mkdtemp(prefix="lmbook-chromium-")
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=found[1]))
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


class Visit:
    """One page opened in the browser, with the requests and console messages its loading caused."""

    def __init__(self, driver, site: str, path: str):
        self.driver, self.site = driver, site
        driver.get_log("browser"), driver.get_log("performance")  # drain what earlier pages left
        self.url = urljoin(site, path)
        driver.get(self.url)
        self.mathjax = driver.execute_async_script(_AWAIT_MATHJAX)

    def run(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait_for(self, script: str, what: str, timeout: float = WAIT_S):
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(lambda d: d.execute_script(script))
        except TimeoutException:
            pytest.fail(f"{self.url}: {what} within {timeout} s", pytrace=False)

    def problems(self) -> list[str]:
        """Console errors, failed requests and requests to other hosts, since the page was opened."""
        found = [f"console: {e['message']}" for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]
        urls = {}
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            method, params = message["method"], message.get("params", {})
            if method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                urls[params["requestId"]] = url
                if urlsplit(url).scheme in ("http", "https", "ws", "wss", "ftp") and not url.startswith(self.site):
                    found.append(f"request to another host: {url}")
            elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
                found.append(f"HTTP {params['response']['status']}: {params['response']['url']}")
            elif method == "Network.loadingFailed" and params["requestId"] in urls and not params.get("canceled"):
                found.append(f"failed ({params.get('errorText')}): {urls[params['requestId']]}")
        return found

    def screenshot(self, name: str) -> Path:
        """The whole page as ``_build/screenshots/<name>.png``; a long page in parts ``<name>-2.png``, ...

        Each part is what a reader sees scrolled to that point, in a window as tall as a part (sticky
        bars included): captures beyond the viewport lay a long page out differently and came out shifted.
        """
        driver = self.driver
        for old in SCREENSHOTS.glob(f"{name}*.png"):
            old.unlink()
        window = driver.get_window_size()
        driver.set_window_size(window["width"], SCREENSHOT_PART)
        try:
            view, height = driver.execute_script(
                "return [window.innerHeight, document.scrollingElement.scrollHeight]")
            for part, top in enumerate(range(0, height, view)):
                driver.execute_script("window.scrollTo(0, arguments[0])", top)
                shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
                path = SCREENSHOTS / (f"{name}.png" if part == 0 else f"{name}-{part + 1}.png")
                path.write_bytes(base64.b64decode(shot["data"]))
        finally:
            driver.execute_script("window.scrollTo(0, 0)")
            driver.set_window_size(window["width"], window["height"])
        return SCREENSHOTS / f"{name}.png"


# Resolves once MathJax has typeset the page (true), or at once when the page loads no MathJax (null).
_AWAIT_MATHJAX = """
const done = arguments[arguments.length - 1];
const started = Date.now();
(function wait() {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(() => done(true), (e) => done('MathJax failed: ' + e));
  } else if (!document.querySelector('script[src*="mathjax"]')) {
    done(null);
  } else if (Date.now() - started > 25000) {
    done('MathJax never started');
  } else {
    setTimeout(wait, 50);
  }
})();
"""

# Text of the page outside code, scripts and typeset math, hidden solutions included.
_PROSE_TEXT = """
const skip = 'pre, code, script, style, textarea, mjx-container, .highlight';
const walker = document.createTreeWalker(document.querySelector('main') || document.body, NodeFilter.SHOW_TEXT);
const parts = [];
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
  if (!node.parentElement.closest(skip)) parts.push(node.textContent);
}
return parts.join(' ');
"""

# Loads every image now (lazy ones too) and returns those that failed or have no size.
_BROKEN_IMAGES = """
const done = arguments[arguments.length - 1];
const images = Array.from(document.images);
images.forEach((img) => { img.loading = 'eager'; });
Promise.all(images.map((img) => img.complete ? null : new Promise((ok) => {
  img.addEventListener('load', ok); img.addEventListener('error', ok);
}))).then(() => done(images.filter((img) => !(img.complete && img.naturalWidth > 0 && img.naturalHeight > 0))
                          .map((img) => img.currentSrc || img.src || img.outerHTML.slice(0, 120))));
"""


@pytest.fixture(scope="module", params=PAGES)
def page(request, browser, site):
    """Each page of the book, opened once; the tests below look at it in turn."""
    visit = Visit(browser, site, f"{request.param}.html")
    visit.name = request.param
    return visit


@pytest.mark.parametrize("page", PAGES, indirect=True)
def test_page_renders_offline(page):
    name = page.name
    if page.mathjax not in (True, None):
        pytest.fail(f"{name}: {page.mathjax}\n" + "\n".join(page.problems()), pytrace=False)
    widgets = page.run("return document.querySelectorAll('script[type=\"application/vnd.jupyter.widget-view+json\"]')"
                       ".length")
    if widgets:  # the HTML manager puts each view in a .widget-subarea before the script that holds its id
        page.wait_for(f"return document.querySelectorAll('.widget-subarea > *').length >= {widgets}",
                      f"{widgets} saved widget views rendered")
    broken = page.driver.execute_async_script(_BROKEN_IMAGES)
    shot = page.screenshot(name.replace("/", "__"))

    # every formula typeset: each math element holds MathJax's output, none is an error, no TeX left in the text
    counts = page.run("""return {math: document.querySelectorAll('.math').length,
        typeset: document.querySelectorAll('.math mjx-container').length,
        unset: Array.from(document.querySelectorAll('.math')).filter((m) => !m.querySelector('mjx-container'))
                    .slice(0, 3).map((m) => m.textContent.slice(0, 80)),
        errors: Array.from(document.querySelectorAll('mjx-merror')).slice(0, 3).map((e) => e.textContent)}""")
    raw = RAW_TEX.findall(page.run(_PROSE_TEXT))
    assert not counts["unset"] and not counts["errors"] and not raw, (
        f"{name}: formulas not typeset: {counts['math'] - counts['typeset']} of {counts['math']} without MathJax "
        f"output {counts['unset']}, TeX errors {counts['errors']}, raw TeX in the text {raw[:5]} (see {shot})"
    )
    if page_has_math(name):
        assert counts["math"] and counts["typeset"], f"{name}: the page has formulas but none was typeset ({shot})"
    assert not broken, f"{name}: images not loaded or of zero size: {broken} ({shot})"
    problems = page.problems()
    assert not problems, f"{name}: console errors or failed requests:\n" + "\n".join(problems)


def page_has_math(page: str) -> bool:
    """Whether the page's source holds math in its prose (``$...$``, ``$$``, ``{math}``)."""
    text = page_path(page).read_text(encoding="utf-8")
    if page_path(page).suffix == ".ipynb":
        text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"] if c["cell_type"] == "markdown")
    return bool(re.search(r"\$[^$\n]+\$|\{math\}|\\begin\{", text))


# The dropdowns of a page: HTML <details> (MyST's and sphinx-design's too) and admonitions with the class
# "dropdown" (sphinx-togglebutton), each with its title and whether any of the rest of it is shown.
_DROPDOWNS = """(() => Array.from(document.querySelectorAll('main details, main .admonition.dropdown')).map((box) => {
  const title = box.querySelector(':scope > summary, :scope > .admonition-title');
  const rest = Array.from(box.children).filter((c) => c !== title && !['SCRIPT', 'STYLE'].includes(c.tagName));
  const shown = rest.some((c) => c.checkVisibility({visibilityProperty: true, opacityProperty: true}));
  return {title: title, label: title ? title.textContent.trim() : '', shown: shown};
}))()"""


@pytest.mark.parametrize("page", PAGES, indirect=True)
def test_solutions_are_closed_and_open_on_click(page):
    dropdowns = page.run(f"return {_DROPDOWNS}")
    for i, box in enumerate(dropdowns):
        label = f"{page.name}: dropdown {i + 1} of {len(dropdowns)} ({box['label']!r})"
        assert box["title"] is not None, f"{label} has no title to click"
        assert not box["shown"], f"{label} is open before it is clicked"
        page.run("arguments[0].scrollIntoView({block: 'center'})", box["title"])
        box["title"].click()
        page.wait_for(f"return {_DROPDOWNS}[{i}].shown", f"{label} opened on click", timeout=5)
    problems = page.problems()
    assert not problems, f"{page.name}: console errors or failed requests after opening the dropdowns:\n" + "\n".join(
        problems
    )


@pytest.mark.parametrize("page", sorted(NOTEBOOK_PAGES & set(PAGES)), indirect=True)
def test_launch_buttons_open_the_pages_own_notebook(page, site):
    from selenium.webdriver.common.by import By

    repository = CONFIG["repository"]["url"].rstrip("/").removeprefix("https://github.com/")
    colab = CONFIG["launch_buttons"]["colab_url"].rstrip("/")
    notebook = f"{page.name}.ipynb"
    expected = f"{colab}/github/{repository}/blob/{CONFIG['repository']['branch']}/{notebook}"
    assert (ROOT / notebook).is_file(), f"{page.name}: the launch button's notebook {notebook} is not in the repository"
    menu = page.driver.find_element(By.CSS_SELECTOR, "button[aria-label*='aunch']")
    menu.click()
    link = page.wait_for(f"return Array.from(document.querySelectorAll('a[href^=\"{colab}\"]'))"
                         ".find((a) => a.offsetParent !== null)", "a visible Colab link after opening the launch menu",
                         timeout=5)
    assert link.get_attribute("href") == expected, f"{page.name}: the Colab button opens {link.get_attribute('href')}"
    download = page.run("return Array.from(document.querySelectorAll('a[href$=\".ipynb\"]'))"
                        ".map((a) => a.href).filter((h) => h.startsWith(arguments[0]))", site)
    assert download, f"{page.name}: no download link to the notebook"
    for url in download:
        with urllib.request.urlopen(url, timeout=10) as response:  # the local server
            assert json.loads(response.read())["cells"], f"{page.name}: {url} is not the notebook"


@pytest.mark.parametrize("page", sorted(WIDGET_PAGES), indirect=True)
def test_saved_widgets_render(page):
    what = WIDGET_PAGES[page.name]
    saved = page.run("return document.querySelectorAll('script[type=\"application/vnd.jupyter.widget-state+json\"]')"
                     ".length")
    assert saved, f"{page.name}: no saved widget state in the page, so {what} cannot show (was it executed?)"
    page.wait_for("return document.querySelectorAll('.widget-subarea select').length > 0",
                  f"{what}: the saved widget (its drop-down menus) shown")
    shown = page.run("""const area = Array.from(document.querySelectorAll('.widget-subarea'))
                            .find((a) => a.querySelector('select'));
        area.scrollIntoView();
        const box = area.getBoundingClientRect();
        const images = Array.from(area.querySelectorAll('img'));
        return {width: box.width, height: box.height, selects: area.querySelectorAll('select').length,
                images: images.filter((i) => i.naturalWidth > 0 && i.offsetParent !== null).length}""")
    assert shown["width"] > 100 and shown["height"] > 100, f"{page.name}: {what} takes no room on the page: {shown}"
    assert shown["selects"] >= 2 and shown["images"] >= 1, (
        f"{page.name}: {what} is missing its menus or its figure (saved widget state not rendered): {shown}"
    )



@pytest.mark.parametrize("page", ["book/ch05_generation"], indirect=True)
def test_the_playground_shows_its_controls_and_the_text_it_wrote(page):
    """Chapter 5's playground, from its saved state: a prompt, a strategy, sliders and coloured tokens."""
    page.wait_for("return document.querySelectorAll('.widget-subarea textarea').length > 0",
                  "the generation playground (its prompt box) shown")
    shown = page.run("""const area = Array.from(document.querySelectorAll('.widget-subarea'))
                            .find((a) => a.querySelector('textarea'));
        area.scrollIntoView();
        const tokens = area.querySelectorAll('span[title^="p = "]');
        return {selects: area.querySelectorAll('select').length,
                sliders: area.querySelectorAll('.widget-slider').length,
                buttons: area.querySelectorAll('button').length, tokens: tokens.length,
                coloured: Array.from(tokens).filter((t) => getComputedStyle(t).backgroundColor !== 'rgba(0, 0, 0, 0)')
                               .length, height: area.getBoundingClientRect().height}""")
    assert shown["selects"] >= 1 and shown["sliders"] >= 4 and shown["buttons"] >= 1, (
        f"{page.name}: the playground's controls are missing: {shown}")
    assert shown["tokens"] >= 10 and shown["coloured"] == shown["tokens"], (
        f"{page.name}: the playground shows no coloured tokens from its saved state: {shown}")

def test_search_finds_attention(browser, site):
    visit = Visit(browser, site, f"search.html?q={SEARCH_TERM}")
    results = visit.wait_for("const r = document.querySelectorAll('#search-results li a');"
                             "return r.length ? Array.from(r).map((a) => a.getAttribute('href')) : null",
                             f"the search lists a result for {SEARCH_TERM!r}")
    visit.screenshot("search")
    assert any("ch03_attention" in href for href in results), f"search for {SEARCH_TERM!r} misses chapter 3: {results}"
    problems = visit.problems()
    assert not problems, "search page: console errors or failed requests:\n" + "\n".join(problems)
