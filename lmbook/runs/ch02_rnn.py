"""Chapter 2's runs: RNN, LSTM and GRU language models on the characters of Tiny Shakespeare.

Training reads the corpus in order (:class:`~lmbook.text.data.SequentialBatches`) and each model carries its
state from batch to batch: truncated backpropagation through time, ``bptt`` characters at a time.
:func:`record_gpu` is the chapter's reference recipe at both levels (``python -m lmbook.runs.reference record ch02``).
"""

from __future__ import annotations


import torch

from ..text.data import RandomBatches, shakespeare_chars
from ..decoding.generate import complete
from ..training.history import History
from ..evaluation.metrics import split_loss
from ..models.rnn import CELLS, NAMES, RNNLM, input_gradient_norms, scale_recurrent_weights
from .common import CharRun, IN_ORDER, make_char_model, train_char_model




RUNS = {
    # a GPU, minutes for the three cells together
    "full": CharRun(n_layer=2, n_embd=128, n_hidden=512, dropout=0.2, bptt=64, batch_size=128,
                    max_steps=3000, lr=3e-3, min_lr=3e-4, warmup_steps=100, eval_interval=250, eval_iters=40),
    # two CPU cores, under half a minute a cell
    "fast": CharRun(n_layer=1, n_embd=48, n_hidden=128, dropout=0.0, bptt=64, batch_size=32,
                    max_steps=500, lr=1e-2, min_lr=1e-3, warmup_steps=20, eval_interval=100, eval_iters=10),
}
TEMPERATURES = (0.5, 0.8, 1.0)
PROBE = dict(block_size=100, batch_size=64, seed=0)  # the validation windows the gradient picture reads



def train_cells(run: CharRun, train_data: torch.Tensor, val_data: torch.Tensor, vocab_size: int,
                device=None, cells: tuple[str, ...] = CELLS, rec=None) -> dict[str, tuple[RNNLM, History]]:
    """One model of each cell, built from the same seed and trained the same way: ``{cell: (model, history)}``."""
    trained = {}
    for cell in cells:
        model = make_char_model(cell, run, vocab_size, device)
        trained[cell] = model, train_char_model(model, run, train_data, val_data, rec=rec)
    return trained


def summarize(model: RNNLM, history: History, val_data: torch.Tensor | None = None) -> dict:
    """The numbers the chapter's table shows for one run (with ``val_data``: the loss read in order too)."""
    summary = {
        "params": model.num_params(),
        "val_loss": history.eval_loss["val"][-1],
        "best_val_loss": history.best("val")[1],
        "tokens_per_second": history.tokens_per_second,
        "seconds": history.seconds,
    }
    if val_data is not None:
        summary["val_loss_in_order"] = split_loss(model, val_data, **IN_ORDER)
    return summary


