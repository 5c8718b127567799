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
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from flask import Response, current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import fields
from sqlalchemy.engine import Connection

from api.auth import audit, current_credential, requires
from api.errors import ApiProblem
from api.schemas import (
    CountersignRequest,
    CursorQuery,
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
    StrictSchema,
    VerificationSchema,
    encode_cursor,
)
from audit.log import log_integrator
from audit.publish import HttpPost, parse_witness, publish_checkpoint
from ledger.integrator import Integrator
from ledger.numbers import format_cents
from settlement import disputes, notes, outputs, proofs, service, workflow
from settlement.errors import (
    EntriesBeforeFirstPeriod,
    NoCheckpoint,
    PeriodNotClosed,
    PeriodNotIntegrated,
    PeriodNotOver,
    PeriodOutOfOrder,
    StatementsNotPrepared,
)
from settlement.model import PeriodClose
from settlement.payments import Debtor
from settlement.proofs import EntryNotCovered, LineProofs, UnknownStatementLine
from settlement.service import Witnessing, WitnessPolicy, WitnessQuorumNotMet
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
    WitnessQuorumNotMet,
    EntryNotCovered,
)

#: Seconds the API waits for each witness during a close.
WITNESS_TIMEOUT = 10.0


@contextmanager
def transaction() -> Iterator[Connection]:
    """One transaction; a period in the wrong state is a 409 naming what it waits for."""
    try:
        with current_app.extensions["coalition"].db.transaction() as conn:
            yield conn
    except CONFLICTS as exc:
        raise ApiProblem(409, exc.code, exc.message, **exc.fields()) from exc
    except UnknownStatementLine as exc:
        raise ApiProblem(404, exc.code, exc.message, **exc.fields()) from exc


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
        """Close the period on the signed checkpoint covering it (integrating what waits).

        When witnesses are configured (``coalition settle witnesses``), the checkpoint must be
        cosigned by their quorum first; without it the close is refused (409) and nothing written.
        """
        services = current_app.extensions["coalition"]
        integrator = log_integrator(services.signer) if services.signer is not None else None
        by = finance_user()
        with transaction() as conn:
            policy = service.close_witness_policy(conn)
        close = close_period(
            transaction,
            period,
            now=now(),
            by=by,
            integrator=integrator,
            policy=policy,
            http_post=witness_http_post(),
            record=lambda conn, close: audit(
                conn, "settlement.close", f"settlement:{close.period.label}", close_detail(close)
            ),
        )
        return {
            "step": "CLOSED",
            "actor": close.closed_by or "",
            "at": close.closed_at,
            "detail": {
                "log": close.checkpoint.log,
                "size": close.checkpoint.size,
                "root": base64.b64encode(close.checkpoint.root).decode(),
                "witnesses": list(service.close_cosigners(close)),
                "checkpoint": close.checkpoint.note,
            },
        }


def close_period(
    transaction: Callable[[], AbstractContextManager[Connection]],
    period: str,
    *,
    now: datetime,
    by: str,
    integrator: Integrator | None,
    policy: WitnessPolicy | None,
    http_post: HttpPost,
    record: Callable[[Connection, PeriodClose], None],
) -> PeriodClose:
    """Close a period, waiting for the witness quorum when a policy names witnesses.

    Shared by the API and ``coalition settle close``. Without witnesses: one transaction, as
    before. With them: the first transaction logs what waits and commits the checkpoint (a
    witness must never cosign a checkpoint that a rollback could replace by another root: it would
    see a fork); the second asks the witnesses (``audit.publish``), publishes the cosigned
    checkpoint and records the close on it, or refuses and rolls back. ``record`` runs in the
    close's transaction (the audit event).
    """
    if policy is None:
        with transaction() as conn:
            close = service.close_period(conn, period, now=now, closed_by=by, integrator=integrator)
            record(conn, close)
        return close
    cosign = witness_cosigner(policy, http_post)
    if integrator is not None:
        with transaction() as conn:
            service.integrate_for_close(conn, period, now=now, integrator=integrator)
    with transaction() as conn:
        close = service.close_period(conn, period, now=now, closed_by=by, cosign=cosign)
        record(conn, close)
    return close


def witness_cosigner(policy: WitnessPolicy, http_post: HttpPost) -> service.Cosigner:
    """Settlement's ``Cosigner`` over :func:`audit.publish.publish_checkpoint`.

    Publishing is idempotent per checkpoint: one already published is returned without asking the
    witnesses again.
    """
    endpoints = [parse_witness(spec) for spec in policy.witnesses]

    def cosign(conn: Connection, checkpoint: Any) -> Witnessing:
        found = publish_checkpoint(conn, checkpoint.log, endpoints, policy.quorum, http_post)
        return Witnessing(
            log=found.log,
            size=found.size,
            quorum=policy.quorum,
            note=found.note if found.published else None,
            witnesses=tuple(found.witnesses),
            refusals=tuple(
                f"{o.witness} {o.status or 'unreachable'}: {o.detail}"
                for o in found.outcomes
                if not o.ok
            ),
        )

    return cosign


