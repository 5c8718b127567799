"""Settlement's pure part: the calendar, line pricing, statements, the control total, rendering.

The golden March 2026 example of PRODUCT.md §7 is worked here without a database; the integration
test books it through the engine. Properties (Hypothesis) cover what must hold for any input.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.numbers import ROUNDING_MODES, round_cents
from settlement.errors import InvalidPeriod
from settlement.model import (
    CheckpointRef,
    ControlPoints,
    Flow,
    FlowPoints,
    Settlement,
    StatementLine,
)
from settlement.periods import Period, PeriodKind, paris_midnight, parse_period, period_containing
from settlement.statements import (
    build_statement,
    control_total,
    euros,
    line_postings,
    money_line,
    operator_legs,
    price_line,
    render_settlement,
    statement_document,
)

MARCH = Period(PeriodKind.MONTH, date(2026, 3, 1))
CHECKPOINT = CheckpointRef("test.coalition.local/ledger", 42, bytes(range(32)), "note")
V = Decimal("0.01")

#: The golden table: p, q, net issued, redeemed there, expired from its lots.
GOLDEN = {
    "SUPER": ("0.0110", "0.0095", 1_980_000, 1_500_000, 90_000),
    "DEPT": ("0.0112", "0.0095", 600_000, 250_000, 30_000),
    "RAIL": ("0.0110", "0.0090", 400_000, 900_000, 0),
    "BANK": ("0.0115", "0", 1_200_000, 0, 30_000),
}


def golden_lines(partner: str) -> list[StatementLine]:
    p, q, issued, redeemed, expired = GOLDEN[partner]
    label = MARCH.label
    lines = [
        price_line(
            label, FlowPoints(partner, Flow.ISSUANCE, 1, issued, 0), Decimal(p), "ROUND_HALF_UP"
        )
    ]
    if redeemed:
        points = FlowPoints(partner, Flow.REIMBURSEMENT, 1, redeemed, 0)
        lines.append(price_line(label, points, Decimal(q), "ROUND_HALF_UP"))
    if expired:
        points = FlowPoints(partner, Flow.BREAKAGE, 1, expired, 0)
        lines.append(price_line(label, points, Decimal("0.005"), "ROUND_HALF_UP"))
    lines.append(money_line(label, partner, Flow.FEE, 1, 50_000, "ROUND_HALF_UP"))
    return lines


def golden_settlement() -> Settlement:
    statements = tuple(
        build_statement(
            MARCH.label,
            partner,
            golden_lines(partner),
            carried_in_cents=0,
            threshold_cents=1_000,
            terms_version=1,
        )
        for partner in sorted(GOLDEN)
    )
    growth = sum(issued - redeemed - expired for _, _, issued, redeemed, expired in GOLDEN.values())
    control = control_total(statements, V, ControlPoints(growth, 0, 0, 0))
    legs = operator_legs([line for s in statements for line in s.lines])
    return Settlement(MARCH, CHECKPOINT, statements, control, legs)


# -- the golden example ----------------------------------------------------------------------------


def test_the_golden_statements_net_to_the_cent() -> None:
    """SUPER +7,580.00, DEPT +4,695.00, RAIL −3,200.00, BANK +14,150.00 (PRODUCT.md §7)."""
    settlement = golden_settlement()
    nets = {s.partner: s.net_cents for s in settlement.statements}
    assert nets == {"SUPER": 758_000, "DEPT": 469_500, "RAIL": -320_000, "BANK": 1_415_000}
    super_ = settlement.statement("SUPER")
    assert super_.total(Flow.ISSUANCE) == 2_178_000  # 1,980,000 × 0.0110
    assert super_.total(Flow.REIMBURSEMENT) == 1_425_000  # 1,500,000 × 0.0095
    assert super_.total(Flow.BREAKAGE) == 45_000  # 90,000 × 0.005
    assert super_.total(Flow.FEE) == 50_000
    assert settlement.statement("RAIL").direction == "operator-pays"


def test_the_golden_control_total_is_margin_plus_liability_growth() -> None:
    """+23,225.00 € = 9,425.00 € margin + 13,800.00 € growth of the outstanding-points liability."""
    control = golden_settlement().control
    assert control.net_cents == control.cash_cents == 2_322_500
    assert control.margin == Decimal("9425.00")
    assert control.outstanding_points_growth == 1_380_000
    assert control.liability_growth == Decimal("13800.00")
    assert control.balanced


def test_a_control_total_that_misses_a_point_does_not_balance() -> None:
    """One point credited to a member but on no line breaks the identity."""
    statements = golden_settlement().statements
    control = control_total(statements, V, ControlPoints(1_380_001, 0, 0, 0))
    assert not control.balanced


def test_the_golden_documents_are_canonical_and_cite_the_checkpoint() -> None:
    """Statement JSON is RFC 8785 bytes: money as decimal strings, the checkpoint cited."""
    rendered = render_settlement(golden_settlement())
    super_ = json.loads(dict(rendered.statements)["SUPER"])
    assert super_["net"] == "7580.00"
    assert super_["checkpoint"] == {
        "log": CHECKPOINT.log,
        "size": 42,
        "root": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    }
    assert super_["period"]["start"] == "2026-02-28T23:00:00.000000Z"
    assert super_["lines"][0]["amount"] == "21780.00"
    assert super_["lines"][0]["price"] == "0.0110"
    summary = json.loads(rendered.document)
    assert summary["control"]["margin"] == "9425.00"
    assert summary["control"]["liability_growth"] == "13800.00"
    assert render_settlement(golden_settlement()) == rendered


# -- lines and rounding ----------------------------------------------------------------------------


def test_a_line_is_rounded_once_not_per_entry() -> None:
    """Three 1-point entries at 0.005 €: 1.5 cents rounds to 2 on the line (per entry: 3 × 1)."""
    line = price_line(
        "2026-03", FlowPoints("X", Flow.BREAKAGE, 1, 3, 0), Decimal("0.005"), "ROUND_HALF_UP"
    )
    assert line.amount_cents == 2
    assert line.residue == Decimal("-0.005")
    assert sum(round_cents(Decimal("0.005")) for _ in range(3)) == 3


def test_a_line_nets_reversals_before_rounding() -> None:
    """ISSUANCE = (issued − reversed) × p: one rounding on the net points."""
    line = price_line(
        "2026-03", FlowPoints("X", Flow.ISSUANCE, 2, 1_000, 333), Decimal("0.0115"), "ROUND_HALF_UP"
    )
    assert (line.points, line.exact, line.amount_cents) == (667, Decimal("7.670500"), 767)


prices = st.decimals(min_value=0, max_value=Decimal("0.1"), places=6)
modes = st.sampled_from(sorted(ROUNDING_MODES))
flows = st.sampled_from([Flow.ISSUANCE, Flow.REIMBURSEMENT, Flow.BREAKAGE])


@given(
    points=st.integers(0, 10**9),
    reversed_=st.integers(0, 10**9),
    price=prices,
    mode=modes,
    flow=flows,
)
def test_the_residue_is_exact_minus_rounded(
    points: int, reversed_: int, price: Decimal, mode: str, flow: Flow
) -> None:
    """For any line: residue = exact − rounded, under one cent, and exact = points × price."""
    line = price_line("2026-03", FlowPoints("X", flow, 1, points, reversed_), price, mode)
    assert line.exact == (points - reversed_) * price
    assert line.amount_cents == round_cents((points - reversed_) * price, mode)
    assert line.residue == line.exact - Decimal(line.amount_cents) / 100
    assert abs(line.residue) < Decimal("0.01")
    if mode == "ROUND_HALF_UP":
        assert abs(line.residue) <= Decimal("0.005")


line_inputs = st.lists(
    st.tuples(flows, st.integers(0, 10**8), st.integers(0, 10**7), prices, modes), max_size=30
)


def lines_of(inputs: list) -> list[StatementLine]:
    return [
        price_line("2026-03", FlowPoints(f"P{i}", flow, 1, gross, rev), price, mode)
        for i, (flow, gross, rev, price, mode) in enumerate(inputs)
    ]


@given(inputs=line_inputs)
def test_rounded_lines_and_residues_add_up_to_the_exact_total(inputs: list) -> None:
    """Σ rounded + Σ residues = Σ exact, to the last decimal."""
    lines = lines_of(inputs)
    rounded = sum(Decimal(line.amount_cents) / 100 for line in lines)
    assert rounded + sum(line.residue for line in lines) == sum(line.exact for line in lines)


@given(inputs=line_inputs, fees=st.lists(st.integers(-(10**6), 10**6), max_size=5))
def test_operator_legs_book_the_exact_totals_and_balance_every_entry(
    inputs: list, fees: list
) -> None:
    """Each operator account gets round(Σ exact); line amount = operator leg + rounding cents."""
    lines = lines_of(inputs) + [
        money_line("2026-03", f"F{i}", Flow.ADJUSTMENT, 1, cents, "ROUND_HALF_UP")
        for i, cents in enumerate(fees)
    ]
    legs = operator_legs(lines)
    for side in ("operator:income", "operator:expense"):
        mine = [
            (line, leg)
            for line, leg in zip(lines, legs, strict=True)
            if line.flow.operator_account == side
        ]
        exact = sum((line.exact for line, _ in mine), Decimal(0)) * 100
        assert sum(leg.operator_cents for _, leg in mine) == int(
            exact.quantize(Decimal(1), ROUND_HALF_UP)
        )
        assert abs(
            sum(leg.rounding_cents for _, leg in mine) * Decimal("0.01")
            + sum(line.residue for line, _ in mine)
        ) <= Decimal("0.005")
    for line, leg in zip(lines, legs, strict=True):
        assert line.amount_cents == leg.operator_cents + leg.rounding_cents
        postings = line_postings(line, leg)
        assert sum(p.amount for p in postings) == 0
        assert len(postings) != 1
        if line.flow is Flow.ADJUSTMENT:
            assert leg.rounding_cents == 0  # whole cents carry no residue


statement_inputs = st.dictionaries(
    st.sampled_from(["A", "B", "C", "D"]),
    st.tuples(
        line_inputs, st.integers(0, 10**6), st.integers(-(10**5), 10**5), st.integers(0, 10**5)
    ),
    max_size=4,
)


@settings(max_examples=200)
@given(
    statements_in=statement_inputs,
    point_value=prices,
    program=st.tuples(st.integers(0, 10**7), st.integers(0, 10**6), st.integers(-(10**6), 10**6)),
)
def test_the_sum_of_the_nets_equals_the_control_total(
    statements_in: dict, point_value: Decimal, program: tuple
) -> None:
    """Σ N_i = margin + liability growth + carried in, whenever the points reconcile."""
    statements, growth = [], 0
    for partner, (inputs, fee, carried, threshold) in sorted(statements_in.items()):
        lines = [
            price_line("2026-03", FlowPoints(partner, flow, v, gross, rev), price, mode)
            for v, (flow, gross, rev, price, mode) in enumerate(inputs)
        ]
        lines.append(money_line("2026-03", partner, Flow.FEE, 1, fee, "ROUND_HALF_UP"))
        growth += sum(
            line.points * (1 if line.flow is Flow.ISSUANCE else -1)
            for line in lines
            if line.flow.priced
        )
        statements.append(
            build_statement(
                "2026-03",
                partner,
                lines,
                carried_in_cents=carried,
                threshold_cents=threshold,
                terms_version=1,
            )
        )
    funded, expired, adjusted = program
    growth += funded - expired + adjusted
    control = control_total(
        statements, point_value, ControlPoints(growth, funded, expired, adjusted)
    )
    assert control.balanced
    assert control.net_cents == sum(s.net_cents for s in statements)
    assert (
        Decimal(control.net_cents) / 100
        == control.margin + control.liability_growth + Decimal(control.carried_in_cents) / 100
    )
    for s in statements:
        assert s.payable_cents + s.carried_out_cents == s.net_cents
        assert (s.carried_out_cents != 0) == (
            s.net_cents != 0 and abs(s.net_cents) < s.threshold_cents
        )


def test_a_net_below_the_threshold_is_carried_forward() -> None:
    """|N| < threshold: nothing is paid, N is carried; at the threshold it is paid."""
    fee = [money_line("2026-03", "X", Flow.FEE, 1, 999, "ROUND_HALF_UP")]
    small = build_statement(
        "2026-03", "X", fee, carried_in_cents=0, threshold_cents=1_000, terms_version=1
    )
    assert (small.payable_cents, small.carried_out_cents, small.direction) == (
        0,
        999,
        "carried-forward",
    )
    paid = build_statement(
        "2026-04", "X", fee, carried_in_cents=999, threshold_cents=1_000, terms_version=1
    )
    assert (paid.net_cents, paid.payable_cents, paid.carried_out_cents) == (1_998, 1_998, 0)


def test_euros_keep_at_least_two_decimals_and_every_significant_one() -> None:
    """Exact euro amounts render with two decimals at least and never lose a significant one."""
    assert [euros(Decimal(t)) for t in ("9425", "9425.000000", "-0.0045", "0.10")] == [
        "9425.00",
        "9425.00",
        "-0.0045",
        "0.10",
    ]


def test_a_statement_document_lists_gross_lines_then_the_net() -> None:
    """Lines come in the order of the formula: ISS, RED, BRK, FEE, ADJ; versions ascending."""
    lines = golden_lines("SUPER")
    statement = build_statement(
        "2026-03", "SUPER", reversed(lines), carried_in_cents=0, threshold_cents=0, terms_version=1
    )
    document = statement_document(statement, MARCH, CHECKPOINT)
    assert [line["flow"] for line in document["lines"]] == [
        "ISSUANCE",
        "REIMBURSEMENT",
        "BREAKAGE",
        "FEE",
    ]
    assert document["totals"] == {
        "issuance": "21780.00",
        "reimbursement": "14250.00",
        "breakage": "450.00",
        "fee": "500.00",
        "adjustment": "0.00",
    }


# -- the calendar ----------------------------------------------------------------------------------

#: Paris changes clocks on 29 March 2026 (02:00 → 03:00) and 25 October 2026 (03:00 → 02:00).
DST_SPRING = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
DST_AUTUMN = datetime(2026, 10, 25, 1, 0, tzinfo=UTC)

kinds = st.sampled_from(list(PeriodKind))
#: Instants near the places where periods are easy to get wrong: DST changes, month and year ends.
BOUNDARIES = [
    DST_SPRING,
    DST_AUTUMN,
    datetime(2026, 3, 31, 22, tzinfo=UTC),
    datetime(2026, 12, 31, 23, tzinfo=UTC),
    datetime(2028, 2, 28, 23, tzinfo=UTC),
]
near_boundaries = st.tuples(
    st.sampled_from(BOUNDARIES), st.integers(-40 * 86_400_000_000, 40 * 86_400_000_000)
).map(lambda pair: pair[0] + timedelta(microseconds=pair[1]))
instants = st.one_of(
    st.datetimes(datetime(2020, 1, 1), datetime(2035, 1, 1), timezones=st.just(UTC)),
    near_boundaries,
)


def test_days_around_the_dst_changes_last_23_and_25_hours() -> None:
    """Paris midnights bound the days, so the DST days are 23 and 25 hours long."""
    spring = period_containing(DST_SPRING, PeriodKind.DAY)
    autumn = period_containing(DST_AUTUMN, PeriodKind.DAY)
    assert spring.end - spring.start == timedelta(hours=23)
    assert autumn.end - autumn.start == timedelta(hours=25)
    assert MARCH.end - MARCH.start == timedelta(days=31, hours=-1)


def test_the_march_period_is_half_open_in_paris_time() -> None:
    """March 2026 = [28 Feb 23:00 UTC, 31 Mar 22:00 UTC): CET at the start, CEST at the end."""
    assert (MARCH.start, MARCH.end) == (
        datetime(2026, 2, 28, 23, tzinfo=UTC),
        datetime(2026, 3, 31, 22, tzinfo=UTC),
    )
    assert MARCH.contains(MARCH.start)
    assert not MARCH.contains(MARCH.end)
    assert period_containing(datetime(2026, 3, 31, 21, 59, 59, 999_999, tzinfo=UTC)) == MARCH
    assert period_containing(datetime(2026, 3, 31, 22, tzinfo=UTC)).label == "2026-04"


@given(moment=instants, kind=kinds)
def test_every_instant_lies_in_exactly_its_period(moment: datetime, kind: PeriodKind) -> None:
    """The containing period contains the instant; its neighbours do not; periods tile time."""
    period = period_containing(moment, kind)
    assert period.contains(moment)
    assert not period.previous().contains(moment)
    assert not period.next().contains(moment)
    assert period.previous().end == period.start
    assert period.next().start == period.end
    assert parse_period(period.label) == period
    assert period.start == paris_midnight(period.first_day)


@given(
    booked=st.sampled_from(BOUNDARIES).flatmap(
        lambda base: st.lists(
            st.integers(-40 * 86_400_000_000, 40 * 86_400_000_000).map(
                lambda us: base + timedelta(microseconds=us)
            ),
            min_size=1,
            max_size=40,
        )
    ),
    kind=kinds,
)
def test_no_entry_is_counted_in_two_periods(booked: list[datetime], kind: PeriodKind) -> None:
    """Entries with random ledger times, across boundaries and DST changes: each in one period."""
    periods = [period_containing(min(booked), kind)]
    while periods[-1].end <= max(booked):
        periods.append(periods[-1].next())
    bounds = [(p, p.start, p.end) for p in periods]
    counted = Counter()
    for index, moment in enumerate(booked):
        homes = [p for p, start, end in bounds if start <= moment < end]
        assert homes == [period_containing(moment, kind)]
        counted[index] += len(homes)
    assert sorted(counted) == list(range(len(booked)))
    assert set(counted.values()) == {1}


def test_labels_name_days_weeks_and_months() -> None:
    """Labels parse to their period; impossible dates and misaligned starts are refused."""
    assert parse_period("2026-03") == MARCH
    assert parse_period("2026-W14") == Period(PeriodKind.WEEK, date(2026, 3, 30))
    assert parse_period("2026-03-29").end - parse_period("2026-03-29").start == timedelta(hours=23)
    assert Period(PeriodKind.WEEK, date(2026, 3, 30)).month_starts() == [date(2026, 4, 1)]
    assert Period(PeriodKind.DAY, date(2026, 3, 2)).month_starts() == []
    for bad in ("2026-13", "2026-W54", "2026-02-30", "March", "2026-3"):
        with pytest.raises(InvalidPeriod):
            parse_period(bad)
    with pytest.raises(InvalidPeriod):
        Period(PeriodKind.MONTH, date(2026, 3, 2))
