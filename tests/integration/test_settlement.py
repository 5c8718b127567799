"""Settlement end to end over the engine: close, prepare, verify, post — on SQLite and PostgreSQL.

The golden March 2026 example of PRODUCT.md §7 is booked through the kernel (earns, a refund, burns,
a cancelled order, an expiry run), the period is closed on a signed checkpoint, and the statements
must equal the table to the cent, with the control total 23,225.00 = 9,425.00 + 13,800.00.

Net points per partner in the golden data set::

    SUPER  issued 2,000,000 − refunded 20,000 = 1,980,000; redeemed 1,510,000 − 10,000 = 1,500,000
    DEPT   issued 600,000; redeemed 250,000
    RAIL   issued 400,000; redeemed 900,000 (members spend others' points on trains)
    BANK   issued 1,200,000; redeemed 0
    expired on 21 March from a joint promotion's lots: SUPER 90,000, DEPT 30,000, BANK 30,000
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar
from uuid import uuid4

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.consistency import check_consistency
from ledger.db import Database
from ledger.integrator import Integrator
from ledger.model import Entry
from ledger.note import NoteSigner
from ledger.repository import SqlLedgerStore
from ledger.service import Actor, Ledger
from partners import directory
from partners.directory import ContractTerms
from settlement import service
from settlement import tables as st
from settlement.errors import (
    EntriesBeforeFirstPeriod,
    PeriodClosed,
    PeriodNotClosed,
    PeriodNotIntegrated,
    PeriodNotOver,
    PeriodOutOfOrder,
    StatementsNotPrepared,
)
from settlement.model import Flow, PeriodClose, StatementRun
from settlement.periods import PARIS, PeriodKind, parse_period, period_containing

T = TypeVar("T")

ORIGIN = "test.coalition.local/ledger"
T0 = datetime(2026, 1, 10, 9, tzinfo=UTC)
JANUARY_1 = datetime(2026, 1, 1, tzinfo=PARIS)
MARCH, APRIL, MAY = parse_period("2026-03"), parse_period("2026-04"), parse_period("2026-05")

ACCOUNTS = {
    "SUPER": ("FR76 3000 6000 0112 3456 7890 189", "AGRIFRPP"),
    "DEPT": ("DE89 3704 0044 0532 0130 00", "COBADEFFXXX"),
    "RAIL": ("GB29 NWBK 6016 1331 9268 19", "NWBKGB2L"),
    "BANK": ("NL91 ABNA 0417 1643 00", "ABNANL2A"),
}
GOLDEN_PRICES = {  # p, q
    "SUPER": ("0.0110", "0.0095"),
    "DEPT": ("0.0112", "0.0095"),
    "RAIL": ("0.0110", "0.0090"),
    "BANK": ("0.0115", "0"),
}
ACTORS = {code: Actor(credential=f"key-{code.lower()}", partner=code) for code in ACCOUNTS}
FINANCE_A = Actor(credential="staff-ann", principal="staff:ann")
FINANCE_B = Actor(credential="staff-ben", principal="staff:ben")


def paris(month: int, day: int, hour: int = 10, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=PARIS).astimezone(UTC)


def terms(p: str = "0.0110", q: str = "0.0095", **changes: Any) -> ContractTerms:
    values: dict[str, Any] = {
        "issue_price": p,
        "reimbursement_price": q,
        "breakage_rebate": "0.005",
        "monthly_fee_cents": 50_000,
        "pending_days": 0,
        "earn_rate": "1",
        "rounding_mode": "ROUND_HALF_UP",
        "carry_forward_threshold_cents": 1_000,
    }
    values.update(changes)
    return ContractTerms(**values)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Coalition:
    """Partners, members and a ledger over one database; each call is one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.clock = Clock(T0)
        self.ledger = Ledger(clock=self.clock)
        self.integrator = Integrator(NoteSigner.generate(ORIGIN))

    def run(self, work: Callable[[Connection], T]) -> T:
        with self.db.transaction() as conn:
            return work(conn)

    def kernel(self, command: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self.ledger, command)
        return self.run(lambda conn: method(SqlLedgerStore(conn), *args, **kwargs))

    def setup(self, contracts: dict[str, list[tuple[ContractTerms, datetime, datetime | None]]]):
        def work(conn: Connection) -> None:
            self.ledger.open_system_accounts(SqlLedgerStore(conn))
            for code, versions in contracts.items():
                iban, bic = ACCOUNTS[code]
                directory.onboard_partner(conn, code, f"{code} SA", iban, bic, T0)
                for version_terms, valid_from, valid_to in versions:
                    directory.add_contract(
                        conn, code, version_terms, valid_from, valid_to, T0, "adm"
                    )
            for member in ("alice", "bob", "shorty"):
                self.ledger.open_member(SqlLedgerStore(conn), member)

        self.run(work)

    def at(self, moment: datetime) -> Coalition:
        self.clock.now = moment
        return self

    def earn(self, partner: str, member: str, points: int, **kwargs: Any) -> Entry:
        funding = kwargs.pop("funding", {partner: points})
        kwargs.setdefault("business_time", self.clock.now)
        booking = self.kernel(
            "earn", ACTORS[partner], f"k-{uuid4()}", member=member, funding=funding, **kwargs
        )
        return booking.entry

    def burn(self, partner: str, member: str, points: int) -> Entry:
        return self.kernel(
            "burn",
            ACTORS[partner],
            f"k-{uuid4()}",
            member=member,
            points=points,
            business_time=self.clock.now,
        ).entry

    def reverse(
        self, partner: str, entry: Entry, points: int, business_time: datetime | None = None
    ) -> Entry:
        return self.kernel(
            "reverse",
            ACTORS[partner],
            f"k-{uuid4()}",
            entry_id=entry.id,
            points=points,
            business_time=business_time or self.clock.now,
        ).entry

    def close(self, label: str, *, integrate: bool = True) -> PeriodClose:
        integrator = self.integrator if integrate else None
        return self.run(
            lambda conn: service.close_period(
                conn, label, now=self.clock.now, closed_by="ann", integrator=integrator
            )
        )

    def prepare(self, label: str) -> StatementRun:
        return self.run(
            lambda conn: service.prepare_statements(
                conn, label, now=self.clock.now, prepared_by="ann"
            )
        )

    def verify(self, label: str) -> list:
        return self.run(lambda conn: service.verify_period(conn, label))

    def balance(self, account: str) -> int:
        return self.run(lambda conn: SqlLedgerStore(conn).balance(account))

    def after(self, period: Any, minutes: int = 10) -> Coalition:
        """Move the clock just past a period's cut-off and close delay."""
        return self.at(period.end + timedelta(minutes=minutes))


