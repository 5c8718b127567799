"""The earn rule engine: worked examples of every rule, and properties over random rule sets."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import BusinessRefusal, InvalidRequest
from partners.errors import CapReached, PartnersError, VelocityExceeded
from partners.rules import (
    ENGINE_VERSION,
    EVENT_TYPES,
    Basket,
    BasketLine,
    Campaign,
    EarnQuote,
    EarnTerms,
    EngagementRule,
    Tier,
    check_velocity,
    next_tier_progress,
    quote_earn,
    quote_engagement,
    tier_for,
)

AT = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)
SPRING = datetime(2026, 3, 1, tzinfo=UTC)
SUMMER = datetime(2026, 6, 1, tzinfo=UTC)

WHITE = Tier("White", 1, 0, Decimal(1))
BLACK = Tier("Black", 2, 1_000, Decimal(1))
GOLD = Tier("Gold", 3, 5_000, Decimal("1.5"))
TIERS = (GOLD, WHITE, BLACK)  # deliberately out of order: the engine sorts by rank

TERMS = EarnTerms(contract_version=3, earn_rate=Decimal("0.5"))


def basket(*lines: BasketLine, paid_with_points_cents: int = 0) -> Basket:
    return Basket(lines, paid_with_points_cents)


def groceries(cents: int) -> BasketLine:
    return BasketLine(cents, "groceries")


def campaign(**changes: object) -> Campaign:
    base = Campaign(
        id="SPRING26",
        partner="SUPER",
        name="Spring double points",
        valid_from=SPRING,
        valid_to=SUMMER,
        multiplier=Decimal(2),
    )
    return replace(base, **changes)


def quote(
    b: Basket,
    terms: EarnTerms = TERMS,
    *,
    campaigns: tuple[Campaign, ...] = (),
    tier: Tier | None = None,
    at: datetime = AT,
    so_far: dict[str, int] | None = None,
) -> EarnQuote:
    return quote_earn(
        b,
        terms,
        partner="SUPER",
        at=at,
        campaigns=campaigns,
        tier=tier,
        campaign_points_so_far=so_far,
    )


# -- base earn ------------------------------------------------------------------------------------


def test_the_explained_example_from_the_issue() -> None:
    """24.00 € at 0.5 pt/€ for a Black member earns 12 points, explained in those words."""
    q = quote(basket(groceries(2400)), tier=BLACK)
    assert q.total == 12
    assert q.funding == {"SUPER": 12}
    assert q.explanation == "12 pts = 24.00 € × 0.5 pt/€, Black tier ×1"
    assert q.rule_versions == {"engine": ENGINE_VERSION, "contract": 3, "tier": "Black"}
    (base,) = q.lines
    assert (base.rule, base.version, base.points) == ("contract", 3, 12)


def test_points_are_rounded_down() -> None:
    """19.99 € at 0.5 pt/€ is 9.995 points, and the member gets 9."""
    assert quote(basket(groceries(1999))).total == 9


def test_rounding_happens_once_over_the_basket_not_per_line() -> None:
    """Three lines of 0.5 points each earn 1 point, not three times zero."""
    terms = EarnTerms(contract_version=1, earn_rate=Decimal(1))
    assert quote(basket(groceries(50), groceries(50), groceries(50)), terms).total == 1


def test_category_multipliers_apply_per_line() -> None:
    """Electronics ×2 doubles the points of the electronics line only, and the text says so."""
    terms = EarnTerms(3, Decimal("0.5"), {"electronics": Decimal(2)})
    q = quote(basket(groceries(2000), BasketLine(400, "electronics")), terms)
    assert q.total == 10 + 4
    assert q.explanation == "14 pts = (20.00 € + 4.00 € electronics ×2) × 0.5 pt/€"


def test_rates_may_come_as_decimal_text() -> None:
    """Rates read from the contracts table as text are parsed exactly."""
    terms = EarnTerms(3, "0.500000", {"wine": "1.25"})  # type: ignore[arg-type]
    assert terms.earn_rate == Decimal("0.5")
    assert quote(basket(BasketLine(1000, "wine")), terms).total == 6  # 6.25 rounded down


def test_tier_multiplies_the_base() -> None:
    """A Gold member (×1.5) earns 18 points on 24.00 € at 0.5 pt/€."""
    q = quote(basket(groceries(2400)), tier=GOLD)
    assert q.total == 18
    assert q.explanation == "18 pts = 24.00 € × 0.5 pt/€, Gold tier ×1.5"


def test_gift_cards_earn_nothing() -> None:
    """A gift card line adds nothing to the points, and the explanation says why."""
    q = quote(basket(groceries(2400), BasketLine(5000, "gift", gift_card=True)))
    assert q.total == 12
    assert "gift cards (50.00 €) earn nothing" in q.explanation


def test_the_part_paid_with_points_earns_nothing() -> None:
    """30.00 € of which 6.00 € paid with points earns on the 24.00 € cash only."""
    q = quote(basket(groceries(3000), paid_with_points_cents=600))
    assert q.total == 12
    assert q.explanation == "12 pts = 24.00 € × 0.5 pt/€; 6.00 € paid with points earns nothing"


def test_points_payment_comes_off_eligible_lines_in_proportion() -> None:
    """Half the basket paid with points halves each line's cash, multiplied lines included."""
    terms = EarnTerms(1, Decimal(1), {"electronics": Decimal(2)})
    q = quote(
        basket(groceries(2000), BasketLine(1000, "electronics"), paid_with_points_cents=1500),
        terms,
    )
    assert q.total == 10 + 2 * 5


