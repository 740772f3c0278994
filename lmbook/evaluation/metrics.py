"""How well a language model predicts text, and how good the text it writes is.

Every measure here starts from the negative log-likelihood (NLL) a model gives to
text, in nats (natural logarithms, as ``torch.nn.functional.cross_entropy``
returns it). Chapter 1 defines perplexity and bits per character and computes
them by hand for an n-gram model; later chapters score the neural models with
the same functions. Chapter 6 scores long texts with a sliding window
(:func:`token_nlls`, :func:`score_text`) for the book's models and for ``transformers``
causal language models alike, and turns one summed NLL into every figure it is quoted
as (:class:`TextNLL`). Measures of generated text are in :mod:`lmbook.evaluation.textmetrics`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..text.data import SequentialBatches
from ..interface import check_int, context_length, device_of, evaluating
from ..text.tokenizers import bytes_of_token

LN2 = math.log(2.0)  # nats in one bit


def _check_nll(value: float, name: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool:
        value = value.item()  # a 0-d tensor, such as a loss
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number (a float, a NumPy number or a 1-element tensor), not {value!r:.80}.")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} is NaN: some probability was not a number.")
    if value < 0:
        raise ValueError(f"{name} = {value} is negative: a probability above 1 was scored.")
    return value


def nats_to_bits(nats: float) -> float:
    """``nats`` in bits: one bit is ln 2 nats."""
    return float(nats) / LN2


def perplexity(mean_nll_nats: float) -> float:
    """``exp(mean NLL per token)``: the number of equally likely tokens the model is as unsure as.

    A model that spreads its probability evenly over ``V`` tokens has a mean NLL of
    ``ln V`` and a perplexity of ``V``. A token given probability 0 makes the NLL, and
    the perplexity, infinite.
    """
    mean_nll_nats = _check_nll(mean_nll_nats, "mean_nll_nats")
    try:
        return math.exp(mean_nll_nats)
    except OverflowError:
        return math.inf


def bits_per_char(total_nll_nats: float, n_chars: int) -> float:
    """The NLL of a text in bits, divided by its number of characters.

    ``total_nll_nats`` is summed over the text's tokens, whatever they are
    (characters, words, BPE tokens): dividing by characters, not tokens, makes models
    with different tokenizers comparable on the same text. A figure beyond the largest float is ``math.inf``.
    """
    total_nll_nats = _check_nll(total_nll_nats, "total_nll_nats")
    check_int("n_chars", n_chars, 1)
    return total_nll_nats / (n_chars * LN2)


def bits_per_byte(total_nll_nats: float, n_bytes: int) -> float:
    """The NLL of a text in bits, divided by the number of bytes of its UTF-8 encoding.

    Equal to :func:`bits_per_char` for ASCII text such as Tiny Shakespeare; the usual
    tokenizer-independent figure for text in any script (chapter 6).
    """
    total_nll_nats = _check_nll(total_nll_nats, "total_nll_nats")
    check_int("n_bytes", n_bytes, 1)
    return total_nll_nats / (n_bytes * LN2)


@torch.no_grad()
def split_loss(model: nn.Module, data: torch.Tensor, block_size: int, batch_size: int = 256,
               carry_state: bool = False) -> float:
    """Mean loss over a whole split, every token predicted once: the book's one loss over a split.

    By default the split is cut into consecutive windows of ``block_size`` tokens, each read from
    scratch (chapter 3 compares its GPT and the LSTM this way; ``benchmarks/speedrun_char_cpu.py``
    reports it). With ``carry_state=True`` (recurrent models, chapter 2) it is cut into ``batch_size``
    streams, as by :class:`~lmbook.text.data.SequentialBatches`, read block by block with the state carried,
    so each token but the first few of a stream is predicted from everything before it in its stream.
    """
    device = device_of(model)
    if carry_state:
        batches = SequentialBatches(data, block_size, batch_size, device)
        state, total = model.make_cache(batch_size), 0.0
        with evaluating(model):
            for _ in range(batches.blocks):
                x, y = batches()
                total += model(x, y, cache=state)[1].item()
        return total / batches.blocks
    n = (len(data) - 1) // block_size
    if n < 1:
        raise ValueError(f"{len(data)} tokens do not fill one window of {block_size} + 1: use a smaller block_size.")
    x = data[: n * block_size].view(n, block_size).to(device)  # (N, T)
    y = data[1 : n * block_size + 1].view(n, block_size).to(device)  # (N, T), shifted by one
    with evaluating(model):
        total = sum(model(x[i : i + batch_size], y[i : i + batch_size])[1].item() * len(x[i : i + batch_size])
                    for i in range(0, n, batch_size))
    return total / n


# --- Chapter 6: one summed NLL, every figure it is quoted as; long texts by a sliding window ---
@dataclass(frozen=True)
class TextNLL:
    """The negative log-likelihood a model gives a text, and the sizes it is divided by.

    ``nats`` is summed over ``tokens`` predictions; ``chars`` and ``bytes`` count the text
    those predicted tokens spell (0 when not known). Chapter 6 quotes one such sum as
    cross-entropy per token, perplexity, bits per token, per character and per byte;
    ``a + b`` pools two texts (their NLLs and sizes add up; their perplexities do not).
    """

    nats: float
    tokens: int
    chars: int = 0
    bytes: int = 0

    def __post_init__(self) -> None:
        _check_nll(self.nats, "nats")
        for name in ("tokens", "chars", "bytes"):
            check_int(name, getattr(self, name), 0)
        if self.tokens == 0:
            raise ValueError("tokens must be positive: a text with no predicted token has no NLL to divide.")

    @property
    def cross_entropy(self) -> float:
        """Mean NLL per predicted token, in nats (what ``model(idx, targets)`` returns as its loss)."""
        return self.nats / self.tokens

    @property
    def perplexity(self) -> float:
        """``exp(cross_entropy)``: meaningful only beside models with the same tokenizer."""
        return perplexity(self.cross_entropy)

    @property
    def bits_per_token(self) -> float:
        return nats_to_bits(self.cross_entropy)

    @property
    def bits_per_char(self) -> float:
        """Bits per character of the predicted text: comparable across tokenizers."""
        if not self.chars:
            raise ValueError("chars is not known for this NLL: score the text with score_text to count them.")
        return bits_per_char(self.nats, self.chars)

    @property
    def bits_per_byte(self) -> float:
        if not self.bytes:
            raise ValueError("bytes is not known for this NLL: score the text with score_text to count them.")
        return bits_per_byte(self.nats, self.bytes)

    def __add__(self, other: TextNLL) -> TextNLL:
        if not isinstance(other, TextNLL):
            return NotImplemented
        return TextNLL(self.nats + other.nats, self.tokens + other.tokens, self.chars + other.chars,
                       self.bytes + other.bytes)

    def as_dict(self) -> dict[str, float]:
        """Every figure at once (those needing unknown sizes left out)."""
        out = {"nats": self.nats, "tokens": self.tokens, "cross_entropy": self.cross_entropy,
               "perplexity": self.perplexity, "bits_per_token": self.bits_per_token}
        if self.chars:
            out.update(chars=self.chars, bits_per_char=self.bits_per_char)
        if self.bytes:
            out.update(bytes=self.bytes, bits_per_byte=self.bits_per_byte)
        return out


def logits_of(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """Next-token logits (B, T, V) for ``idx`` (B, T), from a book model or a ``transformers`` causal LM."""
    out = model(idx)
    return out[0] if isinstance(out, tuple) else out.logits  # (logits, loss), or a ModelOutput


def sliding_windows(n_predictions: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows that score ``n_predictions`` next-token predictions: ``(begin, first, end)`` each.

    Prediction ``j`` guesses token ``j + 1`` from the tokens before it. Window ``k`` reads
    tokens ``begin = k * stride`` to ``end - 1`` (at most ``context`` of them) and makes
    predictions ``begin .. end - 1``; it scores only those from ``first`` on, the ones no
    earlier window scored, so every prediction is scored exactly once and, after the first
    window, with at least ``context - stride`` tokens before it in its window.
    """
    spans, end, begin = [], 0, 0
    while end < n_predictions:
        new_end = min(begin + context, n_predictions)
        spans.append((begin, end, new_end))
        begin, end = begin + stride, new_end
    return spans


