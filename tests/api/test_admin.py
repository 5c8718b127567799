"""Administration through HTTP: partners, contracts, credentials, signing keys and staff."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.api.conftest import BIC, CONTRACT_JSON, IBAN, PROBLEM_JSON, Issuer, bearer


def problem(response: TestResponse, status: int) -> dict[str, Any]:
    """The problem document of an error response, after checking its status and media type."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM_JSON
    body = json.loads(response.get_data(as_text=True))
    assert body["status"] == status
    assert body["type"].startswith("/problems/")
    return body


def create_partner(client: FlaskClient, token: str, code: str = "BAKERY", **changes: Any
                   ) -> TestResponse:
    body = {"code": code, "legal_name": f"{code} SARL", "iban": IBAN, "bic": BIC, **changes}
    return client.post("/v1/partners", json=body, headers=bearer(token))


def public_key_b64() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


# -- partners --------------------------------------------------------------------------------------


def test_creating_a_partner_returns_201_with_location_and_etag(
    client: FlaskClient, admin_token: str
) -> None:
    """POST /v1/partners onboards an active partner: 201, Location, ETag "1", compact IBAN."""
    response = create_partner(client, admin_token, iban="de89 3704 0044 0532 0130 00")
    assert response.status_code == 201, response.get_json()
    assert response.headers["ETag"] == '"1"'
    assert response.headers["Location"].endswith("/v1/partners/BAKERY")
    body = response.get_json()
    assert body["iban"] == IBAN
    assert (body["status"], body["redemption_blocked"], body["version"]) == ("active", False, 1)
    fetched = client.get("/v1/partners/BAKERY", headers=bearer(admin_token))
    assert fetched.status_code == 200
    assert fetched.headers["ETag"] == '"1"'
    assert fetched.get_json() == body


def test_an_invalid_iban_is_a_422_naming_the_field(client: FlaskClient, admin_token: str) -> None:
    """A bad IBAN checksum is refused with a problem whose field is iban."""
    body = problem(create_partner(client, admin_token, iban="DE89370400440532013001"), 422)
    assert body["field"] == "iban"
    assert body["type"] == "/problems/invalid-field"


def test_a_missing_field_is_a_422_listing_it(client: FlaskClient, admin_token: str) -> None:
    """A body without bic is refused by the schema, which names bic."""
    response = client.post("/v1/partners", json={"code": "X", "legal_name": "X", "iban": IBAN},
                           headers=bearer(admin_token))
    assert "bic" in problem(response, 422)["errors"]["json"]


def test_a_duplicate_partner_is_a_409(client: FlaskClient, admin_token: str) -> None:
    """Onboarding a code that is taken is a 409 partner-exists problem."""
    assert create_partner(client, admin_token).status_code == 201
    body = problem(create_partner(client, admin_token), 409)
    assert body["type"] == "/problems/partner-exists"
    assert body["partner"] == "BAKERY"


def test_an_unknown_partner_is_a_404(client: FlaskClient, admin_token: str) -> None:
    """GET /v1/partners/{code} of a code never onboarded is a 404 problem."""
    problem(client.get("/v1/partners/NOPE", headers=bearer(admin_token)), 404)


def test_patch_needs_if_match(client: FlaskClient, admin_token: str) -> None:
    """PATCH without If-Match is a 428 and changes nothing."""
    create_partner(client, admin_token)
    response = client.patch("/v1/partners/BAKERY", json={"status": "suspended"},
                            headers=bearer(admin_token))
    problem(response, 428)
    fetched = client.get("/v1/partners/BAKERY", headers=bearer(admin_token)).get_json()
    assert fetched["status"] == "active"


def test_patch_with_a_stale_etag_is_a_412(client: FlaskClient, admin_token: str) -> None:
    """PATCH with If-Match of an older version is a 412 naming the current version."""
    create_partner(client, admin_token)
    first = client.patch("/v1/partners/BAKERY", json={"status": "suspended"},
                         headers={**bearer(admin_token), "If-Match": '"1"'})
    assert first.status_code == 200
    stale = client.patch("/v1/partners/BAKERY", json={"status": "exiting"},
                         headers={**bearer(admin_token), "If-Match": '"1"'})
    body = problem(stale, 412)
    assert (body["expected"], body["current"]) == (1, 2)


