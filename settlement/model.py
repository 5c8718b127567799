"""Immutable records of settlement: period closes, statement lines, statements, the control total.

Plain frozen dataclasses with one docstring line per field (beancount ``core/data.py``), checked in
the constructor where an invariant can be stated locally. Nothing here touches a database; the
arithmetic that builds these records lives in :mod:`settlement.statements`.

Sign conventions (PRODUCT.md §7), all amounts integer cents:

- a line's ``amount_cents`` is in its flow's own direction: an ISSUANCE line of 21,780.00 € means
  the partner owes 21,780.00 €, a REIMBURSEMENT line of 14,250.00 € that the operator owes it;
- a line's contribution to the partner's net ``N`` is ``+amount`` for ISSUANCE, FEE and ADJUSTMENT
  and ``−amount`` for REIMBURSEMENT and BREAKAGE;
- ``N > 0``: the partner pays the operator; ``N < 0``: the operator pays ``|N|``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from uuid import UUID

from ledger.errors import InvalidRequest
from settlement.periods import Period


class Flow(StrEnum):
    """What a statement line charges or credits."""

    ISSUANCE = "ISSUANCE"
    """Points issued − issue reversals, × p: partner → operator."""
    REIMBURSEMENT = "REIMBURSEMENT"
    """Points redeemed at the partner − redemption reversals, × q: operator → partner."""
    BREAKAGE = "BREAKAGE"
    """Expired points from lots the partner funded, × b: operator → partner."""
    FEE = "FEE"
    """The monthly fee: partner → operator."""
    ADJUSTMENT = "ADJUSTMENT"
    """Accepted disputes and corrections, signed: + the partner owes more."""

    @property
    def sign(self) -> int:
        """The line's sign in ``N``: +1 if the partner pays, −1 if the operator pays."""
        return -1 if self in (Flow.REIMBURSEMENT, Flow.BREAKAGE) else 1

    @property
    def priced(self) -> bool:
        """Whether the line is points × a price (rounded once) rather than cents."""
        return self in (Flow.ISSUANCE, Flow.REIMBURSEMENT, Flow.BREAKAGE)

    @property
    def operator_account(self) -> str:
        """Where the operator books the line: income for what partners pay, expense otherwise."""
        return "operator:expense" if self.sign < 0 else "operator:income"


#: Order of lines inside a statement: the order of the formula for N.
FLOW_ORDER = tuple(Flow)


@dataclass(frozen=True, slots=True)
class CheckpointRef:
    """The signed checkpoint a period's statements are computed over (a proven log prefix)."""

    log: str
    """The log's origin (its key name)."""
    size: int
    """Leaves in the prefix; every entry booked in the period has a smaller index."""
    root: bytes
    """RFC 6962 root hash of those leaves."""
    note: str
    """The C2SP signed note as the integrator signed it; after a witnessed close, followed by the
    witnesses' cosignature lines (a log verifier ignores signature lines from keys it does not
    trust, so the note still verifies with the log key alone)."""


@dataclass(frozen=True, slots=True)
class PeriodClose:
    """The record that a period is closed: its cut-off is the cited checkpoint."""

    period: Period
    """The closed period."""
    checkpoint: CheckpointRef
    """Signed checkpoint covering every entry booked before the period's end."""
    closed_at: datetime
    """When the close was recorded."""
    closed_by: str | None
    """Staff account or job that closed it."""


