"""Points through HTTP: earn, engagements, burn, holds, reversals, transfers, entries and proofs.

Partner SUPER (``partner_token``) has the default contract: points earned there are pending for 14
days. Partner SHOP (:func:`shop_token`) has a contract without a return window, so what it issues
is available at once and can be spent in the same test. Every error is checked to be an RFC 9457
problem with the request's id.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from ledger import merkle
from ledger.integrator import Integrator
from ledger.note import open_checkpoint
from ledger.receipts import Receipt, verify_receipt
from partners import directory, earning
from partners.rules import EngagementRule
from tests.api.conftest import PROBLEM_JSON, Issuer, bearer, default_terms

# -- helpers shared with test_members.py and test_api_doc.py ---------------------------------------


def problem(response: TestResponse, status: int, code: str | None = None) -> dict[str, Any]:
    """The problem document of an error response, after checking everything RFC 9457 asks of it.

    Status and media type; ``type``, ``title``, ``status``, ``detail`` and ``request_id`` present;
    the request id equal to the ``X-Request-Id`` response header; ``type`` ``/problems/<code>``.
    """
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM_JSON
    body = json.loads(response.get_data(as_text=True))
    assert {"type", "title", "status", "detail", "request_id"} <= body.keys()
    assert body["status"] == status
    assert body["type"].startswith("/problems/")
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["request_id"] == response.headers["X-Request-Id"]
    if code is not None:
        assert body["type"] == f"/problems/{code}", body
    return body


def keyed(token: str, key: str | None = None) -> dict[str, str]:
    """Authorization plus a fresh (or the given) Idempotency-Key."""
    return {**bearer(token), "Idempotency-Key": key or str(uuid.uuid4())}


def instant_partner(issue: Issuer, code: str = "SHOP") -> str:
    """A token of partner ``code``, onboarded with a contract whose points are available at once."""
    token = issue.partner(code, contract=False)
    now = datetime.now(UTC)
    with issue.db.transaction() as conn:
        directory.add_contract(conn, code, replace(default_terms(), pending_days=0),
                               datetime(2026, 1, 1, tzinfo=UTC), None, now, "tests")
    return token


def enroll(client: FlaskClient, token: str, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/members", json=body, headers=bearer(token))
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def earn(client: FlaskClient, token: str, member: str, cents: int, *, key: str | None = None,
         category: str = "general") -> dict[str, Any]:
    """Earn on a one-line basket of ``cents``; returns the EarnResult body."""
    response = client.post(
        "/v1/earn",
        json={"member": member, "lines": [{"amount_cents": cents, "category": category}]},
        headers=keyed(token, key),
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def balance(client: FlaskClient, token: str, member: str) -> dict[str, Any]:
    response = client.get(f"/v1/members/{member}/balance", headers=bearer(token))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def integrate(app: Flask) -> None:
    """Append what is booked to the log, as ``coalition integrate`` does beside a PostgreSQL
    server (on SQLite the application integrates inline, so this finds nothing to do)."""
    services = app.extensions["coalition"]
    Integrator(services.signer).integrate_all(services.db)


def member_amount(entry: dict[str, Any], member: str, role: str) -> int:
    """What an entry posts to one of the member's accounts."""
    account = f"member:{member}:{role}"
    return sum(p["amount"] for p in entry["postings"] if p["account"] == account)


@pytest.fixture
def shop_token(issue: Issuer) -> str:
    return instant_partner(issue, "SHOP")


@pytest.fixture
def funded(client: FlaskClient, shop_token: str) -> str:
    """A member enrolled at SHOP holding 100 available points (a 100.00 € purchase there)."""
    member = enroll(client, shop_token)["id"]
    earn(client, shop_token, member, 10_000)
    assert balance(client, shop_token, member)["available"] == 100
    return member


# -- earning ---------------------------------------------------------------------------------------


