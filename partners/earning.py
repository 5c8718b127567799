"""Earning and spending as the coalition's rules allow: purchases, engagement, refunds, abuse caps.

The pure engine (:mod:`partners.rules`) prices; this module gathers what it needs from the store
(the contract in force, the partner's campaigns, the member's tier and campaign awards, the
engagement counters), checks who may act, and books ONE kernel entry per request:

- :func:`earn_purchase`: an EARN priced by the contract version in force at the purchase's business
  time (its ``price_version`` is stamped on every lot), with campaign bonuses split between their
  funders (one lot per funder), the member's tier multiplier, the contract's return window
  (``pending_until``) and the programme's lot expiry. The entry's attributes keep the rule
  versions, the human explanation and the basket's amounts (for KPIs). A zero-point quote books
  nothing. Campaign awards are recorded so per-member caps hold across purchases; a tier upgrade
  follows at once.
- :func:`refund_purchase`: the kernel's earn reversal, which takes back at most what the member
  still holds of the purchase's lots, so buy–earn–spend–refund creates no points.
- :func:`engage` and :func:`refer`: ENGAGE entries under the engagement rule in force, paid by the
  rule's sponsor (a partner, or ``program`` → ``program:funded``), deduplicated by the reporting
  partner's event id and capped per member per Paris day, month and year.
- :func:`burn` and :func:`transfer`: the kernel commands behind the daily velocity caps; transfers
  are off unless the programme enables them, and capped per transfer.

Idempotency. Every command takes the partner's idempotency key. A business refusal raised here,
before the kernel is reached (suspended partner, velocity, cap, ...), is recorded under that key
exactly as the kernel records its own, so a retry is refused the same way even once the reason
has gone. A retry of a booked request returns the original entry without pricing it again: the
entry carries a digest of the request that produced it. Each command first locks the member's
accounts, so two requests for one member never price from the same stale counters.

Every function works inside the caller's transaction and takes the time explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NoReturn, TypeVar
from uuid import UUID, uuid4

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger import tables as lt
from ledger.db import execute_many
from ledger.errors import (
    BusinessRefusal,
    IdempotencyConflict,
    InvalidRequest,
    LedgerError,
    NotReversible,
    UnknownEntry,
)
from ledger.model import PROGRAM, Entry, EntryKind, member_account
from ledger.numbers import parse_amount
from ledger.repository import LedgerStore, SqlLedgerStore
from ledger.service import Actor, Booking, Fingerprint, Ledger, Policy, fingerprint
from partners import directory, members, tiers
from partners import tables as t
from partners.errors import PartnersError
from partners.expiry import expiry_policy, lot_expiry, period_bounds, read_setting, write_setting
from partners.rules import (
    ENGAGEMENT_PERIODS,
    Basket,
    Campaign,
    EarnQuote,
    EarnTerms,
    EngagementQuote,
    EngagementRule,
    check_velocity,
    quote_earn,
    quote_engagement,
)
from partners.tiers import TierChange

_R = TypeVar("_R")

#: ``program_settings`` names of the abuse controls.
VELOCITY_SETTING = "velocity_caps"
TRANSFERS_ENABLED_SETTING = "transfers_enabled"
TRANSFER_CAP_SETTING = "transfer_cap"

#: Prefix of the operations this layer records under an idempotency key (the kernel's are bare).
_OP = "partners."

#: The two sides of a referral and the event types that reward them.
REFERRAL_SIDES = (("referrer", "referral_referrer"), ("referee", "referral_referee"))


# -- errors (refusals this module adds to the partners error tree) --------------------------------


class MemberNotActive(PartnersError, BusinessRefusal):
    """A blocked or closed member neither earns nor spends."""

    code = "member-not-active"

    def __init__(self, member_id: str, status: str) -> None:
        super().__init__(
            f"member {member_id} is {status}: it can neither earn nor spend",
            member_id=member_id,
            status=status,
        )


class NoEngagementRule(PartnersError, BusinessRefusal):
    """No engagement rule for the event type is in force at the event's business time."""

    code = "no-engagement-rule"

    def __init__(self, event_type: str, at: datetime) -> None:
        super().__init__(
            f"no {event_type} rule is in force at {at.isoformat()}",
            event_type=event_type,
            at=at.isoformat(),
        )


class TransfersDisabled(PartnersError, BusinessRefusal):
    """Member-to-member transfers are off (the programme's default)."""

    code = "transfers-disabled"

    def __init__(self) -> None:
        super().__init__("member-to-member transfers are not enabled in this programme")


class TransferCapExceeded(PartnersError, BusinessRefusal):
    """One transfer moves more points than the programme allows per transfer."""

    code = "transfer-cap-exceeded"

    def __init__(self, cap: int, requested: int) -> None:
        super().__init__(
            f"a transfer moves at most {cap} points, not {requested}", cap=cap, requested=requested
        )


# -- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EarnResult:
    """What a purchase earned, and the EARN entry that booked it (``None`` for zero points)."""

    points: int
    """Points credited to the member."""
    explanation: str
    """Why, one line per rule (``12 pts = 24.00 € × 0.5 pt/€, Black tier ×1.25``)."""
    rule_versions: Mapping[str, Any]
    """Engine, contract, tier and campaign versions that produced the points."""
    entry: Entry | None
    """The EARN entry; ``None`` when the quote was zero and nothing was booked."""
    quote: EarnQuote | None
    """The engine's full quote; ``None`` on a replay (the entry is the record then)."""
    tier_change: TierChange | None = None
    """The upgrade this earn triggered, if any."""
    replayed: bool = False
    """A retry with the same idempotency key: the original entry, nothing booked."""


@dataclass(frozen=True, slots=True)
class EngageResult:
    """What an engagement event earned, and the ENGAGE entry that booked it."""

    event_type: str
    event_id: str
    """The reporting partner's event id (deduplication key)."""
    points: int
    explanation: str
    rule_versions: Mapping[str, Any]
    entry: Entry | None
    """The ENGAGE entry; ``None`` when the rule gives zero points."""
    tier_change: TierChange | None = None
    duplicate: bool = False
    """The event id was reported before: this is the original booking, nothing new."""
    replayed: bool = False
    """A retry with the same idempotency key."""


@dataclass(frozen=True, slots=True)
class ReferralResult:
    """Both sides of a referral."""

    referrer: EngageResult
    referee: EngageResult


@dataclass(frozen=True, slots=True)
class AbuseControls:
    """The programme's caps on what one member may do (PRODUCT.md §6, issue 4 point 9)."""

    earn_per_day: int | None = None
    """Most points a member may earn from purchases per Paris day; ``None``: no cap."""
    burn_per_day: int | None = None
    """Most points a member may spend per Paris day; ``None``: no cap."""
    transfer_per_day: int | None = None
    """Most points a member may send to others per Paris day; ``None``: no cap."""
    transfers_enabled: bool = False
    """Member-to-member transfers are off unless the programme turns them on."""
    max_per_transfer: int | None = None
    """Most points one transfer may move; ``None``: no cap."""

    def __post_init__(self) -> None:
        for name in ("earn_per_day", "burn_per_day", "transfer_per_day", "max_per_transfer"):
            value = getattr(self, name)
            if value is not None:
                parse_amount(value, name=name, allow_zero=True)
        if not isinstance(self.transfers_enabled, bool):
            raise InvalidRequest("transfers_enabled must be true or false")


# -- programme configuration -----------------------------------------------------------------------


