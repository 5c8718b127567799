"""Points that move: burn, holds (hold, capture, void), reversals, transfers; entries and receipts.

Every POST that moves points needs an ``Idempotency-Key`` header. The key is scoped to the caller's
principal (its partner, or its staff account): a retry returns the original entry with
``Idempotent-Replayed: true``; the same key with another payload is a 409 naming the fields.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from flask import current_app, request
from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import acting_partner, current_credential, requires
from api.errors import ApiProblem
from api.schemas import (
    BurnRequest,
    CaptureRequest,
    EntrySchema,
    HoldRequest,
    ReceiptQuery,
    ReceiptSchema,
    ReversalRequest,
    TransferRequest,
    VoidRequest,
    entry_json,
)
from api.signatures import signed
from ledger import tables as lt
from ledger.errors import UnknownEntry
from ledger.receipts import receipt, wait_for_receipt
from ledger.repository import SqlLedgerStore
from ledger.service import Booking
from partners import directory, earning

blp = Blueprint("points", __name__, url_prefix="/v1", description="Spend, hold, reverse, transfer")

IDEMPOTENCY_HEADER = {
    "Idempotency-Key": {
        "description": "1–200 characters, unique per operation; a retry reuses it",
        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
        "required": True,
    }
}


def idempotency_key() -> str:
    key = request.headers.get("Idempotency-Key", "")
    # Printable only: the key is stored, and PostgreSQL refuses a NUL byte in text (a 500).
    if not 1 <= len(key) <= 200 or not key.isprintable():
        raise ApiProblem(
            400,
            "idempotency-key-required",
            "send an Idempotency-Key header of 1–200 printable characters",
        )
    return key


def book(decide: Callable[[Any, Any, str], Booking]) -> tuple[dict, int, dict]:
    """Run one kernel command in one transaction and render the booking."""
    services = current_app.extensions["coalition"]
    key = idempotency_key()
    with services.db.transaction() as conn, signed(conn):
        booking = decide(conn, SqlLedgerStore(conn), key)
    services.integrate()
    headers = {"Idempotent-Replayed": "true"} if booking.replayed else {}
    return entry_json(booking.entry), 201, headers


def request_time(data: dict, conn: Any, key: str, now: datetime | None = None) -> datetime:
    """The request's business time; when it is omitted, the one first recorded under ``key``.

    The time is part of the request's fingerprint, so defaulting a retry to a new "now" would
    turn every retry that omits ``business_time`` into a 409 conflict instead of a replay.
    """
    if data.get("business_time"):
        return data["business_time"]
    i = lt.idempotency.c
    recorded = conn.scalar(
        sa.select(i.request).where(
            i.credential == current_credential().actor.idempotency_scope, i.key == key
        )
    )
    when = (recorded or {}).get("business_time")
    return datetime.fromisoformat(when) if when else now or datetime.now(UTC)


@blp.route("/burn")
class Burn(MethodView):
    @requires("points.burn")
    @blp.arguments(BurnRequest)
    @blp.response(201, EntrySchema)
    @blp.doc(parameters=[{"in": "header", "name": k, **v} for k, v in IDEMPOTENCY_HEADER.items()])
    def post(self, data: dict) -> tuple:
        """Spend a member's points at the calling partner (lots consumed earliest-expiry first)."""
        partner, actor = acting_partner(), current_credential().actor
        ledger = current_app.extensions["coalition"].ledger

        def decide(conn: Any, store: SqlLedgerStore, key: str) -> Booking:
            # The business layer's burn: blocked redemptions, an inactive member and the daily
            # burn cap are refused (and recorded under the key) before the kernel is reached.
            return earning.burn(
                conn,
                actor,
                key,
                member=data["member"],
                points=data["points"],
                business_time=request_time(data, conn, key),
                now=datetime.now(UTC),
                partner=partner,
                ledger=ledger,
            )

        return book(decide)


@blp.route("/holds")
class Holds(MethodView):
    @requires("points.hold")
    @blp.arguments(HoldRequest)
    @blp.response(201, EntrySchema)
    @blp.doc(parameters=[{"in": "header", "name": k, **v} for k, v in IDEMPOTENCY_HEADER.items()])
    def post(self, data: dict) -> tuple:
        """Reserve a member's points at a till; capture or void it later (it expires otherwise)."""
        from datetime import timedelta

        partner, actor = acting_partner(), current_credential().actor
        ledger = current_app.extensions["coalition"].ledger
        ttl = timedelta(seconds=data["ttl_seconds"]) if data.get("ttl_seconds") else None

        def decide(conn: Any, store: SqlLedgerStore, key: str) -> Booking:
            directory.require_can_redeem(conn, partner)
            return ledger.hold(
                store,
                actor,
                key,
                member=data["member"],
                points=data["points"],
                business_time=request_time(data, conn, key),
                ttl=ttl,
            )

        return book(decide)


