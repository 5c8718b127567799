"""Members through HTTP: enrolment, lookups, balances, history, consents and privacy requests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from partners.expiry import ExpiryPolicy, set_expiry_policy
from partners.members import luhn_valid
from tests.api.conftest import Issuer, bearer
from tests.api.test_points import (
    balance,
    earn,
    enroll,
    instant_partner,
    integrate,
    keyed,
    problem,
)

PERSONAL = {"name": "Ada Lovelace", "email": "ada@example.org", "birth_date": "1985-12-10"}


@pytest.fixture
def shop_token(issue: Issuer) -> str:
    return instant_partner(issue, "SHOP")


# -- enrolment and lookups -------------------------------------------------------------------------


def test_a_partner_enrolls_a_member_and_sees_what_it_was_given(
    client: FlaskClient, partner_token: str
) -> None:
    """POST /v1/members: 201 with Location, a Luhn-valid card, and the personal data shared."""
    response = client.post("/v1/members", json={
        "customer_ref": "crm-1001", "personal": PERSONAL, "terms_version": "2026-01",
        "consents": {"marketing": True},
    }, headers=bearer(partner_token))
    assert response.status_code == 201, response.get_json()
    member = response.get_json()
    assert response.headers["Location"] == f"/v1/members/{member['id']}"
    assert member["id"].startswith("m_")
    assert (member["status"], member["enrolled_by"]) == ("active", "SUPER")
    assert len(member["card_number"]) == 16
    assert luhn_valid(member["card_number"])
    assert member["personal"] == PERSONAL
    fetched = client.get(f"/v1/members/{member['id']}", headers=bearer(partner_token))
    assert fetched.status_code == 200
    assert fetched.get_json() == member


def test_personal_data_is_hidden_from_other_partners_and_staff(
    client: FlaskClient, partner_token: str, issue: Issuer, admin_token: str,
    auditor_token: str, privacy_token: str,
) -> None:
    """Another partner, the admin and the auditor see the member without personal data."""
    member = enroll(client, partner_token, personal=PERSONAL, terms_version="2026-01")
    for token in (issue.partner("RAIL"), admin_token, auditor_token):
        seen = client.get(f"/v1/members/{member['id']}", headers=bearer(token))
        assert seen.status_code == 200, seen.get_json()
        assert seen.get_json()["personal"] is None
    officer = client.get(f"/v1/members/{member['id']}", headers=bearer(privacy_token))
    assert officer.get_json()["personal"] == PERSONAL


def test_the_admin_enrolls_for_the_operator(client: FlaskClient, admin_token: str) -> None:
    """An admin enrolls with no partner; it cannot link a partner's customer reference."""
    member = enroll(client, admin_token)
    assert member["enrolled_by"] is None
    response = client.post("/v1/members", json={"customer_ref": "crm-1"},
                           headers=bearer(admin_token))
    assert problem(response, 422, "invalid-field")["field"] == "customer_ref"


def test_a_customer_reference_names_one_member(client: FlaskClient, partner_token: str) -> None:
    """The same partner reference twice: 422 customer-ref-taken."""
    enroll(client, partner_token, customer_ref="crm-7")
    response = client.post("/v1/members", json={"customer_ref": "crm-7"},
                           headers=bearer(partner_token))
    problem(response, 422, "customer-ref-taken")


def test_a_member_is_found_by_card(client: FlaskClient, partner_token: str) -> None:
    """GET /v1/members/by-card/{card}: the member, with spaces in the number allowed."""
    member = enroll(client, partner_token)
    card = member["card_number"]
    for typed in (card, f"{card[:4]} {card[4:8]} {card[8:12]} {card[12:]}"):
        found = client.get(f"/v1/members/by-card/{typed}", headers=bearer(partner_token))
        assert found.status_code == 200, found.get_json()
        assert found.get_json()["id"] == member["id"]


def test_a_mistyped_card_fails_its_check_digit(client: FlaskClient, partner_token: str) -> None:
    """A wrong Luhn digit is a 422 naming card_number, not a lookup."""
    card = enroll(client, partner_token)["card_number"]
    wrong = card[:-1] + str((int(card[-1]) + 1) % 10)
    body = problem(client.get(f"/v1/members/by-card/{wrong}", headers=bearer(partner_token)),
                   422, "invalid-field")
    assert body["field"] == "card_number"
    problem(client.get("/v1/members/by-card/12ab", headers=bearer(partner_token)), 422)


