"""request_nonces: nonces of signed API requests, the replay guard of api.signatures

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import ledger.db

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_nonces",
        sa.Column("partner", sa.String(length=64), nullable=False),
        sa.Column("nonce", sa.String(length=128), nullable=False),
        sa.Column("created", ledger.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("partner", "nonce", name=op.f("pk_request_nonces")),
    )
    op.create_index(op.f("ix_request_nonces_created"), "request_nonces", ["created"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        # Not a fact: rows expire once their request could no longer be accepted.
        op.execute("GRANT SELECT, INSERT, DELETE ON request_nonces TO coalition_app")


def downgrade() -> None:
    op.drop_index(op.f("ix_request_nonces_created"), table_name="request_nonces")
    op.drop_table("request_nonces")
