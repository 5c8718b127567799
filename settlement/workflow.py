"""The four-eyes settlement workflow: prepare → approve (and post) → payment file → paid → settled.

Each step is a row of ``settlement_steps`` (append-only), written by the step itself once the step
before it is recorded; a step out of order is refused (:class:`StepOutOfOrder`), and repeating a
step that is done returns what it recorded (a retry is harmless). The steps:

1. **PREPARED** (:func:`prepare`): finance user A prepares the statements of a closed period
   (:func:`settlement.service.prepare_statements`); A is recorded.
2. **APPROVED** (:func:`approve`): finance user B approves; B = A is refused
   (:class:`FourEyesViolation`). Approving posts the statements in the same transaction.
3. **POSTED**: one balanced SETTLEMENT entry per line (:func:`settlement.service.post_statements`);
   each partner's ``partner:{p}:settlement`` account then holds its net N.
4. **PAYMENT_FILE** (:func:`payment_file`): the SEPA pain.001 credit transfers of the payouts
   (:mod:`settlement.payments`), validated against the XSD, stored with its hash.
5. **SETTLED** (:func:`mark_paid`): every statement that moves money is paid, each recorded with
   the bank reference and a PAYMENT entry ``operator:bank`` ↔ ``partner:{p}:settlement``.

Every function works inside the caller's transaction and takes the time explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.errors import BusinessRefusal, InvalidRequest
from ledger.model import EntryKind, Posting
from ledger.repository import SqlLedgerStore
from ledger.service import Actor, Ledger
from partners import directory
from settlement import service
from settlement import tables as t
from settlement.errors import SettlementError
from settlement.model import Statement, StatementRun
from settlement.payments import Debtor, PaymentFile, build_payment_file, operator_debtor
from settlement.periods import Period, parse_period

#: Idempotency scope of PAYMENT entries, as for SETTLEMENT entries: the operator's, not a person's.
PAYMENT_PRINCIPAL = "settlement"


class Step(StrEnum):
    """The workflow's recorded steps, in order."""

    PREPARED = "PREPARED"
    APPROVED = "APPROVED"
    POSTED = "POSTED"
    PAYMENT_FILE = "PAYMENT_FILE"
    SETTLED = "SETTLED"


STEP_ORDER = tuple(Step)


# -- errors ----------------------------------------------------------------------------------------


class WorkflowRefusal(SettlementError, BusinessRefusal):
    """A well-formed workflow request that the four-eyes rules refuse (HTTP 422)."""

    code = "settlement-refused"


class FourEyesViolation(WorkflowRefusal):
    """The approver prepared the statements: the same person cannot approve them."""

    code = "four-eyes-violation"

    def __init__(self, period: str, user: str) -> None:
        super().__init__(
            f"{user} prepared the statements of {period}; another finance user must approve them",
            period=period,
            user=user,
        )


class StepOutOfOrder(WorkflowRefusal):
    """A step whose predecessor is not recorded yet."""

    code = "settlement-step-out-of-order"

    def __init__(self, period: str, step: Step, requires: Step) -> None:
        super().__init__(
            f"cannot record {step.value} for {period}: {requires.value} is not recorded yet",
            period=period,
            step=step.value,
            requires=requires.value,
        )


class AnonymousStep(SettlementError, InvalidRequest):
    """Every step names the finance user who took it."""

    code = "settlement-step-anonymous"


# -- records ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One recorded step of a period's workflow."""

    period: str
    step: Step
    actor: str
    """The finance user (or job) who took it."""
    at: datetime
    detail: dict[str, Any]
    """What the step produced: entry counts, file hash, payments."""


@dataclass(frozen=True, slots=True)
class Payment:
    """A statement's money that changed hands, with the bank's reference and the PAYMENT entry."""

    statement_id: str
    period: str
    partner: str
    amount_cents: int
    """As the statement's payable: + the partner paid the operator, − the operator paid it."""
    bank_reference: str
    entry_id: UUID
    paid_at: datetime
    paid_by: str


@dataclass(frozen=True, slots=True)
class WorkflowState:
    """Where a period's workflow stands."""

    period: str
    steps: tuple[StepRecord, ...]
    payments: tuple[Payment, ...]
    outstanding: tuple[str, ...]
    """Partners whose statement moves money and is not paid yet (after POSTED)."""

    @property
    def status(self) -> str:
        """The last recorded step, lower case (``prepared`` … ``settled``), or ``closed``."""
        return self.steps[-1].step.value.lower() if self.steps else "closed"

    def step(self, step: Step) -> StepRecord | None:
        return next((s for s in self.steps if s.step is step), None)


# -- the steps -------------------------------------------------------------------------------------


