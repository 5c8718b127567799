"""Membership tiers: levels reached by points EARNED over a rolling 12 months, never by balance.

Rules (PRODUCT.md §6, issue 4 point 7):

- The levels are configurable rows of ``tier_levels`` (:func:`set_tier_levels`;
  :func:`seed_default_tiers` installs White 0 ×1, Black 1,000 ×1.25, Gold 5,000 ×1.5). The
  lowest level starts at 0 points; a level's multiplier applies to the base points of purchases.
- Points earned in a window ``(at − 12 months, at]`` (Paris calendar months) are the EARN and
  ENGAGE credits to the member whose business time lies in the window, minus the earn reversals of
  those very credits: a refund cancels the purchase it refers to, whenever it happens. They are
  summed from the journal's postings, so no counter can drift from the books.
- A member's tier is the latest row of its ``tier_history`` (the lowest level if it has none).
  It goes up at once after an earn (:func:`upgrade_after_earn`) and down only at the periodic
  :func:`review_tiers`, so a member keeps what it reached until the next review. A manual floor
  (:func:`set_floor`, with a reason) keeps a member at or above a level whatever it earns;
  the tier is never below the floor in force.
- ``tier_history`` is append-only: every change is a new row carrying the tier, the floor in
  force, a human reason, when and by whom.

Every function works inside the caller's transaction and takes the time explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger import tables as lt
from ledger.errors import InvalidRequest
from ledger.model import Account, EntryKind, member_account
from partners import members
from partners import tables as t
from partners.expiry import add_months
from partners.rules import Tier, tier_for

#: The levels :func:`seed_default_tiers` installs (the programme's example).
DEFAULT_TIERS = (
    Tier("White", 0, 0, Decimal("1")),
    Tier("Black", 1, 1_000, Decimal("1.25")),
    Tier("Gold", 2, 5_000, Decimal("1.5")),
)

#: Length of the rolling window, in calendar months.
WINDOW_MONTHS = 12

_CREDIT_KINDS = (EntryKind.EARN.value, EntryKind.ENGAGE.value)


@dataclass(frozen=True, slots=True)
class TierChange:
    """One row of a member's tier history."""

    member: str
    """The member."""
    tier: str
    """The tier held from ``changed_at`` on."""
    previous: str | None
    """The tier held before (``None`` for a history row read back on its own)."""
    floor: str | None
    """The manual floor in force from ``changed_at`` on; ``None``: none."""
    reason: str
    """Why: ``upgrade``, ``review``, ``floor`` and a human explanation."""
    changed_at: datetime
    """When the change took effect."""
    changed_by: str | None
    """Who made it: a staff account for a floor, ``None`` for the rules themselves."""


@dataclass(frozen=True, slots=True)
class TierStatus:
    """Where a member stands: its tier, its points in the window, and what the next level needs."""

    member: str
    tier: Tier
    """The tier held now (never below the floor)."""
    floor: str | None
    """The manual floor in force, if any."""
    points_12m: int
    """Points earned over the rolling window ending now."""
    window_start: datetime
    """Start of the window (exclusive): points earned before it no longer count."""
    next_tier: Tier | None
    """The level above the current one; ``None`` at the top."""
    points_missing: int
    """Points still to earn in the window to reach ``next_tier`` (0 at the top)."""


# -- levels ----------------------------------------------------------------------------------------


def tier_levels(conn: Connection) -> list[Tier]:
    """The configured levels, lowest first (empty if the programme has none)."""
    rows = conn.execute(sa.select(t.tier_levels).order_by(t.tier_levels.c.rank))
    return [Tier(r.name, r.rank, r.threshold, Decimal(r.multiplier)) for r in rows]


def set_tier_levels(conn: Connection, levels: Sequence[Tier]) -> list[Tier]:
    """Replace the programme's levels; a level that a member's history names cannot be removed."""
    levels = sorted(levels, key=lambda tier: tier.rank)
    tier_for(0, levels)  # checks the ladder: unique names, lowest at 0, rising thresholds
    names = {tier.name for tier in levels}
    current = {tier.name for tier in tier_levels(conn)}
    removed = sorted(current - names)
    used = set(
        conn.scalars(
            sa.select(t.tier_history.c.tier).where(t.tier_history.c.tier.in_(removed)).distinct()
        )
    )
    if used:
        raise InvalidRequest(f"tiers {sorted(used)} are in members' history and cannot be removed")
    conn.execute(t.tier_levels.delete().where(t.tier_levels.c.name.in_(removed)))
    # Ranks are unique: park the kept rows on negative ranks before giving them their new ones.
    conn.execute(
        t.tier_levels.update()
        .where(t.tier_levels.c.name.in_(current & names))
        .values(rank=-1 - t.tier_levels.c.rank)
    )
    for tier in levels:
        values = {
            "rank": tier.rank,
            "threshold": tier.threshold,
            "multiplier": format(tier.multiplier, "f"),
        }
        if tier.name in current:
            conn.execute(
                t.tier_levels.update().where(t.tier_levels.c.name == tier.name).values(**values)
            )
        else:
            conn.execute(t.tier_levels.insert().values(name=tier.name, **values))
    return tier_levels(conn)


