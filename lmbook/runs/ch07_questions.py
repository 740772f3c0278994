"""Chapter 7's runs: a sweep of GPT sizes, word embeddings three ways, an association measured in sampled text.

``SWEEP`` trains GPTs of at least five sizes, spanning more than 30 times in parameters, on the same
characters for the same number of steps (:func:`size_sweep`). ``EMBEDDING_RUNS`` holds Word2Vec's and
the count-based model's settings and ``WORD_GPT_RUNS`` a small GPT on the same words, whose input table
the chapter compares with both (:func:`word_corpus`, :func:`train_word2vec`, :func:`count_embeddings`,
:func:`train_word_gpt`). ``BIAS_RUNS`` says how much text to sample for :mod:`lmbook.bias`
(:func:`sample_words`). ``TIMELINE`` and ``SCALING_LAWS`` are published numbers, each with its source in
``references.bib``; :func:`comparison` reads the earlier chapters' recorded runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import RandomBatches, load_shakespeare, train_val_split
from ..embeddings import SkipGram, SkipGramBatches, Vocabulary, cooccurrence, ppmi, svd_embeddings, words
from ..generate import generate
from ..gpt import GPT
from ..history import History
from ..interface import num_params
from ..metrics import split_loss
from ..runtime import get_device
from ..train import train
from . import RunSettings, Settings
from .ch03_gpt import GPTRun, make_char_gpt, train_char_gpt


# --- Which model size: the sweep -------------------------------------------------------------
@dataclass(frozen=True)
class SizeSweep(Settings):
    """GPT shapes ``(n_layer, n_head, n_embd)``, smallest first, all trained as ``base`` says on the same data."""

    base: GPTRun  # everything but the shape: context, batches, steps, learning rate
    shapes: tuple[tuple[int, int, int], ...]
    train_chars: int | None  # the training data: the first train_chars characters of the training split (None: all)

    def runs(self) -> list[GPTRun]:
        return [self.base.replace(n_layer=L, n_head=H, n_embd=C) for L, H, C in self.shapes]


SWEEP = {
    # a GPU: from 0.1M to 12M parameters, 2,000 steps of 64 windows of 256 on the whole training split
    "full": SizeSweep(
        base=GPTRun(n_layer=1, n_head=1, n_embd=1, block_size=256, dropout=0.0, batch_size=64, max_steps=2000,
                    lr=2e-3, min_lr=0.0, warmup_steps=100, schedule="linear", weight_decay=0.1, beta2=0.99,
                    eval_interval=250, eval_iters=10),
        shapes=((2, 2, 64), (2, 4, 128), (4, 4, 192), (4, 6, 256), (6, 6, 384), (8, 8, 512)),
        train_chars=None,
    ),
    # two CPU cores: from 4 thousand to 0.4M parameters, 300 steps of 16 windows of 32, on 100,000 characters
    "fast": SizeSweep(
        base=GPTRun(n_layer=1, n_head=1, n_embd=1, block_size=32, dropout=0.0, batch_size=16, max_steps=300,
                    lr=1e-2, min_lr=0.0, warmup_steps=30, schedule="linear", weight_decay=0.1, beta2=0.99,
                    eval_interval=100, eval_iters=4),
        shapes=((1, 2, 16), (1, 2, 32), (2, 4, 48), (2, 4, 64), (2, 4, 96), (2, 4, 128)),
        train_chars=100_000,
    ),
}


def non_embedding_params(model: GPT) -> int:
    """Parameters outside the token and position tables: the N of Kaplan et al. (2020)."""
    return num_params(model) - model.wte.weight.numel() - model.wpe.weight.numel()


def size_sweep(sweep: SizeSweep, train_data: torch.Tensor, val_data: torch.Tensor, vocab_size: int,
               device=None, seed: int = 0) -> list[dict]:
    """Train one GPT per shape of ``sweep`` on the same data with the same steps; one dict of results per size.

    Each dict holds the shape, ``params`` (the book's count), ``non_embedding`` (Kaplan's N), ``tokens`` seen,
    training ``flops`` (``GPT.flops_per_token`` times tokens), the loss over the whole validation split
    (``val_loss``) and over as many training characters (``train_loss``), seconds and the :class:`History`
    (evaluated on random training and validation windows along the way).
    """
    device = device or get_device()
    data = train_data[: sweep.train_chars] if sweep.train_chars else train_data
    results = []
    for run in sweep.runs():
        model = make_char_gpt(run, vocab_size, device, seed)
        evaluation = {"train": RandomBatches(data, run.block_size, 64, device, seed=seed + 1),
                      "val": RandomBatches(val_data, run.block_size, 64, device, seed=seed + 2)}
        batches = RandomBatches(data, run.block_size, run.batch_size, device, seed=seed)
        config = run.train_config(seed=seed, desc=f"{num_params(model):,} parameters")
        history = train(model, batches, config, evaluation)
        tokens = history.tokens_per_step * run.max_steps
        results.append({
            "shape": (run.n_layer, run.n_head, run.n_embd),
            "params": num_params(model),
            "non_embedding": non_embedding_params(model),
            "tokens": tokens,
            "flops": model.flops_per_token(run.block_size) * tokens,
            "train_loss": split_loss(model, data[: len(val_data)], run.block_size),
            "val_loss": split_loss(model, val_data, run.block_size),
            "seconds": history.seconds,
            "history": history,
        })
    return results


# --- Embeddings: Word2Vec, the count-based route, and a GPT's own table -----------------------
@dataclass(frozen=True)
class EmbeddingRun(RunSettings):
    """Word2Vec's training (skip-gram with negative sampling) and the count-based model's window and size."""

    min_count: int  # the vocabulary: words seen at least this often in the training split
    dim: int  # the length of every embedding, Word2Vec's, the SVD's and the word GPT's
    window: int  # words on each side that count as context, for both methods
    negatives: int
    subsample: float
    min_lr: float


EMBEDDING_RUNS = {
    "full": EmbeddingRun(min_count=5, dim=128, window=5, negatives=10, subsample=1e-3, batch_size=4096,
                         max_steps=20_000, lr=5e-3, min_lr=5e-4, warmup_steps=200, eval_interval=2000, eval_iters=10),
    "fast": EmbeddingRun(min_count=5, dim=64, window=4, negatives=5, subsample=1e-3, batch_size=512,
                         max_steps=1500, lr=1e-2, min_lr=1e-3, warmup_steps=50, eval_interval=500, eval_iters=5),
}
# a GPT reading words, whose input table (GPT.wte) joins the comparison; n_embd is EMBEDDING_RUNS' dim
WORD_GPT_RUNS = {
    "full": GPTRun(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.1, batch_size=64, max_steps=3000,
                   lr=1e-3, min_lr=1e-4, warmup_steps=100, schedule="cosine", weight_decay=0.1, beta2=0.99,
                   eval_interval=500, eval_iters=10),
    "fast": GPTRun(n_layer=2, n_head=4, n_embd=64, block_size=32, dropout=0.0, batch_size=32, max_steps=400,
                   lr=5e-3, min_lr=0.0, warmup_steps=30, schedule="linear", weight_decay=0.1, beta2=0.99,
                   eval_interval=200, eval_iters=4),
}


@dataclass
class WordCorpus:
    """Tiny Shakespeare as lower-cased words: the vocabulary of the training split and both splits as ids."""

    vocab: Vocabulary
    train_words: list[str]
    train_ids: torch.Tensor  # (N,) every training word, ``<unk>`` for the rare ones
    val_ids: torch.Tensor  # (M,)


def word_corpus(min_count: int = 5, val_fraction: float = 0.1) -> WordCorpus:
    """The corpus's words (:func:`lmbook.embeddings.words`), split as the characters are, and their vocabulary."""
    train_words, val_words = train_val_split(words(load_shakespeare()), val_fraction)
    vocab = Vocabulary.build(train_words, min_count)
    return WordCorpus(vocab, train_words, vocab.encode(train_words), vocab.encode(val_words))


