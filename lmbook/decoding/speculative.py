"""Speculative decoding (chapter 5): a cheap guesser proposes, the model checks many tokens at once.

Decoding one sequence reads every weight of the model for one token. A *draft* (anything that
guesses the next few tokens cheaply) proposes ``k`` tokens; the model reads its last token and
the ``k`` proposals in one forward pass, which costs about one step when the weights dominate,
and gives its own greedy choice after each. The proposals are kept up to the first one the model
would not have chosen, then the model's own token is added: every pass yields at least one
token, up to ``k + 1``, and the text is the model's greedy text, whatever the draft proposes
(Leviathan et al., 2023, and Chen et al., 2023, for sampling; this is the greedy case). The
key/value cache is rolled back over the rejected proposals (:meth:`lmbook.interface.Cache.rollback`).

:func:`speculative_sampling` is the sampling case (Leviathan et al., 2023; Chen et al., 2023): a draft
*model* proposes ``k`` tokens drawn from its distributions ``q``; the model keeps proposal ``x`` with
probability ``min(1, p(x) / q(x))`` and, at the first rejection, draws from the residual
``max(0, p - q)`` normalised instead; when every proposal is kept it draws one more token from ``p``.
Each token is then distributed exactly as the model's own sampling would draw it, whatever the draft
(:func:`rule_draws` draws one position many times at once by the same rule).

Two drafts for the greedy case: :func:`lookup_draft` copies what followed the first earlier occurrence of
the text's final n-gram (``transformers``' ``prompt_lookup_num_tokens``), and :func:`ngram_draft` asks a
count-based model of chapter 1.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from .shared import GenerationConfig, process_scores
from ..interface import check_int, check_model, check_seed, device_of, evaluating

Draft = Callable[[Sequence[int], int], list[int]]  # (the text so far, how many) -> proposed ids


@dataclass
class Speculated:
    """The output of :func:`speculative_greedy` and what the checking cost."""

    ids: torch.Tensor  # (1, T + new tokens): prompt and continuation
    passes: int  # forward passes of the model after the prompt's
    proposed: int  # tokens the draft proposed
    accepted: int  # proposals the model kept

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


def lookup_draft(max_ngram: int = 3) -> Draft:
    """Propose what followed the first occurrence of the text's last n-gram (longest n first), as
    ``transformers``' prompt lookup does: nothing when the n-gram has not occurred before."""
    check_int("max_ngram", max_ngram, 1)

    def propose(ids: Sequence[int], k: int) -> list[int]:
        ids = list(ids)
        for n in range(min(max_ngram, len(ids) - 1), 0, -1):
            tail = ids[-n:]
            for start in range(len(ids) - n):  # the earliest match first: it has the most text after it
                if ids[start : start + n] == tail:
                    return ids[start + n : start + n + k]
        return []

    return propose


def ngram_draft(lm, tokenizer) -> Draft:
    """Propose the ``k`` likeliest tokens one after another under a count-based model (chapter 1's ``NGramLM``).

    ``lm`` is trained on the tokenizer's pieces (characters for a character tokenizer).
    """
    vocab = list(lm.vocab)
    to_piece = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
    to_id = {p: i for i, p in enumerate(to_piece)}

    def propose(ids: Sequence[int], k: int) -> list[int]:
        context = [to_piece[i] for i in ids[-(lm.n - 1):]] if lm.n > 1 else []  # the last n - 1 pieces
        out = []
        for _ in range(k):
            piece = vocab[int(lm.distribution(context).argmax())]
            if piece not in to_id:  # the model's unknown-token or start marker: no guess
                break
            out.append(to_id[piece])
            context.append(piece)
        return out

    return propose


def _check(model: nn.Module, idx, max_new_tokens: int, k: int, eos_token_id: int | None) -> torch.Tensor:
    """The prompt as (1, T) ids, after every argument is checked (types as well as ranges)."""
    check_model(model)
    check_int("k (tokens proposed a pass)", k, 1)
    check_int("max_new_tokens", max_new_tokens, 1)
    check_int("eos_token_id", eos_token_id, 0, allow_none=True)
    if isinstance(idx, torch.Tensor) and (idx.dtype.is_floating_point or idx.dtype.is_complex
                                          or idx.dtype == torch.bool):
        raise TypeError(f"the prompt must hold integer token ids, not {idx.dtype} values.")
    if not isinstance(idx, torch.Tensor) and not (isinstance(idx, (list, tuple)) and all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in idx)):
        raise TypeError(f"the prompt must be a tensor or a list of integer token ids, not {idx!r:.80}.")
    idx = torch.as_tensor(idx, dtype=torch.long)
    idx = idx[None] if idx.dim() == 1 else idx
    if idx.dim() != 2 or idx.size(0) != 1 or idx.size(1) == 0:
        raise ValueError(f"speculative decoding continues one non-empty prompt (1, T), not {tuple(idx.shape)}")
    if not model.make_cache().can_rollback:
        raise TypeError(f"{type(model).__name__}'s cache cannot roll back (a GPT's key/value cache can): "
                        "a recurrent state cannot forget the rejected proposals")
    context, need = model.context_length, idx.size(1) + max_new_tokens
    if context is not None and need > context:  # a pass never reads past the last token it may keep
        raise ValueError(f"the prompt ({idx.size(1)}) and max_new_tokens ({max_new_tokens}) need {need} "
                         f"positions, more than the model's context of {context}: shorten one of them.")
    return idx