def seed_default_tiers(conn: Connection) -> list[Tier]:
    """Install :data:`DEFAULT_TIERS` unless the programme has levels already."""
    return tier_levels(conn) or set_tier_levels(conn, DEFAULT_TIERS)


# -- points in the window --------------------------------------------------------------------------


def window_start(at: datetime) -> datetime:
    """Start (exclusive) of the rolling window ending at ``at``."""
    return add_months(at, -WINDOW_MONTHS)


def points_earned(conn: Connection, member: str, at: datetime) -> int:
    """Points the member earned in ``(at − 12 months, at]``, net of the reversals of those earns."""
    return _points_earned(conn, at, [member]).get(member, 0)


def _points_earned(conn: Connection, at: datetime, members: Iterable[str] | None) -> dict[str, int]:
    """Points earned in the window per member (all members with postings if ``members`` is None)."""
    start = window_start(at)
    p, e = lt.postings.c, lt.entries.c
    original = lt.entries.alias("original")
    if members is None:
        on_member = p.account.like("member:%")
    else:
        on_member = p.account.in_(
            [member_account(m, role) for m in members for role in ("available", "pending")]
        )
    # Credits and the reversals of credits, in ONE pass over the members' postings (each joined
    # to its entry once): the two kinds exclude each other, so each posting counts at most once,
    # and a reversal whose original is missing counts nothing (its outer join yields NULL times).
    credit = sa.and_(e.kind.in_(_CREDIT_KINDS), e.business_time > start, e.business_time <= at)
    reversal = sa.and_(
        e.kind == EntryKind.EARN_REVERSAL.value,
        e.business_time <= at,
        original.c.business_time > start,
        original.c.business_time <= at,
    )
    query = (
        sa.select(p.account, sa.func.sum(p.amount))
        .select_from(
            lt.postings.join(lt.entries, e.id == p.entry_id).outerjoin(
                original, original.c.id == e.refers_to
            )
        )
        .where(on_member, sa.or_(credit, reversal))
        .group_by(p.account)
    )
    totals: dict[str, int] = {}
    for account, amount in conn.execute(query):
        owner = Account.parse(account).owner
        assert owner is not None
        totals[owner] = totals.get(owner, 0) + int(amount)
    return {member: max(0, points) for member, points in totals.items()}


# -- the member's tier -----------------------------------------------------------------------------


def current_tier(conn: Connection, member: str) -> Tier | None:
    """The tier the member holds now; ``None`` if the programme has no levels."""
    levels = tier_levels(conn)
    if not levels:
        return None
    latest = _latest(conn, member)
    if latest is None:
        return levels[0]
    return _by_name(levels, latest.tier)


def current_floor(conn: Connection, member: str) -> str | None:
    """The manual floor in force for the member, if any."""
    latest = _latest(conn, member)
    return None if latest is None else latest.floor


def upgrade_after_earn(
    conn: Connection, member: str, *, at: datetime, now: datetime
) -> TierChange | None:
    """Raise the member's tier at once if its points in the window ending ``at`` reach a higher
    level; never lowers it (that waits for the review)."""
    levels = tier_levels(conn)
    if not levels:
        return None
    latest = _latest(conn, member)
    held = levels[0] if latest is None else _by_name(levels, latest.tier)
    points = points_earned(conn, member, at)
    reached = tier_for(points, levels)
    if reached.rank <= held.rank:
        return None
    floor = None if latest is None else latest.floor
    reason = f"upgrade: {points} points earned in 12 months reach {reached.name}"
    return _record(conn, member, reached.name, held.name, floor, reason, now, None)