def _check_window(n_tokens: int, context: int | None, stride: int | None, limit: int | None) -> tuple[int, int]:
    if n_tokens < 2:
        raise ValueError(f"the text has {n_tokens} token(s): at least 2 are needed to predict one from another.")
    if context is None:
        context = limit if limit is not None else n_tokens - 1  # no limit: the whole text in one window
    check_int("context", context, 1)
    if limit is not None and context > limit:
        raise ValueError(f"context={context} is longer than the model's context of {limit} tokens.")
    if n_tokens - 1 < context:
        raise ValueError(
            f"the text has {n_tokens} tokens, shorter than one window of context={context} (+1 to predict): "
            f"give a longer text, or score it in one window with context={n_tokens - 1}."
        )
    stride = context if stride is None else stride
    check_int("stride", stride)
    if not 0 < stride <= context:
        raise ValueError(f"stride must be a whole number in (0, context] = (0, {context}], not {stride!r}.")
    return context, stride


@torch.no_grad()
def token_nlls(
    model: nn.Module,
    ids,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
) -> torch.Tensor:
    """The NLL, in nats, of each token of ``ids`` after the first, by the sliding-window method (chapter 6).

    ``ids`` (N,) is read in windows of ``context`` tokens (the model's own context by
    default; the whole text for a model without a limit) that start every ``stride``
    tokens (``stride = context`` by default: windows side by side). Tokens a window shares
    with the one before serve only as context; each of the N - 1 predictions is scored
    once (see :func:`sliding_windows`). A smaller stride gives every token more context
    and costs about ``context / stride`` times the computation. Works for the book's
    models and for ``transformers`` causal LMs alike, in eval mode; returns (N - 1,)
    float32 on the CPU, element ``j`` scoring token ``j + 1``.
    """
    ids = torch.as_tensor(ids)
    if ids.numel() == 0:
        ids = ids.long()  # an empty list becomes a float tensor
    if ids.dim() != 1:
        raise ValueError(f"ids must be one text, a 1-D sequence of token ids, not of shape {tuple(ids.shape)}.")
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise TypeError(f"ids must hold integer token ids, not {ids.dtype}.")
    context, stride = _check_window(len(ids), context, stride, context_length(model))
    check_int("batch_size", batch_size, 1)
    ids = ids.long()
    device = device_of(model)
    spans = sliding_windows(len(ids) - 1, context, stride)
    out = torch.empty(len(ids) - 1)
    with evaluating(model):
        i = 0
        while i < len(spans):  # windows of equal length in batches (only the last can be shorter)
            length = spans[i][2] - spans[i][0]
            group = [spans[i]]
            while len(group) < batch_size and i + len(group) < len(spans):
                nxt = spans[i + len(group)]
                if nxt[2] - nxt[0] != length:
                    break
                group.append(nxt)
            x = torch.stack([ids[b:e] for b, _, e in group]).to(device)  # (B, L)
            y = torch.stack([ids[b + 1 : e + 1] for b, _, e in group]).to(device)  # (B, L), shifted by one
            logits = logits_of(model, x)  # (B, L, V)
            nll = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none").cpu()  # (B, L)
            for row, (b, first, e) in enumerate(group):
                out[first:e] = nll[row, first - b :]
            i += len(group)
    return out


