"""Settlement statements: exported into the bundle, and checked live and offline (tamper class
``edited-statement``).

A prepared statement is stored as canonical JSON with its SHA-256 (``settlement_statements``),
listed with that hash in its period's run document (``settlement_runs``), and — once a partner has
asked for it — signed by the log key in a note that states the same hash and cites the checkpoint
of the period's close (``settlement_notes``, :mod:`settlement.notes`). Edited statements are caught:

- live (:func:`check_database`): :func:`settlement.service.verify_period` recomputes every
  prepared period from the journal and compares byte for byte (``statement-hash``,
  ``statement-document``, ``settlement-hash``, ``settlement-document``, ``control-total``,
  ``checkpoint-coverage``), and every signed note is checked against the trusted log keys and the
  stored document (``statement-signature``, ``statement-note``);
- offline (:class:`BundleStatements`): ``statements.jsonl`` carries, per period, its close (with
  the signed checkpoint it cites), the run document and every statement document exactly as
  stored, with their recorded hashes and signed notes; ``contracts.jsonl`` carries the partners'
  contract versions. The verifier checks the recorded hashes, the run document's list, the notes'
  signatures and hashes, that the close cites a checkpoint it verified, and recomputes each
  statement from its own lines with the contract prices, rounding modes, fees and thresholds
  (settlement's own :func:`~settlement.statements.price_line`, ``build_statement`` and
  ``render``), so an edited price, amount, total, net or payable no longer renders to the stored
  bytes (``statement-document``). Recounting each line's points from the leaves is the live
  verifier's job (see docs/AUDITING.md).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.canonical import format_decimal, format_timestamp
from ledger.consistency import Finding
from ledger.errors import LedgerError
from ledger.note import NoteVerifier, open_checkpoint, open_note
from partners import directory
from partners import tables as pt
from settlement import service
from settlement import tables as st
from settlement.model import CheckpointRef, Flow, FlowPoints, StatementLine
from settlement.periods import parse_period
from settlement.statements import (
    build_statement,
    digest,
    money_line,
    price_line,
    render,
    statement_document,
)

#: What reading a malformed statement can raise: each becomes a finding, never a crash.
_MALFORMED = (LedgerError, ValueError, KeyError, TypeError, AttributeError, ArithmeticError)


# == live =========================================================================================


def check_database(conn: Connection, keyring: Iterable[NoteVerifier]) -> list[Finding]:
    """Every prepared period recomputed from the journal, and every signed statement note."""
    keys = list(keyring)
    findings: list[Finding] = []
    runs = st.settlement_runs.c
    for label in conn.scalars(sa.select(runs.period).order_by(runs.period)).all():
        try:
            findings += service.verify_period(conn, label)
        except LedgerError as exc:
            findings.append(Finding("statements-recompute", label, "recomputable", exc.message))
    s, n = st.settlement_statements.c, st.settlement_notes.c
    query = (
        sa.select(s.period, s.partner, s.id, s.document, n.note)
        .join(st.settlement_notes, n.statement_id == s.id)
        .order_by(s.period, s.partner)
    )
    for row in conn.execute(query):
        findings += _note_findings(
            f"{row.period} {row.partner}",
            row.note,
            bytes(row.document),
            {"period": row.period, "partner": row.partner, "statement": row.id},
            keys,
        )
    return findings


def _note_findings(
    subject: str, note: str, document: bytes, claims: dict[str, str], keys: list[NoteVerifier]
) -> list[Finding]:
    """The note is signed by a trusted log key, and states the document's hash and identity."""
    try:
        text = open_note(note, keys).text
    except LedgerError as exc:
        return [Finding("statement-signature", subject, "signed by a trusted log key", exc.message)]
    fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    findings = []
    stated = fields.get("sha256")
    actual = base64.b64encode(digest(document)).decode()
    if stated != actual:
        findings.append(Finding("statement-note", subject, stated, actual))
    for name, value in claims.items():
        if fields.get(name) != value:
            findings.append(Finding("statement-note", subject, f"{name} {value}", fields.get(name)))
    return findings


# == export =======================================================================================


