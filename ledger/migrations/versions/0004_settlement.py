"""settlement: periods, statements, lines, approvals, payments, disputes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 16:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import ledger.db

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: Settlement facts: closes, prepared runs, statements, lines and adjustments are never edited.
APPEND_ONLY = (
    "settlement_periods",
    "settlement_runs",
    "settlement_statements",
    "settlement_lines",
    "settlement_adjustments",
)


def upgrade() -> None:
    op.create_table(
        "settlement_periods",
        sa.Column("label", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("starts_at", ledger.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ends_at", ledger.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("log", sa.String(length=200), nullable=False),
        sa.Column("checkpoint_size", sa.BigInteger(), nullable=False),
        sa.Column("checkpoint_root", sa.LargeBinary(length=32), nullable=False),
        sa.Column("checkpoint_note", sa.Text(), nullable=False),
        sa.Column("closed_at", ledger.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("closed_by", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(
            ["log", "checkpoint_size"],
            ["checkpoints.log", "checkpoints.size"],
            name="fk_settlement_periods_checkpoint",
        ),
        sa.PrimaryKeyConstraint("label", name=op.f("pk_settlement_periods")),
        sa.UniqueConstraint("ends_at", name=op.f("uq_settlement_periods_ends_at")),
        sa.UniqueConstraint("starts_at", name=op.f("uq_settlement_periods_starts_at")),
    )
    op.create_table(
        "settlement_runs",
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("point_value", sa.String(length=20), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.LargeBinary(length=32), nullable=False),
        sa.Column("prepared_at", ledger.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("prepared_by", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(
            ["period"],
            ["settlement_periods.label"],
            name=op.f("fk_settlement_runs_period_settlement_periods"),
        ),
        sa.PrimaryKeyConstraint("period", name=op.f("pk_settlement_runs")),
    )
    op.create_table(
        "settlement_statements",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("partner", sa.String(length=64), nullable=False),
        sa.Column("carried_in_cents", sa.BigInteger(), nullable=False),
        sa.Column("net_cents", sa.BigInteger(), nullable=False),
        sa.Column("threshold_cents", sa.BigInteger(), nullable=False),
        sa.Column("terms_version", sa.Integer(), nullable=True),
        sa.Column("carried_out_cents", sa.BigInteger(), nullable=False),
        sa.Column("payable_cents", sa.BigInteger(), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.LargeBinary(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["partner"],
            ["partners.code"],
            name=op.f("fk_settlement_statements_partner_partners"),
        ),
        sa.ForeignKeyConstraint(
            ["period"],
            ["settlement_runs.period"],
            name=op.f("fk_settlement_statements_period_settlement_runs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlement_statements")),
        sa.UniqueConstraint(
            "period", "partner", name=op.f("uq_settlement_statements_period_partner")
        ),
    )
    with op.batch_alter_table("settlement_statements", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_settlement_statements_partner"), ["partner"], unique=False
        )

    op.create_table(
        "settlement_lines",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("statement_id", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("flow", sa.String(length=16), nullable=False),
        sa.Column("contract_version", sa.Integer(), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("points_gross", sa.BigInteger(), nullable=False),
        sa.Column("points_reversed", sa.BigInteger(), nullable=False),
        sa.Column("points_prior_period", sa.BigInteger(), nullable=False),
        sa.Column("price", sa.String(length=20), nullable=True),
        sa.Column("rounding_mode", sa.String(length=20), nullable=False),
        sa.Column("exact", sa.String(length=40), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("residue", sa.String(length=40), nullable=False),
        sa.Column("operator_cents", sa.BigInteger(), nullable=False),
        sa.Column("rounding_cents", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["statement_id"],
            ["settlement_statements.id"],
            name=op.f("fk_settlement_lines_statement_id_settlement_statements"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlement_lines")),
        sa.UniqueConstraint(
            "statement_id", "position", name=op.f("uq_settlement_lines_statement_id_position")
        ),
    )
    op.create_table(
        "settlement_adjustments",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("partner", sa.String(length=64), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("recorded_at", ledger.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("recorded_by", sa.String(length=100), nullable=True),
        sa.Column("dispute_id", sa.String(length=64), nullable=True),
        sa.Column("entry_ids", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["partner"],
            ["partners.code"],
            name=op.f("fk_settlement_adjustments_partner_partners"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlement_adjustments")),
        sa.UniqueConstraint("dispute_id", name=op.f("uq_settlement_adjustments_dispute_id")),
    )
    with op.batch_alter_table("settlement_adjustments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_settlement_adjustments_partner"), ["partner"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_settlement_adjustments_recorded_at"), ["recorded_at"], unique=False
        )

    if op.get_bind().dialect.name == "postgresql":
        _guard_rails()


def _guard_rails() -> None:
    """Refuse UPDATE, DELETE and TRUNCATE on settlement facts; the app role may only append."""
    for table in APPEND_ONLY:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION coalition_refuse_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION coalition_refuse_change()"
        )
    op.execute(f"GRANT SELECT, INSERT ON {', '.join(APPEND_ONLY)} TO coalition_app")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
    with op.batch_alter_table("settlement_adjustments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_settlement_adjustments_recorded_at"))
        batch_op.drop_index(batch_op.f("ix_settlement_adjustments_partner"))

    op.drop_table("settlement_adjustments")
    op.drop_table("settlement_lines")
    with op.batch_alter_table("settlement_statements", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_settlement_statements_partner"))

    op.drop_table("settlement_statements")
    op.drop_table("settlement_runs")
    op.drop_table("settlement_periods")
