"""Per-partner outputs of a prepared period: JSON, CSV, PDF, and an invoice for partners who owe.

- **json**: the canonical statement document of the run, byte for byte (its hash is the one the
  run's summary cites), so a partner can check it against the settlement document;
- **csv**: gross lines per flow (points, price, exact amount, rounded amount, residue), then the
  carried-in amount, the net N, what is carried out and what is payable;
- **pdf**: the same, laid out for people (fpdf2), reproducible: its dates are the period's end;
- **invoice** (only when N > 0, the partner pays): an invoice-style canonical JSON document, what
  the partner owes and to which account, since it receives no credit transfer.

Every output is hashed (SHA-256) and recorded once in ``settlement_outputs``; rendering again
returns the recorded bytes. Outputs are functions of the stored run: regenerating them from a
verified period gives the same bytes.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.numbers import format_cents
from partners import directory
from settlement import service
from settlement import tables as t
from settlement.model import Statement, StatementRun
from settlement.periods import Period, parse_period
from settlement.statements import euros, render

#: The formats of a statement's outputs.
FORMATS = ("json", "csv", "pdf", "invoice")
MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv",
    "pdf": "application/pdf",
    "invoice": "application/json",
}


@dataclass(frozen=True, slots=True)
class Output:
    """One rendered output of one statement."""

    statement_id: str
    partner: str
    format: str
    document: bytes
    sha256: bytes


def statement_outputs(
    conn: Connection, period: Period | str, *, now: datetime, partner: str | None = None
) -> list[Output]:
    """Every output of the period's statements (or of one partner's), recorded once each."""
    label = _label(period)
    run = service.statement_run(conn, label)
    documents = dict(run.statement_documents)
    produced = []
    for statement in run.settlement.statements:
        if partner is not None and statement.partner != partner:
            continue
        stored = _stored(conn, statement.id)
        for fmt in FORMATS:
            if fmt in stored:
                produced.append(Output(statement.id, statement.partner, fmt, *stored[fmt]))
                continue
            document = _render(conn, fmt, run, statement, documents[statement.partner])
            if document is None:
                continue
            output = Output(
                statement.id, statement.partner, fmt, document, hashlib.sha256(document).digest()
            )
            conn.execute(
                t.settlement_outputs.insert().values(
                    statement_id=statement.id,
                    format=fmt,
                    document=document,
                    sha256=output.sha256,
                    created_at=now,
                )
            )
            produced.append(output)
    return produced


def render_csv(run: StatementRun, statement: Statement) -> bytes:
    """Gross lines per flow, then carried in, net, carried out and payable (UTF-8, LF)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "period",
            "partner",
            "statement",
            "row",
            "line",
            "flow",
            "contract_version",
            "points_gross",
            "points_reversed",
            "points",
            "price",
            "exact",
            "amount",
            "residue",
            "signed_amount",
        ]
    )
    head = [run.period.label, statement.partner, statement.id]
    for line in statement.lines:
        writer.writerow(
            [
                *head,
                "line",
                line.id,
                line.flow.value,
                line.contract_version,
                line.points_gross,
                line.points_reversed,
                line.points,
                "" if line.price is None else str(line.price),
                euros(line.exact),
                format_cents(line.amount_cents),
                euros(line.residue),
                format_cents(line.signed_cents),
            ]
        )
    for row, cents in (
        ("carried_in", statement.carried_in_cents),
        ("net", statement.net_cents),
        ("carried_out", statement.carried_out_cents),
        ("payable", statement.payable_cents),
    ):
        writer.writerow([*head, row, "", "", "", "", "", "", "", "", "", "", format_cents(cents)])
    return buffer.getvalue().encode("utf-8")