@pytest.mark.parametrize("tag", ['""', '"", "x"', 'W/"1"'])
def test_patch_with_an_if_match_that_names_no_version_is_a_412(
    client: FlaskClient, admin_token: str, tag: str
) -> None:
    """An empty or weak tag names no version: 412, never a 500 (schemathesis found the empty
    one)."""
    create_partner(client, admin_token)
    response = client.patch("/v1/partners/BAKERY", json={"status": "suspended"},
                            headers={**bearer(admin_token), "If-Match": tag})
    assert problem(response, 412)["current"] == 1


def test_patch_with_the_current_etag_changes_and_returns_a_new_etag(
    client: FlaskClient, admin_token: str
) -> None:
    """PATCH with a fresh If-Match suspends and blocks redemptions: 200 and ETag "2"."""
    etag = create_partner(client, admin_token).headers["ETag"]
    response = client.patch(
        "/v1/partners/BAKERY", json={"status": "suspended", "redemption_blocked": True},
        headers={**bearer(admin_token), "If-Match": etag},
    )
    assert response.status_code == 200, response.get_json()
    assert response.headers["ETag"] == '"2"'
    body = response.get_json()
    assert (body["status"], body["redemption_blocked"], body["version"]) == ("suspended", True, 2)
    reactivated = client.patch("/v1/partners/BAKERY", json={"status": "active"},
                               headers={**bearer(admin_token), "If-Match": '"2"'})
    assert reactivated.get_json()["redemption_blocked"] is False


def test_blocking_redemptions_of_an_active_partner_is_a_422(
    client: FlaskClient, admin_token: str
) -> None:
    """An active partner cannot block redemptions: 422 naming redemption_blocked."""
    create_partner(client, admin_token)
    response = client.patch("/v1/partners/BAKERY", json={"redemption_blocked": True},
                            headers={**bearer(admin_token), "If-Match": '"1"'})
    assert problem(response, 422)["field"] == "redemption_blocked"


