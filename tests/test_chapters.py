"""The chapters as readers meet them: every number in the prose comes from code, every chapter has its shape,
and every reader (the book, Jupyter, Colab) sees the same text.

*Truth.* A digit in the prose (a Markdown cell, or the template of a :func:`lmbook.display.show.prose` cell) must sit in
math, in code, in a citation, in a ``{placeholder}`` (a number computed by the chapter's code and kept by
:func:`lmbook.display.show.report`), or match one of the few ``ALLOWED`` patterns below, each with its reason.
Verdicts (orderings, winners, directions) are not digits; they are computed words, quoted the same way.

*Everywhere the same.* Jupyter and Colab render Markdown, not MyST: a glue or cite role, a directive or a
colon fence would show raw there. So the prose holds none; a sentence that quotes a result is the Markdown
output of a ``prose(...)`` cell, whose input the book removes and Jupyter and Colab fold; a citation is plain
text (``Vaswani et al. (2017)``) that names an entry of ``references.bib``, which the bibliography page lists.

*Shape.* Every chapter opens with a title and what the reader will learn, ends with a summary and
exercises, and hides each solution in an HTML ``<details>`` block (closed in the book, in Jupyter and in
Colab alike). Package code is shown by :func:`lmbook.display.show.show_source` from the installed package, not
by ``literalinclude``, which only the book's build understands.

*Colab.* The setup cell installs the package from the branch that the launch buttons open the notebooks
from, and that branch exists.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import nbformat
import pytest
from test_book import CONFIG, EXEC, NOTEBOOKS, ROOT, SETUP_CELL, notebook_id

import lmbook
from lmbook.display.show import PLACEHOLDER  # a result quoted by prose(): {val_loss:.2f}

# Digits allowed outside math, code, citations and glue roles, each with its reason.
ALLOWED = [
    (r"\b[Cc]hapters? \d(?:(?:,| and| to| or|-)\s*\d)*\b", "a reference to another chapter of the book"),
    (r"(?m)^\s*\d+\.\s|\bSolution \d+\b", "the number of an exercise, or of the solution that answers it"),
    (r"\bGPT-[1-4]\b|\bH100\b|\bA100\b|\bfloat(?:16|32|64)\b|\bbf16\b|\bUTF-8\b|\bSHA-256\b|\bWord2Vec\b",
     "part of a name: a model, a GPU, a number format, an encoding, a checksum"),
    (r"\b[A-Z]{2,}-[12L]\b|\bdistinct-\d\b", "part of a metric's name (ROUGE-1, ROUGE-2, distinct-2)"),
    (r"\bb?float16\b|\bint[48]\b", "a number format: bfloat16, int8, int4"),
    (r"\b\d-grams?\b", "an n-gram model named by its order (a 5-gram), as a trigram is"),
]
SENTENCE = re.compile(r"((?<=[.!?])(?<! al\.)\s+(?=[A-Z{*_`(\[]|\d)|\n\s*\n|\n(?=\s*(?:[-*]|\d+\.)\s))")
CITATION = re.compile(
    r"[A-Z][\w'-]+(?:,? et al\.| and [A-Z][\w'-]+)?,?\s+\(?(?:1[89]|20)\d\d[a-z]?"
    r"(?:(?:,| and) (?:1[89]|20)\d\d[a-z]?)*\b"
)
ROLE = re.compile(r"\{[\w:-]+\}`[^`]*`")  # a MyST role: {glue:text}`name:.2f`, {cite:t}`key`, {doc}`page`, ...
# A sentence that names its source (a citation or a link) may quote the source's own numbers: a published fact.
SOURCED = re.compile(CITATION.pattern + r"|\]\(https?://")
CODE = re.compile(r"(`+)(?:.|\n)*?\1")
MATH = re.compile(r"\$\$(?:.|\n)*?\$\$|\$[^$\n]+\$|\\begin\{(\w+\*?)\}(?:.|\n)*?\\end\{\1\}")
FENCE = re.compile(r"(?ms)^(`{3,}|~{3,}|:{3,}).*?^\1\s*$")
HTML = re.compile(r"<[^>\n]+>")
LINK_TARGET = re.compile(r"\]\([^)]*\)")


def notebooks() -> list[Path]:
    """The chapters of the table of contents (a notebook joins these checks when it joins the book)."""
    return [ROOT / path for path in NOTEBOOKS]


PROSE_CALL = re.compile(r'\A# @title\nprose\(r"""\n(?P<template>.*)\n"""\)\Z', re.DOTALL)
PROSE_METADATA = {"tags": ["remove-input"], "jupyter": {"source_hidden": True}, "cellView": "form"}


def is_prose(cell) -> bool:
    return cell.cell_type == "code" and "prose(" in cell.source and cell.source.startswith("# @title")


def markdown_cells(path: Path) -> list[str]:
    """The prose in reading order: Markdown cells and the templates of ``prose(...)`` cells."""
    found = []
    for c in nbformat.read(path, as_version=4).cells:
        if c.cell_type == "markdown":
            found.append(c.source)
        elif is_prose(c) and (match := PROSE_CALL.match(c.source)):
            found.append(match["template"])
    return found


def code_cells(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code" and not is_prose(c)]


def prose(markdown: str) -> str:
    """``markdown`` without what may hold digits: fenced blocks, sentences that name their source, math, roles,
    code, citations, HTML tags, link targets and the ``ALLOWED`` patterns; each removed piece leaves a space."""
    pieces = SENTENCE.split(FENCE.sub(" ", markdown))  # sentences, and the spaces between them
    text = "".join(" " if i % 2 == 0 and SOURCED.search(piece) else piece for i, piece in enumerate(pieces))
    for pattern in (MATH, ROLE, PLACEHOLDER, CODE, HTML, LINK_TARGET, CITATION):
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
        "A loss of {val_loss:.2f} nats, $e^{-2}$ and $$x_1 + x_2$$ with `block_size=256`.\n\n"
        "Vaswani et al. (2017) and (Devlin et al., 2019), Howard and Ruder (2018), Radford et al., 2018 and 2019.\n"
        "See chapter 3 and chapters 5 to 7; GPT-2 on an H100 in float32; {n_params:,d} of {share}.\n\n"
        "1. An exercise\n\n```python\nx = 12\n```\n<details><summary>Solution</summary>\n\n</details>\n"
        "\\begin{aligned} a_1 &= 2 \\end{aligned} and [a link](https://example.org/2019/page)"
    )
    assert typed_numbers(spared) == []
    # a cited work's own numbers may be quoted in the sentence that cites it, and nowhere else
    quoted = typed_numbers("They report a loss of 1.50 (Smith et al., 2020). "
                           "Ours is 2.5, see [here](https://x.org/1).\n\nOurs is 3.5.")
    assert quoted == ["Ours is 3.5.", "Ours is 3.5."]


# --- truth ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", notebooks(), ids=lambda p: notebook_id(p.relative_to(ROOT)))
def test_numbers_in_the_prose_come_from_code(path):
    found = [(i, n) for i, cell in enumerate(markdown_cells(path)) for n in typed_numbers(cell)]
    assert not found, (
        f"{path.relative_to(ROOT)}: numbers typed in the prose (prose cell: words around each). Quote them from "
        "the code that computes or sets them (lmbook.display.show.report, then {name} in a prose() cell), put a "
        "formula in math, or, for a name, "
        "extend ALLOWED in tests/test_chapters.py with a reason:\n" + "\n".join(f"  [{i}] ...{n}..." for i, n in found)
    )


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: notebook_id(p.relative_to(ROOT)))
def test_results_reach_the_prose_through_report_and_prose(path):
    """``glue`` hands a number to the book's build only: readers in Jupyter and Colab would not see it."""
    bare = [i for i, source in enumerate(code_cells(path)) if re.search(r"(?<![\w.])glue\(|\bmyst_nb\b", source)]
    assert not bare, (
        f"{path.relative_to(ROOT)}: code cells {bare} use myst-nb's glue; keep results with "
        "lmbook.display.show.report({...}) and quote them in a prose() cell"
    )


