"""Contrastive search (lmbook.decoding.contrastive) against a slow, direct reading of its formula."""

import pytest
import torch

from lmbook.decoding.contrastive import contrastive_search, degeneration_penalty, last_hidden_states
from lmbook.decoding.generate import generate
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.models.llama import Llama, LlamaConfig

V = 23


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Tiny computations: one thread (tests/conftest.py)."""


@pytest.fixture(scope="module", params=["gpt", "llama"])
def model(request):
    torch.manual_seed(0)
    if request.param == "gpt":
        return GPT(GPTConfig(vocab_size=V, block_size=48, n_layer=2, n_head=2, n_embd=32)).eval()
    return Llama(LlamaConfig.preset("tiny").replace(vocab_size=V, block_size=48)).eval()


def hidden_and_probs(model, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The last hidden states (T, C) of ``ids`` read whole, without a cache, and the next-token distribution (V,)."""
    captured = []
    handle = model.lm_head.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    try:
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0][0, -1]
    finally:
        handle.remove()
    return captured[0][0], logits.float().softmax(-1)


def slow_contrastive(model, ids: list[int], steps: int, alpha: float, k: int) -> list[int]:
    """The formula read literally: for each of the k likeliest v, reread the whole text with v appended."""
    ids = list(ids)
    for _ in range(steps):
        context, probs = hidden_and_probs(model, ids)
        top = probs.topk(k)
        best, best_score = None, -float("inf")
        for p, v in zip(top.values.tolist(), top.indices.tolist()):
            h_v = hidden_and_probs(model, ids + [v])[0][-1]
            cos = max(float(h_v @ h_j / (h_v.norm() * h_j.norm())) for h_j in context)
            score = (1 - alpha) * p - alpha * cos
            if score > best_score:  # the first of equal scores, as argmax takes it
                best, best_score = v, score
        ids.append(best)
    return ids


@pytest.mark.parametrize("alpha, k", [(0.6, 4), (0.3, 2), (0.9, 6), (1.0, 3)])
def test_it_equals_the_formula_computed_the_slow_way(model, alpha, k):
    prompts = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(1))
    out = contrastive_search(model, prompts, 12, penalty_alpha=alpha, top_k=k)
    assert out.shape == (2, 17) and torch.equal(out[:, :5], prompts)
    for row, prompt in zip(out.tolist(), prompts.tolist()):
        assert row == slow_contrastive(model, prompt, 12, alpha, k)


def test_alpha_zero_or_one_candidate_is_greedy_decoding(model):
    prompts = torch.randint(0, V, (3, 4), generator=torch.Generator().manual_seed(2))
    greedy = generate(model, prompts, 15, do_sample=False)
    assert torch.equal(contrastive_search(model, prompts, 15, penalty_alpha=0.0, top_k=5), greedy)
    assert torch.equal(contrastive_search(model, prompts, 15, penalty_alpha=0.7, top_k=1), greedy)


def test_the_penalty_is_the_largest_cosine_similarity():
    gen = torch.Generator().manual_seed(3)
    candidates, context = torch.randn(2, 3, 8, generator=gen), torch.randn(2, 5, 8, generator=gen)
    expected = torch.nn.functional.cosine_similarity(candidates[:, :, None], context[:, None], dim=-1).amax(-1)
    assert torch.allclose(degeneration_penalty(candidates, context), expected, atol=1e-6)
    context[1, 2] = 4 * candidates[1, 0]  # a context state pointing the same way: similarity 1
    assert degeneration_penalty(candidates, context)[1, 0].item() == pytest.approx(1.0, abs=1e-6)


def test_the_hook_reads_what_the_output_layer_reads_and_goes_away(model):
    ids = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(4))
    with last_hidden_states(model) as seen, torch.no_grad():
        logits = model(ids)[0]
    assert len(seen) == 1 and seen[0].shape == (2, 6, model.lm_head.in_features)
    assert torch.allclose(model.lm_head(seen[0]), logits, atol=1e-6)
    with torch.no_grad():
        model(ids)
    assert len(seen) == 1 and not model.lm_head._forward_pre_hooks


def test_it_stops_rows_at_the_end_id_and_keeps_the_mode(model):
    prompts = torch.randint(0, V, (2, 4), generator=torch.Generator().manual_seed(5))
    free = contrastive_search(model, prompts, 10, top_k=3)
    end = int(free[0, 6])  # the third token of the first row becomes the end id
    out = contrastive_search(model, prompts, 10, top_k=3, eos_token_id=end)
    first = out[0, 4:].tolist()
    assert first[: first.index(end) + 1] == free[0, 4:].tolist()[: first.index(end) + 1]
    assert all(t == end for t in first[first.index(end):])
    model.train()
    contrastive_search(model, prompts, 2)
    assert model.training
    model.eval()


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(penalty_alpha=1.5), ValueError, "penalty_alpha must be in \\[0, 1\\]"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(top_k=V + 1), ValueError, "more than the vocabulary"),
    (dict(max_new_tokens=60), ValueError, "more than the model's context"),
])
def test_bad_arguments_are_refused_with_what_to_do(model, kwargs, error, message):
    args = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(error, match=message):
        contrastive_search(model, torch.tensor([[1, 2]]), **args)
    with pytest.raises(TypeError, match="integer token ids"):
        contrastive_search(model, torch.tensor([[1.0, 2.0]]), 3)
    with pytest.raises(TypeError, match="no lm_head"):
        with last_hidden_states(torch.nn.Linear(2, 2)):
            pass
