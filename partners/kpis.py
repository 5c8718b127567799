"""The operator's key figures (issue 4 point 10), read from the journal and the member register.

Definitions, so every number can be recomputed by hand:

- **Activity** is an earn or a spend (EARN, ENGAGE, BURN, CAPTURE), dated by business time; it is
  the same definition the inactivity expiry uses (:func:`partners.expiry.activity_events`).
- **Active / inactive** at ``now`` for ``N`` days: active if the member had activity in
  ``(now − N days, now]``; inactive if not, although it was enrolled on or before ``now − N days``
  (the revival list); *new* if it was enrolled since then and has not been active yet. Closed
  members are left out.
- **Retention** from period P to the next period P′: of the members active in P, the share also
  active in P′.
- **Transactions and average basket** per partner: the partner's EARN entries (purchases that
  earned points; a zero-point purchase books nothing and is not counted) and the basket amount
  :func:`partners.earning.earn_purchase` stores in each entry's ``basket_cents`` attribute (read
  with SQLAlchemy's portable JSON accessor). Refunds do not shrink the basket figures.
- **Points per partner per day** (Paris days, by business time): issued (EARN/ENGAGE credits from
  ``partner:P:issued``, or ``program:funded`` reported as partner ``program``) and issue reversals;
  redeemed (BURN/CAPTURE to ``partner:P:redeemed``) and redemption reversals; expired, attributed
  to the partner that funded each expired lot.

Days are bucketed inside the database with a CASE over the day boundaries, so the same SQL runs
on SQLite and PostgreSQL and only one row per (partner, flow, day) comes back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger import tables as lt
from ledger.errors import InvalidRequest
from ledger.model import PROGRAM, Account, EntryKind
from partners import tables as t
from partners.expiry import activity_events, last_activity, paris_midnight


@dataclass(frozen=True, slots=True)
class EnrolmentCount:
    """Members enrolled by one partner (``None``: by the operator)."""

    partner: str | None
    members: int


@dataclass(frozen=True, slots=True)
class InactiveMember:
    """A member of the revival list."""

    member: str
    last_activity: datetime | None
    """Its last earn or spend; ``None`` if it never had any."""
    enrolled_by: str | None
    """The partner that enrolled it (the natural sender of a revival offer)."""


@dataclass(frozen=True, slots=True)
class MemberActivity:
    """Active, inactive and new members at an instant, for a number of days."""

    active: int
    inactive: int
    new: int
    """Enrolled within the last N days, not active yet."""
    revival: tuple[InactiveMember, ...]
    """The inactive members, longest inactive first (never active first of all)."""


@dataclass(frozen=True, slots=True)
class Retention:
    """Of the members active in a period, how many were active in the next."""

    active: int
    """Members active in the first period."""
    retained: int
    """Of those, members also active in the next period."""
    rate: Decimal | None
    """``retained / active`` to four decimal places (half up); ``None`` if nobody was active."""


@dataclass(frozen=True, slots=True)
class PartnerTransactions:
    """Purchases that earned points at one partner over a period."""

    partner: str
    transactions: int
    basket_cents: int
    """Sum of the baskets, in cents."""
    average_basket_cents: int
    """Mean basket, rounded half up to the cent."""


@dataclass(frozen=True, slots=True)
class DailyPoints:
    """One partner's point flows on one Paris day."""

    day: date
    partner: str
    """Partner code, or ``program`` for points the operator funds."""
    issued: int = 0
    issue_reversed: int = 0
    redeemed: int = 0
    redeem_reversed: int = 0
    expired: int = 0
    """Points expired from lots this partner funded."""


# -- members ---------------------------------------------------------------------------------------


def enrolment_by_partner(
    conn: Connection, *, start: datetime | None = None, end: datetime | None = None
) -> list[EnrolmentCount]:
    """Members enrolled per partner in ``[start, end)`` (all time by default), operator last."""
    m = t.members.c
    query = sa.select(m.enrolled_by, sa.func.count()).group_by(m.enrolled_by)
    if start is not None:
        query = query.where(m.enrolled_at >= start)
    if end is not None:
        query = query.where(m.enrolled_at < end)
    counts = [EnrolmentCount(partner, int(n)) for partner, n in conn.execute(query)]
    return sorted(counts, key=lambda c: (c.partner is None, c.partner or ""))


def member_activity(conn: Connection, now: datetime, *, days: int = 90) -> MemberActivity:
    """Who was active in the last ``days`` days, who was not (revival list), who is new."""
    if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
        raise InvalidRequest("days must be a positive whole number")
    since = now - timedelta(days=days)
    m = t.members.c
    register = conn.execute(
        sa.select(m.id, m.enrolled_by, m.enrolled_at)
        .where(m.status != "closed", m.enrolled_at <= now)
        .order_by(m.id)
    ).all()
    last = last_activity(conn, [row.id for row in register], until=now)
    active, new, revival = 0, 0, []
    for row in register:
        seen = last.get(row.id)
        if seen is not None and seen > since:
            active += 1
        elif row.enrolled_at > since:
            new += 1
        else:
            revival.append(InactiveMember(row.id, seen, row.enrolled_by))
    revival.sort(key=lambda r: (r.last_activity is not None, r.last_activity or now, r.member))
    return MemberActivity(active, len(revival), new, tuple(revival))


def active_members(conn: Connection, start: datetime, end: datetime) -> set[str]:
    """Members with an earn or a spend in ``[start, end)``."""
    events = activity_events()
    query = sa.select(events.c.member).where(events.c.at >= start, events.c.at < end).distinct()
    return set(conn.scalars(query))


