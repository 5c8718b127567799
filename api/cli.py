"""The ``coalition`` command line.

Every command builds its objects from :class:`api.config.Settings` (the environment), runs one
use case, and turns a :class:`~ledger.errors.LedgerError` into a one-line message and exit code 1 —
never a stack trace.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import click
import sqlalchemy as sa

import ledger.tables  # noqa: F401  (registers the tables)
from api.batchwork import collecting_less
from api.config import Settings
from audit.bundle import export_database, verify_bundle
from audit.log import log_integrator
from audit.verify import verify_database
from ledger import jobs
from ledger.db import Database, create_engine, upgrade
from ledger.errors import LedgerError
from ledger.integrator import Integrator
from ledger.keys import create_key, load_key, next_origin
from ledger.note import NoteSigner
from ledger.numbers import format_cents
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
    """The configured database, whose connections close when the command ends."""
    db = Database(create_engine(settings.database_url, role=settings.database_role))
    context = click.get_current_context(silent=True)
    if context is not None:
        context.call_on_close(db.dispose)
    return db


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
    db, integrator = _database(settings), log_integrator(_signer(settings), batch_size)
    while True:
        with collecting_less():
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
    integrator = log_integrator(old)
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
@click.option(
    "--bundle",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Verify an export bundle offline instead of the live database.",
)
@click.option(
    "--workers",
    default=min(os.cpu_count() or 1, 8),
    show_default="the number of cores, at most 8",
    type=click.IntRange(1, 64),
    help="Processes that check the leaves (of a bundle or of the live database).",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show progress on stderr (default: when stderr is a terminal).",
)
@clear_errors
def audit_verify(
    as_json: bool,
    keys_: tuple[str, ...],
    bundle: Path | None,
    workers: int,
    progress: bool | None,
) -> None:
    """Check everything; print every finding; exit 1 if there is any."""
    from ledger.note import NoteVerifier

    trusted = [NoteVerifier.from_vkey(k) for k in keys_] or None
    show = sys.stderr.isatty() if progress is None else progress
    if bundle is not None:
        with _progress(show) as report_progress, collecting_less():
            report = verify_bundle(bundle, trusted, workers=workers, progress=report_progress)
    else:
        db = _database(Settings.from_env())
        with (
            db.engine.connect() as conn,
            _progress(show, in_bytes=False) as report_progress,
            collecting_less(),
        ):
            report = verify_database(conn, trusted, progress=report_progress, workers=workers)
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else report.to_text())
    sys.exit(0 if report.ok else 1)


@contextmanager
def _progress(
    show: bool, *, in_bytes: bool = True
) -> Iterator[Callable[[str, int, int], None] | None]:
    """A rich progress bar on stderr fed by the verifier's (phase, done, total) calls, counted
    in bytes (a bundle's files) or in items (the live database's leaves)."""
    if not show:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    amount = DownloadColumn() if in_bytes else MofNCompleteColumn()
    columns = (TextColumn("{task.description}"), BarColumn(), amount)
    with Progress(*columns, TimeRemainingColumn(), console=Console(stderr=True)) as bar:
        tasks: dict[str, Any] = {}

        def advance(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield advance


@audit.command("export")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="A new (or empty) directory for the bundle; the file to write for beancount.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["bundle", "beancount"]),
    default="bundle",
    show_default=True,
    help="bundle: what audit verify --bundle checks; beancount: both books as a ledger file.",
)
@clear_errors
def audit_export(out: Path, fmt: str) -> None:
    """Write a self-contained bundle an auditor verifies offline (audit verify --bundle).

    With --format beancount, write both books (PTS and EUR) as a beancount file instead.
    """
    db = _database(Settings.from_env())
    if fmt == "beancount":
        _export_beancount(db, out)
        return
    if out.exists() and not out.is_dir():
        raise click.ClickException(f"{out} is a file: a bundle is written into a directory")
    with collecting_less():
        summary = export_database(db.engine, out, now=datetime.now(UTC))
    click.echo(
        f"bundle {summary.path}: logs {', '.join(summary.logs) or '(none)'}; {summary.leaves} "
        f"leaves, {summary.entries} entries ({summary.queued} queued), "
        f"{summary.audit_events} audit events"
    )


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


@audit.command("check-receipt")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--key",
    "keys_",
    required=True,
    multiple=True,
    help="Trusted log verifier key (repeatable; `coalition keys show` prints it).",
)
@clear_errors
def audit_check_receipt(path: Path, keys_: tuple[str, ...]) -> None:
    """Verify a receipt offline, without the database: signature, leaf, inclusion proof."""
    from ledger.note import NoteVerifier
    from ledger.receipts import Receipt, verify_receipt

    try:
        found = Receipt.from_json(json.loads(path.read_text(encoding="utf-8")))
    except ValueError as exc:  # not JSON; a JSON document that is no receipt is a ProofError
        raise click.ClickException(f"{path} is not a receipt: {exc}") from None
    leaf = verify_receipt(found, [NoteVerifier.from_vkey(k) for k in keys_])
    click.echo(
        f"OK: entry {found.entry_id} ({leaf.body['kind']}) is leaf {found.index} of "
        f"{found.log}, under a checkpoint of size {found.tree_size} signed by the key"
    )


def _export_beancount(db: Database, out: Path) -> None:
    """Write both books as a beancount file (checked by bean-check in the tests)."""
    from audit.beancount import write_beancount

    if out.is_dir():
        raise click.ClickException(f"{out} is a directory: --format beancount writes one file")
    with db.engine.connect() as conn, out.open("w", encoding="utf-8") as stream:
        summary = write_beancount(conn, stream)
    click.echo(
        f"beancount {out}: {summary.transactions} transactions ({summary.unlogged} not yet "
        f"logged), {summary.accounts} accounts"
    )


@audit.group("report")
def audit_report() -> None:
    """Reports for auditors and finance: trial balance, liability, breakage, exposure."""


def _report_output(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")(
        function
    )


def _table(title: str, headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """A rich table on stdout; numbers right-aligned."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for position, header in enumerate(headers):
        table.add_column(header, justify="left" if position == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    Console().print(table)


@audit_report.command("trial-balance")
@click.option(
    "--size",
    type=int,
    help="Tree size: the first N leaves of the log (default: the latest signed checkpoint's).",
)
@click.option("--by", type=click.Choice(["account", "kind"]), default="account", show_default=True)
@_report_output
@clear_errors
def audit_report_trial_balance(size: int | None, by: str, as_json: bool) -> None:
    """Every account of both books over a prefix of the log; exit 1 if a book does not balance."""
    from audit import reports

    db = _database(Settings.from_env())
    with db.engine.connect() as conn:
        report = reports.trial_balance(conn, size, by=by)  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        cut = report.cut
        _table(
            f"Trial balance of {cut.log or '(no log)'} at tree size {cut.size}",
            ("account" if by == "account" else "kind", "book", "debit", "credit"),
            [
                (line.key, line.book.value, *_debit_credit(line.book.value, line.balance))
                for line in report.lines
            ],
        )
        signed = f"signed root {cut.root.hex()}" if cut.root is not None else "no checkpoint"
        click.echo(f"{report.entries} entries covered; log size {cut.log_size}; {signed}")
        for total in report.totals:
            debits, credits = _debit_credit(total.book.value, total.debits, total.credits)
            verdict = "balances" if total.balanced else f"DOES NOT BALANCE (net {total.net})"
            click.echo(
                f"{total.book.value} {verdict}: debits {debits} = credits {credits}"
                if total.balanced
                else f"{total.book.value} {verdict}: debits {debits}, credits {credits}"
            )
    if not report.balanced:
        sys.exit(1)


def _debit_credit(book: str, *amounts: int) -> tuple[str, ...]:
    """Trial balance cells: one (debit, credit) pair for a balance, or the totals as given."""

    def show(value: int) -> str:
        return format_cents(value) if book == "EUR" else str(value)

    if len(amounts) == 1:
        value = amounts[0]
        return (show(value), "") if value >= 0 else ("", show(-value))
    return tuple(show(value) for value in amounts)


@audit_report.command("liability")
@click.option(
    "--by",
    type=click.Choice(["partner", "vintage"]),
    default="partner",
    show_default=True,
    help="Per funding partner, or per month earned (Paris).",
)
@click.option("--partner", help="Only the points this partner funded.")
@_report_output
@clear_errors
def audit_report_liability(by: str, partner: str | None, as_json: bool) -> None:
    """Outstanding points (the members' lots) by funding partner or by vintage."""
    from audit import reports

    db = _database(Settings.from_env())
    with db.engine.connect() as conn:
        report = reports.liability(conn, by=by, partner=partner)  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    _table(
        f"Outstanding points by {by}",
        (by, "points", "pending", "lots"),
        [(x.key, x.points, x.pending, x.lots) for x in report.lines],
    )
    click.echo(f"total {report.points} points ({report.pending} pending)")
    if report.member_points is not None:
        state = "reconciles with" if report.reconciled else "DOES NOT MATCH"
        click.echo(f"{state} the member accounts: {report.member_points} points")


@audit_report.command("breakage")
@click.option("--period", help="Only this period (2026-03), by ledger time; default: every month.")
@click.option("--partner", help="Only the lots this partner funded.")
@_report_output
@clear_errors
def audit_report_breakage(period: str | None, partner: str | None, as_json: bool) -> None:
    """Points expired or forfeited, attributed to the funder of their lots, per month."""
    from audit import reports

    db = _database(Settings.from_env())
    with db.engine.connect() as conn:
        report = reports.breakage(conn, period=period, partner=partner)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    _table(
        f"Breakage{' in ' + report.period if report.period else ''}",
        ("period", "partner", "points"),
        [(x.period, x.partner, x.points) for x in report.lines],
    )
    click.echo(f"total {report.points} points")


@audit_report.command("exposure")
@click.option(
    "--at",
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z"]),
    help="Price with the contracts in force at this instant (ISO 8601 with offset); default now.",
)
@click.option("--partner", help="Only this partner.")
@_report_output
@clear_errors
def audit_report_exposure(at: datetime | None, partner: str | None, as_json: bool) -> None:
    """Outstanding points × each funder's reimbursement price, rounded once per partner."""
    from audit import reports

    db = _database(Settings.from_env())
    with db.engine.connect() as conn:
        report = reports.exposure(conn, at=at or datetime.now(UTC), partner=partner)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    _table(
        f"Partner exposure at {report.at.isoformat()}",
        ("partner", "points", "contract", "q (EUR)", "mode", "EUR"),
        [
            (
                x.partner,
                x.points,
                None if x.contract_version is None else f"v{x.contract_version}",
                x.price,
                x.rounding_mode,
                "no contract" if x.cents is None else format_cents(x.cents),
            )
            for x in report.lines
        ],
    )
    click.echo(
        f"total {format_cents(report.cents)} EUR; {report.unpriced_points} points unpriced, "
        f"{report.program_points} funded by the programme"
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
    click.echo(
        f"partner {partner.code} onboarded: {partner.legal_name}, {partner.iban} {partner.bic}"
    )


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
        click.echo(
            f"{row.code}\t{row.status}\tredemptions {redemptions}\tv{row.version}\t{row.legal_name}"
        )


@partners_group.command("status")
@click.argument("code")
@click.argument("status", type=click.Choice([s.value for s in directory.PartnerStatus]))
@click.option(
    "--block-redemptions/--allow-redemptions",
    default=None,
    help="Default: keep as is, or allow when the partner becomes active.",
)
@clear_errors
def partners_status(code: str, status: str, block_redemptions: bool | None) -> None:
    """Set a partner's status (active, suspended, exiting) and whether members may spend there."""
    db = _database(Settings.from_env())
    with db.transaction() as conn:
        before = directory.partner(conn, code)
        if block_redemptions is None:
            block_redemptions = before.redemption_blocked and status != "active"
        # audit: partner status changed
        after = directory.set_status(
            conn, code, status, datetime.now(UTC), redemption_blocked=block_redemptions
        )
    redemptions = "blocked" if after.redemption_blocked else "open"
    click.echo(
        f"partner {code} is {after.status.value}, redemptions {redemptions} "
        f"(version {after.version})"
    )


_STAFF_ROLES = [r.value for r in directory.Role if r is not directory.Role.PARTNER]


def _print_issued(credential: directory.Credential, token: str) -> None:
    """Print the token once, after the commit, so a printed token always works."""
    owner = f"partner {credential.partner}" if credential.partner else f"staff {credential.staff}"
    click.echo(
        f"credential {credential.id} ({credential.role.value}, {owner}); "
        "the token below is shown once, store it now:",
        err=True,
    )
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
def credentials_issue(
    partner_code: str | None, staff: str | None, role: str | None, label: str | None
) -> None:
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
            conn,
            partner=partner_code,
            staff=staff,
            role=role or directory.Role.PARTNER,
            label=label,
            now=datetime.now(UTC),
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
        click.echo(
            f"{row.id}\t{row.role}\t{owner}\t{row.label or ''}\t"
            f"{row.created_at.isoformat()}\t{revoked}"
        )


@credentials.command("rotate")
@click.argument("credential_id")
@click.option(
    "--grace",
    type=click.IntRange(0, 7 * 86_400),
    default=0,
    show_default=True,
    help="Seconds the old token keeps working.",
)
@clear_errors
def credentials_rotate(credential_id: str, grace: int) -> None:
    """Issue a successor credential (token printed once); the old one stops after --grace."""
    db = _database(Settings.from_env())
    with db.transaction() as conn:
        # audit: credential rotated
        issued = directory.rotate_credential(
            conn, credential_id, datetime.now(UTC), grace=timedelta(seconds=grace)
        )
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
        issued = directory.issue_credential(
            conn, staff=name, role=role, label=label, now=datetime.now(UTC)
        )
        credential = directory.credential(conn, issued.credential_id)
    _print_issued(credential, issued.token)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--graceful-timeout",
    default=30,
    show_default=True,
    type=click.IntRange(1, 600),
    help="Seconds in-flight requests get to finish on SIGTERM.",
)
def serve(host: str, port: int, workers: int, graceful_timeout: int) -> None:
    """Serve the REST API (and its docs at /docs) under gunicorn."""
    run_gunicorn(host, port, workers, graceful_timeout)


def run_gunicorn(
    host: str,
    port: int,
    workers: int,
    graceful_timeout: int = 30,
    load: Callable[[], Any] | None = None,
) -> None:
    """Serve a WSGI app (the REST API unless ``load`` gives another) under gunicorn."""
    from gunicorn.app.base import BaseApplication

    def _api() -> Any:
        from api.wsgi import app

        return app

    class _Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("graceful_timeout", graceful_timeout)
            self.cfg.set("accesslog", None)
            # Newer gunicorn opens one control socket per user; two servers on one host (the
            # API and a witness) would take it from each other.
            if "control_socket_disable" in self.cfg.settings:
                self.cfg.set("control_socket_disable", True)

        def load(self) -> Any:
            return (load or _api)()

    _Server().run()


# -- witnesses and published checkpoints -----------------------------------------------------------


@main.group()
def witness() -> None:
    """A partner's witness: cosigns checkpoints only if they extend the last one it cosigned."""


@witness.command("init")
@click.option("--name", required=True, help="The witness's key name, e.g. partner.example/witness.")
@click.option(
    "--state",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The witness's state file (SQLite), created now.",
)
@click.option(
    "--log-key",
    "log_keys",
    required=True,
    multiple=True,
    help="Verifier key of a log to witness (repeatable; `coalition keys show` prints it).",
)
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to create the witness key, mode 600 (default: STATE.key).",
)
@clear_errors
def witness_init(name: str, state: Path, log_keys: tuple[str, ...], key_file: Path | None) -> None:
    """Create a witness's key and state; print its verifier key (give it to the operator)."""
    from audit.witness import create_witness
    from ledger.note import NoteVerifier

    logs = [NoteVerifier.from_vkey(vkey) for vkey in log_keys]
    created = create_witness(state, name, logs, key_file)
    key_path = key_file or state.with_name(state.name + ".key")
    click.echo(f"created witness state {state} and key {key_path} (mode 600)", err=True)
    click.echo(created.vkey)


