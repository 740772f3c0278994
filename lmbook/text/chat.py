"""Conversations as token ids: role tokens, an end-of-turn token and a chat template (chapter 9).

A conversation is a list of turns ``{"role": ..., "content": ...}``: an optional ``system`` turn first, then
``user`` and ``assistant`` in turn, starting with the user. Four special tokens join the book's tokenizer, after
its vocabulary (ids ``vocab_size`` to ``vocab_size + 3``, in the order of ``SPECIAL_TOKENS``): one for each role
and ``<|end|>``, which closes every turn. A conversation is written as each turn's role token, its content and
``<|end|>``, with nothing in between::

    <|user|>Who speaks this line?\\nNow, my lord<|end|><|assistant|>ROMEO<|end|>

A model answers after a generation prompt (``<|assistant|>``) and stops when it writes ``<|end|>``
(``generate(..., eos_token_id=end_id(tokenizer))``). :func:`render` and :func:`encode_conversation` write this
out in Python; :func:`chat_tokenizer` gives the same through ``transformers``: the book's tokenizer as a
``PreTrainedTokenizerFast`` that encodes ordinary text exactly as the book's does, with the special tokens and a
Jinja :data:`CHAT_TEMPLATE` for ``apply_chat_template``. The template marks each assistant turn's content and end
token with ``{% generation %}``, so ``return_assistant_tokens_mask=True`` finds the tokens that supervised
instruction tuning trains on, and it refuses the conversations :func:`check_conversation` refuses. The model's
embedding grows for the new tokens with :func:`lmbook.models.vocab.grow_embeddings`.
"""

from __future__ import annotations

import json
from typing import Any

import tokenizers as hf

from ..interface import check_bool, check_int
from .tokenizers import BPETokenizer, CharTokenizer, FastBPETokenizer, Tokenizer, UnknownCharacterError, _BYTE_OF_CHAR

ROLES = ("system", "user", "assistant")
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = (SYSTEM, USER, ASSISTANT, END)  # their ids follow the book tokenizer's vocabulary, in this order
ROLE_TOKENS = dict(zip(ROLES, SPECIAL_TOKENS))
ORDER = ("the turns go: an optional system turn first, then user and assistant in turn, starting with the user")

# The template writes what render() writes and refuses what check_conversation() refuses (it cannot see the
# vocabulary, nor a context length). Whitespace in the template is trimmed by the {%- -%} markers.
CHAT_TEMPLATE = """\
{%- set first = 1 if messages[0]['role'] == 'system' else 0 -%}
{%- for message in messages -%}
  {%- set role = message['role'] -%}
  {%- if role not in ['system', 'user', 'assistant'] -%}
    {{- raise_exception('turn ' ~ loop.index0 ~ ' has the unknown role ' ~ role ~ ': the roles are system, user and \
assistant') -}}
  {%- elif (role == 'system' and not loop.first) or (role != 'system' and (role == 'user') != \
((loop.index0 - first) % 2 == 0)) -%}
    {{- raise_exception('turn ' ~ loop.index0 ~ ' (' ~ role ~ ') is out of order: ORDER') -}}
  {%- elif message['content'] is not string or message['content'] | length == 0 -%}
    {{- raise_exception('turn ' ~ loop.index0 ~ ' has no content: every turn needs some text') -}}
  {%- endif -%}
  {%- if role == 'assistant' -%}
    {{- '<|assistant|>' -}}
    {%- generation -%}{{- message['content'] + '<|end|>' -}}{%- endgeneration -%}
  {%- else -%}
    {{- '<|' + role + '|>' + message['content'] + '<|end|>' -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {%- if messages[-1]['role'] != 'user' -%}
    {{- raise_exception('a generation prompt must follow a user turn; the last turn is ' ~ messages[-1]['role']) -}}
  {%- endif -%}
  {{- '<|assistant|>' -}}
{%- endif -%}""".replace("ORDER", ORDER)


