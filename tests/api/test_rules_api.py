"""Rules and tiers through HTTP: campaigns, engagement rule versions, programme settings, tiers.

The admin writes rules and levels; auditors (and finance) read rules; partners read tiers.
Campaigns created here are used by earns at partner SUPER (earn rate 1 pt/€).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.api.conftest import Issuer, bearer
from tests.api.test_points import earn, enroll, instant_partner, keyed, problem


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def window() -> tuple[str, str]:
    """A window around now: rules in force for the earns of the test."""
    now = datetime.now(UTC)
    return _iso(now - timedelta(days=1)), _iso(now + timedelta(days=30))


def post(client: FlaskClient, path: str, token: str, body: dict[str, Any]) -> Any:
    return client.post(path, json=body, headers=bearer(token))


# -- campaigns -------------------------------------------------------------------------------------


def test_a_campaign_created_through_the_api_is_used_by_an_earn(
    client: FlaskClient, admin_token: str, partner_token: str, auditor_token: str
) -> None:
    start, end = window()
    response = post(client, "/v1/rules/campaigns", admin_token, {
        "id": "double-fresh", "partner": "SUPER", "name": "Double fresh",
        "valid_from": start, "valid_to": end, "multiplier": "2", "categories": ["fresh"],
    })
    assert response.status_code == 201, response.get_data(as_text=True)
    campaign = response.get_json()
    assert (campaign["id"], campaign["multiplier"], campaign["categories"]) == (
        "double-fresh", "2", ["fresh"])
    assert campaign["funders"] == {"SUPER": 1}

    member = enroll(client, partner_token)["id"]
    body = earn(client, partner_token, member, 1_000, category="fresh")
    # 10.00 € × 1 pt/€ = 10, and the campaign doubles the base of fresh lines: +10.
    assert body["points"] == 20, body
    assert "campaign Double fresh (double-fresh)" in body["explanation"]
    assert "double-fresh" in str(body["rule_versions"])
    assert body["entry"]["attributes"]["explanation"] == body["explanation"]

    # Never edited: the same id again is a conflict; listing shows it to the auditor.
    again = post(client, "/v1/rules/campaigns", admin_token, {
        "id": "double-fresh", "partner": "SUPER", "name": "Other",
        "valid_from": start, "valid_to": end, "bonus_points": 5,
    })
    problem(again, 409, "campaign-exists")
    listed = client.get("/v1/rules/campaigns?partner=SUPER", headers=bearer(auditor_token))
    assert listed.status_code == 200, listed.get_data(as_text=True)
    assert [c["id"] for c in listed.get_json()["items"]] == ["double-fresh"]


def test_campaigns_are_validated(client: FlaskClient, admin_token: str,
                                 partner_token: str) -> None:
    start, end = window()
    base = {"partner": "SUPER", "name": "X", "valid_from": start, "valid_to": end}
    problem(post(client, "/v1/rules/campaigns", admin_token, base), 422)  # no bonus, no multiplier
    problem(post(client, "/v1/rules/campaigns", admin_token, {**base, "multiplier": 2}), 422)
    problem(post(client, "/v1/rules/campaigns", admin_token, {**base, "multiplier": "0.5"}), 422)
    problem(post(client, "/v1/rules/campaigns", admin_token,
                 {**base, "valid_to": start, "bonus_points": 5}), 422)
    problem(post(client, "/v1/rules/campaigns", admin_token,
                 {**base, "bonus_points": 5, "funders": {"NOPE": 1}}), 404, "unknown-partner")
    problem(post(client, "/v1/rules/campaigns", partner_token, {**base, "bonus_points": 5}),
            403, "forbidden")
    created = post(client, "/v1/rules/campaigns", admin_token,
                   {**base, "bonus_points": 5, "funders": {"SUPER": 1, "program": 1}})
    assert created.status_code == 201, created.get_data(as_text=True)
    assert created.get_json()["id"].startswith("cmp_")


# -- engagement rules ------------------------------------------------------------------------------


def test_engagement_rules_are_versioned_and_the_latest_applies(
    client: FlaskClient, admin_token: str, partner_token: str, finance_token: str
) -> None:
    start = _iso(datetime.now(UTC) - timedelta(days=10))
    rule = {"event_type": "review", "sponsor": "program", "points": 20, "cap_per_day": 2,
            "valid_from": start}
    first = post(client, "/v1/rules/engagements", admin_token, rule)
    assert first.status_code == 201, first.get_data(as_text=True)
    assert (first.get_json()["version"], first.get_json()["points"]) == (1, 20)
    second = post(client, "/v1/rules/engagements", admin_token, {**rule, "points": 35})
    assert second.status_code == 201, second.get_data(as_text=True)
    assert second.get_json()["version"] == 2

    member = enroll(client, partner_token)["id"]
    response = client.post(
        "/v1/engagements",
        json={"member": member, "event_type": "review", "event_id": "rev-1"},
        headers=keyed(partner_token),
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()["points"] == 35
    assert response.get_json()["rule_versions"]["engagement:review"] == 2
    assert "rule v2" in response.get_json()["explanation"]

    listed = client.get("/v1/rules/engagements?event_type=review&limit=1",
                        headers=bearer(finance_token))
    assert listed.status_code == 200, listed.get_data(as_text=True)
    page = listed.get_json()
    assert [r["version"] for r in page["items"]] == [1]
    nxt = client.get(f"/v1/rules/engagements?event_type=review&cursor={page['next_cursor']}",
                     headers=bearer(finance_token)).get_json()
    assert [(r["version"], r["points"]) for r in nxt["items"]] == [(2, 35)]
    assert nxt["next_cursor"] is None

    problem(post(client, "/v1/rules/engagements", admin_token, {**rule, "event_type": "dance"}),
            422)
    problem(post(client, "/v1/rules/engagements", admin_token, {**rule, "sponsor": "NOPE"}),
            404, "unknown-partner")


# -- programme settings ----------------------------------------------------------------------------


def test_abuse_controls_and_expiry_policy_are_read_and_replaced(
    client: FlaskClient, admin_token: str, auditor_token: str, issue: Issuer
) -> None:
    read = client.get("/v1/rules/abuse-controls", headers=bearer(auditor_token))
    assert read.status_code == 200
    assert read.get_json() == {"earn_per_day": None, "burn_per_day": None,
                               "transfer_per_day": None, "transfers_enabled": False,
                               "max_per_transfer": None}
    stale = read.headers["ETag"]
    controls = {"earn_per_day": 500, "burn_per_day": 40, "transfer_per_day": None,
                "transfers_enabled": True, "max_per_transfer": 100}
    put = client.put("/v1/rules/abuse-controls", json=controls,
                     headers={**bearer(admin_token), "If-Match": stale})
    assert put.status_code == 200, put.get_data(as_text=True)
    assert put.get_json() == controls
    assert put.headers["ETag"] != stale
    problem(client.put("/v1/rules/abuse-controls", json=controls,
                       headers={**bearer(admin_token), "If-Match": stale}), 412)
    problem(client.put("/v1/rules/abuse-controls", json={"earn_per_day": 1},
                       headers=bearer(admin_token)), 422)
    problem(client.put("/v1/rules/abuse-controls", json=controls,
                       headers=bearer(auditor_token)), 403, "forbidden")
    assert client.get("/v1/rules/abuse-controls",
                      headers=bearer(admin_token)).get_json() == controls

    # The burn cap now applies: 50 points in one Paris day are refused.
    shop = instant_partner(issue, "SHOP")
    member = enroll(client, shop)["id"]
    earn(client, shop, member, 10_000)
    refused = client.post("/v1/burn", json={"member": member, "points": 50},
                          headers=keyed(shop))
    problem(refused, 422, "velocity-exceeded")

    policy = client.get("/v1/rules/expiry-policy", headers=bearer(auditor_token))
    assert policy.get_json() == {"lot_months": 36, "cutoff": None, "inactivity_months": None}
    new = {"lot_months": 24, "cutoff": "09-30", "inactivity_months": 18}
    put = client.put("/v1/rules/expiry-policy", json=new, headers=bearer(admin_token))
    assert put.status_code == 200, put.get_data(as_text=True)
    assert put.get_json() == new
    assert client.get("/v1/rules/expiry-policy",
                      headers=bearer(auditor_token)).get_json() == new
    problem(client.put("/v1/rules/expiry-policy", headers=bearer(admin_token),
                       json={**new, "cutoff": "02-29"}), 422)
    problem(client.put("/v1/rules/expiry-policy", headers=bearer(admin_token),
                       json={**new, "lot_months": None}), 422)


# -- tiers -----------------------------------------------------------------------------------------

LEVELS = [
    {"name": "Bronze", "threshold": 0, "multiplier": "1"},
    {"name": "Silver", "threshold": 50, "multiplier": "1.5"},
    {"name": "Platinum", "threshold": 1_000, "multiplier": "2"},
]


@pytest.fixture
def shop(issue: Issuer) -> str:
    return instant_partner(issue, "SHOP")


def test_tiers_are_set_and_a_member_sees_where_it_stands(
    client: FlaskClient, admin_token: str, auditor_token: str, shop: str
) -> None:
    put = client.put("/v1/tiers", json={"levels": LEVELS}, headers=bearer(admin_token))
    assert put.status_code == 200, put.get_data(as_text=True)
    assert put.get_json()["levels"] == [{**level, "rank": rank}
                                        for rank, level in enumerate(LEVELS)]
    assert client.get("/v1/tiers", headers=bearer(shop)).get_json() == put.get_json()

    member = enroll(client, shop)["id"]
    status = client.get(f"/v1/members/{member}/tier", headers=bearer(shop))
    assert status.status_code == 200, status.get_data(as_text=True)
    body = status.get_json()
    assert (body["tier"], body["points_12m"], body["next_tier"], body["points_missing"]) == (
        "Bronze", 0, "Silver", 50)
    assert body["history"] == []

    earn(client, shop, member, 10_000)  # 100 points: Silver at once
    body = client.get(f"/v1/members/{member}/tier", headers=bearer(auditor_token)).get_json()
    assert (body["tier"], body["multiplier"], body["points_12m"]) == ("Silver", "1.5", 100)
    assert (body["next_tier"], body["points_missing"]) == ("Platinum", 900)
    assert [(h["tier"], h["previous"]) for h in body["history"]] == [("Silver", None)]
    assert body["history"][0]["reason"].startswith("upgrade")

    # A level in a member's history cannot be removed; a ladder must rise from 0.
    problem(client.put("/v1/tiers", json={"levels": [LEVELS[0], LEVELS[2]]},
                       headers=bearer(admin_token)), 422)
    problem(client.put("/v1/tiers", json={"levels": [LEVELS[1], LEVELS[0]]},
                       headers=bearer(admin_token)), 422)
    problem(client.put("/v1/tiers", json={"levels": [{**LEVELS[0], "multiplier": 1}]},
                       headers=bearer(admin_token)), 422)
    problem(client.put("/v1/tiers", json={"levels": LEVELS}, headers=bearer(shop)),
            403, "forbidden")
    problem(client.get(f"/v1/members/m_{uuid.uuid4().hex}/tier", headers=bearer(shop)),
            404, "unknown-member")


def test_an_admin_sets_and_lifts_a_tier_floor(
    client: FlaskClient, admin_token: str, partner_token: str
) -> None:
    member = enroll(client, partner_token)["id"]
    path = f"/v1/members/{member}/tier-floor"
    response = post(client, path, admin_token, {"tier": "Gold", "reason": "VIP guest"})
    assert response.status_code == 201, response.get_data(as_text=True)
    change = response.get_json()
    assert (change["tier"], change["previous"], change["floor"]) == ("Gold", "White", "Gold")
    assert change["reason"] == "floor Gold: VIP guest"
    assert change["changed_by"] == "admin-staff"

    body = client.get(f"/v1/members/{member}/tier", headers=bearer(partner_token)).get_json()
    assert (body["tier"], body["floor"], body["next_tier"], body["points_missing"]) == (
        "Gold", "Gold", None, 0)

    lifted = post(client, path, admin_token, {"tier": None, "reason": "end of VIP"})
    assert lifted.status_code == 201, lifted.get_data(as_text=True)
    body = client.get(f"/v1/members/{member}/tier", headers=bearer(partner_token)).get_json()
    assert (body["tier"], body["floor"]) == ("Gold", None)  # lowered only at the next review
    assert [h["floor"] for h in body["history"]] == ["Gold", None]

    problem(post(client, path, admin_token, {"tier": "Diamond", "reason": "x"}), 422)
    problem(post(client, path, admin_token, {"tier": "Gold"}), 422)
    problem(post(client, path, partner_token, {"tier": "Gold", "reason": "x"}), 403, "forbidden")
    problem(post(client, "/v1/members/m_nobody/tier-floor", admin_token,
                 {"tier": "Gold", "reason": "x"}), 404, "unknown-member")
