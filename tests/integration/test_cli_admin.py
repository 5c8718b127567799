"""``coalition partners|credentials|staff``: the operator's administration from the command line.

Each test runs ``init`` on a fresh migrated database first, as an operator would. Errors must come
out as one line with exit status 1, never a traceback; tokens come out once, alone on stdout.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import api.cli
from api.cli import _database as open_database
from api.cli import main
from api.config import Settings
from ledger.db import Database
from partners import directory
from partners.directory import Credential
from partners.errors import AuthenticationFailed

IBAN = "DE89370400440532013000"
BIC = "COBADEFFXXX"


@pytest.fixture
def cli(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    """A runner on this test's database and key files, with ``coalition init`` already run."""
    opened: list[Database] = []

    def tracked_database(settings: Settings) -> Database:
        opened.append(open_database(settings))
        return opened[-1]

    monkeypatch.setattr(api.cli, "_database", tracked_database)
    runner = CliRunner(
        env={
            "COALITION_DATABASE_URL": database_url,
            "COALITION_LOG_KEY_FILE": str(tmp_path / "log.key"),
            "COALITION_LOG_KEY": None,
            "COALITION_MASTER_KEY_FILE": str(tmp_path / "master.key"),
            "COALITION_MASTER_KEY": None,
            "COALITION_DATABASE_ROLE": None,
        }
    )
    initialised = run(runner, "init")
    assert initialised.exit_code == 0, initialised.output
    yield runner
    for db in opened:
        db.dispose()


def run(cli: CliRunner, *args: str) -> Result:
    return cli.invoke(main, list(args), catch_exceptions=False)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def authenticate(db: Database, token: str) -> Credential:
    with db.transaction() as conn:
        return directory.authenticate(conn, token, datetime.now(UTC))


def add_partner(cli: CliRunner, code: str = "SUPER") -> Result:
    return run(
        cli, "partners", "add", code, "--legal-name", f"{code} SA", "--iban", IBAN, "--bic", BIC
    )


def test_partners_add_and_list(cli: CliRunner) -> None:
    """partners add onboards an active partner that partners list then shows."""
    assert "partner SUPER onboarded" in ok(add_partner(cli)).output
    ok(add_partner(cli, "RAIL"))
    listed = ok(run(cli, "partners", "list")).stdout.splitlines()
    assert [line.split("\t")[:2] for line in listed] == [["RAIL", "active"], ["SUPER", "active"]]


def test_partners_add_with_a_bad_iban_fails_cleanly(cli: CliRunner) -> None:
    """A bad IBAN exits 1 with a one-line message naming the field and no traceback."""
    result = run(
        cli,
        "partners",
        "add",
        "SUPER",
        "--legal-name",
        "Super SA",
        "--iban",
        "DE89370400440532013001",
        "--bic",
        BIC,
    )
    assert result.exit_code == 1, result.output
    assert "invalid-field: iban:" in result.output
    assert "Traceback" not in result.output


def test_partners_add_twice_fails_cleanly(cli: CliRunner) -> None:
    """Onboarding a taken code exits 1 saying it exists."""
    ok(add_partner(cli))
    result = add_partner(cli)
    assert result.exit_code == 1
    assert "partner-exists" in result.output


def test_partners_status_suspends_and_reactivates(cli: CliRunner) -> None:
    """partners status suspends with blocked redemptions, then reactivation lifts the block."""
    ok(add_partner(cli))
    suspended = ok(run(cli, "partners", "status", "SUPER", "suspended", "--block-redemptions"))
    assert "SUPER is suspended, redemptions blocked (version 2)" in suspended.output
    active = ok(run(cli, "partners", "status", "SUPER", "active"))
    assert "SUPER is active, redemptions open (version 3)" in active.output
    refused = run(cli, "partners", "status", "SUPER", "active", "--block-redemptions")
    assert refused.exit_code == 1
    assert "redemption_blocked" in refused.output


def test_credentials_issue_prints_a_token_that_authenticates(cli: CliRunner, db: Database) -> None:
    """credentials issue --partner prints, alone on stdout, a token the directory accepts."""
    ok(add_partner(cli))
    result = ok(run(cli, "credentials", "issue", "--partner", "SUPER", "--label", "till"))
    token = result.stdout.strip()
    credential = authenticate(db, token)
    assert (credential.partner, credential.role.value, credential.label) == (
        "SUPER",
        "partner",
        "till",
    )
    assert "shown once" in result.stderr
    listed = ok(run(cli, "credentials", "list", "--partner", "SUPER")).stdout
    assert credential.id in listed
    assert token.partition(".")[2] not in listed


def test_credentials_rotate_and_revoke(cli: CliRunner, db: Database) -> None:
    """rotate prints a working successor and retires the old token; revoke stops the successor."""
    ok(add_partner(cli))
    old = ok(run(cli, "credentials", "issue", "--partner", "SUPER")).stdout.strip()
    old_id = authenticate(db, old).id
    new = ok(run(cli, "credentials", "rotate", old_id)).stdout.strip()
    new_id = authenticate(db, new).id
    with pytest.raises(AuthenticationFailed):
        authenticate(db, old)
    assert f"credential {new_id} revoked" in ok(run(cli, "credentials", "revoke", new_id)).output
    with pytest.raises(AuthenticationFailed):
        authenticate(db, new)


def test_credentials_issue_needs_exactly_one_owner(cli: CliRunner) -> None:
    """issue without an owner, or with both, is a usage error; an unknown partner exits 1."""
    assert run(cli, "credentials", "issue").exit_code == 2
    both = run(cli, "credentials", "issue", "--partner", "SUPER", "--staff", "x", "--role", "admin")
    assert both.exit_code == 2
    assert run(cli, "credentials", "issue", "--staff", "x").exit_code == 2
    unknown = run(cli, "credentials", "issue", "--partner", "GHOST")
    assert unknown.exit_code == 1
    assert "unknown-partner" in unknown.output
    assert "unknown-credential" in run(cli, "credentials", "revoke", "nope").output


@pytest.mark.parametrize("role", ["finance", "auditor", "admin", "privacy"])
def test_staff_add_issues_a_staff_credential_in_its_role(
    cli: CliRunner, db: Database, role: str
) -> None:
    """staff add NAME --role prints a token authenticating as that staff account and role."""
    token = ok(run(cli, "staff", "add", "alice", "--role", role)).stdout.strip()
    credential = authenticate(db, token)
    assert (credential.staff, credential.role.value, credential.partner) == ("alice", role, None)


def test_staff_add_refuses_the_partner_role(cli: CliRunner) -> None:
    """A staff account cannot have the partner role."""
    assert run(cli, "staff", "add", "alice", "--role", "partner").exit_code == 2
