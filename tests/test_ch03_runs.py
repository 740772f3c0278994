"""Chapter 3's speed runs as the page reads them (lmbook.runs.ch03_speedruns) and the words it computes from its runs
(lmbook.runs.ch03_gpt): the records shipped in benchmarks/results, and small made-up records whose verdicts are
known."""

import json
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pytest

from lmbook.runs.ch03_gpt import RUNS, compared_loss, order_verdict
from lmbook.runs.ch03_speedruns import H100_AIM, cpu_speedruns, gpu_speedruns, recorded
from lmbook.training.history import History

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parent.parent


def gpu_run(label: str, final: float, seconds: float, curve: list[float]) -> dict:
    return {"label": label, "final_val_loss": final, "seconds_to_final_loss": seconds,
            "environment": {"device": "H100", "torch": "2.x"},
            "model": {"n_layer": 6, "n_embd": 384, "block_size": 256},
            "args": {"steps": 1000, "batch_size": 64, "schedule": "linear", "min_lr": 0.0},
            "curve": {"step": list(range(0, 100 * len(curve), 100)), "val_loss": curve,
                      "seconds_from_start": [float(s) for s in range(len(curve))]}}


def cpu_run(recipe: dict, seed: int, loss: float, seconds: float, met: bool, load: float = 1.0) -> dict:
    return {"recipe": recipe, "seed": seed, "final_val_loss": loss, "seconds_to_final_loss": seconds,
            "target": {"loss": 1.9, "seconds": 70.0}, "target_met": met, "threads": 2, "load_average": [load],
            "environment": {"device": "cpu", "torch": "2.x"}}


def test_recorded_reads_the_folder_around_the_working_folder_and_none_elsewhere(tmp_path):
    folder = tmp_path / "benchmarks/results/runs"
    folder.mkdir(parents=True)
    for name, value in (("b.json", 2), ("a.json", 1)):
        (folder / name).write_text(json.dumps({"x": value}))
    (tmp_path / "book").mkdir()
    assert recorded("runs", start=tmp_path / "book") == [{"x": 1}, {"x": 2}]  # found from below, in name order
    assert recorded("elsewhere", start=tmp_path / "book") is None


def test_the_shipped_records_are_read_and_drawn():
    gpu, cpu = recorded("speedrun-char-h100", start=ROOT), recorded("speedrun-char-cpu", start=ROOT)
    assert gpu and cpu
    facts = gpu_speedruns(gpu)
    assert facts["h100_aim_loss"] == H100_AIM["loss"] and "layers" in facts["h100_shape"].data
    assert facts["h100_verdict"].data.endswith(".") and "of the 0" not in facts["h100_verdict"].data
    facts = cpu_speedruns(cpu, RUNS["fast"].to_dict())
    assert facts["cpu_aim"].data.startswith("The aim is a validation loss of at most")
    plt.close("all")


def test_gpu_verdicts_count_in_words():
    runs = [gpu_run("a", 1.46, 29.0, [1.6, 1.5, 1.46]), gpu_run("b", 1.52, 25.0, [1.6, 1.5, 1.49, 1.52])]
    facts = gpu_speedruns(runs)
    assert facts["h100_verdict"].data == "1 of the 2 recorded runs met it."
    assert "then overfit" in facts["h100_curves"].data and "Run `b`" in facts["h100_curves"].data
    assert "The best run, `a`, decays its learning rate linearly to zero" in facts["h100_curves"].data
    runs[1]["final_val_loss"] = 1.47
    assert gpu_speedruns(runs)["h100_verdict"].data == "Both recorded runs met it."
    slow = [gpu_run("a", 1.50, 40.0, [1.6, 1.5]), gpu_run("b", 1.55, 20.0, [1.6, 1.55])]
    assert gpu_speedruns(slow)["h100_verdict"].data == (
        "None of the 2 recorded runs met it: the best reached 1.5000 at 40.0 seconds, and 1 of the 2 runs finished "
        "within 30 seconds, ending between 1.550 and 1.550.")
    assert "not in this copy of the book" in gpu_speedruns(None)["h100_verdict"].data
    plt.close("all")


def test_cpu_verdicts_separate_the_current_recipe_and_find_repeats():
    now, before = {"steps": 700}, {"steps": 600}
    runs = [cpu_run(before, 0, 1.95, 60.0, False), cpu_run(now, 1, 1.88, 65.0, True),
            cpu_run(now, 1, 1.88, 69.0, True), cpu_run(now, 2, 1.91, 66.0, False, load=3.0)]
    facts = cpu_speedruns(runs, now)
    assert facts["cpu_verdict"].data == ("2 of the 3 recorded runs of the fast recipe met it, with losses from 1.880 "
                                         "to 1.910 (seeds 1, 2) at 65.0 to 69.0 seconds from process start.")
    assert "took from 65.0 to 69.0 seconds over 2 runs" in facts["cpu_spread"].data
    assert cpu_speedruns(runs, {"steps": 800})["cpu_verdict"].data.startswith("The fast recipe as it stands has no")
    assert cpu_speedruns(None, now)["cpu_spread"].data == ""
    plt.close("all")


@pytest.mark.parametrize("moved, learned, words", [
    (0.0004, 0.3, "its prediction does not depend on the order of its context, to three decimals"),
    (0.05, 0.3, "its prediction depends less on the order of its context"),
    (0.5, 0.3, "its prediction depends more on the order of its context"),
])
def test_order_verdict_calls_a_rounded_zero_no_dependence(moved, learned, words):
    assert order_verdict(moved, learned).data == words


def test_compared_loss_reads_to_the_printed_decimals():
    def run(loss):
        h = History()
        h.eval_loss["val"] = [loss]
        return h
    assert compared_loss(run(1.2341), run(1.2344)).data == "as low as"
    assert compared_loss(run(1.20), run(1.25)).data == "lower than"
    assert compared_loss(run(1.30), run(1.25)).data == "higher than"
