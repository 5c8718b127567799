"""Reports for auditors and finance (PRODUCT.md §7, §8): trial balance, liability, breakage,
exposure.

Each report is a pure function of a :class:`~sqlalchemy.engine.Connection`: it reads facts only
(postings, lots and lot moves, leaves, contracts), never the caches the verifier recomputes
(``balances``, ``lots.remaining``), so a report agrees with the journal even where a cache was
tampered with. Every sum is computed by the database, one ``GROUP BY`` per report, whatever the
number of entries; only the grouped rows travel, and :func:`trial_balance_lines` streams them.

- **Trial balance** at a tree size N: every account of both books summed over the entries whose
  leaves are among the first N leaves of the current log (plus every entry of the logs it
  succeeded, whose final checkpoints its first leaf quotes). By default N is the latest signed
  checkpoint's size, so the report covers a proven prefix. Each book must sum to zero.
- **Outstanding liability**: the points still in lots, by the partner that funded them (or
  ``program``) or by vintage, the Paris month the points were earned. A lot's outstanding points
  are its amount plus its moves; a transfer's new lot keeps the funder and ``earned_at`` of the lot
  it came from, so vintages survive transfers.
- **Breakage**: points taken out of lots by EXPIRE entries (expiry and forfeiture), attributed to
  the lot's funder, per Paris month of ledger time (the settlement rule: a period is assigned by
  ledger time).
- **Exposure**: outstanding points funded by a partner × that partner's reimbursement price ``q``
  in the contract version in force, rounded once per line to the cent in the contract's rounding
  mode (:func:`ledger.numbers.round_cents`, as settlement rounds its lines).

Sign convention: a positive balance is a debit, a negative one a credit (the ledger's own: points
and money flow from a negative source to a positive destination).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger import tables as lt
from ledger.canonical import format_decimal, format_timestamp
from ledger.errors import InvalidRequest
from ledger.logstore import SqlLogStore
from ledger.model import PROGRAM, AccountKind, Book, EntryKind
from ledger.numbers import format_cents, round_cents
from partners.directory import SqlDirectory
from settlement.periods import Period, PeriodKind, parse_period, period_containing

TrialBalanceBy = Literal["account", "kind"]
LiabilityBy = Literal["partner", "vintage"]

#: Rows fetched per round trip when a report streams its lines.
_STREAM_ROWS = 1000

_EUR_KINDS = tuple(kind.value for kind in AccountKind if kind.book is Book.EUR)


class InvalidTreeSize(InvalidRequest):
    """A tree size that names no prefix of the log: negative, or beyond its last leaf."""

    code = "invalid-tree-size"

    def __init__(self, size: int, log_size: int) -> None:
        super().__init__(
            f"tree size {size} is not between 0 and the log's size {log_size}"
            if size >= 0
            else f"tree size {size} is negative"
        )
        self.size = size
        self.log_size = log_size

    def fields(self) -> dict[str, Any]:
        return {"size": self.size, "log_size": self.log_size}


# -- the prefix of the log a report covers ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cut:
    """A prefix of the verifiable log: the entries a report at a tree size covers."""

    log: str | None
    """Origin of the current log; ``None`` before ``coalition init``."""
    size: int
    """Leaves of the current log covered: indices ``0 … size − 1``."""
    log_size: int
    """Leaves the current log holds now."""
    checkpoint_size: int | None
    """Size of the latest signed checkpoint, if any."""
    root: bytes | None
    """Root of the signed checkpoint at exactly ``size``, when one was signed there."""
    earlier_logs: tuple[str, ...]
    """Logs the current one succeeded (after key rotations): all their leaves are covered."""

    def covers(self) -> sa.ColumnElement[bool]:
        """A condition on ``leaves`` that holds for the leaves inside the cut."""
        leaf = lt.leaves.c
        inside = sa.and_(leaf.log == self.log, leaf.idx < self.size)
        return sa.or_(leaf.log.in_(self.earlier_logs), inside) if self.earlier_logs else inside

    def to_json(self) -> dict[str, Any]:
        return {
            "log": self.log,
            "size": self.size,
            "log_size": self.log_size,
            "checkpoint_size": self.checkpoint_size,
            "root": None if self.root is None else self.root.hex(),
            "earlier_logs": list(self.earlier_logs),
        }


def log_cut(conn: Connection, size: int | None = None) -> Cut:
    """The prefix of the current log of ``size`` leaves (default: the latest checkpoint's size).

    Raises :class:`InvalidTreeSize` for a negative size or one beyond the log's last leaf.
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
        raise InvalidRequest(f"a tree size is an integer, not {size!r}")
    if size is not None and size < 0:
        raise InvalidTreeSize(size, 0)
    store = SqlLogStore(conn)
    current = store.current_log()
    if current is None:
        if size:
            raise InvalidTreeSize(size, 0)
        return Cut(None, 0, 0, None, None, ())
    leaf = lt.leaves.c
    last = conn.scalar(sa.select(sa.func.max(leaf.idx)).where(leaf.log == current))
    log_size = 0 if last is None else int(last) + 1
    latest = store.checkpoint(current)
    checkpoint_size = None if latest is None else latest.size
    if size is None:
        size = checkpoint_size or 0
    if size > log_size:
        raise InvalidTreeSize(size, log_size)
    signed = store.checkpoint(current, size) if size else None
    previous = {origin: before for origin, _, before in store.logs()}
    earlier: list[str] = []
    origin = previous.get(current)
    while origin is not None and origin not in earlier:
        earlier.append(origin)
        origin = previous.get(origin)
    return Cut(
        current,
        size,
        log_size,
        checkpoint_size,
        None if signed is None else signed.root,
        tuple(earlier),
    )


# -- trial balance ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrialBalanceLine:
    """One account (or account kind) of the trial balance."""

    key: str
    """The account code, or the account kind when grouped by kind."""
    book: Book
    """POINTS (amounts in points) or EUR (amounts in cents)."""
    balance: int
    """Signed sum of the covered postings: positive a debit, negative a credit."""

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"key": self.key, "book": self.book.value, "balance": self.balance}
        if self.book is Book.EUR:
            found["balance_eur"] = format_cents(self.balance)
        return found


