"""Chapter 3b's task (lmbook.text.reorder) and runs (lmbook.runs.ch03b_seq2seq): the lines and their split, the two
encodings, the scores, and a first, broken language model on nn.Transformer, each mistake failing as the chapter
says."""

from __future__ import annotations

import html

import pytest
import torch

from lmbook.runs import ch03b_seq2seq as ch
from lmbook.text.reorder import (BOS, EOS, PAD, SEP, PairBatches, encode_pairs, reorder_task, sort_words,
                                 task_lines)

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.
You are all resolved rather to die than to famish?
Resolved. resolved.
We know't, we know't.
Let us kill him, and we'll have corn at our own price.
Is't a verdict?
No more talking on't; let it be done: away, away!
One word, good citizens.
Speak, speak.
"""


def test_sort_words_orders_the_tokens_case_ignored():
    assert sort_words("Farewell , my lord .") == ", . Farewell lord my"
    assert sort_words("b A a B") == "A a B b"
    with pytest.raises(TypeError, match="line must be a string"):
        sort_words(3)


def test_task_lines_keep_short_distinct_lines_of_common_tokens():
    lines = task_lines(TEXT, min_words=3, max_words=8, vocab_words=1000)
    assert lines[0] == "Speak , speak ."  # the speakers' names are left out, the tokens one space apart
    assert lines.count("Speak , speak .") == 1  # distinct lines
    assert all(3 <= len(line.split()) <= 8 for line in lines)
    assert "Before we proceed any further , hear me speak ." not in lines  # ten tokens
    rare = task_lines(TEXT, 3, 8, vocab_words=5)  # only lines made of the five most frequent tokens
    assert rare == ["Speak , speak ."] or all(len(set(line.split())) <= 5 for line in rare)
    with pytest.raises(ValueError, match="max_words must be >= 3"):
        task_lines(TEXT, 3, 2)


def test_the_split_is_deterministic_and_shares_no_line():
    a, b, c = reorder_task(TEXT, seed=0, val_fraction=0.3), reorder_task(TEXT, seed=0, val_fraction=0.3), \
        reorder_task(TEXT, seed=1, val_fraction=0.3)
    assert a == b and (a.train, a.val) != (c.train, c.val)
    assert not set(a.train) & set(a.val) and a.val
    assert sorted(a.train + a.val) == sorted(c.train + c.val)
    line = a.val[0]
    assert a.decode(a.encode(line)) == line
    assert a.decode(a.encode(line) + [EOS, 7]) == line and a.decode([BOS, PAD, SEP]) == ""
    with pytest.raises(ValueError, match="not in the task's vocabulary"):
        a.encode("Verona")
    with pytest.raises(ValueError, match="too few to hold some out"):
        reorder_task("one two three", val_fraction=0.5)


def test_the_two_encodings_put_the_loss_on_the_target_only():
    task = reorder_task(TEXT, seed=0, val_fraction=0.3)
    pairs = task.pairs("train")[:3]
    S = task.max_len
    x, y = encode_pairs(task, pairs, "seq2seq")
    assert x.shape == (3, 2 * S + 1) and y.shape == (3, S + 1)
    for (source, target), row, ys in zip(pairs, x, y):
        n = len(target.split())
        assert task.decode(row[:S]) == source and row[S] == BOS and task.decode(row[S + 1:]) == target
        assert ys[:n].tolist() == row[S + 1:S + 1 + n].tolist() and ys[n] == EOS and (ys[n + 1:] == -1).all()
    x, y = encode_pairs(task, pairs, "joint")
    assert x.shape == y.shape == (3, 2 * S + 1)
    for (source, target), row, ys in zip(pairs, x, y):
        n, m = len(source.split()), len(target.split())
        assert row[n] == SEP and (ys[:n] == -1).all()  # no loss on the source
        assert task.decode(ys[n:n + m + 1]) == target and ys[n + m] == EOS and (ys >= 0).sum() == m + 1
        assert torch.equal(row[1:n + m + 1], torch.where(ys[:n + m] >= 0, ys[:n + m], row[1:n + m + 1]))
    with pytest.raises(ValueError, match="mode must be one of"):
        encode_pairs(task, pairs, "both")
    with pytest.raises(ValueError, match="pairs is empty"):
        encode_pairs(task, [])


def test_pair_batches_are_seeded():
    task = reorder_task(TEXT, seed=0, val_fraction=0.3)
    a, b = PairBatches(task, "train", 4, seed=3), PairBatches(task, "train", 4, seed=3)
    xa, ya = a()
    xb, yb = b()
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.shape[0] == 4
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        PairBatches(task, "test", 4)


def test_scores():
    assert ch.in_place("abc", "abd") == pytest.approx(2 / 3) and ch.in_place("", "") == 1.0
    assert ch.in_place("ab", "abcd") == 0.5
    scores = ch.score(["a b c", "x y"], ["a b c", "y x"])
    assert scores == {"exact": 0.5, "words": 0.5, "chars": pytest.approx((1 + 1 / 3) / 2)}
    with pytest.raises(ValueError, match="2 predictions for 1 targets"):
        ch.score(["a", "b"], ["a"])


RUN = ch.RUNS["fast"].replace(d_model=16, n_head=2, n_layer=1, d_ff=32, max_steps=3, warmup_steps=1, eval_interval=3,
                              eval_iters=1, batch_size=4, n_eval=3, num_beams=2, first_width=16, first_layer=1,
                              first_block=8, first_batch=4, first_steps=2)


def test_copied_share_and_verdict_words():
    assert ch.copied_share(["a b b", "c"], ["b a c", "d"]) == pytest.approx(2 / 4)  # each source token used once
    assert ch.copied_share([""], ["a"]) == 0.0
    assert [ch.compared(v, 1.0, 0.1, "below", "level", "above").data for v in (0.5, 1.05, 1.5)] == [
        "below", "level", "above"]


def test_compare_trains_both_models_and_scores_both_decodings():
    task = reorder_task(TEXT, seed=0, val_fraction=0.3)
    results = ch.compare(RUN, task, device="cpu")
    values = ch.compare_report(results)
    assert values["ed_params"] == results["encoder-decoder"]["params"]
    assert values["loss_verdict"].data in ("lower than", "about the same as", "higher than")
    assert 0 <= values["gpt_copied"] <= 1 and "<table>" in ch.comparison_table(results).data
    assert html.escape(results["sources"][0]) in ch.examples_table(results).data
    n = min(RUN.n_eval, len(task.val))
    assert results["targets"] == [t for _, t in task.pairs("val")[:n]] and n >= 2
    for name in ch.MODELS:
        r = results[name]
        assert len(r["greedy"]) == len(r["beam"]) == n and r["params"] > 0 and r["history"].steps[-1] == 2
        assert all(0 <= r[f"{d}_{s}"] <= 1 for d in ("greedy", "beam") for s in ("exact", "words", "chars"))
        assert r["greedy_exact"] == ch.score(r["greedy"], results["targets"])["exact"]


def seed_model(*fixed):
    torch.manual_seed(0)
    return ch.FirstTryLM(65, 16, 2, 1, 8, fixed).eval()


def test_first_try_as_written_fails_for_want_of_a_target_then_on_the_loss():
    x, y = torch.randint(65, (4, 8)), torch.randint(65, (4, 8))
    with pytest.raises(TypeError, match="tgt"):
        seed_model()(x, y)
    with pytest.raises(RuntimeError, match="Expected target size"):
        seed_model("tgt")(x, y)
    logits, loss = seed_model("tgt", "reshape")(x, y)
    assert logits.shape == (4, 8, 65) and loss.ndim == 0
    with pytest.raises(ValueError, match="unknown fixes"):
        seed_model("everything")


def test_first_try_mistakes_show_in_what_each_output_depends_on():
    x = torch.randint(65, (4, 8))
    steps = {"axes swapped": ("tgt", "reshape"), "no mask": ("tgt", "reshape", "axes"),
             "target mask only": ("tgt", "reshape", "axes", "causal"),
             "all masks": ("tgt", "reshape", "axes", "causal", "memory")}
    found = {name: ch.leaks(seed_model(*fixed), x) for name, fixed in steps.items()}
    assert found["axes swapped"] == {"future": False, "rows": True}  # the batch read as the sequence
    assert found["no mask"] == {"future": True, "rows": False}
    assert found["target mask only"] == {"future": True, "rows": False}  # through the encoder's memory
    assert found["all masks"] == {"future": False, "rows": False}


def test_first_try_constructor_in_the_wrong_order_builds_another_model():
    wrong, right = seed_model("tgt"), seed_model("tgt", "order")
    assert wrong.transformer.encoder.layers[0].self_attn.num_heads == 1  # n_layer=1 taken for the heads
    assert len(wrong.transformer.encoder.layers) == 2 and len(wrong.transformer.decoder.layers) == 6
    assert right.transformer.encoder.layers[0].self_attn.num_heads == 2
    assert len(right.transformer.encoder.layers) == len(right.transformer.decoder.layers) == 1


def test_first_try_prefix_loss_is_the_loss_of_a_model_that_cannot_peek():
    model = seed_model("tgt", "reshape", "axes", "causal", "memory", "order")
    x, y = torch.randint(65, (4, 8)), torch.randint(65, (4, 8))
    assert ch.prefix_loss(model, x, y) == pytest.approx(model(x, y)[1].item(), rel=1e-4)


def test_mend_one_at_a_time(shakespeare):
    rows = ch.mend_one_at_a_time(RUN, device="cpu")
    assert [r["step"] for r in rows] == ["as written", *(f"+ {f}" for f in ch.FIXES.values())]
    assert "tgt" in rows[0]["error"] and "Expected target size" in rows[1]["error"]
    assert rows[2]["error"] and rows[2]["params"] < rows[1]["params"]  # the right size, still the loss's error
    trained = rows[3:]
    assert all(r["error"] is None and r["prefix_loss"] > 0 for r in trained)
    assert [(r["future"], r["rows"]) for r in trained] == [(False, True), (True, False), (True, False), (False, False)]
    assert rows[0]["warning"] and "batch_first" in rows[0]["warning"] and rows[4]["warning"] is None
    ch.plot_mistakes(rows)
    assert "loss from the past only" in ch.mistakes_table(rows).data
    values = ch.ladder_report(rows)
    assert "missing 1 required positional argument: 'tgt'" in values["first_error"].data
    assert values["params_wrong"] > values["params_right"] and values["prefix_memory"] == rows[-1]["prefix_loss"]


def test_the_gpt_writes_within_its_context_from_the_longest_sources():
    task = reorder_task(TEXT, seed=0, val_fraction=0.3)
    gpt = ch.make_gpt(RUN, task, "cpu")
    longest = [s for s, _ in task.pairs("train") if len(s.split()) == task.max_len]
    for beams in (1, 2):  # an untrained model seldom ends: the line must stop at the context's end
        lines = ch.predict(gpt, task, longest, beams)
        assert len(lines) == len(longest) and all(len(line.split()) <= task.max_len for line in lines)