@dataclass(frozen=True, slots=True)
class FlowPoints:
    """Points of one flow of one partner under one contract version, over one period."""

    partner: str
    flow: Flow
    contract_version: int
    gross: int
    """Points in the flow's direction (issued, redeemed, expired); ≥ 0."""
    reversed: int
    """Points of reversals booked in the period (issue or redemption reversals); ≥ 0."""
    prior_period: int = 0
    """Of the net points, those whose business time precedes the period: late events."""

    def __post_init__(self) -> None:
        if not self.flow.priced:
            raise InvalidRequest(f"{self.flow} is not counted in points")
        if self.gross < 0 or self.reversed < 0:
            raise InvalidRequest("gross and reversed points are never negative")

    @property
    def net(self) -> int:
        return self.gross - self.reversed


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One line of a statement: a (partner, flow, contract version), rounded once."""

    id: str
    """32 hex digits derived from (period, partner, flow, version): stable across recomputation."""
    partner: str
    """The partner the line settles with."""
    flow: Flow
    """What the line charges or credits."""
    contract_version: int
    """The contract version whose terms price the line (in force at the events' business time)."""
    points: int
    """Net points (gross − reversed); 0 for FEE and ADJUSTMENT lines."""
    points_gross: int
    """Points issued, redeemed or expired, before reversals."""
    points_reversed: int
    """Points of issue or redemption reversals."""
    points_prior_period: int
    """Of ``points``, those of late events: business time before the period, booked in it."""
    price: Decimal | None
    """p, q or b in euros per point; ``None`` for FEE and ADJUSTMENT lines."""
    rounding_mode: str
    """The contract's rounding mode, applied once to this line."""
    exact: Decimal
    """points × price in euros, exact (at most six decimal places)."""
    amount_cents: int
    """The line's money in its flow's direction, rounded once to the cent."""
    residue: Decimal
    """exact − amount, in euros: what rounding moved, recorded to the last decimal."""

    def __post_init__(self) -> None:
        if self.residue != self.exact - Decimal(self.amount_cents) / 100:
            raise InvalidRequest(f"line {self.id}: residue ≠ exact − rounded")
        if self.points != self.points_gross - self.points_reversed:
            raise InvalidRequest(f"line {self.id}: net points ≠ gross − reversed")

    @property
    def signed_cents(self) -> int:
        """The line's contribution to the partner's net N."""
        return self.flow.sign * self.amount_cents


@dataclass(frozen=True, slots=True)
class Statement:
    """One partner's statement for one period: gross lines per flow, then the net."""

    id: str
    """32 hex digits derived from (period, partner)."""
    period: str
    """The period's label."""
    partner: str
    """The partner."""
    lines: tuple[StatementLine, ...]
    """Lines in flow order, then contract version."""
    carried_in_cents: int
    """The previous period's net, carried because it was below the threshold."""
    threshold_cents: int
    """Carry-forward threshold of the contract in force at the end of the period."""
    terms_version: int | None
    """The contract version the threshold comes from."""

    def total(self, flow: Flow) -> int:
        """Sum of the amounts of one flow's lines, in the flow's direction."""
        return sum(line.amount_cents for line in self.lines if line.flow is flow)

    @property
    def net_cents(self) -> int:
        """N = ISS + FEE − RED − BRK + ADJ + carried forward."""
        return sum(line.signed_cents for line in self.lines) + self.carried_in_cents

    @property
    def carried_out_cents(self) -> int:
        """N when |N| is below the threshold (carried to the next period), else 0."""
        net = self.net_cents
        return net if abs(net) < self.threshold_cents else 0

    @property
    def payable_cents(self) -> int:
        """What changes hands this period: N, unless it is carried forward."""
        return self.net_cents - self.carried_out_cents

    @property
    def direction(self) -> str:
        """``partner-pays``, ``operator-pays``, ``carried-forward`` or ``nil``."""
        if self.payable_cents > 0:
            return "partner-pays"
        if self.payable_cents < 0:
            return "operator-pays"
        return "carried-forward" if self.carried_out_cents else "nil"


@dataclass(frozen=True, slots=True)
class ControlPoints:
    """Point movements of a period outside the partners' statements, read from the journal."""

    member_growth: int
    """Net points credited to member accounts (all kinds): the growth of the outstanding points."""
    program_funded: int
    """Points the operator funded itself (net of their reversals)."""
    program_expired: int
    """Expired points from lots the operator funded (no rebate is paid on them)."""
    adjustments: int
    """Net points manual adjustments credited to members."""


@dataclass(frozen=True, slots=True)
class Control:
    """The control total: Σ (N_i − carried in) = operator margin + growth of the liability."""

    point_value: Decimal
    """v: euros per outstanding point, the value of the liability the operator carries."""
    cash_cents: int
    """Σ (N_i − carried in): the euros this period's flows move from partners to the operator."""
    carried_in_cents: int
    """Σ carried in from the previous period."""
    margin: Decimal
    """Operator margin from the lines: Σ ISS−v·P + Σ v·P−RED + Σ v·P−BRK + fees + adjustments,
    less the value of points the operator funded or adjusted, plus its own lots that expired."""
    outstanding_points_growth: int
    """Net points credited to members in the period, read from the member accounts."""
    liability_growth: Decimal
    """v × outstanding_points_growth, in euros."""

    @property
    def net_cents(self) -> int:
        """Σ N_i (carried-in amounts included)."""
        return self.cash_cents + self.carried_in_cents

    @property
    def balanced(self) -> bool:
        """Whether the identity holds exactly."""
        return Decimal(self.cash_cents) / 100 == self.margin + self.liability_growth


@dataclass(frozen=True, slots=True)
class OperatorLeg:
    """How one line is booked on the operator's side (cumulative rounding, see statements)."""

    line_id: str
    operator_cents: int
    """Amount on operator:income (ISS, FEE, ADJ) or operator:expense (RED, BRK)."""
    rounding_cents: int
    """amount − operator_cents: whole cents of residue booked to operator:rounding."""


@dataclass(frozen=True, slots=True)
class Settlement:
    """Every statement of a closed period with its control total: a pure function of the journal."""

    period: Period
    """The closed period."""
    checkpoint: CheckpointRef
    """The checkpoint the close cites."""
    statements: tuple[Statement, ...]
    """One per partner with a line or a carried-in amount, by partner code."""
    control: Control
    """The reconciliation of the statements with the outstanding-points liability."""
    legs: tuple[OperatorLeg, ...]
    """Operator-side booking of each priced, fee and adjustment line, in line order."""

    def statement(self, partner: str) -> Statement:
        for statement in self.statements:
            if statement.partner == partner:
                return statement
        raise KeyError(partner)

    @property
    def lines(self) -> tuple[StatementLine, ...]:
        return tuple(line for statement in self.statements for line in statement.lines)


@dataclass(frozen=True, slots=True)
class StatementRun:
    """A prepared (stored) settlement: the statements, their canonical documents and hashes."""

    settlement: Settlement
    """What was computed."""
    document: bytes
    """Canonical JSON (RFC 8785) of the run: period, checkpoint, statement hashes, control."""
    statement_documents: tuple[tuple[str, bytes], ...]
    """(partner, canonical JSON of its statement), by partner code."""
    prepared_at: datetime
    """When the statements were prepared."""
    prepared_by: str | None
    """Who prepared them (finance user A of the four-eyes workflow)."""

    @property
    def period(self) -> Period:
        return self.settlement.period


@dataclass(frozen=True, slots=True)
class Adjustment:
    """A signed money correction for a partner (an accepted dispute), settled in its period."""

    id: UUID
    partner: str
    amount_cents: int
    """Signed: positive, the partner owes more; negative, the operator owes it."""
    reason: str
    """Why, in words (the dispute's resolution)."""
    recorded_at: datetime
    """When it was recorded: assigns its period, as booked_at does for entries."""
    recorded_by: str | None
    dispute_id: str | None
    """The dispute it settles, if any."""
    entry_ids: tuple[str, ...]
    """The journal entries the dispute cited."""

    def __post_init__(self) -> None:
        if isinstance(self.amount_cents, bool) or not isinstance(self.amount_cents, int):
            raise InvalidRequest("an adjustment is a whole number of cents")
        if self.amount_cents == 0:
            raise InvalidRequest("an adjustment moves a non-zero amount")
        if not self.reason or not self.reason.strip():
            raise InvalidRequest("an adjustment needs a reason")