@dataclass(frozen=True, slots=True)
class BookTotal:
    """A book's column totals: Σ debit balances and Σ credit balances of its accounts."""

    book: Book
    """POINTS or EUR."""
    debits: int
    """Σ of the positive account balances."""
    credits: int
    """Σ of the magnitudes of the negative account balances."""
    accounts: int
    """Accounts of the book with a covered posting."""

    @property
    def net(self) -> int:
        return self.debits - self.credits

    @property
    def balanced(self) -> bool:
        """Double entry: every entry sums to zero in each book, so the book does too."""
        return self.net == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "book": self.book.value,
            "debits": self.debits,
            "credits": self.credits,
            "net": self.net,
            "accounts": self.accounts,
            "balanced": self.balanced,
        }


@dataclass(frozen=True, slots=True)
class TrialBalance:
    """Every account of both books over a prefix of the log, and each book's totals."""

    cut: Cut
    """The prefix of the log covered."""
    entries: int
    """Journal entries covered (leaves of the prefix that are entries, not audit events)."""
    by: TrialBalanceBy
    """Lines per account or per account kind."""
    lines: tuple[TrialBalanceLine, ...]
    """POINTS lines then EUR lines, each in key order."""
    totals: tuple[BookTotal, ...]
    """One per book, POINTS then EUR, present even when a book has no posting."""

    @property
    def balanced(self) -> bool:
        return all(total.balanced for total in self.totals)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.cut.to_json(),
            "entries": self.entries,
            "by": self.by,
            "balanced": self.balanced,
            "totals": [total.to_json() for total in self.totals],
            "lines": [line.to_json() for line in self.lines],
        }


