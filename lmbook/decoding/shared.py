"""What every decoding strategy shares (chapter 5): its settings, the logits processors, and reading the model.

:class:`GenerationConfig` holds the settings under ``transformers``' names and meanings. The
processors are small functions from next-token scores (N, V) to new scores, applied in
``transformers``' order by :func:`process_scores`: repetition penalty, then no-repeat-n-gram,
and only when sampling, temperature, then top-k, then top-p, then min-p, typical, epsilon and eta
(:mod:`lmbook.decoding.warpers`). :class:`Reader` feeds a model the
tokens it has not read yet, through its cache, and returns the next-token logits;
:func:`weights_in_out` lays the weights out in memory as GPT-2 stores them while a CPU decodes.
:mod:`lmbook.decoding.generate` (greedy and sampling) and :mod:`lmbook.decoding.beam` (beam search) are built on them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

from .warpers import epsilon_filter, eta_filter, min_p_filter, typical_filter
from ..interface import check_bool, check_int, check_model, check_number

EARLY_STOPPING = (True, False, "never")


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode, with ``transformers``' names and meanings (where they differ, it says so).

    - Length: ``max_new_tokens`` new tokens, or ``max_length`` tokens in all, prompt included
      (``max_new_tokens`` wins when both are given, as in ``transformers``).
    - Greedy or sampling: ``do_sample=None`` (the default) samples unless ``temperature == 0``
      or beams are searched, the convention of chapters 2 to 4; ``do_sample=False`` is greedy.
      ``transformers`` is greedy by default instead.
    - Sampling filters: ``temperature`` (> 0 when sampling), ``top_k`` (``None`` or 0: no filter,
      as ``top_k=0`` in ``transformers``, whose default is 50), ``top_p`` (1: no filter), then ``min_p``
      (``None``: no filter), ``typical_p`` (1: none), ``epsilon_cutoff`` and ``eta_cutoff`` (0: none).
    - ``repetition_penalty`` (1: none) and ``no_repeat_ngram_size`` (0: none) act on the prompt too.
    - Beam search: ``num_beams``, ``length_penalty`` (the score is ``sum log p / new_tokens **
      length_penalty``), ``early_stopping`` (True, False or ``"never"``), ``num_return_sequences``.
    - Stopping: ``eos_token_id`` (one id or several), ``stop_strings`` (needs a tokenizer); a finished
      row is filled with ``pad_token_id`` (by default the first end id).
    - ``use_cache=False`` rereads the whole window at every step: the slow reference for the cache.
    """

    max_new_tokens: int | None = None
    max_length: int | None = None
    do_sample: bool | None = None
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float | None = None
    typical_p: float = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    stop_strings: tuple[str, ...] = ()
    use_cache: bool = True

    def __post_init__(self) -> None:
        check_int("max_new_tokens", self.max_new_tokens, 0, allow_none=True)
        check_int("max_length", self.max_length, 1, allow_none=True)
        if self.max_new_tokens is None and self.max_length is None:
            raise ValueError("give max_new_tokens (new tokens) or max_length (prompt included): both are None.")
        check_bool("do_sample", self.do_sample, allow_none=True)
        check_bool("use_cache", self.use_cache)
        check_number("temperature", self.temperature, "finite and >= 0 (0: greedy)", lambda t: 0 <= t < math.inf)
        if self.do_sample and self.temperature == 0:
            raise ValueError("temperature must be > 0 when sampling, not 0: for greedy decoding set do_sample=False.")
        check_int("top_k", self.top_k, 0, allow_none=True)
        check_number("top_p", self.top_p, "in [0, 1]", lambda p: 0 <= p <= 1)
        if self.min_p is not None:
            check_number("min_p", self.min_p, "in [0, 1] (None: no filter)", lambda p: 0 <= p <= 1)
        check_number("typical_p", self.typical_p, "in (0, 1] (1: no filter)", lambda p: 0 < p <= 1)
        for name in ("epsilon_cutoff", "eta_cutoff"):
            check_number(name, getattr(self, name), "in [0, 1) (0: no filter)", lambda e: 0 <= e < 1)
        check_number("repetition_penalty", self.repetition_penalty, "> 0 (1 means none)", lambda r: r > 0)
        check_int("no_repeat_ngram_size", self.no_repeat_ngram_size, 0)
        check_int("num_beams", self.num_beams, 1)
        check_number("length_penalty", self.length_penalty, "a finite number", lambda x: abs(x) < float("inf"))
        if not any(self.early_stopping is e for e in EARLY_STOPPING):
            raise ValueError(f"early_stopping must be True, False or 'never', not {self.early_stopping!r}.")
        check_int("num_return_sequences", self.num_return_sequences, 1)
        if self.num_beams > 1 and self.do_sample:
            raise ValueError("beam search with sampling (do_sample=True and num_beams > 1) is not offered: "
                             "set do_sample=False for beam search, or num_beams=1 to sample.")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences={self.num_return_sequences} must be <= num_beams="
                             f"{self.num_beams}: beam search returns at most its beams.")
        if self.num_beams == 1 and not self.sampling and self.num_return_sequences > 1:
            raise ValueError(f"greedy decoding gives one sequence per prompt, not num_return_sequences="
                             f"{self.num_return_sequences}: sample (do_sample=True) or search beams (num_beams > 1).")
        for i in self.eos_ids:
            check_int("eos_token_id", i, 0)
        check_int("pad_token_id", self.pad_token_id, 0, allow_none=True)
        if isinstance(self.stop_strings, str) or not all(isinstance(s, str) and s for s in self.stop_strings):
            raise TypeError(f"stop_strings must be a list of non-empty strings, not {self.stop_strings!r}.")

    @property
    def sampling(self) -> bool:
        """Whether tokens are drawn at random (see ``do_sample``)."""
        if self.do_sample is not None:
            return self.do_sample
        return self.temperature > 0 and self.num_beams == 1

    @property
    def eos_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        return tuple(self.eos_token_id) if isinstance(self.eos_token_id, (list, tuple)) else (self.eos_token_id,)

    @property
    def pad_id(self) -> int | None:
        """The id a finished row is filled with: ``pad_token_id``, else the first end id."""
        return self.pad_token_id if self.pad_token_id is not None else (self.eos_ids or (None,))[0]

    def total_length(self, prompt_length: int) -> int:
        """The length of the longest sequence to return, prompt included."""
        if self.max_new_tokens is not None:
            return prompt_length + self.max_new_tokens
        if self.max_length <= prompt_length:
            raise ValueError(f"max_length={self.max_length} leaves no room after a prompt of {prompt_length} tokens: "
                             "raise it, or give max_new_tokens instead.")
        return self.max_length


# --- The logits processors: scores (N, V) and the ids so far (N, t) -> new scores (N, V) ----
def repetition_penalty(scores: torch.Tensor, ids: torch.Tensor, penalty: float,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019): each token already in ``ids`` gets ``s * penalty`` if ``s < 0``, else
    ``s / penalty``, once however often it occurs. Positions where ``mask`` (N, t) is 0 (padding) do not count."""
    N, V = scores.shape
    if mask is not None:
        ids = ids.masked_fill(mask == 0, V)  # padding goes to a spare column
    seen = torch.zeros(N, V + 1, dtype=torch.bool, device=scores.device).scatter_(1, ids, True)[:, :V]  # (N, V)
    return torch.where(seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)


def no_repeat_ngram(scores: torch.Tensor, ids: torch.Tensor, n: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """-inf on every token that would complete an n-gram already in ``ids`` (the prompt included).

    Positions where ``mask`` (N, t) is 0 (left padding) are not text: no n-gram that covers one counts.
    """
    N, t = ids.shape
    if t < n:
        return scores
    prefix = ids[:, t - n + 1 :]  # (N, n-1): the last n-1 tokens, what a new n-gram would start with
    windows = ids.unfold(1, n, 1)  # (N, t-n+1, n): every n-gram so far
    match = (windows[..., :-1] == prefix[:, None]).all(dim=-1)  # (N, t-n+1): n-grams that begin like it
    if mask is not None:
        match &= mask.unfold(1, n, 1).bool().all(dim=-1)  # only n-grams of real tokens
    V = scores.size(-1)
    banned = torch.zeros(N, V + 1, dtype=torch.bool, device=scores.device)
    banned.scatter_(1, torch.where(match, windows[..., -1], V), True)  # their last tokens; the rest to a spare column
    return scores.masked_fill(banned[:, :V], float("-inf"))


def top_k_filter(scores: torch.Tensor, k: int, min_keep: int = 1) -> torch.Tensor:
    """Keep the ``k`` highest scores (ties at the k-th all survive), -inf elsewhere."""
    k = min(max(k, min_keep), scores.size(-1))
    kth = torch.topk(scores, k, dim=-1).values[:, -1:]  # (N, 1) the k-th largest score
    return scores.masked_fill(scores < kth, float("-inf"))


def top_p_filter(scores: torch.Tensor, p: float, min_keep: int = 1) -> torch.Tensor:
    """Nucleus filter (Holtzman et al. 2020): keep the smallest set of top tokens whose probability reaches ``p``.

    As in ``transformers``: sort ascending, drop the tokens whose cumulative probability is ``<= 1 - p``,
    and always keep the ``min_keep`` most likely.
    """
    ascending, order = torch.sort(scores, descending=False)  # (N, V)
    drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - p  # (N, V) in sorted order
    drop[:, -min_keep:] = False
    return scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))


def process_scores(scores: torch.Tensor, ids: torch.Tensor, config: GenerationConfig, sampling: bool,
                   mask: torch.Tensor | None = None, min_keep: int = 1) -> torch.Tensor:
    """Every processor ``config`` asks for, in ``transformers``' order; the sampling filters only when sampling."""
    if config.repetition_penalty != 1.0:
        scores = repetition_penalty(scores, ids, config.repetition_penalty, mask)
        if config.repetition_penalty < 1e-2 and bool((scores == float("inf")).any()):
            raise ValueError(f"repetition_penalty={config.repetition_penalty} is so small that the scores of the "
                             "tokens seen overflow to infinity: raise it (1 means no penalty, values below 1 "
                             "favour repeats).")
    if config.no_repeat_ngram_size > 0:
        scores = no_repeat_ngram(scores, ids, config.no_repeat_ngram_size, mask)
    if sampling:
        if config.temperature != 1.0:
            scores = scores / config.temperature
            if config.temperature < 1e-2 and bool((scores == float("inf")).any()):
                raise ValueError(f"temperature={config.temperature} is so small that the scaled scores overflow to "
                                 "infinity: for the likeliest token use greedy decoding (temperature=0 or "
                                 "do_sample=False), or raise the temperature.")
        if config.top_k:
            scores = top_k_filter(scores, config.top_k, min_keep)
        if config.top_p < 1.0:
            scores = top_p_filter(scores, config.top_p, min_keep)
        if config.min_p is not None:
            scores = min_p_filter(scores, config.min_p, min_keep)
        if config.typical_p < 1.0:
            scores = typical_filter(scores, config.typical_p, min_keep)
        if config.epsilon_cutoff > 0:
            scores = epsilon_filter(scores, config.epsilon_cutoff, min_keep)
        if config.eta_cutoff > 0:
            scores = eta_filter(scores, config.eta_cutoff, min_keep)
    return scores


# --- Reading the model ----------------------------------------------------------------
class Reader:
    """Feeds ``model`` the tokens it has not read yet and returns the next-token logits (N, V) in float32.

    ``model`` offers :class:`lmbook.interface.LanguageModel`. With the cache each call reads only the new
    tokens; when the context is full, the cache restarts from the most recent half of the context (an
    amortised sliding window, so positions restart too). Without the cache every call rereads the last
    ``context_length`` tokens (a window that slides by one): the slow reference. Within the context both
    read exactly the same tokens at the same positions.
    """

    def __init__(self, model: nn.Module, use_cache: bool = True):
        check_model(model)
        self.model = model
        self.context = model.context_length
        self.cache = model.make_cache() if use_cache else None
        self.start = 0  # where in the sequence the cache's first position lies
        self.read = 0  # how many tokens of the sequence the model has read

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for the token after ``ids`` (N, t); ``mask`` (N, t) is 0 on left padding."""
        t = ids.size(1)
        if self.cache is None:
            start = 0 if self.context is None else max(0, t - self.context)
            window = ids[:, start:]
        else:
            if self.context is not None and t - self.start > self.context:
                self.cache.reset()  # slide: reread the most recent half of the context
                self.start = self.read = t - (self.context // 2 or 1)
            start, window = self.start, ids[:, self.read :]
        extra = {} if self.cache is None else {"cache": self.cache}
        if mask is not None:  # the mask covers every position the model sees: cached ones and new ones
            extra["attention_mask"] = mask[:, start:t]
        logits = self.model(window, **extra)[0]  # (N, T, V)
        self.read = t
        return logits[:, -1].float()  # (N, V)

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the cached rows ``rows`` (N,), in that order: beam search follows its surviving beams."""
        if self.cache is not None:
            self.cache.reorder(rows)


@contextmanager
def weights_in_out(model: nn.Module, rows: int = 1) -> Iterator[None]:
    """While a CPU decodes one sequence (``rows == 1``), keep each linear weight (out, in) column by column.

    One decoding step of one sequence multiplies one row by every weight matrix, so its speed is the
    speed of reading the weights. ``F.linear`` computes ``x @ W.T``; with ``W`` stored column-major,
    ``W.T`` is a row-major (in, out) matrix, the layout of GPT-2's own ``Conv1D``, which this CPU's
    matrix library reads faster for one row (``benchmarks/NOTES.md``). With several rows the
    products are matrix-matrix, the library packs the weights its own way, and the layout is left
    as it is (it measured no steady gain there). Values, shapes and parameters do not change, only
    the order in memory, and every weight is laid out as before on exit. Left alone: weights tied
    to an embedding (an embedding looks up rows), weights on other devices, and everything when
    inference mode is already on (the copies would become inference tensors).
    """
    if rows != 1 or torch.is_inference_mode_enabled():
        yield
        return
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    moved = [m.weight for m in model.modules() if isinstance(m, nn.Linear) and id(m.weight) not in tied
             and m.weight.device.type == "cpu" and m.weight.dim() == 2 and m.weight.is_contiguous()]
    with torch.no_grad():
        for w in moved:
            w.data = w.data.t().contiguous().t()  # the same (out, in) values, stored (in, out)
    try:
        yield
    finally:
        with torch.no_grad():
            for w in moved:
                w.data = w.data.contiguous()
