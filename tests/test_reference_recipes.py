"""The CPU reference recipes of chapters 2, 4 and 7 at their tiny size, and what each chapter computes from a record:
the sentences follow the numbers, whatever the run gives."""

import functools
import math

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from lmbook.runs import reference  # noqa: E402
from lmbook.training.history import History  # noqa: E402
from lmbook.runs.reference import Record  # noqa: E402
from lmbook.runs import recording  # noqa: E402


@pytest.fixture
def quick(monkeypatch):
    """Samples stubbed: they only take time."""
    from lmbook.runs import ch02_rnn, ch04_finetune

    for module in (ch02_rnn, ch04_finetune):
        monkeypatch.setattr(module, "complete", lambda model, tokenizer, prompt, *args, **kwargs: prompt + "...")
    monkeypatch.setattr(ch04_finetune, "prepare", functools.cache(ch04_finetune.prepare))  # the BPE trained once


def test_chapter_2s_recipe_records_the_cells_and_the_unclipped_rnn(tmp_path, shakespeare, quick, one_thread):
    from lmbook.runs.ch02_rnn import SMOKE, UNCLIPPED, reference_facts

    rec = reference.read(recording.record("ch02", "cpu", smoke=True, work=tmp_path, threads=1))
    assert rec.recipe_hash == reference.current_recipe("ch02", "cpu", smoke=True)[1]
    assert set(rec.results["runs"]) == set(rec.histories) == {"rnn", "lstm", "gru", UNCLIPPED}
    assert all(0 < r["val_loss_split"] < 5 for r in rec.results["runs"].values())
    plan = SMOKE["cpu"]  # every run trains the recipe's steps, evaluated at its interval
    for history in rec.histories.values():
        assert history.steps == list(range(plan.max_steps)) and len(history.grad_norm) == plan.max_steps
        assert history.eval_steps == list(range(0, plan.max_steps + 1, plan.eval_interval))
        assert history.tokens_per_step == plan.batch_size * plan.bptt
        assert history.train_loss[-1] < history.train_loss[0] and all(math.isfinite(n) for n in history.grad_norm)
    clipped = rec.histories["rnn"]
    facts = reference_facts(rec)
    assert facts["reference_rnn_bpc"] == rec.results["runs"]["rnn"]["val_loss_split"] / math.log(2)
    assert facts["reference_steps"] == len(clipped.steps) and rec.describe() in facts["reference_verdict"].data
    assert f"{facts['reference_unclipped_bpc']:.3f} bits per character" in facts["reference_verdict"].data
    assert "No reference run is recorded" in reference_facts(None)["reference_verdict"].data
    from lmbook.display.show import report

    report(facts)  # every name is one the prose can use


def ch02_record(losses: dict[str, float], norms: list[float]) -> Record:
    runs = {label: {"params": 1, "val_loss": loss, "best_val_loss": loss, "val_loss_split": loss,
                    "val_loss_in_order": loss - 0.1, "tokens_per_second": 1.0, "seconds": 1.0}
            for label, loss in losses.items()}
    histories = {label: History(steps=list(range(len(norms))), grad_norm=norms, tokens_per_step=2048)
                 for label in losses}
    return Record("ch02", "cpu", {"bptt": 64, "grad_clip": 1.0}, "hash", histories, {"runs": runs},
                  environment={"device": "cpu", "threads": 2}, commit="abc1234", minutes=25.0)


@pytest.mark.parametrize("lstm, gru, says", [(1.2, 1.3, "both gated cells end below the plain RNN"),
                                             (1.2, 1.6, "only the LSTM ends below the plain RNN"),
                                             (1.6, 1.7, "neither gated cell ends below the plain RNN")])
def test_chapter_2s_verdict_follows_the_record(lstm, gru, says):
    from lmbook.runs.ch02_rnn import reference_facts

    verdict = reference_facts(ch02_record({"rnn": 1.5, "lstm": lstm, "gru": gru, "rnn unclipped": 1.55},
                                          [3.0, 0.5, 0.2, 2.0])).get("reference_verdict").data
    assert says in verdict and "lowest first:" in verdict
    assert "ends at 2.236 bits per character against 2.164 with it (worse by 0.072)" in verdict
    assert "above the threshold of 1 at 50% of its steps" in verdict  # two norms of four above 1


