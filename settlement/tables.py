"""SQLAlchemy tables of settlement. Every one of them holds facts, so all are append-only.

- ``settlement_periods``: one row per closed period, citing the signed checkpoint of its cut-off
  (a foreign key to ``checkpoints``, so a close cannot cite a checkpoint that does not exist).
- ``settlement_runs``: the prepared statements of a closed period: the canonical JSON summary and
  its SHA-256, the point value used for the control total, who prepared it.
- ``settlement_statements``: one per (period, partner): the canonical JSON and its SHA-256, with
  the net and the carry-forward as columns for queries.
- ``settlement_lines``: the lines of the statements as rows (money in cents, prices and exact
  amounts as decimal text), with the operator-side booking of each.
- ``settlement_adjustments``: accepted disputes and corrections, settled in the period their
  recording falls in.

On PostgreSQL, triggers refuse UPDATE, DELETE and TRUNCATE on all of them (migration 0004). The
workflow states that follow are new rows in the tables of migration 0006, never edits here:

- ``settlement_steps``: one row per (period, step) of the four-eyes workflow, with who and when.
- ``settlement_payment_files``: the SEPA pain.001 files, with their control sum and SHA-256.
- ``settlement_payments``: one per paid statement: bank reference and the PAYMENT entry booked.
- ``settlement_outputs``: the per-partner JSON, CSV and invoice documents and their SHA-256.
- ``settlement_disputes`` and ``settlement_dispute_decisions``: disputes and their outcome.
- ``settlement_notes`` and ``settlement_countersignatures``: each statement as a note signed by the
  log key, citing its checkpoint, and the partners' Ed25519 countersignatures of it.
"""

from __future__ import annotations

import sqlalchemy as sa

from ledger.db import UTCDateTime, metadata

settlement_periods = sa.Table(
    "settlement_periods",
    metadata,
    sa.Column("label", sa.String(16), primary_key=True),
    sa.Column("kind", sa.String(8), nullable=False),
    # Unique bounds: two closes can never cover the same instant twice (a day inside a month).
    sa.Column("starts_at", UTCDateTime(), nullable=False, unique=True),
    sa.Column("ends_at", UTCDateTime(), nullable=False, unique=True),
    sa.Column("log", sa.String(200), nullable=False),
    sa.Column("checkpoint_size", sa.BigInteger(), nullable=False),
    sa.Column("checkpoint_root", sa.LargeBinary(32), nullable=False),
    sa.Column("checkpoint_note", sa.Text(), nullable=False),
    sa.Column("closed_at", UTCDateTime(), nullable=False),
    sa.Column("closed_by", sa.String(100), nullable=True),
    sa.ForeignKeyConstraint(
        ["log", "checkpoint_size"],
        ["checkpoints.log", "checkpoints.size"],
        name="fk_settlement_periods_checkpoint",
    ),
)

settlement_runs = sa.Table(
    "settlement_runs",
    metadata,
    sa.Column("period", sa.String(16), sa.ForeignKey("settlement_periods.label"), primary_key=True),
    sa.Column("point_value", sa.String(20), nullable=False),
    sa.Column("document", sa.LargeBinary(), nullable=False),
    sa.Column("sha256", sa.LargeBinary(32), nullable=False),
    sa.Column("prepared_at", UTCDateTime(), nullable=False),
    sa.Column("prepared_by", sa.String(100), nullable=True),
)

settlement_statements = sa.Table(
    "settlement_statements",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("period", sa.String(16), sa.ForeignKey("settlement_runs.period"), nullable=False),
    sa.Column("partner", sa.String(64), sa.ForeignKey("partners.code"), nullable=False, index=True),
    sa.Column("carried_in_cents", sa.BigInteger(), nullable=False),
    sa.Column("net_cents", sa.BigInteger(), nullable=False),
    sa.Column("threshold_cents", sa.BigInteger(), nullable=False),
    sa.Column("terms_version", sa.Integer(), nullable=True),
    sa.Column("carried_out_cents", sa.BigInteger(), nullable=False),
    sa.Column("payable_cents", sa.BigInteger(), nullable=False),
    sa.Column("document", sa.LargeBinary(), nullable=False),
    sa.Column("sha256", sa.LargeBinary(32), nullable=False),
    sa.UniqueConstraint("period", "partner"),
)

settlement_lines = sa.Table(
    "settlement_lines",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column(
        "statement_id", sa.String(32), sa.ForeignKey("settlement_statements.id"), nullable=False
    ),
    # Order of the line inside its run: the order of the operator legs' cumulative rounding.
    sa.Column("position", sa.Integer(), nullable=False),
    sa.Column("flow", sa.String(16), nullable=False),
    sa.Column("contract_version", sa.Integer(), nullable=False),
    sa.Column("points", sa.BigInteger(), nullable=False),
    sa.Column("points_gross", sa.BigInteger(), nullable=False),
    sa.Column("points_reversed", sa.BigInteger(), nullable=False),
    sa.Column("points_prior_period", sa.BigInteger(), nullable=False),
    # Decimal text: exact, and no database float can creep in.
    sa.Column("price", sa.String(20), nullable=True),
    sa.Column("rounding_mode", sa.String(20), nullable=False),
    sa.Column("exact", sa.String(40), nullable=False),
    sa.Column("amount_cents", sa.BigInteger(), nullable=False),
    sa.Column("residue", sa.String(40), nullable=False),
    sa.Column("operator_cents", sa.BigInteger(), nullable=False),
    sa.Column("rounding_cents", sa.BigInteger(), nullable=False),
    sa.UniqueConstraint("statement_id", "position"),
)

