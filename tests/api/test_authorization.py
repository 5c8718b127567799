"""The authorization matrix (PRODUCT.md §9), walked over every route the application serves.

Every view under ``/v1`` declares its operation with :func:`api.auth.requires`; this file finds
them through ``app.url_map`` (so a new route is covered the day it is added) and sends each one a
request from every role and from nobody: no token → 401; a role outside ``PERMISSIONS[op]`` → 403;
a role inside it → anything but 401/403 (the dummy ids and empty bodies may well be a 404 or 422,
which proves the request got past authorization).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.auth import PERMISSIONS
from partners.directory import Role
from tests.api.conftest import PROBLEM_JSON, Issuer, bearer

#: Routes that answer without a credential, on purpose (probes, metrics, the document itself).
PUBLIC_PATHS = {
    "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/<path:filename>",
}

#: What to put in each path variable of a rule: well-formed, but naming nothing that exists.
DUMMY_VALUES = {
    "uuid": "00000000-0000-4000-8000-000000000000",
    "int": "1",
    "string": "NOPE",
    "default": "NOPE",
    "path": "x",
}

ROLES = tuple(Role)
WRITE_METHODS = {"POST", "PATCH", "PUT", "DELETE"}


@dataclass(frozen=True)
class Route:
    """One method of one URL rule, and the operation its view declares (None: none declared)."""

    method: str
    rule: str
    """The Flask rule, e.g. ``/v1/holds/<uuid:hold_id>/capture``."""
    operation: str | None

    @property
    def openapi_path(self) -> str:
        """The rule as the OpenAPI document writes it: ``/v1/holds/{hold_id}/capture``."""
        return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", self.rule)

    def url(self) -> str:
        """The rule with every variable filled by a dummy value of its converter's kind."""

        def fill(match: re.Match[str]) -> str:
            converter = match.group(1) or "default"
            return DUMMY_VALUES[converter]

        return re.sub(r"<(?:([^:<>]+):)?[^<>]+>", fill, self.rule)

    def __str__(self) -> str:
        return f"{self.method} {self.rule}"


def routes(app: Flask) -> Iterator[Route]:
    """Every (method, rule) the application serves, with the operation its view requires."""
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        view_class = getattr(view, "view_class", None)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            handler = getattr(view_class, method.lower(), None) if view_class else view
            yield Route(method, rule.rule, getattr(handler, "required_operation", None))


def operations_by_openapi_path(app: Flask) -> dict[tuple[str, str], str | None]:
    """``(METHOD, /openapi/{path})`` → the operation its view requires."""
    return {(r.method, r.openapi_path): r.operation for r in routes(app)}


def _app_routes() -> list[Route]:
    """The routes of an application built for collection only (no database is touched)."""
    from pathlib import Path

    from api.app import create_app
    from api.config import Settings

    app = create_app(Settings(database_url="sqlite://", log_key_file=Path("/nonexistent")))
    return [r for r in routes(app) if r.rule not in ("/static/<path:filename>",)]


ALL_ROUTES = _app_routes()
V1_ROUTES = [r for r in ALL_ROUTES if r.rule.startswith("/v1/")]


@pytest.fixture
def tokens(issue: Issuer) -> dict[Role, str]:
    """One token per role; the partner is SUPER, onboarded with a contract."""
    found = {role: issue.staff(role) for role in ROLES if role is not Role.PARTNER}
    found[Role.PARTNER] = issue.partner("SUPER")
    return found


