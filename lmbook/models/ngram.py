"""Count-based n-gram language models: the first language model of the book (chapter 1).

An n-gram model predicts each token from the ``n - 1`` tokens before it with probabilities
made from counts. Tokens are any hashable values: characters, words, BPE ids.

Padding: ``x1 … xT`` is modelled as ``<s> … <s> x1 … xT </s>``: ``n - 1`` begin tokens
``BOS`` (only ever context) and one end token ``EOS`` (predicted once, at the end). Each
conditional distribution sums to 1 over the vocabulary: the training tokens, ``EOS``, and
``UNK`` when the model maps rare and unseen tokens to it. Two smoothings:

* ``"add-k"``: ``P(w | h) = (c(h w) + k) / (c(h) + k V)``; ``k = 0`` is the unsmoothed
  maximum-likelihood estimate, zero for every n-gram not seen in training.
* ``"interpolation"`` (Jelinek–Mercer): ``P_j(w | h) = λ_j P_ML(w | last j tokens of h) +
  (1 - λ_j) P_{j-1}(w | h)`` for ``j = 0 … n-1``, from the uniform ``P_{-1} = 1 / V``,
  skipping orders whose context was never seen; the ``λ_j`` are tuned by
  expectation–maximisation on the last ``dev_fraction`` of the training tokens.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from typing import Hashable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..interface import check_targets, check_token_ids, next_token_loss
from ..evaluation.metrics import perplexity

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
SMOOTHINGS = ("add-k", "interpolation")

def join_words(tokens: Iterable[str]) -> str:
    """Words back into readable text: a space between words, none before punctuation or around newlines."""
    out = ""
    for t in tokens:
        tight = not out or out[-1] in "\n'" or t == "\n" or not (t[0].isalnum() or t == UNK)
        out += t if tight else " " + t
    return out


@dataclass(frozen=True)
class NGramConfig:
    """What an :class:`NGramLM` is: its order, smoothing and treatment of rare tokens."""

    n: int = 3  # predict from the n - 1 previous tokens
    smoothing: str = "interpolation"  # "add-k" or "interpolation"
    k: float = 1.0  # add-k's pseudo-count; 0 gives the unsmoothed maximum-likelihood model
    unk: bool = False  # map rare and unseen tokens to UNK (otherwise unseen tokens are an error)
    min_count: int = 1  # with unk: training tokens seen fewer times than this become UNK
    dev_fraction: float = 0.1  # interpolation: the share of training tokens the weights are tuned on
    weights: tuple[float, ...] | None = None  # interpolation: fixed λ_0 … λ_{n-1} instead of tuning

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an integer >= 1, not {self.n!r}.")
        if self.smoothing not in SMOOTHINGS:
            raise ValueError(f"smoothing must be one of {SMOOTHINGS}, not {self.smoothing!r}.")
        if not self.k >= 0:
            raise ValueError(f"k must be >= 0 (0: no smoothing), not {self.k}.")
        if self.min_count < 1 or (self.min_count > 1 and not self.unk):
            raise ValueError(f"min_count={self.min_count}: it must be >= 1, and above 1 only with unk=True.")
        if not 0 < self.dev_fraction < 1:
            raise ValueError(f"dev_fraction must lie strictly between 0 and 1, not {self.dev_fraction}.")
        if self.weights is not None and (len(self.weights) != self.n or not all(0 <= w <= 1 for w in self.weights)):
            raise ValueError(f"weights must be n={self.n} numbers in [0, 1], not {self.weights}.")

    def replace(self, **changes) -> NGramConfig:
        return replace(self, **changes)


def count_ngrams(tokens: Sequence[Hashable], n: int) -> list[dict[tuple, dict[Hashable, int]]]:
    """``counts[j][h][w]``: how often ``w`` followed the ``j`` tokens ``h`` in the padded ``tokens``, j < n."""
    padded = [BOS] * (n - 1) + list(tokens) + [EOS]
    positions = len(padded) - (n - 1)  # one per predicted token
    grams = Counter(zip(*(padded[i : i + positions] for i in range(n))))  # the n-grams, by C loops
    counts = []
    for j in range(n - 1, -1, -1):
        nested: defaultdict[tuple, dict] = defaultdict(dict)
        for gram, c in grams.items():
            nested[gram[:-1]][gram[-1]] = c
        counts.append(dict(nested))
        lower: Counter[tuple] = Counter()  # drop the first context token: the (j)-grams
        for gram, c in grams.items():
            lower[gram[1:]] += c
        grams = lower
    return counts[::-1]


class NGramLM:
    """An n-gram language model; make one with :meth:`NGramLM.fit`."""

    def __init__(self, config: NGramConfig, counts: list[dict], vocab: list[Hashable], weights=None) -> None:
        self.config, self.n, self.counts, self.vocab = config, config.n, counts, vocab
        self.totals = [{h: sum(f.values()) for h, f in c.items()} for c in counts]  # c(h), cached
        self.index = {t: i for i, t in enumerate(vocab)}
        self.weights = tuple(weights) if weights is not None else None  # λ_0 … λ_{n-1}

    @classmethod
    def fit(cls, tokens: Sequence[Hashable], config: NGramConfig | None = None, vocab=None, **changes) -> NGramLM:
        """Count ``tokens`` (and tune interpolation weights); ``changes`` override ``config``'s fields.

        ``vocab`` lists every token the model may meet (``range(512)`` for BPE ids, say);
        by default it is the training tokens, less those rarer than ``min_count``.
        """
        config = (config or NGramConfig()).replace(**changes)
        tokens = list(tokens)
        if not tokens:
            raise ValueError("the training sequence is empty: there is nothing to count.")
        freq = Counter(tokens)
        if any(t in freq for t in (BOS, EOS, UNK)):
            raise ValueError(f"the tokens {BOS!r}, {EOS!r} and {UNK!r} are reserved; the training data holds one.")
        weights = config.weights
        if config.smoothing == "interpolation" and weights is None:
            cut = round(len(tokens) * (1 - config.dev_fraction))
            if not 0 < cut < len(tokens):
                raise ValueError(f"{len(tokens)} tokens are too few to hold out {config.dev_fraction:.0%} for tuning.")
            # The held-out part plays the test data: with UNK, its words unseen before the cut become UNK.
            part_vocab = vocab if vocab is not None or config.unk else list(freq)
            part = cls.fit(tokens[:cut], config.replace(weights=(0.5,) * config.n), vocab=part_vocab)
            weights = part.tune_weights(tokens[cut:])
        known = list(vocab) if vocab is not None else [t for t in freq if freq[t] >= config.min_count]
        model = cls(config, [], known + [EOS] + ([UNK] if config.unk else []))
        return cls(config, count_ngrams(model.known(tokens), config.n), model.vocab, weights)

    def known(self, tokens: Iterable[Hashable]) -> list[Hashable]:
        """``tokens`` with those outside the vocabulary replaced by UNK (an error if the model has no UNK)."""
        out = list(tokens)
        unknown = {t for t in out if t not in self.index and t != BOS}
        if unknown and not self.config.unk:
            shown = ", ".join(repr(t) for t in list(unknown)[:5])
            raise ValueError(f"{len(unknown)} token(s) never seen in training, e.g. {shown}; "
                             f"fit with unk=True to map them to {UNK!r}.")
        return [UNK if t in unknown else t for t in out]

    def _context(self, context: Sequence[Hashable]) -> tuple:
        """The last n - 1 tokens of ``context``, BOS-padded on the left."""
        context = list(context)
        h = tuple(self.known(context[max(0, len(context) - self.n + 1) :])) if self.n > 1 else ()
        return (BOS,) * (self.n - 1 - len(h)) + h

    def prob(self, token: Hashable, context: Sequence[Hashable] = ()) -> float:
        """``P(token | context)``; a short ``context`` is the start of a sequence."""
        (token,) = self.known([token])
        return self._prob(token, self._context(context))

    def _prob(self, w: Hashable, h: tuple) -> float:
        """``P(w | h)`` for a token of the vocabulary and a context of exactly n - 1 tokens."""
        if self.config.smoothing == "add-k":
            k, c_h = self.config.k, self.totals[-1].get(h, 0)
            c_hw = self.counts[-1][h].get(w, 0) if c_h else 0
            return (c_hw + k) / (c_h + k * len(self.vocab)) if c_h or k else 0.0
        p = 1 / len(self.vocab)
        for j, lam in enumerate(self.weights):  # context lengths 0 … n-1
            hj = h[len(h) - j :]
            c_h = self.totals[j].get(hj)
            if not c_h:  # never seen, and neither is any longer context
                break
            p = lam * self.counts[j][hj].get(w, 0) / c_h + (1 - lam) * p
        return p

    def mixture(self, context: Sequence[Hashable] = ()) -> list[float]:
        """Interpolation: the weight of the uniform distribution, then of each order's estimate (sum 1)."""
        if self.weights is None:
            raise ValueError("mixture weights exist only for smoothing='interpolation'.")
        h, mix = self._context(context), [1.0]
        for j, lam in enumerate(self.weights):
            if not self.totals[j].get(h[len(h) - j :]):
                break
            mix = [m * (1 - lam) for m in mix] + [lam]
        return mix + [0.0] * (self.n + 1 - len(mix))

    def _followers(self, h: tuple) -> np.ndarray:
        """``c(h w)`` for every ``w`` of the vocabulary (zeros for an unseen context)."""
        v, follow = np.zeros(len(self.vocab)), self.counts[len(h)].get(h, {})
        v[[self.index[t] for t in follow]] = list(follow.values())
        return v

    def distribution(self, context: Sequence[Hashable] = ()) -> np.ndarray:
        """``P(· | context)`` over ``self.vocab``, as one array (all zeros for k = 0 and an unseen context)."""
        h = self._context(context)
        if self.config.smoothing == "add-k":
            v = self._followers(h) + self.config.k
            return v / v.sum() if v.sum() else v
        mix = self.mixture(h)
        p = np.full(len(self.vocab), mix[0] / len(self.vocab))
        for j, m in enumerate(mix[1:]):
            if m:
                p += m * self._followers(h[len(h) - j :]) / self.totals[j][h[len(h) - j :]]
        return p

    def with_smoothing(self, smoothing: str, k: float = 1.0) -> NGramLM:
        """The same counts, smoothed another way (interpolation needs weights tuned by ``fit``)."""
        if smoothing == "interpolation" and self.weights is None:
            raise ValueError("this model has no tuned weights: fit it with smoothing='interpolation'.")
        return NGramLM(self.config.replace(smoothing=smoothing, k=k), self.counts, self.vocab, self.weights)

    def _positions(self, tokens: Sequence[Hashable]):
        """``(w, h)`` for each token of ``tokens`` and the final EOS."""
        padded = [BOS] * (self.n - 1) + self.known(tokens) + [EOS]
        for i in range(self.n - 1, len(padded)):
            yield padded[i], tuple(padded[i - self.n + 1 : i])

    def log_probs(self, tokens: Sequence[Hashable]) -> list[float]:
        """``ln P(x_i | x_<i)`` for each token and the final EOS (``-inf`` where the probability is 0)."""
        return [math.log(p) if p > 0 else -math.inf for p in (self._prob(w, h) for w, h in self._positions(tokens))]

    def nll(self, tokens: Sequence[Hashable]) -> float:
        """The negative log-likelihood of ``tokens``, EOS included, in nats."""
        return -math.fsum(self.log_probs(tokens))

    def perplexity(self, tokens: Sequence[Hashable]) -> float:
        """``exp(NLL / N)`` with N = len(tokens) + 1 predictions (the EOS too)."""
        return perplexity(self.nll(tokens) / (len(tokens) + 1))

    def unseen_fraction(self, tokens: Sequence[Hashable]) -> list[float]:
        """For m = 1 … n: the share of positions in ``tokens`` whose m-gram never occurred in training."""
        positions = list(self._positions(tokens))
        unseen = [sum(self.count(h[len(h) - j :], w) == 0 for w, h in positions) for j in range(self.n)]
        return [u / len(positions) for u in unseen]

    def tune_weights(self, tokens: Sequence[Hashable], steps: int = 100, tol: float = 1e-4) -> list[float]:
        """λ_0 … λ_{n-1} that maximise the likelihood of ``tokens``, by expectation–maximisation.

        Each held-out token came from one of the orders whose context was seen, or
        from the uniform distribution; λ_j is the expected share, among the tokens
        that reached order j, of those that stopped there.
        """
        rows = []  # per token: P_ML(w | h_j) for each order j whose context was seen, NaN beyond
        for w, h in self._positions(tokens):
            row = [math.nan] * self.n
            for j in range(self.n):
                c_h = self.totals[j].get(h[len(h) - j :])
                if not c_h:
                    break
                row[j] = self.counts[j][h[len(h) - j :]].get(w, 0) / c_h
            rows.append(row)
        ml = np.array(rows).T  # (n, T)
        seen = ~np.isnan(ml)
        ml[~seen] = 0.0
        lam = np.full(self.n, 0.5)
        for _ in range(steps):
            share, above = np.empty_like(ml), np.ones(len(rows))  # above: P(passing every order above j)
            for j in reversed(range(self.n)):
                lam_j = np.where(seen[j], lam[j], 0.0)  # an unseen context is passed by
                share[j] = lam_j * above * ml[j]
                above = above * (1 - lam_j)
            uniform = above / len(self.vocab)
            total = share.sum(0) + uniform
            r = share / total  # (n, T) responsibilities: P(token came from order j)
            reached = ((uniform / total + np.cumsum(r, axis=0)) * seen).sum(1)  # (n,) tokens at order j or below
            new = np.clip(np.divide(r.sum(1), reached, out=lam.copy(), where=reached > 0), 1e-6, 1 - 1e-6)
            lam, change = new, np.abs(new - lam).max()
            if change < tol:
                break
        return lam.tolist()

    def sample(self, length: int, seed: int = 0, prompt: Sequence[Hashable] = ()) -> list[Hashable]:
        """Up to ``length`` tokens drawn one at a time after ``prompt``; stops early at EOS."""
        rng, history, out = random.Random(seed), list(prompt), []
        for _ in range(length):
            cumulative = np.cumsum(self.distribution(history))
            if cumulative[-1] <= 0:
                raise ValueError(f"the context {history[1 - self.n :]} was never seen and k = 0: nothing to sample.")
            token = rng.choices(self.vocab, cum_weights=cumulative)[0]
            if token == EOS:
                break
            out.append(token)
            history.append(token)
        return out

    def count(self, context: Sequence[Hashable], token: Hashable | None = None) -> int:
        """How often ``context`` was followed by ``token`` in training (by anything, with no ``token``)."""
        h = tuple(context)
        if token is None:
            return self.totals[len(h)].get(h, 0)
        return self.counts[len(h)].get(h, {}).get(token, 0)


