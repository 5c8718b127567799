"""The coalition's earn rules: how many points a purchase or an engagement is worth, and who pays.

A pure rule engine (PRODUCT.md §3, §6): no database, no clock, no configuration. The caller loads
the contract version, the campaigns, the member's tier and the counters already awarded, and
passes them in with the event's business time; the engine returns a quote that the service books.

Invariants every quote keeps:

- points are ``int`` and never negative; every fraction is rounded DOWN, once per component, so a
  member never gets a fractional point and a cap is never exceeded; zero points is a valid quote;
- a quote's ``funding`` holds only funders that pay something and adds up to its ``total``;
- points are earned on the cash part of a basket only, never on the part paid with points and
  never on gift cards (buying a gift card with a gift card would otherwise mint points twice);
- the arithmetic runs on exact fractions (no float, no intermediate rounding), so the quote is
  monotone: a larger basket never earns fewer points under the same rules;
- every component names the rule and version that produced it, and ``rule_versions`` is what the
  EARN entry stores, so "why did I get 37 points?" always has an answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise
from types import MappingProxyType

from ledger.errors import InvalidRequest
from ledger.numbers import (
    MAX_AMOUNT,
    Rate,
    format_cents,
    parse_amount,
    parse_rate,
    split_largest_remainder,
)
from partners.errors import CapReached, VelocityExceeded

#: Version of this engine's arithmetic, stored with every quote: if the way points are computed
#: ever changes, old entries still say which arithmetic produced them.
ENGINE_VERSION = 1

#: The engagement events a rule may reward (PRODUCT.md §6, issue 4 point 5).
EVENT_TYPES = frozenset(
    {
        "review",
        "social_share",
        "app_install",
        "referral_referrer",
        "referral_referee",
        "birthday",
        "survey",
        "store_visit",
        "newsletter",
    }
)

#: The periods an engagement rule may cap, in the order they are checked.
ENGAGEMENT_PERIODS = ("day", "month", "year")

#: The member operations that have a daily velocity cap (issue 4 point 9).
VELOCITY_KINDS = frozenset({"earn", "burn", "transfer"})

_ONE = Decimal(1)


# -- validation -----------------------------------------------------------------------------------


def _count(value: object, name: str) -> int:
    """An integer ≥ 0 (points, cents, a counter); floats and booleans are refused."""
    return parse_amount(value, name=name, allow_zero=True)


def _optional_count(value: object, name: str) -> int | None:
    return None if value is None else _count(value, name)


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{name} must be a non-empty string")
    return value


def _moment(value: object, name: str) -> datetime:
    # Windows are compared across partners and servers: a naive time has no meaning there.
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InvalidRequest(f"{name} must be a timezone-aware datetime")
    return value


def _window(valid_from: object, valid_to: object, name: str) -> None:
    start = _moment(valid_from, f"{name} valid_from")
    if valid_to is not None and _moment(valid_to, f"{name} valid_to") <= start:
        raise InvalidRequest(f"{name} must end after it starts")


def _multiplier(value: str | int | Decimal, name: str, *, at_least_one: bool = False) -> Rate:
    rate = parse_rate(value, name=name)
    if at_least_one and rate < _ONE:
        raise InvalidRequest(f"{name} must be at least 1, got {value}")
    return rate


def _in_window(at: datetime, valid_from: datetime, valid_to: datetime | None) -> bool:
    """Half-open ``[valid_from, valid_to)``: a rule ending at midnight gives nothing at midnight."""
    return valid_from <= at and (valid_to is None or at < valid_to)


# -- baskets and terms ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BasketLine:
    """One line of a purchase, as the partner's till reports it."""

    amount_cents: int
    """What the line costs, in euro-cents, before any payment with points."""
    category: str
    """The partner's product category (``groceries``, ``electronics``, ...)."""
    gift_card: bool = False
    """A gift card purchase: never earns points."""

    def __post_init__(self) -> None:
        _count(self.amount_cents, "amount_cents")
        _text(self.category, "category")
        if not isinstance(self.gift_card, bool):
            raise InvalidRequest("gift_card must be a boolean")


