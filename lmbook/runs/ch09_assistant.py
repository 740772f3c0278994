"""Chapter 9's runs: a pretrained character-level Llama turned into an assistant, one measured step at a time.

- :func:`pretrain`: the base model, a Llama of chapter 8 trained on Tiny Shakespeare at a context long enough for
  a request and its answer; :func:`for_chat` grows its embedding for the chat tokens.
- :func:`tune`: supervised instruction tuning on the graded instructions of :mod:`lmbook.text.instructions`,
  written through the chat template (:func:`sft_pairs`), with the loss on the answers only or on everything,
  the whole model or LoRA adapters; :func:`evaluate` grades greedy replies per task with Wilson intervals.
- :func:`preference_pairs` samples the tuned model's own answers and pairs a right one (or the set's answer) with
  a wrong one; :func:`dpo_sweep` trains DPO at several β against the tuned model as the frozen reference.
- :func:`refusal_experiment` teaches a refusal for one category of request (:mod:`lmbook.text.refusals`) and
  counts refusals of held-out requests of that category and of harmless look-alikes, before and after.

The reference recipe (``record ch09``) runs the same steps at a larger size; the chapter reads both.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..decoding.chat import replies
from ..evaluation.bias import share_interval
from ..evaluation.metrics import held_out_score
from ..interface import context_length, device_of, evaluating, num_params
from ..models.lora import apply_lora
from ..models.vocab import grow_embeddings
from ..text.chat import SPECIAL_TOKENS, encode_conversation, special_ids, END
from ..text.data import held_out_text, load_shakespeare, shakespeare_chars
from ..text.instructions import TASKS, Example, InstructionSet, build_instructions, grade
from ..text.refusals import REFUSAL, build_refusals, refused
from ..training.dpo import DPOBatches, train_dpo
from ..training.sft import SFTBatches, make_sft_batch, sft_loss
from .common import GPTRun, RunSettings, Settings, make_char_llama, train_char_gpt, trainer

GRADED = tuple(name for name, task in TASKS.items() if task.grader is not None)


@dataclass(frozen=True)
class TuneRun(RunSettings):
    """One tuning stage's training (supervised or preference): batches, steps and a learning rate that falls
    linearly to zero after its warm-up, without weight decay."""

    def train_settings(self) -> dict:
        return {**super().train_settings(), "min_lr": 0.0, "schedule": "linear", "weight_decay": 0.0}


@dataclass(frozen=True)
class AssistantRun(Settings):
    """The sizes of chapter 9's runs."""

    base: GPTRun  # the pretrained Llama: its shape, context and pretraining
    sft: TuneRun  # instruction tuning of the whole model (with and without the loss mask)
    lora: TuneRun  # instruction tuning of LoRA adapters only
    refusal: TuneRun  # the refusal stage, continued from the tuned model
    dpo: TuneRun  # each DPO run (batch_size: preference pairs a step)
    lora_rank: int
    lora_alpha: float
    train_per_task: int  # training instructions per task
    held_out_per_task: int  # held-out instructions per task (each split)
    dpo_prompts: int  # training instructions whose sampled answers make the preference pairs
    dpo_samples: int  # samples per prompt
    betas: tuple[float, ...]
    replay: int  # instruction examples mixed with the refusals, so the refusal stage does not erase the tasks
    seed: int = 0


