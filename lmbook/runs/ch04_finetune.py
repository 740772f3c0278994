"""Chapter 4's runs: pretraining a GPT, then fine-tuning it, on Tiny Shakespeare.

The corpus and its labelled tasks come from :mod:`lmbook.text.speeches`; the classifier and its batches from
:mod:`lmbook.training.finetune`. :func:`prepare` cuts the corpus and trains the BPE tokenizer, :func:`pretrain`
trains a GPT (or a masked-language-model encoder), :func:`adapt` continues training on one speaker,
:func:`regularisation_runs` overfit a small training set four ways, :func:`label_sweep` and
:func:`compare_methods` fine-tune on the labelled task. :func:`record_gpu` is the full-size reference recipe;
each function that trains takes ``rec``, the recording of a reference recipe, to train resumably.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..text.data import RandomBatches, as_ids, load_shakespeare
from ..training.finetune import (ExampleBatches, SequenceClassifier, accuracy, encode_examples, freeze_backbone,
                                 labelled_subset)
from ..decoding.generate import complete
from ..models.gpt import GPT
from ..training.history import History
from ..models.lora import apply_lora, count_parameters
from ..models.mlm import Encoder, MLMBatches
from ..runtime import get_device
from ..text.speeches import ORDER_CLASSES, Corpus, order_examples, speaker_examples, split_corpus
from ..text.tokenizers import FastBPETokenizer
from .common import ChapterRun, trainer




RUNS = {
    # a GPU, a few minutes for the whole chapter
    "full": ChapterRun(vocab_size=2048, n_layer=6, n_head=6, n_embd=384, block_size=128, batch_size=64,
                       max_steps=3000, mlm_steps=3000, lr=1e-3, warmup_steps=100, eval_interval=250, eval_iters=20,
                       adapt_steps=600, adapt_lr=1e-4, classify_steps=300, classify_lr=3e-4, probe_lr=3e-3,
                       lora_lr=1e-3,
                       small_tokens=50_000, overfit_batch_size=64, overfit_steps=1500, overfit_lr=1e-3, hf_steps=100,
                       sample_tokens=300),
    # two CPU cores, about three minutes for the whole chapter
    "fast": ChapterRun(vocab_size=512, n_layer=2, n_head=4, n_embd=64, block_size=64, batch_size=32,
                       max_steps=600, mlm_steps=300, lr=3e-3, warmup_steps=30, eval_interval=100, eval_iters=10,
                       adapt_steps=150, adapt_lr=3e-4, classify_steps=60, classify_lr=3e-3, probe_lr=1e-2, lora_lr=3e-3,
                       small_tokens=10_000, overfit_steps=250, overfit_lr=3e-3, hf_steps=30),
}


@dataclass
class Prepared:
    """What every section of the chapter starts from: the corpus, its tokenizer and its ids."""

    corpus: Corpus
    tokenizer: FastBPETokenizer
    train_ids: torch.Tensor  # the pretraining text, encoded
    val_ids: torch.Tensor


def prepare(run: ChapterRun, text: str | None = None) -> Prepared:
    """Cut the corpus, train the BPE tokenizer on the pretraining text only, and encode both parts."""
    corpus = split_corpus(text if text is not None else load_shakespeare(), run.n_speakers)
    tokenizer = FastBPETokenizer.train(corpus.pretrain, run.vocab_size)
    encode = lambda t: as_ids(tokenizer.encode(t))  # noqa: E731
    return Prepared(corpus, tokenizer, encode(corpus.pretrain), encode(corpus.val))


def pretrain(run: ChapterRun, data: Prepared, causal: bool = True, device=None, seed: int = 0,
             rec=None) -> tuple[GPT, History]:
    """A GPT (``causal=True``, next-token prediction) or a bidirectional encoder trained by MLM, from scratch.

    The encoder's vocabulary has one more id than the tokenizer's, ``tokenizer.vocab_size``: the mask.
    """
    device = device or get_device()
    V = data.tokenizer.vocab_size
    torch.manual_seed(seed)
    model = (GPT(run.gpt_config(V)) if causal else Encoder(run.gpt_config(V + 1))).to(device)
    if causal:
        make = lambda ids, s: RandomBatches(ids, run.block_size, run.batch_size, device, seed=s)  # noqa: E731
    else:
        make = lambda ids, s: MLMBatches(ids, run.block_size, run.batch_size, V, V, device=device, seed=s)  # noqa: E731
    config = run.train_config(max_steps=run.max_steps if causal else run.mlm_steps, seed=seed,
                              desc="GPT (causal LM)" if causal else "encoder (masked LM)")
    train = trainer(rec, "gpt" if causal else "mlm")
    history = train(model, make(data.train_ids, seed), config, {"val": make(data.val_ids, seed + 1)})
    return model, history


def adapt(model: GPT, run: ChapterRun, data: Prepared, speaker: str | None = None, rec=None,
          **changes) -> tuple[GPT, History]:
    """Domain adaptation: a copy of ``model`` trained further on one speaker's speeches at a lower learning rate.

    Evaluates on the speaker's held-out speeches and on the rest of the corpus (``val``), to see
    both the adaptation and what it costs elsewhere.
    """
    speaker = speaker or run.adapt_speaker
    train_text, held_out = data.corpus.speaker_text(speaker)
    device = next(model.parameters()).device
    encode = lambda t: as_ids(data.tokenizer.encode(t))  # noqa: E731
    batches = lambda ids, s: RandomBatches(ids, run.block_size, run.batch_size, device, seed=s)  # noqa: E731
    adapted = copy.deepcopy(model)
    settings = dict(max_steps=run.adapt_steps, lr=run.adapt_lr, min_lr=run.adapt_lr, warmup_steps=0,
                    eval_interval=max(1, run.adapt_steps // 6), desc=f"adapt to {speaker}")
    config = run.train_config(**{**settings, **changes})
    evals = {speaker: batches(encode(held_out), 2), "rest": batches(data.val_ids, 3)}
    return adapted, trainer(rec, "adapt")(adapted, batches(encode(train_text), 1), config, evals)


def task_data(run: ChapterRun, data: Prepared, task: str = "order") -> dict:
    """A labelled task, encoded: ``x_train, y_train, x_test, y_test`` and the ``classes``' names.

    ``task="order"``: in order or shuffled (:func:`order_examples`); ``"speaker"``: who speaks
    (:func:`speaker_examples`). The test speeches are the ones pretraining never read.
    """
    c = data.corpus
    if task == "order":
        make, classes = (lambda items, seed: order_examples(items, seed)), ORDER_CLASSES
    elif task == "speaker":
        make, classes = (lambda items, seed: speaker_examples(items, c.speakers)), c.speakers
    else:
        raise ValueError(f"task must be 'order' or 'speaker', not {task!r}.")
    x_train, y_train = encode_examples(*make(c.task_train, 0), data.tokenizer, run.block_size)
    x_test, y_test = encode_examples(*make(c.task_test, 1), data.tokenizer, run.block_size)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, "classes": list(classes)}


def train_classifier(classifier: SequenceClassifier, run: ChapterRun, task: dict[str, torch.Tensor],
                     per_class: int | None, seed: int = 0, rec=None, label: str = "classifier",
                     **changes) -> tuple[History, float]:
    """Train ``classifier`` on ``per_class`` labelled examples of each class; returns its history and test accuracy."""
    device = next(classifier.parameters()).device
    x, y = labelled_subset(task["x_train"], task["y_train"], per_class, seed)
    config = run.train_config(**{"max_steps": run.classify_steps, "lr": run.classify_lr, "min_lr": run.classify_lr / 10,
                                 "warmup_steps": 0, "eval_interval": run.classify_steps, "progress": False,
                                 "weight_decay": 0.0, "seed": seed, **changes})
    history = trainer(rec, label)(classifier, ExampleBatches(x, y, run.batch_size, device, seed), config, keep=False)
    return history, accuracy(classifier, task["x_test"], task["y_test"])


def regularisation_runs(run: ChapterRun, data: Prepared, device=None, seed: int = 0, rec=None) -> dict[str, History]:
    """A GPT trained from scratch on only ``run.small_tokens`` tokens, four ways, to see overfitting.

    Without regularisation; with strong weight decay; with dropout; and without regularisation
    but stopped early (``patience``) with the best weights restored. Each evaluates on the
    small training set itself (``"train"``) and on held-out text (``"val"``).
    """
    device = device or get_device()
    small = data.train_ids[: run.small_tokens]
    batches = lambda ids, s: RandomBatches(ids, run.block_size, run.overfit_batch_size, device, seed=s)  # noqa: E731
    base = dict(max_steps=run.overfit_steps, lr=run.overfit_lr, min_lr=run.overfit_lr / 10, weight_decay=0.0,
                eval_interval=max(1, run.overfit_steps // 10), seed=seed)
    settings = {
        "no regularisation": ({}, 0.0),
        f"weight decay {run.weight_decay:g}": ({"weight_decay": run.weight_decay}, 0.0),
        f"dropout {run.dropout:g}": ({}, run.dropout),
        "early stopping": ({"patience": run.patience, "restore_best": True}, 0.0),
    }
    histories = {}
    for name, (changes, dropout) in settings.items():
        torch.manual_seed(seed)
        model = GPT(run.gpt_config(data.tokenizer.vocab_size, dropout=dropout)).to(device)
        config = run.train_config(**{**base, **changes, "desc": name})
        histories[name] = trainer(rec, name)(model, batches(small, seed), config,
                                {"train": batches(small, seed + 1), "val": batches(data.val_ids, seed + 2)})
    return histories


METHODS = ("full fine-tuning", "linear probe", "LoRA")


def label_sweep(gpt: GPT, run: ChapterRun, task: dict, seed: int = 0, rec=None) -> dict[str, dict]:
    """Test accuracy against labelled examples per class, from the pretrained ``gpt`` and from random weights.

    Returns ``{"pretrained": {per_class: accuracy}, "scratch": {...}}`` (``None``: all the examples).
    """
    results: dict[str, dict] = {"pretrained": {}, "scratch": {}}
    device = next(gpt.parameters()).device
    for per_class in run.per_class:
        for start in results:
            torch.manual_seed(seed)
            backbone = copy.deepcopy(gpt) if start == "pretrained" else GPT(gpt.config).to(device)
            classifier = SequenceClassifier(backbone, len(task["classes"]))
            label = f"classify {start} {per_class or 'all'}" + (f" seed {seed}" if seed else "")
            results[start][per_class] = train_classifier(classifier, run, task, per_class, seed, rec, label)[1]
    return results


def compare_methods(gpt: GPT, run: ChapterRun, task: dict, per_class: int | None = None,
                    seed: int = 0, rec=None) -> dict[str, dict]:
    """Full fine-tuning, a linear probe and LoRA from the same pretrained ``gpt``, each at its own learning rate.

    Returns ``{method: {"accuracy", "trainable", "total", "seconds"}}``.
    """
    lrs = {"full fine-tuning": run.classify_lr, "linear probe": run.probe_lr, "LoRA": run.lora_lr}
    results = {}
    for method in METHODS:
        torch.manual_seed(seed)
        classifier = SequenceClassifier(copy.deepcopy(gpt), len(task["classes"]))
        if method == "linear probe":
            freeze_backbone(classifier)
        elif method == "LoRA":
            apply_lora(classifier.backbone, r=run.lora_rank, alpha=run.lora_alpha)
        history, acc = train_classifier(classifier, run, task, per_class, seed, rec, f"method {method}",
                                        lr=lrs[method], min_lr=lrs[method] / 10)
        trainable, total = count_parameters(classifier)
        results[method] = {"accuracy": acc, "trainable": trainable, "total": total, "seconds": history.seconds}
    return results


RECIPE_VERSION = "2"  # change it when the recipe's code changes what it records
# Two CPU cores, under half an hour for the recipe: a GPT and an encoder of 4 layers of width 128 (0.93 M
# parameters with the 1,024-token vocabulary), pretrained for 1,000 and 1,200 steps of 32 windows of 64 tokens
# (the encoder learns from a sixth of its positions: it gets more), then the chapter's adaptation, overfitting
# runs, label sweep (over three seeds, for intervals) and methods. benchmarks/NOTES.md has the measured speeds.
CPU = RUNS["fast"].replace(vocab_size=1024, n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=32,
                           max_steps=1000, mlm_steps=1200, lr=2e-3, warmup_steps=50, eval_interval=50, eval_iters=10,
                           adapt_steps=150, adapt_lr=2e-4, classify_steps=40, classify_lr=1e-3, probe_lr=1e-2,
                           lora_lr=3e-3, small_tokens=20_000, overfit_steps=250, overfit_lr=2e-3, sweep_seeds=(0, 1, 2))
REFERENCE = {"gpu": RUNS["full"].replace(sweep_seeds=(0, 1, 2)), "cpu": CPU}  # the reference recipes, per level
_TINY = RUNS["fast"].replace(
    vocab_size=270, n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, max_steps=3, mlm_steps=2,
    warmup_steps=1, eval_interval=3, eval_iters=1, adapt_steps=3, classify_steps=2, per_class=(2, None),
    small_tokens=300, overfit_batch_size=4, overfit_steps=4, sample_tokens=10)
SMOKE = {"gpu": _TINY, "cpu": _TINY.replace(sweep_seeds=(0, 1))}  # the same recipes in seconds, for the tests


def unigram_entropy(ids: torch.Tensor, vocab_size: int) -> float:
    """The entropy, in nats, of the tokens' frequencies in ``ids``: the loss of a model that ignores its context,
    the plateau a masked language model sits on before it learns to read the tokens around a blank."""
    p = torch.bincount(ids.flatten(), minlength=vocab_size).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def record_gpu(rec) -> None:
    """Chapter 4's reference experiment: pretraining (a GPT, and an encoder by masked language modelling), domain
    adaptation, the overfitting runs and the labelled task, its label sweep repeated over ``sweep_seeds``.

    Recorded by ``python -m lmbook.runs.reference record ch04 --level gpu`` (the full size) or ``--level cpu`` (two
    CPU cores) into ``lmbook/references/ch04-<level>.json``.
    """
    run, device = rec.settings, rec.device
    data = prepare(run)
    gpt, _ = pretrain(run, data, causal=True, device=device, rec=rec)
    pretrain(run, data, causal=False, device=device, rec=rec)
    rec.result("unigram_entropy", unigram_entropy(data.val_ids, data.tokenizer.vocab_size))
    adapted, _ = adapt(gpt, run, data, rec=rec)
    regularisation_runs(run, data, device, rec=rec)
    task = task_data(run, data)
    sweeps = [label_sweep(gpt, run, task, seed=seed, rec=rec) for seed in run.sweep_seeds]
    rec.result("accuracy", {start: {str(k): v for k, v in accs.items()} for start, accs in sweeps[0].items()})
    rec.result("accuracy_seeds", {start: {str(k): [sweep[start][k] for sweep in sweeps] for k in accs}
                                  for start, accs in sweeps[0].items()})
    rec.result("task", {"classes": task["classes"], "train": len(task["y_train"]), "test": len(task["y_test"]),
                        "majority": float(torch.bincount(task["y_test"]).max() / len(task["y_test"]))})
    rec.result("methods", compare_methods(gpt, run, task, rec=rec))
    for name, model in (("pretrained", gpt), ("adapted", adapted)):
        rec.sample(name, rec.compute(f"sample {name}", lambda: complete(model, data.tokenizer, "\n", run.sample_tokens,
                                                                        temperature=0.8, seed=0)))


record_cpu = record_gpu  # one recipe, two sizes


def _accuracy_seeds(results: dict) -> dict:
    """``{start: {per_class: [accuracy of each seed]}}`` from a record's results (one seed if it has no repeats)."""
    if "accuracy_seeds" in results:
        return results["accuracy_seeds"]
    return {start: {k: [v] for k, v in accs.items()} for start, accs in results["accuracy"].items()}


