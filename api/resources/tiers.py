"""Tiers: the programme's levels (administration), a member's tier status and history, floors.

- ``GET/PUT /v1/tiers``: the levels, lowest first; a ``PUT`` replaces them (a level some member's
  history names cannot be removed). A level's rank is its position in the list; thresholds are
  points EARNED over a rolling 12 months and must rise; multipliers are decimal strings.
- ``GET /v1/members/{id}/tier``: the member's tier, its points in the window, the next level and
  the points still missing, and its tier history (append-only). Partners may read it, as they read
  balances: any partner must be able to tell a member where it stands.
- ``POST /v1/members/{id}/tier-floor``: the admin keeps a member at or above a level (``null``
  lifts it), for a recorded reason; a floor above the current tier raises it at once.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import audit, current_credential, requires
from api.schemas import TierChangeSchema, TierFloorRequest, TierLevelsSchema, TierStatusSchema
from partners import tiers
from partners.errors import UnknownMember
from partners.rules import Tier
from partners.tiers import TierChange

blp = Blueprint("tiers", __name__, url_prefix="/v1", description="Tier levels and member tiers")

#: What a member id can look like; anything else names no member (as in the members resource).
_MEMBER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@blp.url_value_preprocessor
def _refuse_impossible_ids(endpoint: str | None, values: dict[str, Any] | None) -> None:
    """A member id no member can have is a 404 before it reaches the database."""
    member_id = (values or {}).get("member_id")
    if member_id is not None and not _MEMBER_ID.fullmatch(member_id):
        raise UnknownMember(member_id)


def _db() -> Any:
    return current_app.extensions["coalition"].db


def _levels_json(levels: list[Tier]) -> dict:
    return {
        "levels": [
            {
                "name": tier.name,
                "rank": tier.rank,
                "threshold": tier.threshold,
                "multiplier": format(tier.multiplier, "f"),
            }
            for tier in levels
        ]
    }


def _change_json(change: TierChange) -> dict:
    return {
        "tier": change.tier,
        "previous": change.previous,
        "floor": change.floor,
        "reason": change.reason,
        "changed_at": change.changed_at,
        "changed_by": change.changed_by,
    }


@blp.route("/tiers")
class TierLevels(MethodView):
    @requires("tiers.read")
    @blp.response(200, TierLevelsSchema)
    def get(self) -> dict:
        """The programme's levels, lowest first."""
        with _db().transaction() as conn:
            return _levels_json(tiers.tier_levels(conn))

    @requires("tiers.write")
    @blp.arguments(TierLevelsSchema)
    @blp.response(200, TierLevelsSchema)
    def put(self, data: dict) -> dict:
        """Replace the levels: lowest first, the first at 0 points, thresholds rising.

        Members keep the tier they hold until they earn their way up or the next review; a level
        that a member's history names cannot be removed.
        """
        levels = [
            Tier(level["name"], rank, level["threshold"], level["multiplier"])
            for rank, level in enumerate(data["levels"])
        ]
        with _db().transaction() as conn:
            audit(conn, "tiers.set", "program")
            return _levels_json(tiers.set_tier_levels(conn, levels))


@blp.route("/members/<string:member_id>/tier")
class MemberTier(MethodView):
    @requires("tiers.read")
    @blp.response(200, TierStatusSchema)
    def get(self, member_id: str) -> dict:
        """The member's tier, points earned in the rolling 12 months, what the next level needs,
        and its tier history (oldest first)."""
        with _db().transaction() as conn:
            status = tiers.tier_status(conn, member_id, datetime.now(UTC))
            history = tiers.tier_history(conn, member_id)
        return {
            "member": status.member,
            "tier": status.tier.name,
            "multiplier": format(status.tier.multiplier, "f"),
            "floor": status.floor,
            "points_12m": status.points_12m,
            "window_start": status.window_start,
            "next_tier": status.next_tier.name if status.next_tier else None,
            "points_missing": status.points_missing,
            "history": [_change_json(change) for change in history],
        }


@blp.route("/members/<string:member_id>/tier-floor")
class TierFloor(MethodView):
    @requires("tiers.write")
    @blp.arguments(TierFloorRequest)
    @blp.response(201, TierChangeSchema)
    def post(self, data: dict, member_id: str) -> tuple:
        """Keep the member at or above a level (null lifts the floor), for a recorded reason."""
        credential = current_credential()
        with _db().transaction() as conn:
            audit(conn, "tier_floor.set", member_id, reason=data["reason"])
            change = tiers.set_floor(conn, member_id, data["tier"], data["reason"],
                                     credential.staff or credential.id, datetime.now(UTC))
        return _change_json(change), 201
