"""Fixtures for the kernel over a real store: a controllable clock and a ledger with open books.

Every command runs in its own transaction, as the API runs it, so refusals commit their idempotency
record and other errors roll back exactly as they would in production.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa

from ledger import tables as t
from ledger.consistency import Finding, check_consistency
from ledger.db import Database
from ledger.repository import LotState, SqlLedgerStore
from ledger.service import Actor, Ledger, Policy

T = TypeVar("T")

#: A fixed starting instant, so expiry and return windows are easy to read in the tests.
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

SUPER = Actor(credential="key-super", partner="SUPER")
DEPT = Actor(credential="key-dept", partner="DEPT")
RAIL = Actor(credential="key-rail", partner="RAIL")
STAFF = Actor(credential="staff-alice")
PARTNERS = ("SUPER", "DEPT", "RAIL")


class Clock:
    """A clock the test moves by hand; the ledger stamps ledger time from it."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta | None = None, **parts: float) -> datetime:
        self.now += delta if delta is not None else timedelta(**parts)
        return self.now


def new_key() -> str:
    return f"k-{uuid4()}"


class Books:
    """The kernel over one database: each call runs one command in its own transaction."""

    def __init__(self, db: Database, ledger: Ledger, clock: Clock) -> None:
        self.db = db
        self.ledger = ledger
        self.clock = clock

    def with_policy(self, policy: Policy) -> Books:
        """The same books under another kernel policy (e.g. lots that never expire)."""
        return Books(self.db, Ledger(policy, clock=self.clock), self.clock)

    def run(self, work: Callable[[SqlLedgerStore], T]) -> T:
        with self.db.transaction() as conn:
            return work(SqlLedgerStore(conn))

    def __getattr__(self, command: str) -> Callable[..., Any]:
        """``books.burn(actor, key, ...)`` runs ``Ledger.burn`` in a fresh transaction."""
        method = getattr(self.ledger, command)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.run(lambda store: method(store, *args, **kwargs))

        return call

    def balance(self, account: str, as_of: datetime | None = None) -> int:
        return self.run(lambda store: self.ledger.balance(store, account, as_of))

    def member(self, member: str) -> dict[str, int]:
        """A member's available, pending and held balances."""
        return {
            role: self.balance(f"member:{member}:{role}")
            for role in ("available", "pending", "held")
        }

    def lots(self, member: str) -> list[LotState]:
        """A member's lots with points left: spendable (in burn order), then pending."""
        return self.run(lambda store: store.spendable_lots(member) + store.pending_lots(member))

    def lot(self, lot_id: UUID) -> LotState:
        return self.run(lambda store: store.lots([lot_id])[0])

    def count(self, table: sa.Table) -> int:
        with self.db.engine.connect() as conn:
            return int(conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)

    def entry_count(self) -> int:
        return self.count(t.entries)

    def findings(self) -> list[Finding]:
        with self.db.engine.connect() as conn:
            return check_consistency(conn)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def books(db: Database, clock: Clock) -> Books:
    """A ledger with system accounts, partners SUPER/DEPT/RAIL and members alice and bob open."""
    ledger = Ledger(Policy(), clock=clock)
    with db.transaction() as conn:
        store = SqlLedgerStore(conn)
        ledger.open_system_accounts(store)
        for partner in PARTNERS:
            ledger.open_partner(store, partner)
        for member in ("alice", "bob"):
            ledger.open_member(store, member)
    return Books(db, ledger, clock)
