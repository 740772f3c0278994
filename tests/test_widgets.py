"""The attention explorer of lmbook.widgets builds, reacts to its controls and refuses nothing it should accept."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from lmbook.gpt import GPT, GPTConfig  # noqa: E402
from lmbook.tokenizers import CharTokenizer  # noqa: E402

widgets = pytest.importorskip("ipywidgets")


def test_explorer_offers_every_layer_and_head_and_redraws_for_new_text(monkeypatch):
    import lmbook.widgets
    from lmbook.attention import attention_maps
    from lmbook.widgets import attention_explorer

    drawn = []  # (weights, tokens, title) of every figure the explorer draws
    monkeypatch.setattr(lmbook.widgets, "plot_attention", lambda w, tokens, title: drawn.append((w, tokens, title)))
    tokenizer = CharTokenizer.train("ROMEO: What light through yonder window breaks? " * 2)
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, n_layer=3, block_size=16))
    text = "ROMEO: What light through yonder window"  # longer than the context of 16
    explorer = attention_explorer(model, tokenizer, text)
    (layer_box, head_box), text_box = explorer.children[0].children, explorer.children[1]
    assert list(layer_box.options) == [0, 1, 2] and list(head_box.options) == [0, 1]
    ids = tokenizer.encode(text)[-16:]
    maps = attention_maps(model, torch.tensor(ids)[None])  # (L, 1, nh, T, T)
    assert drawn[-1][2] == "layer 0, head 0" and "".join(drawn[-1][1]) == text[-16:]
    torch.testing.assert_close(drawn[-1][0], maps[0, 0, 0])
    layer_box.value, head_box.value = 2, 1
    assert drawn[-1][2] == "layer 2, head 1"
    torch.testing.assert_close(drawn[-1][0], maps[2, 0, 1])
    text_box.value = "What light"
    assert "".join(drawn[-1][1]) == "What light" and drawn[-1][0].shape == (10, 10)
    short = attention_maps(model, torch.tensor(tokenizer.encode("What light"))[None])
    torch.testing.assert_close(drawn[-1][0], short[2, 0, 1])
    assert model.training  # the explorer leaves the model's mode as it was
