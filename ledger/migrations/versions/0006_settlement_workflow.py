"""settlement workflow: steps, payment files, payments, outputs, disputes

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 16:40:06.988114
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import ledger.db

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: Workflow facts: steps, payment files, payments, outputs, disputes and decisions are never edited.
APPEND_ONLY = (
    "settlement_steps",
    "settlement_payment_files",
    "settlement_payments",
    "settlement_outputs",
    "settlement_disputes",
    "settlement_dispute_decisions",
)


def upgrade() -> None:
    op.create_table(
        "settlement_disputes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("partner", sa.String(length=64), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=True),
        sa.Column("entry_ids", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("opened_at", ledger.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("opened_by", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["partner"], ["partners.code"], name=op.f("fk_settlement_disputes_partner_partners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlement_disputes")),
    )
    with op.batch_alter_table("settlement_disputes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_settlement_disputes_partner"), ["partner"], unique=False
        )

    op.create_table(
        "settlement_dispute_decisions",
        sa.Column("dispute_id", sa.Uuid(), nullable=False),
        sa.Column("decision", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=True),
        sa.Column("adjustment_id", sa.Uuid(), nullable=True),
        sa.Column("decided_at", ledger.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["adjustment_id"],
            ["settlement_adjustments.id"],
            name=op.f("fk_settlement_dispute_decisions_adjustment_id_settlement_adjustments"),
        ),
        sa.ForeignKeyConstraint(
            ["dispute_id"],
            ["settlement_disputes.id"],
            name=op.f("fk_settlement_dispute_decisions_dispute_id_settlement_disputes"),
        ),
        sa.PrimaryKeyConstraint("dispute_id", name=op.f("pk_settlement_dispute_decisions")),
    )
    op.create_table(
        "settlement_payment_files",
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("schema", sa.String(length=20), nullable=False),
        sa.Column("message_id", sa.String(length=35), nullable=False),
        sa.Column("transactions", sa.Integer(), nullable=False),
        sa.Column("control_sum_cents", sa.BigInteger(), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", ledger.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["period"],
            ["settlement_runs.period"],
            name=op.f("fk_settlement_payment_files_period_settlement_runs"),
        ),
        sa.PrimaryKeyConstraint("period", "schema", name=op.f("pk_settlement_payment_files")),
    )
    op.create_table(
        "settlement_steps",
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("step", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("at", ledger.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["period"],
            ["settlement_runs.period"],
            name=op.f("fk_settlement_steps_period_settlement_runs"),
        ),
        sa.PrimaryKeyConstraint("period", "step", name=op.f("pk_settlement_steps")),
    )
    op.create_table(
        "settlement_outputs",
        sa.Column("statement_id", sa.String(length=32), nullable=False),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", ledger.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["statement_id"],
            ["settlement_statements.id"],
            name=op.f("fk_settlement_outputs_statement_id_settlement_statements"),
        ),
        sa.PrimaryKeyConstraint("statement_id", "format", name=op.f("pk_settlement_outputs")),
    )
    op.create_table(
        "settlement_payments",
        sa.Column("statement_id", sa.String(length=32), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("partner", sa.String(length=64), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("bank_reference", sa.String(length=140), nullable=False),
        sa.Column("entry_id", sa.Uuid(), nullable=False),
        sa.Column("paid_at", ledger.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("paid_by", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["entry_id"], ["entries.id"], name=op.f("fk_settlement_payments_entry_id_entries")
        ),
        sa.ForeignKeyConstraint(
            ["statement_id"],
            ["settlement_statements.id"],
            name=op.f("fk_settlement_payments_statement_id_settlement_statements"),
        ),
        sa.PrimaryKeyConstraint("statement_id", name=op.f("pk_settlement_payments")),
    )
    with op.batch_alter_table("settlement_payments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_settlement_payments_period"), ["period"], unique=False)
    op.create_table(
        "settlement_notes",
        sa.Column("statement_id", sa.String(length=32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", ledger.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["statement_id"],
            ["settlement_statements.id"],
            name=op.f("fk_settlement_notes_statement_id_settlement_statements"),
        ),
        sa.PrimaryKeyConstraint("statement_id", name=op.f("pk_settlement_notes")),
    )
    op.create_table(
        "settlement_countersignatures",
        sa.Column("statement_id", sa.String(length=32), nullable=False),
        sa.Column("key_id", sa.String(length=100), nullable=False),
        sa.Column("signature", sa.LargeBinary(length=64), nullable=False),
        sa.Column("signed_at", ledger.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", ledger.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["statement_id"],
            ["settlement_notes.statement_id"],
            name=op.f("fk_settlement_countersignatures_statement_id_settlement_notes"),
        ),
        sa.PrimaryKeyConstraint(
            "statement_id", "key_id", name=op.f("pk_settlement_countersignatures")
        ),
    )

    if op.get_bind().dialect.name == "postgresql":
        _guard_rails()


def _guard_rails() -> None:
    """Refuse UPDATE, DELETE and TRUNCATE on workflow facts; the app role may only append."""
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
    op.execute(f"GRANT SELECT, INSERT ON {', '.join(APPEND_ONLY)} TO coalition_app")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
    op.drop_table("settlement_countersignatures")
    op.drop_table("settlement_notes")
    with op.batch_alter_table("settlement_payments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_settlement_payments_period"))

    op.drop_table("settlement_payments")
    op.drop_table("settlement_outputs")
    op.drop_table("settlement_steps")
    op.drop_table("settlement_payment_files")
    op.drop_table("settlement_dispute_decisions")
    with op.batch_alter_table("settlement_disputes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_settlement_disputes_partner"))

    op.drop_table("settlement_disputes")