@dataclass(frozen=True, slots=True)
class Basket:
    """A purchase: its lines and how much of it the member paid with points."""

    lines: tuple[BasketLine, ...]
    """The lines of the purchase; at least one."""
    paid_with_points_cents: int = 0
    """The part of the price paid with points, in euro-cents; it earns nothing."""

    def __post_init__(self) -> None:
        lines = tuple(self.lines)
        if not lines or not all(isinstance(line, BasketLine) for line in lines):
            raise InvalidRequest("a basket needs at least one BasketLine")
        object.__setattr__(self, "lines", lines)
        _count(self.paid_with_points_cents, "paid_with_points_cents")
        total = sum(line.amount_cents for line in lines)
        if total > MAX_AMOUNT:
            raise InvalidRequest(f"basket total exceeds the largest amount {MAX_AMOUNT}")
        if self.paid_with_points_cents > total:
            raise InvalidRequest(
                f"paid_with_points_cents {self.paid_with_points_cents} exceeds the basket {total}"
            )


@dataclass(frozen=True, slots=True)
class EarnTerms:
    """The earn part of the partner's contract version in force at the purchase's business time."""

    contract_version: int
    """The contract version these terms come from; recorded with the EARN."""
    earn_rate: Decimal
    """Points per euro of cash spent (decimal text or ``Decimal``; never a float)."""
    category_multipliers: Mapping[str, Decimal] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """Per-category factor on the earn rate; a category not listed earns ×1."""

    def __post_init__(self) -> None:
        parse_amount(self.contract_version, name="contract_version")
        object.__setattr__(self, "earn_rate", parse_rate(self.earn_rate, name="earn_rate"))
        multipliers = {
            _text(category, "category"): _multiplier(factor, f"multiplier of {category}")
            for category, factor in dict(self.category_multipliers).items()
        }
        object.__setattr__(self, "category_multipliers", MappingProxyType(multipliers))

    def multiplier_for(self, category: str) -> Decimal:
        return self.category_multipliers.get(category, _ONE)


@dataclass(frozen=True, slots=True)
class Campaign:
    """A partner's promotion: extra points on top of the contract rate, inside a date window.

    Campaigns are immutable records (a change is a new campaign), so the id is their version.
    """

    id: str
    """Stable identifier, recorded with every EARN the campaign contributed to."""
    partner: str
    """The partner at which purchases qualify."""
    name: str
    """Human name, shown in explanations."""
    valid_from: datetime
    """First instant of the campaign (inclusive)."""
    valid_to: datetime
    """End of the campaign (exclusive)."""
    multiplier: Decimal | None = None
    """×m on the base points of qualifying lines: adds (m − 1) × those points; at least 1."""
    bonus_points: int | None = None
    """Fixed points added once per qualifying basket."""
    categories: frozenset[str] = frozenset()
    """Qualifying categories; empty means every category."""
    member_cap: int | None = None
    """Most points the campaign may ever give one member; ``None`` for no cap."""
    funders: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Funder → weight for splitting the extra points; empty means the partner funds it all."""

    def __post_init__(self) -> None:
        for name in ("id", "partner", "name"):
            _text(getattr(self, name), f"campaign {name}")
        _window(self.valid_from, self.valid_to, f"campaign {self.id}")
        if self.multiplier is None and self.bonus_points is None:
            raise InvalidRequest(f"campaign {self.id} needs a multiplier or bonus points")
        if self.multiplier is not None:
            rate = _multiplier(self.multiplier, "campaign multiplier", at_least_one=True)
            object.__setattr__(self, "multiplier", rate)
        _optional_count(self.bonus_points, "campaign bonus_points")
        _optional_count(self.member_cap, "campaign member_cap")
        categories = frozenset(_text(c, "category") for c in self.categories)
        object.__setattr__(self, "categories", categories)
        object.__setattr__(self, "funders", MappingProxyType(self._validated_funders()))

    def _validated_funders(self) -> dict[str, int]:
        funders = dict(self.funders) or {self.partner: 1}
        return {
            _text(funder, "funder"): parse_amount(weight, name=f"weight of funder {funder}")
            for funder, weight in funders.items()
        }

    def active_at(self, at: datetime) -> bool:
        return _in_window(at, self.valid_from, self.valid_to)

    def covers(self, category: str) -> bool:
        return not self.categories or category in self.categories


@dataclass(frozen=True, slots=True)
class Tier:
    """A membership level reached by points EARNED over a rolling 12 months (not by balance)."""

    name: str
    """``White``, ``Black``, ``Gold``, ..."""
    rank: int
    """Order of the levels, lowest first; unique."""
    threshold: int
    """Points earned over 12 months needed to reach the level; the lowest level starts at 0."""
    multiplier: Decimal
    """Factor on the base points of every purchase while the member holds the level."""

    def __post_init__(self) -> None:
        _text(self.name, "tier name")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int):
            raise InvalidRequest("tier rank must be an integer")
        _count(self.threshold, "tier threshold")
        object.__setattr__(self, "multiplier", _multiplier(self.multiplier, "tier multiplier"))


# -- quotes ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EarnComponent:
    """One part of an earn quote: the points one rule gave and who funds them."""

    rule: str
    """``contract`` (the base, tier included) or ``campaign``."""
    version: str | int
    """The contract version, or the campaign id."""
    points: int
    """Points this rule gives, rounded down; ≥ 0."""
    funding: dict[str, int]
    """Funder → points, only funders that pay something; adds up to ``points``."""
    explanation: str
    """One human line, e.g. ``12 pts = 24.00 € × 0.5 pt/€, Black tier ×1``."""


@dataclass(frozen=True, slots=True)
class EarnQuote:
    """What a purchase earns: the total, who funds it, and why."""

    total: int
    """Points the member earns; ≥ 0."""
    funding: dict[str, int]
    """Funder → points over all components, only funders that pay something; sums to ``total``."""
    lines: tuple[EarnComponent, ...]
    """The base component first, then one per campaign that applied (possibly capped to 0)."""
    explanation: str
    """The components' explanations, one per line."""
    rule_versions: dict[str, str | int]
    """What the EARN entry stores: engine, contract, tier and campaign versions."""


