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
from ledger.model import Account


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
    return [
        *check_books_balance(conn),
        *check_entries_balance(conn),
        *check_cached_balances(conn),
        *check_member_floors(conn),
        *check_lot_remainders(conn),
        *check_lots_cover_members(conn),
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


def check_books_balance(conn: Connection) -> list[Finding]:
    """Each book (POINTS, EUR) sums to zero over all postings."""
    totals: dict[str, int] = {"POINTS": 0, "EUR": 0}
    for account, total in recomputed_balances(conn).items():
        totals[Account.parse(account).book.value] += total
    return [Finding("book-sum", book, 0, total) for book, total in totals.items() if total]


def check_entries_balance(conn: Connection) -> list[Finding]:
    """Every entry has ≥ 2 postings and sums to zero in each book (as stored, not as built)."""
    findings = []
    rows = conn.execute(
        sa.select(t.postings.c.entry_id, t.postings.c.account, t.postings.c.amount)
    ).all()
    per_entry: dict[object, dict[str, int]] = {}
    counts: dict[object, int] = {}
    for entry_id, account, amount in rows:
        book = Account.parse(account).book.value
        per_entry.setdefault(entry_id, {}).setdefault(book, 0)
        per_entry[entry_id][book] += amount
        counts[entry_id] = counts.get(entry_id, 0) + 1
    for entry_id, books in per_entry.items():
        findings.extend(
            Finding("entry-balance", f"{entry_id} {book}", 0, total)
            for book, total in books.items()
            if total
        )
        if counts[entry_id] < 2:
            findings.append(Finding("entry-postings", str(entry_id), 2, counts[entry_id]))
    return findings


def check_cached_balances(conn: Connection) -> list[Finding]:
    """The running balances equal the balances recomputed from postings."""
    computed = recomputed_balances(conn)
    cached = cached_balances(conn)
    return [
        Finding("cached-balance", account, computed.get(account, 0), cached.get(account, 0))
        for account in sorted(set(computed) | set(cached))
        if computed.get(account, 0) != cached.get(account, 0)
    ]


def check_member_floors(conn: Connection) -> list[Finding]:
    """No member account is below zero."""
    return [
        Finding("negative-balance", account, 0, total)
        for account, total in recomputed_balances(conn).items()
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


def check_lots_cover_members(conn: Connection) -> list[Finding]:
    """A member's released lots hold its available + held points; pending lots its pending ones."""
    balances = recomputed_balances(conn)
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