def test_earn_prices_a_basket_and_explains_why(client: FlaskClient, partner_token: str) -> None:
    """POST /v1/earn: points from the contract's rate, the explanation, rule versions, the entry."""
    member = enroll(client, partner_token)["id"]
    response = client.post(
        "/v1/earn",
        json={"member": member, "lines": [{"amount_cents": 2_400, "category": "general"},
                                          {"amount_cents": 1_000, "category": "fresh"}]},
        headers=keyed(partner_token),
    )
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["points"] == 34
    assert "34 pts" in body["explanation"]
    assert body["rule_versions"]["contract"] == 1
    assert body["rule_versions"]["tier"] == "White"
    entry = body["entry"]
    assert (entry["kind"], entry["partner"]) == ("EARN", "SUPER")
    assert sum(p["amount"] for p in entry["postings"]) == 0
    # The default contract has a 14-day return window: the points are pending.
    assert member_amount(entry, member, "pending") == 34
    assert entry["opened_lots"][0]["price_version"] == "SUPER/v1"
    assert entry["attributes"]["explanation"] == body["explanation"]


def test_an_earn_replay_returns_the_original_and_says_so(
    client: FlaskClient, partner_token: str
) -> None:
    """The same key and body again: the same 201 body, Idempotent-Replayed, nothing booked."""
    member = enroll(client, partner_token)["id"]
    request = {"member": member, "lines": [{"amount_cents": 5_000}]}
    first = client.post("/v1/earn", json=request, headers=keyed(partner_token, "till-1/0001"))
    again = client.post("/v1/earn", json=request, headers=keyed(partner_token, "till-1/0001"))
    assert first.status_code == again.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert balance(client, partner_token, member)["pending"] == 50


def test_a_key_reused_with_another_payload_is_a_409_naming_the_difference(
    client: FlaskClient, shop_token: str, funded: str
) -> None:
    """Same Idempotency-Key, other points: 409 idempotency-conflict listing ``points``."""
    headers = keyed(shop_token, "burn-42")
    first = client.post("/v1/burn", json={"member": funded, "points": 10}, headers=headers)
    assert first.status_code == 201
    conflict = client.post("/v1/burn", json={"member": funded, "points": 11}, headers=headers)
    body = problem(conflict, 409, "idempotency-conflict")
    assert "points" in body["differing_fields"]
    assert body["idempotency_key"] == "burn-42"
    assert body["original_entry_id"] == first.get_json()["id"]
    assert balance(client, shop_token, funded)["available"] == 90


def test_a_burn_replay_with_an_explicit_time_returns_the_same_entry(
    client: FlaskClient, shop_token: str, funded: str
) -> None:
    """A retried burn is booked once; the retry says Idempotent-Replayed: true."""
    request = {"member": funded, "points": 25, "business_time": "2026-03-01T10:00:00+01:00"}
    headers = keyed(shop_token, "order-7")
    first = client.post("/v1/burn", json=request, headers=headers)
    again = client.post("/v1/burn", json=request, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert balance(client, shop_token, funded)["available"] == 75


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/earn", {"member": "MEMBER", "lines": [{"amount_cents": 1_000}]}),
        ("/v1/engagements", {"member": "MEMBER", "event_type": "review", "event_id": "r-1"}),
        ("/v1/burn", {"member": "MEMBER", "points": 1}),
        ("/v1/holds", {"member": "MEMBER", "points": 1}),
        ("/v1/transfers", {"from_member": "MEMBER", "to_member": "MEMBER", "points": 1}),
        ("/v1/holds/00000000-0000-4000-8000-000000000000/capture", {"points": 1}),
        ("/v1/holds/00000000-0000-4000-8000-000000000000/void", {}),
        ("/v1/entries/00000000-0000-4000-8000-000000000000/reversals", {}),
    ],
)
def test_a_points_moving_post_without_idempotency_key_is_a_400(
    client: FlaskClient, shop_token: str, funded: str, path: str, body: dict[str, Any]
) -> None:
    """Every POST that moves points needs Idempotency-Key: 400 idempotency-key-required."""
    filled = {k: funded if v == "MEMBER" else v for k, v in body.items()}
    problem(client.post(path, json=filled, headers=bearer(shop_token)), 400,
            "idempotency-key-required")
    assert balance(client, shop_token, funded)["available"] == 100


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/burn", {"points": 10.0}),
        ("/v1/burn", {"points": 10.5}),
        ("/v1/burn", {"points": "10"}),
        ("/v1/holds", {"points": 1e1}),
        ("/v1/earn", {"lines": [{"amount_cents": 100.0}]}),
    ],
)
def test_points_as_floats_are_a_422(
    client: FlaskClient, shop_token: str, funded: str, path: str, body: dict[str, Any]
) -> None:
    """Amounts are strict integers: a float (even 10.0) or a string is refused, nothing booked."""
    response = client.post(path, json={"member": funded, **body}, headers=keyed(shop_token))
    errors = problem(response, 422, "invalid-request")["errors"]["json"]
    assert set(errors) & {"points", "lines"}
    assert balance(client, shop_token, funded)["available"] == 100


