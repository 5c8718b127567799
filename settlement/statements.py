"""Statement arithmetic and rendering: pure functions from point totals to canonical JSON.

The formulas (PRODUCT.md §7), for partner i over a closed period, each Σ over its lines::

    ISS_i = Σ round((issued − issue_reversed) × p)          partner → operator
    RED_i = Σ round((redeemed − redeem_reversed) × q)       operator → partner
    BRK_i = Σ round(expired points from lots i funded × b)  operator → partner
    FEE_i = the monthly fee                                 partner → operator
    ADJ_i = accepted disputes (signed)
    N_i   = ISS_i + FEE_i − RED_i − BRK_i + ADJ_i + carried_forward_i

A line groups points by (partner, flow, contract version) and is rounded ONCE, to the cent, in the
contract's rounding mode (:func:`ledger.numbers.round_cents`); its residue ``exact − rounded`` is
kept to the last decimal. ``|N_i|`` below the contract's threshold is carried to the next period.

The control total. Let v be the value of one outstanding point (the operator's liability per
point). The cash the period's flows move to the operator, Σ (N_i − carried in), splits exactly
into the operator's margin and the growth of the outstanding-points liability::

    Σ (N_i − cf_i) = margin + v × ΔP
    margin = Σ_ISS (amount − v·P) + Σ_RED (v·P − amount) + Σ_BRK (v·P − amount) + Σ FEE + Σ ADJ
             − v × (points the operator funded itself + points adjusted to members)
             + v × (points expired from lots the operator funded)

where ΔP, the growth of the points members hold, is read from the MEMBER accounts, while the margin
is computed from the statement lines (partner accounts and lot moves). The identity therefore holds
only if every point that reached or left a member is on some line or in the operator's own terms:
a real reconciliation, not a tautology. Golden March 2026 (v = 0.01 €): 23,225.00 = 9,425.00 margin
+ 13,800.00 (1,380,000 points of liability growth).

Booking the lines in the cent book (:func:`operator_legs`): partners are billed and paid the
rounded line amounts; the operator's income and expense accounts carry the *exact* values to the
cent by cumulative rounding (each side books ``round(running exact total)`` minus what it booked
before), and the difference, whole cents of accumulated residue, goes to ``operator:rounding``.
Every entry balances, and ``Σ amounts = Σ operator legs + Σ rounding`` exactly.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ledger.canonical import canonical_bytes, format_decimal, format_timestamp
from ledger.model import Posting
from ledger.numbers import format_cents, round_cents
from settlement.model import (
    FLOW_ORDER,
    CheckpointRef,
    Control,
    ControlPoints,
    Flow,
    FlowPoints,
    OperatorLeg,
    Settlement,
    Statement,
    StatementLine,
)
from settlement.periods import PARIS, Period

#: Version of the statement documents' JSON shape.
DOCUMENT_VERSION = 1

#: Domain separation of the identifiers derived from a line's or statement's natural key.
_LINE_DOMAIN = b"coalition-ledger statement line v1\x00"
_STATEMENT_DOMAIN = b"coalition-ledger statement v1\x00"

#: Exact amounts are points × a price of at most six decimals: six places hold them exactly.
_EXACT = Decimal("0.000001")
_CENT = Decimal("0.01")


# -- identifiers -----------------------------------------------------------------------------------


def line_id(period: str, partner: str, flow: Flow, version: int) -> str:
    """32 hex digits naming a line; the same inputs give the same id on every recomputation."""
    key = f"{period}\x00{partner}\x00{flow.value}\x00{version}".encode()
    return hashlib.sha256(_LINE_DOMAIN + key).hexdigest()[:32]


def statement_id(period: str, partner: str) -> str:
    """32 hex digits naming a partner's statement for a period."""
    return hashlib.sha256(_STATEMENT_DOMAIN + f"{period}\x00{partner}".encode()).hexdigest()[:32]


# -- lines -----------------------------------------------------------------------------------------


def price_line(
    period: str, points: FlowPoints, price: Decimal, rounding_mode: str
) -> StatementLine:
    """A priced line: net points × price, rounded once in the contract's mode."""
    exact = (Decimal(points.net) * price).quantize(_EXACT)
    if exact != Decimal(points.net) * price:
        raise ValueError(f"price {price} has more than six decimal places")
    amount = round_cents(exact, rounding_mode)
    return StatementLine(
        id=line_id(period, points.partner, points.flow, points.contract_version),
        partner=points.partner,
        flow=points.flow,
        contract_version=points.contract_version,
        points=points.net,
        points_gross=points.gross,
        points_reversed=points.reversed,
        points_prior_period=points.prior_period,
        price=price,
        rounding_mode=rounding_mode,
        exact=exact,
        amount_cents=amount,
        residue=exact - Decimal(amount) / 100,
    )