def prepare(
    conn: Connection,
    period: Period | str,
    *,
    now: datetime,
    by: str,
    point_value: Decimal | str | None = None,
) -> StepRecord:
    """Finance user A prepares the statements of a closed period; records PREPARED (once).

    If the statements were prepared before (by :func:`settlement.service.prepare_statements`),
    the preparer recorded in the run is the one the four-eyes rule holds against.
    """
    label = _label(period)
    _named(by)
    existing = _step(conn, label, Step.PREPARED)
    if existing is not None:
        return existing
    run = service.prepare_statements(conn, label, now=now, prepared_by=by, point_value=point_value)
    detail = {
        "sha256": _hex(conn, t.settlement_runs, label),
        "statements": len(run.settlement.statements),
    }
    return _record(conn, label, Step.PREPARED, run.prepared_by or by, now, detail)


def approve(
    conn: Connection,
    period: Period | str,
    *,
    now: datetime,
    by: str,
    actor: Actor | None = None,
    ledger: Ledger | None = None,
) -> StepRecord:
    """Finance user B approves A's statements and posts them; B = A is refused.

    Records APPROVED, then books the SETTLEMENT entries and records POSTED, in this transaction.
    Approving an approved period returns its POSTED step (a retry replays, whoever retries).
    """
    label = _label(period)
    _named(by)
    posted = _step(conn, label, Step.POSTED)
    if posted is not None:
        return posted
    prepared = _require(conn, label, Step.APPROVED, Step.PREPARED)
    if prepared.actor == by:
        raise FourEyesViolation(label, by)
    run = service.statement_run(conn, label)
    if _step(conn, label, Step.APPROVED) is None:
        _record(conn, label, Step.APPROVED, by, now, {"prepared_by": prepared.actor})
    bookings = service.post_statements(conn, run, actor or _staff(by), ledger=ledger)
    detail = {"entries": [str(b.entry.id) for b in bookings]}
    return _record(conn, label, Step.POSTED, by, now, detail)


def payment_file(
    conn: Connection,
    period: Period | str,
    *,
    now: datetime,
    by: str,
    execution_date: date,
    debtor: Debtor | None = None,
    schema: str = "pain.001.001.09",
) -> PaymentFile | None:
    """The SEPA credit-transfer file of the period's payouts; records PAYMENT_FILE (once).

    ``None`` when the operator pays nobody this period (every net is owed by partners, carried
    or nil); the step is recorded all the same. A file of another ``schema`` (the .03 variant a
    bank may still want) can be made after the first one, with the same transfers.
    """
    label = _label(period)
    _named(by)
    _require(conn, label, Step.PAYMENT_FILE, Step.POSTED)
    existing = stored_payment_file(conn, label, schema)
    if existing is not None:
        return existing
    run = service.statement_run(conn, label)
    payouts = [s for s in run.settlement.statements if s.payable_cents < 0]
    built = None
    if payouts:
        built = build_payment_file(
            run,
            [(s, directory.partner(conn, s.partner)) for s in payouts],
            debtor or operator_debtor(conn),
            execution_date=execution_date,
            schema=schema,
        )
        conn.execute(
            t.settlement_payment_files.insert().values(
                period=label,
                schema=schema,
                message_id=built.message_id,
                transactions=built.transactions,
                control_sum_cents=built.control_sum_cents,
                document=built.document,
                sha256=built.sha256,
                created_at=now,
                created_by=by,
            )
        )
    if _step(conn, label, Step.PAYMENT_FILE) is None:
        detail = {
            "schema": schema,
            "transactions": 0 if built is None else built.transactions,
            "control_sum_cents": 0 if built is None else built.control_sum_cents,
            "sha256": None if built is None else built.sha256.hex(),
        }
        _record(conn, label, Step.PAYMENT_FILE, by, now, detail)
    return built


def mark_paid(
    conn: Connection,
    period: Period | str,
    bank_reference: str,
    *,
    now: datetime,
    by: str,
    partners: list[str] | None = None,
    actor: Actor | None = None,
    ledger: Ledger | None = None,
) -> WorkflowState:
    """Record the payment of the statements (all, or ``partners``') with the bank's reference.

    Books one PAYMENT entry per statement, idempotently (the key is the statement id, scoped to
    the operator's settlement), moving its payable between ``operator:bank`` and the partner's
    settlement account; once every statement that moves money is paid, records SETTLED.
    """
    label = _label(period)
    _named(by)
    reference = (bank_reference or "").strip()
    if not reference or len(reference) > 140 or not reference.isprintable():
        raise InvalidRequest("a bank reference is 1–140 printable characters")
    _require(conn, label, Step.SETTLED, Step.PAYMENT_FILE)
    run = service.statement_run(conn, label)
    paid = {p.statement_id for p in payments(conn, label)}
    wanted = set(partners) if partners is not None else None
    if wanted is not None:
        unknown = wanted - {s.partner for s in run.settlement.statements}
        if unknown:
            raise InvalidRequest(f"no statement of {label} for {', '.join(sorted(unknown))}")
    ledger = ledger or Ledger()
    poster = Actor((actor or _staff(by)).credential, principal=PAYMENT_PRINCIPAL)
    store = SqlLedgerStore(conn)
    for statement in _moving(run):
        if statement.id in paid or (wanted is not None and statement.partner not in wanted):
            continue
        booking = ledger.post(
            store,
            poster,
            f"payment:{statement.id}",
            kind=EntryKind.PAYMENT,
            postings=payment_postings(statement),
            business_time=now,
            reason=f"{label} settlement of {statement.partner}",
            attributes={
                "period": label,
                "statement": statement.id,
                "bank_reference": reference,
            },
        )
        conn.execute(
            t.settlement_payments.insert().values(
                statement_id=statement.id,
                period=label,
                partner=statement.partner,
                amount_cents=statement.payable_cents,
                bank_reference=reference,
                entry_id=booking.entry.id,
                paid_at=now,
                paid_by=by,
            )
        )
    state = workflow_state(conn, label)
    if not state.outstanding and state.step(Step.SETTLED) is None:
        detail = {"payments": len(state.payments)}
        _record(conn, label, Step.SETTLED, by, now, detail)
        state = workflow_state(conn, label)
    return state


