"""The chapters as readers meet them: every number in the prose comes from code, every chapter has its shape.

*Truth.* A digit in a Markdown cell must sit in math, in code, in a citation, in a glue role (a number
computed by the chapter's code), or match one of the few ``ALLOWED`` patterns below, each with its
reason. Verdicts (orderings, winners, directions) are not digits; they are glued words, and the rule that
code cells hand results to the prose only through :func:`lmbook.show.report` keeps every glued value
visible in the output of the cell that computes it, for readers in Jupyter and Colab.

*Shape.* Every chapter opens with a title and what the reader will learn, ends with a summary and
exercises, and hides each solution in an HTML ``<details>`` block (closed in the book, in Jupyter and in
Colab alike). Package code is shown by :func:`lmbook.show.show_source` from the installed package, not
by ``literalinclude``, which only the book's build understands.

*Version.* The Colab cell installs the package at the version the notebooks were written for.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from test_book import NOTEBOOKS, ROOT, SETUP_CELL, notebook_id

import lmbook

# Digits allowed outside math, code, citations and glue roles, each with its reason.
ALLOWED = [
    (r"\b[Cc]hapters? \d(?:(?:,| and| to| or|-)\s*\d)*\b", "a reference to another chapter of the book"),
    (r"(?m)^\s*\d+\.\s|\bSolution \d+\b", "the number of an exercise, or of the solution that answers it"),
    (r"\bGPT-[1-4]\b|\bH100\b|\bA100\b|\bfloat(?:16|32|64)\b|\bbf16\b|\bUTF-8\b|\bSHA-256\b|\bWord2Vec\b",
     "part of a name: a model, a GPU, a number format, an encoding, a checksum"),
    (r"\b[A-Z]{2,}-[12L]\b|\bdistinct-\d\b", "part of a metric's name (ROUGE-1, ROUGE-2, distinct-2)"),
    (r"\b\d-grams?\b", "an n-gram model named by its order (a 5-gram), as a trigram is"),
]
# A sentence that names its source (a citation role or a link) may quote the source's own numbers:
# a published fact, cited.
SOURCED = re.compile(r"\{cite:[tp]\}`|\]\(https?://")
SENTENCE = re.compile(r"((?<=[.!?])\s+(?=[A-Z{*_`(\[]|\d)|\n\s*\n|\n(?=\s*(?:[-*]|\d+\.)\s))")
CITATION = re.compile(
    r"[A-Z][\w'-]+(?:,? et al\.| and [A-Z][\w'-]+)?,?\s+\(?(?:1[89]|20)\d\d[a-z]?"
    r"(?:(?:,| and) (?:1[89]|20)\d\d[a-z]?)*\b"
)
ROLE = re.compile(r"\{[\w:-]+\}`[^`]*`")  # {glue:text}`name:.2f`, {cite:t}`key`, {doc}`page`, ...
CODE = re.compile(r"(`+)(?:.|\n)*?\1")
MATH = re.compile(r"\$\$(?:.|\n)*?\$\$|\$[^$\n]+\$|\\begin\{(\w+\*?)\}(?:.|\n)*?\\end\{\1\}")
FENCE = re.compile(r"(?ms)^(`{3,}|~{3,}|:{3,}).*?^\1\s*$")
HTML = re.compile(r"<[^>\n]+>")
LINK_TARGET = re.compile(r"\]\([^)]*\)")


def notebooks() -> list[Path]:
    """The chapters of the table of contents (a notebook joins these checks when it joins the book)."""
    return [ROOT / path for path in NOTEBOOKS]


def markdown_cells(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]


def code_cells(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def prose(markdown: str) -> str:
    """``markdown`` without what may hold digits: fenced blocks, sentences that name their source, math, roles,
    code, citations, HTML tags, link targets and the ``ALLOWED`` patterns; each removed piece leaves a space."""
    pieces = SENTENCE.split(FENCE.sub(" ", markdown))  # sentences, and the spaces between them
    text = "".join(" " if i % 2 == 0 and SOURCED.search(piece) else piece for i, piece in enumerate(pieces))
    for pattern in (MATH, ROLE, CODE, HTML, LINK_TARGET, CITATION):
        text = pattern.sub(" ", text)
    for pattern, _ in ALLOWED:
        text = re.sub(pattern, " ", text)
    return text


def typed_numbers(markdown: str) -> list[str]:
    """Each digit left in the prose, with the words around it."""
    text = prose(markdown)
    return [" ".join(text[max(0, m.start() - 40): m.end() + 40].split()) for m in re.finditer(r"\d+", text)]


# --- the checker itself ------------------------------------------------------------
def test_the_checker_finds_typed_numbers_and_spares_the_rest():
    assert typed_numbers("The loss falls to 1.88 within 65 seconds.") != []
    assert typed_numbers("The first 90 % of the text") != []
    spared = (
        "A loss of {glue:text}`val_loss:.2f` nats, $e^{-2}$ and $$x_1 + x_2$$ with `block_size=256`.\n\n"
        "Vaswani et al. (2017) and (Devlin et al., 2019), Howard and Ruder (2018), Radford et al., 2018 and 2019.\n"
        "See chapter 3 and chapters 5 to 7; GPT-2 on an H100 in float32; {cite:t}`vaswani2017`.\n\n"
        "1. An exercise\n\n```python\nx = 12\n```\n<details><summary>Solution</summary>\n\n</details>\n"
        "\\begin{aligned} a_1 &= 2 \\end{aligned} and [a link](https://example.org/2019/page)"
    )
    assert typed_numbers(spared) == []
    # a cited work's own numbers may be quoted in the sentence that cites it, and nowhere else
    quoted = typed_numbers("They report a loss of 1.50 {cite:p}`smith2020`. "
                           "Ours is 2.5, see [here](https://x.org/1).\n\nOurs is 3.5.")
    assert quoted == ["Ours is 3.5.", "Ours is 3.5."]


# --- truth ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", notebooks(), ids=lambda p: notebook_id(p.relative_to(ROOT)))
def test_numbers_in_the_prose_come_from_code(path):
    found = [(i, n) for i, cell in enumerate(markdown_cells(path)) for n in typed_numbers(cell)]
    assert not found, (
        f"{path.relative_to(ROOT)}: numbers typed in the prose (markdown cell: words around each). Glue them from "
        "the code that computes or sets them (lmbook.show.report), put a formula in math, or, for a name, "
        "extend ALLOWED in tests/test_chapters.py with a reason:\n" + "\n".join(f"  [{i}] ...{n}..." for i, n in found)
    )


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: notebook_id(p.relative_to(ROOT)))
def test_results_reach_the_prose_through_report(path):
    """A bare ``glue`` hands a number to the book and hides it from readers in Jupyter and Colab."""
    bare = [i for i, source in enumerate(code_cells(path))
            if re.search(r"(?<![\w.])glue\(|import glue\b|import .*\bglue\b", source)]
    assert not bare, (
        f"{path.relative_to(ROOT)}: code cells {bare} glue without printing; hand results to the prose with "
        "lmbook.show.report({...}), which glues and prints them"
    )


# --- shape ---------------------------------------------------------------------------
def sections(path: Path) -> list[str]:
    return [m.group(1).strip() for cell in markdown_cells(path) for m in re.finditer(r"(?m)^## (.+)$", cell)]


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: notebook_id(p.relative_to(ROOT)))
def test_a_chapter_opens_with_what_the_reader_will_learn(path):
    first = markdown_cells(path)[0]
    assert re.match(r"# \S", first), f"{path.relative_to(ROOT)} must open with its title (# ...)"
    goals = re.search(r"(?i)you will learn\W*\n((?:\s*- .+\n?(?:\s{2,}.+\n?)*)+)", first)
    assert goals and len(re.findall(r"(?m)^- ", goals.group(1))) >= 2, (
        f"{path.relative_to(ROOT)}: the first cell must list what the reader will learn "
        "(You will learn, then at least two bullets)"
    )


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: notebook_id(p.relative_to(ROOT)))
def test_a_chapter_ends_with_a_summary_and_exercises(path):
    found = sections(path)
    assert found[-2:] == ["Summary", "Exercises"], (
        f"{path.relative_to(ROOT)}: the last two sections must be 'Summary' and 'Exercises', not {found[-2:]}"
    )
    cells = markdown_cells(path)
    summary = next(c for c in cells if "## Summary" in c).split("## Summary", 1)[1].split("## Exercises")[0]
    assert len(re.findall(r"(?m)^- ", summary)) >= 2, f"{path.relative_to(ROOT)}: the summary must be a list"


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: notebook_id(p.relative_to(ROOT)))
def test_every_exercise_has_a_hidden_solution(path):
    cells = markdown_cells(path)
    start = next(i for i, c in enumerate(cells) if "## Exercises" in c)
    text = "\n\n".join([cells[start].split("## Exercises", 1)[1], *cells[start + 1:]])
    exercises = re.findall(r"(?m)^\d+\.\s", text)
    opened = re.findall(r"<details>\s*<summary>Solution[^<]*</summary>", text)
    assert exercises, f"{path.relative_to(ROOT)}: no numbered exercise after '## Exercises'"
    assert len(opened) == len(exercises) == text.count("</details>"), (
        f"{path.relative_to(ROOT)}: {len(exercises)} exercises, {len(opened)} "
        "<details><summary>Solution</summary> blocks and "
        f"{text.count('</details>')} </details>: each exercise needs one closed solution block"
    )
    for block in re.findall(r"<details>.*?</details>", text, flags=re.DOTALL):
        inner = block.split("</summary>", 1)[1]
        # a blank line after </summary> and before </details>, or Markdown inside stays raw in Jupyter and MyST
        assert inner.startswith("\n\n") and block.endswith("\n\n</details>"), (
            f"{path.relative_to(ROOT)}: leave a blank line after <summary>…</summary> and before </details>:\n"
            f"{block[:200]}"
        )


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: notebook_id(p.relative_to(ROOT)))
def test_no_construct_that_only_the_book_build_understands(path):
    problems = []
    for i, cell in enumerate(markdown_cells(path)):
        if re.search(r"\{literalinclude\}", cell):
            problems.append(f"[{i}] literalinclude: show the code with lmbook.show.show_source in a code cell")
        if re.search(r":::\{(?:admonition|dropdown)\}|:class: dropdown", cell):
            problems.append(f"[{i}] a MyST dropdown: write the solution in <details><summary>Solution</summary>")
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


# --- version ---------------------------------------------------------------------------
def test_colab_installs_the_version_the_notebooks_were_written_for():
    declared = re.search(r'(?m)^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8")).group(1)
    assert declared == lmbook.__version__, f"pyproject.toml says {declared}, lmbook.__version__ {lmbook.__version__}"
    pinned = re.search(r"lmbook @ git\+https://github\.com/lmbook/lmbook@v([\w.]+)", SETUP_CELL)
    assert pinned, f"the setup cell must install a tagged version (…/lmbook@v{lmbook.__version__}):\n{SETUP_CELL}"
    assert pinned.group(1) == lmbook.__version__, (
        f"the setup cell installs v{pinned.group(1)}, the package is {lmbook.__version__}: change both together"
    )


def test_the_environment_printout_names_the_packages_version(capsys):
    from lmbook.runtime import show_environment

    show_environment()
    first = capsys.readouterr().out.splitlines()[0].split()
    assert first == ["lmbook:", lmbook.__version__]


# --- dependencies ------------------------------------------------------------------------
OPTIONAL_IMPORTS = {"myst_nb": "lmbook.viz.glue uses it only inside the book's build, and does without it"}
NEEDED_BY_LIBRARIES = {"accelerate": "transformers' Trainer (chapter 4) imports it when it runs"}


def imported_modules(source: str) -> set[str]:
    """Top-level names of the modules ``source`` imports (``from x.y import z`` and ``import x``)."""
    found = set(re.findall(r"(?m)^\s*from\s+([A-Za-z_]\w*)[\w.]*\s+import\b", source))
    for names in re.findall(r"(?m)^\s*import\s+([\w., ]+)", source):
        found |= {name.split()[0].split(".")[0] for name in names.split(",") if name.strip()}
    return found


def test_pyproject_declares_every_package_the_code_and_the_chapters_import():
    import importlib.metadata as md
    import sys

    sources = [p.read_text(encoding="utf-8") for p in (ROOT / "lmbook").rglob("*.py")]
    sources += ["\n".join(code_cells(p)) for p in notebooks()]
    modules = set().union(*map(imported_modules, sources)) - set(sys.stdlib_module_names) - {"lmbook", "__future__"}
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    declared = {re.split(r"[<>=!~ ;\[]", line.strip().strip('",'))[0].lower().replace("_", "-")
                for line in block.splitlines() if line.strip().startswith('"')}
    distributions = md.packages_distributions()
    # a module may come with a declared package's own requirements (IPython with ipywidgets, ...)
    brought = {re.split(r"[<>=!~ (\[;]", r)[0].lower().replace("_", "-")
               for d in declared for r in (md.requires(d) or []) if "extra ==" not in r}
    missing = {}
    for module in sorted(modules - set(OPTIONAL_IMPORTS)):
        names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not names & (declared | brought):
            missing[module] = sorted(names)
    missing.update({name: why for name, why in NEEDED_BY_LIBRARIES.items() if name not in declared})
    assert not missing, f"imported but not declared in pyproject.toml's dependencies: {missing}"
