"""lmbook.config: named presets, copies with changes and the shared field checks, on a config of the test's own and
on the presets of the models and the chapters' runs."""

from dataclasses import FrozenInstanceError, dataclass

import pytest

from lmbook.config import Presets
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.interface import num_params
from lmbook.models.rnn import RNNLM, RNNConfig


@dataclass
class Shape(Presets):
    width: int = 4
    depth: int = 2
    rate: float = 0.0

    def __post_init__(self) -> None:
        self.check_positive("width", "depth")
        self.check_rate("rate")


Shape.PRESETS = {"small": dict(width=8), "deep": dict(width=8, depth=12, rate=0.1)}


def test_a_preset_is_its_settings_over_the_defaults_and_overrides_win():
    assert Shape.preset("small") == Shape(width=8, depth=2, rate=0.0)
    assert Shape.preset("deep", rate=0.5, depth=3) == Shape(width=8, depth=3, rate=0.5)
    assert Shape.PRESETS["deep"] == dict(width=8, depth=12, rate=0.1)  # an override changes no preset
    assert Presets.PRESETS == {} and GPTConfig.PRESETS is not RNNConfig.PRESETS  # each config its own table


def test_an_unknown_preset_is_refused_with_the_choices():
    with pytest.raises(KeyError, match=r"unknown preset 'wide'; choose one of \['deep', 'small'\]"):
        Shape.preset("wide")
    with pytest.raises(KeyError, match=r"\['gpt2', 'tiny'\]"):
        GPTConfig.preset("gpt3")


def test_an_unknown_field_is_refused_with_the_fields():
    with pytest.raises(TypeError, match=r"wdth.*width.*depth.*rate"):
        Shape.preset("small", wdth=3)
    with pytest.raises(TypeError, match=r"Shape has no field 'deep'; use one of width, depth, rate"):
        Shape.preset("small").replace(deep=3)
    with pytest.raises(TypeError, match=r"GPTConfig has no field 'n_heads'.*n_head"):
        GPTConfig.preset("tiny", n_heads=4)


def test_copies_with_changes_are_checked_again_and_leave_the_original():
    shape = Shape.preset("small")
    assert shape.replace(depth=5) == Shape(width=8, depth=5) and shape.depth == 2
    assert shape.to_dict() == {"width": 8, "depth": 2, "rate": 0.0} and Shape(**shape.to_dict()) == shape
    with pytest.raises(ValueError, match=r"Shape.depth must be a positive integer, not 0"):
        shape.replace(depth=0)


@pytest.mark.parametrize("value", [0, -3, 2.0, 2.5, True, False, None, "4"])
def test_sizes_must_be_positive_integers_and_not_bools(value):
    with pytest.raises(ValueError, match=rf"Shape.width must be a positive integer, not {value!r}"):
        Shape(width=value)


@pytest.mark.parametrize("value", [-0.1, 1.0, 2, float("nan"), True, None, "0.1"])
def test_rates_lie_in_zero_to_one(value):
    with pytest.raises(ValueError, match=r"Shape.rate must lie in \[0, 1\)"):
        Shape(rate=value)
    assert Shape(rate=0).rate == 0 and Shape(rate=0.999).rate == 0.999


def test_the_model_presets_build_the_documented_models():
    tiny = GPT(GPTConfig.preset("tiny"))
    c = tiny.config
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd) == (65, 32, 2, 2, 32)
    # blocks (12C^2 + 13C each), tied token table, position table, final LayerNorm
    assert num_params(tiny) == 2 * (12 * 32 * 32 + 13 * 32) + 65 * 32 + 32 * 32 + 2 * 32
    rnn = RNNConfig.preset("tiny")
    assert (rnn.cell, rnn.n_layer, rnn.n_embd, rnn.n_hidden) == ("lstm", 2, 16, 32)
    model = RNNLM(rnn)
    lstm = 4 * 32 * (16 + 32 + 2) + 4 * 32 * (32 + 32 + 2)  # two LSTM layers: four gates, two biases each
    assert num_params(model) == 65 * 16 + lstm + 32 * 65 + 65


def test_every_chapter_s_settings_are_frozen_presets_that_train():
    from lmbook.runs.common import RunSettings, Settings
    from lmbook.runs.ch02_rnn import RUNS as CH02
    from lmbook.runs.ch03_gpt import RUNS as CH03

    for runs in (CH02, CH03):
        assert set(runs) == {"full", "fast"}
        for settings in runs.values():
            assert isinstance(settings, Settings) and isinstance(settings, RunSettings)
            with pytest.raises(FrozenInstanceError):
                settings.max_steps = 1
            config = settings.train_config(eval_iters=3)
            assert (config.max_steps, config.lr, config.warmup_steps) == (settings.max_steps, settings.lr,
                                                                           settings.warmup_steps)
            assert config.eval_interval == settings.eval_interval and config.eval_iters == 3
            assert settings.replace(max_steps=7).max_steps == 7 != settings.max_steps