@dataclass(frozen=True, slots=True)
class EngagementRule:
    """Points for an engagement event (review, survey, ...), one version of the rule."""

    event_type: str
    """One of :data:`EVENT_TYPES`."""
    version: int
    """Version of the rule for this event type; recorded with the ENGAGE entry."""
    sponsor: str
    """Who funds the points: a partner code or ``program``."""
    points: int
    """Points per event."""
    cap_per_day: int | None
    """Most events rewarded per member per day; ``None`` for no cap."""
    cap_per_month: int | None
    """Most events rewarded per member per month; ``None`` for no cap."""
    cap_per_year: int | None
    """Most events rewarded per member per year; ``None`` for no cap."""
    valid_from: datetime
    """First instant the version is in force (inclusive)."""
    valid_to: datetime | None = None
    """End of the version (exclusive); ``None`` while it is current."""

    def __post_init__(self) -> None:
        if self.event_type not in EVENT_TYPES:
            raise InvalidRequest(f"unknown event type {self.event_type!r}")
        parse_amount(self.version, name="rule version")
        _text(self.sponsor, "sponsor")
        _count(self.points, "engagement points")
        for period in ENGAGEMENT_PERIODS:
            _optional_count(self.cap(period), f"cap_per_{period}")
        _window(self.valid_from, self.valid_to, f"rule {self.event_type} v{self.version}")

    def cap(self, period: str) -> int | None:
        return getattr(self, f"cap_per_{period}")  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class EngagementQuote:
    """What an engagement event earns, from which rule version, funded by whom."""

    event_type: str
    """The event rewarded."""
    version: int
    """The rule version that priced it."""
    sponsor: str
    """Who funds the points (partner code or ``program``)."""
    points: int
    """Points the member earns; ≥ 0."""
    explanation: str
    """One human line, e.g. ``50 pts for review (rule v2, sponsor SUPER)``."""
    rule_versions: dict[str, str | int]
    """What the ENGAGE entry stores."""


# -- earning on purchases -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CashLine:
    """An eligible line with its exact cash part and its exact base points (before tier)."""

    category: str
    cash_cents: Fraction
    base_points: Fraction


