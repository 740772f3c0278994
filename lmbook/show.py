"""What a chapter shows its reader besides plots: the package's own code, and the numbers its prose quotes.

Every chapter reads in three places: the built book, Jupyter and Colab. MyST directives and roles
(``literalinclude``, ``{glue:text}``) work only in the first, so the chapters show the package through
cell outputs instead, which look the same everywhere:

- :func:`show_source` prints the source of a function or class of the installed package as a Python code
  block, with the file it comes from: the code the prose explains, never a copy of it;
- :func:`report` hands a dict of results to the prose (myst-nb's ``glue``, through :func:`lmbook.viz.glue`)
  and prints them in the same cell, so that a reader without the book's build sees every number and every
  computed verdict the prose quotes, under the name the prose uses;
- :func:`than`, :func:`ordering` and :func:`trend` give the words of a verdict (``lower``, ``a (1.9) < b (2.1)``,
  ``falls until n = 4, then rises``) computed from the results, so that a sentence holds whatever the run gave.

Used by every chapter.
"""

from __future__ import annotations

import inspect
import itertools
import math
import numbers
import re
import textwrap
from collections.abc import Mapping
from pathlib import Path

from .viz import glue

PACKAGE = Path(__file__).resolve().parent
GLUE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # what a {glue:text}`name` role can name


def source_of(obj) -> tuple[str, str]:
    """``(where, code)`` of a package function, class or method: its file relative to the package's parent
    (``"lmbook/train.py"``) with its qualified name, and its dedented source."""
    target = inspect.unwrap(obj.fget if isinstance(obj, property) else obj)
    if not (inspect.isfunction(target) or inspect.isclass(target) or inspect.ismethod(target)):
        raise TypeError(f"obj must be a function, method, class or property of lmbook, not {type(obj).__name__}.")
    target = getattr(target, "__func__", target)
    path = Path(inspect.getsourcefile(target) or "").resolve()
    if PACKAGE not in path.parents:
        raise ValueError(
            f"{target.__qualname__} comes from {path}, not from the lmbook package: show_source shows the "
            "package's own code."
        )
    where = f"{path.relative_to(PACKAGE.parent).as_posix()}: {target.__qualname__}"
    return where, textwrap.dedent(inspect.getsource(target)).rstrip("\n")


def source_markdown(obj) -> str:
    """The source of ``obj`` as Markdown: the file and name in code font, then a fenced Python block."""
    return _markdown(*source_of(obj))


def _markdown(where: str, code: str) -> str:
    runs = re.findall(r"`+", code)
    fence = "`" * max(3, 1 + max((len(r) for r in runs), default=0))  # longer than any run of backticks inside
    file, name = where.split(": ")
    return f"`{name}` in `{file}`:\n\n{fence}python\n{code}\n{fence}\n"


class Source:
    """The source of package objects as a cell output: Markdown (a highlighted code block) where the front end
    renders it, plain text elsewhere."""

    def __init__(self, *objects):
        if not objects:
            raise ValueError("show_source needs at least one function, method or class to show.")
        self.sources = [source_of(obj) for obj in objects]  # checks every object before anything is shown

    def _repr_markdown_(self) -> str:
        return "\n".join(_markdown(where, code) for where, code in self.sources)

    def __repr__(self) -> str:
        return "\n\n".join(f"# {where}\n{code}" for where, code in self.sources)


def show_source(*objects) -> Source:
    """The package's code for ``objects`` (functions, methods, classes), shown as the cell's output.

    Put it last in a cell: ``show_source(TrainingRun.eager_step)``. The code is read from the installed
    package, so what the reader sees is what runs.
    """
    return Source(*objects)


def plain(value) -> str:
    """How :func:`report` prints one value: integers with thousands separators, floats to four significant
    digits (or in scientific notation when very small or large), Markdown objects as their text."""
    data = getattr(value, "data", None)
    if isinstance(data, str) and hasattr(value, "_repr_markdown_"):
        return data
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()  # a 0-d tensor or NumPy scalar
    if isinstance(value, (bool, str)):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isfinite(value) and value != 0 and not 1e-3 <= abs(value) < 1e6:
            return f"{value:.3e}"
        return f"{value:,.1f}" if abs(value) >= 1e4 else f"{value:.4g}"
    raise TypeError(f"report prints numbers, strings and Markdown objects, not {type(value).__name__} ({value!r}).")


