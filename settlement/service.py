"""Settlement use cases: close a period, prepare and verify its statements, post them, adjust.

Lifecycle (PRODUCT.md §7), and what this module does of it:

1. **close** (:func:`close_period`): once the period's cut-off has passed and the integrator has
   logged every entry booked before it, record the close with the signed checkpoint that covers
   them. Periods close in order, each where the last one ended.
2. **prepare** (:func:`prepare_statements`): compute every partner's statement from the journal,
   check the control total, render canonical JSON, hash and store it. One run per period.
3. approve (finance user B ≠ A): the four-eyes workflow, :mod:`settlement.workflow`.
4. **post** (:func:`post_statements`): one balanced SETTLEMENT entry per statement line.
5. payment file, mark paid, settled: :mod:`settlement.workflow` and :mod:`settlement.payments`.

:func:`verify_period` recomputes a prepared period from the journal and compares byte for byte.

Time: an entry belongs to the period that contains its ledger time ``booked_at``, which the ledger
stamps "now" when it books. Once a period is closed its end lies in the past, so nothing booked
later can fall into it: a late event (a refund of a March purchase arriving on 2 April) lands in
the next open period and is priced there by its own business time's contract version. A close
waits :data:`CLOSE_DELAY` past the cut-off, longer than any write transaction may run, so an entry
stamped just before midnight but committed just after is logged before the close, not lost.

Every function works inside the caller's transaction and takes the time explicitly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from uuid import uuid4

from sqlalchemy.engine import Connection

from ledger.consistency import Finding
from ledger.errors import InvalidRequest, LedgerError
from ledger.integrator import Integrator
from ledger.model import EntryKind
from ledger.note import Checkpoint, parse_note
from ledger.numbers import format_cents, parse_rate
from ledger.repository import SqlLedgerStore
from ledger.service import Actor, Booking, Ledger
from partners import directory
from partners.directory import Contract, ContractTerms
from partners.errors import NoContract
from partners.expiry import read_setting, write_setting
from settlement.errors import (
    ControlTotalMismatch,
    EntriesBeforeFirstPeriod,
    NoCheckpoint,
    PeriodClosed,
    PeriodNotClosed,
    PeriodNotIntegrated,
    PeriodNotOver,
    PeriodOutOfOrder,
    SettlementError,
    StatementsNotPrepared,
)
from settlement.model import (
    Adjustment,
    CheckpointRef,
    Flow,
    PeriodClose,
    Settlement,
    Statement,
    StatementLine,
    StatementRun,
)
from settlement.periods import Period, paris_midnight, parse_period
from settlement.repository import SqlSettlementStore
from settlement.statements import (
    build_statement,
    control_total,
    digest,
    euros,
    line_postings,
    money_line,
    operator_legs,
    price_line,
    render_settlement,
)

#: How long after its cut-off a period may be closed: longer than any write transaction runs, so
#: every entry stamped before the cut-off has committed (and can be logged) by then.
CLOSE_DELAY = timedelta(minutes=5)

#: ``program_settings`` name of v, the value of one outstanding point (the liability per point).
POINT_VALUE_SETTING = "settlement_point_value"
#: v when the programme never set one: the golden example's 0.01 € (PRODUCT.md §7).
DEFAULT_POINT_VALUE = Decimal("0.01")

#: Idempotency scope of SETTLEMENT entries: one for the whole operator, never per staff member,
#: so a line is posted once whoever approves or retries the posting.
POSTING_PRINCIPAL = "settlement"


# -- close ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Witnessing:
    """What the witnesses said of the checkpoint a close is to rest on.

    ``note`` is the log's signed note with the cosignature lines of ``witnesses`` appended (a log
    verifier still accepts it: it ignores other keys' lines), when a quorum cosigned it.
    """

    log: str
    size: int
    quorum: int
    note: str | None
    witnesses: tuple[str, ...]
    """Names of the witnesses whose cosignature verified."""
    refusals: tuple[str, ...] = ()
    """One line per witness that did not cosign, saying why (for the operator's message)."""

    @property
    def reached(self) -> bool:
        return self.note is not None and len(set(self.witnesses)) >= self.quorum


#: Asks the configured witnesses to cosign the log's latest checkpoint (which must be committed:
#: a witness that cosigned a checkpoint later rolled back would see a fork), publishing it when a
#: quorum does. Supplied by the layer that knows the witnesses; settlement does not import it.
Cosigner = Callable[[Connection, CheckpointRef], Witnessing]


class WitnessQuorumNotMet(SettlementError):
    """Witnesses are configured, and fewer than the quorum cosigned the close's checkpoint."""

    code = "witness-quorum-not-met"

    def __init__(self, period: str, witnessing: Witnessing) -> None:
        reasons = "; ".join(witnessing.refusals) or "no cosignature"
        super().__init__(
            f"{period} is not closed: {len(witnessing.witnesses)} of the {witnessing.quorum} "
            f"witness cosignatures required for {witnessing.log} at size {witnessing.size} "
            f"({reasons})"
        )
        self.period = period
        self.witnessing = witnessing

    def fields(self) -> dict[str, object]:
        return {
            "period": self.period,
            "log": self.witnessing.log,
            "size": self.witnessing.size,
            "quorum": self.witnessing.quorum,
            "cosigned_by": list(self.witnessing.witnesses),
            "refusals": list(self.witnessing.refusals),
        }


def close_period(
    conn: Connection,
    period: Period | str,
    *,
    now: datetime,
    closed_by: str | None = None,
    integrator: Integrator | None = None,
    delay: timedelta = CLOSE_DELAY,
    cosign: Cosigner | None = None,
) -> PeriodClose:
    """Close a period on the signed checkpoint that covers every entry booked before its end.

    With an ``integrator``, first drains its queue in this transaction; without, refuses while
    entries booked before the cut-off still wait to be logged. Closing a closed period returns its
    first close unchanged.

    With ``cosign`` (witnesses are configured), the close rests on the covering checkpoint as a
    quorum of witnesses cosigned it, and records that cosigned note; fewer cosignatures refuse the
    close (:class:`WitnessQuorumNotMet`), writing nothing. The checkpoint must be committed before
    witnesses see it, so ``cosign`` goes without ``integrator``: drain the queue first, in its own
    transaction, with :func:`integrate_for_close`.
    """
    if cosign is not None and integrator is not None:
        raise InvalidRequest(
            "a witnessed close needs its checkpoint committed first: call integrate_for_close "
            "in its own transaction, then close_period without the integrator"
        )
    period = _period(period)
    store = SqlSettlementStore(conn)
    existing = store.close(period.label)
    if existing is not None:
        return existing
    _check_closable(store, period, now, delay)
    if integrator is not None:
        _drain(store, period, integrator, conn)
    waiting = store.waiting_before(period.end)
    if waiting:
        raise PeriodNotIntegrated(period.label, waiting)
    checkpoint = store.latest_checkpoint()
    if checkpoint is None:
        raise NoCheckpoint(period.label)
    if cosign is not None:
        checkpoint = _cosigned(period, checkpoint, cosign(conn, checkpoint))
    close = PeriodClose(period, checkpoint, now, closed_by)
    store.insert_close(close)
    return close


def close_cosigners(close: PeriodClose) -> tuple[str, ...]:
    """Names on the signature lines of a close's checkpoint note other than the log's own key.

    A witnessed close records the checkpoint as the witnesses cosigned it, so these are its
    witnesses (as named by the note; their signatures are checked with their keys elsewhere).
    """
    signatures = parse_note(close.checkpoint.note).signatures
    return tuple(s.name for s in signatures if s.name != close.checkpoint.log)


def integrate_for_close(
    conn: Connection,
    period: Period | str,
    *,
    now: datetime,
    integrator: Integrator,
    delay: timedelta = CLOSE_DELAY,
) -> None:
    """Log every entry booked before the period's end, ahead of a witnessed close.

    The first of a witnessed close's two transactions: the checkpoint it leaves is committed
    before any witness is asked about it. Refuses what :func:`close_period` would refuse (too
    early, out of order); does nothing for a closed period.
    """
    period = _period(period)
    store = SqlSettlementStore(conn)
    if store.close(period.label) is not None:
        return
    _check_closable(store, period, now, delay)
    _drain(store, period, integrator, conn)


def _check_closable(
    store: SqlSettlementStore, period: Period, now: datetime, delay: timedelta
) -> None:
    if now < period.end + delay:
        raise PeriodNotOver(period.label, period.end + delay, now)
    _check_follows(store, period)


def _drain(
    store: SqlSettlementStore, period: Period, integrator: Integrator, conn: Connection
) -> None:
    integrator.ensure_log(conn)
    while store.waiting_before(period.end) and integrator.integrate_batch(conn) is not None:
        pass


def _cosigned(period: Period, checkpoint: CheckpointRef, witnessing: Witnessing) -> CheckpointRef:
    """The covering checkpoint as the witnesses cosigned it; refuses without the quorum.

    The witnesses may have been shown a later checkpoint of the same log than the one read here
    (the integrator ran in between); it covers the period all the same, so the close rests on it.
    """
    if not witnessing.reached or witnessing.note is None:
        raise WitnessQuorumNotMet(period.label, witnessing)
    signed = Checkpoint.parse(parse_note(witnessing.note).text)
    if (
        witnessing.log != checkpoint.log
        or signed.origin != checkpoint.log
        or signed.size != witnessing.size
        or signed.size < checkpoint.size
    ):
        raise WitnessQuorumNotMet(
            period.label,
            Witnessing(
                checkpoint.log,
                checkpoint.size,
                witnessing.quorum,
                None,
                (),
                (f"the witnesses cosigned {signed.origin} at size {signed.size} instead",),
            ),
        )
    return CheckpointRef(checkpoint.log, signed.size, signed.root, witnessing.note)


def period_close(conn: Connection, period: Period | str) -> PeriodClose | None:
    """The close of a period, or ``None`` while it is open."""
    return SqlSettlementStore(conn).close(_period(period).label)


def _check_follows(store: SqlSettlementStore, period: Period) -> None:
    """Periods close one after another; the first one leaves no earlier flow unsettled."""
    last = store.last_close()
    if last is None:
        earliest = store.earliest_flow()
        if earliest is not None and earliest < period.start:
            raise EntriesBeforeFirstPeriod(period.label, earliest)
    elif period.start != last.period.end:
        raise PeriodOutOfOrder(period.label, last.period.label, last.period.end)


# -- statements ------------------------------------------------------------------------------------


def prepare_statements(
    conn: Connection,
    period: Period | str,
    *,
    now: datetime,
    prepared_by: str | None = None,
    point_value: Decimal | str | None = None,
) -> StatementRun:
    """Compute, check, render, hash and store the statements of a closed period (once).

    A second call returns the stored run. Refuses (:class:`ControlTotalMismatch`) to store
    statements whose control total does not reconcile with the outstanding-points liability.
    """
    period = _period(period)
    store = SqlSettlementStore(conn)
    existing = store.run(period.label)
    if existing is not None:
        return existing
    value = (
        get_point_value(conn)
        if point_value is None
        else parse_rate(point_value, name="point value")
    )
    settlement = compute_settlement(conn, period, point_value=value)
    control = settlement.control
    if not control.balanced:
        raise ControlTotalMismatch(
            period.label,
            format_cents(control.cash_cents),
            euros(control.margin + control.liability_growth),
        )
    rendered = render_settlement(settlement)
    run = StatementRun(settlement, rendered.document, rendered.statements, now, prepared_by)
    store.insert_run(run, rendered)
    return run


def statement_run(conn: Connection, period: Period | str) -> StatementRun:
    """The prepared statements of a period, as stored."""
    label = _period(period).label
    run = SqlSettlementStore(conn).run(label)
    if run is None:
        raise StatementsNotPrepared(label)
    return run


def compute_settlement(
    conn: Connection, period: Period | str, *, point_value: Decimal
) -> Settlement:
    """Every statement of a closed period and its control total, recomputed from the journal.

    Reads only: the entries booked in the period (by ledger time), priced by the contract version
    in force at each entry's business time; the adjustments recorded in it; the monthly fees due
    in it; and what the previous period's run carried forward.
    """
    period = _period(period)
    store = SqlSettlementStore(conn)
    close = store.close(period.label)
    if close is None:
        raise PeriodNotClosed(period.label)
    contracts = {p: directory.contracts(conn, p) for p in store.contracted_partners()}
    lines: dict[str, list[StatementLine]] = defaultdict(list)
    for points in store.partner_flows(period.start, period.end, contracts):
        terms = _version(contracts[points.partner], points.contract_version).terms
        price = _price(terms, points.flow)
        lines[points.partner].append(price_line(period.label, points, price, terms.rounding_mode))
    for line in _fee_lines(period, contracts):
        lines[line.partner].append(line)
    for line in _adjustment_lines(period, store.adjustments(period.start, period.end), contracts):
        lines[line.partner].append(line)
    carried = _carried_in(store, period)
    statements = [
        _statement(period, partner, lines.get(partner, ()), carried.get(partner, 0), contracts)
        for partner in sorted(set(lines) | {p for p, cents in carried.items() if cents})
    ]
    control = control_total(statements, point_value, store.control_points(period.start, period.end))
    legs = operator_legs([line for statement in statements for line in statement.lines])
    return Settlement(period, close.checkpoint, tuple(statements), control, legs)


def _statement(
    period: Period,
    partner: str,
    lines: Sequence[StatementLine],
    carried_in: int,
    contracts: dict[str, list[Contract]],
) -> Statement:
    """A partner's statement; its threshold is the one governing the period's last instant."""
    governing = _governing(contracts.get(partner, ()), period.end - _INSTANT)
    return build_statement(
        period.label,
        partner,
        lines,
        carried_in_cents=carried_in,
        threshold_cents=governing.terms.carry_forward_threshold_cents if governing else 0,
        terms_version=governing.version if governing else None,
    )


def _fee_lines(period: Period, contracts: dict[str, list[Contract]]) -> Iterable[StatementLine]:
    """The monthly fee of each partner, due in the period that contains the month's first day.

    Priced by the contract version in force at that first instant of the month; a partner whose
    contract starts later in the month pays its first fee the month after.
    """
    for month in period.month_starts():
        for partner, versions in sorted(contracts.items()):
            contract = _in_force(versions, paris_midnight(month))
            if contract is not None and contract.terms.monthly_fee_cents:
                yield money_line(
                    period.label,
                    partner,
                    Flow.FEE,
                    contract.version,
                    contract.terms.monthly_fee_cents,
                    contract.terms.rounding_mode,
                )


def _adjustment_lines(
    period: Period, adjustments: Sequence[Adjustment], contracts: dict[str, list[Contract]]
) -> Iterable[StatementLine]:
    """One ADJUSTMENT line per (partner, contract version governing when it was recorded)."""
    totals: dict[tuple[str, int], int] = defaultdict(int)
    modes: dict[tuple[str, int], str] = {}
    for adjustment in adjustments:
        contract = _governing(contracts.get(adjustment.partner, ()), adjustment.recorded_at)
        if contract is None:
            raise NoContract(adjustment.partner, adjustment.recorded_at)
        key = (adjustment.partner, contract.version)
        totals[key] += adjustment.amount_cents
        modes[key] = contract.terms.rounding_mode
    for (partner, version), cents in sorted(totals.items()):
        yield money_line(
            period.label, partner, Flow.ADJUSTMENT, version, cents, modes[partner, version]
        )


def _carried_in(store: SqlSettlementStore, period: Period) -> dict[str, int]:
    """What the previous closed period carried forward, per partner (nothing for the first)."""
    previous = store.close_ending_at(period.start)
    if previous is None:
        return {}
    carried = store.carried_out(previous.period.label)
    if carried is None:
        raise StatementsNotPrepared(previous.period.label)
    return carried


# -- verification ----------------------------------------------------------------------------------


def verify_period(conn: Connection, period: Period | str) -> list[Finding]:
    """Recompute a prepared period from the journal and compare it byte for byte; every finding.

    Checks: each stored document hashes to its recorded SHA-256; the recomputed run and statements
    equal the stored bytes; the control total balances; every entry booked in the period is
    covered by the checkpoint the close cites. An empty list means the period verifies.
    """
    period = _period(period)
    label = period.label
    store = SqlSettlementStore(conn)
    run = statement_run(conn, period)
    findings = _stored_hash_findings(store, run)
    try:
        recomputed = compute_settlement(
            conn, period, point_value=run.settlement.control.point_value
        )
    except LedgerError as exc:
        return [*findings, Finding("statements-recompute", label, "recomputable", exc.message)]
    rendered = render_settlement(recomputed)
    if rendered.document != run.document:
        findings.append(
            Finding("settlement-document", label, digest(run.document).hex(), rendered.sha256.hex())
        )
    stored, fresh = dict(run.statement_documents), dict(rendered.statements)
    for partner in sorted(set(stored) | set(fresh)):
        if stored.get(partner) != fresh.get(partner):
            findings.append(
                Finding(
                    "statement-document",
                    f"{label} {partner}",
                    _hex_digest(stored.get(partner)),
                    _hex_digest(fresh.get(partner)),
                )
            )
    control = recomputed.control
    if not control.balanced:
        findings.append(
            Finding(
                "control-total",
                label,
                format_cents(control.cash_cents),
                euros(control.margin + control.liability_growth),
            )
        )
    outside = store.entries_outside(period.start, period.end, run.settlement.checkpoint)
    if outside:
        findings.append(Finding("checkpoint-coverage", label, 0, outside))
    return findings


def _stored_hash_findings(store: SqlSettlementStore, run: StatementRun) -> list[Finding]:
    label = run.period.label
    run_hash, statement_hashes = store.stored_hashes(label)
    findings = []
    if digest(run.document) != run_hash:
        findings.append(
            Finding("settlement-hash", label, run_hash.hex(), digest(run.document).hex())
        )
    for partner, document in run.statement_documents:
        if digest(document) != statement_hashes.get(partner):
            findings.append(
                Finding(
                    "statement-hash",
                    f"{label} {partner}",
                    statement_hashes.get(partner, b"").hex(),
                    digest(document).hex(),
                )
            )
    return findings


def _hex_digest(document: bytes | None) -> str | None:
    return None if document is None else digest(document).hex()


# -- posting ---------------------------------------------------------------------------------------


def post_statements(
    conn: Connection, run: StatementRun, actor: Actor, *, ledger: Ledger | None = None
) -> list[Booking]:
    """Book one balanced SETTLEMENT entry per statement line that moves money; idempotent.

    The idempotency key is the line id, scoped to the operator's settlement (not to ``actor``),
    so a retry, or another approver, replays the entries booked the first time. The entries are
    dated (business time) at the period's end; their ledger time is now, in an open period.
    """
    ledger = ledger or Ledger()
    store = SqlLedgerStore(conn)
    poster = Actor(actor.credential, principal=POSTING_PRINCIPAL)
    legs = {leg.line_id: leg for leg in run.settlement.legs}
    bookings = []
    for statement in run.settlement.statements:
        for line in statement.lines:
            postings = line_postings(line, legs[line.id])
            if not postings:
                continue
            bookings.append(
                ledger.post(
                    store,
                    poster,
                    f"settlement:{line.id}",
                    kind=EntryKind.SETTLEMENT,
                    postings=postings,
                    business_time=run.period.end,
                    reason=f"{run.period.label} {line.flow.value.lower()} of {line.partner}",
                    attributes={
                        "period": run.period.label,
                        "statement": statement.id,
                        "line": line.id,
                        "flow": line.flow.value,
                        "contract_version": line.contract_version,
                    },
                )
            )
    return bookings


# -- adjustments and settings ----------------------------------------------------------------------


def record_adjustment(
    conn: Connection,
    partner: str,
    amount_cents: int,
    reason: str,
    *,
    now: datetime,
    recorded_by: str | None = None,
    dispute_id: str | None = None,
    entry_ids: Sequence[str] = (),
) -> Adjustment:
    """Record a signed correction (+: the partner owes more), settled in the open period of ``now``.

    A dispute's adjustment is recorded once: recording it again returns the first one.
    """
    directory.partner(conn, partner)
    store = SqlSettlementStore(conn)
    if dispute_id is not None:
        existing = store.adjustment_for_dispute(dispute_id)
        if existing is not None:
            return existing
    last = store.last_close()
    if last is not None and now < last.period.end:
        raise PeriodClosed(last.period.label, now)
    adjustment = Adjustment(
        id=uuid4(),
        partner=partner,
        amount_cents=amount_cents,
        reason=reason.strip() if isinstance(reason, str) else reason,
        recorded_at=now,
        recorded_by=recorded_by,
        dispute_id=dispute_id,
        entry_ids=tuple(str(entry_id) for entry_id in entry_ids),
    )
    store.insert_adjustment(adjustment)
    return adjustment


def get_point_value(conn: Connection) -> Decimal:
    """v, the value of one outstanding point used for the control total."""
    stored = read_setting(conn, POINT_VALUE_SETTING)
    return DEFAULT_POINT_VALUE if stored is None else parse_rate(stored, name="point value")


def set_point_value(conn: Connection, value: Decimal | str, now: datetime) -> Decimal:
    """Set v (decimal text or Decimal, at most six places)."""
    rate = parse_rate(value, name="point value")
    write_setting(conn, POINT_VALUE_SETTING, format(rate, "f"), now)
    return rate


#: ``program_settings`` name of the witnesses a close waits for: their specs and the quorum.
CLOSE_WITNESSES_SETTING = "settlement_close_witnesses"


@dataclass(frozen=True, slots=True)
class WitnessPolicy:
    """The witnesses a close waits for and how many of them must cosign.

    A witness is kept as the operator gave it (``URL=VKEY``, as ``coalition checkpoint publish``
    takes it); the layer that asks witnesses parses and checks it before it is saved.
    """

    witnesses: tuple[str, ...]
    quorum: int

    def __post_init__(self) -> None:
        if not self.witnesses or any(
            not isinstance(w, str) or not w.strip() for w in self.witnesses
        ):
            raise InvalidRequest("a witness policy names at least one witness")
        if len(set(self.witnesses)) != len(self.witnesses):
            raise InvalidRequest("a witness is listed twice; each witness counts once")
        quorum = self.quorum
        if isinstance(quorum, bool) or not isinstance(quorum, int):
            raise InvalidRequest(f"the quorum is a whole number, not {quorum!r}")
        if not 1 <= quorum <= len(self.witnesses):
            raise InvalidRequest(
                f"the quorum must be between 1 and {len(self.witnesses)} witnesses, not {quorum}"
            )


def close_witness_policy(conn: Connection) -> WitnessPolicy | None:
    """The witnesses closes wait for, or ``None``: closes then rest on the log's signature alone."""
    stored = read_setting(conn, CLOSE_WITNESSES_SETTING)
    if not stored:
        return None
    return WitnessPolicy(tuple(stored["witnesses"]), int(stored["quorum"]))


def set_close_witness_policy(
    conn: Connection, policy: WitnessPolicy | None, now: datetime
) -> WitnessPolicy | None:
    """Save (or, with ``None``, clear) the witnesses closes wait for."""
    # An empty object, not JSON null, marks "no witnesses": the column is NOT NULL.
    value = {} if policy is None else {"witnesses": list(policy.witnesses), "quorum": policy.quorum}
    write_setting(conn, CLOSE_WITNESSES_SETTING, value, now)
    return policy


# -- contracts -------------------------------------------------------------------------------------

#: The smallest step of a stored time: ``end − _INSTANT`` is the last instant of a period.
_INSTANT = timedelta(microseconds=1)


def _in_force(versions: Sequence[Contract], at: datetime) -> Contract | None:
    """The version in force at ``at``: the newest that has started and not ended (contract_at)."""
    found = [c for c in versions if c.in_force_at(at)]
    return max(found, key=lambda c: c.version) if found else None


def _governing(versions: Sequence[Contract], at: datetime) -> Contract | None:
    """The version in force at ``at``, else the newest that started before (a contract ended)."""
    started = [c for c in versions if c.valid_from <= at]
    return _in_force(versions, at) or (max(started, key=lambda c: c.version) if started else None)


def _version(versions: Sequence[Contract], version: int) -> Contract:
    return next(c for c in versions if c.version == version)


def _price(terms: ContractTerms, flow: Flow) -> Decimal:
    if flow is Flow.ISSUANCE:
        return terms.issue_price
    if flow is Flow.REIMBURSEMENT:
        return terms.reimbursement_price
    return terms.breakage_rebate


def _period(period: Period | str) -> Period:
    return period if isinstance(period, Period) else parse_period(period)