# --- the same text for every reader ------------------------------------------------------
MYST_ONLY = re.compile(r"\{(?:glue|cite|doc|ref|numref|eq|download)[\w:]*\}`|^\s*(?:```+|~~~+)\{|^\s*:::", re.M)


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: notebook_id(p.relative_to(ROOT)))
def test_the_prose_holds_nothing_that_only_the_book_renders(path):
    found = [f"[{i}] {m.group(0).strip()!r} in: {text[max(0, m.start() - 40): m.end() + 40]!r}"
             for i, text in enumerate(markdown_cells(path)) for m in MYST_ONLY.finditer(text)]
    assert not found, (
        f"{path.relative_to(ROOT)}: MyST syntax that Jupyter and Colab show raw. Quote results with prose() and "
        "{name}, cite as plain text (Vaswani et al. (2017)), use <details> for solutions:\n" + "\n".join(found)
    )


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: notebook_id(p.relative_to(ROOT)))
def test_prose_cells_are_one_call_shown_without_their_input(path):
    cells = [(i, c) for i, c in enumerate(nbformat.read(path, as_version=4).cells) if is_prose(c)]
    assert cells, f"{path.relative_to(ROOT)} has no prose() cell: where do its results reach the text?"
    for i, cell in cells:
        assert PROSE_CALL.match(cell.source), (
            f"{path.relative_to(ROOT)}, cell {i}: a prose cell is '# @title', then prose(r\"\"\"...\"\"\") and nothing "
            f"else:\n{cell.source[:300]}")
        assert cell.metadata == PROSE_METADATA, (
            f"{path.relative_to(ROOT)}, cell {i}: a prose cell's metadata must be {PROSE_METADATA} (the book removes "
            f"its input, JupyterLab and Colab fold it), not {dict(cell.metadata)}")


