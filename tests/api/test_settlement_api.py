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
from ledger import merkle
from ledger.note import open_checkpoint, open_note, verify_cosignature
from partners import directory
from partners.directory import Role
from settlement import payments, service
from settlement.service import WitnessPolicy
from tests.api.conftest import LOG_ORIGIN, PROBLEM_JSON, Issuer, bearer
from tests.integration.test_publish import Partners
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


# -- the witness quorum at close -------------------------------------------------------------------


def test_a_close_waits_for_the_configured_witness_quorum(
    app: Flask, client: FlaskClient, tokens: dict[str, str], log_signer: Any, tmp_path: Any
) -> None:
    partners = Partners(tmp_path, log_signer)
    reachable = {"w1": True, "w2": False}

    def deliver(url: str, body: bytes) -> tuple[int, str, bytes]:
        if not reachable[url.split("//")[1][:2]]:
            raise OSError("connection refused")
        return partners.http_post(url, body)

    app.extensions["coalition.witness_http_post"] = deliver
    db = app.extensions["coalition"].db
    witnesses = tuple(f"{e.url}={e.verifier.vkey}" for e in partners.endpoints)
    with db.transaction() as conn:
        service.set_close_witness_policy(conn, WitnessPolicy(witnesses, 2), datetime.now(UTC))

    refused = post(client, tokens["ann"], "/periods/2026-03/close")
    assert (refused.status_code, refused.mimetype) == (409, PROBLEM_JSON)
    assert refused.json["type"] == "/problems/witness-quorum-not-met"
    assert (refused.json["quorum"], refused.json["cosigned_by"]) == (
        2,
        [partners.endpoints[0].name],
    )
    assert "connection refused" in refused.json["detail"]
    assert post(client, tokens["ann"], "/periods/2026-03/prepare").status_code == 409  # still open
    with db.transaction() as conn:
        assert service.period_close(conn, "2026-03") is None
        assert audit_events(conn, subject="settlement:2026-03") == []

    reachable["w2"] = True
    closed = post(client, tokens["ann"], "/periods/2026-03/close")
    assert closed.status_code == 200, closed.json
    detail = closed.json["detail"]
    assert sorted(detail["witnesses"]) == sorted(e.name for e in partners.endpoints)
    _, signed = open_checkpoint(detail["checkpoint"], [log_signer.verifier], origin=LOG_ORIGIN)
    lines = detail["checkpoint"].split("\n\n", 1)[1].splitlines()
    for endpoint in partners.endpoints:
        (line,) = [x for x in lines if x.startswith(f"\u2014 {endpoint.name} ")]
        verify_cosignature(line, signed.text, endpoint.verifier)
    with db.transaction() as conn:
        (event,) = audit_events(conn, subject="settlement:2026-03")
    assert sorted(event.after["witnesses"]) == sorted(detail["witnesses"])
    assert post(client, tokens["ann"], "/periods/2026-03/close").json == closed.json  # harmless


# -- inclusion proofs of a line's entries ----------------------------------------------------------


def line_pages(client: FlaskClient, token: str, partner: str, number: int) -> list[Any]:
    """Every page of a line's proofs, one entry per page."""
    found, cursor = [], None
    while True:
        path = f"/periods/2026-03/statements/{partner}/lines/{number}/proofs?limit=1"
        page = get(client, token, path + (f"&cursor={cursor}" if cursor else ""))
        assert page.status_code == 200, page.json
        found.append(page.json)
        cursor = page.json["next_cursor"]
        if cursor is None:
            return found


def test_every_line_s_entries_are_proved_against_the_close_s_checkpoint(
    client: FlaskClient, prepared: dict[str, str], log_signer: Any
) -> None:
    auditor = prepared["auditor"]
    summed = 0
    for statement in get(client, auditor, "/periods/2026-03/statements").json:
        partner = statement["partner"]
        for number, line in enumerate(statement["document"]["lines"], start=1):
            pages = line_pages(client, auditor if number % 2 else prepared["ben"], partner, number)
            head = pages[0]
            assert (head["line"], head["flow"], head["line_id"]) == (
                number,
                line["flow"],
                line["id"],
            )
            checkpoint, _ = open_checkpoint(
                head["checkpoint"]["note"], [log_signer.verifier], origin=LOG_ORIGIN
            )
            items = [item for page in pages for item in page["items"]]
            if line["flow"] in ("FEE", "ADJUSTMENT"):
                assert (head["sums_entries"], items) == (False, [])
                assert "sums no journal entry" in head["detail"]
                continue
            for item in items:
                merkle.verify_inclusion(
                    bytes.fromhex(item["leaf_hash"]),
                    item["index"],
                    checkpoint.size,
                    [bytes.fromhex(h) for h in item["inclusion_proof"]],
                    checkpoint.root,
                )
                assert merkle.leaf_hash(item["leaf"].encode()).hex() == item["leaf_hash"]
                assert item["tree_size"] == checkpoint.size
            assert sum(item["points"] for item in items) == line["points"] == head["points"]
            summed += len(items)
    assert summed == 15  # 8 issuance, 4 reimbursement and 3 breakage entries


def test_a_partner_gets_proofs_of_its_own_lines_only(
    client: FlaskClient, prepared: dict[str, str]
) -> None:
    rail = prepared["RAIL"]
    (own,) = line_pages(client, rail, "RAIL", 1)
    assert (own["flow"], own["points"], len(own["items"])) == ("ISSUANCE", 400_000, 1)
    other = get(client, rail, "/periods/2026-03/statements/SUPER/lines/1/proofs")
    assert (other.status_code, other.mimetype) == (404, PROBLEM_JSON)
    beyond = get(client, prepared["ann"], "/periods/2026-03/statements/RAIL/lines/99/proofs")
    assert (beyond.status_code, beyond.mimetype) == (404, PROBLEM_JSON)
    assert beyond.json["type"] == "/problems/unknown-statement-line"
    assert beyond.json["line"] == 99
    nobody = get(client, prepared["ann"], "/periods/2026-03/statements/NOPE/lines/1/proofs")
    assert nobody.json["type"] == "/problems/unknown-statement-line"
    bad = get(client, rail, "/periods/2026-03/statements/RAIL/lines/1/proofs?cursor=WzFd")
    assert (bad.status_code, bad.json["type"]) == (422, "/problems/invalid-cursor")
    unprepared = get(client, prepared["ann"], "/periods/2026-04/statements/RAIL/lines/1/proofs")
    assert unprepared.status_code == 409
