"""The words a page writes around its counts and numbers (lmbook.display.show): plurals, k of n, sizes, cells
and decimals; each against the sentence a careful writer would put."""

import math

import pytest

from lmbook.display.show import capital, count_phrase, differ_by, number_text, plural, size_text


def test_plural_agrees_with_the_count():
    assert [plural(n, "layer") for n in (0, 1, 2, 1024)] == ["0 layers", "1 layer", "2 layers", "1,024 layers"]
    assert plural(1, "query", "queries") == "1 query" and plural(3, "query", "queries") == "3 queries"
    with pytest.raises(ValueError, match="n must be >= 0"):
        plural(-1, "layer")
    for bad in (1.5, True, "2"):
        with pytest.raises(TypeError, match="n must be an integer"):
            plural(bad, "layer")


@pytest.mark.parametrize("k, n, words", [
    (3, 3, "all 3 cells"), (2, 2, "both cells"), (0, 2, "neither cell"), (0, 5, "none of the 5 cells"),
    (2, 5, "2 of the 5 cells"), (1, 1, "the one cell"), (0, 1, "not the one cell"), (1, 2, "1 of the 2 cells"),
    (1200, 1500, "1,200 of the 1,500 cells"),
])
def test_count_phrase_never_says_two_of_the_two(k, n, words):
    assert count_phrase(k, n, "cell") == words


def test_count_phrase_takes_an_irregular_plural_and_refuses_impossible_counts():
    assert count_phrase(3, 3, "query", "queries") == "all 3 queries"
    with pytest.raises(ValueError, match="at most n"):
        count_phrase(3, 2, "cell")
    with pytest.raises(ValueError, match="n must be >= 1"):
        count_phrase(0, 0, "cell")


def test_sizes_take_the_unit_that_shows_a_digit():
    assert [size_text(b) for b in (0, 1023, 2048, 3 * 2**20, 5 * 2**30, 0.4 * 2**20)] == [
        "0 bytes", "1,023 bytes", "2.0 KiB", "3.0 MiB", "5.0 GiB", "409.6 KiB"]
    for bad in (-1, float("inf"), float("nan"), "1", True):
        with pytest.raises(ValueError, match="finite number of bytes"):
            size_text(bad)


def test_cells_show_a_dash_for_what_has_no_number():
    assert number_text(float("nan")) == number_text(float("inf")) == number_text(-math.inf) == "–"
    assert number_text(1.234) == "1.23" and number_text(1234.5, ",.0f") == "1,234"
    assert number_text(math.inf, ".1f", infinite="infinite") == "infinite"
    assert number_text(math.inf, infinite="∞") == "∞" and number_text(-math.inf, infinite="∞") == "-∞"
    assert number_text(float("nan"), infinite="∞") == "–"


def test_capital_opens_a_sentence_and_keeps_the_rest():
    assert capital("the GPT's time") == "The GPT's time" and capital("1 of the 2 runs") == "1 of the 2 runs"
    assert capital("") == ""


def test_a_zero_difference_reads_as_equality():
    assert differ_by(0.0) == "are equal, bit for bit" and differ_by(0) == "are equal, bit for bit"
    assert differ_by(4.8e-07) == "differ by 4.8e-07" and differ_by(0.5, ".2f", at_most=True) == "differ by at most 0.50"
    for bad in (-1e-9, math.inf, math.nan, True):
        with pytest.raises(ValueError, match="finite number >= 0"):
            differ_by(bad)
