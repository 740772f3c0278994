"""Word embeddings learned three ways, and how to compare them (chapter 7).

An embedding table gives each word of a vocabulary a vector. Three ways to fill one:

* **Word2Vec's skip-gram with negative sampling** (SGNS, Mikolov et al. 2013): a word's vector
  ``v`` and a context word's vector ``u`` should have a large dot product when the context word
  occurs near the word, and a small one for ``K`` words drawn from the unigram distribution raised
  to the power 3/4. For one (word, context) pair and negatives ``u_1 … u_K``:
  ``loss = -log σ(u·v) - Σ_k log σ(-u_k·v)``.
* **The count-based route** that GloVe (Pennington et al. 2014) refines: count which words occur
  near which, turn the counts into positive pointwise mutual information (PPMI) and keep the top
  singular directions of that matrix. Levy and Goldberg (2014) showed SGNS factorises a shifted PMI
  matrix implicitly; here the factorisation is done explicitly.
* **A language model's own input table**: ``GPT.wte``, learned as a side effect of predicting the
  next token.

:func:`neighbour_agreement` measures how far two tables agree on each word's nearest neighbours.
Words are lower-cased and keep inner apostrophes (``o'er``); punctuation, numbers and line breaks
are dropped (:func:`words`).
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from ..text.data import SeededBatches, to_device
from ..text.words import split_words

UNK = "<unk>"


def words(text: str) -> list[str]:
    """The lower-cased words of ``text`` (``lmbook.text.words.split_words``, less punctuation, numbers and newlines)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}.")
    return [w.lower() for w in split_words(text) if w[0].isalpha()]


class Vocabulary:
    """The words seen at least ``min_count`` times, most frequent first, and ``<unk>`` last for the rest."""

    def __init__(self, counts: Counter, min_count: int = 5) -> None:
        if not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be a positive int, not {min_count!r}.")
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if not kept:
            raise ValueError(f"no word occurs {min_count} times or more: lower min_count or give more text.")
        unknown = sum(c for w, c in counts.items() if c < min_count)
        self.itos = kept + [UNK]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.counts = torch.tensor([counts[w] for w in kept] + [unknown], dtype=torch.float64)  # (V,)
        self.unk = len(kept)

    @classmethod
    def build(cls, tokens: list[str], min_count: int = 5) -> Vocabulary:
        """The vocabulary of a list of words (e.g. ``words(text)``)."""
        return cls(Counter(tokens), min_count)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str], drop_unknown: bool = False) -> torch.Tensor:
        """Word ids (N,), int64; words outside the vocabulary become ``<unk>`` (or are left out: ``drop_unknown``)."""
        ids = torch.tensor([self.stoi.get(w, self.unk) for w in tokens], dtype=torch.long)
        return ids[ids != self.unk] if drop_unknown else ids

    def id(self, word: str) -> int:
        """The id of ``word``; a ``KeyError`` that says so when it is not in the vocabulary."""
        if word not in self.stoi or word == UNK:
            raise KeyError(f"{word!r} is not in the vocabulary of {len(self) - 1:,} words (min_count too high?).")
        return self.stoi[word]


# --- Word2Vec: skip-gram with negative sampling ------------------------------------------
def noise_distribution(counts: torch.Tensor, power: float = 0.75) -> torch.Tensor:
    """Where negatives are drawn from: unigram frequencies raised to ``power`` (3/4 in Word2Vec), normalised."""
    weights = torch.as_tensor(counts, dtype=torch.float64).clamp_min(0) ** power
    if weights.sum() <= 0:
        raise ValueError("counts must contain at least one positive count.")
    return (weights / weights.sum()).float()


