"""Chapter 3b's runs: an encoder–decoder and a decoder-only GPT on one task, and a broken ``nn.Transformer`` mended.

- :func:`compare` trains :class:`~lmbook.models.seq2seq.Seq2Seq` and a GPT of about its size on
  :mod:`lmbook.text.reorder`'s task (a line of the plays from its words sorted), both through the book's one
  training loop, and scores greedy and beam decoding of held-out lines: exact lines and characters in place.
- :class:`FirstTryLM` is a language model built on ``nn.Transformer`` with five common mistakes (no target, the
  constructor's arguments in the wrong order, no causal mask, batch and sequence axes swapped, the loss on logits
  not reshaped); :func:`mend_one_at_a_time` runs it as written, then mends one mistake at a time and measures each step.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..decoding.generate import generate
from ..interface import evaluating, num_params
from ..models.gpt import GPT, GPTConfig
from ..models.seq2seq import Packed, Seq2Seq, Seq2SeqConfig, beam_decode, greedy_decode
from ..runtime import get_device
from ..text.data import RandomBatches, shakespeare_chars
from ..text.reorder import EOS, PAD, SEP, PairBatches, ReorderTask, encode_pairs, reorder_task
from ..training.train import train
from .common import RunSettings


@dataclass(frozen=True)
class Seq2SeqRun(RunSettings):
    """The chapter's sizes: the task, the two models, their training, decoding, and the broken model's runs."""

    max_words: int  # the task's lines: at most this many tokens ...
    vocab_words: int  # ... all among this many most frequent ones
    d_model: int
    n_head: int
    n_layer: int  # layers of each stack of the encoder-decoder; the GPT has twice as many in its one stack
    d_ff: int
    dropout: float
    min_lr: float
    n_eval: int  # held-out lines decoded
    num_beams: int
    first_width: int  # the broken language model: its width, layers, windows, batches, steps and rate
    first_layer: int
    first_block: int
    first_batch: int
    first_steps: int
    first_lr: float

    def train_settings(self) -> dict:
        return {**super().train_settings(), "min_lr": self.min_lr, "progress": False}


RUNS = {
    "full": Seq2SeqRun(max_words=10, vocab_words=3000, d_model=128, n_head=4, n_layer=3, d_ff=512, dropout=0.1,
                       min_lr=1e-4, batch_size=128, max_steps=1500, lr=1e-3, warmup_steps=100, eval_interval=250,
                       eval_iters=10, n_eval=400, num_beams=4, first_width=128, first_layer=2, first_block=64,
                       first_batch=32, first_steps=1000, first_lr=1e-3),
    "fast": Seq2SeqRun(max_words=8, vocab_words=1000, d_model=64, n_head=4, n_layer=2, d_ff=256, dropout=0.0,
                       min_lr=1e-4, batch_size=64, max_steps=200, lr=5e-3, warmup_steps=20, eval_interval=50,
                       eval_iters=2, n_eval=100, num_beams=4, first_width=32, first_layer=1, first_block=16,
                       first_batch=32, first_steps=120, first_lr=1e-2),
}


# --- the task, two ways -------------------------------------------------------------------------
def prepare(run: Seq2SeqRun, seed: int = 0) -> ReorderTask:
    """The task at the sizes of ``run``, split by ``seed``."""
    return reorder_task(seed=seed, max_words=run.max_words, vocab_words=run.vocab_words)


def make_seq2seq(run: Seq2SeqRun, task: ReorderTask, device=None, seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    config = Seq2SeqConfig(vocab_size=task.vocab_size, max_source=task.max_len, max_target=task.max_len + 1,
                           d_model=run.d_model, n_head=run.n_head, n_encoder_layers=run.n_layer,
                           n_decoder_layers=run.n_layer, d_ff=run.d_ff, dropout=run.dropout)
    return Seq2Seq(config).to(device or get_device())


def make_gpt(run: Seq2SeqRun, task: ReorderTask, device=None, seed: int = 0) -> GPT:
    """A GPT as deep as both stacks together, as wide, with room for ``source SEP target END``."""
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=task.vocab_size, block_size=2 * task.max_len + 1, n_layer=2 * run.n_layer,
                       n_head=run.n_head, n_embd=run.d_model, dropout=run.dropout)
    return GPT(config).to(device or get_device())


def train_on_task(model: nn.Module, run: Seq2SeqRun, task: ReorderTask, seed: int = 0):
    """Train ``model`` (a Seq2Seq, or a GPT on the one-sequence form) with the book's loop; returns the history."""
    mode = "seq2seq" if isinstance(model, Seq2Seq) else "joint"
    device = next(model.parameters()).device
    batches = PairBatches(task, "train", run.batch_size, mode, device, seed=seed)
    val = {"val": PairBatches(task, "val", 64, mode, device, seed=seed + 1)}
    trained = Packed(model) if mode == "seq2seq" else model
    return train(trained, batches, run.train_config(seed=seed, desc=type(model).__name__), val)


