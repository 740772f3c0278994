"""Executing the book's notebooks in lanes: several pages at once, each kernel with its share of the cores.

The chapters are small enough that a kernel gains little from a second core (chapter 3b: 37 s on two
threads, 44 s on one, with a second page running beside it), so two pages side by side on one thread
each finish sooner than the same pages one after the other on two. ``tests/test_book.py`` runs them so
when ``LMBOOK_LANES`` is above 1 (``make test`` and CI: 2). ``make book`` keeps one lane: the pages'
timings (tokens per second, the speed runs) are then measured with nothing running beside them.

One order holds in every lane: a page that reads the model zoo (:mod:`lmbook.runs.zoo`) starts only when
every page that trains a zoo model (the chapters named by ``zoo.RECIPES``) has ended, so it loads those
models instead of training them again. A page reads the zoo if its code, or a module of ``lmbook`` it
imports, imports :mod:`lmbook.runs.zoo`. The other pages start in reverse book order: the later chapters
are the longer ones, and a lane that ends on a long page leaves the other lane idle meanwhile.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
from pathlib import Path
from typing import Awaitable, Callable

IMPORT = re.compile(r"^[ \t]*(?:from\s+(lmbook(?:\.\w+)*)\s+import\s+(?:\(([\w\s,]+)\)|([\w \t,]+))"
                    r"|import\s+(lmbook(?:\.\w+)*))", re.M)
ZOO_IMPORT = re.compile(r"from\s+(?:\.|\.\.runs\.|lmbook\.runs\.)zoo\s+import|from\s+(?:\.|lmbook\.runs)\s+import\s+"
                        r"[^\n]*\bzoo\b|import\s+lmbook\.runs\.zoo")


def imported_modules(code: str) -> set[str]:
    """The ``lmbook`` modules some code imports: ``from lmbook.runs import ch06_evaluation as ch06`` names both
    ``lmbook.runs`` and ``lmbook.runs.ch06_evaluation``."""
    found = set()
    for package, grouped, names, plain in IMPORT.findall(code):
        found.add(plain or package)
        spec = None if plain else _spec(package)
        if spec is None or spec.submodule_search_locations is None:  # names from a module are not modules
            continue
        for name in (grouped or names).split(","):
            words = name.split()
            if words and _spec(f"{package}.{words[0]}"):
                found.add(f"{package}.{words[0]}")
    return found


def _spec(name: str):
    """Where module ``name`` would be imported from (its parent packages are imported), or None."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def reads_zoo(code: str) -> bool:
    """Whether code imports :mod:`lmbook.runs.zoo`, itself or through a module of ``lmbook`` it imports."""
    if ZOO_IMPORT.search(code):
        return True
    for module in imported_modules(code):
        spec = _spec(module)
        if spec and spec.origin and spec.origin.endswith(".py"):
            if ZOO_IMPORT.search(Path(spec.origin).read_text(encoding="utf-8")):
                return True
    return False


def plan(pages: dict[Path, str], owners: set[Path]) -> tuple[list[Path], dict[Path, set[Path]]]:
    """The order pages start in and what each waits for, from each page's code and the zoo's owner pages."""
    needs = {page: (set(owners) & set(pages)) - {page} if page not in owners and reads_zoo(code) else set()
             for page, code in pages.items()}
    book_order = list(pages)
    order = ([p for p in book_order if p in owners]
             + [p for p in reversed(book_order) if p not in owners and not needs[p]]
             + [p for p in reversed(book_order) if needs[p]])
    return order, needs


async def run_lanes(order: list[Path], needs: dict[Path, set[Path]], lanes: int,
                    execute: Callable[[Path, int], Awaitable[object]]) -> dict[Path, object]:
    """Run ``execute(page, lane)`` for every page, at most ``lanes`` at once, each page after what it needs.

    Each lane takes the first page of ``order`` whose needs have all ended (failed or not: a page that
    failed leaves its models untrained and the pages after it train them, slowly but correctly)."""
    if lanes < 1:
        raise ValueError(f"lanes must be at least 1, not {lanes}")
    unknown = {n for page in order for n in needs.get(page, ())} - set(order)
    if unknown:
        raise ValueError(f"pages wait for pages that are not run: {sorted(map(str, unknown))}")
    waiting, running, ended, results = list(order), set(), set(), {}
    changed = asyncio.Condition()

    def ready() -> list[Path]:
        return [p for p in waiting if needs.get(p, set()) <= ended]

    async def lane(number: int) -> None:
        while True:
            async with changed:
                await changed.wait_for(lambda: not waiting or ready() or not running)
                if not waiting:
                    return
                if not ready():
                    raise ValueError(f"pages wait for each other and none can start: {sorted(map(str, waiting))}")
                page = ready()[0]
                waiting.remove(page)
                running.add(page)
            try:
                results[page] = await execute(page, number)
            finally:
                async with changed:
                    running.discard(page)
                    ended.add(page)
                    changed.notify_all()

    await asyncio.gather(*(lane(number) for number in range(1, lanes + 1)))
    return results