def test_partners_are_listed_a_page_at_a_time(
    client: FlaskClient, admin_token: str, finance_token: str
) -> None:
    """Listing with limit=2 pages through every partner in code order, ending with a null cursor."""
    for code in ("C", "A", "E", "B", "D"):
        assert create_partner(client, admin_token, code=code).status_code == 201
    seen, cursor = [], None
    while True:
        query = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/partners", query_string=query, headers=bearer(finance_token))
        assert page.status_code == 200, page.get_json()
        body = page.get_json()
        assert len(body["items"]) <= 2
        seen += [item["code"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == ["A", "B", "C", "D", "E"]


def test_a_forged_cursor_is_a_422(client: FlaskClient, admin_token: str) -> None:
    """A cursor that is not base64 JSON of a sort key is refused, naming cursor."""
    for cursor in ("not-a-cursor!", base64.urlsafe_b64encode(b'{"a": 1}').decode(),
                   base64.urlsafe_b64encode(b"[1]").decode()):
        response = client.get("/v1/partners", query_string={"cursor": cursor},
                              headers=bearer(admin_token))
        problem(response, 422)


@pytest.mark.parametrize("limit", [0, 201, "x"])
def test_a_limit_out_of_range_is_a_422(client: FlaskClient, admin_token: str, limit: Any) -> None:
    """limit must be 1–200."""
    problem(client.get("/v1/partners", query_string={"limit": limit},
                       headers=bearer(admin_token)), 422)


def test_staff_other_than_admin_cannot_create_partners(
    client: FlaskClient, finance_token: str, auditor_token: str, partner_token: str
) -> None:
    """Finance, auditors and partners get 403 on POST /v1/partners; no token gets 401."""
    for token in (finance_token, auditor_token, partner_token):
        problem(create_partner(client, token), 403)
    problem(client.post("/v1/partners", json={}), 401)


# -- contracts -------------------------------------------------------------------------------------


def test_contract_versions_chain_and_show_prices_as_strings(
    client: FlaskClient, admin_token: str, auditor_token: str
) -> None:
    """v1 then v2 from where v1 ends: 201 each, listed oldest first with decimal strings."""
    create_partner(client, admin_token)
    url = "/v1/partners/BAKERY/contracts"
    first = client.post(url, json=CONTRACT_JSON, headers=bearer(admin_token))
    assert first.status_code == 201, first.get_json()
    assert first.headers["Location"].endswith("/v1/partners/BAKERY/contracts/1")
    second_terms = {**CONTRACT_JSON, "valid_from": CONTRACT_JSON["valid_to"], "valid_to": None,
                    "issue_price": "0.0105"}
    second = client.post(url, json=second_terms, headers=bearer(admin_token))
    assert second.status_code == 201, second.get_json()
    listed = client.get(url, headers=bearer(auditor_token)).get_json()
    assert [c["price_version"] for c in listed["items"]] == ["BAKERY/v1", "BAKERY/v2"]
    assert listed["next_cursor"] is None
    v2 = listed["items"][1]
    assert (v2["issue_price"], v2["reimbursement_price"], v2["earn_rate"]) == (
        "0.0105", "0.0090", "1")
    assert v2["category_multipliers"] == {"fresh": "1.5"}
    assert v2["created_by"] == "admin-staff"
    one = client.get(f"{url}/2", headers=bearer(admin_token))
    assert one.get_json() == v2


def test_an_overlapping_contract_is_a_409(client: FlaskClient, admin_token: str) -> None:
    """A version starting before the previous one ends is a 409 contract-overlap problem."""
    create_partner(client, admin_token)
    url = "/v1/partners/BAKERY/contracts"
    client.post(url, json=CONTRACT_JSON, headers=bearer(admin_token))
    overlapping = {**CONTRACT_JSON, "valid_from": "2026-06-01T00:00:00+00:00", "valid_to": None}
    body = problem(client.post(url, json=overlapping, headers=bearer(admin_token)), 409)
    assert body["type"] == "/problems/contract-overlap"
    assert body["previous_version"] == 1


@pytest.mark.parametrize("field", ["issue_price", "reimbursement_price", "earn_rate"])
def test_prices_as_json_numbers_are_a_422(
    client: FlaskClient, admin_token: str, field: str
) -> None:
    """A price sent as a JSON number (float) is refused, naming the field; nothing is recorded."""
    create_partner(client, admin_token)
    url = "/v1/partners/BAKERY/contracts"
    body = problem(client.post(url, json={**CONTRACT_JSON, field: 0.01},
                               headers=bearer(admin_token)), 422)
    assert field in body["errors"]["json"]
    assert client.get(url, headers=bearer(admin_token)).get_json()["items"] == []


def test_a_float_category_multiplier_is_a_422(client: FlaskClient, admin_token: str) -> None:
    """Category multipliers are decimal strings too."""
    create_partner(client, admin_token)
    response = client.post("/v1/partners/BAKERY/contracts",
                           json={**CONTRACT_JSON, "category_multipliers": {"fresh": 1.5}},
                           headers=bearer(admin_token))
    assert "category_multipliers" in problem(response, 422)["errors"]["json"]


def test_finance_cannot_add_a_contract(client: FlaskClient, admin_token: str,
                                       finance_token: str) -> None:
    """Finance may read contracts but not edit them (PRODUCT.md §9)."""
    create_partner(client, admin_token)
    url = "/v1/partners/BAKERY/contracts"
    problem(client.post(url, json=CONTRACT_JSON, headers=bearer(finance_token)), 403)
    assert client.get(url, headers=bearer(finance_token)).status_code == 200


# -- credentials -----------------------------------------------------------------------------------


def test_a_partner_credential_token_is_shown_once_and_works(
    client: FlaskClient, admin_token: str
) -> None:
    """POST credentials returns the token (201); lists and reads never show it; it authenticates."""
    create_partner(client, admin_token)
    url = "/v1/partners/BAKERY/credentials"
    issued = client.post(url, json={"label": "till 12"}, headers=bearer(admin_token))
    assert issued.status_code == 201, issued.get_json()
    body = issued.get_json()
    token, secret = body["token"], body["token"].partition(".")[2]
    assert token.startswith(f"ck_{body['id']}.")
    assert (body["role"], body["partner"], body["label"]) == ("partner", "BAKERY", "till 12")
    listed = client.get(url, headers=bearer(admin_token))
    one = client.get(issued.headers["Location"], headers=bearer(admin_token))
    for response in (listed, one):
        assert response.status_code == 200
        assert secret not in response.get_data(as_text=True)
        assert "token" not in response.get_data(as_text=True)
    assert [item["id"] for item in listed.get_json()["items"]] == [body["id"]]
    assert client.get("/v1/checkpoints/latest", headers=bearer(token)).status_code == 200


def test_a_revoked_token_is_a_401(client: FlaskClient, admin_token: str) -> None:
    """After revoke, the partner's token no longer authenticates."""
    create_partner(client, admin_token)
    issued = client.post("/v1/partners/BAKERY/credentials", json={},
                         headers=bearer(admin_token)).get_json()
    revoked = client.post(f"/v1/partners/BAKERY/credentials/{issued['id']}/revoke",
                          headers=bearer(admin_token))
    assert revoked.status_code == 200
    assert revoked.get_json()["revoked_at"] is not None
    problem(client.get("/v1/checkpoints/latest", headers=bearer(issued["token"])), 401)


def test_rotation_issues_a_working_successor_and_retires_the_old_token(
    client: FlaskClient, admin_token: str
) -> None:
    """Rotate without grace: the new token works at once, the old one is a 401."""
    create_partner(client, admin_token)
    old = client.post("/v1/partners/BAKERY/credentials", json={},
                      headers=bearer(admin_token)).get_json()
    rotated = client.post(f"/v1/partners/BAKERY/credentials/{old['id']}/rotate",
                          headers=bearer(admin_token))
    assert rotated.status_code == 201, rotated.get_json()
    new = rotated.get_json()
    assert new["id"] != old["id"]
    assert client.get("/v1/checkpoints/latest", headers=bearer(new["token"])).status_code == 200
    problem(client.get("/v1/checkpoints/latest", headers=bearer(old["token"])), 401)
    again = client.post(f"/v1/partners/BAKERY/credentials/{old['id']}/rotate", json={},
                        headers=bearer(admin_token))
    assert problem(again, 409)["type"] == "/problems/credential-revoked"


def test_another_partners_credential_is_not_found_under_this_partner(
    client: FlaskClient, admin_token: str, issue: Issuer
) -> None:
    """A credential id is only reachable under the partner it belongs to."""
    create_partner(client, admin_token)
    other = client.post("/v1/partners/BAKERY/credentials", json={},
                        headers=bearer(admin_token)).get_json()
    issue.partner("SUPER")
    problem(client.post(f"/v1/partners/SUPER/credentials/{other['id']}/revoke",
                        headers=bearer(admin_token)), 404)


# -- signing keys ----------------------------------------------------------------------------------


def test_a_partner_manages_its_own_keys(client: FlaskClient, issue: Issuer) -> None:
    """A partner registers, lists and retires its own Ed25519 keys."""
    token = issue.partner("SUPER")
    url = "/v1/partners/SUPER/keys"
    added = client.post(url, json={"public_key": public_key_b64()}, headers=bearer(token))
    assert added.status_code == 201, added.get_json()
    key = added.get_json()
    assert len(key["key_id"]) == 16
    assert key["valid_to"] is None
    listed = client.get(url, headers=bearer(token)).get_json()
    assert [k["key_id"] for k in listed["items"]] == [key["key_id"]]
    retired = client.post(f"{url}/{key['key_id']}/retire", headers=bearer(token))
    assert retired.status_code == 200, retired.get_json()
    assert retired.get_json()["valid_to"] is not None


def test_a_partner_cannot_see_or_touch_another_partners_keys(
    client: FlaskClient, issue: Issuer, admin_token: str
) -> None:
    """Naming another partner's code is a 404 for a partner, as if the partner did not exist."""
    own = issue.partner("SUPER")
    issue.partner("RAIL")
    key = client.post("/v1/partners/RAIL/keys", json={"public_key": public_key_b64()},
                      headers=bearer(admin_token)).get_json()
    unknown = problem(client.get("/v1/partners/GHOST/keys", headers=bearer(own)), 404)
    other = problem(client.get("/v1/partners/RAIL/keys", headers=bearer(own)), 404)
    assert (unknown["type"], unknown["detail"].replace("GHOST", "X")) == (
        other["type"], other["detail"].replace("RAIL", "X"))
    problem(client.post("/v1/partners/RAIL/keys", json={"public_key": public_key_b64()},
                        headers=bearer(own)), 404)
    problem(client.post(f"/v1/partners/RAIL/keys/{key['key_id']}/retire", headers=bearer(own)),
            404)
    problem(client.post(f"/v1/partners/SUPER/keys/{key['key_id']}/retire", headers=bearer(own)),
            404)


def test_a_malformed_or_repeated_key_is_refused(client: FlaskClient, issue: Issuer) -> None:
    """A key that is not 32 bytes of base64 is a 422; the same key twice is a 409."""
    token = issue.partner("SUPER")
    url = "/v1/partners/SUPER/keys"
    bad = problem(client.post(url, json={"public_key": "AAAA"}, headers=bearer(token)), 422)
    assert bad["field"] == "public_key"
    key = public_key_b64()
    assert client.post(url, json={"public_key": key}, headers=bearer(token)).status_code == 201
    problem(client.post(url, json={"public_key": key}, headers=bearer(token)), 409)


# -- staff -----------------------------------------------------------------------------------------


def test_admin_creates_staff_whose_token_carries_the_role(
    client: FlaskClient, admin_token: str
) -> None:
    """POST /v1/staff issues a finance credential: it reads partners but cannot create them."""
    created = client.post("/v1/staff", json={"name": "fiona", "role": "finance"},
                          headers=bearer(admin_token))
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert (body["staff"], body["role"], body["partner"]) == ("fiona", "finance", None)
    assert client.get("/v1/partners", headers=bearer(body["token"])).status_code == 200
    problem(create_partner(client, body["token"]), 403)
    listed = client.get("/v1/staff", headers=bearer(admin_token))
    assert body["token"].partition(".")[2] not in listed.get_data(as_text=True)
    assert {item["staff"] for item in listed.get_json()["items"]} == {"admin-staff", "fiona"}


def test_staff_cannot_be_created_as_a_partner(client: FlaskClient, admin_token: str) -> None:
    """The staff role must be finance, auditor, admin or privacy."""
    response = client.post("/v1/staff", json={"name": "p", "role": "partner"},
                           headers=bearer(admin_token))
    assert "role" in problem(response, 422)["errors"]["json"]


def test_a_revoked_staff_credential_is_a_401(
    client: FlaskClient, admin_token: str, issue: Issuer
) -> None:
    """Revoking a staff credential through /v1/staff stops it at once."""
    auditor = client.post("/v1/staff", json={"name": "ada", "role": "auditor"},
                          headers=bearer(admin_token)).get_json()
    revoked = client.post(f"/v1/staff/{auditor['id']}/revoke", headers=bearer(admin_token))
    assert revoked.status_code == 200
    problem(client.get("/v1/partners", headers=bearer(auditor["token"])), 401)
    partner_credential = issue.partner("SUPER").removeprefix("ck_").partition(".")[0]
    problem(client.post(f"/v1/staff/{partner_credential}/revoke", headers=bearer(admin_token)),
            404)


# -- one error shape -------------------------------------------------------------------------------


def test_every_error_is_problem_json(client: FlaskClient, admin_token: str, issue: Issuer) -> None:
    """400, 401, 403, 404, 405, 409, 412, 422 and 428 responses all use application/problem+json."""
    partner = issue.partner("SUPER")
    admin = bearer(admin_token)
    responses = {
        401: client.get("/v1/partners"),
        403: client.get("/v1/partners", headers=bearer(partner)),
        404: client.get("/v1/partners/NOPE/contracts", headers=admin),
        405: client.delete("/v1/partners/SUPER", headers=admin),
        409: create_partner(client, admin_token, code="SUPER"),
        412: client.patch("/v1/partners/SUPER", json={"status": "exiting"},
                          headers={**admin, "If-Match": '"9"'}),
        400: client.post("/v1/partners", data="not json", headers=admin,
                         content_type="application/json"),
        422: client.post("/v1/partners", json={"code": 1}, headers=admin),
        428: client.patch("/v1/partners/SUPER", json={"status": "exiting"}, headers=admin),
    }
    for status, response in responses.items():
        body = problem(response, status)
        assert body["request_id"] == response.headers["X-Request-Id"]


def test_credentials_are_listed_a_page_at_a_time(
    client: FlaskClient, admin_token: str, issue: Issuer
) -> None:
    """Staff and partner credential lists page oldest first without repeats or gaps."""
    for role in ("finance", "auditor", "privacy", "admin"):
        issue.staff(role, name=f"{role}-2")
    for _ in range(3):
        issue.partner("SUPER")
    for url, expected in (("/v1/staff", 5), ("/v1/partners/SUPER/credentials", 3)):
        ids, cursor = [], None
        while True:
            query = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            response = client.get(url, query_string=query, headers=bearer(admin_token))
            assert response.status_code == 200, response.get_json()
            body = response.get_json()
            ids += [item["id"] for item in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert len(ids) == len(set(ids)) == expected
    forged = base64.urlsafe_b64encode(b'["yesterday", "abc"]').decode()
    problem(client.get("/v1/staff", query_string={"cursor": forged}, headers=bearer(admin_token)),
            422)


def test_a_gap_between_contract_versions_is_a_409(client: FlaskClient, admin_token: str) -> None:
    """A version starting after the previous one ends is a 409 contract-gap problem."""
    create_partner(client, admin_token)
    url = "/v1/partners/BAKERY/contracts"
    client.post(url, json=CONTRACT_JSON, headers=bearer(admin_token))
    late = {**CONTRACT_JSON, "valid_from": "2027-02-01T00:00:00+00:00", "valid_to": None}
    assert problem(client.post(url, json=late, headers=bearer(admin_token)), 409)["type"] == (
        "/problems/contract-gap")


@pytest.mark.parametrize("path", ["/v1/partners/A%00B", "/v1/partners/SUPER/credentials/x%00y",
                                  "/v1/partners/SUPER/keys/%E2%82%AC/retire"])
def test_an_impossible_path_id_is_a_404(
    client: FlaskClient, admin_token: str, issue: Issuer, path: str
) -> None:
    """Ids no record can have (a NUL byte, a euro sign) are 404s, not database errors."""
    issue.partner("SUPER")
    method = client.post if path.endswith("/retire") else client.get
    problem(method(path, headers=bearer(admin_token)), 404)


@pytest.mark.parametrize("changes", [{"code": "NEW\n"}, {"legal_name": "Bad\x00Name"}])
def test_control_characters_are_a_422(
    client: FlaskClient, admin_token: str, changes: dict[str, str]
) -> None:
    """A code with a trailing newline or a name with a NUL byte is refused by the schema."""
    field = next(iter(changes))
    assert field in problem(create_partner(client, admin_token, **changes), 422)["errors"]["json"]
