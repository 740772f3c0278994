"""lmbook.models.mlm: BERT's masking rates, next-sentence pairs, and filling a blank with either kind of model."""

import pytest
import torch

from lmbook.models.gpt import GPT, GPTConfig
from lmbook.models.mlm import Encoder, Masking, MLMBatches, fill_blank, mask_tokens, nsp_pairs
from lmbook.text.tokenizers import CharTokenizer

MASK, N_RANDOM = 1000, 1000


def big_sample(n=200_000, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(N_RANDOM, (n,), generator=generator)
    inputs, targets = mask_tokens(ids, MASK, N_RANDOM, generator=torch.Generator().manual_seed(seed + 1))
    return ids, inputs, targets


def test_masking_statistics_follow_bert():
    ids, inputs, targets = big_sample()
    chosen = targets != -1
    assert abs(chosen.float().mean().item() - 0.15) < 0.005
    n = chosen.sum().item()
    masked = (inputs[chosen] == MASK).sum().item() / n
    kept = (inputs[chosen] == ids[chosen]).sum().item() / n  # includes random draws of the same id (1 in 1000)
    replaced = ((inputs[chosen] != MASK) & (inputs[chosen] != ids[chosen])).sum().item() / n
    assert abs(masked - 0.8) < 0.01
    assert abs(replaced - 0.1) < 0.01
    assert abs(kept - 0.1) < 0.01
    # the random replacements are ordinary tokens, spread over the vocabulary
    random_ids = inputs[chosen & (inputs != MASK) & (inputs != ids)]
    assert random_ids.max() < N_RANDOM and len(random_ids.unique()) > 0.9 * N_RANDOM


def test_targets_only_at_chosen_positions():
    ids, inputs, targets = big_sample(20_000)
    chosen = targets != -1
    assert torch.equal(targets[chosen], ids[chosen])  # the original token is what must be recovered
    assert torch.equal(inputs[~chosen], ids[~chosen])  # the rest is left untouched
    assert (targets[~chosen] == -1).all()


def test_special_tokens_are_never_chosen():
    ids = torch.randint(10, (50_000,), generator=torch.Generator().manual_seed(0))
    inputs, targets = mask_tokens(ids, 10, 10, special_ids=(0, 3), generator=torch.Generator().manual_seed(1))
    special = (ids == 0) | (ids == 3)
    assert (targets[special] == -1).all() and torch.equal(inputs[special], ids[special])
    assert (targets[~special] != -1).float().mean() > 0.13  # the others are still chosen


def test_masking_is_reproducible_and_keeps_shape():
    ids = torch.randint(50, (4, 16))
    a = mask_tokens(ids, 50, 50, generator=torch.Generator().manual_seed(3))
    b = mask_tokens(ids, 50, 50, generator=torch.Generator().manual_seed(3))
    assert a[0].shape == ids.shape and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_rates_are_refused():
    with pytest.raises(ValueError, match="p_choose"):
        Masking(p_choose=0.0)
    with pytest.raises(ValueError, match="add up"):
        Masking(p_mask=0.9, p_random=0.2)


def test_mlm_batches_shapes_and_resume():
    data = torch.arange(500) % 40
    batches = MLMBatches(data, block_size=16, batch_size=8, mask_id=40, n_random=40, seed=0)
    state = batches.state_dict()
    x, y = batches()
    assert x.shape == y.shape == (8, 16)
    chosen = y != -1
    assert chosen.any() and (x[chosen] != y[chosen]).any()
    batches.load_state_dict(state)
    x2, y2 = batches()
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_nsp_pairs():
    segments = [f"segment {i}" for i in range(100)]
    pairs = nsp_pairs(segments, 2000, seed=0)
    assert len(pairs) == 2000
    is_next = [p for p in pairs if p[2] == 1]
    assert 0.45 < len(is_next) / len(pairs) < 0.55
    for a, b, label in pairs:
        i, j = segments.index(a), segments.index(b)
        assert (j == i + 1) == (label == 1)
        assert j != i
    with pytest.raises(ValueError, match="at least 3"):
        nsp_pairs(segments[:2], 1)


@pytest.fixture
def text_and_tokenizer():
    text = "the cat sat on the mat. the dog sat on the log."
    return text, CharTokenizer.train(text)


def test_fill_blank_reads_the_right_side_only_when_bidirectional(text_and_tokenizer):
    _, tok = text_and_tokenizer
    torch.manual_seed(0)
    config = GPTConfig.preset("tiny", vocab_size=tok.vocab_size + 1)
    gpt, encoder = GPT(config), Encoder(config)
    a, b = "the cat ___ on the mat", "the cat ___ on the log"
    assert fill_blank(gpt, tok, a) == fill_blank(gpt, tok, b)  # the GPT sees only "the cat "
    mask = tok.vocab_size
    left, right = fill_blank(encoder, tok, a, mask), fill_blank(encoder, tok, b, mask)
    assert left != right
    assert len(left) == 5 and all(left[i][1] >= left[i + 1][1] for i in range(4))
    assert all(token in tok.chars for token, _ in left)  # the mask itself is never proposed


def test_fill_blank_gives_the_space_before_the_blank_to_the_blank(text_and_tokenizer):
    _, tok = text_and_tokenizer
    torch.manual_seed(0)
    gpt = GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size))
    assert fill_blank(gpt, tok, "the cat ___ on") == fill_blank(gpt, tok, "the cat___ on")


def test_fill_blank_errors(text_and_tokenizer):
    _, tok = text_and_tokenizer
    encoder = Encoder(GPTConfig.preset("tiny", vocab_size=tok.vocab_size + 1))
    with pytest.raises(ValueError, match="exactly one blank"):
        fill_blank(encoder, tok, "no blank here", tok.vocab_size)
    with pytest.raises(ValueError, match="mask_id"):
        fill_blank(encoder, tok, "the ___ sat")