def test_points_payment_is_charged_to_eligible_lines_before_gift_cards() -> None:
    """Points paying part of a basket with a gift card never leave a points-paid euro earning."""
    q = quote(
        basket(
            groceries(2000), BasketLine(1000, "gift", gift_card=True), paid_with_points_cents=1000
        )
    )
    assert q.total == 5  # 10.00 € cash on groceries × 0.5


def test_a_basket_paid_entirely_with_points_earns_zero() -> None:
    """Zero points is a valid quote, with no funders at all."""
    q = quote(basket(groceries(2400), paid_with_points_cents=2400), campaigns=(campaign(),))
    assert (q.total, q.funding) == (0, {})
    assert q.explanation.startswith("0 pts = 0.00 €")


def test_a_zero_rate_earns_zero() -> None:
    """A contract with earn rate 0 quotes 0 points, not an error."""
    assert quote(basket(groceries(2400)), EarnTerms(1, Decimal(0))).total == 0


# -- campaigns ------------------------------------------------------------------------------------


def test_a_double_points_campaign_adds_the_base_once_more() -> None:
    """×2 on 24.00 € adds 12 points funded by the partner, recorded with its id."""
    q = quote(basket(groceries(2400)), campaigns=(campaign(),))
    assert q.total == 24
    assert q.funding == {"SUPER": 24}
    assert q.rule_versions["campaign:SPRING26"] == "SPRING26"
    assert [(c.rule, c.version, c.points) for c in q.lines] == [
        ("contract", 3, 12),
        ("campaign", "SPRING26", 12),
    ]
    assert q.explanation.splitlines()[-1] == "= 24 pts"


@pytest.mark.parametrize(
    ("at", "applies"),
    [
        (SPRING - timedelta(microseconds=1), False),
        (SPRING, True),
        (SUMMER - timedelta(microseconds=1), True),
        (SUMMER, False),
    ],
    ids=["before", "first-instant", "last-instant", "end-excluded"],
)
def test_campaign_windows_are_half_open(at: datetime, applies: bool) -> None:
    """A campaign applies from valid_from inclusive to valid_to exclusive."""
    q = quote(basket(groceries(2400)), campaigns=(campaign(),), at=at)
    assert q.total == (24 if applies else 12)


def test_campaign_covers_only_its_categories() -> None:
    """A wine campaign multiplies the wine line and ignores the groceries line."""
    wine_week = campaign(categories=frozenset({"wine"}), multiplier=Decimal(3))
    q = quote(basket(groceries(2000), BasketLine(1000, "wine")), campaigns=(wine_week,))
    assert q.total == 15 + 2 * 5