def predict(model: nn.Module, task: ReorderTask, sources: list[str], num_beams: int = 1) -> list[str]:
    """The lines ``model`` writes for ``sources``, greedy (``num_beams=1``) or by beam search."""
    device = next(model.parameters()).device
    if isinstance(model, Seq2Seq):
        src = encode_pairs(task, [(s, "") for s in sources])[0][:, :task.max_len].to(device)
        ids = greedy_decode(model, src) if num_beams == 1 else beam_decode(model, src, num_beams)
        return [task.decode(row) for row in ids]
    prompts = [task.encode(s) + [SEP] for s in sources]
    start = max(map(len, prompts))  # the prompts are left-padded to the longest
    room = min(task.max_len + 1, model.context_length - start)  # a line and its end token, within the context
    out = generate(model, prompts, max_new_tokens=room, do_sample=False, num_beams=num_beams, eos_token_id=EOS,
                   pad_token_id=PAD)
    return [task.decode(row[start:]) for row in out]


def in_place(prediction, target) -> float:
    """The share of positions where ``prediction`` has ``target``'s item (a character of a string, a word of a
    list), over the longer of the two."""
    longest = max(len(prediction), len(target))
    return sum(a == b for a, b in zip(prediction, target)) / longest if longest else 1.0


def score(predictions: list[str], targets: list[str]) -> dict[str, float]:
    """Exact lines, words in place and characters in place, each a share of ``targets``."""
    if len(predictions) != len(targets) or not targets:
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets: give one for each, at least one.")
    return {"exact": sum(p == t for p, t in zip(predictions, targets)) / len(targets),
            "words": sum(in_place(p.split(), t.split()) for p, t in zip(predictions, targets)) / len(targets),
            "chars": sum(map(in_place, predictions, targets)) / len(targets)}


MODELS = {"encoder-decoder": make_seq2seq, "decoder-only GPT": make_gpt}


def compare(run: Seq2SeqRun, task: ReorderTask, device=None, seed: int = 0) -> dict[str, dict]:
    """Both models trained on ``task`` and scored on its first ``run.n_eval`` held-out lines, greedy and beam.

    Returns, for each model, its parameters, seconds, history, last held-out loss, predictions and scores."""
    sources, targets = map(list, zip(*task.pairs("val")[: run.n_eval]))
    results = {}
    for name, make in MODELS.items():
        model = make(run, task, device, seed)
        start = time.perf_counter()
        history = train_on_task(model, run, task, seed)
        seconds = time.perf_counter() - start
        greedy, beam = predict(model, task, sources), predict(model, task, sources, run.num_beams)
        results[name] = {"model": model, "params": num_params(model), "seconds": seconds, "history": history,
                         "val_loss": history.eval_loss["val"][-1], "greedy": greedy, "beam": beam,
                         **{f"greedy_{k}": v for k, v in score(greedy, targets).items()},
                         **{f"beam_{k}": v for k, v in score(beam, targets).items()}}
    results["targets"], results["sources"] = targets, sources
    return results


