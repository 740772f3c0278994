"""Every language model of the book through one conformance suite (lmbook.interface.LanguageModel).

A new model or variant joins ``MODELS``; the suite checks what decoding, metrics and widgets rely on:
the loss is the cross-entropy of the logits, a cache gives the logits of the full forward pass,
left-padded batches decode each row as the prompt alone, the cache follows beams (reorder) and,
where it can, forgets its last positions (rollback), and the context is enforced with a clear error.
"""

from __future__ import annotations

import pytest
import torch

from lmbook.decoding.generate import generate
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.interface import Cache, LanguageModel, check_model
from lmbook.models.llama import Llama, LlamaConfig
from lmbook.models.lora import apply_lora
from lmbook.models.mlm import Encoder
from lmbook.models.ngram import NGramLM, NGramModel
from lmbook.models.rnn import RNNLM, RNNConfig
from lmbook.text.tokenizers import CharTokenizer
from lmbook.models.variants import gpt_class

V = 23
TEXT = "the cat sat on the mat; a bat and a rat ate the hat.\n" * 3
TOKENIZER = CharTokenizer.train(TEXT)


def gpt(cls=GPT):
    torch.manual_seed(0)
    return cls(GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16))


def lora_gpt():
    model = gpt()
    apply_lora(model, r=2)
    for name, p in model.named_parameters():  # adapters start at B = 0: give them an effect to carry
        if name.endswith(".B"):
            torch.nn.init.normal_(p, std=0.1)
    return model


def llama(**changes):
    torch.manual_seed(0)
    return Llama(LlamaConfig(vocab_size=V, block_size=16, n_layer=2, n_head=4, n_embd=16, **changes))


def rnn(cell):
    torch.manual_seed(0)
    return RNNLM(RNNConfig(vocab_size=V, cell=cell, n_layer=2, n_embd=8, n_hidden=16))


def ngram():
    return NGramModel(NGramLM.fit(list(TEXT), n=3), TOKENIZER)


MODELS = {
    "gpt": gpt,
    "sinusoidal": lambda: gpt(gpt_class("sinusoidal")),
    "token-id positions": lambda: gpt(gpt_class("token-id")),
    "post-LN": lambda: gpt(gpt_class(norm="post")),
    "sinusoidal post-LN": lambda: gpt(gpt_class("sinusoidal", "post")),
    "gpt with LoRA": lora_gpt,
    "llama (grouped-query)": lambda: llama(n_kv_head=2),
    "llama (multi-query)": lambda: llama(n_kv_head=1),
    "llama with GPT-2's parts": lambda: llama(position="learned", norm="layer", mlp="gelu", bias=True),
    "rnn": lambda: rnn("rnn"),
    "lstm": lambda: rnn("lstm"),
    "gru": lambda: rnn("gru"),
    "3-gram": ngram,
}
DECODERS = list(MODELS)
ALL = DECODERS + ["encoder"]


def make(name):
    model = gpt(Encoder) if name == "encoder" else MODELS[name]()
    return model.eval()


def ids(model, *shape, seed=0):
    return torch.randint(0, model.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ALL)
def test_every_model_meets_the_interface(name):
    model = make(name)
    assert isinstance(model, LanguageModel)
    check_model(model)
    if name == "encoder":
        with pytest.raises(ValueError, match="no cache and cannot generate"):
            model.make_cache()
    else:
        assert isinstance(model.make_cache(), Cache)


@pytest.mark.parametrize("name", ALL)
def test_the_loss_is_the_cross_entropy_of_the_logits_over_the_targets_that_are_not_minus_one(name):
    model = make(name)
    x, y = ids(model, 2, 7), ids(model, 2, 7, seed=1)
    y[0, :3] = -1
    logits, loss = model(x, y)
    assert logits.shape == (2, 7, model.vocab_size)
    keep = y != -1
    by_hand = -logits.float().log_softmax(-1).gather(-1, y.clamp(min=0)[..., None])[..., 0][keep].mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("targets, message", [  # targets for a vocabulary of V ids, and the refusal
    (lambda V: torch.zeros(2, 6, dtype=torch.long), r"targets must have the shape of idx, \(2, 7\).*not \(2, 6\)"),
    (lambda V: torch.zeros(14, dtype=torch.long), r"shape of idx"),
    (lambda V: torch.zeros(2, 7), r"targets must be a tensor of int64 token ids \(torch.long\), not torch.float32"),
    (lambda V: torch.full((2, 7), V), r"targets must lie in range\(V\).*or be -1.*from V to V"),
    (lambda V: torch.full((2, 7), -2), r"from -2 to -2"),
], ids=["shorter", "flat", "floats", "past the vocabulary", "below -1"])
def test_targets_that_do_not_match_the_ids_are_refused_before_the_cache_moves(name, targets, message):
    model = make(name)
    cache = None if name == "encoder" else model.make_cache()
    with pytest.raises(ValueError, match=message.replace("V", str(model.vocab_size))):
        model(ids(model, 2, 7), targets(model.vocab_size), **({} if cache is None else {"cache": cache}))
    assert cache is None or cache.pos == 0