def abuse_controls(conn: Connection) -> AbuseControls:
    """The programme's abuse controls (no caps and transfers off when never set)."""
    caps = read_setting(conn, VELOCITY_SETTING, {}) or {}
    return AbuseControls(
        earn_per_day=caps.get("earn"),
        burn_per_day=caps.get("burn"),
        transfer_per_day=caps.get("transfer"),
        transfers_enabled=bool(read_setting(conn, TRANSFERS_ENABLED_SETTING, False)),
        max_per_transfer=read_setting(conn, TRANSFER_CAP_SETTING),
    )


def set_abuse_controls(conn: Connection, controls: AbuseControls, now: datetime) -> AbuseControls:
    """Store the programme's abuse controls."""
    caps = {
        "earn": controls.earn_per_day,
        "burn": controls.burn_per_day,
        "transfer": controls.transfer_per_day,
    }
    write_setting(conn, VELOCITY_SETTING, caps, now)
    write_setting(conn, TRANSFERS_ENABLED_SETTING, controls.transfers_enabled, now)
    write_setting(conn, TRANSFER_CAP_SETTING, controls.max_per_transfer, now)
    return controls


def add_campaign(conn: Connection, campaign: Campaign, now: datetime) -> Campaign:
    """Record a partner's campaign (campaigns are never edited: a change is a new campaign)."""
    directory.partner(conn, campaign.partner)
    conn.execute(
        t.campaigns.insert().values(
            id=campaign.id,
            partner=campaign.partner,
            name=campaign.name,
            valid_from=campaign.valid_from,
            valid_to=campaign.valid_to,
            multiplier=None if campaign.multiplier is None else format(campaign.multiplier, "f"),
            bonus_points=campaign.bonus_points,
            categories=sorted(campaign.categories),
            member_cap=campaign.member_cap,
            funders=dict(campaign.funders),
            created_at=now,
        )
    )
    return campaign


def active_campaigns(conn: Connection, partner: str, at: datetime) -> list[Campaign]:
    """The partner's campaigns whose window ``[valid_from, valid_to)`` contains ``at``."""
    c = t.campaigns.c
    rows = conn.execute(
        sa.select(t.campaigns)
        .where(c.partner == partner, c.valid_from <= at, c.valid_to > at)
        .order_by(c.id)
    )
    return [
        Campaign(
            id=row.id,
            partner=row.partner,
            name=row.name,
            valid_from=row.valid_from,
            valid_to=row.valid_to,
            multiplier=None if row.multiplier is None else Decimal(row.multiplier),
            bonus_points=row.bonus_points,
            categories=frozenset(row.categories),
            member_cap=row.member_cap,
            funders=dict(row.funders),
        )
        for row in rows
    ]


def campaign_points_so_far(
    conn: Connection, member: str, campaign_ids: Sequence[str]
) -> dict[str, int]:
    """Points each campaign has given the member so far (for its per-member cap)."""
    if not campaign_ids:
        return {}
    a = t.campaign_awards.c
    rows = conn.execute(
        sa.select(a.campaign_id, sa.func.sum(a.points))
        .where(a.member_id == member, a.campaign_id.in_(list(campaign_ids)))
        .group_by(a.campaign_id)
    )
    return {campaign_id: int(points) for campaign_id, points in rows}


def add_engagement_rule(conn: Connection, rule: EngagementRule, now: datetime) -> EngagementRule:
    """Record a version of an engagement rule; where versions overlap, the highest one applies."""
    if rule.sponsor != PROGRAM:
        directory.partner(conn, rule.sponsor)
    conn.execute(
        t.engagement_rules.insert().values(
            event_type=rule.event_type,
            version=rule.version,
            sponsor=rule.sponsor,
            points=rule.points,
            cap_per_day=rule.cap_per_day,
            cap_per_month=rule.cap_per_month,
            cap_per_year=rule.cap_per_year,
            valid_from=rule.valid_from,
            valid_to=rule.valid_to,
            created_at=now,
        )
    )
    return rule


def engagement_rule_at(conn: Connection, event_type: str, at: datetime) -> EngagementRule:
    """The highest version of the event type's rule in force at ``at``; else a refusal."""
    r = t.engagement_rules.c
    row = conn.execute(
        sa.select(t.engagement_rules)
        .where(
            r.event_type == event_type,
            r.valid_from <= at,
            sa.or_(r.valid_to.is_(None), r.valid_to > at),
        )
        .order_by(r.version.desc())
        .limit(1)
    ).first()
    if row is None:
        raise NoEngagementRule(event_type, at)
    return EngagementRule(
        event_type=row.event_type,
        version=row.version,
        sponsor=row.sponsor,
        points=row.points,
        cap_per_day=row.cap_per_day,
        cap_per_month=row.cap_per_month,
        cap_per_year=row.cap_per_year,
        valid_from=row.valid_from,
        valid_to=row.valid_to,
    )


# -- purchases -------------------------------------------------------------------------------------


def earn_purchase(
    conn: Connection,
    actor: Actor,
    key: str,
    *,
    member: str,
    basket: Basket,
    business_time: datetime,
    now: datetime,
    ledger: Ledger | None = None,
) -> EarnResult:
    """Credit the points a purchase at the actor's partner earns, as ONE EARN entry.

    Refused (and the refusal recorded under ``key``) if the partner or a co-funder may not issue,
    the member is not active, no contract is in force at ``business_time``, or the member's daily
    earn cap would be passed.
    """
    partner = _acting_partner(actor)
    _check_key(key)
    request = _request(
        "earn_purchase",
        partner=partner,
        member=member,
        basket=_basket_json(basket),
        business_time=business_time,
    )
    found = members.member(conn, member)
    store = SqlLedgerStore(conn)
    _lock_members(store, [member])
    prior = _prior(conn, actor, key)
    if prior is not None:
        return _earn_result(_recorded_entry(conn, prior, request, key))
    try:
        return _earn(conn, store, actor, key, request, found, basket, business_time, now, ledger)
    except BusinessRefusal as refusal:
        _record_refusal(conn, actor, key, request, refusal, now)
        raise


def _earn(
    conn: Connection,
    store: SqlLedgerStore,
    actor: Actor,
    key: str,
    request: Fingerprint,
    found: members.Member,
    basket: Basket,
    business_time: datetime,
    now: datetime,
    ledger: Ledger | None,
) -> EarnResult:
    partner = _acting_partner(actor)
    directory.require_can_issue(conn, partner)
    _require_active(found)
    contract = directory.contract_at(conn, partner, business_time)
    quote = _quote_purchase(conn, found.id, partner, contract, basket, business_time)
    if quote.total == 0:
        return EarnResult(0, quote.explanation, quote.rule_versions, None, quote)
    for funder in quote.funding:
        if funder not in (partner, PROGRAM):
            directory.require_can_issue(conn, funder)
    _check_velocity(conn, found.id, "earn", quote.total, business_time)
    pending_days = contract.terms.pending_days
    booking = _kernel(ledger, now).earn(
        store,
        actor,
        key,
        member=found.id,
        funding=quote.funding,
        business_time=business_time,
        pending_until=business_time + timedelta(days=pending_days) if pending_days else None,
        expires_at=lot_expiry(business_time, expiry_policy(conn)),
        price_version=contract.price_version,
        attributes={
            "request_digest": request.hex,
            "rules": dict(quote.rule_versions),
            "explanation": quote.explanation,
            "basket_cents": basket_cents(basket),
            "cash_cents": basket_cents(basket) - basket.paid_with_points_cents,
        },
    )
    if booking.replayed:  # a concurrent retry with the same key won the race
        return _earn_result(booking.entry)
    _record_campaign_awards(conn, booking.entry, quote, found.id, business_time)
    change = tiers.upgrade_after_earn(conn, found.id, at=max(now, business_time), now=now)
    _touch_activity(conn, found.id, business_time)
    return EarnResult(
        quote.total, quote.explanation, quote.rule_versions, booking.entry, quote, change
    )


