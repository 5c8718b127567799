"""Administration: partners, their contracts, credentials and signing keys, and staff accounts.

PRODUCT.md §6 and §9: the operator's admin manages partners, contracts, credentials and staff;
finance and auditors read them; a partner manages only its own signing keys. Each view parses,
calls :mod:`partners.directory` inside one transaction, and renders.

- A partner's ``version`` is its ``ETag``; ``PATCH`` needs ``If-Match`` (428 without it, 412 when
  stale), so two administrators cannot overwrite each other's change unseen.
- Contract terms travel as decimal strings; a contract version is never edited, only followed.
- A credential's token appears in exactly one response, the one that issued it.
- A partner naming another partner's code gets 404, as if the code did not exist, so it cannot
  learn which partners exist.
- Lists page with an opaque cursor (the last item's sort key); ``next_cursor`` is null at the end.

Every change here is a candidate for the audit log (``# audit:`` comments mark the places).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app, request, url_for
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy.engine import Connection

from api.auth import audit, current_credential, requires
from api.errors import ApiProblem
from api.schemas import (
    ContractCreate,
    ContractPage,
    ContractSchema,
    CredentialCreate,
    CredentialPage,
    CredentialSchema,
    CursorQuery,
    IssuedCredentialSchema,
    PartnerCreate,
    PartnerKeyCreate,
    PartnerKeyPage,
    PartnerKeySchema,
    PartnerListQuery,
    PartnerPage,
    PartnerPatch,
    PartnerSchema,
    RetireKeyRequest,
    RotateRequest,
    StaffCreate,
    encode_cursor,
)
from partners import directory
from partners import tables as t
from partners.directory import (
    Contract,
    ContractTerms,
    Credential,
    IssuedCredential,
    Partner,
    PartnerKey,
    PartnerStatus,
    Role,
)
from partners.errors import UnknownCredential, UnknownPartner, UnknownPartnerKey

blp = Blueprint(
    "admin",
    __name__,
    url_prefix="/v1",
    description="Partners, contracts, credentials, signing keys and staff (administration)",
)

ETAG_HEADER = {
    "ETag": {"description": "the partner's version, quoted", "schema": {"type": "string"}},
}
CREATED_HEADERS = {
    "Location": {"description": "where the new resource lives", "schema": {"type": "string"}},
}
IF_MATCH = {
    "in": "header",
    "name": "If-Match",
    "required": True,
    "description": 'the ETag of the partner as last read, e.g. "3"',
    "schema": {"type": "string"},
}


#: What a partner code, credential id or key id can look like; anything else names nothing.
_PATH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_UNKNOWN_BY_PATH_ID: dict[str, Callable[[str], Exception]] = {
    "code": UnknownPartner,
    "credential_id": UnknownCredential,
    "key_id": UnknownPartnerKey,
}


@blp.url_value_preprocessor
def _refuse_impossible_ids(endpoint: str | None, values: dict[str, Any] | None) -> None:
    """A path id no record can have is a 404 before it reaches the database.

    Without this a NUL byte in a path would make PostgreSQL fail (a 500) instead of missing.
    """
    for name, unknown in _UNKNOWN_BY_PATH_ID.items():
        value = (values or {}).get(name)
        if value is not None and not _PATH_ID.fullmatch(value):
            raise unknown(value)


def _db() -> Any:
    return current_app.extensions["coalition"].db


def _now() -> datetime:
    return datetime.now(UTC)


def _etag(partner: Partner) -> dict[str, str]:
    return {"ETag": f'"{partner.version}"'}


def _recorded_by() -> str:
    """Who made a change, as contracts record it: the staff account, else the credential id."""
    credential = current_credential()
    return credential.staff or credential.id


# -- pagination ------------------------------------------------------------------------------------


def _cursor_key(query: dict, *types: type) -> list | None:
    """The decoded cursor, if its sort key has the shape this listing uses; else 422."""
    key = query.get("cursor")
    if key is None:
        return None
    if len(key) != len(types) or any(
        type(part) is not kind for part, kind in zip(key, types, strict=True)
    ):
        raise ApiProblem(422, "invalid-cursor", "the cursor does not belong to this listing",
                         field="cursor")
    return key


def _page(found: Sequence[Any], limit: int, sort_key: Callable[[Any], list],
          render: Callable[[Any], dict]) -> dict:
    """One page from up to ``limit + 1`` items found after the cursor: the extra one means more."""
    shown = list(found[:limit])
    more = len(found) > limit
    return {
        "items": [render(item) for item in shown],
        "next_cursor": encode_cursor(sort_key(shown[-1])) if more and shown else None,
    }


def _after(items: Sequence[Any], sort_key: Callable[[Any], list], key: list | None,
           limit: int) -> list[Any]:
    """In-memory paging of a short, sorted list: up to ``limit + 1`` items past ``key``."""
    return [item for item in items if key is None or sort_key(item) > key][: limit + 1]


# -- listings the directory has no query for yet (candidates for partners.directory) -----------


def _partners_after(conn: Connection, code: str | None, status: str | None,
                    limit: int) -> list[Partner]:
    c = t.partners.c
    query = sa.select(t.partners).order_by(c.code).limit(limit + 1)
    if code is not None:
        query = query.where(c.code > code)
    if status is not None:
        query = query.where(c.status == status)
    return [_partner_row(row) for row in conn.execute(query)]


def _partner_row(row: Any) -> Partner:
    return Partner(
        code=row.code, legal_name=row.legal_name, iban=row.iban, bic=row.bic,
        status=PartnerStatus(row.status), redemption_blocked=bool(row.redemption_blocked),
        created_at=row.created_at, version=row.version,
    )


def _credentials_after(conn: Connection, owner: sa.ColumnElement[bool], key: list | None,
                       limit: int) -> list[Credential]:
    """Credentials matching ``owner``, oldest first, after the ``[created_at, id]`` key."""
    c = t.credentials.c
    query = (
        sa.select(c.id, c.role, c.partner, c.staff, c.label, c.created_at, c.revoked_at,
                  c.last_used_at)
        .where(owner)
        .order_by(c.created_at, c.id)
        .limit(limit + 1)
    )
    if key is not None:
        created_at, credential_id = _cursor_time(key[0]), key[1]
        query = query.where(sa.or_(
            c.created_at > created_at,
            sa.and_(c.created_at == created_at, c.id > credential_id),
        ))
    return [
        Credential(id=row.id, role=Role(row.role), partner=row.partner, staff=row.staff,
                   label=row.label, created_at=row.created_at, revoked_at=row.revoked_at,
                   last_used_at=row.last_used_at)
        for row in conn.execute(query)
    ]


def _cursor_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.utcoffset() is None:
        raise ApiProblem(422, "invalid-cursor", "the cursor does not belong to this listing",
                         field="cursor")
    return moment


def _credential_sort_key(credential: Credential) -> list:
    return [credential.created_at.isoformat(), credential.id]


def _contract_sort_key(contract: Contract) -> list:
    return [contract.version]


def _key_sort_key(key: PartnerKey) -> list:
    return [key.valid_from.isoformat(), key.key_id]


# -- renderings ------------------------------------------------------------------------------------


def _partner_json(partner: Partner) -> dict:
    return {
        "code": partner.code, "legal_name": partner.legal_name, "iban": partner.iban,
        "bic": partner.bic, "status": partner.status.value,
        "redemption_blocked": partner.redemption_blocked, "created_at": partner.created_at,
        "version": partner.version,
    }


def _decimal(value: Any) -> str:
    return format(value, "f")


def _contract_json(contract: Contract) -> dict:
    terms = contract.terms
    return {
        "partner": contract.partner, "version": contract.version,
        "price_version": contract.price_version,
        "valid_from": contract.valid_from, "valid_to": contract.valid_to,
        "issue_price": _decimal(terms.issue_price),
        "reimbursement_price": _decimal(terms.reimbursement_price),
        "breakage_rebate": _decimal(terms.breakage_rebate),
        "monthly_fee_cents": terms.monthly_fee_cents, "pending_days": terms.pending_days,
        "earn_rate": _decimal(terms.earn_rate),
        "category_multipliers": {k: _decimal(v) for k, v in terms.category_multipliers.items()},
        "rounding_mode": terms.rounding_mode,
        "carry_forward_threshold_cents": terms.carry_forward_threshold_cents,
        "signing_required": terms.signing_required,
        "created_at": contract.created_at, "created_by": contract.created_by,
    }


def _credential_json(credential: Credential) -> dict:
    return {
        "id": credential.id, "role": credential.role.value, "partner": credential.partner,
        "staff": credential.staff, "label": credential.label,
        "created_at": credential.created_at, "revoked_at": credential.revoked_at,
        "last_used_at": credential.last_used_at,
    }


def _issued_json(conn: Connection, issued: IssuedCredential) -> dict:
    return {**_credential_json(directory.credential(conn, issued.credential_id)),
            "token": issued.token}


def _key_json(key: PartnerKey) -> dict:
    return {
        "key_id": key.key_id, "partner": key.partner,
        "public_key": base64.b64encode(key.public_key).decode("ascii"),
        "valid_from": key.valid_from, "valid_to": key.valid_to, "created_at": key.created_at,
    }


# -- partners --------------------------------------------------------------------------------------


@blp.route("/partners")
class Partners(MethodView):
    @requires("partners.read")
    @blp.arguments(PartnerListQuery, location="query")
    @blp.response(200, PartnerPage)
    def get(self, query: dict) -> dict:
        """Partners in order of code, optionally only those with one status."""
        key = _cursor_key(query, str)
        with _db().transaction() as conn:
            found = _partners_after(conn, key[0] if key else None, query["status"],
                                    query["limit"])
        return _page(found, query["limit"], lambda p: [p.code], _partner_json)

    @requires("partners.write")
    @blp.arguments(PartnerCreate)
    @blp.response(201, PartnerSchema, headers={**ETAG_HEADER, **CREATED_HEADERS})
    def post(self, data: dict) -> tuple:
        """Onboard an active partner: bank details are checked and its ledger accounts opened."""
        with _db().transaction() as conn:
            audit(conn, "partner.onboard", data["code"])
            partner = directory.onboard_partner(conn, data["code"], data["legal_name"],
                                                data["iban"], data["bic"], _now())
        location = url_for("admin.PartnerResource", code=partner.code)
        return _partner_json(partner), 201, {**_etag(partner), "Location": location}


def _expected_version(conn: Connection, code: str) -> int | None:
    """The version ``If-Match`` names (``*``: any); 428 without the header, 412 if none can match.

    If-Match compares strongly (RFC 9110 §13.1.1), so weak tags never match.
    """
    if "If-Match" not in request.headers:
        raise ApiProblem(428, "precondition-required",
                         'send If-Match with the ETag of your last read, e.g. If-Match: "3"')
    tags = request.if_match
    if tags.star_tag:
        return None
    # isascii: str.isdigit() also accepts digits int() refuses, such as a superscript "¹". An
    # empty tag (If-Match: "") comes back from the parser as None: it names no version.
    versions = {int(tag) for tag in tags.as_set()
                if tag and tag.isascii() and tag.isdigit() and len(tag) < 12}
    current = directory.partner(conn, code).version
    if not versions:
        raise ApiProblem(412, "version-mismatch", f"partner {code} is at version {current}",
                         resource=f"partner {code}", current=current)
    return current if current in versions else min(versions)


@blp.route("/partners/<string:code>")
class PartnerResource(MethodView):
    @requires("partners.read")
    @blp.response(200, PartnerSchema, headers=ETAG_HEADER)
    def get(self, code: str) -> tuple:
        """One partner; its ETag is the version to send back in If-Match."""
        with _db().transaction() as conn:
            partner = directory.partner(conn, code)
        return _partner_json(partner), 200, _etag(partner)

    @requires("partners.write")
    @blp.arguments(PartnerPatch)
    @blp.response(200, PartnerSchema, headers=ETAG_HEADER)
    @blp.doc(parameters=[IF_MATCH])
    def patch(self, data: dict, code: str) -> tuple:
        """Suspend, reactivate or exit a partner, and block or allow redemptions there."""
        with _db().transaction() as conn:
            expected = _expected_version(conn, code)
            before = directory.partner(conn, code)
            status = PartnerStatus(data.get("status", before.status))
            # Reactivating lifts a block unless told otherwise: an active partner cannot have one.
            keep = before.redemption_blocked and status is not PartnerStatus.ACTIVE
            blocked = data.get("redemption_blocked", keep)
            change = {"status": status.value, "redemption_blocked": blocked}
            audit(conn, "partner.status", code, change)
            partner = directory.set_status(conn, code, status, _now(), redemption_blocked=blocked,
                                           expected_version=expected)
        return _partner_json(partner), 200, _etag(partner)


# -- contracts -------------------------------------------------------------------------------------


@blp.route("/partners/<string:code>/contracts")
class Contracts(MethodView):
    @requires("partners.read")
    @blp.arguments(CursorQuery, location="query")
    @blp.response(200, ContractPage)
    def get(self, query: dict, code: str) -> dict:
        """The partner's contract versions, oldest first."""
        key = _cursor_key(query, int)
        with _db().transaction() as conn:
            directory.partner(conn, code)
            found = directory.contracts(conn, code)
        return _page(_after(found, _contract_sort_key, key, query["limit"]), query["limit"],
                     _contract_sort_key, _contract_json)

    @requires("contracts.write")
    @blp.arguments(ContractCreate)
    @blp.response(201, ContractSchema, headers=CREATED_HEADERS)
    def post(self, data: dict, code: str) -> tuple:
        """Add the next contract version; it must start exactly where the previous one ends."""
        valid_from, valid_to = data.pop("valid_from"), data.pop("valid_to")
        terms = ContractTerms(**data)
        with _db().transaction() as conn:
            audit(conn, "contract.add", code)
            contract = directory.add_contract(conn, code, terms, valid_from, valid_to, _now(),
                                              _recorded_by())
        location = url_for("admin.ContractResource", code=code, version=contract.version)
        return _contract_json(contract), 201, {"Location": location}