@torch.inference_mode()
def speculative_greedy(model: nn.Module, idx, draft: Draft, max_new_tokens: int, k: int = 4,
                       eos_token_id: int | None = None) -> Speculated:
    """The model's greedy continuation of ``idx`` ((T,) or (1, T)), checked ``k`` draft tokens a pass.

    The ids equal ``generate(model, idx, max_new_tokens, do_sample=False)`` up to the rounding of
    near-ties: a pass reads ``k + 1`` positions where plain decoding reads one, and the two sums
    may differ in the last bit. The whole text must fit in the model's context.
    """
    idx = _check(model, idx, max_new_tokens, k, eos_token_id)
    device = device_of(model)  # the model checks the prompt's ids itself
    with evaluating(model):
        cache = model.make_cache()
        logits = model(idx.to(device), cache=cache)[0]  # (1, T, V)
        out = [int(logits[0, -1].argmax())]  # fed to the model at the next pass
        ids, passes, proposed, accepted = idx[0].tolist(), 0, 0, 0
        while len(out) < max_new_tokens and out[-1] != eos_token_id:
            guess = [int(t) for t in draft(ids + out, min(k, max_new_tokens - len(out)))][:k]
            if any(not 0 <= t < model.vocab_size for t in guess):
                raise ValueError(f"the draft proposed ids outside the vocabulary of {model.vocab_size}: {guess}")
            feed = torch.tensor([out[-1:] + guess], device=device)  # (1, 1 + g)
            choice = model(feed, cache=cache)[0][0].argmax(-1).tolist()  # the model's token after each
            n = 0
            while n < len(guess) and guess[n] == choice[n]:
                n += 1
            cache.rollback(len(guess) - n)  # forget the rejected proposals' keys and values
            out += guess[:n] + [choice[n]]
            passes, proposed, accepted = passes + 1, proposed + len(guess), accepted + n
            if eos_token_id in out:
                out = out[: out.index(eos_token_id) + 1]
    out = out[:max_new_tokens]
    return Speculated(torch.tensor([ids + out]), passes, proposed, accepted)


# --- Speculative sampling --------------------------------------------------------------
FILTERS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff",
           "repetition_penalty", "no_repeat_ngram_size")


def accept_probability(p: float, q: float) -> float:
    """The chance of keeping a proposal that the model gives probability ``p`` and the draft ``q`` (> 0)."""
    return min(1.0, p / q)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """What to draw from after a rejection: ``max(0, p - q)`` normalised (V,); ``p`` itself where ``p <= q``
    everywhere (then no proposal is ever rejected, up to rounding)."""
    r = (p - q).clamp(min=0)
    total = r.sum()
    return r / total if total > 0 else p


