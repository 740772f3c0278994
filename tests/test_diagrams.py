"""Diagrams: each figure says what the model it is drawn from has, and beam search's tree is the search."""

import matplotlib.pyplot as plt
import pytest
import torch

from lmbook.models.attention import attention, causal_mask
from lmbook.display.diagrams import (
    attention_matrices,
    beam_search_tree,
    draw_beam_tree,
    gpt_diagram,
    gpt_parts,
    rnn_parts,
    rnn_unrolled,
)
from lmbook.training.finetune import SequenceClassifier
from lmbook.decoding.generate import generate
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.models.mlm import Encoder
from lmbook.models.rnn import RNNLM, RNNConfig
from lmbook.text.tokenizers import CharTokenizer
from lmbook.models.variants import PostLNGPT


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def texts(ax) -> str:
    return "\n".join(t.get_text() for t in ax.texts)


@pytest.mark.parametrize("cell, layers", [("rnn", 1), ("lstm", 2), ("gru", 3)])
def test_the_rnn_figure_names_the_models_parameters_with_their_shapes(cell, layers):
    model = RNNLM(RNNConfig(vocab_size=11, cell=cell, n_layer=layers, n_embd=6, n_hidden=10))
    parts = rnn_parts(model)
    params = {name: "×".join(map(str, p.shape)) for name, p in model.named_parameters()}
    drawn = [parts["embedding"], parts["output"], *parts["recurrent"], *parts["input"]]
    assert all(params[name] == shape for name, shape in drawn)
    assert len(parts["recurrent"]) == len(parts["input"]) == layers
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    assert parts["recurrent"][0][1] == f"{gates * 10}×10"  # the gates stacked in torch.nn's rows
    ax = rnn_unrolled(model, list("ROMEO"), steps=4)
    assert all(f"{name} {shape}" in texts(ax) for name, shape in drawn)
    boxes = [t.get_text() for t in ax.texts]
    assert boxes.count("lm_head") == boxes.count("wte") == 4  # one embedding and one output layer per step
    state = "(h, c)" if cell == "lstm" else "h"
    assert sum(b.startswith(state) and not b.endswith("= 0") for b in boxes) == 4 * layers


def test_the_rnn_figure_refuses_what_it_cannot_draw():
    model = RNNLM(RNNConfig.preset("tiny"))
    with pytest.raises(ValueError, match="steps"):
        rnn_unrolled(model, steps=1)
    with pytest.raises(ValueError, match="fewer than steps"):
        rnn_unrolled(model, list("ab"), steps=3)
    with pytest.raises(TypeError, match="RNNLM"):
        rnn_parts(GPT(GPTConfig.preset("tiny")))


@pytest.mark.parametrize("causal", [True, False])
def test_the_attention_figure_shows_the_packages_weights_and_mask(causal):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 5, 4).unbind(0)
    fig = attention_matrices(q, k, v, causal=causal)
    scores_ax, weights_ax, out_ax = fig.axes[2], fig.axes[3], fig.axes[5]
    out, weights = attention(q, k, v, causal=causal)
    assert torch.allclose(torch.as_tensor(weights_ax.images[0].get_array().data), weights)
    assert torch.allclose(torch.as_tensor(out_ax.images[0].get_array().data), out)
    blank = torch.as_tensor(scores_ax.images[0].get_array().data).isnan()
    assert torch.equal(blank, ~causal_mask(5) if causal else torch.zeros(5, 5, dtype=torch.bool))
    assert "(5, 4)" in fig.axes[0].get_title() and "(5, 5)" in weights_ax.get_title()


def test_the_attention_figure_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="q and k"):
        attention_matrices(torch.randn(5, 4), torch.randn(6, 4), torch.randn(5, 4))


