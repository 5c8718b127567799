"""witnesses: published cosigned checkpoints and each witness's last cosigned size

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 16:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import ledger.db

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: A published cosigned checkpoint is a fact (PRODUCT.md §4 "Database guard rails").
APPEND_ONLY = ("cosigned_checkpoints",)


def upgrade() -> None:
    op.create_table(
        "cosigned_checkpoints",
        sa.Column("log", sa.String(length=200), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("witnesses", sa.JSON(), nullable=False),
        sa.Column("quorum", sa.Integer(), nullable=False),
        sa.Column("published_at", ledger.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["log", "size"],
            ["checkpoints.log", "checkpoints.size"],
            name=op.f("fk_cosigned_checkpoints_log_checkpoints"),
        ),
        sa.PrimaryKeyConstraint("log", "size", name=op.f("pk_cosigned_checkpoints")),
    )
    op.create_table(
        "witness_heads",
        sa.Column("witness", sa.String(length=300), nullable=False),
        sa.Column("log", sa.String(length=200), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", ledger.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("witness", "log", name=op.f("pk_witness_heads")),
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
    op.execute("GRANT SELECT, INSERT ON cosigned_checkpoints, witness_heads TO coalition_app")
    op.execute("GRANT UPDATE ON witness_heads TO coalition_app")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
    op.drop_table("witness_heads")
    op.drop_table("cosigned_checkpoints")
