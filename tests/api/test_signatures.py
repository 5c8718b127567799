"""Signed requests (RFC 9421, Ed25519): verification, replay protection, mandatory signing, and the
signature stored in the entry it produced, checkable offline from the entry alone.

Partner SHOP (points available at once) signs with a key registered a day ago; the member it serves
holds 100 points.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from api.errors import ApiProblem
from api.signatures import (
    KEY_ATTRIBUTE,
    SIGNATURE_ATTRIBUTE,
    check_request,
    content_digest,
    parse_signature,
    sign_request,
    verify_stored_signature,
)
from ledger.errors import SignatureError
from ledger.repository import SqlLedgerStore
from partners import directory
from tests.api.conftest import Issuer, bearer, default_terms
from tests.api.test_points import balance, earn, enroll, instant_partner, problem


def raw_public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def register(issue: Issuer, private: Ed25519PrivateKey, code: str = "SHOP",
             valid_from: datetime | None = None) -> str:
    now = datetime.now(UTC)
    with issue.db.transaction() as conn:
        return directory.add_partner_key(conn, code, raw_public(private),
                                         valid_from or now - timedelta(days=1), now)


def signed_post(client: FlaskClient, token: str, path: str, payload: dict[str, Any],
                private: Ed25519PrivateKey, key_id: str, *, key: str | None = None,
                created: datetime | None = None, nonce: str | None = None,
                send: bytes | None = None) -> TestResponse:
    """POST ``payload`` signed with ``private`` (``send``: other bytes under that signature)."""
    body = json.dumps(payload).encode()
    headers = sign_request(private, key_id, "POST", path, body, created=created, nonce=nonce)
    return client.post(path, data=send if send is not None else body, headers={
        **bearer(token), "Idempotency-Key": key or str(uuid.uuid4()),
        "Content-Type": "application/json", **headers,
    })


@pytest.fixture
def shop(issue: Issuer) -> str:
    return instant_partner(issue, "SHOP")


@pytest.fixture
def private() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def key_id(issue: Issuer, shop: str, private: Ed25519PrivateKey) -> str:
    return register(issue, private)


@pytest.fixture
def member(client: FlaskClient, shop: str) -> str:
    found = enroll(client, shop)["id"]
    earn(client, shop, found, 10_000)
    return found


# -- accepted, and stored --------------------------------------------------------------------------


def test_a_signed_burn_is_booked_with_its_signature_in_the_entry(
    client: FlaskClient, shop: str, private: Ed25519PrivateKey, key_id: str, member: str
) -> None:
    payload = {"member": member, "points": 10}
    response = signed_post(client, shop, "/v1/burn", payload, private, key_id)
    assert response.status_code == 201, response.get_json()
    entry = response.get_json()
    attributes = entry["attributes"]
    assert attributes[KEY_ATTRIBUTE] == key_id
    assert attributes[SIGNATURE_ATTRIBUTE].startswith('sig1=("@method" "@path"')
    # What a later GET shows is what the journal stored (and the leaf hashes).
    stored = client.get(f"/v1/entries/{entry['id']}", headers=bearer(shop)).get_json()
    assert stored["attributes"] == attributes
    assert balance(client, shop, member)["available"] == 90


def test_the_stored_signature_verifies_offline_from_the_entry_alone(
    app: Flask, client: FlaskClient, shop: str, private: Ed25519PrivateKey, key_id: str,
    member: str
) -> None:
    payload = {"member": member, "points": 10}
    body = json.dumps(payload).encode()
    entry = signed_post(client, shop, "/v1/burn", payload, private, key_id).get_json()
    with app.extensions["coalition"].db.transaction() as conn:
        journal_entry = SqlLedgerStore(conn).load_entry(uuid.UUID(entry["id"]))
    public = raw_public(private)
    for form in (entry, journal_entry):
        parsed = verify_stored_signature(form, public, "POST", "/v1/burn", body)
        assert parsed.params["keyid"] == key_id
    with pytest.raises(SignatureError):  # the partner cannot claim it asked for 5 points
        verify_stored_signature(entry, public, "POST", "/v1/burn",
                                json.dumps({"member": member, "points": 5}).encode())
    with pytest.raises(SignatureError):  # nor at another endpoint
        verify_stored_signature(entry, public, "POST", "/v1/holds", body)
    with pytest.raises(SignatureError):  # and another key does not verify it
        verify_stored_signature(entry, raw_public(Ed25519PrivateKey.generate()), "POST",
                                "/v1/burn", body)


def test_every_points_moving_view_stores_the_signature(
    client: FlaskClient, shop: str, private: Ed25519PrivateKey, key_id: str, member: str
) -> None:
    """earn, hold, capture, void and reversal go through the same check and store it too."""
    def post(path: str, payload: dict[str, Any]) -> dict[str, Any]:
        response = signed_post(client, shop, path, payload, private, key_id)
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    earned = post("/v1/earn", {"member": member, "lines": [{"amount_cents": 1_000,
                                                            "category": "general"}]})
    entries = [earned["entry"]]
    hold = post("/v1/holds", {"member": member, "points": 5, "ttl_seconds": 600})
    entries += [hold, post(f"/v1/holds/{hold['id']}/capture", {"points": 5})]
    other = post("/v1/holds", {"member": member, "points": 5, "ttl_seconds": 600})
    entries += [other, post(f"/v1/holds/{other['id']}/void", {})]
    burn = post("/v1/burn", {"member": member, "points": 3})
    entries += [burn, post(f"/v1/entries/{burn['id']}/reversals", {"points": 3})]
    for entry in entries:
        assert entry["attributes"][KEY_ATTRIBUTE] == key_id, entry["kind"]
    assert earned["entry"]["attributes"]["rules"]  # the earn's own attributes are kept


def test_a_retry_signed_afresh_replays_the_original_entry(
    client: FlaskClient, shop: str, private: Ed25519PrivateKey, key_id: str, member: str
) -> None:
    """The signature is evidence, not part of the request: a re-signed retry is a replay."""
    payload = {"member": member, "points": 10}
    first = signed_post(client, shop, "/v1/burn", payload, private, key_id, key="order-1")
    again = signed_post(client, shop, "/v1/burn", payload, private, key_id, key="order-1")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert balance(client, shop, member)["available"] == 90


def test_an_old_key_verifies_what_it_signed_while_it_was_valid(
    issue: Issuer, client: FlaskClient, shop: str, private: Ed25519PrivateKey, key_id: str,
    member: str
) -> None:
    """After a rotation, a request created before the old key's retirement still verifies."""
    now = datetime.now(UTC)
    successor = Ed25519PrivateKey.generate()
    register(issue, successor, valid_from=now - timedelta(seconds=60))
    with issue.db.transaction() as conn:
        directory.retire_partner_key(conn, key_id, now - timedelta(seconds=60))
    inside = signed_post(client, shop, "/v1/burn", {"member": member, "points": 1}, private,
                         key_id, created=now - timedelta(seconds=120))
    assert inside.status_code == 201, inside.get_json()
    after = signed_post(client, shop, "/v1/burn", {"member": member, "points": 1}, private,
                        key_id, created=now)
    assert problem(after, 401, "bad-signature")["reason"] == "unverified"


