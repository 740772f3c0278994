"""Tests for lmbook.text.tokenizers: round trips, errors, what BPE learns, save and load."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import regex
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmbook.text.tokenizers import (
    GPT2_PATTERN,
    BPETokenizer,
    CharTokenizer,
    FastBPETokenizer,
    Tokenizer,
    UnknownCharacterError,
)

TRAIN_CHARS = 100_000  # train on the first 100k characters, measure on the next 50k

# Always available, so the round-trip tests run without the corpus too.
SMALL_TEXT = (
    "The quick brown fox jumps over the lazy dog, and the dog does not mind.\n"
    "Then the fox sat down; the dog slept. They'll meet again tomorrow, won't they?\n\n"
) * 20

# Text that a tokenizer trained on English has never seen.
HARD_TEXTS = [
    "语言模型",
    "👩‍👩‍👧 👍🏽",  # zero-width joiners and a skin-tone modifier
    "e\u0301 a\u0308\u0323 Z\u0335\u0311",  # combining marks
    "\x00",
    "\t\t  \n\n",
    "   leading and trailing   ",
    "mixed: café 3.14 ¿qué? 日本語 \U0001f600\r\n",
    "",
]


@pytest.fixture(scope="module")
def corpus(shakespeare: str) -> str:
    return shakespeare


@pytest.fixture(scope="module")
def train_text(corpus: str) -> str:
    return corpus[:TRAIN_CHARS]


@pytest.fixture(scope="module")
def held_out(corpus: str) -> str:
    return corpus[TRAIN_CHARS : TRAIN_CHARS + 50_000]


@pytest.fixture(scope="module")
def bpe(train_text: str) -> BPETokenizer:
    return BPETokenizer.train(train_text, 512)


@pytest.fixture(scope="module")
def fast(train_text: str) -> FastBPETokenizer:
    return FastBPETokenizer.train(train_text, 512)


@pytest.fixture(scope="module")
def small_bpe() -> BPETokenizer:
    return BPETokenizer.train(SMALL_TEXT, 300)


@pytest.fixture(scope="module")
def small_fast() -> FastBPETokenizer:
    return FastBPETokenizer.train(SMALL_TEXT, 300)


BPE_FIXTURES = ["small_bpe", "small_fast", "bpe", "fast"]


# --- Round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("name", BPE_FIXTURES)
def test_bpe_round_trips_any_text(name: str, request: pytest.FixtureRequest) -> None:
    tokenizer = request.getfixturevalue(name)

    @settings(max_examples=150, deadline=None)
    @given(st.text())
    def round_trip(text: str) -> None:
        assert tokenizer.decode(tokenizer.encode(text)) == text

    round_trip()


@pytest.mark.parametrize("text", HARD_TEXTS)
@pytest.mark.parametrize("name", BPE_FIXTURES)
def test_bpe_round_trips_unseen_scripts(name: str, text: str, request: pytest.FixtureRequest) -> None:
    tokenizer = request.getfixturevalue(name)
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text


def test_char_round_trips_text_of_its_alphabet() -> None:
    tokenizer = CharTokenizer.train(SMALL_TEXT + "語\x00\t👍")

    @settings(max_examples=150, deadline=None)
    @given(st.text(alphabet=st.sampled_from(tokenizer.chars)))
    def round_trip(text: str) -> None:
        ids = tokenizer.encode(text)
        assert len(ids) == len(text)
        assert tokenizer.decode(ids) == text

    round_trip()


# --- CharTokenizer -------------------------------------------------------------------


def test_char_vocabulary_is_sorted_characters() -> None:
    tokenizer = CharTokenizer.train("hello")
    assert tokenizer.chars == ["e", "h", "l", "o"]
    assert tokenizer.vocab_size == 4
    assert tokenizer.encode("hello") == [1, 0, 2, 2, 3]


def test_char_vocabulary_of_shakespeare(corpus: str) -> None:
    tokenizer = CharTokenizer.train(corpus)
    assert tokenizer.vocab_size == 65
    assert tokenizer.decode(tokenizer.encode(corpus[:5000])) == corpus[:5000]


def test_unknown_characters_are_named_once_each() -> None:
    tokenizer = CharTokenizer.train("abc")
    with pytest.raises(UnknownCharacterError) as caught:
        tokenizer.encode("abxzxé\x00zcx")
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    for char in ["x", "z", "é", "\x00"]:
        assert message.count(repr(char)) == 1, message
    assert "'a'" not in message and "'b'" not in message
    assert caught.value.characters == sorted(["x", "z", "é", "\x00"])
    assert "train" in message.lower() and "remove" in message.lower()


def test_many_unknown_characters_are_cut_short() -> None:
    tokenizer = CharTokenizer.train("a")
    with pytest.raises(UnknownCharacterError) as caught:
        tokenizer.encode("0123456789ABCDEFGHIJ" * 3)
    message = str(caught.value)
    assert message.startswith("not in the vocabulary: '0', '1'")
    assert "'0'" in message and "'9'" in message and "'J'" not in message
    assert "and 10 more, 20 in all" in message


# --- Errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "train",
    [CharTokenizer.train, lambda text: BPETokenizer.train(text, 300), lambda text: FastBPETokenizer.train(text, 300)],
)
def test_empty_training_text_is_refused(train) -> None:
    with pytest.raises(ValueError, match="empty"):
        train("")


@pytest.mark.parametrize("cls", [BPETokenizer, FastBPETokenizer])
def test_vocab_smaller_than_the_bytes_is_refused(cls) -> None:
    with pytest.raises(ValueError, match="256"):
        cls.train("some text", 255)


@pytest.mark.parametrize("name", ["small_bpe", "small_fast"])
def test_decode_refuses_ids_outside_the_vocabulary(name: str, request: pytest.FixtureRequest) -> None:
    tokenizer = request.getfixturevalue(name)
    for bad in (-1, tokenizer.vocab_size):
        with pytest.raises(ValueError, match="range"):
            tokenizer.decode([0, bad])


def test_invalid_utf8_from_outside_encode_decodes_to_replacement(small_bpe: BPETokenizer) -> None:
    assert small_bpe.decode([0xE8]) == "\ufffd"  # half of a two-byte character
    assert small_bpe.decode(list("è".encode())) == "è"


# --- What BPE learns -----------------------------------------------------------------


def test_training_stops_when_no_pair_occurs_twice() -> None:
    # "abab": (a, b) occurs twice and is merged; then (ab, ab) occurs once.
    tokenizer = BPETokenizer.train("abab", 1000)
    assert tokenizer.merges == [(ord("a"), ord("b"))]
    assert tokenizer.vocab_size == 257
    assert tokenizer.encode("abab") == [256, 256]
    assert FastBPETokenizer.train("abab", 1000).vocab_size == 257


def test_ties_go_to_the_smallest_pair() -> None:
    # (d, c), (c, b) and (b, a) each occur three times; (b, a) has the smallest ids.
    tokenizer = BPETokenizer.train("dcba " * 3, 257)
    assert tokenizer.merges == [(ord("b"), ord("a"))]


def test_bpe_reaches_the_requested_vocab_size(bpe: BPETokenizer) -> None:
    assert bpe.vocab_size == 512
    assert len(bpe.merges) == 256
    assert all(a < 256 + k and b < 256 + k for k, (a, b) in enumerate(bpe.merges))


def test_first_merge_is_the_most_frequent_byte_pair(bpe: BPETokenizer, train_text: str) -> None:
    counts: Counter[tuple[int, int]] = Counter()
    for chunk in regex.findall(GPT2_PATTERN, train_text):
        data = chunk.encode("utf-8")
        for pair in zip(data, data[1:]):
            counts[pair] += 1
    most = max(counts.values())
    assert bpe.merges[0] == min(pair for pair, count in counts.items() if count == most)


def test_each_token_text_encodes_to_that_token(bpe: BPETokenizer) -> None:
    for token in range(256, bpe.vocab_size):
        text = bpe.token_bytes(token).decode("utf-8")
        assert bpe.encode(text) == [token], (token, text)


def test_bpe_compresses_held_out_english(bpe: BPETokenizer, held_out: str) -> None:
    # Measured: 0.52 tokens per character at vocab 512 (bytes alone give 1.0).
    ids = bpe.encode(held_out)
    assert len(ids) / len(held_out) < 0.55
    assert len(bpe.encode(" the")) == 1


@pytest.mark.parametrize("cls", [BPETokenizer, FastBPETokenizer])
def test_training_is_deterministic(cls, train_text: str) -> None:
    text = train_text[:30_000]
    assert cls.train(text, 400).merges == cls.train(text, 400).merges


# --- The two BPEs against each other --------------------------------------------------


def _merged_bytes(tokenizer: BPETokenizer | FastBPETokenizer) -> list[tuple[bytes, bytes]]:
    return [(tokenizer.token_bytes(a), tokenizer.token_bytes(b)) for a, b in tokenizer.merges]


def test_fast_bytes_are_all_256_bytes(fast: FastBPETokenizer) -> None:
    assert sorted(fast.token_bytes(i) for i in range(256)) == [bytes([b]) for b in range(256)]


def test_both_bpes_learn_the_same_merges_up_to_ties(
    bpe: BPETokenizer, fast: FastBPETokenizer, held_out: str
) -> None:
    ours, theirs = _merged_bytes(bpe), _merged_bytes(fast)
    assert len(ours) == len(theirs) == 256
    # Same pairs, in the same order until the first tie, which the two break differently.
    assert ours[:16] == theirs[:16]
    assert set(ours) == set(theirs)
    # So they cut held-out text into (measured: exactly) as many tokens.
    ours_count, theirs_count = len(bpe.encode(held_out)), len(fast.encode(held_out))
    assert abs(ours_count - theirs_count) <= 0.005 * ours_count


def test_to_transformers_agrees_with_fast(small_fast: FastBPETokenizer) -> None:
    hf_tokenizer = small_fast.to_transformers()
    for text in [SMALL_TEXT[:300], "spaces before marks , . ! ? n't 's", *HARD_TEXTS]:
        ids = small_fast.encode(text)
        assert hf_tokenizer.encode(text) == ids
        assert hf_tokenizer.decode(ids) == text
    assert len(hf_tokenizer) == small_fast.vocab_size


# --- Save and load -------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: CharTokenizer.train(SMALL_TEXT + "\x00語"),
        lambda: BPETokenizer.train(SMALL_TEXT, 300),
        lambda: FastBPETokenizer.train(SMALL_TEXT, 300),
    ],
)
def test_save_and_load_round_trip(make, tmp_path: Path) -> None:
    tokenizer = make()
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    for loader in (type(tokenizer), Tokenizer):
        loaded = loader.load(path)
        assert type(loaded) is type(tokenizer)
        assert loaded.vocab_size == tokenizer.vocab_size
        text = SMALL_TEXT[:500] + "\x00語"
        assert loaded.encode(text) == tokenizer.encode(text)
        assert loaded.decode(tokenizer.encode(text)) == text


def test_load_refuses_another_kind(tmp_path: Path) -> None:
    path = tmp_path / "char.json"
    CharTokenizer.train("abc").save(path)
    with pytest.raises(ValueError, match="char"):
        BPETokenizer.load(path)


# --- What encode, decode and train accept ----------------------------------------------


@pytest.fixture(scope="module")
def small_char() -> CharTokenizer:
    return CharTokenizer.train(SMALL_TEXT)


TOKENIZER_FIXTURES = ["small_char", "small_bpe", "small_fast"]


@pytest.mark.parametrize("name", TOKENIZER_FIXTURES)
def test_decode_takes_ids_as_a_list_a_tuple_an_array_or_a_1d_tensor(name: str, request: pytest.FixtureRequest) -> None:
    tokenizer = request.getfixturevalue(name)
    text = SMALL_TEXT[:80]
    ids = tokenizer.encode(text)
    forms = [torch.tensor(ids), torch.tensor(ids, dtype=torch.int32), tuple(ids), np.array(ids),
             np.array(ids, dtype=np.int16), [np.int64(i) for i in ids], list(torch.tensor(ids))]
    for form in forms:
        assert tokenizer.decode(form) == text, type(form)
    assert tokenizer.decode(torch.tensor(ids)[5:9]) == tokenizer.decode(ids[5:9])  # a slice of a generated row
    assert tokenizer.decode(torch.tensor([], dtype=torch.long)) == tokenizer.decode([]) == ""


@pytest.mark.parametrize("name", TOKENIZER_FIXTURES)
@pytest.mark.parametrize(
    "ids, error, match",
    [
        (torch.tensor([[1, 2], [3, 4]]), ValueError, r"1-D.*\(2, 2\)"),
        (np.array([[1, 2]]), ValueError, r"1-D.*\(1, 2\)"),
        (torch.tensor(3), ValueError, "1-D"),
        (torch.tensor([1.0, 2.0]), TypeError, "integer"),
        (np.array([1.0, 2.0]), TypeError, "integer"),
        ([1.0, 2.0], TypeError, "integer"),
        ([1, 2.5], TypeError, "integer"),
        ([True, False], TypeError, "integer"),
        (torch.tensor([True, False]), TypeError, "integer"),
        ([1, None], TypeError, "integer"),
        ("hello", TypeError, "not a str"),
        (b"hello", TypeError, "bytes"),
        (5, TypeError, r"\[5\]"),
        (None, TypeError, "NoneType"),
    ],
)
def test_decode_refuses_what_is_not_one_sequence_of_ids(name, ids, error, match, request) -> None:
    with pytest.raises(error, match=match):
        request.getfixturevalue(name).decode(ids)


@pytest.mark.parametrize("name", TOKENIZER_FIXTURES)
@pytest.mark.parametrize("text", [["The", " fox"], ("T",), b"The fox", None, 3, torch.tensor([1, 2])])
def test_encode_takes_one_str(name, text, request) -> None:
    with pytest.raises(TypeError, match="a str"):
        request.getfixturevalue(name).encode(text)


@pytest.mark.parametrize("cls", [BPETokenizer, FastBPETokenizer])
@pytest.mark.parametrize("vocab_size", [True, 300.0, "300", None])
def test_vocab_size_must_be_an_integer(cls, vocab_size) -> None:
    with pytest.raises(TypeError, match="vocab_size must be an integer"):
        cls.train(SMALL_TEXT, vocab_size)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: BPETokenizer.train(None, 300), TypeError, "text must be a str"),
        (lambda: BPETokenizer.train(["some", "text"], 300), TypeError, "text must be a str"),
        (lambda: FastBPETokenizer.train(b"some text", 300), TypeError, "text must be a str"),
        (lambda: CharTokenizer.train(["a", "b"]), TypeError, "text must be a str"),
        (lambda: BPETokenizer.train(SMALL_TEXT, 300, pattern=None), TypeError, "pattern must be a str"),
        (lambda: BPETokenizer([(97.0, 98)]), TypeError, "integer"),
        (lambda: BPETokenizer([(True, 98)]), TypeError, "integer"),
        (lambda: BPETokenizer([(97, 98, 99)]), TypeError, "pairs"),
        (lambda: BPETokenizer(None), TypeError, "pairs"),
        (lambda: BPETokenizer([(-1, 98)]), ValueError, ">= 0"),
        (lambda: CharTokenizer(None), TypeError, "list of distinct single characters"),
        (lambda: CharTokenizer([1, 2]), TypeError, "list of distinct single characters"),
    ],
)
def test_training_and_construction_check_their_arguments(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("name", TOKENIZER_FIXTURES)
def test_token_bytes_takes_one_id(name, request) -> None:
    tokenizer = request.getfixturevalue(name)
    tokens = tokenizer.encode("The fox")
    assert b"".join(tokenizer.token_bytes(t) for t in tokens) == b"The fox"
    assert tokenizer.token_bytes(np.int64(tokens[0])) == tokenizer.token_bytes(tokens[0])
    for bad, error in ((True, TypeError), (1.0, TypeError), (None, TypeError), (-1, ValueError),
                       (tokenizer.vocab_size, ValueError)):
        with pytest.raises(error, match="id"):
            tokenizer.token_bytes(bad)


def test_chapter_1s_merge_comparison_reads_the_two_tokenizers(small_bpe, small_fast, capsys) -> None:
    from lmbook.runs.ch01_background import compare_merges

    held = "The lazy fox slept; the dog met him tomorrow.\n"
    facts = compare_merges(small_bpe, small_fast, SMALL_TEXT, held)
    assert facts["bpe_val_tokens"] == len(small_bpe.encode(held))
    assert facts["bpe_val_tokens_fast"] == len(small_fast.encode(held))
    out = capsys.readouterr().out
    assert f"same set of {len(small_bpe.merges)} merges" in out and "held-out text:" in out
    # on this text the two break a tie differently: the sentence names the rank and both pairs' counts
    assert "They first part at rank" in facts["bpe_agreement"].data and "before rank" in out
    alone = compare_merges(small_bpe, small_bpe, SMALL_TEXT, held)  # a tokenizer against itself: no difference
    assert alone["bpe_count_verdict"].data == "exactly as many"
    assert alone["bpe_tie_result"].data == "No tie set them apart here."
