"""Hot accounts keep sharded running balances; changing the shard count loses no update."""

from __future__ import annotations

from datetime import UTC, datetime

from ledger.consistency import check_consistency
from ledger.db import Database
from ledger.repository import SqlLedgerStore
from ledger.service import Actor, Ledger, Policy


def test_raising_the_shard_count_keeps_every_balance_update(db: Database) -> None:
    """Accounts opened with one shard and booked with eight still balance to the cent."""
    opener = Ledger(Policy(shards=1))
    with db.transaction() as conn:
        store = SqlLedgerStore(conn)
        opener.open_system_accounts(store)
        opener.open_partner(store, "ACME")
        opener.open_member(store, "m1")
    wide = Ledger(Policy(shards=8))
    actor = Actor("key-acme", "ACME")
    for n in range(20):
        with db.transaction() as conn:
            wide.earn(
                SqlLedgerStore(conn),
                actor,
                f"k{n}",
                member="m1",
                funding={"ACME": 10},
                business_time=datetime.now(UTC),
            )
    with db.transaction() as conn:
        store = SqlLedgerStore(conn)
        assert wide.balance(store, "partner:ACME:issued") == -200
        assert wide.balance(store, "member:m1:available") == 200
        assert check_consistency(conn) == []
