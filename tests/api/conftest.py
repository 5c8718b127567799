"""Fixtures for the REST API through Flask's test client, over a fresh database per test.

The application is built as production builds it (``create_app(Settings(...))``) on the
``database_url`` of ``tests/conftest.py`` (SQLite, or PostgreSQL when
``COALITION_TEST_DATABASE_URL`` is set), after what ``coalition init`` does on a migrated database:
the system accounts opened, the log started under a key generated for the test, the default
tiers seeded; the vault's master key is generated for the test too.

Credentials are issued straight through :mod:`partners.directory`, one transaction each, so a test
about one endpoint does not depend on the endpoints that manage credentials.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from api.config import Settings, format_master_key
from ledger.db import Database
from ledger.integrator import Integrator
from ledger.note import NoteSigner
from ledger.repository import SqlLedgerStore
from ledger.service import Ledger
from partners import directory, tiers
from partners.directory import ContractTerms, Role
from partners.vault import MasterKey

LOG_ORIGIN = "api.coalition.local/ledger"
PROBLEM_JSON = "application/problem+json"

#: Valid bank details (checksums and formats pass schwifty) for partners the tests onboard.
IBAN = "DE89370400440532013000"
BIC = "COBADEFFXXX"

#: Contract terms as the API takes them: prices and rates are decimal strings.
CONTRACT_JSON: dict[str, Any] = {
    "valid_from": "2026-01-01T00:00:00+00:00",
    "valid_to": "2027-01-01T00:00:00+00:00",
    "issue_price": "0.0100",
    "reimbursement_price": "0.0090",
    "breakage_rebate": "0.0020",
    "monthly_fee_cents": 10_000,
    "pending_days": 14,
    "earn_rate": "1",
    "category_multipliers": {"fresh": "1.5"},
    "rounding_mode": "ROUND_HALF_UP",
    "carry_forward_threshold_cents": 1_000,
    "signing_required": False,
}


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for a token."""
    return {"Authorization": f"Bearer {token}"}


class Issuer:
    """Partners and credentials created directly in the directory, for the tests' callers."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def staff(self, role: Role | str, name: str | None = None) -> str:
        """A token of a new staff credential in ``role`` (account name defaults to the role)."""
        with self.db.transaction() as conn:
            issued = directory.issue_credential(
                conn, staff=name or f"{Role(role).value}-staff", role=role, label=None,
                now=datetime.now(UTC),
            )
        return issued.token

    def partner(self, code: str = "SUPER", *, contract: bool = True) -> str:
        """A token of a new credential of partner ``code``, onboarded (with a contract) if new."""
        now = datetime.now(UTC)
        with self.db.transaction() as conn:
            if directory.SqlDirectory(conn).partner(code) is None:
                directory.onboard_partner(conn, code, f"{code} Ltd", IBAN, BIC, now)
                if contract:
                    directory.add_contract(conn, code, default_terms(),
                                           datetime(2026, 1, 1, tzinfo=UTC), None, now, "tests")
            issued = directory.issue_credential(conn, partner=code, role=Role.PARTNER,
                                                label="tests", now=now)
        return issued.token


def default_terms() -> ContractTerms:
    return ContractTerms(
        issue_price=Decimal("0.01"), reimbursement_price=Decimal("0.009"),
        breakage_rebate=Decimal("0.002"), monthly_fee_cents=10_000, pending_days=14,
        earn_rate=Decimal(1), rounding_mode="ROUND_HALF_UP", carry_forward_threshold_cents=1_000,
    )


@pytest.fixture
def log_signer() -> NoteSigner:
    """A log key made for this test (the application gets it as ``COALITION_LOG_KEY`` would)."""
    return NoteSigner.generate(LOG_ORIGIN)


@pytest.fixture
def master_key() -> MasterKey:
    """The vault's master key for this test (never a key file from the working directory)."""
    return MasterKey.generate("master-1")


@pytest.fixture
def app(database_url: str, log_signer: NoteSigner, master_key: MasterKey) -> Iterator[Flask]:
    """The application over this test's migrated database, initialised like ``coalition init``."""
    settings = Settings(database_url=database_url, log_key=log_signer.skey,
                        master_key=format_master_key(master_key))
    application = create_app(settings)
    application.config["TESTING"] = True
    services = application.extensions["coalition"]
    with services.db.transaction() as conn:
        Ledger().open_system_accounts(SqlLedgerStore(conn))
        Integrator(log_signer).ensure_log(conn)
        if not tiers.tier_levels(conn):
            tiers.seed_default_tiers(conn)
    yield application
    services.db.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def issue(app: Flask) -> Issuer:
    """Issues partners and credentials in the application's database."""
    return Issuer(app.extensions["coalition"].db)


@pytest.fixture
def admin_token(issue: Issuer) -> str:
    return issue.staff(Role.ADMIN)


@pytest.fixture
def finance_token(issue: Issuer) -> str:
    return issue.staff(Role.FINANCE)


@pytest.fixture
def auditor_token(issue: Issuer) -> str:
    return issue.staff(Role.AUDITOR)


@pytest.fixture
def privacy_token(issue: Issuer) -> str:
    return issue.staff(Role.PRIVACY)


@pytest.fixture
def partner_token(issue: Issuer) -> str:
    """A token of partner SUPER, onboarded with an open-ended contract from 2026-01-01."""
    return issue.partner("SUPER")
