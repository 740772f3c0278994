"""The package's layout: concepts apart from the chapters' runs, modules and functions that read in one sitting,
lines within the project's length."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lmbook"
# What a concept module may not import: the training loop and what is built on it.
ABOVE_CONCEPTS = {"train", "optim", "cudagraph", "checkpoint", "runs", "reference"}
# The modules above the concepts (they may import anything below them).
UPPER = {"train", "optim", "cudagraph", "checkpoint", "history", "reference", "__init__"}
MAX_FUNCTION_LINES, MAX_MODULE_LINES, MAX_LINE = 80, 400, 120


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def concept_modules() -> list[Path]:
    return [p for p in modules() if p.parent == PACKAGE and p.stem not in UPPER]


def imported_lmbook_modules(path: Path, package: Path = PACKAGE) -> set[str]:
    """The first component under ``lmbook`` of every module ``path`` imports (relative or absolute)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level == 1 and path.parent == package:
                parts = name.split(".") if name else [alias.name for alias in node.names]
                found.add(parts[0])
            elif name.startswith("lmbook."):
                found.add(name.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("lmbook.")}
    return found


@pytest.mark.parametrize("path", concept_modules(), ids=lambda p: p.stem)
def test_concept_modules_import_neither_the_training_loop_nor_the_runs(path):
    wrong = imported_lmbook_modules(path) & ABOVE_CONCEPTS
    assert not wrong, f"lmbook/{path.name} is a concept module but imports {sorted(wrong)}: move such code to runs/"


def test_the_layout_check_sees_every_form_of_import(tmp_path):
    package = tmp_path / "lmbook"
    package.mkdir()
    (package / "concept.py").write_text("import torch\nfrom .train import train\nfrom . import runs\n"
                                        "from lmbook.reference import load\nimport lmbook.gpt\n")
    assert imported_lmbook_modules(package / "concept.py", package) == {"train", "runs", "reference", "gpt"}


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_modules_and_functions_read_in_one_sitting(path):
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.name} has {len(text.splitlines())} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: functions longer than {MAX_FUNCTION_LINES} lines: {long}"


@pytest.mark.parametrize("folder", ["lmbook", "tests", "benchmarks"])
def test_lines_are_at_most_120_characters(folder):
    long = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / folder).rglob("*.py"))
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if len(line) > MAX_LINE]
    assert not long, f"lines over {MAX_LINE} characters (the project's ruff setting): {long}"