def render_invoice(
    run: StatementRun, statement: Statement, legal_name: str, statement_sha256: bytes
) -> bytes:
    """The canonical JSON invoice of a statement whose partner pays (N > 0)."""
    return render(
        {
            "v": 1,
            "type": "invoice",
            "number": f"INV-{run.period.label}-{statement.partner}",
            "period": run.period.label,
            "statement": statement.id,
            "statement_sha256": statement_sha256.hex(),
            "bill_to": {"partner": statement.partner, "legal_name": legal_name},
            "currency": "EUR",
            "lines": [
                {
                    "line": line.id,
                    "flow": line.flow.value,
                    "contract_version": line.contract_version,
                    "points": line.points,
                    "amount": format_cents(line.signed_cents),
                }
                for line in statement.lines
            ],
            "carried_in": format_cents(statement.carried_in_cents),
            "total_due": format_cents(statement.payable_cents),
        }
    )


def render_pdf(run: StatementRun, statement: Statement, legal_name: str) -> bytes:
    """A one-page PDF of the statement (fpdf2, core fonts), dated at the period's end."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_creation_date(run.period.end)
    pdf.set_title(f"Statement {run.period.label} {statement.partner}")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(
        0, 10, _latin(f"Settlement statement {run.period.label}"), new_x="LMARGIN", new_y="NEXT"
    )
    pdf.set_font("Helvetica", size=10)
    for text in (
        f"Partner: {statement.partner} ({legal_name})",
        f"Statement: {statement.id}",
        f"Checkpoint: {run.settlement.checkpoint.log} size {run.settlement.checkpoint.size}",
    ):
        pdf.cell(0, 6, _latin(text), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    widths = (40, 12, 30, 25, 35, 35)
    pdf.set_font("Helvetica", "B", 9)
    for width, title in zip(
        widths, ("Flow", "Ver.", "Points", "Price", "Amount EUR", "Residue EUR"), strict=True
    ):
        pdf.cell(width, 6, title, border=1)
    pdf.ln()
    pdf.set_font("Helvetica", size=9)
    for line in statement.lines:
        cells = (
            line.flow.value,
            str(line.contract_version),
            f"{line.points:,}",
            "" if line.price is None else str(line.price),
            format_cents(line.signed_cents),
            euros(line.residue),
        )
        for width, text in zip(widths, cells, strict=True):
            pdf.cell(width, 6, text, border=1)
        pdf.ln()
    pdf.ln(4)
    pdf.set_font("Helvetica", "B", 10)
    for title, cents in (
        ("Carried in", statement.carried_in_cents),
        ("Net N", statement.net_cents),
        ("Carried forward", statement.carried_out_cents),
        ("Payable", statement.payable_cents),
    ):
        pdf.cell(60, 6, title)
        pdf.cell(40, 6, f"{format_cents(cents)} EUR", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=9)
    pdf.cell(0, 6, _latin(f"Direction: {statement.direction}"), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def _render(
    conn: Connection, fmt: str, run: StatementRun, statement: Statement, json_document: bytes
) -> bytes | None:
    if fmt == "json":
        return json_document
    if fmt == "csv":
        return render_csv(run, statement)
    legal_name = directory.partner(conn, statement.partner).legal_name
    if fmt == "pdf":
        return render_pdf(run, statement, legal_name)
    if statement.payable_cents <= 0:
        return None  # no invoice: the operator pays, or nothing changes hands
    return render_invoice(run, statement, legal_name, hashlib.sha256(json_document).digest())


def _stored(conn: Connection, statement_id: str) -> dict[str, tuple[bytes, bytes]]:
    o = t.settlement_outputs.c
    rows = conn.execute(
        sa.select(o.format, o.document, o.sha256).where(o.statement_id == statement_id)
    ).all()
    return {row.format: (bytes(row.document), bytes(row.sha256)) for row in rows}


def _latin(text: str) -> str:
    """Core PDF fonts are Latin-1: anything else becomes '?'."""
    return text.encode("latin-1", "replace").decode("latin-1")


def _label(period: Period | str) -> str:
    return (period if isinstance(period, Period) else parse_period(period)).label
