"""What ``coalition demo`` does once its simulated days are over, and how it serves the result.

After the simulation (:mod:`api.demo`) the coalition is settled the way an operator settles it:

1. every completed month is closed on a signed checkpoint, and that checkpoint is taken to two
   partner witnesses (SUPER's and RAIL's, each with its own Ed25519 key and state file) through
   :func:`audit.publish.publish_checkpoint`, the code ``coalition checkpoint publish`` runs, with a
   quorum of two; the witnesses are in-process, reached through their C2SP HTTP app;
2. finance user A prepares the statements and finance user B approves and posts them, through the
   four-eyes workflow (:mod:`settlement.workflow`); each step is recorded in the audit log;
3. the pain.001 file of the operator's payouts and each partner's JSON, CSV, PDF (and invoice) are
   written to disk; the period is marked paid with a bank reference;
4. the ledger, every period, every payment file, the cosigned checkpoint and a receipt are
   verified, and a summary is printed and saved as JSON.

Then it issues API credentials through the credential service, writes them with everything a shell
needs into ``coalition-demo.env`` (mode 600; the README's tour sources it), and serves the REST API
on the demo database until Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import sqlalchemy as sa
import xmlschema
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import ledger.tables as lt
from api.config import Settings, format_master_key
from api.witness_app import create_witness_app
from audit import log as audit_log
from audit.publish import (
    HttpPost,
    Publication,
    WitnessEndpoint,
    latest_cosigned,
    parse_witness,
    publish_checkpoint,
)
from audit.verify import verify_database
from audit.witness import create_witness
from ledger.consistency import Finding
from ledger.db import Database
from ledger.errors import LedgerError
from ledger.integrator import Integrator
from ledger.keys import write_secret_file
from ledger.logstore import SqlLogStore
from ledger.note import NoteSigner, parse_note, verify_cosignature
from ledger.numbers import format_cents
from ledger.receipts import receipt, verify_receipt
from ledger.repository import SqlLedgerStore
from ledger.service import Ledger
from partners import directory, tiers
from partners import tables as pt
from partners.vault import MasterKey
from settlement import outputs, payments, workflow
from settlement import service as settle
from settlement.periods import Period, period_containing

#: The two finance users of the four-eyes workflow, and the auditor the demo issues a token to.
PREPARER, APPROVER, AUDITOR = "finance-anne", "finance-bruno", "auditor-chloe"

#: The partners that run a witness of the operator's log (quorum: both).
WITNESSES = ("SUPER", "RAIL")
QUORUM = 2

#: The operator's own bank account, the debtor of every payout.
OPERATOR_ACCOUNT = payments.Debtor(
    "Coalition Démo Opérateur SAS", "FR3730004000050001234567890", "BNPAFRPP"
)

ENV_FILE = "coalition-demo.env"


@dataclass(frozen=True)
class DemoFiles:
    """Where the demo keeps its database, keys and outputs: beside the database, named after it."""

    database: Path

    @property
    def directory(self) -> Path:
        return self.database.parent

    @property
    def log_key(self) -> Path:
        return self.database.with_suffix(".key")

    @property
    def master_key(self) -> Path:
        return self.database.with_suffix(".master.key")

    @property
    def receipt(self) -> Path:
        return self.database.with_suffix(".receipt.json")

    @property
    def summary(self) -> Path:
        return self.database.with_suffix(".summary.json")

    @property
    def env(self) -> Path:
        return self.directory / ENV_FILE

    @property
    def outputs(self) -> Path:
        """Statements, payment files and the witnesses' state."""
        return self.database.with_name(self.database.stem + "-files")

    def _all(self) -> list[Path]:
        db = self.database
        sidecars = [Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}-journal")]
        return [db, *sidecars, self.log_key, self.master_key, self.receipt, self.summary, self.env]

    def prepare(self, fresh: bool) -> None:
        """Refuse to touch an existing demo unless ``fresh``; clear what an earlier run left."""
        if self.database.exists() and not fresh:
            raise click.ClickException(f"{self.database} exists; use --fresh to recreate it")
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in self._all():
            path.unlink(missing_ok=True)
        if self.outputs.exists():
            shutil.rmtree(self.outputs)

    def save_master_key(self, key: MasterKey) -> None:
        """Keep the vault key beside the database so the served API can open members' data."""
        write_secret_file(self.master_key, format_master_key(key))


# -- settling the months -------------------------------------------------------------------------


