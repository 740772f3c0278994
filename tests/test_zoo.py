"""lmbook.runs.zoo: a model is trained once by its chapter's recipe, remembered, and loaded unchanged."""

import dataclasses

import pytest
import torch

from lmbook.runs import ch03_gpt, zoo

TINY = dataclasses.replace(ch03_gpt.RUNS["fast"], n_layer=1, n_embd=16, n_head=2, block_size=8, batch_size=4,
                           max_steps=3, eval_interval=3, eval_iters=1)


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch):
    monkeypatch.setenv("LMBOOK_CACHE", str(tmp_path))
    monkeypatch.setenv("LMBOOK_SIZE", "fast")
    recipe = zoo.RECIPES["gpt-char"]
    monkeypatch.setitem(zoo.RECIPES, "gpt-char", dataclasses.replace(recipe, runs={"full": TINY, "fast": TINY}))
    return tmp_path


def test_a_model_is_trained_once_then_loaded_equal(tiny_zoo, capsys):
    first = zoo.trained("gpt-char", device="cpu")
    assert zoo.path_of("gpt-char").exists() and first.history.steps == [0, 1, 2]
    # it says it trains (tests/test_book.py fails a page that says so), and says nothing when it loads
    assert capsys.readouterr().out.count(f"gpt-char {zoo.TRAINING_ANEW}") == 1
    again = zoo.trained("gpt-char", device="cpu")  # loaded, not trained: the same weights and history
    assert zoo.TRAINING_ANEW not in capsys.readouterr().out
    assert type(again.model) is type(first.model) and again.history.to_dict() == first.history.to_dict()
    for (name, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert again.tokenizer.encode("ROMEO:") == first.tokenizer.encode("ROMEO:")
    assert torch.equal(again.val_data, first.val_data)


def test_the_recipe_is_what_the_chapter_runs(tiny_zoo):
    """The zoo's model is the one chapter 3's own two calls make, weight for weight."""
    from lmbook.text.data import shakespeare_chars

    tokenizer, train_data, val_data = shakespeare_chars()
    model = ch03_gpt.make_char_gpt(TINY, tokenizer.vocab_size, "cpu")
    ch03_gpt.train_char_gpt(model, TINY, train_data, val_data, desc="GPT", progress=False)
    from_zoo = zoo.trained("gpt-char", device="cpu").model
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), from_zoo.state_dict().values()))


def test_other_settings_change_the_file_and_are_not_remembered(tiny_zoo, monkeypatch):
    first = zoo.trained("gpt-char", device="cpu")
    before = zoo.path_of("gpt-char")
    with pytest.raises(ValueError, match="other settings"):
        zoo.remember("gpt-char", first.model, first.tokenizer, first.history, first.val_data,
                     dataclasses.replace(TINY, lr=1.0))
    other = dataclasses.replace(TINY, max_steps=4)
    monkeypatch.setitem(zoo.RECIPES, "gpt-char", dataclasses.replace(zoo.RECIPES["gpt-char"],
                                                                     runs={"full": other, "fast": other}))
    assert zoo.path_of("gpt-char") != before


def test_a_damaged_file_is_trained_anew_and_unknown_names_are_refused(tiny_zoo):
    zoo.trained("gpt-char", device="cpu")
    zoo.path_of("gpt-char").write_bytes(b"not a checkpoint")
    assert zoo.trained("gpt-char", device="cpu").history.steps == [0, 1, 2]
    with pytest.raises(KeyError, match="gpt-char"):
        zoo.trained("gpt-5")