# -- refused ---------------------------------------------------------------------------------------


def test_a_tampered_body_is_refused(
    client: FlaskClient, shop: str, private: Ed25519PrivateKey, key_id: str, member: str
) -> None:
    tampered = json.dumps({"member": member, "points": 90}).encode()
    response = signed_post(client, shop, "/v1/burn", {"member": member, "points": 1}, private,
                           key_id, send=tampered)
    assert problem(response, 401, "bad-signature")["reason"] == "digest-mismatch"
    # A digest fixed to match the new body no longer matches the signature.
    headers = sign_request(private, key_id, "POST", "/v1/burn", b"{}")
    headers["Content-Digest"] = content_digest(tampered)
    response = client.post("/v1/burn", data=tampered, headers={
        **bearer(shop), "Idempotency-Key": "t", "Content-Type": "application/json", **headers})
    assert problem(response, 401, "bad-signature")["reason"] == "unverified"
    assert balance(client, shop, member)["available"] == 100


def test_a_signature_by_another_key_is_refused(
    issue: Issuer, client: FlaskClient, shop: str, key_id: str, member: str
) -> None:
    payload = {"member": member, "points": 1}
    forged = signed_post(client, shop, "/v1/burn", payload, Ed25519PrivateKey.generate(), key_id)
    assert problem(forged, 401, "bad-signature")["reason"] == "unverified"
    # Another partner's registered key is not the caller's.
    other_private = Ed25519PrivateKey.generate()
    instant_partner(issue, "BAKERY")
    other = register(issue, other_private, code="BAKERY")
    borrowed = signed_post(client, shop, "/v1/burn", payload, other_private, other)
    assert problem(borrowed, 401, "bad-signature")["reason"] == "unverified"