@dataclass
class MonthResult:
    """One settled month: its statements, and what was written for it."""

    period: Period
    run: Any
    """The :class:`settlement.model.StatementRun`."""
    prepared_by: str
    approved_by: str
    status: str
    files: list[Path] = field(default_factory=list)
    payment_file: Path | None = None
    payment_schema: str | None = None


@dataclass
class Finish:
    """Everything the demo did after the simulation, for the summary."""

    months: list[MonthResult]
    publications: list[Publication]
    witness_keys: dict[str, str]
    witness_files: list[Path]
    """Each witness's state file and key file."""
    verification: dict[str, Any]
    receipt_path: Path
    seconds: dict[str, float]
    """Wall-clock time of the settlement (with publication) and of the verification."""


def in_process_witnesses(
    directory: Path, log_signer: NoteSigner
) -> tuple[list[WitnessEndpoint], HttpPost]:
    """Create the partners' witnesses and an ``http_post`` that reaches their C2SP app in-process.

    Each witness has its own key (mode 600) and SQLite state in ``directory/<PARTNER>/``, and
    trusts the operator's log key; requests go through the same Flask app ``coalition witness
    serve`` runs, so the operator's publishing code sees real HTTP statuses and bodies.
    """
    clients, endpoints = {}, []
    for code in WITNESSES:
        home = directory / code
        home.mkdir(parents=True, exist_ok=True)
        witness = create_witness(
            home / "state.db", f"witness.{code.lower()}.demo.example", [log_signer.verifier]
        )
        host = f"witness-{code.lower()}.demo.invalid"
        clients[host] = create_witness_app(witness).test_client()
        endpoints.append(parse_witness(f"http://{host}={witness.vkey}"))

    def post(url: str, body: bytes) -> tuple[int, str, bytes]:
        parts = urlsplit(url)
        client = clients.get(parts.netloc)
        if client is None:
            raise OSError(f"no witness at {url}")
        response = client.post(parts.path, data=body, content_type="text/plain")
        return response.status_code, response.content_type or "", response.get_data()

    return endpoints, post


def completed_months(start: datetime, now: datetime) -> list[Period]:
    """The calendar months of the run whose close is due (their end + the close delay is past)."""
    months, month = [], period_containing(start)
    while month.end + settle.CLOSE_DELAY <= now:
        months.append(month)
        month = period_containing(month.end)
    return months


def finish(
    console: Console,
    db: Database,
    kernel: Ledger,
    integrator: Integrator,
    signer: NoteSigner,
    files: DemoFiles,
    *,
    start: datetime,
    now: datetime,
) -> Finish:
    """Close, settle, publish and verify the simulated run (see the module docstring)."""
    started = time.perf_counter()
    files.outputs.mkdir(parents=True, exist_ok=True)
    endpoints, post = in_process_witnesses(files.outputs / "witnesses", signer)
    months = completed_months(start, now)
    with db.transaction() as conn:
        payments.set_operator_debtor(conn, OPERATOR_ACCOUNT, now)
    results, publications = [], []
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task("settling the completed months", total=max(1, len(months) * 6))
        for month in months:
            result, published = _settle_month(
                db, kernel, integrator, month, now, files, endpoints, post, progress, task
            )
            results.append(result)
            publications.append(published)
        if not months:
            progress.advance(task)
        integrator.integrate_all(db)
        publications.append(_publish(db, endpoints, post, now))
        settled = time.perf_counter()
        checks = progress.add_task("verifying everything", total=4)
        verification, receipt_path = _verify(
            db, signer, files, results, endpoints, progress, checks
        )
    seconds = {
        "settlement": round(settled - started, 1),
        "verification": round(time.perf_counter() - settled, 1),
    }
    return Finish(
        results,
        publications,
        {e.name: e.verifier.vkey for e in endpoints},
        sorted(p for p in (files.outputs / "witnesses").rglob("*") if p.is_file()),
        verification,
        receipt_path,
        seconds,
    )


