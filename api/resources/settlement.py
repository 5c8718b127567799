"""Settlement under ``/v1/settlement``: the four-eyes workflow, statements, payment files, disputes.

Finance closes, prepares, approves (another finance user than the preparer), makes the payment
file and marks paid; the finance user is the staff account of the credential. Auditors read
everything. A partner reads its own statements (others are unknown to it), countersigns them, and
opens and follows its own disputes.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from flask import Response, current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy.engine import Connection

from api.auth import audit, current_credential, requires
from api.errors import ApiProblem
from api.schemas import (
    CountersignRequest,
    DisputeAcceptRequest,
    DisputeRejectRequest,
    DisputeRequest,
    DisputeSchema,
    MarkPaidRequest,
    PaymentFileRequest,
    PaymentFileSchema,
    SettlementStateSchema,
    StatementNoteSchema,
    StatementViewSchema,
    StepSchema,
    VerificationSchema,
)
from audit.log import log_integrator
from ledger.numbers import format_cents
from settlement import disputes, notes, outputs, service, workflow
from settlement.errors import (
    EntriesBeforeFirstPeriod,
    NoCheckpoint,
    PeriodNotClosed,
    PeriodNotIntegrated,
    PeriodNotOver,
    PeriodOutOfOrder,
    StatementsNotPrepared,
)
from settlement.payments import Debtor
from settlement.workflow import StepRecord, WorkflowState

blp = Blueprint(
    "settlement", __name__, url_prefix="/v1/settlement", description="Periods, statements, disputes"
)

#: Settlement refusals that are about the period's state: a conflict, not a malformed request.
CONFLICTS = (
    PeriodNotOver,
    PeriodNotIntegrated,
    PeriodOutOfOrder,
    EntriesBeforeFirstPeriod,
    NoCheckpoint,
    PeriodNotClosed,
    StatementsNotPrepared,
)


@contextmanager
def transaction() -> Iterator[Connection]:
    """One transaction; a period in the wrong state is a 409 naming what it waits for."""
    try:
        with current_app.extensions["coalition"].db.transaction() as conn:
            yield conn
    except CONFLICTS as exc:
        raise ApiProblem(409, exc.code, exc.message, **exc.fields()) from exc


def finance_user() -> str:
    staff = current_credential().staff
    if not staff:
        raise ApiProblem(403, "forbidden", "only a staff credential takes settlement steps")
    return staff


def viewer_partner() -> str | None:
    """The partner a partner credential is limited to; ``None`` for staff (they see all)."""
    return current_credential().partner


def now() -> datetime:
    return datetime.now(UTC)


# -- the workflow ----------------------------------------------------------------------------------


@blp.route("/periods/<period>")
class Period(MethodView):
    @requires("settlement.read")
    @blp.response(200, SettlementStateSchema)
    def get(self, period: str) -> dict:
        """Where the period's workflow stands (a partner sees its own payment only)."""
        with transaction() as conn:
            state = workflow.workflow_state(conn, period)
        return state_json(state, viewer_partner())


@blp.route("/periods/<period>/close")
class Close(MethodView):
    @requires("settlement.write")
    @blp.response(200, StepSchema)
    def post(self, period: str) -> dict:
        """Close the period on the signed checkpoint covering it (integrating what waits)."""
        services = current_app.extensions["coalition"]
        integrator = log_integrator(services.signer) if services.signer is not None else None
        by = finance_user()
        with transaction() as conn:
            close = service.close_period(
                conn, period, now=now(), closed_by=by, integrator=integrator
            )
            audit(
                conn,
                "settlement.close",
                f"settlement:{close.period.label}",
                {"checkpoint_size": close.checkpoint.size},
            )
        return {
            "step": "CLOSED",
            "actor": close.closed_by or "",
            "at": close.closed_at,
            "detail": {
                "log": close.checkpoint.log,
                "size": close.checkpoint.size,
                "root": base64.b64encode(close.checkpoint.root).decode(),
            },
        }


@blp.route("/periods/<period>/prepare")
class Prepare(MethodView):
    @requires("settlement.write")
    @blp.response(200, StepSchema)
    def post(self, period: str) -> dict:
        """Prepare the statements (finance user A)."""
        by = finance_user()
        with transaction() as conn:
            record = workflow.prepare(conn, period, now=now(), by=by)
            audit(conn, "settlement.prepare", f"settlement:{record.period}", record.detail)
        return step_json(record)