def quote_earn(
    basket: Basket,
    terms: EarnTerms,
    *,
    partner: str,
    at: datetime,
    campaigns: Iterable[Campaign] = (),
    tier: Tier | None = None,
    campaign_points_so_far: Mapping[str, int] | None = None,
) -> EarnQuote:
    """Quote the points a purchase at ``partner`` earns at business time ``at``.

    - Base: each eligible line's cash part × ``earn_rate`` × its category multiplier, summed, ×
      the tier multiplier, rounded down once. The partner funds it.
    - Cash part: the amount paid with points is taken off the non-gift-card lines first, in
      proportion to their amounts (exactly, without rounding). Charging it to eligible lines first
      is the conservative reading: no euro that may have been paid with points ever earns.
    - Campaigns of ``partner`` active at ``at`` (half-open window) that cover at least one line
      with cash: a multiplier adds (m − 1) × the base points of the lines it covers (before tier,
      so tier and campaign bonuses never compound), a bonus adds its fixed points; the sum is
      rounded down, limited to what the member cap still allows given ``campaign_points_so_far``,
      and split between the campaign's funders by largest remainder. Campaigns do not stack on
      each other: each is computed on the base. Other partners' campaigns are ignored.
    """
    _text(partner, "partner")
    _moment(at, "at")
    so_far = _validated_so_far(campaign_points_so_far or {})
    cash_lines = _cash_lines(basket, terms)
    components = [_base_component(basket, terms, cash_lines, partner=partner, tier=tier)]
    for campaign in _distinct(campaigns):
        if campaign.partner == partner and campaign.active_at(at):
            component = _campaign_component(campaign, cash_lines, so_far.get(campaign.id, 0))
            if component is not None:
                components.append(component)
    return _assemble(components, terms, tier)


def _distinct(campaigns: Iterable[Campaign]) -> list[Campaign]:
    """The campaigns, refusing an id given twice: it would pay twice and overrun its cap."""
    campaigns = list(campaigns)
    ids = [campaign.id for campaign in campaigns]
    if len(set(ids)) != len(ids):
        raise InvalidRequest("a campaign id is given more than once")
    return campaigns


def _validated_so_far(so_far: Mapping[str, int]) -> dict[str, int]:
    return {
        campaign_id: _count(points, f"points so far of campaign {campaign_id}")
        for campaign_id, points in so_far.items()
    }


def _cash_lines(basket: Basket, terms: EarnTerms) -> list[_CashLine]:
    """The non-gift-card lines with their exact cash part and base points."""
    eligible = [line for line in basket.lines if not line.gift_card]
    eligible_cents = sum(line.amount_cents for line in eligible)
    cash_cents = max(0, eligible_cents - basket.paid_with_points_cents)
    # cash / 100 × rate × multiplier as ONE exact fraction of integers: Fraction reduces it to
    # lowest terms, so it is the very value the step-by-step product gives (a hypothesis test,
    # tests/unit/test_rules_exact.py, compares the two), at a fifth of the cost.
    rate_num, rate_den = terms.earn_rate.as_integer_ratio()
    denominator = eligible_cents or 1
    lines = []
    for line in eligible:
        numerator = line.amount_cents * cash_cents
        factor_num, factor_den = terms.multiplier_for(line.category).as_integer_ratio()
        cash = Fraction(numerator, denominator)
        base = Fraction(
            numerator * rate_num * factor_num, denominator * 100 * rate_den * factor_den
        )
        lines.append(_CashLine(line.category, cash, base))
    return lines


def _base_component(
    basket: Basket,
    terms: EarnTerms,
    cash_lines: Sequence[_CashLine],
    *,
    partner: str,
    tier: Tier | None,
) -> EarnComponent:
    tier_multiplier = Fraction(tier.multiplier) if tier is not None else Fraction(1)
    points = math.floor(
        sum((line.base_points for line in cash_lines), Fraction(0)) * tier_multiplier
    )
    text = f"{points} pts = {_cash_text(cash_lines, terms)} × {_decimal_text(terms.earn_rate)} pt/€"
    if tier is not None:
        text += f", {tier.name} tier ×{_decimal_text(tier.multiplier)}"
    text += "".join(f"; {note}" for note in _exclusion_notes(basket))
    funding = {partner: points} if points else {}
    return EarnComponent("contract", terms.contract_version, points, funding, text)


def _campaign_component(
    campaign: Campaign, cash_lines: Sequence[_CashLine], points_so_far: int
) -> EarnComponent | None:
    covered = [
        line for line in cash_lines if campaign.covers(line.category) and line.cash_cents > 0
    ]
    if not covered:
        return None
    extra = _campaign_extra(campaign, covered)
    room = None if campaign.member_cap is None else max(0, campaign.member_cap - points_so_far)
    points = extra if room is None else min(extra, room)
    funding = _split_funding(points, campaign.funders)
    text = _campaign_text(campaign, covered, points, room, funding)
    return EarnComponent("campaign", campaign.id, points, funding, text)