def test_bonus_campaign_needs_a_covered_line_with_cash() -> None:
    """A fixed bonus is paid once per basket, and only if a covered line was paid in cash."""
    bonus = campaign(multiplier=None, bonus_points=100, categories=frozenset({"wine"}))
    assert quote(basket(BasketLine(1000, "wine")), campaigns=(bonus,)).total == 5 + 100
    assert quote(basket(groceries(1000)), campaigns=(bonus,)).total == 5
    gift_wine = BasketLine(1000, "wine", gift_card=True)
    assert quote(basket(gift_wine, groceries(1000)), campaigns=(bonus,)).total == 5


def test_campaigns_of_other_partners_are_ignored() -> None:
    """A DEPT campaign does not apply to a purchase at SUPER."""
    assert quote(basket(groceries(2400)), campaigns=(campaign(partner="DEPT"),)).total == 12


def test_campaigns_do_not_compound_with_the_tier_or_each_other() -> None:
    """Each campaign is computed on the base before tier; two ×2 campaigns add the base twice."""
    second = campaign(id="BANKX")
    q = quote(basket(groceries(2400)), campaigns=(campaign(), second), tier=Tier("Top", 1, 0, 2))
    assert [c.points for c in q.lines] == [24, 12, 12]


def test_co_funded_campaign_split_adds_up() -> None:
    """13 extra points funded 1:1 split 7/6 by largest remainder, ties to the first code."""
    co_funded = campaign(funders={"SUPER": 1, "BANK": 1})
    q = quote(basket(groceries(2600)), campaigns=(co_funded,))
    assert q.lines[1].funding == {"BANK": 7, "SUPER": 6}
    assert q.funding == {"SUPER": 13 + 6, "BANK": 7}
    assert sum(q.funding.values()) == q.total == 26
    assert "funded by BANK 7, SUPER 6" in q.explanation


def test_campaign_funder_split_follows_weights() -> None:
    """A 3:1 co-funding of 10 extra points gives 8 and 2 (7.5 and 2.5, remainder to the first)."""
    co_funded = campaign(funders={"SUPER": 3, "BANK": 1})
    q = quote(basket(groceries(2000)), campaigns=(co_funded,))
    assert q.lines[1].funding == {"BANK": 3, "SUPER": 7}


@pytest.mark.parametrize(
    ("so_far", "expected_extra"),
    [(0, 12), (90, 10), (95, 5), (100, 0), (250, 0)],
)
def test_member_cap_limits_what_a_campaign_gives(so_far: int, expected_extra: int) -> None:
    """A campaign capped at 100 points per member gives at most what the cap still allows."""
    capped = campaign(member_cap=100)
    q = quote(basket(groceries(2400)), campaigns=(capped,), so_far={"SPRING26": so_far})
    assert q.lines[1].points == expected_extra
    assert q.total == 12 + expected_extra
    assert f"member cap 100 ({max(0, 100 - so_far)} left)" in q.explanation


def test_campaign_multiplier_extra_is_rounded_down() -> None:
    """×1.5 on 9.995 base points adds 4 (4.9975 rounded down), never a fraction."""
    half_more = campaign(multiplier=Decimal("1.5"))
    q = quote(basket(groceries(1999)), campaigns=(half_more,))
    assert [c.points for c in q.lines] == [9, 4]


def test_a_campaign_may_both_multiply_and_add_a_bonus() -> None:
    """Multiplier extra and bonus add up, then the cap applies to their sum."""
    both = campaign(bonus_points=50, member_cap=55)
    assert quote(basket(groceries(2400)), campaigns=(both,)).lines[1].points == 55


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: BasketLine(-1, "groceries"),
        lambda: BasketLine(24.0, "groceries"),
        lambda: BasketLine(True, "groceries"),
        lambda: BasketLine(100, ""),
        lambda: BasketLine(100, "groceries", gift_card=1),
        lambda: Basket(()),
        lambda: Basket((groceries(100),), paid_with_points_cents=101),
        lambda: Basket((groceries(100),), paid_with_points_cents=-1),
        lambda: Basket((groceries(100),), paid_with_points_cents=1.0),
        lambda: EarnTerms(3, 0.5),
        lambda: EarnTerms(3, Decimal("-0.5")),
        lambda: EarnTerms(3, Decimal("0.0000001")),
        lambda: EarnTerms(0, Decimal(1)),
        lambda: EarnTerms(3, Decimal(1), {"wine": 2.0}),
        lambda: campaign(multiplier=None),
        lambda: campaign(multiplier=Decimal("0.5")),
        lambda: campaign(multiplier=1.5),
        lambda: campaign(bonus_points=-5),
        lambda: campaign(member_cap=-1),
        lambda: campaign(valid_to=SPRING),
        lambda: campaign(valid_from=datetime(2026, 3, 1)),
        lambda: campaign(funders={"SUPER": 0}),
        lambda: campaign(funders={"SUPER": 1.5}),
        lambda: Tier("Gold", 3, -1, Decimal(1)),
        lambda: Tier("Gold", 3, 5000, 1.5),
    ],
)
def test_malformed_rules_and_baskets_are_refused(make: object) -> None:
    """Negative amounts, floats, naive times and impossible campaigns raise InvalidRequest."""
    with pytest.raises(InvalidRequest):
        make()  # type: ignore[operator]


