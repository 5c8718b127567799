"""Auditor and finance reports over a journal booked through the kernel and the partner directory.

The scenario (:func:`build_ledger`) spans March to May 2026 with three contracted partners and the
operator's own funding: earns (one joint, one pending), an engagement funded by the programme, a
burn and its partial reversal, an earn reversal, a transfer, a release, lot expiry and a
forfeiture, a EUR settlement posting, and two contract versions for DEPT. The expected figures in
each test are worked out by hand from that story (the comments show the arithmetic), and checked
against a second, independent path where one exists (member balances, ``program:breakage``).
These tests run on SQLite and, with ``COALITION_TEST_DATABASE_URL``, on PostgreSQL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from audit import reports
from ledger.db import Database
from ledger.integrator import Integrator
from ledger.model import Book, EntryKind, Posting
from ledger.note import NoteSigner
from ledger.repository import SqlLedgerStore
from ledger.service import Actor, Ledger, Policy
from partners import directory
from partners.directory import ContractTerms
from tests.integration.conftest import Clock, new_key

ORIGIN = "reports.coalition.local/ledger"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SETUP = datetime(2026, 1, 1, tzinfo=UTC)
IBAN, BIC = "DE89370400440532013000", "COBADEFFXXX"

SUPER = Actor(credential="key-super", partner="SUPER")
DEPT = Actor(credential="key-dept", partner="DEPT")
RAIL = Actor(credential="key-rail", partner="RAIL")
STAFF = Actor(credential="staff-alice")


def terms(q: str, mode: str = "ROUND_HALF_UP") -> ContractTerms:
    return ContractTerms(
        issue_price=Decimal("0.011"), reimbursement_price=Decimal(q),
        breakage_rebate=Decimal("0.005"), monthly_fee_cents=50_000, pending_days=14,
        earn_rate=Decimal(1), rounding_mode=mode, carry_forward_threshold_cents=1_000,
    )


@dataclass
class Scenario:
    """The booked and integrated ledger, and the tree size after the March entries."""

    db: Database
    signer: NoteSigner
    march_size: int
    """Tree size once the nine March entries were integrated (a signed checkpoint)."""
    final_size: int


def build_ledger(db: Database, signer: NoteSigner) -> Scenario:
    """Book the March–May 2026 story, integrating once after March and once at the end."""
    clock = Clock(START)
    kernel = Ledger(Policy(), clock=clock)
    with db.transaction() as conn:
        store = SqlLedgerStore(conn)
        kernel.open_system_accounts(store)
        for code in ("SUPER", "DEPT", "RAIL"):
            if directory.SqlDirectory(conn).partner(code) is None:
                directory.onboard_partner(conn, code, f"{code} SA", IBAN, BIC, SETUP)
        directory.add_contract(conn, "SUPER", terms("0.0095"), SETUP, None, SETUP, "tests")
        # DEPT: v1 until April, then v2 with another price and mode (exposure picks by date).
        april = datetime(2026, 4, 1, tzinfo=UTC)
        directory.add_contract(conn, "DEPT", terms("0.009"), SETUP, april, SETUP, "tests")
        directory.add_contract(
            conn, "DEPT", terms("0.009537", "ROUND_DOWN"), april, None, SETUP, "tests"
        )
        # RAIL's contract ends on 1 May: points it funds after that have no price.
        directory.add_contract(
            conn, "RAIL", terms("0.009"), SETUP, datetime(2026, 5, 1, tzinfo=UTC), SETUP, "tests"
        )
        for member in ("alice", "bob", "carol"):
            kernel.open_member(store, member)

    def run(command: str, *args: object, **kwargs: object) -> object:
        with db.transaction() as conn:
            return getattr(kernel, command)(SqlLedgerStore(conn), *args, **kwargs)

    now = clock
    expiry = datetime(2026, 4, 15, tzinfo=UTC)
    # March (Paris): lots A1 alice SUPER 500 (expires 15 April), B1 bob SUPER 120 + B2 DEPT 80,
    # B3 bob DEPT 100, C1 carol DEPT 60 pending, C2 carol program 25.
    run("earn", SUPER, new_key(), member="alice", funding={"SUPER": 500},
        business_time=now(), expires_at=expiry)
    run("earn", SUPER, new_key(), member="bob", funding={"SUPER": 120, "DEPT": 80},
        business_time=now())
    refundable = run("earn", DEPT, new_key(), member="bob", funding={"DEPT": 100},
                     business_time=now()).entry.id  # type: ignore[attr-defined]
    run("earn", DEPT, new_key(), member="carol", funding={"DEPT": 60}, business_time=now(),
        pending_until=now() + timedelta(days=14))
    run("earn", STAFF, new_key(), member="carol", funding={"program": 25}, business_time=now(),
        kind=EntryKind.ENGAGE)
    clock.advance(days=8)
    burn = run("burn", RAIL, new_key(), member="alice", points=150,
               business_time=now()).entry.id  # type: ignore[attr-defined]
    run("reverse", RAIL, new_key(), entry_id=burn, points=50, business_time=now(),
        reason="order cancelled")  # A1: 500 − 150 + 50 = 400
    run("reverse", DEPT, new_key(), entry_id=refundable, points=30, business_time=now(),
        reason="refund")  # B3: 70
    # A1 → 360; bob's new lot B4 keeps SUPER, the March vintage and the 15 April expiry.
    run("transfer", STAFF, new_key(), from_member="alice", to_member="bob", points=40,
        business_time=now())
    integrator = Integrator(signer)
    assert integrator.integrate_all(db) == 9
    march_size = 9

    # April: A2 alice DEPT 333; carol's C1 released; B5 bob SUPER 10 pending.
    clock.now = datetime(2026, 4, 3, 9, 0, tzinfo=UTC)
    run("earn", DEPT, new_key(), member="alice", funding={"DEPT": 333}, business_time=now())
    assert run("release_due", "carol") is not None
    run("earn", SUPER, new_key(), member="bob", funding={"SUPER": 10}, business_time=now(),
        pending_until=datetime(2026, 4, 17, tzinfo=UTC))
    clock.now = datetime(2026, 4, 16, 9, 0, tzinfo=UTC)
    assert run("expire_due", "alice") is not None  # A1: 360 SUPER points expire
    assert run("expire_due", "bob") is not None  # B4: 40 SUPER points expire

    # May: bob forfeits everything (B1 120 + B5 10 SUPER, B2 80 + B3 70 DEPT); new lots C3 carol
    # RAIL 200 and C4 carol SUPER 7 pending; a settlement in euros.
    clock.now = datetime(2026, 5, 5, 9, 0, tzinfo=UTC)
    run("forfeit", STAFF, new_key(), member="bob", business_time=now(), reason="membership ended")
    run("earn", RAIL, new_key(), member="carol", funding={"RAIL": 200}, business_time=now())
    run("earn", SUPER, new_key(), member="carol", funding={"SUPER": 7}, business_time=now(),
        pending_until=datetime(2026, 5, 20, tzinfo=UTC))
    run("post", STAFF, new_key(), kind=EntryKind.SETTLEMENT, business_time=now(),
        postings=[Posting("partner:SUPER:settlement", 1234), Posting("operator:income", -1234)])
    assert integrator.integrate_all(db) == 9
    return Scenario(db, signer, march_size, march_size + 9)


@pytest.fixture
def scenario(db: Database) -> Scenario:
    return build_ledger(db, NoteSigner.generate(ORIGIN))


def lines(report: reports.TrialBalance, book: Book) -> dict[str, int]:
    return {line.key: line.balance for line in report.lines if line.book is book}


# -- trial balance ---------------------------------------------------------------------------------


def test_the_trial_balance_defaults_to_the_latest_checkpoint_and_balances(
    scenario: Scenario,
) -> None:
    """At the latest signed size every book sums to zero; the totals equal the member story."""
    with scenario.db.engine.connect() as conn:
        report = reports.trial_balance(conn)
    assert report.cut.size == report.cut.checkpoint_size == scenario.final_size
    assert report.cut.root is not None
    assert report.entries == scenario.final_size
    assert report.balanced
    points = lines(report, Book.POINTS)
    # alice: 500 − 150 + 50 − 40 + 333 − 360 expired = 333; carol: 60 + 25 + 200 available …
    assert points["member:alice:available"] == 333
    assert points["member:carol:available"] == 285
    assert points["member:carol:pending"] == 7
    assert points["member:bob:available"] == 0
    assert points["partner:SUPER:issued"] == -(500 + 120 + 10 + 7)
    assert points["partner:DEPT:issued"] == -(80 + 100 + 60 + 333) + 30
    assert points["partner:RAIL:issued"] == -200
    assert points["partner:RAIL:redeemed"] == 100
    assert points["program:funded"] == -25
    assert points["program:breakage"] == 360 + 40 + 120 + 10 + 80 + 70
    assert lines(report, Book.EUR) == {"operator:income": -1234, "partner:SUPER:settlement": 1234}
    totals = {total.book: total for total in report.totals}
    debits = 333 + 285 + 7 + 100 + 680
    assert (totals[Book.POINTS].debits, totals[Book.POINTS].credits) == (debits, debits)
    assert (totals[Book.EUR].debits, totals[Book.EUR].credits, totals[Book.EUR].net) == (
        1234, 1234, 0
    )


def test_a_trial_balance_at_an_earlier_size_excludes_later_entries(scenario: Scenario) -> None:
    """At the March checkpoint, only the nine March entries count: no April earn, no EUR."""
    with scenario.db.engine.connect() as conn:
        report = reports.trial_balance(conn, scenario.march_size)
    assert report.entries == 9
    assert report.cut.root is not None
    points = lines(report, Book.POINTS)
    assert points == {
        "member:alice:available": 500 - 150 + 50 - 40,
        "member:bob:available": 120 + 80 + 100 - 30 + 40,
        "member:carol:pending": 60,
        "member:carol:available": 25,
        "partner:SUPER:issued": -620,
        "partner:DEPT:issued": -(80 + 100 + 60) + 30,
        "partner:RAIL:redeemed": 100,
        "program:funded": -25,
    }
    assert lines(report, Book.EUR) == {}
    assert report.balanced
    totals = {total.book: total for total in report.totals}
    assert totals[Book.POINTS].debits == 360 + 310 + 60 + 25 + 100
    assert totals[Book.EUR].accounts == 0


def test_a_size_without_a_checkpoint_is_reported_without_a_root(scenario: Scenario) -> None:
    """Any size up to the log's works; only a signed size carries a root."""
    with scenario.db.engine.connect() as conn:
        report = reports.trial_balance(conn, 1)
        empty = reports.trial_balance(conn, 0)
    assert report.cut.root is None
    assert report.entries == 1
    assert lines(report, Book.POINTS) == {"member:alice:available": 500,
                                          "partner:SUPER:issued": -500}
    assert empty.lines == ()
    assert empty.balanced


