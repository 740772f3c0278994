"""Chapter 8's architecture experiments: GPT-2's block turned into Llama's one change at a time, and how far each
position scheme carries past the context it was trained on.

- ``LADDER``: the rungs from GPT-2 (learned positions, LayerNorm, GELU, biases) to a Llama block (RoPE, RMSNorm,
  SwiGLU, no biases, grouped-query attention), each rung adding one change to the one before.
  :func:`ablation` trains every rung with every seed at equal steps, SwiGLU's width set so that the rungs hold
  about the same number of parameters (:func:`matched_width`); the reference recipe also trains each rung for
  the same seconds, its steps set by the rungs' speeds probed side by side (:func:`step_seconds`).
  :func:`ablation_summary` gives each rung's mean held-out loss over seeds and the change from the rung before,
  with intervals.
- :func:`length_experiment`: learned positions against RoPE trained at one context and evaluated at longer
  ones, RoPE also with its positions interpolated (Chen et al., 2023) or its base raised, and both after a
  short training at the longer context; :func:`position_losses` is the loss at each position of a window.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..display.show import and_list, ordering, than
from ..evaluation.intervals import mean_interval
from ..evaluation.metrics import split_loss
from ..interface import num_params
from ..models.llama import Llama
from ..runtime import get_device
from ..text.data import RandomBatches
from .common import GPTRun, Settings, make_char_llama, train_char_gpt

GPT2 = dict(position="learned", norm="layer", mlp="gelu", bias=True)
LADDER = (  # (name, LlamaConfig choices): each rung changes one thing of the rung before
    ("GPT-2", GPT2),
    ("+ RoPE", {**GPT2, "position": "rope"}),
    ("+ RMSNorm", {**GPT2, "position": "rope", "norm": "rms"}),
    ("+ SwiGLU", {**GPT2, "position": "rope", "norm": "rms", "mlp": "swiglu"}),
    ("- biases", dict(position="rope", norm="rms", mlp="swiglu", bias=False)),
    ("+ GQA", dict(position="rope", norm="rms", mlp="swiglu", bias=False, n_kv_head="half")),
)


@dataclass(frozen=True)
class ArchitectureRun(Settings):
    """The sizes of chapter 8's runs: the ladder's shape and training (``run``), its seeds, and the length
    experiment's longer contexts (``long_factor`` times the training context) and its short training there."""

    run: GPTRun
    seeds: tuple[int, ...]
    equal_time: bool  # also train each rung for the GPT-2 rung's seconds (the reference recipe)
    long_factor: int  # the length experiment evaluates at long_factor x the training context
    long_steps: int  # steps of training at the longer context (position interpolation's fine-tuning)
    eval_windows: int  # windows of the longer context the position losses average over
    eval_chars: int | None = None  # held-out characters each run is scored on (None: the whole split)


RUNS = {
    # a GPU: a GPT of chapter 3's full shape turned into a Llama step by step, three seeds
    "full": ArchitectureRun(
        run=GPTRun(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.0, batch_size=64, max_steps=1500,
                   lr=2e-3, min_lr=0.0, warmup_steps=50, schedule="linear", weight_decay=0.1, beta2=0.99,
                   eval_interval=250, eval_iters=10),
        seeds=(0, 1, 2), equal_time=False, long_factor=4, long_steps=200, eval_windows=64),
    # two CPU cores, well under a minute of training: one seed of each rung
    "fast": ArchitectureRun(
        run=GPTRun(n_layer=2, n_head=4, n_embd=64, block_size=32, dropout=0.0, batch_size=16, max_steps=250,
                   lr=5e-3, min_lr=0.0, warmup_steps=15, schedule="linear", weight_decay=0.1, beta2=0.99,
                   eval_interval=50, eval_iters=2),
        seeds=(0,), equal_time=False, long_factor=4, long_steps=40, eval_windows=32, eval_chars=20_000),
}


