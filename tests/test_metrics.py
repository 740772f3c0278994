"""Tests for lmbook.evaluation.metrics: perplexity and bits per character against their formulas; the sliding-window
method against one forward pass per token and against transformers on the same weights."""

from __future__ import annotations

import math

import pytest
import torch

from lmbook.models.gpt import GPT, GPTConfig
from lmbook.interface import context_length
from lmbook.evaluation.metrics import (
    LN2,
    TextNLL,
    bits_per_byte,
    bits_per_char,
    held_out_score,
    nats_to_bits,
    perplexity,
    protocol_stride,
    score_text,
    sliding_windows,
    split_loss,
    token_nlls,
)


def test_uniform_guessing_has_the_vocabulary_size_as_perplexity() -> None:
    for vocab_size in (2, 65, 50257):
        assert perplexity(math.log(vocab_size)) == pytest.approx(vocab_size)
    assert perplexity(0.0) == 1.0  # always certain and always right


def test_perplexity_is_the_inverse_geometric_mean_probability() -> None:
    probs = [0.5, 0.25, 0.125, 0.9]
    mean_nll = -sum(math.log(p) for p in probs) / len(probs)
    assert perplexity(mean_nll) == pytest.approx(math.prod(probs) ** (-1 / len(probs)))
    assert perplexity(mean_nll) == pytest.approx((1 / (0.5 * 0.25 * 0.125 * 0.9)) ** 0.25)


def test_a_zero_probability_makes_perplexity_infinite() -> None:
    assert perplexity(math.inf) == math.inf
    assert perplexity(1e6) == math.inf  # exp overflows a float: reported as infinite, not an error


def test_bits_per_char_is_total_nats_over_characters_and_ln2() -> None:
    assert bits_per_char(100 * LN2, 100) == pytest.approx(1.0)
    # 40 tokens of a 200-character text, each given probability 1/8 (3 bits): 120 bits / 200 characters
    assert bits_per_char(40 * math.log(8), 200) == pytest.approx(0.6)
    assert nats_to_bits(math.log(8)) == pytest.approx(3.0)
    assert bits_per_char(math.inf, 10) == math.inf


def test_tensors_and_numpy_numbers_are_accepted() -> None:
    assert perplexity(torch.tensor(math.log(4.0))) == pytest.approx(4.0)
    assert bits_per_char(torch.tensor(2 * LN2, dtype=torch.float64), 2) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [-0.1, math.nan])
def test_impossible_nll_is_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        perplexity(bad)
    with pytest.raises(ValueError):
        bits_per_char(bad, 10)


def test_bits_per_char_needs_characters() -> None:
    with pytest.raises(ValueError, match="n_chars"):
        bits_per_char(1.0, 0)


def test_split_loss_reads_every_token_once():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny"))
    data = torch.randint(0, 65, (32 * 5 + 1,))
    x, y = data[:-1].view(5, 32), data[1:].view(5, 32)
    assert split_loss(model, data, 32, batch_size=2) == pytest.approx(model.eval()(x, y)[1].item(), rel=1e-5)


# --- Chapter 6: TextNLL and the sliding-window method -------------------------------
def test_text_nll_quotes_one_sum_every_way():
    score = TextNLL(nats=120 * LN2, tokens=40, chars=100, bytes=100)
    assert score.cross_entropy == pytest.approx(3 * LN2)  # 3 bits a token
    assert score.bits_per_token == pytest.approx(3.0)
    assert score.perplexity == pytest.approx(8.0)
    assert score.bits_per_char == pytest.approx(1.2)
    assert score.bits_per_byte == pytest.approx(1.2)
    assert bits_per_byte(8 * LN2, 4) == pytest.approx(2.0)  # e.g. 2 characters of 2 bytes each
    pooled = score + TextNLL(nats=0.0, tokens=40, chars=100, bytes=100)
    assert (pooled.tokens, pooled.bits_per_char) == (80, pytest.approx(0.6))
    assert set(score.as_dict()) >= {"perplexity", "bits_per_char", "bits_per_byte"}


def test_text_nll_refuses_what_it_cannot_divide():
    with pytest.raises(ValueError, match="tokens"):
        TextNLL(nats=1.0, tokens=0)
    with pytest.raises(ValueError, match="nats"):
        TextNLL(nats=-1.0, tokens=3)
    with pytest.raises(ValueError, match="chars"):
        _ = TextNLL(nats=1.0, tokens=3).bits_per_char
    with pytest.raises(ValueError, match="n_bytes"):
        bits_per_byte(1.0, 0)