def nets(run: StatementRun) -> dict[str, int]:
    return {s.partner: s.net_cents for s in run.settlement.statements}


def line_points(run: StatementRun, partner: str) -> dict[tuple[Flow, int], int]:
    return {
        (line.flow, line.contract_version): line.points
        for line in run.settlement.statement(partner).lines
    }


@contextmanager
def as_dba(db: Database) -> Iterator[Connection]:
    """Raw edits in one transaction, past PostgreSQL's guard-rail triggers as a DBA can."""
    with db.engine.begin() as conn:
        if db.engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        yield conn


# -- the golden example ----------------------------------------------------------------------------


@pytest.fixture
def golden(db: Database) -> Coalition:
    """The March 2026 data set of the module docstring, booked through the kernel."""
    world = Coalition(db)
    world.setup({code: [(terms(p, q), JANUARY_1, None)] for code, (p, q) in GOLDEN_PRICES.items()})
    world.at(paris(3, 2))
    purchase = world.earn("SUPER", "alice", 1_910_000)
    world.earn("DEPT", "alice", 570_000)
    world.earn("BANK", "bob", 1_170_000)
    world.earn("RAIL", "bob", 400_000)
    world.earn(  # a joint promotion whose lots expire on 20 March
        "SUPER",
        "shorty",
        150_000,
        funding={"SUPER": 90_000, "DEPT": 30_000, "BANK": 30_000},
        expires_at=paris(3, 20, 0),
    )
    world.at(paris(3, 5)).reverse("SUPER", purchase, 20_000)
    spend = world.at(paris(3, 10)).burn("SUPER", "alice", 1_510_000)
    world.at(paris(3, 11)).reverse("SUPER", spend, 10_000)
    world.at(paris(3, 12)).burn("DEPT", "alice", 250_000)
    world.burn("RAIL", "bob", 900_000)
    expired = world.at(paris(3, 21)).kernel("expire_due", "shorty", paris(3, 21))
    assert expired is not None
    return world