@dataclass(frozen=True, slots=True)
class Purchase:
    """One purchase for :func:`earn_purchases`: the arguments of :func:`earn_purchase`."""

    actor: Actor
    key: str
    member: str
    basket: Basket
    business_time: datetime


def earn_purchases(
    conn: Connection,
    purchases: Sequence[Purchase],
    *,
    now: datetime,
    ledger: Ledger | None = None,
) -> list[EarnResult | LedgerError]:
    """Book many purchases in the caller's one transaction, each exactly as :func:`earn_purchase`.

    Per purchase: its :class:`EarnResult`, or the error that refused it (a business refusal is
    recorded under its key, as alone). The rules are the same and run in list order — the
    contract, campaigns, tier (raised at once by an earlier purchase of the list), campaign caps
    and return window of each purchase — but what they read is read once per partner and once
    for all the members, and the kernel books every entry through one
    :meth:`~ledger.service.Ledger.batch`. A key seen before (in the database or earlier in the
    list), or a programme with a daily earn cap, takes the one-by-one path for that purchase.
    """
    kernel = _kernel(ledger, now)
    results: list[EarnResult | LedgerError] = []
    if abuse_controls(conn).earn_per_day is not None:
        # The cap counts the day's earns from the journal: book one by one so each sees the last.
        for purchase in purchases:
            results.append(_one_purchase(conn, purchase, now, ledger))
        return results
    levels = tiers.tier_levels(conn)
    policy = expiry_policy(conn)
    ids = sorted({p.member for p in purchases})
    statuses = _member_statuses(conn, ids)
    held = _latest_tiers(conn, ids)
    seen_keys: set[tuple[str, str]] = set()
    partner_checks: dict[str, BusinessRefusal | None] = {}
    contracts: dict[tuple[str, datetime], directory.Contract | LedgerError] = {}
    campaigns: dict[tuple[str, datetime], list[Campaign]] = {}
    awarded: dict[str, dict[str, int]] = {}
    read_campaigns: set[str] = set()
    window = _TierWindow(conn, ids)
    expiries: dict[datetime, datetime | None] = {}  # lot expiry by earn time: a few instants
    touched: dict[str, datetime] = {}
    awards: list[dict[str, Any]] = []

    def can_issue(code: str) -> None:
        if code not in partner_checks:
            try:
                directory.require_can_issue(conn, code)
                partner_checks[code] = None
            except BusinessRefusal as refusal:
                partner_checks[code] = refusal
        refusal = partner_checks[code]
        if refusal is not None:
            raise refusal

    with kernel.batch(SqlLedgerStore(conn)) as store:
        store.prefetch(members=ids, keys=[(p.actor.idempotency_scope, p.key) for p in purchases])
        for purchase in purchases:
            scope = (purchase.actor.idempotency_scope, purchase.key)
            if not store.is_new_key(*scope) or scope in seen_keys:
                # A retry: flush, then let the one-by-one path compare it with its record.
                store.flush(kernel.policy.shards)
                window.reset()
                results.append(_one_purchase(conn, purchase, now, ledger))
                continue
            seen_keys.add(scope)
            try:
                partner = _acting_partner(purchase.actor)
                _check_key(purchase.key)
                request = _request(
                    "earn_purchase",
                    partner=partner,
                    member=purchase.member,
                    basket=_basket_json(purchase.basket),
                    business_time=purchase.business_time,
                )
            except LedgerError as error:
                results.append(error)
                continue
            try:
                if purchase.member not in statuses:
                    members.member(conn, purchase.member)  # raises UnknownMember
            except LedgerError as error:
                results.append(error)  # as alone: raised before the key is looked at
                continue
            try:
                can_issue(partner)
                if statuses[purchase.member] != "active":
                    raise MemberNotActive(purchase.member, statuses[purchase.member])
                at = purchase.business_time
                if (partner, at) not in contracts:
                    try:
                        contracts[(partner, at)] = directory.contract_at(conn, partner, at)
                    except LedgerError as error:
                        contracts[(partner, at)] = error
                contract = contracts[(partner, at)]
                if isinstance(contract, LedgerError):
                    raise contract
                if (partner, at) not in campaigns:
                    campaigns[(partner, at)] = active_campaigns(conn, partner, at)
                offers = campaigns[(partner, at)]
                unread = [c for c in offers if c.id not in read_campaigns]
                if unread:  # each campaign's awards so far, read once for every member
                    for name, points in _campaign_points(conn, ids, unread).items():
                        awarded.setdefault(name, {}).update(points)
                    read_campaigns.update(c.id for c in unread)
                so_far = awarded.setdefault(purchase.member, {})
                tier = _tier_named(
                    levels, held[purchase.member][0] if purchase.member in held else None
                )
                quote = quote_earn(
                    purchase.basket,
                    EarnTerms(
                        contract_version=contract.version,
                        earn_rate=contract.terms.earn_rate,
                        category_multipliers=contract.terms.category_multipliers,
                    ),
                    partner=partner,
                    at=at,
                    campaigns=offers,
                    tier=tier,
                    campaign_points_so_far={c.id: so_far.get(c.id, 0) for c in offers},
                )
                if quote.total == 0:
                    results.append(
                        EarnResult(0, quote.explanation, quote.rule_versions, None, quote)
                    )
                    continue
                for funder in quote.funding:
                    if funder not in (partner, PROGRAM):
                        can_issue(funder)
            except BusinessRefusal as refusal:
                store.claim_key(*scope, request, uuid4(), now)
                store.record_refusal(*scope, refusal)
                results.append(refusal)
                continue
            except LedgerError as error:
                results.append(error)
                continue
            pending_days = contract.terms.pending_days
            if at not in expiries:
                expiries[at] = lot_expiry(at, policy)
            booking = kernel.earn(
                store,
                purchase.actor,
                purchase.key,
                member=purchase.member,
                funding=quote.funding,
                business_time=at,
                pending_until=at + timedelta(days=pending_days) if pending_days else None,
                expires_at=expiries[at],
                price_version=contract.price_version,
                attributes={
                    "request_digest": request.hex,
                    "rules": dict(quote.rule_versions),
                    "explanation": quote.explanation,
                    "basket_cents": basket_cents(purchase.basket),
                    "cash_cents": basket_cents(purchase.basket)
                    - purchase.basket.paid_with_points_cents,
                },
            )
            for line in quote.lines:
                if line.rule == "campaign" and line.points > 0:
                    campaign = str(line.version)
                    so_far[campaign] = so_far.get(campaign, 0) + line.points
                    awards.append(
                        {
                            "campaign_id": campaign,
                            "entry_id": booking.entry.id,
                            "member_id": purchase.member,
                            "points": line.points,
                            "awarded_at": at,
                        }
                    )
            change = None
            when = max(now, at)
            window.add(purchase.member, at, quote.total)
            if levels:
                points = window.points(purchase.member, when)
                change = _upgrade_in_batch(conn, levels, held, purchase.member, points, now)
            touched[purchase.member] = max(at, touched.get(purchase.member, at))
            results.append(
                EarnResult(
                    quote.total,
                    quote.explanation,
                    quote.rule_versions,
                    booking.entry,
                    quote,
                    change,
                )
            )
    if awards:
        conn.execute(t.campaign_awards.insert(), awards)
    _touch_activities(conn, touched)
    return results


