"""Tiers and expiry on the real store: rolling 12-month tiers, floors, lot age, inactivity.

Runs on SQLite, and on PostgreSQL when ``COALITION_TEST_DATABASE_URL`` is set. The coalition is
:class:`~tests.integration.test_earning.World`, with the default tier levels seeded.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from ledger import jobs
from ledger import tables as lt
from ledger.db import Database
from ledger.errors import InvalidRequest
from ledger.model import EntryKind
from ledger.service import Ledger
from partners import expiry, kpis, tiers
from partners.expiry import ExpiringPoints, ExpiryPolicy, lot_expiry
from partners.rules import Tier
from tests.integration.test_earning import STAFF, START, World

OLGA = STAFF.credential


@pytest.fixture
def world(db: Database) -> World:
    """The coalition with White 0 ×1, Black 1,000 ×1.25 and Gold 5,000 ×1.5."""
    built = World(db)
    built.setup()
    built.call(tiers.seed_default_tiers)
    return built


@pytest.fixture
def alice(world: World) -> str:
    return world.enroll()


def status(world: World, member: str) -> tiers.TierStatus:
    return world.call(tiers.tier_status, member, world.now)


def policy(world: World, **kw: object) -> None:
    world.call(expiry.set_expiry_policy, ExpiryPolicy(**kw), world.now)  # type: ignore[arg-type]


# -- tiers -----------------------------------------------------------------------------------------


def test_the_default_levels_are_seeded_once(world: World) -> None:
    """Seeding installs White, Black and Gold, and leaves configured levels alone."""
    assert world.call(tiers.tier_levels) == list(tiers.DEFAULT_TIERS)
    custom = [Tier("Blue", 0, 0, Decimal(1)), Tier("Silver", 1, 2_000, Decimal("1.1"))]
    assert world.call(tiers.set_tier_levels, custom) == custom
    assert world.call(tiers.seed_default_tiers) == custom


def test_a_member_is_upgraded_at_once_after_an_earn(world: World, alice: str) -> None:
    """Reaching a threshold upgrades in the same transaction as the earn, with a history row."""
    assert world.earn(alice, 99_900).tier_change is None
    assert (status(world, alice).tier.name, status(world, alice).points_missing) == ("White", 1)
    change = world.earn(alice, 100).tier_change
    assert change is not None
    assert (change.previous, change.tier) == ("White", "Black")
    assert status(world, alice).tier.name == "Black"
    history = world.call(tiers.tier_history, alice)
    assert [(h.tier, h.reason) for h in history] == [
        ("Black", "upgrade: 1000 points earned in 12 months reach Black")
    ]
    assert world.findings() == []


def test_the_tier_multiplies_the_base_points_of_later_purchases(world: World, alice: str) -> None:
    """A Black member earns ×1.25 on the base points, and the EARN records the tier."""
    world.earn(alice, 100_000)
    result = world.earn(alice, 10_000)
    assert result.points == 125
    assert result.explanation == "125 pts = 100.00 € × 1 pt/€, Black tier ×1.25"
    assert result.rule_versions["tier"] == "Black"
    assert world.findings() == []


def test_a_downgrade_waits_for_the_periodic_review(world: World, alice: str) -> None:
    """Points leaving the window do not lower the tier until the review, which is idempotent."""
    world.earn(alice, 100_000)
    world.now = START + timedelta(days=180)
    assert world.call(tiers.review_tiers, world.now) == []
    world.now = datetime(2027, 3, 3, tzinfo=UTC)
    assert (status(world, alice).tier.name, status(world, alice).points_12m) == ("Black", 0)
    changes = world.call(tiers.review_tiers, world.now)
    assert [(c.member, c.previous, c.tier) for c in changes] == [(alice, "Black", "White")]
    assert changes[0].reason == "review downgrade: 0 points earned in 12 months"
    assert status(world, alice).tier.name == "White"
    assert world.call(tiers.review_tiers, world.now) == []
    assert world.findings() == []


def test_a_manual_floor_keeps_a_member_at_or_above_a_tier(world: World, alice: str) -> None:
    """A floor raises at once and survives reviews; lifting it lowers the tier only at review."""
    change = world.call(tiers.set_floor, alice, "Gold", "partner VIP", OLGA, world.now)
    assert (change.tier, change.floor, change.changed_by) == ("Gold", "Gold", OLGA)
    assert world.earn(alice, 10_000).points == 150
    assert world.call(tiers.review_tiers, world.now) == []
    world.call(tiers.set_floor, alice, None, "VIP year over", OLGA, world.now)
    assert (status(world, alice).tier.name, status(world, alice).floor) == ("Gold", None)
    changes = world.call(tiers.review_tiers, world.now)
    assert [(c.previous, c.tier) for c in changes] == [("Gold", "White")]
    history = world.call(tiers.tier_history, alice)
    assert [(h.tier, h.floor, h.reason) for h in history] == [
        ("Gold", "Gold", "floor Gold: partner VIP"),
        ("Gold", None, "floor lifted: VIP year over"),
        ("White", None, "review downgrade: 150 points earned in 12 months"),
    ]
    with pytest.raises(InvalidRequest):
        world.call(tiers.set_floor, alice, "Platinum", "no such tier", OLGA, world.now)
    with pytest.raises(InvalidRequest):
        world.call(tiers.set_floor, alice, "Gold", " ", OLGA, world.now)
    assert world.findings() == []


def test_the_twelve_month_window_is_open_at_its_start(world: World, alice: str) -> None:
    """An earn counts until exactly 12 calendar months after its business time, not at it."""
    earned = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
    world.earn(alice, 100_000, at=earned)
    just_before = datetime(2026, 3, 10, 11, 59, 59, tzinfo=UTC)
    assert world.call(tiers.points_earned, alice, just_before) == 1_000
    assert world.call(tiers.points_earned, alice, datetime(2026, 3, 10, 12, 0, tzinfo=UTC)) == 0
    assert world.findings() == []


def test_a_refund_counts_against_the_purchase_it_reverses(world: World, alice: str) -> None:
    """Earn reversals lower the window's points; the review then downgrades."""
    purchase = world.earn(alice, 100_000)
    assert purchase.entry is not None
    world.refund(purchase.entry.id, 400)
    assert world.call(tiers.points_earned, alice, world.now) == 600
    assert status(world, alice).tier.name == "Black"
    assert [c.tier for c in world.call(tiers.review_tiers, world.now)] == ["White"]
    assert world.findings() == []


