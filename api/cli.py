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
from datetime import UTC, datetime
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
    with db.transaction() as conn:
        Ledger().open_system_accounts(SqlLedgerStore(conn))
        Integrator(signer).ensure_log(conn)
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


from api.demo import demo  # noqa: E402  (registers the demo command on the group)

main.add_command(demo)