def score_text(
    model: nn.Module,
    tokenizer,
    text: str,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
) -> TextNLL:
    """The NLL ``model`` gives ``text`` (by :func:`token_nlls`), with the characters and bytes it predicted.

    The first token is only context, so the bytes counted are those of the text after it,
    and the characters those with at least one byte after it (a byte-level BPE may end its
    first token inside a character: the rest of that character is predicted). ``tokenizer``
    is any of the book's tokenizers or a ``transformers`` one (``encode(text) -> ids``,
    ``decode(ids) -> text``); it must give the text back. Chapter 6's scoreboard puts every
    model on one scale with ``score_text(...).bits_per_char``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}.")
    ids = list(tokenizer.encode(text))
    if len(ids) < 2:
        raise ValueError(f"the text {text[:40]!r} has {len(ids)} token(s): at least 2 are needed.")
    return _scored(model, tokenizer, text, ids, context, stride, batch_size)[0]


def _scored(model, tokenizer, text: str, ids: list[int], context, stride, batch_size) -> tuple[TextNLL, torch.Tensor]:
    first = _first_token_bytes(tokenizer, ids, text)
    nll = token_nlls(model, ids, context, stride, batch_size)
    whole = len(first.decode("utf-8", errors="ignore"))  # the characters the first token holds entirely
    score = TextNLL(float(nll.double().sum()), len(nll), len(text) - whole, len(text.encode("utf-8")) - len(first))
    return score, nll


def _first_token_bytes(tokenizer, ids: list[int], text: str) -> bytes:
    """The bytes of ``text`` that its first token stands for, once ``decode(ids) == text`` is checked.

    Only the decoding of all the ids is compared with the text: the first token alone decodes to
    U+FFFD when it ends inside a character. Its bytes come from the tokenizer where it can say
    (:func:`lmbook.text.tokenizers.bytes_of_token`), else from decoding it alone.
    """
    decoded = tokenizer.decode(ids)
    if decoded != text:
        raise ValueError(f"the tokenizer does not round-trip the text: decode(encode(text)) gives {decoded[:40]!r}, "
                         f"not {text[:40]!r}, so the characters its tokens predict cannot be counted. Use a "
                         "tokenizer that reads this text exactly (a byte-level BPE reads any text).")
    first = bytes_of_token(tokenizer, ids[0])
    if first is None:
        first = tokenizer.decode(ids[:1]).encode("utf-8")
    if not text.encode("utf-8").startswith(first):
        raise ValueError(f"the first token stands for {first!r}, which does not begin the text: the characters "
                         "after it cannot be counted. Use a tokenizer whose tokens decode one by one to the text.")
    return first


def protocol_stride(model: nn.Module) -> int | None:
    """The stride of the book's protocol: a quarter of ``model``'s context (``None``: no limit, one window)."""
    context = context_length(model)
    return None if context is None else max(1, context // 4)


def held_out_score(model: nn.Module, tokenizer, text: str, batch_size: int = 64) -> TextNLL:
    """The book's one protocol for a model's held-out figure (chapters 6 and 7): every token of ``text`` after the
    first scored once, a model with a context limit by sliding windows at :func:`protocol_stride` (every token
    after the first window sees at least three quarters of a context), a recurrent one in one pass, its state
    carried. ``text`` is :func:`lmbook.text.data.held_out_text`, so that one model has one figure everywhere."""
    return score_text(model, tokenizer, text, stride=protocol_stride(model), batch_size=batch_size)


def held_out_nlls(model: nn.Module, tokenizer, text: str, batch_size: int = 64) -> tuple[TextNLL, torch.Tensor]:
    """:func:`held_out_score` and the NLL of each predicted token (N - 1,) it is the sum of, from one reading:
    what :func:`nll_by_piece` splits into pieces for an interval (chapter 6)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}.")
    ids = list(tokenizer.encode(text))
    if len(ids) < 2:
        raise ValueError(f"the text {text[:40]!r} has {len(ids)} token(s): at least 2 are needed.")
    return _scored(model, tokenizer, text, ids, None, protocol_stride(model), batch_size)