def _points_earned_in_two_queries(
    conn: sa.Connection, at: datetime, members: list[str] | None
) -> dict[str, int]:
    """The window's points as tiers once summed them: credits, then reversals, separately."""
    start = tiers.window_start(at)
    p, e = lt.postings.c, lt.entries.c
    original = lt.entries.alias("original")
    if members is None:
        on_member = p.account.like("member:%")
    else:
        on_member = p.account.in_(
            [f"member:{m}:{role}" for m in members for role in ("available", "pending")]
        )
    credits = (
        sa.select(p.account, sa.func.sum(p.amount))
        .select_from(lt.postings.join(lt.entries, e.id == p.entry_id))
        .where(
            on_member,
            e.kind.in_(("EARN", "ENGAGE")),
            e.business_time > start,
            e.business_time <= at,
        )
        .group_by(p.account)
    )
    reversals = (
        sa.select(p.account, sa.func.sum(p.amount))
        .select_from(
            lt.postings.join(lt.entries, e.id == p.entry_id).join(
                original, original.c.id == e.refers_to
            )
        )
        .where(
            on_member,
            e.kind == EntryKind.EARN_REVERSAL.value,
            e.business_time <= at,
            original.c.business_time > start,
            original.c.business_time <= at,
        )
        .group_by(p.account)
    )
    totals: dict[str, int] = {}
    for query in (credits, reversals):
        for account, amount in conn.execute(query):
            owner = account.split(":")[1]
            totals[owner] = totals.get(owner, 0) + int(amount)
    return {member: max(0, points) for member, points in totals.items()}


