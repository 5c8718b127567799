"""schemathesis over the whole OpenAPI document, in process (WSGI), on this test's backend.

Each operation is fuzzed as a caller that may perform it — an admin, a partner (SUPER, with a
contract) and, for the access and erasure requests only it may make, the privacy officer — so the
generated requests get past authorization and reach the schemas and the services. (A role outside
an operation's set gets the same 403 from the one wrapper every time; ``test_authorization.py``
proves that for every route and role.) schemathesis runs its three phases per operation: the
document's examples, the coverage phase (every boundary and every invalid variant of each
parameter) and a bounded number of random positive and negative examples.

Every response must be no 5xx, carry a status and content type the document lists for the
operation, and match the documented schema — errors included: they are documented as
``application/problem+json`` ``Problem`` bodies (``api.errors.ProblemSchema``).

The document is read once at import, from an application that touches no database; each test
then calls the application built over its own fresh database.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from api.auth import PERMISSIONS
from api.config import Settings, format_master_key
from ledger.integrator import Integrator
from ledger.note import NoteSigner
from ledger.repository import SqlLedgerStore
from ledger.service import Ledger
from partners import tiers
from partners.directory import Role
from partners.vault import MasterKey
from tests.api.conftest import LOG_ORIGIN, Issuer, bearer
from tests.api.test_authorization import operations_by_openapi_path
from tests.conftest import PG_URL, _admin_engine, _database_url

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

#: Random examples per operation after the coverage phase; keeps the file well under 90 s.
MAX_EXAMPLES = 10


def _collection_app() -> Flask:
    """An application used only to read its document and routes (no database is touched)."""
    return create_app(Settings(database_url="sqlite://", log_key_file=Path("/nonexistent")))


_APP = _collection_app()
SCHEMA = schemathesis.openapi.from_dict(_APP.test_client().get("/openapi.json").get_json())
OPERATIONS = operations_by_openapi_path(_APP)


def _performed_by(role: Role, *, only_if_nobody_else: tuple[Role, ...] = ()) -> Any:
    """A schemathesis filter: operations ``role`` may perform (and, optionally, no role in
    ``only_if_nobody_else`` may), plus the public ones (no operation declared)."""

    def matches(ctx: Any) -> bool:
        operation = OPERATIONS[(ctx.operation.method.upper(), ctx.operation.path)]
        if operation is None:
            return not only_if_nobody_else
        allowed = PERMISSIONS[operation]
        return role in allowed and not allowed & set(only_if_nobody_else)

    matches.__name__ = f"performed_by_{role.value}"
    return matches


@pytest.fixture(scope="module")
def fuzzed_database_url(
    template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One database for the whole module (per worker): the fuzzing needs no isolation between
    operations, and one database instead of one per operation saves most of the file's time."""
    if PG_URL is None:
        path = tmp_path_factory.mktemp("fuzz") / "coalition.db"
        shutil.copy(template_database, path)
        yield f"sqlite:///{path}"
        return
    name = f"coalition_fuzz_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield _database_url(name)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(scope="module")
def fuzzed_app(fuzzed_database_url: str) -> Iterator[Flask]:
    """The application over the module's database, initialised as ``tests/api/conftest.py``'s."""
    signer = NoteSigner.generate(LOG_ORIGIN)
    settings = Settings(database_url=fuzzed_database_url, log_key=signer.skey,
                        master_key=format_master_key(MasterKey.generate("master-1")))
    application = create_app(settings)
    application.config["TESTING"] = True
    services = application.extensions["coalition"]
    with services.db.transaction() as conn:
        Ledger().open_system_accounts(SqlLedgerStore(conn))
        Integrator(signer).ensure_log(conn)
        if not tiers.tier_levels(conn):
            tiers.seed_default_tiers(conn)
    yield application
    services.db.dispose()


@pytest.fixture
def token(request: pytest.FixtureRequest, fuzzed_app: Flask) -> str:
    """A token of the role the test is parametrized with (a partner is SUPER, with a contract)."""
    role = Role(request.param)
    issue = Issuer(fuzzed_app.extensions["coalition"].db)
    return issue.partner("SUPER") if role is Role.PARTNER else issue.staff(role, name=None)


def as_role(role: Role) -> pytest.MarkDecorator:
    """Runs the test with a ``token`` of ``role`` (and puts the role in each test's id)."""
    return pytest.mark.parametrize("token", [role.value], indirect=True)


FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@SCHEMA.include(_performed_by(Role.ADMIN)).parametrize()
@as_role(Role.ADMIN)
@FUZZ
def test_api_as_admin(case: Any, fuzzed_app: Flask, token: str) -> None:
    """As admin: no 5xx, and every response is what the document says."""
    case.call_and_validate(app=fuzzed_app, headers=bearer(token), checks=CHECKS)


@SCHEMA.include(_performed_by(Role.PARTNER)).parametrize()
@as_role(Role.PARTNER)
@FUZZ
def test_api_as_partner(case: Any, fuzzed_app: Flask, token: str) -> None:
    """As partner SUPER: no 5xx, and every response is what the document says."""
    case.call_and_validate(app=fuzzed_app, headers=bearer(token), checks=CHECKS)


@SCHEMA.include(
    _performed_by(Role.PRIVACY, only_if_nobody_else=(Role.ADMIN, Role.PARTNER))
).parametrize()
@as_role(Role.PRIVACY)
@FUZZ
def test_api_as_privacy_officer(case: Any, fuzzed_app: Flask, token: str) -> None:
    """The operations neither admin nor a partner may perform (export, erasure), fuzzed too."""
    case.call_and_validate(app=fuzzed_app, headers=bearer(token), checks=CHECKS)


# -- what the fuzzing found, pinned as examples ----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        # Sizes past a 64-bit integer reached the database driver: OverflowError, a 500.
        ("GET", f"/v1/checkpoints/{2**70}", {}, 404),
        ("GET", f"/v1/proofs/consistency?from=1&to={2**70}", {}, 422),
        # A blueprint's URL check ran before the request id was set: "request_id": null.
        ("GET", "/v1/partners/A%00B", {}, 404),
        # str.isdigit() accepts "¹", which int() refuses: a 500.
        ("PATCH", "/v1/partners/SUPER", {"If-Match": "\u00b9"}, 412),
        # NUL in a path, header or text: PostgreSQL refuses to store it (a 500 there).
        ("GET", "/v1/members/a%00b", {}, 404),
        ("GET", "/v1/proofs/consistency?from=1&to=1&log=a%00b", {}, 422),
    ],
)
def test_fuzzing_findings_stay_fixed(
    client: Any, admin_token: str, issue: Issuer, method: str, path: str,
    headers: dict[str, str], status: int,
) -> None:
    """Requests schemathesis (or reading its findings) turned into 500s or broken problems."""
    issue.partner("SUPER")
    response = client.open(path, method=method, json={"status": "suspended"},
                           headers={**bearer(admin_token), **headers})
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["request_id"] == response.headers["X-Request-Id"]
