"""The public API driven with arbitrary and hostile arguments (hypothesis).

Every call either succeeds and keeps its invariants (round trips, shapes, probabilities, equal logits)
or fails with one of the documented exception types (``ValueError``, ``TypeError``, ``KeyError``) and a
message that says something; never an ``IndexError``, a ``ZeroDivisionError`` or torch's own errors.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lmbook.data import RandomBatches, SequentialBatches, train_val_split
from lmbook.generate import generate
from lmbook.gpt import GPT, GPTConfig
from lmbook.metrics import bits_per_char, perplexity
from lmbook.rnn import RNNLM, RNNConfig
from lmbook.tokenizers import BPETokenizer, CharTokenizer, UnknownCharacterError
from lmbook.train import TrainConfig

DOCUMENTED = (ValueError, TypeError, KeyError)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
anything = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                     st.text(max_size=5), st.tuples(st.floats(), st.floats()))


def documented(call):
    """Run ``call``; return its result, or ``None`` when it failed as documented (with a message)."""
    try:
        return call()
    except DOCUMENTED as err:
        assert str(err).strip(), f"{type(err).__name__} without a message"
        return None


# --- Tokenizers ----------------------------------------------------------------------------
CORPUS = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind to suffer\n"
BPE = BPETokenizer.train(CORPUS * 3, vocab_size=300)


@FAST
@given(st.text(max_size=60))
def test_byte_level_bpe_round_trips_any_text(text):
    ids = BPE.encode(text)
    assert all(0 <= i < BPE.vocab_size for i in ids)
    assert BPE.decode(ids) == text


@FAST
@given(st.text(min_size=1, max_size=40), st.text(max_size=40))
def test_char_tokenizer_round_trips_its_alphabet_and_names_what_it_cannot(corpus, text):
    tokenizer = CharTokenizer.train(corpus)
    known = "".join(c for c in text if c in tokenizer.chars)
    assert tokenizer.decode(tokenizer.encode(known)) == known
    if any(c not in tokenizer.chars for c in text):
        with pytest.raises(UnknownCharacterError) as err:
            tokenizer.encode(text)
        assert isinstance(err.value, ValueError) and str(err.value)


@FAST
@given(st.lists(st.integers(-5, 400), max_size=10))
def test_decoding_ids_outside_the_vocabulary_is_refused(ids):
    if all(0 <= i < BPE.vocab_size for i in ids):
        assert isinstance(BPE.decode(ids), str)
        assert BPE.decode(torch.tensor(ids, dtype=torch.long).tolist()) == BPE.decode(ids)
    else:
        with pytest.raises(ValueError, match="range"):
            BPE.decode(ids)


# --- Configurations ----------------------------------------------------------------------------
@FAST
@given(st.dictionaries(st.sampled_from(["vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout"]),
                       anything, max_size=3))
def test_gpt_configs_are_valid_or_refused(changes):
    config = documented(lambda: GPTConfig.preset("tiny", **changes))
    if config is not None:
        assert config.n_embd % config.n_head == 0 and config.vocab_size >= 1 and 0 <= config.dropout < 1


@FAST
@given(st.dictionaries(st.sampled_from(["max_steps", "lr", "min_lr", "warmup_steps", "weight_decay", "betas",
                                        "grad_clip", "eval_iters", "eval_interval", "schedule", "patience"]),
                       anything, max_size=3))
def test_training_configs_are_valid_or_refused(changes):
    config = documented(lambda: TrainConfig(**changes))
    if config is not None:
        assert config.max_steps >= 1 and 0 <= config.min_lr <= config.lr and len(config.betas) == 2


@FAST
@given(st.dictionaries(st.sampled_from(["vocab_size", "cell", "n_layer", "n_embd", "n_hidden"]), anything,
                       max_size=2))
def test_rnn_configs_build_or_are_refused(changes):
    config = documented(lambda: RNNConfig.preset("tiny", **changes))
    if config is not None:  # every config is checked; only the small ones are built (2 * 10**6 numbers at most)
        E, H, V, L = config.n_embd, config.n_hidden, config.vocab_size, config.n_layer
        assume(V * E + L * 4 * H * (E + H + 2) + H * V <= 2 * 10**6)
        model = documented(lambda: RNNLM(config))
        if model is not None:
            assert model(torch.zeros(1, 3, dtype=torch.long))[0].shape == (1, 3, config.vocab_size)


# --- Batch sources -----------------------------------------------------------------------------
@FAST
@given(st.integers(0, 300), st.integers(-3, 70), st.integers(-3, 9))
def test_random_batches_are_shifted_windows_or_refused(n, block_size, batch_size):
    data = torch.arange(n) % 50
    batches = documented(lambda: RandomBatches(data, block_size, batch_size, seed=0))
    if batches is not None:
        x, y = batches()
        assert x.shape == y.shape == (batch_size, block_size)
        assert torch.equal(x[:, 1:], y[:, :-1])


@FAST
@given(st.integers(0, 300), st.integers(-3, 70), st.integers(-3, 9))
def test_sequential_batches_continue_their_streams_or_are_refused(n, block_size, batch_size):
    data = torch.arange(n)
    batches = documented(lambda: SequentialBatches(data, block_size, batch_size))
    if batches is not None:
        x1, y1 = batches()
        assert x1.shape == (batch_size, block_size) and torch.equal(y1, x1 + 1)


@FAST
@given(st.text(max_size=30), st.floats(allow_nan=True, allow_infinity=True))
def test_splits_keep_every_item_or_are_refused(text, fraction):
    parts = documented(lambda: train_val_split(text, fraction))
    if parts is not None:
        assert parts[0] + parts[1] == text


# --- Training ------------------------------------------------------------------------------------------
@settings(max_examples=8, deadline=None)
@given(st.integers(0, 3), st.integers(0, 5), st.sampled_from([torch.long, torch.float32]))
def test_training_on_odd_batches_learns_or_says_what_is_wrong(rows, length, dtype):
    from lmbook.train import train

    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", block_size=8))
    x = torch.randint(0, 65, (rows, length)).to(dtype)
    history = documented(lambda: train(model, lambda: (x, x), TrainConfig(max_steps=2, progress=False)))
    if history is not None:
        assert rows >= 1 and length >= 1 and dtype == torch.long and len(history.train_loss) == 2


# --- Decoding ---------------------------------------------------------------------------------------
torch.manual_seed(0)
TINY = GPT(GPTConfig.preset("tiny", block_size=16)).eval()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-2, 70), max_size=20), st.integers(-2, 20),
       st.dictionaries(st.sampled_from(["temperature", "top_k", "top_p", "num_beams", "repetition_penalty",
                                        "no_repeat_ngram_size", "num_return_sequences"]),
                       st.one_of(st.integers(-3, 6), st.floats(-2, 3), st.just(float("nan"))), max_size=3))
def test_generation_gives_ids_of_the_vocabulary_or_refuses(prompt, new, options):
    out = documented(lambda: generate(TINY, prompt, max_new_tokens=new, seed=0, **options))
    if out is not None:
        assert len(prompt) >= 1 and all(0 <= i < 65 for i in prompt)
        assert out.dim() == 2 and out.shape[1] <= len(prompt) + new
        assert out[0, : len(prompt)].tolist() == prompt and ((0 <= out) & (out < 65)).all()


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(0, 64), min_size=1, max_size=12), st.integers(1, 8))
def test_a_list_of_ids_and_a_tensor_of_them_decode_alike(prompt, new):
    as_list = generate(TINY, prompt, max_new_tokens=new, seed=3)
    assert torch.equal(as_list, generate(TINY, torch.tensor(prompt), max_new_tokens=new, seed=3))
    assert torch.equal(as_list, generate(TINY, [prompt], max_new_tokens=new, seed=3))


# --- Conversion ------------------------------------------------------------------------------------
@settings(max_examples=8, deadline=None)
@given(st.integers(1, 3), st.sampled_from([(1, 8), (2, 8), (3, 12), (4, 16)]), st.integers(5, 80),
       st.integers(2, 24), st.booleans())
def test_conversion_to_transformers_and_back_keeps_the_logits(n_layer, heads_and_width, vocab, block, bias):
    from lmbook.hf import from_hf, to_hf

    n_head, n_embd = heads_and_width
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                          bias=bias)).eval()
    idx = torch.randint(0, vocab, (2, block))
    hf = to_hf(model).eval()
    back = from_hf(hf).eval()
    with torch.no_grad():
        ours, theirs, again = model(idx)[0], hf(idx).logits, back(idx)[0]
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, ours, atol=1e-5, rtol=1e-5)


# --- Metrics ---------------------------------------------------------------------------------------------
@FAST
@given(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 10**6))
def test_perplexity_and_bits_are_sensible_or_refused(nll, n_chars):
    ppl = documented(lambda: perplexity(nll))
    if ppl is not None:
        assert ppl >= 1.0 and (math.isinf(ppl) or math.isclose(math.log(ppl), nll, rel_tol=1e-9, abs_tol=1e-9))
    bits = documented(lambda: bits_per_char(nll, n_chars))
    if bits is not None:
        assume(n_chars > 0)
        assert bits >= 0