def test_the_one_pass_window_sum_equals_credits_plus_reversals(world: World) -> None:
    """Summing credits and reversals in one pass gives what the two separate sums gave, for
    windows that take in or leave out the earns, the refunds and the purchases they refund."""
    members = [world.enroll() for _ in range(3)]
    now = world.now
    earns = []
    for n, member in enumerate(members):
        for months_ago in (14, 11, 6, 1):
            at = now - timedelta(days=30 * months_ago + n)
            earns.append(world.earn(member, 10_000 * (months_ago + n + 1), at=at))
    # Refunds today of an earn outside the window, one inside it, and all of another.
    for index, points in ((0, 30), (1, 50), (5, None), (9, 10)):
        entry = earns[index].entry
        assert entry is not None
        world.refund(entry.id, points)
    stranger = world.enroll()
    moments = [
        now,
        now - timedelta(days=45),
        now - timedelta(days=200),
        now + timedelta(days=120),
        now + timedelta(days=400),
    ]
    for at in moments:
        for wanted in (members, [*members, stranger], members[:1], None):
            got = world.call(tiers._points_earned, at, wanted)
            assert got == world.call(_points_earned_in_two_queries, at, wanted), (at, wanted)
    assert world.call(tiers._points_earned, now, members)[members[0]] > 0
    assert world.findings() == []


def test_tier_status_shows_the_progress_to_the_next_tier(world: World, alice: str) -> None:
    """Status gives the tier, the window's points, and what the next level still needs."""
    world.earn(alice, 120_000)
    found = status(world, alice)
    assert (found.tier.name, found.points_12m) == ("Black", 1_200)
    assert found.next_tier is not None
    assert (found.next_tier.name, found.points_missing) == ("Gold", 3_800)
    assert found.window_start == datetime(2025, 3, 2, 9, 0, tzinfo=UTC)
    world.call(tiers.set_floor, alice, "Gold", "ambassador", OLGA, world.now)
    top = status(world, alice)
    assert (top.tier.name, top.next_tier, top.points_missing) == ("Gold", None, 0)


# -- expiry ----------------------------------------------------------------------------------------


def test_lot_expiry_snaps_to_the_first_cutoff_on_or_after_the_age_limit() -> None:
    """36 months, then the end of the next 30 September in Paris (22:00 UTC in summer time)."""
    snapped = ExpiryPolicy(lot_months=36, cutoff=(9, 30))
    cases = [
        (datetime(2026, 3, 2, 9, 0, tzinfo=UTC), datetime(2029, 9, 30, 22, 0, tzinfo=UTC)),
        (datetime(2026, 11, 15, 9, 0, tzinfo=UTC), datetime(2030, 9, 30, 22, 0, tzinfo=UTC)),
        # 23:00 in Paris on 30 September: the limit falls inside that cut-off day.
        (datetime(2026, 9, 30, 21, 0, tzinfo=UTC), datetime(2029, 9, 30, 22, 0, tzinfo=UTC)),
        # 00:30 in Paris on 1 October: just past it, so a year later.
        (datetime(2026, 9, 30, 22, 30, tzinfo=UTC), datetime(2030, 9, 30, 22, 0, tzinfo=UTC)),
    ]
    for earned, expected in cases:
        assert lot_expiry(earned, snapped) == expected, earned
    plain = ExpiryPolicy(lot_months=12)
    assert lot_expiry(datetime(2028, 2, 29, 12, tzinfo=UTC), plain) == datetime(
        2029, 2, 28, 12, tzinfo=UTC
    )
    assert lot_expiry(START, ExpiryPolicy(lot_months=None)) is None


def test_the_expiry_policy_is_stored_and_checked(world: World) -> None:
    """The policy round-trips through program_settings; impossible settings are refused."""
    assert world.call(expiry.expiry_policy) == ExpiryPolicy()
    stored = ExpiryPolicy(lot_months=36, cutoff=(9, 30), inactivity_months=24)
    policy(world, lot_months=36, cutoff=(9, 30), inactivity_months=24)
    assert world.call(expiry.expiry_policy) == stored
    for bad in (
        {"cutoff": (2, 29)},
        {"inactivity_months": 0},
        {"lot_months": None, "cutoff": (9, 30)},
    ):
        with pytest.raises(InvalidRequest):
            ExpiryPolicy(**bad)  # type: ignore[arg-type]


def test_earns_take_their_expiry_from_the_programme_policy(world: World, alice: str) -> None:
    """Purchases and engagements stamp the policy's expiry on their lots; ``None`` never expires."""
    policy(world, lot_months=36, cutoff=(9, 30))
    world.rule("birthday", 100)
    world.earn(alice, 1_000)
    world.engage(alice, "birthday", "bday-2026")
    policy(world, lot_months=None)
    world.earn(alice, 2_000)
    assert sorted((lot.amount, lot.expires_at) for lot in world.lots(alice)) == [
        (10, datetime(2029, 9, 30, 22, 0, tzinfo=UTC)),
        (20, None),
        (100, datetime(2029, 9, 30, 22, 0, tzinfo=UTC)),
    ]
    assert world.findings() == []