def _book_of(kind: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
    return sa.case((kind.in_(_EUR_KINDS), Book.EUR.value), else_=Book.POINTS.value)


def _account_balances(cut: Cut) -> sa.Subquery:
    """(account, book, balance) of every account with a posting inside the cut."""
    p, leaf, a = lt.postings.c, lt.leaves.c, lt.accounts.c
    summed = (
        sa.select(p.account.label("account"), sa.func.sum(p.amount).label("balance"))
        .select_from(lt.postings.join(lt.leaves, leaf.entry_id == p.entry_id))
        .where(cut.covers())
        .group_by(p.account)
        .subquery()
    )
    return (
        sa.select(
            summed.c.account, a.kind.label("kind"), _book_of(a.kind).label("book"), summed.c.balance
        )
        .select_from(summed.join(lt.accounts, a.code == summed.c.account))
        .subquery()
    )


def trial_balance_lines(
    conn: Connection, cut: Cut, by: TrialBalanceBy = "account"
) -> Iterator[TrialBalanceLine]:
    """The trial balance's lines, streamed from the database in (book, key) order."""
    if by not in ("account", "kind"):
        raise InvalidRequest(f"a trial balance is by account or by kind, not {by!r}")
    if cut.log is None:
        return
    balances = _account_balances(cut)
    if by == "account":
        query = sa.select(balances.c.account, balances.c.book, balances.c.balance).order_by(
            balances.c.book.desc(), balances.c.account
        )
    else:
        query = (
            sa.select(balances.c.kind, balances.c.book, sa.func.sum(balances.c.balance))
            .group_by(balances.c.kind, balances.c.book)
            .order_by(balances.c.book.desc(), balances.c.kind)
        )
    # POINTS sorts after EUR, hence the descending book: POINTS lines first, as in the totals.
    for key, book, balance in conn.execute(query.execution_options(yield_per=_STREAM_ROWS)):
        yield TrialBalanceLine(str(key), Book(book), int(balance))


def book_totals(conn: Connection, cut: Cut) -> tuple[BookTotal, ...]:
    """Σ debit and Σ credit account balances per book, computed in the database."""
    found: dict[Book, BookTotal] = {}
    if cut.log is not None:
        balances = _account_balances(cut)
        bal = balances.c.balance
        query = sa.select(
            balances.c.book,
            sa.func.sum(sa.case((bal > 0, bal), else_=0)),
            sa.func.sum(sa.case((bal < 0, -bal), else_=0)),
            sa.func.count(),
        ).group_by(balances.c.book)
        for book, debits, credits, accounts in conn.execute(query):
            found[Book(book)] = BookTotal(Book(book), int(debits), int(credits), int(accounts))
    return tuple(found.get(book, BookTotal(book, 0, 0, 0)) for book in (Book.POINTS, Book.EUR))


def covered_entries(conn: Connection, cut: Cut) -> int:
    """Journal entries whose leaves lie inside the cut."""
    if cut.log is None:
        return 0
    leaf = lt.leaves.c
    query = sa.select(sa.func.count()).where(cut.covers(), leaf.entry_id.is_not(None))
    return int(conn.scalar(query) or 0)


def trial_balance(
    conn: Connection, size: int | None = None, *, by: TrialBalanceBy = "account"
) -> TrialBalance:
    """Both books at tree size ``size`` (default: the latest signed checkpoint's size)."""
    cut = log_cut(conn, size)
    return TrialBalance(
        cut=cut,
        entries=covered_entries(conn, cut),
        by=by,
        lines=tuple(trial_balance_lines(conn, cut, by)),
        totals=book_totals(conn, cut),
    )


# -- months, in Paris time, as SQL ---------------------------------------------------------------


def _months(first: datetime, last: datetime) -> list[Period]:
    """The Paris calendar months from the one holding ``first`` to the one holding ``last``."""
    month = period_containing(first, PeriodKind.MONTH)
    final = period_containing(last, PeriodKind.MONTH)
    months = [month]
    while month != final:
        month = month.next()
        months.append(month)
    return months


def _month_label(column: sa.ColumnElement[datetime], months: Sequence[Period]) -> Any:
    """``CASE`` naming the Paris month of an instant, over the months the rows span.

    Month boundaries are computed here (zoneinfo knows the daylight-saving changes), so the same
    SQL runs on SQLite and PostgreSQL, neither of which would agree on time-zone functions.
    """
    whens = [(column < month.end, month.label) for month in months[:-1]]
    last = months[-1].label
    return sa.case(*whens, else_=last) if whens else sa.case((column.is_not(None), last))


# -- outstanding liability -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiabilityLine:
    """Outstanding points of one funder, or of one vintage."""

    key: str
    """The funding partner's code (``program`` for the operator), or the vintage ``YYYY-MM``."""
    points: int
    """Points still in the lots (available, held or pending)."""
    pending: int
    """Of which still in the return window (not yet released)."""
    lots: int
    """Lots holding those points."""

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "points": self.points, "pending": self.pending, "lots": self.lots}


@dataclass(frozen=True, slots=True)
class Liability:
    """The outstanding-points liability, with the members' balances it must equal."""

    by: LiabilityBy
    """Lines per funding partner or per vintage (Paris month earned)."""
    partner: str | None
    """The one funder the report is limited to, if any."""
    lines: tuple[LiabilityLine, ...]
    """In key order."""
    member_points: int | None
    """Σ of every member account, from the postings (only when not limited to one funder)."""

    @property
    def points(self) -> int:
        return sum(line.points for line in self.lines)

    @property
    def pending(self) -> int:
        return sum(line.pending for line in self.lines)

    @property
    def reconciled(self) -> bool | None:
        """Whether the lots hold exactly what the members' accounts say (None: not checked)."""
        return None if self.member_points is None else self.member_points == self.points

    def to_json(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "partner": self.partner,
            "points": self.points,
            "pending": self.pending,
            "member_points": self.member_points,
            "reconciled": self.reconciled,
            "lines": [line.to_json() for line in self.lines],
        }