def results_table(results: dict[str, dict]) -> str:
    """A Markdown table of :func:`summarize`'s numbers, one row a run."""
    in_order = all("val_loss_in_order" in r for r in results.values())
    lines = ["| model | parameters | val loss (windows) | best | val loss (in order) | tokens/s | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for cell, r in results.items():
        read = f"{r['val_loss_in_order']:.3f}" if in_order else "-"
        lines.append(f"| {NAMES.get(cell, cell)} | {r['params']:,} | {r['val_loss']:.3f} | {r['best_val_loss']:.3f} "
                     f"| {read} | {r['tokens_per_second']:,.0f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


RECIPE_VERSION = "2"  # change it when the recipe's code changes what it records
# Two CPU cores, about 25 minutes for the recipe: two layers of 256 units (the LSTM's 0.88 M parameters), each
# cell and the unclipped plain RNN for the same 1,500 steps of 32 rows of 64 characters (3.1 M characters,
# about three passes over the training text). benchmarks/NOTES.md has the measured speeds behind it.
CPU = CharRun(n_layer=2, n_embd=64, n_hidden=256, dropout=0.0, bptt=64, batch_size=32, max_steps=1500, lr=4e-3,
              min_lr=4e-4, warmup_steps=50, eval_interval=75, eval_iters=10)
REFERENCE = {"gpu": RUNS["full"], "cpu": CPU}  # the settings of the reference recipes, per level
_TINY = RUNS["fast"].replace(n_embd=8, n_hidden=16, bptt=16, batch_size=4, max_steps=4, warmup_steps=1,
                             eval_interval=2, eval_iters=1)
SMOKE = {"gpu": _TINY, "cpu": _TINY}  # the same recipes in seconds, for the tests
UNCLIPPED = "rnn unclipped"  # the label of the plain RNN trained without clipping, beside the clipped one


def record_gpu(rec) -> None:
    """Chapter 2's reference experiment: the three cells trained on Tiny Shakespeare for the same steps, the plain
    RNN once more without gradient clipping, then the gradient picture and samples of each.

    Recorded by ``python -m lmbook.runs.reference record ch02 --level gpu`` (the full size) or ``--level cpu`` (two
    CPU cores) into ``lmbook/references/ch02-<level>.json``.
    """
    run, device = rec.settings, rec.device
    tokenizer, train_data, val_data = shakespeare_chars()
    trained = train_cells(run, train_data, val_data, tokenizer.vocab_size, device, rec=rec)
    unclipped = make_char_model("rnn", run, tokenizer.vocab_size, device)
    history = train_char_model(unclipped, run, train_data, val_data, rec=rec, label=UNCLIPPED, grad_clip=None,
                               desc="RNN, no clipping")

    def gradient_norms() -> dict:
        x, y = RandomBatches(val_data, device=device, **PROBE)()
        at_init = {cell: make_char_model(cell, run, tokenizer.vocab_size, device) for cell in CELLS}
        at_init["rnn x5"] = scale_recurrent_weights(make_char_model("rnn", run, tokenizer.vocab_size, device), 5.0)
        return {"init": {name: input_gradient_norms(m, x, y).tolist() for name, m in at_init.items()},
                "trained": {cell: input_gradient_norms(m, x, y).tolist() for cell, (m, _) in trained.items()}}

    runs = {**trained, UNCLIPPED: (unclipped, history)}
    rec.result("runs", rec.compute("runs", lambda: {label: {**summarize(model, history, val_data),
                                                            "val_loss_split": split_loss(model, val_data, run.bptt)}
                                                     for label, (model, history) in runs.items()}))
    rec.result("gradient_norms", rec.compute("gradient norms", gradient_norms))
    for cell, (model, _) in trained.items():
        for t in TEMPERATURES:
            text = rec.compute(f"sample {cell} {t}", lambda: complete(model, tokenizer, "ROMEO:", max_new_tokens=400,
                                                                      temperature=t, seed=0))
            rec.sample(f"{cell} {t}", text)


record_cpu = record_gpu  # one recipe, two sizes


def reference_facts(record) -> dict:
    """What chapter 2 says of its reference record (``lmbook.runs.reference.load("ch02")``, or ``None``): each run's
    held-out bits per character over the whole validation split (windows of ``bptt`` characters from a blank
    state, and in order with the state carried), whether gating beat the plain RNN on the same steps, and what
    clipping changed for the plain RNN; ``reference_verdict`` says it in sentences."""
    import math

    from IPython.display import Markdown

    from ..display.show import ordering

    if record is None:
        return {"reference_verdict": Markdown(
            "No reference run is recorded in this copy of the book: "
            "`python -m lmbook.runs.reference record ch02` makes "
            "one (about 25 minutes on two CPU cores).")}
    runs, bits = record.results["runs"], lambda nats: nats / math.log(2)
    split = {label: bits(r.get("val_loss_split", r["val_loss"])) for label, r in runs.items()}
    in_order = {label: bits(r["val_loss_in_order"]) for label, r in runs.items()}
    cells = {NAMES[cell]: split[cell] for cell in CELLS}
    gated = [NAMES[c] for c in ("lstm", "gru") if split[c] < split["rnn"]]
    steps = len(record.histories["rnn"].steps)
    facts = {"reference_source": Markdown(record.describe()), "reference_order": ordering(cells),
             "reference_steps": steps, "reference_chars": steps * record.histories["rnn"].tokens_per_step,
             **{f"reference_{cell.replace(' ', '_')}_bpc": split[cell] for cell in runs},
             **{f"reference_{cell.replace(' ', '_')}_in_order": in_order[cell] for cell in runs}}
    gating = ("both gated cells end below the plain RNN" if len(gated) == 2 else
              f"only the {gated[0]} ends below the plain RNN" if gated else
              "neither gated cell ends below the plain RNN")
    text = (f"In the reference run ({record.describe()}), after {steps:,} steps of the same batches "
            f"({facts['reference_chars']:,} characters), held-out bits per character over the whole validation split, "
            f"in windows of {record.recipe['bptt']} characters from a blank state, lowest first: "
            f"{ordering(cells).data}; {gating}. Read in order with the state carried: "
            + ", ".join(f"{NAMES[c]} {in_order[c]:.3f}" for c in CELLS) + ".")
    if UNCLIPPED in runs:
        clipped, free = record.histories["rnn"], record.histories[UNCLIPPED]
        threshold = record.recipe["grad_clip"]
        over = sum(n > threshold for n in clipped.grad_norm) / max(1, len(clipped.grad_norm))
        facts.update(reference_unclipped_bpc=split[UNCLIPPED], reference_clip_over=over,
                     reference_max_norm_clipped=max(clipped.grad_norm), reference_max_norm_free=max(free.grad_norm))
        change = split[UNCLIPPED] - split["rnn"]
        direction = "worse" if change > 0 else "better" if change < 0 else "the same"
        text += (f" The plain RNN trained again without clipping ends at {split[UNCLIPPED]:.3f} bits per character "
                 f"against {split['rnn']:.3f} with it ({direction} by {abs(change):.3f}); its largest gradient norm "
                 f"was {max(free.grad_norm):.2g}, and the clipped run's norm was above the threshold of "
                 f"{threshold:g} at {over:.0%} of its steps.")
    facts["reference_verdict"] = Markdown(text)
    return facts
