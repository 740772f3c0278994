"""Speculative greedy decoding (chapter 5): a cheap guesser proposes, the model checks many tokens at once.

Decoding one sequence reads every weight of the model for one token. A *draft* (anything that
guesses the next few tokens cheaply) proposes ``k`` tokens; the model reads its last token and
the ``k`` proposals in one forward pass, which costs about one step when the weights dominate,
and gives its own greedy choice after each. The proposals are kept up to the first one the model
would not have chosen, then the model's own token is added: every pass yields at least one
token, up to ``k + 1``, and the text is the model's greedy text, whatever the draft proposes
(Leviathan et al., 2023, and Chen et al., 2023, for sampling; this is the greedy case). The
key/value cache is rolled back over the rejected proposals by resetting its position.

Two drafts: :func:`lookup_draft` copies what followed the first earlier occurrence of the text's
final n-gram (``transformers``' ``prompt_lookup_num_tokens``), and :func:`ngram_draft` asks a
count-based model of chapter 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from .gpt import KVCache
from .interface import evaluating

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
    if max_ngram < 1:
        raise ValueError(f"max_ngram must be >= 1, not {max_ngram}")

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


def _check(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, k: int) -> None:
    if k < 1:
        raise ValueError(f"k (tokens proposed a pass) must be >= 1, not {k}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, not {max_new_tokens}")
    if idx.dim() != 2 or idx.size(0) != 1 or idx.size(1) == 0:
        raise ValueError(f"speculative decoding continues one non-empty prompt (1, T), not {tuple(idx.shape)}")
    if not isinstance(getattr(model, "make_cache", lambda: None)(), KVCache):
        raise TypeError(f"{type(model).__name__} has no key/value cache with a position to roll back (a GPT has): "
                        "a recurrent state cannot forget the rejected proposals")
    context = getattr(model, "context_length", None)
    need = idx.size(1) + max_new_tokens + k
    if context is not None and need > context:
        raise ValueError(f"the prompt ({idx.size(1)}), max_new_tokens ({max_new_tokens}) and k ({k}) need {need} "
                         f"positions, more than the model's context of {context}: shorten one of them.")


@torch.inference_mode()
def speculative_greedy(model: nn.Module, idx, draft: Draft, max_new_tokens: int, k: int = 4,
                       eos_token_id: int | None = None) -> Speculated:
    """The model's greedy continuation of ``idx`` ((T,) or (1, T)), checked ``k`` draft tokens a pass.

    The ids equal ``generate(model, idx, max_new_tokens, do_sample=False)`` up to the rounding of
    near-ties: a pass reads ``k + 1`` positions where plain decoding reads one, and the two sums
    may differ in the last bit. The whole text must fit in the model's context.
    """
    idx = torch.as_tensor(idx, dtype=torch.long)
    idx = idx[None] if idx.dim() == 1 else idx
    _check(model, idx, max_new_tokens, k)
    device = next(model.parameters()).device  # the model checks the prompt's ids itself
    with evaluating(model):
        cache = model.make_cache()
        logits = model(idx.to(device), cache=cache)[0]  # (1, T, V)
        out = [int(logits[0, -1].argmax())]  # fed to the model at the next pass
        ids, passes, proposed, accepted = idx[0].tolist(), 0, 0, 0
        while len(out) < max_new_tokens and out[-1] != eos_token_id:
            guess = [int(t) for t in draft(ids + out, min(k, max_new_tokens - len(out)))][:k]
            if any(not 0 <= t < model.config.vocab_size for t in guess):
                raise ValueError(f"the draft proposed ids outside the vocabulary of {model.config.vocab_size}: {guess}")
            feed = torch.tensor([out[-1:] + guess], device=device)  # (1, 1 + g)
            choice = model(feed, cache=cache)[0][0].argmax(-1).tolist()  # the model's token after each
            n = 0
            while n < len(guess) and guess[n] == choice[n]:
                n += 1
            cache.pos -= len(guess) - n  # forget the rejected proposals' keys and values
            out += guess[:n] + [choice[n]]
            passes, proposed, accepted = passes + 1, proposed + len(guess), accepted + n
            if eos_token_id in out:
                out = out[: out.index(eos_token_id) + 1]
    out = out[:max_new_tokens]
    return Speculated(torch.tensor([ids + out]), passes, proposed, accepted)
