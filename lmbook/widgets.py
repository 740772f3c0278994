"""Interactive explorers for a live kernel (Jupyter or Colab), built from plain ipywidgets.

The rendered book has no kernel behind it, so each chapter shows a static figure as
well; these widgets are for readers who run the notebook.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from .attention import attention_maps
from .viz import plot_attention


def attention_explorer(model, tokenizer, text: str = "ROMEO:\nWhat light through yonder window breaks?",
                       layer: int = 0, head: int = 0):
    """A widget to pick a layer, a head and a text, and see that head's attention weights (chapter 3).

    ``tokenizer`` needs ``encode`` and ``decode``; texts longer than the model's context keep their end.
    """
    try:
        import ipywidgets as widgets
    except ImportError as err:  # pragma: no cover - ipywidgets comes with the book's requirements
        raise ImportError("attention_explorer needs ipywidgets: pip install 'ipywidgets>=8,<9'") from err
    config = model.config
    layer_box = widgets.Dropdown(options=list(range(config.n_layer)), value=layer, description="layer")
    head_box = widgets.Dropdown(options=list(range(config.n_head)), value=head, description="head")
    text_box = widgets.Textarea(value=text, description="text", layout=widgets.Layout(width="95%"))
    out = widgets.Output()
    device = next(model.parameters()).device
    cached: dict[str, tuple[list[str], torch.Tensor]] = {}

    def draw(_=None) -> None:
        value = text_box.value or " "
        if value not in cached:
            ids = tokenizer.encode(value)[-config.block_size :]
            maps = attention_maps(model, torch.tensor(ids, device=device)[None])  # (L, 1, nh, T, T)
            cached.clear()
            cached[value] = ([tokenizer.decode([i]) for i in ids], maps[:, 0].cpu())
        tokens, maps = cached[value]
        with out:
            out.clear_output(wait=True)
            plot_attention(maps[layer_box.value, head_box.value], tokens,
                           title=f"layer {layer_box.value}, head {head_box.value}")
            plt.show()

    for box in (layer_box, head_box, text_box):
        box.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([layer_box, head_box]), text_box, out])
