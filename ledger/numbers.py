"""The one home of amounts, rates and rounding.

Why no floats: a binary float cannot hold 0.1 or 0.0095 exactly, and a loyalty ledger multiplies
millions of points by prices with six decimals. A float anywhere in that path makes totals drift by
cents that no one can explain to an auditor. So:

- points are ``int`` (``Points``), money is ``int`` euro-cents (``Cents``);
- prices and rates are ``Decimal`` (``Rate``), parsed from strings, never from floats;
- money is rounded exactly once per statement line, by :func:`round_cents`, in the rounding mode the
  contract names.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, ROUND_UP, Decimal, InvalidOperation
from typing import NewType

from ledger.errors import InvalidRequest

Points = NewType("Points", int)
Cents = NewType("Cents", int)
Rate = NewType("Rate", Decimal)

#: Largest magnitude any amount may have: it must survive JSON in any language (IEEE double).
MAX_AMOUNT = 2**53 - 1

#: Prices are quoted to at most six decimal places of a euro (PRODUCT.md §2).
RATE_PLACES = 6

ROUNDING_MODES = {
    "ROUND_HALF_UP": ROUND_HALF_UP,
    "ROUND_HALF_EVEN": ROUND_HALF_EVEN,
    "ROUND_DOWN": ROUND_DOWN,
    "ROUND_UP": ROUND_UP,
}


def parse_amount(value: object, *, name: str = "amount", allow_zero: bool = False) -> int:
    """Return ``value`` as a strictly positive integer amount (or ≥ 0 with ``allow_zero``).

    Booleans and floats are refused even when they look whole: an amount must be an integer by type.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name} must be an integer, got {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        raise InvalidRequest(f"{name} must be {'≥ 0' if allow_zero else 'positive'}, got {value}")
    if value > MAX_AMOUNT:
        raise InvalidRequest(f"{name} exceeds the largest amount {MAX_AMOUNT}")
    return value


def parse_rate(value: str | int | Decimal, *, name: str = "rate") -> Rate:
    """Parse a price or rate from its decimal text; at most six decimal places, never negative."""
    if isinstance(value, float | bool):
        raise InvalidRequest(
            f"{name} must be given as a decimal string, not {type(value).__name__}"
        )
    try:
        rate = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise InvalidRequest(f"{name} {value!r} is not a decimal number") from None
    if not rate.is_finite() or rate < 0:
        raise InvalidRequest(f"{name} must be a finite, non-negative decimal, got {value!r}")
    try:
        six_places = rate.quantize(Decimal(1).scaleb(-RATE_PLACES), rounding=ROUND_DOWN)
    except InvalidOperation:
        # A rate too large to carry six places in the context's precision (e.g. "1E+30").
        raise InvalidRequest(f"{name} {value!r} is out of range") from None
    if rate != six_places:
        raise InvalidRequest(f"{name} {value!r} has more than {RATE_PLACES} decimal places")
    return Rate(rate)


def round_cents(euros: Decimal, mode: str = "ROUND_HALF_UP") -> Cents:
    """Round an exact euro amount to whole cents, once, in the contract's rounding mode."""
    try:
        rounding = ROUNDING_MODES[mode]
    except KeyError:
        raise InvalidRequest(f"unknown rounding mode {mode!r}") from None
    cents = (euros * 100).quantize(Decimal(1), rounding=rounding)
    return Cents(int(cents))


def format_cents(cents: int) -> str:
    """Render cents as a euro decimal string (``-1234`` → ``"-12.34"``), for humans and JSON."""
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}{whole}.{frac:02d}"


def split_largest_remainder(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` points in proportion to ``weights`` so the parts add up exactly.

    Hamilton's method: floor each share, then hand the leftover units to the largest remainders,
    ties to the earlier weight. Used for joint promotions co-funded by several partners.
    """
    if total < 0 or not weights or any(w < 0 for w in weights) or sum(weights) == 0:
        raise InvalidRequest("a split needs a non-negative total and positive weights")
    weight_sum = sum(weights)
    floors = [total * w // weight_sum for w in weights]
    remainders = [total * w % weight_sum for w in weights]
    leftover = total - sum(floors)
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
    for i in order[:leftover]:
        floors[i] += 1
    return floors
