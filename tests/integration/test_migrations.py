"""The Alembic migrations and the SQLAlchemy tables describe the same schema."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from ledger.db import Database, current_revision, metadata, upgrade
from ledger.repository import SqlLedgerStore
from partners import tiers


def test_models_match_migrations(db: Database) -> None:
    """After upgrading to head, autogenerate finds no difference between tables and schema."""
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, metadata)
    assert differences == []


def test_upgrade_is_idempotent(db: Database) -> None:
    """Running the migrations again on an up-to-date database changes nothing."""
    before = current_revision(db.engine)
    upgrade(db.engine)
    assert current_revision(db.engine) == before is not None


def test_daily_job_searches_use_the_partial_lot_indexes(db: Database) -> None:
    """The lots due for release or expiry are found by range scan (migration 0010), not by
    reading the whole lots table (SQLite's plan; PostgreSQL chooses by its statistics)."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("the plan is checked on SQLite")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with db.engine.connect() as conn:
        plans = _plans(conn, lambda store: store.members_with_due_releases(now, 10) == [])
        plans |= _plans(conn, lambda store: store.members_with_expired_lots(now, 10) == [])
    assert len(plans) == 2
    used = list(plans.values())
    assert any("ix_lots_due_release" in plan for plan in used), plans
    assert any("ix_lots_due_expiry" in plan for plan in used), plans
    assert all(plan.startswith("SEARCH lots USING") for plan in used), plans


def test_the_tier_window_reads_postings_from_the_covering_index(db: Database) -> None:
    """A member's postings and their amounts come from one index (migration 0011), with no
    search into the postings table (SQLite's plan)."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("the plan is checked on SQLite")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with db.engine.connect() as conn:
        plans = _plans(conn, lambda _: tiers._points_earned(conn, at, ["m1", "m2"]) == {})
    [plan] = plans.values()
    assert "SEARCH postings USING COVERING INDEX ix_postings_account_entry_amount" in plan, plan


def _plans(conn: sa.Connection, run: Callable[[SqlLedgerStore], bool]) -> dict[str, str]:
    """SQLite's query plan of each SELECT that ``run`` makes (``run`` must return True)."""
    statements: list[tuple[str, object]] = []

    def capture(*args: object) -> None:
        # before_cursor_execute(conn, cursor, statement, parameters, context, executemany)
        statements.append((str(args[2]), args[3]))

    sa.event.listen(conn, "before_cursor_execute", capture)
    try:
        assert run(SqlLedgerStore(conn))
    finally:
        sa.event.remove(conn, "before_cursor_execute", capture)
    return {
        statement: " ".join(
            str(row[-1])
            for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
        )
        for statement, parameters in statements
        if statement.startswith("SELECT")
    }
