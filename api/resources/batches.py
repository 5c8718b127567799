"""Batches: a partner's file of up to 10,000 earn/burn records, validated whole, booked one by one.

``POST /v1/batches`` takes ``{"records": [...]}``. The WHOLE file is validated by the schema first:
one malformed record (or a ref used twice) is a 422 problem naming the record's index and field,
and nothing is booked. Then each record is booked exactly as ``POST /v1/earn`` or ``POST
/v1/burn`` would book it, under the idempotency key ``<Idempotency-Key>:<ref>`` (a ref has no
colon, so the key reads one way), each IN ITS OWN TRANSACTION: one transaction per record keeps
the locks of a record (its member's accounts, in the kernel's order) from being held while the
next record takes others, which across concurrent batches could deadlock; and a record refused
(insufficient points, velocity cap, unknown member, ...) is recorded as refused without undoing
or stopping the others.

The response is 200 with one result per record, in input order: ``booked``, ``replayed`` (an
earlier batch with the same key booked it) or ``refused`` (with an RFC 9457-shaped ``problem``).
A retry of the same batch with the same key therefore replays every booked record, and refuses
again every refused one. New entries are integrated into the log once, after the last record.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import acting_partner, current_credential, requires
from api.errors import PROBLEM_MEMBERS, ApiProblem, status_for
from api.resources.points import IDEMPOTENCY_HEADER, idempotency_key, request_time
from api.schemas import BatchRequest, BatchResponseSchema
from ledger.errors import LedgerError
from partners import earning
from partners.rules import Basket, BasketLine

blp = Blueprint(
    "batches", __name__, url_prefix="/v1", description="A partner's file of earn/burn records"
)

#: Longest batch key: ``<key>:<ref>`` (ref ≤ 64 characters) must fit the 200 of a stored key.
BATCH_KEY_MAX = 200 - 1 - 64

_KEY_PARAM = [
    {
        "in": "header",
        "name": name,
        **spec,
        "description": f"1–{BATCH_KEY_MAX} characters; record keys are <Idempotency-Key>:<ref>",
        "schema": {"type": "string", "minLength": 1, "maxLength": BATCH_KEY_MAX},
    }
    for name, spec in IDEMPOTENCY_HEADER.items()
]


def _batch_key() -> str:
    key = idempotency_key()
    if len(key) > BATCH_KEY_MAX:
        raise ApiProblem(
            400,
            "idempotency-key-required",
            f"a batch's Idempotency-Key has at most {BATCH_KEY_MAX} characters "
            "(each record is keyed <Idempotency-Key>:<ref>)",
        )
    return key


def _problem(error: LedgerError) -> dict[str, Any]:
    """A refused record's problem, shaped like the API's problem documents (no request id)."""
    code = error.code
    subject = code.split("-")[0]
    extra = {
        (f"{subject}_{name}" if name in PROBLEM_MEMBERS else name): value
        for name, value in error.fields().items()
    }
    return json.loads(json.dumps({
        "type": f"/problems/{code}",
        "title": code.replace("-", " "),
        "status": status_for(error),
        "detail": error.message,
        **extra,
    }, default=str))


def _earn(services: Any, record: dict, key: str) -> dict[str, Any]:
    basket = Basket(
        lines=tuple(
            BasketLine(line["amount_cents"], line["category"], line["gift_card"])
            for line in record["lines"]
        ),
        paid_with_points_cents=record.get("paid_with_points_cents", 0),
    )
    now = datetime.now(UTC)
    with services.db.transaction() as conn:
        result = earning.earn_purchase(
            conn,
            current_credential().actor,
            key,
            member=record["member"],
            basket=basket,
            business_time=request_time(record, conn, key, now),
            now=now,
            ledger=services.ledger,
        )
    return {
        "status": "replayed" if result.replayed else "booked",
        "entry_id": result.entry.id if result.entry is not None else None,
        "points": result.points,
        "explanation": result.explanation,
    }


def _burn(services: Any, record: dict, key: str, partner: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    with services.db.transaction() as conn:
        booking = earning.burn(
            conn,
            current_credential().actor,
            key,
            member=record["member"],
            points=record["points"],
            business_time=request_time(record, conn, key, now),
            now=now,
            partner=partner,
            ledger=services.ledger,
        )
    return {
        "status": "replayed" if booking.replayed else "booked",
        "entry_id": booking.entry.id,
        "points": record["points"],
        "explanation": None,
    }


def _book(services: Any, record: dict, key: str, partner: str) -> dict[str, Any]:
    """Book one record in its own transaction; a refusal becomes its result, not an error."""
    base = {"ref": record["ref"], "op": record["op"]}
    try:
        if record["op"] == "earn":
            outcome = _earn(services, record, key)
        else:
            outcome = _burn(services, record, key, partner)
    except LedgerError as error:
        return {**base, "status": "refused", "entry_id": None, "points": None,
                "explanation": None, "problem": _problem(error)}
    return {**base, **outcome, "problem": None}


@blp.route("/batches")
class Batches(MethodView):
    @requires("batches.write")
    @blp.arguments(BatchRequest)
    @blp.response(200, BatchResponseSchema)
    @blp.doc(parameters=_KEY_PARAM)
    def post(self, data: dict) -> tuple:
        """Book a file of up to 10,000 earn and burn records, each idempotently.

        The whole file is validated first (a bad record: 422 naming it, nothing booked); then each
        record is booked in its own transaction under the key ``<Idempotency-Key>:<ref>``. The
        response lists one result per record, in input order: booked, replayed or refused (with
        its problem). A refused record does not stop the others; a retry replays the booked ones.
        """
        services, key = current_app.extensions["coalition"], _batch_key()
        partner = acting_partner()
        results = []
        try:
            for record in data["records"]:
                results.append(_book(services, record, f"{key}:{record['ref']}", partner))
        finally:
            services.integrate()  # once for the whole batch, even if a record failed unexpectedly
        counts = {status: sum(r["status"] == status for r in results)
                  for status in ("booked", "replayed", "refused")}
        body = {"records": len(results), **counts, "results": results}
        replayed = counts["replayed"] == len(results)
        return body, 200, {"Idempotent-Replayed": "true"} if replayed else {}
