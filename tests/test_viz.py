"""viz draws the data it is given: the plotted arrays, labels and images are checked, not only that a figure
exists."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from lmbook.training.history import History  # noqa: E402
from lmbook.display.viz import (  # noqa: E402
    compare_histories,
    plot_attention,
    plot_attention_cost,
    plot_attention_grid,
    plot_history,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def run(offset: float = 0.0) -> History:
    return History(steps=[0, 1, 2, 3], train_loss=[4.0 + offset, 3.0, 2.5, 2.0], eval_steps=[0, 2, 4],
                   eval_loss={"val": [4.1 + offset, 2.9, 2.2], "train": [4.0, 2.8, 2.0]},
                   eval_seconds=[0.0, 1.5, 3.25], tokens_per_step=64)


def lines(ax) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def test_a_history_is_drawn_against_steps_tokens_or_seconds():
    h = run()
    ax = plot_history(h, label="gpt")
    assert lines(ax) == {"gpt train (batch)": ([0, 1, 2, 3], [4.0, 3.0, 2.5, 2.0]),
                         "gpt val": ([0, 2, 4], [4.1, 2.9, 2.2]), "gpt train": ([0, 2, 4], [4.0, 2.8, 2.0])}
    train, val, _ = ax.get_lines()
    assert train.get_alpha() == 0.3 and val.get_color() == train.get_color()  # one run, one colour
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "cross-entropy (nats per token)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(lines(ax))

    ax = plot_history(h, x="tokens", splits=("val",), ax=plt.subplots()[1])
    assert lines(ax) == {"train (batch)": ([0, 64, 128, 192], h.train_loss), "val": ([0, 128, 256], h.eval_loss["val"])}
    assert ax.get_xlabel() == "tokens seen"
    ax = plot_history(h, x="seconds", splits=("val",), ax=plt.subplots()[1])  # no batch curve: its times are unknown
    assert lines(ax) == {"val": ([0.0, 1.5, 3.25], h.eval_loss["val"])} and ax.get_xlabel() == "seconds of training"
    ax = plot_history(h, train=False, splits=("val",), ax=plt.subplots()[1], color="red", ls="--")
    (line,) = ax.get_lines()
    assert line.get_color() == "red" and line.get_linestyle() == "--"


@pytest.mark.parametrize("options, history, message", [
    (dict(x="epochs"), run(), r"x must be one of 'step', 'tokens', 'seconds', not 'epochs'"),
    (dict(x="tokens"), History(steps=[0, 1], train_loss=[2.0, 1.0]), "x='tokens' needs the history's tokens_per_step"),
    (dict(splits=("test",)), run(), r"no evaluation on split\(s\) \['test'\].*recorded: \['train', 'val'\]"),
    (dict(x="seconds"), History(eval_steps=[0, 2], eval_loss={"val": [2.0, 1.0]}), "eval_seconds"),
], ids=["unknown x", "tokens without tokens_per_step", "unknown split", "seconds without times"])
def test_what_cannot_be_drawn_is_refused_before_drawing(options, history, message):
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match=message):
        plot_history(history, ax=ax, **options)
    assert not ax.get_lines()
    with pytest.raises(ValueError, match=message):  # comparing runs: refused before the first run is drawn
        compare_histories({"first": run(), "second": history}, split=(options.get("splits") or ["val"])[0],
                          x=options.get("x", "step"), ax=ax)
    assert not ax.get_lines()


def test_one_split_may_be_named_without_a_tuple():
    assert lines(plot_history(run(), splits="val", train=False)) == {"val": ([0, 2, 4], [4.1, 2.9, 2.2])}


def test_runs_are_compared_on_one_split():
    ax = compare_histories({"rnn": run(1.0), "gpt": run()}, split="val", x="tokens")
    assert lines(ax) == {"rnn val": ([0, 128, 256], [5.1, 2.9, 2.2]), "gpt val": ([0, 128, 256], [4.1, 2.9, 2.2])}
    assert ax.get_title() == "val loss"
    a, b = ax.get_lines()
    assert a.get_color() != b.get_color()


def test_the_uniform_guess_is_drawn_at_ln_v_and_a_title_kept():
    ax = plot_history(run(), splits="val", train=False, uniform=65, title="GPT")
    assert lines(ax)["uniform guessing"][1] == pytest.approx([np.log(65)] * 2)
    assert ax.get_title() == "GPT"
    ax = compare_histories({"rnn": run(1.0), "gpt": run()}, uniform=2, title="three cells")
    assert lines(ax)["uniform guessing"][1] == pytest.approx([np.log(2)] * 2) and ax.get_title() == "three cells"
    with pytest.raises(ValueError, match="vocabulary size of at least 2"):
        plot_history(run(), uniform=1)


def test_an_attention_map_shows_the_weights_of_its_tokens():
    weights = torch.softmax(torch.randn(6, 6), dim=-1).tril()
    tokens = ["T", "o", " ", "b", "e", "\n"]
    ax = plot_attention(weights, tokens[:5], title="layer 0, head 1")  # a map may be cut to fewer tokens
    (image,) = ax.get_images()
    np.testing.assert_array_equal(image.get_array(), weights[:5, :5].numpy())
    assert image.get_clim() == (0, 1) and ax.get_title() == "layer 0, head 1"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["T", "o", "␣", "b", "e"]
    ax = plot_attention(weights, tokens)
    assert [t.get_text() for t in ax.get_yticklabels()][-1] == "⏎"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("key (attended to)", "query")


def test_a_grid_shows_the_chosen_heads_and_hides_the_empty_panels():
    maps = torch.rand(2, 3, 4, 4)  # (layers, heads, T, T)
    fig = plot_attention_grid(maps, list("abcd"), heads=[(0, 2), (1, 0), (1, 1)], columns=2)
    axes = fig.axes
    assert len(axes) == 4 and not axes[3].axison
    for ax, (layer, head) in zip(axes, [(0, 2), (1, 0), (1, 1)]):
        assert ax.get_title() == f"layer {layer}, head {head}"
        np.testing.assert_array_equal(ax.get_images()[0].get_array(), maps[layer, head].numpy())


@pytest.mark.parametrize("device", ["cpu", "cuda:0"])
def test_the_cost_of_attention_is_drawn_in_milliseconds_and_mebibytes(device):
    cost = {"lengths": [64, 128, 256], "device": device,
            "written out": {"seconds": [0.001, 0.004, 0.016], "bytes": [2**20, 4 * 2**20, 16 * 2**20]},
            "fused (SDPA)": {"seconds": [0.0005, 0.001, 0.002], "bytes": [None, None, None]}}
    time_ax, memory_ax = plot_attention_cost(cost)
    drawn = lines(time_ax)
    np.testing.assert_allclose(drawn["written out"][1], [1.0, 4.0, 16.0])
    np.testing.assert_allclose(drawn["fused (SDPA)"][1], [0.5, 1.0, 2.0])
    np.testing.assert_allclose(drawn["∝ T²"][1], [1.0, 4.0, 16.0])  # through the last written-out point
    assert all(x == [64, 128, 256] for x, _ in drawn.values())
    assert lines(memory_ax) == {"written out": ([64, 128, 256], [1.0, 4.0, 16.0])}  # no bytes, no curve
    assert time_ax.get_xscale() == time_ax.get_yscale() == "log" and time_ax.get_ylabel() == "milliseconds per call"
    expected = "MiB (peak, CUDA)" if device.startswith("cuda") else "MiB (score and weight tensors)"
    assert memory_ax.get_ylabel() == expected


def test_the_timeline_puts_every_milestone_in_both_panels_and_names_each_once():
    from lmbook.display.viz import plot_timeline
    from lmbook.runs.ch07_questions import TIMELINE, TIMELINE_PLACES

    whole, recent = plot_timeline(TIMELINE, ours=(1234, "ours"), place=TIMELINE_PLACES)
    points = [line for line in whole.get_lines() if line.get_label() != "ours"]
    assert len(points) == len(TIMELINE) and len(recent.get_lines()) == len(TIMELINE) + 1
    named = [t.get_text() for ax in (whole, recent) for t in ax.texts]
    for m in TIMELINE:  # each milestone named once, with its size where it has one
        assert sum(text == m.name or text.startswith(m.name + " (") for text in named) == 1, m.name
    assert recent.get_xlim()[0] == 2016.5 and recent.get_xlim()[1] > max(m.date for m in TIMELINE)
    assert [line.get_ydata()[0] for line in recent.get_lines() if line.get_label() == "ours"] == [1234]
    counted = next(m for m in TIMELINE if m.params)
    assert f"{counted.name} (" in " ".join(named)
