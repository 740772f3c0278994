"""lmbook.text.speeches: the corpus cut into speeches, held-out speeches, and the labelled tasks."""

import random

import pytest

from lmbook.text.speeches import order_examples, shuffle_words, speaker_share, speeches, split_corpus

TEXT = "\n\n".join(
    f"{name}:\n{line} number {i}\nand a second line {i}"
    for i, (name, line) in enumerate(
        [("ROMEO", "O she doth teach the torches"), ("JULIET", "My bounty is as boundless"), ("NURSE", "Anon")] * 10
    )
) + "\n"


def test_speeches_are_parsed_with_their_offsets():
    found = speeches("First Citizen:\nBefore we proceed.\n\nAll:\nSpeak, speak.\n\n\nnot a speech\n")
    assert [(s.speaker, s.words) for s in found] == [("First Citizen", "Before we proceed."), ("All", "Speak, speak.")]
    assert found[1].start == len("First Citizen:\nBefore we proceed.\n\n")
    assert found[0].block == "First Citizen:\nBefore we proceed."
    assert speaker_share("ROMEO:\nhi\n\nJULIET:\nho\n\nROMEO:\nha", "ROMEO") == pytest.approx(2 / 3)
    assert speaker_share("no speech", "ROMEO") == 0.0


def test_split_corpus_holds_test_speeches_out_of_pretraining():
    corpus = split_corpus(TEXT, n_speakers=2, test_fraction=0.3, val_fraction=0.1)
    assert len(corpus.speakers) == 2 and corpus.task_test
    for s in corpus.task_test:
        assert s.block not in corpus.pretrain  # each speech is unique (numbered), so this is a real check
    for s in corpus.task_train:
        assert s.block in corpus.pretrain
    assert corpus.val and corpus.val in TEXT and corpus.val not in corpus.pretrain
    name = corpus.speakers[0]
    train_text, held_out = corpus.speaker_text(name)
    assert held_out.strip() and all(s.block in held_out for s in corpus.task_test if s.speaker == name)
    assert all(s.block not in train_text for s in corpus.task_test)
    assert all(s.block in train_text for s in corpus.task_train if s.speaker == name)
    with pytest.raises(ValueError, match="no held-out speeches"):
        corpus.speaker_text("HAMLET")
    with pytest.raises(ValueError, match="n_speakers"):
        split_corpus(TEXT, n_speakers=1)


def test_shuffled_lines_keep_their_words():
    text = "one two three four\nfive six seven"
    shuffled = shuffle_words(text, random.Random(0))
    for a, b in zip(text.split("\n"), shuffled.split("\n")):
        assert sorted(a.split(" ")) == sorted(b.split(" "))
    assert shuffled != text
    for seed in range(20):  # a line of two different words always changes; one of a single word cannot
        assert shuffle_words("fair Verona\nO", random.Random(seed)) == "Verona fair\nO"
    items = speeches(TEXT + "\nBRUTUS:\nAy.\n")
    texts, labels = order_examples(items, seed=0)
    assert set(labels) == {0, 1} and len(texts) >= len(items) - 1
    originals = {s.words for s in items}
    for t, label in zip(texts, labels):
        assert (t in originals) == (label == 1)  # no "shuffled" example is left unchanged