def nll_by_piece(nll, token_lengths: list[int], text: str, sep: str = "\n\n") -> list[tuple[float, int]]:
    """``(nats, characters)`` of each piece of ``text`` cut at ``sep`` (by default a blank line: a speech of a
    play), from the NLL of each predicted token (``nll``, (N - 1,)) and the characters of every token
    (``token_lengths``, N of them, summing to ``len(text)``). A token belongs to the piece its first character is
    in; the first token is context only. Independent pieces for a bootstrap interval
    (:func:`lmbook.evaluation.intervals.bootstrap_interval` with ``ratio_of_sums``)."""
    nll = torch.as_tensor(nll, dtype=torch.float64)
    if nll.dim() != 1 or len(token_lengths) != len(nll) + 1:
        raise ValueError(f"need one NLL per token after the first: {len(nll)} NLLs for {len(token_lengths)} tokens.")
    if sum(token_lengths) != len(text):
        raise ValueError(f"the tokens hold {sum(token_lengths)} characters, the text {len(text)}: give each token's "
                         "length in characters, as decoding it alone gives it (a character tokenizer: all 1).")
    if not sep:
        raise ValueError("sep must be a non-empty string to cut the text at.")
    bounds, at = [], text.find(sep)
    while at >= 0:
        bounds.append(at + len(sep))
        at = text.find(sep, at + len(sep))
    starts = torch.tensor(token_lengths, dtype=torch.long).cumsum(0)[:-1]  # (N - 1,) where each predicted token begins
    piece = torch.searchsorted(torch.tensor(bounds, dtype=torch.long), starts, right=True)  # (N - 1,)
    n = len(bounds) + 1
    nats = torch.zeros(n, dtype=torch.float64).index_add_(0, piece, nll)
    chars = torch.zeros(n, dtype=torch.long).index_add_(0, piece, torch.tensor(token_lengths[1:], dtype=torch.long))
    return [(float(a), int(c)) for a, c in zip(nats, chars) if c > 0]
