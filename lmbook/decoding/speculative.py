"""Speculative greedy decoding (chapter 5): a cheap guesser proposes, the model checks many tokens at once.

Decoding one sequence reads every weight of the model for one token. A *draft* (anything that
guesses the next few tokens cheaply) proposes ``k`` tokens; the model reads its last token and
the ``k`` proposals in one forward pass, which costs about one step when the weights dominate,
and gives its own greedy choice after each. The proposals are kept up to the first one the model
would not have chosen, then the model's own token is added: every pass yields at least one
token, up to ``k + 1``, and the text is the model's greedy text, whatever the draft proposes
(Leviathan et al., 2023, and Chen et al., 2023, for sampling; this is the greedy case). The
key/value cache is rolled back over the rejected proposals (:meth:`lmbook.interface.Cache.rollback`).

Two drafts: :func:`lookup_draft` copies what followed the first earlier occurrence of the text's
final n-gram (``transformers``' ``prompt_lookup_num_tokens``), and :func:`ngram_draft` asks a
count-based model of chapter 1.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..interface import check_int, check_model, device_of, evaluating

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