def check_conversation(conversation, add_generation_prompt: bool = False) -> None:
    """Raise a clear error unless ``conversation`` is a non-empty list of turns with known roles in the allowed
    order (see ``ORDER``), each with some text that holds no special token."""
    check_bool("add_generation_prompt", add_generation_prompt)
    if not isinstance(conversation, (list, tuple)) or not conversation:
        raise ValueError(f"a conversation is a non-empty list of turns {{'role': ..., 'content': ...}}, not "
                         f"{conversation!r:.80}.")
    first = 1 if isinstance(conversation[0], dict) and conversation[0].get("role") == "system" else 0
    for i, turn in enumerate(conversation):
        if not isinstance(turn, dict) or set(turn) != {"role", "content"}:
            raise ValueError(f"turn {i} must be a dict with the keys 'role' and 'content' only, not {turn!r:.80}.")
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            raise ValueError(f"turn {i} has the unknown role {role!r}: the roles are system, user and assistant.")
        expected = "system" if role == "system" and i == 0 else ("user" if (i - first) % 2 == 0 else "assistant")
        if role != expected:
            raise ValueError(f"turn {i} ({role}) is out of order: {ORDER}.")
        if not isinstance(content, str) or not content:
            raise ValueError(f"turn {i} has no content: every turn needs some text (a str), not {content!r:.80}.")
        inside = [token for token in SPECIAL_TOKENS if token in content]
        if inside:
            raise ValueError(f"turn {i} holds the special token(s) {inside} in its text: only the template writes "
                             "them. Remove them from the content.")
    if add_generation_prompt and conversation[-1]["role"] != "user":
        raise ValueError(f"a generation prompt must follow a user turn; the last turn is {conversation[-1]['role']}.")


def render(conversation, add_generation_prompt: bool = False) -> str:
    """The conversation as text, as the chat template writes it (``apply_chat_template(..., tokenize=False)``)."""
    check_conversation(conversation, add_generation_prompt)
    text = "".join(ROLE_TOKENS[turn["role"]] + turn["content"] + END for turn in conversation)
    return text + (ASSISTANT if add_generation_prompt else "")


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """The id of each special token for the book's ``tokenizer``: ``vocab_size`` onwards, in ``SPECIAL_TOKENS``'
    order."""
    _check_tokenizer(tokenizer)
    return {token: tokenizer.vocab_size + k for k, token in enumerate(SPECIAL_TOKENS)}


def end_id(tokenizer: Tokenizer) -> int:
    """The id of ``<|end|>``, where generation stops (``generate(..., eos_token_id=end_id(tokenizer))``)."""
    return special_ids(tokenizer)[END]


def encode_conversation(conversation, tokenizer: Tokenizer, add_generation_prompt: bool = False,
                        max_length: int | None = None) -> tuple[list[int], list[int]]:
    """The conversation's token ids and its assistant mask (1 on each assistant turn's content and ``<|end|>``, the
    tokens instruction tuning trains on), as ``apply_chat_template(..., return_assistant_tokens_mask=True)`` gives
    them through :func:`chat_tokenizer`. ``max_length``: the model's context; a longer conversation is refused."""
    check_conversation(conversation, add_generation_prompt)
    check_int("max_length", max_length, 1, allow_none=True)
    ids_of = special_ids(tokenizer)
    ids: list[int] = []
    mask: list[int] = []
    for i, turn in enumerate(conversation):
        try:
            content = tokenizer.encode(turn["content"])
        except UnknownCharacterError as err:
            raise ValueError(f"turn {i} ({turn['role']}): {err}") from None
        answer = int(turn["role"] == "assistant")
        ids += [ids_of[ROLE_TOKENS[turn["role"]]], *content, ids_of[END]]
        mask += [0] + [answer] * (len(content) + 1)
    if add_generation_prompt:
        ids.append(ids_of[ASSISTANT])
        mask.append(0)
    if max_length is not None and len(ids) > max_length:
        raise ValueError(f"the conversation is {len(ids)} tokens long but the context holds {max_length}: shorten "
                         "its turns, drop the oldest ones, or leave out examples this long.")
    return ids, mask


