"""Chapter 3's runs: a character-level GPT on Tiny Shakespeare, its position tables and its LayerNorms.

``RUNS`` is the chapter's GPT (its full size is the recipe of the best speed run in
``benchmarks/NOTES.md``); ``POSITION_RUNS`` compare position tables and ``NORM_RUNS`` pre- against
post-LN, each at both sizes. The reference recipes (``python -m lmbook.runs.reference record ch03``):
:func:`record_gpu`, the full-size GPT, and :func:`record_cpu`, the GPT against chapter 2's LSTM and GRU
at equal training time on two CPU cores (chapters 3 and 7 read it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..models.attention import attention_cost
from ..text.data import RandomBatches, SequentialBatches, shakespeare_chars
from ..decoding.generate import complete
from ..training.history import History
from ..evaluation.metrics import split_loss
from ..models.rnn import RNNLM
from .common import EQUAL_TIME_NAMES, equal_time_windows, GPT_RUNS, GPTRun, make_char_gpt, Settings, train_char_gpt
from .common import IN_ORDER, CharRun, make_char_model
from .recording import measure_speed, steps_within




RUNS = GPT_RUNS  # the chapter's GPT at each size (lmbook.runs.common, which others read it from)
# small runs that compare position tables: seconds each on a CPU (one layer at the fast size,
# where a model without position information is exactly blind to the order of its context)
POSITION_RUNS = {
    "full": RUNS["full"].replace(n_layer=4, n_head=4, n_embd=256, block_size=128, dropout=0.0, batch_size=64,
                                 max_steps=1000, lr=1e-3, min_lr=1e-4, warmup_steps=100, schedule="cosine",
                                 weight_decay=0.1, eval_interval=100, eval_iters=20),
    "fast": RUNS["fast"].replace(n_layer=1, n_embd=64, block_size=64, batch_size=32, max_steps=300, lr=5e-3,
                                 warmup_steps=20, eval_interval=50, eval_iters=5),
}
# deeper, narrow stacks at a high learning rate, to compare pre-LN with post-LN
NORM_RUNS = {
    "full": RUNS["full"].replace(n_layer=12, n_head=4, n_embd=128, block_size=128, dropout=0.0, batch_size=64,
                                 weight_decay=0.1, max_steps=600, lr=1e-2, min_lr=0.0, schedule="linear",
                                 warmup_steps=100, eval_interval=50, eval_iters=20),
    "fast": RUNS["fast"].replace(n_layer=6, n_embd=64, block_size=64, batch_size=16, max_steps=200, lr=1e-2,
                                 warmup_steps=20, eval_interval=25, eval_iters=2),
}
VARIANTS = {  # the model choices the chapter compares, each against the default (lmbook.models.variants.gpt_class)
    "positions": {"learned": {}, "sinusoidal": {"position": "sinusoidal"},
                  "indexed by token id (mistake)": {"position": "token-id"}},
    "norm": {"pre-LN": {}, "post-LN": {"norm": "post"}},
}


def record_gpu(rec) -> None:
    """Chapter 3's full-size experiment: the character-level GPT trained, sampled and measured.

    Recorded by ``python -m lmbook.runs.reference record ch03 --level gpu`` into ``lmbook/references/ch03-gpu.json``.
    """
    run, cost, device = rec.settings["gpt"], rec.settings["attention_cost"], rec.device
    tokenizer, train_data, val_data = shakespeare_chars()
    model = make_char_gpt(run, tokenizer.vocab_size, device)
    history = train_char_gpt(model, run, train_data, val_data, rec=rec)
    for t in (0.5, 0.8, 1.0):
        text = rec.compute(f"sample {t}", lambda: complete(model, tokenizer, "ROMEO:", 400, temperature=t, seed=0))
        rec.sample(f"gpt {t}", text)
    rec.result("val_loss_whole_split", rec.compute("val loss", lambda: split_loss(model, val_data, run.block_size)))
    rec.result("params", model.num_params())
    rec.result("tokens_per_second", history.tokens_per_second)
    rec.result("seconds", history.seconds)
    rec.result("cost", rec.compute("attention cost", lambda: attention_cost(**cost, device=device)))


@dataclass(frozen=True)
class EqualTimeRun(Settings):
    """Chapter 3's CPU reference: its GPT against chapter 2's LSTM and GRU, each trained for ``seconds`` of wall
    time on two CPU threads and evaluated on the same held-out windows along the way.

    Each run's ``max_steps`` is only a cap (the probe picks the steps, :func:`record_cpu`), and its
    ``eval_interval`` and ``eval_iters`` give way to ``evaluations`` and ``eval_iters`` here.
    """

    seconds: float  # wall time of each model's training, its evaluations included
    evaluations: int  # evaluations after the one at step 0: the points of each curve
    eval_iters: int  # batches of held-out windows per evaluation
    eval_block: int  # characters per held-out window, the same for every model (the GPT's context)
    eval_batch: int  # windows per batch
    probe_steps: int  # training steps timed (after three more) to choose each model's steps
    sample_tokens: int
    gpt: GPTRun
    lstm: CharRun
    gru: CharRun
    eval_seed: int = 12345  # of the held-out windows, the same for every model and every evaluation

    def runs(self) -> dict:
        return {"gpt": self.gpt, "lstm": self.lstm, "gru": self.gru}


# Sizes for 8 minutes on two cores each, from the fast recipes' measured speeds and their scaling (not swept at
# this budget): a 4-layer GPT of 128 channels at context 64 (0.81 M parameters), and LSTM and GRU of two
# 256-unit layers (0.88 M and 0.66 M), each at its family's usual settings (AdamW, clipping at 1, decay to 0).
_RNN = CharRun(n_layer=2, n_embd=64, n_hidden=256, dropout=0.0, bptt=64, batch_size=32, max_steps=20_000, lr=4e-3,
               min_lr=0.0, warmup_steps=50, eval_interval=100, eval_iters=8)
EQUAL_TIME = EqualTimeRun(
    seconds=480.0, evaluations=24, eval_iters=8, eval_block=64, eval_batch=32, probe_steps=20, sample_tokens=400,
    gpt=GPTRun(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, batch_size=32, max_steps=20_000,
               lr=5e-3, min_lr=0.0, warmup_steps=100, schedule="linear", weight_decay=0.1, beta2=0.99,
               eval_interval=100, eval_iters=8),
    lstm=_RNN, gru=_RNN)
RECIPE_VERSION = "1"  # change it when a recipe's code changes what it records
REFERENCE = {  # the settings of the reference recipes, per level
    "gpu": {"gpt": RUNS["full"],
            "attention_cost": dict(lengths=(256, 512, 1024, 2048, 4096), batch=8, n_head=6, head_size=64)},
    "cpu": EQUAL_TIME,
}
_TINY_RNN = _RNN.replace(n_layer=1, n_embd=8, n_hidden=16, bptt=16, batch_size=4, max_steps=6, warmup_steps=1)
SMOKE = {  # the same recipes in seconds, for the tests
    "gpu": {"gpt": RUNS["fast"].replace(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, max_steps=3,
                                        warmup_steps=1, eval_interval=3, eval_iters=1),
            "attention_cost": dict(lengths=(16, 32), batch=1, n_head=2, head_size=8, repeats=1)},
    "cpu": EQUAL_TIME.replace(seconds=2.0, evaluations=2, eval_iters=1, eval_block=16, eval_batch=4, probe_steps=2,
                              sample_tokens=20, lstm=_TINY_RNN, gru=_TINY_RNN,
                              gpt=EQUAL_TIME.gpt.replace(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4,
                                                         max_steps=6, warmup_steps=1)),
}


def record_cpu(rec) -> None:
    """Chapter 3's CPU reference: the GPT, the LSTM and the GRU at equal training time (chapters 3 and 7).

    Each model trains for ``seconds`` of wall time on two CPU threads, evaluated on the same held-out windows
    ``evaluations`` times, so its curve of held-out loss against seconds exists; then its loss over the
    whole validation split and one sample. Budget: three trainings of 8 minutes and about a minute of
    probes, evaluations and samples, under 30 minutes in all.

    How the time is shared: a short probe times each model's training step and evaluation batch
    (:func:`~lmbook.runs.recording.measure_speed`), and the model gets the steps that fit its ``seconds``
    (:func:`~lmbook.runs.recording.steps_within`), with its schedule (warm-up, then decay to zero) over
    those steps, as a run tuned for a fixed budget would have. A clock that stopped training mid-schedule
    instead would leave each model at whatever learning rate it had reached, penalising the one whose
    steps were misjudged, and would make a resumed run's length depend on timings. The probe's result is
    kept, so a resumed recording trains the same steps; the curves are plotted against the seconds each
    evaluation was actually reached at (``History.eval_seconds``), so a slower or faster host shows.
    """
    s, device = rec.settings, rec.device
    tokenizer, train_data, val_data = shakespeare_chars()
    V = tokenizer.vocab_size
    models = {"gpt": make_char_gpt(s.gpt, V, device), "lstm": make_char_model("lstm", s.lstm, V, device),
              "gru": make_char_model("gru", s.gru, V, device)}

    def batches(label: str):
        run = s.runs()[label]
        if label == "gpt":
            return RandomBatches(train_data, run.block_size, run.batch_size, device, seed=0)
        return SequentialBatches(train_data, run.bptt, run.batch_size, device)  # the state carried, as in chapter 2

    def held_out() -> RandomBatches:  # the same windows for every model and every evaluation
        return equal_time_windows(s.eval_block, s.eval_batch, s.eval_seed, val_data, device)

    speeds = {label: rec.compute(f"speed {label}", lambda: measure_speed(
        models[label], batches(label), run.train_config(), held_out(), s.probe_steps))
        for label, run in s.runs().items()}
    steps = {label: min(run.max_steps, steps_within(s.seconds, speeds[label], s.evaluations, s.eval_iters))
             for label, run in s.runs().items()}
    rec.plan(steps, {label: s.seconds / n for label, n in steps.items()})  # each planned to take `seconds`
    runs = {}
    for label, run in s.runs().items():
        config = run.train_config(max_steps=steps[label], eval_interval=max(1, steps[label] // s.evaluations),
                                  eval_iters=s.eval_iters, desc=label, seed=0)
        model = models[label]
        history = rec.train(label, model, batches(label), config, {"val": held_out()})
        runs[label] = {**rec.compute(f"evaluate {label}", lambda: _summary(model, history, val_data, s.eval_block)),
                       "probe": speeds[label]}
        rec.sample(label, rec.compute(f"sample {label}", lambda: complete(
            model, tokenizer, "ROMEO:", max_new_tokens=s.sample_tokens, temperature=0.8, seed=0)))
    rec.result("runs", runs)


def _summary(model, history: History, val_data: torch.Tensor, block: int) -> dict:
    """What the equal-time table shows of one model: size, steps, time, and the loss over the whole validation
    split in nats and bits per character (windows of ``block`` characters each read from scratch, as the curves
    read them; a recurrent model also in order, its state carried: chapter 2's reading)."""
    loss = split_loss(model, val_data, block)
    summary = {"params": model.num_params(), "steps": len(history.steps), "seconds": history.seconds,
               "tokens_per_second": history.tokens_per_second, "val_loss": loss, "bits_per_char": loss / math.log(2)}
    if isinstance(model, RNNLM):
        in_order = split_loss(model, val_data, **IN_ORDER)
        summary.update(val_loss_in_order=in_order, bits_per_char_in_order=in_order / math.log(2))
    return summary


def equal_time_facts(record) -> dict:
    """What chapters 3 and 7 say of the equal-time record (``load("ch03", level="cpu")``, or ``None``): each
    model's held-out bits per character over the whole validation split after its training time, their order,
    where the record comes from, and ``equal_time_verdict``, the sentences that say it (or that nothing is
    recorded)."""
    from IPython.display import Markdown

    from ..display.show import and_list, ordering

    if record is None:
        return {"equal_time_verdict": Markdown(
            "No equal-time run is recorded in this copy of the book: `python -m lmbook.runs.reference record ch03 "
            "--level cpu` makes one, in about half an hour on two cores.")}
    runs = record.results["runs"]
    bits = {EQUAL_TIME_NAMES.get(label, label): r["bits_per_char"] for label, r in runs.items()}
    seconds = max(r["seconds"] for r in runs.values())
    facts = {"equal_time_source": Markdown(record.describe()), "equal_time_order": ordering(bits),
             "equal_time_seconds": seconds, "equal_time_minutes": record.minutes}
    for label, r in runs.items():
        seen = r["steps"] * record.histories[label].tokens_per_step  # training characters read in its time
        facts.update({f"equal_time_{label}_bpc": r["bits_per_char"], f"equal_time_{label}_params": r["params"],
                      f"equal_time_{label}_chars": seen})
        if "bits_per_char_in_order" in r:
            facts[f"equal_time_{label}_in_order"] = r["bits_per_char_in_order"]
    name = EQUAL_TIME_NAMES.get
    read = and_list(f"{facts[f'equal_time_{label}_chars']:,} (the {name(label, label)}, {r['params']:,} parameters)"
                    for label, r in runs.items())
    in_order = [f"the {name(label, label)} {r['bits_per_char_in_order']:.3f}"
                for label, r in runs.items() if "bits_per_char_in_order" in r]
    shortest = min(r["seconds"] for r in runs.values())  # every curve reaches this time: the equal-time reading
    at_shortest = {name(label, label): float(np.interp(shortest, h.eval_seconds, h.eval_loss["val"])) / math.log(2)
                   for label, h in record.histories.items()}
    facts.update(equal_time_shortest=shortest, equal_time_at_shortest=ordering(at_shortest))
    took = and_list([f"{r['seconds']:.0f} s ({name(label, label)})" for label, r in runs.items()])
    facts["equal_time_verdict"] = Markdown(
        f"Each model was given the steps that a speed probe said would fill {record.recipe['seconds']:.0f} seconds, "
        f"and took {took} of wall time ({record.describe()}); in that time they read {read} training "
        f"characters. Held-out "
        f"bits per character over the whole validation split, in windows of the GPT's context, lowest first: "
        f"{ordering(bits).data}."
        + (f" Read in order with their state carried, the recurrent models reach {and_list(in_order)}."
           if in_order else "")
        + f" On the curves, at {shortest:.0f} s, when the quickest run ended and every curve has a value: "
          f"{ordering(at_shortest).data}.")
    return facts


def reference_gpt(record) -> tuple[str, str]:
    """Chapter 3's GPT in one of its records (``lmbook.runs.reference.load_all("ch03")``): a line of its figures and
    its sample at temperature 0.8. The GPU record holds the full-size GPT alone; the CPU record, the GPT of the
    equal-time run (:func:`record_cpu`)."""
    if record.level == "gpu":
        r, steps = record.results, record.recipe["gpt"]["max_steps"]
        loss, text = r["val_loss_whole_split"], record.samples.get("gpt 0.8", "")
    else:
        r = record.results["runs"]["gpt"]
        steps, loss, text = r["steps"], r["val_loss"], record.samples.get("gpt", "")
    line = (f"{record.level} reference: held-out loss {loss:.4f} nats ({loss / math.log(2):.3f} bits) per character "
            f"over the whole validation split after {steps:,} steps; {r['params']:,} parameters, "
            f"{r['tokens_per_second']:,.0f} characters/s, {r['seconds']:.0f} s of training ({record.describe()})")
    return line, text


def order_verdict(moved: float, learned: float):
    """What the chapter says of the mistaken position table (Markdown): how much its prediction depends on the order
    of its context (``moved``, the total-variation distance that shuffling causes) against the learned table's
    (``learned``); a distance that shows as ``0.000`` is no dependence at all, to the digits the page prints."""
    from ..display.show import md, than

    if f"{moved:.3f}" == "0.000":
        return md("its prediction does not depend on the order of its context, to three decimals")
    return md(f"its prediction depends {than(moved, learned, 'less', 'more').data} on the order of its context")


def compared_loss(history: History, other: History):
    """``lower than``, ``higher than`` or ``as low as`` (Markdown): one run's final held-out loss against another's,
    to the three decimals the page prints."""
    from ..display.show import md

    a, b = round(history.eval_loss["val"][-1], 3), round(other.eval_loss["val"][-1], 3)
    return md("as low as" if a == b else "lower than" if a < b else "higher than")
