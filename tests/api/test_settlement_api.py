"""Settlement under /v1/settlement over the golden March 2026 example: finance and partners.

The golden data set is booked through the engine (tests/integration/test_settlement.py) into the
application's database; the workflow then runs through the API, with two finance users, an auditor
and partner credentials that see only their own statements.
"""

from __future__ import annotations

import base64
import csv
import io
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask
from flask.testing import FlaskClient

from audit.log import events as audit_events
from ledger.note import open_note
from partners import directory
from partners.directory import Role
from settlement import payments
from tests.api.conftest import Issuer, bearer
from tests.integration.test_settlement import (  # noqa: F401  (golden is a fixture)
    Coalition,
    golden,
    paris,
)

BASE = "/v1/settlement"
DEBTOR = {
    "name": "Coalition Operator SAS",
    "iban": "FR1420041010050500013M02606",
    "bic": "PSSTFRPPXXX",
}


@pytest.fixture
def world(app: Flask, golden: Coalition) -> Coalition:  # noqa: F811
    """The golden March booked in the application's database (the app opened its log first)."""
    return golden


@pytest.fixture
def tokens(issue: Issuer, world: Coalition) -> dict[str, str]:
    return {
        "ann": issue.staff(Role.FINANCE, "ann"),
        "ben": issue.staff(Role.FINANCE, "ben"),
        "auditor": issue.staff(Role.AUDITOR),
        "RAIL": issue.partner("RAIL"),
        "SUPER": issue.partner("SUPER"),
    }


def post(client: FlaskClient, token: str, path: str, body: Any = None) -> Any:
    return client.post(f"{BASE}{path}", json=body, headers=bearer(token))


def get(client: FlaskClient, token: str, path: str) -> Any:
    return client.get(f"{BASE}{path}", headers=bearer(token))


def test_the_four_eyes_workflow_through_the_api(
    app: Flask, client: FlaskClient, tokens: dict[str, str]
) -> None:
    ann, ben = tokens["ann"], tokens["ben"]
    assert post(client, ann, "/periods/2026-03/prepare").status_code == 409  # not closed
    closed = post(client, ann, "/periods/2026-03/close")
    assert closed.status_code == 200, closed.json
    assert closed.json["detail"]["size"] == 11
    prepared = post(client, ann, "/periods/2026-03/prepare")
    assert (prepared.status_code, prepared.json["actor"]) == (200, "ann")

    refused = post(client, ann, "/periods/2026-03/approve")
    assert refused.status_code == 422
    assert refused.json["type"] == "/problems/four-eyes-violation"
    assert refused.json["user"] == "ann"
    assert post(client, tokens["RAIL"], "/periods/2026-03/approve").status_code == 403
    approved = post(client, ben, "/periods/2026-03/approve")
    assert approved.status_code == 200, approved.json
    assert (approved.json["step"], len(approved.json["detail"]["entries"])) == ("POSTED", 14)

    made = post(
        client,
        ben,
        "/periods/2026-03/payment-file",
        {"execution_date": "2026-04-03", "debtor": DEBTOR},
    )
    assert made.status_code == 200, made.json
    assert (made.json["transactions"], made.json["control_sum"]) == (1, "3200.00")
    payments.validate_payment_file(made.json["document"].encode(), "pain.001.001.09")
    assert get(client, tokens["auditor"], "/periods/2026-03/payment-file").json == made.json
    assert get(client, tokens["RAIL"], "/periods/2026-03/payment-file").status_code == 403

    paid = post(client, ben, "/periods/2026-03/mark-paid", {"bank_reference": "SCT-0403"})
    assert paid.status_code == 200, paid.json
    assert (paid.json["status"], paid.json["outstanding"]) == ("settled", [])
    assert len(paid.json["payments"]) == 4
    state = get(client, tokens["RAIL"], "/periods/2026-03").json
    assert [p["partner"] for p in state["payments"]] == ["RAIL"]
    assert state["payments"][0]["amount"] == "-3200.00"
    verified = get(client, tokens["auditor"], "/periods/2026-03/verification")
    assert verified.json == {"period": "2026-03", "verified": True, "findings": []}
    with app.extensions["coalition"].db.transaction() as conn:
        audited = audit_events(conn, subject="settlement:2026-03")
    assert sorted((e.action, e.actor) for e in audited) == [
        ("settlement.approve", "ben"),
        ("settlement.close", "ann"),
        ("settlement.mark_paid", "ben"),
        ("settlement.payment_file", "ben"),
        ("settlement.prepare", "ann"),
    ]


@pytest.fixture
def prepared(client: FlaskClient, tokens: dict[str, str]) -> dict[str, str]:
    assert post(client, tokens["ann"], "/periods/2026-03/close").status_code == 200
    assert post(client, tokens["ann"], "/periods/2026-03/prepare").status_code == 200
    return tokens