@blp.route("/periods/<period>/approve")
class Approve(MethodView):
    @requires("settlement.write")
    @blp.response(200, StepSchema)
    def post(self, period: str) -> dict:
        """Approve and post the statements (finance user B; the preparer is refused)."""
        services = current_app.extensions["coalition"]
        by = finance_user()
        with transaction() as conn:
            posted = workflow.approve(
                conn,
                period,
                now=now(),
                by=by,
                actor=current_credential().actor,
                ledger=services.ledger,
            )
            audit(
                conn,
                "settlement.approve",
                f"settlement:{posted.period}",
                {"entries": len(posted.detail["entries"])},
            )
        services.integrate()
        return step_json(posted)


@blp.route("/periods/<period>/payment-file")
class PaymentFile(MethodView):
    @requires("settlement.write")
    @blp.arguments(PaymentFileRequest)
    @blp.response(200, PaymentFileSchema)
    def post(self, data: dict, period: str) -> dict:
        """Make the SEPA pain.001 file of the payouts, validated against the XSD."""
        by = finance_user()
        debtor = Debtor(**data["debtor"]) if data.get("debtor") else None
        with transaction() as conn:
            built = workflow.payment_file(
                conn,
                period,
                now=now(),
                by=by,
                execution_date=data["execution_date"],
                debtor=debtor,
                schema=data["schema"],
            )
            audit(
                conn,
                "settlement.payment_file",
                f"settlement:{period}",
                {"schema": data["schema"], "sha256": None if built is None else built.sha256.hex()},
            )
        return payment_file_json(period, built)

    @requires("settlement.payments")
    @blp.response(200, PaymentFileSchema)
    def get(self, period: str) -> dict:
        """The pain.001.001.09 file made for the period (404 until made, or with no payout)."""
        with transaction() as conn:
            found = workflow.stored_payment_file(conn, period, "pain.001.001.09")
        if found is None:
            raise ApiProblem(404, "no-payment-file", f"no payment file for {period}")
        return payment_file_json(period, found)


@blp.route("/periods/<period>/mark-paid")
class MarkPaid(MethodView):
    @requires("settlement.write")
    @blp.arguments(MarkPaidRequest)
    @blp.response(200, SettlementStateSchema)
    def post(self, data: dict, period: str) -> dict:
        """Record payments with the bank's reference (PAYMENT entries); settles when all paid."""
        services = current_app.extensions["coalition"]
        by = finance_user()
        with transaction() as conn:
            state = workflow.mark_paid(
                conn,
                period,
                data["bank_reference"],
                now=now(),
                by=by,
                partners=data.get("partners"),
                actor=current_credential().actor,
                ledger=services.ledger,
            )
            audit(
                conn,
                "settlement.mark_paid",
                f"settlement:{state.period}",
                {"bank_reference": data["bank_reference"], "status": state.status},
            )
        services.integrate()
        return state_json(state, None)


@blp.route("/periods/<period>/verification")
class Verification(MethodView):
    @requires("settlement.payments")
    @blp.response(200, VerificationSchema)
    def get(self, period: str) -> dict:
        """Recompute the period's statements from the journal and compare byte for byte."""
        with transaction() as conn:
            findings = service.verify_period(conn, period)
        return {
            "period": period,
            "verified": not findings,
            "findings": [
                {
                    "check": f.check,
                    "subject": f.subject,
                    "expected": _plain(f.expected),
                    "found": _plain(f.found),
                }
                for f in findings
            ],
        }


# -- statements ------------------------------------------------------------------------------------


@blp.route("/periods/<period>/statements")
class Statements(MethodView):
    @requires("settlement.read")
    @blp.response(200, StatementViewSchema(many=True))
    def get(self, period: str) -> list[dict]:
        """The period's statements (a partner: its own only), with their output hashes."""
        only = viewer_partner()
        with transaction() as conn:
            run = service.statement_run(conn, period)
            produced = outputs.statement_outputs(conn, period, now=now(), partner=only)
        return [
            statement_json(run, s, produced)
            for s in run.settlement.statements
            if only is None or s.partner == only
        ]


@blp.route("/periods/<period>/statements/<partner>")
class StatementOf(MethodView):
    @requires("settlement.read")
    @blp.response(200, StatementViewSchema)
    def get(self, period: str, partner: str) -> dict:
        """One partner's statement (another partner's is unknown to a partner)."""
        _may_see(partner)
        with transaction() as conn:
            run = service.statement_run(conn, period)
            produced = outputs.statement_outputs(conn, period, now=now(), partner=partner)
        statement = _statement(run, partner)
        return statement_json(run, statement, produced)


