"""The book: its notebooks are clean, each one executes, and the book builds with warnings as errors.

Notebooks are committed without outputs. The tests marked ``book`` execute each
notebook of ``_toc.yml`` once (``LMBOOK_SIZE=fast`` unless the variable is set) into a
mirror of the book under ``_build/exec/``, then build the HTML from that mirror into
``_build/html/``. The source tree is never written to. The notebooks run one at a time, or
``LMBOOK_LANES`` at a time (``tests/lanes.py``; ``make test`` and CI run two).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
import yaml
from lmbook.display.show import plural
from lmbook.runs.zoo import RECIPES, TRAINING_ANEW

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
BUILD = ROOT / "_build"
EXEC = BUILD / "exec"  # the executed mirror the book is built from
HTML = BUILD / "html"
MODELS = BUILD / "models"  # the trained models the chapters share (lmbook.runs.zoo), new for every build
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
CELL_TIMEOUT = CONFIG["execute"]["timeout"]
LANES_VARIABLE = "LMBOOK_LANES"
ANSI_COLOURS = re.compile(r"\x1b\[[0-9;]*m")

# The first code cell of every notebook: in Colab it installs the package (torch is
# already there and must not be reinstalled); everywhere it prints versions and device.
SETUP_CELL = """\
import sys
if "google.colab" in sys.modules:  # Colab has torch already; add the book's package, from this notebook's branch
    %pip install -q "lmbook @ git+https://github.com/lmbook/lmbook@main"
from lmbook.runtime import show_environment
show_environment()"""


def toc_entries(node=TOC) -> list[str]:
    """Every page named in ``_toc.yml`` (root, chapters, sections, parts), in order, without suffix."""
    found = []
    if isinstance(node, dict):
        for key in ("root", "file"):
            if key in node:
                found.append(str(node[key]))
        for value in node.values():
            if isinstance(value, (list, dict)):
                found += toc_entries(value)
    elif isinstance(node, list):
        for item in node:
            found += toc_entries(item)
    return found


def page_path(entry: str) -> Path | None:
    """The file a toc entry stands for (``.ipynb`` or ``.md``), or ``None`` if there is none."""
    path = ROOT / entry
    for candidate in (path, path.with_suffix(".ipynb"), path.with_suffix(".md")):
        if candidate.is_file():
            return candidate
    return None


NOTEBOOKS = [p.relative_to(ROOT) for e in toc_entries() if (p := page_path(e)) and p.suffix == ".ipynb"]
BOOK_NOTEBOOKS = sorted(p for p in BOOK.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def notebook_id(path: Path) -> str:
    return path.relative_to("book").with_suffix("").as_posix() if path.parts[0] == "book" else path.as_posix()


# --- Cheap checks: they run with the unit tests ------------------------------------
@pytest.mark.parametrize("path", BOOK_NOTEBOOKS, ids=lambda p: notebook_id(p.relative_to(ROOT)))
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty and "widgets" not in nb.metadata, (
        f"{path.relative_to(ROOT)}: cells {dirty} hold outputs or execution counts, or widget state is stored. "
        "Notebooks are committed stripped (the tests execute them): clear all outputs before committing."
    )


@pytest.mark.parametrize("path", BOOK_NOTEBOOKS, ids=lambda p: notebook_id(p.relative_to(ROOT)))
def test_notebook_starts_with_the_setup_cell(path):
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert cells, f"{path.relative_to(ROOT)} has no code cell"
    assert cells[0].source.strip() == SETUP_CELL, (
        f"the first code cell of {path.relative_to(ROOT)} must be the standard setup cell "
        f"(tests/test_book.py, SETUP_CELL):\n{SETUP_CELL}"
    )


def test_toc_and_book_folder_agree():
    entries = toc_entries()
    assert entries, "_toc.yml names no page"
    assert len(entries) == len(set(entries)), f"a page is listed twice in _toc.yml: {entries}"
    missing = [e for e in entries if page_path(e) is None]
    assert not missing, f"_toc.yml names pages that do not exist: {missing}"
    listed = {page_path(e) for e in entries}
    orphans = [str(p.relative_to(ROOT)) for p in BOOK_NOTEBOOKS if p not in listed]
    assert not orphans, f"notebooks not in _toc.yml (add them, or they are neither built nor tested): {orphans}"


def test_config_turns_execution_off():
    value = CONFIG["execute"]["execute_notebooks"]
    assert value == "off", (
        f"_config.yml: execute.execute_notebooks is {value!r}; it must be the string \"off\" (quoted: "
        "a bare off is YAML's false): the tests execute the notebooks, the build only renders them."
    )


# --- The book: execute every notebook, then build ----------------------------------
def corpus_or_exit() -> None:
    """Find (or, online, download) the corpus once, before any notebook runs; without it, stop the whole run with
    the one message that says what to do, instead of the same error once per notebook.

    It runs in a child process: this process refuses the network (tests/conftest.py), the notebooks do not."""
    check = ("import sys\nfrom lmbook.text.data import DataUnavailableError, load_shakespeare\n"
             "try:\n    load_shakespeare()\nexcept DataUnavailableError as err:\n    sys.exit(str(err))")
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path})
    if done.returncode != 0:
        pytest.exit(f"the chapters cannot run without their corpus; no notebook was executed.\n{done.stderr.strip()}",
                    returncode=1)


def fresh_exec_tree() -> Path:
    """A fresh mirror of the book's sources in ``_build/exec``, without notebooks until they run.

    It holds ``_config.yml``, ``_toc.yml``, every other file under ``book/`` and the
    package's sources (for ``literalinclude``); each notebook is added once executed.
    """
    corpus_or_exit()
    for folder in (EXEC, MODELS, HTML):  # the old HTML too: nothing may test a book this run did not build
        if folder.exists():
            shutil.rmtree(folder)
    ignore = shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints", "__pycache__")
    shutil.copytree(BOOK, EXEC / "book", ignore=ignore)
    shutil.copytree(ROOT / "lmbook", EXEC / "lmbook", ignore=ignore)
    for name in ("_config.yml", "_toc.yml", "references.bib"):
        shutil.copy2(ROOT / name, EXEC / name)
    return EXEC


@pytest.fixture(scope="session")
def exec_tree() -> Path:
    return fresh_exec_tree()


def test_a_new_build_starts_without_the_last_ones_html(tmp_path, monkeypatch):
    """The browser tests must test the book this run builds: a failed build leaves no old HTML behind."""
    import test_book

    for name in ("EXEC", "MODELS", "HTML"):
        monkeypatch.setattr(test_book, name, tmp_path / name.lower())
        (tmp_path / name.lower()).mkdir()
    (tmp_path / "html" / "index.html").write_text("an older book", encoding="utf-8")
    monkeypatch.setattr(test_book, "corpus_or_exit", lambda: None)
    built = test_book.fresh_exec_tree()
    assert not (tmp_path / "html").exists() and (built / "book").is_dir() and (built / "_toc.yml").is_file()


@dataclass
class Executed:
    """A notebook as it ran: the executed copy, the failing cell's error (or None) and the seconds it took."""

    nb: nbformat.NotebookNode
    error: str | None
    seconds: float