def test_grouping_by_kind_sums_the_same_accounts(scenario: Scenario) -> None:
    """By kind, member:available sums every member's available balance."""
    with scenario.db.engine.connect() as conn:
        report = reports.trial_balance(conn, by="kind")
    points = lines(report, Book.POINTS)
    assert points["member:available"] == 333 + 285
    assert points["partner:issued"] == -637 - 543 - 200
    assert sum(points.values()) == 0


def test_after_a_key_rotation_the_old_log_is_covered_whole(scenario: Scenario) -> None:
    """The new log's sizes count its own leaves; every entry of the closed log is included."""
    successor = NoteSigner.generate("reports.coalition.local/ledger/2")
    with scenario.db.transaction() as conn:
        Integrator(scenario.signer).rotate(conn, successor)
    with scenario.db.transaction() as conn:
        Ledger(Policy()).post(
            SqlLedgerStore(conn), STAFF, new_key(), kind=EntryKind.PAYMENT,
            business_time=datetime(2026, 5, 12, tzinfo=UTC),
            postings=[Posting("partner:SUPER:settlement", -1234), Posting("operator:bank", 1234)],
        )
    assert Integrator(successor).integrate_all(scenario.db) == 1
    with scenario.db.engine.connect() as conn:
        latest = reports.trial_balance(conn)
        start = reports.trial_balance(conn, 1)
    assert (latest.cut.log, latest.cut.size, latest.cut.earlier_logs) == (
        successor.name, 2, (ORIGIN,)
    )
    assert (latest.entries, start.entries) == (scenario.final_size + 1, scenario.final_size)
    assert lines(latest, Book.EUR)["partner:SUPER:settlement"] == 0
    assert lines(start, Book.EUR)["partner:SUPER:settlement"] == 1234
    assert latest.balanced
    assert start.balanced


