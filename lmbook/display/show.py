"""What a chapter shows its reader besides plots: the package's own code, and the prose that quotes its results.

Every chapter reads in three places: the built book, Jupyter and Colab. MyST directives and roles
(``literalinclude``, ``{glue:text}``, ``{cite:t}``) work only in the first; Jupyter and Colab show them raw.
So the chapters show the package and their results through cell outputs, which look the same everywhere:

- :func:`show_source` prints the source of a function or class of the installed package as a Python code
  block, with the file it comes from: the code the prose explains, never a copy of it;
- :func:`report` keeps results under the names the prose uses, and :func:`prose` writes a passage of
  Markdown with those results filled in (``{val_loss:.2f}``), as the output of a cell whose input the book
  hides: the book, Jupyter and Colab all render the same sentences with the same numbers;
- :func:`than`, :func:`ordering` and :func:`trend` give the words of a verdict (``lower``, ``a (1.9) < b (2.1)``,
  ``falls until n = 4, then rises``) computed from the results, so that a sentence holds whatever the run gave;
- :func:`plural`, :func:`count_phrase`, :func:`size_text`, :func:`number_text`, :func:`differ_by` and :func:`capital`
  write counts, sizes and numbers as a sentence wants them: ``1 layer``, ``all 12 words``, ``512 bytes``, ``–``
  for an infinite value, ``are equal, bit for bit``.

Used by every chapter.
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import math
import numbers
import re
import textwrap
from collections.abc import Mapping
from html import escape
from pathlib import Path

from ..interface import check_int

PACKAGE = Path(__file__).resolve().parent.parent  # lmbook/, whose code show_source shows
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # what a result may be called, and a {placeholder} name
RESULTS: dict[str, object] = {}  # what report() kept, for prose() to quote: one chapter's results per kernel


def source_of(obj) -> tuple[str, str]:
    """``(where, code)`` of a package function, class or method: its file relative to the package's parent
    (``"lmbook/training/train.py"``) with its qualified name, and its dedented source."""
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


def _is_markdown(value) -> bool:
    return isinstance(getattr(value, "data", None), str) and hasattr(value, "_repr_markdown_")


def result(value):
    """``value`` as :func:`report` keeps it: a number (0-d tensors and NumPy scalars as Python numbers), a string
    or a Markdown text; anything else is refused."""
    if _is_markdown(value) or isinstance(value, str):
        return value
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()  # a 0-d tensor or NumPy scalar
    if isinstance(value, numbers.Real):
        return value
    raise TypeError(f"report keeps numbers, strings and Markdown objects, not {type(value).__name__} ({value!r}).")


def report(values: Mapping[str, object]) -> None:
    """Keep each of ``values`` (name -> number, string or ``IPython.display.Markdown``) for the prose to quote.

    A later :func:`prose` passage writes ``{name}`` or ``{name:.2f}`` where the value belongs. Nothing is
    printed: the reader sees the values in the sentences that use them.
    """
    if not isinstance(values, Mapping):
        raise TypeError(f"values must be a mapping of names to results, not {type(values).__name__}.")
    if not values:
        raise ValueError("values is empty: report needs at least one result to hand to the prose.")
    bad = [name for name in values if not isinstance(name, str) or not NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"names of results must be identifiers (letters, digits, underscores), not {bad!r}.")
    RESULTS.update({name: result(value) for name, value in values.items()})  # all checked before any is kept


# Spans of Markdown that prose() leaves as they are: fenced code, inline code and math (TeX has braces).
VERBATIM = re.compile(
    r"(?ms)^(?P<fence>`{3,}|~{3,}).*?^(?P=fence)[ \t]*$"  # a fenced block
    r"|(?P<ticks>`+).+?(?P=ticks)"  # inline code
    r"|\$\$.+?\$\$|\$[^$\n]+\$"  # display and inline math
    r"|\\begin\{(?P<env>\w+\*?)\}.*?\\end\{(?P=env)\}"  # an amsmath environment
)
PLACEHOLDER = re.compile(r"\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<spec>[^{}\n]*))?\}")


class Prose:
    """A passage of Markdown with results filled in, shown as a cell's output: rendered as Markdown where the
    front end can (the book, Jupyter, Colab), as plain text elsewhere."""

    def __init__(self, text: str):
        self.data = text

    def _repr_markdown_(self) -> str:
        return self.data

    def __repr__(self) -> str:
        return self.data


def fill(template: str, values: Mapping[str, object]) -> str:
    """``template`` with each ``{name}`` or ``{name:spec}`` outside code and math replaced by ``values[name]``,
    formatted as ``format(value, spec)`` would (a Markdown verdict as its text). Braces in code and math, and
    braces around anything but a name, stay as they are."""

    def one(match: re.Match) -> str:
        name, spec = match["name"], match["spec"] or ""
        if name not in values:
            close = difflib.get_close_matches(name, list(values), n=3)
            raise KeyError(
                f"the prose quotes {{{name}}}, but no result of that name was reported"
                + (f" (did you mean {', '.join(close)}?)" if close else "")
                + ": hand it to the prose first, with report({...}) in the cell that computes it."
            )
        value = values[name]
        if _is_markdown(value):
            if spec:
                raise ValueError(f"{{{name}:{spec}}}: {name} is a Markdown text, which takes no format spec.")
            return value.data
        try:
            return format(value, spec)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{{{name}:{spec}}}: cannot format {value!r} with {spec!r}: {err}") from None

    pieces, last = [], 0
    for verbatim in VERBATIM.finditer(template):
        pieces.append(PLACEHOLDER.sub(one, template[last: verbatim.start()]))
        pieces.append(verbatim.group(0))
        last = verbatim.end()
    pieces.append(PLACEHOLDER.sub(one, template[last:]))
    return "".join(pieces)


def prose(template: str) -> Prose:
    """A passage of the chapter whose sentences quote results: Markdown with ``{name}`` or ``{name:.2f}`` where
    the result that :func:`report` kept under ``name`` belongs, returned as the cell's Markdown output.

    The chapters put it alone in a cell that the book shows without its input (tag ``remove-input``) and that
    Jupyter and Colab fold (``source_hidden``, Colab's form view), so that every reader sees the same text with
    this run's numbers in it. A name nothing reported is an error that names the close ones.
    """
    if not isinstance(template, str) or not template.strip():
        raise ValueError("prose needs a passage of Markdown to show.")
    return Prose(fill(textwrap.dedent(template).strip("\n") + "\n", RESULTS))


# --- verdicts: the words a sentence needs, computed from the run ------------------------
def md(text: str):
    """``text`` as Markdown, for the prose's ``{name}`` placeholders (:func:`prose`): names of models and
    settings, and sentences computed from a run."""
    from IPython.display import Markdown  # the chapters run in IPython

    return Markdown(text)


def html_table(header: list[str], rows: list[list]):
    """Rows of a table as HTML, for a cell's output (the book renders an output's Markdown without tables)."""
    from IPython.display import HTML

    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return HTML(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def than(value: float, reference: float, below: str = "lower", above: str = "higher", tolerance: float = 0.0):
    """``below`` or ``above`` as ``value`` is less or more than ``reference`` (``"about the same"`` within
    ``tolerance``): the word a sentence comparing two results needs, for :func:`report` and :func:`prose`."""
    for name, x in (("value", value), ("reference", reference), ("tolerance", tolerance)):
        if isinstance(x, bool) or not isinstance(x, numbers.Real) or math.isnan(x):
            raise TypeError(f"{name} must be a real number, not {x!r}.")
    if tolerance < 0:
        raise ValueError(f"tolerance must be at least 0, not {tolerance}.")
    if abs(value - reference) <= tolerance:
        return md("about the same")
    return md(below if value < reference else above)


def and_list(items) -> str:
    """Words of a list in a sentence: ``a``, ``a and b``, ``a, b and c``."""
    items = [str(item) for item in items]
    if not items:
        raise ValueError("and_list needs at least one item.")
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


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
    return md(text)


def trend(values: Mapping[object, float], name: str = ""):
    """How a series (x -> y, in the order given) moves, in words: ``falls at every step``, ``rises at every
    step``, ``falls until 3, then rises``, ``rises until 3, then falls``, ``stays the same`` or ``goes up and
    down``. ``name`` is put before each x (``"n = "``)."""
    if not isinstance(values, Mapping) or len(values) < 2:
        raise ValueError(f"values must map at least two points to results, not {values!r}.")
    xs, ys = list(values), list(values.values())
    steps = [b - a for a, b in itertools.pairwise(ys)]
    if all(s == 0 for s in steps):
        return md("stays the same")
    if all(s < 0 for s in steps):
        return md("falls at every step")
    if all(s > 0 for s in steps):
        return md("rises at every step")
    for turn in range(1, len(steps)):
        first, then = steps[:turn], steps[turn:]
        if all(s <= 0 for s in first) and all(s >= 0 for s in then):
            return md(f"falls until {name}{xs[turn]}, then rises")
        if all(s >= 0 for s in first) and all(s <= 0 for s in then):
            return md(f"rises until {name}{xs[turn]}, then falls")
    return md("goes up and down")


# --- counts, sizes and numbers in words -------------------------------------------------
def plural(n: int, noun: str, many: str | None = None) -> str:
    """``n`` things in words, the noun agreeing with the count: ``1 layer``, ``2 layers``, ``1,024 windows``,
    ``0 runs``; ``many`` is the plural where it is not ``noun + "s"`` (``plural(3, "query", "queries")``)."""
    check_int("n", n, 0)
    return f"{n:,} {noun if n == 1 else (many or noun + 's')}"


def count_phrase(k: int, n: int, noun: str, many: str | None = None) -> str:
    """``k`` of ``n`` things in words, for a caption or a sentence: ``all 12 words``, ``none of the 12 words``,
    ``both words``, ``neither word``, ``7 of the 12 words``, ``the one word``; never "2 of the 2" or
    "all three of the three"."""
    check_int("k", k, 0)
    check_int("n", n, 1)
    if k > n:
        raise ValueError(f"k must be at most n, not k={k}, n={n}.")
    things = many or noun + "s"
    if n == 1:
        return f"the one {noun}" if k else f"not the one {noun}"
    if k == n:
        return f"both {things}" if n == 2 else f"all {n:,} {things}"
    if k == 0:
        return f"neither {noun}" if n == 2 else f"none of the {n:,} {things}"
    return f"{k:,} of the {n:,} {things}"


def size_text(n_bytes: float) -> str:
    """A size in the unit that gives it at least one digit before the point: bytes, KiB, MiB or GiB (never
    ``0.0 MiB``)."""
    if isinstance(n_bytes, bool) or not isinstance(n_bytes, numbers.Real) or not 0 <= n_bytes < math.inf:
        raise ValueError(f"a size must be a finite number of bytes >= 0, not {n_bytes!r}.")
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:,.1f} {unit}"
    return f"{n_bytes:,.0f} bytes"


def number_text(value: float, fmt: str = ".2f", infinite: str = "–") -> str:
    """A number as a table cell or a sentence shows it: ``format(value, fmt)``, a dash where it is undefined (NaN)
    and ``infinite`` where it is infinite (a dash by default; ``"∞"`` in a table of perplexities, ``"infinite"`` in
    a sentence), never Python's ``inf`` or ``nan``."""
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "-∞" if value < 0 and infinite == "∞" else infinite
    return f"{value:{fmt}}"


def capital(text: str) -> str:
    """``text`` opening a sentence: its first letter a capital, the rest as it is (``str.capitalize`` would lower
    "GPT" in "the GPT's")."""
    return text[:1].upper() + text[1:]


def differ_by(gap: float, fmt: str = ".1e", at_most: bool = False) -> str:
    """The verb of a sentence comparing two computations by their largest difference ``gap``: ``differ by 4.8e-07``
    (``differ by at most ...`` with ``at_most``), or ``are equal, bit for bit`` where it is zero (never "differ by
    0.0e+00")."""
    if isinstance(gap, bool) or not isinstance(gap, numbers.Real) or not 0 <= gap < math.inf:
        raise ValueError(f"a difference must be a finite number >= 0, not {gap!r}.")
    return "are equal, bit for bit" if gap == 0 else f"differ by {'at most ' if at_most else ''}{gap:{fmt}}"
