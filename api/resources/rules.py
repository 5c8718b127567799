"""Programme rules (administration): campaigns, engagement rules, abuse controls, expiry policy.

- Campaigns and engagement rules are immutable records: ``POST`` adds one, nothing edits one. A
  campaign's id is its version (a change is a new campaign); an engagement rule's version is
  assigned here, the next for its event type, and where versions overlap the highest applies.
- Abuse controls and the expiry policy are single programme settings, read with ``GET`` and
  replaced whole with ``PUT``. Their ``ETag`` is a digest of the value; a ``PUT`` that sends
  ``If-Match`` is refused (412) if the setting changed since that read.
- Decimals (multipliers) travel as strings; the admin writes, the auditor and finance read.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from flask import current_app, request
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy.engine import Connection

from api.auth import audit, requires
from api.errors import ApiProblem
from api.schemas import (
    AbuseControlsSchema,
    CampaignCreate,
    CampaignListQuery,
    CampaignPage,
    CampaignSchema,
    EngagementRuleCreate,
    EngagementRuleListQuery,
    EngagementRulePage,
    EngagementRuleSchema,
    ExpiryPolicySchema,
    encode_cursor,
)
from ledger.model import PROGRAM
from partners import directory, earning, expiry
from partners import tables as t
from partners.earning import AbuseControls
from partners.expiry import ExpiryPolicy
from partners.rules import Campaign, EngagementRule

blp = Blueprint(
    "rules",
    __name__,
    url_prefix="/v1/rules",
    description="Campaigns, engagement rules, abuse controls and expiry policy (administration)",
)

ETAG_HEADER = {
    "ETag": {"description": "digest of the setting, quoted", "schema": {"type": "string"}},
}
IF_MATCH = {
    "in": "header",
    "name": "If-Match",
    "required": False,
    "description": "the ETag of the setting as last read; a stale one is a 412",
    "schema": {"type": "string"},
}


def _db() -> Any:
    return current_app.extensions["coalition"].db


def _now() -> datetime:
    return datetime.now(UTC)


def _cursor(query: dict, *types: type) -> list | None:
    key = query.get("cursor")
    if key is None:
        return None
    if len(key) != len(types) or any(
        type(part) is not kind for part, kind in zip(key, types, strict=True)
    ):
        raise ApiProblem(422, "invalid-cursor", "the cursor does not belong to this listing",
                         field="cursor")
    return key


def _page(rows: list, limit: int, render: Any, sort_key: Any) -> dict:
    shown = rows[:limit]
    more = len(rows) > limit
    return {
        "items": [render(row) for row in shown],
        "next_cursor": encode_cursor(sort_key(shown[-1])) if more and shown else None,
    }


# -- campaigns -------------------------------------------------------------------------------------


def _campaign_json(row: Any) -> dict:
    return {
        "id": row.id,
        "partner": row.partner,
        "name": row.name,
        "valid_from": row.valid_from,
        "valid_to": row.valid_to,
        "multiplier": row.multiplier,
        "bonus_points": row.bonus_points,
        "categories": sorted(row.categories),
        "member_cap": row.member_cap,
        "funders": dict(row.funders),
        "created_at": row.created_at,
    }


def _campaign_row(conn: Connection, campaign_id: str) -> Any:
    return conn.execute(sa.select(t.campaigns).where(t.campaigns.c.id == campaign_id)).first()


@blp.route("/campaigns")
class Campaigns(MethodView):
    @requires("rules.read")
    @blp.arguments(CampaignListQuery, location="query")
    @blp.response(200, CampaignPage)
    def get(self, query: dict) -> dict:
        """Campaigns in order of id, optionally of one partner."""
        key = _cursor(query, str)
        c = t.campaigns.c
        select = sa.select(t.campaigns).order_by(c.id).limit(query["limit"] + 1)
        if query["partner"] is not None:
            select = select.where(c.partner == query["partner"])
        if key is not None:
            select = select.where(c.id > key[0])
        with _db().transaction() as conn:
            rows = list(conn.execute(select))
        return _page(rows, query["limit"], _campaign_json, lambda row: [row.id])

    @requires("rules.write")
    @blp.arguments(CampaignCreate)
    @blp.response(201, CampaignSchema)
    def post(self, data: dict) -> tuple:
        """Add a partner's campaign (never edited: a change is a new campaign).

        Its bonus is funded by the partner unless ``funders`` splits it (by weight) with other
        partners or the programme (``program``); every funder must be a known partner.
        """
        campaign = Campaign(
            id=data["id"] or f"cmp_{uuid.uuid4().hex[:16]}",
            partner=data["partner"],
            name=data["name"],
            valid_from=data["valid_from"],
            valid_to=data["valid_to"],
            multiplier=data["multiplier"],
            bonus_points=data["bonus_points"],
            categories=frozenset(data["categories"]),
            member_cap=data["member_cap"],
            funders=data["funders"],
        )
        with _db().transaction() as conn:
            for funder in {campaign.partner, *campaign.funders} - {PROGRAM}:
                directory.partner(conn, funder)  # an unknown one is a 404 now, not at earn time
            if _campaign_row(conn, campaign.id) is not None:
                raise ApiProblem(409, "campaign-exists",
                                 f"campaign {campaign.id} exists; campaigns are never edited",
                                 campaign_id=campaign.id)
            audit(conn, "campaign.add", campaign.id)
            try:
                earning.add_campaign(conn, campaign, _now())
            except sa.exc.IntegrityError:  # a concurrent POST took the id first
                raise ApiProblem(409, "campaign-exists", f"campaign {campaign.id} exists",
                                 campaign_id=campaign.id) from None
            row = _campaign_row(conn, campaign.id)
        return _campaign_json(row), 201


# -- engagement rules ------------------------------------------------------------------------------


def _rule_json(row: Any) -> dict:
    return {
        "event_type": row.event_type,
        "version": row.version,
        "sponsor": row.sponsor,
        "points": row.points,
        "cap_per_day": row.cap_per_day,
        "cap_per_month": row.cap_per_month,
        "cap_per_year": row.cap_per_year,
        "valid_from": row.valid_from,
        "valid_to": row.valid_to,
        "created_at": row.created_at,
    }


@blp.route("/engagements")
class EngagementRules(MethodView):
    @requires("rules.read")
    @blp.arguments(EngagementRuleListQuery, location="query")
    @blp.response(200, EngagementRulePage)
    def get(self, query: dict) -> dict:
        """Every version of every engagement rule, by event type then version."""
        key = _cursor(query, str, int)
        r = t.engagement_rules.c
        select = (
            sa.select(t.engagement_rules)
            .order_by(r.event_type, r.version)
            .limit(query["limit"] + 1)
        )
        if query["event_type"] is not None:
            select = select.where(r.event_type == query["event_type"])
        if key is not None:
            select = select.where(
                sa.or_(r.event_type > key[0], sa.and_(r.event_type == key[0], r.version > key[1]))
            )
        with _db().transaction() as conn:
            rows = list(conn.execute(select))
        return _page(rows, query["limit"], _rule_json, lambda row: [row.event_type, row.version])

    @requires("rules.write")
    @blp.arguments(EngagementRuleCreate)
    @blp.response(201, EngagementRuleSchema)
    def post(self, data: dict) -> tuple:
        """Add the next version of an event type's rule (versions are never edited).

        Where versions' windows overlap, the highest version applies; end an older version by
        giving the new one its start.
        """
        r = t.engagement_rules.c
        with _db().transaction() as conn:
            latest = conn.scalar(
                sa.select(sa.func.max(r.version)).where(r.event_type == data["event_type"])
            )
            rule = EngagementRule(version=(latest or 0) + 1, **data)
            audit(conn, "engagement_rule.add", data["event_type"])
            try:
                earning.add_engagement_rule(conn, rule, _now())
            except sa.exc.IntegrityError:  # a concurrent POST took this version: retry
                raise ApiProblem(409, "rule-version-taken",
                                 f"{rule.event_type} v{rule.version} was just added; retry",
                                 event_type=rule.event_type, version=rule.version) from None
            row = conn.execute(
                sa.select(t.engagement_rules).where(
                    r.event_type == rule.event_type, r.version == rule.version
                )
            ).one()
        return _rule_json(row), 201


# -- programme settings ----------------------------------------------------------------------------


def _etag(value: dict) -> str:
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:20]
    return f'"{digest}"'


def _check_if_match(current: dict) -> None:
    """Honour ``If-Match`` when sent: a PUT against a stale read is a 412."""
    if "If-Match" not in request.headers:
        return
    tags = request.if_match
    if tags.star_tag or _etag(current).strip('"') in tags.as_set():
        return
    raise ApiProblem(412, "version-mismatch", "the setting changed since you read it",
                     current=_etag(current))


def _controls_json(controls: AbuseControls) -> dict:
    return {
        "earn_per_day": controls.earn_per_day,
        "burn_per_day": controls.burn_per_day,
        "transfer_per_day": controls.transfer_per_day,
        "transfers_enabled": controls.transfers_enabled,
        "max_per_transfer": controls.max_per_transfer,
    }


@blp.route("/abuse-controls")
class AbuseControlsResource(MethodView):
    @requires("rules.read")
    @blp.response(200, AbuseControlsSchema, headers=ETAG_HEADER)
    def get(self) -> tuple:
        """Daily earn/burn/transfer caps per member, and whether transfers are on (null: no cap)."""
        with _db().transaction() as conn:
            body = _controls_json(earning.abuse_controls(conn))
        return body, 200, {"ETag": _etag(body)}

    @requires("rules.write")
    @blp.arguments(AbuseControlsSchema)
    @blp.response(200, AbuseControlsSchema, headers=ETAG_HEADER)
    @blp.doc(parameters=[IF_MATCH])
    def put(self, data: dict) -> tuple:
        """Replace the abuse controls (every field; null means no cap)."""
        controls = AbuseControls(**data)
        with _db().transaction() as conn:
            _check_if_match(_controls_json(earning.abuse_controls(conn)))
            audit(conn, "abuse_controls.set", "program")
            body = _controls_json(earning.set_abuse_controls(conn, controls, _now()))
        return body, 200, {"ETag": _etag(body)}


@blp.route("/expiry-policy")
class ExpiryPolicyResource(MethodView):
    @requires("rules.read")
    @blp.response(200, ExpiryPolicySchema, headers=ETAG_HEADER)
    def get(self) -> tuple:
        """When points expire: lot age in months, a yearly cut-off (MM-DD), inactivity months."""
        with _db().transaction() as conn:
            body = expiry.expiry_policy(conn).to_json()
        return body, 200, {"ETag": _etag(body)}

    @requires("rules.write")
    @blp.arguments(ExpiryPolicySchema)
    @blp.response(200, ExpiryPolicySchema, headers=ETAG_HEADER)
    @blp.doc(parameters=[IF_MATCH])
    def put(self, data: dict) -> tuple:
        """Replace the expiry policy; lots already earned keep the expiry they were given."""
        policy = ExpiryPolicy.from_json(data)
        with _db().transaction() as conn:
            _check_if_match(expiry.expiry_policy(conn).to_json())
            audit(conn, "expiry_policy.set", "program")
            body = expiry.set_expiry_policy(conn, policy, _now()).to_json()
        return body, 200, {"ETag": _etag(body)}
