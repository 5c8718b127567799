"""Alembic environment: runs the ledger's migrations on the engine handed in by ``ledger.db``."""

from __future__ import annotations

from alembic import context

from ledger.db import metadata

config = context.config


def run_migrations() -> None:
    engine = config.attributes["engine"]
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