@blp.route("/partners/<string:code>/contracts/<int:version>")
class ContractResource(MethodView):
    @requires("partners.read")
    @blp.response(200, ContractSchema)
    def get(self, code: str, version: int) -> dict:
        """One contract version."""
        with _db().transaction() as conn:
            directory.partner(conn, code)
            found = [c for c in directory.contracts(conn, code) if c.version == version]
        if not found:
            raise ApiProblem(404, "unknown-contract", f"partner {code} has no contract v{version}",
                             partner=code, version=version)
        return _contract_json(found[0])


# -- partner credentials ---------------------------------------------------------------------------


def _partner_credential(conn: Connection, code: str, credential_id: str) -> Credential:
    """The credential, if it belongs to partner ``code``; else 404 as if it did not exist."""
    directory.partner(conn, code)
    credential = directory.credential(conn, credential_id)
    if credential.partner != code:
        raise UnknownCredential(credential_id)
    return credential


@blp.route("/partners/<string:code>/credentials")
class PartnerCredentials(MethodView):
    @requires("credentials.read")
    @blp.arguments(CursorQuery, location="query")
    @blp.response(200, CredentialPage)
    def get(self, query: dict, code: str) -> dict:
        """The partner's API keys, revoked ones included, oldest first; never a secret."""
        key = _cursor_key(query, str, str)
        with _db().transaction() as conn:
            directory.partner(conn, code)
            found = _credentials_after(conn, t.credentials.c.partner == code, key, query["limit"])
        return _page(found, query["limit"], _credential_sort_key, _credential_json)

    @requires("credentials.write")
    @blp.arguments(CredentialCreate)
    @blp.response(201, IssuedCredentialSchema, headers=CREATED_HEADERS)
    def post(self, data: dict, code: str) -> tuple:
        """Issue an API key for the partner; the token is in this response and nowhere else."""
        with _db().transaction() as conn:
            audit(conn, "credential.issue", code)
            issued = directory.issue_credential(conn, partner=code, role=Role.PARTNER,
                                                label=data["label"], now=_now())
            body = _issued_json(conn, issued)
        location = url_for("admin.PartnerCredential", code=code, credential_id=issued.credential_id)
        return body, 201, {"Location": location}


