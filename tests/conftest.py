"""Shared fixtures. Tests never reach the internet: data comes from LMBOOK_DATA or ../shared/data."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
if "LMBOOK_DATA" not in os.environ and (SHARED_DATA / "tinyshakespeare.txt").exists():
    os.environ["LMBOOK_DATA"] = str(SHARED_DATA)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one")
    config.addinivalue_line("markers", "book: executes the notebooks and builds the book")
    config.addinivalue_line("markers", "browser: opens the built book in Chromium; runs after the build")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
    # the book is built last, from the notebooks executed before it, and then opened in a browser
    items.sort(key=lambda item: ("book" in item.keywords, "browser" in item.keywords))


@pytest.fixture(scope="session")
def shakespeare() -> str:
    from lmbook.data import load_shakespeare

    return load_shakespeare()


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module of tiny computations (faster, and steadier on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
