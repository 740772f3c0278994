"""Chapter 6's runs: every language model of the book scored on one held-out text, and scores of generated text.

:func:`scoreboard` fits chapter 1's character n-grams, loads the neural models of chapters 2 to 4 from
:mod:`lmbook.runs.zoo` (training any that is missing by its own chapter's recipe) and scores all of them
on the same held-out Tiny Shakespeare in bits per character. :func:`stride_sweep` measures what the
sliding window buys. :mod:`lmbook.runs.ch06_generated` continues held-out prompts and scores what comes
out with BLEU, ROUGE, distinct-n, self-BLEU and repetition.
"""

from __future__ import annotations

import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from . import reference
from ..text.data import HELD_OUT_CHARS, held_out_text, load_shakespeare, train_val_split
from ..interface import context_length, num_params
from ..evaluation.intervals import bootstrap_interval, ratio_of_sums
from ..evaluation.metrics import LN2, TextNLL, held_out_nlls, nll_by_piece, score_text, sliding_windows, token_nlls
from ..models.ngram import NGramLM
from ..display.show import and_list, capital, html_table, md, than
from ..display.viz import plot_intervals
from .common import BATCH, EQUAL_TIME_NAMES, EvaluationRun, equal_time_windows, plot_equal_time
from .zoo import trained

RUNS = {
    # a GPU: the whole held-out split, minutes
    "full": EvaluationRun(heldout_chars=HELD_OUT_CHARS["full"], ngram_orders=(1, 3, 5, 8), add_k=1.0,
                          stride_chars=30_000,
                          strides=(256, 128, 64, 32, 16, 8), n_prompts=200, prompt_chars=128, continuation_chars=100,
                          temperatures=(0.0, 0.5, 0.7, 1.0, 1.3), top_ps=(0.5, 0.8, 0.95, 1.0), sample_chars=400),
    # two CPU cores, seconds once the models are trained
    "fast": EvaluationRun(heldout_chars=HELD_OUT_CHARS["fast"], ngram_orders=(1, 3, 5), add_k=1.0, stride_chars=4_000,
                          strides=(32, 16, 8, 4, 2, 1), n_prompts=24, prompt_chars=64, continuation_chars=64,
                          temperatures=(0.0, 0.5, 0.8, 1.0, 1.3), top_ps=(0.5, 0.8, 0.95), sample_chars=200),
}
BOOTSTRAP_SAMPLES = 200  # draws of the held-out speeches for each interval of the scoreboard
NEURAL = {  # the zoo's language models and the names the chapter gives them
    "rnn": "RNN", "lstm": "LSTM", "gru": "GRU", "gpt-char": "GPT, characters", "gpt-bpe": "GPT, BPE",
}

# where each model's reference run is recorded, its held-out loss in nats per character there (read from the
# lmbook.runs.reference.Record), and how that figure read the held-out split
REFERENCE_LOSS = {
    "rnn": ("ch02", lambda r: r.runs()["rnn"].in_order_loss, "in order, the state carried"),
    "lstm": ("ch02", lambda r: r.runs()["lstm"].in_order_loss, "in order, the state carried"),
    "gru": ("ch02", lambda r: r.runs()["gru"].in_order_loss, "in order, the state carried"),
    "gpt-char": ("ch03", lambda r: r.runs()["gpt"].held_out_loss, "in windows of its context side by side"),
}


def texts(run: EvaluationRun) -> tuple[str, str]:
    """``(train, held_out)``: the training split and the held-out text every model is scored on."""
    return train_val_split(load_shakespeare())[0], held_out_text(run.heldout_chars)


# --- The scoreboard ---------------------------------------------------------------------
def ngram_nlls(model: NGramLM, text: str) -> torch.Tensor:
    """An n-gram model's NLL of each character of ``text`` after the first (N - 1,), as the neural models' are
    scored. :meth:`~lmbook.models.ngram.NGramLM.log_probs` also predicts the first character (after the begin
    padding) and the end token; both are left out, so all models predict the same characters."""
    return -torch.tensor(model.log_probs(list(text))[1:-1], dtype=torch.float64)


def ngram_score(model: NGramLM, text: str) -> TextNLL:
    """An n-gram model's NLL of ``text`` scored like the neural models': every character after the first."""
    nats = math.fsum(ngram_nlls(model, text).tolist())
    n = len(text) - 1
    return TextNLL(nats, n, n, len(text[1:].encode("utf-8")))