@blp.route("/holds/<uuid:hold_id>/capture")
class Capture(MethodView):
    @requires("points.hold")
    @blp.arguments(CaptureRequest)
    @blp.response(201, EntrySchema)
    @blp.doc(parameters=[{"in": "header", "name": k, **v} for k, v in IDEMPOTENCY_HEADER.items()])
    def post(self, data: dict, hold_id: UUID) -> tuple:
        """Capture up to the held points; the rest returns to the member at once."""
        actor, ledger = current_credential().actor, current_app.extensions["coalition"].ledger
        return book(
            lambda conn, store, key: ledger.capture(
                store,
                actor,
                key,
                hold_id=hold_id,
                points=data["points"],
                business_time=request_time(data, conn, key),
            )
        )


@blp.route("/holds/<uuid:hold_id>/void")
class Void(MethodView):
    @requires("points.hold")
    @blp.arguments(VoidRequest)
    @blp.response(201, EntrySchema)
    @blp.doc(parameters=[{"in": "header", "name": k, **v} for k, v in IDEMPOTENCY_HEADER.items()])
    def post(self, data: dict, hold_id: UUID) -> tuple:
        """Release a hold: every held point returns to the member."""
        actor, ledger = current_credential().actor, current_app.extensions["coalition"].ledger
        return book(
            lambda conn, store, key: ledger.void(
                store, actor, key, hold_id=hold_id, business_time=request_time(data, conn, key)
            )
        )


@blp.route("/entries/<uuid:entry_id>/reversals")
class Reversals(MethodView):
    @requires("points.reverse")
    @blp.arguments(ReversalRequest)
    @blp.response(201, EntrySchema)
    @blp.doc(parameters=[{"in": "header", "name": k, **v} for k, v in IDEMPOTENCY_HEADER.items()])
    def post(self, data: dict, entry_id: UUID) -> tuple:
        """Reverse part or all of one of your earns (refund) or burns (cancelled order)."""
        actor, ledger = current_credential().actor, current_app.extensions["coalition"].ledger
        return book(
            lambda conn, store, key: ledger.reverse(
                store,
                actor,
                key,
                entry_id=entry_id,
                points=data.get("points"),
                reason=data.get("reason"),
                business_time=request_time(data, conn, key),
            )
        )


@blp.route("/transfers")
class Transfers(MethodView):
    @requires("points.transfer")
    @blp.arguments(TransferRequest)
    @blp.response(201, EntrySchema)
    @blp.doc(parameters=[{"in": "header", "name": k, **v} for k, v in IDEMPOTENCY_HEADER.items()])
    def post(self, data: dict) -> tuple:
        """Move points between two members (off unless the programme enables it)."""
        actor, ledger = current_credential().actor, current_app.extensions["coalition"].ledger
        # The business layer's transfer: off unless enabled, and within the programme's caps.
        return book(
            lambda conn, store, key: earning.transfer(
                conn,
                actor,
                key,
                from_member=data["from_member"],
                to_member=data["to_member"],
                points=data["points"],
                business_time=request_time(data, conn, key),
                now=datetime.now(UTC),
                ledger=ledger,
            )
        )


def _visible_entry(conn: Any, entry_id: UUID) -> Any:
    """An entry the caller may see: partners see only their own."""
    entry = SqlLedgerStore(conn).load_entry(entry_id)
    partner = current_credential().partner
    if partner is not None and entry.partner != partner:
        raise UnknownEntry(entry_id)
    return entry


@blp.route("/entries/<uuid:entry_id>")
class EntryResource(MethodView):
    @requires("entries.read")
    @blp.response(200, EntrySchema)
    def get(self, entry_id: UUID) -> dict:
        """One journal entry (a partner sees only its own)."""
        with current_app.extensions["coalition"].db.transaction() as conn:
            return entry_json(_visible_entry(conn, entry_id))


@blp.route("/entries/<uuid:entry_id>/receipt")
class ReceiptResource(MethodView):
    @requires("entries.read")
    @blp.arguments(ReceiptQuery, location="query")
    @blp.response(200, ReceiptSchema)
    def get(self, query: dict, entry_id: UUID) -> dict:
        """The entry's receipt: leaf bytes, signed checkpoint and inclusion proof.

        With ``wait`` the call waits that many seconds for the integrator; 404 if still queued.
        """
        services = current_app.extensions["coalition"]
        with services.db.transaction() as conn:
            _visible_entry(conn, entry_id)
            found = receipt(conn, entry_id)
        if found is None and query["wait"] > 0:
            found = wait_for_receipt(services.db, entry_id, timeout=query["wait"])
        if found is None:
            raise ApiProblem(
                404,
                "not-yet-integrated",
                "the entry is booked but not yet in the log; retry with ?wait=2",
            )
        return found.to_json()