@pytest.mark.parametrize("n, context, stride", [(10, 4, 2), (10, 4, 4), (9, 4, 3), (33, 8, 1), (5, 5, 5)])
def test_sliding_windows_score_every_prediction_once_with_enough_context(n, context, stride):
    spans = sliding_windows(n, context, stride)
    scored = [j for _, first, end in spans for j in range(first, end)]
    assert scored == list(range(n))  # each prediction exactly once, in order
    for k, (begin, first, end) in enumerate(spans):
        assert begin == k * stride and end - begin <= context
        if k:  # after the first window every scored prediction sees >= context - stride earlier tokens
            assert first - begin >= context - stride


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.preset("tiny")).eval()  # context 32, vocabulary 65


def test_stride_equal_to_context_is_the_non_overlapping_loss():
    model, ids = tiny_gpt(), torch.randint(0, 65, (32 * 5 + 1,), generator=torch.Generator().manual_seed(1))
    nll = token_nlls(model, ids)  # stride = context = 32 by default
    assert nll.shape == (160,)
    assert nll.mean().item() == pytest.approx(split_loss(model, ids, 32), rel=1e-5)
    x, y = ids[:-1].view(5, 32), ids[1:].view(5, 32)
    assert nll.mean().item() == pytest.approx(model(x, y)[1].item(), rel=1e-5)


def test_each_token_is_scored_with_its_window_context():
    """Written out: one forward pass per token, on exactly the tokens its window gives it."""
    model, ids = tiny_gpt(), torch.randint(0, 65, (50,), generator=torch.Generator().manual_seed(2))
    context, stride = 32, 12
    expected = torch.empty(49)
    for begin, first, end in sliding_windows(49, context, stride):
        for j in range(first, end):
            logits, _ = model(ids[None, begin : j + 1])  # the window's tokens up to the predicting one
            expected[j] = -torch.log_softmax(logits[0, -1], -1)[ids[j + 1]]
    torch.testing.assert_close(token_nlls(model, ids, context, stride, batch_size=3), expected, atol=1e-5, rtol=1e-5)