def export_statements(conn: Connection) -> Iterator[bytes]:
    """The lines of ``statements.jsonl``: one per prepared period, with everything stored."""
    p, r = st.settlement_periods.c, st.settlement_runs.c
    query = sa.select(st.settlement_periods, r.point_value, r.document, r.sha256).join(
        st.settlement_runs, r.period == p.label
    )
    for row in conn.execute(query.order_by(p.starts_at)):
        s, n = st.settlement_statements.c, st.settlement_notes.c
        statements = conn.execute(
            sa.select(s.partner, s.id, s.document, s.sha256, n.note)
            .outerjoin(st.settlement_notes, n.statement_id == s.id)
            .where(s.period == row.label)
            .order_by(s.partner)
        ).all()
        line = {
            "period": {
                "label": row.label,
                "kind": row.kind,
                "starts_at": format_timestamp(row.starts_at),
                "ends_at": format_timestamp(row.ends_at),
            },
            "close": {
                "log": row.log,
                "size": row.checkpoint_size,
                "root": base64.b64encode(bytes(row.checkpoint_root)).decode(),
                "note": row.checkpoint_note,
            },
            "point_value": row.point_value,
            "run": {**_document(bytes(row.document)), "sha256": bytes(row.sha256).hex()},
            "statements": [
                {
                    "partner": item.partner,
                    "id": item.id,
                    **_document(bytes(item.document)),
                    "sha256": bytes(item.sha256).hex(),
                    "note": item.note,
                }
                for item in statements
            ],
        }
        yield json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode()


def export_contracts(conn: Connection) -> Iterator[bytes]:
    """The lines of ``contracts.jsonl``: every contract version's settlement terms."""
    c = pt.contracts.c
    for partner in conn.scalars(sa.select(c.partner).distinct().order_by(c.partner)):
        for contract in directory.contracts(conn, partner):
            terms = contract.terms
            valid_to = contract.valid_to
            line = {
                "partner": contract.partner,
                "version": contract.version,
                "valid_from": format_timestamp(contract.valid_from),
                "valid_to": None if valid_to is None else format_timestamp(valid_to),
                "issue_price": format_decimal(terms.issue_price),
                "reimbursement_price": format_decimal(terms.reimbursement_price),
                "breakage_rebate": format_decimal(terms.breakage_rebate),
                "monthly_fee_cents": terms.monthly_fee_cents,
                "rounding_mode": terms.rounding_mode,
                "carry_forward_threshold_cents": terms.carry_forward_threshold_cents,
            }
            yield json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode()


def _document(data: bytes) -> dict[str, str]:
    """A stored document as it is: its text (canonical JSON is UTF-8), or base64 if it is not."""
    try:
        return {"document": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"document_base64": base64.b64encode(data).decode()}


def _document_bytes(item: dict[str, Any]) -> bytes:
    if isinstance(item.get("document"), str):
        return str(item["document"]).encode("utf-8")
    return base64.b64decode(str(item["document_base64"]), validate=True)


# == offline ======================================================================================


