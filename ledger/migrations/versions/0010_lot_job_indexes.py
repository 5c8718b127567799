"""lot job indexes: the lots due for release or expiry, by range scan

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 23:59:00

Every day the scheduled jobs look for the members with pending lots whose return window has
closed (``pending_until <= now``) and with available lots past their expiry (``expires_at <=
now``), both among the lots that still hold points (ledger.repository,
``members_with_due_releases`` and ``members_with_expired_lots``). Without an index each search
reads the whole lots table (two full scans a day, a growing share of the demo's daily jobs);
with these two partial indexes, one short range scan each. Only lots with points left are
indexed, so spent lots cost the index nothing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_PENDING_LIVE = sa.and_(sa.column("pending").is_(True), sa.column("remaining") > 0)
_AVAILABLE_LIVE = sa.and_(sa.column("pending").is_(False), sa.column("remaining") > 0)


def upgrade() -> None:
    op.create_index(
        "ix_lots_due_release",
        "lots",
        ["pending_until", "member"],
        unique=False,
        sqlite_where=_PENDING_LIVE,
        postgresql_where=_PENDING_LIVE,
    )
    op.create_index(
        "ix_lots_due_expiry",
        "lots",
        ["expires_at", "member"],
        unique=False,
        sqlite_where=_AVAILABLE_LIVE,
        postgresql_where=_AVAILABLE_LIVE,
    )


def downgrade() -> None:
    op.drop_index("ix_lots_due_expiry", table_name="lots")
    op.drop_index("ix_lots_due_release", table_name="lots")