def money_line(
    period: str, partner: str, flow: Flow, version: int, cents: int, rounding_mode: str
) -> StatementLine:
    """A FEE or ADJUSTMENT line: whole cents already, so nothing to round and no residue."""
    exact = (Decimal(cents) / 100).quantize(_EXACT)
    return StatementLine(
        id=line_id(period, partner, flow, version),
        partner=partner,
        flow=flow,
        contract_version=version,
        points=0,
        points_gross=0,
        points_reversed=0,
        points_prior_period=0,
        price=None,
        rounding_mode=rounding_mode,
        exact=exact,
        amount_cents=cents,
        residue=exact - Decimal(cents) / 100,
    )


def build_statement(
    period: str,
    partner: str,
    lines: Iterable[StatementLine],
    *,
    carried_in_cents: int,
    threshold_cents: int,
    terms_version: int | None,
) -> Statement:
    """A partner's statement: its lines in flow order, then by contract version."""
    order = {flow: index for index, flow in enumerate(FLOW_ORDER)}
    ordered = sorted(lines, key=lambda line: (order[line.flow], line.contract_version))
    return Statement(
        id=statement_id(period, partner),
        period=period,
        partner=partner,
        lines=tuple(ordered),
        carried_in_cents=carried_in_cents,
        threshold_cents=threshold_cents,
        terms_version=terms_version,
    )


# -- the operator's side ---------------------------------------------------------------------------