@blp.route("/partners/<string:code>/credentials/<string:credential_id>")
class PartnerCredential(MethodView):
    @requires("credentials.read")
    @blp.response(200, CredentialSchema)
    def get(self, code: str, credential_id: str) -> dict:
        """One of the partner's API keys (never its secret)."""
        with _db().transaction() as conn:
            return _credential_json(_partner_credential(conn, code, credential_id))


@blp.route("/partners/<string:code>/credentials/<string:credential_id>/rotate")
class RotatePartnerCredential(MethodView):
    @requires("credentials.write")
    @blp.arguments(RotateRequest, required=False)
    @blp.response(201, IssuedCredentialSchema, headers=CREATED_HEADERS)
    def post(self, data: dict, code: str, credential_id: str) -> tuple:
        """Issue a successor key; the old one stops working after ``grace_seconds``."""
        with _db().transaction() as conn:
            _partner_credential(conn, code, credential_id)
            audit(conn, "credential.rotate", credential_id)
            issued = directory.rotate_credential(
                conn, credential_id, _now(), grace=timedelta(seconds=data["grace_seconds"]))
            body = _issued_json(conn, issued)
        location = url_for("admin.PartnerCredential", code=code, credential_id=issued.credential_id)
        return body, 201, {"Location": location}


@blp.route("/partners/<string:code>/credentials/<string:credential_id>/revoke")
class RevokePartnerCredential(MethodView):
    @requires("credentials.write")
    @blp.response(200, CredentialSchema)
    def post(self, code: str, credential_id: str) -> dict:
        """Stop the key from authenticating now (also ends a rotation's grace period)."""
        with _db().transaction() as conn:
            _partner_credential(conn, code, credential_id)
            audit(conn, "credential.revoke", credential_id)
            return _credential_json(directory.revoke_credential(conn, credential_id, _now()))


