"""POST /v1/batches: a partner's file of earn/burn records, validated whole, booked one by one.

Partner SHOP (``shop_token``) has a contract without a return window, so what a batch earns there
is available at once and a later record of the same batch can spend it.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from ledger import tables as lt
from tests.api.conftest import Issuer, bearer
from tests.api.test_points import balance, earn, enroll, instant_partner, integrate, problem


@pytest.fixture
def shop_token(issue: Issuer) -> str:
    return instant_partner(issue, "SHOP")


@pytest.fixture
def funded(client: FlaskClient, shop_token: str) -> str:
    """A member enrolled at SHOP holding 100 available points."""
    member = enroll(client, shop_token)["id"]
    earn(client, shop_token, member, 10_000)
    return member


def post_batch(client: FlaskClient, token: str, records: list[dict[str, Any]],
               key: str | None = None) -> Any:
    headers = {**bearer(token), "Idempotency-Key": key or str(uuid.uuid4())}
    return client.post("/v1/batches", json={"records": records}, headers=headers)


def entries_count(app: Flask) -> int:
    with app.extensions["coalition"].db.transaction() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(lt.entries)))


def earn_record(ref: str, member: str, cents: int) -> dict[str, Any]:
    return {"ref": ref, "op": "earn", "member": member,
            "lines": [{"amount_cents": cents, "category": "general"}]}


def burn_record(ref: str, member: str, points: int) -> dict[str, Any]:
    return {"ref": ref, "op": "burn", "member": member, "points": points,
            "business_time": "2026-11-01T12:00:00+00:00"}


def test_a_mixed_batch_books_each_record_once_and_a_retry_replays_them_all(
    app: Flask, client: FlaskClient, shop_token: str
) -> None:
    alice = enroll(client, shop_token)["id"]
    bob = enroll(client, shop_token)["id"]
    records = [
        earn_record("r1", alice, 10_000),
        earn_record("r2", bob, 5_000),
        burn_record("r3", alice, 30),
        {**earn_record("r4", bob, 2_000), "business_time": "2026-11-01T10:00:00+01:00"},
    ]
    before = entries_count(app)
    response = post_batch(client, shop_token, records, key="file-2026-11-01")
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert (body["records"], body["booked"], body["replayed"], body["refused"]) == (4, 4, 0, 0)
    results = body["results"]
    assert [r["ref"] for r in results] == ["r1", "r2", "r3", "r4"]  # input order
    assert [r["status"] for r in results] == ["booked"] * 4
    assert [r["points"] for r in results] == [100, 50, 30, 20]
    assert all(r["entry_id"] and r["problem"] is None for r in results)
    assert "100 pts" in results[0]["explanation"]
    assert entries_count(app) == before + 4
    assert "Idempotent-Replayed" not in response.headers

    retry = post_batch(client, shop_token, records, key="file-2026-11-01")
    assert retry.status_code == 200, retry.get_data(as_text=True)
    again = retry.get_json()
    assert (again["booked"], again["replayed"], again["refused"]) == (0, 4, 0)
    assert [r["status"] for r in again["results"]] == ["replayed"] * 4
    assert [r["entry_id"] for r in again["results"]] == [r["entry_id"] for r in results]
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert entries_count(app) == before + 4
    assert balance(client, shop_token, alice)["available"] == 70
    assert balance(client, shop_token, bob)["available"] == 70

    # Each record is an ordinary idempotent request under <key>:<ref>: a single burn reusing a
    # record's key is the same request, replayed.
    single = client.post(
        "/v1/burn",
        json={"member": alice, "points": 30, "business_time": "2026-11-01T12:00:00+00:00"},
        headers={**bearer(shop_token), "Idempotency-Key": "file-2026-11-01:r3"},
    )
    assert single.status_code == 201, single.get_data(as_text=True)
    assert single.headers["Idempotent-Replayed"] == "true"
    assert single.get_json()["id"] == results[2]["entry_id"]

    integrate(app)  # on PostgreSQL, what the integrator process does; on SQLite, nothing left
    receipt = client.get(f"/v1/entries/{results[0]['entry_id']}/receipt",
                         headers=bearer(shop_token))
    assert receipt.status_code == 200, receipt.get_data(as_text=True)


def test_one_malformed_record_refuses_the_whole_file_and_names_it(
    app: Flask, client: FlaskClient, shop_token: str
) -> None:
    member = enroll(client, shop_token)["id"]
    before = entries_count(app)
    records = [
        earn_record("a", member, 1_000),
        earn_record("b", member, 2_000),
        {"ref": "c", "op": "burn", "member": member, "points": 1.5},
        earn_record("d", member, 3_000),
    ]
    body = problem(post_batch(client, shop_token, records), 422, "invalid-request")
    assert (body["record"], body["field"]) == (2, "points")
    assert "record 2" in body["detail"]
    assert "points" in body["errors"]["json"]["records"]["2"]
    assert entries_count(app) == before  # nothing booked

    # The op's fields: a burn without points, an earn with points, an unknown op.
    for bad, field in (
        ({"ref": "x", "op": "burn", "member": member}, "points"),
        ({**earn_record("x", member, 100), "points": 3}, "points"),
        ({**earn_record("x", member, 100), "op": "gift"}, "op"),
        ({**earn_record("x", member, 100), "business_time": "2026-11-01T10:00:00"},
         "business_time"),
        ({**earn_record("x", member, 100), "ref": "a:b"}, "ref"),
    ):
        body = problem(post_batch(client, shop_token, [earn_record("ok", member, 100), bad]),
                       422, "invalid-request")
        assert (body["record"], body["field"]) == (1, field), body

    duplicate = [earn_record("same", member, 100), earn_record("same", member, 200)]
    body = problem(post_batch(client, shop_token, duplicate), 422, "invalid-request")
    assert (body["record"], body["field"]) == (1, "ref")
    assert entries_count(app) == before

    assert post_batch(client, shop_token, []).status_code == 422
    too_long_key = post_batch(client, shop_token, [earn_record("a", member, 1)], key="k" * 136)
    problem(too_long_key, 400, "idempotency-key-required")


def test_a_refused_record_does_not_stop_the_others(
    app: Flask, client: FlaskClient, shop_token: str, funded: str
) -> None:
    other = enroll(client, shop_token)["id"]
    records = [
        burn_record("spend-1", funded, 60),
        burn_record("spend-2", funded, 60),  # only 40 left: refused
        earn_record("earn-1", other, 1_000),
        {"ref": "ghost", "op": "earn", "member": "m_nobody",
         "lines": [{"amount_cents": 100}]},
        burn_record("spend-3", funded, 40),
    ]
    response = post_batch(client, shop_token, records, key="refusals")
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["booked", "refused", "booked", "refused", "booked"]
    refused = body["results"][1]
    assert refused["entry_id"] is None
    assert refused["problem"]["type"] == "/problems/insufficient-points"
    assert refused["problem"]["status"] == 422
    assert (refused["problem"]["balance"], refused["problem"]["requested"]) == (40, 60)
    assert body["results"][3]["problem"]["type"] == "/problems/unknown-member"
    assert balance(client, shop_token, funded)["available"] == 0
    assert balance(client, shop_token, other)["available"] == 10

    # The retry replays what was booked and refuses again what was refused (the refusal is
    # recorded under the record's key), even though nothing changed in between.
    retry = post_batch(client, shop_token, records, key="refusals").get_json()
    assert [r["status"] for r in retry["results"]] == [
        "replayed", "refused", "replayed", "refused", "replayed"
    ]
    assert retry["results"][1]["problem"]["type"] == "/problems/insufficient-points"

    # Another record under a ref already used by this key is a conflict, reported per record.
    changed = [burn_record("spend-1", funded, 61)]
    result = post_batch(client, shop_token, changed, key="refusals").get_json()["results"][0]
    assert result["status"] == "refused"
    assert result["problem"]["type"] == "/problems/idempotency-conflict"
    assert result["problem"]["status"] == 409


def test_only_partners_send_batches(client: FlaskClient, admin_token: str) -> None:
    response = client.post("/v1/batches", json={"records": []},
                           headers={**bearer(admin_token), "Idempotency-Key": "k"})
    problem(response, 403, "forbidden")
