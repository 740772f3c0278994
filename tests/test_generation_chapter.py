"""Chapter 5's experiments (lmbook.runs.ch05_generation) and figures (lmbook.display.decoding_viz), on a tiny GPT."""

import math

import matplotlib
import pytest
import torch

from lmbook.decoding.shared import GenerationConfig, process_scores
from lmbook.display.decoding_viz import plot_cache_speed, plot_filters, tokens_html
from lmbook.decoding.generate import stream
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.evaluation.metrics import token_nlls
from lmbook.runs import ch05_generation as ch05
from lmbook.text.tokenizers import CharTokenizer

matplotlib.use("Agg")
RUN = ch05.RUNS["fast"].replace(n_prompts=3, prompt_length=6, new_tokens=12, num_beams=2, cache_layers=1,
                                cache_width=64, cache_context=64, cache_lengths=(8, 16))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny")).eval()


@pytest.fixture(scope="module")
def tokenizer(shakespeare):
    return CharTokenizer.train(shakespeare)


def test_continuation_logprob_is_minus_the_summed_nll(model):
    seq = torch.randint(0, 65, (1, 20), generator=torch.Generator().manual_seed(0))
    expected = -token_nlls(model, seq[0], context=19)[5 - 1 :].sum().item()  # the tokens after the first 5
    assert ch05.continuation_logprob(model, seq, 5).item() == pytest.approx(expected, abs=1e-4)


def test_filter_stages_are_distributions_and_the_last_is_transformers_order():
    logits = torch.randn(65, generator=torch.Generator().manual_seed(1))
    stages = ch05.filter_stages(logits, temperature=0.7, top_k=10, top_p=0.9)
    for probs in stages.values():
        assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert int((stages["top-k, k=10"] > 0).sum()) == 10
    config = GenerationConfig(max_new_tokens=1, do_sample=True, temperature=0.7, top_k=10, top_p=0.9)
    combined = process_scores(logits[None], torch.zeros(1, 0, dtype=torch.long), config, sampling=True)
    assert torch.equal(stages["all three, in that order"], torch.softmax(combined, -1)[0])


def test_kv_bytes_per_token_is_what_the_cache_allocates(model):
    assert ch05.kv_bytes_per_token(GPTConfig.preset("gpt2")) == 2 * 12 * 768 * 4 == 73_728
    assert ch05.kv_bytes_per_token(GPTConfig.preset("gpt2"), torch.bfloat16) == 36_864
    cache = model.make_cache()
    with torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long), cache=cache)
    allocated = (cache.k.numel() + cache.v.numel()) * cache.k.element_size() / cache.max_len
    assert allocated == ch05.kv_bytes_per_token(model.config)


def test_degeneration_scores_every_strategy_and_the_human_text(model, tokenizer):
    data = torch.tensor(tokenizer.encode("ROMEO:\nWhat light through yonder window breaks? " * 20))
    prompts, human = ch05.held_out_prompts(data, RUN)
    assert prompts.shape == (3, 6) and human.shape == (3, 12)
    results = ch05.degeneration(model, tokenizer, prompts, human, RUN)
    assert list(results) == [*ch05.strategies(RUN), "human text"]
    for scores in results.values():
        assert 0 <= scores["repetition %"] <= 100 and scores["perplexity"] > 1 and len(scores["texts"]) == 3
    ids = torch.cat([prompts, human], 1)  # the human text's repeated 4-grams, counted as for the strategies
    assert results["human text"]["repeated 4-grams %"] == pytest.approx(100 * ch05.repeated_share(ids, 6))
    loop = torch.tensor([[1, 2, 3, 4, 1, 2, 3, 4, 1, 2]])  # after the prompt: three new 4-grams, three seen
    assert ch05.text_scores(model, loop[:, :4], loop[:, 4:], ["a b"])["repeated 4-grams %"] == pytest.approx(50)
    assert results["human text"]["texts"][0] == tokenizer.decode(human[0].tolist())
    assert math.isnan(ch05.text_scores(model, prompts[:1], human[:1], ["   "])["distinct-2"])  # no words


def fake_clock(monkeypatch, *readings: float) -> None:
    """The clocks of ch05 and of the decoding code it times with read ``readings`` over and over: the timed
    stretches last what they say, whatever the host."""
    import itertools
    from types import SimpleNamespace

    from lmbook.decoding import generate as decoding

    clock = SimpleNamespace(perf_counter=itertools.cycle(readings).__next__)
    monkeypatch.setattr(ch05, "time", clock)
    monkeypatch.setattr(decoding, "time", clock)


def test_cache_speed_times_every_length_both_ways(monkeypatch):
    fake_clock(monkeypatch, 0.0, 0.5, 1.0, 1.25)  # generations of 0.5 and 0.25 seconds in turn
    speeds = ch05.cache_speed(RUN, repeats=2)
    assert speeds == {name: {8: 8 / 0.25, 16: 16 / 0.25} for name in ("with the cache", "without")}  # the best


def test_the_figures_draw(model, tokenizer):
    plot_filters(ch05.filter_stages(torch.randn(65), 0.7, 5, 0.9), tokenizer)
    plot_cache_speed({"with the cache": {8: 100.0, 16: 90.0}, "without": {8: 50.0, 16: 20.0}})
    pieces = list(stream(model, torch.tensor([5, 6]), tokenizer, max_new_tokens=5, seed=0))
    page = tokens_html(pieces, "<b>")
    assert page.count("<span title=") == 5 and "&lt;b&gt;" in page


def test_speculative_speed_reports_passes_and_checks_the_text(model, monkeypatch):
    from lmbook.decoding.speculative import lookup_draft

    fake_clock(monkeypatch, 0.0, 0.5)  # each way decodes the three prompts in half a second
    prompts = torch.randint(0, 65, (3, 6), generator=torch.Generator().manual_seed(0))
    result = ch05.speculative_speed(model, prompts, {"lookup": lookup_draft(2), "silent": lambda ids, k: []}, RUN,
                                    repeats=1)
    new = model.context_length - 6 - RUN.speculative_k  # the prompts are shorter than speculative_prompt
    assert set(result) == {"plain greedy", "lookup", "silent"}
    assert all(r["new_tokens"] == new and r["tokens_per_second"] == 3 * new / 0.5 for r in result.values())
    assert result["silent"]["tokens_per_pass"] == 1.0 and result["silent"]["acceptance"] == 0.0
    assert 1.0 <= result["lookup"]["tokens_per_pass"] <= RUN.speculative_k + 1
    assert result["lookup"]["same"] and result["silent"]["same"]
