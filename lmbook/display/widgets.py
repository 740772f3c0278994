"""Interactive explorers for a live kernel (Jupyter or Colab), built from plain ipywidgets.

The rendered book has no kernel behind it, so each chapter shows a static figure as
well; these widgets are for readers who run the notebook: the attention explorer (chapter 3),
the generation playground (chapter 5) and the chat (chapter 9, static view in :mod:`.chat_view`).
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import matplotlib.pyplot as plt
import torch

from ..models.attention import attention_maps
from .chat_view import bubbles_html, template_html
from .decoding_viz import tokens_html
from ..decoding.chat import stream_reply
from ..decoding.generate import generate, stream
from ..evaluation.metrics import token_nlls
from ..interface import check_int, check_number, check_seed, context_length, device_of
from ..text.chat import SPECIAL_TOKENS, encode_conversation
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


def keep_within_context(conversation: list[dict], tokenizer, context: int | None, max_new_tokens: int):
    """``conversation`` (ending with a user turn) without its oldest user/assistant pairs, as few as it takes for
    the prompt and ``max_new_tokens`` to fit ``context`` (a system turn stays); returns it and the pairs dropped.
    Refused, with what to do, when even the system turn and the last message leave no room."""
    check_int("context", context, 1, allow_none=True)
    check_int("max_new_tokens", max_new_tokens, 1)
    first = 1 if conversation and conversation[0]["role"] == "system" else 0
    kept, dropped = list(conversation), 0
    while True:
        n = len(encode_conversation(kept, tokenizer, add_generation_prompt=True)[0])
        if context is None or n + max_new_tokens <= context:
            return kept, dropped
        if len(kept) - first < 3:
            raise ValueError(f"the message takes the conversation to {n} tokens and the reply may take "
                             f"{max_new_tokens} more, past the model's context of {context}: write a shorter "
                             "message or ask for fewer new tokens.")
        del kept[first : first + 2]
        dropped += 1


class _Chat:
    """The chat playground's state (the conversation the model reads) and what its buttons do."""

    def __init__(self, model, tokenizer, system: str | None, controls: SimpleNamespace):
        self.model, self.tokenizer, self.c = model, tokenizer, controls
        self.context = context_length(model)
        self.start = [] if system is None else [{"role": "system", "content": system}]
        self.conversation, self.dropped = list(self.start), 0

    def note(self) -> str:
        if not self.dropped:
            return ""
        if self.dropped == 1:
            return ("The oldest exchange was dropped to leave room for a reply in the context: the model no longer "
                    "reads it.")
        return (f"The {self.dropped} oldest exchanges were dropped to leave room for a reply in the context: the "
                "model no longer reads them.")

    def draw(self, pending: str | None = None) -> None:
        self.c.chat.value = bubbles_html(self.conversation, pending)
        if not self.conversation:
            self.c.template.value = "<i>The conversation starts with your message.</i>"
            return
        self.c.template.value = template_html(self.conversation, self.tokenizer, pending is not None,
                                              self.context, self.note())

    def send(self, _=None) -> None:
        c, text = self.c, self.c.message.value
        if not text.strip():
            c.status.value = "type a message first"
            return
        try:
            kept, dropped = keep_within_context(self.conversation + [{"role": "user", "content": text}],
                                                self.tokenizer, self.context, c.max_new_tokens.value)
        except ValueError as err:  # unknown characters, a special token typed, too long: say so, keep the text
            c.status.value = f"not sent: {err}"
            return
        self.conversation, self.dropped, c.message.value = kept, self.dropped + dropped, ""
        self.draw(pending="")
        pieces, begun = [], time.perf_counter()
        c.send.disabled = c.clear.disabled = True
        try:
            for piece in stream_reply(self.model, self.tokenizer, kept, c.max_new_tokens.value,
                                      temperature=c.temperature.value, seed=c.seed.value):
                pieces.append(piece)
                c.chat.value = bubbles_html(kept, "".join(pieces))  # the page updates as each token arrives
        finally:
            c.send.disabled = c.clear.disabled = False
        self.finish("".join(pieces), time.perf_counter() - begun)

    def finish(self, reply: str, seconds: float) -> None:
        c = self.c
        written = [token for token in SPECIAL_TOKENS if token in reply]  # spelled out, character by character
        reply = reply[: min(reply.index(token) for token in written)] if written else reply
        if not reply:  # an empty turn cannot be written: the message goes back to the box
            self.conversation, c.message.value = self.conversation[:-1], self.conversation[-1]["content"]
            c.status.value = ("the model ended its turn without a word: raise the temperature above 0 (or change "
                              "the seed) and send again")
        else:
            self.conversation = self.conversation + [{"role": "assistant", "content": reply}]
            n = len(self.tokenizer.encode(reply))
            cut = n >= c.max_new_tokens.value
            c.status.value = (f"{n} tokens in {seconds:.2f} s ({n / max(seconds, 1e-9):,.0f} tokens/s); "
                              + ("cut at the limit of new tokens before the model ended its turn" if cut
                                 else "the model ended its turn"))
        self.draw()

    def clear(self, _=None) -> None:
        self.conversation, self.dropped = list(self.start), 0
        self.c.status.value = "a new conversation"
        self.draw()


