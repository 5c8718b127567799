"""The earn engine's integer-ratio arithmetic gives exactly what step-by-step Fractions give.

``partners.rules._cash_lines`` builds each line's base points as one fraction of integers instead
of ``cash / 100 × rate × multiplier`` in Fraction steps. Fractions are reduced to lowest terms,
so the two must be equal for every basket, rate and multiplier; these properties check it, and
that the quote built on them floors to the same points as the step-by-step formula.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from partners.rules import Basket, BasketLine, EarnTerms, Tier, _cash_lines, quote_earn

AT = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)
CATEGORIES = ("fresh", "grocery", "fashion", "card")

#: Rates and multipliers as the contracts write them: at most six decimal places.
rates = st.decimals(min_value=0, max_value=1_000, places=6, allow_nan=False, allow_infinity=False)
multipliers = st.decimals(min_value=1, max_value=10, places=6, allow_nan=False)


@st.composite
def baskets(draw: st.DrawFn) -> Basket:
    lines = tuple(
        BasketLine(
            draw(st.integers(min_value=0, max_value=10**9)),
            draw(st.sampled_from(CATEGORIES)),
            draw(st.booleans()),
        )
        for _ in range(draw(st.integers(min_value=1, max_value=5)))
    )
    total = sum(line.amount_cents for line in lines)
    return Basket(lines, draw(st.integers(min_value=0, max_value=total)))


def _step_by_step(basket: Basket, terms: EarnTerms) -> list[tuple[str, Fraction, Fraction]]:
    """The engine's former formula, one Fraction operation at a time."""
    eligible = [line for line in basket.lines if not line.gift_card]
    eligible_cents = sum(line.amount_cents for line in eligible)
    cash_cents = max(0, eligible_cents - basket.paid_with_points_cents)
    rate = Fraction(terms.earn_rate)
    found = []
    for line in eligible:
        cash = Fraction(line.amount_cents * cash_cents, eligible_cents or 1)
        base = cash / 100 * rate * Fraction(terms.multiplier_for(line.category))
        found.append((line.category, cash, base))
    return found


@settings(max_examples=400, deadline=None)
@given(
    basket=baskets(),
    rate=rates,
    factors=st.dictionaries(st.sampled_from(CATEGORIES), multipliers, max_size=3),
    tier_multiplier=multipliers,
)
def test_cash_lines_equal_the_step_by_step_fractions(
    basket: Basket, rate: Decimal, factors: dict[str, Decimal], tier_multiplier: Decimal
) -> None:
    terms = EarnTerms(1, rate, factors)
    lines = _cash_lines(basket, terms)
    expected = _step_by_step(basket, terms)
    assert [(line.category, line.cash_cents, line.base_points) for line in lines] == expected
    for line, (_, cash, base) in zip(lines, expected, strict=True):
        assert (line.cash_cents.numerator, line.cash_cents.denominator) == (
            cash.numerator,
            cash.denominator,
        )
        assert (line.base_points.numerator, line.base_points.denominator) == (
            base.numerator,
            base.denominator,
        )
    tier = Tier("Gold", 1, 0, tier_multiplier)
    quote = quote_earn(basket, terms, partner="SUPER", at=AT, tier=tier)
    exact = sum((base for _, _, base in expected), Fraction(0)) * Fraction(tier_multiplier)
    assert quote.total == math.floor(exact)