# -- partner signing keys --------------------------------------------------------------------------


def _keys_partner(conn: Connection, code: str) -> None:
    """Staff may name any partner; a partner only itself (another code is 404, not 403)."""
    own = current_credential().partner
    if own is not None and own != code:
        raise UnknownPartner(code)
    directory.partner(conn, code)


def _partner_key(conn: Connection, code: str, key_id: str) -> PartnerKey:
    for key in directory.partner_keys(conn, code):
        if key.key_id == key_id:
            return key
    raise UnknownPartnerKey(key_id)


@blp.route("/partners/<string:code>/keys")
class PartnerKeys(MethodView):
    @requires("keys.read")
    @blp.arguments(CursorQuery, location="query")
    @blp.response(200, PartnerKeyPage)
    def get(self, query: dict, code: str) -> dict:
        """The partner's Ed25519 public keys, retired ones included, in order of validity."""
        key = _cursor_key(query, str, str)
        with _db().transaction() as conn:
            _keys_partner(conn, code)
            found = directory.partner_keys(conn, code)
        return _page(_after(found, _key_sort_key, key, query["limit"]), query["limit"],
                     _key_sort_key, _key_json)

    @requires("keys.write")
    @blp.arguments(PartnerKeyCreate)
    @blp.response(201, PartnerKeySchema, headers=CREATED_HEADERS)
    def post(self, data: dict, code: str) -> tuple:
        """Register an Ed25519 public key (base64 of its 32 bytes), valid from a time on."""
        now = _now()
        with _db().transaction() as conn:
            _keys_partner(conn, code)
            audit(conn, "partner_key.add", code)
            key_id = directory.add_partner_key(conn, code, data["public_key"],
                                               data["valid_from"] or now, now)
            key = _partner_key(conn, code, key_id)
        location = url_for("admin.PartnerKeys", code=code)
        return _key_json(key), 201, {"Location": location}