def _spread(values: list[float]) -> str:
    """Accuracies over seeds as ``62% (58-66%)``: the mean, and the lowest and highest in brackets."""
    mean = sum(values) / len(values)
    return f"{mean:.0%}" if len(values) == 1 else f"{mean:.0%} ({min(values):.0%}-{max(values):.0%})"


def reference_facts(record) -> dict:
    """What chapter 4 says of its reference record (``lmbook.runs.reference.load("ch04")``, or ``None``): whether the
    masked language model left its plateau (its held-out loss against the tokens' unigram entropy), and the label
    sweep over seeds: accuracy from pretrained and from random weights, with the range over seeds, and where the
    ranges do not overlap. ``ch04_reference_verdict`` says it in sentences."""
    from IPython.display import Markdown

    from ..display.show import and_list

    if record is None:
        return {"ch04_reference_verdict": Markdown(
            "No reference run is recorded in this copy of the book: "
            "`python -m lmbook.runs.reference record ch04` makes "
            "one (under half an hour on two CPU cores).")}
    r, mlm = record.results, record.histories["mlm"]
    entropy, mlm_loss = r["unigram_entropy"], mlm.eval_loss["val"][-1]
    gap = entropy - mlm_loss
    plateau = (f"{gap:.2f} nats below the tokens' unigram entropy ({entropy:.2f}): it has left the plateau of a model "
               "that ignores the context" if gap > 0.1 else
               f"within {abs(gap):.2f} nats of the tokens' unigram entropy ({entropy:.2f}): still on the plateau")
    seeds = _accuracy_seeds(r)
    pre, scratch = seeds["pretrained"], seeds["scratch"]
    classes = len(r["task"]["classes"]) if "task" in r else 2
    ahead = [k for k in pre if min(pre[k]) > max(scratch[k])]  # every pretrained seed above every scratch seed
    name = lambda k: "all the labels" if k == "None" else f"{int(k) * classes} labels"  # noqa: E731
    rows = "; ".join(f"with {name(k)}, {_spread(pre[k])} from pretrained weights against {_spread(scratch[k])} "
                     f"from random ones" for k in pre)
    n_seeds = len(next(iter(pre.values())))
    verdict = (f"In the reference run ({record.describe()}), the encoder's held-out masked-token loss after "
               f"{len(mlm.steps):,} steps is {mlm_loss:.2f}, {plateau}. On the labelled task, test accuracy over "
               f"{n_seeds} seed{'s' * (n_seeds != 1)} (mean, and lowest to highest): {rows}. ")
    if n_seeds > 1:
        verdict += ("Pretraining is ahead beyond the spread of the seeds " + (
            f"with {and_list([name(k) for k in ahead])}." if ahead else "at no number of labels."))
    facts = {"ch04_reference_verdict": Markdown(verdict), "ch04_mlm_loss": mlm_loss, "ch04_unigram": entropy,
             "ch04_source": Markdown(record.describe())}
    return facts


def plot_reference_sweep(record, ax=None):
    """The label sweep of chapter 4's reference record: mean test accuracy against labelled examples, from
    pretrained and from random weights, with a bar from the lowest to the highest seed."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    r = record.results
    seeds = _accuracy_seeds(r)
    classes, train = len(r["task"]["classes"]), r["task"]["train"]
    for start, accs in seeds.items():
        counts = [train if k == "None" else int(k) * classes for k in accs]
        means = [100 * sum(v) / len(v) for v in accs.values()]
        low = [m - 100 * min(v) for m, v in zip(means, accs.values())]
        high = [100 * max(v) - m for m, v in zip(means, accs.values())]
        ax.errorbar(counts, means, yerr=[low, high], marker="o", capsize=3,
                    label="from pretrained weights" if start == "pretrained" else "from random weights")
    ax.axhline(100 * r["task"]["majority"], color="gray", ls="--", lw=1, label="always the commoner class")
    ax.set_xscale("log")
    ax.set(xlabel="labelled examples (log scale)", ylabel="test accuracy (%)", title=record.describe())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
