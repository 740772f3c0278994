"""The attention explorer of lmbook.widgets builds, reacts to its controls and refuses nothing it should accept."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from lmbook.gpt import GPT, GPTConfig  # noqa: E402
from lmbook.tokenizers import CharTokenizer  # noqa: E402

widgets = pytest.importorskip("ipywidgets")


def test_explorer_offers_every_layer_and_head_and_redraws_for_new_text():
    from lmbook.widgets import attention_explorer

    tokenizer = CharTokenizer.train("ROMEO: What light through yonder window breaks? " * 2)
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, n_layer=3, block_size=16))
    explorer = attention_explorer(model, tokenizer, "ROMEO: What light through yonder window")  # longer than 16
    (layer_box, head_box), text_box = explorer.children[0].children, explorer.children[1]
    assert list(layer_box.options) == [0, 1, 2] and list(head_box.options) == [0, 1]
    layer_box.value, head_box.value = 2, 1
    text_box.value = "What light"
    assert model.training  # the explorer leaves the model's mode as it was