def _outstanding_lots(partner: str | None) -> sa.Subquery:
    """(funder, earned_at, points, pending) of every lot that still holds points, from the facts."""
    lots, moves, releases = lt.lots.c, lt.lot_moves.c, lt.lot_releases.c
    moved = (
        sa.select(moves.lot_id, sa.func.sum(moves.delta).label("delta"))
        .group_by(moves.lot_id)
        .subquery()
    )
    released = sa.exists().where(releases.lot_id == lots.id)
    points = lots.amount + sa.func.coalesce(moved.c.delta, 0)
    query = (
        sa.select(
            lots.funder.label("funder"),
            lots.earned_at.label("earned_at"),
            points.label("points"),
            sa.and_(lots.pending_until.is_not(None), ~released).label("pending"),
        )
        .select_from(lt.lots.outerjoin(moved, moved.c.lot_id == lots.id))
        .where(points > 0)
    )
    if partner is not None:
        query = query.where(lots.funder == partner)
    return query.subquery()


def liability(
    conn: Connection, *, by: LiabilityBy = "partner", partner: str | None = None
) -> Liability:
    """Outstanding points by funding partner or by vintage, optionally of one funder only."""
    if by not in ("partner", "vintage"):
        raise InvalidRequest(f"liability is by partner or by vintage, not {by!r}")
    lots = _outstanding_lots(partner)
    if by == "partner":
        key: Any = lots.c.funder
        source: Any = lots
    else:
        span = conn.execute(sa.select(sa.func.min(lots.c.earned_at), sa.func.max(lots.c.earned_at)))
        first, last = span.one()
        if first is None:
            return Liability(by, partner, (), _member_points(conn, partner))
        # Label in a subquery, group outside: PostgreSQL groups by the subquery's column.
        source = sa.select(
            _month_label(lots.c.earned_at, _months(first, last)).label("vintage"),
            lots.c.points,
            lots.c.pending,
        ).subquery()
        key = source.c.vintage
    query = (
        sa.select(
            key,
            sa.func.sum(source.c.points),
            sa.func.sum(sa.case((source.c.pending, source.c.points), else_=0)),
            sa.func.count(),
        )
        .group_by(key)
        .order_by(key)
    )
    lines = tuple(
        LiabilityLine(str(k), int(points), int(pending), int(count))
        for k, points, pending, count in conn.execute(query)
    )
    return Liability(by, partner, lines, _member_points(conn, partner))


def _member_points(conn: Connection, partner: str | None) -> int | None:
    """Σ of the member accounts' postings: what the lots must hold in all (not per funder)."""
    if partner is not None:
        return None
    p = lt.postings.c
    return int(conn.scalar(sa.select(sa.func.sum(p.amount)).where(p.account.like("member:%"))) or 0)


# -- breakage --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BreakageLine:
    """Points expired or forfeited from lots one funder paid for, in one period."""

    partner: str
    """The lots' funder (``program`` for points the operator funded)."""
    period: str
    """The Paris period of the EXPIRE entries' ledger time (``YYYY-MM``, or the period asked)."""
    points: int
    """Points taken out of those lots."""

    def to_json(self) -> dict[str, Any]:
        return {"partner": self.partner, "period": self.period, "points": self.points}


@dataclass(frozen=True, slots=True)
class Breakage:
    """Breakage per funder and period."""

    period: str | None
    """The one period asked for, or ``None``: every month with breakage."""
    partner: str | None
    """The one funder the report is limited to, if any."""
    lines: tuple[BreakageLine, ...]
    """In (period, partner) order."""

    @property
    def points(self) -> int:
        return sum(line.points for line in self.lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "partner": self.partner,
            "points": self.points,
            "lines": [line.to_json() for line in self.lines],
        }


