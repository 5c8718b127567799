"""settlement indexes: entries by kind and ledger time, for a period's expiries

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23 18:30:00

Preparing a period's statements sums the points its EXPIRE entries took from each funder's lots
(settlement.repository, ``_expired``). Without this index that means scanning every entry of the
month to find the ~2% that are expiries (10 s of a 10-million-entry month on the benchmark box,
bench/settlement.py); with it, one range scan of ``(kind, booked_at)``. The close's first-flow
check (the earliest entry of a settled kind) can use it too.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_entries_kind_booked_at", "entries", ["kind", "booked_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_entries_kind_booked_at", table_name="entries")
