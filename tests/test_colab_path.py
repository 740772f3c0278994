"""The Colab path: the quickstart runs alone in a fresh torch-only runtime that installs lmbook
with the notebooks' own setup cell (tests/colab_path.py says what is emulated). Marked ``book``: it runs
with the notebooks, at the end. pip reaches PyPI for lmbook's dependencies (from pip's cache when it can);
git reaches this repository only."""

import nbformat
import pytest
from colab_path import DEFAULT_NOTEBOOKS, DEFAULT_OUT, ROOT, ColabPathError, run_colab_path
from test_chapters import what_a_plain_reader_sees


@pytest.mark.book
def test_notebooks_run_the_colab_way(capsys):
    from lmbook.text.data import TINY_SHAKESPEARE
    from lmbook.runtime import DATA_VARIABLE, data_dir

    if not (ROOT / ".git").exists():
        pytest.skip(f"{ROOT} is no git repository: the setup cell's %pip install clones one")
    if not (data_dir() / TINY_SHAKESPEARE.filename).exists():
        pytest.skip(f"{TINY_SHAKESPEARE.filename} is not in the cache folder {data_dir()}: set {DATA_VARIABLE} to a "
                    "folder that holds it (README, 'Data'); the kernel would have to download it")
    with capsys.disabled():  # progress as it goes: this takes minutes
        print()
        try:
            times = run_colab_path(DEFAULT_NOTEBOOKS)
        except ColabPathError as err:
            pytest.fail(str(err), pytrace=False)
    assert set(times) == {"quickstart.ipynb", "total"}
    # as Colab renders them (Markdown, no MyST): every sentence with its numbers, no raw role or directive
    for name in ("quickstart.ipynb",):
        texts, problems = what_a_plain_reader_sees(nbformat.read(DEFAULT_OUT / name, as_version=4))
        assert not problems, f"{name} as Colab renders it:\n" + "\n".join(problems)
        assert any("held-out" in text and any(c.isdigit() for c in text) for text in texts)