@blp.route("/partners/<string:code>/keys/<string:key_id>/retire")
class RetirePartnerKey(MethodView):
    @requires("keys.write")
    @blp.arguments(RetireKeyRequest, required=False)
    @blp.response(200, PartnerKeySchema)
    def post(self, data: dict, code: str, key_id: str) -> dict:
        """Retire a key: signatures dated from ``valid_to`` (default now) on are refused."""
        with _db().transaction() as conn:
            _keys_partner(conn, code)
            _partner_key(conn, code, key_id)
            audit(conn, "partner_key.retire", key_id)
            key = directory.retire_partner_key(conn, key_id, data["valid_to"] or _now())
        return _key_json(key)


# -- staff -----------------------------------------------------------------------------------------


def _staff_credential(conn: Connection, credential_id: str) -> Credential:
    credential = directory.credential(conn, credential_id)
    if credential.staff is None:
        raise UnknownCredential(credential_id)
    return credential


@blp.route("/staff")
class Staff(MethodView):
    @requires("staff.read")
    @blp.arguments(CursorQuery, location="query")
    @blp.response(200, CredentialPage)
    def get(self, query: dict) -> dict:
        """Staff credentials (finance, auditor, admin, privacy), oldest first; never a secret."""
        key = _cursor_key(query, str, str)
        with _db().transaction() as conn:
            found = _credentials_after(conn, t.credentials.c.staff.is_not(None), key,
                                       query["limit"])
        return _page(found, query["limit"], _credential_sort_key, _credential_json)

    @requires("staff.write")
    @blp.arguments(StaffCreate)
    @blp.response(201, IssuedCredentialSchema, headers=CREATED_HEADERS)
    def post(self, data: dict) -> tuple:
        """Issue a credential for a staff account in a role; the token is shown only here."""
        with _db().transaction() as conn:
            audit(conn, "staff.issue", data["name"], {"role": str(data["role"])})
            issued = directory.issue_credential(conn, staff=data["name"], role=data["role"],
                                                label=data["label"], now=_now())
            body = _issued_json(conn, issued)
        location = url_for("admin.StaffCredential", credential_id=issued.credential_id)
        return body, 201, {"Location": location}


