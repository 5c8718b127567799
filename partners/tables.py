"""SQLAlchemy tables of the coalition's business layer: partners, contracts, members, rules.

Facts that must never change are append-only by design (contract versions, consents, tier
history, erasure decisions): a change is a new row. Mutable rows carry a ``version`` for ETags.
Personal data lives only in ``member_vault``, encrypted per member; no other table holds a name,
e-mail, phone or birth date.
"""

from __future__ import annotations

import sqlalchemy as sa

from ledger.db import UTCDateTime, metadata

partners = sa.Table(
    "partners",
    metadata,
    sa.Column("code", sa.String(64), primary_key=True),
    sa.Column("legal_name", sa.String(200), nullable=False),
    sa.Column("iban", sa.String(34), nullable=False),
    sa.Column("bic", sa.String(11), nullable=False),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("redemption_blocked", sa.Boolean(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
)

credentials = sa.Table(
    "credentials",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("partner", sa.String(64), sa.ForeignKey("partners.code"), nullable=True, index=True),
    sa.Column("staff", sa.String(64), nullable=True, index=True),
    sa.Column("role", sa.String(20), nullable=False),
    # SHA-256 of a 256-bit random secret: a slow hash adds nothing to a secret nobody can guess.
    sa.Column("secret_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("label", sa.String(100), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    sa.Column("last_used_at", UTCDateTime(), nullable=True),
)

partner_keys = sa.Table(
    "partner_keys",
    metadata,
    sa.Column("key_id", sa.String(64), primary_key=True),
    sa.Column("partner", sa.String(64), sa.ForeignKey("partners.code"), nullable=False, index=True),
    sa.Column("public_key", sa.LargeBinary(32), nullable=False),
    sa.Column("valid_from", UTCDateTime(), nullable=False),
    sa.Column("valid_to", UTCDateTime(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

contracts = sa.Table(
    "contracts",
    metadata,
    sa.Column("partner", sa.String(64), sa.ForeignKey("partners.code"), primary_key=True),
    sa.Column("version", sa.Integer(), primary_key=True),
    sa.Column("valid_from", UTCDateTime(), nullable=False),
    sa.Column("valid_to", UTCDateTime(), nullable=True),
    # Prices are decimal text: exact, and no database float can creep in.
    sa.Column("issue_price", sa.String(20), nullable=False),
    sa.Column("reimbursement_price", sa.String(20), nullable=False),
    sa.Column("breakage_rebate", sa.String(20), nullable=False),
    sa.Column("monthly_fee_cents", sa.BigInteger(), nullable=False),
    sa.Column("pending_days", sa.Integer(), nullable=False),
    sa.Column("earn_rate", sa.String(20), nullable=False),
    sa.Column("category_multipliers", sa.JSON(), nullable=False),
    sa.Column("rounding_mode", sa.String(20), nullable=False),
    sa.Column("carry_forward_threshold_cents", sa.BigInteger(), nullable=False),
    sa.Column("signing_required", sa.Boolean(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("created_by", sa.String(100), nullable=True),
)

members = sa.Table(
    "members",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("card_number", sa.String(19), nullable=False, unique=True),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("enrolled_by", sa.String(64), nullable=True),
    sa.Column("enrolled_at", UTCDateTime(), nullable=False),
    sa.Column("last_activity_at", UTCDateTime(), nullable=True),
    sa.Column("version", sa.Integer(), nullable=False),
)

member_refs = sa.Table(
    "member_refs",
    metadata,
    sa.Column("partner", sa.String(64), sa.ForeignKey("partners.code"), primary_key=True),
    sa.Column("customer_ref", sa.String(100), primary_key=True),
    sa.Column("member_id", sa.String(64), sa.ForeignKey("members.id"), nullable=False, index=True),
    sa.Column("linked_at", UTCDateTime(), nullable=False),
)

member_vault = sa.Table(
    "member_vault",
    metadata,
    sa.Column("member_id", sa.String(64), sa.ForeignKey("members.id"), primary_key=True),
    # The member's data key wrapped (AES-GCM) by the master key; NULL once erased, which leaves
    # the ciphertext unreadable forever (crypto-shredding).
    sa.Column("wrapped_key", sa.LargeBinary(), nullable=True),
    sa.Column("master_key_id", sa.String(32), nullable=False),
    sa.Column("ciphertext", sa.LargeBinary(), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

consents = sa.Table(
    "consents",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("member_id", sa.String(64), sa.ForeignKey("members.id"), nullable=False, index=True),
    sa.Column("purpose", sa.String(20), nullable=False),
    sa.Column("granted", sa.Boolean(), nullable=False),
    sa.Column("terms_version", sa.String(20), nullable=False),
    sa.Column("recorded_at", UTCDateTime(), nullable=False),
    sa.Column("recorded_by", sa.String(100), nullable=True),
)

erasures = sa.Table(
    "erasures",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("member_id", sa.String(64), sa.ForeignKey("members.id"), nullable=False, index=True),
    sa.Column("outcome", sa.String(10), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("forfeit_entry", sa.Uuid(), nullable=True),
    sa.Column("decided_at", UTCDateTime(), nullable=False),
    sa.Column("decided_by", sa.String(100), nullable=True),
)

campaigns = sa.Table(
    "campaigns",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("partner", sa.String(64), sa.ForeignKey("partners.code"), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("valid_from", UTCDateTime(), nullable=False),
    sa.Column("valid_to", UTCDateTime(), nullable=False),
    sa.Column("multiplier", sa.String(20), nullable=True),
    sa.Column("bonus_points", sa.BigInteger(), nullable=True),
    sa.Column("categories", sa.JSON(), nullable=False),
    sa.Column("member_cap", sa.BigInteger(), nullable=True),
    # Extra points split between funders by weight, largest remainder: {"SUPER": 1, "BANK": 1}.
    sa.Column("funders", sa.JSON(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

engagement_rules = sa.Table(
    "engagement_rules",
    metadata,
    sa.Column("event_type", sa.String(32), primary_key=True),
    sa.Column("version", sa.Integer(), primary_key=True),
    sa.Column("sponsor", sa.String(64), nullable=False),
    sa.Column("points", sa.BigInteger(), nullable=False),
    sa.Column("cap_per_day", sa.Integer(), nullable=True),
    sa.Column("cap_per_month", sa.Integer(), nullable=True),
    sa.Column("cap_per_year", sa.Integer(), nullable=True),
    sa.Column("valid_from", UTCDateTime(), nullable=False),
    sa.Column("valid_to", UTCDateTime(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

engagements = sa.Table(
    "engagements",
    metadata,
    sa.Column("partner", sa.String(64), primary_key=True),
    sa.Column("event_id", sa.String(100), primary_key=True),
    sa.Column("member_id", sa.String(64), sa.ForeignKey("members.id"), nullable=False),
    sa.Column("event_type", sa.String(32), nullable=False),
    sa.Column("entry_id", sa.Uuid(), nullable=True),
    sa.Column("occurred_at", UTCDateTime(), nullable=False),
    sa.Index("ix_engagements_member_type", "member_id", "event_type", "occurred_at"),
)

tier_levels = sa.Table(
    "tier_levels",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("rank", sa.Integer(), nullable=False, unique=True),
    sa.Column("threshold", sa.BigInteger(), nullable=False),
    sa.Column("multiplier", sa.String(20), nullable=False),
)

tier_history = sa.Table(
    "tier_history",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("member_id", sa.String(64), sa.ForeignKey("members.id"), nullable=False, index=True),
    sa.Column("tier", sa.String(32), sa.ForeignKey("tier_levels.name"), nullable=False),
    sa.Column("floor", sa.String(32), nullable=True),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("changed_at", UTCDateTime(), nullable=False),
    sa.Column("changed_by", sa.String(100), nullable=True),
)

program_settings = sa.Table(
    "program_settings",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.JSON(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

campaign_awards = sa.Table(
    "campaign_awards",
    metadata,
    # What each campaign gave each member, so per-member caps hold across requests.
    sa.Column("campaign_id", sa.String(64), sa.ForeignKey("campaigns.id"), primary_key=True),
    sa.Column("entry_id", sa.Uuid(), primary_key=True),
    sa.Column("member_id", sa.String(64), sa.ForeignKey("members.id"), nullable=False),
    sa.Column("points", sa.BigInteger(), nullable=False),
    sa.Column("awarded_at", UTCDateTime(), nullable=False),
    sa.Index("ix_campaign_awards_member", "member_id", "campaign_id"),
)