def test_sliding_window_matches_transformers_on_converted_weights():
    """The same text scored by the GPT and by its GPT2LMHeadModel twin, and by transformers' own loss."""
    from lmbook.models.hf import to_hf

    model, ids = tiny_gpt(3), torch.randint(0, 65, (101,), generator=torch.Generator().manual_seed(3))
    hf_model = to_hf(model).eval()
    for stride in (32, 16, 5):
        ours = token_nlls(model, ids, stride=stride)
        theirs = token_nlls(hf_model, ids, stride=stride)  # context read from config.n_positions
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # transformers' perplexity guide, literally: windows of max_length tokens every stride tokens, the
    # labels of tokens scored before set to -100. Its window holds the last target too, so it is ours
    # with context = max_length - 1. The count is exact: the model's shift drops each window's first label.
    max_length, stride, seq_len = 32, 16, len(ids)
    prev_end, total, count = 0, 0.0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        input_ids = ids[None, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = hf_model(input_ids, labels=target_ids).loss
        n = (target_ids[:, 1:] != -100).sum().item()
        total, count = total + loss.item() * n, count + n
        prev_end = end
        if end == seq_len:
            break
    assert count == seq_len - 1
    ours = token_nlls(model, ids, context=max_length - 1, stride=stride).double().sum().item()
    assert ours == pytest.approx(total, rel=1e-5)


def test_models_without_a_context_limit_read_the_whole_text_at_once():
    from lmbook.models.rnn import RNNLM, RNNConfig

    torch.manual_seed(0)
    model = RNNLM(RNNConfig(vocab_size=65, n_embd=16, n_hidden=32, n_layer=1, cell="lstm")).eval()
    ids = torch.randint(0, 65, (101,))
    assert context_length(model) is None
    nll = token_nlls(model, ids)
    assert nll.mean().item() == pytest.approx(model(ids[None, :-1], ids[None, 1:])[1].item(), rel=1e-5)
    with pytest.raises(ValueError, match="stride"):
        token_nlls(model, ids, stride=101)


def test_score_text_counts_the_characters_it_predicted():
    from lmbook.text.tokenizers import CharTokenizer, FastBPETokenizer

    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 4
    chars = CharTokenizer.train(text)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=chars.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    score = score_text(model, chars, text, stride=16)
    assert (score.tokens, score.chars, score.bytes) == (len(text) - 1,) * 3
    assert score.nats == pytest.approx(token_nlls(model, chars.encode(text), stride=16).double().sum().item())
    bpe = FastBPETokenizer.train(text, 280)
    ids = bpe.encode(text)
    model = GPT(GPTConfig(vocab_size=bpe.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    score = score_text(model, bpe, text)
    assert score.tokens == len(ids) - 1 < len(text) - 1
    assert score.chars == len(text) - len(bpe.decode(ids[:1]))
    assert score.bits_per_char == pytest.approx(score.nats / LN2 / score.chars)


@pytest.mark.parametrize(
    "ids, kwargs, match",
    [
        ([], {}, "at least 2"),
        ([3], {}, "at least 2"),
        (list(range(20)), {}, "shorter than one window"),
        (list(range(40)), {"stride": 0}, "stride"),
        (list(range(40)), {"stride": 33}, "stride"),
        (list(range(40)), {"context": 64}, "longer than the model's context"),
        (list(range(40)), {"context": 0}, "context"),
        (list(range(40)), {"batch_size": 0}, "batch_size"),
        ([[1, 2], [3, 4]], {}, "1-D"),
    ],
)
def test_sliding_window_refuses_bad_input(ids, kwargs, match):
    with pytest.raises(ValueError, match=match):
        token_nlls(tiny_gpt(), ids, **kwargs)


def test_float_ids_are_refused():
    with pytest.raises(TypeError, match="integer"):
        token_nlls(tiny_gpt(), torch.rand(40))


def test_the_books_protocol_reads_a_gpt_at_a_quarter_context_stride_and_an_rnn_in_one_pass():
    from lmbook.models.rnn import RNNLM, RNNConfig
    from lmbook.text.tokenizers import CharTokenizer

    text = "Now is the winter of our discontent made glorious summer by this sun of York. " * 3
    chars = CharTokenizer.train(text)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=chars.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    rnn = RNNLM(RNNConfig(vocab_size=chars.vocab_size, n_embd=8, n_hidden=16, n_layer=1, cell="gru")).eval()
    assert (protocol_stride(gpt), protocol_stride(rnn)) == (8, None)
    assert held_out_score(gpt, chars, text) == score_text(gpt, chars, text, stride=8)
    assert held_out_score(gpt, chars, text) != score_text(gpt, chars, text)  # side by side differs
    assert held_out_score(rnn, chars, text).nats == pytest.approx(score_text(rnn, chars, text).nats)
    small = GPT(GPTConfig(vocab_size=chars.vocab_size, block_size=3, n_layer=1, n_head=1, n_embd=8))
    assert protocol_stride(small) == 1


def nll_written_out(model, ids) -> float:
    """The summed NLL of every token after the first, from one forward pass over the whole text."""
    logits = model(torch.tensor([ids]))[0][0].double()  # (T, V)
    log_probs = torch.log_softmax(logits, dim=-1)
    return -sum(log_probs[j, ids[j + 1]].item() for j in range(len(ids) - 1))


# A byte-level BPE whose first token ends inside a character: "语" (3 bytes) and the first byte of "言".
# Its merges on "语言语言...": (a8 80), (ad e8), (af, ad e8), (e8, af ad e8).
SPLIT = "语言" * 12


@pytest.mark.parametrize(
    "train, text, first_bytes, chars",
    [
        # an English BPE reads Chinese byte by byte: the first token is the first byte of "语" (3 bytes);
        # the other two bytes of "语" are predicted, so every character counts
        ("To be, or not to be, that is the question. " * 20, "语言模型给每一段文字一个概率。" * 3, b"\xe8", 45),
        ("To be, or not to be, that is the question. " * 20, "\U0001f600 To be, or not to be, that is the question.",
         b"\xf0", 44),  # an emoji of 4 bytes, the first of them the first token
        ("语言" * 50, SPLIT, "语".encode() + b"\xe8", len(SPLIT) - 1),  # "语" wholly in the first token
    ],
    ids=["chinese", "emoji", "a character and a part"],
)
def test_score_text_reads_text_whose_first_token_splits_a_character(train, text, first_bytes, chars):
    from lmbook.text.tokenizers import BPETokenizer

    bpe = BPETokenizer.train(train, 260)
    ids = bpe.encode(text)
    assert bpe.token_bytes(ids[0]) == first_bytes and bpe.decode(ids[:1]).endswith("\ufffd")  # a split character
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=bpe.vocab_size, block_size=256, n_layer=1, n_head=2, n_embd=16))
    score = score_text(model, bpe, text, context=len(ids) - 1)
    assert score.tokens == len(ids) - 1
    assert score.chars == chars
    assert score.bytes == len(text.encode("utf-8")) - len(first_bytes)
    assert score.nats == pytest.approx(nll_written_out(model, ids), rel=1e-5)
    assert score.bits_per_byte == pytest.approx(nll_written_out(model, ids) / LN2 / score.bytes, rel=1e-5)


class Lossy:
    """A tokenizer that loses what it cannot spell: encode drops the 'q's."""

    def encode(self, text):
        return [ord(c) % 64 for c in text if c != "q"]

    def decode(self, ids):
        return "".join(chr(i + 64) for i in ids)


def test_score_text_refuses_a_tokenizer_that_does_not_round_trip_the_text():
    text = "@ABCDEFGHIJKLMNOPQRSTUVWXYZ" * 3  # chr(64..90): Lossy round-trips these but drops 'q'
    model = tiny_gpt()
    assert score_text(model, Lossy(), text).chars == len(text) - 1
    with pytest.raises(ValueError, match="does not round-trip"):
        score_text(model, Lossy(), text + "q" * 3)  # its first token begins the text all the same