def test_chapter_4s_recipe_repeats_the_sweep_over_seeds(tmp_path, shakespeare, quick, one_thread):
    from lmbook.runs.ch04_finetune import plot_reference_sweep, reference_facts

    rec = reference.read(recording.record("ch04", "cpu", smoke=True, work=tmp_path, threads=1))
    seeds = rec.results["accuracy_seeds"]
    assert set(seeds) == {"pretrained", "scratch"} and all(len(v) == 2 for acc in seeds.values() for v in acc.values())
    assert {k: v[0] for k, v in seeds["pretrained"].items()} == rec.results["accuracy"]["pretrained"]
    assert 0 < rec.results["unigram_entropy"] < math.log(270)
    assert rec.results["task"]["test"] > 0 and 0.5 <= rec.results["task"]["majority"] <= 1
    facts = reference_facts(rec)
    assert facts["ch04_mlm_loss"] == rec.histories["mlm"].eval_loss["val"][-1]
    assert "over 2 seeds" in facts["ch04_reference_verdict"].data
    assert len(plot_reference_sweep(rec).get_lines()) >= 3


def ch04_record(mlm_loss: float, pretrained: list[float], scratch: list[float]) -> Record:
    results = {"unigram_entropy": 5.0, "task": {"classes": ["a", "b"], "train": 100, "test": 50, "majority": 0.5},
               "accuracy_seeds": {"pretrained": {"4": pretrained, "None": pretrained},
                                  "scratch": {"4": scratch, "None": [0.9, 0.9, 0.9]}}}
    history = History(steps=list(range(1500)), eval_steps=[0, 1500], eval_loss={"val": [7.0, mlm_loss]})
    return Record("ch04", "cpu", {}, "hash", {"mlm": history}, results, environment={"device": "cpu", "threads": 2},
                  commit="abc1234", minutes=28.0)


def test_chapter_4s_verdict_follows_the_record():
    from lmbook.runs.ch04_finetune import reference_facts

    left = reference_facts(ch04_record(3.5, [0.7, 0.8, 0.75], [0.5, 0.55, 0.6]))["ch04_reference_verdict"].data
    assert "after 1,500 steps is 3.50" in left
    assert "1.50 nats below the tokens' unigram entropy (5.00): it has left the plateau" in left
    assert "with 8 labels, 75% (70%-80%) from pretrained weights against 55% (50%-60%)" in left
    assert "beyond the spread of the seeds with 8 labels." in left
    both = reference_facts(ch04_record(3.5, [0.95, 0.96, 0.97], [0.5, 0.55, 0.6]))["ch04_reference_verdict"].data
    assert "beyond the spread of the seeds with 8 labels and all the labels." in both
    stuck = reference_facts(ch04_record(4.95, [0.5, 0.6, 0.55], [0.5, 0.55, 0.6]))["ch04_reference_verdict"].data
    assert "still on the plateau" in stuck and "at no number of labels" in stuck


def test_chapter_7s_recipe_records_each_size(tmp_path, shakespeare, one_thread):
    from lmbook.runs.ch07_sweep import SMOKE

    rec = reference.read(recording.record("ch07", "cpu", smoke=True, work=tmp_path, threads=1))
    assert rec.recipe_hash == reference.current_recipe("ch07", "cpu", smoke=True)[1]
    assert [tuple(s) for s in rec.recipe["shapes"]] == list(SMOKE["cpu"].shapes)
    sizes = rec.results["sizes"]
    assert [s["shape"] for s in sizes] == [[1, 2, 8], [1, 2, 16]] and sizes[0]["params"] < sizes[1]["params"]
    assert all(0 < s["val_loss"] < 5 and s["tokens"] == 3 * 2 * 8 for s in sizes)
    assert set(rec.histories) == {"size 1 2 8", "size 1 2 16"}
