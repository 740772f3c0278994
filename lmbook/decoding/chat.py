"""A model's replies to conversations, through the chat template of :mod:`lmbook.text.chat` (chapter 9).

:func:`replies` answers many conversations at once: each is written with its generation prompt
(``<|assistant|>``), the prompts are padded on the left into one batch, and each reply ends at the model's
``<|end|>`` (or after ``max_new_tokens``). :func:`stream_reply` yields one reply's text piece by piece, for the
chat widget of :mod:`lmbook.display.widgets`. Both decode greedily unless the settings say otherwise
(``temperature``, ``seed``, ``top_k``, ...: those of :func:`lmbook.decoding.generate.generate`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch.nn as nn

from ..interface import check_bool, check_int, context_length
from ..text.chat import SPECIAL_TOKENS, encode_conversation, end_id
from ..text.tokenizers import Tokenizer
from .generate import generate, stream

Conversation = Sequence[dict]


def prompt_ids(conversation: Conversation, tokenizer: Tokenizer, model: nn.Module, max_new_tokens: int) -> list[int]:
    """The ids of ``conversation`` with the generation prompt, refused (with what to do) when they and
    ``max_new_tokens`` do not fit the model's context, or when the model has no rows for the special tokens."""
    check_int("max_new_tokens", max_new_tokens, 1)
    ids, _ = encode_conversation(conversation, tokenizer, add_generation_prompt=True)
    needed = tokenizer.vocab_size + len(SPECIAL_TOKENS)
    vocab = getattr(model, "vocab_size", None)
    if isinstance(vocab, int) and vocab < needed:
        raise ValueError(f"the model has {vocab} tokens but the chat template needs {needed} (the tokenizer's "
                         f"{tokenizer.vocab_size} and {len(SPECIAL_TOKENS)} special ones): grow its embedding first "
                         f"with lmbook.models.vocab.grow_embeddings(model, {needed}).")
    limit = context_length(model)
    if limit is not None and len(ids) + max_new_tokens > limit:
        raise ValueError(f"the conversation takes {len(ids)} tokens and the reply up to {max_new_tokens} more, but "
                         f"the model reads {limit}: shorten the conversation or ask for fewer new tokens.")
    return ids


def replies(model: nn.Module, tokenizer: Tokenizer, conversations: Sequence[Conversation], max_new_tokens: int,
            batch_size: int = 64, return_ended: bool = False, **settings) -> list:
    """The model's reply to each conversation (greedy unless ``settings`` say otherwise: ``temperature``,
    ``seed``, ...), decoded up to its ``<|end|>``. A reply that writes another special token before its end is
    cut there (it is no answer a reader would see past). With ``return_ended``, each reply comes as
    ``(text, ended)``: whether the model closed it with ``<|end|>`` (rather than running out of tokens or writing
    another special token)."""
    check_int("max_new_tokens", max_new_tokens, 1)
    check_int("batch_size", batch_size, 1)
    check_bool("return_ended", return_ended)
    if not isinstance(conversations, (list, tuple)) or not conversations:
        raise ValueError("conversations must be a non-empty list of conversations (lists of turns).")
    if isinstance(conversations[0], dict):
        raise ValueError("conversations is a list of conversations, each a list of turns: for one conversation "
                         "pass [conversation] (or use stream_reply).")
    stop = end_id(tokenizer)
    settings = {"temperature": 0, **settings}
    prompts = [prompt_ids(c, tokenizer, model, max_new_tokens) for c in conversations]
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(map(len, chunk))
        ids = generate(model, chunk, max_new_tokens, eos_token_id=stop, pad_token_id=stop, **settings)
        for row in ids[:, width:].tolist():
            cut = next((i for i, t in enumerate(row) if t >= tokenizer.vocab_size), len(row))
            text = tokenizer.decode(row[:cut])
            out.append((text, cut < len(row) and row[cut] == stop) if return_ended else text)
    return out


def stream_reply(model: nn.Module, tokenizer: Tokenizer, conversation: Conversation, max_new_tokens: int,
                 **settings) -> Iterator[str]:
    """The reply to ``conversation`` as it is written, up to ``<|end|>`` (or another special token), greedy
    unless ``settings`` say otherwise. Each piece is the text one more token completes: a byte-level BPE token
    that holds only part of a character waits for the rest, so the pieces join to the reply's text. The
    conversation is checked here, before the first piece is asked for."""
    ids = prompt_ids(conversation, tokenizer, model, max_new_tokens)
    tokens = stream(model, ids, max_new_tokens=max_new_tokens, eos_token_id=end_id(tokenizer),
                    **{"temperature": 0, **settings})
    return _pieces(tokens, tokenizer)


def _pieces(tokens, tokenizer: Tokenizer) -> Iterator[str]:
    """The text each streamed token adds to the reply, up to the first special token."""
    written: list[int] = []
    shown = ""
    try:
        for token in tokens:
            if token.id >= tokenizer.vocab_size:
                break
            written.append(token.id)
            text = tokenizer.decode(written)
            if not text.endswith("\ufffd"):  # an unfinished UTF-8 character decodes as U+FFFD until complete
                yield text[len(shown):]
                shown = text
    finally:
        tokens.close()  # the model goes back to the mode it was in, even when the caller stops early
    text = tokenizer.decode(written)
    if len(text) > len(shown):  # bytes that never became a character: shown as the decoder shows them
        yield text[len(shown):]
