"""Members: enrolment, lookup, balance, history, consents, and the privacy officer's requests.

Partners see a member's personal data only where the member shared it with them
(``partners.members.visible_to_partner``); balances are readable by every partner because any
partner must be able to accept any member's points; history shows a partner only its own entries.
"""

from __future__ import annotations

import base64
import re
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import audit, current_credential, requires
from api.errors import ApiProblem
from api.schemas import (
    BalanceSchema,
    ConsentRequest,
    ConsentSchema,
    EnrollRequest,
    EntryPageSchema,
    ErasureRequest,
    ErasureSchema,
    MemberSchema,
    PageQuery,
    entry_json,
)
from ledger import tables as lt
from ledger.model import member_account
from ledger.repository import SqlLedgerStore
from partners import members
from partners.directory import Role
from partners.errors import UnknownMember
from partners.members import Member

blp = Blueprint("members", __name__, url_prefix="/v1/members", description="Members")

#: What a member id can look like (``m_`` and hex today); anything else names no member.
_MEMBER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@blp.url_value_preprocessor
def _refuse_impossible_ids(endpoint: str | None, values: dict[str, Any] | None) -> None:
    """A member id no member can have is a 404 before it reaches the database.

    Without this a NUL byte in the path would make PostgreSQL fail (a 500) instead of missing.
    """
    member_id = (values or {}).get("member_id")
    if member_id is not None and not _MEMBER_ID.fullmatch(member_id):
        raise UnknownMember(member_id)


def _services() -> Any:
    return current_app.extensions["coalition"]


def _master_key() -> Any:
    key = _services().master_key
    if key is None:
        raise ApiProblem(503, "vault-unavailable", "the vault master key is not configured")
    return key


def _render(conn: Any, found: Member) -> dict:
    """A member as the caller may see it: personal data only where it was shared."""
    credential = current_credential()
    key = _services().master_key
    readable = key is not None and found.status != "closed"
    # Staff other than the privacy officer never see decrypted personal data (PRODUCT.md §9).
    if credential.partner is None:
        shared = credential.role == Role.PRIVACY
    else:
        shared = members.visible_to_partner(conn, found.id, credential.partner)
    shown = members.personal_data(conn, found.id, key) or None if readable and shared else None
    if shown and credential.partner is None:
        audit(conn, "personal_data.read", found.id)  # every staff read of personal data (§5)
    return {**asdict(found), "personal": shown}


@blp.route("")
class Enroll(MethodView):
    @requires("members.enroll")
    @blp.arguments(EnrollRequest)
    @blp.response(201, MemberSchema)
    def post(self, data: dict) -> tuple:
        """Enroll a member for the calling partner (or for the operator, as admin)."""
        personal = data.get("personal")
        if personal and "birth_date" in personal:
            personal = {**personal, "birth_date": personal["birth_date"].isoformat()}
        with _services().db.transaction() as conn:
            found = members.enroll(
                conn,
                by=current_credential().partner,
                personal=personal,
                customer_ref=data.get("customer_ref"),
                now=datetime.now(UTC),
                master_key=_master_key(),
                terms_version=data.get("terms_version"),
                consents=data.get("consents"),
            )
            body = _render(conn, found)
        return body, 201, {"Location": f"/v1/members/{found.id}"}


@blp.route("/<string:member_id>")
class MemberResource(MethodView):
    @requires("members.read")
    @blp.response(200, MemberSchema)
    def get(self, member_id: str) -> dict:
        """A member's identifiers and status (and personal data, where shared with you)."""
        with _services().db.transaction() as conn:
            return _render(conn, members.member(conn, member_id))


@blp.route("/by-card/<string:card>")
class ByCard(MethodView):
    @requires("members.read")
    @blp.response(200, MemberSchema)
    def get(self, card: str) -> dict:
        """Find a member by coalition card number (its Luhn check digit is verified first)."""
        with _services().db.transaction() as conn:
            return _render(conn, members.member_by_card(conn, card))


@blp.route("/<string:member_id>/balance")
class Balance(MethodView):
    @requires("members.balance")
    @blp.response(200, BalanceSchema)
    def get(self, member_id: str) -> dict:
        """Available, pending and held points, tier and progress, points expiring in 90 days."""
        services = _services()
        with services.db.transaction() as conn:
            found = members.member(conn, member_id)
            store = SqlLedgerStore(conn)
            balances = store.balances(
                [member_account(found.id, r) for r in ("available", "pending", "held")]
            )
            body = {
                "member": found.id,
                **{
                    role: balances[member_account(found.id, role)]
                    for role in ("available", "pending", "held")
                },
                **_loyalty_status(conn, found.id),
            }
        return body