def test_the_golden_march_statements_equal_the_table_to_the_cent(golden: Coalition) -> None:
    """N: SUPER +7,580.00, DEPT +4,695.00, RAIL −3,200.00, BANK +14,150.00 (PRODUCT.md §7)."""
    golden.after(MARCH).close("2026-03")
    run = golden.prepare("2026-03")
    assert nets(run) == {"SUPER": 758_000, "DEPT": 469_500, "RAIL": -320_000, "BANK": 1_415_000}
    assert line_points(run, "SUPER") == {
        (Flow.ISSUANCE, 1): 1_980_000,
        (Flow.REIMBURSEMENT, 1): 1_500_000,
        (Flow.BREAKAGE, 1): 90_000,
        (Flow.FEE, 1): 0,
    }
    issuance = run.settlement.statement("SUPER").lines[0]
    assert (issuance.points_gross, issuance.points_reversed) == (2_000_000, 20_000)
    assert line_points(run, "RAIL") == {
        (Flow.ISSUANCE, 1): 400_000,
        (Flow.REIMBURSEMENT, 1): 900_000,
        (Flow.FEE, 1): 0,
    }
    assert line_points(run, "BANK") == {
        (Flow.ISSUANCE, 1): 1_200_000,
        (Flow.BREAKAGE, 1): 30_000,
        (Flow.FEE, 1): 0,
    }
    super_ = run.settlement.statement("SUPER")
    assert [super_.total(flow) for flow in Flow] == [2_178_000, 1_425_000, 45_000, 50_000, 0]
    assert {s.partner: s.direction for s in run.settlement.statements} == {
        "BANK": "partner-pays",
        "DEPT": "partner-pays",
        "RAIL": "operator-pays",
        "SUPER": "partner-pays",
    }
    assert all(line.residue == 0 for line in run.settlement.lines)


def test_the_golden_control_total_holds(golden: Coalition) -> None:
    """+23,225.00 € = 9,425.00 € margin + 13,800.00 € growth of the outstanding-points liability."""
    golden.after(MARCH).close("2026-03")
    control = golden.prepare("2026-03").settlement.control
    assert control.net_cents == 2_322_500
    assert control.margin == Decimal("9425.00")
    assert control.outstanding_points_growth == 1_380_000
    assert control.liability_growth == Decimal("13800.00")
    assert control.balanced
    summary = json.loads(golden.prepare("2026-03").document)
    assert summary["control"]["sum_net"] == "23225.00"
    assert summary["control"]["margin"] == "9425.00"
    assert summary["control"]["liability_growth"] == "13800.00"


def test_statements_are_reproducible_byte_for_byte(golden: Coalition) -> None:
    """verify_period recomputes March from the journal and finds the stored bytes and hashes."""
    golden.after(MARCH).close("2026-03")
    run = golden.prepare("2026-03")
    assert golden.verify("2026-03") == []
    assert golden.prepare("2026-03") == run  # preparing again returns the stored run
    stored = golden.run(lambda conn: service.statement_run(conn, "2026-03"))
    assert stored == run
    document = json.loads(dict(run.statement_documents)["SUPER"])
    close = golden.run(lambda conn: service.period_close(conn, "2026-03"))
    assert close is not None
    assert document["checkpoint"]["size"] == close.checkpoint.size
    assert document["net"] == "7580.00"