@pytest.mark.parametrize("size", [-1, 19, 10**6])
def test_a_size_outside_the_log_is_refused(scenario: Scenario, size: int) -> None:
    """Negative or beyond the last leaf: InvalidTreeSize, naming the log's size."""
    with scenario.db.engine.connect() as conn, pytest.raises(reports.InvalidTreeSize) as caught:
        reports.trial_balance(conn, size)
    assert caught.value.size == size


# -- liability, breakage, exposure -----------------------------------------------------------------


def test_liability_by_partner_reconciles_with_the_member_accounts(scenario: Scenario) -> None:
    """DEPT 60 + 333, RAIL 200, SUPER 7 (pending), program 25: what alice and carol hold."""
    with scenario.db.engine.connect() as conn:
        report = reports.liability(conn, by="partner")
    assert [(x.key, x.points, x.pending, x.lots) for x in report.lines] == [
        ("DEPT", 393, 0, 2),
        ("RAIL", 200, 0, 1),
        ("SUPER", 7, 7, 1),
        ("program", 25, 0, 1),
    ]
    assert report.points == 625
    assert report.member_points == 333 + 285 + 7
    assert report.reconciled


def test_liability_by_vintage_keeps_the_month_earned(scenario: Scenario) -> None:
    """March: carol's DEPT 60 and programme 25; April: alice's 333; May: carol's 200 + 7."""
    with scenario.db.engine.connect() as conn:
        report = reports.liability(conn, by="vintage")
        dept = reports.liability(conn, by="vintage", partner="DEPT")
    assert [(x.key, x.points, x.pending) for x in report.lines] == [
        ("2026-03", 85, 0),
        ("2026-04", 333, 0),
        ("2026-05", 207, 7),
    ]
    assert [(x.key, x.points) for x in dept.lines] == [("2026-03", 60), ("2026-04", 333)]
    assert dept.member_points is None
    assert dept.reconciled is None