def _send(client: FlaskClient, route: Route, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    headers = {**headers, "Idempotency-Key": "authz-matrix", "If-Match": '"1"'}
    if route.method == "GET":
        return client.get(route.url(), headers=headers)
    return client.open(route.url(), method=route.method, json={}, headers=headers)


# -- the table -------------------------------------------------------------------------------------


def test_every_v1_route_declares_an_operation_in_the_matrix() -> None:
    """No /v1 route is public by accident, and each names an operation PERMISSIONS knows."""
    assert V1_ROUTES, "no /v1 routes found: is the url_map walked correctly?"
    undeclared = [str(r) for r in V1_ROUTES if r.operation is None]
    assert undeclared == []
    unknown = [str(r) for r in V1_ROUTES if r.operation not in PERMISSIONS]
    assert unknown == []


def test_only_the_probes_metrics_and_document_are_public() -> None:
    """Every route outside /v1 is one of the known public ones."""
    others = {r.rule for r in ALL_ROUTES if not r.rule.startswith("/v1/")}
    assert others <= PUBLIC_PATHS


def test_every_permission_is_used_by_some_route() -> None:
    """PERMISSIONS has no stale operation that no route performs."""
    used = {r.operation for r in V1_ROUTES}
    assert set(PERMISSIONS) - used == set()


@pytest.mark.parametrize("route", V1_ROUTES, ids=str)
def test_each_route_enforces_the_matrix_for_every_role(
    client: FlaskClient, tokens: dict[Role, str], route: Route
) -> None:
    """Anonymous → 401; a role outside PERMISSIONS[op] → 403; a role inside it gets through."""
    assert route.operation is not None
    anonymous = _send(client, route, {})
    assert anonymous.status_code == 401, anonymous.get_data(as_text=True)
    assert anonymous.mimetype == PROBLEM_JSON
    allowed = PERMISSIONS[route.operation]
    for role in ROLES:
        response = _send(client, route, bearer(tokens[role]))
        body = response.get_data(as_text=True)
        if role in allowed:
            assert response.status_code not in (401, 403), f"{role.value}: {body}"
        else:
            assert response.status_code == 403, f"{role.value}: {body}"
            assert response.mimetype == PROBLEM_JSON
            assert response.get_json()["type"] == "/problems/forbidden"


@pytest.mark.parametrize("token", ["", "ck_nope", "ck_abc.def", "Basic dXNlcjpwYXNz"])
def test_a_malformed_or_unknown_token_is_a_401(client: FlaskClient, token: str) -> None:
    """Whatever the Authorization header holds, a token that is not a live credential is a 401."""
    headers = {"Authorization": token if token.startswith("Basic") else f"Bearer {token}"}
    response = client.get("/v1/checkpoints/latest", headers=headers)
    assert response.status_code == 401
    assert response.mimetype == PROBLEM_JSON


# -- the matrix says what PRODUCT.md §9 says -------------------------------------------------------


def _operations_of(role: Role) -> set[str]:
    return {op for op, roles in PERMISSIONS.items() if role in roles}


def _points_moving() -> set[str]:
    """Operations that move points: ``points.*`` and, where it exists, the batch upload."""
    return {op for op in PERMISSIONS if op.startswith("points.") or op == "batches.write"}


def _write_operations() -> set[str]:
    return {r.operation for r in V1_ROUTES if r.method in WRITE_METHODS and r.operation}


def test_finance_never_moves_points() -> None:
    """Finance may read positions, never post earn/burn or any other points movement."""
    assert not _operations_of(Role.FINANCE) & _points_moving()
    assert "contracts.write" not in _operations_of(Role.FINANCE)


def test_the_auditor_changes_nothing() -> None:
    """Every operation behind a POST/PATCH excludes the auditor (PRODUCT.md §9: change anything)."""
    writes = _write_operations()
    assert writes, "no write operations found"
    assert {op for op in writes if Role.AUDITOR in PERMISSIONS[op]} == set()


def test_the_auditor_cannot_read_decrypted_personal_data() -> None:
    """Export (the decrypted personal data) is the privacy officer's alone."""
    assert PERMISSIONS["members.export"] == {Role.PRIVACY}
    assert PERMISSIONS["members.erasure"] == {Role.PRIVACY}


def test_partners_never_touch_staff_credentials_or_other_partners() -> None:
    """A partner manages only its own keys: no staff, credentials, contracts or partner records."""
    forbidden = {"staff.read", "staff.write", "credentials.read", "credentials.write",
                 "contracts.write", "partners.read", "partners.write"}
    assert _operations_of(Role.PARTNER) & forbidden == set()


def test_only_partners_move_points() -> None:
    """Earn, engage, burn, hold, reverse, transfer (and batches) are partners' alone, no staff's."""
    for op in _points_moving():
        assert PERMISSIONS[op] == {Role.PARTNER}, op


def test_admin_runs_the_directory_but_not_the_journal() -> None:
    """Admin manages partners, contracts, credentials and staff; it cannot move points."""
    admin = _operations_of(Role.ADMIN)
    assert {"partners.write", "contracts.write", "credentials.write", "staff.write"} <= admin
    assert not admin & _points_moving()


def test_the_privacy_officer_makes_no_ledger_changes() -> None:
    """The privacy officer handles access and erasure requests, never a points movement."""
    privacy = _operations_of(Role.PRIVACY)
    assert {"members.export", "members.erasure"} <= privacy
    assert not privacy & _points_moving()
    assert not {op for op in privacy if op.startswith(("partners.", "staff."))}
