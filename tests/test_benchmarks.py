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


# --- bench_decode.py's chapter 8 options: tiny shapes, two new tokens, one repeat ---
TINY_DECODE = ["--batch-sizes", "1", "2", "--new-tokens", "2", "--prompt-length", "4", "--repeats", "1"]
RATES = ["--bandwidth", "--stream-mib", "8", "--matvec-mib", "4"]


def needs_compiler():
    if script("decode_kernels").compiler() is None:
        pytest.skip("no C compiler for the decoding kernels")


def test_bench_decode_rates_int8_and_kernels_on_a_tiny_gpt(tmp_path):
    needs_compiler()
    out = tmp_path / "decode.json"
    result = script("bench_decode").main(["--shapes", "tiny", *TINY_DECODE, *RATES, "--int8", "--kernels",
                                          "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["stream"]["gb_s"] > 0 and result["stream"]["mib"] == 8
    names = ("lmbook", "transformers", "lmbook-int8", "lmbook-c", "lmbook-int8-c")
    assert [row["batch"] for row in result["rows"]] == [1, 2]
    for row in result["rows"]:
        m = row["matvec"]
        assert min(m["out_in_gb_s"], m["in_out_gb_s"], m["kernel_f32_gb_s"], m["kernel_i8_gb_s"]) > 0
        assert m["best_gb_s"] == max(m["out_in_gb_s"], m["in_out_gb_s"]) and m["mib"] >= 4
        for name in names:
            assert row[f"{name}_tok_s_median"] > 0 and row[f"{name}_gb_s"] > 0
            assert row[f"{name}_of_stream"] > 0 and row[f"{name}_of_matvec"] > 0
            assert row[f"{name}_gb_s"] == pytest.approx(row[f"{name}_step_bytes"] * row[f"{name}_tok_s_median"]
                                                        / row["batch"] / 1e9)
        assert row["same_ids"] and row["lmbook-c_same_ids"] and row["lmbook-int8-c_same_ids"]
        assert 0 <= row["lmbook-int8_agreement"] <= 1 and row["lmbook-int8_ratio_median"] > 0
        assert row["lmbook-int8_step_bytes"] < row["lmbook_step_bytes"] / 3  # int8 and scales: a bit over a quarter
        assert 0 < row["int8_quality"]["logits_change"] < 0.05 and "trained" not in row["int8_quality"]


def test_step_bytes_counts_each_matrix_once():
    from lmbook.models.gpt import GPT, GPTConfig
    from lmbook.models.quantize import quantize_int8

    rates = script("decode_rates")
    c = GPTConfig.preset("tiny")
    model = GPT(c)
    L, C, V = c.n_layer, c.n_embd, c.vocab_size
    blocks = L * (3 * C * C + 3 * C + C * C + C + 4 * C * C + 4 * C + 4 * C * C + C)  # weights and biases
    assert rates.step_bytes(model) == 4 * (blocks + V * C)  # the tied output matrix once, no embedding lookups
    rows = L * (3 * C + C + 4 * C + C) + V  # output rows: one float32 scale each
    biases = L * (3 * C + C + 4 * C + C)
    assert rates.step_bytes(quantize_int8(model)) == (blocks - biases + V * C) + 4 * rows + 4 * biases
    shapes = rates.matrix_shapes(model)
    assert shapes[:4] == [(3 * C, C), (C, C), (4 * C, C), (C, 4 * C)] and shapes[-1] == (V, C)
    assert sum(o * i for o, i in rates.repeated(shapes, 10**6, 4)) * 4 >= 10**6


@pytest.mark.parametrize("rows", [1, 3, 8, 9])
def test_the_c_kernels_compute_what_linear_and_int8linear_do(rows):
    needs_compiler()
    import torch
    from lmbook.models.quantize import Int8Linear

    kernels = script("decode_kernels")
    torch.manual_seed(0)
    for n_in, n_out, bias in ((37, 19, True), (64, 96, False), (384, 1152, True)):
        linear = torch.nn.Linear(n_in, n_out, bias=bias)
        x = torch.randn(rows, 2, n_in)
        with torch.no_grad():
            for layer in (linear, Int8Linear(linear)):
                ref = layer(x)
                got = kernels.KernelLinear(layer)(x)
                assert got.shape == ref.shape
                assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    with pytest.raises(ValueError, match="float32 inputs"):
        kernels.kernel_linear(x.double(), linear.weight)


def test_bench_decode_llama_against_llamaforcausallm(tmp_path):
    result = script("bench_decode").main(["--llama", "--shapes", "llama-tiny", *TINY_DECODE, *RATES])
    assert [(row["shape"], row["batch"], row["same_ids"]) for row in result["rows"]] == [
        ("llama-tiny", 1, True), ("llama-tiny", 2, True)]
    for row in result["rows"]:
        assert row["lmbook_tok_s_median"] > 0 and row["transformers_tok_s_median"] > 0
        assert row["lmbook_gb_s"] > 0 and row["lmbook_of_matvec"] > 0


def test_int8_quality_of_the_trained_char_gpt(shakespeare, monkeypatch):
    from types import SimpleNamespace

    import torch
    from lmbook.models.gpt import GPT, GPTConfig
    from lmbook.runs import zoo

    torch.manual_seed(0)
    tiny = GPT(GPTConfig.preset("tiny"))  # stands in for the trained model, which takes a minute to train
    monkeypatch.setattr(zoo, "trained", lambda name, device=None: SimpleNamespace(model=tiny))
    q = script("decode_models").trained_quality(torch.device("cpu"), prompts=2, new_tokens=4)
    assert q["held_out_chars"] > 100_000 and q["block_size"] == 32
    assert abs(q["bpc_fp32"] - 6.02) < 0.1  # random weights: about log2(65) bits a character
    assert abs(q["bpc_change"]) < 0.01 and 0 <= q["greedy_agreement"] <= 1


@pytest.mark.parametrize("argv, message", [
    (["--shapes", "gpt3"], "unknown GPT shape"),
    (["--shapes", "llama-char"], "Llama shapes need --llama"),
    (["--llama", "--shapes", "tiny"], "unknown Llama shape"),
    (["--shapes", "tiny", "--new-tokens", "40"], "exceed the context"),
])
def test_bench_decode_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        script("bench_decode").main(argv + ["--batch-sizes", "1", "--repeats", "1"])
    assert message in str(stopped.value.code)


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--int8", "--dtype", "bfloat16"], ["--stream-mib", "-1"]])
def test_bench_decode_refuses_bad_options(argv, capsys):
    with pytest.raises(SystemExit):
        script("bench_decode").main(argv)
    assert "error" in capsys.readouterr().err


def test_int8linear_in_blocks_computes_what_the_whole_matrix_does(monkeypatch):
    import torch
    import torch.nn.functional as F
    from lmbook.models import quantize

    torch.manual_seed(0)
    layer = quantize.Int8Linear(torch.nn.Linear(96, 1000))
    monkeypatch.setattr(quantize, "BLOCK_BYTES", 96 * 4 * 300)  # blocks of 300 rows: 300, 300, 300, 100
    x = torch.randn(3, 5, 96)
    whole = F.linear(x, layer.qweight.float()) * layer.scale + layer.bias
    torch.testing.assert_close(layer(x), whole, atol=1e-5, rtol=1e-5)
