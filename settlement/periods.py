"""The settlement calendar: half-open periods of Paris days, ISO weeks or calendar months.

A period is ``[start, end)`` where both bounds are midnights in Europe/Paris (PRODUCT.md §7),
stored and compared as UTC instants. Midnight exists on every Paris day (the clocks change at
02:00 and 03:00), so the bounds are always well defined; a day around a DST change simply lasts 23
or 25 hours, and a month containing one is an hour shorter or longer.

Invariants (tested with Hypothesis in ``tests/unit/test_settlement_math.py``):

- the periods of one kind tile time: ``p.next().start == p.end`` and ``p.previous().end ==
  p.start``, with no gap and no overlap;
- every instant lies in exactly one period of each kind: ``period_containing(t, kind).contains(t)``;
- a label names one period: ``parse_period(p.label) == p``.

An entry belongs to the period that contains its *ledger* time (``booked_at``); it is priced by its
*business* time. Nothing in this module touches a database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from settlement.errors import InvalidPeriod

#: The programme's calendar: periods are Paris days, weeks and months.
PARIS = ZoneInfo("Europe/Paris")


class PeriodKind(StrEnum):
    """How long a settlement period is."""

    DAY = "day"
    WEEK = "week"
    """ISO week: Monday 00:00 to the next Monday 00:00, Paris time."""
    MONTH = "month"
    """Calendar month: the default (PRODUCT.md §7)."""


_LABELS = {
    PeriodKind.DAY: re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})"),
    PeriodKind.WEEK: re.compile(r"([0-9]{4})-W([0-9]{2})"),
    PeriodKind.MONTH: re.compile(r"([0-9]{4})-([0-9]{2})"),
}


@dataclass(frozen=True, slots=True)
class Period:
    """One settlement period, named by its kind and its first Paris day."""

    kind: PeriodKind
    """Day, ISO week or calendar month."""
    first_day: date
    """The Paris calendar day the period begins (a Monday for weeks, the 1st for months)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", PeriodKind(self.kind))
        if self.kind is PeriodKind.WEEK and self.first_day.weekday() != 0:
            raise InvalidPeriod(f"a weekly period starts on a Monday, not {self.first_day}")
        if self.kind is PeriodKind.MONTH and self.first_day.day != 1:
            raise InvalidPeriod(f"a monthly period starts on the 1st, not {self.first_day}")

    @property
    def end_day(self) -> date:
        """The Paris day the next period begins."""
        if self.kind is PeriodKind.DAY:
            return self.first_day + timedelta(days=1)
        if self.kind is PeriodKind.WEEK:
            return self.first_day + timedelta(days=7)
        year, month = divmod(self.first_day.year * 12 + self.first_day.month, 12)
        return date(year, month + 1, 1)

    @property
    def start(self) -> datetime:
        """First instant of the period (inclusive), in UTC."""
        return paris_midnight(self.first_day)

    @property
    def end(self) -> datetime:
        """First instant after the period (exclusive), in UTC: the cut-off."""
        return paris_midnight(self.end_day)

    @property
    def label(self) -> str:
        """``2026-03`` (month), ``2026-W10`` (ISO week) or ``2026-03-15`` (day)."""
        if self.kind is PeriodKind.MONTH:
            return f"{self.first_day.year:04d}-{self.first_day.month:02d}"
        if self.kind is PeriodKind.WEEK:
            year, week, _ = self.first_day.isocalendar()
            return f"{year:04d}-W{week:02d}"
        return self.first_day.isoformat()

    def contains(self, moment: datetime) -> bool:
        """Whether an (aware) instant lies in ``[start, end)``."""
        return self.start <= _aware(moment) < self.end

    def next(self) -> Period:
        return Period(self.kind, self.end_day)

    def previous(self) -> Period:
        return period_containing(self.start - timedelta(microseconds=1), self.kind)

    def month_starts(self) -> list[date]:
        """The first days of Paris months inside the period (when monthly fees fall due)."""
        day = self.first_day.replace(day=1)
        if day < self.first_day:
            day = Period(PeriodKind.MONTH, day).end_day
        starts = []
        while day < self.end_day:
            starts.append(day)
            day = Period(PeriodKind.MONTH, day).end_day
        return starts

    def __str__(self) -> str:
        return self.label


def period_containing(moment: datetime, kind: PeriodKind | str = PeriodKind.MONTH) -> Period:
    """The period of ``kind`` that contains an instant (an entry's ``booked_at``)."""
    local = _aware(moment).astimezone(PARIS).date()
    kind = PeriodKind(kind)
    if kind is PeriodKind.DAY:
        return Period(kind, local)
    if kind is PeriodKind.WEEK:
        return Period(kind, local - timedelta(days=local.weekday()))
    return Period(kind, local.replace(day=1))


def parse_period(label: str) -> Period:
    """The period a label names: ``2026-03``, ``2026-W10`` or ``2026-03-15``."""
    if not isinstance(label, str):
        raise InvalidPeriod(f"a period label is text, not {type(label).__name__}")
    for kind, pattern in _LABELS.items():
        match = pattern.fullmatch(label)
        if match is None:
            continue
        numbers = [int(part) for part in match.groups()]
        try:
            if kind is PeriodKind.DAY:
                return Period(kind, date(*numbers))
            if kind is PeriodKind.WEEK:
                return Period(kind, date.fromisocalendar(numbers[0], numbers[1], 1))
            return Period(kind, date(numbers[0], numbers[1], 1))
        except ValueError:
            break
    raise InvalidPeriod(f"{label!r} names no period (2026-03, 2026-W10 or 2026-03-15)")


def paris_midnight(day: date) -> datetime:
    """The instant a Paris calendar day begins, in UTC."""
    return datetime.combine(day, time(0), tzinfo=PARIS).astimezone(UTC)


def _aware(moment: datetime) -> datetime:
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise InvalidPeriod("a period contains aware instants only; give a timezone")
    return moment