def test_vintages_follow_paris_months() -> None:
    """An instant late on 31 March UTC is already April in Paris."""
    months = reports._months(
        datetime(2026, 3, 31, 22, 30, tzinfo=UTC), datetime(2026, 4, 2, tzinfo=UTC)
    )
    assert [m.label for m in months] == ["2026-04"]


def test_breakage_is_attributed_to_the_funder_per_month(scenario: Scenario) -> None:
    """April: SUPER 360 (alice) + 40 (bob's transferred lot); May: bob's forfeiture."""
    with scenario.db.engine.connect() as conn:
        report = reports.breakage(conn)
        april = reports.breakage(conn, period="2026-04")
        dept = reports.breakage(conn, partner="DEPT")
        march = reports.breakage(conn, period="2026-03")
        breakage_account = reports.trial_balance(conn)
    assert [(x.period, x.partner, x.points) for x in report.lines] == [
        ("2026-04", "SUPER", 400),
        ("2026-05", "DEPT", 150),
        ("2026-05", "SUPER", 130),
    ]
    assert report.points == lines(breakage_account, Book.POINTS)["program:breakage"]
    assert [(x.period, x.partner, x.points) for x in april.lines] == [("2026-04", "SUPER", 400)]
    assert [(x.period, x.points) for x in dept.lines] == [("2026-05", 150)]
    assert march.lines == ()
    assert march.period == "2026-03"