SHORT = {"encoder-decoder": "ed", "decoder-only GPT": "gpt"}  # the names the prose quotes results under


def comparison_table(results: dict):
    """Both models' sizes, times and scores as an HTML table."""
    from ..display.show import html_table

    return html_table(
        ["model", "parameters", "seconds", "held-out loss", "exact (greedy)", "words in place (greedy)",
         "chars in place (greedy)", "exact (beam)", "words in place (beam)", "chars in place (beam)"],
        [[name, f"{r['params']:,}", f"{r['seconds']:.0f}", f"{r['val_loss']:.3f}",
          *(f"{r[f'{d}_{k}']:.1%}" for d in ("greedy", "beam") for k in ("exact", "words", "chars"))]
         for name, r in ((n, results[n]) for n in MODELS)])


def examples_table(results: dict, n: int = 6):
    """The first ``n`` held-out lines: source, target and what each model wrote greedily."""
    from ..display.show import html_table

    return html_table(["sorted words", "line", *(f"{name} (greedy)" for name in MODELS)],
                      [[results["sources"][i], results["targets"][i], *(results[m]["greedy"][i] for m in MODELS)]
                       for i in range(min(n, len(results["targets"])))])


def compared(value: float, reference: float, tolerance: float, below: str, same: str, above: str):
    """``below``, ``same`` or ``above`` as ``value`` is less than, within ``tolerance`` of, or more than ``reference``:
    the words of a sentence that holds whatever the run gave."""
    from ..display.show import md

    return md(same if abs(value - reference) <= tolerance else below if value < reference else above)


def copied_share(predictions: list[str], sources: list[str]) -> float:
    """The share of the tokens written that the source holds (each source token usable once)."""
    found = total = 0
    for prediction, source in zip(predictions, sources):
        left = source.split()
        for token in prediction.split():
            total += 1
            if token in left:
                left.remove(token)
                found += 1
    return found / total if total else 0.0


def compare_report(results: dict) -> dict:
    """What the prose quotes of :func:`compare`: each model's numbers under ``ed_`` and ``gpt_``, and the verdicts."""
    from ..display.show import md

    values = {}
    for name, key in SHORT.items():
        r = results[name]
        values.update({f"{key}_{k}": r[k] for k in ("params", "seconds", "val_loss", "greedy_exact", "greedy_words",
                                                    "greedy_chars", "beam_exact", "beam_words", "beam_chars")})
        values[f"{key}_beam_verdict"] = compared(r["beam_words"], r["greedy_words"], 0.005, "lowered",
                                                 "barely changed", "raised")
        values[f"{key}_copied"] = copied_share(r["greedy"], results["sources"])
    ed, gpt = results["encoder-decoder"], results["decoder-only GPT"]
    values["loss_verdict"] = compared(ed["val_loss"], gpt["val_loss"], 0.01, "lower than", "about the same as",
                                      "higher than")
    best = max(MODELS, key=lambda m: (results[m]["greedy_words"], results[m]["greedy_exact"]))
    values["words_winner"] = md("the encoder–decoder" if best == "encoder-decoder" else "the decoder-only GPT")
    return values


def ladder_report(rows: list[dict]) -> dict:
    """What the prose quotes of :func:`mend_one_at_a_time`: the errors met, the sizes, and each trained step's two
    losses under its fix's name (``reported_axes``, ``prefix_axes``, ...)."""
    from ..display.show import md

    by_fix = {r["fix"]: r for r in rows}
    warning = by_fix["as written"]["warning"]
    values = {"first_error": md(f"`{by_fix['as written']['error']}`"),
              "second_error": md(f"`{by_fix['tgt']['error']}`"), "warning": md(f"`{warning}`" if warning else "none"),
              "params_wrong": by_fix["tgt"]["params"],
              "params_right": by_fix["order"]["params"], "uniform": math.log(65)}
    for fix in ("reshape", "axes", "causal", "memory"):
        values[f"reported_{fix}"] = by_fix[fix]["train_loss"]
        values[f"prefix_{fix}"] = by_fix[fix]["prefix_loss"]
        values[f"versus_{fix}"] = compared(by_fix[fix]["train_loss"], by_fix[fix]["prefix_loss"], 0.1, "below",
                                           "about level with", "above")
    values["reshape_vs_mended"] = compared(values["prefix_reshape"], values["prefix_memory"], 0.05, "below",
                                           "about level with", "above")
    return values