@blp.route("/staff/<string:credential_id>")
class StaffCredential(MethodView):
    @requires("staff.read")
    @blp.response(200, CredentialSchema)
    def get(self, credential_id: str) -> dict:
        """One staff credential (never its secret)."""
        with _db().transaction() as conn:
            return _credential_json(_staff_credential(conn, credential_id))


@blp.route("/staff/<string:credential_id>/rotate")
class RotateStaffCredential(MethodView):
    @requires("staff.write")
    @blp.arguments(RotateRequest, required=False)
    @blp.response(201, IssuedCredentialSchema, headers=CREATED_HEADERS)
    def post(self, data: dict, credential_id: str) -> tuple:
        """Issue a successor staff credential; the old one stops after ``grace_seconds``."""
        with _db().transaction() as conn:
            _staff_credential(conn, credential_id)
            audit(conn, "staff.rotate", credential_id)
            issued = directory.rotate_credential(
                conn, credential_id, _now(), grace=timedelta(seconds=data["grace_seconds"]))
            body = _issued_json(conn, issued)
        location = url_for("admin.StaffCredential", credential_id=issued.credential_id)
        return body, 201, {"Location": location}


@blp.route("/staff/<string:credential_id>/revoke")
class RevokeStaffCredential(MethodView):
    @requires("staff.write")
    @blp.response(200, CredentialSchema)
    def post(self, credential_id: str) -> dict:
        """Stop a staff credential from authenticating now."""
        with _db().transaction() as conn:
            _staff_credential(conn, credential_id)
            audit(conn, "staff.revoke", credential_id)
            return _credential_json(directory.revoke_credential(conn, credential_id, _now()))