def test_engagement_rewards_once_per_event_id(
    app: Flask, client: FlaskClient, partner_token: str
) -> None:
    """An engagement event earns its rule's points; the same event id again is a duplicate."""
    with app.extensions["coalition"].db.transaction() as conn:
        earning.add_engagement_rule(conn, EngagementRule(
            event_type="review", version=1, sponsor="program", points=50, cap_per_day=None,
            cap_per_month=None, cap_per_year=None, valid_from=datetime(2026, 1, 1, tzinfo=UTC),
        ), datetime.now(UTC))
    member = enroll(client, partner_token)["id"]
    event = {"member": member, "event_type": "review", "event_id": "review-981"}
    first = client.post("/v1/engagements", json=event, headers=keyed(partner_token))
    assert first.status_code == 201, first.get_json()
    body = first.get_json()
    assert (body["points"], body["duplicate"], body["event_id"]) == (50, False, "review-981")
    assert body["entry"]["kind"] == "ENGAGE"
    again = client.post("/v1/engagements", json=event, headers=keyed(partner_token))
    assert again.status_code == 201
    repeat = again.get_json()
    assert repeat["duplicate"] is True
    assert repeat["entry"]["id"] == body["entry"]["id"]
    assert balance(client, partner_token, member)["available"] == 50


def test_an_engagement_without_a_rule_is_a_422(client: FlaskClient, partner_token: str) -> None:
    """No rule in force for the event type: 422 no-engagement-rule."""
    member = enroll(client, partner_token)["id"]
    response = client.post("/v1/engagements",
                           json={"member": member, "event_type": "survey", "event_id": "s-1"},
                           headers=keyed(partner_token))
    problem(response, 422, "no-engagement-rule")


# -- spending --------------------------------------------------------------------------------------


def test_points_earned_at_one_partner_are_burned_at_another(
    client: FlaskClient, issue: Issuer, shop_token: str, funded: str
) -> None:
    """A burn at RAIL spends points SHOP issued: one BURN entry, the balance goes down."""
    rail = instant_partner(issue, "RAIL")
    response = client.post("/v1/burn", json={"member": funded, "points": 30},
                           headers=keyed(rail))
    assert response.status_code == 201, response.get_json()
    entry = response.get_json()
    assert (entry["kind"], entry["partner"]) == ("BURN", "RAIL")
    assert member_amount(entry, funded, "available") == -30
    assert balance(client, rail, funded)["available"] == 70


def test_burning_more_than_available_is_a_422(
    client: FlaskClient, shop_token: str, funded: str
) -> None:
    """101 points of 100: 422 insufficient-points with the balance and the request."""
    body = problem(client.post("/v1/burn", json={"member": funded, "points": 101},
                               headers=keyed(shop_token)), 422, "insufficient-points")
    assert (body["balance"], body["requested"]) == (100, 101)


def test_a_burn_for_an_unknown_member_is_a_404(client: FlaskClient, shop_token: str) -> None:
    problem(client.post("/v1/burn", json={"member": "m_nobody", "points": 1},
                        headers=keyed(shop_token)), 404)


