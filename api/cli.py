"""The ``coalition`` command line.

Every command builds its objects from :class:`api.config.Settings` (the environment), runs one
use case, and turns a :class:`~ledger.errors.LedgerError` into a one-line message and exit code 1 —
never a stack trace.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import click
import sqlalchemy as sa

import ledger.tables  # noqa: F401  (registers the tables)
from api.config import Settings
from audit.verify import verify_database
from ledger import jobs
from ledger.db import Database, create_engine, upgrade
from ledger.errors import LedgerError
from ledger.integrator import Integrator
from ledger.keys import create_key, load_key, next_origin
from ledger.note import NoteSigner
from ledger.receipts import receipt
from ledger.repository import SqlLedgerStore
from ledger.service import Ledger
from partners import directory, tiers

F = TypeVar("F", bound=Callable[..., Any])


def clear_errors(command: F) -> F:
    """Report ledger and database errors as one line on stderr with exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except LedgerError as exc:
            raise click.ClickException(f"{exc.code}: {exc.message}") from None
        except sa.exc.OperationalError as exc:
            raise click.ClickException(f"database error: {exc.orig}") from None

    return wrapper  # type: ignore[return-value]


def _database(settings: Settings) -> Database:
    return Database(create_engine(settings.database_url, role=settings.database_role))


def _signer(settings: Settings) -> NoteSigner:
    if settings.log_key:
        return NoteSigner.from_skey(settings.log_key)
    return load_key(settings.log_key_file)


@click.group()
@click.version_option(package_name="coalition-ledger")
def main() -> None:
    """Coalition Ledger: a verifiable double-entry ledger for a coalition loyalty currency."""


@main.command()
@clear_errors
def init() -> None:
    """Create or upgrade the database, open the system accounts and the operator's log key."""
    settings = Settings.from_env()
    db = _database(settings)
    upgrade(db.engine)
    if settings.log_key or settings.log_key_file.exists():
        signer = _signer(settings)
    else:
        signer = create_key(settings.log_key_file, settings.log_origin)
        click.echo(f"created log key {settings.log_key_file} (mode 600)")
    if settings.vault_key() is None:
        settings.vault_key(create=True)
        click.echo(f"created vault master key {settings.master_key_file} (mode 600)")
    with db.transaction() as conn:
        Ledger().open_system_accounts(SqlLedgerStore(conn))
        Integrator(signer).ensure_log(conn)
        if not tiers.tier_levels(conn):
            tiers.seed_default_tiers(conn)
    click.echo(f"database ready: {sa.make_url(settings.database_url).render_as_string()}")
    click.echo(f"log verifier key: {signer.verifier.vkey}")


@main.command()
@click.option("--once", is_flag=True, help="Integrate what is queued, then stop.")
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@click.option(
    "--interval",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0.01, 60),
    help="Seconds to sleep when the queue is empty.",
)
@clear_errors
def integrate(once: bool, batch_size: int, interval: float) -> None:
    """Append committed entries to the verifiable log and sign checkpoints (leader-elected)."""
    settings = Settings.from_env()
    db, integrator = _database(settings), Integrator(_signer(settings), batch_size)
    while True:
        appended = integrator.integrate_all(db)
        if appended:
            click.echo(f"integrated {appended} entries")
        if once:
            return
        time.sleep(interval)


@main.group()
def keys() -> None:
    """The operator's log key."""


@keys.command("show")
@clear_errors
def keys_show() -> None:
    """Print the log's verifier key (give it to partners and auditors)."""
    click.echo(_signer(Settings.from_env()).verifier.vkey)


@keys.command("rotate")
@click.option("--origin", help="Origin of the new log (default: the old one with /N+1).")
@clear_errors
def keys_rotate(origin: str | None) -> None:
    """Close the current log and start a new one, signed by a new key, quoting the old head."""
    settings = Settings.from_env()
    if settings.log_key:
        raise click.ClickException("rotate a key kept in a file, not in COALITION_LOG_KEY")
    db, old = _database(settings), _signer(settings)
    integrator = Integrator(old)
    integrator.integrate_all(db)
    new_origin = origin or next_origin(old.name)
    retired = settings.log_key_file.with_name(settings.log_key_file.name + ".retired")
    staged = settings.log_key_file.with_name(settings.log_key_file.name + ".new")
    new = create_key(staged, new_origin)
    with db.transaction() as conn:
        integrator.rotate(conn, new)
    settings.log_key_file.rename(retired)
    staged.rename(settings.log_key_file)
    click.echo(f"log {old.name} closed; new log {new_origin}")
    click.echo(f"new log verifier key: {new.verifier.vkey}")


@main.command("jobs")
@click.argument("job", type=click.Choice(["release", "expire", "void-holds", "all"]))
@clear_errors
def run_jobs(job: str) -> None:
    """Run a scheduled job now: release pending points, expire lots, void stale holds."""
    settings = Settings.from_env()
    db, kernel, now = _database(settings), Ledger(), datetime.now(UTC)
    runners = {
        "release": jobs.release_pending,
        "expire": jobs.expire_lots,
        "void-holds": jobs.void_stale_holds,
    }
    for name, runner in runners.items():
        if job in (name, "all"):
            click.echo(f"{name}: {len(runner(db, kernel, now))} entries")