def _one_purchase(
    conn: Connection, purchase: Purchase, now: datetime, ledger: Ledger | None
) -> EarnResult | LedgerError:
    """One purchase in a savepoint, with :meth:`Database.transaction`'s rules."""
    return _in_savepoint(
        conn,
        lambda: earn_purchase(
            conn,
            purchase.actor,
            purchase.key,
            member=purchase.member,
            basket=purchase.basket,
            business_time=purchase.business_time,
            now=now,
            ledger=ledger,
        ),
    )


def _in_savepoint(conn: Connection, call: Callable[[], _R]) -> _R | LedgerError:
    """``call()`` in a savepoint, with :meth:`Database.transaction`'s rules.

    A business refusal keeps what it wrote (its idempotency record) and is returned; any other
    ledger error undoes the savepoint and is returned; the caller's transaction goes on.
    """
    savepoint = conn.begin_nested()
    try:
        result = call()
    except BusinessRefusal as refusal:
        savepoint.commit()
        return refusal
    except LedgerError as error:
        savepoint.rollback()
        return error
    savepoint.commit()
    return result


class _TierWindow:
    """Points each member earned in the tier window: read once, plus what the batch booked."""

    def __init__(self, conn: Connection, members: Sequence[str]) -> None:
        self.conn = conn
        self.members = members
        self.reset()

    def reset(self) -> None:
        """Forget everything read and booked."""
        self._base: dict[tuple[str, datetime], int] = {}
        self._booked: dict[str, list[tuple[datetime, int]]] = {}
        self._starts: dict[datetime, datetime] = {}

    def flushed(self) -> None:
        """The batch's rows are written: what it booked is part of what was read from now on."""
        for (member, at), base in list(self._base.items()):
            self._base[(member, at)] = base + self._booked_in_window(member, at)
        self._booked = {}

    def _booked_in_window(self, member: str, at: datetime) -> int:
        start = self._starts.get(at)
        if start is None:  # a batch asks about a few instants, thousands of times
            start = self._starts[at] = tiers.window_start(at)
        return sum(p for when, p in self._booked.get(member, ()) if start < when <= at)

    def add(self, member: str, at: datetime, points: int) -> None:
        self._booked.setdefault(member, []).append((at, points))

    def points(self, member: str, at: datetime) -> int:
        if (member, at) not in self._base:
            # One query for every member of the batch (tiers' own computation of the window).
            wanted = sorted({*self.members, member})
            found = tiers._points_earned(self.conn, at, wanted)
            for name in wanted:
                self._base.setdefault((name, at), found.get(name, 0))
        return self._base[(member, at)] + self._booked_in_window(member, at)


def _upgrade_in_batch(
    conn: Connection,
    levels: Sequence[tiers.Tier],
    latest: dict[str, tuple[str, str | None]],
    member: str,
    points: int,
    now: datetime,
) -> TierChange | None:
    """:func:`tiers.upgrade_after_earn` inside a batch, whose entries are not written yet.

    The same decision and history row, from the points of the window that :class:`_TierWindow`
    knows (the database's plus the batch's) and the member's latest tier and floor; ``latest``
    follows the change so the member's next earn in the batch uses the new tier.
    """
    row = latest.get(member)
    held = _tier_named(levels, None if row is None else row[0])
    assert held is not None
    reached = tiers.tier_for(points, levels)
    if reached.rank <= held.rank:
        return None
    floor = None if row is None else row[1]
    reason = f"upgrade: {points} points earned in 12 months reach {reached.name}"
    change = tiers._record(conn, member, reached.name, held.name, floor, reason, now, None)
    latest[member] = (reached.name, floor)
    return change


def _tier_named(levels: Sequence[tiers.Tier], name: str | None) -> tiers.Tier | None:
    if not levels:
        return None
    return next((tier for tier in levels if tier.name == name), levels[0])


def _member_statuses(conn: Connection, ids: Sequence[str]) -> dict[str, str]:
    m = t.members.c
    found: dict[str, str] = {}
    for start in range(0, len(ids), 900):
        chunk = list(ids[start : start + 900])
        found.update(
            (row.id, row.status)
            for row in conn.execute(sa.select(m.id, m.status).where(m.id.in_(chunk)))
        )
    return found


