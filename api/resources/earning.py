"""Earning: purchases (the rule engine prices them) and engagement events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import current_credential, requires
from api.resources.points import IDEMPOTENCY_HEADER, idempotency_key, request_time
from api.schemas import (
    EarnRequest,
    EarnResultSchema,
    EngagementRequest,
    EngagementResultSchema,
    entry_json,
)
from api.signatures import signed
from partners import earning
from partners.rules import Basket, BasketLine

blp = Blueprint("earning", __name__, url_prefix="/v1", description="Earn points")

_KEY_PARAM = [{"in": "header", "name": k, **v} for k, v in IDEMPOTENCY_HEADER.items()]


def _result(result: Any) -> dict:
    return {
        "points": result.points,
        "explanation": result.explanation,
        "rule_versions": dict(result.rule_versions),
        "entry": entry_json(result.entry) if result.entry is not None else None,
        "tier": result.tier_change.tier if result.tier_change else None,
    }


@blp.route("/earn")
class Earn(MethodView):
    @requires("points.earn")
    @blp.arguments(EarnRequest)
    @blp.response(201, EarnResultSchema)
    @blp.doc(parameters=_KEY_PARAM)
    def post(self, data: dict) -> tuple:
        """Credit the points a purchase earns: base rate on the cash part, multipliers, campaigns.

        The response says why ("12 pts = 24.00 € × 0.5 pt/€, Black tier ×1") and which rule
        versions produced the points; they are also recorded on the entry.
        """
        services, key = current_app.extensions["coalition"], idempotency_key()
        basket = Basket(
            lines=tuple(
                BasketLine(line["amount_cents"], line["category"], line["gift_card"])
                for line in data["lines"]
            ),
            paid_with_points_cents=data["paid_with_points_cents"],
        )
        now = datetime.now(UTC)
        with services.db.transaction() as conn, signed(conn):
            result = earning.earn_purchase(
                conn,
                current_credential().actor,
                key,
                member=data["member"],
                basket=basket,
                business_time=request_time(data, conn, key, now),
                now=now,
                ledger=services.ledger,
            )
        services.integrate()
        headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
        return _result(result), 201, headers


@blp.route("/engagements")
class Engagements(MethodView):
    @requires("points.engage")
    @blp.arguments(EngagementRequest)
    @blp.response(201, EngagementResultSchema)
    @blp.doc(parameters=_KEY_PARAM)
    def post(self, data: dict) -> tuple:
        """Reward an engagement event (review, app install, …); deduplicated by event id."""
        services, key = current_app.extensions["coalition"], idempotency_key()
        now = datetime.now(UTC)
        with services.db.transaction() as conn, signed(conn):
            result = earning.engage(
                conn,
                current_credential().actor,
                key,
                member=data["member"],
                event_type=data["event_type"],
                event_id=data["event_id"],
                business_time=request_time(data, conn, key, now),
                now=now,
                ledger=services.ledger,
            )
        services.integrate()
        headers = {"Idempotent-Replayed": "true"} if result.replayed or result.duplicate else {}
        body = {
            **_result(result),
            "event_type": result.event_type,
            "event_id": result.event_id,
            "duplicate": result.duplicate,
        }
        return body, 201, headers
