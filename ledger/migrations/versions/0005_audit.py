"""audit log: events, their queue to the verifiable log, and the leaves that record them

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 16:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import ledger.db

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

#: Facts, guarded like the journal (PRODUCT.md §4 "Database guard rails", §8).
APPEND_ONLY = ("audit_events", "audit_leaves")


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("at", ledger.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("credential", sa.String(length=100), nullable=True),
        sa.Column("request_id", sa.String(length=100), nullable=True),
        sa.Column("source", sa.String(length=100), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=True),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_events")),
        sa.UniqueConstraint("id", name=op.f("uq_audit_events_id")),
    )
    op.create_index(op.f("ix_audit_events_at"), "audit_events", ["at"], unique=False)
    op.create_index(op.f("ix_audit_events_action"), "audit_events", ["action"], unique=False)
    op.create_table(
        "audit_queue",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"], ["audit_events.id"], name=op.f("fk_audit_queue_event_id_audit_events")
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_queue")),
        sa.UniqueConstraint("event_id", name=op.f("uq_audit_queue_event_id")),
    )
    op.create_table(
        "audit_leaves",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("log", sa.String(length=200), nullable=False),
        sa.Column("idx", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"], ["audit_events.id"], name=op.f("fk_audit_leaves_event_id_audit_events")
        ),
        sa.ForeignKeyConstraint(
            ["log", "idx"], ["leaves.log", "leaves.idx"], name=op.f("fk_audit_leaves_log_leaves")
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_audit_leaves")),
        sa.UniqueConstraint("log", "idx", name=op.f("uq_audit_leaves_log_idx")),
    )
    if op.get_bind().dialect.name == "postgresql":
        _guard_rails()


def _guard_rails() -> None:
    # coalition_refuse_change() and the coalition_app role come from migration 0002.
    for table in APPEND_ONLY:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION coalition_refuse_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION coalition_refuse_change()"
        )
    op.execute("GRANT SELECT, INSERT ON audit_events, audit_queue, audit_leaves TO coalition_app")
    op.execute("GRANT UPDATE, DELETE ON audit_queue TO coalition_app")
    op.execute("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO coalition_app")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
    op.drop_table("audit_leaves")
    op.drop_table("audit_queue")
    op.drop_index(op.f("ix_audit_events_action"), table_name="audit_events")
    op.drop_index(op.f("ix_audit_events_at"), table_name="audit_events")
    op.drop_table("audit_events")