def rung_choices(choices: dict, run: GPTRun) -> dict:
    """A rung's :class:`~lmbook.models.llama.LlamaConfig` choices for ``run``'s shape (GQA's "half": n_head / 2)."""
    if choices.get("n_kv_head") == "half":
        return {**choices, "n_kv_head": max(1, run.n_head // 2)}
    return dict(choices)


def matched_width(run: GPTRun, vocab_size: int, choices: dict, target: int) -> dict:
    """``choices`` with SwiGLU's ``intermediate_size`` set so that the model's parameters come closest to
    ``target`` (GELU rungs have no free width and come back as they are)."""
    if choices.get("mlp", "swiglu") != "swiglu":
        return choices
    counts = {w: num_params(make_char_llama(run, vocab_size, "cpu", intermediate_size=w, **choices)) for w in (8, 16)}
    per_unit = (counts[16] - counts[8]) / 8  # parameters per unit of width: affine in the width
    width = max(1, round(8 + (target - counts[8]) / per_unit))
    return {**choices, "intermediate_size": width}


def step_seconds(models: dict[str, torch.nn.Module], run: GPTRun, train_data, device,
                 rounds: int = 2) -> dict[str, float]:
    """Seconds per training step of each model, probed on copies one after another, ``rounds`` times round, the
    fastest round kept (ten steps each after a warm-up, :func:`lmbook.runs.recording.measure_speed`): all are
    timed under the same conditions, and a moment of load on the machine does not count against one."""
    from .recording import measure_speed

    batches = RandomBatches(train_data, run.block_size, run.batch_size, device, seed=0)
    best = dict.fromkeys(models, math.inf)
    for _ in range(rounds):
        for name, model in models.items():
            best[name] = min(best[name], measure_speed(model, batches, run.train_config())["train_step"])
    return best


def ablation(arch: ArchitectureRun, train_data: torch.Tensor, val_data: torch.Tensor, vocab_size: int,
             device=None, rec=None) -> list[dict]:
    """Every rung of ``LADDER`` trained with every seed: a dict per run with ``rung``, ``seed``, ``budget``
    ("steps", or "time" in the equal-time runs), ``params``, ``steps``, ``seconds``, ``val_loss`` (the whole
    held-out split in windows of the context), its ``history`` and the trained ``model``."""
    device = device or get_device()
    run = arch.run
    target = num_params(make_char_llama(run, vocab_size, "cpu", **GPT2))
    rows = []
    budgets = ("steps", "time") if arch.equal_time else ("steps",)
    rungs = {name: matched_width(run, vocab_size, rung_choices(choices, run), target) for name, choices in LADDER}
    for budget in budgets:
        steps = dict.fromkeys(rungs, run.max_steps)
        if budget == "time":  # each rung trains for the seconds GPT-2's block takes for max_steps steps
            def probe() -> dict[str, float]:
                return step_seconds({name: make_char_llama(run, vocab_size, device, 0, **choices)
                                     for name, choices in rungs.items()}, run, train_data, device)

            speed = probe() if rec is None else rec.compute("seconds per step", probe)
            steps = {name: max(1, round(run.max_steps * speed["GPT-2"] / speed[name])) for name in rungs}
        for name, choices in rungs.items():
            this_run = run if steps[name] == run.max_steps else run.replace(
                max_steps=steps[name], eval_interval=max(1, steps[name] // max(1, run.max_steps // run.eval_interval)))
            for seed in arch.seeds:
                model = make_char_llama(run, vocab_size, device, seed, **choices)
                label = f"{name} seed {seed}" + " equal time" * (budget == "time")
                history = train_char_gpt(model, this_run, train_data, val_data, seed=seed, rec=rec, label=label,
                                         desc=label)
                held_out = val_data[: arch.eval_chars] if arch.eval_chars else val_data
                loss = (lambda: split_loss(model, held_out, run.block_size))
                rows.append({"rung": name, "seed": seed, "budget": budget, "params": num_params(model),
                             "steps": this_run.max_steps, "seconds": history.seconds,
                             "val_loss": loss() if rec is None else rec.compute(f"loss {label}", loss),
                             "history": history, "model": model})
    return rows


def ablation_summary(rows: list[dict], budget: str = "steps", level: float = 0.9) -> list[dict]:
    """Per rung in ladder order: mean held-out bits per character over seeds with its ``level`` interval
    (``bits``, ``low``, ``high``), and the change from the rung before, paired by seed (``change``,
    ``change_low``, ``change_high``; NaN for the first rung); ``matters`` is True where the change's interval
    leaves out zero (None with one seed: no interval)."""
    bits = {}
    for r in rows:
        if r["budget"] == budget:
            bits.setdefault(r["rung"], {})[r["seed"]] = r["val_loss"] / math.log(2)
    summary, before = [], None
    for name, _ in LADDER:
        if name not in bits:
            continue
        mean, low, high = mean_interval(bits[name].values(), level)
        row = {"rung": name, "bits": mean, "low": low, "high": high, "change": math.nan, "change_low": math.nan,
               "change_high": math.nan, "matters": None,
               "params": next(r["params"] for r in rows if r["rung"] == name),
               "seconds": sum(r["seconds"] for r in rows if r["rung"] == name and r["budget"] == budget)
               / len(bits[name])}
        if before is not None:
            seeds = sorted(set(bits[name]) & set(bits[before]))
            change, c_low, c_high = mean_interval([bits[name][s] - bits[before][s] for s in seeds], level)
            row.update(change=change, change_low=c_low, change_high=c_high,
                       matters=None if len(seeds) < 2 else not c_low <= 0 <= c_high)
        summary.append(row)
        before = name
    return summary


def ablation_facts(summary: list[dict], level: float = 0.9, when: str = "") -> str:
    """The sentences a ladder's summary supports: each change's effect in bits per character, and, with several
    seeds, which changes moved the loss by more than the seeds' spread (their ``level`` interval leaves out 0).
    ``when`` opens the first sentence (``"At equal steps"``)."""
    changes = summary[1:]
    listed = and_list(f"{s['rung']} {s['change']:+.3f}" for s in changes)
    lead = f"{when}, each" if when else "Each"
    if all(s["matters"] is None for s in changes):
        return (f"{lead} change's effect on held-out bits per character, one seed each: {listed}. One seed draws no "
                "interval, so these differences may be no larger than what another seed would change.")
    real = [s for s in changes if s["matters"]]
    text = f"{lead} change's effect on held-out bits per character, paired by seed: {listed}. "
    if not real:
        return text + (f"None of them is larger than the spread over seeds: every change's {level:.0%} interval "
                       "holds zero, so at this scale the changes are a matter of speed and memory, not of loss.")
    better = [s["rung"] for s in real if s["change"] < 0]
    worse = [s["rung"] for s in real if s["change"] > 0]
    parts = ([f"{and_list(better)} lowered the loss"] if better else []) + (
        [f"{and_list(worse)} raised it"] if worse else [])
    rest = [s["rung"] for s in changes if not s["matters"]]
    return text + (f"Beyond the spread over seeds ({level:.0%} intervals that leave out zero), {' and '.join(parts)}"
                   + (f"; {and_list(rest)} changed it by less than the seeds vary." if rest else "."))


def plot_ablation(summaries: dict[str, list[dict]], ax=None):
    """Held-out bits per character of each rung, one series per summary (``{"equal steps": ..., ...}``),
    with the intervals over seeds where there are several."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / len(summaries)
    for i, (label, summary) in enumerate(summaries.items()):
        xs = [j + (i - (len(summaries) - 1) / 2) * width for j in range(len(summary))]
        ys = [s["bits"] for s in summary]
        errors = [[max(0.0, s["bits"] - s["low"]) if math.isfinite(s["low"]) else 0 for s in summary],
                  [max(0.0, s["high"] - s["bits"]) if math.isfinite(s["high"]) else 0 for s in summary]]
        ax.bar(xs, ys, width, yerr=errors, capsize=3, label=label, color=f"C{i}")
    names = [s["rung"] for s in next(iter(summaries.values()))]
    ax.set_xticks(range(len(names)), names)
    low = min(s["low"] if math.isfinite(s["low"]) else s["bits"] for sm in summaries.values() for s in sm)
    high = max(s["high"] if math.isfinite(s["high"]) else s["bits"] for sm in summaries.values() for s in sm)
    ax.set_ylim(low - 0.05 * (high - low + 0.1), high + 0.05 * (high - low + 0.1))
    ax.set_ylabel("held-out bits per character")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return ax


# --- Length: training at one context, reading longer ones ---------------------------------------------------
@torch.no_grad()
def position_losses(model, data: torch.Tensor, length: int, windows: int, seed: int = 0) -> torch.Tensor:
    """The mean loss (nats) at each position of ``windows`` random windows of ``length`` tokens of ``data``:
    (length,). Position p is predicted from the p + 1 tokens before it in its window."""
    device = next(model.parameters()).device
    x, y = RandomBatches(data, length, windows, device, seed=seed)()  # (W, length)
    was_training = model.training
    model.eval()
    logits = model(x)[0].float()  # (W, length, V)
    model.train(was_training)
    return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(0).cpu()  # (length,)


def with_rope(model: Llama, **changes) -> Llama:
    """A copy of ``model`` with changed RoPE settings (``rope_scale``, ``rope_theta``) on the same weights."""
    changed = copy.deepcopy(model)
    config = changed.config.replace(**changes)
    changed.config = config
    for layer in changed.layers:
        layer.self_attn.theta, layer.self_attn.scale = config.rope_theta, config.rope_scale
    return changed


def length_experiment(arch: ArchitectureRun, train_data: torch.Tensor, val_data: torch.Tensor, vocab_size: int,
                      device=None, rec=None) -> dict:
    """Learned positions and RoPE trained on windows of the context, their models long enough to read
    ``long_factor`` times more; then the RoPE model read with positions interpolated (``rope_scale``) and with
    its base raised to θ · factor^(d/(d-2)) (the slowest pair turns factor times slower, the fastest as before),
    and both models trained ``long_steps`` more on the long windows (RoPE interpolated). Returns ``long``,
    ``trained`` (the training context) and ``losses``, ``{name: the position losses (long,) as a list}``."""
    device = device or get_device()
    run, factor = arch.run, arch.long_factor
    long = run.block_size * factor
    models = {}
    for name, position in (("learned", "learned"), ("RoPE", "rope")):
        model = make_char_llama(run, vocab_size, device, 0, position=position, block_size=long)
        train_char_gpt(model, run, train_data, val_data, rec=rec, label=f"length {name}", desc=f"length {name}")
        models[name] = model
    d = models["RoPE"].config.head_dim
    models["RoPE, positions / {}".format(factor)] = with_rope(models["RoPE"], rope_scale=float(factor))
    models["RoPE, base x {:.0f}".format(factor ** (d / (d - 2)))] = with_rope(
        models["RoPE"], rope_theta=models["RoPE"].config.rope_theta * factor ** (d / (d - 2)))
    longer = run.replace(block_size=long, batch_size=max(1, run.batch_size // factor), max_steps=arch.long_steps,
                         warmup_steps=max(1, arch.long_steps // 10), lr=run.lr / 3, eval_interval=arch.long_steps)
    for name, source in (("learned", models["learned"]), ("RoPE", models[f"RoPE, positions / {factor}"])):
        tuned = copy.deepcopy(source)
        label = f"{name} + {arch.long_steps} steps at {long}"
        train_char_gpt(tuned, longer, train_data, val_data, rec=rec, label=label, desc=label)
        models[label] = tuned
    losses = {}
    for name, model in models.items():
        compute = (lambda m=model: position_losses(m, val_data, long, arch.eval_windows).tolist())
        losses[name] = compute() if rec is None else rec.compute(f"positions {name}", compute)
    return {"long": long, "trained": run.block_size, "losses": losses}


def length_summary(result: dict) -> dict[str, tuple[float, float]]:
    """Per model: mean bits per character inside the training context and beyond it."""
    T = result["trained"]
    return {name: (sum(v[:T]) / T / math.log(2), sum(v[T:]) / (len(v) - T) / math.log(2))
            for name, v in result["losses"].items()}


def length_facts(result: dict, when: str = "") -> str:
    """What the length experiment shows, in sentences computed from ``result`` (:func:`length_experiment`); ``when``
    opens the first sentence (``"In the reference"``)."""
    table = length_summary(result)
    inside, beyond = ({name: v[i] for name, v in table.items()} for i in (0, 1))
    untrained = [name for name in table if "steps at" not in name]
    tuned = [name for name in table if "steps at" in name]
    best = min(untrained, key=beyond.get)
    text = (f"{when + ', inside' if when else 'Inside'} the {result['trained']} positions they trained on, "
            "learned positions reach "
            f"{inside['learned']:.3f} bits per character and RoPE {inside['RoPE']:.3f}. Beyond them, up to "
            f"{result['long']}, learned positions {than(beyond['learned'], inside['learned'], 'fall', 'rise').data} to "
            f"{beyond['learned']:.3f} and RoPE {than(beyond['RoPE'], inside['RoPE'], 'falls', 'rises').data} to "
            f"{beyond['RoPE']:.3f}. Without any training at the longer length, the best of the {len(untrained)} "
            f"beyond the training context is {best} ({beyond[best]:.3f}); in order: "
            f"{ordering({name: beyond[name] for name in untrained}).data}.")
    if tuned:
        text += (" After a short training on the longer windows, beyond the first context: " + and_list(
            f"{beyond[name]:.3f} bits per character for {name}" for name in tuned) + ".")
    return text


def plot_position_losses(result: dict, ax=None, smooth: int = 8):
    """Bits per character at each position of the long windows, one curve per model (a running mean over
    ``smooth`` positions), with the training context marked."""
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    for name, values in result["losses"].items():
        bits = np.convolve(np.array(values) / math.log(2), np.ones(smooth) / smooth, mode="valid")
        ax.plot(np.arange(len(bits)) + smooth - 1, bits, label=name, lw=1.4)
    ax.axvline(result["trained"], color="grey", ls=":", label="the training context")
    ax.set(xlabel="position in the window", ylabel="bits per character", yscale="log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return ax


# --- The reference recipe -----------------------------------------------------------------------------------
RECIPE_VERSION = "1"  # change it when the recipe's code changes what it records
# Two CPU cores, about half an hour: chapter 3's CPU shape (3 layers of 96) on windows of 64, three seeds of each
# rung at equal steps and at the GPT-2 rung's seconds; the length models at 64, read at 256
CPU_RUN = ArchitectureRun(
    run=GPTRun(n_layer=3, n_head=4, n_embd=96, block_size=64, dropout=0.0, batch_size=16, max_steps=500, lr=4e-3,
               min_lr=0.0, warmup_steps=25, schedule="linear", weight_decay=0.1, beta2=0.99, eval_interval=100,
               eval_iters=4),
    seeds=(0, 1, 2), equal_time=True, long_factor=4, long_steps=100, eval_windows=64)
REFERENCE = {"gpu": RUNS["full"], "cpu": CPU_RUN}
_TINY = ArchitectureRun(run=RUNS["fast"].run.replace(n_embd=16, block_size=8, batch_size=2, max_steps=3,
                                                     warmup_steps=1, eval_interval=3, eval_iters=1),
                        seeds=(0, 1), equal_time=True, long_factor=2, long_steps=2, eval_windows=2, eval_chars=2_000)
SMOKE = {"gpu": _TINY, "cpu": _TINY}  # the same recipe in seconds, for the tests


def record_cpu(rec) -> None:
    """Chapter 8's reference: the ladder's runs (equal steps and equal time, every seed) and the length
    experiment, into ``lmbook/references/ch08-<level>.json``."""
    from ..text.data import shakespeare_chars

    tokenizer, train_data, val_data = shakespeare_chars()
    rows = ablation(rec.settings, train_data, val_data, tokenizer.vocab_size, rec.device, rec=rec)
    rec.result("ablation", [{k: v for k, v in r.items() if k not in ("history", "model")} for r in rows])
    rec.result("length", length_experiment(rec.settings, train_data, val_data, tokenizer.vocab_size, rec.device,
                                           rec=rec))


record_gpu = record_cpu  # one recipe, two sizes