def _tune(batch_size, max_steps, lr, warmup=10) -> TuneRun:
    return TuneRun(batch_size=batch_size, max_steps=max_steps, lr=lr, warmup_steps=warmup,
                   eval_interval=max(1, max_steps // 4), eval_iters=2)


RUNS = {
    "full": AssistantRun(
        base=GPTRun(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.1, batch_size=64, max_steps=3000,
                    lr=1e-3, min_lr=1e-4, warmup_steps=100, schedule="cosine", weight_decay=0.1, beta2=0.99,
                    eval_interval=500, eval_iters=10),
        sft=_tune(64, 1500, 3e-4, 50), lora=_tune(64, 1500, 2e-3, 50), refusal=_tune(64, 300, 1e-4),
        dpo=_tune(32, 200, 5e-6), lora_rank=16, lora_alpha=32.0, train_per_task=1000, held_out_per_task=100,
        dpo_prompts=600, dpo_samples=4, betas=(0.03, 0.1, 0.3, 1.0), replay=400),
    "fast": AssistantRun(  # about two minutes on two CPU cores
        base=GPTRun(n_layer=2, n_head=4, n_embd=96, block_size=160, dropout=0.0, batch_size=16, max_steps=320,
                    lr=4e-3, min_lr=0.0, warmup_steps=25, schedule="linear", weight_decay=0.1, beta2=0.99,
                    eval_interval=160, eval_iters=2),
        sft=_tune(32, 100, 4e-3), lora=_tune(32, 100, 1e-2), refusal=_tune(32, 40, 5e-4),
        dpo=_tune(16, 24, 1e-4, 4), lora_rank=8, lora_alpha=16.0, train_per_task=200, held_out_per_task=16,
        dpo_prompts=48, dpo_samples=4, betas=(0.1, 0.5, 2.0), replay=48),
}


# --- The base model and the data --------------------------------------------------------------------------------
def pretrain(run: AssistantRun, device=None, rec=None):
    """The base model: a Llama of ``run.base``'s shape trained on the corpus's training split. Returns the model,
    the character tokenizer and the training history."""
    tokenizer, train_data, val_data = shakespeare_chars()
    model = make_char_llama(run.base, tokenizer.vocab_size, device, seed=run.seed)
    history = train_char_gpt(model, run.base, train_data, val_data, seed=run.seed, rec=rec, label="pretrain",
                             desc="pretrain")
    return model, tokenizer, history


def for_chat(model: nn.Module, tokenizer, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose embedding has rows for the chat template's special tokens."""
    return grow_embeddings(copy.deepcopy(model), tokenizer.vocab_size + len(SPECIAL_TOKENS), seed=seed)


def instruction_set(run: AssistantRun) -> InstructionSet:
    """The graded instructions at ``run``'s sizes, each request and answer short enough for the context with the
    template's four tokens."""
    return build_instructions(load_shakespeare(), seed=run.seed, train_per_task=run.train_per_task,
                              held_out_per_task=run.held_out_per_task, max_chars=run.base.block_size - 4)


def sft_pairs(examples: list[Example], tokenizer) -> list[tuple[list[int], list[int]]]:
    """Each example as (prompt ids, answer ids): the user's turn and the assistant's role token, then the answer
    and ``<|end|>``, the tokens the template's assistant mask marks."""
    pairs = []
    for example in examples:
        ids, mask = encode_conversation(example.messages(), tokenizer)
        cut = mask.index(1)
        pairs.append((ids[:cut], ids[cut:]))
    return pairs


# --- Tuning ------------------------------------------------------------------------------------------------------
def tune(model: nn.Module, pairs, stage: TuneRun, completion_only: bool = True, val_pairs=None, seed: int = 0,
         rec=None, label: str = "sft"):
    """Train ``model`` in place on ``pairs`` (:func:`sft_pairs`) with the book's loop; the held-out loss is
    always the answers' (``val_pairs``), whatever the training loss counts. Returns the history."""
    device, context = device_of(model), context_length(model)
    batches = SFTBatches(pairs, stage.batch_size, context, completion_only=completion_only, device=device, seed=seed)
    evals = None if val_pairs is None else {"val": SFTBatches(val_pairs, min(stage.batch_size, len(val_pairs)),
                                                             context, device=device, seed=seed + 1)}
    return trainer(rec, label)(model, batches, stage.train_config(seed=seed, desc=label), evals)


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def with_lora(model: nn.Module, run: AssistantRun) -> nn.Module:
    """A copy of ``model`` with LoRA adapters on every attention and MLP projection, its other weights frozen but
    the token embedding: the chat tokens' rows start as the mean of the others and must learn what they mean
    (``peft`` offers the same as ``modules_to_save`` or ``trainable_token_indices``)."""
    model = copy.deepcopy(model)
    apply_lora(model, targets=LORA_TARGETS, r=run.lora_rank, alpha=run.lora_alpha)
    model.embed_tokens.weight.requires_grad_(True)  # tied: the output layer's too
    return model


def trained_share(model: nn.Module) -> tuple[int, float]:
    """Parameters that train, and their share of all of them."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, trainable / num_params(model)


VARIANTS = {  # name -> (the loss counts only the answers, LoRA adapters instead of the whole model)
    "whole model, answers only": (True, False),
    "whole model, every token": (False, False),
    "LoRA, answers only": (True, True),
}


def sft_variant(chat: nn.Module, tokenizer, instructions: InstructionSet, run: AssistantRun, variant: str,
                rec=None) -> tuple[nn.Module, dict]:
    """One way of instruction tuning (a key of ``VARIANTS``) from the grown base ``chat``: the tuned model and a
    summary: parameters trained and their share, seconds, the held-out answers' loss curve, graded accuracy on
    the three held-out splits, held-out bits per character of plain text, and the voice task's bits."""
    completion_only, lora = VARIANTS[variant]
    model = with_lora(chat, run) if lora else copy.deepcopy(chat)
    stage = run.lora if lora else run.sft
    val = sft_pairs(instructions.held_out_lines, tokenizer)
    history = tune(model, sft_pairs(instructions.train, tokenizer), stage, completion_only, val, run.seed, rec,
                   label=f"sft {variant}")
    trainable, share = trained_share(model)

    def measure() -> dict:
        return {"evaluation": evaluate(model, tokenizer, held_out_sets(instructions)),
                "held_out_bits": held_out_bits(model, tokenizer),
                "voice_bits": voice_bits(model, tokenizer, instructions.held_out_lines)}

    measured = rec.compute(f"evaluate {variant}", measure) if rec is not None else measure()
    return model, {"variant": variant, "trainable": trainable, "share": share, "seconds": history.seconds,
                   "eval_steps": history.eval_steps, "val": history.eval_loss.get("val", []), **measured}


def held_out_sets(instructions: InstructionSet) -> dict[str, list[Example]]:
    """The three held-out splits by name."""
    return {name: examples for name, examples in instructions.splits.items() if name != "train"}


# --- Grading ------------------------------------------------------------------------------------------------------
def answer(model: nn.Module, tokenizer, examples: list[Example], room: int | None = None, batch_size: int = 64,
           return_ended: bool = False, **settings) -> list:
    """The model's reply to each example's request (greedy unless ``settings`` say otherwise; with
    ``return_ended``, ``(reply, whether <|end|> closed it)``). Requests are batched by task and length; a batch
    may write as many tokens as its longest right answer and two more (``room`` instead, where given), within
    the context."""
    order = sorted(range(len(examples)), key=lambda i: (examples[i].task, len(examples[i].instruction)))
    out: list = [None] * len(examples)
    limit = context_length(model)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        need = room or max(len(tokenizer.encode(examples[i].answer)) for i in chunk) + 2
        longest = max(len(tokenizer.encode(examples[i].instruction)) for i in chunk) + 3  # with the template's
        convs = [[{"role": "user", "content": examples[i].instruction}] for i in chunk]
        for i, reply in zip(chunk, replies(model, tokenizer, convs, max(1, min(need, limit - longest)),
                                           batch_size=batch_size, return_ended=return_ended, **settings)):
            out[i] = reply
    return out


def score(examples: list[Example], outputs: list[str]) -> dict[str, dict]:
    """Per graded task: right answers, examples, the share right and its 95% Wilson interval."""
    right: dict[str, list[bool]] = {}
    for example, output in zip(examples, outputs):
        right.setdefault(example.task, []).append(grade(example, output))
    return {task: {"right": sum(marks), "n": len(marks), **share_interval(sum(marks), len(marks))}
            for task, marks in right.items()}


def evaluate(model: nn.Module, tokenizer, sets: dict[str, list[Example]], samples: int = 3) -> dict:
    """Graded accuracy per split and task (``{split: {task: ...}}``), the share of replies the model closed with
    ``<|end|>`` per split (the format, learned or not, whatever the content), and a few replies per split."""
    result, ended, shown = {}, {}, {}
    for split, examples in sets.items():
        graded = [e for e in examples if e.task in GRADED]
        outputs, closed = zip(*answer(model, tokenizer, graded, return_ended=True))
        result[split] = score(graded, outputs)
        ended[split] = {"ended": sum(closed), "n": len(closed), **share_interval(sum(closed), len(closed))}
        picks = random.Random(0).sample(range(len(graded)), min(samples, len(graded)))
        shown[split] = [{"task": graded[i].task, "request": graded[i].instruction, "answer": graded[i].answer,
                         "reply": outputs[i]} for i in picks]
    return {"accuracy": result, "ended": ended, "replies": shown}


def held_out_bits(model: nn.Module, tokenizer) -> float:
    """Bits per character on the book's held-out text (chapters 6 and 7's protocol): what pretraining taught."""
    return held_out_score(model, tokenizer, held_out_text()).bits_per_char


def voice_bits(model: nn.Module, tokenizer, examples: list[Example]) -> float:
    """Bits per token of the voice task's answers (each character and the closing ``<|end|>``) given their
    requests: the task no program grades."""
    pairs = sft_pairs([e for e in examples if e.task == "voice"], tokenizer)
    batch = make_sft_batch(pairs, context_length(model)).to(device_of(model))
    with evaluating(model), torch.no_grad():
        return float(sft_loss(model, batch)) / math.log(2)


# --- Preferences ---------------------------------------------------------------------------------------------------
def preference_pairs(model: nn.Module, tokenizer, examples: list[Example], samples: int, seed: int = 0):
    """(prompt ids, chosen ids, rejected ids) from the model's own samples (temperature 1): for each request with a
    wrong sample, a right sample is chosen over it, or the set's answer where no sample was right. Returns the
    triples and counts: requests, those with a right sample, those with a wrong one, pairs made."""
    graded = [e for e in examples if e.task in GRADED]
    drawn = answer(model, tokenizer, [e for e in graded for _ in range(samples)], temperature=1.0, seed=seed)
    end = special_ids(tokenizer)[END]
    triples, own = [], 0
    for k, example in enumerate(graded):
        outs = drawn[k * samples : (k + 1) * samples]
        good = [o for o in outs if grade(example, o)]
        bad = [o for o in outs if not grade(example, o)]
        if not bad:
            continue
        own += bool(good)
        prompt, _ = sft_pairs([example], tokenizer)[0]
        chosen = good[0] if good else example.answer
        triples.append((prompt, tokenizer.encode(chosen) + [end], tokenizer.encode(bad[0]) + [end]))
    counts = {"requests": len(graded), "pairs": len(triples), "chosen_from_samples": own,
              "all_right": len(graded) - len(triples)}
    return triples, counts


def dpo_sweep(model: nn.Module, tokenizer, triples, run: AssistantRun, eval_examples: list[Example],
              rec=None) -> dict[str, dict]:
    """For each β of ``run.betas``: DPO from ``model`` (also the frozen reference), each step's metrics, and the
    graded accuracy on ``eval_examples`` after it. Keyed by β as text (JSON keys)."""
    results = {}
    for beta in run.betas:
        def one(beta=beta) -> dict:
            policy = copy.deepcopy(model)
            steps = train_dpo(policy, DPOBatches(triples, min(run.dpo.batch_size, len(triples)), seed=run.seed),
                              run.dpo.train_config(seed=run.seed, desc=f"DPO β={beta}"), beta=beta,
                              reference=copy.deepcopy(model))  # train_dpo freezes its reference in place
            graded = [e for e in eval_examples if e.task in GRADED]
            return {"steps": steps, "accuracy": score(graded, answer(policy, tokenizer, graded))}

        results[str(beta)] = rec.compute(f"dpo beta {beta}", one) if rec is not None else one()
    return results


# --- Refusals ------------------------------------------------------------------------------------------------------
def refusal_rates(model: nn.Module, tokenizer, sets: dict[str, list[Example]]) -> dict[str, dict]:
    """Per set: replies that refuse (:func:`~lmbook.text.refusals.refused`), out of how many, with Wilson's 95%."""
    rates = {}
    for name, examples in sets.items():
        said = answer(model, tokenizer, examples, room=len(tokenizer.encode(REFUSAL)) + 2)
        k = sum(map(refused, said))
        rates[name] = {"refused": k, "n": len(said), **share_interval(k, len(said))}
    return rates


def refusal_experiment(model: nn.Module, tokenizer, instructions: InstructionSet, run: AssistantRun, rec=None):
    """The refusal stage: ``model`` (tuned, without refusals) trained on the refusal set's training requests mixed
    with ``run.replay`` instruction examples; refusals counted before and after on held-out harmful requests,
    their harmless twins and the held-out instructions, and the instructions' accuracy after. Returns the results
    and the model after."""
    found = build_refusals(instructions.speakers, seed=run.seed)
    replay = random.Random(run.seed).sample(instructions.train, min(run.replay, len(instructions.train)))
    after = copy.deepcopy(model)
    tune(after, sft_pairs(found.train + replay, tokenizer), run.refusal, seed=run.seed, rec=rec, label="refusal")
    ordinary = [e for e in instructions.held_out_lines if e.task in GRADED]
    sets = {"held-out harmful requests": found.held_out, "harmless look-alikes": found.benign,
            "ordinary instructions": ordinary}

    def measure() -> dict:
        return {"before": refusal_rates(model, tokenizer, sets), "after": refusal_rates(after, tokenizer, sets),
                "accuracy_after": score(ordinary, answer(after, tokenizer, ordinary)),
                "trained_requests": len(found.train), "phrasings_kept_out": list(found.phrasings_kept_out),
                "speakers_kept_out": list(found.speakers_kept_out)}

    return (rec.compute("refusal rates", measure) if rec is not None else measure()), after


# --- The reference recipe -----------------------------------------------------------------------------------------
RECIPE_VERSION = "1"
CPU_RUN = AssistantRun(  # about half an hour on two cores
    base=GPTRun(n_layer=3, n_head=4, n_embd=128, block_size=160, dropout=0.0, batch_size=32, max_steps=2000, lr=3e-3,
                min_lr=0.0, warmup_steps=50, schedule="linear", weight_decay=0.1, beta2=0.99, eval_interval=500,
                eval_iters=4),
    sft=_tune(32, 1000, 1e-3, 20), lora=_tune(32, 1000, 4e-3, 20), refusal=_tune(32, 120, 3e-4),
    dpo=_tune(16, 100, 1e-4, 8), lora_rank=8, lora_alpha=16.0, train_per_task=600, held_out_per_task=60,
    dpo_prompts=200, dpo_samples=4, betas=(0.05, 0.2, 1.0), replay=160)
REFERENCE = {"cpu": CPU_RUN, "gpu": RUNS["full"]}
_TINY = RUNS["fast"].replace(
    base=RUNS["fast"].base.replace(n_layer=1, n_embd=16, n_head=2, block_size=128, batch_size=2, max_steps=2,
                                   eval_interval=2, eval_iters=1),
    sft=_tune(2, 2, 1e-3, 0), lora=_tune(2, 2, 1e-3, 0), refusal=_tune(2, 1, 1e-3, 0), dpo=_tune(2, 1, 1e-3, 0),
    train_per_task=4, held_out_per_task=2, dpo_prompts=4, dpo_samples=2, betas=(0.5,), replay=2)
SMOKE = {"cpu": _TINY, "gpu": _TINY}


def record_cpu(rec) -> None:
    """Chapter 9's reference: the base model, the three ways of instruction tuning, DPO at each β and the refusal
    stage, at ``rec.settings``' sizes, into ``lmbook/references/ch09-<level>.json``."""
    run = rec.settings
    base, tokenizer, _ = pretrain(run, rec.device, rec)
    chat, instructions = for_chat(base, tokenizer, run.seed), instruction_set(run)
    rec.result("base", rec.compute("evaluate base", lambda: {
        "evaluation": evaluate(chat, tokenizer, held_out_sets(instructions)),
        "held_out_bits": held_out_bits(base, tokenizer),
        "voice_bits": voice_bits(chat, tokenizer, instructions.held_out_lines)}))
    models, summaries = {}, []
    for variant in VARIANTS:
        models[variant], summary = sft_variant(chat, tokenizer, instructions, run, variant, rec)
        summaries.append(summary)
    rec.result("sft", summaries)
    tuned = models[next(iter(VARIANTS))]
    for shown in summaries[0]["evaluation"]["replies"]["held_out_lines"]:
        rec.sample(shown["task"], f"{shown['request']}\n-> {shown['reply']}")
    prompts = random.Random(run.seed).sample(instructions.train, min(run.dpo_prompts, len(instructions.train)))
    triples, counts = rec.compute("preference pairs", lambda: preference_pairs(
        tuned, tokenizer, prompts, run.dpo_samples, run.seed))
    rec.result("dpo", {"pairs": counts, "sweep": dpo_sweep(tuned, tokenizer, triples, run,
                                                            instructions.held_out_lines, rec)})
    rec.result("refusal", refusal_experiment(tuned, tokenizer, instructions, run, rec)[0])


record_gpu = record_cpu  # one recipe, two sizes