def _campaign_extra(campaign: Campaign, covered: Sequence[_CashLine]) -> int:
    """Uncapped extra points: (m − 1) × base points of covered lines, plus the fixed bonus."""
    extra = Fraction(0)
    if campaign.multiplier is not None:
        base = sum((line.base_points for line in covered), Fraction(0))
        extra += (Fraction(campaign.multiplier) - 1) * base
    return math.floor(extra) + (campaign.bonus_points or 0)


def _split_funding(points: int, funders: Mapping[str, int]) -> dict[str, int]:
    """Split by largest remainder, funders sorted by code.

    Sorting makes the split independent of the order a JSON column returns its keys in
    (PostgreSQL's JSONB reorders them), and ties go to the first code.
    """
    if points == 0:
        return {}
    codes = sorted(funders)
    shares = split_largest_remainder(points, [funders[code] for code in codes])
    return {code: share for code, share in zip(codes, shares, strict=True) if share}


def _assemble(components: list[EarnComponent], terms: EarnTerms, tier: Tier | None) -> EarnQuote:
    total = sum(component.points for component in components)
    if total > MAX_AMOUNT:
        raise InvalidRequest(f"the quote {total} exceeds the largest amount {MAX_AMOUNT}")
    funding: dict[str, int] = {}
    for component in components:
        for funder, points in component.funding.items():
            funding[funder] = funding.get(funder, 0) + points
    versions: dict[str, str | int] = {"engine": ENGINE_VERSION, "contract": terms.contract_version}
    if tier is not None:
        versions["tier"] = tier.name
    for component in components[1:]:
        versions[f"campaign:{component.version}"] = component.version
    lines = [component.explanation for component in components]
    if len(components) > 1:
        lines.append(f"= {total} pts")
    return EarnQuote(total, funding, tuple(components), "\n".join(lines), versions)


# -- explanations ---------------------------------------------------------------------------------


def _decimal_text(value: Decimal) -> str:
    """``0.500000`` → ``0.5``, ``100`` → ``100``: the shortest exact decimal, never exponents."""
    return format(value.normalize(), "f")


def _euros(cents: Fraction) -> str:
    """Euros for humans, to the cent (half up); the arithmetic itself stays exact."""
    return f"{format_cents(math.floor(cents + Fraction(1, 2)))} €"


def _cash_text(cash_lines: Sequence[_CashLine], terms: EarnTerms) -> str:
    """``24.00 €``, or ``(20.00 € + 4.00 € electronics ×2)`` when categories are multiplied."""
    plain = sum(
        (ln.cash_cents for ln in cash_lines if terms.multiplier_for(ln.category) == _ONE),
        Fraction(0),
    )
    by_category: dict[str, Fraction] = {}
    for line in cash_lines:
        if terms.multiplier_for(line.category) != _ONE:
            by_category[line.category] = (
                by_category.get(line.category, Fraction(0)) + line.cash_cents
            )
    if not by_category:
        return _euros(plain)
    parts = [_euros(plain)] if plain else []
    for category in sorted(by_category):
        factor = _decimal_text(terms.multiplier_for(category))
        parts.append(f"{_euros(by_category[category])} {category} ×{factor}")
    return f"({' + '.join(parts)})"


def _exclusion_notes(basket: Basket) -> list[str]:
    notes = []
    gift_cents = sum(line.amount_cents for line in basket.lines if line.gift_card)
    if gift_cents:
        notes.append(f"gift cards ({_euros(Fraction(gift_cents))}) earn nothing")
    if basket.paid_with_points_cents:
        paid = _euros(Fraction(basket.paid_with_points_cents))
        notes.append(f"{paid} paid with points earns nothing")
    return notes


def _campaign_text(
    campaign: Campaign,
    covered: Sequence[_CashLine],
    points: int,
    room: int | None,
    funding: Mapping[str, int],
) -> str:
    terms = []
    if campaign.multiplier is not None:
        cash = sum((line.cash_cents for line in covered), Fraction(0))
        terms.append(f"×{_decimal_text(campaign.multiplier)} on {_euros(cash)}")
    if campaign.bonus_points is not None:
        terms.append(f"bonus {campaign.bonus_points} pts")
    if room is not None:
        terms.append(f"member cap {campaign.member_cap} ({room} left)")
    if len(funding) > 1:
        terms.append("funded by " + ", ".join(f"{code} {pts}" for code, pts in funding.items()))
    return f"+{points} pts campaign {campaign.name} ({campaign.id}): {', '.join(terms)}"


