"""The one boundary where errors become HTTP: RFC 9457 ``application/problem+json``.

Every error class the domain raises maps to a status here, in one table; each problem carries a
stable ``type`` (``/problems/<code>``), a ``title``, the human ``detail``, the request id and the
error's machine fields. Anything unexpected becomes a 500 problem without internals (and is logged
with its traceback) — a bug to fix, never a stack trace for the caller.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, json, request
from marshmallow import INCLUDE, Schema, fields
from werkzeug.exceptions import HTTPException

from ledger.errors import (
    BusinessRefusal,
    CaptureExceedsHold,
    HoldNotOpen,
    IdempotencyConflict,
    InsufficientPoints,
    InvalidEntry,
    InvalidRequest,
    LedgerError,
    NotYetIntegrated,
    UnknownAccount,
    UnknownEntry,
    VerificationError,
)
from partners import errors as pe

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("coalition.api")


class ProblemSchema(Schema):
    """The one error body (RFC 9457), as the OpenAPI document shows it for every error status.

    Problems may carry more members (the error's machine fields, ``errors`` for schema
    failures), so the schema admits them.
    """

    class Meta:
        ordered = True
        unknown = INCLUDE

    type = fields.String(required=True, metadata={"example": "/problems/insufficient-points"})
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    request_id = fields.String(required=True, metadata={"description": "also in X-Request-Id"})


class ApiProblem(Exception):
    """An HTTP-level refusal raised by the API itself (authentication, authorization, headers)."""

    def __init__(self, status: int, code: str, detail: str, **fields: Any) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, fields


#: Domain error → HTTP status. The first matching class in method-resolution order wins.
STATUS_BY_ERROR: dict[type[Exception], int] = {
    pe.AuthenticationFailed: 401,
    UnknownAccount: 404,
    UnknownEntry: 404,
    NotYetIntegrated: 404,
    pe.UnknownPartner: 404,
    pe.UnknownMember: 404,
    pe.UnknownCredential: 404,
    pe.UnknownPartnerKey: 404,
    pe.VersionMismatch: 412,
    IdempotencyConflict: 409,
    pe.PartnerExists: 409,
    pe.PartnerKeyExists: 409,
    HoldNotOpen: 409,
    InsufficientPoints: 422,
    CaptureExceedsHold: 422,
    BusinessRefusal: 422,
    InvalidRequest: 422,
    InvalidEntry: 422,
    VerificationError: 422,
    LedgerError: 400,
    pe.ContractPeriodError: 409,
    pe.CredentialRevoked: 409,
}


def status_for(error: Exception) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def request_id() -> str:
    """This request's id: the caller's ``X-Request-Id`` if it is sane, else a new UUID.

    Set on first use, so a problem raised before the app's ``before_request`` hooks run (by a
    blueprint's URL value preprocessor, say) still carries the id its response header shows.
    """
    if "request_id" not in g:
        incoming = request.headers.get("X-Request-Id", "")
        sane = 0 < len(incoming) <= 100 and incoming.isprintable()
        g.request_id = incoming if sane else str(uuid.uuid4())
    return str(g.request_id)


#: The members every problem has. An error's machine field of the same name (a hold's or a
#: partner's ``status``) is renamed after the problem's subject (``hold_status``), so it can
#: neither overwrite them nor collide with them.
PROBLEM_MEMBERS = frozenset({"type", "title", "status", "detail", "instance", "request_id"})


def problem(status: int, code: str, title: str, detail: str,
            fields: Mapping[str, Any] | None = None) -> Response:
    subject = code.split("-")[0]
    extra = {
        (f"{subject}_{name}" if name in PROBLEM_MEMBERS else name): value
        for name, value in (fields or {}).items()
    }
    body = {
        "type": f"/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "request_id": request_id(),
        **extra,
    }
    return Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiProblem)
    def _api_problem(error: ApiProblem) -> Response:
        return problem(
            error.status, error.code, error.code.replace("-", " "), error.detail, error.extra
        )

    @app.errorhandler(LedgerError)
    def _ledger_error(error: LedgerError) -> Response:
        status = status_for(error)
        return problem(
            status,
            error.code,
            error.code.replace("-", " "),
            error.message,
            _jsonable(error.fields()),
        )

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        fields: dict[str, Any] = {}
        # flask-smorest/webargs put validation messages in error.data["messages"].
        messages = getattr(error, "data", {}).get("messages") if hasattr(error, "data") else None
        if messages:
            fields["errors"] = _jsonable(messages)
        code = (
            "invalid-request"
            if status == 422
            else (error.name or "error").lower().replace(" ", "-")
        )
        detail = "the request does not match the schema" if messages else (error.description or "")
        return problem(status, code, error.name or "Error", detail, fields)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        return problem(
            500,
            "internal-error",
            "Internal Server Error",
            "an unexpected error occurred; it has been logged with this request id",
        )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