def test_the_lot_expiry_job_is_idempotent_and_charges_breakage_to_each_funder(
    world: World, alice: str
) -> None:
    """Expired lots go to breakage once; each co-funder's share stays attributed to it."""
    policy(world, lot_months=1)
    world.campaign(multiplier=Decimal(2), funders={"SUPER": 1, "BANK": 1})
    world.earn(alice, 2_500)  # lots: SUPER 37, BANK 13, expiring 2 April 10:00 Paris
    early = datetime(2026, 4, 2, 7, 59, tzinfo=UTC)
    assert jobs.expire_lots(world.db, Ledger(clock=lambda: early), early) == []
    due = datetime(2026, 4, 3, tzinfo=UTC)
    expired = jobs.expire_lots(world.db, Ledger(clock=lambda: due), due)
    assert [entry.kind for entry in expired] == [EntryKind.EXPIRE]
    assert jobs.expire_lots(world.db, Ledger(clock=lambda: due), due) == []
    assert world.balance("program:breakage") == 50
    assert world.balances(alice)["available"] == 0
    flows = world.call(kpis.daily_points, date(2026, 4, 3), date(2026, 4, 3))
    assert {(row.partner, row.expired) for row in flows} == {("BANK", 13), ("SUPER", 37)}
    assert world.findings() == []


def test_inactive_members_lose_every_point_once(world: World, alice: str) -> None:
    """24 months without earning or spending expire everything; a spend restarts the clock."""
    policy(world, lot_months=60, inactivity_months=24)
    bob, carol = world.enroll(), world.enroll()
    world.earn(alice, 5_000)
    world.earn(bob, 8_000)
    world.now = datetime(2027, 1, 10, 9, 0, tzinfo=UTC)
    world.burn(bob, 30)
    world.now = datetime(2028, 3, 2, 8, 59, tzinfo=UTC)
    assert world.call(expiry.expire_inactive, world.now) == []
    world.now = datetime(2028, 3, 2, 9, 0, tzinfo=UTC)  # 24 months to the minute after START
    done = world.call(expiry.expire_inactive, world.now)
    assert [(d.member, d.points, d.inactive_since) for d in done] == [(alice, 50, START)]
    assert world.call(expiry.expire_inactive, world.now) == []
    world.now = datetime(2029, 1, 10, 9, 0, tzinfo=UTC)
    assert [(d.member, d.points) for d in world.call(expiry.expire_inactive, world.now)] == [
        (bob, 50)
    ]
    assert world.balance("program:breakage") == 100
    assert world.balances(carol) == {"available": 0, "pending": 0, "held": 0}
    with world.db.engine.connect() as conn:
        reasons = conn.scalars(
            sa.select(lt.entries.c.reason).where(lt.entries.c.kind == EntryKind.EXPIRE.value)
        ).all()
    assert sorted(reasons) == [
        "inactivity since 2026-03-02T09:00:00Z",
        "inactivity since 2027-01-10T09:00:00Z",
    ]
    assert world.findings() == []


def test_expiring_soon_tells_the_member_what_expires_when(world: World, alice: str) -> None:
    """Lots due within the horizon by date, net of spending; inactivity shows as one deadline."""
    policy(world, lot_months=12)
    world.earn(alice, 10_000)
    world.now = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    world.earn(alice, 5_000)
    world.now = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
    first = datetime(2027, 3, 2, 9, 0, tzinfo=UTC)
    second = datetime(2027, 5, 1, 10, 0, tzinfo=UTC)
    assert world.call(expiry.expiring_soon, alice, world.now) == [
        ExpiringPoints(first, 100, "lot age")
    ]
    world.burn(alice, 30)
    assert world.call(expiry.expiring_soon, alice, world.now, days=120) == [
        ExpiringPoints(first, 70, "lot age"),
        ExpiringPoints(second, 50, "lot age"),
    ]
    policy(world, lot_months=36, inactivity_months=12)
    bob = world.enroll()
    world.earn(bob, 12_000)
    later = datetime(2027, 12, 1, tzinfo=UTC)
    assert world.call(expiry.expiring_soon, bob, later) == [
        ExpiringPoints(datetime(2028, 1, 15, 12, 0, tzinfo=UTC), 120, "inactivity")
    ]
    assert world.findings() == []