@main.command()
@click.argument("account")
@click.option(
    "--as-of",
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z"]),
    help="Ledger time (ISO 8601 with offset); default now.",
)
@clear_errors
def balance(account: str, as_of: datetime | None) -> None:
    """Print an account's balance, now or as of a ledger time."""
    db = _database(Settings.from_env())
    with db.transaction() as conn:
        click.echo(Ledger().balance(SqlLedgerStore(conn), account, as_of))


@main.group()
def audit() -> None:
    """Verify the ledger and prove entries."""


@audit.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--key", "keys_", multiple=True, help="Trusted log verifier key (repeatable).")
@clear_errors
def audit_verify(as_json: bool, keys_: tuple[str, ...]) -> None:
    """Check everything; print every finding; exit 1 if there is any."""
    from ledger.note import NoteVerifier

    db = _database(Settings.from_env())
    trusted = [NoteVerifier.from_vkey(k) for k in keys_] or None
    with db.engine.connect() as conn:
        report = verify_database(conn, trusted)
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else report.to_text())
    sys.exit(0 if report.ok else 1)


@audit.command("prove")
@click.argument("entry_id", type=click.UUID)
@click.option("--format", "fmt", type=click.Choice(["json", "tlog-proof"]), default="json")
@clear_errors
def audit_prove(entry_id: UUID, fmt: str) -> None:
    """Print an entry's receipt: leaf, signed checkpoint and inclusion proof."""
    db = _database(Settings.from_env())
    with db.engine.connect() as conn:
        found = receipt(conn, entry_id)
    if found is None:
        raise click.ClickException(f"entry {entry_id} is not in the log yet (run the integrator)")
    click.echo(
        json.dumps(found.to_json(), indent=2) if fmt == "json" else found.tlog_proof(), nl=False
    )


# -- partners, credentials and staff ---------------------------------------------------------------
#
# Tokens go to stdout alone, on one line, so a script can capture them; everything else goes to
# stderr. A token is printed once and cannot be recovered: only its hash is stored.


@main.group("partners")
def partners_group() -> None:
    """Partners of the coalition: onboard, list, suspend or reactivate."""


@partners_group.command("add")
@click.argument("code")
@click.option("--legal-name", required=True, help="Name of the legal entity.")
@click.option("--iban", required=True, help="Settlement account (checked).")
@click.option("--bic", required=True, help="Bank identifier (checked).")
@clear_errors
def partners_add(code: str, legal_name: str, iban: str, bic: str) -> None:
    """Onboard an active partner and open its ledger accounts."""
    db = _database(Settings.from_env())
    with db.transaction() as conn:
        # audit: partner onboarded
        partner = directory.onboard_partner(conn, code, legal_name, iban, bic, datetime.now(UTC))
    click.echo(f"partner {partner.code} onboarded: {partner.legal_name}, {partner.iban} "
               f"{partner.bic}")


@partners_group.command("list")
@clear_errors
def partners_list() -> None:
    """Print every partner: code, status, redemptions, version and legal name."""
    from partners import tables as pt

    db = _database(Settings.from_env())
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(pt.partners).order_by(pt.partners.c.code)).all()
    for row in rows:
        redemptions = "blocked" if row.redemption_blocked else "open"
        click.echo(f"{row.code}\t{row.status}\tredemptions {redemptions}\tv{row.version}\t"
                   f"{row.legal_name}")


@partners_group.command("status")
@click.argument("code")
@click.argument("status", type=click.Choice([s.value for s in directory.PartnerStatus]))
@click.option("--block-redemptions/--allow-redemptions", default=None,
              help="Default: keep as is, or allow when the partner becomes active.")
@clear_errors
def partners_status(code: str, status: str, block_redemptions: bool | None) -> None:
    """Set a partner's status (active, suspended, exiting) and whether members may spend there."""
    db = _database(Settings.from_env())
    with db.transaction() as conn:
        before = directory.partner(conn, code)
        if block_redemptions is None:
            block_redemptions = before.redemption_blocked and status != "active"
        # audit: partner status changed
        after = directory.set_status(conn, code, status, datetime.now(UTC),
                                     redemption_blocked=block_redemptions)
    redemptions = "blocked" if after.redemption_blocked else "open"
    click.echo(f"partner {code} is {after.status.value}, redemptions {redemptions} "
               f"(version {after.version})")


_STAFF_ROLES = [r.value for r in directory.Role if r is not directory.Role.PARTNER]


def _print_issued(credential: directory.Credential, token: str) -> None:
    """Print the token once, after the commit, so a printed token always works."""
    owner = (f"partner {credential.partner}" if credential.partner
             else f"staff {credential.staff}")
    click.echo(f"credential {credential.id} ({credential.role.value}, {owner}); "
               "the token below is shown once, store it now:", err=True)
    click.echo(token)