@witness.command("serve")
@click.option(
    "--state",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The state file made by `coalition witness init`.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8100, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64))
@clear_errors
def witness_serve(state: Path, host: str, port: int, workers: int) -> None:
    """Serve C2SP tlog-witness POST /add-checkpoint under gunicorn."""
    from api.witness_app import create_witness_app
    from audit.witness import load_witness

    loaded = load_witness(state)
    click.echo(f"witness {loaded.vkey} at http://{host}:{port}/add-checkpoint", err=True)
    witness_app = create_witness_app(loaded)
    run_gunicorn(host, port, workers, load=lambda: witness_app)


@main.group()
def checkpoint() -> None:
    """Signed checkpoints: publish the latest once a quorum of witnesses has cosigned it."""


@checkpoint.command("publish")
@click.option(
    "--witness",
    "witness_specs",
    required=True,
    multiple=True,
    help="A witness as URL=VKEY: its add-checkpoint URL prefix and cosignature key (repeatable).",
)
@click.option("--quorum", required=True, type=click.IntRange(1), help="Cosignatures required.")
@click.option(
    "--timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1, 300),
    help="Seconds to wait for each witness.",
)
@clear_errors
def checkpoint_publish(witness_specs: tuple[str, ...], quorum: int, timeout: float) -> None:
    """Ask every witness to cosign the latest checkpoint; publish it only with the quorum."""
    from audit.publish import parse_witness, publish_checkpoint

    endpoints = [parse_witness(spec) for spec in witness_specs]
    db = _database(Settings.from_env())
    with db.transaction() as conn:
        result = publish_checkpoint(conn, None, endpoints, quorum, _http_post(timeout))
    if result.already:
        click.echo(
            f"{result.log} at size {result.size} is already published "
            f"({', '.join(result.witnesses)})"
        )
        return
    for outcome in result.outcomes:
        status = "cosigned" if outcome.ok else f"refused ({outcome.status or 'no answer'})"
        click.echo(f"{outcome.witness}\t{outcome.url}\t{status}\t{outcome.detail}", err=True)
    if not result.published:
        raise click.ClickException(
            f"quorum not met: {len(result.witnesses)} of {quorum} witnesses cosigned "
            f"{result.log} at size {result.size}; nothing published"
        )
    click.echo(
        f"published {result.log} at size {result.size}, cosigned by "
        f"{len(result.witnesses)} of {len(endpoints)} witnesses (quorum {quorum})"
    )


