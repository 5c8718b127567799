"""PostgreSQL guard rails: journal and log tables refuse UPDATE, DELETE and TRUNCATE.

Migration 0002 puts a trigger on every table of :data:`ledger.tables.APPEND_ONLY` and creates the
``coalition_app`` role, which may read and append those tables but not change them. Each refused
statement runs in its own transaction on one database holding a row in every append-only table
(entries, postings, a burn's lot moves, a release's lot releases, and the log's leaves, nodes and
checkpoints), so a trigger that exists but never fires would not pass.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
import sqlalchemy as sa

from ledger import jobs
from ledger import tables as t
from ledger.db import Database, create_engine
from ledger.integrator import Integrator
from ledger.logstore import SqlLogStore
from ledger.note import NoteSigner
from ledger.receipts import receipt
from ledger.repository import SqlLedgerStore
from ledger.service import Actor, Ledger
from tests.conftest import PG_URL
from tests.integration.conftest import START

pytestmark = pytest.mark.usefixtures("postgres_only")

APP_ROLE = "coalition_app"
SUPER = Actor(credential="key-super", partner="SUPER")
RAIL = Actor(credential="key-rail", partner="RAIL")


def _populate(db: Database) -> None:
    """At least one row in every append-only table, written through the kernel."""
    kernel = Ledger(clock=lambda: START)
    with db.transaction() as conn:
        store = SqlLedgerStore(conn)
        kernel.open_system_accounts(store)
        for partner in ("SUPER", "RAIL"):
            kernel.open_partner(store, partner)
        kernel.open_member(store, "alice")
    commands = [
        lambda store: kernel.earn(
            store, SUPER, "earn", member="alice", funding={"SUPER": 100}, business_time=START
        ),
        lambda store: kernel.earn(
            store,
            SUPER,
            "pending",
            member="alice",
            funding={"SUPER": 20},
            business_time=START,
            pending_until=START + timedelta(days=1),
        ),
        lambda store: kernel.burn(
            store, RAIL, "burn", member="alice", points=30, business_time=START
        ),
    ]
    for command in commands:
        with db.transaction() as conn:
            command(SqlLedgerStore(conn))
    assert jobs.release_pending(db, kernel, START + timedelta(days=2))
    Integrator(NoteSigner.generate("guard.coalition.local/ledger")).integrate_all(db)


@pytest.fixture(scope="module")
def guarded_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """One populated PostgreSQL database shared by this module's tests (none of them changes it)."""
    if PG_URL is None:
        pytest.skip("needs PostgreSQL: set COALITION_TEST_DATABASE_URL")
    template_database = request.getfixturevalue("template_database")
    name = f"coalition_guard_{uuid.uuid4().hex[:12]}"
    url = sa.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    db = Database.connect(url)
    try:
        _populate(db)
    finally:
        db.dispose()
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def _refusal(url: str, statement: str, role: str | None = None) -> psycopg.Error:
    """Run ``statement`` in a transaction that is rolled back; the error PostgreSQL raised."""
    with psycopg.connect(url) as conn:
        if role is not None:
            conn.execute(f"SET ROLE {role}")
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(statement)
        conn.rollback()
    return refused.value


def _first_column(table: str) -> str:
    return next(iter(t.metadata.tables[table].columns)).name


def test_every_append_only_table_has_rows_to_guard(guarded_url: str) -> None:
    """The shared database holds a row in each append-only table (so row triggers must fire)."""
    with psycopg.connect(guarded_url) as conn:
        for table in t.APPEND_ONLY:
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            assert row is not None
            assert row[0] > 0, table


@pytest.mark.parametrize("table", t.APPEND_ONLY)
def test_update_is_refused(guarded_url: str, table: str) -> None:
    """UPDATE of any row of an append-only table is refused by its trigger."""
    column = _first_column(table)
    error = _refusal(guarded_url, f"UPDATE {table} SET {column} = {column}")
    assert isinstance(error, psycopg.errors.InsufficientPrivilege)
    assert f"UPDATE on {table} is refused" in str(error)
    assert "append-only" in str(error)


@pytest.mark.parametrize("table", t.APPEND_ONLY)
def test_delete_is_refused(guarded_url: str, table: str) -> None:
    """DELETE from an append-only table is refused by its trigger."""
    error = _refusal(guarded_url, f"DELETE FROM {table}")
    assert isinstance(error, psycopg.errors.InsufficientPrivilege)
    assert f"DELETE on {table} is refused" in str(error)
    assert "append-only" in str(error)


@pytest.mark.parametrize("table", t.APPEND_ONLY)
def test_truncate_is_refused(guarded_url: str, table: str) -> None:
    """TRUNCATE … CASCADE of an append-only table is refused by a statement trigger."""
    # CASCADE: without it PostgreSQL would refuse a referenced table for its foreign keys before
    # any trigger runs, and the test would not show the trigger at work.
    error = _refusal(guarded_url, f"TRUNCATE {table} CASCADE")
    assert isinstance(error, psycopg.errors.InsufficientPrivilege)
    assert "TRUNCATE on" in str(error)
    assert "append-only" in str(error)


def test_the_app_role_books_and_integrates_through_the_kernel(database_url: str) -> None:
    """As coalition_app the kernel path works: open accounts, earn, integrate, read a receipt."""
    db = Database(create_engine(database_url, role=APP_ROLE))
    try:
        with db.engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT current_user")) == APP_ROLE
        kernel = Ledger(clock=lambda: START)
        with db.transaction() as conn:
            store = SqlLedgerStore(conn)
            kernel.open_system_accounts(store)
            kernel.open_partner(store, "SUPER")
            kernel.open_member(store, "alice")
        with db.transaction() as conn:
            booking = kernel.earn(
                SqlLedgerStore(conn),
                SUPER,
                "k1",
                member="alice",
                funding={"SUPER": 40},
                business_time=START,
            )
        signer = NoteSigner.generate("app.coalition.local/ledger")
        assert Integrator(signer).integrate_all(db) == 1
        with db.engine.connect() as conn:
            assert SqlLogStore(conn).queue_length() == 0
            found = receipt(conn, booking.entry.id)
            assert kernel.balance(SqlLedgerStore(conn), "member:alice:available") == 40
        assert found is not None
        assert found.index == 0
    finally:
        db.dispose()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE entries SET reason = 'rewritten'",
        "DELETE FROM leaves",
        "TRUNCATE checkpoints",
    ],
)
def test_the_app_role_may_not_change_facts(guarded_url: str, statement: str) -> None:
    """coalition_app lacks the privilege to update, delete or truncate journal and log rows."""
    error = _refusal(guarded_url, statement, role=APP_ROLE)
    assert isinstance(error, psycopg.errors.InsufficientPrivilege)
    assert "permission denied" in str(error)


def test_the_app_role_may_not_bypass_the_triggers(guarded_url: str) -> None:
    """coalition_app cannot switch the triggers off as a superuser DBA could."""
    error = _refusal(guarded_url, "SET session_replication_role = replica", role=APP_ROLE)
    assert isinstance(error, psycopg.errors.InsufficientPrivilege)
    assert "permission denied" in str(error)
