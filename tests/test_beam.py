"""Beam search against an exhaustive search: with as many beams as there are partial sequences, beam search must
return the best hypotheses of all, ranked by ``sum log p / new_tokens ** length_penalty``, with their scores."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmbook.decoding.beam import beam_search
from lmbook.decoding.shared import GenerationConfig
from lmbook.decoding.generate import generate
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.models.rnn import RNNLM, RNNConfig

V, NEW = 3, 3  # three ids, three new tokens: 3 ** 2 = 9 partial sequences before the last step
BEAMS = V ** (NEW - 1)


def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    rnn = RNNLM(RNNConfig.preset("tiny", vocab_size=V, cell="gru")).eval()
    with torch.no_grad():  # sharper distributions than at initialisation: the ranking is not a near-tie
        for model in (gpt, rnn):
            for p in model.parameters():
                p.mul_(8.0)
    return {"gpt": gpt, "rnn": rnn}


MODELS = models()


def log_prob(model, prompt: list[int], continuation: tuple[int, ...]) -> float:
    """log p(continuation | prompt), one forward pass over the whole sequence."""
    ids = torch.tensor([prompt + list(continuation)])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids)[0][0].double(), dim=-1)  # (T, V)
    return sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(continuation))


def exhaustive(model, prompt: list[int], eos: int | None, length_penalty: float) -> list[tuple[float, tuple]]:
    """Every hypothesis (one that ends at its first end id, or after NEW tokens) with its score, best first."""
    hypotheses = []
    for n in range(1, NEW + 1):
        for continuation in itertools.product(range(V), repeat=n):
            if eos is not None and eos in continuation[:-1]:
                continue  # it ended earlier
            if n < NEW and continuation[-1] != eos:
                continue  # unfinished
            hypotheses.append((log_prob(model, prompt, continuation) / n**length_penalty, continuation))
    return sorted(hypotheses, key=lambda h: -h[0])


@pytest.mark.parametrize("name", MODELS)
@settings(max_examples=12, deadline=None)
@given(prompt=st.lists(st.integers(0, V - 1), min_size=1, max_size=4), eos=st.sampled_from([None, 0, 2]),
       length_penalty=st.sampled_from([0.0, 1.0, 2.0]))
def test_beam_search_with_every_partial_sequence_kept_is_exhaustive(name, prompt, eos, length_penalty):
    model = MODELS[name]
    best = exhaustive(model, prompt, eos, length_penalty)
    R = min(BEAMS, len(best))
    config = GenerationConfig(max_new_tokens=NEW, num_beams=BEAMS, num_return_sequences=R, eos_token_id=eos,
                              length_penalty=length_penalty, early_stopping="never", do_sample=False)
    sequences, scores = beam_search(model, torch.tensor([prompt]), config)
    assert sequences.shape[0] == R and (sequences[:, : len(prompt)] == torch.tensor(prompt)).all()
    found = []
    for row in sequences[:, len(prompt):].tolist():
        end = row.index(eos) + 1 if eos is not None and eos in row else len(row)
        assert all(t == eos for t in row[end:])  # a finished hypothesis is filled with the end id
        found.append(tuple(row[:end]))
    assert found == [h for _, h in best[:R]]
    torch.testing.assert_close(scores.double(), torch.tensor([s for s, _ in best[:R]], dtype=torch.float64),
                               atol=1e-4, rtol=1e-5)


def test_generate_returns_beam_search_s_best_sequence_and_its_score():
    model = MODELS["gpt"]
    best = exhaustive(model, [1, 0], None, 1.0)
    out = generate(model, [1, 0], max_new_tokens=NEW, num_beams=BEAMS, num_return_sequences=2, return_dict=True,
                   early_stopping="never")
    assert [tuple(row[2:]) for row in out.sequences.tolist()] == [h for _, h in best[:2]]
    assert out.prompt_length == 2 and math.isclose(float(out.scores[0]), best[0][0], rel_tol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_one_beam_is_greedy_decoding(name):
    model = MODELS[name]
    prompt = torch.tensor([[2, 1, 0, 0]])
    config = GenerationConfig(max_new_tokens=6, num_beams=1, do_sample=False)
    sequences, scores = beam_search(model, prompt, config)
    assert torch.equal(sequences, generate(model, prompt, max_new_tokens=6, do_sample=False))
    assert math.isclose(float(scores[0]), log_prob(model, [2, 1, 0, 0], tuple(sequences[0, 4:].tolist())) / 6,
                        rel_tol=1e-5)


@settings(max_examples=10, deadline=None)
@given(prompts=st.lists(st.lists(st.integers(0, V - 1), min_size=1, max_size=5), min_size=2, max_size=3),
       beams=st.integers(2, 4), use_cache=st.booleans())
def test_a_batch_of_prompts_searches_each_as_alone_with_or_without_the_cache(prompts, beams, use_cache):
    model = MODELS["gpt"]
    options = dict(max_new_tokens=4, num_beams=beams, num_return_sequences=2, return_dict=True, use_cache=use_cache)
    batch = generate(model, prompts, **options)
    T = max(map(len, prompts))
    for i, prompt in enumerate(prompts):
        alone = generate(model, prompt, **options)
        rows = batch.sequences[2 * i : 2 * i + 2, T - len(prompt) :]
        assert torch.equal(rows, alone.sequences)
        torch.testing.assert_close(batch.scores[2 * i : 2 * i + 2], alone.scores, atol=1e-5, rtol=1e-5)
