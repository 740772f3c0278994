"""Chapter 7's runs: word embeddings three ways, an association measured in sampled text, the models compared.

The sweep of GPT sizes is :mod:`lmbook.runs.ch07_sweep`. ``EMBEDDING_RUNS`` holds Word2Vec's and
the count-based model's settings and ``WORD_GPT_RUNS`` a small GPT on the same words, whose input table
the chapter compares with both (:func:`word_corpus`, :func:`train_word2vec`, :func:`count_embeddings`,
:func:`train_word_gpt`). ``BIAS_RUNS`` says how much text to sample for :mod:`lmbook.evaluation.bias`
(:func:`sample_words`). ``TIMELINE`` and ``SCALING_LAWS`` are published numbers, each with its source in
``references.bib``. :func:`recorded_rows` and :func:`zoo_rows` read what the earlier chapters measured
(their recorded full-size runs and the reader's trained models) into one table, :func:`comparison_table`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import reference
from ..text.data import held_out_text, load_shakespeare, train_val_split
from ..models.embeddings import SkipGram, SkipGramBatches, Vocabulary, cooccurrence, ppmi, svd_embeddings, words
from ..decoding.generate import generate
from ..models.gpt import GPT
from ..training.history import History
from ..interface import num_params
from ..evaluation.metrics import held_out_score
from ..models.mlm import Encoder
from ..runtime import get_device, size
from ..training.train import train
from .common import ChapterRun, RunSettings, Settings
from .common import GPTRun, make_char_gpt, train_char_gpt
from .zoo import Trained


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

    def train_settings(self) -> dict:
        # no weight decay: it would pull the vectors of rare words, which few updates reach, towards zero
        return {**super().train_settings(), "min_lr": self.min_lr, "weight_decay": 0.0}


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
    """The corpus's words (:func:`lmbook.models.embeddings.words`), split as the characters are, and their
    vocabulary."""
    train_words, val_words = train_val_split(words(load_shakespeare()), val_fraction)
    vocab = Vocabulary.build(train_words, min_count)
    return WordCorpus(vocab, train_words, vocab.encode(train_words), vocab.encode(val_words))


def train_word2vec(run: EmbeddingRun, corpus: WordCorpus, device=None, seed: int = 0) -> tuple[SkipGram, History]:
    """Word2Vec (skip-gram, negative sampling) on the training words, through the book's training loop.

    Rare words are left out of the windows, as word2vec.c does; the validation loss is the same
    objective on the held-out words.
    """
    device = device or get_device()
    settings = {"window": run.window, "negatives": run.negatives, "subsample": run.subsample, "device": device}
    train_ids, val_ids = (ids[ids != corpus.vocab.unk] for ids in (corpus.train_ids, corpus.val_ids))
    batches = SkipGramBatches(train_ids, corpus.vocab.counts, batch_size=run.batch_size, seed=seed, **settings)
    held_out = SkipGramBatches(val_ids, corpus.vocab.counts, batch_size=run.batch_size, seed=seed + 1, **settings)
    torch.manual_seed(seed)
    model = SkipGram(len(corpus.vocab), run.dim).to(device)
    return model, train(model, batches, run.train_config(seed=seed, desc="Word2Vec"), {"val": held_out})


def count_embeddings(run: EmbeddingRun, corpus: WordCorpus) -> torch.Tensor:
    """The count-based table (V, dim): co-occurrences within ``run.window`` (weighted 1/d), PPMI, truncated SVD."""
    ids = corpus.train_ids[corpus.train_ids != corpus.vocab.unk]
    return svd_embeddings(ppmi(cooccurrence(ids, len(corpus.vocab), run.window)), run.dim)


def train_word_gpt(run: GPTRun, corpus: WordCorpus, device=None, seed: int = 0) -> tuple[GPT, History]:
    """A GPT trained to predict the next word; its input table ``wte`` (V, n_embd) is one more embedding."""
    model = make_char_gpt(run, len(corpus.vocab), device or get_device(), seed)
    return model, train_char_gpt(model, run, corpus.train_ids, corpus.val_ids, seed, desc="word GPT")


# --- Start from pretrained vectors or learn them? The word GPT with Word2Vec's table as its start -----------
@dataclass(frozen=True)
class InitRun(Settings):
    """The word GPT trained from each starting table for ``max_steps`` steps of ``batch_size`` windows, once per
    seed; its held-out loss at the end, over ``eval_iters`` batches of held-out windows (the same for every
    start, a seed's own)."""

    max_steps: int
    batch_size: int
    eval_iters: int
    seeds: tuple[int, ...]


INIT_RUNS = {
    "full": InitRun(max_steps=3000, batch_size=64, eval_iters=10, seeds=(0, 1, 2)),
    "fast": InitRun(max_steps=40, batch_size=16, eval_iters=4, seeds=(0, 1, 2)),
}


def start_from(model: GPT, table: torch.Tensor | None) -> GPT:
    """``model`` with its input table (tied to its output layer) set to ``table`` (V, n_embd), scaled so that its
    entries have the standard deviation of the random start (0.02): the two starts differ in their directions,
    not in their size. ``None`` leaves the random start."""
    if table is None:
        return model
    weight = model.wte.weight
    if tuple(table.shape) != tuple(weight.shape):
        raise ValueError(f"the table is {tuple(table.shape)} but the GPT's is {tuple(weight.shape)}: train the "
                         "embeddings with dim equal to the GPT's n_embd, on the same vocabulary.")
    with torch.no_grad():
        table = table.to(weight)
        weight.copy_((table - table.mean()) * (0.02 / table.std()))
    return model


def init_comparison(run: GPTRun, init: InitRun, corpus: WordCorpus, tables: dict[str, torch.Tensor | None],
                    device=None) -> dict[str, list[float]]:
    """The word GPT at the sizes of ``run`` trained from each of ``tables`` (name -> a (V, n_embd) table, or
    ``None`` for the random start), ``init.max_steps`` steps per seed, the same batches and held-out windows for
    every start of a seed: ``{name: [held-out loss per seed]}``."""
    if not tables:
        raise ValueError("tables is empty: give at least two starts to compare, e.g. {'random': None, ...}.")
    settings = run.replace(max_steps=init.max_steps, batch_size=init.batch_size, eval_iters=init.eval_iters,
                           eval_interval=init.max_steps, warmup_steps=min(run.warmup_steps, init.max_steps // 4))
    device = device or get_device()
    out = {name: [] for name in tables}
    for seed in init.seeds:
        for name, table in tables.items():
            model = start_from(make_char_gpt(settings, len(corpus.vocab), device, seed), table)
            history = train_char_gpt(model, settings, corpus.train_ids, corpus.val_ids, seed,
                                     desc=f"word GPT from {name}, seed {seed}")
            out[name].append(history.eval_loss["val"][-1])
    return out


def init_facts(losses: dict[str, list[float]], baseline: str = "random", level: float = 0.9) -> dict:
    """Each start's mean held-out loss with its ``level`` interval over the seeds (Student's t), and each other
    start's difference from ``baseline``, seed by seed (a paired comparison), with its interval and a verdict."""
    from ..evaluation.intervals import mean_interval

    if baseline not in losses:
        raise KeyError(f"no start named {baseline!r}; the starts are {sorted(losses)}.")
    facts = {"intervals": {name: mean_interval(v, level) for name, v in losses.items()}}
    for name, values in losses.items():
        if name == baseline:
            continue
        gain = mean_interval([b - v for b, v in zip(losses[baseline], values)], level)
        facts[name] = gain
        mean, low, high = gain
        facts[f"{name}_verdict"] = (
            f"starting from {name}'s vectors lowers the held-out loss by {mean:.3f} nats on average, an interval "
            f"from {low:.3f} to {high:.3f} over the seeds, wholly above zero: a measured head start" if low > 0 else
            f"starting from {name}'s vectors raises the held-out loss by {-mean:.3f} nats on average (an interval "
            f"from {-high:.3f} to {-low:.3f} over the seeds, wholly above zero)" if high < 0 else
            f"the difference {name}'s vectors make, {mean:+.3f} nats on average (from {low:+.3f} to {high:+.3f} over "
            "the seeds), has an interval that holds zero: no difference these seeds can show")
    return facts


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


def sample_words(model: torch.nn.Module, tokenizer, run: SampleRun, seed: int = 0) -> list[list[str]]:
    """The words of ``run.streams`` independent samples of ``run.length`` tokens each, started from a newline."""
    device = next(model.parameters()).device
    start = torch.tensor([tokenizer.encode("\n")] * run.streams, device=device)  # (S, 1)
    out = generate(model, start, run.length, temperature=run.temperature,
                   generator=torch.Generator().manual_seed(seed))  # (S, 1 + length)
    return [words(tokenizer.decode(row)) for row in out.tolist()]


# --- Published numbers, each with its source (a key of references.bib) ---------------------------
@dataclass(frozen=True)
class Milestone:
    """A language model in the history: when it was first made public, its size, and where that is stated."""

    name: str
    year: int
    month: int | None  # of the first public release (paper, preprint or report); None: the year is enough
    params: float | None  # parameters of the model named (None: before parameter counts were the measure)
    cite: str  # the source of the date and the count, in references.bib
    kind: str  # "n-gram", "recurrent", "embedding", "Transformer", "assistant" (tuned to follow instructions)
    # or "method" (a way of training, not a model)

    @property
    def date(self) -> float:
        """The date as a decimal year (mid-year when only the year is given)."""
        return self.year + ((self.month or 7) - 1) / 12


TIMELINE = (
    Milestone("n-gram statistics of English", 1948, 7, None, "shannon1948mathematical", "n-gram"),
    Milestone("interpolated n-grams", 1980, None, None, "jelinek1980interpolated", "n-gram"),
    Milestone("simple recurrent network", 1990, None, None, "elman1990finding", "recurrent"),
    Milestone("LSTM", 1997, None, None, "hochreiter1997long", "recurrent"),
    Milestone("neural probabilistic LM", 2003, None, None, "bengio2003neural", "embedding"),
    Milestone("RNN language model", 2010, 9, None, "mikolov2010recurrent", "recurrent"),
    Milestone("Word2Vec", 2013, 1, None, "mikolov2013efficient", "embedding"),
    Milestone("Transformer (big)", 2017, 6, 213e6, "vaswani2017attention", "Transformer"),  # Table 3
    Milestone("GPT", 2018, 6, 117e6, "radford2019language", "Transformer"),  # GPT-2 paper, Table 2: the smallest
    Milestone("BERT-large", 2018, 10, 340e6, "devlin2019bert", "Transformer"),
    Milestone("GPT-2", 2019, 2, 1542e6, "radford2019language", "Transformer"),  # Table 2
    Milestone("Megatron-LM", 2019, 9, 8.3e9, "shoeybi2019megatron", "Transformer"),
    Milestone("T5-11B", 2019, 10, 11e9, "raffel2020exploring", "Transformer"),
    Milestone("GPT-3", 2020, 5, 175e9, "brown2020language", "Transformer"),
    Milestone("Gopher", 2021, 12, 280e9, "rae2021scaling", "Transformer"),
    Milestone("InstructGPT", 2022, 3, 175e9, "ouyang2022training", "assistant"),  # its largest policy
    Milestone("Chinchilla", 2022, 3, 70e9, "hoffmann2022training", "Transformer"),
    Milestone("PaLM", 2022, 4, 540e9, "chowdhery2023palm", "Transformer"),
    Milestone("ChatGPT", 2022, 11, None, "openai2022chatgpt", "assistant"),  # its size was not published
    Milestone("LLaMA-65B", 2023, 2, 65e9, "touvron2023llama", "Transformer"),
    Milestone("DPO", 2023, 5, None, "rafailov2023direct", "method"),  # a way of tuning, not a model
    Milestone("Llama 2-70B", 2023, 7, 70e9, "touvron2023llama2", "Transformer"),
    Milestone("Mistral 7B", 2023, 10, 7e9, "jiang2023mistral", "Transformer"),  # "a 7-billion-parameter model"
    Milestone("OLMo-7B", 2024, 2, 7e9, "groeneveld2024olmo", "Transformer"),
    Milestone("Llama 3-405B", 2024, 7, 405e9, "dubey2024llama", "Transformer"),
)
# where a label of the timeline's figure would sit on another's: name -> offset in points (dx, dy) and alignment
TIMELINE_PLACES = {"Gopher": (-5, 0, "right"), "Megatron-LM": (-5, -3, "right"), "LLaMA-65B": (0, -12, "center"),
                   "Mistral 7B": (-5, -3, "right")}

SCALING_LAWS = {
    # Kaplan et al. (2020), eq. 1.1: L(N) = (N_c / N)^alpha_N for models trained to convergence on enough data,
    # N the non-embedding parameters, L in nats per BPE token of WebText2
    "kaplan_alpha_n": 0.076,
    "kaplan_n_c": 8.8e13,
    # Hoffmann et al. (2022), Table 3: compute-optimal training uses about 20 tokens per parameter
    "chinchilla_tokens_per_param": 20,
}


# --- GPT against BERT, RNN against Transformer: one table from runs the book has made -------------
OBJECTIVES = {
    "causal": "predicts the next token from the left: writes text, scores any text, fine-tunes to classify",
    "masked": "predicts masked tokens from both sides: fills gaps, encodes a whole text; does not write",
}
# the zoo's models: (name in the table, objective, what one token is, the chapter that measured it)
ZOO_ROWS = {
    "rnn": ("RNN", "causal", "character", "ch02_rnn"),
    "lstm": ("LSTM", "causal", "character", "ch02_rnn"),
    "gru": ("GRU", "causal", "character", "ch02_rnn"),
    "gpt-char": ("GPT", "causal", "character", "ch03_attention"),
    "gpt-bpe": ("GPT", "causal", "BPE token", "ch04_finetuning"),
    "encoder-bpe": ("encoder (a small BERT)", "masked", "BPE token", "ch04_finetuning"),
}


def _row(model: str, objective: str, unit: str, chapter: str, run: str, params: int | None, val_loss: float,
         tokens_per_second: float, device: str, chars_per_token: float | None = None) -> dict:
    per_char = unit == "character" or chars_per_token is not None
    bits = val_loss / math.log(2) / (chars_per_token or 1.0) if per_char and objective == "causal" else None
    return {"model": model, "objective": objective, "unit": unit, "chapter": chapter, "run": run, "params": params,
            "val_loss": val_loss, "bits_per_char": bits, "tokens_per_second": tokens_per_second, "device": device}


RECORDED = {"gpu": "recorded, full size", "cpu": "recorded, two CPU cores"}  # the run column of each level
CELL_NAMES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU", "gpt": "GPT"}


def recorded_rows() -> list[dict]:
    """Rows for the reference runs recorded in ``lmbook/references``, every level (none for a chapter not yet
    recorded). Character models' losses are over the whole validation split where the record has that figure."""
    rows = []
    for level, rnn in reference.load_all("ch02").items():
        for cell, r in rnn.runs().items():
            if cell in CELL_NAMES:  # not the unclipped plain RNN of the clipping comparison
                rows.append(_row(CELL_NAMES[cell], "causal", "character", "ch02_rnn", RECORDED[level], r.params,
                                 r.held_out_loss, r.tokens_per_second, rnn.environment["device"]))
    for level, gpt in reference.load_all("ch03").items():
        for label, r in gpt.runs().items():  # the CPU record: three models at equal time
            rows.append(_row(CELL_NAMES[label], "causal", "character", "ch03_attention", RECORDED[level], r.params,
                             r.held_out_loss, r.tokens_per_second, gpt.environment["device"]))
    for level, finetune in reference.load_all("ch04").items():
        run = ChapterRun(**{**finetune.recipe, "per_class": tuple(finetune.recipe["per_class"]),
                                          "sweep_seeds": tuple(finetune.recipe.get("sweep_seeds", (0,)))})
        for label, (name, objective, unit, chapter) in (("gpt", ZOO_ROWS["gpt-bpe"]), ("mlm", ZOO_ROWS["encoder-bpe"])):
            history = finetune.histories[label]
            with torch.device("meta"):  # the shape alone gives the count: no memory, no time
                model = (GPT if objective == "causal" else Encoder)(run.gpt_config(run.vocab_size + (label == "mlm")))
            rows.append(_row(name, objective, unit, chapter, RECORDED[level], num_params(model),
                             history.eval_loss["val"][-1], history.tokens_per_second,
                             finetune.environment["device"]))
    return rows


def zoo_rows(models: dict[str, Trained], device: str, text: str | None = None) -> list[dict]:
    """Rows for the reader's own trained models (:mod:`lmbook.runs.zoo`), at the size this book runs at.

    A causal model is scored by the book's protocol (:func:`lmbook.evaluation.metrics.held_out_score`) on ``text``
    (default :func:`lmbook.text.data.held_out_text`), so its figure is chapter 6's; the masked model keeps the
    masked-token loss of its last evaluation, which is not a per-character figure."""
    text = held_out_text() if text is None else text
    rows = []
    for key, trained in models.items():
        name, objective, unit, chapter = ZOO_ROWS[key]
        loss, chars_per_token = trained.history.eval_loss["val"][-1], None
        if objective == "causal":
            score = held_out_score(trained.model, trained.tokenizer, text)
            loss, chars_per_token = score.nats / score.tokens, score.chars / score.tokens
        rows.append(_row(name, objective, unit, chapter, f"yours, {size()} size", num_params(trained.model), loss,
                         trained.history.tokens_per_second, device, chars_per_token))
    return rows


def comparison_table(rows: list[dict]) -> str:
    """The rows as a Markdown table, each linked to the chapter that measured it, then what each objective does.

    The device goes under the table when every row was measured on the same one, else in a column of its own.
    """
    devices = sorted({r["device"] for r in rows})
    one_device = len(devices) <= 1
    head = ("| model | run | tokens | parameters | val loss (nats/token) | bits/char | training tokens/s | "
            + ("" if one_device else "device | ") + "objective | measured in |")
    lines = [head, "|---|---|---|---:|---:|---:|---:|" + ("" if one_device else "---|") + "---|---|"]
    for r in rows:
        params = f"{r['params']:,}" if r["params"] is not None else "-"
        bits = f"{r['bits_per_char']:.2f}" if r["bits_per_char"] is not None else "-"
        lines.append(f"| {r['model']} | {r['run']} | {r['unit']} | {params} | {r['val_loss']:.3f} | {bits} | "
                     f"{r['tokens_per_second']:,.0f} | " + ("" if one_device else f"{r['device']} | ")
                     + f"{r['objective']} | "
                     f"[{r['chapter'].split('_')[0].replace('ch0', 'chapter ')}]({r['chapter']}.ipynb) |")
    legend = [f"*{name}*: {what}" for name, what in OBJECTIVES.items() if any(r["objective"] == name for r in rows)]
    if one_device and devices:
        legend.append(f"training speeds measured on {devices[0]}")
    return "\n".join(lines) + ("\n\n" + "; ".join(legend) + "." if legend else "")