def test_a_hold_captured_in_part_returns_the_rest(
    client: FlaskClient, shop_token: str, funded: str
) -> None:
    """Hold 30, capture 20: the member pays 20, the other 10 come back at once."""
    hold = client.post("/v1/holds", json={"member": funded, "points": 30, "ttl_seconds": 600},
                       headers=keyed(shop_token))
    assert hold.status_code == 201, hold.get_json()
    hold_id = hold.get_json()["id"]
    held = balance(client, shop_token, funded)
    assert (held["available"], held["held"]) == (70, 30)
    capture = client.post(f"/v1/holds/{hold_id}/capture", json={"points": 20},
                          headers=keyed(shop_token))
    assert capture.status_code == 201, capture.get_json()
    assert capture.get_json()["refers_to"] == hold_id
    after = balance(client, shop_token, funded)
    assert (after["available"], after["held"]) == (80, 0)
    again = client.post(f"/v1/holds/{hold_id}/void", json={}, headers=keyed(shop_token))
    problem(again, 409, "hold-not-open")


def test_a_voided_hold_returns_every_point(
    client: FlaskClient, shop_token: str, funded: str
) -> None:
    """Void: the held points go back to available; capturing afterwards is a 409."""
    hold_id = client.post("/v1/holds", json={"member": funded, "points": 40},
                          headers=keyed(shop_token)).get_json()["id"]
    void = client.post(f"/v1/holds/{hold_id}/void", json={}, headers=keyed(shop_token))
    assert void.status_code == 201, void.get_json()
    assert (balance(client, shop_token, funded)["available"],
            balance(client, shop_token, funded)["held"]) == (100, 0)
    problem(client.post(f"/v1/holds/{hold_id}/capture", json={"points": 1},
                        headers=keyed(shop_token)), 409, "hold-not-open")


def test_capturing_more_than_held_is_a_422(
    client: FlaskClient, shop_token: str, funded: str
) -> None:
    hold_id = client.post("/v1/holds", json={"member": funded, "points": 10},
                          headers=keyed(shop_token)).get_json()["id"]
    body = problem(client.post(f"/v1/holds/{hold_id}/capture", json={"points": 11},
                               headers=keyed(shop_token)), 422, "capture-exceeds-hold")
    assert (body["held"], body["requested"]) == (10, 11)


def test_an_unknown_hold_is_a_404(client: FlaskClient, shop_token: str) -> None:
    problem(client.post(f"/v1/holds/{uuid.uuid4()}/void", json={}, headers=keyed(shop_token)),
            404)


# -- reversals and transfers -----------------------------------------------------------------------


def test_an_earn_is_reversed_in_part_then_over_reversal_is_refused(
    client: FlaskClient, shop_token: str, funded: str
) -> None:
    """Refund 40 of a 100-point earn (reason kept); reversing 61 more is a 422."""
    earned = client.get(f"/v1/members/{funded}/entries", headers=bearer(shop_token))
    earn_id = earned.get_json()["items"][0]["id"]
    url = f"/v1/entries/{earn_id}/reversals"
    partial = client.post(url, json={"points": 40, "reason": "returned 2 items"},
                          headers=keyed(shop_token))
    assert partial.status_code == 201, partial.get_json()
    reversal = partial.get_json()
    assert (reversal["refers_to"], reversal["reason"]) == (earn_id, "returned 2 items")
    assert member_amount(reversal, funded, "available") == -40
    assert balance(client, shop_token, funded)["available"] == 60
    over = problem(client.post(url, json={"points": 61}, headers=keyed(shop_token)), 422,
                   "reversal-exceeds-original")
    assert (over["reversible"], over["requested"]) == (60, 61)
    rest = client.post(url, json={}, headers=keyed(shop_token))
    assert rest.status_code == 201, rest.get_json()
    assert balance(client, shop_token, funded)["available"] == 0


def test_a_burn_is_reversed_when_the_order_is_cancelled(
    client: FlaskClient, shop_token: str, funded: str
) -> None:
    """Reversing a burn gives the points back."""
    burn_id = client.post("/v1/burn", json={"member": funded, "points": 30},
                          headers=keyed(shop_token)).get_json()["id"]
    reversal = client.post(f"/v1/entries/{burn_id}/reversals", json={"reason": "cancelled"},
                           headers=keyed(shop_token))
    assert reversal.status_code == 201, reversal.get_json()
    assert balance(client, shop_token, funded)["available"] == 100


