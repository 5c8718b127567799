"""SQLAlchemy tables of the audit log (PRODUCT.md §8).

``audit_events`` holds one row per administrative, finance or privacy action and per staff read of
personal data, written in the transaction of the action itself. Like a journal entry, each event
waits in ``audit_queue`` until the integrator appends it to the verifiable log as an ``AUDIT`` leaf
(docs/AUDITING.md, docs/VERIFYING.md §10); ``audit_leaves`` then says which leaf records it. So the
audit log is chained, gapless and covered by the same signed checkpoints as the journal.

``audit_events`` and ``audit_leaves`` are facts: PostgreSQL refuses UPDATE, DELETE and TRUNCATE on
them. ``audit_queue`` is bookkeeping of the write path, emptied by the integrator.
"""

from __future__ import annotations

import sqlalchemy as sa

import ledger.tables  # noqa: F401  (the log tables the links point at)
from ledger.db import UTCDateTime, metadata

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("id", sa.Uuid(), nullable=False, unique=True),
    sa.Column("at", UTCDateTime(), nullable=False, index=True),
    sa.Column("actor", sa.String(100), nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("credential", sa.String(100), nullable=True),
    sa.Column("request_id", sa.String(100), nullable=True),
    sa.Column("source", sa.String(100), nullable=True),
    sa.Column("action", sa.String(64), nullable=False, index=True),
    sa.Column("subject", sa.String(200), nullable=True),
    sa.Column("before", sa.JSON(), nullable=True),
    sa.Column("after", sa.JSON(), nullable=True),
    sa.Column("reason", sa.Text(), nullable=True),
)

audit_queue = sa.Table(
    "audit_queue",
    metadata,
    # As for journal_queue: commit order, not this sequence, decides the leaf index.
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("event_id", sa.Uuid(), sa.ForeignKey("audit_events.id"), nullable=False, unique=True),
)

audit_leaves = sa.Table(
    "audit_leaves",
    metadata,
    sa.Column("event_id", sa.Uuid(), sa.ForeignKey("audit_events.id"), primary_key=True),
    sa.Column("log", sa.String(200), nullable=False),
    sa.Column("idx", sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(["log", "idx"], ["leaves.log", "leaves.idx"]),
    sa.UniqueConstraint("log", "idx"),
)

#: Facts: PostgreSQL refuses UPDATE, DELETE and TRUNCATE on them (migration 0005).
APPEND_ONLY = ("audit_events", "audit_leaves")

# -- witnesses (audit/publish.py) ---------------------------------------------------------------

cosigned_checkpoints = sa.Table(
    "cosigned_checkpoints",
    metadata,
    sa.Column("log", sa.String(200), primary_key=True),
    sa.Column("size", sa.BigInteger(), primary_key=True),
    sa.Column("note", sa.Text(), nullable=False),
    sa.Column("witnesses", sa.JSON(), nullable=False),
    sa.Column("quorum", sa.Integer(), nullable=False),
    sa.Column("published_at", UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(["log", "size"], ["checkpoints.log", "checkpoints.size"]),
)
"""Published checkpoints: the signed note plus at least ``quorum`` witness cosignature lines."""

witness_heads = sa.Table(
    "witness_heads",
    metadata,
    sa.Column("witness", sa.String(300), primary_key=True),
    sa.Column("log", sa.String(200), primary_key=True),
    sa.Column("size", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)
"""Per witness (by vkey) and log: the size the witness last cosigned, i.e. the next ``old``."""