def _http_post(timeout: float) -> Callable[[str, bytes], tuple[int, str, bytes]]:
    """POST text/plain with urllib; any transport failure becomes an OSError."""
    import http.client
    import urllib.error
    import urllib.request

    limit = 64 * 1024

    def post(url: str, body: bytes) -> tuple[int, str, bytes]:
        # parse_witness admits only http:// and https:// URLs.
        request = urllib.request.Request(  # noqa: S310
            url, data=body, method="POST", headers={"Content-Type": "text/plain"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                kind = response.headers.get("Content-Type", "")
                return response.status, kind, response.read(limit)
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("Content-Type", ""), error.read(limit)
        except http.client.HTTPException as error:
            raise OSError(f"bad HTTP answer: {error!r}") from error

    return post


# -- settlement ------------------------------------------------------------------------------------


@main.group()
def settle() -> None:
    """Settlement: close a period, prepare, approve (four eyes), pay, verify."""


def _finance_user(function: F) -> F:
    """The ``--as NAME`` option: the finance user taking the step, recorded with it."""
    return click.option(
        "--as", "user", required=True, metavar="NAME", help="Finance user taking the step."
    )(function)


def _period_argument(function: F) -> F:
    return click.argument("period")(function)


def _audit_step(conn: Any, user: str, action: str, period: str, after: dict[str, Any]) -> None:
    """Record a settlement step taken at the command line in the audit log (its transaction)."""
    from audit import log as audit_log

    audit_log.record(
        conn,
        actor=user,
        role="finance",
        action=action,
        now=datetime.now(UTC),
        credential="cli",
        source="cli",
        subject=f"settlement:{period}",
        after=after,
    )


@settle.command("close")
@_period_argument
@_finance_user
@click.option(
    "--witness",
    "witness_specs",
    multiple=True,
    help="A witness as URL=VKEY (repeatable); default: those saved by `settle witnesses`.",
)
@click.option("--quorum", type=click.IntRange(1), help="Cosignatures required (with --witness).")
@click.option(
    "--timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1, 300),
    help="Seconds to wait for each witness.",
)
@clear_errors
def settle_close(
    period: str, user: str, witness_specs: tuple[str, ...], quorum: int | None, timeout: float
) -> None:
    """Close PERIOD on the signed checkpoint covering it (integrating what waits first).

    With witnesses (given here or saved), the checkpoint must be cosigned by their quorum: without
    it the close is refused and nothing is recorded.
    """
    from api.resources.settlement import close_detail, close_period
    from settlement import service

    settings = Settings.from_env()
    db = _database(settings)
    if witness_specs or quorum is not None:
        policy: service.WitnessPolicy | None = _witness_policy(witness_specs, quorum)
    else:
        with db.transaction() as conn:
            policy = service.close_witness_policy(conn)
    close = close_period(
        db.transaction,
        period,
        now=datetime.now(UTC),
        by=user,
        integrator=log_integrator(_signer(settings)),
        policy=policy,
        http_post=_http_post(timeout),
        record=lambda conn, close: _audit_step(
            conn, user, "settlement.close", close.period.label, close_detail(close)
        ),
    )
    witnesses = service.close_cosigners(close)
    click.echo(
        f"{close.period.label} closed by {close.closed_by} on checkpoint "
        f"{close.checkpoint.log} size {close.checkpoint.size}"
        + (f", cosigned by {', '.join(witnesses)}" if witnesses else "")
    )


def _witness_policy(specs: tuple[str, ...], quorum: int | None) -> Any:
    """The witnesses and quorum given on the command line, each witness parsed and checked."""
    from audit.publish import parse_witness
    from settlement.service import WitnessPolicy

    if not specs or quorum is None:
        raise click.UsageError("give --witness (one or more) together with --quorum")
    for spec in specs:
        parse_witness(spec)
    return WitnessPolicy(tuple(specs), quorum)


@settle.command("witnesses")
@click.option(
    "--witness", "witness_specs", multiple=True, help="A witness as URL=VKEY (repeatable)."
)
@click.option("--quorum", type=click.IntRange(1), help="Cosignatures a close requires.")
@click.option("--clear", is_flag=True, help="Forget the witnesses: closes rest on the log key.")
@clear_errors
def settle_witnesses(witness_specs: tuple[str, ...], quorum: int | None, clear: bool) -> None:
    """Show, save (--witness … --quorum K) or --clear the witnesses every close waits for."""
    from settlement import service

    db = _database(Settings.from_env())
    with db.transaction() as conn:
        if clear:
            if witness_specs or quorum is not None:
                raise click.UsageError("--clear takes no --witness or --quorum")
            service.set_close_witness_policy(conn, None, datetime.now(UTC))
        elif witness_specs or quorum is not None:
            service.set_close_witness_policy(
                conn, _witness_policy(witness_specs, quorum), datetime.now(UTC)
            )
        policy = service.close_witness_policy(conn)
    if policy is None:
        click.echo("no witnesses: closes rest on the log's signature alone")
        return
    click.echo(f"closes wait for {policy.quorum} of {len(policy.witnesses)} witnesses:")
    for spec in policy.witnesses:
        click.echo(f"  {spec}")


@settle.command("proofs")
@_period_argument
@click.option("--partner", required=True, help="The statement's partner.")
@click.option(
    "--line", "number", required=True, type=click.IntRange(1), help="Line number, from 1."
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write JSON Lines here."
)
@clear_errors
def settle_proofs(period: str, partner: str, number: int, out: Path | None) -> None:
    """The entries line N of PARTNER's PERIOD statement sums, each with its inclusion proof.

    JSON Lines: the line and the signed checkpoint of the close first, then one entry per line
    (leaf, index, points, proof against that checkpoint). Exit 1 if the points do not add up.
    """
    from api.resources.settlement import line_proofs_json
    from settlement import proofs

    db = _database(Settings.from_env())
    total = count = 0
    sink = out.open("w", encoding="utf-8") if out is not None else None
    try:
        with db.engine.connect() as conn:
            for page in proofs.all_line_proofs(conn, period, partner, number):
                document = line_proofs_json(page)
                items = document.pop("items")
                if count == 0:
                    document.pop("next_cursor")
                    _emit(sink, document)
                for item in items:
                    _emit(sink, item)
                count += len(items)
                total += sum(entry.points for entry in page.entries)
                line = page.line
    finally:
        if sink is not None:
            sink.close()
    summary = f"{count} entries, {total} points; the line counts {line.points}"
    if total != line.points:
        raise click.ClickException(f"{summary}: they do not add up")
    click.echo(summary + (f", written to {out}" if out is not None else ""), err=True)


def _emit(sink: Any, document: dict[str, Any]) -> None:
    text = json.dumps(document, default=str, ensure_ascii=False)
    if sink is None:
        click.echo(text)
    else:
        sink.write(text + "\n")


@settle.command("prepare")
@_period_argument
@_finance_user
@clear_errors
def settle_prepare(period: str, user: str) -> None:
    """Prepare the statements of PERIOD (finance user A)."""
    from settlement import workflow

    db = _database(Settings.from_env())
    with db.transaction() as conn:
        record = workflow.prepare(conn, period, now=datetime.now(UTC), by=user)
        _audit_step(conn, user, "settlement.prepare", record.period, record.detail)
    click.echo(
        f"{period} prepared by {record.actor}: {record.detail.get('statements')} statements, "
        f"sha256 {record.detail.get('sha256')}"
    )


@settle.command("approve")
@_period_argument
@_finance_user
@clear_errors
def settle_approve(period: str, user: str) -> None:
    """Approve and post the statements of PERIOD (finance user B, not the preparer)."""
    from settlement import workflow

    db = _database(Settings.from_env())
    with db.transaction() as conn:
        record = workflow.approve(conn, period, now=datetime.now(UTC), by=user)
        _audit_step(
            conn,
            user,
            "settlement.approve",
            record.period,
            {"entries": len(record.detail["entries"])},
        )
    click.echo(f"{period} approved by {user}: {len(record.detail['entries'])} entries posted")


@settle.command("pay-file")
@_period_argument
@_finance_user
@click.option(
    "--schema",
    type=click.Choice(["pain.001.001.09", "pain.001.001.03"]),
    default="pain.001.001.09",
    show_default=True,
)
@click.option(
    "--execution-date",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="Requested execution date (default today).",
)
@click.option("--debtor-name", help="The operator's account holder (default: the setting).")
@click.option("--debtor-iban", help="The operator's IBAN; with --debtor-name and --debtor-bic.")
@click.option("--debtor-bic", help="The operator's BIC.")
@click.option("--save-debtor", is_flag=True, help="Record the debtor as the programme setting.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the XML file here."
)
@clear_errors
def settle_pay_file(
    period: str,
    user: str,
    schema: str,
    execution_date: datetime | None,
    debtor_name: str | None,
    debtor_iban: str | None,
    debtor_bic: str | None,
    save_debtor: bool,
    out: Path | None,
) -> None:
    """Make the SEPA credit-transfer file of PERIOD's payouts, validated against the XSD."""
    from settlement import payments, workflow

    given = (debtor_name, debtor_iban, debtor_bic)
    if any(given) and not all(given):
        raise click.UsageError("give all of --debtor-name, --debtor-iban and --debtor-bic")
    debtor = payments.Debtor(*given) if all(given) else None  # type: ignore[arg-type]
    now = datetime.now(UTC)
    db = _database(Settings.from_env())
    with db.transaction() as conn:
        if debtor is not None and save_debtor:
            debtor = payments.set_operator_debtor(conn, debtor, now)
        built = workflow.payment_file(
            conn,
            period,
            now=now,
            by=user,
            execution_date=(execution_date or now).date(),
            debtor=debtor,
            schema=schema,
        )
        _audit_step(
            conn,
            user,
            "settlement.payment_file",
            period,
            {"schema": schema, "sha256": None if built is None else built.sha256.hex()},
        )
    if built is None:
        click.echo(f"{period}: the operator pays nobody; no payment file")
        return
    if out is not None:
        out.write_bytes(built.document)
    click.echo(
        f"{built.schema} {built.message_id}: {built.transactions} transfers, control sum "
        f"{built.control_sum_cents / 100:.2f} EUR, sha256 {built.sha256.hex()}"
        + (f", written to {out}" if out is not None else "")
    )


@settle.command("mark-paid")
@_period_argument
@_finance_user
@click.option("--reference", required=True, help="The bank's reference of the payment(s).")
@click.option("--partner", "partners", multiple=True, help="Only this partner (repeatable).")
@clear_errors
def settle_mark_paid(period: str, user: str, reference: str, partners: tuple[str, ...]) -> None:
    """Record PERIOD's payments with the bank reference (PAYMENT entries); settles when done."""
    from settlement import workflow

    db = _database(Settings.from_env())
    with db.transaction() as conn:
        state = workflow.mark_paid(
            conn,
            period,
            reference,
            now=datetime.now(UTC),
            by=user,
            partners=list(partners) or None,
        )
        _audit_step(
            conn,
            user,
            "settlement.mark_paid",
            state.period,
            {"bank_reference": reference, "status": state.status},
        )
    for payment in state.payments:
        click.echo(
            f"{payment.partner}: {payment.amount_cents / 100:.2f} EUR paid "
            f"({payment.bank_reference}), entry {payment.entry_id}"
        )
    click.echo(f"{period}: {state.status}; outstanding: {', '.join(state.outstanding) or 'none'}")


@settle.command("statements")
@_period_argument
@click.option("--partner", help="Only this partner's statement.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write each output (json, csv, pdf, invoice) into this directory.",
)
@clear_errors
def settle_statements(period: str, partner: str | None, out: Path | None) -> None:
    """The statements of PERIOD: net, direction and each output's SHA-256."""
    from settlement import outputs, service

    db = _database(Settings.from_env())
    with db.transaction() as conn:
        run = service.statement_run(conn, period)
        produced = outputs.statement_outputs(conn, period, now=datetime.now(UTC), partner=partner)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    for statement in run.settlement.statements:
        if partner is not None and statement.partner != partner:
            continue
        click.echo(
            f"{statement.partner}: net {statement.net_cents / 100:.2f} EUR, "
            f"payable {statement.payable_cents / 100:.2f} EUR ({statement.direction})"
        )
        for output in (o for o in produced if o.statement_id == statement.id):
            suffix = "invoice.json" if output.format == "invoice" else output.format
            line = f"  {output.format:8} sha256 {output.sha256.hex()}"
            if out is not None:
                path = out / f"{period}-{statement.partner}.{suffix}"
                path.write_bytes(output.document)
                line += f"  {path}"
            click.echo(line)


@settle.command("verify")
@_period_argument
@clear_errors
def settle_verify(period: str) -> None:
    """Recompute PERIOD from the journal and compare byte for byte (exit 1 on any finding)."""
    from settlement import service

    db = _database(Settings.from_env())
    with db.engine.connect() as conn:
        findings = service.verify_period(conn, period)
    for finding in findings:
        click.echo(str(finding))
    if findings:
        raise click.ClickException(f"{period}: {len(findings)} findings")
    click.echo(f"{period}: statements reproduce byte for byte")


from api.demo import demo  # noqa: E402  (registers the demo command on the group)

main.add_command(demo)
