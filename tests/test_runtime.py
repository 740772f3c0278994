"""lmbook.runtime: the size read from LMBOOK_SIZE, the device, the seeds, the environment report, autocast and the
process group, each with the environment and the hardware monkeypatched (no GPU is needed)."""

import importlib.metadata
import random

import numpy as np
import pytest
import torch

from lmbook import __version__, runtime


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("LMBOOK_DEVICE", raising=False)
    monkeypatch.delenv(runtime.SIZE_VARIABLE, raising=False)


@pytest.fixture
def a_gpu(monkeypatch):
    """A CUDA device as far as runtime can tell: present, named, bf16-capable."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Test GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.delenv("LMBOOK_DEVICE", raising=False)
    monkeypatch.delenv(runtime.SIZE_VARIABLE, raising=False)


def test_the_size_follows_the_hardware_unless_the_variable_says_otherwise(monkeypatch, no_gpu):
    assert runtime.size() == "fast" and runtime.pick(full="big", fast="small") == "small"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.size() == "full" and runtime.pick(full="big", fast="small") == "big"
    for value, expected in [("fast", "fast"), (" FULL ", "full"), ("Fast\n", "fast"), ("", "full")]:
        monkeypatch.setenv(runtime.SIZE_VARIABLE, value)
        assert runtime.size() == expected, value
    monkeypatch.setenv(runtime.SIZE_VARIABLE, "medium")
    with pytest.raises(ValueError, match=r"LMBOOK_SIZE='medium' is not a size; set it to 'full'.*or 'fast'"):
        runtime.size()
    with pytest.raises(ValueError, match="LMBOOK_SIZE"):
        runtime.pick(full=1, fast=2)


def test_the_device_is_cuda_when_present_and_what_is_asked_for_otherwise(monkeypatch, no_gpu):
    assert runtime.get_device() == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA was asked for but torch sees no CUDA device"):
        runtime.get_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="MPS was asked for"):
        runtime.get_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.get_device() == torch.device("cuda")
    assert runtime.get_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LMBOOK_DEVICE", "cpu")  # a whole notebook on the CPU, GPU or not
    assert runtime.get_device() == torch.device("cpu") and runtime.get_device("cuda") == torch.device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setenv("LMBOOK_DEVICE", "mps")  # opt-in only
    assert runtime.get_device() == torch.device("mps")


def test_a_device_that_is_no_choice_is_refused_with_the_choices(monkeypatch, no_gpu):
    for wrong in ("gpu", "CUDA", "cuda:", "cuda:x", "cpu:0:1", 1):
        with pytest.raises(ValueError, match=f"{wrong!r}.*'cpu', 'cuda'.*'mps'.*LMBOOK_DEVICE"):
            runtime.get_device(wrong)
    monkeypatch.setenv("LMBOOK_DEVICE", "gpu")  # the variable is read with the same choices
    with pytest.raises(ValueError, match="'gpu' is not a choice of the book"):
        runtime.get_device()
    with pytest.raises(RuntimeError, match="CUDA was asked for"):
        runtime.get_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.get_device("cuda:1") == torch.device("cuda", 1)
    assert runtime.get_device(torch.device("cpu")) == torch.device("cpu")  # a device passes as its name


def test_autocast_is_bf16_on_capable_gpus_only(monkeypatch, a_gpu):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert runtime.autocast_dtype(cuda) is torch.bfloat16 and runtime.autocast_dtype(cpu) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert runtime.autocast_dtype(cuda) is None
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with runtime.autocast(cpu):  # "auto" on a CPU: float32
        assert (a @ b).dtype == torch.float32
    with runtime.autocast(cpu, "fp32"):
        assert (a @ b).dtype == torch.float32
    with runtime.autocast(cpu, "bf16"):  # asked for: bf16 on the CPU too
        product = a @ b
    assert product.dtype == torch.bfloat16
    torch.testing.assert_close(product.float(), a @ b, atol=0.1, rtol=0.02)


def test_autocast_refuses_an_unknown_precision():
    with pytest.raises(ValueError, match="precision"):
        runtime.autocast(torch.device("cpu"), "bf15")


def draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_seeding_repeats_python_numpy_and_torch_draws():
    runtime.seed_everything(1234)
    first = draws()
    runtime.seed_everything(1234)
    assert draws() == first
    runtime.seed_everything(1235)
    assert all(a != b for a, b in zip(draws(), first))  # each generator was seeded, not only one of them
    runtime.seed_everything(2**40 + 1234)  # beyond numpy's 32 bits: reduced modulo 2**32 for numpy only
    assert draws()[1] == first[1]


@pytest.mark.parametrize("seed", [2.5, True, None, "3", 2**64, -2**63 - 1])
def test_seeding_refuses_what_is_not_an_integer_before_seeding_anything(seed):
    runtime.seed_everything(7)
    expected = draws()
    runtime.seed_everything(7)
    with pytest.raises((TypeError, ValueError), match="seed"):
        runtime.seed_everything(seed)
    assert draws() == expected


def test_device_names_say_which_device(monkeypatch, a_gpu):
    assert runtime.device_name(torch.device("cuda")) == "NVIDIA Test GPU" == runtime.device_name()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    monkeypatch.setattr(runtime.platform, "processor", lambda: "")
    monkeypatch.setattr(runtime.platform, "machine", lambda: "x86_64")
    assert runtime.device_name(torch.device("cpu")) == "cpu (3 threads, x86_64)"
    assert runtime.device_name(torch.device("meta")) == "meta"


def test_the_environment_reports_versions_device_and_size(monkeypatch, capsys, no_gpu):
    monkeypatch.setenv(runtime.SIZE_VARIABLE, "full")
    real_version = importlib.metadata.version

    def version(name):
        if name == "tokenizers":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    info = runtime.environment()
    assert list(info)[:5] == ["lmbook", "python", "torch", "device", "size"] and "cuda" not in info
    assert info["lmbook"] == __version__ and info["torch"] == torch.__version__ and info["size"] == "full"
    assert info["device"] == runtime.device_name(torch.device("cpu")) and info["tokenizers"] == "not installed"
    assert info["transformers"] == real_version("transformers") and info["numpy"] == np.__version__
    runtime.show_environment()
    assert capsys.readouterr().out.splitlines() == [f"{k:>12}: {v}" for k, v in info.items()]


def test_the_environment_names_cuda_when_there_is_a_gpu(monkeypatch, a_gpu):
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    info = runtime.environment()
    assert info["device"] == "NVIDIA Test GPU" and info["cuda"] == "12.4" and info["size"] == "full"


def test_one_process_is_rank_0_of_1_and_averages_nothing():
    assert runtime.world() == (0, 1)
    values = torch.tensor([1.0, 3.0])
    assert runtime.mean_over_processes(values) is values and values.tolist() == [1.0, 3.0]


def test_the_first_cell_keeps_import_notes_off_the_page_and_errors_on_it(capsys, caplog):
    import logging

    for name in runtime.QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    runtime.show_environment()
    capsys.readouterr()
    with caplog.at_level(logging.NOTSET):  # the handler takes all; the loggers' own levels decide
        for name in runtime.QUIET_LOGGERS:
            logging.getLogger(name).warning("a note at import")
            logging.getLogger(name).error("an error")
    assert [r.getMessage() for r in caplog.records] == ["an error"] * len(runtime.QUIET_LOGGERS)