def _settle_month(
    db: Database,
    kernel: Ledger,
    integrator: Integrator,
    month: Period,
    now: datetime,
    files: DemoFiles,
    endpoints: list[WitnessEndpoint],
    post: HttpPost,
    progress: Progress,
    task: Any,
) -> tuple[MonthResult, Publication]:
    label = month.label
    progress.update(task, description=f"{label}: close on a signed checkpoint")
    with db.transaction() as conn:
        close = settle.close_period(conn, month, now=now, closed_by=PREPARER, integrator=integrator)
        _audit(
            conn,
            PREPARER,
            "settlement.close",
            label,
            {"checkpoint_size": close.checkpoint.size},
            now,
        )
    progress.advance(task)
    progress.update(task, description=f"{label}: two partner witnesses cosign the checkpoint")
    published = _publish(db, endpoints, post, now)
    progress.advance(task)
    progress.update(task, description=f"{label}: {PREPARER} prepares the statements")
    with db.transaction() as conn:
        prepared = workflow.prepare(conn, month, now=now, by=PREPARER)
        _audit(conn, PREPARER, "settlement.prepare", label, prepared.detail, now)
    progress.advance(task)
    progress.update(task, description=f"{label}: {APPROVER} approves and posts them")
    with db.transaction() as conn:
        posted = workflow.approve(conn, month, now=now, by=APPROVER, ledger=kernel)
        _audit(
            conn,
            APPROVER,
            "settlement.approve",
            label,
            {"entries": len(posted.detail["entries"])},
            now,
        )
    progress.advance(task)
    progress.update(task, description=f"{label}: payment file and statements")
    result = MonthResult(month, None, PREPARER, APPROVER, "posted")
    with db.transaction() as conn:
        built = workflow.payment_file(conn, month, now=now, by=APPROVER, execution_date=now.date())
        _audit(
            conn,
            APPROVER,
            "settlement.payment_file",
            label,
            {"sha256": None if built is None else built.sha256.hex()},
            now,
        )
        produced = outputs.statement_outputs(conn, month, now=now)
        result.run = settle.statement_run(conn, month)
    month_dir = files.outputs / label
    month_dir.mkdir(parents=True, exist_ok=True)
    if built is not None:
        result.payment_file = month_dir / f"{label}-payouts.{built.schema}.xml"
        result.payment_file.write_bytes(built.document)
        result.payment_schema = built.schema
        result.files.append(result.payment_file)
    for output in produced:
        suffix = "invoice.json" if output.format == "invoice" else output.format
        path = month_dir / f"{label}-{output.partner}.{suffix}"
        path.write_bytes(output.document)
        result.files.append(path)
    progress.advance(task)
    progress.update(task, description=f"{label}: marked paid")
    with db.transaction() as conn:
        state = workflow.mark_paid(
            conn, month, f"DEMO-BANK-{label}", now=now, by=APPROVER, ledger=kernel
        )
        _audit(conn, APPROVER, "settlement.mark_paid", label, {"status": state.status}, now)
    result.status = state.status
    progress.advance(task)
    return result, published


def _publish(
    db: Database, endpoints: list[WitnessEndpoint], post: HttpPost, now: datetime
) -> Publication:
    with db.transaction() as conn:
        published = publish_checkpoint(conn, None, endpoints, QUORUM, post, now=now)
    if not published.published:
        refused = "; ".join(f"{o.witness}: {o.detail}" for o in published.outcomes if not o.ok)
        raise click.ClickException(f"the witnesses did not cosign size {published.size}: {refused}")
    return published


def _audit(
    conn: Any, user: str, action: str, period: str, after: Mapping[str, Any], now: datetime
) -> None:
    audit_log.record(
        conn,
        actor=user,
        role="finance",
        action=action,
        now=now,
        credential="demo",
        source="demo",
        subject=f"settlement:{period}",
        after=dict(after),
    )


