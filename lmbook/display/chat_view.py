"""A conversation as HTML (chapter 9): chat bubbles, and the chat template as the model reads it.

:func:`chat_html` is the book's static view of a conversation, for pages without a kernel: the turns as bubbles
(the system turn on top in grey, the user's on the right, the assistant's on the left), and below them the text
of :func:`lmbook.text.chat.render` with the role and end-of-turn tokens marked, with the number of tokens when a
tokenizer is given. Every style is inline and there is no script, so it reads the same in the built book, in
Jupyter and in Colab. The chat widget (:func:`lmbook.display.widgets.chat_playground`) draws with the same
:func:`bubbles_html` and :func:`template_html`.
"""

from __future__ import annotations

import html
import re

from ..interface import check_bool, check_int
from ..text.chat import SPECIAL_TOKENS, check_conversation, encode_conversation, render

BUBBLE = {  # background, text colour, side
    "system": ("#eeeeee", "#444444", "center"),
    "user": ("#d6e8ff", "#10223d", "flex-end"),
    "assistant": ("#e3f4e1", "#13300f", "flex-start"),
}
TOKEN_COLOURS = dict(zip(SPECIAL_TOKENS, ("#cccccc", "#9cc3f5", "#a6dba0", "#f5c08c")))
_SPECIAL = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")
_FONT = "font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:14px"


def _bubble(role: str, text: str, pending: bool = False) -> str:
    background, colour, side = BUBBLE[role]
    width = "90%" if role == "system" else "75%"
    cursor = '<span style="opacity:0.5">▌</span>' if pending else ""
    return (f'<div style="display:flex;justify-content:{side};margin:4px 0">'
            f'<div style="max-width:{width};background:{background};color:{colour};border-radius:12px;'
            f'padding:6px 10px;white-space:pre-wrap;overflow-wrap:anywhere;line-height:1.4">'
            f'<div style="font-size:11px;opacity:0.6">{role}</div>{html.escape(text)}{cursor}</div></div>')


def bubbles_html(conversation, pending: str | None = None) -> str:
    """The turns of ``conversation`` as chat bubbles, in order; ``pending``: the text of an assistant reply still
    being written (shown with a cursor after the last turn, a user's)."""
    if conversation:  # an empty conversation is an empty chat (the widget starts with one)
        check_conversation(conversation, add_generation_prompt=pending is not None)
    elif pending is not None:
        raise ValueError("a reply being written needs a conversation that ends with a user turn.")
    if pending is not None and not isinstance(pending, str):
        raise TypeError(f"pending must be the reply's text so far (a str) or None, not {pending!r:.80}.")
    parts = [_bubble(turn["role"], turn["content"]) for turn in conversation]
    if pending is not None:
        parts.append(_bubble("assistant", pending, pending=True))
    return f'<div style="{_FONT};max-width:46em">' + "".join(parts) + "</div>"


def template_html(conversation, tokenizer=None, add_generation_prompt: bool = False, context: int | None = None,
                  note: str = "") -> str:
    """The conversation as the model reads it: :func:`~lmbook.text.chat.render`'s text, each special token on a
    coloured background, each newline marked ``↵``; with ``tokenizer``, the number of tokens (and the share of the
    model's ``context``, if given); ``note``: a sentence to add under it (escaped)."""
    check_bool("add_generation_prompt", add_generation_prompt)
    check_int("context", context, 1, allow_none=True)
    if not isinstance(note, str):
        raise TypeError(f"note must be a str, not {note!r:.80}.")
    text = render(conversation, add_generation_prompt)
    pieces = []
    for piece in _SPECIAL.split(text):
        if piece in TOKEN_COLOURS:
            pieces.append(f'<span style="background:{TOKEN_COLOURS[piece]};color:#111;border-radius:3px;'
                          f'padding:0 2px">{html.escape(piece)}</span>')
        elif piece:
            pieces.append(html.escape(piece).replace("\n", '<span style="color:#999">↵</span>\n'))
    lines = []
    if tokenizer is not None:
        n = len(encode_conversation(conversation, tokenizer, add_generation_prompt)[0])
        share = f" of the context's {context:,} ({n / context:.0%})" if context is not None else ""
        lines.append(f"{n:,} tokens{share}")
    if note:
        lines.append(html.escape(note))
    caption = "".join(f'<div style="{_FONT};color:#555;margin-top:4px">{line}</div>' for line in lines)
    return ('<pre style="white-space:pre-wrap;overflow-wrap:anywhere;background:#fafafa;color:#111;'
            'border:1px solid #ddd;border-radius:6px;padding:8px;margin:4px 0;line-height:1.5">'
            + "".join(pieces) + "</pre>" + caption)


def chat_html(conversation, tokenizer=None, add_generation_prompt: bool = False, context: int | None = None) -> str:
    """A conversation as the book shows it without a kernel: bubbles (:func:`bubbles_html`), then the template as
    the model reads it (:func:`template_html`), under a heading. ``tokenizer``: the book's tokenizer, to count the
    tokens; ``context``: the model's context, to count them against; ``add_generation_prompt``: end the template
    with ``<|assistant|>``, as a prompt for the reply (the last turn must be a user's)."""
    check_conversation(conversation, add_generation_prompt)
    heading = f'<div style="{_FONT};font-weight:600;color:#333;margin-top:10px">What the model reads</div>'
    return (bubbles_html(conversation) + heading
            + template_html(conversation, tokenizer, add_generation_prompt, context))