def witness_http_post() -> HttpPost:
    """How the API reaches witnesses: urllib, unless the application was given another poster
    (``app.extensions["coalition.witness_http_post"]``: tests' in-process witnesses)."""
    injected = current_app.extensions.get("coalition.witness_http_post")
    if injected is not None:
        return injected
    from api.cli import _http_post  # the CLI's poster: one HTTP client for witnesses

    return _http_post(WITNESS_TIMEOUT)


def close_detail(close: PeriodClose) -> dict[str, Any]:
    """What the audit log records of a close: its checkpoint and the witnesses that cosigned it."""
    return {
        "checkpoint_size": close.checkpoint.size,
        "witnesses": list(service.close_cosigners(close)),
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


class LineEntrySchema(StrictSchema):
    entry_id = fields.UUID()
    kind = fields.String()
    business_time = fields.DateTime()
    points = fields.Integer(metadata={"description": "signed contribution to the line's points"})
    prior_period = fields.Boolean(metadata={"description": "a late event of an earlier period"})
    log = fields.String()
    index = fields.Integer()
    leaf = fields.String(metadata={"description": "the leaf's exact bytes (UTF-8 JSON)"})
    leaf_hash = fields.String(metadata={"description": "RFC 6962 leaf hash, hex"})
    tree_size = fields.Integer(metadata={"description": "size of the checkpoint proved against"})
    inclusion_proof = fields.List(fields.String(), metadata={"description": "hashes, hex"})


class ProofCheckpointSchema(StrictSchema):
    log = fields.String()
    size = fields.Integer()
    note = fields.String(metadata={"description": "C2SP signed checkpoint note"})


class LineProofsSchema(StrictSchema):
    period = fields.String()
    partner = fields.String()
    line = fields.Integer(metadata={"description": "the line's position on the statement, from 1"})
    line_id = fields.String()
    flow = fields.String()
    contract_version = fields.Integer()
    points = fields.Integer()
    points_prior_period = fields.Integer()
    sums_entries = fields.Boolean(
        metadata={"description": "false for FEE and ADJUSTMENT lines: they sum no entry"}
    )
    detail = fields.String()
    checkpoint = fields.Nested(ProofCheckpointSchema)
    other_checkpoints = fields.List(fields.Nested(ProofCheckpointSchema))
    items = fields.List(fields.Nested(LineEntrySchema))
    next_cursor = fields.String(allow_none=True)


@blp.route("/periods/<period>/statements/<partner>/lines/<int:number>/proofs")
class LineProofsView(MethodView):
    @requires("settlement.proofs")
    @blp.arguments(CursorQuery, location="query")
    @blp.response(200, LineProofsSchema)
    def get(self, query: dict, period: str, partner: str, number: int) -> dict:
        """The entries a statement line sums, each with its inclusion proof (paged by leaf).

        Each proof leads to the signed checkpoint the period was closed on; the points of all
        pages add up to the line's. A partner sees its own statement's lines only.
        """
        _may_see(partner)
        key = query.get("cursor")
        if key is not None and (
            len(key) != 2 or type(key[0]) is not str or type(key[1]) is not int
        ):
            raise ApiProblem(
                422, "invalid-cursor", "the cursor does not belong to this listing", field="cursor"
            )
        after = None if key is None else (key[0], key[1])
        with transaction() as conn:
            found = proofs.line_proofs(
                conn, period, partner, number, after=after, limit=query["limit"]
            )
        return line_proofs_json(found)


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


def line_proofs_json(found: LineProofs) -> dict:
    line = found.line
    return {
        "period": found.period.label,
        "partner": found.partner,
        "line": found.number,
        "line_id": line.id,
        "flow": line.flow.value,
        "contract_version": line.contract_version,
        "points": line.points,
        "points_prior_period": line.points_prior_period,
        "sums_entries": found.sums_entries,
        "detail": (
            "the entries this line sums, each proved against the close's checkpoint"
            if found.sums_entries
            else f"a {line.flow.value} line sums no journal entry: there is nothing to prove"
        ),
        "checkpoint": {
            "log": found.checkpoint.log,
            "size": found.checkpoint.size,
            "note": found.checkpoint.note,
        },
        "other_checkpoints": [
            {"log": log, "size": size, "note": note} for log, size, note in found.other_checkpoints
        ],
        "items": [
            {
                "entry_id": entry.entry_id,
                "kind": entry.kind,
                "business_time": entry.business_time,
                "points": entry.points,
                "prior_period": entry.prior_period,
                "log": entry.log,
                "index": entry.index,
                "leaf": entry.leaf.decode("utf-8"),
                "leaf_hash": entry.leaf_hash.hex(),
                "tree_size": entry.tree_size,
                "inclusion_proof": [h.hex() for h in entry.proof],
            }
            for entry in found.entries
        ],
        "next_cursor": None if found.next_after is None else encode_cursor(list(found.next_after)),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if value is None or isinstance(value, (int, str, bool)):
        return value
    return str(value)