def decode_reply(tokenizer: Tokenizer, ids) -> str:
    """The text of a reply's ``ids`` (what the model wrote after the generation prompt), up to the first
    ``<|end|>``; a reply cut off before its end is decoded whole. Another special token in it is refused."""
    stop = end_id(tokenizer)
    if isinstance(ids, (str, bytes)):
        raise TypeError("decode_reply takes the reply's token ids, not text.")
    ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
    ids = ids[: ids.index(stop)] if stop in ids else ids
    others = sorted({i for i in ids if i >= tokenizer.vocab_size})
    if others:
        raise ValueError(f"the reply holds special token ids {others} before its end: it is no single answer.")
    return tokenizer.decode(ids)


def _check_tokenizer(tokenizer) -> None:
    if not isinstance(tokenizer, (CharTokenizer, BPETokenizer, FastBPETokenizer)):
        raise TypeError(f"tokenizer must be one of the book's tokenizers (CharTokenizer, BPETokenizer or "
                        f"FastBPETokenizer from lmbook.text.tokenizers), not {type(tokenizer).__name__}.")


def backend(tokenizer: Tokenizer) -> hf.Tokenizer:
    """A ``tokenizers.Tokenizer`` that gives the ids the book's ``tokenizer`` gives, on any text it encodes.

    Characters: a WordLevel model over the single characters, after a pre-tokenizer that splits the text into
    single characters (newlines and spaces included). The written-out BPE: ``tokenizers``' BPE with the same merges
    in the same order, after the same pre-tokenisation pattern. The fast BPE: a copy of its own.
    """
    _check_tokenizer(tokenizer)
    if isinstance(tokenizer, FastBPETokenizer):
        return hf.Tokenizer.from_str(tokenizer.backend.to_str())
    if isinstance(tokenizer, CharTokenizer):
        made = hf.Tokenizer(hf.models.WordLevel(vocab={c: i for i, c in enumerate(tokenizer.chars)}, unk_token=None))
        made.pre_tokenizer = hf.pre_tokenizers.Split(pattern=hf.Regex(r"[\s\S]"), behavior="isolated")  # one each
        made.decoder = hf.decoders.Fuse()  # join the characters as they are (no spaces between tokens)
        return made
    char_of = {b: c for c, b in _BYTE_OF_CHAR.items()}  # GPT-2's printable stand-in for each byte
    names = ["".join(char_of[b] for b in tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)]
    if len(set(names)) != len(names):
        raise ValueError("this BPE has two ids for the same bytes: tokenizers' BPE cannot hold it.")
    made = hf.Tokenizer(hf.models.BPE(vocab={name: i for i, name in enumerate(names)},
                                      merges=[(names[a], names[b]) for a, b in tokenizer.merges]))
    made.pre_tokenizer = hf.pre_tokenizers.Sequence([
        hf.pre_tokenizers.Split(hf.Regex(tokenizer.pattern), behavior="isolated"),
        hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    made.decoder = hf.decoders.ByteLevel()
    return made


def chat_tokenizer(tokenizer: Tokenizer, model_max_length: int | None = None) -> Any:
    """The book's ``tokenizer`` as a ``transformers.PreTrainedTokenizerFast`` with the role and end-of-turn tokens
    (end of text and padding: ``<|end|>``) and :data:`CHAT_TEMPLATE`; ordinary text gets the book's ids. It saves
    with ``save_pretrained`` and loads back with ``AutoTokenizer.from_pretrained``. ``model_max_length``: the
    model's context, if ``transformers`` should know it."""
    from transformers import PreTrainedTokenizerFast

    check_int("model_max_length", model_max_length, 1, allow_none=True)
    made = backend(tokenizer)
    made.add_special_tokens([hf.AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    wanted = special_ids(tokenizer)
    found = {token: made.token_to_id(token) for token in SPECIAL_TOKENS}
    if found != wanted:
        raise ValueError(f"the special tokens got the ids {found}, not {wanted}: the tokenizer already holds some of "
                         f"them ({json.dumps(SPECIAL_TOKENS)}) as tokens of its own.")
    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    wrapped = PreTrainedTokenizerFast(tokenizer_object=made, eos_token=END, pad_token=END,
                                      extra_special_tokens=[SYSTEM, USER, ASSISTANT],
                                      clean_up_tokenization_spaces=False, **extra)
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped
