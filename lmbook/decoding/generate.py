"""Turning a language model into text (chapters 2 to 5): the book's one generation entry point.

:func:`generate` decodes greedily, samples (temperature, top-k, top-p, min-p, typical, epsilon, eta),
applies a repetition penalty and no-repeat-n-gram, or searches beams (:mod:`lmbook.decoding.beam`), with the
settings and meanings of ``transformers``' ``generate`` (:class:`~lmbook.decoding.shared.GenerationConfig` says
where they differ); :func:`stream` yields the tokens one by one as they come, :func:`complete`
goes from text to text. It works with every model of the book that offers ``make_cache()`` and
``model(idx, cache=cache)``: the GPT keeps keys and values in its cache, so each step feeds only
the newest token, and a recurrent model keeps its hidden state. Past the context the cache
restarts from the most recent half of the context (:class:`~lmbook.decoding.shared.Reader`).

Prompts of different lengths are given as a list of id sequences (or left-padded with an
``attention_mask``). A model whose ``forward`` takes an ``attention_mask`` decodes them as one
batch; any other model (the recurrent ones) decodes them one prompt after the other, so sampled
draws then differ from a batched run's.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn

from .beam import beam_search
from .shared import GenerationConfig, Reader, process_scores, weights_in_out
from ..interface import check_int, check_model, check_seed, check_token_ids, context_length, device_of, evaluating

SETTINGS = {f.name for f in fields(GenerationConfig)}


@dataclass
class Generated:
    """What :func:`generate` returns with ``return_dict=True``.

    ``sequences`` (B * R, L): prompts and continuations, left-padded like the prompts and filled with the
    pad id after an end; ``scores`` (B * R,): beam search's length-penalised scores (``transformers``'
    ``sequences_scores``), ``None`` otherwise; ``prompt_length``: where the continuations begin.
    """

    sequences: torch.Tensor
    scores: torch.Tensor | None
    prompt_length: int


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token from ``logits`` (B, V): greedy at ``temperature == 0``, else sampled (B, 1)."""
    config = GenerationConfig(max_new_tokens=1, temperature=temperature, top_k=top_k)
    scores = process_scores(logits.float(), logits.new_zeros(logits.size(0), 0, dtype=torch.long), config,
                            config.sampling)
    return choose(scores, config.sampling, generator)[:, None]


def choose(scores: torch.Tensor, sampling: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token of each row (N,): the best score, or one draw from ``softmax(scores)``."""
    if not sampling:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores, dim=-1)  # (N, V)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(probs.device)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]  # one draw per row, as transformers draws


class _StopStrings:
    """Whether each row's text now ends in a stop string that overlaps its newest token (``transformers``' rule)."""

    def __init__(self, strings: Sequence[str], tokenizer, prompts: list[list[int]]):
        if tokenizer is None:
            raise ValueError("stop_strings need the tokenizer to read the text: pass tokenizer=...")
        self.strings, self.tokenizer, self.keep = strings, tokenizer, max(map(len, strings))
        self.tails = [tokenizer.decode(p)[-self.keep :] for p in prompts]

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        hits = []
        for i, token in enumerate(tokens.tolist()):
            piece = self.tokenizer.decode([token])
            text = self.tails[i] + piece
            hits.append(bool(piece) and any(s in text[-(len(piece) + len(s) - 1) :] for s in self.strings))
            self.tails[i] = text[-self.keep :]
        return torch.tensor(hits, device=tokens.device)


def _room(ids: torch.Tensor, mask: torch.Tensor | None, t: int, total: int, fill: int):
    """``ids`` (N, capacity) and its ``mask``, with room for position ``t``: doubled (up to ``total``) when full.

    The output grows as it is written, so an end reached early costs only what was decoded, as in
    ``transformers``, whatever ``max_new_tokens`` allows.
    """
    if t < ids.size(1):
        return ids, mask
    grow = min(total, 2 * ids.size(1)) - ids.size(1)
    ids = torch.cat([ids, ids.new_full((ids.size(0), grow), fill)], dim=1)
    return ids, None if mask is None else torch.cat([mask, mask.new_ones(mask.size(0), grow)], dim=1)


def _steps(model, prompts, config: GenerationConfig, generator=None, mask=None, tokenizer=None):
    """Greedy or sampled decoding: yields (ids so far (N, t), newest tokens (N,), their scores (N, V))."""
    N, T = prompts.shape
    total = config.total_length(T)
    ids = prompts.new_zeros(N, min(total, max(2 * T, T + 64)))  # the output so far, grown as it fills
    ids[:, :T] = prompts
    stops = None
    if config.stop_strings:
        real = prompts.tolist() if mask is None else [p[m.bool()].tolist() for p, m in zip(prompts, mask)]
        stops = _StopStrings(config.stop_strings, tokenizer, real)
    if mask is not None:
        mask = torch.cat([mask, mask.new_ones(N, ids.size(1) - T)], dim=1)
    reader, sampling, pad = Reader(model, config.use_cache), config.sampling, config.pad_id
    eos = torch.tensor(config.eos_ids, dtype=torch.long, device=ids.device) if config.eos_ids else None
    unfinished = torch.ones(N, dtype=torch.bool, device=ids.device)
    for t in range(T, total):
        ids, mask = _room(ids, mask, t, total, 0)
        m = None if mask is None else mask[:, :t]
        scores = process_scores(reader(ids[:, :t], m), ids[:, :t], config, sampling, m)  # (N, V)
        token = choose(scores, sampling, generator)  # (N,)
        if pad is not None and (eos is not None or stops is not None):
            token = torch.where(unfinished, token, pad)  # finished rows are filled with the pad id
        ids[:, t] = token
        yield ids[:, : t + 1], token, scores
        if eos is not None:
            unfinished &= ~torch.isin(token, eos)
        if stops is not None:
            unfinished &= ~stops(token)
        if (eos is not None or stops is not None) and not unfinished.any():
            return


def _ids_row(prompt) -> torch.Tensor:
    """One prompt of a list as a 1-D tensor of ids; a float, a bool or a string is refused, not truncated."""
    if isinstance(prompt, torch.Tensor):
        if prompt.dtype.is_floating_point or prompt.dtype.is_complex or prompt.dtype == torch.bool or prompt.dim() > 1:
            raise TypeError(f"a prompt must be a 1-D tensor of integer token ids, not {prompt.dtype} "
                            f"{tuple(prompt.shape)}.")
        return prompt.long().view(-1)
    if isinstance(prompt, (str, bytes)) or not isinstance(prompt, (list, tuple)) or not all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in prompt):
        raise TypeError(f"a prompt must be a sequence of integer token ids (encode text with the tokenizer first), "
                        f"not {prompt!r:.80}.")
    return torch.tensor(list(prompt), dtype=torch.long)


def _prompts(idx, attention_mask, vocab_size: int | None, pad: int):
    """The prompts as one left-padded tensor (B, T) and their mask (``None`` when nothing is padded)."""
    if isinstance(idx, (list, tuple)) and idx and all(isinstance(i, numbers.Integral) and not isinstance(i, bool)
                                                      for i in idx):
        idx = torch.tensor(idx, dtype=torch.long)  # a flat list of ids is one prompt, as a 1-D tensor is
    if isinstance(idx, (list, tuple)):
        if attention_mask is not None:
            raise ValueError("attention_mask goes with a padded tensor of prompts, not with a list of them.")
        rows = [_ids_row(p) for p in idx]
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError("a prompt is empty: give at least one token to condition on.")
        T = max(len(r) for r in rows)
        idx = torch.stack([torch.cat([r.new_full((T - len(r),), pad), r]) for r in rows])
        attention_mask = torch.stack([torch.arange(T) >= T - len(r) for r in rows]).long()
    if not isinstance(idx, torch.Tensor) or idx.dtype.is_floating_point or idx.dtype.is_complex or (
            idx.dtype == torch.bool):
        raise TypeError(f"idx must be a tensor of token ids (integers) or a list of id sequences, not {idx!r}.")
    if idx.dtype not in (torch.int64, torch.int32):
        idx = idx.long()  # ids stored in a narrower integer type (uint8, int16) are read as int64
    if idx.dim() == 1:
        idx = idx[None]
    if idx.dim() != 2 or idx.size(0) == 0 or idx.size(1) == 0:
        raise ValueError(f"the prompt is empty or not (B, T): shape {tuple(idx.shape)}; give at least one token.")
    if vocab_size is not None:
        check_token_ids(idx, vocab_size)
    if attention_mask is not None:
        attention_mask = torch.as_tensor(attention_mask, device=idx.device).long()
        if attention_mask.shape != idx.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, idx {tuple(idx.shape)}.")
        if not ((attention_mask == 0) | (attention_mask == 1)).all() or (attention_mask.diff(dim=1) < 0).any():
            raise ValueError("attention_mask must be 0 on left padding and 1 on every token after it.")
        if (attention_mask[:, -1] == 0).any():
            raise ValueError("a prompt is all padding: give at least one token to condition on.")
        if bool(attention_mask.all()):
            attention_mask = None
    return idx, attention_mask


def _one_by_one(model, idx, mask, config, generator, tokenizer) -> Generated:
    """Prompts of different lengths for a model without an attention mask: each on its own, then padded."""
    pad = config.pad_id if config.pad_id is not None else 0
    outs = [_decode(model, p[m.bool()][None], None, config, generator, tokenizer) for p, m in zip(idx, mask)]
    T, L = idx.size(1), max(o.sequences.size(1) - o.prompt_length for o in outs)
    rows = [torch.cat([p[: T - o.prompt_length].expand(len(o.sequences), -1), o.sequences,
                       o.sequences.new_full((len(o.sequences), L + o.prompt_length - o.sequences.size(1)), pad)], 1)
            for p, o in zip(idx, outs)]
    scores = [o.scores for o in outs]
    return Generated(torch.cat(rows), None if scores[0] is None else torch.cat(scores), T)


def _decode(model, idx, mask, config, generator, tokenizer) -> Generated:
    if mask is not None and not model.reads_padding:
        return _one_by_one(model, idx, mask, config, generator, tokenizer)
    if config.num_beams > 1:
        if config.stop_strings:
            raise ValueError("stop_strings are not offered with beam search: use eos_token_id.")
        sequences, scores = beam_search(model, idx, config, mask)
        return Generated(sequences, scores, idx.size(1))
    R = config.num_return_sequences
    if R > 1:  # each prompt R times in a row, as transformers repeats them
        idx, mask = idx.repeat_interleave(R, 0), None if mask is None else mask.repeat_interleave(R, 0)
    sequences = idx
    for sequences, _, _ in _steps(model, idx, config, generator, mask, tokenizer):
        pass
    return Generated(sequences, None, idx.size(1))


def _setup(model, idx, config, settings, seed, generator, attention_mask):
    check_model(model)
    unknown = set(settings) - SETTINGS
    if unknown:
        raise TypeError(f"unknown generation settings {sorted(unknown)}; the settings are {sorted(SETTINGS)}.")
    if "stop_strings" in settings and isinstance(settings["stop_strings"], list):
        settings["stop_strings"] = tuple(settings["stop_strings"])
    if isinstance(settings.get("eos_token_id"), list):
        settings["eos_token_id"] = tuple(settings["eos_token_id"])
    config = replace(config, **settings) if config is not None else GenerationConfig(**settings)
    check_seed(seed, allow_none=True)
    if seed is not None:
        if generator is not None:
            raise ValueError("give seed or generator, not both.")
        generator = torch.Generator().manual_seed(seed)
    vocab_size = model.vocab_size
    for i in config.eos_ids + (() if config.pad_token_id is None else (config.pad_token_id,)):
        if i >= vocab_size:
            raise ValueError(f"the end/pad id {i} is outside the model's vocabulary 0..{vocab_size - 1}.")
    idx, mask = _prompts(idx, attention_mask, vocab_size, config.pad_id if config.pad_id is not None else 0)
    context = context_length(model)
    if context is not None and idx.size(1) > context:
        raise ValueError(f"the prompt has {idx.size(1)} tokens but the model's context is {context}: "
                         f"shorten it, e.g. keep the last {context} tokens with idx[:, -{context}:].")
    return config, generator, idx.to(device_of(model)), mask


def generate(model: nn.Module, idx, max_new_tokens: int | None = None, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None, use_cache: bool = True, *,
             config: GenerationConfig | None = None, attention_mask: torch.Tensor | None = None,
             seed: int | None = None, tokenizer=None, return_dict: bool = False, **settings):
    """Extend the prompts ``idx`` (B, T), (T,) or a list of id sequences; returns (B * R, T + new tokens).

    The settings are :class:`~lmbook.decoding.shared.GenerationConfig`'s (``config`` and keywords; keywords
    win). As in chapters 2 to 4, ``temperature=0`` is greedy decoding, any other temperature samples
    (unless ``do_sample=False`` or ``num_beams > 1``), with ``generator`` or ``seed`` for reproducible
    draws. ``return_dict=True`` gives a :class:`Generated` with beam search's scores.
    """
    legacy = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "use_cache": use_cache}
    defaults = {"max_new_tokens": None, "temperature": 1.0, "top_k": None, "use_cache": True}
    settings = {**{k: v for k, v in legacy.items() if config is None or v != defaults[k]}, **settings}
    config, generator, idx, mask = _setup(model, idx, config, settings, seed, generator, attention_mask)
    rows = idx.size(0) * max(config.num_beams, config.num_return_sequences)  # sequences decoded side by side
    with evaluating(model), weights_in_out(model, rows), torch.inference_mode():
        out = _decode(model, idx, None if mask is None else mask.to(idx.device), config, generator, tokenizer)
    out = Generated(out.sequences.clone(), None if out.scores is None else out.scores.clone(), out.prompt_length)
    return out if return_dict else out.sequences


@dataclass(frozen=True)
class StreamedToken:
    """One token as :func:`stream` yields it: its id, the probability it was chosen with, and its text."""

    id: int
    probability: float
    text: str | None


def stream(model: nn.Module, idx, tokenizer=None, *, seed: int | None = None,
           generator: torch.Generator | None = None, **settings) -> Iterator[StreamedToken]:
    """Yield the continuation of one prompt token by token (the playground of chapter 5 shows them as they come).

    Greedy or sampled (beam search cannot know its tokens before it ends). ``probability`` is the
    chosen token's share of the distribution it was picked from (after temperature and filters).
    """
    config, generator, idx, _ = _setup(model, idx, None, settings, seed, generator, None)
    if idx.size(0) != 1 or config.num_beams > 1 or config.num_return_sequences > 1:
        raise ValueError("stream decodes one prompt into one sequence: give one prompt, num_beams=1 and "
                         "num_return_sequences=1.")
    steps = _steps(model, idx, config, generator, None, tokenizer)
    with evaluating(model), weights_in_out(model):  # until the last token, or until the caller stops asking
        while True:
            with torch.inference_mode():  # entered at each step, so that the caller's code runs outside it
                step = next(steps, None)
                if step is None:
                    return
                _, token, scores = step
                t = int(token[0])
                p = float(torch.softmax(scores[0], dim=-1)[t])
            yield StreamedToken(t, p, None if tokenizer is None else tokenizer.decode([t]))


def complete(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 1.0,
             top_k: int | None = None, seed: int | None = None, **settings) -> str:
    """Continue the text ``prompt`` with ``model`` and return prompt plus continuation (the best one for beams)."""
    ids = torch.tensor(tokenizer.encode(prompt), dtype=torch.long)
    out = generate(model, ids, max_new_tokens, temperature, top_k, seed=seed, tokenizer=tokenizer, **settings)
    return tokenizer.decode(out[0].tolist())


def tokens_per_second(model: nn.Module, prompt: torch.Tensor, max_new_tokens: int, repeats: int = 2,
                      **settings) -> float:
    """New tokens a second over the whole batch: ``prompt`` (B, T) extended by ``max_new_tokens`` greedy tokens
    (unless ``settings`` say otherwise), the best of ``repeats`` timed runs after one short warm-up (chapters 5
    and 8 time decoding with it)."""
    check_int("repeats", repeats, minimum=1)
    settings = {"temperature": 0, **settings}
    generate(model, prompt, min(2, max_new_tokens), **settings)  # warm-up: first-call allocations
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        generate(model, prompt, max_new_tokens, **settings)
        if prompt.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return prompt.size(0) * max_new_tokens / best
