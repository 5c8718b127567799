"""Scheduled jobs: release pending points, expire lots, void stale holds.

Each job finds what is due, then handles one member (or hold) per transaction: a failure affects
only that member, and because every job acts only on what is still due, running a job twice, or two
copies at once, books nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from ledger.db import Database
from ledger.model import Entry
from ledger.repository import SqlLedgerStore
from ledger.service import Ledger

_PAGE = 500


def release_pending(db: Database, ledger: Ledger, now: datetime) -> list[Entry]:
    """Release every pending lot whose return window ended by ``now``."""
    return _run(
        db,
        lambda s: s.members_with_due_releases(now, _PAGE),
        lambda s, member: ledger.release_due(s, member, now),
    )


def expire_lots(db: Database, ledger: Ledger, now: datetime) -> list[Entry]:
    """Expire what is left of every lot whose expiry passed by ``now``."""
    return _run(
        db,
        lambda s: s.members_with_expired_lots(now, _PAGE),
        lambda s, member: ledger.expire_due(s, member, now),
    )


def void_stale_holds(db: Database, ledger: Ledger, now: datetime) -> list[Entry]:
    """Void every open hold whose time to live ran out by ``now``."""
    return _run(
        db,
        lambda s: s.stale_holds(now, _PAGE),
        lambda s, hold_id: ledger.void_if_stale(s, hold_id, now),
    )


def _run(
    db: Database,
    find: Callable[[SqlLedgerStore], list],
    act: Callable[[SqlLedgerStore, object], Entry | None],
) -> list[Entry]:
    booked: list[Entry] = []
    while True:
        with db.transaction() as conn:
            due = find(SqlLedgerStore(conn))
        progress = False
        for item in due:
            with db.transaction() as conn:
                entry = act(SqlLedgerStore(conn), item)
            if entry is not None:
                booked.append(entry)
                progress = True
        if len(due) < _PAGE or not progress:
            return booked
