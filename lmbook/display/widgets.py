"""Interactive explorers for a live kernel (Jupyter or Colab), built from plain ipywidgets.

The rendered book has no kernel behind it, so each chapter shows a static figure as
well; these widgets are for readers who run the notebook.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import matplotlib.pyplot as plt
import torch

from ..models.attention import attention_maps
from .decoding_viz import tokens_html
from ..decoding.generate import generate, stream
from ..evaluation.metrics import token_nlls
from ..interface import context_length, device_of
from .viz import plot_attention

STRATEGIES = ("greedy", "sampling", "beam search")


def _ipywidgets():
    try:
        import ipywidgets
    except ImportError as err:  # pragma: no cover - ipywidgets comes with the book's requirements
        raise ImportError("the explorers need ipywidgets: pip install 'ipywidgets>=8,<9'") from err
    return ipywidgets


def attention_explorer(model, tokenizer, text: str = "ROMEO:\nWhat light through yonder window breaks?",
                       layer: int = 0, head: int = 0):
    """A widget to pick a layer, a head and a text, and see that head's attention weights (chapter 3).

    ``tokenizer`` needs ``encode`` and ``decode``; texts longer than the model's context keep their end.
    """
    widgets = _ipywidgets()
    config = model.config
    layer_box = widgets.Dropdown(options=list(range(config.n_layer)), value=layer, description="layer")
    head_box = widgets.Dropdown(options=list(range(config.n_head)), value=head, description="head")
    text_box = widgets.Textarea(value=text, description="text", layout=widgets.Layout(width="95%"))
    out = widgets.Output()
    device = device_of(model)
    cached: dict[str, tuple[list[str], torch.Tensor]] = {}

    def draw(_=None) -> None:
        value = text_box.value or " "
        if value not in cached:
            ids = tokenizer.encode(value)[-model.context_length :]
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


def _settings(strategy: str, temperature: float, top_k: int, top_p: float, num_beams: int) -> dict:
    """The keywords of :func:`~lmbook.decoding.generate.generate` that a playground's controls stand for."""
    if strategy == "greedy":
        return {"do_sample": False}
    if strategy == "sampling":
        return {"do_sample": True, "temperature": temperature, "top_k": top_k or None, "top_p": top_p}
    if strategy == "beam search":
        return {"do_sample": False, "num_beams": num_beams}
    raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")


def _beam_pieces(model, ids: list[int], n_new: int, tokenizer) -> list:
    """Beam search's new tokens, each with the model's own probability of it (beams choose no token alone)."""
    if not n_new:
        return []
    context = context_length(model)  # None: a recurrent model reads any length
    if context is not None:
        context = min(context, len(ids) - 1)  # a short text is read in one window
    stride = None if context is None else max(1, context // 2)  # windows overlap: each token has context
    probs = token_nlls(model, torch.tensor(ids), context=context, stride=stride, batch_size=1)[-n_new:].neg().exp()
    return [SimpleNamespace(text=tokenizer.decode([t]), probability=float(p)) for t, p in zip(ids[-n_new:], probs)]


def generation_playground(model, tokenizer, prompt: str = "ROMEO:\n", max_new_tokens: int = 200,
                          strategy: str = "sampling", temperature: float = 0.9, top_k: int = 0,
                          top_p: float = 0.95, num_beams: int = 4, seed: int = 0):
    """Chapter 5's playground: a prompt, a strategy and its settings, the text streamed token by token.

    Each new token is coloured by the probability it was chosen with (greedy and sampling: after
    temperature and filters) or, for beam search, which returns whole sequences, by the model's
    probability of it. A prompt longer than the model's context keeps its end; characters the
    tokenizer does not know are reported, and the last text stays. Generation runs when the
    button is pressed, and once when the widget is built (so that a saved notebook shows text).
    """
    _settings(strategy, temperature, top_k, top_p, num_beams)  # a clear error for an unknown strategy
    widgets = _ipywidgets()
    wide = widgets.Layout(width="95%")
    label = {"style": {"description_width": "initial"}}  # whole labels, not cut to the default width
    controls = SimpleNamespace(
        prompt=widgets.Textarea(value=prompt, description="prompt", layout=wide),
        strategy=widgets.Dropdown(options=STRATEGIES, value=strategy, description="strategy", **label),
        temperature=widgets.FloatSlider(value=temperature, min=0.05, max=2.0, step=0.05, description="temperature",
                                        **label),
        top_k=widgets.IntSlider(value=top_k, min=0, max=tokenizer.vocab_size, description="top-k (0: off)", **label),
        top_p=widgets.FloatSlider(value=top_p, min=0.05, max=1.0, step=0.05, description="top-p", **label),
        num_beams=widgets.IntSlider(value=num_beams, min=2, max=8, description="beams", **label),
        max_new_tokens=widgets.IntSlider(value=max_new_tokens, min=1, max=1000, description="new tokens", **label),
        seed=widgets.IntText(value=seed, description="seed", layout=widgets.Layout(width="9em"), **label),
        button=widgets.Button(description="generate", button_style="primary"),
        text=widgets.HTML(),
        status=widgets.Label(),
    )
    context = context_length(model)

    def enable(_=None) -> None:
        sampling = controls.strategy.value == "sampling"
        for box in (controls.temperature, controls.top_k, controls.top_p):
            box.disabled = not sampling
        controls.num_beams.disabled = controls.strategy.value != "beam search"

    def run(_=None) -> None:
        c = controls
        try:
            ids = tokenizer.encode(c.prompt.value or "\n")
        except ValueError as err:  # characters outside the vocabulary: say so, keep the last text
            c.status.value = f"not generated: {err}"
            return
        note = ""
        if context is not None and len(ids) >= context:
            ids, note = ids[-(context // 2):], f" (the prompt was cut to its last {context // 2} tokens)"
        settings = _settings(c.strategy.value, c.temperature.value, c.top_k.value, c.top_p.value, c.num_beams.value)
        shown = tokenizer.decode(ids)
        c.button.disabled, start, pieces = True, time.perf_counter(), []
        try:
            if c.strategy.value == "beam search":
                out = generate(model, torch.tensor(ids), max_new_tokens=c.max_new_tokens.value, **settings)[0]
                pieces = _beam_pieces(model, out.tolist(), len(out) - len(ids), tokenizer)
            else:
                for piece in stream(model, torch.tensor(ids), tokenizer, max_new_tokens=c.max_new_tokens.value,
                                    seed=c.seed.value, **settings):
                    pieces.append(piece)
                    c.text.value = tokens_html(pieces, shown)  # the page updates as each token arrives
        finally:
            c.button.disabled = False
        c.text.value = tokens_html(pieces, shown)
        seconds = time.perf_counter() - start
        c.status.value = f"{len(pieces)} tokens in {seconds:.2f} s ({len(pieces) / seconds:,.0f} tokens/s){note}"

    controls.strategy.observe(enable, names="value")
    controls.button.on_click(run)
    enable()
    run()
    c = controls
    return widgets.VBox([
        c.prompt, widgets.HBox([c.strategy, c.max_new_tokens, c.seed]),
        widgets.HBox([c.temperature, c.top_k, c.top_p]), widgets.HBox([c.num_beams, c.button]), c.status, c.text,
    ])
