""":func:`ledger.db.insert_many` stores exactly what ``conn.execute(table.insert(), rows)`` stores,
and :func:`ledger.db.execute_many` writes what ``conn.execute(statement, rows)`` writes.

The same rows go in once each way, each in a transaction that is rolled back, and the values the
driver reads back — the stored form, before any SQLAlchemy type processing — are compared: ids,
aware and repeated times, None in every nullable column, JSON (text, nested, null), bytes and
64-bit integers, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger import db as ledger_db
from ledger import repository
from ledger import tables as t
from ledger.db import Database, execute_many, insert_many
from ledger.service import fingerprint

T0 = datetime(2026, 3, 2, 9, 30, 0, 123456, tzinfo=UTC)
PARIS = timezone(timedelta(hours=1))


def _rows() -> dict[sa.Table, list[dict[str, Any]]]:
    entry_ids = [uuid.UUID(int=n) for n in (1, 2, 3)]
    lot_id = uuid.UUID("12345678-9abc-4def-8123-456789abcdef")
    return {
        t.accounts: [
            {"code": "member:m1:available", "kind": "available", "owner": "m1", "opened_at": T0},
            {"code": "partner:P:issued", "kind": "issued", "owner": None, "opened_at": T0},
        ],
        t.entries: [
            {
                "id": entry_id,
                "kind": "EARN",
                "business_time": T0 if n else T0.astimezone(PARIS),  # one instant, two zones
                "booked_at": T0 + timedelta(microseconds=n),
                "partner": "P" if n != 1 else None,
                "credential": "cred",
                "idempotency_key": f"k{n}",
                "refers_to": entry_ids[0] if n == 2 else None,
                "reason": "ré-émis" if n == 2 else None,
                "attributes": {"explanation": "2 × 3 € \u2028", "n": 2**53 - 1, "l": [1, None]},
            }
            for n, entry_id in enumerate(entry_ids)
        ],
        t.postings: [
            {"entry_id": entry_ids[0], "line": 0, "account": "member:m1:available", "amount": 5},
            {"entry_id": entry_ids[0], "line": 1, "account": "partner:P:issued", "amount": -5},
            {
                "entry_id": entry_ids[1],
                "line": 0,
                "account": "member:m1:available",
                "amount": 2**62,
            },
        ],
        t.lots: [
            {
                "id": lot_id,
                "opened_by": entry_ids[0],
                "member": "m1",
                "funder": "P",
                "amount": 5,
                "earned_at": T0,
                "expires_at": None,
                "price_version": None,
                "pending_until": T0 + timedelta(days=14),
                "remaining": 5,
                "pending": True,
            }
        ],
        t.idempotency: [
            {
                "credential": "cred",
                "key": f"k{n}",
                "request_hash": bytes(range(n, n + 32)),
                "request": {"op": "earn", "points": n},
                "entry_id": entry_ids[n] if n < 2 else None,
                "refusal": None if n < 2 else {"code": "x", "fields": {}},
                "created_at": T0,
            }
            for n in range(3)
        ],
        t.journal_queue: [{"entry_id": entry_id} for entry_id in entry_ids],
    }


def _stored(conn: Connection, table: sa.Table, keys: list[str]) -> list[tuple[Any, ...]]:
    """The rows' columns as the driver returns them, without SQLAlchemy's result processing
    (a sequence the rows leave to the database is not rolled back, so it is not compared)."""
    columns = ", ".join(f'"{key}"' for key in keys)
    rows = conn.exec_driver_sql(f'SELECT {columns} FROM "{table.name}"').all()
    return sorted((tuple(row) for row in rows), key=repr)


def _store_and_read(db: Database, insert: Callable[[Connection, sa.Table, list], None]) -> dict:
    rows = _rows()
    with db.engine.connect() as conn:
        transaction = conn.begin()
        for table, table_rows in rows.items():
            insert(conn, table, table_rows)
        stored = {table.name: _stored(conn, table, list(rows[table][0])) for table in rows}
        transaction.rollback()
    return stored


def test_insert_many_stores_what_the_generic_insert_stores(db: Database) -> None:
    fast = _store_and_read(db, insert_many)
    generic = _store_and_read(db, lambda conn, table, rows: conn.execute(table.insert(), rows))
    assert fast == generic
    assert len(fast["entries"]) == 3
    assert len(fast["journal_queue"]) == 3


def test_insert_many_of_nothing_does_nothing(db: Database) -> None:
    with db.engine.connect() as conn:
        insert_many(conn, t.entries, [])
        assert conn.scalar(sa.select(sa.func.count()).select_from(t.entries)) == 0


def test_a_naive_time_is_refused_as_by_the_generic_insert(db: Database) -> None:
    row = {**_rows()[t.accounts][0], "opened_at": datetime(2026, 3, 2)}
    with db.engine.connect() as conn, pytest.raises(sa.exc.StatementError, match="naive"):
        conn.execute(t.accounts.insert(), [row])
    with db.engine.connect() as conn, pytest.raises(ValueError, match="naive"):
        insert_many(conn, t.accounts, [row])


def test_json_text_is_stored_as_written_and_reads_back_as_its_value(db: Database) -> None:
    """A request's fingerprint text goes into a JSON column as it is (not serialised again)."""
    request = fingerprint({"op": "earn", "at": T0, "note": "2 × 3 € \u2028", "n": 2**53 - 1})
    row = {**_rows()[t.idempotency][0], "request": request.text}
    with db.engine.connect() as conn:
        transaction = conn.begin()
        insert_many(conn, t.idempotency, [row])
        stored = conn.exec_driver_sql("SELECT request FROM idempotency").scalar_one()
        read = conn.scalar(sa.select(t.idempotency.c.request))
        transaction.rollback()
    # SQLite keeps the text; psycopg hands a json column back parsed.
    assert stored == (request.text if db.engine.dialect.name == "sqlite" else request.request)
    assert read == request.request


