"""lmbook's decoding against transformers' ``generate`` and logits processors, on the same weights.

A GPT of odd sizes (vocabulary 67, head size 16, 3 layers) is converted with ``lmbook.models.hf.to_hf``.
Its logits agree with ``GPT2LMHeadModel``'s to about 1e-7, not bit for bit, so greedy and beam
search agree on ids (no near ties at these seeds) and beam scores agree to float rounding.
Seeded sampling draws the same ids where the random draws line up: both draw one
``torch.multinomial(probs, 1)`` per step over the (rows, V) matrix from a CPU generator with the
same seed and draw nothing else, and ``probs`` differ only in the last bits, so a draw falls on
the other side of a boundary only with probability ~1e-7 per step. They cannot line up when
``transformers`` draws from the GPU's generator, when the model runs in bf16 (probabilities
differ in the third digit), or when prompts of different lengths go one by one (a model without
an ``attention_mask``, such as the recurrent ones): the draws are then taken in another order.
"""

import statistics

import pytest
import torch
from transformers.generation.logits_process import (
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lmbook.decoding.shared import no_repeat_ngram, repetition_penalty, top_k_filter, top_p_filter
from lmbook.decoding.generate import generate
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.models.hf import to_hf
from lmbook.text.tokenizers import CharTokenizer

V = 67


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Decoding tiny models: one thread for the whole module (tests/conftest.py)."""


@pytest.fixture(scope="module")
def models(shakespeare):
    """A GPT trained briefly on characters (so that its text has words and line ends), and its twin."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=160, n_layer=3, n_head=3, n_embd=48))  # 65 characters used
    data = torch.tensor(CharTokenizer.train(shakespeare).encode(shakespeare[:100_000]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        starts = torch.randint(0, len(data) - 33, (16, 1))
        window = data[starts + torch.arange(33)]  # (16, 33)
        _, loss = model(window[:, :-1], window[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model, to_hf(model).eval()


@pytest.fixture(scope="module")
def prompts(shakespeare):
    tokenizer = CharTokenizer.train(shakespeare)
    return torch.tensor([tokenizer.encode(text) for text in ("ROMEO: ", "First C", "KING RI")])  # (3, 7)


def hf_generate(hf_model, idx, mask=None, **settings):
    mask = torch.ones_like(idx) if mask is None else mask
    return hf_model.generate(idx, attention_mask=mask, **settings)


def test_the_converted_model_never_stops_on_a_character():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():
        model.wte.weight[64] *= 50  # the last id, once the end-of-text token, is now every greedy choice
    hf_model = to_hf(model)
    assert hf_model.config.eos_token_id is None and hf_model.generation_config.eos_token_id is None
    out = hf_generate(hf_model, torch.tensor([[1, 2, 3]]), max_new_tokens=20, do_sample=False)
    assert out.shape == (1, 23) and (out[0, 3:] == 64).all()
    assert torch.equal(out, generate(model, torch.tensor([[1, 2, 3]]), 20, temperature=0))


def test_greedy_equals_transformers_for_120_tokens(models, prompts):
    model, hf_model = models
    ours = generate(model, prompts, max_new_tokens=120, do_sample=False)
    assert ours.shape == (3, 127)
    assert torch.equal(ours, hf_generate(hf_model, prompts, max_new_tokens=120, do_sample=False))


def test_prompts_of_different_lengths_equal_transformers_left_padded_batch(models):
    model, hf_model = models
    gen = torch.Generator().manual_seed(2)
    rows = [torch.randint(0, V, (n,), generator=gen) for n in (3, 9, 1, 6)]
    idx = torch.stack([torch.cat([torch.zeros(9 - len(r), dtype=torch.long), r]) for r in rows])  # pad id 0
    mask = (torch.arange(9) >= torch.tensor([9 - len(r) for r in rows])[:, None]).long()
    theirs = hf_generate(hf_model, idx, mask, max_new_tokens=100, do_sample=False)
    assert torch.equal(generate(model, idx, 100, temperature=0, attention_mask=mask), theirs)
    assert torch.equal(generate(model, rows, 100, temperature=0), theirs)  # a list is left-padded with 0
    for row, r in zip(theirs, rows):  # and each row is what its prompt gives alone
        assert torch.equal(row[9 - len(r) :], generate(model, r, 100, temperature=0)[0])
    beams = dict(num_beams=3, num_return_sequences=2, length_penalty=0.7, max_new_tokens=20)
    ours = generate(model, idx, attention_mask=mask, return_dict=True, **beams)
    theirs = hf_generate(hf_model, idx, mask, do_sample=False, output_scores=True, return_dict_in_generate=True,
                         **beams)
    assert torch.equal(ours.sequences, theirs.sequences)
    torch.testing.assert_close(ours.scores, theirs.sequences_scores, rtol=1e-5, atol=1e-6)


BEAMS = [
    dict(num_beams=2, length_penalty=1.0, early_stopping=False, num_return_sequences=1),
    dict(num_beams=4, length_penalty=1.0, early_stopping=False, num_return_sequences=3),
    dict(num_beams=3, length_penalty=0.5, early_stopping=True, num_return_sequences=2),
    dict(num_beams=5, length_penalty=2.0, early_stopping="never", num_return_sequences=5),
    dict(num_beams=3, length_penalty=-1.0, early_stopping=False, num_return_sequences=2),
    dict(num_beams=4, length_penalty=0.0, early_stopping="never", num_return_sequences=2),
]


@pytest.mark.parametrize("with_end", [False, True], ids=["no-end", "end-id"])
@pytest.mark.parametrize("beams", BEAMS, ids=lambda b: "-".join(str(v) for v in b.values()))
def test_beam_search_equals_transformers_sequences_and_scores(models, prompts, beams, with_end):
    model, hf_model = models
    settings = dict(beams, max_new_tokens=24)
    if with_end:  # the 4th new token of the best beam: some hypotheses end there, others run on
        end = generate(model, prompts, **settings)[0, 7 + 3].item()
        settings.update(eos_token_id=end, pad_token_id=end)
    ours = generate(model, prompts, return_dict=True, **settings)
    theirs = hf_generate(hf_model, prompts, do_sample=False, output_scores=True, return_dict_in_generate=True,
                         **settings)
    assert ours.sequences.shape == theirs.sequences.shape
    assert torch.equal(ours.sequences, theirs.sequences)
    torch.testing.assert_close(ours.scores, theirs.sequences_scores, rtol=1e-5, atol=1e-6)
    if with_end and beams["length_penalty"] <= 1:  # (a length penalty of 2 makes the longest win)
        assert (ours.sequences[:, 7:] == settings["eos_token_id"]).any()  # the end id did end something


PENALTIES = [
    dict(repetition_penalty=1.4),
    dict(repetition_penalty=0.8),
    dict(no_repeat_ngram_size=2),
    dict(no_repeat_ngram_size=3, repetition_penalty=1.2),
    dict(no_repeat_ngram_size=2, num_beams=3),
    dict(repetition_penalty=1.3, num_beams=4, num_return_sequences=2),
]


@pytest.mark.parametrize("settings", PENALTIES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_repetition_penalty_and_no_repeat_ngram_equal_transformers(models, prompts, settings):
    model, hf_model = models
    ours = generate(model, prompts, 60, do_sample=False, **settings)
    assert torch.equal(ours, hf_generate(hf_model, prompts, max_new_tokens=60, do_sample=False, **settings))
    if "no_repeat_ngram_size" in settings:
        n = settings["no_repeat_ngram_size"]
        for row in ours.tolist():
            grams = [tuple(row[i : i + n]) for i in range(len(row) - n + 1)]
            assert len(grams) == len(set(grams))  # no n-gram twice, the prompt's included


def tied_logits(rows: int = 64, seed: int = 0) -> torch.Tensor:
    """Random logits on a coarse grid, so that many are tied, with a few rows of one value and of -inf."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randint(-6, 7, (rows, V), generator=gen).float() / 2  # 13 values over 67 tokens: ties
    logits[0] = 0.0  # a uniform row: cumulative probabilities land exactly on thresholds
    logits[1, ::2] = float("-inf")
    return logits


@pytest.mark.parametrize("k", [1, 3, 10, 66, 67, 100])
def test_top_k_equals_transformers_with_ties(k):
    logits = tied_logits()
    for min_keep in (1, 2):
        theirs = TopKLogitsWarper(top_k=k, min_tokens_to_keep=min_keep)(None, logits.clone())
        assert torch.equal(top_k_filter(logits, k, min_keep), theirs)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0])
def test_top_p_equals_transformers_with_ties(p):
    logits = tied_logits(seed=1)
    for min_keep in (1, 2):
        theirs = TopPLogitsWarper(top_p=p, min_tokens_to_keep=min_keep)(None, logits.clone())
        assert torch.equal(top_p_filter(logits, p, min_keep), theirs)


def test_temperature_then_top_k_then_top_p_equals_transformers_chain():
    from lmbook.decoding.shared import GenerationConfig, process_scores

    logits = tied_logits(seed=2) + torch.randn(64, V, generator=torch.Generator().manual_seed(3))
    ids = torch.randint(0, V, (64, 12), generator=torch.Generator().manual_seed(4))
    config = GenerationConfig(max_new_tokens=1, do_sample=True, temperature=0.7, top_k=20, top_p=0.8,
                              repetition_penalty=1.3, no_repeat_ngram_size=2)
    theirs = logits.clone()
    for processor in (RepetitionPenaltyLogitsProcessor(1.3), NoRepeatNGramLogitsProcessor(2),
                      TemperatureLogitsWarper(0.7), TopKLogitsWarper(20), TopPLogitsWarper(0.8)):
        theirs = processor(ids, theirs)
    assert torch.equal(process_scores(logits, ids, config, sampling=True), theirs)
    greedy = RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    greedy = NoRepeatNGramLogitsProcessor(2)(ids, greedy)
    assert torch.equal(process_scores(logits, ids, config, sampling=False), greedy)  # no warpers when greedy


@pytest.mark.parametrize("penalty", [0.5, 1.3])
def test_repetition_penalty_and_no_repeat_ngram_equal_transformers_processors(penalty):
    logits = tied_logits(seed=5)
    ids = torch.randint(0, 5, (64, 20), generator=torch.Generator().manual_seed(6))  # few ids: n-grams repeat
    assert torch.equal(repetition_penalty(logits, ids, penalty),
                       RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone()))
    for n in (1, 2, 3, 21):
        assert torch.equal(no_repeat_ngram(logits, ids, n), NoRepeatNGramLogitsProcessor(n)(ids, logits.clone()))


SAMPLING = [
    dict(top_k=0),
    dict(temperature=0.7, top_k=0),
    dict(temperature=1.3, top_k=10, top_p=0.9),
    dict(top_k=0, top_p=0.8, num_return_sequences=2, repetition_penalty=1.2),
]


@pytest.mark.parametrize("settings", SAMPLING, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_seeded_sampling_draws_the_same_ids_as_transformers(models, prompts, settings):
    model, hf_model = models
    ours = generate(model, prompts, 100, do_sample=True, seed=11, **settings)
    torch.manual_seed(11)  # transformers draws from the global generator
    theirs = hf_generate(hf_model, prompts, max_new_tokens=100, do_sample=True, **settings)
    assert torch.equal(ours, theirs)


def test_the_decoding_benchmark_runs_at_a_tiny_size(tmp_path):
    from benchmarks.bench_decode import main

    result = main(["--shapes", "tiny", "--batch-sizes", "1", "2", "--new-tokens", "6", "--repeats", "1",
                   "--profile", "--out", str(tmp_path / "decode.json")])
    assert [(r["batch"], r["same_ids"]) for r in result["rows"]] == [(1, True), (2, True)]
    for r in result["rows"]:  # tokens over the measured seconds, as reported
        assert r["lmbook_tok_s_median"] == r["batch"] * 6 / statistics.median(r["lmbook_seconds"])
        assert r["lmbook_tok_s_best"] == r["batch"] * 6 / min(r["lmbook_seconds"]) >= r["lmbook_tok_s_median"]
        assert r["ratio_median"] == r["lmbook_tok_s_median"] / r["transformers_tok_s_median"]
        assert 0 < r["profile"]["lmbook"]["matmul_share"] < 1
    assert (tmp_path / "decode.json").exists() and result["torch"] == torch.__version__
