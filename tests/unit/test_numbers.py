"""Amounts, rates and rounding: integers by type, decimals from text, one rounding per line."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import InvalidRequest
from ledger.numbers import (
    MAX_AMOUNT,
    format_cents,
    parse_amount,
    parse_rate,
    round_cents,
    split_largest_remainder,
)

# -- parse_amount ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 37, 1_000_000, MAX_AMOUNT])
def test_parse_amount_accepts_positive_integers(value: int) -> None:
    """A positive integer up to 2^53−1 is an amount, returned unchanged."""
    assert parse_amount(value) == value


@pytest.mark.parametrize(
    "value",
    [0, -1, MAX_AMOUNT + 1, 1.0, 2.5, True, False, "1", Decimal(1), None],
    ids=repr,
)
def test_parse_amount_refuses_non_positive_oversized_and_non_integers(value: object) -> None:
    """Zero, negatives, amounts past 2^53−1, floats, booleans, strings and Decimals are refused."""
    with pytest.raises(InvalidRequest):
        parse_amount(value)


def test_parse_amount_allows_zero_only_when_asked() -> None:
    """``allow_zero`` admits zero but still refuses negatives."""
    assert parse_amount(0, allow_zero=True) == 0
    with pytest.raises(InvalidRequest):
        parse_amount(-1, allow_zero=True)


def test_parse_amount_names_the_field_in_its_message() -> None:
    """The refusal names the field, so an API caller knows which input was wrong."""
    with pytest.raises(InvalidRequest, match="points funded by SUPER"):
        parse_amount(-5, name="points funded by SUPER")


# -- parse_rate -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0095", Decimal("0.0095")),
        ("0.011", Decimal("0.011")),
        ("0.000001", Decimal("0.000001")),
        ("1E-6", Decimal("0.000001")),
        ("0", Decimal(0)),
        ("12.5", Decimal("12.5")),
        ("0.1000000", Decimal("0.1")),
    ],
)
def test_parse_rate_reads_decimal_text_up_to_six_places(text: str, expected: Decimal) -> None:
    """Decimal text with at most six significant decimal places is read exactly."""
    rate = parse_rate(text)
    assert isinstance(rate, Decimal)
    assert rate == expected


def test_parse_rate_accepts_int_and_decimal() -> None:
    """Integers and Decimals are exact, so they are accepted as rates."""
    assert parse_rate(2) == Decimal(2)
    assert parse_rate(Decimal("0.0110")) == Decimal("0.011")


@pytest.mark.parametrize("value", [0.0095, 1.0, True, False], ids=repr)
def test_parse_rate_refuses_floats_and_booleans(value: object) -> None:
    """A float (or a bool) never becomes a rate, not even one that looks exact."""
    with pytest.raises(InvalidRequest, match="decimal string"):
        parse_rate(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        "0.0000001",
        "0.0095001",
        "1E-7",
        "-0.01",
        "-1",
        "NaN",
        "sNaN",
        "Infinity",
        "-Infinity",
        "abc",
        "",
        "0,01",
        "1E+30",
        None,
        [1],
    ],
    ids=repr,
)
def test_parse_rate_refuses_excess_places_negatives_and_non_numbers(value: object) -> None:
    """More than six places, negatives, NaN, infinities, huge values and non-numbers are refused."""
    with pytest.raises(InvalidRequest):
        parse_rate(value)  # type: ignore[arg-type]


@given(st.decimals(min_value=0, max_value=10**6, places=6, allow_nan=False, allow_infinity=False))
def test_parse_rate_round_trips_any_six_place_decimal(rate: Decimal) -> None:
    """Every non-negative decimal with ≤ 6 places survives its own text unchanged."""
    assert parse_rate(str(rate)) == rate


# -- round_cents ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("euros", "mode", "cents"),
    [
        # exact halves: the only place the modes disagree with "nearest"
        ("0.125", "ROUND_HALF_UP", 13),
        ("0.125", "ROUND_HALF_EVEN", 12),
        ("0.135", "ROUND_HALF_EVEN", 14),
        ("0.125", "ROUND_DOWN", 12),
        ("0.125", "ROUND_UP", 13),
        ("-0.125", "ROUND_HALF_UP", -13),
        ("-0.125", "ROUND_HALF_EVEN", -12),
        ("-0.125", "ROUND_DOWN", -12),
        ("-0.125", "ROUND_UP", -13),
        # just either side of a half
        ("0.124999", "ROUND_HALF_UP", 12),
        ("0.125001", "ROUND_HALF_EVEN", 13),
        ("0.120001", "ROUND_DOWN", 12),
        ("0.120001", "ROUND_UP", 13),
        # already whole cents: every mode leaves them alone
        ("21780.00", "ROUND_HALF_UP", 2_178_000),
        ("21780.00", "ROUND_UP", 2_178_000),
        ("-7580", "ROUND_DOWN", -758_000),
    ],
)
def test_round_cents_in_each_mode(euros: str, mode: str, cents: int) -> None:
    """Each contract rounding mode rounds halves its own way, and whole cents not at all."""
    result = round_cents(Decimal(euros), mode)
    assert result == cents
    assert type(result) is int


def test_round_cents_defaults_to_half_up() -> None:
    """Without a contract setting, rounding is ROUND_HALF_UP (PRODUCT.md §2)."""
    assert round_cents(Decimal("0.005")) == 1
    assert round_cents(Decimal("1980000") * Decimal("0.0110")) == 2_178_000


def test_round_cents_refuses_unknown_modes() -> None:
    """A rounding mode outside the contract list is refused rather than guessed."""
    with pytest.raises(InvalidRequest, match="rounding mode"):
        round_cents(Decimal("1.005"), "ROUND_HALF_DOWN")


@pytest.mark.parametrize(
    ("cents", "text"), [(0, "0.00"), (5, "0.05"), (-1234, "-12.34"), (758_000, "7580.00")]
)
def test_format_cents_renders_euro_text(cents: int, text: str) -> None:
    """Cents render as a two-place euro string with the sign in front."""
    assert format_cents(cents) == text


# -- split_largest_remainder ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "weights", "parts"),
    [
        (100, [60, 40], [60, 40]),
        (10, [1, 1, 1], [4, 3, 3]),
        (11, [1, 1, 1], [4, 4, 3]),
        (7, [1, 2], [2, 5]),
        (1, [1, 1], [1, 0]),
        (0, [3, 5], [0, 0]),
        (5, [0, 1], [0, 5]),
        (100, [1, 1, 1, 1, 1, 1], [17, 17, 17, 17, 16, 16]),
    ],
)
def test_split_largest_remainder_examples(total: int, weights: list[int], parts: list[int]) -> None:
    """Floors first, leftover units to the largest remainders, ties to the earlier weight."""
    assert split_largest_remainder(total, weights) == parts


@pytest.mark.parametrize(("total", "weights"), [(-1, [1]), (10, []), (10, [0, 0]), (10, [2, -1])])
def test_split_largest_remainder_refuses_bad_inputs(total: int, weights: list[int]) -> None:
    """A negative total, no weights, all-zero or negative weights are refused."""
    with pytest.raises(InvalidRequest):
        split_largest_remainder(total, weights)


@given(
    total=st.integers(min_value=0, max_value=MAX_AMOUNT),
    weights=st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=12).filter(
        lambda ws: sum(ws) > 0
    ),
)
def test_split_largest_remainder_properties(total: int, weights: list[int]) -> None:
    """Parts add up to the total, each within one point of its exact share, none negative."""
    parts = split_largest_remainder(total, weights)
    assert len(parts) == len(weights)
    assert sum(parts) == total
    weight_sum = sum(weights)
    for part, weight in zip(parts, weights, strict=True):
        assert part >= 0
        assert abs(part - Fraction(total * weight, weight_sum)) < 1