def what_a_plain_reader_sees(nb) -> tuple[list[str], list[str]]:
    """An executed notebook as Jupyter or Colab renders it: its Markdown cells and its cells' Markdown outputs
    through a plain CommonMark renderer (no MyST), as text. Returns ``(texts, problems)``: the problems are MyST
    syntax left visible, and prose cells without their Markdown output."""
    from markdown_it import MarkdownIt

    renderer, texts, problems = MarkdownIt("commonmark"), [], []
    for i, cell in enumerate(nb.cells):
        sources = [cell.source] if cell.cell_type == "markdown" else [
            o["data"]["text/markdown"] for o in cell.get("outputs", []) if "text/markdown" in o.get("data", {})]
        if is_prose(cell) and not sources:
            problems.append(f"[{i}] a prose() cell with no Markdown output: was the notebook executed?")
        for source in sources:
            html = renderer.render(source)
            text = re.sub(r"<[^>]+>", "", html)
            texts.append(text)
            for pattern in (r"\{glue", r"\{cite", r"\{[a-z]+\}`", r"(?m)^:::"):
                problems += [f"[{i}] {m.group(0)!r}: {text[max(0, m.start() - 60): m.end() + 60]!r}"
                             for m in re.finditer(pattern, text)]
            problems += [f"[{i}] a MyST directive shown as code: {m.group(0)}"
                         for m in re.finditer(r'<code class="language-\{[^"]*"', html)]
    return texts, problems


def test_the_plain_reader_check_finds_myst_and_spares_markdown():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("A loss of {glue:text}`loss:.2f`, as {cite:t}`x` said.\n\n```{note}\nhi\n```"),
        nbformat.v4.new_markdown_cell("$x_{1}$ and `{a}` and a [link](https://example.org)"),
    ])
    _, problems = what_a_plain_reader_sees(nb)
    assert len(problems) == 3 and "{glue" in problems[0] and "{cite" in problems[1] and "{note}" in problems[2]
    nb.cells = nb.cells[1:]
    assert what_a_plain_reader_sees(nb)[1] == []


@pytest.mark.book
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=notebook_id)
def test_an_executed_chapter_reads_the_same_without_myst(notebook):
    """Every chapter as executed for the book (``_build/exec``), rendered as Jupyter and Colab render it."""
    executed = EXEC / notebook
    if not executed.exists():
        pytest.fail(f"no executed copy of {notebook}: its execution test failed or did not run", pytrace=False)
    _, problems = what_a_plain_reader_sees(nbformat.read(executed, as_version=4))
    assert not problems, f"{notebook} as a plain Markdown renderer shows it:\n" + "\n".join(problems)