def test_a_partner_sees_only_its_own_statement(
    client: FlaskClient, prepared: dict[str, str]
) -> None:
    rail = prepared["RAIL"]
    listed = get(client, rail, "/periods/2026-03/statements")
    assert listed.status_code == 200
    assert [s["partner"] for s in listed.json] == ["RAIL"]
    assert (listed.json[0]["net"], listed.json[0]["direction"]) == ("-3200.00", "operator-pays")
    assert {o["format"] for o in listed.json[0]["outputs"]} == {"json", "csv", "pdf"}
    assert get(client, rail, "/periods/2026-03/statements/SUPER").status_code == 404
    assert get(client, rail, "/periods/2026-03/statements/SUPER/outputs/csv").status_code == 404
    own = get(client, rail, "/periods/2026-03/statements/RAIL/outputs/csv")
    assert (own.status_code, own.mimetype) == (200, "text/csv")
    rows = list(csv.DictReader(io.StringIO(own.get_data(as_text=True))))
    assert rows[-1]["row"] == "payable"
    assert rows[-1]["signed_amount"] == "-3200.00"
    everyone = get(client, prepared["auditor"], "/periods/2026-03/statements")
    assert [s["partner"] for s in everyone.json] == ["BANK", "DEPT", "RAIL", "SUPER"]
    invoice = get(client, prepared["SUPER"], "/periods/2026-03/statements/SUPER/outputs/invoice")
    assert invoice.json["total_due"] == "7580.00"


def test_a_partner_countersigns_its_statement_note(
    app: Flask, client: FlaskClient, prepared: dict[str, str], log_signer: Any
) -> None:
    rail = prepared["RAIL"]
    note = get(client, rail, "/periods/2026-03/statements/RAIL/note")
    assert note.status_code == 200, note.json
    assert open_note(note.json["note"], [log_signer.verifier]).text == note.json["text"]
    assert "\npartner RAIL\n" in note.json["text"]
    private = Ed25519PrivateKey.generate()
    with app.extensions["coalition"].db.transaction() as conn:
        key_id = directory.add_partner_key(
            conn,
            "RAIL",
            private.public_key().public_bytes_raw(),
            paris(3, 1),
            datetime.now(UTC),
        )
    body = {
        "key_id": key_id,
        "signature": base64.b64encode(private.sign(note.json["text"].encode())).decode(),
        "signed_at": datetime.now(UTC).isoformat(),
    }
    signed = post(client, rail, "/periods/2026-03/statements/RAIL/countersignatures", body)
    assert signed.status_code == 201, signed.json
    assert [c["key_id"] for c in signed.json["countersignatures"]] == [key_id]
    other = post(
        client, prepared["SUPER"], "/periods/2026-03/statements/RAIL/countersignatures", body
    )
    assert other.status_code == 404
    forged = dict(body, signature=base64.b64encode(private.sign(b"other")).decode())
    assert (
        post(client, rail, "/periods/2026-03/statements/RAIL/countersignatures", forged).status_code
        == 422
    )


def test_disputes_through_the_api(
    client: FlaskClient, prepared: dict[str, str], world: Coalition
) -> None:
    world.at(paris(4, 2))
    rail_entry = world.earn("RAIL", "bob", 10)
    super_entry = world.earn("SUPER", "alice", 10)
    rail = prepared["RAIL"]
    foreign = post(
        client, rail, "/disputes", {"entry_ids": [str(super_entry.id)], "reason": "not ours"}
    )
    assert foreign.status_code == 404
    opened = post(
        client,
        rail,
        "/disputes",
        {"entry_ids": [str(rail_entry.id)], "reason": "scanned twice", "period": "2026-04"},
    )
    assert (opened.status_code, opened.json["status"]) == (201, "open")
    dispute = opened.json["id"]
    assert get(client, prepared["SUPER"], f"/disputes/{dispute}").status_code == 404
    assert get(client, prepared["SUPER"], "/disputes").json == []
    assert post(client, rail, f"/disputes/{dispute}/reject", {"reason": "x"}).status_code == 403
    rejected = post(
        client,
        prepared["ben"],
        f"/disputes/{dispute}/reject",
        {"reason": "the till log shows one scan"},
    )
    assert rejected.status_code == 200
    assert rejected.json["decision"]["reason"] == "the till log shows one scan"
    again = post(
        client,
        prepared["ben"],
        f"/disputes/{dispute}/accept",
        {"amount_cents": -100, "reason": "changed my mind"},
    )
    assert again.status_code == 422
    assert get(client, rail, f"/disputes/{dispute}").json["status"] == "rejected"