class BundleStatements:
    """The checks of ``statements.jsonl`` against ``contracts.jsonl`` and verified checkpoints."""

    def __init__(self, keyring: list[NoteVerifier]) -> None:
        self.keyring = keyring
        self.findings: list[Finding] = []
        self.contracts: dict[tuple[str, int], dict[str, Any]] = {}
        self.periods = 0
        self.unsigned = 0

    def add_contract(self, line: bytes) -> str | None:
        """Keep one line of contracts.jsonl (they are few); why it is malformed, or None."""
        try:
            item = json.loads(line)
            key = (str(item["partner"]), int(item["version"]))
        except (ValueError, KeyError, TypeError) as exc:
            return str(exc)
        self.contracts[key] = item
        return None

    def check(self, line: bytes, verified: dict[str, dict[int, list[bytes]]]) -> str | None:
        """Check one line of statements.jsonl; ``verified``: log -> size -> roots whose signed
        checkpoints verified. Returns why the line is malformed, or None."""
        try:
            item = json.loads(line)
            label = str(item["period"]["label"])
            close = item["close"]
            run_document = _document_bytes(item["run"])
            statements = list(item["statements"])
            if not (isinstance(close, dict) and all(isinstance(x, dict) for x in statements)):
                return "close and statements must be objects"
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return str(exc)
        self.periods += 1
        self._check_close(label, close, verified)
        if digest(run_document).hex() != item["run"].get("sha256"):
            found = digest(run_document).hex()
            self.findings.append(
                Finding("settlement-hash", label, item["run"].get("sha256"), found)
            )
        listed = _listed(run_document)
        seen = set()
        for statement in statements:
            partner = str(statement.get("partner"))
            seen.add(partner)
            self._check_statement(label, item, statement, listed.get(partner))
        for partner in sorted(set(listed) - seen):
            subject = f"{label} {partner}"
            self.findings.append(Finding("statement-altered", subject, "a stored statement", None))
        return None

    def _check_close(
        self, label: str, close: dict[str, Any], verified: dict[str, dict[int, list[bytes]]]
    ) -> None:
        """The close cites a checkpoint signed by the log key, one the leaves produce."""
        try:
            log, size = str(close["log"]), int(close["size"])
            root = base64.b64decode(str(close["root"]), validate=True)
            checkpoint, _ = open_checkpoint(
                str(close["note"]), [k for k in self.keyring if k.name == log], origin=log
            )
            problem = None
            if (checkpoint.size, checkpoint.root) != (size, root):
                problem = "the checkpoint its note signs"
            elif root not in verified.get(log, {}).get(size, []):
                problem = "a checkpoint of the bundle's log"
        except _MALFORMED as exc:
            problem = str(getattr(exc, "message", exc))
        if problem:
            self.findings.append(Finding("statement-checkpoint", label, problem, close.get("size")))

    def _check_statement(
        self, label: str, item: dict[str, Any], statement: dict[str, Any], listed: str | None
    ) -> None:
        partner = str(statement.get("partner"))
        subject = f"{label} {partner}"
        try:
            document = _document_bytes(statement)
        except _MALFORMED as exc:
            self.findings.append(Finding("statement-document", subject, "a document", str(exc)))
            return
        actual = digest(document).hex()
        if actual != statement.get("sha256"):
            found = statement.get("sha256")
            self.findings.append(Finding("statement-hash", subject, found, actual))
        if listed != actual:
            self.findings.append(Finding("statement-altered", subject, listed, actual))
        note = statement.get("note")
        if note is None:
            self.unsigned += 1
        else:
            claims = {"period": label, "partner": partner, "statement": str(statement.get("id"))}
            self.findings += _note_findings(subject, str(note), document, claims, self.keyring)
        problem = self._recompute(label, item["close"], partner, document)
        if problem is not None:
            self.findings.append(Finding("statement-document", subject, "recomputed", problem))

    def _recompute(
        self, label: str, close: dict[str, Any], partner: str, document: bytes
    ) -> str | None:
        """Rebuild the statement from its lines with the contracts' terms; why it differs."""
        try:
            stored = json.loads(document)
            period = parse_period(label)
            checkpoint = CheckpointRef(
                str(close["log"]),
                int(close["size"]),
                base64.b64decode(str(close["root"])),
                str(close["note"]),
            )
            lines = [self._line(label, partner, line) for line in stored["lines"]]
            version = stored["terms_version"]
            threshold = 0
            if version is not None:
                threshold = int(
                    self._contract(partner, int(version))["carry_forward_threshold_cents"]
                )
            statement = build_statement(
                label,
                partner,
                lines,
                carried_in_cents=_cents(stored["carried_in"]),
                threshold_cents=threshold,
                terms_version=version,
            )
            fresh = render(statement_document(statement, period, checkpoint))
        except _MALFORMED as exc:
            return str(getattr(exc, "message", exc))
        if fresh != document:
            return f"renders to sha256 {digest(fresh).hex()}"
        return None

    def _line(self, label: str, partner: str, line: dict[str, Any]) -> StatementLine:
        flow, version = Flow(line["flow"]), int(line["contract_version"])
        terms = self._contract(partner, version)
        mode = str(terms["rounding_mode"])
        if flow.priced:
            points = FlowPoints(
                partner,
                flow,
                version,
                gross=int(line["points_gross"]),
                reversed=int(line["points_reversed"]),
                prior_period=int(line["points_prior_period"]),
            )
            return price_line(label, points, _price(terms, flow), mode)
        cents = _cents(line["amount"])
        if flow is Flow.FEE:
            cents = int(terms["monthly_fee_cents"])
        return money_line(label, partner, flow, version, cents, mode)

    def _contract(self, partner: str, version: int) -> dict[str, Any]:
        found = self.contracts.get((partner, version))
        if found is None:
            raise KeyError(f"no contract {partner} v{version} in contracts.jsonl")
        return found


def _listed(run_document: bytes) -> dict[str, str]:
    """partner -> the statement hash the run document lists."""
    try:
        run = json.loads(run_document)
        return {str(s["partner"]): str(s["sha256"]) for s in run["statements"]}
    except (ValueError, KeyError, TypeError):
        return {}


def _price(terms: dict[str, Any], flow: Flow) -> Decimal:
    name = {
        Flow.ISSUANCE: "issue_price",
        Flow.REIMBURSEMENT: "reimbursement_price",
        Flow.BREAKAGE: "breakage_rebate",
    }[flow]
    return Decimal(str(terms[name]))


def _cents(text: object) -> int:
    """Cents of a ``format_cents`` string (``-3200.00``); anything else is refused."""
    value = Decimal(str(text)) * 100
    if value != value.to_integral_value():
        raise ValueError(f"not an amount in cents: {text!r}")
    return int(value)
