"""lmbook.decoding.chat: a model's replies to conversations, batched and streamed, against generate on the chat
template's ids, on a tiny Llama grown for the role and end-of-turn tokens and on Llamas wired by hand to write a
given reply."""

from __future__ import annotations

import pytest
import torch

from lmbook.decoding.chat import prompt_ids, replies, stream_reply
from lmbook.decoding.generate import generate
from lmbook.models.llama import Llama, LlamaConfig
from lmbook.models.vocab import grow_embeddings
from lmbook.text.chat import ASSISTANT, END, SPECIAL_TOKENS, USER, encode_conversation, end_id, special_ids
from lmbook.text.tokenizers import BPETokenizer, CharTokenizer

TEXT = ("ROMEO: What light through yonder window breaks?\nJULIET: Ay me! Who speaks? Answer. Be brief. "
        "Count: a b c, three.\n")
CONVERSATIONS = [
    [{"role": "user", "content": "Who speaks?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count: a b c"},
     {"role": "assistant", "content": "three"}, {"role": "user", "content": "And now?\na b"}],
    [{"role": "user", "content": "ROMEO: What light through yonder"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Ay"}],
]


@pytest.fixture(scope="module")
def tokenizer() -> CharTokenizer:
    return CharTokenizer.train(TEXT)


@pytest.fixture(scope="module")
def model(tokenizer) -> Llama:
    """A tiny Llama with large random weights (so that its greedy choices are far from ties), grown for the four
    special tokens."""
    torch.manual_seed(0)
    made = Llama(LlamaConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=4, n_kv_head=2,
                             n_embd=32, intermediate_size=48))
    with torch.no_grad():
        for p in made.parameters():
            p.normal_(0, 0.3)
    return grow_embeddings(made, tokenizer.vocab_size + len(SPECIAL_TOKENS))


def written_out(model, tokenizer, conversation, max_new_tokens: int) -> str:
    """The reply by hand: generate greedily on the template's ids, keep what follows the prompt up to the first
    special token (the end of the turn, or a role token the reply has no business writing), decode."""
    ids, _ = encode_conversation(conversation, tokenizer, add_generation_prompt=True)
    new = generate(model, ids, max_new_tokens, temperature=0)[0, len(ids):].tolist()
    specials = [i for i, t in enumerate(new) if t >= tokenizer.vocab_size]
    return tokenizer.decode(new[: specials[0]] if specials else new)


def test_greedy_replies_equal_generate_on_the_template(model, tokenizer):
    got = replies(model, tokenizer, CONVERSATIONS, max_new_tokens=12)
    assert got == [written_out(model, tokenizer, c, 12) for c in CONVERSATIONS]
    assert len(set(got)) > 1 and all(got)  # the replies differ: the model reads the conversations
    assert model.training  # replies leave the model's mode as it was


def test_a_batch_gives_each_conversation_the_reply_it_gets_alone(model, tokenizer):
    lengths = [len(encode_conversation(c, tokenizer, add_generation_prompt=True)[0]) for c in CONVERSATIONS]
    assert len(set(lengths)) == len(lengths)  # different lengths: the batch is left-padded
    together = replies(model, tokenizer, CONVERSATIONS, max_new_tokens=12)
    alone = [replies(model, tokenizer, [c], max_new_tokens=12)[0] for c in CONVERSATIONS]
    assert together == alone
    assert replies(model, tokenizer, CONVERSATIONS, max_new_tokens=12, batch_size=3) == alone  # two batches
    assert replies(model, tokenizer, tuple(reversed(CONVERSATIONS)), max_new_tokens=12) == alone[::-1]


def test_stream_reply_joins_to_the_greedy_reply_one_character_a_token(model, tokenizer):
    for conversation in CONVERSATIONS:
        pieces = list(stream_reply(model, tokenizer, conversation, max_new_tokens=12))
        reply = replies(model, tokenizer, [conversation], max_new_tokens=12)[0]
        assert "".join(pieces) == reply and all(len(p) == 1 for p in pieces)
    assert model.training


def test_seeded_sampling_is_reproducible_and_the_same_streamed(model, tokenizer):
    draw = dict(max_new_tokens=15, temperature=1.5)
    first = replies(model, tokenizer, CONVERSATIONS, seed=5, **draw)
    assert replies(model, tokenizer, CONVERSATIONS, seed=5, **draw) == first
    assert replies(model, tokenizer, CONVERSATIONS, seed=6, **draw) != first
    assert first != replies(model, tokenizer, CONVERSATIONS, max_new_tokens=15)  # sampled, not greedy
    one = CONVERSATIONS[1]
    streamed = "".join(stream_reply(model, tokenizer, one, seed=7, **draw))
    assert streamed == replies(model, tokenizer, [one], seed=7, **draw)[0]  # the same draws, one by one
    assert streamed == "".join(stream_reply(model, tokenizer, one, seed=7, **draw))


# --- Models wired to write a given reply ------------------------------------------------------------------------
def forcing_llama(vocab_size: int, successor: dict[int, int]) -> Llama:
    """A Llama over ``vocab_size`` tokens (the special ones included) whose next token depends only on the current
    one: ``successor[i]`` after ``i``. Its blocks add nothing (zero output projections), its embedding is one-hot
    and its output layer maps each token to its successor."""
    width = vocab_size + 4 - vocab_size % 4  # wider than the vocabulary; two heads of an even size
    model = Llama(LlamaConfig(vocab_size=vocab_size - len(SPECIAL_TOKENS), block_size=32, n_layer=1, n_head=2,
                              n_embd=width, tie_embeddings=False))
    grow_embeddings(model, vocab_size)
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.embed_tokens.weight.copy_(torch.eye(vocab_size, width))
        model.lm_head.weight.zero_()
        for i, j in successor.items():
            model.lm_head.weight[j, i] = 5.0
    return model


def counting_calls(model) -> list[int]:
    """The number of tokens of each forward call the model receives from now on."""
    calls: list[int] = []
    model.register_forward_hook(lambda module, args, kwargs, out: calls.append(args[0].size(1)), with_kwargs=True)
    return calls


def test_a_model_that_writes_two_letters_then_ends_gives_them_and_stops():
    book = CharTokenizer(list("abc"))
    a, b, c = book.encode("abc")
    ids = special_ids(book)
    A, E, U = ids[ASSISTANT], ids[END], ids[USER]
    model = forcing_llama(book.vocab_size + 4, {A: a, a: b, b: E, E: c, c: c, U: c})
    conversation = [{"role": "user", "content": "cab"}]
    calls = counting_calls(model)
    assert replies(model, book, [conversation, conversation * 1], max_new_tokens=20) == ["ab", "ab"]
    assert calls == [len(prompt_ids(conversation, book, model, 20)), 1, 1]  # the prompt, then a and b; no more
    calls.clear()
    assert list(stream_reply(model, book, conversation, max_new_tokens=20)) == ["a", "b"]
    assert calls == [len(prompt_ids(conversation, book, model, 20)), 1, 1]
    assert replies(model, book, [conversation], max_new_tokens=1) == ["a"]  # cut at the limit, before its end

    other_role = forcing_llama(book.vocab_size + 4, {A: a, a: U, U: b, b: E, E: c, c: c})
    assert replies(other_role, book, [conversation], max_new_tokens=20) == ["a"]  # a role token ends the reply
    assert list(stream_reply(other_role, book, conversation, max_new_tokens=20)) == ["a"]


def test_byte_level_pieces_wait_for_a_whole_character():
    book = BPETokenizer([])  # the 256 bytes, no merges
    e1, e2 = "é".encode()  # two bytes, each a token of its own
    bang = ord("!")
    ids = special_ids(book)
    A, E = ids[ASSISTANT], ids[END]
    model = forcing_llama(book.vocab_size + 4, {A: e1, e1: e2, e2: bang, bang: E, E: bang})
    conversation = [{"role": "user", "content": "ça?"}]
    assert list(stream_reply(model, book, conversation, max_new_tokens=10)) == ["é", "!"]
    assert replies(model, book, [conversation], max_new_tokens=10) == ["é!"]
    cut = list(stream_reply(model, book, conversation, max_new_tokens=1))  # half a character, then the limit
    assert cut == ["\ufffd"] and "".join(cut) == replies(model, book, [conversation], max_new_tokens=1)[0]


# --- Errors -----------------------------------------------------------------------------------------------------
def test_errors_say_what_to_do(model, tokenizer):
    with pytest.raises(ValueError, match="non-empty list of conversations"):
        replies(model, tokenizer, [], max_new_tokens=5)
    with pytest.raises(ValueError, match=r"for one conversation pass \[conversation\]"):
        replies(model, tokenizer, CONVERSATIONS[0], max_new_tokens=5)
    for bad, error, message in ((0, ValueError, "max_new_tokens must be >= 1"),
                                (2.0, TypeError, "max_new_tokens must be an integer")):
        with pytest.raises(error, match=message):
            replies(model, tokenizer, CONVERSATIONS, max_new_tokens=bad)
        with pytest.raises(error, match=message):
            stream_reply(model, tokenizer, CONVERSATIONS[0], max_new_tokens=bad)  # at the call, not at the first piece
    long = CONVERSATIONS[1]
    n = len(encode_conversation(long, tokenizer, add_generation_prompt=True)[0])
    assert len(replies(model, tokenizer, [long], max_new_tokens=64 - n)) == 1  # exactly fills the context of 64
    message = f"takes {n} tokens and the reply up to {65 - n} more, but the model reads 64: shorten the conversation"
    with pytest.raises(ValueError, match=message):
        replies(model, tokenizer, [CONVERSATIONS[0], long], max_new_tokens=65 - n)
    with pytest.raises(ValueError, match=message):
        stream_reply(model, tokenizer, long, max_new_tokens=65 - n)
    with pytest.raises(ValueError, match="a generation prompt must follow a user turn"):
        replies(model, tokenizer, [long + [{"role": "assistant", "content": "two"}]], max_new_tokens=5)
    with pytest.raises(ValueError, match="turn 0 \\(user\\): not in the vocabulary: 'z'"):
        stream_reply(model, tokenizer, [{"role": "user", "content": "zoo"}], max_new_tokens=5)
    ungrown = Llama(LlamaConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match=rf"grow_embeddings\(model, {tokenizer.vocab_size + 4}\)"):
        replies(ungrown, tokenizer, CONVERSATIONS, max_new_tokens=5)
    assert end_id(tokenizer) == model.vocab_size - 1  # <|end|> is the grown model's last token
