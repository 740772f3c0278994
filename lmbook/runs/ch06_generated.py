"""Chapter 6's generated text: continuations of held-out prompts scored against the truth, and the diversity sweep.

:func:`candidates` and :func:`continuation_scores` show where BLEU and ROUGE agree with a reader and
where they do not; :func:`diversity_sweep` measures quality against diversity over temperatures and
top-p. The sizes are :class:`~lmbook.runs.ch06_evaluation.EvaluationRun`'s.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter

import matplotlib.pyplot as plt
import torch

from ..evaluation import textmetrics
from ..evaluation.calibration import by_temperature, next_token_logits
from ..evaluation.intervals import bootstrap_draws, percentile_interval
from ..decoding.generate import generate
from ..interface import context_length
from ..evaluation.metrics import TextNLL, protocol_stride, token_nlls
from ..display.show import count_phrase, html_table, md, than, trend
from .common import BATCH, EvaluationRun


# --- Continuations scored against the truth -------------------------------------------------
def whole_words(text: str) -> str:
    """``text`` cut after its last white space, so that it ends with a whole word (unchanged if it has none)."""
    cut = max(text.rfind(" "), text.rfind("\n"))
    return text[: cut + 1].rstrip() if cut > 0 else text


def cut_prompts(text: str, n: int, prompt_chars: int, continuation_chars: int) -> list[tuple[str, str]]:
    """``n`` (prompt, true continuation) pairs from ``text`` at evenly spaced places.

    Every prompt has ``prompt_chars`` characters and ends with white space, so the continuation
    starts with a new word; the continuation is the next ``continuation_chars`` characters, cut
    back to whole words.
    """
    span = prompt_chars + continuation_chars
    if n < 1 or len(text) < n * (span + 40):
        raise ValueError(f"{len(text)} characters cannot hold n={n} pieces of {span}: ask for fewer prompts.")
    pairs, step = [], (len(text) - span - 40) // n
    for i in range(n):
        boundary = i * step + prompt_chars
        while not text[boundary - 1].isspace():  # the prompt ends at a word's end
            boundary += 1
        truth = whole_words(text[boundary : boundary + continuation_chars])
        pairs.append((text[boundary - prompt_chars : boundary], truth))
    return pairs


def continue_prompts(model, tokenizer, prompts: list[str], new_tokens: int, seed: int = 0, **settings) -> list[str]:
    """Continue each prompt by ``new_tokens`` tokens with :func:`lmbook.decoding.generate.generate`; returns the
    continuations alone. A prompt longer than the model's context is cut to its last ``context`` tokens
    (all the model could read of it); prompts of one length in tokens are continued as one batch."""
    context = context_length(model)
    encoded = [tokenizer.encode(p)[-context:] if context else tokenizer.encode(p) for p in prompts]
    if len({len(e) for e in encoded}) == 1:
        out = generate(model, torch.tensor(encoded), new_tokens, seed=seed, **settings)
        return [tokenizer.decode(row[len(encoded[0]) :].tolist()) for row in out]
    return [tokenizer.decode(generate(model, torch.tensor([e]), new_tokens, seed=seed + i, **settings)[0, len(e) :]
                             .tolist()) for i, e in enumerate(encoded)]


def candidates(model, tokenizer, pairs: list[tuple[str, str]], seed: int = 0) -> dict[str, list[str]]:
    """Continuations of each prompt that a reader would judge very differently.

    The model's greedy and sampled continuations; the true continuation of the *next* prompt (real,
    fluent Shakespeare, but not what came next); the true continuation's words shuffled (every word
    right, no sentence); and the five commonest words of the true continuations over and over (degenerate).
    """
    prompts, truths = [p for p, _ in pairs], [t for _, t in pairs]
    n = max(len(tokenizer.encode(t)) for t in truths) + 8  # then cut back to whole words, as the truths
    rng = random.Random(seed)
    common = [w for w, _ in Counter(w for t in truths for w in re.findall(r"[a-z']+", t.lower())).most_common(5)]
    loop = " ".join(common[i % len(common)] for i in range(len(truths[0].split())))

    def shuffled(text: str) -> str:
        words = text.split()
        rng.shuffle(words)
        return " ".join(words)

    def generated(**settings) -> list[str]:
        return [whole_words(t) for t in continue_prompts(model, tokenizer, prompts, n, seed=seed, **settings)]

    return {
        "true continuation": truths,
        "model, greedy": generated(temperature=0),
        "model, sampled (T = 0.8)": generated(temperature=0.8),
        "another passage": truths[1:] + truths[:1],
        "its words shuffled": [shuffled(t) for t in truths],
        "common words looped": [loop] * len(truths),
    }


def continuation_scores(pairs: list[tuple[str, str]], outputs: dict[str, list[str]], samples: int = 100,
                        level: float = 0.95) -> dict[str, dict]:
    """Each candidate kind scored against the true continuations: corpus BLEU (sacrebleu's settings and
    evaluate's canonical ones) and mean ROUGE-1 and ROUGE-L F-measures; ``intervals`` holds percentile-bootstrap
    ``level`` intervals of BLEU (sacrebleu's), ROUGE-1 and ROUGE-L over the prompts (the same draws for every
    kind)."""
    truths = [t for _, t in pairs]
    scores = {}
    for kind, texts_ in outputs.items():
        rouge1 = [textmetrics.rouge_n(c, t, 1).fmeasure for c, t in zip(texts_, truths)]
        rougeL = [textmetrics.rouge_l(c, t).fmeasure for c, t in zip(texts_, truths)]

        def statistic(draw: list[int]) -> dict[str, float]:
            return {"bleu": textmetrics.corpus_bleu([texts_[i] for i in draw], [truths[i] for i in draw]).score,
                    "rouge1": sum(rouge1[i] for i in draw) / len(draw),
                    "rougeL": sum(rougeL[i] for i in draw) / len(draw)}

        draws = bootstrap_draws(range(len(truths)), statistic, samples, seed=0)
        scores[kind] = {
            "bleu": textmetrics.corpus_bleu(texts_, truths).score,
            "bleu_canonical": textmetrics.corpus_bleu(texts_, truths, **textmetrics.EVALUATE_BLEU).score,
            "rouge1": sum(rouge1) / len(truths), "rougeL": sum(rougeL) / len(truths),
            "intervals": {key: percentile_interval([d[key] for d in draws], level) for key in draws[0]},
        }
    return scores


def sentence_bleu_zeros(outputs: list[str], truths: list[str]) -> dict[str, int]:
    """How many single continuations get a BLEU of exactly 0 without smoothing (evaluate's canonical BLEU)
    and with sacrebleu's exponential smoothing."""
    pairs = list(zip(outputs, truths))
    return {
        "canonical": sum(textmetrics.sentence_bleu(c, [t], **textmetrics.EVALUATE_BLEU,
                                                   effective_order=False).score == 0 for c, t in pairs),
        "sacrebleu": sum(textmetrics.sentence_bleu(c, [t]).score == 0 for c, t in pairs),
        "of": len(pairs),
    }


def zeros_facts(zeros: dict[str, int]) -> dict:
    """The prose's words for :func:`sentence_bleu_zeros`: ``zeros_canonical`` and ``zeros_sacrebleu`` as counts in
    words (``all 24 continuations``, ``none of the 24``, ``3 of the 24``)."""
    return {"zeros_canonical": md(count_phrase(zeros["canonical"], zeros["of"], "continuation")),
            "zeros_sacrebleu": md(count_phrase(zeros["sacrebleu"], zeros["of"], "continuation"))}


def scores_table(scores: dict[str, dict]):
    """The candidates' scores as a table (BLEU on sacrebleu's 0-100 scale), each of BLEU (sacrebleu's), ROUGE-1 and
    ROUGE-L with its bootstrap interval over the prompts under it."""
    def cell(s: dict, key: str, scale: float, digits: int) -> str:
        low, high = s["intervals"][key]
        return f"{scale * s[key]:.{digits}f} ({scale * low:.{digits}f} to {scale * high:.{digits}f})"

    header = ["continuation", "BLEU (sacrebleu)", "BLEU (evaluate's canonical)", "ROUGE-1 F", "ROUGE-L F"]
    return html_table(header, [[kind, cell(s, "bleu", 100, 1), f"{100 * s['bleu_canonical']:.1f}",
                                cell(s, "rouge1", 1, 3), cell(s, "rougeL", 1, 3)] for kind, s in scores.items()])


def misleading_facts(scores: dict[str, dict]) -> dict:
    """Where the scores disagree with a reader: a fluent passage against word salad and a loop."""
    fluent, salad, loop = scores["another passage"], scores["its words shuffled"], scores["common words looped"]
    facts = {"passage_bleu": 100 * fluent["bleu"], "passage_rouge1": fluent["rouge1"],
             "passage_rougeL": fluent["rougeL"], "salad_bleu": 100 * salad["bleu"], "salad_rouge1": salad["rouge1"],
             "salad_rougeL": salad["rougeL"],
             "loop_bleu": 100 * loop["bleu"], "loop_rouge1": loop["rouge1"]}
    for key in ("bleu", "rouge1", "rougeL"):
        facts[f"salad_vs_passage_{key}"] = than(salad[key], fluent[key], "below", "above")
    facts["loop_vs_passage_rouge1"] = than(loop["rouge1"], fluent["rouge1"], "below", "above")
    return facts


# --- Quality against diversity -----------------------------------------------------------------
def decoding_settings(run: EvaluationRun) -> dict[str, dict]:
    """The decoding settings of the sweep: each temperature (0 is greedy), then top-p at temperature 1."""
    settings = {("greedy" if t == 0 else f"T = {t:g}"): {"temperature": t} for t in run.temperatures}
    settings.update({f"top-p {p:g}": {"temperature": 1.0, "top_p": p} for p in run.top_ps})
    return settings


def text_measures(model, tokenizer, outputs: list[str], prompts: list[str]) -> dict[str, float]:
    """What the sweep reports for a set of continuations: the model's perplexity of its own text (each
    continuation scored after its prompt), distinct-1 and -2, self-BLEU and the share ending in a loop."""
    total = None
    for prompt, out in zip(prompts, outputs):
        nll = token_nlls(model, tokenizer.encode(prompt + out), stride=protocol_stride(model), batch_size=BATCH)
        n_out = len(tokenizer.encode(prompt + out)) - len(tokenizer.encode(prompt))
        part = nll[-n_out:]  # the continuation's tokens only (exact for characters); the prompt is context
        score = TextNLL(float(part.double().sum()), len(part))
        total = score if total is None else total + score
    wordless = not any(textmetrics.words(o) for o in outputs)  # e.g. nothing but white space: no n-gram to count
    return {"perplexity": total.perplexity,
            "distinct_1": math.nan if wordless else textmetrics.distinct_n(outputs, 1),
            "distinct_2": math.nan if wordless else textmetrics.distinct_n(outputs, 2),
            "self_bleu": textmetrics.self_bleu(outputs), "repetition": textmetrics.repetition_rate(outputs)}


def diversity_sweep(model, tokenizer, run: EvaluationRun, held_out: str) -> dict[str, dict]:
    """Continue held-out prompts with each decoding setting and measure quality and diversity; the held-out
    text's own continuations come last, as "human"."""
    pairs = cut_prompts(held_out, run.n_prompts, run.prompt_chars, run.sample_chars)
    prompts = [p for p, _ in pairs]
    n = len(tokenizer.encode(held_out[: run.sample_chars]))  # about sample_chars characters of text
    out = {}
    for name, settings in decoding_settings(run).items():
        outputs = [whole_words(t) for t in continue_prompts(model, tokenizer, prompts, n, seed=run.seed, **settings)]
        out[name] = {**text_measures(model, tokenizer, outputs, prompts), "example": outputs[0]}
    out["human"] = {**text_measures(model, tokenizer, [t for _, t in pairs], prompts), "example": pairs[0][1]}
    return out


def plot_diversity(sweep: dict[str, dict], axes=None):
    """The model's perplexity of its own text against distinct-2 and against self-BLEU: one curve for the
    temperatures (greedy is temperature 0), one for top-p, and the held-out text itself as a star."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 4))
    groups = {"temperature": [n for n in sweep if n == "greedy" or n.startswith("T =")],
              "top-p": [n for n in sweep if n.startswith("top-p")], "human": ["human"]}
    for ax, key, label in ((axes[0], "distinct_2", "distinct-2 (higher: more diverse)"),
                           (axes[1], "self_bleu", "self-BLEU (lower: more diverse)")):
        for (group, names), marker in zip(groups.items(), ("o", "s", "*")):
            ax.plot([sweep[n][key] for n in names], [sweep[n]["perplexity"] for n in names], marker=marker,
                    ls="-" if len(names) > 1 else "", ms=10 if group == "human" else 6, label=group)
            for n in names:
                ax.annotate(n, (sweep[n][key], sweep[n]["perplexity"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("the model's perplexity of its own text")
    axes[0].figure.tight_layout()
    return axes


def diversity_table(sweep: dict[str, dict]):
    """The sweep as a table, one row a decoding setting and the held-out text last."""
    header = ["decoding", "perplexity of its own text", "distinct-1", "distinct-2", "self-BLEU", "ends in a loop"]
    return html_table(header, [[name, f"{m['perplexity']:.2f}", f"{m['distinct_1']:.3f}", f"{m['distinct_2']:.3f}",
                           f"{m['self_bleu']:.3f}", f"{m['repetition']:.0%}"] for name, m in sweep.items()])


def diversity_facts(sweep: dict[str, dict]) -> dict:
    """Greedy decoding, the temperatures and the held-out text compared, for the prose."""
    settings = [n for n in sweep if n != "human"]
    human, greedy = sweep["human"], sweep["greedy"]
    closest = min(settings, key=lambda n: abs(math.log(sweep[n]["perplexity"] / human["perplexity"])))
    temperatures = {n: sweep[n] for n in settings if n == "greedy" or n.startswith("T =")}
    hottest = list(temperatures)[-1]
    below = {n: sweep[n]["perplexity"] for n in settings if sweep[n]["perplexity"] < greedy["perplexity"]}
    rank = ("no other setting tried writes text the model finds likelier" if not below else
            "settings that sample write text the model finds likelier still: " + ", ".join(
                f"{n} ({ppl:.2f})" for n, ppl in sorted(below.items(), key=lambda item: item[1])))
    return {"greedy_rank": md(rank), "greedy_ppl": greedy["perplexity"],
            "greedy_vs_human": than(greedy["perplexity"], human["perplexity"], "below", "above"),
            "greedy_repetition": 100 * greedy["repetition"], "greedy_distinct2": greedy["distinct_2"],
            "greedy_self_bleu": greedy["self_bleu"], "human_ppl": human["perplexity"],
            "human_distinct2": human["distinct_2"], "human_self_bleu": human["self_bleu"],
            "human_repetition": 100 * human["repetition"],
            "ppl_trend": trend({n: m["perplexity"] for n, m in temperatures.items()}),
            "distinct_trend": trend({n: m["distinct_2"] for n, m in temperatures.items()}),
            "hottest": md(hottest), "hottest_ppl": sweep[hottest]["perplexity"], "closest_to_human": md(closest),
            "closest_ppl": sweep[closest]["perplexity"]}


# --- Calibration ---------------------------------------------------------------------------------
def calibration(model, tokenizer, text: str, temperatures=(0.5, 1.0, 2.0), n_bins: int = 10) -> dict[float, dict]:
    """The model's calibration on every held-out position of ``text`` (read by the book's protocol), at each
    temperature: :func:`lmbook.evaluation.calibration.by_temperature`."""
    logits, targets = next_token_logits(model, tokenizer.encode(text), stride=protocol_stride(model),
                                        batch_size=BATCH)  # (N - 1, V), (N - 1,)
    return by_temperature(logits, targets, temperatures, n_bins)


def calibration_facts(results: dict[float, dict], sweep: dict[str, dict]) -> dict:
    """What the prose says of :func:`calibration`: the ECE at each end and at temperature 1, which way the model
    errs there, and the temperature-1 text of :func:`diversity_sweep` against the human text as a calibration
    fact (the model's mean entropy against its mean NLL on the real next characters)."""
    if 1.0 not in results:
        raise ValueError("calibration_facts needs temperature 1 among the results.")
    one, cold, hot = results[1.0], results[min(results)], results[max(results)]
    r = one["reliability"]
    best = min(results, key=lambda t: results[t]["reliability"].ece)
    facts = {"ece_one": r.ece, "ece_cold": cold["reliability"].ece, "ece_hot": hot["reliability"].ece,
             "t_cold": min(results), "t_hot": max(results), "t_best_ece": best,
             "cal_positions": r.n, "cal_confidence": r.mean_confidence, "cal_accuracy": r.accuracy_overall,
             "cal_direction": md("over-confident: it is right less often than it says" if r.mean_confidence >
                                 r.accuracy_overall else "under-confident: it is right more often than it says"),
             "entropy_one": one["entropy"], "nll_one": one["nll"],
             "entropy_ppl": math.exp(one["entropy"]), "nll_ppl": math.exp(one["nll"]),
             "entropy_vs_nll": than(one["entropy"], one["nll"], "below", "above")}
    if "T = 1" in sweep and "human" in sweep:
        own, human = sweep["T = 1"]["perplexity"], sweep["human"]["perplexity"]
        facts.update({"own_ppl_one": own, "human_ppl_own": human, "own_vs_human": than(own, human, "below", "above")})
    return facts