def test_posting_books_balanced_settlement_entries_once(golden: Coalition) -> None:
    """One SETTLEMENT entry per line; settlement accounts then hold each N; a retry replays."""
    golden.after(MARCH).close("2026-03")
    run = golden.prepare("2026-03")
    bookings = golden.run(
        lambda conn: service.post_statements(conn, run, FINANCE_A, ledger=golden.ledger)
    )
    assert len(bookings) == len(run.settlement.lines) == 14
    assert not any(booking.replayed for booking in bookings)
    for code, net in nets(run).items():
        assert golden.balance(f"partner:{code}:settlement") == net
    assert golden.balance("operator:income") == -(4_670_000 + 200_000)  # ISS + fees
    assert golden.balance("operator:expense") == 2_472_500 + 75_000  # RED + BRK
    assert golden.balance("operator:rounding") == 0
    again = golden.run(
        lambda conn: service.post_statements(conn, run, FINANCE_B, ledger=golden.ledger)
    )
    assert all(booking.replayed for booking in again)
    assert [b.entry.id for b in again] == [b.entry.id for b in bookings]
    with golden.db.engine.connect() as conn:
        assert check_consistency(conn) == []
    golden.integrator.integrate_all(golden.db)
    assert golden.verify("2026-03") == []  # the entries are booked in April: March is unchanged


# -- closing ---------------------------------------------------------------------------------------


def test_a_period_closes_only_after_its_cut_off_and_once_logged(golden: Coalition) -> None:
    """Before the end (+ delay): refused; entries not logged: refused; then closed on a checkpoint.

    The close cites the checkpoint the integrator signed after logging every March entry.
    """
    golden.at(MARCH.end)
    with pytest.raises(PeriodNotOver):
        golden.close("2026-03")
    golden.after(MARCH)
    with pytest.raises(PeriodNotIntegrated) as refused:
        golden.close("2026-03", integrate=False)
    assert refused.value.fields()["waiting"] == 11  # every entry of the golden data set
    close = golden.close("2026-03")
    assert close.checkpoint.size == 11
    assert close.checkpoint.log == ORIGIN
    assert close.checkpoint.note.startswith(f"{ORIGIN}\n11\n")


def test_closing_twice_returns_the_first_close(golden: Coalition) -> None:
    """A second close, even with more entries logged since, returns the first unchanged."""
    first = golden.after(MARCH).close("2026-03")
    golden.at(paris(4, 2)).earn("SUPER", "alice", 10)
    again = golden.close("2026-03")
    assert again == first


def test_periods_close_in_order_and_the_first_leaves_nothing_behind(golden: Coalition) -> None:
    """April before March is refused; so is a first close after flows were booked."""
    golden.after(APRIL)
    with pytest.raises(EntriesBeforeFirstPeriod):
        golden.close("2026-04")
    golden.close("2026-03")
    with pytest.raises(PeriodOutOfOrder):
        golden.after(MAY).close("2026-05")
    with pytest.raises(PeriodOutOfOrder):
        golden.close("2026-04-02")  # a gap: 1 April would be left open
    golden.close("2026-04")
    golden.close("2026-05")


def test_statements_need_a_close_and_the_previous_period_prepared(golden: Coalition) -> None:
    """Preparing needs a close; verifying needs a run; a run needs the previous period's run."""
    with pytest.raises(PeriodNotClosed):
        golden.prepare("2026-03")
    golden.after(MARCH).close("2026-03")
    with pytest.raises(StatementsNotPrepared):
        golden.verify("2026-03")
    golden.after(APRIL).close("2026-04")
    with pytest.raises(StatementsNotPrepared):
        golden.prepare("2026-04")  # the carry-forward comes from March
    golden.prepare("2026-03")
    golden.prepare("2026-04")


# -- late events -----------------------------------------------------------------------------------


@pytest.fixture
def repriced(db: Database) -> Coalition:
    """SUPER at p = 0.0110 until April (v1), 0.0120 from April (v2); DEPT carries small nets."""
    world = Coalition(db)
    world.setup(
        {
            "SUPER": [
                (terms("0.0110"), JANUARY_1, APRIL.start),
                (terms("0.0120"), APRIL.start, None),
            ],
            "DEPT": [
                (
                    terms("0.0112", monthly_fee_cents=0, carry_forward_threshold_cents=10_000),
                    JANUARY_1,
                    None,
                )
            ],
        }
    )
    return world