@blp.route("/periods/<period>/statements/<partner>/outputs/<fmt>")
class StatementOutput(MethodView):
    @requires("settlement.read")
    @blp.response(200, content_type="application/octet-stream")
    def get(self, period: str, partner: str, fmt: str) -> Response:
        """The statement as json, csv, pdf or invoice (the recorded bytes; X-Content-SHA256)."""
        _may_see(partner)
        with transaction() as conn:
            produced = outputs.statement_outputs(conn, period, now=now(), partner=partner)
        found = next((o for o in produced if o.format == fmt), None)
        if found is None:
            raise ApiProblem(404, "no-output", f"no {fmt} output of {partner}'s {period} statement")
        response = Response(found.document, mimetype=outputs.MEDIA_TYPES[fmt])
        response.headers["X-Content-SHA256"] = found.sha256.hex()
        return response


@blp.route("/periods/<period>/statements/<partner>/note")
class StatementNote(MethodView):
    @requires("settlement.read")
    @blp.response(200, StatementNoteSchema)
    def get(self, period: str, partner: str) -> dict:
        """The statement as a note signed by the log key, citing its checkpoint."""
        _may_see(partner)
        signer = current_app.extensions["coalition"].signer
        with transaction() as conn:
            run = service.statement_run(conn, period)
            _statement(run, partner)
            note = notes.statement_note(conn, period, partner, signer=signer, now=now())
        return note_json(note)


@blp.route("/periods/<period>/statements/<partner>/countersignatures")
class Countersign(MethodView):
    @requires("settlement.countersign")
    @blp.arguments(CountersignRequest)
    @blp.response(201, StatementNoteSchema)
    def post(self, data: dict, period: str, partner: str) -> dict:
        """Countersign one's own statement note with a registered Ed25519 key."""
        _may_see(partner)
        try:
            signature = base64.b64decode(data["signature"], validate=True)
        except (binascii.Error, ValueError):
            raise ApiProblem(422, "invalid-signature", "signature is not base64") from None
        signer = current_app.extensions["coalition"].signer
        with transaction() as conn:
            run = service.statement_run(conn, period)
            _statement(run, partner)
            notes.statement_note(conn, period, partner, signer=signer, now=now())
            note = notes.countersign(
                conn, period, partner, data["key_id"], signature, data["signed_at"], now=now()
            )
            audit(
                conn,
                "settlement.countersign",
                f"statement:{note.statement_id}",
                {"key_id": data["key_id"]},
            )
        return note_json(note)


# -- disputes --------------------------------------------------------------------------------------


@blp.route("/disputes")
class Disputes(MethodView):
    @requires("disputes.open")
    @blp.arguments(DisputeRequest)
    @blp.response(201, DisputeSchema)
    def post(self, data: dict) -> dict:
        """Dispute one's own entries, with a reason."""
        credential = current_credential()
        assert credential.partner is not None
        with transaction() as conn:
            dispute = disputes.open_dispute(
                conn,
                credential.partner,
                data["entry_ids"],
                data["reason"],
                now=now(),
                by=f"partner:{credential.partner}",
                period=data.get("period"),
            )
            audit(
                conn, "dispute.open", f"dispute:{dispute.id}", {"entries": len(dispute.entry_ids)}
            )
        return dispute_json(dispute)

    @requires("settlement.read")
    @blp.response(200, DisputeSchema(many=True))
    def get(self) -> list[dict]:
        """Disputes (a partner: its own)."""
        with transaction() as conn:
            found = disputes.disputes(conn, partner=viewer_partner())
        return [dispute_json(d) for d in found]


@blp.route("/disputes/<uuid:dispute_id>")
class DisputeById(MethodView):
    @requires("settlement.read")
    @blp.response(200, DisputeSchema)
    def get(self, dispute_id: UUID) -> dict:
        with transaction() as conn:
            return dispute_json(disputes.dispute_by_id(conn, dispute_id, partner=viewer_partner()))


@blp.route("/disputes/<uuid:dispute_id>/accept")
class AcceptDispute(MethodView):
    @requires("disputes.decide")
    @blp.arguments(DisputeAcceptRequest)
    @blp.response(200, DisputeSchema)
    def post(self, data: dict, dispute_id: UUID) -> dict:
        """Accept: an adjustment in the open period (+: the partner owes more)."""
        by = finance_user()
        with transaction() as conn:
            decided = disputes.accept(
                conn, dispute_id, data["amount_cents"], data["reason"], now=now(), by=by
            )
            audit(
                conn,
                "dispute.accept",
                f"dispute:{dispute_id}",
                {"amount_cents": data["amount_cents"]},
                data["reason"],
            )
        return dispute_json(decided)