def bibliography() -> dict[str, tuple[str, str]]:
    """``references.bib`` as key -> (authors as cited, year): "Vaswani et al.", "Howard and Ruder", "Elman"."""
    text = (ROOT / "references.bib").read_text(encoding="utf-8")
    entries = {}
    for key, body in re.findall(r"@\w+\{([\w-]+),(.*?)\n\}", text, flags=re.DOTALL):
        authors = re.search(r"author\s*=\s*\{(.*?)\},?\s*\n", body, flags=re.DOTALL).group(1)
        year = re.search(r"year\s*=\s*\{?(\d{4})", body).group(1)
        names = [re.sub(r"[{}]", "", n).split()[-1] for n in re.split(r"\s+and\s+", " ".join(authors.split()))]
        cited = names[0] if len(names) == 1 else " and ".join(names) if len(names) == 2 else f"{names[0]} et al."
        entries[key] = (cited, year)
    return entries


CITED = re.compile(r"([A-Z][\w'-]+(?: et al\.| and [A-Z][\w'-]+)?)(?:,\s+| \()((?:1[89]|20)\d\d)\b")


def test_the_citation_checker_reads_both_forms():
    text = "as Vaswani et al. (2017) showed (Howard and Ruder, 2018; Elman, 1990), in 1990 and chapter 3"
    assert CITED.findall(text) == [("Vaswani et al.", "2017"), ("Howard and Ruder", "2018"), ("Elman", "1990")]


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: notebook_id(p.relative_to(ROOT)))
def test_every_citation_names_a_work_of_the_bibliography(path):
    works = set(bibliography().values())
    cited = {(who, year) for text in markdown_cells(path) for who, year in CITED.findall(text)}
    unknown = sorted(c for c in cited if c not in works and c[0].split()[0] not in ("Chapter", "Solution"))
    assert not unknown, (
        f"{path.relative_to(ROOT)} cites works that references.bib does not hold (or names them otherwise: one author "
        f"by surname, two joined by 'and', more as 'First et al.'): {unknown}"
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
    text = "\n\n".join(markdown_cells(path))
    summary = text.split("## Summary", 1)[1].split("## Exercises")[0]
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
            problems.append(f"[{i}] literalinclude: show the code with lmbook.display.show.show_source in a code cell")
        if re.search(r":::\{(?:admonition|dropdown)\}|:class: dropdown", cell):
            problems.append(f"[{i}] a MyST dropdown: write the solution in <details><summary>Solution</summary>")
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


# --- Colab ------------------------------------------------------------------------------
def test_colab_installs_from_the_branch_the_launch_buttons_open():
    installed = re.search(r"lmbook @ git\+(\S+?)@([\w./-]+)\"", SETUP_CELL)
    assert installed, f"the setup cell must install lmbook from the repository at a ref (…@main):\n{SETUP_CELL}"
    (url, ref), repository = installed.groups(), CONFIG["repository"]
    assert url == repository["url"], f"the setup cell installs from {url}, _config.yml names {repository['url']}"
    assert ref == repository["branch"], (
        f"the setup cell installs lmbook@{ref}, but the launch buttons open the notebooks from the branch "
        f"{repository['branch']!r} (_config.yml): a reader would run one version's notebook on another's package"
    )


def test_the_ref_the_setup_cell_installs_exists_in_git():
    ref = re.search(r"lmbook@([\w./-]+)\"", SETUP_CELL).group(1)
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no refs to look the setup cell's ref up in")
    names = [f"refs/heads/{ref}", f"refs/remotes/origin/{ref}", f"refs/tags/{ref}"]
    found = [name for name in names if subprocess.run(["git", "rev-parse", "--verify", "--quiet", name], cwd=ROOT,
                                                       capture_output=True).returncode == 0]
    assert found, (f"the setup cell installs lmbook@{ref}, and git knows no such branch or tag ({', '.join(names)}): "
                   "pip would stop at the first cell in Colab")


def test_the_environment_printout_names_the_packages_version(capsys):
    from lmbook.runtime import show_environment

    show_environment()
    first = capsys.readouterr().out.splitlines()[0].split()
    assert first == ["lmbook:", lmbook.__version__]


# --- dependencies ------------------------------------------------------------------------
OPTIONAL_IMPORTS: dict[str, str] = {}  # module -> why the package does without it
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
