"""Whole-ledger consistency checks, as one pure pass that reports every finding.

Like beancount's ``ops/validation.py``: each check returns findings as data and the pass keeps
going, so one run shows everything that is wrong. These checks compare the journal (entries,
postings, lot moves) with the caches derived from it (balances, lot remainders); the audit verifier
builds on them. They only read.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger import tables as t
from ledger.model import Account, AccountKind, Book


@dataclass(frozen=True, slots=True)
class Finding:
    """One inconsistency: which check found it, on what, and the two values that disagree."""

    check: str
    """Name of the check (stable, machine-readable)."""
    subject: str
    """What is wrong: an account, entry, lot, leaf index or checkpoint."""
    expected: object
    found: object

    def __str__(self) -> str:
        return f"{self.check}: {self.subject}: expected {self.expected}, found {self.found}"


def check_consistency(conn: Connection) -> list[Finding]:
    """Run every check and return all findings (empty when the ledger is consistent)."""
    balances = recomputed_balances(conn)  # one pass over the postings serves four checks
    return [
        *check_books_balance(balances),
        *check_entries_balance(conn),
        *check_cached_balances(conn, balances),
        *check_member_floors(balances),
        *check_lot_remainders(conn),
        *check_lots_cover_members(conn, balances),
    ]


def recomputed_balances(conn: Connection) -> dict[str, int]:
    """Every account's balance summed from its postings."""
    query = sa.select(t.postings.c.account, sa.func.sum(t.postings.c.amount)).group_by(
        t.postings.c.account
    )
    return {account: int(total) for account, total in conn.execute(query)}


def cached_balances(conn: Connection) -> dict[str, int]:
    query = sa.select(t.balances.c.account, sa.func.sum(t.balances.c.balance)).group_by(
        t.balances.c.account
    )
    return {account: int(total) for account, total in conn.execute(query)}


def check_books_balance(balances: dict[str, int]) -> list[Finding]:
    """Each book (POINTS, EUR) sums to zero over all postings (``balances``: recomputed)."""
    totals: dict[str, int] = {"POINTS": 0, "EUR": 0}
    for account, total in balances.items():
        totals[Account.parse(account).book.value] += total
    return [Finding("book-sum", book, 0, total) for book, total in totals.items() if total]


def check_entries_balance(conn: Connection) -> list[Finding]:
    """Every entry has ≥ 2 postings and sums to zero in each book (as stored, not as built).

    Summed by the database, per entry and book, so only the entries that break the rule reach
    Python: the journal holds a few postings per entry, and this check reads them all.
    """
    p = t.postings.c
    eur = _in_book(p.account, Book.EUR)
    points = sa.func.sum(sa.case((eur, 0), else_=p.amount))
    euros = sa.func.sum(sa.case((eur, p.amount), else_=0))
    postings = sa.func.count()
    query = (
        sa.select(p.entry_id, points, euros, postings)
        .group_by(p.entry_id)
        .having(sa.or_(points != 0, euros != 0, postings < 2))
        .order_by(p.entry_id)
    )
    findings = []
    for entry_id, points_total, euros_total, count in conn.execute(query):
        for book, total in ((Book.POINTS, points_total), (Book.EUR, euros_total)):
            if total:
                findings.append(Finding("entry-balance", f"{entry_id} {book.value}", 0, total))
        if count < 2:
            findings.append(Finding("entry-postings", str(entry_id), 2, count))
    return findings


def _in_book(account: sa.ColumnElement[str], book: Book) -> sa.ColumnElement[bool]:
    """SQL: the account code names an account of ``book`` (from the chart of accounts)."""
    codes = []
    for kind in AccountKind:
        if kind.book is book:
            scope, role = kind.value.split(":")
            owned = scope in ("member", "partner")
            codes.append(account.like(f"{scope}:%:{role}") if owned else account == kind.value)
    return sa.or_(*codes)


def check_cached_balances(conn: Connection, balances: dict[str, int]) -> list[Finding]:
    """The running balances equal the balances recomputed from postings (``balances``)."""
    cached = cached_balances(conn)
    return [
        Finding("cached-balance", account, balances.get(account, 0), cached.get(account, 0))
        for account in sorted(set(balances) | set(cached))
        if balances.get(account, 0) != cached.get(account, 0)
    ]


def check_member_floors(balances: dict[str, int]) -> list[Finding]:
    """No member account is below zero (``balances``: recomputed from postings)."""
    return [
        Finding("negative-balance", account, 0, total)
        for account, total in balances.items()
        if total < 0 and Account.parse(account).never_negative
    ]


def check_lot_remainders(conn: Connection) -> list[Finding]:
    """Each lot's remainder equals its amount plus the moves recorded against it."""
    moved = (
        sa.select(t.lot_moves.c.lot_id, sa.func.sum(t.lot_moves.c.delta).label("delta"))
        .group_by(t.lot_moves.c.lot_id)
        .subquery()
    )
    query = sa.select(
        t.lots.c.id, t.lots.c.amount, t.lots.c.remaining, sa.func.coalesce(moved.c.delta, 0)
    ).outerjoin(moved, moved.c.lot_id == t.lots.c.id)
    return [
        Finding("lot-remainder", str(lot_id), amount + delta, remaining)
        for lot_id, amount, remaining, delta in conn.execute(query)
        if amount + delta != remaining
    ]


def check_lots_cover_members(conn: Connection, balances: dict[str, int]) -> list[Finding]:
    """A member's released lots hold its available + held points; pending lots its pending ones
    (``balances``: recomputed from postings)."""
    query = sa.select(t.lots.c.member, t.lots.c.pending, sa.func.sum(t.lots.c.remaining)).group_by(
        t.lots.c.member, t.lots.c.pending
    )
    in_lots: dict[tuple[str, bool], int] = {
        (member, bool(pending)): int(total) for member, pending, total in conn.execute(query)
    }
    members = {Account.parse(a).owner for a in balances if a.startswith("member:")}
    members |= {member for member, _ in in_lots}
    findings = []
    for member in sorted(m for m in members if m):
        spendable = balances.get(f"member:{member}:available", 0) + balances.get(
            f"member:{member}:held", 0
        )
        pending = balances.get(f"member:{member}:pending", 0)
        if in_lots.get((member, False), 0) != spendable:
            findings.append(
                Finding("lots-available", member, spendable, in_lots.get((member, False), 0))
            )
        if in_lots.get((member, True), 0) != pending:
            findings.append(
                Finding("lots-pending", member, pending, in_lots.get((member, True), 0))
            )
    return findings
