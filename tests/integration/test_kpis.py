"""The operator's KPIs on a small known data set, with every number worked out by hand.

Runs on SQLite, and on PostgreSQL when ``COALITION_TEST_DATABASE_URL`` is set.

The data set (times UTC; contracts: SUPER 1 pt/€, DEPT 2 pt/€ from March 2026, RAIL 1 pt/€)::

    10 Jan   m1, m2 enrolled by SUPER; m3 by DEPT; m4 by the operator
    5 Mar    m1 buys 40.00 € at SUPER                 → SUPER issues 40
    6 Mar    m2 buys 30.01 € at SUPER (1-month lots)  → SUPER issues 30
    7 Mar    23:30 (8 Mar in Paris) m3 buys 50.00 € at DEPT → DEPT issues 100;
             and installs the app (programme, 10)     → program issues 10
    20 Mar   SUPER refunds 10 points of m2's purchase → SUPER issue reversal 10
    3 Apr    m1 buys 20.00 € at SUPER                 → SUPER issues 20
    8 Apr    the expiry job: m2's lot (20 left) expired on 6 Apr → SUPER expired 20
    10 Apr   m3 spends 20 at RAIL, RAIL cancels 5     → RAIL redeemed 20, reversed 5
    20 Apr   m5 enrolled by DEPT
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from ledger import jobs
from ledger.db import Database
from ledger.repository import SqlLedgerStore
from ledger.service import Ledger
from partners import expiry, kpis
from partners.expiry import ExpiryPolicy, period_bounds
from partners.kpis import DailyPoints, EnrolmentCount, InactiveMember, PartnerTransactions
from tests.integration.test_earning import DEPT, RAIL, SUPER, World, new_key

MARCH = period_bounds(datetime(2026, 3, 15, tzinfo=UTC), "month")
APRIL = period_bounds(datetime(2026, 4, 15, tzinfo=UTC), "month")


@dataclass(frozen=True)
class DataSet:
    world: World
    m1: str
    m2: str
    m3: str
    m4: str
    m5: str


def at(month: int, day: int, hour: int = 10, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


@pytest.fixture
def data(db: Database) -> Iterator[DataSet]:
    """The data set of the module docstring; the ledger is checked consistent afterwards."""
    world = World(db)
    world.setup()
    world.rule("app_install", 10)
    world.now = at(1, 10)
    m1, m2, m3 = world.enroll("SUPER"), world.enroll("SUPER"), world.enroll("DEPT")
    m4 = world.enroll(None)
    world.now = at(3, 5)
    world.earn(m1, 4_000)
    world.now = at(3, 6)
    world.call(expiry.set_expiry_policy, ExpiryPolicy(lot_months=1), world.now)
    purchase = world.earn(m2, 3_001)
    world.call(expiry.set_expiry_policy, ExpiryPolicy(), world.now)
    world.now = at(3, 7, 23, 30)
    world.earn(m3, 5_000, actor=DEPT)
    world.engage(m3, "app_install", "install-m3")
    world.now = at(3, 20)
    assert purchase.entry is not None
    world.refund(purchase.entry.id, 10, actor=SUPER)
    world.now = at(4, 3)
    world.earn(m1, 2_000)
    world.now = at(4, 8)
    assert len(jobs.expire_lots(db, Ledger(clock=lambda: world.now), world.now)) == 1
    world.now = at(4, 10)
    spend = world.burn(m3, 20, actor=RAIL)
    world.run(
        lambda conn: Ledger(clock=lambda: world.now).reverse(
            SqlLedgerStore(conn), RAIL, new_key(), entry_id=spend.entry.id,
            business_time=world.now, points=5,
        )
    )  # fmt: skip
    world.now = at(4, 20)
    m5 = world.enroll("DEPT")
    yield DataSet(world, m1, m2, m3, m4, m5)
    assert world.findings() == []


def test_enrolment_is_counted_per_partner(data: DataSet) -> None:
    """Members per enrolling partner, all time and within a period; the operator comes last."""
    assert data.world.call(kpis.enrolment_by_partner) == [
        EnrolmentCount("DEPT", 2),
        EnrolmentCount("SUPER", 2),
        EnrolmentCount(None, 1),
    ]
    assert data.world.call(kpis.enrolment_by_partner, start=APRIL[0]) == [EnrolmentCount("DEPT", 1)]


def test_active_inactive_and_new_members_and_the_revival_list(data: DataSet) -> None:
    """Over 30 days to 30 April: m1, m3 active; m2, m4 to revive (never-active first); m5 new."""
    found = data.world.call(kpis.member_activity, at(4, 30, 12), days=30)
    assert (found.active, found.inactive, found.new) == (2, 2, 1)
    assert found.revival == (
        InactiveMember(data.m4, None, None),
        InactiveMember(data.m2, at(3, 6), "SUPER"),
    )


def test_retention_is_the_share_of_members_active_again_the_next_month(data: DataSet) -> None:
    """Active in March: m1, m2, m3 (m3 on 8 March in Paris); again in April: m1, m3."""
    found = data.world.call(kpis.retention, MARCH, APRIL)
    assert (found.active, found.retained, found.rate) == (3, 2, Decimal("0.6667"))
    assert data.world.call(kpis.retention, APRIL, period_bounds(at(5, 15), "month")).rate == 0
    empty = data.world.call(kpis.retention, period_bounds(at(1, 15), "month"), MARCH)
    assert (empty.active, empty.rate) == (0, None)


def test_transactions_and_average_basket_per_partner(data: DataSet) -> None:
    """March: SUPER 40.00 € and 30.01 € (mean 35.005 → 35.01 €), DEPT 50.00 €."""
    assert data.world.call(kpis.partner_transactions, *MARCH) == [
        PartnerTransactions("DEPT", 1, 5_000, 5_000),
        PartnerTransactions("SUPER", 2, 7_001, 3_501),
    ]
    assert data.world.call(kpis.partner_transactions, MARCH[0], APRIL[1]) == [
        PartnerTransactions("DEPT", 1, 5_000, 5_000),
        PartnerTransactions("SUPER", 3, 9_001, 3_000),
    ]


def test_points_issued_redeemed_and_expired_per_partner_per_paris_day(data: DataSet) -> None:
    """Every flow lands on its Paris day and partner; expiry is charged to the lot's funder."""
    assert data.world.call(kpis.daily_points, date(2026, 3, 1), date(2026, 4, 30)) == [
        DailyPoints(date(2026, 3, 5), "SUPER", issued=40),
        DailyPoints(date(2026, 3, 6), "SUPER", issued=30),
        DailyPoints(date(2026, 3, 8), "DEPT", issued=100),
        DailyPoints(date(2026, 3, 8), "program", issued=10),
        DailyPoints(date(2026, 3, 20), "SUPER", issue_reversed=10),
        DailyPoints(date(2026, 4, 3), "SUPER", issued=20),
        DailyPoints(date(2026, 4, 8), "SUPER", expired=20),
        DailyPoints(date(2026, 4, 10), "RAIL", redeemed=20, redeem_reversed=5),
    ]
    assert data.world.call(kpis.daily_points, date(2026, 3, 7), date(2026, 3, 7)) == []
    assert data.world.call(kpis.daily_points, date(2026, 3, 8), date(2026, 3, 8)) == [
        DailyPoints(date(2026, 3, 8), "DEPT", issued=100),
        DailyPoints(date(2026, 3, 8), "program", issued=10),
    ]