def test_a_refund_after_the_close_lands_in_the_next_period_at_the_old_price(
    repriced: Coalition,
) -> None:
    """A 31 March refund booked after March closed is April's, priced by March's contract (v1)."""
    world = repriced
    purchase = world.at(paris(3, 10)).earn("SUPER", "alice", 100_000)
    world.after(MARCH).close("2026-03")
    march = world.prepare("2026-03")
    assert nets(march)["SUPER"] == 110_000 + 50_000
    world.reverse("SUPER", purchase, 10_000, business_time=paris(3, 31, 23))  # late, old price
    world.at(paris(4, 5)).reverse("SUPER", purchase, 5_000)  # priced at April's v2
    world.at(paris(4, 6)).earn("SUPER", "bob", 20_000)
    world.after(APRIL).close("2026-04")
    april = world.prepare("2026-04")
    super_ = april.settlement.statement("SUPER")
    assert [(line.flow, line.contract_version, line.points) for line in super_.lines] == [
        (Flow.ISSUANCE, 1, -10_000),
        (Flow.ISSUANCE, 2, 15_000),
        (Flow.FEE, 2, 0),
    ]
    assert [line.amount_cents for line in super_.lines] == [-11_000, 18_000, 50_000]
    assert [line.points_prior_period for line in super_.lines] == [-10_000, 0, 0]
    document = json.loads(dict(april.statement_documents)["SUPER"])
    assert document["lines"][0]["points_prior_period"] == -10_000
    assert super_.net_cents == 57_000
    control = april.settlement.control
    assert control.outstanding_points_growth == 5_000
    assert (control.margin, control.liability_growth) == (Decimal("520.00"), Decimal("50.00"))
    assert world.verify("2026-03") == []  # March is untouched by the late refund
    assert world.prepare("2026-03") == march
    assert world.verify("2026-04") == []


def test_a_small_net_is_carried_to_the_next_period(repriced: Coalition) -> None:
    """DEPT: 56.00 € is below its 100.00 € threshold, so it is carried; April pays 112.00 €."""
    world = repriced
    world.at(paris(3, 10)).earn("DEPT", "alice", 5_000)
    world.after(MARCH).close("2026-03")
    dept = world.prepare("2026-03").settlement.statement("DEPT")
    assert (dept.net_cents, dept.payable_cents, dept.carried_out_cents) == (5_600, 0, 5_600)
    world.at(paris(4, 10)).earn("DEPT", "alice", 5_000)
    world.after(APRIL).close("2026-04")
    april = world.prepare("2026-04")
    dept = april.settlement.statement("DEPT")
    assert (dept.carried_in_cents, dept.net_cents, dept.payable_cents) == (5_600, 11_200, 11_200)
    assert april.settlement.control.carried_in_cents == 5_600
    assert april.settlement.control.balanced
    # Posted, the settlement account accumulates: the carried March line is still owed.
    for run in (world.prepare("2026-03"), april):
        world.run(lambda conn, run=run: service.post_statements(conn, run, FINANCE_A))
    assert world.balance("partner:DEPT:settlement") == 11_200


def test_an_accepted_dispute_is_an_adjustment_in_the_next_open_period(
    repriced: Coalition,
) -> None:
    """Recorded after March closed, it is April's ADJUSTMENT line; never recorded into March."""
    world = repriced
    world.at(paris(3, 10)).earn("SUPER", "alice", 100_000)
    world.after(MARCH).close("2026-03")
    world.prepare("2026-03")

    def adjust(now: datetime, dispute: str = "D-1") -> Any:
        return world.run(
            lambda conn: service.record_adjustment(
                conn,
                "SUPER",
                -2_500,
                "double-counted basket",
                now=now,
                recorded_by="ben",
                dispute_id=dispute,
                entry_ids=["0f0e7d52-9a0c-4c3e-9b0e-6c1f8d1a2b3c"],
            )
        )

    with pytest.raises(PeriodClosed):
        adjust(paris(3, 31, 12), "D-0")
    first = adjust(paris(4, 3))
    assert adjust(paris(4, 4)) == first  # a dispute is settled once
    world.after(APRIL).close("2026-04")
    super_ = world.prepare("2026-04").settlement.statement("SUPER")
    assert [(line.flow, line.amount_cents) for line in super_.lines] == [
        (Flow.FEE, 50_000),
        (Flow.ADJUSTMENT, -2_500),
    ]
    assert super_.net_cents == 47_500
    assert world.verify("2026-04") == []


