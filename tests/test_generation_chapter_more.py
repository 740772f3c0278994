"""Chapter 5's newer runs (the tutorials' call, the truncation filters, contrastive search, speculative sampling,
what the prose says) and its tables and figures, on tiny models."""

import math

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch

from lmbook.decoding.generate import generate
from lmbook.decoding.shared import GenerationConfig, process_scores
from lmbook.display.decoding_viz import (
    degeneration_table,
    kv_cache_table,
    plot_degeneration,
    speculative_table,
)
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.runs import ch05_generation as ch05

matplotlib.use("Agg")
RUN = ch05.RUNS["fast"].replace(n_prompts=3, prompt_length=6, new_tokens=12, speculative_prompt=6, sampling_draws=50)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Tiny computations: one thread (tests/conftest.py)."""


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()


def test_the_tutorials_call_fails_without_beams_and_works_with_five():
    out = ch05.seed_call()
    assert "num_return_sequences" in out["error"] and "Greedy" in out["error"]
    assert "early_stopping" in out["early_stopping"] and "num_beams" in out["early_stopping"]
    assert out["fixed_shape"] == (3, 50)


def test_truncation_stages_are_each_filter_alone():
    logits = 3 * torch.randn(40, generator=torch.Generator().manual_seed(0))
    stages = ch05.truncation_stages(logits, top_p=0.9, min_p=0.1, typical_p=0.8, eta=0.02)
    assert list(stages) == ["the model", "top-p, p=0.9", "min-p, 0.1", "typical, 0.8", "η, ε=0.02"]
    settings = [{}, dict(top_p=0.9), dict(min_p=0.1), dict(typical_p=0.8), dict(eta_cutoff=0.02)]
    for probs, setting in zip(stages.values(), settings):
        config = GenerationConfig(max_new_tokens=1, do_sample=True, **setting)
        expected = process_scores(logits[None], torch.zeros(1, 0, dtype=torch.long), config, sampling=True)
        assert torch.allclose(probs, expected.softmax(-1)[0]) and probs.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_repeated_share_counts_ngrams_seen_before_the_prompt_included(model):
    ids = torch.tensor([[1, 2, 3, 1, 2, 3, 4]])  # prompt 1 2 3; the continuation 1 2 3 4 has 2-grams 31 12 23 34
    assert ch05.repeated_share(ids, 3, n=2) == pytest.approx(2 / 4)  # 12 and 23 occurred in the prompt
    assert ch05.repeated_share(torch.tensor([[5, 6, 7, 8]]), 2, n=2) == 0.0
    prompt = torch.tensor([[1, 2, 3, 4, 5, 6]])
    out = generate(model, prompt, 10, do_sample=False, no_repeat_ngram_size=3)
    assert ch05.repeated_share(out, 6, n=3) == 0.0  # the rule forbids exactly that


def test_contrastive_vs_greedy_and_speculative_sampling_run(model):
    prompts = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(1))
    out = ch05.contrastive_vs_greedy(model, prompts, RUN)
    greedy, contrastive = out.values()
    assert torch.equal(greedy["ids"], generate(model, prompts[:, -6:], 10, do_sample=False))
    assert contrastive["ids"].shape == (3, 16) and 0 <= contrastive["repeated"] <= 1
    assert greedy["logp_per_token"] >= contrastive["logp_per_token"] - 0.5  # both are log-probabilities per token
    spec = ch05.speculative_sampling_run(model, model, prompts, RUN)  # the model as its own draft: all kept
    assert spec["acceptance"] == 1.0 and spec["tokens_per_pass"] > 1 and spec["draws"] == 50
    assert all(0 <= spec[key] <= 1 for key in ("tv_speculative", "tv_plain", "tv_noise"))
    assert spec["verdict"].startswith("within" if spec["tv_speculative"] <= 3 * spec["tv_noise"] else "further")


def scores(grams, ppl, d2=0.5):
    return {"repetition %": 0.0, "repeated 4-grams %": grams, "distinct-2": d2, "distinct-3": 0.7, "perplexity": ppl}


@pytest.mark.parametrize("reps, verdict", [((0, 5), "neither deterministic strategy repeats itself"),
                                           ((10, 0), "one of the two deterministic strategies repeats itself"),
                                           ((10, 20), "both deterministic strategies repeat themselves")])
def test_the_degeneration_summary_reads_as_a_sentence(reps, verdict):
    results = {"greedy": scores(reps[0], 1.5), f"beam search, {RUN.num_beams} beams": scores(reps[1], 1.3),
               "pure sampling": scores(0, 9.0, d2=float("nan")), "top-p=0.9": scores(0, 4.0, d2=0.6),
               "human text": scores(5, 5.0, d2=0.62)}
    out = ch05.degeneration_summary(results, RUN)
    assert (out["greedy_grams"], out["beam_grams"], out["human_grams"]) == (reps[0], reps[1], 5)
    assert out["rep_verdict"] == verdict and out["closest"] == "top-p=0.9"  # a NaN is never the closest
    assert out["ppl_verdict"].startswith("Both deterministic")
    results["greedy"]["perplexity"] = 10.0
    assert ch05.degeneration_summary(results, RUN)["ppl_verdict"].startswith("In this run, not every")


def test_the_penalty_summary_compares_with_plain_greedy():
    outputs = {"plain": torch.tensor([[1, 2, 1, 2, 1, 2, 1, 2]]), "a penalty": torch.tensor([[1, 2, 3, 4, 1, 2, 3, 5]]),
               "a rule": torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])}
    out = ch05.penalty_summary(outputs, 2, n=2)
    assert out["plain_share"] == pytest.approx(100 * 5 / 6)  # the 2-grams ending after the prompt: 21 new, 5 seen
    assert out["penalty_verdict"] == ("with `a penalty`, 33% and with `a rule`, 0%: both fewer than plain greedy "
                                      "decoding")
    outputs["a rule"] = torch.tensor([[1, 2, 1, 2, 1, 2, 1, 2]])  # as plain: the clauses part
    assert ch05.penalty_summary(outputs, 2, n=2)["penalty_verdict"] == (
        "with `a penalty`, 33% (fewer than plain greedy decoding); with `a rule`, 83% (as many as plain greedy "
        "decoding)")


def test_the_tables_and_the_figure():
    results = {"greedy": scores(50.0, 1.5), "pure sampling": scores(0.0, 9.0, d2=float("nan")),
               "human text": scores(0.0, 5.0)}
    columns = ["repetition %", "distinct-2", "perplexity"]
    table = degeneration_table(results, columns).splitlines()
    assert table[0] == "| strategy | repetition % | distinct-2 | perplexity |" and len(table) == 5
    assert table[3] == "| pure sampling | 0.00 | – | 9.00 |"
    axes = plot_degeneration(results, columns)
    assert len(axes) == 3 and [t.get_text() for t in axes[0].get_yticklabels()] == list(results)
    assert [p.get_width() for p in axes[1].patches] == [0.5, 0.0, 0.5]  # NaN drawn as no bar
    plt.close("all")
    kv = kv_cache_table([("tiny", 2, 32, 512, 32), ("gpt2", 12, 768, 73_728, 1024)]).splitlines()
    assert kv[2].endswith("| 512 | 16.0 KiB (32 tokens) |") and kv[3].endswith("| 72.0 MiB (1,024 tokens) |")
    spec = speculative_table({"plain greedy": {"tokens_per_second": 1000.0},
                              "lookup": {"tokens_per_second": 1500.0, "tokens_per_pass": 2.5, "acceptance": 0.4,
                                         "same": True}}).splitlines()
    assert spec[2] == "| plain greedy | 1,000 | 1.00 | – | yes |"
    assert spec[3] == "| lookup | 1,500 | 2.50 | 40% | yes |"
    assert math.isclose(2 * 12 * 768 * 4, 73_728)