def test_exposure_prices_each_partner_once_with_its_contract_in_force(scenario: Scenario) -> None:
    """SUPER 7 × 0.0095 = 6.65 ct → 7 (half up); DEPT v2 393 × 0.009537 = 374.8041 ct → 374
    (down); RAIL has no contract in May: unpriced; the programme's 25 points apart."""
    with scenario.db.engine.connect() as conn:
        report = reports.exposure(conn, at=datetime(2026, 5, 10, tzinfo=UTC))
        march = reports.exposure(conn, at=datetime(2026, 3, 15, tzinfo=UTC), partner="DEPT")
    found = {x.partner: (x.contract_version, x.exact, x.cents) for x in report.lines}
    assert found == {
        "DEPT": (2, Decimal("3.748041"), 374),
        "RAIL": (None, None, None),
        "SUPER": (1, Decimal("0.0665"), 7),
    }
    assert report.cents == 381
    assert report.unpriced_points == 200
    assert report.program_points == 25
    # DEPT v1 in March: 393 × 0.009 = 3.537 € → 353.7 ct → 354 (half up).
    assert [(x.contract_version, x.cents) for x in march.lines] == [(1, 354)]
    assert json.loads(json.dumps(report.to_json()))["lines"][0]["price"] == "0.009537"


def test_reports_read_facts_not_caches(scenario: Scenario) -> None:
    """A tampered lot remainder or balance cache changes no report (they are recomputed)."""
    from ledger import tables as lt

    with scenario.db.engine.connect() as conn:
        before = (reports.liability(conn), reports.trial_balance(conn).lines)
    with scenario.db.transaction() as conn:
        conn.execute(lt.lots.update().values(remaining=0))
        conn.execute(lt.balances.update().values(balance=0))
    with scenario.db.engine.connect() as conn:
        assert (reports.liability(conn), reports.trial_balance(conn).lines) == before


# -- the command line ------------------------------------------------------------------------------


def cli(scenario: Scenario, tmp_path: Path, *args: str):  # type: ignore[no-untyped-def]
    from api.cli import main

    env = {
        "COALITION_DATABASE_URL": scenario.db.engine.url.render_as_string(hide_password=False),
        "COALITION_LOG_KEY": scenario.signer.skey,
    }
    return CliRunner().invoke(main, ["audit", "report", *args], env=env, catch_exceptions=False)


def test_the_cli_prints_each_report_as_json(scenario: Scenario, tmp_path: Path) -> None:
    """``coalition audit report … --json`` prints what the functions compute."""
    result = cli(scenario, tmp_path, "trial-balance", "--size", "9", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["size"] == 9
    assert document["balanced"] is True
    assert {t["book"]: t["debits"] for t in document["totals"]} == {"POINTS": 855, "EUR": 0}
    result = cli(scenario, tmp_path, "liability", "--by", "vintage", "--json")
    assert [line["points"] for line in json.loads(result.output)["lines"]] == [85, 333, 207]
    result = cli(scenario, tmp_path, "breakage", "--period", "2026-05", "--json")
    assert json.loads(result.output)["points"] == 280
    result = cli(scenario, tmp_path, "exposure", "--at", "2026-05-10T00:00:00+00:00", "--json")
    assert json.loads(result.output)["cents"] == 381


def test_the_cli_prints_tables_that_state_the_balance(scenario: Scenario, tmp_path: Path) -> None:
    """The default output is a table, and the trial balance says whether each book balances."""
    result = cli(scenario, tmp_path, "trial-balance")
    assert result.exit_code == 0, result.output
    assert "member:alice:available" in result.output
    assert "POINTS balances" in result.output
    assert "EUR balances" in result.output
    for report in ("liability", "breakage", "exposure"):
        result = cli(scenario, tmp_path, report)
        assert result.exit_code == 0, result.output
        assert "SUPER" in result.output


@pytest.mark.parametrize("size", ["-1", "19", "nine"])
def test_the_cli_refuses_a_bad_size_with_a_message(
    scenario: Scenario, tmp_path: Path, size: str
) -> None:
    """A bad size is one line on stderr and a non-zero exit, never a traceback."""
    result = cli(scenario, tmp_path, "trial-balance", "--size", size)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert "size" in result.output