# -- the calendar, by ledger time ------------------------------------------------------------------


def test_daily_periods_across_the_dst_change_count_every_entry_once(db: Database) -> None:
    """Entries booked at random around 29 March (23 h long): each in the Paris day of booked_at."""
    world = Coalition(db)
    world.setup({"SUPER": [(terms(monthly_fee_cents=0), JANUARY_1, None)]})
    first_day, last_day = parse_period("2026-03-28"), parse_period("2026-03-30")
    span = int((last_day.end - first_day.start).total_seconds())  # 71 hours: one is missing
    rng = random.Random(20260329)
    booked = [first_day.start + timedelta(seconds=rng.randrange(span)) for _ in range(24)]
    booked += [parse_period("2026-03-29").start, last_day.start, last_day.end - timedelta(1e-6)]
    entries = [(moment, 100 + index) for index, moment in enumerate(sorted(booked))]
    for moment, points in entries:
        world.at(moment).earn("SUPER", "alice", points, business_time=moment)
    counted, day = 0, first_day
    for _ in range(3):
        world.after(day).close(day.label)
        run = world.prepare(day.label)
        issued = sum(line.points for line in run.settlement.lines if line.flow is Flow.ISSUANCE)
        assert issued == sum(p for at, p in entries if period_containing(at, PeriodKind.DAY) == day)
        counted += issued
        day = day.next()
    assert counted == sum(points for _, points in entries)


# -- tampering -------------------------------------------------------------------------------------


def test_verification_finds_an_entry_backdated_into_a_closed_period(golden: Coalition) -> None:
    """A writer with a clock in March books after the close: the recomputation differs."""
    golden.after(MARCH).close("2026-03")
    golden.prepare("2026-03")
    backdated = Ledger(clock=lambda: paris(3, 30))
    golden.run(
        lambda conn: backdated.earn(
            SqlLedgerStore(conn),
            ACTORS["SUPER"],
            "backdated",
            member="alice",
            funding={"SUPER": 1_000},
            business_time=paris(3, 30),
        )
    )
    golden.integrator.integrate_all(golden.db)
    checks = sorted({finding.check for finding in golden.verify("2026-03")})
    assert checks == ["checkpoint-coverage", "settlement-document", "statement-document"]


def test_verification_finds_an_edited_statement(golden: Coalition) -> None:
    """A DBA rewriting a stored statement's bytes is caught by its hash and by recomputation."""
    golden.after(MARCH).close("2026-03")
    golden.prepare("2026-03")
    statements = st.settlement_statements
    with as_dba(golden.db) as conn:
        document = conn.scalar(
            sa.select(statements.c.document).where(statements.c.partner == "RAIL")
        )
        forged = bytes(document).replace(b'"-3200.00"', b'"-3900.00"')
        conn.execute(
            statements.update().where(statements.c.partner == "RAIL").values(document=forged)
        )
    findings = golden.verify("2026-03")
    assert {(f.check, f.subject) for f in findings} == {
        ("statement-hash", "2026-03 RAIL"),
        ("statement-document", "2026-03 RAIL"),
    }


def test_postgres_refuses_to_change_settlement_facts(
    golden: Coalition, postgres_only: None
) -> None:
    """Closes, runs, statements, lines and adjustments are append-only on PostgreSQL."""
    golden.after(MARCH).close("2026-03")
    golden.prepare("2026-03")
    for table in (st.settlement_periods, st.settlement_statements, st.settlement_lines):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), golden.db.transaction() as conn:
            conn.execute(table.delete())