class SkipGramBatches(SeededBatches):
    """Random skip-gram examples from a 1-D tensor of word ids: centres (B,) and targets (B, 1 + K).

    ``targets[:, 0]`` is a word from the centre's window, ``targets[:, 1:]`` are ``negatives`` words
    drawn from :func:`noise_distribution`. As in Word2Vec, the window is shrunk to a random size from 1
    to ``window`` for each example (near words count more) and, once at the start, each occurrence of a
    word with frequency ``f`` is kept with probability ``min(1, sqrt(subsample / f))`` (frequent words
    like *the* are thinned out; ``subsample=0`` keeps all). Deterministic given ``seed``; its generator's
    state goes into checkpoints (:class:`lmbook.text.data.SeededBatches`).
    """

    def __init__(self, ids: torch.Tensor, counts: torch.Tensor, window: int = 5, negatives: int = 5,
                 batch_size: int = 512, subsample: float = 1e-3, device="cpu", seed: int = 0) -> None:
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.dim() != 1:
            raise ValueError(f"ids must be a 1-D tensor of word ids, not of shape {tuple(ids.shape)}.")
        for name, value in (("window", window), ("negatives", negatives), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, not {value!r}.")
        if subsample < 0:
            raise ValueError(f"subsample must be >= 0 (0 keeps every word), not {subsample}.")
        super().__init__(device, seed)
        if subsample > 0:
            frequency = torch.as_tensor(counts, dtype=torch.float64) / float(torch.as_tensor(counts).sum())
            keep = (subsample / frequency[ids]).sqrt().clamp(max=1.0)  # (N,)
            ids = ids[torch.rand(len(ids), generator=self.generator, dtype=torch.float64) < keep]
        if len(ids) < 2 * window + 1:
            raise ValueError(f"{len(ids)} words are too few for windows of {window} on each side: give more text.")
        self.ids, self.window, self.negatives, self.batch_size = ids, window, negatives, batch_size
        self.noise = noise_distribution(counts)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        B, W, g = self.batch_size, self.window, self.generator
        centre = torch.randint(W, len(self.ids) - W, (B,), generator=g)  # (B,) positions whose window fits
        reach = torch.randint(1, W + 1, (B,), generator=g)  # (B,) the shrunk window of each example
        distance = (torch.rand(B, generator=g) * reach).long() + 1  # (B,) uniform in 1..reach
        side = torch.randint(0, 2, (B,), generator=g) * 2 - 1  # (B,) before or after
        context = self.ids[centre + side * distance]  # (B,)
        noise = torch.multinomial(self.noise, B * self.negatives, replacement=True, generator=g).view(B, -1)  # (B, K)
        targets = torch.cat([context[:, None], noise], dim=1)  # (B, 1 + K)
        return to_device(self.ids[centre], self.device), to_device(targets, self.device)


def sgns_loss(v: torch.Tensor, u_pos: torch.Tensor, u_neg: torch.Tensor) -> torch.Tensor:
    """SGNS loss per example (B,): ``-log σ(u_pos·v) - Σ_k log σ(-u_k·v)``: v, u_pos (B, D), u_neg (B, K, D)."""
    pos = (u_pos * v).sum(-1)  # (B,)
    neg = (u_neg @ v[:, :, None]).squeeze(-1)  # (B, K)
    return -F.logsigmoid(pos) - F.logsigmoid(-neg).sum(-1)


def sgns_gradients(v: torch.Tensor, u_pos: torch.Tensor, u_neg: torch.Tensor):
    """The gradients of ``sgns_loss(...).sum()`` written out: ``(dL/dv, dL/du_pos, dL/du_neg)``.

    With ``σ'(x) = σ(x)(1 - σ(x))``: ``d(-log σ(x))/dx = σ(x) - 1`` and ``d(-log σ(-x))/dx = σ(x)``, so
    ``dL/dv = (σ(u_pos·v) - 1) u_pos + Σ_k σ(u_k·v) u_k``, ``dL/du_pos = (σ(u_pos·v) - 1) v``,
    ``dL/du_k = σ(u_k·v) v``. A positive pair is pulled together, each negative pushed away.
    """
    s_pos = torch.sigmoid((u_pos * v).sum(-1))  # (B,)
    s_neg = torch.sigmoid((u_neg @ v[:, :, None]).squeeze(-1))  # (B, K)
    dv = (s_pos - 1)[:, None] * u_pos + (s_neg[:, :, None] * u_neg).sum(1)  # (B, D)
    du_pos = (s_pos - 1)[:, None] * v  # (B, D)
    du_neg = s_neg[:, :, None] * v[:, None, :]  # (B, K, D)
    return dv, du_pos, du_neg


class SkipGram(nn.Module):
    """Word2Vec's two tables: ``centre`` (the embeddings kept) and ``context`` (used only in training).

    ``model(centres, targets)`` with centres (B,) and targets (B, 1 + K) from :class:`SkipGramBatches`
    returns the scores (B, 1 + K) and the mean :func:`sgns_loss`, so it trains with the book's loop.
    Initialised as in word2vec.c: centre vectors uniform in ±0.5/D, context vectors zero.
    """

    def __init__(self, vocab_size: int, dim: int = 64) -> None:
        super().__init__()
        if vocab_size < 2 or dim < 1:
            raise ValueError(f"vocab_size must be >= 2 and dim >= 1, not {vocab_size} and {dim}.")
        self.centre = nn.Embedding(vocab_size, dim)
        self.context = nn.Embedding(vocab_size, dim)
        nn.init.uniform_(self.centre.weight, -0.5 / dim, 0.5 / dim)
        nn.init.zeros_(self.context.weight)

    @property
    def table(self) -> torch.Tensor:
        """The word embeddings (V, D), detached."""
        return self.centre.weight.detach()

    def forward(self, centres: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if targets is None or targets.dim() != 2 or targets.size(1) < 2 or targets.size(0) != centres.size(0):
            shape = None if targets is None else tuple(targets.shape)
            raise ValueError(f"targets must be (B, 1 + K) with K >= 1 for centres of shape {tuple(centres.shape)}, "
                             f"not {shape}: one context word, then the negatives.")
        v = self.centre(centres)  # (B, D)
        u = self.context(targets)  # (B, 1 + K, D)
        scores = (u @ v[:, :, None]).squeeze(-1)  # (B, 1 + K)
        return scores, sgns_loss(v, u[:, 0], u[:, 1:]).mean()


# --- The count-based route: co-occurrences, PPMI, truncated SVD ----------------------------
def cooccurrence(ids: torch.Tensor, vocab_size: int, window: int = 5, weighting: str = "harmonic") -> torch.Tensor:
    """Symmetric co-occurrence counts (V, V): how often word j occurs within ``window`` words of word i.

    ``weighting="harmonic"`` counts a pair ``d`` words apart as ``1/d`` (as GloVe does); ``"uniform"`` as 1.
    """
    if weighting not in ("harmonic", "uniform"):
        raise ValueError(f"weighting must be 'harmonic' or 'uniform', not {weighting!r}.")
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, not {window!r}.")
    ids = torch.as_tensor(ids, dtype=torch.long)
    if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"ids must lie in [0, {vocab_size}), found {ids.min().item()} to {ids.max().item()}.")
    counts = torch.zeros(vocab_size * vocab_size, dtype=torch.float64)
    for d in range(1, min(window, len(ids) - 1) + 1):
        a, b = ids[:-d], ids[d:]  # (N - d,) pairs d apart
        weight = torch.full((len(a),), 1.0 / d if weighting == "harmonic" else 1.0, dtype=torch.float64)
        counts.index_add_(0, a * vocab_size + b, weight)
        counts.index_add_(0, b * vocab_size + a, weight)
    return counts.view(vocab_size, vocab_size)


def ppmi(counts: torch.Tensor, alpha: float = 0.75) -> torch.Tensor:
    """Positive pointwise mutual information of a co-occurrence matrix (V, V).

    ``PMI(w, c) = log(P(w, c) / (P(w) P_α(c)))`` with ``P(w, c) = #(w, c) / N``, ``P(w) = #(w) / N`` and the
    context distribution smoothed as ``P_α(c) = #(c)^α / Σ #(c')^α`` (Levy et al. 2015; α = 1 is plain PMI).
    ``PPMI = max(PMI, 0)``, and 0 for pairs never seen.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.dim() != 2 or (counts < 0).any():
        raise ValueError("counts must be a 2-D matrix of non-negative co-occurrence counts.")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must lie in (0, 1], not {alpha}.")
    total = counts.sum()
    p_wc = counts / total  # (V, C)
    p_w = counts.sum(1) / total  # (V,)
    c_alpha = counts.sum(0) ** alpha
    p_c = c_alpha / c_alpha.sum()  # (C,)
    with torch.no_grad():
        pmi = torch.log(p_wc / (p_w[:, None] * p_c[None, :]))
    return torch.where(counts > 0, pmi.clamp_min(0), torch.zeros_like(pmi)).float()


def svd_embeddings(matrix: torch.Tensor, dim: int, power: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Rows of ``U_k S_k^power``: the top ``dim`` singular directions of ``matrix`` (V, C) -> (V, dim).

    Randomised truncated SVD (``torch.svd_lowrank``, seeded), so only ``dim`` directions are computed;
    ``power=0.5`` splits the singular values evenly between words and contexts (Levy et al. 2015).
    """
    matrix = torch.as_tensor(matrix, dtype=torch.float32)
    if not isinstance(dim, int) or not 1 <= dim <= min(matrix.shape):
        raise ValueError(f"dim must be an int from 1 to {min(matrix.shape)} for a {tuple(matrix.shape)} matrix, "
                         f"not {dim!r}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        U, S, _ = torch.svd_lowrank(matrix, q=min(dim + 10, min(matrix.shape)), niter=6)
    return U[:, :dim] * S[:dim] ** power  # (V, dim)


# --- Comparing tables ----------------------------------------------------------------------
def cosine_neighbours(table: torch.Tensor, ids: torch.Tensor, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest rows of ``table`` (V, D) to each row in ``ids`` (Q,) by cosine, itself excluded.

    Returns neighbour ids (Q, k) and their cosine similarities (Q, k), nearest first.
    """
    table = torch.as_tensor(table).float()
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if not 1 <= k < len(table):
        raise ValueError(f"k must be between 1 and {len(table) - 1} for a table of {len(table)} rows, not {k}.")
    unit = F.normalize(table, dim=-1)  # (V, D)
    sims = unit[ids] @ unit.T  # (Q, V)
    sims[torch.arange(len(ids)), ids] = -float("inf")  # a word is not its own neighbour
    top = sims.topk(k, dim=-1)
    return top.indices, top.values


def neighbours(table: torch.Tensor, vocab: Vocabulary, word: str, k: int = 8) -> list[tuple[str, float]]:
    """The ``k`` words nearest to ``word`` in ``table`` by cosine similarity, as (word, similarity)."""
    ids, sims = cosine_neighbours(table, torch.tensor([vocab.id(word)]), k)
    return [(vocab.itos[i], s) for i, s in zip(ids[0].tolist(), sims[0].tolist())]


def neighbour_agreement(a: torch.Tensor, b: torch.Tensor, ids: torch.Tensor, k: int = 10) -> dict:
    """How far two tables over the same vocabulary agree on the ``k`` nearest neighbours of the words ``ids``.

    ``overlap`` is the mean fraction of a word's ``k`` neighbours in ``a`` that are also among its ``k``
    neighbours in ``b`` (1: the same lists; ``chance`` = k / (V - 1): two random lists); ``per_word`` (Q,).
    """
    if len(a) != len(b):
        raise ValueError(f"the tables must cover the same vocabulary: {len(a)} rows against {len(b)}.")
    na, _ = cosine_neighbours(a, ids, k)
    nb, _ = cosine_neighbours(b, ids, k)
    shared = (na[:, :, None] == nb[:, None, :]).any(-1).sum(-1)  # (Q,)
    per_word = shared.float() / k
    return {"overlap": per_word.mean().item(), "chance": k / (len(a) - 1), "per_word": per_word, "k": k}


def project_2d(table: torch.Tensor) -> torch.Tensor:
    """The rows of ``table`` (N, D) on their two principal axes (N, 2), each axis's sign fixed for reproducibility."""
    table = torch.as_tensor(table).float()
    if table.dim() != 2 or len(table) < 2 or table.size(1) < 2:
        raise ValueError(f"table must be (N, D) with N >= 2 and D >= 2, not {tuple(table.shape)}.")
    centred = table - table.mean(0)
    _, _, Vh = torch.linalg.svd(centred, full_matrices=False)
    axes = Vh[:2].T  # (D, 2)
    points = centred @ axes  # (N, 2)
    flip = torch.sign(points.gather(0, points.abs().argmax(0, keepdim=True)))  # (1, 2): largest entry positive
    return points * flip
