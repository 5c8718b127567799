"""SQLAlchemy tables of the ledger kernel.

Journal tables (facts, append-only; PostgreSQL refuses UPDATE/DELETE/TRUNCATE on them):
``entries``, ``postings``, ``lot_moves``, ``lot_releases``.

Caches and state derived from the journal (the verifier recomputes them): ``balances`` (running
balances, sharded for hot accounts), ``lots`` (terms are facts, ``remaining``/``pending`` are
cache), ``holds`` (open/closed state of two-phase burns).

Bookkeeping of the write path: ``idempotency`` (one row per caller key, with the outcome) and
``journal_queue`` (entries committed but not yet integrated into the verifiable log).
"""

from __future__ import annotations

import sqlalchemy as sa

from ledger.db import UTCDateTime, metadata

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("code", sa.String(100), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("owner", sa.String(64), nullable=True),
    sa.Column("opened_at", UTCDateTime(), nullable=False),
)

balances = sa.Table(
    "balances",
    metadata,
    sa.Column("account", sa.String(100), sa.ForeignKey("accounts.code"), primary_key=True),
    # Accounts that can never go negative keep one row (shard 0) and are locked to be checked;
    # unconstrained hot accounts (partner:P:issued) spread their updates over a few shards so
    # concurrent writers for different members never queue on one row.
    sa.Column("shard", sa.SmallInteger(), primary_key=True),
    sa.Column("balance", sa.BigInteger(), nullable=False),
)

entries = sa.Table(
    "entries",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("business_time", UTCDateTime(), nullable=False),
    sa.Column("booked_at", UTCDateTime(), nullable=False, index=True),
    sa.Column("partner", sa.String(64), nullable=True, index=True),
    sa.Column("credential", sa.String(100), nullable=True),
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    sa.Column("refers_to", sa.Uuid(), sa.ForeignKey("entries.id"), nullable=True, index=True),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("attributes", sa.JSON(), nullable=False),
    # A period's entries of one kind (settlement's expiries), by range scan: migration 0009.
    sa.Index("ix_entries_kind_booked_at", "kind", "booked_at"),
)

postings = sa.Table(
    "postings",
    metadata,
    sa.Column("entry_id", sa.Uuid(), sa.ForeignKey("entries.id"), primary_key=True),
    sa.Column("line", sa.SmallInteger(), primary_key=True),
    sa.Column("account", sa.String(100), sa.ForeignKey("accounts.code"), nullable=False),
    sa.Column("amount", sa.BigInteger(), nullable=False),
    # With the amount, an account's postings are summed from the index alone (migration 0011).
    sa.Index("ix_postings_account_entry_amount", "account", "entry_id", "amount"),
)

#: The predicates of the lots' partial indexes (the daily jobs' queries use these very terms, so
#: that SQLite and PostgreSQL see that the index covers them).
LOTS_PENDING_LIVE = sa.and_(sa.column("pending").is_(True), sa.column("remaining") > 0)
LOTS_AVAILABLE_LIVE = sa.and_(sa.column("pending").is_(False), sa.column("remaining") > 0)