def with_interval(row: dict, key: str, nll: torch.Tensor, lengths: list[int], text: str, level: float = 0.95) -> None:
    """Add ``{key}_interval`` to ``row``: a bootstrap ``level`` interval of its bits per character over the
    speeches of ``text`` (pieces cut at blank lines; the same draws for every model, so intervals compare)."""
    pieces = nll_by_piece(nll, lengths, text)
    low, high = bootstrap_interval(pieces, ratio_of_sums, samples=BOOTSTRAP_SAMPLES, level=level, seed=0)
    row[f"{key}_interval"] = (low / LN2, high / LN2)
    row[f"{key}_pieces"] = pieces


def ngram_size(model: NGramLM) -> int:
    """An n-gram model's "parameters": the counts it stores (one per distinct context and next token, every order)."""
    return sum(len(followers) for order in model.counts for followers in order.values())


def ngram_rows(run: EvaluationRun, train: str, held_out: str, train_slice: str) -> list[dict]:
    """Chapter 1's character n-grams, fitted on the training split, each order with both smoothings."""
    rows = []
    for n in run.ngram_orders:
        start = time.perf_counter()
        interpolated = NGramLM.fit(list(train), n=n)  # chapter 1's model: interpolation, weights tuned by EM
        seconds = time.perf_counter() - start
        for name, model in ((f"{n}-gram, interpolation", interpolated),
                            (f"{n}-gram, add-{run.add_k:g}", interpolated.with_smoothing("add-k", run.add_k))):
            row = {"model": name, "family": "n-gram", "tokens": "characters", "params": ngram_size(model),
                   "lm": model, "seconds": seconds, "tokens_per_second": len(train) / seconds}
            for key, text in (("held_out", held_out), ("train", train_slice)):
                nll = ngram_nlls(model, text)
                n = len(text) - 1
                row[key] = TextNLL(math.fsum(nll.tolist()), n, n, len(text[1:].encode("utf-8")))
                with_interval(row, key, nll, [1] * len(text), text)
            rows.append(row)
    return rows


def reference_bits_per_char(name: str) -> tuple[float | None, str]:
    """The held-out bits per character of model ``name``'s recorded reference run (the GPU record where there is
    one, else the CPU one), and where it comes from."""
    if name not in REFERENCE_LOSS:
        return None, "no per-character figure is recorded for this model"
    chapter, read, how = REFERENCE_LOSS[name]
    record = reference.load(chapter)
    if record is None:
        return None, f"no reference run recorded (python -m lmbook.runs.reference record {chapter})"
    return read(record) / LN2, f"{reference.describe(record)} The whole held-out split, read {how}."


def neural_row(name: str, held_out: str, train_slice: str, device=None) -> dict:
    """One zoo model scored on ``held_out`` (and on as much training text), with its size and training speed."""
    zoo = trained(name, device)
    ref, note = reference_bits_per_char(name)
    row = {"model": NEURAL[name], "family": "neural", "tokens": _token_kind(zoo.tokenizer),
           "params": num_params(zoo.model), "seconds": zoo.history.seconds,
           "tokens_per_second": zoo.history.tokens_per_second,
           "reference_bpc": ref, "reference": note, "history": zoo.history, "zoo": zoo}
    for key, text in (("held_out", held_out), ("train", train_slice)):
        row[key], nll = held_out_nlls(zoo.model, zoo.tokenizer, text, batch_size=BATCH)
        lengths = [len(zoo.tokenizer.decode([i])) for i in zoo.tokenizer.encode(text)]  # each token's characters
        with_interval(row, key, nll, lengths, text)
    return row


def _token_kind(tokenizer) -> str:
    return "characters" if type(tokenizer).__name__ == "CharTokenizer" else f"BPE, {tokenizer.vocab_size} tokens"


def scoreboard(run: EvaluationRun, names=tuple(NEURAL), device=None) -> list[dict]:
    """Every language model of the book on the same held-out text: n-grams first, then the zoo's models.

    Each row holds the model's :class:`~lmbook.evaluation.metrics.TextNLL` on the held-out text and on as many
    characters of its training text (the gap between them is overfitting, seen by evaluation), its
    parameters, its training time and speed (as recorded when it was trained), and its full-size
    reference where one is recorded.
    """
    train, held_out = texts(run)
    train_slice = train[: len(held_out)]
    return ngram_rows(run, train, held_out, train_slice) + [neural_row(n, held_out, train_slice, device)
                                                            for n in names]