def test_unknown_members_are_404s(client: FlaskClient, partner_token: str) -> None:
    """An id never enrolled, a valid card never issued, or an impossible id: 404 problems."""
    problem(client.get("/v1/members/m_000000000000000000000000", headers=bearer(partner_token)),
            404, "unknown-member")
    problem(client.get("/v1/members/by-card/0000000000000000", headers=bearer(partner_token)),
            404, "unknown-member")
    problem(client.get("/v1/members/a%00b/balance", headers=bearer(partner_token)), 404,
            "unknown-member")


# -- balance ---------------------------------------------------------------------------------------


def test_balance_shows_available_pending_held_tier_and_expiry(
    app: Flask, client: FlaskClient, partner_token: str, shop_token: str
) -> None:
    """Pending points from SUPER (14-day window), available ones from SHOP, a hold, the tier."""
    with app.extensions["coalition"].db.transaction() as conn:
        set_expiry_policy(conn, ExpiryPolicy(lot_months=1), datetime.now(UTC))
    member = enroll(client, partner_token)["id"]
    earn(client, partner_token, member, 5_000)
    earn(client, shop_token, member, 20_000)
    hold = client.post("/v1/holds", json={"member": member, "points": 30},
                       headers=keyed(shop_token))
    assert hold.status_code == 201, hold.get_json()
    body = balance(client, shop_token, member)
    assert (body["member"], body["available"], body["pending"], body["held"]) == (
        member, 170, 50, 30)
    assert (body["tier"], body["next_tier"]) == ("White", "Black")
    assert body["points_earned_12m"] == 250
    assert body["points_to_next_tier"] == 1_000 - 250
    soon = body["expiring_90_days"]
    # Pending and held points are still in their lots, so they are counted as expiring too.
    assert sum(item["points"] for item in soon) == 250
    assert {item["reason"] for item in soon} == {"lot age"}
    horizon = datetime.now(UTC) + timedelta(days=90)
    assert all(datetime.fromisoformat(item["expires_at"]) <= horizon for item in soon)


def test_a_new_member_has_an_empty_balance(client: FlaskClient, partner_token: str,
                                           finance_token: str) -> None:
    """Zero everywhere, nothing expiring; finance may read balances too."""
    member = enroll(client, partner_token)["id"]
    body = balance(client, finance_token, member)
    assert (body["available"], body["pending"], body["held"]) == (0, 0, 0)
    assert body["expiring_90_days"] == []


# -- history ---------------------------------------------------------------------------------------


def _all_pages(client: FlaskClient, token: str, member: str, limit: int) -> list[dict[str, Any]]:
    items, cursor, pages = [], None, 0
    while True:
        query: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        response = client.get(f"/v1/members/{member}/entries", query_string=query,
                              headers=bearer(token))
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert len(body["items"]) <= limit
        items += body["items"]
        cursor, pages = body["next_cursor"], pages + 1
        if cursor is None:
            return items
        assert pages < 50, "the cursor never ends"


def test_history_pages_newest_first_and_a_partner_sees_only_its_own(
    client: FlaskClient, partner_token: str, shop_token: str, auditor_token: str
) -> None:
    """Five SHOP entries and two SUPER ones: SHOP pages through its five, the auditor all seven."""
    member = enroll(client, shop_token)["id"]
    earn(client, shop_token, member, 10_000)
    for points in (1, 2, 3):
        burn = client.post("/v1/burn", json={"member": member, "points": points},
                           headers=keyed(shop_token))
        assert burn.status_code == 201
    hold = client.post("/v1/holds", json={"member": member, "points": 4},
                       headers=keyed(shop_token))
    assert hold.status_code == 201
    earn(client, partner_token, member, 1_000)
    earn(client, partner_token, member, 2_000)
    shop_items = _all_pages(client, shop_token, member, limit=2)
    assert len(shop_items) == len({item["id"] for item in shop_items}) == 5
    assert {item["partner"] for item in shop_items} == {"SHOP"}
    booked = [item["booked_at"] for item in shop_items]
    assert booked == sorted(booked, reverse=True)
    assert shop_items[0]["kind"] == "HOLD"
    super_items = _all_pages(client, partner_token, member, limit=50)
    assert [item["partner"] for item in super_items] == ["SUPER", "SUPER"]
    everything = _all_pages(client, auditor_token, member, limit=3)
    assert len(everything) == 7


def test_a_forged_history_cursor_is_a_422(client: FlaskClient, partner_token: str) -> None:
    """A cursor this API did not give (or a naive time in one) is refused, naming cursor."""
    import base64

    member = enroll(client, partner_token)["id"]
    forged = [
        "not-a-cursor!",
        base64.urlsafe_b64encode(b"2026-01-01T00:00:00|00000000-0000-4000-8000-000000000000"),
        base64.urlsafe_b64encode(b"0001-01-01T00:00:00+01:00|00000000-0000-4000-8000-0000000"),
    ]
    for cursor in forged:
        text = cursor if isinstance(cursor, str) else cursor.decode()
        response = client.get(f"/v1/members/{member}/entries", query_string={"cursor": text},
                              headers=bearer(partner_token))
        assert problem(response, 422, "invalid-cursor")["field"] == "cursor"