settlement_adjustments = sa.Table(
    "settlement_adjustments",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("partner", sa.String(64), sa.ForeignKey("partners.code"), nullable=False, index=True),
    sa.Column("amount_cents", sa.BigInteger(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("recorded_at", UTCDateTime(), nullable=False, index=True),
    sa.Column("recorded_by", sa.String(100), nullable=True),
    # A dispute is settled once: its adjustment cannot be recorded twice.
    sa.Column("dispute_id", sa.String(64), nullable=True, unique=True),
    sa.Column("entry_ids", sa.JSON(), nullable=False),
)

# -- the workflow (migration 0006): every step is a new row, never an edit ---------------------

settlement_steps = sa.Table(
    "settlement_steps",
    metadata,
    sa.Column("period", sa.String(16), sa.ForeignKey("settlement_runs.period"), primary_key=True),
    # PREPARED, APPROVED, POSTED, PAYMENT_FILE, PAID, SETTLED: each once per period.
    sa.Column("step", sa.String(16), primary_key=True),
    sa.Column("actor", sa.String(100), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("detail", sa.JSON(), nullable=False),
)

settlement_payment_files = sa.Table(
    "settlement_payment_files",
    metadata,
    sa.Column("period", sa.String(16), sa.ForeignKey("settlement_runs.period"), primary_key=True),
    # pain.001.001.09 or pain.001.001.03
    sa.Column("schema", sa.String(20), primary_key=True),
    sa.Column("message_id", sa.String(35), nullable=False),
    sa.Column("transactions", sa.Integer(), nullable=False),
    sa.Column("control_sum_cents", sa.BigInteger(), nullable=False),
    sa.Column("document", sa.LargeBinary(), nullable=False),
    sa.Column("sha256", sa.LargeBinary(32), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("created_by", sa.String(100), nullable=False),
)

settlement_payments = sa.Table(
    "settlement_payments",
    metadata,
    sa.Column(
        "statement_id", sa.String(32), sa.ForeignKey("settlement_statements.id"), primary_key=True
    ),
    sa.Column("period", sa.String(16), nullable=False, index=True),
    sa.Column("partner", sa.String(64), nullable=False),
    # Signed like the statement's payable: + the partner paid the operator, − the operator paid.
    sa.Column("amount_cents", sa.BigInteger(), nullable=False),
    sa.Column("bank_reference", sa.String(140), nullable=False),
    sa.Column("entry_id", sa.Uuid(), sa.ForeignKey("entries.id"), nullable=False),
    sa.Column("paid_at", UTCDateTime(), nullable=False),
    sa.Column("paid_by", sa.String(100), nullable=False),
)

settlement_outputs = sa.Table(
    "settlement_outputs",
    metadata,
    sa.Column(
        "statement_id", sa.String(32), sa.ForeignKey("settlement_statements.id"), primary_key=True
    ),
    # json, csv, pdf, invoice
    sa.Column("format", sa.String(8), primary_key=True),
    sa.Column("document", sa.LargeBinary(), nullable=False),
    sa.Column("sha256", sa.LargeBinary(32), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

settlement_disputes = sa.Table(
    "settlement_disputes",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("partner", sa.String(64), sa.ForeignKey("partners.code"), nullable=False, index=True),
    sa.Column("period", sa.String(16), nullable=True),
    sa.Column("entry_ids", sa.JSON(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("opened_at", UTCDateTime(), nullable=False),
    sa.Column("opened_by", sa.String(100), nullable=False),
)

settlement_dispute_decisions = sa.Table(
    "settlement_dispute_decisions",
    metadata,
    sa.Column("dispute_id", sa.Uuid(), sa.ForeignKey("settlement_disputes.id"), primary_key=True),
    # ACCEPTED or REJECTED
    sa.Column("decision", sa.String(8), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("amount_cents", sa.BigInteger(), nullable=True),
    sa.Column(
        "adjustment_id", sa.Uuid(), sa.ForeignKey("settlement_adjustments.id"), nullable=True
    ),
    sa.Column("decided_at", UTCDateTime(), nullable=False),
    sa.Column("decided_by", sa.String(100), nullable=False),
)

settlement_notes = sa.Table(
    "settlement_notes",
    metadata,
    sa.Column(
        "statement_id", sa.String(32), sa.ForeignKey("settlement_statements.id"), primary_key=True
    ),
    # The C2SP signed note, signed by the log key, citing the checkpoint of the close.
    sa.Column("note", sa.Text(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

settlement_countersignatures = sa.Table(
    "settlement_countersignatures",
    metadata,
    sa.Column(
        "statement_id",
        sa.String(32),
        sa.ForeignKey("settlement_notes.statement_id"),
        primary_key=True,
    ),
    sa.Column("key_id", sa.String(100), primary_key=True),
    sa.Column("signature", sa.LargeBinary(64), nullable=False),
    sa.Column("signed_at", UTCDateTime(), nullable=False),
    sa.Column("recorded_at", UTCDateTime(), nullable=False),
)

#: Settlement facts: PostgreSQL refuses UPDATE, DELETE and TRUNCATE on them.
APPEND_ONLY = (
    "settlement_periods",
    "settlement_runs",
    "settlement_statements",
    "settlement_lines",
    "settlement_adjustments",
)

#: The workflow's facts (migration 0006), append-only as well.
WORKFLOW_APPEND_ONLY = (
    "settlement_steps",
    "settlement_payment_files",
    "settlement_payments",
    "settlement_outputs",
    "settlement_disputes",
    "settlement_dispute_decisions",
    "settlement_notes",
    "settlement_countersignatures",
)