def _loyalty_status(conn: Any, member_id: str) -> dict:
    """Tier, progress and expiring points, from the business layer."""
    from partners import expiry, tiers

    now = datetime.now(UTC)
    soon = expiry.expiring_soon(conn, member_id, now, days=90)
    expiring = [
        {"expires_at": item.expires_at.isoformat(), "points": item.points, "reason": item.reason}
        for item in soon
    ]
    if not tiers.tier_levels(conn):
        return {
            "tier": None,
            "points_earned_12m": None,
            "next_tier": None,
            "points_to_next_tier": None,
            "expiring_90_days": expiring,
        }
    status = tiers.tier_status(conn, member_id, now)
    return {
        "tier": status.tier.name if status.tier else None,
        "points_earned_12m": status.points_12m,
        "next_tier": status.next_tier.name if status.next_tier else None,
        "points_to_next_tier": status.points_missing,
        "expiring_90_days": expiring,
    }


@blp.route("/<string:member_id>/entries")
class MemberEntries(MethodView):
    @requires("members.entries")
    @blp.arguments(PageQuery, location="query")
    @blp.response(200, EntryPageSchema)
    def get(self, query: dict, member_id: str) -> dict:
        """The member's journal entries, newest first; a partner sees only its own entries."""
        with _services().db.transaction() as conn:
            found = members.member(conn, member_id)
            ids, next_cursor = _entry_page(conn, found.id, query["limit"], query["cursor"])
            entries = SqlLedgerStore(conn).load_entries(ids)
        return {"items": [entry_json(e) for e in entries], "next_cursor": next_cursor}


def _entry_page(
    conn: Any, member_id: str, limit: int, cursor: str | None
) -> tuple[list, str | None]:
    accounts = [member_account(member_id, r) for r in ("available", "pending", "held")]
    query = (
        sa.select(lt.entries.c.id, lt.entries.c.booked_at)
        .where(
            lt.entries.c.id.in_(
                sa.select(lt.postings.c.entry_id).where(lt.postings.c.account.in_(accounts))
            )
        )
        .order_by(lt.entries.c.booked_at.desc(), lt.entries.c.id.desc())
        .limit(limit + 1)
    )
    partner = current_credential().partner
    if partner is not None:
        query = query.where(lt.entries.c.partner == partner)
    if cursor:
        booked_at, entry_id = _decode_cursor(cursor)
        query = query.where(
            sa.or_(
                lt.entries.c.booked_at < booked_at,
                sa.and_(lt.entries.c.booked_at == booked_at, lt.entries.c.id < entry_id),
            )
        )
    rows = conn.execute(query).all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = _encode_cursor(rows[-1].booked_at, rows[-1].id) if more else None
    return [r.id for r in rows], next_cursor


def _encode_cursor(booked_at: datetime, entry_id: Any) -> str:
    raw = f"{booked_at.isoformat()}|{entry_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, Any]:
    from uuid import UUID

    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, _, entry_id = raw.partition("|")
        booked_at = datetime.fromisoformat(when)
        # The cursor is the caller's to forge: a naive time, or one with no UTC equivalent,
        # would fail in the query (a 500) rather than name an entry.
        if booked_at.utcoffset() is None:
            raise ValueError("naive time")
        return booked_at.astimezone(UTC), UUID(entry_id)
    except (ValueError, UnicodeDecodeError, OverflowError):
        raise ApiProblem(422, "invalid-cursor", "the cursor is not one this API gave",
                         field="cursor") from None


@blp.route("/<string:member_id>/consents")
class Consents(MethodView):
    @requires("members.consents")
    @blp.arguments(ConsentRequest)
    @blp.response(201, ConsentSchema)
    def post(self, data: dict, member_id: str) -> tuple:
        """Record a member's consent decision (history is kept; the latest per purpose holds)."""
        with _services().db.transaction() as conn:
            consent = members.record_consent(
                conn,
                member_id,
                purpose=data["purpose"],
                granted=data["granted"],
                terms_version=data["terms_version"],
                now=datetime.now(UTC),
                by=current_credential().id,
            )
        return asdict(consent), 201


@blp.route("/<string:member_id>/export")
class Export(MethodView):
    @requires("members.export")
    @blp.response(200)
    def get(self, member_id: str) -> dict:
        """Everything held about the member, for a right-of-access request (privacy officer)."""
        with _services().db.transaction() as conn:
            export = members.export_member(conn, member_id, _master_key())
            audit(conn, "member.export", member_id)
        _services().integrate()
        return export


@blp.route("/<string:member_id>/erasure")
class Erasure(MethodView):
    @requires("members.erasure")
    @blp.arguments(ErasureRequest)
    @blp.response(200, ErasureSchema)
    def post(self, data: dict, member_id: str) -> dict:
        """Erase the member's personal data (or refuse, recording why, where policy says)."""
        with _services().db.transaction() as conn:
            outcome = members.erase(
                conn,
                member_id,
                now=datetime.now(UTC),
                by=current_credential().id,
                reason=data["reason"],
            )
            audit(conn, "member.erase", member_id, {"outcome": outcome.outcome},
                  reason=data["reason"])
        _services().integrate()
        return asdict(outcome)