class NGramCache:
    """What an :class:`NGramModel` keeps between calls: the ids read so far (B, pos), all of them, so that
    it can forget its last positions (speculative decoding) as a key/value cache can."""

    can_rollback = True

    def __init__(self) -> None:
        self.ids: torch.Tensor | None = None  # (B, pos)

    @property
    def pos(self) -> int:
        return 0 if self.ids is None else self.ids.size(1)

    def reset(self) -> None:
        self.ids = None

    def reorder(self, rows: torch.Tensor) -> None:
        if self.ids is not None:
            self.ids = self.ids[rows]

    def rollback(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= self.pos:
            raise ValueError(f"can roll back 0 to {self.pos} positions (those read), not {n!r}.")
        self.ids = self.ids[:, : self.pos - n]


class NGramModel(nn.Module):
    """An :class:`NGramLM` over a tokenizer's pieces, behind the interface of the book's neural models
    (:class:`lmbook.interface.LanguageModel`): ids (B, T) give next-token logits (B, T, vocab).

    The logit of an id is the log-probability of its piece given the ``n - 1`` pieces before it (a row's
    start is the start of a text: begin tokens fill the context). The model's end token and ``UNK`` have no
    id, so the logits of the ids sum to at most 1 in probability; the loss, a cross-entropy, renormalises
    them. A piece the n-gram model never saw gets ``-inf``. It has no context limit and no parameters:
    :func:`lmbook.decoding.generate.generate` decodes it, and its cache can roll back.
    """

    reads_padding = False
    context_length = None

    def __init__(self, lm: NGramLM, tokenizer) -> None:
        super().__init__()
        self.lm, self.tokenizer = lm, tokenizer
        self.pieces = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
        self.columns = [lm.index.get(p, -1) for p in self.pieces]  # where each id's piece is in lm.vocab

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def make_cache(self, batch_size: int | None = None) -> NGramCache:
        return NGramCache()

    def _logits(self, pieces: list) -> torch.Tensor:
        """Log-probabilities (vocab,) of every id after the pieces ``pieces``."""
        p = np.append(self.lm.distribution(pieces), 0.0)[self.columns]  # column -1: the appended 0
        with np.errstate(divide="ignore"):
            return torch.from_numpy(np.log(p)).float()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: NGramCache | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        check_token_ids(idx, self.vocab_size)
        check_targets(targets, idx, self.vocab_size)
        seen = idx if cache is None or cache.ids is None else torch.cat([cache.ids, idx], dim=1)  # (B, pos + T)
        start, keep = seen.size(1) - idx.size(1), max(self.lm.n - 1, 0)
        rows = [[self.pieces[i] for i in row] for row in seen.tolist()]
        logits = torch.stack([torch.stack([self._logits(row[max(0, t + 1 - keep) : t + 1] if keep else [])
                                           for t in range(start, len(row))]) for row in rows])  # (B, T, vocab)
        if cache is not None:
            cache.ids = seen
        loss = next_token_loss(logits, targets)
        return logits.to(idx.device), loss