# -- engagement -----------------------------------------------------------------------------------


def quote_engagement(
    rule: EngagementRule, *, at: datetime, counts: Mapping[str, int]
) -> EngagementQuote:
    """Quote an engagement event under ``rule``, or refuse it with :class:`CapReached`.

    ``counts`` holds how many events of this type the member was already rewarded for in the
    ``day``, ``month`` and ``year`` containing ``at`` (the caller counts them in the programme's
    time zone). A count is required for every period the rule caps, so a missing counter can never
    silently lift a cap. Deduplication by the partner's event id is the service's job.
    """
    _moment(at, "at")
    if not _in_window(at, rule.valid_from, rule.valid_to):
        raise InvalidRequest(
            f"rule {rule.event_type} v{rule.version} is not in force at {at.isoformat()}"
        )
    _check_engagement_caps(rule, _validated_counts(counts))
    text = f"{rule.points} pts for {rule.event_type} (rule v{rule.version}, sponsor {rule.sponsor})"
    versions: dict[str, str | int] = {
        "engine": ENGINE_VERSION,
        f"engagement:{rule.event_type}": rule.version,
    }
    return EngagementQuote(rule.event_type, rule.version, rule.sponsor, rule.points, text, versions)


def _validated_counts(counts: Mapping[str, int]) -> dict[str, int]:
    unknown = set(counts) - set(ENGAGEMENT_PERIODS)
    if unknown:
        raise InvalidRequest(f"unknown engagement periods {sorted(unknown)}")
    return {period: _count(n, f"{period} count") for period, n in counts.items()}


def _check_engagement_caps(rule: EngagementRule, counts: Mapping[str, int]) -> None:
    for period in ENGAGEMENT_PERIODS:
        cap = rule.cap(period)
        if cap is None:
            continue
        if period not in counts:
            raise InvalidRequest(f"rule {rule.event_type} caps the {period}: its count is required")
        if counts[period] >= cap:
            raise CapReached(rule.event_type, period, cap, counts[period])


# -- tiers ----------------------------------------------------------------------------------------


def tier_for(points_earned_12m: int, tiers: Iterable[Tier]) -> Tier:
    """The highest tier whose threshold the member's points earned over 12 months reach."""
    points = _count(points_earned_12m, "points_earned_12m")
    return [tier for tier in _ladder(tiers) if tier.threshold <= points][-1]


def next_tier_progress(points_earned_12m: int, tiers: Iterable[Tier]) -> tuple[Tier | None, int]:
    """The next tier up and the points still missing to reach it; ``(None, 0)`` at the top."""
    points = _count(points_earned_12m, "points_earned_12m")
    above = [tier for tier in _ladder(tiers) if tier.threshold > points]
    if not above:
        return None, 0
    return above[0], above[0].threshold - points


def _ladder(tiers: Iterable[Tier]) -> list[Tier]:
    """Tiers by rank, checked: unique names, the lowest at 0, thresholds rising with rank."""
    ladder = sorted(tiers, key=lambda tier: tier.rank)
    if not ladder or ladder[0].threshold != 0:
        raise InvalidRequest("tiers need a lowest level with threshold 0")
    if len({tier.name for tier in ladder}) != len(ladder):
        raise InvalidRequest("tier names must be unique")
    for lower, higher in pairwise(ladder):
        if higher.rank == lower.rank or higher.threshold <= lower.threshold:
            raise InvalidRequest(f"tier {higher.name} must rank and start above tier {lower.name}")
    return ladder


# -- velocity -------------------------------------------------------------------------------------


def check_velocity(kind: str, points: int, already_today: int, cap: int | None) -> None:
    """Refuse with :class:`VelocityExceeded` if ``points`` would take today's total past ``cap``.

    ``already_today`` is what the member already earned, burned or transferred today; ``None``
    means the operation has no daily cap.
    """
    if kind not in VELOCITY_KINDS:
        raise InvalidRequest(f"unknown velocity kind {kind!r}")
    requested = _count(points, "points")
    done = _count(already_today, "already_today")
    limit = _optional_count(cap, "cap")
    if limit is not None and done + requested > limit:
        raise VelocityExceeded(kind, limit, done, requested)