def test_the_gpt_figure_lists_the_modules_with_the_configs_sizes():
    config = GPTConfig(vocab_size=17, block_size=12, n_layer=3, n_head=2, n_embd=8)
    model = GPT(config)
    parts = gpt_parts(model)
    assert parts["n_layer"] == 3 and parts["tied"]
    assert parts["embeddings"] == ["wte: Embedding(17, 8)", "wpe: PositionTable(12, 8)"]
    assert [line.split(":")[0] for line in parts["block"]] == ["ln_1", "attn", "ln_2", "mlp"]  # forward's order
    assert "2 heads" in parts["block"][1] and "c_attn: Linear(8 → 24)" in parts["block"][1]
    assert "c_fc: Linear(8 → 32)" in parts["block"][3] and "c_proj: Linear(32 → 8)" in parts["block"][3]
    assert parts["final"] == ["ln_f: LayerNorm(8)", "lm_head: Linear(8 → 17)"]
    text = texts(gpt_diagram(model))
    assert "h: 3 × Block" in text and "logits  (B, T, 17)" in text and "weight tied to wte" in text
    with pytest.raises(ValueError, match="pre-LN"):
        gpt_parts(PostLNGPT(config))


def test_the_classifier_and_the_encoder_are_drawn_as_they_are_built():
    config = GPTConfig(vocab_size=17, block_size=12, n_layer=2, n_head=2, n_embd=8)
    classifier = SequenceClassifier(GPT(config), 3, pool="last")
    parts = gpt_parts(classifier)
    assert parts["final"] == ["ln_f: LayerNorm(8)", "pool: the last real token  (B, 8)", "head: Linear(8 → 3)"]
    assert parts["output"] == "class logits  (B, 3)" and not parts["tied"]
    assert "class logits  (B, 3)" in texts(gpt_diagram(classifier))
    assert "no causal mask" in gpt_parts(Encoder(config))["block"][1]
    assert "no causal mask" not in gpt_parts(GPT(config))["block"][1]
    with pytest.raises(TypeError, match="GPT or a SequenceClassifier"):
        gpt_parts(RNNLM(RNNConfig.preset("tiny")))


def test_the_beam_tree_keeps_what_beam_search_returns():
    torch.manual_seed(0)
    tokenizer = CharTokenizer.train("abcdefgh ")
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    prompt = torch.tensor(tokenizer.encode("abc"))
    nodes = beam_search_tree(model, prompt, num_beams=3, steps=4, shown=2)
    last = sorted((n for n in nodes if len(n["path"]) == 4 and n["kept"]), key=lambda n: -n["total"])
    searched = generate(model, prompt[None], max_new_tokens=4, num_beams=3, num_return_sequences=3,
                        do_sample=False, return_dict=True)
    assert [list(n["path"]) for n in last] == searched.sequences[:, len(prompt):].tolist()
    assert torch.allclose(torch.tensor([n["total"] / 4 for n in last]), searched.scores, atol=1e-5)
    for step in range(1, 5):  # every step keeps exactly num_beams extensions
        assert sum(n["kept"] for n in nodes if len(n["path"]) == step) == 3
    ax = draw_beam_tree(nodes, tokenizer)
    assert sum("Σ" in t.get_text() for t in ax.texts) == sum(n["kept"] for n in nodes)


def test_the_beam_tree_refuses_bad_settings():
    model = GPT(GPTConfig.preset("tiny"))
    with pytest.raises(ValueError, match="num_beams"):
        beam_search_tree(model, torch.tensor([1, 2]), num_beams=0)
    with pytest.raises(ValueError, match="prompt"):
        beam_search_tree(model, torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="empty"):
        draw_beam_tree([], None)


def test_the_beam_tree_draws_no_edge_over_a_label():
    torch.manual_seed(1)
    tokenizer = CharTokenizer.train("abcdefgh \n")
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    nodes = beam_search_tree(model, torch.tensor(tokenizer.encode("abc")), num_beams=3, steps=4, shown=3)
    ax = draw_beam_tree(nodes, tokenizer)
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(ax.lines) == len(nodes)
    for line in ax.lines:
        xy = ax.transData.transform(line.get_xydata())  # the edge's two ends in pixels
        for box in boxes:  # an edge is straight: sample it and check that no point falls inside a label
            for f in torch.linspace(0, 1, 50).tolist():
                x, y = xy[0] + f * (xy[1] - xy[0])
                assert not (box.x0 + 1 < x < box.x1 - 1 and box.y0 + 1 < y < box.y1 - 1)
    assert all(box.x1 <= ax.figure.bbox.x1 + 1 for box in boxes)  # every label fits the figure
    plt.close(ax.figure)
