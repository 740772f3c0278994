"""The benchmark scripts: they run end to end on a CPU at tiny sizes, and every command of
``benchmarks/gpu_runs.sh`` is accepted by the script it calls (a renamed option would
otherwise be found only on a GPU machine, after its start-up)."""

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lmbook.runs import reference

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def script(name: str):
    """``benchmarks/<name>.py`` imported as a module (its ``main`` is not run)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # the scripts import each other by name
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Parsed(Exception):
    """Raised in place of running a script, once its arguments have parsed."""


def parse_only(main, argv: list[str], monkeypatch) -> argparse.Namespace:
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(parse(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(Parsed) as parsed:
        main(argv)
    return parsed.value.args[0]


def test_bench_gpt_runs_both_models_on_the_cpu(tmp_path, monkeypatch):
    bench = script("bench_gpt")
    timed = []  # steps of each timed stretch; each step is said to take a quarter of a second

    def run_steps(step, first, n, device):
        for i in range(first, first + n):
            step(i)
        timed.append(n)
        return 0.25 * n

    monkeypatch.setattr(bench, "run_steps", run_steps)
    out = tmp_path / "bench.json"
    result = bench.main(["--preset", "tiny", "--batch-size", "2", "--seq-len", "16", "--steps", "2",
                         "--warmup", "1", "--profile", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert timed == [1, 2, 2, 1, 2]  # warm-up and timed steps of lmbook, its profile, then transformers'
    c = result["sizes"]
    lmbook, hf = result["models"]["lmbook"], result["models"]["transformers"]
    for r in (lmbook, hf):
        assert (r["warmup_seconds"], r["seconds"], r["ms_per_step"]) == (0.25, 0.5, 250.0)
        assert r["tokens_per_second"] == 2 * 16 * 2 / 0.5  # batch x sequence x steps over the seconds
        assert r["mfu"] is None  # no peak rate for a CPU
    L, C = c["n_layer"], c["n_embd"]
    n = L * (12 * C * C + 13 * C) + c["vocab_size"] * C + 2 * C  # blocks, the tied embedding, the last LayerNorm
    assert lmbook["flops_per_token"] == 6 * n + 12 * L * 16 * C  # 6N + 12LTC, positions excluded
    assert result["speedup_over_transformers"] == 1.0  # equal seconds
    assert result["profile"] == {"ms_per_step": 250.0}  # kernels and busy: on a GPU only


def test_cpu_speed_run_records_its_curve_and_verdict(tmp_path, shakespeare):  # trains on the cached corpus
    out = tmp_path / "run.json"
    result = script("speedrun_char_cpu").main(["--max-steps", "4", "--eval-interval", "2", "--eval-iters", "1",
                                               "--label", "tiny", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["curve"]["step"] == [0, 2, 4]
    seconds = result["curve"]["seconds_from_start"]
    assert seconds == sorted(seconds) and seconds[-1] < result["seconds_to_final_loss"]
    assert 3.0 < result["final_val_loss"] < 4.5  # four steps from ln(65) = 4.17
    assert result["target_met"] is False
    assert result["recipe"]["max_steps"] == 4


def test_the_host_speed_is_the_products_flops_over_their_time(monkeypatch):
    from types import SimpleNamespace

    speedrun = script("speedrun_char_cpu")
    clock = iter([0.0, 0.125, 0.25, 0.375, 0.5, 0.625])  # the start, three products within 0.5 s, the end
    monkeypatch.setattr(speedrun, "time", SimpleNamespace(perf_counter=clock.__next__))
    products = 2 * 64 * 16 * (4 * 16)  # multiply-adds of (64, 16) @ (16, 64), as FLOPs
    assert speedrun.host_matmul_gflops(16, 64, seconds=0.5) == 3 * products / 0.625 / 1e9


def gpu_commands(part: str, tmp_path: Path) -> list[list[str]]:
    """The commands ``gpu_runs.sh PART`` would run, each as its argument list."""
    env = {**os.environ, "PYTHON": "echo"}
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_runs.sh"), part, str(tmp_path / part)], env=env,
                          capture_output=True, text=True, check=True)
    lines = [line for line in done.stdout.splitlines() if line and not line.startswith(("==", "-c "))]
    return [shlex.split(line) for line in lines]


@pytest.mark.parametrize("part", ["check", "mfu", "decode", "references"])
def test_every_gpu_command_parses(part, tmp_path, monkeypatch):
    commands = gpu_commands(part, tmp_path)
    assert commands
    for argv in commands:
        if argv[:2] == ["-m", "pytest"]:
            assert "gpu" in argv
        elif argv[:2] == ["-m", "lmbook.runs.reference"]:
            args = parse_only(reference.main, argv[2:], monkeypatch)
            assert args.command == "record" and args.chapter in reference.RECIPES and args.level == "gpu"
        else:
            name = Path(argv[0]).stem
            parse_only(script(name).main, argv[1:], monkeypatch)
        monkeypatch.undo()


def test_gpu_runs_refuses_an_unknown_part(tmp_path):
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_runs.sh"), "everything", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "check, mfu, decode or references" in done.stderr