def chat_playground(model, tokenizer, system: str | None = None, max_new_tokens: int | None = None,
                    temperature: float = 0.0, seed: int = 0, message: str | None = None):
    """Chapter 9's chat: a message box with Send and Clear, the conversation as chat bubbles, each reply streamed
    token by token (:func:`lmbook.decoding.chat.stream_reply`), and the conversation as the model reads it (the
    chat template with its special tokens, and its tokens against the model's context).

    ``model`` is grown for the chat template's special tokens (:func:`lmbook.models.vocab.grow_embeddings`);
    ``tokenizer`` is the book's tokenizer it was trained with. ``system``: a system turn that opens every
    conversation. Temperature 0 decodes greedily; above it, each reply is drawn with the seed in its box. When the
    next reply would not fit the context, the oldest user/assistant pairs are dropped, and the panel says so.
    ``max_new_tokens``: the most tokens a reply may take (``None``: half the context, at most 100). ``message``:
    sent once when the widget is built (so that a saved notebook shows a reply).
    """
    widgets = _ipywidgets()
    context = context_length(model)
    check_int("max_new_tokens", max_new_tokens, 1, allow_none=True)
    if max_new_tokens is None:
        max_new_tokens = 100 if context is None else max(1, min(100, context // 2))
    if context is not None and max_new_tokens >= context:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room in the model's context of {context} for "
                         f"the conversation: ask for fewer, e.g. {max(1, context // 4)}.")
    check_number("temperature", temperature, "between 0 (greedy) and 2, the slider's range", lambda t: 0 <= t <= 2)
    check_seed(seed)
    if system is not None:  # refused now, with what is wrong, rather than at the first message
        encode_conversation([{"role": "system", "content": system}], tokenizer)
    label = {"style": {"description_width": "initial"}}
    controls = SimpleNamespace(
        chat=widgets.HTML(),
        message=widgets.Textarea(placeholder="your message", rows=2, layout=widgets.Layout(width="60%")),
        send=widgets.Button(description="Send", button_style="primary"),
        clear=widgets.Button(description="Clear"),
        temperature=widgets.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.05,
                                        description="temperature (0: greedy)", **label),
        max_new_tokens=widgets.IntSlider(value=max_new_tokens, min=1, max=1000 if context is None else context - 1,
                                         description="new tokens", **label),
        seed=widgets.IntText(value=seed, description="seed", layout=widgets.Layout(width="9em"), **label),
        status=widgets.Label(),
        template=widgets.HTML(),
    )
    chat = _Chat(model, tokenizer, system, controls)
    controls.send.on_click(chat.send)
    controls.clear.on_click(chat.clear)
    chat.draw()
    if message is not None:
        controls.message.value = message
        chat.send()
    c = controls
    return widgets.VBox([
        c.chat, widgets.HBox([c.message, c.send, c.clear]), widgets.HBox([c.temperature, c.max_new_tokens, c.seed]),
        c.status, widgets.HTML("<b>What the model reads</b>"), c.template,
    ])