def payment_postings(statement: Statement) -> list[Posting]:
    """The PAYMENT entry of a statement: its payable leaves the settlement account via the bank.

    N > 0 (the partner pays): the bank receives N and the settlement account returns to what is
    carried; N < 0 (the operator pays |N|): the bank pays |N| out.
    """
    amount = statement.payable_cents
    return [
        Posting(f"partner:{statement.partner}:settlement", -amount),
        Posting("operator:bank", amount),
    ]


# -- reads -----------------------------------------------------------------------------------------


def workflow_state(conn: Connection, period: Period | str) -> WorkflowState:
    """The steps recorded for a period, its payments, and who is still to be paid."""
    label = _label(period)
    s = t.settlement_steps.c
    rows = conn.execute(sa.select(t.settlement_steps).where(s.period == label)).all()
    steps = sorted((_step_record(row) for row in rows), key=lambda r: STEP_ORDER.index(r.step))
    paid = payments(conn, label)
    outstanding: tuple[str, ...] = ()
    if any(r.step is Step.POSTED for r in steps):
        done = {p.statement_id for p in paid}
        run = service.statement_run(conn, label)
        outstanding = tuple(s.partner for s in _moving(run) if s.id not in done)
    return WorkflowState(label, tuple(steps), tuple(paid), outstanding)


def payments(conn: Connection, period: Period | str) -> list[Payment]:
    p = t.settlement_payments.c
    rows = conn.execute(
        sa.select(t.settlement_payments).where(p.period == _label(period)).order_by(p.partner)
    ).all()
    return [
        Payment(
            statement_id=row.statement_id,
            period=row.period,
            partner=row.partner,
            amount_cents=row.amount_cents,
            bank_reference=row.bank_reference,
            entry_id=row.entry_id,
            paid_at=row.paid_at,
            paid_by=row.paid_by,
        )
        for row in rows
    ]


def stored_payment_file(conn: Connection, period: Period | str, schema: str) -> PaymentFile | None:
    f = t.settlement_payment_files.c
    row = conn.execute(
        sa.select(t.settlement_payment_files).where(f.period == _label(period), f.schema == schema)
    ).one_or_none()
    if row is None:
        return None
    return PaymentFile(
        schema=row.schema,
        message_id=row.message_id,
        transactions=row.transactions,
        control_sum_cents=row.control_sum_cents,
        document=bytes(row.document),
        sha256=bytes(row.sha256),
    )


# -- helpers ---------------------------------------------------------------------------------------


def _moving(run: StatementRun) -> list[Statement]:
    """Statements whose payable moves money this period."""
    return [s for s in run.settlement.statements if s.payable_cents != 0]


def _require(conn: Connection, label: str, step: Step, requires: Step) -> StepRecord:
    found = _step(conn, label, requires)
    if found is None:
        raise StepOutOfOrder(label, step, requires)
    return found


def _step(conn: Connection, label: str, step: Step) -> StepRecord | None:
    s = t.settlement_steps.c
    row = conn.execute(
        sa.select(t.settlement_steps).where(s.period == label, s.step == step.value)
    ).one_or_none()
    return None if row is None else _step_record(row)


def _record(
    conn: Connection, label: str, step: Step, actor: str, now: datetime, detail: dict[str, Any]
) -> StepRecord:
    conn.execute(
        t.settlement_steps.insert().values(
            period=label, step=step.value, actor=actor, at=now, detail=detail
        )
    )
    return StepRecord(label, step, actor, now, detail)


def _step_record(row: Any) -> StepRecord:
    return StepRecord(row.period, Step(row.step), row.actor, row.at, dict(row.detail))


def _hex(conn: Connection, table: sa.Table, label: str) -> str:
    return bytes(conn.scalar(sa.select(table.c.sha256).where(table.c.period == label))).hex()


def _staff(name: str) -> Actor:
    return Actor(credential=f"staff:{name}", principal=f"staff:{name}")


def _named(by: str) -> None:
    if not isinstance(by, str) or not by.strip() or len(by) > 100:
        raise AnonymousStep("each settlement step names the finance user who takes it (1–100)")


def _label(period: Period | str) -> str:
    return (period if isinstance(period, Period) else parse_period(period)).label