def train_word2vec(run: EmbeddingRun, corpus: WordCorpus, device=None, seed: int = 0) -> tuple[SkipGram, History]:
    """Word2Vec (skip-gram, negative sampling) on the training words, through the book's training loop.

    Rare words are left out of the windows, as word2vec.c does; the validation loss is the same
    objective on the held-out words. No weight decay: it would pull rare words' vectors to zero.
    """
    device = device or get_device()
    settings = dict(window=run.window, negatives=run.negatives, subsample=run.subsample, device=device)
    known = lambda ids: ids[ids != corpus.vocab.unk]  # noqa: E731
    batches = SkipGramBatches(known(corpus.train_ids), corpus.vocab.counts, batch_size=run.batch_size, seed=seed,
                              **settings)
    held_out = SkipGramBatches(known(corpus.val_ids), corpus.vocab.counts, batch_size=run.batch_size, seed=seed + 1,
                               **settings)
    torch.manual_seed(seed)
    model = SkipGram(len(corpus.vocab), run.dim).to(device)
    config = run.train_config(min_lr=run.min_lr, weight_decay=0.0, seed=seed, desc="Word2Vec")
    return model, train(model, batches, config, {"val": held_out})


def count_embeddings(run: EmbeddingRun, corpus: WordCorpus) -> torch.Tensor:
    """The count-based table (V, dim): co-occurrences within ``run.window`` (weighted 1/d), PPMI, truncated SVD."""
    ids = corpus.train_ids[corpus.train_ids != corpus.vocab.unk]
    return svd_embeddings(ppmi(cooccurrence(ids, len(corpus.vocab), run.window)), run.dim)


def train_word_gpt(run: GPTRun, corpus: WordCorpus, device=None, seed: int = 0) -> tuple[GPT, History]:
    """A GPT trained to predict the next word; its input table ``wte`` (V, n_embd) is one more embedding."""
    model = make_char_gpt(run, len(corpus.vocab), device or get_device(), seed)
    return model, train_char_gpt(model, run, corpus.train_ids, corpus.val_ids, seed, desc="word GPT")


# --- Bias: text sampled from a trained model ---------------------------------------------------
@dataclass(frozen=True)
class SampleRun(Settings):
    """How much text to sample: ``streams`` texts of ``length`` tokens each, at ``temperature``."""

    streams: int
    length: int
    temperature: float


BIAS_RUNS = {
    "full": SampleRun(streams=64, length=4000, temperature=1.0),
    "fast": SampleRun(streams=64, length=1500, temperature=1.0),
}


def sample_words(model: torch.nn.Module, tokenizer, run: SampleRun, seed: int = 0) -> list[str]:
    """The words of ``run.streams`` samples of ``run.length`` tokens, each started from a newline, at temperature 1."""
    device = next(model.parameters()).device
    start = torch.tensor([tokenizer.encode("\n")] * run.streams, device=device)  # (S, 1)
    out = generate(model, start, run.length, temperature=run.temperature,
                   generator=torch.Generator().manual_seed(seed))  # (S, 1 + length)
    return [w for row in out.tolist() for w in words(tokenizer.decode(row))]