def review_tiers(conn: Connection, now: datetime) -> list[TierChange]:
    """The periodic review: set every open member's tier to what its points and floor give now.

    Upgrades anything the earn path missed and applies the downgrades it never makes. Members whose
    tier is right are left alone, so running the review twice changes nothing the second time.
    """
    levels = tier_levels(conn)
    if not levels:
        return []
    members = list(
        conn.scalars(
            sa.select(t.members.c.id).where(t.members.c.status != "closed").order_by(t.members.c.id)
        )
    )
    points = _points_earned(conn, now, None)
    latest = _latest_by_member(conn)
    changes = []
    for member in members:
        row = latest.get(member)
        held = levels[0] if row is None else _by_name(levels, row.tier)
        floor = None if row is None else row.floor
        computed = tier_for(points.get(member, 0), levels)
        target = _at_least(levels, computed, floor)
        if target.name == held.name:
            continue
        direction = "upgrade" if target.rank > held.rank else "downgrade"
        reason = f"review {direction}: {points.get(member, 0)} points earned in 12 months"
        if floor is not None and target.name == floor and computed.rank < target.rank:
            reason += f", floor {floor}"
        changes.append(_record(conn, member, target.name, held.name, floor, reason, now, None))
    return changes


def set_floor(
    conn: Connection, member: str, tier: str | None, reason: str, by: str, now: datetime
) -> TierChange:
    """Keep the member at or above ``tier`` (``None`` lifts the floor), for a recorded reason.

    A floor above the current tier raises it at once; lifting a floor lowers nothing until the
    next review.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidRequest("a tier floor needs a reason")
    if not isinstance(by, str) or not by.strip():
        raise InvalidRequest("a tier floor names who set it")
    levels = tier_levels(conn)
    if not levels:
        raise InvalidRequest("the programme has no tier levels")
    if tier is not None:
        _by_name(levels, tier)
    _require_member(conn, member)
    latest = _latest(conn, member)
    held = levels[0] if latest is None else _by_name(levels, latest.tier)
    target = _at_least(levels, held, tier)
    what = f"floor {tier}" if tier is not None else "floor lifted"
    return _record(conn, member, target.name, held.name, tier, f"{what}: {reason}", now, by)


def tier_status(conn: Connection, member: str, now: datetime) -> TierStatus:
    """The member's tier, its points in the window, and the points missing to the next level."""
    levels = tier_levels(conn)
    if not levels:
        raise InvalidRequest("the programme has no tier levels")
    _require_member(conn, member)
    latest = _latest(conn, member)
    held = levels[0] if latest is None else _by_name(levels, latest.tier)
    points = points_earned(conn, member, now)
    above = [tier for tier in levels if tier.rank > held.rank]
    next_tier = above[0] if above else None
    missing = 0 if next_tier is None else max(0, next_tier.threshold - points)
    floor = None if latest is None else latest.floor
    return TierStatus(member, held, floor, points, window_start(now), next_tier, missing)


def tier_history(conn: Connection, member: str) -> list[TierChange]:
    """Every tier change of the member, oldest first."""
    rows = conn.execute(
        sa.select(t.tier_history)
        .where(t.tier_history.c.member_id == member)
        .order_by(t.tier_history.c.changed_at, t.tier_history.c.id)
    ).all()
    changes, previous = [], None
    for row in rows:
        changes.append(
            TierChange(
                member,
                row.tier,
                previous,
                row.floor,
                row.reason,
                row.changed_at,
                row.changed_by,
            )
        )
        previous = row.tier
    return changes


# -- internals -------------------------------------------------------------------------------------


def _by_name(levels: Sequence[Tier], name: str) -> Tier:
    for tier in levels:
        if tier.name == name:
            return tier
    raise InvalidRequest(f"unknown tier {name!r}")


def _at_least(levels: Sequence[Tier], tier: Tier, floor: str | None) -> Tier:
    """``tier``, or the floor if that ranks higher."""
    if floor is None:
        return tier
    floor_tier = _by_name(levels, floor)
    return floor_tier if floor_tier.rank > tier.rank else tier


def _latest(conn: Connection, member: str) -> sa.Row | None:
    return conn.execute(
        sa.select(t.tier_history)
        .where(t.tier_history.c.member_id == member)
        .order_by(t.tier_history.c.changed_at.desc(), t.tier_history.c.id.desc())
        .limit(1)
    ).first()


def _latest_by_member(conn: Connection) -> dict[str, sa.Row]:
    """The latest history row of every member that has one."""
    h = t.tier_history.c
    rows = conn.execute(sa.select(t.tier_history).order_by(h.member_id, h.changed_at, h.id))
    return {row.member_id: row for row in rows}


def _require_member(conn: Connection, member: str) -> None:
    members.member(conn, member)


def _record(
    conn: Connection,
    member: str,
    tier: str,
    previous: str | None,
    floor: str | None,
    reason: str,
    now: datetime,
    by: str | None,
) -> TierChange:
    # One statement whatever the values (a batch may record thousands): compiled once, cached.
    conn.execute(
        t.tier_history.insert(),
        {
            "member_id": member,
            "tier": tier,
            "floor": floor,
            "reason": reason,
            "changed_at": now,
            "changed_by": by,
        },
    )
    return TierChange(member, tier, previous, floor, reason, now, by)