def _verify(
    db: Database,
    signer: NoteSigner,
    files: DemoFiles,
    months: list[MonthResult],
    endpoints: list[WitnessEndpoint],
    progress: Progress,
    task: Any,
) -> tuple[dict[str, Any], Path]:
    """Every check the demo can make, each one's result by name."""
    result: dict[str, Any] = {}
    with db.engine.connect() as conn:
        progress.update(
            task, description="verifying the journal, caches, log, checkpoints, statements"
        )
        report = verify_database(conn, [signer.verifier], workers=os.cpu_count() or 1)
        result["ledger"] = {"ok": report.ok, "findings": len(report.findings)}
        if not report.ok:
            result["ledger"]["report"] = report.to_text()
        progress.advance(task)
        result["periods"] = findings_by_period(report.findings, [m.period.label for m in months])
        progress.advance(task)
        progress.update(task, description="checking the cosigned checkpoint and a receipt")
        result["cosigned"] = _check_cosigned(conn, endpoints)
        sample_id = conn.scalar(
            sa.select(lt.leaves.c.entry_id)
            .where(lt.leaves.c.entry_id.is_not(None))
            .order_by(lt.leaves.c.idx.desc())
            .limit(1)
        )
        sample = receipt(conn, sample_id) if sample_id is not None else None
    if sample is not None:
        try:
            verify_receipt(sample, [signer.verifier])
            result["receipt"] = {"ok": True, "entry": str(sample.entry_id)}
        except LedgerError as exc:
            result["receipt"] = {"ok": False, "error": exc.message}
        files.receipt.write_text(json.dumps(sample.to_json(), indent=2), encoding="utf-8")
    else:
        result["receipt"] = {"ok": False, "error": "no entry in the log"}
    progress.advance(task)
    progress.update(task, description="validating the payment files against the XSD")
    checked: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {}  # loading an XSD takes longer than validating a file against it
    for month in months:
        if month.payment_file is None or month.payment_schema is None:
            continue
        document, schema = month.payment_file.read_bytes(), month.payment_schema
        if schema not in schemas:
            schemas[schema] = xmlschema.XMLSchema(str(payments.schema_path(schema)))
        errors = list(schemas[schema].iter_errors(document.decode("utf-8")))
        if errors:
            checked[month.payment_file.name] = {"ok": False, "error": str(errors[0].reason)}
            continue
        payouts = -sum(
            s.payable_cents for s in month.run.settlement.statements if s.payable_cents < 0
        )
        try:
            count, total = payments.check_control_sum(document, schema, expected_cents=payouts)
            checked[month.payment_file.name] = {"ok": True, "transfers": count, "cents": total}
        except LedgerError as exc:
            checked[month.payment_file.name] = {"ok": False, "error": exc.message}
    result["payment_files"] = checked
    progress.advance(task)
    result["ok"] = bool(
        result["ledger"]["ok"]
        and not any(result["periods"].values())
        and result["cosigned"]["ok"]
        and result["receipt"]["ok"]
        and all(c["ok"] for c in checked.values())
    )
    return result, files.receipt


def findings_by_period(findings: Sequence[Finding], labels: Sequence[str]) -> dict[str, list[str]]:
    """The verifier's findings about each period, by label. It recomputed every prepared period
    from the journal and checked each statement's signed note; such a finding's subject is the
    period ("2026-01") or the period and a partner ("2026-01 RAIL")."""
    return {
        label: [str(f) for f in findings if f.subject.split(" ", 1)[0] == label] for label in labels
    }


def _check_cosigned(conn: Any, endpoints: list[WitnessEndpoint]) -> dict[str, Any]:
    """The latest checkpoint is published, with a valid cosignature from every witness."""
    store = SqlLogStore(conn)
    log = store.current_log()
    latest = store.checkpoint(log) if log is not None else None
    published = latest_cosigned(conn, log)
    if latest is None or published is None:
        return {"ok": False, "error": "no published checkpoint"}
    note = parse_note(published["note"])
    valid = []
    for endpoint in endpoints:
        for signature in note.signatures:
            try:
                verify_cosignature(signature.line().rstrip("\n"), note.text, endpoint.verifier)
            except LedgerError:
                continue
            valid.append(endpoint.name)
            break
    return {
        "ok": published["size"] == latest.size and len(valid) >= QUORUM,
        "size": published["size"],
        "latest_size": latest.size,
        "cosigned_by": valid,
    }


# -- the summary ---------------------------------------------------------------------------------


