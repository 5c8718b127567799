"""Both books as a beancount ledger: ``coalition audit export --format beancount``.

An auditor who keeps books in beancount (or wants ``bean-check``, ``bean-query`` and fava over our
numbers) gets one text file holding the POINTS book as the commodity ``PTS`` and the EUR book as
``EUR`` (euros with two decimals: our integer cents, exactly). The file holds:

- ``open`` directives, one per account that has a posting, dated the Paris day of its first use,
  restricted to the account's commodity;
- one transaction per journal entry, dated the Paris day of its ledger time, with the entry id,
  kind, ledger and business times, the log origin and leaf index as metadata. An entry already in
  the verifiable log is flagged ``*`` and written in leaf order; one still queued for the
  integrator is flagged ``!`` and has no leaf index;
- closing ``balance`` assertions dated the day after the last entry, so ``bean-check`` itself
  proves that the transactions add up to the balances the ledger derives from its postings.

Amounts are the ledger's own, sign for sign: beancount reads a positive amount as a debit, as we
do. Each account therefore sits under the root whose normal sign matches how the ledger carries it:

============================  ==========================================  =======
ledger account                beancount account                           book
============================  ==========================================  =======
``member:{m}:available``      ``Assets:Members:{m}:Available``            POINTS
``member:{m}:pending|held``   ``Assets:Members:{m}:Pending|Held``         POINTS
``partner:{p}:issued``        ``Equity:Partners:{p}:Issued``              POINTS
``partner:{p}:redeemed``      ``Expenses:Partners:{p}:Redeemed``          POINTS
``program:funded``            ``Equity:Program:Funded``                   POINTS
``program:breakage``          ``Expenses:Program:Breakage``               POINTS
``program:adjustments``       ``Equity:Program:Adjustments``              POINTS
``partner:{p}:settlement``    ``Assets:Partners:{p}:Settlement``          EUR
``operator:bank``             ``Assets:Operator:Bank``                    EUR
``operator:income``           ``Income:Operator:Settlement``              EUR
``operator:expense``          ``Expenses:Operator:Settlement``            EUR
``operator:rounding``         ``Income:Operator:Rounding``                EUR
============================  ==========================================  =======

The POINTS book counts from the holders' side (members hold points, positive; partners' issuance
is the source, negative), so the outstanding-points liability is the total of ``Assets:Members``.

Owner names: a beancount account component starts with a capital or a digit and holds letters,
digits and dashes only. A member id or partner code of that shape (``SUPER``, ``M42``) is kept as
it is; any other (``alice``, ``m_42``) is written ``X-`` followed by the id with each character
other than a letter or digit as ``-`` and two hex digits (``m_42`` → ``X-m-5F42``). The mapping is
one-to-one, so two ledger accounts never share a beancount account.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, TextIO

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger import tables as lt
from ledger.canonical import format_timestamp
from ledger.logstore import SqlLogStore
from ledger.model import Account, AccountKind, Book
from ledger.numbers import format_cents
from settlement.periods import PARIS

#: The commodity of each book.
COMMODITIES = {Book.POINTS: "PTS", Book.EUR: "EUR"}

#: Account kind → the beancount account, ``{owner}`` standing for the encoded owner.
ACCOUNT_NAMES = {
    AccountKind.MEMBER_AVAILABLE: "Assets:Members:{owner}:Available",
    AccountKind.MEMBER_PENDING: "Assets:Members:{owner}:Pending",
    AccountKind.MEMBER_HELD: "Assets:Members:{owner}:Held",
    AccountKind.PARTNER_ISSUED: "Equity:Partners:{owner}:Issued",
    AccountKind.PARTNER_REDEEMED: "Expenses:Partners:{owner}:Redeemed",
    AccountKind.PARTNER_SETTLEMENT: "Assets:Partners:{owner}:Settlement",
    AccountKind.PROGRAM_FUNDED: "Equity:Program:Funded",
    AccountKind.PROGRAM_BREAKAGE: "Expenses:Program:Breakage",
    AccountKind.PROGRAM_ADJUSTMENTS: "Equity:Program:Adjustments",
    AccountKind.OPERATOR_BANK: "Assets:Operator:Bank",
    AccountKind.OPERATOR_INCOME: "Income:Operator:Settlement",
    AccountKind.OPERATOR_EXPENSE: "Expenses:Operator:Settlement",
    AccountKind.OPERATOR_ROUNDING: "Income:Operator:Rounding",
}

#: An owner that is already a valid account component and cannot be mistaken for an escaped one.
_PLAIN_OWNER = re.compile(r"[A-Z0-9][A-Za-z0-9]*")

#: Rows fetched per round trip while streaming the journal.
_STREAM_ROWS = 2000


@dataclass(frozen=True, slots=True)
class BeancountSummary:
    """What an export wrote."""

    transactions: int
    """Journal entries written, one transaction each."""
    unlogged: int
    """Of which not yet in the verifiable log (flagged ``!``)."""
    accounts: int
    """Accounts opened (those with at least one posting)."""


def owner_component(owner: str) -> str:
    """A member id or partner code as one beancount account component (one-to-one)."""
    if _PLAIN_OWNER.fullmatch(owner):
        return owner
    escaped = "".join(c if c.isascii() and c.isalnum() else f"-{ord(c):02X}" for c in owner)
    return f"X-{escaped}"


def beancount_account(code: str) -> str:
    """The beancount account name of a ledger account code."""
    account = Account.parse(code)
    template = ACCOUNT_NAMES[account.kind]
    return template.format(owner=owner_component(account.owner)) if account.owner else template


@functools.lru_cache(maxsize=65_536)
def _mapped(code: str) -> tuple[str, Book]:
    """(beancount account, book) of a code; cached, as a journal names few accounts many times."""
    return beancount_account(code), Account.parse(code).book


def amount_text(book: Book, amount: int) -> str:
    """An amount with its commodity: points as integers, cents as euros with two decimals."""
    number = format_cents(amount) if book is Book.EUR else str(amount)
    return f"{number} {COMMODITIES[book]}"


def write_beancount(conn: Connection, stream: TextIO) -> BeancountSummary:
    """Write both books to ``stream``, reading the journal in one streamed pass."""
    first_use = _first_use(conn)
    stream.write(_header(first_use))
    for code, day in sorted(first_use.items(), key=lambda item: (item[1], item[0])):
        account = Account.parse(code)
        stream.write(
            f"{day.isoformat()} open {beancount_account(code)} {COMMODITIES[account.book]}\n"
        )
    stream.write("\n")
    transactions = unlogged = 0
    last_day: date | None = None
    for entry in _entries(conn):
        stream.write(entry.text())
        transactions += 1
        unlogged += entry.leaf is None
        last_day = max(last_day or entry.day, entry.day)
    if last_day is not None:
        closing = last_day + timedelta(days=1)
        stream.write("; closing balances, derived by the ledger from its postings\n")
        for code, balance in _balances(conn):
            book = Account.parse(code).book
            stream.write(
                f"{closing.isoformat()} balance {beancount_account(code)} "
                f"{amount_text(book, balance)}\n"
            )
    return BeancountSummary(transactions, unlogged, len(first_use))


# -- reading the journal ---------------------------------------------------------------------------


def _paris_day(moment: datetime) -> date:
    return moment.astimezone(PARIS).date()


def _first_use(conn: Connection) -> dict[str, date]:
    """Each account with a posting → the Paris day of its first entry (ledger time)."""
    p, e = lt.postings.c, lt.entries.c
    query = (
        sa.select(p.account, sa.func.min(e.booked_at))
        .select_from(lt.postings.join(lt.entries, e.id == p.entry_id))
        .group_by(p.account)
    )
    return {code: _paris_day(first) for code, first in conn.execute(query)}


def _balances(conn: Connection) -> Iterator[tuple[str, int]]:
    """Every account with a posting and the sum of its postings, in code order."""
    p = lt.postings.c
    query = (
        sa.select(p.account, sa.func.sum(p.amount))
        .group_by(p.account)
        .order_by(p.account)
        .execution_options(yield_per=_STREAM_ROWS)
    )
    for code, balance in conn.execute(query):
        yield code, int(balance)


def _header(first_use: dict[str, date]) -> str:
    lines = [
        "; Coalition Ledger: the POINTS book (PTS) and the EUR book (EUR), one transaction per",
        "; journal entry. Written by `coalition audit export --format beancount`.",
        'option "title" "Coalition Ledger"',
        'option "operating_currency" "EUR"',
        "",
    ]
    if first_use:
        day = min(first_use.values()).isoformat()
        lines += [
            f"{day} commodity PTS",
            '  name: "Coalition loyalty points"',
            f"{day} commodity EUR",
            '  name: "Euro"',
            "",
        ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class _Entry:
    """One journal entry with its postings, as the export writes it."""

    id: str
    kind: str
    booked_at: datetime
    business_time: datetime
    partner: str | None
    refers_to: str | None
    reason: str | None
    log: str | None
    leaf: int | None
    postings: tuple[tuple[str, int], ...]

    @property
    def day(self) -> date:
        return _paris_day(self.booked_at)

    def text(self) -> str:
        flag = "!" if self.leaf is None else "*"
        narration = self.kind if not self.reason else f"{self.kind}: {self.reason}"
        lines = [
            f"{self.day.isoformat()} {flag} {_string(self.partner or 'operator')} "
            f"{_string(narration)}",
            f"  entry: {_string(self.id)}",
            f"  kind: {_string(self.kind)}",
            f"  booked: {_string(format_timestamp(self.booked_at))}",
            f"  business: {_string(format_timestamp(self.business_time))}",
        ]
        if self.log is not None:
            lines += [f"  log: {_string(self.log)}", f"  leaf: {self.leaf}"]
        if self.refers_to is not None:
            lines.append(f"  refers: {_string(self.refers_to)}")
        for code, amount in self.postings:
            name, book = _mapped(code)
            lines.append(f"  {name}  {amount_text(book, amount)}")
        return "\n".join(lines) + "\n\n"


def _string(text: str) -> str:
    """A beancount string literal: quotes and backslashes escaped, one line."""
    flat = " ".join(text.split()) if any(c in text for c in "\r\n\t") else text
    return '"' + flat.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _entries(conn: Connection) -> Iterator[_Entry]:
    """Every entry with its postings: logged ones in leaf order, then queued ones by ledger time."""
    e, p, leaf = lt.entries.c, lt.postings.c, lt.leaves.c
    origins = [origin for origin, _, _ in SqlLogStore(conn).logs()]
    log_rank: Any = (
        sa.case(*((leaf.log == origin, rank) for rank, origin in enumerate(origins)), else_=-1)
        if origins
        else sa.literal(0)
    )
    query = (
        sa.select(
            e.id, e.kind, e.booked_at, e.business_time, e.partner, e.refers_to, e.reason,
            leaf.log, leaf.idx, p.account, p.amount,
        )
        .select_from(
            lt.postings.join(lt.entries, e.id == p.entry_id).outerjoin(
                lt.leaves, leaf.entry_id == e.id
            )
        )
        .order_by(
            sa.case((leaf.idx.is_(None), 1), else_=0),
            log_rank,
            leaf.idx,
            e.booked_at,
            e.id,
            p.line,
        )
        .execution_options(yield_per=_STREAM_ROWS)
    )
    current: list[Any] = []
    for row in conn.execute(query):
        if current and current[0].id != row.id:
            yield _entry(current)
            current = []
        current.append(row)
    if current:
        yield _entry(current)


def _entry(rows: list[Any]) -> _Entry:
    head = rows[0]
    return _Entry(
        id=str(head.id),
        kind=head.kind,
        booked_at=head.booked_at,
        business_time=head.business_time,
        partner=head.partner,
        refers_to=None if head.refers_to is None else str(head.refers_to),
        reason=head.reason,
        log=head.log,
        leaf=None if head.idx is None else int(head.idx),
        postings=tuple((row.account, int(row.amount)) for row in rows),
    )