def test_quote_refuses_a_naive_business_time() -> None:
    """The business time must be timezone-aware to be compared with campaign windows."""
    with pytest.raises(InvalidRequest):
        quote(basket(groceries(100)), at=datetime(2026, 3, 14))


def test_quote_refuses_negative_or_float_points_so_far() -> None:
    """A campaign counter must be an integer ≥ 0, or a cap could be bypassed."""
    for bad in (-1, 1.0):
        with pytest.raises(InvalidRequest):
            quote(basket(groceries(100)), campaigns=(campaign(),), so_far={"SPRING26": bad})


def test_quote_refuses_the_same_campaign_twice() -> None:
    """Passing one campaign twice would pay it twice and overrun its cap."""
    with pytest.raises(InvalidRequest):
        quote(basket(groceries(100)), campaigns=(campaign(), campaign()))


# -- tiers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("points", "tier"),
    [
        (0, "White"),
        (999, "White"),
        (1_000, "Black"),
        (4_999, "Black"),
        (5_000, "Gold"),
        (10**9, "Gold"),
    ],
)
def test_tier_is_the_highest_threshold_reached(points: int, tier: str) -> None:
    """White from 0, Black from 1,000, Gold from 5,000 points earned over 12 months."""
    assert tier_for(points, TIERS).name == tier


@pytest.mark.parametrize(
    ("points", "next_name", "missing"),
    [(0, "Black", 1_000), (999, "Black", 1), (1_000, "Gold", 4_000), (4_999, "Gold", 1)],
)
def test_progress_to_the_next_tier(points: int, next_name: str, missing: int) -> None:
    """Progress names the next tier and the points still missing."""
    tier, still = next_tier_progress(points, TIERS)
    assert (tier.name if tier else None, still) == (next_name, missing)


def test_no_next_tier_at_the_top() -> None:
    """A Gold member has no next tier and nothing missing."""
    assert next_tier_progress(5_000, TIERS) == (None, 0)


@pytest.mark.parametrize(
    "tiers",
    [
        (),
        (BLACK, GOLD),
        (WHITE, Tier("Black", 1, 1_000, Decimal(1))),
        (WHITE, Tier("White", 2, 1_000, Decimal(1))),
        (WHITE, Tier("Black", 2, 5_000, Decimal(1)), Tier("Gold", 3, 1_000, Decimal(1))),
    ],
    ids=["empty", "no-zero", "same-rank", "same-name", "thresholds-fall"],
)
def test_misconfigured_tier_ladders_are_refused(tiers: tuple[Tier, ...]) -> None:
    """Tiers need a level at 0, unique names and ranks, thresholds rising with rank."""
    with pytest.raises(InvalidRequest):
        tier_for(0, tiers)


def test_tier_lookup_refuses_negative_points() -> None:
    """Points earned over 12 months cannot be negative."""
    with pytest.raises(InvalidRequest):
        tier_for(-1, TIERS)


# -- engagement -----------------------------------------------------------------------------------

REVIEW = EngagementRule(
    event_type="review",
    version=2,
    sponsor="SUPER",
    points=50,
    cap_per_day=1,
    cap_per_month=3,
    cap_per_year=10,
    valid_from=SPRING,
    valid_to=SUMMER,
)
NONE_YET = {"day": 0, "month": 0, "year": 0}