def scoreboard_table(rows: list[dict]):
    """What the scoreboard's figure does not show, best held-out bits per character first: each model's tokens,
    size, training time and speed, and its recorded reference run's figure."""
    header = ["model", "tokens", "parameters", "training time", "tokens/s", "reference run, bits/char"]
    cells = []
    for r in sorted(rows, key=lambda r: r["held_out"].bits_per_char):
        ref = "" if r["family"] == "n-gram" else (f"{r['reference_bpc']:.3f}" if r.get("reference_bpc") else "none")
        cells.append([r["model"], r["tokens"], f"{r['params']:,}", f"{r['seconds']:.1f} s",
                      f"{r['tokens_per_second']:,.0f}", ref])
    return html_table(header, cells)


def plot_scoreboard(rows: list[dict], ax=None):
    """The scoreboard as dots with their bootstrap intervals, best held-out bits per character on top: held-out
    text and as many characters of training text, model by model."""
    rows = sorted(rows, key=lambda r: r["held_out"].bits_per_char)
    series = {what: [(r[key].bits_per_char, *r[f"{key}_interval"]) for r in rows]
              for what, key in (("held-out text", "held_out"), ("training text", "train"))}
    ax = plot_intervals([r["model"] for r in rows], series, ax=ax, xlabel="bits per character (95 % intervals "
                        "over the text's speeches)")
    ax.figure.set_size_inches(8, 0.4 * len(rows) + 1.2)
    ax.figure.tight_layout()
    return ax


def tokenizer_facts(char_row: dict, bpe_row: dict) -> dict:
    """What the prose says about the two GPTs: per-token perplexity against bits per character."""
    c, b = char_row["held_out"], bpe_row["held_out"]
    return {"chars_per_bpe_token": b.chars / b.tokens, "char_ppl": c.perplexity, "bpe_ppl": b.perplexity,
            "char_bpc": c.bits_per_char, "bpe_bpc": b.bits_per_char, "bpe_bits_per_token": b.bits_per_token,
            "bpc_winner": md(char_row["model"] if c.bits_per_char < b.bits_per_char else bpe_row["model"])}


def scoreboard_facts(rows: list[dict]) -> dict:
    """The scoreboard's winners and extremes, for the prose."""
    def best(rs: list[dict]) -> dict:
        return min(rs, key=lambda r: r["held_out"].bits_per_char)

    ngrams, neural = [r for r in rows if r["family"] == "n-gram"], [r for r in rows if r["family"] == "neural"]
    top, top_ngram, top_neural = best(rows), best(ngrams), best(neural)
    gap = max(rows, key=lambda r: r["held_out"].bits_per_char - r["train"].bits_per_char)
    return {"n_models": len(rows), "best_model": md(top["model"]), "best_bpc": top["held_out"].bits_per_char,
            "best_ngram": md(top_ngram["model"]), "best_ngram_bpc": top_ngram["held_out"].bits_per_char,
            "best_neural": md(top_neural["model"]), "best_neural_bpc": top_neural["held_out"].bits_per_char,
            "neural_vs_ngram": than(top_neural["held_out"].bits_per_char, top_ngram["held_out"].bits_per_char,
                                    "below", "above"),
            "n_references": sum(r.get("reference_bpc") is not None for r in neural),
            "gap_model": md(gap["model"]), "gap_bits": gap["held_out"].bits_per_char - gap["train"].bits_per_char,
            "gap_train_bpc": gap["train"].bits_per_char, "gap_heldout_bpc": gap["held_out"].bits_per_char,
            **best_against_next(rows)}


def best_against_next(rows: list[dict], level: float = 0.95) -> dict:
    """The best model against the runner-up on held-out text: the difference in bits per character and its
    bootstrap interval, paired (both models' figures from the same draws of speeches), and a verdict."""
    first, second = sorted(rows, key=lambda r: r["held_out"].bits_per_char)[:2]
    pairs = list(zip(first["held_out_pieces"], second["held_out_pieces"]))

    def difference(draw) -> float:
        return (ratio_of_sums([b for _, b in draw]) - ratio_of_sums([a for a, _ in draw])) / LN2

    low, high = bootstrap_interval(pairs, difference, samples=BOOTSTRAP_SAMPLES, level=level, seed=0)
    lead = second["held_out"].bits_per_char - first["held_out"].bits_per_char
    verdict = (f"its lead over the runner-up, the {second['model']}, is {lead:.3f} bits per character, with an "
               f"interval from {low:.3f} to {high:.3f} over the speeches, " +
               ("wholly above zero: a lead this text measures" if low > 0 else
                "which holds zero: on this text the two are not told apart"))
    return {"runner_up": md(second["model"]), "best_lead": lead, "best_lead_low": low, "best_lead_high": high,
            "best_low": first["held_out_interval"][0], "best_high": first["held_out_interval"][1],
            "n_speeches": len(pairs), "best_verdict": md(verdict)}