def operator_legs(lines: Sequence[StatementLine]) -> tuple[OperatorLeg, ...]:
    """Book each line's exact value on operator:income or :expense by cumulative rounding.

    Per side, the running exact total is rounded half up once more, and each line books the growth
    of that rounded total; the rest of the line's amount (whole cents of accumulated residue) goes
    to operator:rounding. So each operator account holds its lines' exact total to within half a
    cent, whatever the number of lines, and partners still pay the once-rounded line amounts.
    """
    running: dict[str, Decimal] = {}
    booked: dict[str, int] = {}
    legs = []
    for line in lines:
        side = line.flow.operator_account
        running[side] = running.get(side, Decimal(0)) + line.exact
        total = int((running[side] * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        operator = total - booked.get(side, 0)
        booked[side] = total
        legs.append(OperatorLeg(line.id, operator, line.amount_cents - operator))
    return tuple(legs)


def line_postings(line: StatementLine, leg: OperatorLeg) -> list[Posting]:
    """The EUR postings of a line's SETTLEMENT entry; empty when the line moves no money.

    ``partner:{p}:settlement`` holds what the partner owes the operator (positive) or is owed
    (negative). A line the partner pays debits it and credits operator:income; a line the operator
    pays credits it and debits operator:expense; the line's whole cents of residue balance the
    entry on operator:rounding (negative there: a rounding gain of the operator).
    """
    sign = line.flow.sign
    amounts = {
        f"partner:{line.partner}:settlement": sign * line.amount_cents,
        line.flow.operator_account: -sign * leg.operator_cents,
        "operator:rounding": -sign * leg.rounding_cents,
    }
    return [Posting(account, amount) for account, amount in amounts.items() if amount]


# -- the control total -----------------------------------------------------------------------------


def control_total(
    statements: Sequence[Statement], point_value: Decimal, points: ControlPoints
) -> Control:
    """Σ (N_i − carried in), the operator margin from the lines, and the liability growth.

    ``points.member_growth`` comes from the member accounts, independently of the lines; the
    returned :class:`Control` is :attr:`~Control.balanced` only if the two reconcile exactly.
    """
    margin = Decimal(0)
    for line in (line for statement in statements for line in statement.lines):
        amount = Decimal(line.amount_cents) / 100
        value = point_value * line.points
        if line.flow is Flow.ISSUANCE:
            margin += amount - value  # sold points above (or below) the value of the liability
        elif line.flow.priced:
            margin += value - amount  # a liability of v per point settled for q (or b)
        else:
            margin += amount  # fees and adjustments are cash, no points
    margin += point_value * (points.program_expired - points.program_funded - points.adjustments)
    carried_in = sum(s.carried_in_cents for s in statements)
    return Control(
        point_value=point_value,
        cash_cents=sum(s.net_cents for s in statements) - carried_in,
        carried_in_cents=carried_in,
        margin=margin,
        outstanding_points_growth=points.member_growth,
        liability_growth=point_value * points.member_growth,
    )


# -- documents -------------------------------------------------------------------------------------


def statement_document(
    statement: Statement, period: Period, checkpoint: CheckpointRef
) -> dict[str, Any]:
    """The statement as a hashed-data profile value (money as decimal strings, PRODUCT.md §4)."""
    totals = {flow.value.lower(): format_cents(statement.total(flow)) for flow in FLOW_ORDER}
    return {
        "v": DOCUMENT_VERSION,
        "type": "statement",
        "id": statement.id,
        "period": _period_document(period),
        "checkpoint": _checkpoint_document(checkpoint),
        "partner": statement.partner,
        "currency": "EUR",
        "lines": [_line_document(line) for line in statement.lines],
        "totals": totals,
        "carried_in": format_cents(statement.carried_in_cents),
        "net": format_cents(statement.net_cents),
        "carry_forward_threshold": format_cents(statement.threshold_cents),
        "terms_version": statement.terms_version,
        "carried_out": format_cents(statement.carried_out_cents),
        "payable": format_cents(statement.payable_cents),
        "direction": statement.direction,
    }


def run_document(settlement: Settlement, statement_hashes: Mapping[str, bytes]) -> dict[str, Any]:
    """The period's summary: each statement's hash and net, the control total, the operator legs."""
    control = settlement.control
    return {
        "v": DOCUMENT_VERSION,
        "type": "settlement",
        "period": _period_document(settlement.period),
        "checkpoint": _checkpoint_document(settlement.checkpoint),
        "currency": "EUR",
        "statements": [
            {
                "partner": s.partner,
                "id": s.id,
                "sha256": statement_hashes[s.partner].hex(),
                "net": format_cents(s.net_cents),
                "payable": format_cents(s.payable_cents),
                "carried_out": format_cents(s.carried_out_cents),
            }
            for s in settlement.statements
        ],
        "control": {
            "sum_net": format_cents(control.net_cents),
            "carried_in": format_cents(control.carried_in_cents),
            "cash": format_cents(control.cash_cents),
            "margin": euros(control.margin),
            "liability_growth": euros(control.liability_growth),
            "outstanding_points_growth": control.outstanding_points_growth,
            "point_value": format_decimal(control.point_value),
            "balanced": control.balanced,
        },
        "operator_legs": [
            {
                "line": leg.line_id,
                "operator": format_cents(leg.operator_cents),
                "rounding": format_cents(leg.rounding_cents),
            }
            for leg in settlement.legs
        ],
    }


def render(document: Mapping[str, Any]) -> bytes:
    """RFC 8785 canonical bytes: the form that is hashed, stored and compared byte for byte."""
    return canonical_bytes(dict(document))


def digest(data: bytes) -> bytes:
    """SHA-256 of a rendered document."""
    return hashlib.sha256(data).digest()


def euros(value: Decimal) -> str:
    """An exact euro amount as text with at least two decimals (``9425.00``, ``0.0045``)."""
    text = format_decimal(value.quantize(_EXACT))
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"{whole}.{fraction}"


def _line_document(line: StatementLine) -> dict[str, Any]:
    return {
        "id": line.id,
        "flow": line.flow.value,
        "contract_version": line.contract_version,
        "points": line.points,
        "points_gross": line.points_gross,
        "points_reversed": line.points_reversed,
        "points_prior_period": line.points_prior_period,
        "price": None if line.price is None else format_decimal(line.price),
        "exact": euros(line.exact),
        "amount": format_cents(line.amount_cents),
        "residue": euros(line.residue),
        "rounding_mode": line.rounding_mode,
    }


def _period_document(period: Period) -> dict[str, Any]:
    return {
        "label": period.label,
        "kind": period.kind.value,
        "start": format_timestamp(period.start),
        "end": format_timestamp(period.end),
        "time_zone": str(PARIS),
    }


def _checkpoint_document(checkpoint: CheckpointRef) -> dict[str, Any]:
    root = base64.b64encode(checkpoint.root).decode("ascii")
    return {"log": checkpoint.log, "size": checkpoint.size, "root": root}


@dataclass(frozen=True, slots=True)
class Rendered:
    """A settlement's documents and hashes, as stored and as recomputed for verification."""

    document: bytes
    sha256: bytes
    statements: tuple[tuple[str, bytes], ...]
    """(partner, canonical JSON), by partner code."""

    def statement_hash(self, partner: str) -> bytes:
        return digest(dict(self.statements)[partner])


def render_settlement(settlement: Settlement) -> Rendered:
    """Every document of a settlement, rendered canonically."""
    statements = tuple(
        (s.partner, render(statement_document(s, settlement.period, settlement.checkpoint)))
        for s in settlement.statements
    )
    hashes = {partner: digest(data) for partner, data in statements}
    document = render(run_document(settlement, hashes))
    return Rendered(document, digest(document), statements)