def test_a_partner_cannot_reverse_another_partners_entry(
    client: FlaskClient, issue: Issuer, funded: str
) -> None:
    """RAIL reversing SHOP's earn is refused, and SHOP's points stay."""
    rail = instant_partner(issue, "RAIL")
    shop = issue.partner("SHOP")
    earn_id = client.get(f"/v1/members/{funded}/entries",
                         headers=bearer(shop)).get_json()["items"][0]["id"]
    response = client.post(f"/v1/entries/{earn_id}/reversals", json={"points": 1},
                           headers=keyed(rail))
    assert 400 <= response.status_code < 500
    problem(response, response.status_code)
    assert balance(client, shop, funded)["available"] == 100


def test_transfers_are_disabled_by_default(
    client: FlaskClient, shop_token: str, funded: str
) -> None:
    """POST /v1/transfers: 422 transfers-disabled until the programme enables them."""
    other = enroll(client, shop_token)["id"]
    response = client.post("/v1/transfers",
                           json={"from_member": funded, "to_member": other, "points": 10},
                           headers=keyed(shop_token))
    problem(response, 422, "transfers-disabled")
    assert balance(client, shop_token, funded)["available"] == 100


# -- entries and receipts --------------------------------------------------------------------------


def test_an_entry_is_visible_to_its_partner_and_to_finance_not_to_another_partner(
    client: FlaskClient, issue: Issuer, shop_token: str, funded: str,
    auditor_token: str, finance_token: str,
) -> None:
    """GET /v1/entries/{id}: SHOP, auditors and finance see it; RAIL gets 404 as if missing."""
    entry_id = client.get(f"/v1/members/{funded}/entries",
                          headers=bearer(shop_token)).get_json()["items"][0]["id"]
    for token in (shop_token, auditor_token, finance_token):
        response = client.get(f"/v1/entries/{entry_id}", headers=bearer(token))
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["id"] == entry_id
    rail = issue.partner("RAIL")
    hidden = problem(client.get(f"/v1/entries/{entry_id}", headers=bearer(rail)), 404,
                     "unknown-entry")
    missing = problem(client.get(f"/v1/entries/{uuid.uuid4()}", headers=bearer(rail)), 404,
                      "unknown-entry")
    assert hidden.keys() == missing.keys()
    problem(client.get(f"/v1/entries/{entry_id}/receipt", headers=bearer(rail)), 404)


def test_a_receipt_verifies_offline(
    app: Flask, client: FlaskClient, shop_token: str, funded: str
) -> None:
    """The receipt (leaf, signed checkpoint, inclusion proof) checks with only the log's key."""
    burn = client.post("/v1/burn", json={"member": funded, "points": 5},
                       headers=keyed(shop_token)).get_json()
    integrate(app)
    response = client.get(f"/v1/entries/{burn['id']}/receipt", query_string={"wait": 2},
                          headers=bearer(shop_token))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["entry_id"] == burn["id"]
    assert body["tlog_proof"].startswith("c2sp.org/tlog-proof@v1\n")
    verifier = app.extensions["coalition"].signer.verifier
    leaf = verify_receipt(Receipt.from_json(body), [verifier])
    assert leaf.body["id"] == burn["id"]
    assert (leaf.index, leaf.log) == (body["index"], body["log"])


def test_a_tampered_receipt_does_not_verify(
    app: Flask, client: FlaskClient, shop_token: str, funded: str
) -> None:
    """Change one byte of the leaf and the offline check fails."""
    from ledger.errors import VerificationError

    entry_id = client.get(f"/v1/members/{funded}/entries",
                          headers=bearer(shop_token)).get_json()["items"][0]["id"]
    integrate(app)
    body = client.get(f"/v1/entries/{entry_id}/receipt?wait=2",
                      headers=bearer(shop_token)).get_json()
    body["leaf"] = body["leaf"].replace('"points"', '"pOints"', 1) if '"points"' in body[
        "leaf"] else body["leaf"].replace("earn", "burn", 1)
    body.pop("leaf_hash")
    with pytest.raises(VerificationError):
        verify_receipt(Receipt.from_json(body), [app.extensions["coalition"].signer.verifier])


