"""lmbook.generate: greedy and sampled decoding with the KV cache."""

import pytest
import torch

from lmbook.generate import generate, sample_next
from lmbook.gpt import GPT, GPTConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny")).eval()


def test_greedy_with_cache_equals_greedy_without(model):
    prompt = torch.randint(0, 65, (2, 5))
    fast = generate(model, prompt, 20, temperature=0)
    slow = generate(model, prompt, 20, temperature=0, use_cache=False)
    assert fast.shape == (2, 25) and torch.equal(fast[:, :5], prompt)
    assert torch.equal(fast, slow)


def test_sampling_with_cache_equals_sampling_without(model):
    prompt = torch.randint(0, 65, (1, 3))
    a = generate(model, prompt, 25, temperature=1.3, top_k=10, generator=torch.Generator().manual_seed(4))
    b = generate(model, prompt, 25, temperature=1.3, top_k=10, generator=torch.Generator().manual_seed(4), use_cache=False)
    assert torch.equal(a, b)


def test_generation_runs_past_the_context(model):
    out = generate(model, torch.zeros(1, 1, dtype=torch.long), 3 * model.context_length, temperature=0.8)
    assert out.shape == (1, 1 + 3 * model.context_length)


def test_temperature_zero_is_argmax_and_top_k_limits_choices():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5]])
    assert sample_next(logits, temperature=0).item() == 1
    gen = torch.Generator().manual_seed(0)
    picks = {sample_next(logits, 1.0, top_k=2, generator=gen).item() for _ in range(200)}
    assert picks == {1, 3}


def test_bad_prompts_are_refused(model):
    with pytest.raises(ValueError, match="empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 5)
    with pytest.raises(ValueError, match=r"last 32 tokens"):
        generate(model, torch.zeros(1, 40, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="temperature"):
        sample_next(torch.zeros(1, 4), temperature=-1)