#: An UPDATE that binds one parameter twice, as the members' activity update does.
_LATER = (
    t.accounts.update()
    .where(
        t.accounts.c.code == sa.bindparam("account"), t.accounts.c.opened_at < sa.bindparam("at")
    )
    .values(opened_at=sa.bindparam("at"))
)


def _updates(dialect: str) -> list[tuple[Any, list[dict[str, Any]]]]:
    """Statements of the batch's own kinds, each with rows: an UPDATE of an expression of the
    row's value, one that sets a constant, a time bound twice, and an upsert that adds to one
    row and creates another."""
    lot_id = _rows()[t.lots][0]["id"]
    return [
        (repository._MOVE_LOTS, [{"lot": lot_id, "delta": -3}]),
        (repository._RELEASE_LOTS, [{"lot": lot_id}]),  # a value written in the statement
        (
            _LATER,
            [
                {"account": "member:m1:available", "at": T0 + timedelta(hours=1)},
                {"account": "partner:P:issued", "at": T0 - timedelta(hours=1)},  # not later
            ],
        ),
        (
            repository._add_to_balances(dialect),
            [
                {"account": "member:m1:available", "shard": 0, "balance": 2},  # adds to 5
                {"account": "partner:P:issued", "shard": 3, "balance": -5},  # a new row
            ],
        ),
    ]


def test_execute_many_writes_what_the_generic_execute_writes(db: Database) -> None:
    dialect = db.engine.dialect.name
    tables = (t.lots, t.accounts, t.balances)

    def run(execute: Callable[[Connection, Any, list], None]) -> dict:
        with db.engine.connect() as conn:
            transaction = conn.begin()
            for table, rows in _rows().items():
                insert_many(conn, table, rows)
            balance = {"account": "member:m1:available", "shard": 0, "balance": 5}
            insert_many(conn, t.balances, [balance])
            for statement, rows in _updates(dialect):
                execute(conn, statement, rows)
            stored = {
                table.name: _stored(conn, table, [c.name for c in table.c]) for table in tables
            }
            transaction.rollback()
        return stored

    fast = run(execute_many)
    assert fast == run(lambda conn, statement, rows: conn.execute(statement, rows))
    untouched = run(lambda *_: None)
    assert all(fast[table.name] != untouched[table.name] for table in tables)
    assert len(fast["balances"]) == 2


def test_execute_many_refuses_rows_that_do_not_name_its_parameters(db: Database) -> None:
    with db.engine.connect() as conn, pytest.raises(ValueError, match="cannot bind"):
        execute_many(conn, _LATER, [{"account": "member:m1:available"}])


def test_plans_of_statements_built_per_call_do_not_pile_up(db: Database) -> None:
    row = {"account": "member:m1:available", "at": T0}
    with db.engine.connect() as conn:
        for _ in range(ledger_db._PLANS_KEPT + 10):
            fresh = t.accounts.update().where(t.accounts.c.code == sa.bindparam("account"))
            execute_many(conn, fresh.values(opened_at=sa.bindparam("at")), [row])
        assert 0 < len(ledger_db._plans[conn.dialect]) <= ledger_db._PLANS_KEPT
        conn.rollback()


def test_a_time_converter_remembers_a_bounded_number_of_instants(db: Database) -> None:
    """A plan lives as long as its engine; the instants it meets do not pile up in it."""
    convert = ledger_db._converter(t.entries.c.booked_at.type, db.engine.dialect)
    assert convert is not None
    for n in range(5_000):
        assert convert(T0 + timedelta(seconds=n)) == convert(T0 + timedelta(seconds=n))
    [memo] = [c.cell_contents for c in convert.__closure__ or () if type(c.cell_contents) is dict]
    assert 0 < len(memo) <= 4_096