@blp.route("/disputes/<uuid:dispute_id>/reject")
class RejectDispute(MethodView):
    @requires("disputes.decide")
    @blp.arguments(DisputeRejectRequest)
    @blp.response(200, DisputeSchema)
    def post(self, data: dict, dispute_id: UUID) -> dict:
        """Reject, with a reason the partner sees."""
        by = finance_user()
        with transaction() as conn:
            decided = disputes.reject(conn, dispute_id, data["reason"], now=now(), by=by)
            audit(conn, "dispute.reject", f"dispute:{dispute_id}", None, data["reason"])
        return dispute_json(decided)


# -- rendering -------------------------------------------------------------------------------------


def _may_see(partner: str) -> None:
    only = viewer_partner()
    if only is not None and only != partner:
        raise ApiProblem(404, "unknown-statement", f"no statement of {partner} for you")


def _statement(run: Any, partner: str) -> Any:
    try:
        return run.settlement.statement(partner)
    except KeyError:
        raise ApiProblem(
            404, "unknown-statement", f"{run.period.label} has no statement for {partner}"
        ) from None


def step_json(record: StepRecord) -> dict:
    return {
        "step": record.step.value,
        "actor": record.actor,
        "at": record.at,
        "detail": record.detail,
    }


def state_json(state: WorkflowState, partner: str | None) -> dict:
    return {
        "period": state.period,
        "status": state.status,
        "steps": [step_json(s) for s in state.steps],
        "payments": [
            {
                "partner": p.partner,
                "statement_id": p.statement_id,
                "amount": format_cents(p.amount_cents),
                "bank_reference": p.bank_reference,
                "entry_id": p.entry_id,
                "paid_at": p.paid_at,
                "paid_by": p.paid_by,
            }
            for p in state.payments
            if partner is None or p.partner == partner
        ],
        "outstanding": [p for p in state.outstanding if partner is None or p == partner],
    }


def payment_file_json(period: str, built: Any) -> dict:
    if built is None:
        return {
            "period": period,
            "schema": None,
            "message_id": None,
            "transactions": 0,
            "control_sum": "0.00",
            "sha256": None,
            "document": None,
        }
    return {
        "period": period,
        "schema": built.schema,
        "message_id": built.message_id,
        "transactions": built.transactions,
        "control_sum": format_cents(built.control_sum_cents),
        "sha256": built.sha256.hex(),
        "document": built.document.decode("utf-8"),
    }


def statement_json(run: Any, statement: Any, produced: list[outputs.Output]) -> dict:
    document = dict(run.statement_documents)[statement.partner]
    return {
        "id": statement.id,
        "period": run.period.label,
        "partner": statement.partner,
        "net": format_cents(statement.net_cents),
        "payable": format_cents(statement.payable_cents),
        "direction": statement.direction,
        "sha256": next(
            o.sha256.hex()
            for o in produced
            if o.statement_id == statement.id and o.format == "json"
        ),
        "document": json.loads(document),
        "outputs": [
            {"format": o.format, "sha256": o.sha256.hex()}
            for o in produced
            if o.statement_id == statement.id
        ],
    }


def note_json(note: notes.StatementNote) -> dict:
    return {
        "statement_id": note.statement_id,
        "partner": note.partner,
        "note": note.note,
        "text": note.text,
        "countersignatures": [
            {
                "key_id": c.key_id,
                "signature": base64.b64encode(c.signature).decode(),
                "signed_at": c.signed_at.isoformat(),
                "recorded_at": c.recorded_at.isoformat(),
            }
            for c in note.countersignatures
        ],
    }


def dispute_json(dispute: disputes.Dispute) -> dict:
    decision = dispute.decision
    return {
        "id": dispute.id,
        "partner": dispute.partner,
        "period": dispute.period,
        "entry_ids": list(dispute.entry_ids),
        "reason": dispute.reason,
        "opened_at": dispute.opened_at,
        "opened_by": dispute.opened_by,
        "status": dispute.status,
        "decision": None
        if decision is None
        else {
            "decision": decision.decision,
            "reason": decision.reason,
            "amount": None
            if decision.amount_cents is None
            else format_cents(decision.amount_cents),
            "adjustment_id": None
            if decision.adjustment_id is None
            else str(decision.adjustment_id),
            "decided_at": decision.decided_at.isoformat(),
            "decided_by": decision.decided_by,
        },
    }


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if value is None or isinstance(value, (int, str, bool)):
        return value
    return str(value)