def lanes() -> int:
    """How many notebooks run at once: ``LMBOOK_LANES`` (tests/lanes.py), 1 when unset."""
    value = os.environ.get(LANES_VARIABLE) or "1"
    if not value.isdigit() or int(value) < 1:
        raise pytest.UsageError(f"{LANES_VARIABLE}={value!r}: give how many notebooks run at once, 1 or more")
    return int(value)


def kernel_env(threads: int | None) -> dict[str, str]:
    """The kernel's environment: this one, with the size, the zoo's folder, this checkout on the path and, in
    lanes, the kernel's share of the cores."""
    env = {**os.environ, "LMBOOK_SIZE": os.environ.get("LMBOOK_SIZE") or "fast",
           "LMBOOK_CACHE": str(MODELS),  # chapters 2-4 leave their models there for chapters 5-8
           # the kernel imports this checkout's lmbook, installed or not
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return env


async def execute(notebook: Path, threads: int | None = None) -> Executed:
    """Execute one notebook into the mirror (``_build/exec``), in a new kernel; write its executed copy."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    target = EXEC / notebook
    target.parent.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(ROOT / notebook, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(target.parent)}},  # runs in the mirror: writes stay in _build
        store_widget_state=True,
    )
    start = time.perf_counter()
    try:
        await client.async_execute(env=kernel_env(threads))
        error = None
    except CellExecutionError as err:
        error = ANSI_COLOURS.sub("", str(err))  # the failing cell and its traceback, readable in any log
    seconds = time.perf_counter() - start
    if error is None:
        nbformat.write(nb, target)
    return Executed(nb, error, seconds)


def selected_notebooks(session) -> list[Path]:
    """The notebooks whose execution this pytest run selected, in book order."""
    return [item.callspec.params["notebook"] for item in session.items
            if getattr(item, "originalname", "") == "test_notebook_executes"]


def zoo_owners() -> set[Path]:
    """The pages that train the model zoo's models (``lmbook.runs.zoo.RECIPES``)."""
    return {Path("book") / f"{recipe.chapter}.ipynb" for recipe in RECIPES.values()}


@pytest.fixture(scope="session")
def executed_in_lanes(request, exec_tree) -> dict[Path, Executed]:
    """Every notebook this run selected, executed ``lanes()`` at a time (tests/lanes.py); it prints progress, so
    it is asked for with the output capture off."""
    from lanes import plan, run_lanes

    codes = {nb: "\n".join(c.source for c in nbformat.read(ROOT / nb, as_version=4).cells if c.cell_type == "code")
             for nb in selected_notebooks(request.session)}
    order, needs = plan(codes, zoo_owners())
    count, threads = lanes(), max(1, (os.cpu_count() or 1) // lanes())

    async def one(notebook: Path, lane: int) -> Executed:
        print(f"{notebook}: executing in lane {lane} ({plural(threads, 'thread')}) ...", flush=True)
        try:
            done = await execute(notebook, threads)
        except Exception as err:  # a dead kernel or a cell's timeout fails this page, not the pages beside it
            done = Executed(nbformat.read(ROOT / notebook, as_version=4), f"{type(err).__name__}: {err}", 0.0)
        print(f"{notebook}: {'failed' if done.error else 'executed'} in {done.seconds:.1f} s", flush=True)
        return done

    print(f"\nexecuting {len(order)} notebooks, {count} at a time (LMBOOK_LANES) ...", flush=True)
    return asyncio.run(run_lanes(order, needs, count, one))


@pytest.mark.book
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=notebook_id)
def test_notebook_executes(notebook, exec_tree, request, record_property, capsys):
    size = os.environ.get("LMBOOK_SIZE") or "fast"
    if lanes() > 1:
        with capsys.disabled():  # the first one runs them all, with progress
            done = request.getfixturevalue("executed_in_lanes")[notebook]
    else:
        with capsys.disabled():  # announced as it starts, not after: a chapter takes minutes
            print(f"\n{notebook}: executing (LMBOOK_SIZE={size}) ...", flush=True)
        done = asyncio.run(execute(notebook))
        with capsys.disabled():
            print(f"{notebook}: {'failed' if done.error else 'executed'} in {done.seconds:.1f} s", flush=True)
    record_property("seconds", round(done.seconds, 1))
    if done.error:
        pytest.fail(f"{notebook} failed (LMBOOK_SIZE={size}):\n{done.error}", pytrace=False)
    if not zoo_owners() <= set(selected_notebooks(request.session)):
        return  # a page run without the pages that train the zoo trains what it reads, as a reader's would
    anew = [line for line in stream_lines(done.nb) if TRAINING_ANEW in line]
    assert not anew, (f"{notebook} trained a model of the zoo that another page trains, and should have loaded "
                      f"it: {anew}. Its page must run after that one (book order, or the needs in tests/lanes.py).")


def stream_lines(nb) -> list[str]:
    """Every line a notebook's cells printed (stdout and stderr)."""
    return [line for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
            if out.get("output_type") == "stream" for line in out.get("text", "").splitlines()]


@pytest.mark.book
def test_book_builds(exec_tree, capsys):
    missing = [str(nb) for nb in NOTEBOOKS if not (exec_tree / nb).exists()]
    if missing:
        pytest.fail(
            f"no executed copy of {', '.join(missing)}: its execution test failed or did not run. The book is "
            "built only from executed notebooks: run all of them with the build (python -m pytest -m book).",
            pytrace=False,
        )
    jupyter_book = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or shutil.which("jupyter-book")
    assert jupyter_book, "jupyter-book is not installed: python -m pip install -r requirements.txt"
    command = [jupyter_book, "build", str(exec_tree), "--path-output", str(ROOT), "--all", "-n", "-W", "--keep-going"]
    with capsys.disabled():
        print("\nbuilding the book with jupyter-book ...", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    with capsys.disabled():
        print(f"book built in {time.perf_counter() - start:.1f} s: {HTML / 'index.html'}", flush=True)
    log = (done.stdout + done.stderr).splitlines()
    warnings = [line for line in log if "WARNING" in line or "ERROR" in line]
    if done.returncode != 0:
        pytest.fail(
            f"jupyter-book build failed (exit {done.returncode}); warnings count as errors.\n"
            + ("Warnings and errors:\n" + "\n".join(warnings) + "\n" if warnings else "")
            + "End of the build log:\n"
            + "\n".join(log[-40:]),
            pytrace=False,
        )
    assert (HTML / "index.html").is_file(), f"the build succeeded but wrote no {HTML / 'index.html'}"

    # each notebook page has an "Open in Colab" button that opens that notebook on the main branch
    repository = CONFIG["repository"]["url"].removeprefix("https://github.com/").rstrip("/")
    colab = CONFIG["launch_buttons"]["colab_url"].rstrip("/")
    for nb in NOTEBOOKS:
        page = (HTML / nb).with_suffix(".html").read_text(encoding="utf-8")
        link = f"{colab}/github/{repository}/blob/{CONFIG['repository']['branch']}/{nb.as_posix()}"
        assert link in page, f"{nb.with_suffix('.html')} has no launch button to {link}"

    # a Markdown table printed by a cell (display(Markdown(...))) renders as a table, not as its source
    raw_table = re.compile(r"<p>\|[^<]*\n\|\s*[-—:]+\s*\|")
    pages = {nb: (HTML / nb).with_suffix(".html").read_text(encoding="utf-8") for nb in NOTEBOOKS}
    flat = [str(nb) for nb, page in pages.items() if raw_table.search(page)]
    assert not flat, (f"Markdown tables shown as plain text in {flat}: the outputs' Markdown is parsed as "
                      "_config.yml's sphinx.config.nb_render_markdown_format says (myst has tables)")
