"""When points expire: the programme's expiry policy, inactivity expiry, and "expiring soon".

Two rules, either or both (PRODUCT.md §6, issue 4 point 8):

- **Lot age.** A lot expires ``lot_months`` calendar months after it was earned (its business
  time). With a yearly cut-off (e.g. 30 September) the lot lives on until the first cut-off on or
  after that age limit, so members are told one date a year instead of one per purchase. A cut-off
  day ends at midnight Europe/Paris: a lot "expiring on 30 September" is spendable all that day.
  The age is stamped on the lot when it is earned (:func:`lot_expiry`); the kernel's
  ``jobs.expire_lots`` sweeps what is due, and attributes breakage to each lot's funder.
- **Inactivity.** A member with no earning or spending (EARN, ENGAGE, BURN, CAPTURE) for
  ``inactivity_months`` loses every point at once (:func:`expire_inactive`). Activity is read from
  the journal itself, never from a cache that a path through the kernel could miss; enrolment
  counts as the start, so a new member is not "inactive since forever".

Calendar arithmetic runs in the programme's time zone, Europe/Paris, as settlement periods do.
The policy lives in ``program_settings``; this module also holds the small typed accessors to that
table that the other rule modules use.

Every function works inside the caller's transaction and takes the time explicitly.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger import tables as lt
from ledger.errors import InvalidRequest
from ledger.model import EntryKind, member_account
from ledger.repository import SqlLedgerStore
from ledger.service import SYSTEM, Ledger
from partners import tables as t

#: The programme's calendar: caps, cut-offs, windows and KPI days are Paris days and months.
PROGRAM_TZ = ZoneInfo("Europe/Paris")

#: The entries that count as a member's activity: earning or spending (PRODUCT.md §6).
ACTIVITY_EARN_KINDS = (EntryKind.EARN.value, EntryKind.ENGAGE.value)
ACTIVITY_SPEND_KINDS = (EntryKind.BURN.value, EntryKind.CAPTURE.value)

#: ``program_settings`` name of the expiry policy.
EXPIRY_SETTING = "expiry_policy"

#: Reason written on the EXPIRE entry of an inactivity expiry.
INACTIVITY_REASON = "inactivity"


# -- programme settings ----------------------------------------------------------------------------


def read_setting(conn: Connection, name: str, default: Any = None) -> Any:
    """The JSON value of a programme setting, or ``default`` when it was never set."""
    row = conn.execute(
        sa.select(t.program_settings.c.value).where(t.program_settings.c.name == name)
    ).first()
    return default if row is None else row.value


def write_setting(conn: Connection, name: str, value: Any, now: datetime) -> None:
    """Set a programme setting (insert or replace)."""
    updated = conn.execute(
        t.program_settings.update()
        .where(t.program_settings.c.name == name)
        .values(value=value, updated_at=now)
        .returning(t.program_settings.c.name)
    ).first()
    if updated is None:
        conn.execute(t.program_settings.insert().values(name=name, value=value, updated_at=now))


# -- calendar --------------------------------------------------------------------------------------


def add_months(moment: datetime, months: int) -> datetime:
    """``moment`` plus ``months`` calendar months in Paris time (the day clamped to the month)."""
    local = _aware(moment, "moment").astimezone(PROGRAM_TZ)
    index = local.year * 12 + local.month - 1 + months
    year, month = divmod(index, 12)
    day = min(local.day, calendar.monthrange(year, month + 1)[1])
    return local.replace(year=year, month=month + 1, day=day).astimezone(UTC)


def period_bounds(moment: datetime, unit: str) -> tuple[datetime, datetime]:
    """The Paris ``day``, ``month`` or ``year`` containing ``moment``, half-open, in UTC."""
    local = _aware(moment, "moment").astimezone(PROGRAM_TZ).date()
    if unit == "day":
        start, end = local, local + timedelta(days=1)
    elif unit == "month":
        start = local.replace(day=1)
        end = date(start.year + start.month // 12, start.month % 12 + 1, 1)
    elif unit == "year":
        start, end = date(local.year, 1, 1), date(local.year + 1, 1, 1)
    else:
        raise InvalidRequest(f"unknown period {unit!r}")
    return paris_midnight(start), paris_midnight(end)


def paris_midnight(day: date) -> datetime:
    """The instant a Paris calendar day begins, in UTC."""
    return datetime.combine(day, time(0), tzinfo=PROGRAM_TZ).astimezone(UTC)


# -- the policy ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExpiryPolicy:
    """The programme's expiry rules; each may be switched off with ``None``."""

    lot_months: int | None = 36
    """Age of a lot, in calendar months, at which what is left of it expires; ``None``: never."""
    cutoff: tuple[int, int] | None = None
    """(month, day) of a yearly cut-off: a lot expires at the end of the first one on/after its
    age limit; ``None``: at the age limit itself."""
    inactivity_months: int | None = None
    """Months without earning or spending after which every point expires; ``None``: off."""

    def __post_init__(self) -> None:
        for name in ("lot_months", "inactivity_months"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 1200
            ):
                raise InvalidRequest(f"{name} must be a whole number of months (1–1200) or None")
        if self.cutoff is not None:
            month, day = self.cutoff
            # A cut-off must exist every year: 29 February does not.
            try:
                date(2001, month, day)
            except (TypeError, ValueError):
                raise InvalidRequest(
                    f"cut-off {self.cutoff!r} is not a day of every year"
                ) from None
            if self.lot_months is None:
                raise InvalidRequest("a cut-off snaps a lot age: give lot_months too")

    def to_json(self) -> dict[str, Any]:
        cutoff = None if self.cutoff is None else f"{self.cutoff[0]:02d}-{self.cutoff[1]:02d}"
        return {
            "lot_months": self.lot_months,
            "cutoff": cutoff,
            "inactivity_months": self.inactivity_months,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ExpiryPolicy:
        cutoff = value.get("cutoff")
        parsed = None
        if cutoff is not None:
            month, day = cutoff.split("-")
            parsed = (int(month), int(day))
        return cls(
            lot_months=value.get("lot_months"),
            cutoff=parsed,
            inactivity_months=value.get("inactivity_months"),
        )


def expiry_policy(conn: Connection) -> ExpiryPolicy:
    """The programme's expiry policy (36-month lots, no cut-off, no inactivity rule if unset)."""
    stored = read_setting(conn, EXPIRY_SETTING)
    return ExpiryPolicy() if stored is None else ExpiryPolicy.from_json(stored)


def set_expiry_policy(conn: Connection, policy: ExpiryPolicy, now: datetime) -> ExpiryPolicy:
    """Store the programme's expiry policy; lots already earned keep the expiry they were given."""
    write_setting(conn, EXPIRY_SETTING, policy.to_json(), now)
    return policy


def lot_expiry(earned_at: datetime, policy: ExpiryPolicy) -> datetime | None:
    """When a lot earned at ``earned_at`` expires under ``policy``; ``None``: never."""
    if policy.lot_months is None:
        return None
    limit = add_months(earned_at, policy.lot_months)
    if policy.cutoff is None:
        return limit
    month, day = policy.cutoff
    year = limit.astimezone(PROGRAM_TZ).year
    while True:
        # The cut-off day ends at the next Paris midnight.
        end_of_cutoff = paris_midnight(date(year, month, day) + timedelta(days=1))
        if end_of_cutoff >= limit:
            return end_of_cutoff
        year += 1


# -- activity --------------------------------------------------------------------------------------


def activity_events() -> sa.Subquery:
    """Every earn or spend of every member as ``(member, at)`` rows, ``at`` its business time.

    Earns are found through the lots they opened, spends through the lots they consumed, so the
    member comes from a column rather than from parsing account codes in SQL.
    """
    earned = (
        sa.select(lt.lots.c.member.label("member"), lt.entries.c.business_time.label("at"))
        .select_from(lt.lots.join(lt.entries, lt.entries.c.id == lt.lots.c.opened_by))
        .where(lt.entries.c.kind.in_(ACTIVITY_EARN_KINDS))
    )
    spent = (
        sa.select(lt.lots.c.member.label("member"), lt.entries.c.business_time.label("at"))
        .select_from(
            lt.lot_moves.join(lt.entries, lt.entries.c.id == lt.lot_moves.c.entry_id).join(
                lt.lots, lt.lots.c.id == lt.lot_moves.c.lot_id
            )
        )
        .where(lt.entries.c.kind.in_(ACTIVITY_SPEND_KINDS))
    )
    return sa.union_all(earned, spent).subquery("activity")


def last_activity(
    conn: Connection, members: Iterable[str] | None = None, *, until: datetime | None = None
) -> dict[str, datetime]:
    """Each member's last earn or spend (business time, at most ``until``); absent if none."""
    if members is None:
        return _last_activity(conn, None, until)
    wanted, found = list(members), {}
    for start in range(0, len(wanted), 400):
        found.update(_last_activity(conn, wanted[start : start + 400], until))
    return found


def _last_activity(
    conn: Connection, members: Sequence[str] | None, until: datetime | None
) -> dict[str, datetime]:
    if members is None:
        events = activity_events()
        query = sa.select(events.c.member, sa.func.max(events.c.at)).group_by(events.c.member)
        if until is not None:
            query = query.where(events.c.at <= until)
        return {member: _utc(at) for member, at in conn.execute(query)}
    # The same events, read from the named members' lots: the kinds are tested inside the
    # aggregate so that the database starts from the lots' member index, not from every entry
    # of those kinds.
    lots, entries, moves = lt.lots.c, lt.entries.c, lt.lot_moves.c
    found: dict[str, datetime] = {}
    for kinds, joined in (
        (ACTIVITY_EARN_KINDS, lt.lots.join(lt.entries, entries.id == lots.opened_by)),
        (
            ACTIVITY_SPEND_KINDS,
            lt.lot_moves.join(lt.lots, lots.id == moves.lot_id).join(
                lt.entries, entries.id == moves.entry_id
            ),
        ),
    ):
        counts = entries.kind.in_(kinds)
        if until is not None:
            counts = sa.and_(counts, entries.business_time <= until)
        latest = sa.func.max(sa.case((counts, entries.business_time), else_=None))
        query = (
            sa.select(lots.member, latest)
            .select_from(joined)
            .where(lots.member.in_(list(members)))
            .group_by(lots.member)
        )
        for member, at in conn.execute(query):
            if at is not None:
                at = _utc(at)
                found[member] = max(at, found.get(member, at))
    return found


def _activity_start(conn: Connection, members: Sequence[str]) -> dict[str, datetime]:
    """When each member's inactivity clock starts: last activity, or enrolment if later."""
    last = last_activity(conn, members)
    enrolled = dict(
        conn.execute(
            sa.select(t.members.c.id, t.members.c.enrolled_at).where(t.members.c.id.in_(members))
        ).all()
    )
    starts = {}
    for member in members:
        known = [moment for moment in (last.get(member), enrolled.get(member)) if moment]
        if known:
            starts[member] = max(known)
    return starts


def inactivity_deadline(
    conn: Connection, member: str, policy: ExpiryPolicy | None = None
) -> datetime | None:
    """When all the member's points expire unless it earns or spends first; ``None``: never."""
    policy = policy or expiry_policy(conn)
    if policy.inactivity_months is None:
        return None
    start = _activity_start(conn, [member]).get(member)
    return None if start is None else add_months(start, policy.inactivity_months)


# -- inactivity expiry -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InactivityExpiry:
    """Points of one inactive member moved to breakage."""

    member: str
    """The member whose points expired."""
    inactive_since: datetime
    """Its last earn or spend (or enrolment)."""
    points: int
    """Available and pending points expired."""
    entry_id: Any
    """The EXPIRE entry (its lot moves keep each funder's share known)."""


def expire_inactive(
    conn: Connection, now: datetime, *, ledger: Ledger | None = None, limit: int | None = None
) -> list[InactivityExpiry]:
    """Expire every point of each member inactive for the policy's months, by ``now``.

    One EXPIRE entry per member (the kernel's ``forfeit``), consuming every lot that holds points,
    so breakage stays attributed to the partners that funded them. Held points are left alone
    until their hold is captured or voided. Idempotent by state: a member with nothing left is not
    touched again, and a re-run at the same ``now`` replays the same entries. Only enrolled members
    are swept, and only those whose enrolment and recorded activity are old enough are read from
    the journal (:func:`_possibly_inactive`), so a daily run costs little when few are inactive.
    """
    policy = expiry_policy(conn)
    if policy.inactivity_months is None:
        return []
    holders = _possibly_inactive(conn, now, policy.inactivity_months)
    starts = _activity_start(conn, holders)
    kernel = Ledger(ledger.policy if ledger is not None else None, clock=lambda: now)
    store = SqlLedgerStore(conn)
    expired = []
    for member in holders:
        start = starts.get(member)
        if start is None or add_months(start, policy.inactivity_months) > now:
            continue
        accounts = [member_account(member, "available"), member_account(member, "pending")]
        points = sum(store.balances(accounts).values())
        if points == 0:
            continue  # only held points are left: they expire once the hold is voided
        booking = kernel.forfeit(
            store,
            SYSTEM,
            f"inactivity:{member}:{_stamp(now)}",
            member=member,
            business_time=now,
            reason=f"{INACTIVITY_REASON} since {_stamp(start)}",
        )
        expired.append(InactivityExpiry(member, start, points, booking.entry.id))
        if limit is not None and len(expired) >= limit:
            break
    return expired


def _possibly_inactive(conn: Connection, now: datetime, months: int) -> list[str]:
    """The enrolled members holding points whose inactivity clock may have run out by ``now``.

    A superset, sorted, for :func:`expire_inactive` to decide from the journal. It skips only
    members whose enrolment or ``last_activity_at`` is too recent: that column is written only
    after an earn or spend is booked, at its business time, so it is never later than the
    journal's last activity, and a member it shows active is active. (It may be earlier — a
    spend booked through the kernel alone does not touch it — which only keeps a member in.)
    """
    m, lots = t.members.c, lt.lots.c
    # ``months`` calendar months span at least 28 days each, less an hour of summer time.
    bound = now - timedelta(days=28 * months) + timedelta(days=1)
    holds_points = sa.select(lots.member).where(lots.member == m.id, lots.remaining > 0).exists()
    rows = conn.execute(
        sa.select(m.id, m.enrolled_at, m.last_activity_at)
        .where(
            m.enrolled_at <= bound,
            sa.or_(m.last_activity_at.is_(None), m.last_activity_at <= bound),
            holds_points,
        )
        .order_by(m.id)
    )
    return [
        row.id
        for row in rows
        if add_months(max(filter(None, (row.enrolled_at, row.last_activity_at))), months) <= now
    ]


# -- what expires when -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExpiringPoints:
    """Points of a member that expire at one instant unless spent first."""

    expires_at: datetime
    """When they expire."""
    points: int
    """How many."""
    reason: str
    """``lot age`` or ``inactivity``."""


def expiring_soon(
    conn: Connection, member: str, now: datetime, days: int = 90
) -> list[ExpiringPoints]:
    """What the member's points expire when, up to ``days`` ahead, earliest first.

    Lots still pending are included (they will be the member's), as are lots already past their
    expiry that the job has not swept yet. If the inactivity deadline falls inside the horizon,
    everything not expiring before it is shown expiring then.
    """
    if isinstance(days, bool) or not isinstance(days, int) or days < 0:
        raise InvalidRequest("days must be a whole number ≥ 0")
    horizon = now + timedelta(days=days)
    deadline = inactivity_deadline(conn, member)
    rows = conn.execute(
        sa.select(lt.lots.c.expires_at, lt.lots.c.remaining).where(
            lt.lots.c.member == member, lt.lots.c.remaining > 0
        )
    )
    grouped: dict[tuple[datetime, str], int] = {}
    for expires_at, remaining in rows:
        at, reason = (None if expires_at is None else _utc(expires_at)), "lot age"
        if deadline is not None and (at is None or at >= deadline):
            at, reason = deadline, "inactivity"
        if at is not None and at <= horizon:
            grouped[(at, reason)] = grouped.get((at, reason), 0) + remaining
    return [ExpiringPoints(at, points, reason) for (at, reason), points in sorted(grouped.items())]


# -- internals -------------------------------------------------------------------------------------


def _aware(moment: datetime, name: str) -> datetime:
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise InvalidRequest(f"{name} must be a timezone-aware datetime")
    return moment


def _utc(moment: datetime) -> datetime:
    """Times read back through a UNION lose the column type on SQLite: make them aware UTC."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
