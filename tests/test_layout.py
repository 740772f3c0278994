"""The package's layout: concepts apart from the chapters' runs, modules and functions that read in one sitting,
lines within the project's length."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lmbook"
# The package's groups, lowest first: each imports only its own group and those before it. "base" is the
# modules at the top (runtime, config, interface); evaluation is written against the model interface alone.
LAYERS = ("base", "text", "evaluation", "models", "training", "decoding", "display", "runs")
MAX_FUNCTION_LINES, MAX_MODULE_LINES, MAX_LINE = 80, 400, 120


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_lmbook_modules(path: Path, package: Path = PACKAGE) -> set[str]:
    """The full name of every lmbook module (or name in one) that ``path`` imports, relative or absolute."""
    here = module_name(path, package).split(".")
    if path.stem != "__init__":
        here = here[:-1]  # the package the module is in
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name == "lmbook" or name.startswith("lmbook."):
                found |= {f"{name}.{a.name}" for a in node.names} if not node.module else {name}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lmbook.")}
    return found


def layer_of(name: str) -> str:
    """The group of a module's full name: ``lmbook.models.gpt`` is in models, ``lmbook.runtime`` in base."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "base"


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_each_group_imports_only_the_groups_below_it(path):
    own = LAYERS.index(layer_of(module_name(path)))
    above = sorted(n for n in imported_lmbook_modules(path) if LAYERS.index(layer_of(n)) > own)
    assert not above, (f"{module_name(path)} ({LAYERS[own]}) imports {above}, from groups above its own: "
                       f"the order is {' < '.join(LAYERS)}")


@pytest.mark.parametrize("path", sorted((PACKAGE / "runs").glob("*.py")), ids=lambda p: p.stem)
def test_no_chapter_module_imports_another(path):
    """What chapters share is in lmbook.runs.common; trained models of earlier chapters come through the zoo."""
    if not (path.stem.startswith("ch") or path.stem == "quickstart"):
        return
    chapters = {n for n in imported_lmbook_modules(path)
                if n.startswith("lmbook.runs.") and n.split(".")[2].startswith(("ch", "quickstart"))}
    assert not chapters, f"{path.stem} imports {sorted(chapters)}: move what they share to lmbook.runs.common"


def test_the_layout_check_sees_every_form_of_import(tmp_path):
    package = tmp_path / "lmbook"
    (package / "models").mkdir(parents=True)
    (package / "models" / "concept.py").write_text(
        "import torch\nfrom ..training.train import train\nfrom .. import runs\nfrom . import gpt\n"
        "from lmbook.runs.reference import load\nimport lmbook.display.viz\n")
    assert imported_lmbook_modules(package / "models" / "concept.py", package) == {
        "lmbook.training.train", "lmbook.runs", "lmbook.models.gpt", "lmbook.runs.reference", "lmbook.display.viz"}
    assert [layer_of(n) for n in ("lmbook.runs", "lmbook.models.gpt", "lmbook.interface")] == ["runs", "models", "base"]


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