def rule_draws(p: torch.Tensor, q: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` tokens (n,) drawn as speculative sampling draws one position, all at once: a proposal from the draft's
    ``q`` (V,), kept with probability ``min(1, p / q)``, else a token from :func:`residual`. Distributed as ``p``."""
    check_int("n", n, 1)
    if p.dim() != 1 or p.shape != q.shape:
        raise ValueError(f"p and q must be two distributions (V,) of the same size, not {tuple(p.shape)} and "
                         f"{tuple(q.shape)}.")
    proposals = torch.multinomial(q, n, replacement=True, generator=generator)  # (n,)
    keep = torch.rand(n, generator=generator) < (p[proposals] / q[proposals]).clamp(max=1.0)
    corrections = torch.multinomial(residual(p, q), n, replacement=True, generator=generator)
    return torch.where(keep, proposals, corrections)


def _distributions(model, cache, read: int, text: list[int], rows: int, config, device) -> torch.Tensor:
    """The sampling distributions (rows, V) after each of the last ``rows`` prefixes of ``text``, reading the
    tokens ``text[read:]`` that the cache has not read."""
    logits = model(torch.tensor([text[read:]], device=device), cache=cache)[0][0, -rows:].float()  # (rows, V)
    ids = torch.tensor([text], device=device)
    out = [process_scores(logits[i : i + 1], ids[:, : len(text) - rows + 1 + i], config, sampling=True)
           for i in range(rows)]
    return torch.cat(out).softmax(dim=-1).cpu()


def _draw(probs: torch.Tensor, generator: torch.Generator) -> int:
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def speculative_sampling(model: nn.Module, draft: nn.Module, idx, max_new_tokens: int, k: int = 4, *,
                         seed: int | None = None, eos_token_id: int | None = None, **settings) -> Speculated:
    """Sample a continuation of ``idx`` ((T,) or (1, T)) from ``model``, ``k`` tokens of ``draft`` checked a pass.

    ``draft`` is a language model of the same vocabulary (a smaller GPT, chapter 1's count-based model
    behind :class:`lmbook.models.ngram.NGramModel`); both caches must roll back. ``settings`` are the
    sampling filters of :class:`~lmbook.decoding.shared.GenerationConfig` (``temperature``, ``top_k``,
    ``top_p``, ``min_p``, ...), applied to the model and to the draft alike: every token is distributed as
    :func:`~lmbook.decoding.generate.generate` with the same settings would draw it, though not the same
    draws. ``seed`` makes the draws reproducible (a CPU generator of its own).
    """
    idx = _check(model, idx, max_new_tokens, k, eos_token_id)
    check_model(draft)
    check_seed(seed, allow_none=True)
    if draft.vocab_size != model.vocab_size:
        raise ValueError(f"the draft's vocabulary ({draft.vocab_size}) differs from the model's ({model.vocab_size})"
                         ": the draft must propose the model's own token ids.")
    if draft.context_length is not None and idx.size(1) + max_new_tokens > draft.context_length:
        raise ValueError(f"the prompt and max_new_tokens need {idx.size(1) + max_new_tokens} positions, more than "
                         f"the draft's context of {draft.context_length}: shorten one of them.")
    if not draft.make_cache().can_rollback:
        raise TypeError(f"the draft's cache ({type(draft).__name__}) cannot roll back over rejected proposals.")
    unknown = set(settings) - set(FILTERS)
    if unknown:
        raise TypeError(f"speculative sampling takes the sampling settings {FILTERS}, not {sorted(unknown)}.")
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, **settings)
    generator = torch.Generator().manual_seed(seed) if seed is not None else torch.Generator().manual_seed(
        int(torch.randint(0, 2**62, ())))
    device, draft_device = device_of(model), device_of(draft)
    seq, T = idx[0].tolist(), idx.size(1)
    passes = proposed = accepted = 0
    with evaluating(model), evaluating(draft):
        cache, draft_cache = model.make_cache(), draft.make_cache()
        read = draft_read = 0  # tokens of the text each cache holds
        while len(seq) - T < max_new_tokens and (eos_token_id is None or eos_token_id not in seq[T:]):
            g = min(k, max_new_tokens - (len(seq) - T) - 1)  # proposals this pass: the pass adds up to g + 1
            guesses, q = [], []
            for _ in range(g):  # the draft proposes one token after another
                q.append(_distributions(draft, draft_cache, draft_read, seq + guesses, 1, config, draft_device)[0])
                draft_read = len(seq) + len(guesses)
                guesses.append(_draw(q[-1], generator))
            p = _distributions(model, cache, read, seq + guesses, g + 1, config, device)  # (g + 1, V)
            n = 0  # proposals kept: each with probability min(1, p / q), up to the first rejection
            while n < g and float(torch.rand((), generator=generator)) < accept_probability(
                    float(p[n, guesses[n]]), float(q[n][guesses[n]])):
                n += 1
            token = _draw(p[g] if n == g else residual(p[n], q[n]), generator)  # the bonus or the correction
            keep = len(seq) + n  # what the caches may hold: the text and the kept proposals
            cache.rollback(g - n)  # the model's cache held the text and every proposal
            if draft_read > keep:
                draft_cache.rollback(draft_read - keep)
                draft_read = keep
            seq += guesses[:n] + [token]
            read = len(seq) - 1
            passes, proposed, accepted = passes + 1, proposed + g, accepted + n
    new = seq[T:]
    if eos_token_id is not None and eos_token_id in new:
        new = new[: new.index(eos_token_id) + 1]
    return Speculated(torch.tensor([seq[:T] + new[:max_new_tokens]]), passes, proposed, accepted)