# --- a first language model on nn.Transformer, and its mistakes -------------------------
FIXES = {  # each mistake, the fix, in the order the runs meet them
    "tgt": "give nn.Transformer a target",
    "order": "constructor arguments by name",
    "reshape": "reshape logits and targets for the loss",
    "axes": "batch_first=True",
    "causal": "causal mask on the target",
    "memory": "causal masks on the source and the memory too",
}


class FirstTryLM(nn.Module):
    """A character language model on ``nn.Transformer``, as it is often first written; ``fixed`` names the mistakes
    of :data:`FIXES` that are mended. With none mended, ``forward`` fails for want of a target."""

    def __init__(self, vocab_size: int, d_model: int, n_head: int, n_layer: int, block_size: int, fixed=()):
        super().__init__()
        unknown = set(fixed) - set(FIXES)
        if unknown:
            raise ValueError(f"unknown fixes {sorted(unknown)}; choose from {list(FIXES)}.")
        self.fixed = frozenset(fixed)
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(block_size, d_model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if "order" in self.fixed:
                self.transformer = nn.Transformer(d_model=d_model, nhead=n_head, num_encoder_layers=n_layer,
                                                  num_decoder_layers=n_layer, dim_feedforward=4 * d_model,
                                                  batch_first="axes" in self.fixed)
            else:  # as written: (d_model, nhead, num_encoder_layers) is the order, not (d_model, layers, heads)
                self.transformer = nn.Transformer(d_model, n_layer, n_head, dim_feedforward=4 * d_model,
                                                  batch_first="axes" in self.fixed)
        self.warned = [str(w.message).split(" (Triggered")[0] for w in caught]  # what PyTorch said, if anything
        self.fc_out = nn.Linear(d_model, vocab_size)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        h = self.embedding(x) + self.pos(torch.arange(x.size(1), device=x.device))  # (B, T, C)
        mask = nn.Transformer.generate_square_subsequent_mask(x.size(1), device=x.device)  # (T, T), -inf above
        if "tgt" not in self.fixed:
            out = self.transformer(h)  # the mistake: nn.Transformer needs a source and a target
        elif "causal" not in self.fixed:
            out = self.transformer(h, h)
        elif "memory" not in self.fixed:
            out = self.transformer(h, h, tgt_mask=mask, tgt_is_causal=True)
        else:  # the encoder reads the same text: it must not see ahead either, nor may the decoder through it
            out = self.transformer(h, h, src_mask=mask, tgt_mask=mask, memory_mask=mask, src_is_causal=True,
                                   tgt_is_causal=True, memory_is_causal=True)
        logits = self.fc_out(out)  # (B, T, V)
        if y is None:
            return logits, None
        if "reshape" not in self.fixed:
            return logits, F.cross_entropy(logits, y)  # the mistake: (B, T, V) read as (N, classes, ...)
        return logits, F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))


@torch.no_grad()
def leaks(model: nn.Module, x: torch.Tensor) -> dict[str, bool]:
    """Whether an output depends on what it must not: a later token of its own row (``future``), or another row of
    the batch (``rows``). Each is tested by changing that token and watching the outputs that must not move."""
    with evaluating(model):
        base = model(x)[0]
        later = x.clone()
        later[:, -1] = (later[:, -1] + 1) % model.embedding.num_embeddings
        other = x.clone()
        other[1:] = (other[1:] + 1) % model.embedding.num_embeddings
        return {"future": bool((model(later)[0][:, :-1] - base[:, :-1]).abs().max() > 1e-6),
                "rows": bool((model(other)[0][0] - base[0]).abs().max() > 1e-6)}


