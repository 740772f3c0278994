"""lmbook.decoding.speculative: the model's greedy text whatever the draft proposes, fewer passes with a good draft."""

import math

import pytest
import torch

from lmbook.decoding.generate import generate
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.models.ngram import NGramLM
from lmbook.models.rnn import RNNLM, RNNConfig
from lmbook.decoding.speculative import lookup_draft, ngram_draft, speculative_greedy
from lmbook.text.tokenizers import CharTokenizer


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Tiny models: one thread for the whole module (tests/conftest.py)."""


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", vocab_size=65, block_size=128, n_layer=2)).eval()


def random_draft(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return lambda ids, k: torch.randint(0, 65, (k,), generator=gen).tolist()  # almost always wrong


@pytest.mark.parametrize("k", [1, 2, 4, 7])
@pytest.mark.parametrize("prompt_length", [1, 9])
def test_any_draft_gives_the_greedy_text(model, k, prompt_length):
    idx = torch.randint(0, 65, (prompt_length,), generator=torch.Generator().manual_seed(prompt_length))
    greedy = generate(model, idx, 40, do_sample=False)
    perfect = lambda ids, n: greedy[0, len(ids) : len(ids) + n].tolist()  # noqa: E731
    for draft in (lookup_draft(3), random_draft(k), lambda ids, n: [], perfect):
        out = speculative_greedy(model, idx, draft, 40, k=k)
        assert torch.equal(out.ids, greedy), (k, prompt_length)
        assert out.passes <= 39 and 0 <= out.accepted <= out.proposed <= k * out.passes


def test_passes_follow_from_what_the_draft_gets_right(model):
    idx = torch.tensor([[3, 1, 4, 1, 5]])
    greedy = generate(model, idx, 41, do_sample=False)
    perfect = speculative_greedy(model, idx, lambda ids, n: greedy[0, len(ids) : len(ids) + n].tolist(), 41, k=4)
    assert perfect.passes == math.ceil(40 / 5) and perfect.accepted == perfect.proposed == 32
    assert perfect.acceptance == 1.0
    silent = speculative_greedy(model, idx, lambda ids, n: [], 41, k=4)
    assert silent.passes == 40 and silent.proposed == 0 and silent.acceptance == 0.0
    wrong = speculative_greedy(model, idx, lambda ids, n: [(greedy[0, len(ids)].item() + 1) % 65] * n, 41, k=3)
    assert wrong.passes == 40 and wrong.accepted == 0 and torch.equal(wrong.ids, greedy)


def test_it_stops_at_the_end_id_as_generate_does(model):
    idx = torch.tensor([7, 8, 9])
    free = generate(model, idx, 30, do_sample=False)[0, 3:].tolist()
    end = free[5]  # a token the model does write
    expected = generate(model, idx, 30, do_sample=False, eos_token_id=end)
    out = speculative_greedy(model, idx, lookup_draft(2), 30, k=4, eos_token_id=end)
    assert out.ids[0].tolist() == idx.tolist() + free[: free.index(end) + 1]
    assert out.ids[0].tolist() == expected[0][: out.ids.size(1)].tolist()


def test_lookup_copies_what_followed_the_first_occurrence():
    draft = lookup_draft(3)
    assert draft([1, 2, 3, 9, 8, 1, 2, 3], 2) == [9, 8]
    assert draft([1, 2, 3, 9, 8, 5, 2, 3], 3) == [9, 8, 5]  # the last 2-gram (2, 3) when the 3-gram is new
    assert draft([1, 2, 3, 4], 3) == []  # nothing repeats
    assert draft([5, 5], 4) == [5]
    with pytest.raises(ValueError, match="max_ngram must be >= 1"):
        lookup_draft(0)


def test_ngram_draft_chains_the_count_model_s_likeliest_tokens():
    text = "to be or not to be, that is the question; to be, to be, to be."
    tokenizer = CharTokenizer.train(text)
    lm = NGramLM.fit(list(text), n=3)
    ids = tokenizer.encode("to b")
    context, expected = list("to b"), []
    for _ in range(5):
        piece = lm.vocab[int(lm.distribution(context).argmax())]
        expected.append(tokenizer.encode(piece)[0])
        context.append(piece)
    assert ngram_draft(lm, tokenizer)(ids, 5) == expected
    assert tokenizer.decode(expected).startswith("e")


def test_bad_arguments_are_refused_with_what_to_do(model):
    idx = torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="k .* must be >= 1"):
        speculative_greedy(model, idx, lookup_draft(), 5, k=0)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        speculative_greedy(model, idx, lookup_draft(), 0)
    with pytest.raises(ValueError, match="one non-empty prompt"):
        speculative_greedy(model, torch.tensor([[1, 2], [3, 4]]), lookup_draft(), 5)
    with pytest.raises(ValueError, match="one non-empty prompt"):
        speculative_greedy(model, torch.tensor([], dtype=torch.long), lookup_draft(), 5)
    with pytest.raises(ValueError, match="more than the model's context of 128: shorten"):
        speculative_greedy(model, idx, lookup_draft(), 126, k=4)
    with pytest.raises(TypeError, match="k .* must be an integer"):
        speculative_greedy(model, idx, lookup_draft(), 5, k=2.5)
    with pytest.raises(TypeError, match="max_new_tokens must be an integer"):
        speculative_greedy(model, idx, lookup_draft(), 5.0)
    with pytest.raises(TypeError, match="integer token ids"):
        speculative_greedy(model, torch.tensor([1.0, 2.7]), lookup_draft(), 5)
    with pytest.raises(TypeError, match="integer token ids"):
        speculative_greedy(model, [1, 2.7], lookup_draft(), 5)
    with pytest.raises(ValueError, match="outside the vocabulary of 65"):
        speculative_greedy(model, idx, lambda ids, n: [99] * n, 5)
    rnn = RNNLM(RNNConfig(vocab_size=65, cell="gru", n_layer=1, n_embd=8, n_hidden=8))
    with pytest.raises(TypeError, match="cache cannot roll back"):
        speculative_greedy(rnn, idx, lookup_draft(), 5)


def test_a_text_that_fills_the_context_exactly_is_decoded_whatever_k(model):
    """k proposals are checked within the room left: they are not counted on top of the text's length."""
    idx = torch.tensor([1, 2, 3])
    out = speculative_greedy(model, idx, lookup_draft(), 125, k=8)
    assert out.ids.shape == (1, 128)
    assert torch.equal(out.ids, generate(model, idx, 125, do_sample=False))


def test_the_model_keeps_its_mode(model):
    model.train()
    try:
        speculative_greedy(model, torch.tensor([1, 2, 3]), lookup_draft(), 5)
        assert model.training  # decoded in eval mode (no dropout), then left as it was found
    finally:
        model.eval()