@main.group()
def credentials() -> None:
    """API credentials of partners and staff: issue, list, rotate, revoke."""


@credentials.command("issue")
@click.option("--partner", "partner_code", help="Issue a partner credential for this code.")
@click.option("--staff", help="Issue a staff credential for this account.")
@click.option("--role", type=click.Choice(_STAFF_ROLES), help="The staff credential's role.")
@click.option("--label", help="A note, e.g. 'till system, store 12'.")
@clear_errors
def credentials_issue(partner_code: str | None, staff: str | None, role: str | None,
                      label: str | None) -> None:
    """Issue a credential and print its token once (partner: --partner; staff: --staff --role)."""
    if (partner_code is None) == (staff is None):
        raise click.UsageError("give either --partner CODE or --staff NAME --role ROLE")
    if staff is not None and role is None:
        raise click.UsageError("a staff credential needs --role")
    if partner_code is not None and role is not None:
        raise click.UsageError("a partner credential has the partner role; drop --role")
    db = _database(Settings.from_env())
    with db.transaction() as conn:
        # audit: credential issued (never the token)
        issued = directory.issue_credential(
            conn, partner=partner_code, staff=staff, role=role or directory.Role.PARTNER,
            label=label, now=datetime.now(UTC),
        )
        credential = directory.credential(conn, issued.credential_id)
    _print_issued(credential, issued.token)


@credentials.command("list")
@click.option("--partner", "partner_code", help="Only this partner's credentials.")
@click.option("--staff-only", is_flag=True, help="Only staff credentials.")
@clear_errors
def credentials_list(partner_code: str | None, staff_only: bool) -> None:
    """Print credentials (never a secret): id, role, owner, label, created, revoked."""
    from partners import tables as pt

    c = pt.credentials.c
    query = sa.select(c.id, c.role, c.partner, c.staff, c.label, c.created_at, c.revoked_at)
    if partner_code is not None:
        query = query.where(c.partner == partner_code)
    if staff_only:
        query = query.where(c.staff.is_not(None))
    db = _database(Settings.from_env())
    with db.engine.connect() as conn:
        rows = conn.execute(query.order_by(c.created_at, c.id)).all()
    for row in rows:
        owner = row.partner or row.staff
        revoked = f"revoked {row.revoked_at.isoformat()}" if row.revoked_at else "active"
        click.echo(f"{row.id}\t{row.role}\t{owner}\t{row.label or ''}\t"
                   f"{row.created_at.isoformat()}\t{revoked}")


@credentials.command("rotate")
@click.argument("credential_id")
@click.option("--grace", type=click.IntRange(0, 7 * 86_400), default=0, show_default=True,
              help="Seconds the old token keeps working.")
@clear_errors
def credentials_rotate(credential_id: str, grace: int) -> None:
    """Issue a successor credential (token printed once); the old one stops after --grace."""
    db = _database(Settings.from_env())
    with db.transaction() as conn:
        # audit: credential rotated
        issued = directory.rotate_credential(conn, credential_id, datetime.now(UTC),
                                             grace=timedelta(seconds=grace))
        credential = directory.credential(conn, issued.credential_id)
    _print_issued(credential, issued.token)


@credentials.command("revoke")
@click.argument("credential_id")
@clear_errors
def credentials_revoke(credential_id: str) -> None:
    """Stop a credential from authenticating now."""
    db = _database(Settings.from_env())
    now = datetime.now(UTC)
    with db.transaction() as conn:
        # audit: credential revoked
        revoked = directory.revoke_credential(conn, credential_id, now)
    click.echo(f"credential {credential_id} revoked at {(revoked.revoked_at or now).isoformat()}")


@main.group()
def staff() -> None:
    """The operator's staff accounts (finance, auditor, admin, privacy officer)."""


@staff.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(_STAFF_ROLES))
@click.option("--label", help="A note, e.g. 'laptop'.")
@clear_errors
def staff_add(name: str, role: str, label: str | None) -> None:
    """Create a staff account's credential in a role and print its token once."""
    db = _database(Settings.from_env())
    with db.transaction() as conn:
        # audit: staff credential issued (never the token)
        issued = directory.issue_credential(conn, staff=name, role=role, label=label,
                                            now=datetime.now(UTC))
        credential = directory.credential(conn, issued.credential_id)
    _print_issued(credential, issued.token)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--graceful-timeout", default=30, show_default=True, type=click.IntRange(1, 600),
              help="Seconds in-flight requests get to finish on SIGTERM.")
def serve(host: str, port: int, workers: int, graceful_timeout: int) -> None:
    """Serve the REST API (and its docs at /docs) under gunicorn."""
    run_gunicorn(host, port, workers, graceful_timeout)


def run_gunicorn(host: str, port: int, workers: int, graceful_timeout: int) -> None:
    from gunicorn.app.base import BaseApplication

    class _Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("graceful_timeout", graceful_timeout)
            self.cfg.set("accesslog", None)

        def load(self) -> Any:
            from api.wsgi import app

            return app

    _Server().run()


from api.demo import demo  # noqa: E402  (registers the demo command on the group)

main.add_command(demo)