def plot_gaps(rows: list[dict], ax=None):
    """Bits per character on the held-out text and on as much training text, model by model."""
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 4))
    rows = sorted(rows, key=lambda r: r["held_out"].bits_per_char)
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["train"].bits_per_char for r in rows], width=0.4, label="training text")
    ax.bar([i + 0.2 for i in x], [r["held_out"].bits_per_char for r in rows], width=0.4, label="held-out text")
    ax.set_xticks(list(x), [r["model"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("bits per character")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return ax


# --- Perplexity against stride ------------------------------------------------------------
def stride_sweep(model, tokenizer, text: str, strides) -> dict[int, dict]:
    """The same text scored with each stride: its :class:`TextNLL`, the windows read and the seconds taken."""
    out = {}
    n_predictions = len(tokenizer.encode(text)) - 1
    for stride in strides:
        start = time.perf_counter()
        score = score_text(model, tokenizer, text, stride=stride, batch_size=BATCH)
        out[stride] = {"score": score, "seconds": time.perf_counter() - start,
                       "windows": len(sliding_windows(n_predictions, context_length(model), stride))}
    return out


def position_profile(model, tokenizer, text: str) -> torch.Tensor:
    """Mean NLL in nats at each position of windows laid side by side (C,): how much the context helps."""
    context = context_length(model)
    nll = token_nlls(model, tokenizer.encode(text), batch_size=BATCH)  # stride = context
    whole = len(nll) // context * context
    return nll[:whole].view(-1, context).mean(0)


def plot_stride(sweep: dict[int, dict], profile: torch.Tensor, axes=None):
    """Bits per character against stride (log scale), and the loss at each position of a window."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 4))
    strides = sorted(sweep)
    axes[0].plot(strides, [sweep[s]["score"].bits_per_char for s in strides], marker="o")
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("stride (tokens)")
    axes[0].set_ylabel("held-out bits per character")
    axes[0].set_title("smaller strides: more context per scored token")
    axes[1].plot(range(1, len(profile) + 1), (profile / LN2).tolist(), marker=".")
    axes[1].set_xlabel("tokens read (position in the window)")
    axes[1].set_ylabel("bits per character")
    axes[1].set_title("windows side by side: loss at each position")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].figure.tight_layout()
    return axes


def stride_facts(sweep: dict[int, dict], profile: torch.Tensor) -> dict:
    """What the prose says about the sweep: the loss at both ends of the strides and of a window, and the cost."""
    widest, narrowest = max(sweep), min(sweep)
    w, n = sweep[widest], sweep[narrowest]
    best = min(sweep, key=lambda s: sweep[s]["score"].bits_per_char)
    lowest = int(profile.argmin())  # the window position with the lowest loss: that many characters of context
    rise = float(profile[-1] - profile[lowest]) / LN2
    if best == narrowest:
        why = "the smallest stride, as the extra context would have it"
    else:
        within = [sweep[s]["score"].bits_per_char for s in sweep if s <= best]
        why = (f"not the smallest: in the right panel the loss is lowest at position {lowest + 1} of the window, and "
               f"the last position costs {rise:.3f} bits more, so context beyond about {lowest + 1} characters buys "
               f"this model nothing, and the strides up to {best} differ by at most "
               f"{max(within) - min(within):.3f} bits per character")
    return {"context": widest, "smallest_stride": narrowest, "bpc_side_by_side": w["score"].bits_per_char,
            "min_context": widest - narrowest, "best_stride_why": md(why),
            "best_stride": best, "best_stride_bpc": sweep[best]["score"].bits_per_char,
            "bpc_smallest_stride": n["score"].bits_per_char,
            "stride_gain": w["score"].bits_per_char - n["score"].bits_per_char,
            "window_ratio": n["windows"] / w["windows"], "time_ratio": n["seconds"] / w["seconds"],
            "first_position_bits": float(profile[0]) / LN2, "last_position_bits": float(profile[-1]) / LN2,
            "stride_scored_chars": w["score"].chars}


# --- The crossover: when the neural models pass the 5-gram (chapter 3's equal-time record) ---------------
def record_windows(record) -> list[str]:
    """The held-out windows chapter 3's equal-time record (``lmbook.runs.reference.load("ch03", level="cpu")``)
    evaluated every model on, at every evaluation, as texts of ``eval_block + 1`` characters: the first is context
    only."""
    from ..text.data import shakespeare_chars
    s = record.recipe
    tokenizer, _, val_data = shakespeare_chars()
    batches = equal_time_windows(s["eval_block"], s["eval_batch"], s["eval_seed"], val_data)
    windows = []
    for _ in range(s["eval_iters"]):
        x, y = batches()  # (B, T), (B, T)
        windows += [tokenizer.decode(row + [last]) for row, last in zip(x.tolist(), y[:, -1].tolist())]
    return windows


def windows_bits(model: NGramLM, windows: list[str]) -> float:
    """An n-gram model's bits per predicted character over ``windows``, each read from a blank start as the neural
    models read them (every character after a window's first predicted from the window alone)."""
    scores = [ngram_score(model, w) for w in windows]
    return math.fsum(s.nats for s in scores) / sum(s.tokens for s in scores) / LN2


def crossing(seconds: list[float], bits: list[float], line: float) -> float | None:
    """The first time a curve (``bits`` at ``seconds``) reaches ``line``, linearly between evaluations; ``None``
    if it never does."""
    for i in range(1, len(bits)):
        if bits[i] <= line:
            if bits[i - 1] <= line:
                return seconds[i - 1]
            share = (bits[i - 1] - line) / (bits[i - 1] - bits[i])
            return seconds[i - 1] + share * (seconds[i] - seconds[i - 1])
    return None


def extrapolated_crossing(seconds: list[float], bits: list[float], line: float) -> float | None:
    """Where the second half of a curve, continued as a straight line in log-seconds, would reach ``line``: an
    extrapolation (``None`` if that half does not fall)."""
    timed = [(t, b) for t, b in zip(seconds, bits) if t > 0]  # a log needs time: not the evaluation at 0 s
    half = timed[len(timed) // 2:]
    if len(half) < 2:
        return None
    slope, intercept = np.polyfit([math.log(t) for t, _ in half], [b for _, b in half], 1)
    return None if slope >= 0 else math.exp((line - intercept) / slope)


def crossover_facts(record, line: float | None, name: str) -> dict:
    """When each model of chapter 3's equal-time record passes ``line`` (the n-gram ``name``'s bits per character
    on the same windows): ``crossover_verdict`` says it per model, measured, or else extrapolated and said so."""
    if record is None:
        return {"crossover_verdict": md(
            "No equal-time run is recorded in this copy of the book, so no crossover can be measured: "
            "`python -m lmbook.runs.reference record ch03 --level cpu` records one.")}
    sentences, facts, guessed = [], {"crossover_line": line, "crossover_ngram": md(name)}, []
    for label, history in record.histories.items():
        bits = [loss / LN2 for loss in history.eval_loss["val"]]
        seconds, model = history.eval_seconds, EQUAL_TIME_NAMES.get(label, label)
        at = crossing(seconds, bits, line)
        facts[f"crossover_{label}"] = float("nan") if at is None else at  # NaN: no crossing measured
        if at is not None:
            sentences.append(f"The {model} passes it after {at:,.0f} s of training and ends at {bits[-1]:.3f}.")
            continue
        ahead = extrapolated_crossing(seconds, bits, line)
        trend = ("the same kind of line through its curve" if guessed else
                 "a straight line in log-seconds through the second half of its curve")
        sentences.append(f"The {model} does not pass it in its {seconds[-1]:,.0f} s (it ends at {bits[-1]:.3f}); " + (
            f"{trend} would reach it after about {ahead:,.0f} s." if ahead is not None else
            "the second half of its curve does not fall, so no trend says when it would."))
        guessed += [f"the {model}'s"] if ahead is not None else []
    if guessed:
        sentences.append(capital(and_list(guessed)) + (" times are extrapolations, not measurements." if
                         len(guessed) > 1 else " time is an extrapolation, not a measurement."))
    facts["crossover_verdict"] = md(f"On these windows the {name} scores {line:.3f} bits per character. "
                                    + " ".join(sentences))
    return facts


def plot_crossover(record, line: float, name: str, ax=None):
    """Chapter 3's equal-time curves (held-out bits per character against seconds of training) with the n-gram
    ``name`` as a line at ``line``, and a mark where each curve passes it."""
    ax = plot_equal_time(record, ax=ax)
    ax.axhline(line, color="gray", ls="--", lw=1, label=f"{name}, same windows")
    for label, history in record.histories.items():
        at = crossing(history.eval_seconds, [loss / LN2 for loss in history.eval_loss["val"]], line)
        if at is not None:
            ax.plot([at], [line], "kx", ms=8)
    top = max(h.eval_loss["val"][1] for h in record.histories.values()) / LN2  # from the first evaluation on
    ax.set_ylim(min(min(h.eval_loss["val"]) for h in record.histories.values()) / LN2 - 0.1, max(top, line) + 0.2)
    ax.legend()
    return ax
