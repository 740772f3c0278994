"""Run chapters the way a Google Colab reader does, offline: one notebook alone, a fresh runtime, ``%pip install``.

A Colab reader opens one notebook by itself, with no repository around it, in a
runtime that already has torch. The notebook's first code cell (the setup cell,
``tests/test_book.py``) sees ``google.colab`` in ``sys.modules`` and runs
``%pip install -q "lmbook @ git+https://github.com/lmbook/lmbook@<ref>"``; every
later cell imports ``lmbook`` from that install. This script does the same here:

1. A fresh virtual environment in a temporary folder (``/dev/shm`` when it has room,
   see :func:`scratch`) with ``torch==2.13.0`` (the machine's local CPU wheel,
   installed without bytecode, standing in for Colab's preinstalled torch) and only
   what a kernel needs: ``ipykernel``, ``nbclient``, ``nbformat``. Not lmbook, nor
   any of its other dependencies: the notebook's own ``%pip install`` brings them
   (from PyPI, through pip's cache). Its kernel is installed into the environment
   as ``colab-path`` and every notebook runs on it.
2. The setup cell's git URL is read from the notebook (not hard-coded) and sent to
   this repository with a temporary git config (``url.<file:///repo>.insteadOf
   <URL>``, through ``GIT_CONFIG_GLOBAL``), so pip clones locally. The ref the cell
   names (``main``, a tag, a commit) must exist here, or the run stops naming it.
   pip installs the *committed* state of that ref, not the working tree.
3. Each notebook is copied alone into an empty folder, the kernel's working
   directory, and executed with nbclient. Two cells are injected, and kept in the
   executed copy (their first line says so):

   - first: ``sys.modules["google.colab"] = types.ModuleType("google.colab")``, with a
     ``__spec__`` (``importlib.machinery.ModuleSpec("google.colab", None)``), so that the
     setup cell takes its Colab branch and installs lmbook. Without the spec, accelerate's
     ``importlib.util.find_spec("google.colab")`` raises ValueError (chapter 4's Trainer);
   - last: a cell that prints, as one JSON line, where ``lmbook`` was imported
     from, the kernel's ``sys.prefix``, torch's version and pip's record of the
     install (``direct_url.json``). The run fails unless lmbook came from the fresh
     environment's site-packages and torch is still the preinstalled one.

   The kernel's environment: ``LMBOOK_SIZE=fast`` (or the caller's), ``HF_HUB_OFFLINE=1``,
   ``LMBOOK_DATA`` as the caller has it (the corpus; Colab would download it),
   ``LMBOOK_CACHE`` a new folder shared by all the notebooks of one run (chapters
   5-7 read models that chapters 2-4 leave there), ``PYTHONPATH`` unset, the fresh
   environment first on ``PATH`` and a new ``IPYTHONDIR`` (no profile of yours).
4. The executed notebooks are written to ``_build/colab/`` (also when one fails);
   the first failure stops the run with the failing cell's error.

Not emulated: Colab's other preinstalled packages (numpy, transformers, pandas, ...
are *not* in the environment; starting from torch alone is stricter), its Python
version, ``/content`` as the working directory, its GPU, and its network (the
corpus comes from ``LMBOOK_DATA``, the hub is offline). The environment is made
once per run and shared by its notebooks; lmbook is uninstalled before each one,
so each notebook's own setup cell installs it again (its dependencies stay).

Usage, with the project's development environment (it imports nbclient, yaml and
``tests/test_book.py``)::

    python tests/colab_path.py [NOTEBOOK ...] [--all] [--out DIR] [--keep-venv DIR] [--repo DIR]

Without notebooks it runs ``book/quickstart.ipynb`` (every chapter starts with the same setup cell);
``--all`` runs every notebook of ``_toc.yml`` in order. ``--keep-venv DIR`` makes the
environment in DIR and keeps it; an existing one is reused, for quick reruns, but it
is then no longer fresh (lmbook's dependencies are already there).
``--repo DIR`` runs the notebooks and the git install of another checkout, e.g. a
clean ``git worktree`` of HEAD. ``tests/test_colab_path.py`` runs the default.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import nbformat
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_book import ANSI_COLOURS, CELL_TIMEOUT, ROOT, toc_entries  # the book tests' helpers
from lmbook.display.show import plural

TORCH = "torch==2.13.0"  # what CI installs; a local CPU wheel on this machine
KERNEL_PACKAGES = ["ipykernel", "nbclient", "nbformat"]  # what a runtime needs to run a notebook, no more
KERNEL_NAME = "colab-path"
# The quick start alone: every chapter opens with the same setup cell (tests/test_book.py checks it), so one
# notebook tests the install; `--all` runs every chapter this way, which takes as long as the book.
DEFAULT_NOTEBOOKS = ["book/quickstart.ipynb"]
DEFAULT_OUT = ROOT / "_build" / "colab"

# the setup cell's install: %pip install -q "lmbook @ git+https://github.com/lmbook/lmbook@main"
PIP_GIT = re.compile(r'%pip install[^\n]*?"lmbook @ git\+(?P<url>https://[^@"\s]+)@(?P<ref>[^"\s]+)"')

MARK = "# injected by tests/colab_path.py"
COLAB_CELL = f"""{MARK}: Colab's runtime has this module, so the setup cell takes its Colab branch
import importlib.machinery, sys, types
colab = types.ModuleType("google.colab")
colab.__spec__ = importlib.machinery.ModuleSpec("google.colab", None)  # accelerate asks importlib.util.find_spec
sys.modules["google.colab"] = colab"""
WHERE_CELL = f"""{MARK}: where lmbook and torch came from
import importlib.metadata, json, sys
import lmbook, torch
direct_url = importlib.metadata.distribution("lmbook").read_text("direct_url.json") or "{{}}"
print(json.dumps({{"lmbook": lmbook.__file__, "prefix": sys.prefix, "torch": torch.__version__,
                  "direct_url": json.loads(direct_url)}}))"""


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)  # at once: a chapter takes minutes


class ColabPathError(RuntimeError):
    """A notebook did not run the Colab way (its message says which, and why)."""


@dataclass
class Runtime:
    """The fresh environment standing in for a Colab runtime."""

    venv: Path
    python: Path
    site_packages: Path
    torch: str  # the preinstalled version, which the notebooks' install must keep


def toc_notebooks(repo: Path) -> list[str]:
    """Every notebook of ``repo``'s ``_toc.yml``, in order, relative to ``repo``."""
    toc = yaml.safe_load((repo / "_toc.yml").read_text(encoding="utf-8"))
    return [f"{entry}.ipynb" for entry in toc_entries(toc) if (repo / f"{entry}.ipynb").is_file()]