@torch.no_grad()
def prefix_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The loss as generation meets it: the prediction at each position from the text up to it and nothing after."""
    with evaluating(model):
        losses = [F.cross_entropy(model(x[:, : t + 1])[0][:, -1], y[:, t]) for t in range(x.size(1))]
    return torch.stack(losses).mean().item()


def mend_one_at_a_time(run: Seq2SeqRun, device=None, seed: int = 0) -> list[dict]:
    """The first attempt as written, then with the fixes of :data:`FIXES` added one at a time, each trained alike.

    Each row: the step, the error it stopped at (or ``None``), and for a model that trains, its parameters, the
    loss its own code reports at the end of training, the loss each position gets from the text before it only
    (``prefix_loss``, on held-out windows), what it peeks at (:func:`leaks`) and seconds per step."""
    device = device or get_device()
    tokenizer, train_data, val_data = shakespeare_chars()
    held_out = RandomBatches(val_data, run.first_block, 32, device, seed=seed + 1)()
    rows, fixed = [], []
    for step in ["as written", *FIXES]:
        if step != "as written":
            fixed.append(step)
        torch.manual_seed(seed)
        model = FirstTryLM(tokenizer.vocab_size, run.first_width, run.n_head, run.first_layer, run.first_block, fixed)
        model = model.to(device)
        row = {"step": "as written" if step == "as written" else f"+ {FIXES[step]}", "fix": step, "error": None,
               "params": num_params(model), "warning": model.warned[0] if model.warned else None}
        config = run.train_config(max_steps=run.first_steps, lr=run.first_lr, warmup_steps=run.first_steps // 10,
                                  seed=seed, eval_interval=run.first_steps)
        start = time.perf_counter()
        try:
            peeks = leaks(model, held_out[0])  # what the wiring lets an output depend on, before any training
            history = train(model, RandomBatches(train_data, run.first_block, run.first_batch, device, seed=seed),
                            config)
        except Exception as err:  # what the reader meets: the first line of the message
            rows.append({**row, "error": f"{type(err).__name__}: {str(err).splitlines()[0]}"})
            continue
        row.update(seconds_per_step=(time.perf_counter() - start) / run.first_steps,
                   train_loss=sum(history.train_loss[-3:]) / len(history.train_loss[-3:]),
                   prefix_loss=prefix_loss(model, *held_out), **peeks)
        rows.append(row)
    return rows


def mistakes_table(rows: list[dict]):
    """The ladder as an HTML table."""
    from ..display.show import html_table

    def cell(row, key, fmt):
        return "" if row.get(key) is None else format(row[key], fmt)

    yes = {True: "yes", False: "no", None: ""}
    return html_table(
        ["step", "outcome", "parameters", "reported loss", "loss from the past only", "sees ahead", "rows mix",
         "ms per step"],
        [[r["step"], r["error"] or "trains", f"{r['params']:,}", cell(r, "train_loss", ".3f"),
          cell(r, "prefix_loss", ".3f"), yes[r.get("future")], yes[r.get("rows")],
          "" if "seconds_per_step" not in r else f"{1000 * r['seconds_per_step']:.0f}"] for r in rows])


def plot_mistakes(rows: list[dict], ax=None):
    """The loss each trained step reports against the loss from the past only, step by step."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.6))
    trained = [r for r in rows if r["error"] is None]
    xs = range(len(trained))
    ax.plot(xs, [r["train_loss"] for r in trained], "o-", label="loss the code reports (training)")
    ax.plot(xs, [r["prefix_loss"] for r in trained], "s-", label="loss from the past only (held out)")
    ax.axhline(math.log(65), color="grey", lw=0.8, ls=":", label="uniform guess, ln 65")
    ax.set_xticks(list(xs), [r["step"].removeprefix("+ ") for r in trained], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("cross-entropy (nats)")
    ax.legend(fontsize=8)
    ax.set_title("A first nn.Transformer language model, one mistake mended at a time")
    ax.figure.tight_layout()  # room for the slanted names of the steps
    return ax