def summarise(
    db: Database,
    kernel: Ledger,
    partner_names: Mapping[str, str],
    done: Finish,
    *,
    members: int,
    refused: int,
) -> dict[str, Any]:
    """The figures the demo prints, read back from the database (and saved as JSON)."""
    with db.engine.connect() as conn:
        store = SqlLedgerStore(conn)
        partners_out: dict[str, Any] = {}
        for code in partner_names:
            nets = {
                m.period.label: next(
                    (s.net_cents for s in m.run.settlement.statements if s.partner == code), 0
                )
                for m in done.months
            }
            partners_out[code] = {
                "name": partner_names[code],
                "issued_points": -kernel.balance(store, f"partner:{code}:issued"),
                "redeemed_points": kernel.balance(store, f"partner:{code}:redeemed"),
                "net_cents_by_period": nets,
                "net_cents": sum(nets.values()),
            }
        outstanding = int(
            conn.scalar(
                sa.select(sa.func.coalesce(sa.func.sum(lt.balances.c.balance), 0)).where(
                    lt.balances.c.account.like("member:%")
                )
            )
        )
        point_value = settle.get_point_value(conn)
        levels = tiers.tier_levels(conn)
        latest_tier = (
            sa.select(
                pt.tier_history.c.member_id,
                pt.tier_history.c.tier,
                sa.func.row_number()
                .over(
                    partition_by=pt.tier_history.c.member_id, order_by=pt.tier_history.c.id.desc()
                )
                .label("r"),
            )
        ).subquery()
        counts = dict(
            conn.execute(
                sa.select(latest_tier.c.tier, sa.func.count())
                .where(latest_tier.c.r == 1)
                .group_by(latest_tier.c.tier)
            ).all()
        )
        breakage = kernel.balance(store, "program:breakage")
        kinds = dict(
            conn.execute(
                sa.select(lt.entries.c.kind, sa.func.count()).group_by(lt.entries.c.kind)
            ).all()
        )
    distribution = {level.name: int(counts.get(level.name, 0)) for level in levels}
    if levels:
        lowest = min(levels, key=lambda level: level.threshold)
        distribution[lowest.name] += members - sum(counts.values())
    liability_cents = int(
        (Decimal(outstanding) * point_value * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    )
    files = [str(path) for m in done.months for path in m.files]
    files += [str(path) for path in done.witness_files]
    return {
        "members": members,
        "requests_refused": refused,
        "partners": partners_out,
        "periods": [
            {
                "period": m.period.label,
                "prepared_by": m.prepared_by,
                "approved_by": m.approved_by,
                "status": m.status,
                "payment_file": None if m.payment_file is None else str(m.payment_file),
            }
            for m in done.months
        ],
        "outstanding_points": outstanding,
        "point_value": str(point_value),
        "outstanding_liability_cents": liability_cents,
        "breakage_points": breakage,
        "entries": sum(kinds.values()),
        "entries_by_kind": {kind: int(count) for kind, count in sorted(kinds.items())},
        "tiers": distribution,
        "witnesses": done.witness_keys,
        "published_sizes": [p.size for p in done.publications],
        "verification": done.verification,
        "seconds": done.seconds,
        "files": files,
    }


def _figure_column(table: Table, title: str) -> None:
    """A column of figures: never wrapped or cut to an ellipsis, whatever the terminal's width."""
    table.add_column(title, justify="right", no_wrap=True, overflow="fold")


def print_summary(console: Console, summary: dict[str, Any], paths: Mapping[str, Path]) -> None:
    periods = [p["period"] for p in summary["periods"]]
    table = Table(title="Partners, whole run", caption="net > 0: the partner pays the operator")
    table.add_column("partner", no_wrap=True)
    table.add_column("name")
    for title in ("issued pts", "redeemed pts", "net € (settled)"):
        _figure_column(table, title)
    nets = Table(title="Net € by settled month")
    nets.add_column("partner", no_wrap=True)
    for period in periods:
        _figure_column(nets, period)
    for code, figures in summary["partners"].items():
        table.add_row(
            code,
            figures["name"],
            f"{figures['issued_points']:,}",
            f"{figures['redeemed_points']:,}",
            format_cents(figures["net_cents"]),
        )
        nets.add_row(code, *(format_cents(figures["net_cents_by_period"][p]) for p in periods))
    console.print(table)
    if periods:
        console.print(nets)
    else:
        console.print("no month was completed during the run: nothing to settle (try --days 40)")
    for period in summary["periods"]:
        console.print(
            f"{period['period']}: prepared by {period['prepared_by']}, approved by "
            f"{period['approved_by']}, {period['status']}"
        )
    console.print(
        f"outstanding liability: {summary['outstanding_points']:,} points = "
        f"{format_cents(summary['outstanding_liability_cents'])} € at "
        f"{summary['point_value']} €/point;  breakage (expired): {summary['breakage_points']:,} "
        f"points in {summary['entries_by_kind'].get('EXPIRE', 0):,} EXPIRE entries"
    )
    console.print(f"journal: {summary['entries']:,} entries", highlight=False)
    tiers_line = ", ".join(f"{name}: {count:,}" for name, count in summary["tiers"].items())
    console.print(f"tiers of the {summary['members']:,} members: {tiers_line}")
    console.print(f"requests refused for a business reason: {summary['requests_refused']:,}")
    verification = summary["verification"]
    cosigned = verification["cosigned"]
    console.print(
        f"checkpoint size {cosigned.get('size')} cosigned by "
        f"{', '.join(cosigned.get('cosigned_by', [])) or 'nobody'} (quorum {QUORUM})"
    )
    if not verification["ledger"]["ok"]:
        console.print(verification["ledger"].get("report", ""))
    status = "[green]OK[/green]" if verification["ok"] else "[red]FAILED[/red]"
    console.print(f"verification: {status}")
    took = ", ".join(f"{stage} {seconds} s" for stage, seconds in summary["seconds"].items())
    console.print(f"wall-clock time: {took}", highlight=False)
    console.print("files written:")
    for what, path in paths.items():
        console.print(f"  {what}: {path}", markup=False, highlight=False)
    for path in summary["files"]:
        console.print(f"  {path}", markup=False, highlight=False)


# -- credentials and serving ---------------------------------------------------------------------


def issue_credentials(db: Database, now: datetime) -> dict[str, str]:
    """Tokens for two partners, a finance user and an auditor, issued by the credential service."""
    wanted = {
        "SUPER_TOKEN": {"partner": "SUPER", "role": directory.Role.PARTNER},
        "RAIL_TOKEN": {"partner": "RAIL", "role": directory.Role.PARTNER},
        "FINANCE_TOKEN": {"staff": PREPARER, "role": directory.Role.FINANCE},
        "AUDITOR_TOKEN": {"staff": AUDITOR, "role": directory.Role.AUDITOR},
    }
    tokens = {}
    with db.transaction() as conn:
        for name, owner in wanted.items():
            issued = directory.issue_credential(conn, label="coalition demo", now=now, **owner)
            tokens[name] = issued.token
    return tokens


def environment(
    files: DemoFiles,
    host: str,
    port: int,
    signer: NoteSigner,
    tokens: Mapping[str, str],
    period: str | None,
) -> dict[str, str]:
    """What a shell needs to follow the README's tour against this demo."""
    env = {
        "API": f"http://{host}:{port}",
        "COALITION_DATABASE_URL": f"sqlite:///{files.database.resolve()}",
        "COALITION_LOG_KEY_FILE": str(files.log_key.resolve()),
        "COALITION_MASTER_KEY_FILE": str(files.master_key.resolve()),
        "VKEY": signer.verifier.vkey,
        **tokens,
    }
    if period is not None:
        env["PERIOD"] = period
    return env


def write_environment(files: DemoFiles, env: Mapping[str, str]) -> None:
    """``coalition-demo.env``: ``export NAME=value`` lines, mode 600 (it holds tokens)."""
    files.env.unlink(missing_ok=True)
    write_secret_file(files.env, "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))


def print_credentials(console: Console, files: DemoFiles, env: Mapping[str, str]) -> None:
    console.rule("Credentials (also in " + str(files.env) + ", mode 600)")
    console.print(
        f"Paste these into another shell, or run: [bold]source {files.env}[/bold]", highlight=False
    )
    for name, value in env.items():
        console.print(
            f"export {name}={shlex.quote(value)}", highlight=False, markup=False, soft_wrap=True
        )
    console.rule("Try")
    examples = [
        'curl -s "$API/healthz"',
        'curl -s "$API/v1/checkpoints/cosigned" -H "Authorization: Bearer $AUDITOR_TOKEN"',
    ]
    if "PERIOD" in env:  # a month was settled
        examples += [
            'curl -s "$API/v1/settlement/periods/$PERIOD/statements/RAIL" '
            '-H "Authorization: Bearer $RAIL_TOKEN"',
            'curl -s "$API/v1/settlement/periods/$PERIOD/verification" '
            '-H "Authorization: Bearer $FINANCE_TOKEN"',
        ]
    examples.append('coalition audit verify --key "$VKEY"')
    for line in examples:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    console.print(
        f"API docs: {env['API']}/docs   OpenAPI: {env['API']}/openapi.json",
        highlight=False,
        soft_wrap=True,
    )


def demo_settings(files: DemoFiles) -> Settings:
    """The API's settings for the demo database (nothing is read from the environment)."""
    return Settings(
        database_url=f"sqlite:///{files.database.resolve()}",
        log_key_file=files.log_key.resolve(),
        master_key_file=files.master_key.resolve(),
    )


def serve(files: DemoFiles, host: str, port: int, workers: int = 2) -> None:
    """Serve the REST API and its docs on the demo database under gunicorn, until Ctrl-C."""
    from api.app import create_app
    from api.cli import run_gunicorn  # api.cli imports the demo: import it when it is loaded

    settings = demo_settings(files)
    run_gunicorn(host, port, workers, load=lambda: create_app(settings))
