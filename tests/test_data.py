"""lmbook.text.data: the verified, cached corpus and the batches drawn from it."""

import hashlib

import pytest
import torch

from lmbook.text.data import (
    TINY_SHAKESPEARE,
    ChecksumError,
    DataUnavailableError,
    RandomBatches,
    RemoteFile,
    as_ids,
    fetch,
    load_shakespeare,
    to_device,
    train_val_split,
)


def test_shakespeare_is_the_published_file(shakespeare):
    assert len(shakespeare) == 1_115_394
    assert shakespeare.startswith("First Citizen:")
    assert len(set(shakespeare)) == 65


def remote_for(path, content: bytes) -> RemoteFile:
    return RemoteFile("corpus.txt", path.as_uri(), hashlib.sha256(content).hexdigest())


def test_download_verifies_and_caches(tmp_path):
    source = tmp_path / "published.txt"
    source.write_bytes(b"to be or not to be")
    remote = remote_for(source, b"to be or not to be")
    cache = tmp_path / "cache"
    path = fetch(remote, cache)
    assert path.read_bytes() == b"to be or not to be"
    source.unlink()  # a second call must not need the network
    assert fetch(remote, cache) == path


def test_checksum_mismatch_keeps_no_file(tmp_path):
    source = tmp_path / "published.txt"
    source.write_bytes(b"tampered")
    remote = RemoteFile("corpus.txt", source.as_uri(), "0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match="was not kept"):
        fetch(remote, cache)
    assert list(cache.iterdir()) == []


def test_a_damaged_cached_file_is_moved_aside_and_fetched_again(tmp_path):
    source = tmp_path / "published.txt"
    source.write_bytes(b"to be or not to be")
    remote = remote_for(source, b"to be or not to be")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "corpus.txt").write_bytes(b"to be or not")  # a truncated copy
    path = fetch(remote, cache)
    assert path.read_bytes() == b"to be or not to be"
    aside = [p for p in cache.iterdir() if p.name.startswith("corpus.txt.bad-")]
    assert len(aside) == 1 and aside[0].read_bytes() == b"to be or not"  # kept for a look, not deleted


def test_a_damaged_cached_file_offline_says_where_it_went(tmp_path):
    unreachable = RemoteFile(TINY_SHAKESPEARE.filename, "http://127.0.0.1:9/input.txt", TINY_SHAKESPEARE.sha256)
    (tmp_path / TINY_SHAKESPEARE.filename).write_text("not shakespeare")
    with pytest.raises(DataUnavailableError, match="moved to") as err:
        fetch(unreachable, tmp_path, timeout=5)
    aside = next(tmp_path.glob("tinyshakespeare.txt.bad-*"))
    assert str(aside) in str(err.value) and "LMBOOK_DATA" in str(err.value)
    assert aside.read_text() == "not shakespeare" and not (tmp_path / TINY_SHAKESPEARE.filename).exists()


def test_a_damaged_file_that_cannot_be_moved_is_reported(tmp_path, monkeypatch):
    (tmp_path / TINY_SHAKESPEARE.filename).write_text("not shakespeare")

    def refuse(*args):
        raise PermissionError("read-only folder")

    monkeypatch.setattr("lmbook.text.data.os.replace", refuse)
    with pytest.raises(ChecksumError, match="cannot be moved aside .*read-only"):
        load_shakespeare(tmp_path)


def test_offline_and_absent_says_what_to_do(tmp_path, monkeypatch):
    unreachable = RemoteFile("corpus.txt", "http://127.0.0.1:9/corpus.txt", "0" * 64)
    with pytest.raises(DataUnavailableError) as err:
        fetch(unreachable, tmp_path, timeout=5)
    message = str(err.value)
    assert "curl -L -o" in message and "LMBOOK_DATA" in message and str(tmp_path) in message
    assert list(tmp_path.iterdir()) == []
    assert isinstance(err.value, FileNotFoundError)


def test_a_missing_corpus_fails_once_with_one_message_and_no_socket_traceback(tmp_path, monkeypatch):
    import traceback

    monkeypatch.setenv("LMBOOK_DATA", str(tmp_path / "empty"))
    monkeypatch.setattr("lmbook.text.data.TINY_SHAKESPEARE", RemoteFile(
        TINY_SHAKESPEARE.filename, "http://127.0.0.1:9/input.txt", TINY_SHAKESPEARE.sha256))
    with pytest.raises(DataUnavailableError) as err:
        load_shakespeare()
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no "During handling ..." chain
    shown = "".join(traceback.format_exception(err.value))
    assert shown.count("Traceback") == 1 and "urllib" not in shown and "During handling" not in shown
    assert shown.count("\nlmbook.text.data.DataUnavailableError: ") == 1
    assert "LMBOOK_DATA" in shown and "curl -L -o" in shown


def test_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LMBOOK_DATA", str(tmp_path))
    source = tmp_path / "elsewhere.txt"
    source.write_bytes(b"x")
    path = fetch(RemoteFile("c.txt", source.as_uri(), hashlib.sha256(b"x").hexdigest()))
    assert path.parent == tmp_path


def test_split_keeps_order_and_sizes():
    data = torch.arange(100)
    train, val = train_val_split(data, 0.1)
    assert torch.equal(train, torch.arange(90)) and torch.equal(val, torch.arange(90, 100))
    with pytest.raises(ValueError):
        train_val_split(data, 1.0)


def test_as_ids_equals_torch_tensor_of_the_list():
    ids = [0, 64, 2**40, 7] * 1000
    assert torch.equal(as_ids(ids), torch.tensor(ids)) and as_ids(ids).dtype == torch.int64
    assert as_ids([]).shape == (0,) and as_ids([]).dtype == torch.int64


def test_to_device_on_the_cpu_is_the_tensor_itself():
    t = torch.arange(5)
    assert to_device(t, torch.device("cpu")) is t


def test_batches_are_shifted_windows_and_reproducible():
    data = torch.arange(1000)
    a, b = RandomBatches(data, 8, 4, seed=5), RandomBatches(data, 8, 4, seed=5)
    x, y = a()
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(b()[0], x)
    state = a.state_dict()
    nxt = a()[0]
    a.load_state_dict(state)
    assert torch.equal(a()[0], nxt)


def test_too_little_data_is_refused():
    with pytest.raises(ValueError, match="too few"):
        RandomBatches(torch.arange(5), block_size=8, batch_size=2)


def test_the_tests_cannot_reach_another_host():
    """conftest's guard: a connection that leaves the machine is refused before any packet is sent."""
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.URLError) as err:
        urllib.request.urlopen("http://192.0.2.1/input.txt", timeout=2)  # TEST-NET-1: routable nowhere
    assert isinstance(err.value.reason, ConnectionRefusedError) and "never use the network" in str(err.value.reason)