def test_event_types_are_the_nine_of_the_programme() -> None:
    """The programme rewards exactly the nine engagement events of the specification."""
    assert sorted(EVENT_TYPES) == sorted(
        [
            "review",
            "social_share",
            "app_install",
            "referral_referrer",
            "referral_referee",
            "birthday",
            "survey",
            "store_visit",
            "newsletter",
        ]
    )


def test_engagement_within_its_caps_is_quoted() -> None:
    """A first review of the day earns the rule's points, sponsor and version."""
    q = quote_engagement(REVIEW, at=AT, counts={"day": 0, "month": 2, "year": 9})
    assert (q.event_type, q.version, q.sponsor, q.points) == ("review", 2, "SUPER", 50)
    assert q.rule_versions == {"engine": ENGINE_VERSION, "engagement:review": 2}
    assert q.explanation == "50 pts for review (rule v2, sponsor SUPER)"


@pytest.mark.parametrize(
    ("counts", "period", "cap"),
    [
        ({"day": 1, "month": 1, "year": 1}, "day", 1),
        ({"day": 0, "month": 3, "year": 3}, "month", 3),
        ({"day": 0, "month": 0, "year": 10}, "year", 10),
    ],
)
def test_engagement_caps_per_day_month_and_year(
    counts: dict[str, int], period: str, cap: int
) -> None:
    """Once the member was rewarded `cap` times in a period, the next event is refused."""
    with pytest.raises(CapReached) as caught:
        quote_engagement(REVIEW, at=AT, counts=counts)
    assert caught.value.fields()["period"] == period
    assert caught.value.fields()["cap"] == cap


def test_cap_reached_is_a_recorded_business_refusal() -> None:
    """CapReached has a stable code and is rebuilt from its record, so a retry is refused alike."""
    with pytest.raises(CapReached) as caught:
        quote_engagement(REVIEW, at=AT, counts={"day": 1, "month": 1, "year": 1})
    err = caught.value
    assert isinstance(err, BusinessRefusal)
    assert isinstance(err, PartnersError)
    assert err.code == "engagement-cap-reached"
    replayed = BusinessRefusal.from_record(err.code, err.message, err.fields())
    assert type(replayed) is CapReached
    assert replayed.fields() == err.fields()


def test_uncapped_periods_need_no_count() -> None:
    """A rule without caps is quoted with no counts at all."""
    open_rule = replace(REVIEW, cap_per_day=None, cap_per_month=None, cap_per_year=None)
    assert quote_engagement(open_rule, at=AT, counts={}).points == 50


def test_a_missing_count_for_a_capped_period_is_refused() -> None:
    """A missing counter must never silently lift a cap."""
    with pytest.raises(InvalidRequest):
        quote_engagement(REVIEW, at=AT, counts={"day": 0, "month": 0})


@pytest.mark.parametrize(
    "counts",
    [
        {"day": -1, "month": 0, "year": 0},
        {"day": 0.0, "month": 0, "year": 0},
        {**NONE_YET, "week": 0},
    ],
)
def test_malformed_counts_are_refused(counts: dict[str, object]) -> None:
    """Counts are integers ≥ 0 for the known periods only."""
    with pytest.raises(InvalidRequest):
        quote_engagement(REVIEW, at=AT, counts=counts)  # type: ignore[arg-type]


@pytest.mark.parametrize("at", [SPRING - timedelta(microseconds=1), SUMMER])
def test_engagement_rule_outside_its_window_is_refused(at: datetime) -> None:
    """A rule version prices only events inside its half-open window."""
    with pytest.raises(InvalidRequest):
        quote_engagement(REVIEW, at=at, counts=NONE_YET)


def test_open_ended_engagement_rule_applies_later() -> None:
    """A current version (no valid_to) keeps applying."""
    current = replace(REVIEW, valid_to=None)
    assert quote_engagement(current, at=SUMMER + timedelta(days=400), counts=NONE_YET).points == 50


@pytest.mark.parametrize(
    "changes",
    [
        {"event_type": "like"},
        {"points": -1},
        {"points": 5.0},
        {"cap_per_day": -1},
        {"version": 0},
        {"sponsor": ""},
    ],
)
def test_malformed_engagement_rules_are_refused(changes: dict[str, object]) -> None:
    """Unknown event types, negative points or caps, and float points are refused."""
    with pytest.raises(InvalidRequest):
        replace(REVIEW, **changes)


