"""Authentication and the authorization matrix of PRODUCT.md §9, enforced in one place.

Every view declares the operation it performs with :func:`requires`; :data:`PERMISSIONS` says which
roles may perform it. A request without a valid bearer token gets 401, a role outside the
operation's set gets 403. Partner isolation (a partner acts only on its own entries and sees only
what members shared) is enforced by the services, which receive the caller's partner code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from flask import current_app, g, request

from api.errors import ApiProblem
from partners import directory
from partners.directory import Credential, Role

F = TypeVar("F", bound=Callable[..., Any])

PARTNER, FINANCE, AUDITOR, ADMIN, PRIVACY = (
    Role.PARTNER,
    Role.FINANCE,
    Role.AUDITOR,
    Role.ADMIN,
    Role.PRIVACY,
)

#: Operation → roles allowed. The table-driven test walks every (operation, role) pair.
PERMISSIONS: dict[str, frozenset[Role]] = {
    "members.enroll": frozenset({PARTNER, ADMIN}),
    "members.read": frozenset({PARTNER, ADMIN, AUDITOR, PRIVACY}),
    "members.balance": frozenset({PARTNER, AUDITOR, FINANCE}),
    "members.entries": frozenset({PARTNER, AUDITOR}),
    "members.consents": frozenset({PARTNER, PRIVACY}),
    "members.export": frozenset({PRIVACY}),
    "members.erasure": frozenset({PRIVACY}),
    "points.earn": frozenset({PARTNER}),
    "points.engage": frozenset({PARTNER}),
    "points.burn": frozenset({PARTNER}),
    "points.hold": frozenset({PARTNER}),
    "points.reverse": frozenset({PARTNER}),
    "points.transfer": frozenset({PARTNER}),
    "entries.read": frozenset({PARTNER, AUDITOR, FINANCE}),
    "log.read": frozenset({PARTNER, AUDITOR, FINANCE, ADMIN}),
    "partners.read": frozenset({ADMIN, FINANCE, AUDITOR}),
    "partners.write": frozenset({ADMIN}),
    "credentials.write": frozenset({ADMIN}),
    "keys.write": frozenset({ADMIN, PARTNER}),
    "contracts.write": frozenset({ADMIN}),
    "credentials.read": frozenset({ADMIN, AUDITOR}),
    "keys.read": frozenset({ADMIN, AUDITOR, PARTNER}),
    "staff.read": frozenset({ADMIN, AUDITOR}),
    "staff.write": frozenset({ADMIN}),
    # Settlement: partners read their own statements and disputes only (enforced by the views).
    "settlement.read": frozenset({FINANCE, AUDITOR, PARTNER}),
    "settlement.write": frozenset({FINANCE}),
    "settlement.payments": frozenset({FINANCE, AUDITOR}),
    "settlement.countersign": frozenset({PARTNER}),
    # Inclusion proofs of the entries a statement line sums (a partner: its own statement only).
    "settlement.proofs": frozenset({FINANCE, AUDITOR, PARTNER}),
    "disputes.open": frozenset({PARTNER}),
    "disputes.decide": frozenset({FINANCE}),
    # Batches, rules and tiers (issue 5 point 5).
    "batches.write": frozenset({PARTNER}),
    "rules.read": frozenset({ADMIN, AUDITOR, FINANCE}),
    "rules.write": frozenset({ADMIN}),
    "tiers.read": frozenset({PARTNER, ADMIN, AUDITOR}),
    "tiers.write": frozenset({ADMIN}),
    # Reports (issue 7 point 6): the trial balance lists every account, so staff only; partners
    # read their own rows of the per-partner reports (enforced by api/resources/reports.py).
    "reports.trial_balance": frozenset({AUDITOR, FINANCE}),
    "reports.partner": frozenset({AUDITOR, FINANCE, PARTNER}),
}


def current_credential() -> Credential:
    """The authenticated credential of this request (set by :func:`requires`)."""
    return g.credential


def _authenticate() -> Credential:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    # A token is printable ASCII; anything else (a NUL byte, say) must not reach the database.
    if scheme.lower() != "bearer" or not token.strip() or not token.isprintable():
        raise ApiProblem(401, "unauthenticated", "send 'Authorization: Bearer <api key>'")
    db = current_app.extensions["coalition"].db
    with db.transaction() as conn:
        return directory.authenticate(conn, token.strip(), datetime.now(UTC))


def requires(operation: str) -> Callable[[F], F]:
    """Authenticate the caller and check that its role may perform ``operation``."""
    allowed = PERMISSIONS[operation]

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            credential = _authenticate()
            if credential.role not in allowed:
                raise ApiProblem(
                    403, "forbidden", f"role {credential.role.value} may not {operation}"
                )
            g.credential = credential
            return view(*args, **kwargs)

        wrapper.required_operation = operation  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def acting_partner() -> str:
    """The partner the caller acts for; staff have none."""
    credential = current_credential()
    if credential.partner is None:
        raise ApiProblem(403, "forbidden", "only a partner credential can do this")
    return credential.partner


def audit(
    conn: Any,
    action: str,
    subject: str,
    after: dict[str, Any] | None = None,
    reason: str | None = None,
) -> None:
    """Record the caller's action in the audit log, in the action's own transaction (§8).

    Who (credential, role), what, when, from where (remote address) and the request id; never a
    secret or a personal value (the audit log refuses those).
    """
    from api.errors import request_id
    from audit import log as audit_log

    credential = current_credential()
    audit_log.record(
        conn,
        actor=credential.staff or f"partner:{credential.partner}",
        role=credential.role.value,
        action=action,
        now=datetime.now(UTC),
        credential=credential.id,
        request_id=request_id(),
        source=request.remote_addr,
        subject=subject,
        after=after,
        reason=reason,
    )