@pytest.mark.parametrize("name", DECODERS)
def test_reading_through_the_cache_gives_the_logits_of_the_full_pass(name):
    model = make(name)
    x = ids(model, 2, 9)
    full = model(x)[0]
    cache, parts, start = model.make_cache(), [], 0
    for n in (4, 1, 3, 1):
        parts.append(model(x[:, start : start + n], cache=cache)[0])
        start += n
    assert cache.pos == 9
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", DECODERS)
def test_a_padded_batch_decodes_each_prompt_as_it_decodes_alone(name):
    """Left padding is not text: not to attention, positions, repetition penalty or the n-gram ban."""
    model = make(name)
    prompts = [[3, 1, 4, 1, 5], [9, 2], [6, 5, 3, 5]]
    settings = dict(max_new_tokens=6, do_sample=False, no_repeat_ngram_size=2, repetition_penalty=1.3)
    batch = generate(model, prompts, **settings)
    for row, prompt in zip(batch, prompts):
        alone = generate(model, prompt, **settings)[0]
        assert row[-len(alone):].tolist() == alone.tolist()


@pytest.mark.parametrize("name", DECODERS)
def test_the_cache_follows_reordered_rows(name):
    model = make(name)
    x, nxt = ids(model, 3, 5), ids(model, 3, 2, seed=1)
    cache = model.make_cache()
    model(x, cache=cache)
    rows = torch.tensor([2, 0, 0])
    cache.reorder(rows)
    got = model(nxt, cache=cache)[0]
    want = model(torch.cat([x[rows], nxt], dim=1))[0][:, -2:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", DECODERS)
def test_beam_search_through_the_cache_equals_rereading_without_it(name):
    model = make(name)
    settings = dict(max_new_tokens=5, num_beams=3, num_return_sequences=2, do_sample=False)
    assert torch.equal(generate(model, [1, 2, 3], **settings), generate(model, [1, 2, 3], use_cache=False, **settings))


@pytest.mark.parametrize("name", DECODERS)
def test_a_cache_rolls_back_its_last_positions_or_says_it_cannot(name):
    model = make(name)
    x, other = ids(model, 1, 8), ids(model, 1, 2, seed=3)
    cache = model.make_cache()
    model(x, cache=cache)
    if not cache.can_rollback:
        with pytest.raises(TypeError, match="cannot forget"):
            cache.rollback(2)
        return
    with pytest.raises(ValueError, match="roll back 0 to 8"):
        cache.rollback(9)
    cache.rollback(2)
    assert cache.pos == 6
    got = model(other, cache=cache)[0]
    want = model(torch.cat([x[:, :6], other], dim=1))[0][:, -2:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_more_tokens_than_the_context_are_refused_with_what_to_do(name):
    model = make(name)
    context = model.context_length
    if context is None:  # no limit: a text far longer than any window reads
        assert model(ids(model, 1, 70))[0].shape == (1, 70, model.vocab_size)
        return
    with pytest.raises(ValueError, match=f"do not fit in this model's context of {context}: keep the last"):
        model(ids(model, 1, context + 1))
    if name != "encoder":
        cache = model.make_cache()
        model(ids(model, 1, context - 2), cache=cache)
        with pytest.raises(ValueError, match="start a new cache"):
            model(ids(model, 1, 3), cache=cache)
        with pytest.raises(ValueError, match="the prompt has .* tokens but the model's context is"):
            generate(model, ids(model, 1, context + 1), max_new_tokens=1)


def test_something_that_is_not_a_language_model_is_refused_by_name():
    with pytest.raises(TypeError, match="Linear is not a language model of the book: it lacks reads_padding"):
        generate(torch.nn.Linear(3, 3), [1, 2], max_new_tokens=2)


def test_the_ngram_model_gives_its_own_probabilities():
    lm = NGramLM.fit(list(TEXT), n=3)
    model = NGramModel(lm, TOKENIZER)
    x = torch.tensor([TOKENIZER.encode("the ca")])
    logits = model(x)[0]
    t = TOKENIZER.encode("t")[0]
    assert logits[0, -1, t].exp().item() == pytest.approx(lm.prob("t", list("ca")))
    assert logits[0, 0, t].exp().item() == pytest.approx(lm.prob("t", list("t")))  # the row starts a text
    text = "the ca"
    for _ in range(4):  # greedy by hand: the id whose piece is likeliest after the last two characters
        dist = lm.distribution(list(text[-2:]))
        probs = [dist[lm.index[p]] if p in lm.index else 0.0 for p in model.pieces]
        text += model.pieces[probs.index(max(probs))]
    assert TOKENIZER.decode(generate(model, x, max_new_tokens=4, do_sample=False)[0].tolist()) == text