# -- velocity -------------------------------------------------------------------------------------


def test_velocity_within_the_daily_cap_passes() -> None:
    """Reaching the cap exactly is allowed; no cap means no limit."""
    assert check_velocity("earn", 400, 600, 1_000) is None
    assert check_velocity("transfer", 10**9, 10**9, None) is None


def test_velocity_past_the_daily_cap_is_refused() -> None:
    """One point past the daily cap is a recorded business refusal naming the numbers."""
    with pytest.raises(VelocityExceeded) as caught:
        check_velocity("burn", 401, 600, 1_000)
    err = caught.value
    assert isinstance(err, BusinessRefusal)
    assert err.code == "velocity-exceeded"
    assert err.fields() == {"kind": "burn", "cap": 1_000, "already_today": 600, "requested": 401}


@pytest.mark.parametrize(
    "args",
    [
        ("mint", 1, 0, 10),
        ("earn", -1, 0, 10),
        ("earn", 1, -1, 10),
        ("earn", 1.0, 0, 10),
        ("earn", 1, 0, -1),
    ],
)
def test_velocity_refuses_malformed_arguments(args: tuple[object, ...]) -> None:
    """Unknown kinds, negative or float numbers are refused."""
    with pytest.raises(InvalidRequest):
        check_velocity(*args)  # type: ignore[arg-type]


# -- properties -----------------------------------------------------------------------------------

CATEGORIES = ("groceries", "electronics", "wine", "fuel")
FUNDERS = ("SUPER", "BANK", "RAIL", "program")
PROPERTY_SETTINGS = settings(max_examples=100, deadline=None)


def decimals(low: int, high: int) -> st.SearchStrategy[Decimal]:
    """Decimals with six places between low/10^6 and high/10^6, built from integers."""
    return st.integers(low, high).map(lambda n: Decimal(n).scaleb(-6))


lines_st = st.builds(
    BasketLine,
    amount_cents=st.integers(0, 10**7),
    category=st.sampled_from(CATEGORIES),
    gift_card=st.booleans(),
)


@st.composite
def baskets(draw: st.DrawFn, lines: st.SearchStrategy[BasketLine] = lines_st) -> Basket:
    drawn = draw(st.lists(lines, min_size=1, max_size=6))
    total = sum(line.amount_cents for line in drawn)
    return Basket(tuple(drawn), draw(st.integers(0, total)))


terms_st = st.builds(
    EarnTerms,
    contract_version=st.integers(1, 50),
    earn_rate=decimals(0, 5_000_000),
    category_multipliers=st.dictionaries(st.sampled_from(CATEGORIES), decimals(0, 4_000_000)),
)


@st.composite
def campaign_sets(draw: st.DrawFn) -> tuple[Campaign, ...]:
    found = []
    for index in range(draw(st.integers(0, 4))):
        starts = AT + timedelta(hours=draw(st.integers(-72, 24)))
        multiplier = draw(st.none() | decimals(1_000_000, 5_000_000))
        bonus = draw(st.integers(0, 500) if multiplier is None else st.none() | st.integers(0, 500))
        found.append(
            Campaign(
                id=f"C{index}",
                partner=draw(st.sampled_from(["SUPER", "SUPER", "DEPT"])),
                name=f"campaign {index}",
                valid_from=starts,
                valid_to=starts + timedelta(hours=draw(st.integers(1, 120))),
                multiplier=multiplier,
                bonus_points=bonus,
                categories=draw(st.frozensets(st.sampled_from(CATEGORIES))),
                member_cap=draw(st.none() | st.integers(0, 400)),
                funders=draw(st.dictionaries(st.sampled_from(FUNDERS), st.integers(1, 5))),
            )
        )
    return tuple(found)


tiers_st = st.none() | st.builds(
    Tier,
    name=st.just("Any"),
    rank=st.just(1),
    threshold=st.just(0),
    multiplier=decimals(0, 3_000_000),
)
so_far_st = st.dictionaries(st.sampled_from([f"C{i}" for i in range(4)]), st.integers(0, 600))


