"""The Alembic migrations and the SQLAlchemy tables describe the same schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from ledger.db import Database, current_revision, metadata, upgrade


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