def _latest_tiers(conn: Connection, ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
    """Each member's tier and floor now (its latest history row, as :mod:`partners.tiers` reads)."""
    h = t.tier_history.c
    latest: dict[str, tuple[str, str | None]] = {}
    for start in range(0, len(ids), 900):
        chunk = list(ids[start : start + 900])
        rows = conn.execute(
            sa.select(h.member_id, h.tier, h.floor)
            .where(h.member_id.in_(chunk))
            .order_by(h.member_id, h.changed_at, h.id)
        )
        latest.update((row.member_id, (row.tier, row.floor)) for row in rows)
    return latest


def _campaign_points(
    conn: Connection, ids: Sequence[str], offers: Sequence[Campaign]
) -> dict[str, dict[str, int]]:
    """Points each campaign gave each member so far (:func:`campaign_points_so_far`, at once)."""
    found: dict[str, dict[str, int]] = {member: {} for member in ids}
    if not offers:
        return found
    a = t.campaign_awards.c
    for start in range(0, len(ids), 900):
        chunk = list(ids[start : start + 900])
        rows = conn.execute(
            sa.select(a.member_id, a.campaign_id, sa.func.sum(a.points))
            .where(a.member_id.in_(chunk), a.campaign_id.in_([c.id for c in offers]))
            .group_by(a.member_id, a.campaign_id)
        )
        for member, campaign, points in rows:
            found[member][campaign] = int(points)
    return found


def _touch_activities(conn: Connection, latest: Mapping[str, datetime]) -> None:
    """:func:`_touch_activity` for many members in one statement."""
    rows = [{"member": member, "at": at} for member, at in sorted(latest.items())]
    execute_many(conn, _TOUCH_ACTIVITIES, rows)


_TOUCH_ACTIVITIES = (
    t.members.update()
    .where(
        t.members.c.id == sa.bindparam("member"),
        sa.or_(
            t.members.c.last_activity_at.is_(None),
            t.members.c.last_activity_at < sa.bindparam("at"),
        ),
    )
    .values(last_activity_at=sa.bindparam("at"))
)


def _quote_purchase(
    conn: Connection,
    member: str,
    partner: str,
    contract: directory.Contract,
    basket: Basket,
    at: datetime,
) -> EarnQuote:
    terms = EarnTerms(
        contract_version=contract.version,
        earn_rate=contract.terms.earn_rate,
        category_multipliers=contract.terms.category_multipliers,
    )
    campaigns = active_campaigns(conn, partner, at)
    return quote_earn(
        basket,
        terms,
        partner=partner,
        at=at,
        campaigns=campaigns,
        tier=tiers.current_tier(conn, member),
        campaign_points_so_far=campaign_points_so_far(conn, member, [c.id for c in campaigns]),
    )


def basket_cents(basket: Basket) -> int:
    """What the basket costs in all, in cents (gift cards and the part paid with points too)."""
    return sum(line.amount_cents for line in basket.lines)


def _record_campaign_awards(
    conn: Connection, entry: Entry, quote: EarnQuote, member: str, at: datetime
) -> None:
    awards = [
        {
            "campaign_id": str(line.version),
            "entry_id": entry.id,
            "member_id": member,
            "points": line.points,
            "awarded_at": at,
        }
        for line in quote.lines
        if line.rule == "campaign" and line.points > 0
    ]
    if awards:
        conn.execute(t.campaign_awards.insert(), awards)


def refund_purchase(
    conn: Connection,
    actor: Actor,
    key: str,
    *,
    entry_id: UUID,
    points: int | None = None,
    business_time: datetime,
    now: datetime,
    reason: str = "refund",
    ledger: Ledger | None = None,
) -> Booking:
    """Reverse a purchase's EARN in part (``points``) or in full (``None``: all that is left).

    The kernel takes back only what the member still holds of the purchase's own lots (pending
    ones first if the refund falls inside the return window), never more than the original: a
    refund can never leave the member with points the purchase did not pay for.
    """
    _check_key(key)
    request = _request(
        "refund_purchase",
        entry_id=entry_id,
        points=points,
        business_time=business_time,
        reason=reason,
    )
    store = SqlLedgerStore(conn)
    prior = _prior(conn, actor, key)
    if prior is not None and _is_ours(prior):
        _raise_recorded(prior, request, key)
    if prior is None:
        original = store.load_entry(entry_id)
        if actor.partner is not None and original.partner != actor.partner:
            raise UnknownEntry(entry_id)
        if original.kind is not EntryKind.EARN:
            refusal = NotReversible(entry_id, original.kind.value)
            _record_refusal(conn, actor, key, request, refusal, now)
            raise refusal
    return _kernel(ledger, now).reverse(
        store,
        actor,
        key,
        entry_id=entry_id,
        business_time=business_time,
        points=points,
        reason=reason,
    )


# -- engagement ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Event:
    """An engagement event as reported: by whom, for which member, what, and when."""

    reporter: str
    member: members.Member
    event_type: str
    event_id: str
    business_time: datetime

    @property
    def request(self) -> Fingerprint:
        return _request(
            "engage",
            reporter=self.reporter,
            member=self.member.id,
            event_type=self.event_type,
            event_id=self.event_id,
            business_time=self.business_time,
        )


@dataclass(frozen=True, slots=True)
class _EngagementPlan:
    """An engagement priced and cleared, ready to book."""

    event: _Event
    quote: EngagementQuote
    price_version: str | None
    """The sponsor's contract version (``None`` when the programme sponsors)."""
    expires_at: datetime | None


def engage(
    conn: Connection,
    actor: Actor,
    key: str,
    *,
    member: str,
    event_type: str,
    event_id: str,
    business_time: datetime,
    now: datetime,
    ledger: Ledger | None = None,
) -> EngageResult:
    """Reward an engagement event reported by the actor's partner (or the operator).

    An event id the reporter used before returns the original booking (``duplicate``). Refused if
    no rule is in force, the member is not active, the sponsor may not issue, or a cap is reached.
    A partner may report events of rules it sponsors or the programme sponsors, not another's.
    """
    _check_key(key)
    _check_event_id(event_id)
    event = _Event(
        actor.partner or PROGRAM, members.member(conn, member), event_type, event_id, business_time
    )
    store = SqlLedgerStore(conn)
    _lock_members(store, [member])
    prior = _prior(conn, actor, key)
    if prior is not None:
        entry = _recorded_entry(conn, prior, event.request, key)
        return _engage_result(entry, event_type, event_id, replayed=True)
    try:
        planned = _plan_unless_duplicate(conn, actor, event)
    except BusinessRefusal as refusal:
        _record_refusal(conn, actor, key, event.request, refusal, now)
        raise
    if isinstance(planned, EngageResult):
        return planned
    return _book_engagement(conn, store, actor, key, planned, now, ledger)


@dataclass(frozen=True, slots=True)
class Engagement:
    """One engagement event for :func:`engage_many`: the arguments of :func:`engage`."""

    actor: Actor
    key: str
    member: str
    event_type: str
    event_id: str
    business_time: datetime


def engage_many(
    conn: Connection,
    events: Sequence[Engagement],
    *,
    now: datetime,
    ledger: Ledger | None = None,
) -> list[EngageResult | LedgerError]:
    """Reward many engagement events in the caller's one transaction, each as :func:`engage`.

    Per event: its :class:`EngageResult` or the error that refused it (a business refusal is
    recorded under its key, as alone). Deduplication by event id, the rule in force, the caps
    (counting the events earlier in the list), the sponsor's contract and the tier upgrade are
    the same as alone; the engagement rows, ENGAGE entries and activity times are written set-based
    through one :meth:`~ledger.service.Ledger.batch`. An event whose key or event id was seen
    before (in the database or earlier in the list) takes the one-by-one path.
    """
    kernel = _kernel(ledger, now)
    results: list[EngageResult | LedgerError] = []
    levels = tiers.tier_levels(conn)
    policy = expiry_policy(conn)
    ids = sorted({e.member for e in events})
    statuses = _member_statuses(conn, ids)
    held = _latest_tiers(conn, ids)
    window = _TierWindow(conn, ids)
    e = t.engagements.c
    reported_before: dict[tuple[str, str], sa.Row] = {}
    """The events of the list reported before it: their engagement rows."""
    for start in range(0, len(events), 500):
        by_reporter: dict[str, list[str]] = {}
        for ev in events[start : start + 500]:
            by_reporter.setdefault(ev.actor.partner or PROGRAM, []).append(ev.event_id)
        # One select per reporter, which SQLite answers from the key (a row-value list scans).
        rows = conn.execute(
            sa.union_all(
                *(
                    sa.select(t.engagements).where(e.partner == reporter, e.event_id.in_(ids_))
                    for reporter, ids_ in by_reporter.items()
                )
            )
        )
        reported_before.update(((row.partner, row.event_id), row) for row in rows)
    reported = set(reported_before)
    rules: dict[tuple[str, datetime], EngagementRule | LedgerError] = {}
    sponsors: dict[tuple[str, datetime], str | LedgerError] = {}
    counted: dict[tuple[str, str, str, datetime], int] = {}
    rows_out: list[dict[str, Any]] = []
    touched: dict[str, datetime] = {}

    def cached(cache: dict, key: Any, read: Any, *args: Any) -> Any:
        if key not in cache:
            try:
                cache[key] = read(*args)
            except LedgerError as error:
                cache[key] = error
        found = cache[key]
        if isinstance(found, LedgerError):
            raise found
        return found

    def count(member: str, rule: EngagementRule, at: datetime) -> dict[str, int]:
        counts = {}
        for period in ENGAGEMENT_PERIODS:
            if rule.cap(period) is None:
                continue
            start, end = period_bounds(at, period)
            slot = (member, rule.event_type, period, start)
            if slot not in counted:
                # One query for every member of the list (what _engagement_counts counts);
                # a slot already counted keeps the events this list added to it.
                found = _engagement_counts_of(conn, ids, rule.event_type, start, end)
                for name in ids:
                    counted.setdefault((name, rule.event_type, period, start), found.get(name, 0))
            counts[period] = counted[slot]
        return counts

    with kernel.batch(SqlLedgerStore(conn)) as store:
        store.prefetch(
            members=ids,
            keys=[(ev.actor.idempotency_scope, ev.key) for ev in events],
            entries=[row.entry_id for row in reported_before.values() if row.entry_id],
        )
        for ev in events:
            scope = (ev.actor.idempotency_scope, ev.key)
            reporter = ev.actor.partner or PROGRAM
            try:
                _check_key(ev.key)
                _check_event_id(ev.event_id)
                if ev.member not in statuses:
                    members.member(conn, ev.member)  # raises UnknownMember
            except LedgerError as error:
                results.append(error)
                continue
            new_key = store.is_new_key(*scope)
            earlier = reported_before.get((reporter, ev.event_id))
            if earlier is not None and new_key:
                # An event reported before the list: its original booking (as alone), which
                # nothing in the list can change, read with the batch's other entries.
                try:
                    results.append(
                        _duplicate(store, earlier, ev.member, ev.event_type, ev.event_id)
                    )
                except LedgerError as error:
                    results.append(error)
                continue
            if not new_key or (reporter, ev.event_id) in reported:
                # A retry or an event repeated in the list: flush, then let the one-by-one path
                # answer it.
                store.flush(kernel.policy.shards)
                window.flushed()
                _flush_engagements(conn, rows_out)
                results.append(_one_engagement(conn, ev, now, ledger))
                reported.add((reporter, ev.event_id))
                counted.clear()  # everything is written now: count afresh from the database
                continue
            request = _request(
                "engage",
                reporter=reporter,
                member=ev.member,
                event_type=ev.event_type,
                event_id=ev.event_id,
                business_time=ev.business_time,
            )
            at = ev.business_time
            try:
                if statuses[ev.member] != "active":
                    raise MemberNotActive(ev.member, statuses[ev.member])
                rule = cached(
                    rules, (ev.event_type, at), engagement_rule_at, conn, ev.event_type, at
                )
                price_version = None
                if rule.sponsor != PROGRAM:
                    if ev.actor.partner is not None and ev.actor.partner != rule.sponsor:
                        raise InvalidRequest(
                            f"{rule.sponsor} sponsors {rule.event_type}: "
                            f"{ev.actor.partner} cannot report it"
                        )

                    price_version = cached(
                        sponsors, (rule.sponsor, at), _sponsor_version, conn, rule.sponsor, at
                    )
                quote = quote_engagement(rule, at=at, counts=count(ev.member, rule, at))
            except BusinessRefusal as refusal:
                store.claim_key(*scope, request, uuid4(), now)
                store.record_refusal(*scope, refusal)
                results.append(refusal)
                continue
            except LedgerError as error:
                results.append(error)
                continue
            reported.add((reporter, ev.event_id))
            entry, change = None, None
            if quote.points > 0:
                entry = kernel.earn(
                    store,
                    ev.actor,
                    ev.key,
                    member=ev.member,
                    funding={quote.sponsor: quote.points},
                    business_time=at,
                    kind=EntryKind.ENGAGE,
                    expires_at=lot_expiry(at, policy),
                    price_version=price_version,
                    attributes={
                        "request_digest": request.hex,
                        "rules": dict(quote.rule_versions),
                        "explanation": quote.explanation,
                        "event_type": ev.event_type,
                        "event_id": ev.event_id,
                    },
                ).entry
                for period in quote_periods(rule):
                    start, _end = period_bounds(at, period)
                    counted[(ev.member, rule.event_type, period, start)] += 1
                when = max(now, at)
                window.add(ev.member, at, quote.points)
                if levels:
                    points = window.points(ev.member, when)
                    change = _upgrade_in_batch(conn, levels, held, ev.member, points, now)
                touched[ev.member] = max(at, touched.get(ev.member, at))
            rows_out.append(
                {
                    "partner": reporter,
                    "event_id": ev.event_id,
                    "member_id": ev.member,
                    "event_type": ev.event_type,
                    "entry_id": None if entry is None else entry.id,
                    "occurred_at": at,
                }
            )
            results.append(
                EngageResult(
                    ev.event_type,
                    ev.event_id,
                    quote.points,
                    quote.explanation,
                    quote.rule_versions,
                    entry,
                    change,
                )
            )
    _flush_engagements(conn, rows_out)
    _touch_activities(conn, touched)
    return results


def _sponsor_version(conn: Connection, sponsor: str, at: datetime) -> str | None:
    """The sponsor's contract version at ``at``, if the sponsor may issue points."""
    directory.require_can_issue(conn, sponsor)
    return directory.contract_at(conn, sponsor, at).price_version


def quote_periods(rule: EngagementRule) -> list[str]:
    """The periods whose cap the rule sets (the counters an event moves)."""
    return [period for period in ENGAGEMENT_PERIODS if rule.cap(period) is not None]


def _flush_engagements(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(t.engagements.insert(), rows)
        rows.clear()


def _one_engagement(
    conn: Connection, ev: Engagement, now: datetime, ledger: Ledger | None
) -> EngageResult | LedgerError:
    """One event in a savepoint, with :meth:`Database.transaction`'s rules."""
    return _in_savepoint(
        conn,
        lambda: engage(
            conn,
            ev.actor,
            ev.key,
            member=ev.member,
            event_type=ev.event_type,
            event_id=ev.event_id,
            business_time=ev.business_time,
            now=now,
            ledger=ledger,
        ),
    )


def refer(
    conn: Connection,
    actor: Actor,
    key: str,
    *,
    referrer: str,
    referee: str,
    event_id: str,
    business_time: datetime,
    now: datetime,
    ledger: Ledger | None = None,
) -> ReferralResult:
    """Reward a referral on both sides: ``referral_referrer`` and ``referral_referee`` events.

    Both sides are priced and checked before either is booked, so a refusal (a cap, an inactive
    member) pays neither. Each side is deduplicated under ``{event_id}:referrer`` /
    ``{event_id}:referee`` and booked under ``{key}:referrer`` / ``{key}:referee``.
    """
    if referrer == referee:
        raise InvalidRequest("a member cannot refer itself")
    _check_key(key, suffix=max(len(f":{side}") for side, _ in REFERRAL_SIDES))
    _check_event_id(f"{event_id}:referrer")
    reporter = actor.partner or PROGRAM
    request = _request(
        "refer",
        reporter=reporter,
        referrer=referrer,
        referee=referee,
        event_id=event_id,
        business_time=business_time,
    )
    people = {"referrer": members.member(conn, referrer), "referee": members.member(conn, referee)}
    events = [
        _Event(reporter, people[side], event_type, f"{event_id}:{side}", business_time)
        for side, event_type in REFERRAL_SIDES
    ]
    store = SqlLedgerStore(conn)
    _lock_members(store, [referrer, referee])
    prior = _prior(conn, actor, key)
    if prior is not None:  # only a refusal is ever recorded under the referral's own key
        _raise_recorded(prior, request, key)
    try:
        planned = [_plan_unless_duplicate(conn, actor, event) for event in events]
    except BusinessRefusal as refusal:
        _record_refusal(conn, actor, key, request, refusal, now)
        raise
    referrer_result, referee_result = (
        plan
        if isinstance(plan, EngageResult)
        else _book_engagement(conn, store, actor, f"{key}:{side}", plan, now, ledger)
        for (side, _), plan in zip(REFERRAL_SIDES, planned, strict=True)
    )
    return ReferralResult(referrer_result, referee_result)


def _plan_unless_duplicate(
    conn: Connection, actor: Actor, event: _Event
) -> _EngagementPlan | EngageResult:
    """The original booking if the reporter sent this event id before, else a priced plan."""
    earlier = _engagement(conn, event.reporter, event.event_id)
    if earlier is not None:
        member = event.member.id
        return _duplicate(SqlLedgerStore(conn), earlier, member, event.event_type, event.event_id)
    _require_active(event.member)
    rule = engagement_rule_at(conn, event.event_type, event.business_time)
    price_version = None
    if rule.sponsor != PROGRAM:
        if actor.partner is not None and actor.partner != rule.sponsor:
            raise InvalidRequest(
                f"{rule.sponsor} sponsors {rule.event_type}: {actor.partner} cannot report it"
            )
        directory.require_can_issue(conn, rule.sponsor)
        contract = directory.contract_at(conn, rule.sponsor, event.business_time)
        price_version = contract.price_version
    counts = _engagement_counts(conn, event.member.id, rule, event.business_time)
    quote = quote_engagement(rule, at=event.business_time, counts=counts)
    expires_at = lot_expiry(event.business_time, expiry_policy(conn))
    return _EngagementPlan(event, quote, price_version, expires_at)


def _book_engagement(
    conn: Connection,
    store: SqlLedgerStore,
    actor: Actor,
    key: str,
    plan: _EngagementPlan,
    now: datetime,
    ledger: Ledger | None,
) -> EngageResult:
    """Book the plan's ENGAGE entry (none for zero points) and record the event for dedupe."""
    event, quote = plan.event, plan.quote
    entry, change = None, None
    if quote.points > 0:
        booking = _kernel(ledger, now).earn(
            store,
            actor,
            key,
            member=event.member.id,
            funding={quote.sponsor: quote.points},
            business_time=event.business_time,
            kind=EntryKind.ENGAGE,
            expires_at=plan.expires_at,
            price_version=plan.price_version,
            attributes={
                "request_digest": event.request.hex,
                "rules": dict(quote.rule_versions),
                "explanation": quote.explanation,
                "event_type": event.event_type,
                "event_id": event.event_id,
            },
        )
        entry = booking.entry
        if booking.replayed:  # a concurrent retry with the same key won the race
            return _engage_result(entry, event.event_type, event.event_id, replayed=True)
        at = max(now, event.business_time)
        change = tiers.upgrade_after_earn(conn, event.member.id, at=at, now=now)
        _touch_activity(conn, event.member.id, event.business_time)
    conn.execute(
        t.engagements.insert().values(
            partner=event.reporter,
            event_id=event.event_id,
            member_id=event.member.id,
            event_type=event.event_type,
            entry_id=None if entry is None else entry.id,
            occurred_at=event.business_time,
        )
    )
    return EngageResult(
        event.event_type,
        event.event_id,
        quote.points,
        quote.explanation,
        quote.rule_versions,
        entry,
        change,
    )


def _engagement_counts(
    conn: Connection, member: str, rule: EngagementRule, at: datetime
) -> dict[str, int]:
    """Events of the rule's type already rewarded in each Paris period the rule caps."""
    e = t.engagements.c
    counts = {}
    for period in ENGAGEMENT_PERIODS:
        if rule.cap(period) is None:
            continue
        start, end = period_bounds(at, period)
        counts[period] = int(
            conn.scalar(
                sa.select(sa.func.count())
                .select_from(t.engagements)
                .where(
                    e.member_id == member,
                    e.event_type == rule.event_type,
                    e.entry_id.is_not(None),
                    e.occurred_at >= start,
                    e.occurred_at < end,
                )
            )
            or 0
        )
    return counts


def _engagement_counts_of(
    conn: Connection, ids: Sequence[str], event_type: str, start: datetime, end: datetime
) -> dict[str, int]:
    """:func:`_engagement_counts` of one period for many members: rewarded events per member."""
    e = t.engagements.c
    found: dict[str, int] = {}
    for first in range(0, len(ids), 900):
        chunk = list(ids[first : first + 900])
        rows = conn.execute(
            sa.select(e.member_id, sa.func.count())
            .where(
                e.member_id.in_(chunk),
                e.event_type == event_type,
                e.entry_id.is_not(None),
                e.occurred_at >= start,
                e.occurred_at < end,
            )
            .group_by(e.member_id)
        )
        found.update((member, int(n)) for member, n in rows)
    return found


def _engagement(conn: Connection, reporter: str, event_id: str) -> sa.Row | None:
    e = t.engagements.c
    return conn.execute(
        sa.select(t.engagements).where(e.partner == reporter, e.event_id == event_id)
    ).first()


def _duplicate(
    store: LedgerStore, earlier: sa.Row, member: str, event_type: str, event_id: str
) -> EngageResult:
    """The original booking of an event id reported again; another member or type conflicts."""
    differing = [
        name
        for name, before, after in (
            ("member", earlier.member_id, member),
            ("event_type", earlier.event_type, event_type),
        )
        if before != after
    ]
    original = None if earlier.entry_id is None else str(earlier.entry_id)
    if differing:
        raise IdempotencyConflict(event_id, differing, original)
    entry = None if earlier.entry_id is None else store.load_entry(earlier.entry_id)
    return _engage_result(entry, event_type, event_id, duplicate=True)


def _engage_result(
    entry: Entry | None,
    event_type: str,
    event_id: str,
    *,
    duplicate: bool = False,
    replayed: bool = False,
) -> EngageResult:
    if entry is None:
        return EngageResult(event_type, event_id, 0, "", {}, None, None, duplicate, replayed)
    return EngageResult(
        str(entry.attributes.get("event_type", event_type)),
        str(entry.attributes.get("event_id", event_id)),
        sum(lot.amount for lot in entry.opened_lots),
        str(entry.attributes.get("explanation", "")),
        _rules(entry),
        entry,
        None,
        duplicate,
        replayed,
    )


# -- spending and transfers ------------------------------------------------------------------------


def burn(
    conn: Connection,
    actor: Actor,
    key: str,
    *,
    member: str,
    points: int,
    business_time: datetime,
    now: datetime,
    partner: str | None = None,
    ledger: Ledger | None = None,
) -> Booking:
    """Spend a member's points at a partner, within the member's daily burn cap.

    Refused if the partner's redemptions are blocked, the member is not active, or the cap would
    be passed; the kernel refuses what the member does not have.
    """
    _check_key(key)
    at = partner or actor.partner
    if at is None:
        raise InvalidRequest("a partner is required")
    request = _request(
        "burn", member=member, points=points, partner=at, business_time=business_time
    )
    found = members.member(conn, member)
    store = SqlLedgerStore(conn)
    _lock_members(store, [member])
    prior = _prior(conn, actor, key)
    if prior is None:
        try:
            directory.require_can_redeem(conn, at)
            _require_active(found)
            _check_velocity(conn, member, "burn", points, business_time)
        except BusinessRefusal as refusal:
            _record_refusal(conn, actor, key, request, refusal, now)
            raise
    elif _is_ours(prior):
        _raise_recorded(prior, request, key)
    booking = _kernel(ledger, now).burn(
        store,
        actor,
        key,
        member=member,
        points=points,
        business_time=business_time,
        partner=partner,
    )
    if not booking.replayed:
        _touch_activity(conn, member, business_time)
    return booking


def transfer(
    conn: Connection,
    actor: Actor,
    key: str,
    *,
    from_member: str,
    to_member: str,
    points: int,
    business_time: datetime,
    now: datetime,
    ledger: Ledger | None = None,
) -> Booking:
    """Move points between two members, if the programme enables transfers and the caps allow.

    The lots move with their funder and expiry (the kernel's TRANSFER).
    """
    _check_key(key)
    request = _request(
        "transfer",
        from_member=from_member,
        to_member=to_member,
        points=points,
        business_time=business_time,
    )
    sender, recipient = members.member(conn, from_member), members.member(conn, to_member)
    store = SqlLedgerStore(conn)
    _lock_members(store, [from_member, to_member])
    prior = _prior(conn, actor, key)
    if prior is None:
        try:
            _check_transfer(conn, sender, recipient, points, business_time)
        except BusinessRefusal as refusal:
            _record_refusal(conn, actor, key, request, refusal, now)
            raise
    elif _is_ours(prior):
        _raise_recorded(prior, request, key)
    return _kernel(ledger, now).transfer(
        store,
        actor,
        key,
        from_member=from_member,
        to_member=to_member,
        points=points,
        business_time=business_time,
    )


def _check_transfer(
    conn: Connection,
    sender: members.Member,
    recipient: members.Member,
    points: int,
    business_time: datetime,
) -> None:
    controls = abuse_controls(conn)
    if not controls.transfers_enabled:
        raise TransfersDisabled()
    _require_active(sender)
    _require_active(recipient)
    if controls.max_per_transfer is not None and points > controls.max_per_transfer:
        raise TransferCapExceeded(controls.max_per_transfer, points)
    _check_velocity(conn, sender.id, "transfer", points, business_time)


# -- velocity --------------------------------------------------------------------------------------

#: Entry kinds each velocity cap counts, and whether it counts credits or debits of the member.
_VELOCITY_KINDS = {
    "earn": ((EntryKind.EARN.value,), 1),
    "burn": ((EntryKind.BURN.value, EntryKind.CAPTURE.value), -1),
    "transfer": ((EntryKind.TRANSFER.value,), -1),
}


def points_today(conn: Connection, member: str, kind: str, at: datetime) -> int:
    """Points the member earned from purchases, spent, or sent on the Paris day containing ``at``.

    Counted from the journal by business time: spends include till captures booked directly
    through the kernel; reversals do not give the room back.
    """
    kinds, sign = _VELOCITY_KINDS[kind]
    start, end = period_bounds(at, "day")
    p, e = lt.postings.c, lt.entries.c
    accounts = [member_account(member, role) for role in ("available", "pending", "held")]
    query = (
        sa.select(sa.func.coalesce(sa.func.sum(p.amount), 0))
        .select_from(lt.postings.join(lt.entries, e.id == p.entry_id))
        .where(
            p.account.in_(accounts),
            e.kind.in_(kinds),
            e.business_time >= start,
            e.business_time < end,
        )
    )
    if kind == "transfer":
        query = query.where(p.amount < 0)  # what the member sent, not what it received
    return sign * int(conn.scalar(query) or 0)


def _check_velocity(conn: Connection, member: str, kind: str, points: int, at: datetime) -> None:
    cap = getattr(abuse_controls(conn), f"{kind}_per_day")
    if cap is not None:
        check_velocity(kind, points, points_today(conn, member, kind, at), cap)


# -- idempotency of this layer ---------------------------------------------------------------------


def _request(op: str, **fields: Any) -> Fingerprint:
    """A business request's fingerprint: the kernel's, under an operation name of this layer."""
    return fingerprint({"op": _OP + op, **fields})


def _prior(conn: Connection, actor: Actor, key: str) -> sa.Row | None:
    """The idempotency record of an earlier request under this key, if any."""
    i = lt.idempotency.c
    return conn.execute(
        sa.select(lt.idempotency).where(i.credential == actor.idempotency_scope, i.key == key)
    ).first()


def _is_ours(prior: sa.Row) -> bool:
    """Whether the record is a refusal this layer wrote (the kernel's ops carry no prefix)."""
    return str(prior.request.get("op", "")).startswith(_OP)


def _raise_recorded(prior: sa.Row, request: Fingerprint, key: str) -> NoReturn:
    """Raise the refusal recorded for this very request, or the conflict of another request."""
    if bytes(prior.request_hash) == request.digest and prior.refusal is not None:
        raise BusinessRefusal.from_record(
            prior.refusal["code"], prior.refusal["message"], prior.refusal["fields"]
        )
    raise _conflict(prior, request, key)


def _recorded_entry(conn: Connection, prior: sa.Row, request: Fingerprint, key: str) -> Entry:
    """The entry an earlier identical request booked (or its recorded refusal, raised again)."""
    if _is_ours(prior):
        _raise_recorded(prior, request, key)
    attributes = prior.request.get("attributes") or {}
    if attributes.get("request_digest") != request.hex:
        raise _conflict(prior, request, key)
    if prior.refusal is not None:
        raise BusinessRefusal.from_record(
            prior.refusal["code"], prior.refusal["message"], prior.refusal["fields"]
        )
    return SqlLedgerStore(conn).load_entry(prior.entry_id)


def _conflict(prior: sa.Row, request: Fingerprint, key: str) -> IdempotencyConflict:
    return IdempotencyConflict(
        key,
        request.differing(prior.request),
        None if prior.entry_id is None else str(prior.entry_id),
    )


def _record_refusal(
    conn: Connection,
    actor: Actor,
    key: str,
    request: Fingerprint,
    refusal: BusinessRefusal,
    now: datetime,
) -> None:
    """Record a refusal under the key, unless the kernel already recorded its own."""
    store = SqlLedgerStore(conn)
    if store.claim_key(actor.idempotency_scope, key, request, uuid4(), now):
        store.record_refusal(actor.idempotency_scope, key, refusal)


def _earn_result(entry: Entry) -> EarnResult:
    return EarnResult(
        points=sum(lot.amount for lot in entry.opened_lots),
        explanation=str(entry.attributes.get("explanation", "")),
        rule_versions=_rules(entry),
        entry=entry,
        quote=None,
        replayed=True,
    )


def _rules(entry: Entry) -> dict[str, Any]:
    """The rule versions an EARN or ENGAGE entry records."""
    rules = entry.attributes.get("rules")
    return dict(rules) if isinstance(rules, Mapping) else {}


# -- shared checks ---------------------------------------------------------------------------------


def _kernel(ledger: Ledger | None, now: datetime) -> Ledger:
    """A kernel stamping ledger time ``now``; lots expire only when the programme's policy says."""
    policy = ledger.policy if ledger is not None else Policy()
    return Ledger(replace(policy, lot_lifetime=None), clock=lambda: now)


def _acting_partner(actor: Actor) -> str:
    if actor.partner is None:
        raise InvalidRequest("a purchase is reported by a partner")
    return actor.partner


def _check_key(key: str, suffix: int = 0) -> None:
    if not isinstance(key, str) or not 1 <= len(key) <= 200 - suffix:
        raise InvalidRequest(f"an idempotency key of 1–{200 - suffix} characters is required")


def _check_event_id(event_id: str) -> None:
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= 100:
        raise InvalidRequest("an event id of 1–100 characters is required")


def _lock_members(store: SqlLedgerStore, ids: Sequence[str]) -> None:
    """Lock the members' accounts first, in the kernel's global order, before reading counters."""
    store.lock_accounts(
        [member_account(member, role) for member in ids for role in ("available", "pending")]
    )


def _require_active(found: members.Member) -> None:
    if found.status != "active":
        raise MemberNotActive(found.id, found.status)


def _touch_activity(conn: Connection, member: str, at: datetime) -> None:
    """Keep ``members.last_activity_at`` (shown to support desks) at the latest earn or spend."""
    _touch_activities(conn, {member: at})


def _basket_json(basket: Basket) -> dict[str, Any]:
    if not isinstance(basket, Basket):
        raise InvalidRequest("a purchase needs a Basket")
    return {
        "lines": [
            {"amount_cents": ln.amount_cents, "category": ln.category, "gift_card": ln.gift_card}
            for ln in basket.lines
        ],
        "paid_with_points_cents": basket.paid_with_points_cents,
    }