def report(values: Mapping[str, object], title: str | None = None) -> None:
    """Glue each of ``values`` (name -> number, string or ``IPython.display.Markdown``) for the prose and print
    them, one ``name  value`` a line, so that the cell's output shows what the prose quotes.

    The names are those of the prose's roles, ``{glue:text}`name:.2f``` or ``{glue:md}`name```.
    """
    if not isinstance(values, Mapping):
        raise TypeError(f"values must be a mapping of names to results, not {type(values).__name__}.")
    if not values:
        raise ValueError("values is empty: report needs at least one result to hand to the prose.")
    bad = [name for name in values if not isinstance(name, str) or not GLUE_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"names to glue must be identifiers (letters, digits, underscores), not {bad!r}.")
    lines = {name: plain(value) for name, value in values.items()}  # every value checked before any is glued
    for name, value in values.items():
        glue(name, value)
    width = max(map(len, lines))
    if title:
        print(title)
    for name, text in lines.items():
        print(f"{name:<{width}}  {text}")


# --- verdicts: the words a sentence needs, computed from the run ------------------------
def _markdown_text(text: str):
    from IPython.display import Markdown  # the chapters run in IPython; glue takes Markdown for {glue:md}

    return Markdown(text)


def than(value: float, reference: float, below: str = "lower", above: str = "higher", tolerance: float = 0.0):
    """``below`` or ``above`` as ``value`` is less or more than ``reference`` (``"about the same"`` within
    ``tolerance``): the word a sentence comparing two results needs, for :func:`report` and ``{glue:md}``."""
    for name, x in (("value", value), ("reference", reference), ("tolerance", tolerance)):
        if isinstance(x, bool) or not isinstance(x, numbers.Real) or math.isnan(x):
            raise TypeError(f"{name} must be a real number, not {x!r}.")
    if tolerance < 0:
        raise ValueError(f"tolerance must be at least 0, not {tolerance}.")
    if abs(value - reference) <= tolerance:
        return _markdown_text("about the same")
    return _markdown_text(below if value < reference else above)


def ordering(values: Mapping[str, float], fmt: str = ".3f", highest_first: bool = False):
    """``values`` (name -> result) in order, lowest first, as Markdown: ``learned (1.981) < sinusoidal (2.050)``;
    equal results are joined by ``=``. The words of a sentence that ranks runs, whatever the run gave."""
    if not isinstance(values, Mapping) or len(values) < 2:
        raise ValueError(f"values must map at least two names to results, not {values!r}.")
    items = sorted(values.items(), key=lambda item: item[1], reverse=highest_first)
    text = f"{items[0][0]} ({items[0][1]:{fmt}})"
    for (_, before), (name, value) in itertools.pairwise(items):
        sign = "=" if f"{value:{fmt}}" == f"{before:{fmt}}" else (">" if highest_first else "<")
        text += f" {sign} {name} ({value:{fmt}})"
    return _markdown_text(text)


def trend(values: Mapping[object, float], name: str = ""):
    """How a series (x -> y, in the order given) moves, in words: ``falls at every step``, ``rises at every
    step``, ``falls until 3, then rises``, ``rises until 3, then falls``, ``stays the same`` or ``goes up and
    down``. ``name`` is put before each x (``"n = "``)."""
    if not isinstance(values, Mapping) or len(values) < 2:
        raise ValueError(f"values must map at least two points to results, not {values!r}.")
    xs, ys = list(values), list(values.values())
    steps = [b - a for a, b in itertools.pairwise(ys)]
    if all(s == 0 for s in steps):
        return _markdown_text("stays the same")
    if all(s < 0 for s in steps):
        return _markdown_text("falls at every step")
    if all(s > 0 for s in steps):
        return _markdown_text("rises at every step")
    for turn in range(1, len(steps)):
        first, then = steps[:turn], steps[turn:]
        if all(s <= 0 for s in first) and all(s >= 0 for s in then):
            return _markdown_text(f"falls until {name}{xs[turn]}, then rises")
        if all(s >= 0 for s in first) and all(s <= 0 for s in then):
            return _markdown_text(f"rises until {name}{xs[turn]}, then falls")
    return _markdown_text("goes up and down")
