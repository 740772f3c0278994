"""Shared fixtures. Tests never reach the internet: a guard refuses every connection that leaves the
machine, and the corpus comes from the cache folder (LMBOOK_DATA) or the tests that need it skip."""

import ipaddress
import os
import socket

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


class NetworkRefused(ConnectionRefusedError):
    """A test tried to reach another host: the tests run offline, with local files only."""


def _is_local(address) -> bool:
    if not isinstance(address, tuple):  # a Unix socket
        return True
    host = address[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:  # a name: only resolving it would say where it goes
        return False


_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _guarded(method):
    def connect(self, address):
        if not _is_local(address):
            raise NetworkRefused(f"a test tried to connect to {address!r}; the tests never use the network. "
                                 "Use a local file, a local server on 127.0.0.1, or a model saved by the test.")
        return method(self, address)

    return connect


@pytest.fixture(scope="session", autouse=True)
def no_network():
    """Every test runs with connections to other hosts refused (loopback, for the browser and servers, stays)."""
    socket.socket.connect, socket.socket.connect_ex = _guarded(_connect), _guarded(_connect_ex)
    yield
    socket.socket.connect, socket.socket.connect_ex = _connect, _connect_ex


@pytest.fixture(scope="session")
def shakespeare() -> str:
    """The corpus from the cache folder only: the tests never download it; without it they skip."""
    from lmbook.text.data import TINY_SHAKESPEARE, load_shakespeare
    from lmbook.runtime import DATA_VARIABLE, data_dir

    if not (data_dir() / TINY_SHAKESPEARE.filename).exists():
        pytest.skip(f"{TINY_SHAKESPEARE.filename} is not in the cache folder {data_dir()}: set {DATA_VARIABLE} to a "
                    f"folder that holds it (README, 'Data'); the tests do not download it")
    return load_shakespeare()


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module of tiny computations (faster, and steadier on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