def retention(
    conn: Connection, period: tuple[datetime, datetime], next_period: tuple[datetime, datetime]
) -> Retention:
    """Share of the members active in ``period`` who are active in ``next_period`` (half-open)."""
    before = active_members(conn, *period)
    retained = len(before & active_members(conn, *next_period))
    rate = None
    if before:
        rate = (Decimal(retained) / Decimal(len(before))).quantize(
            Decimal("0.0001"), rounding=ROUND_HALF_UP
        )
    return Retention(len(before), retained, rate)


# -- partners --------------------------------------------------------------------------------------


def partner_transactions(
    conn: Connection, start: datetime, end: datetime
) -> list[PartnerTransactions]:
    """Purchases that earned points, and their mean basket, per partner, in ``[start, end)``."""
    e = lt.entries.c
    basket = e.attributes["basket_cents"].as_integer()
    query = (
        sa.select(e.partner, sa.func.count(), sa.func.sum(basket))
        .where(
            e.kind == EntryKind.EARN.value,
            e.partner.is_not(None),
            basket.is_not(None),
            e.business_time >= start,
            e.business_time < end,
        )
        .group_by(e.partner)
        .order_by(e.partner)
    )
    rows = []
    for partner, count, total in conn.execute(query):
        mean = (Decimal(int(total)) / Decimal(int(count))).quantize(
            Decimal(1), rounding=ROUND_HALF_UP
        )
        rows.append(PartnerTransactions(partner, int(count), int(total), int(mean)))
    return rows


def daily_points(conn: Connection, first: date, last: date) -> list[DailyPoints]:
    """Points issued, redeemed and expired per partner per Paris day, ``first`` to ``last``."""
    if last < first:
        raise InvalidRequest("the last day comes before the first")
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    bounds = [paris_midnight(day) for day in days] + [paris_midnight(last + timedelta(days=1))]
    flows: dict[tuple[date, str], dict[str, int]] = {}

    def add(day_index: int, partner: str, flow: str, points: int) -> None:
        row = flows.setdefault((days[day_index], partner), {})
        row[flow] = row.get(flow, 0) + points

    for account, kind, day_index, amount in conn.execute(_partner_postings(bounds)):
        partner, flow, sign = _flow(account, kind)
        add(day_index, partner, flow, sign * int(amount))
    for funder, day_index, expired in conn.execute(_expired_by_funder(bounds)):
        add(day_index, funder, "expired", int(expired))
    return [
        DailyPoints(day, partner, **values)
        for (day, partner), values in sorted(flows.items())
        if any(values.values())
    ]


_ISSUE_KINDS = (EntryKind.EARN.value, EntryKind.ENGAGE.value)
_REDEEM_KINDS = (EntryKind.BURN.value, EntryKind.CAPTURE.value)
_FLOW_KINDS = (
    *_ISSUE_KINDS,
    EntryKind.EARN_REVERSAL.value,
    *_REDEEM_KINDS,
    EntryKind.BURN_REVERSAL.value,
)


def _day_index(column: sa.ColumnElement[datetime], bounds: Sequence[datetime]) -> sa.Case:
    """Which day of ``bounds`` a time falls in (the caller keeps times inside the bounds)."""
    whens = [(column < bound, index) for index, bound in enumerate(bounds[1:-1])]
    return sa.case(*whens, else_=len(bounds) - 2) if whens else sa.literal(0)


def _partner_postings(bounds: Sequence[datetime]) -> sa.Select:
    """Points on partner issued/redeemed accounts and ``program:funded``, per account, kind, day."""
    p, e = lt.postings.c, lt.entries.c
    inner = (
        sa.select(
            p.account.label("account"),
            e.kind.label("kind"),
            _day_index(e.business_time, bounds).label("day"),
            p.amount.label("amount"),
        )
        .select_from(lt.postings.join(lt.entries, e.id == p.entry_id))
        .where(
            sa.or_(
                p.account.like("partner:%:issued"),
                p.account.like("partner:%:redeemed"),
                p.account == "program:funded",
            ),
            e.kind.in_(_FLOW_KINDS),
            e.business_time >= bounds[0],
            e.business_time < bounds[-1],
        )
        .subquery()
    )
    return sa.select(
        inner.c.account, inner.c.kind, inner.c.day, sa.func.sum(inner.c.amount)
    ).group_by(inner.c.account, inner.c.kind, inner.c.day)


def _expired_by_funder(bounds: Sequence[datetime]) -> sa.Select:
    """Points expired per lot funder and day (EXPIRE lot moves are negative)."""
    e, lots, moves = lt.entries.c, lt.lots.c, lt.lot_moves.c
    inner = (
        sa.select(
            lots.funder.label("funder"),
            _day_index(e.business_time, bounds).label("day"),
            (-moves.delta).label("points"),
        )
        .select_from(
            lt.lot_moves.join(lt.entries, e.id == moves.entry_id).join(
                lt.lots, lots.id == moves.lot_id
            )
        )
        .where(
            e.kind == EntryKind.EXPIRE.value,
            e.business_time >= bounds[0],
            e.business_time < bounds[-1],
        )
        .subquery()
    )
    return sa.select(inner.c.funder, inner.c.day, sa.func.sum(inner.c.points)).group_by(
        inner.c.funder, inner.c.day
    )


def _flow(account: str, kind: str) -> tuple[str, str, int]:
    """(partner, flow, sign) of a posting total: sources are negative, sinks positive."""
    if account == "program:funded":
        partner, role = PROGRAM, "issued"
    else:
        parsed = Account.parse(account)
        partner, role = str(parsed.owner), parsed.kind.value.split(":")[1]
    if role == "issued":
        return (partner, "issued", -1) if kind in _ISSUE_KINDS else (partner, "issue_reversed", 1)
    if kind in _REDEEM_KINDS:
        return partner, "redeemed", 1
    return partner, "redeem_reversed", -1