def breakage(
    conn: Connection, *, period: str | Period | None = None, partner: str | None = None
) -> Breakage:
    """Points expired or forfeited, attributed to the funder of their lots, per Paris month.

    ``period`` (``2026-03``, or a week or day label) limits the report to one period by ledger
    time, the way settlement assigns entries to periods.
    """
    e, lots, moves = lt.entries.c, lt.lots.c, lt.lot_moves.c
    chosen = parse_period(period) if isinstance(period, str) else period
    conditions: list[Any] = [e.kind == EntryKind.EXPIRE.value]
    if chosen is not None:
        conditions += [e.booked_at >= chosen.start, e.booked_at < chosen.end]
    if partner is not None:
        conditions.append(lots.funder == partner)
    joined = lt.lot_moves.join(lt.entries, e.id == moves.entry_id).join(
        lt.lots, lots.id == moves.lot_id
    )
    if chosen is not None:
        label: Any = sa.literal(chosen.label, sa.String)
    else:
        span = conn.execute(
            sa.select(sa.func.min(e.booked_at), sa.func.max(e.booked_at))
            .select_from(joined)
            .where(*conditions)
        ).one()
        if span[0] is None:
            return Breakage(None, partner, ())
        label = _month_label(e.booked_at, _months(span[0], span[1]))
    taken = (
        sa.select(
            lots.funder.label("funder"), label.label("period"), (-moves.delta).label("points")
        )
        .select_from(joined)
        .where(*conditions)
        .subquery()
    )
    query = (
        sa.select(taken.c.funder, taken.c.period, sa.func.sum(taken.c.points))
        .group_by(taken.c.period, taken.c.funder)
        .order_by(taken.c.period, taken.c.funder)
    )
    lines = tuple(
        BreakageLine(str(funder), str(label_), int(points))
        for funder, label_, points in conn.execute(query)
        if points
    )
    return Breakage(None if chosen is None else chosen.label, partner, lines)


# -- partner exposure ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExposureLine:
    """A partner's outstanding points valued at its reimbursement price, rounded once."""

    partner: str
    """The funding partner."""
    points: int
    """Outstanding points it funded."""
    contract_version: int | None
    """The contract version in force at the report's instant; ``None``: no contract then."""
    price: Decimal | None
    """``q``, euros per point, of that version."""
    rounding_mode: str | None
    """The version's rounding mode."""
    exact: Decimal | None
    """points × q, exactly."""
    cents: int | None
    """``exact`` rounded once to the cent in the contract's mode."""

    def to_json(self) -> dict[str, Any]:
        return {
            "partner": self.partner,
            "points": self.points,
            "contract_version": self.contract_version,
            "price": None if self.price is None else format_decimal(self.price),
            "rounding_mode": self.rounding_mode,
            "exact": None if self.exact is None else format_decimal(self.exact),
            "cents": self.cents,
            "eur": None if self.cents is None else format_cents(self.cents),
        }


@dataclass(frozen=True, slots=True)
class Exposure:
    """What the operator would owe if every outstanding point were redeemed at its funder."""

    at: datetime
    """The instant whose contract versions price the points."""
    partner: str | None
    """The one partner the report is limited to, if any."""
    lines: tuple[ExposureLine, ...]
    """One per funding partner, in code order."""
    program_points: int
    """Outstanding points the operator funded itself: no partner's price applies."""

    @property
    def cents(self) -> int:
        """Σ of the priced lines' rounded amounts."""
        return sum(line.cents for line in self.lines if line.cents is not None)

    @property
    def unpriced_points(self) -> int:
        """Points of partners with no contract in force at ``at``."""
        return sum(line.points for line in self.lines if line.cents is None)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": format_timestamp(self.at),
            "partner": self.partner,
            "cents": self.cents,
            "eur": format_cents(self.cents),
            "unpriced_points": self.unpriced_points,
            "program_points": self.program_points,
            "lines": [line.to_json() for line in self.lines],
        }


def exposure(conn: Connection, *, at: datetime, partner: str | None = None) -> Exposure:
    """Each partner's outstanding points × its reimbursement price in force at ``at``."""
    if not isinstance(at, datetime) or at.utcoffset() is None:
        raise InvalidRequest("an exposure is priced at an aware instant; give a timezone")
    outstanding = liability(conn, by="partner", partner=partner)
    directory = SqlDirectory(conn)
    lines = []
    program = 0
    for line in outstanding.lines:
        if line.key == PROGRAM:
            program += line.points
            continue
        contract = directory.contract_at(line.key, at)
        if contract is None:
            lines.append(ExposureLine(line.key, line.points, None, None, None, None, None))
            continue
        terms = contract.terms
        # q has at most six decimal places, so this product is exact: round it once, here.
        exact = Decimal(line.points) * terms.reimbursement_price
        lines.append(
            ExposureLine(
                line.key,
                line.points,
                contract.version,
                terms.reimbursement_price,
                terms.rounding_mode,
                exact,
                round_cents(exact, terms.rounding_mode),
            )
        )
    return Exposure(at, partner, tuple(lines), program)