def setup_install(nb) -> tuple[str, str]:
    """The git URL and ref that the notebook's first code cell installs lmbook from."""
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    found = PIP_GIT.search(code[0].source) if code else None
    if not found:
        raise ColabPathError('the first code cell has no %pip install "lmbook @ git+https://...@REF": '
                             "a Colab reader would have no lmbook (see SETUP_CELL in tests/test_book.py)")
    return found["url"], found["ref"]


def check_ref(repo: Path, ref: str) -> str:
    """The commit that ``ref`` (a branch, a tag or a commit) names in ``repo``; fails when there is none."""
    for name in (f"refs/heads/{ref}", f"refs/tags/{ref}", ref):
        if name == ref and not re.fullmatch(r"[0-9a-f]{7,40}", ref):
            continue  # only a commit is looked up bare: a clone has no remote-tracking branches of this repo
        done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"],
                              check=False, capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout.strip()
    raise ColabPathError(f"the setup cell installs lmbook from ref {ref!r}, which is no branch, tag or commit of "
                         f"{repo}: a Colab reader's %pip install would fail. Name a ref that exists (the book's "
                         f"branch, main) in the setup cell, or create {ref!r}.")


def scratch() -> str | None:
    """Where the temporary runtime goes: ``$TMPDIR`` if set, else ``/dev/shm`` when it has room, else ``/tmp``.

    In memory because removing a 1.7 GB environment from a disk mounted with ``discard`` (as here and in CI)
    took 55-90 s, minutes after it was written; from ``/dev/shm``, no time at all.
    """
    if os.environ.get("TMPDIR"):
        return None  # tempfile's choice
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 8 * 2**30 else None