def test_checkpoints_and_consistency_proofs_verify(
    app: Flask, client: FlaskClient, shop_token: str, funded: str
) -> None:
    """The latest checkpoint, one by size, and a consistency proof between them, all checked."""
    verifier = app.extensions["coalition"].signer.verifier
    headers = bearer(shop_token)
    integrate(app)
    first = client.get("/v1/checkpoints/latest", headers=headers).get_json()
    client.post("/v1/burn", json={"member": funded, "points": 1}, headers=keyed(shop_token))
    integrate(app)
    latest = client.get("/v1/checkpoints/latest", headers=headers)
    assert latest.status_code == 200
    second = latest.get_json()
    assert second["size"] > first["size"] >= 1
    by_size = client.get(f"/v1/checkpoints/{first['size']}", headers=headers)
    assert by_size.get_json() == first
    for checkpoint in (first, second):
        opened, _ = open_checkpoint(checkpoint["note"], [verifier], origin=checkpoint["log"])
        assert (opened.size, opened.root.hex()) == (checkpoint["size"], checkpoint["root"])
    proof = client.get("/v1/proofs/consistency",
                       query_string={"from": first["size"], "to": second["size"]},
                       headers=headers)
    assert proof.status_code == 200, proof.get_json()
    body = proof.get_json()
    assert (body["old"], body["new"]) == (first["note"], second["note"])
    merkle.verify_consistency(first["size"], second["size"],
                              [bytes.fromhex(h) for h in body["proof"]],
                              bytes.fromhex(first["root"]), bytes.fromhex(second["root"]))


def test_unknown_checkpoints_and_backwards_proofs_are_refused(
    client: FlaskClient, partner_token: str
) -> None:
    """No checkpoint at a size: 404; a proof from a larger to a smaller tree: 422."""
    headers = bearer(partner_token)
    problem(client.get("/v1/checkpoints/999999", headers=headers), 404, "no-checkpoint")
    problem(client.get(f"/v1/checkpoints/{2**70}", headers=headers), 404, "no-checkpoint")
    problem(client.get("/v1/proofs/consistency?from=2&to=1", headers=headers), 422)
    problem(client.get(f"/v1/proofs/consistency?from=1&to={2**70}", headers=headers), 422)


# -- conventions -----------------------------------------------------------------------------------


def test_the_request_id_is_echoed_and_put_in_problems(
    client: FlaskClient, partner_token: str
) -> None:
    """X-Request-Id is echoed on success and error; without one the API makes one up."""
    ok = client.get("/v1/checkpoints/latest",
                    headers={**bearer(partner_token), "X-Request-Id": "till-12/req-77"})
    assert ok.headers["X-Request-Id"] == "till-12/req-77"
    error = client.post("/v1/burn", json={}, headers={"X-Request-Id": "till-12/req-78"})
    assert problem(error, 401)["request_id"] == "till-12/req-78"
    made_up = client.get("/healthz")
    assert uuid.UUID(made_up.headers["X-Request-Id"])


def test_schema_errors_are_problems_naming_the_fields(
    client: FlaskClient, shop_token: str
) -> None:
    """A body missing member and points: 422 invalid-request listing both."""
    body = problem(client.post("/v1/burn", json={}, headers=keyed(shop_token)), 422,
                   "invalid-request")
    assert {"member", "points"} <= body["errors"]["json"].keys()


def test_control_characters_and_lone_surrogates_are_422_not_500(
    client: FlaskClient, shop_token: str, funded: str
) -> None:
    """Text PostgreSQL cannot store (NUL, a lone surrogate) is a schema error on every backend."""
    burn_id = client.post("/v1/burn", json={"member": funded, "points": 1},
                          headers=keyed(shop_token)).get_json()["id"]
    for reason in ("a\x00b", "a\ud800b"):
        response = client.post(f"/v1/entries/{burn_id}/reversals", json={"reason": reason},
                               headers=keyed(shop_token))
        problem(response, 422, "invalid-request")
    problem(client.post("/v1/burn", json={"member": funded, "points": 1},
                        headers=keyed(shop_token, "a\x00b")), 400, "idempotency-key-required")
