"""Chapter 5's runs: decoding the book's trained GPTs, and measuring what each strategy does to text and speed.

``RUNS`` holds the chapter's sizes (prompts, lengths, beams, the model the cache is timed on);
:func:`strategies` the decoding settings compared in the degeneration table, in the manner of
Holtzman et al. (2020), Table 1. The experiments: :func:`continuation_logprob` (how likely the model
finds what it wrote), :func:`filter_stages` (a next-token distribution before and after each sampling filter),
:func:`degeneration` (repetition, diversity and the model's own perplexity of its text) and
:func:`cache_speed` (tokens per second with and without the key/value cache),
:func:`speculative_speed` (greedy decoding checked a few draft tokens a pass) and
:func:`speculative_sampling_run` (sampling checked the same way, and whether its tokens keep the model's
distribution); :func:`seed_call` (the tutorials' call as ``transformers`` 5 answers it),
:func:`truncation_stages` (min-p, typical and eta sampling on one distribution), :func:`contrastive_vs_greedy`
and :func:`repeated_share`; :func:`degeneration_summary` and :func:`penalty_summary` turn results into what the
prose says.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..decoding.shared import GenerationConfig, process_scores, top_k_filter, top_p_filter
from ..decoding.generate import generate, tokens_per_second
from ..models.gpt import GPT, GPTConfig
from ..interface import context_length, device_of, evaluating
from ..evaluation.metrics import perplexity, token_nlls
from ..decoding.contrastive import contrastive_search
from ..decoding.speculative import Draft, rule_draws, speculative_greedy, speculative_sampling
from ..decoding.warpers import eta_filter, min_p_filter, typical_filter
from ..evaluation.textmetrics import distinct_n, repetition_rate, words
from ..display.show import and_list
from .common import Settings


@dataclass(frozen=True)
class GenerationRun(Settings):
    """The sizes of chapter 5's experiments."""

    n_prompts: int  # held-out prompts, each continued once by every strategy
    prompt_length: int  # characters of each prompt
    new_tokens: int  # characters of each continuation
    num_beams: int  # the beam width of the degeneration table
    cache_layers: int  # the GPT the cache is timed on (random weights: speed does not depend on them)
    cache_width: int
    cache_context: int
    cache_lengths: tuple[int, ...]  # generated lengths the cache is timed at
    speculative_prompt: int  # the last characters of each prompt that speculative decoding continues
    speculative_k: int = 4  # draft tokens checked a pass
    seed: int = 0
    contrastive_alpha: float = 0.6  # contrastive search's penalty_alpha and top_k
    contrastive_k: int = 4
    sampling_draws: int = 20_000  # draws of one token by speculative sampling's rule, against the model's distribution

    def cache_config(self) -> GPTConfig:
        return GPTConfig(vocab_size=65, block_size=self.cache_context, n_layer=self.cache_layers,
                         n_head=max(1, self.cache_width // 64), n_embd=self.cache_width)


RUNS = {
    # a GPU: chapter 3's full GPT continues 200 held-out prompts; the cache is timed on the same shape
    "full": GenerationRun(n_prompts=200, prompt_length=64, new_tokens=300, num_beams=8,
                          cache_layers=6, cache_width=384, cache_context=256, cache_lengths=(32, 64, 128, 192, 240),
                          speculative_prompt=64, sampling_draws=200_000),
    # two CPU cores, the whole chapter in under three minutes
    "fast": GenerationRun(n_prompts=12, prompt_length=24, new_tokens=120, num_beams=4,
                          cache_layers=2, cache_width=128, cache_context=256, cache_lengths=(16, 32, 64, 128),
                          speculative_prompt=8),  # chapter 3's fast GPT reads 32 characters
}


def strategies(run: GenerationRun) -> dict[str, dict]:
    """The decoding settings the degeneration table compares (a character vocabulary of 65: small k)."""
    return {
        "greedy": dict(do_sample=False),
        f"beam search, {run.num_beams} beams": dict(num_beams=run.num_beams),
        "pure sampling": dict(do_sample=True, top_k=0),
        "sampling, t=0.7": dict(do_sample=True, temperature=0.7),
        "top-k=10": dict(do_sample=True, top_k=10),
        "top-k=10, t=0.7": dict(do_sample=True, top_k=10, temperature=0.7),
        "top-p=0.9": dict(do_sample=True, top_p=0.9),
    }


def held_out_prompts(val_data: torch.Tensor, run: GenerationRun) -> tuple[torch.Tensor, torch.Tensor]:
    """``run.n_prompts`` prompts (N, P) from held-out text at random places, and what the text says next (N, L)."""
    gen = torch.Generator().manual_seed(run.seed)
    span = run.prompt_length + run.new_tokens
    starts = torch.randint(0, len(val_data) - span, (run.n_prompts,), generator=gen)
    windows = torch.stack([torch.as_tensor(val_data[s : s + span]) for s in starts.tolist()]).long()  # (N, P + L)
    return windows[:, : run.prompt_length], windows[:, run.prompt_length :]


@torch.no_grad()
def continuation_logprob(model: nn.Module, sequences: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """The model's log-probability of each row's continuation after ``prompt_length`` tokens (B,).

    The rows (B, T) must fit in the model's context."""
    with evaluating(model):
        logprobs = torch.log_softmax(model(sequences)[0][:, :-1].float(), dim=-1)  # (B, T-1, V)
    picked = logprobs.gather(-1, sequences[:, 1:, None])[..., 0]  # (B, T-1): log p of each next token
    return picked[:, prompt_length - 1 :].sum(dim=1)


def filter_stages(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> dict[str, torch.Tensor]:
    """One next-token distribution (V,) as the model gives it and after each filter, and after all three in turn."""
    scores = logits.float()[None]  # (1, V)
    combined = GenerationConfig(max_new_tokens=1, do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    none = torch.zeros(1, 0, dtype=torch.long)
    stages = {
        "the model": scores,
        f"temperature {temperature}": scores / temperature,
        f"top-k, k={top_k}": top_k_filter(scores, top_k),
        f"top-p, p={top_p}": top_p_filter(scores, top_p),
        "all three, in that order": process_scores(scores, none, combined, sampling=True),
    }
    return {name: torch.softmax(s, dim=-1)[0] for name, s in stages.items()}


def text_scores(model: nn.Module, prompts: torch.Tensor, continuations: torch.Tensor, texts: list[str]) -> dict:
    """Repetition (continuations ending in a loop of words), the share of repeated 4-grams of tokens (after each
    prompt, the prompt included: :func:`repeated_share`), distinct-2 and -3 (over words) of ``texts``, and the
    model's perplexity of ``continuations``."""
    nlls = []
    context = context_length(model)
    for prompt, cont in zip(prompts, continuations):
        ids = torch.cat([prompt, cont])
        window = min(context or len(ids) - 1, len(ids) - 1)  # the model's context, or the whole text if shorter
        nlls.append(token_nlls(model, ids, window, max(1, window // 2))[-len(cont) :])  # the continuation only
    has_words = any(words(t) for t in texts)  # (a text of blanks only has no word to count: distinct-n is NaN)
    return {"repetition %": 100 * repetition_rate(texts),
            "repeated 4-grams %": 100 * repeated_share(torch.cat([prompts, continuations], 1), prompts.size(1)),
            "distinct-2": distinct_n(texts, 2) if has_words else float("nan"),
            "distinct-3": distinct_n(texts, 3) if has_words else float("nan"),
            "perplexity": perplexity(torch.cat(nlls).mean().item())}


def degeneration(model: nn.Module, tokenizer, prompts: torch.Tensor, human: torch.Tensor, run: GenerationRun,
                 settings: dict[str, dict] | None = None) -> dict[str, dict]:
    """Each strategy continues every prompt once; its texts are scored as the held-out text itself is.

    Returns ``{strategy: scores}`` (see :func:`text_scores`, plus ``"texts"``), ``"human text"`` last.
    """
    results = {}
    device = next(model.parameters()).device
    for i, (name, options) in enumerate((settings or strategies(run)).items()):
        out = generate(model, prompts.to(device), run.new_tokens, seed=run.seed + i, **options).cpu()
        continuations = out[:, prompts.size(1) :]
        texts = [tokenizer.decode(c.tolist()) for c in continuations]
        results[name] = {**text_scores(model, prompts, continuations, texts), "texts": texts}
    texts = [tokenizer.decode(c.tolist()) for c in human]
    results["human text"] = {**text_scores(model, prompts, human, texts), "texts": texts}
    return results


def kv_bytes_per_token(config: GPTConfig, dtype: torch.dtype = torch.float32) -> int:
    """What the cache stores for one token: a key and a value of ``n_embd`` numbers in each of ``n_layer`` layers."""
    return 2 * config.n_layer * config.n_embd * torch.empty(0, dtype=dtype).element_size()


def cache_speed(run: GenerationRun, device=None, repeats: int = 2) -> dict[str, dict[int, float]]:
    """Greedy tokens per second with and without the cache, for each of ``run.cache_lengths`` (best of ``repeats``).

    A GPT of ``run.cache_config()`` with random weights, one prompt of one token, on ``device``.
    """
    torch.manual_seed(run.seed)
    model = GPT(run.cache_config()).to(device or "cpu").eval()
    prompt = torch.zeros(1, 1, dtype=torch.long, device=next(model.parameters()).device)
    speeds: dict[str, dict[int, float]] = {"with the cache": {}, "without": {}}
    for length in run.cache_lengths:
        for name, use_cache in (("with the cache", True), ("without", False)):
            speeds[name][length] = tokens_per_second(model, prompt, length, repeats, use_cache=use_cache)
    return speeds


def speculative_speed(model: nn.Module, prompts: torch.Tensor, drafts: dict[str, Draft], run: GenerationRun,
                      repeats: int = 3) -> dict[str, dict]:
    """Greedy decoding of the end of each prompt (N, P) as far as the context allows, plainly and with each draft.

    For each way: tokens per second over all prompts (best of ``repeats``), and for the drafts the
    new tokens per forward pass, the share of proposals kept and whether every text equals plain
    greedy decoding's.
    """
    k, prompts = run.speculative_k, prompts[:, -run.speculative_prompt :]
    new = model.context_length - prompts.size(1) - k  # the text, the proposals and all within the context
    device = next(model.parameters()).device
    rows = [p[None].to(device) for p in prompts]
    plain = [generate(model, p, new, do_sample=False) for p in rows]  # the reference, and a warm-up
    results: dict[str, dict] = {}
    for name, draft in {"plain greedy": None, **drafts}.items():
        best, outs = float("inf"), []
        for _ in range(repeats):
            start = time.perf_counter()
            if draft is None:
                outs = [generate(model, p, new, do_sample=False) for p in rows]
            else:
                outs = [speculative_greedy(model, p, draft, new, k=k) for p in rows]
            best = min(best, time.perf_counter() - start)
        results[name] = {"tokens_per_second": len(rows) * new / best, "new_tokens": new}
        if draft is not None:
            passes = sum(o.passes for o in outs) + len(outs)  # the first token comes with the prompt's pass
            results[name].update(tokens_per_pass=len(rows) * new / passes,
                                 acceptance=sum(o.accepted for o in outs) / max(1, sum(o.proposed for o in outs)),
                                 same=all(torch.equal(o.ids.to(device), p) for o, p in zip(outs, plain)))
    return results


# --- The tutorials' call, the truncation filters, contrastive search ---------------------------------------
SEED_CALL = dict(max_length=50, num_return_sequences=3, no_repeat_ngram_size=2, early_stopping=True)


def seed_call() -> dict:
    """The tutorials' call (:data:`SEED_CALL`) without ``num_beams`` on a tiny ``GPT2LMHeadModel`` built here
    (random weights, nothing downloaded): ``error``, the message ``transformers`` raises; ``early_stopping``,
    what its strict configuration check says of that flag; ``fixed_shape``, the output of the call with
    ``num_beams=5`` (3 rows of 50 tokens)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers import GenerationConfig as HFGenerationConfig
    from transformers.utils import logging as hf_logging

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=64, n_layer=1, n_head=2, n_embd=16, bos_token_id=0, eos_token_id=0)
    hf_model = GPT2LMHeadModel(config).eval()
    ids = torch.tensor([[1, 2, 3]])
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its warning repeats what the check below says
    try:
        try:
            hf_model.generate(ids, attention_mask=torch.ones_like(ids), **SEED_CALL)
            error = None
        except ValueError as err:
            error = str(err)
        try:
            HFGenerationConfig(**{k: v for k, v in SEED_CALL.items() if k != "num_return_sequences"}).validate(
                strict=True)
            early = None
        except ValueError as err:
            early = " ".join(line.strip("- ") for line in str(err).splitlines() if "early_stopping" in line)
        fixed = hf_model.generate(ids, attention_mask=torch.ones_like(ids), num_beams=5, **SEED_CALL)
    finally:
        hf_logging.set_verbosity(verbosity)
    return {"error": error, "early_stopping": early, "fixed_shape": tuple(fixed.shape)}


def truncation_stages(logits: torch.Tensor, top_p: float = 0.9, min_p: float = 0.1, typical_p: float = 0.9,
                      eta: float = 0.02) -> dict[str, torch.Tensor]:
    """One next-token distribution (V,) as the model gives it, after top-p, and after each newer filter alone."""
    scores = logits.float()[None]  # (1, V)
    stages = {"the model": scores, f"top-p, p={top_p:g}": top_p_filter(scores, top_p),
              f"min-p, {min_p:g}": min_p_filter(scores, min_p),
              f"typical, {typical_p:g}": typical_filter(scores, typical_p),
              f"η, ε={eta:g}": eta_filter(scores, eta)}
    return {name: torch.softmax(s, dim=-1)[0] for name, s in stages.items()}


def repeated_share(ids: torch.Tensor, prompt_length: int, n: int = 4) -> float:
    """The share of the continuations' token n-grams (rows of ``ids`` (B, T) after ``prompt_length``) that already
    occurred earlier in the same row, the prompt included: 0 for text that never repeats an n-gram."""
    repeated = total = 0
    for row in ids.tolist():
        seen = {tuple(row[i : i + n]) for i in range(max(0, prompt_length - n + 1))}
        for i in range(max(0, prompt_length - n + 1), len(row) - n + 1):
            gram = tuple(row[i : i + n])
            repeated, total = repeated + (gram in seen), total + 1
            seen.add(gram)
    return repeated / total if total else float("nan")


def contrastive_vs_greedy(model: nn.Module, prompts: torch.Tensor, run: GenerationRun) -> dict[str, dict]:
    """Greedy decoding and contrastive search continue the end of each prompt (N, P) as far as the context allows:
    the ids, the model's log-probability per token of the continuations and their :func:`repeated_share`."""
    prompts = prompts[:, -run.speculative_prompt :].to(next(model.parameters()).device)
    new = min(run.new_tokens, model.context_length - prompts.size(1))
    name = f"contrastive search, α={run.contrastive_alpha:g}, k={run.contrastive_k}"
    outs = {"greedy": generate(model, prompts, new, do_sample=False),
            name: contrastive_search(model, prompts, new, run.contrastive_alpha, run.contrastive_k)}
    return {key: {"ids": out.cpu(), "logp_per_token": continuation_logprob(model, out, prompts.size(1)).mean().item()
                  / new, "repeated": repeated_share(out, prompts.size(1))} for key, out in outs.items()}


def speculative_sampling_run(model: nn.Module, draft: nn.Module, prompts: torch.Tensor, run: GenerationRun) -> dict:
    """Speculative sampling of the end of each prompt as far as the context allows (the share of proposals kept,
    the tokens a pass), and ``run.sampling_draws`` tokens after the first prompt drawn by its rule
    (:func:`~lmbook.decoding.speculative.rule_draws`, the draft proposing) and by plain sampling, against the
    model's own distribution: their total variation distances, and the distance that many draws give by
    chance (its expectation, ``0.5 * sum sqrt(2 p (1 - p) / (pi N))``); up to three times that counts as chance."""
    prompts = prompts[:, -run.speculative_prompt :]
    new, k = model.context_length - prompts.size(1), run.speculative_k
    outs = [speculative_sampling(model, draft, p, new, k=k, seed=run.seed + i) for i, p in enumerate(prompts)]
    first, N = prompts[:1], run.sampling_draws
    with torch.no_grad(), evaluating(model), evaluating(draft):
        p = torch.softmax(model(first.to(next(model.parameters()).device))[0][0, -1].float(), -1).cpu()
        q = torch.softmax(draft(first.to(device_of(draft)))[0][0, -1].float(), -1).cpu()
    gen = torch.Generator().manual_seed(run.seed)
    spec, plain = rule_draws(p, q, N, gen), torch.multinomial(p, N, replacement=True, generator=gen)

    def tv(tokens) -> float:
        return 0.5 * (torch.bincount(tokens, minlength=len(p)) / N - p).abs().sum().item()

    noise = 0.5 * torch.sqrt(2 * p * (1 - p) / (math.pi * N)).sum().item()
    passes = sum(o.passes for o in outs)
    chance = tv(spec) <= 3 * noise  # the distance's spread is of the order of its mean: three times it is chance
    return {"verdict": "within what that many draws give by chance" if chance else
            "further from it than that many draws explain by chance",
            "acceptance": sum(o.accepted for o in outs) / max(1, sum(o.proposed for o in outs)),
            "tokens_per_pass": len(outs) * new / passes, "new_tokens": new, "k": k, "draws": N,
            "first_acceptance": torch.minimum(p, q).sum().item(),
            "tv_speculative": tv(spec), "tv_plain": tv(plain), "tv_noise": noise}


# --- What the prose says ----------------------------------------------------------------------------------
def degeneration_summary(results: dict[str, dict], run: GenerationRun) -> dict:
    """The values and verdicts the degeneration paragraph reports, computed from :func:`degeneration`'s results."""
    deterministic = ("greedy", f"beam search, {run.num_beams} beams")
    sampled = [name for name in results if name not in deterministic and name != "human text"]
    human = results["human text"]
    known = [s for s in sampled if math.isfinite(results[s]["distinct-2"])] or sampled
    closest = min(known, key=lambda s: abs(results[s]["distinct-2"] - human["distinct-2"]))
    lower = all(results[d]["perplexity"] < min(results[s]["perplexity"] for s in sampled) for d in deterministic)
    grams = "repeated 4-grams %"
    more = sum(results[d][grams] > human[grams] for d in deterministic)
    rep_verdict = ("neither deterministic strategy repeats itself", "one of the two deterministic strategies "
                   "repeats itself", "both deterministic strategies repeat themselves")[more]
    return {"closest": closest, "greedy_rep": results["greedy"]["repetition %"], "human_rep": human["repetition %"],
            "greedy_grams": results["greedy"][grams], "human_grams": human[grams],
            "beam_grams": results[deterministic[1]][grams],
            "greedy_ppl": results["greedy"]["perplexity"], "human_ppl": human["perplexity"],
            "pure_ppl": results["pure sampling"]["perplexity"],
            "rep_verdict": rep_verdict,
            "ppl_verdict": ("Both deterministic strategies write text the model finds easier than anything a sampler "
                            "writes: probability is what they maximise." if lower else
                            "In this run, not every deterministic strategy writes text the model finds easier than "
                            "every sampler's.")}


def penalty_summary(outputs: dict[str, torch.Tensor], prompt_length: int, n: int = 4) -> dict:
    """For greedy decoding plain and with each anti-repetition setting (``{label: ids (1, T)}``, plain first): the
    share of repeated token n-grams of plain greedy decoding, and the clause that compares each other one with it."""
    shares = {label: repeated_share(ids, prompt_length, n) for label, ids in outputs.items()}
    plain, *others = shares
    changes = {label: "fewer than" if shares[label] < shares[plain] else "more than" if shares[label] > shares[plain]
               else "as many as" for label in others}
    parts = [f"with `{label}`, {100 * shares[label]:.0f}%" for label in others]
    if len(set(changes.values())) == 1:  # one clause for all: "..., and ...: both fewer than ..."
        change = next(iter(changes.values()))
        alike = {1: "", 2: "both "}.get(len(others), "all ")
        verdict = f"{and_list(parts)}: {alike}{change} plain greedy decoding"
    else:
        verdict = "; ".join(f"{part} ({changes[label]} plain greedy decoding)" for part, label in zip(parts, others))
    return {"penalty_n": n, "plain_share": 100 * shares[plain], "penalty_verdict": verdict}