def assert_well_formed(q: EarnQuote) -> None:
    """Integer points ≥ 0 everywhere, funding of each part and of the whole adds up."""
    assert type(q.total) is int
    assert q.total >= 0
    assert q.total == sum(c.points for c in q.lines)
    assert sum(q.funding.values()) == q.total
    for component in q.lines:
        assert type(component.points) is int
        assert component.points >= 0
        assert sum(component.funding.values()) == component.points
    for points in q.funding.values():
        assert type(points) is int
        assert points > 0


@PROPERTY_SETTINGS
@given(baskets(), terms_st, campaign_sets(), tiers_st, so_far_st)
def test_property_points_are_non_negative_integers_and_funding_adds_up(
    b: Basket,
    terms: EarnTerms,
    campaigns: tuple[Campaign, ...],
    tier: Tier | None,
    so_far: dict[str, int],
) -> None:
    """Any basket under any rules earns whole points ≥ 0 whose funders sum to the total."""
    assert_well_formed(quote(b, terms, campaigns=campaigns, tier=tier, so_far=so_far))


@PROPERTY_SETTINGS
@given(baskets(), terms_st, campaign_sets(), tiers_st, so_far_st)
def test_property_no_campaign_ever_exceeds_its_member_cap(
    b: Basket,
    terms: EarnTerms,
    campaigns: tuple[Campaign, ...],
    tier: Tier | None,
    so_far: dict[str, int],
) -> None:
    """What a campaign gives plus what it gave before never passes its member cap."""
    q = quote(b, terms, campaigns=campaigns, tier=tier, so_far=so_far)
    caps = {c.id: c.member_cap for c in campaigns}
    for component in q.lines[1:]:
        cap = caps[component.version]
        if cap is not None:
            assert component.points <= max(0, cap - so_far.get(str(component.version), 0))


@PROPERTY_SETTINGS
@given(
    baskets(),
    terms_st,
    campaign_sets(),
    tiers_st,
    so_far_st,
    st.data(),
)
def test_property_a_larger_basket_never_earns_less(
    b: Basket,
    terms: EarnTerms,
    campaigns: tuple[Campaign, ...],
    tier: Tier | None,
    so_far: dict[str, int],
    data: st.DataObject,
) -> None:
    """Raising one line's amount (same rules, same points payment) never lowers the total."""
    index = data.draw(st.integers(0, len(b.lines) - 1))
    more = data.draw(st.integers(1, 10**6))
    lines = list(b.lines)
    lines[index] = replace(lines[index], amount_cents=lines[index].amount_cents + more)
    bigger = Basket(tuple(lines), b.paid_with_points_cents)
    before = quote(b, terms, campaigns=campaigns, tier=tier, so_far=so_far)
    after = quote(bigger, terms, campaigns=campaigns, tier=tier, so_far=so_far)
    assert after.total >= before.total


@PROPERTY_SETTINGS
@given(baskets(), terms_st, campaign_sets(), tiers_st, st.data())
def test_property_paying_more_with_points_never_earns_more(
    b: Basket,
    terms: EarnTerms,
    campaigns: tuple[Campaign, ...],
    tier: Tier | None,
    data: st.DataObject,
) -> None:
    """Moving part of the price from cash to points never raises the points earned."""
    total = sum(line.amount_cents for line in b.lines)
    more_points = replace(
        b, paid_with_points_cents=data.draw(st.integers(b.paid_with_points_cents, total))
    )
    before = quote(b, terms, campaigns=campaigns, tier=tier)
    after = quote(more_points, terms, campaigns=campaigns, tier=tier)
    assert after.total <= before.total


@PROPERTY_SETTINGS
@given(
    baskets(
        st.builds(BasketLine, st.integers(0, 10**7), st.sampled_from(CATEGORIES), st.just(True))
    ),
    terms_st,
    campaign_sets(),
    tiers_st,
)
def test_property_gift_card_only_baskets_earn_nothing(
    b: Basket, terms: EarnTerms, campaigns: tuple[Campaign, ...], tier: Tier | None
) -> None:
    """A basket of gift cards earns 0 points, campaigns and tiers notwithstanding."""
    q = quote(b, terms, campaigns=campaigns, tier=tier)
    assert (q.total, q.funding) == (0, {})