lots = sa.Table(
    "lots",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("opened_by", sa.Uuid(), sa.ForeignKey("entries.id"), nullable=False, index=True),
    sa.Column("member", sa.String(64), nullable=False),
    sa.Column("funder", sa.String(64), nullable=False),
    sa.Column("amount", sa.BigInteger(), nullable=False),
    sa.Column("earned_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("price_version", sa.String(64), nullable=True),
    sa.Column("pending_until", UTCDateTime(), nullable=True),
    sa.Column("remaining", sa.BigInteger(), nullable=False),
    sa.Column("pending", sa.Boolean(), nullable=False),
    sa.CheckConstraint("remaining >= 0 AND remaining <= amount", name="remaining_in_range"),
    sa.Index("ix_lots_member_expires", "member", "expires_at"),
    # The daily jobs' searches (repository: members_with_due_releases, members_with_expired_lots)
    # by range scan over the lots that still hold points: migration 0010.
    sa.Index(
        "ix_lots_due_release",
        "pending_until",
        "member",
        sqlite_where=LOTS_PENDING_LIVE,
        postgresql_where=LOTS_PENDING_LIVE,
    ),
    sa.Index(
        "ix_lots_due_expiry",
        "expires_at",
        "member",
        sqlite_where=LOTS_AVAILABLE_LIVE,
        postgresql_where=LOTS_AVAILABLE_LIVE,
    ),
)

lot_moves = sa.Table(
    "lot_moves",
    metadata,
    sa.Column("entry_id", sa.Uuid(), sa.ForeignKey("entries.id"), primary_key=True),
    sa.Column("lot_id", sa.Uuid(), sa.ForeignKey("lots.id"), primary_key=True),
    # Order within the entry: a burn reversal restores the lot consumed last first.
    sa.Column("line", sa.SmallInteger(), nullable=False),
    sa.Column("delta", sa.BigInteger(), nullable=False),
    sa.Index("ix_lot_moves_lot", "lot_id"),
)

lot_releases = sa.Table(
    "lot_releases",
    metadata,
    sa.Column("entry_id", sa.Uuid(), sa.ForeignKey("entries.id"), primary_key=True),
    sa.Column("lot_id", sa.Uuid(), sa.ForeignKey("lots.id"), primary_key=True),
)

holds = sa.Table(
    "holds",
    metadata,
    sa.Column("entry_id", sa.Uuid(), sa.ForeignKey("entries.id"), primary_key=True),
    sa.Column("member", sa.String(64), nullable=False),
    sa.Column("partner", sa.String(64), nullable=False),
    sa.Column("amount", sa.BigInteger(), nullable=False),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("closed_by", sa.Uuid(), sa.ForeignKey("entries.id"), nullable=True),
    sa.Index("ix_holds_status_expires", "status", "expires_at"),
)

idempotency = sa.Table(
    "idempotency",
    metadata,
    sa.Column("credential", sa.String(100), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("request_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("request", sa.JSON(), nullable=False),
    # The entry this key produced, or NULL with the refusal recorded below. No foreign key: the
    # row is written first, to claim the key, before the entry exists.
    sa.Column("entry_id", sa.Uuid(), nullable=True),
    sa.Column("refusal", sa.JSON(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

journal_queue = sa.Table(
    "journal_queue",
    metadata,
    # Commit order, not this sequence, decides a leaf's index: the integrator reads committed rows.
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("entry_id", sa.Uuid(), sa.ForeignKey("entries.id"), nullable=False, unique=True),
)

# -- the verifiable log (PRODUCT.md §4): append-only, guarded like the journal -----------------

logs = sa.Table(
    "logs",
    metadata,
    sa.Column("origin", sa.String(200), primary_key=True),
    sa.Column("vkey", sa.Text(), nullable=False),
    sa.Column("opened_at", UTCDateTime(), nullable=False),
    sa.Column("previous_origin", sa.String(200), sa.ForeignKey("logs.origin"), nullable=True),
)

leaves = sa.Table(
    "leaves",
    metadata,
    sa.Column("log", sa.String(200), sa.ForeignKey("logs.origin"), primary_key=True),
    sa.Column("idx", sa.BigInteger(), primary_key=True),
    sa.Column("entry_id", sa.Uuid(), sa.ForeignKey("entries.id"), nullable=True, unique=True),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
    sa.Column("data", sa.LargeBinary(), nullable=False),
)

tree_nodes = sa.Table(
    "tree_nodes",
    metadata,
    sa.Column("log", sa.String(200), sa.ForeignKey("logs.origin"), primary_key=True),
    sa.Column("level", sa.SmallInteger(), primary_key=True),
    sa.Column("idx", sa.BigInteger(), primary_key=True),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
)

checkpoints = sa.Table(
    "checkpoints",
    metadata,
    sa.Column("log", sa.String(200), sa.ForeignKey("logs.origin"), primary_key=True),
    sa.Column("size", sa.BigInteger(), primary_key=True),
    sa.Column("root", sa.LargeBinary(32), nullable=False),
    sa.Column("note", sa.Text(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

#: Tables whose rows are facts: PostgreSQL refuses UPDATE, DELETE and TRUNCATE on them.
APPEND_ONLY = (
    "entries",
    "postings",
    "lot_moves",
    "lot_releases",
    "logs",
    "leaves",
    "tree_nodes",
    "checkpoints",
)