# -- consents, export and erasure ------------------------------------------------------------------


def test_consents_are_recorded_by_partner_and_privacy_officer(
    client: FlaskClient, partner_token: str, privacy_token: str
) -> None:
    """POST consents: 201 with the decision; an unknown purpose is a 422."""
    member = enroll(client, partner_token, terms_version="2026-01")["id"]
    url = f"/v1/members/{member}/consents"
    for token, granted in ((partner_token, True), (privacy_token, False)):
        response = client.post(url, json={"purpose": "marketing", "granted": granted,
                                          "terms_version": "2026-01"}, headers=bearer(token))
        assert response.status_code == 201, response.get_json()
        body = response.get_json()
        assert (body["purpose"], body["granted"], body["terms_version"]) == (
            "marketing", granted, "2026-01")
    bad = client.post(url, json={"purpose": "spam", "granted": True, "terms_version": "x"},
                      headers=bearer(partner_token))
    assert "purpose" in problem(bad, 422, "invalid-request")["errors"]["json"]


def test_the_privacy_officer_exports_everything_held(
    client: FlaskClient, shop_token: str, privacy_token: str, auditor_token: str
) -> None:
    """GET export: personal data, consents, balances, lots and entries; nobody else may."""
    member = enroll(client, shop_token, personal=PERSONAL, terms_version="2026-01",
                    customer_ref="crm-9")["id"]
    earn(client, shop_token, member, 4_200)
    response = client.get(f"/v1/members/{member}/export", headers=bearer(privacy_token))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["format"] == "coalition/member-export/v1"
    assert (body["personal_data"], body["personal_data_state"]) == (PERSONAL, "present")
    assert body["balances"]["available"] == 42
    assert body["customer_refs"][0]["customer_ref"] == "crm-9"
    assert [c["purpose"] for c in body["consents"]] == ["terms"]
    assert len(body["entries"]) == 1
    for token in (shop_token, auditor_token):
        problem(client.get(f"/v1/members/{member}/export", headers=bearer(token)), 403,
                "forbidden")


def test_erasure_is_refused_while_a_hold_is_open_then_done(
    app: Flask, client: FlaskClient, shop_token: str, privacy_token: str
) -> None:
    """Open hold: 422 erasure-refused with the reason; once voided: done, points forfeited."""
    member = enroll(client, shop_token, personal=PERSONAL, terms_version="2026-01")["id"]
    earn(client, shop_token, member, 5_000)
    hold_id = client.post("/v1/holds", json={"member": member, "points": 10},
                          headers=keyed(shop_token)).get_json()["id"]
    url = f"/v1/members/{member}/erasure"
    refused = problem(client.post(url, json={"reason": "Art. 17 request #12"},
                                  headers=bearer(privacy_token)), 422, "erasure-refused")
    assert refused["member_id"] == member
    assert any("hold" in reason for reason in refused["reasons"])
    void = client.post(f"/v1/holds/{hold_id}/void", json={}, headers=keyed(shop_token))
    assert void.status_code == 201
    done = client.post(url, json={"reason": "Art. 17 request #12"},
                       headers=bearer(privacy_token))
    assert done.status_code == 200, done.get_json()
    outcome = done.get_json()
    assert (outcome["member_id"], outcome["outcome"]) == (member, "done")
    assert outcome["forfeit_entry"] is not None
    assert outcome["notify_partners"] == ["SHOP"]
    integrate(app)
    after = client.get(f"/v1/members/{member}", headers=bearer(privacy_token)).get_json()
    assert (after["status"], after["personal"]) == ("closed", None)
    assert balance(client, shop_token, member)["available"] == 0
    again = client.post(url, json={"reason": "again"}, headers=bearer(privacy_token))
    assert again.get_json()["outcome"] == "done"


def test_only_the_privacy_officer_erases(
    client: FlaskClient, partner_token: str, admin_token: str, privacy_token: str
) -> None:
    """Partners and admins get 403 on erasure; a missing reason is a 422."""
    member = enroll(client, partner_token)["id"]
    url = f"/v1/members/{member}/erasure"
    for token in (partner_token, admin_token):
        problem(client.post(url, json={"reason": "x"}, headers=bearer(token)), 403, "forbidden")
    missing = problem(client.post(url, json={}, headers=bearer(privacy_token)), 422)
    assert "reason" in missing["errors"]["json"]