def run_quiet(command: list, **kwargs) -> None:
    """Run a command; on failure raise with its output."""
    done = subprocess.run([str(c) for c in command], check=False, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise ColabPathError(f"{' '.join(map(str, command))} failed (exit {done.returncode}):\n"
                             f"{done.stdout[-3000:]}{done.stderr[-3000:]}")


def make_runtime(venv: Path, log=say) -> Runtime:
    """A virtual environment in ``venv`` with torch and a kernel only (an existing one is reused)."""
    start = time.perf_counter()
    python = venv / "bin" / "python"
    if not python.exists():
        run_quiet([sys.executable, "-m", "venv", venv])  # from a venv's python too: venv builds on the base
    # no bytecode now (Colab's torch is there already; only what is imported gets compiled): half the time
    run_quiet([python, "-m", "pip", "install", "-q", "--no-compile", TORCH, *KERNEL_PACKAGES])
    run_quiet([python, "-m", "ipykernel", "install", "--prefix", venv, "--name", KERNEL_NAME,
               "--display-name", "Python 3 (Colab path)"])
    probe_code = ("import json, sysconfig, torch; "
                  "print(json.dumps([sysconfig.get_paths()['purelib'], torch.__version__]))")
    probe = subprocess.run([python, "-c", probe_code], capture_output=True, text=True, check=True)
    site_packages, torch_version = json.loads(probe.stdout)
    log(f"runtime: {venv} with torch {torch_version} and {', '.join(KERNEL_PACKAGES)} "
        f"({time.perf_counter() - start:.0f} s)")
    return Runtime(venv, python, Path(site_packages), torch_version)


def kernel_env(runtime: Runtime, gitconfig: Path, cache: Path, ipython_dir: Path) -> dict[str, str]:
    """The kernel's environment: the caller's, less what would let the repository or its venv in."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "JUPYTER_PATH", "CONDA_PREFIX")}
    own_bin = str(Path(sys.prefix) / "bin") if sys.prefix != sys.base_prefix else None  # the caller's venv
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != own_bin]  # ... leaves PATH
    env.update(
        PATH=os.pathsep.join([str(runtime.venv / "bin"), *path]),
        VIRTUAL_ENV=str(runtime.venv),
        GIT_CONFIG_GLOBAL=str(gitconfig),
        LMBOOK_SIZE=os.environ.get("LMBOOK_SIZE") or "fast",
        LMBOOK_CACHE=str(cache),
        HF_HUB_OFFLINE="1",
        IPYTHONDIR=str(ipython_dir),
    )
    return env


def check_where(nb, runtime: Runtime) -> dict:
    """The injected last cell's report; fails unless lmbook came from the runtime and torch was kept."""
    lines = "".join(out.get("text", "") for out in nb.cells[-1].get("outputs", []) if out.output_type == "stream")
    where = json.loads(lines.strip().splitlines()[-1])
    lmbook_file = Path(where["lmbook"]).resolve()
    if not lmbook_file.is_relative_to(runtime.site_packages.resolve()):
        raise ColabPathError(f"lmbook was imported from {lmbook_file}, not from the fresh environment's "
                             f"{runtime.site_packages}: the notebook did not use the package it installed")
    if Path(where["prefix"]).resolve() != runtime.venv.resolve():
        raise ColabPathError(f"the kernel ran in {where['prefix']}, not in the fresh environment {runtime.venv}")
    if where["torch"] != runtime.torch:
        raise ColabPathError(f"the install replaced the preinstalled torch {runtime.torch} by {where['torch']}; "
                             "on Colab that would throw away its CUDA build")
    return where


def run_notebook(notebook: Path, repo: Path, runtime: Runtime, workdir: Path, cache: Path, out: Path) -> dict:
    """Execute one notebook the Colab way; write it to ``out``; return the injected last cell's report."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(notebook, as_version=4)
    url, ref = setup_install(nb)
    check_ref(repo, ref)
    gitconfig = workdir / "gitconfig"
    gitconfig.write_text(f'[url "{repo.resolve().as_uri()}"]\n\tinsteadOf = {url}\n'
                         f"[safe]\n\tdirectory = {repo.resolve()}\n", encoding="utf-8")  # whoever owns it

    # the reader's runtime: an empty folder with the notebook alone; lmbook installed by nobody yet
    folder = workdir / f"content-{notebook.stem}"
    folder.mkdir()
    shutil.copy2(notebook, folder / notebook.name)
    run_quiet([runtime.python, "-m", "pip", "uninstall", "-y", "-q", "lmbook"])

    nb.cells.insert(0, nbformat.v4.new_code_cell(COLAB_CELL))
    nb.cells.append(nbformat.v4.new_code_cell(WHERE_CELL))
    specs = KernelSpecManager(kernel_dirs=[str(runtime.venv / "share" / "jupyter" / "kernels")])
    client = NotebookClient(nb, km=AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs),
                            timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(folder)}})
    env = kernel_env(runtime, gitconfig, cache, workdir / "ipython")
    out.mkdir(parents=True, exist_ok=True)
    try:
        client.execute(env=env, cwd=str(folder), cleanup_kc=True)  # cleanup_kc: the kernel ends with the run
    except CellExecutionError as err:
        raise ColabPathError(f"{notebook.name} failed the Colab way (lmbook from {url}@{ref}):\n"
                             f"{ANSI_COLOURS.sub('', str(err))}") from None
    except Exception as err:  # a cell timed out, the kernel died or did not start
        raise ColabPathError(f"{notebook.name} failed the Colab way: {type(err).__name__}: {err}") from None
    finally:
        nbformat.write(nb, out / notebook.name)
    where = check_where(nb, runtime)
    setup = [cell for cell in nb.cells if cell.cell_type == "code"][1]  # the first is the injected one
    timing = setup.metadata.get("execution", {})  # nbclient's record: when the cell started and ended
    stamps = [timing.get(key) for key in ("iopub.execute_input", "shell.execute_reply")]
    if all(stamps):
        begin, end = (datetime.fromisoformat(stamp.replace("Z", "+00:00")) for stamp in stamps)  # 3.10 has no Z
        where["install_seconds"] = (end - begin).total_seconds()
    return where


def run_colab_path(notebooks=DEFAULT_NOTEBOOKS, *, repo: Path = ROOT, out: Path = DEFAULT_OUT,
                   keep_venv: Path | None = None, log=say) -> dict[str, float]:
    """Run ``notebooks`` (paths relative to ``repo``) the Colab way, in order; their seconds, with the total.

    Raises :class:`ColabPathError` at the first notebook that fails, with the failing cell's error.
    """
    start = time.perf_counter()
    repo = Path(repo).resolve()
    if not (repo / ".git").exists():
        raise ColabPathError(f"{repo} is no git repository: the setup cell's git install needs one")
    paths = [p if p.is_absolute() else repo / p for p in map(Path, notebooks)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ColabPathError(f"no such notebook: {', '.join(missing)}")
    times = {}
    tmp = Path(tempfile.mkdtemp(prefix="colab-path-", dir=scratch()))  # the runtime, caches, a folder a notebook
    try:
        runtime = make_runtime(Path(keep_venv).resolve() if keep_venv else tmp / "venv", log)
        cache = tmp / "lmbook-cache"  # one for the whole run: later chapters read earlier chapters' models
        cache.mkdir()
        size = os.environ.get("LMBOOK_SIZE") or "fast"
        for path in paths:
            log(f"{path.relative_to(repo) if path.is_relative_to(repo) else path}: executing the Colab way "
                f"(LMBOOK_SIZE={size}) ...")
            begin = time.perf_counter()
            where = run_notebook(path, repo, runtime, tmp, cache, Path(out))
            times[path.name] = time.perf_counter() - begin
            vcs = where["direct_url"].get("vcs_info", {})
            log(f"{path.name}: executed in {times[path.name]:.0f} s (its setup cell's install "
                f"{where.get('install_seconds', float('nan')):.0f} s); lmbook from {where['direct_url'].get('url')}"
                f"@{vcs.get('requested_revision')} (commit {vcs.get('commit_id', '?')[:10]}), "
                f"imported from {where['lmbook']}; torch {where['torch']}")
    finally:
        begin = time.perf_counter()
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"removed {tmp} in {time.perf_counter() - begin:.0f} s")
    times["total"] = time.perf_counter() - start
    log(f"Colab path: {plural(len(paths), 'notebook')} in {times['total']:.0f} s in all; executed copies in {out}")
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help=f"notebooks, relative to the repository "
                        f"(default: {' '.join(DEFAULT_NOTEBOOKS)})")
    parser.add_argument("--all", action="store_true", help="every notebook of _toc.yml, in order")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the executed notebooks go "
                        "(default: _build/colab)")
    parser.add_argument("--keep-venv", type=Path, metavar="DIR",
                        help="make the fresh environment in DIR and keep it (an existing one is reused)")
    parser.add_argument("--repo", type=Path, default=ROOT,
                        help="the repository whose notebooks run and whose git refs pip installs (default: this one)")
    args = parser.parse_args(argv)
    if args.all and args.notebooks:
        parser.error("give notebooks or --all, not both")
    notebooks = toc_notebooks(args.repo) if args.all else args.notebooks or DEFAULT_NOTEBOOKS
    try:
        run_colab_path(notebooks, repo=args.repo, out=args.out, keep_venv=args.keep_venv)
    except ColabPathError as err:
        print(f"\nCOLAB PATH FAILED: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