def test_a_stale_or_future_signature_is_refused(
    client: FlaskClient, shop: str, private: Ed25519PrivateKey, key_id: str, member: str
) -> None:
    now = datetime.now(UTC)
    for created in (now - timedelta(seconds=400), now + timedelta(seconds=400)):
        response = signed_post(client, shop, "/v1/burn", {"member": member, "points": 1},
                               private, key_id, created=created)
        assert problem(response, 401, "bad-signature")["reason"] == "stale"


def test_a_replayed_nonce_is_refused(
    client: FlaskClient, shop: str, private: Ed25519PrivateKey, key_id: str, member: str
) -> None:
    payload = {"member": member, "points": 10}
    body = json.dumps(payload).encode()
    headers = {**bearer(shop), "Content-Type": "application/json",
               **sign_request(private, key_id, "POST", "/v1/burn", body)}
    first = client.post("/v1/burn", data=body, headers={**headers, "Idempotency-Key": "a"})
    assert first.status_code == 201, first.get_json()
    # The very same signed request again, even under another idempotency key: refused.
    replay = client.post("/v1/burn", data=body, headers={**headers, "Idempotency-Key": "b"})
    assert problem(replay, 401, "bad-signature")["reason"] == "replayed"
    assert balance(client, shop, member)["available"] == 90


def test_concurrent_replays_of_one_nonce_book_once(
    client: FlaskClient, app: Flask, shop: str, private: Ed25519PrivateKey, key_id: str,
    member: str
) -> None:
    """Eight threads send one signed request under eight keys: the primary key lets one through."""
    body = json.dumps({"member": member, "points": 10}).encode()
    headers = {**bearer(shop), "Content-Type": "application/json",
               **sign_request(private, key_id, "POST", "/v1/burn", body)}
    statuses: list[int] = []

    def send(n: int) -> None:
        response = app.test_client().post("/v1/burn", data=body,
                                          headers={**headers, "Idempotency-Key": f"c{n}"})
        statuses.append(response.status_code)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(201) == 1, statuses
    assert balance(client, shop, member)["available"] == 90


def test_a_contract_requiring_signatures_refuses_unsigned_requests(
    issue: Issuer, client: FlaskClient, private: Ed25519PrivateKey
) -> None:
    token = issue.partner("STRICT", contract=False)
    now = datetime.now(UTC)
    with issue.db.transaction() as conn:
        directory.add_contract(conn, "STRICT",
                               replace(default_terms(), pending_days=0, signing_required=True),
                               datetime(2026, 1, 1, tzinfo=UTC), None, now, "tests")
    strict_key = register(issue, private, code="STRICT")
    member = enroll(client, token)["id"]
    payload = {"member": member, "lines": [{"amount_cents": 10_000, "category": "general"}]}
    unsigned = client.post("/v1/earn", json=payload,
                           headers={**bearer(token), "Idempotency-Key": "e1"})
    problem(unsigned, 401, "signature-required")
    signed = signed_post(client, token, "/v1/earn", payload, private, strict_key, key="e1")
    assert signed.status_code == 201, signed.get_json()
    unsigned_burn = client.post("/v1/burn", json={"member": member, "points": 1},
                                headers={**bearer(token), "Idempotency-Key": "b1"})
    problem(unsigned_burn, 401, "signature-required")
    assert balance(client, token, member)["available"] == 100


def test_unsigned_requests_stay_accepted_without_the_contract_term(
    client: FlaskClient, shop: str, member: str
) -> None:
    response = client.post("/v1/burn", json={"member": member, "points": 1},
                           headers={**bearer(shop), "Idempotency-Key": "u"})
    assert response.status_code == 201
    assert KEY_ATTRIBUTE not in response.get_json()["attributes"]


# -- the accepted subset ---------------------------------------------------------------------------


@pytest.mark.parametrize(("signature_input", "signature"), [
    ('sig1=("@method" "@path" "date");created=1;keyid="k";alg="ed25519";nonce="n"', "sig1=:AA==:"),
    ('sig1=("@method" "@path" "content-digest" "date" "host");created=1;keyid="k";alg="ed25519";'
     'nonce="n"', "sig1=:AA==:"),
    ('sig1=("@method" "@path" "content-digest" "date");created=1;keyid="k";alg="rsa-pss-sha512";'
     'nonce="n"', "sig1=:AA==:"),
    ('sig1=("@method" "@path" "content-digest" "date");created=1;keyid="k";alg="ed25519"',
     "sig1=:AA==:"),
    ('sig1=("@method" "@path" "content-digest" "date");keyid="k";alg="ed25519";nonce="n"',
     "sig1=:AA==:"),
    ('sig1=("@method" "@path" "content-digest" "date");created=1;keyid="k";alg="ed25519";'
     'nonce="n";foo=1', "sig1=:AA==:"),
    ('sig1=("@method" "@path" "content-digest" "date");created=1;keyid="k";alg="ed25519";'
     'nonce="n"', "sig2=:AA==:"),
    ('sig1=("@method" "@path" "content-digest" "date";req);created=1;keyid="k";alg="ed25519";'
     'nonce="n"', "sig1=:AA==:"),
    ("sig1=(", "sig1=:AA==:"),
    ('sig1=("@method");created=1, sig2=("@path");created=1', "sig1=:AA==:, sig2=:AA==:"),
])
def test_anything_outside_the_accepted_subset_is_malformed(
    signature_input: str, signature: str
) -> None:
    with pytest.raises(SignatureError):
        parse_signature(signature_input, signature)


def test_the_signature_base_is_rfc_9421s(private: Ed25519PrivateKey) -> None:
    """The base is exactly the RFC 9421 §2.5 lines, in the order Signature-Input gives."""
    from api.signatures import signature_base

    parsed = parse_signature(
        'sig1=("date" "@method" "@path" "content-digest");created=1618884473;'
        'keyid="test-key-ed25519";alg="ed25519";nonce="b3k2pp5k7z"', "sig1=:AA==:")
    base = signature_base(parsed, method="post", path="/foo",
                          digest="sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
                          date="Tue, 20 Apr 2021 02:07:55 GMT")
    assert base.decode() == (
        '"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
        '"@method": POST\n'
        '"@path": /foo\n'
        '"content-digest": sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:\n'
        '"@signature-params": ("date" "@method" "@path" "content-digest");created=1618884473;'
        'keyid="test-key-ed25519";alg="ed25519";nonce="b3k2pp5k7z"'
    )
    # RFC 9530 §2's example: {"hello": "world"} with a trailing newline.
    assert content_digest(b'{"hello": "world"}\n') == (
        "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:"
    )


def test_staff_cannot_sign(app: Flask) -> None:
    with app.extensions["coalition"].db.transaction() as conn, pytest.raises(ApiProblem) as info:
        check_request(conn, None, method="POST", path="/v1/burn",
                      headers={"Signature-Input": "x", "Signature": "y"}, body=b"",
                      now=datetime.now(UTC))
    assert (info.value.status, info.value.code) == (401, "bad-signature")
