"""Earning on the real store: purchases, refunds, campaigns, engagement, velocity and transfers.

Runs on SQLite, and on PostgreSQL when ``COALITION_TEST_DATABASE_URL`` is set. Every step runs in
its own transaction, as the API runs it, so a refusal commits its idempotency record exactly as it
would in production. :class:`World` is shared with the tier, expiry and KPI tests.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar
from uuid import uuid4

import pytest
import sqlalchemy as sa

from ledger import jobs
from ledger import tables as lt
from ledger.consistency import Finding, check_consistency
from ledger.db import Database
from ledger.errors import (
    IdempotencyConflict,
    InsufficientPoints,
    InvalidRequest,
    NotReversible,
    ReversalExceedsOriginal,
    UnknownEntry,
)
from ledger.model import EntryKind
from ledger.repository import SqlLedgerStore
from ledger.service import Actor, Ledger
from partners import directory, earning, members
from partners import tables as pt
from partners.directory import ContractTerms
from partners.earning import (
    AbuseControls,
    EarnResult,
    EngageResult,
    MemberNotActive,
    NoEngagementRule,
    TransferCapExceeded,
    TransfersDisabled,
)
from partners.errors import (
    CapReached,
    NoContract,
    PartnerSuspended,
    RedemptionBlocked,
    VelocityExceeded,
)
from partners.rules import Basket, BasketLine, Campaign, EngagementRule
from partners.vault import MasterKey

T = TypeVar("T")

T0 = datetime(2025, 1, 1, tzinfo=UTC)
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
MARCH = datetime(2026, 3, 1, tzinfo=UTC)
APRIL = datetime(2026, 4, 1, tzinfo=UTC)
IBAN = "DE89370400440532013000"
BIC = "COBADEFFXXX"

SUPER = Actor(credential="partner:SUPER", partner="SUPER")
DEPT = Actor(credential="partner:DEPT", partner="DEPT")
RAIL = Actor(credential="partner:RAIL", partner="RAIL")
BANK = Actor(credential="partner:BANK", partner="BANK")
STAFF = Actor(credential="staff:olga")


def new_key() -> str:
    return f"k-{uuid4()}"


def terms(**changes: Any) -> ContractTerms:
    values: dict[str, Any] = {
        "issue_price": Decimal("0.01"),
        "reimbursement_price": Decimal("0.009"),
        "breakage_rebate": Decimal("0.005"),
        "monthly_fee_cents": 50_000,
        "pending_days": 0,
        "earn_rate": Decimal("1"),
        "rounding_mode": "ROUND_HALF_UP",
        "carry_forward_threshold_cents": 1_000,
        "category_multipliers": {},
    }
    values.update(changes)
    return ContractTerms(**values)


def basket(*lines: int | BasketLine, paid_with_points: int = 0) -> Basket:
    """A basket of grocery lines (given in cents) or explicit lines."""
    return Basket(
        tuple(BasketLine(x, "grocery") if isinstance(x, int) else x for x in lines),
        paid_with_points,
    )


class World:
    """A coalition over one database, with a clock moved by hand.

    Partners: SUPER (1 pt/€), DEPT (contract v1 at 1 pt/€ until March 2026, then v2 at 2 pt/€
    with fresh food ×2), RAIL (1 pt/€, 14-day return window) and BANK (1 pt/€). All open-ended.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.now = START
        self.master = MasterKey.generate("mk-test")

    def run(self, work: Callable[[Any], T]) -> T:
        """Run ``work(conn)`` in its own transaction."""
        with self.db.transaction() as conn:
            return work(conn)

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(conn, *args, **kwargs)`` in its own transaction."""
        return self.run(lambda conn: function(conn, *args, **kwargs))

    def setup(self) -> None:
        def work(conn: Any) -> None:
            Ledger(clock=lambda: T0).open_system_accounts(SqlLedgerStore(conn))
            for code in ("SUPER", "DEPT", "RAIL", "BANK"):
                directory.onboard_partner(conn, code, f"{code} SA", IBAN, BIC, T0)
            add = directory.add_contract
            add(conn, "SUPER", terms(), T0, None, T0, "admin")
            add(conn, "DEPT", terms(), T0, MARCH, T0, "admin")
            fresh = {"fresh": Decimal(2)}
            add(
                conn, "DEPT", terms(earn_rate="2", category_multipliers=fresh), MARCH, None, T0, "a"
            )
            add(conn, "RAIL", terms(pending_days=14), T0, None, T0, "admin")
            add(conn, "BANK", terms(), T0, None, T0, "admin")

        self.run(work)

    def enroll(self, by: str | None = "SUPER") -> str:
        member = self.call(
            members.enroll, by=by, personal=None, customer_ref=None, now=self.now,
            master_key=self.master,
        )  # fmt: skip
        return member.id

    def earn(
        self,
        member: str,
        *lines: int | BasketLine,
        actor: Actor = SUPER,
        key: str | None = None,
        at: datetime | None = None,
        paid_with_points: int = 0,
    ) -> EarnResult:
        return self.call(
            earning.earn_purchase,
            actor,
            key or new_key(),
            member=member,
            basket=basket(*lines, paid_with_points=paid_with_points),
            business_time=at or self.now,
            now=self.now,
        )

    def engage(
        self,
        member: str,
        event_type: str,
        event_id: str,
        *,
        actor: Actor = SUPER,
        key: str | None = None,
        at: datetime | None = None,
    ) -> EngageResult:
        return self.call(
            earning.engage,
            actor,
            key or new_key(),
            member=member,
            event_type=event_type,
            event_id=event_id,
            business_time=at or self.now,
            now=self.now,
        )

    def burn(self, member: str, points: int, *, actor: Actor = DEPT, key: str | None = None) -> Any:
        return self.call(
            earning.burn,
            actor,
            key or new_key(),
            member=member,
            points=points,
            business_time=self.now,
            now=self.now,
        )

    def refund(self, entry_id: Any, points: int | None = None, *, actor: Actor = SUPER) -> Any:
        return self.call(
            earning.refund_purchase,
            actor,
            new_key(),
            entry_id=entry_id,
            points=points,
            business_time=self.now,
            now=self.now,
        )

    def controls(self, **caps: Any) -> None:
        self.call(earning.set_abuse_controls, AbuseControls(**caps), self.now)

    def rule(self, event_type: str, points: int, sponsor: str = "program", **kw: Any) -> None:
        kw.setdefault("valid_from", T0)
        rule = EngagementRule(
            event_type=event_type,
            version=kw.pop("version", 1),
            sponsor=sponsor,
            points=points,
            cap_per_day=kw.pop("cap_per_day", None),
            cap_per_month=kw.pop("cap_per_month", None),
            cap_per_year=kw.pop("cap_per_year", None),
            **kw,
        )
        self.call(earning.add_engagement_rule, rule, self.now)

    def campaign(self, **kw: Any) -> Campaign:
        values: dict[str, Any] = {
            "id": "SPRING",
            "partner": "SUPER",
            "name": "Spring bonus",
            "valid_from": MARCH,
            "valid_to": APRIL,
        }
        values.update(kw)
        return self.call(earning.add_campaign, Campaign(**values), self.now)

    def balance(self, account: str) -> int:
        return self.run(lambda conn: Ledger().balance(SqlLedgerStore(conn), account))

    def balances(self, member: str) -> dict[str, int]:
        return {r: self.balance(f"member:{member}:{r}") for r in ("available", "pending", "held")}

    def lots(self, member: str) -> list[Any]:
        with self.db.engine.connect() as conn:
            return conn.execute(
                sa.select(lt.lots).where(lt.lots.c.member == member).order_by(lt.lots.c.funder)
            ).all()

    def count(self, table: sa.Table) -> int:
        with self.db.engine.connect() as conn:
            return int(conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)

    def findings(self) -> list[Finding]:
        with self.db.engine.connect() as conn:
            return check_consistency(conn)


@pytest.fixture
def world(db: Database) -> World:
    """The coalition, set up, with the clock at 2 March 2026 09:00 UTC."""
    built = World(db)
    built.setup()
    return built


@pytest.fixture
def alice(world: World) -> str:
    return world.enroll()


@pytest.fixture
def bob(world: World) -> str:
    return world.enroll()


# -- purchases -------------------------------------------------------------------------------------


def test_a_purchase_is_priced_by_the_contract_version_in_force_at_its_business_time(
    world: World, alice: str
) -> None:
    """An earn uses the contract version in force at business time and stamps it on its lots."""
    late = world.earn(alice, 2_400, actor=DEPT, at=datetime(2026, 2, 20, 18, 0, tzinfo=UTC))
    assert late.points == 24
    assert late.entry is not None
    assert [lot.price_version for lot in late.entry.opened_lots] == ["DEPT/v1"]
    assert late.entry.attributes["rules"] == {"engine": 1, "contract": 1}
    current = world.earn(alice, 1_000, BasketLine(500, "fresh"), actor=DEPT)
    assert current.points == 40
    assert current.entry is not None
    assert [lot.price_version for lot in current.entry.opened_lots] == ["DEPT/v2"]
    assert current.explanation == "40 pts = (10.00 € + 5.00 € fresh ×2) × 2 pt/€"
    assert current.entry.attributes["explanation"] == current.explanation
    assert current.entry.attributes["basket_cents"] == 1_500
    assert current.entry.kind is EntryKind.EARN
    assert world.balances(alice) == {"available": 64, "pending": 0, "held": 0}
    assert world.balance("partner:DEPT:issued") == -64
    assert world.findings() == []


def test_gift_cards_and_the_part_paid_with_points_earn_nothing(world: World, alice: str) -> None:
    """Only the cash part of non-gift-card lines earns; the entry keeps the basket's amounts."""
    result = world.earn(
        alice, 3_000, BasketLine(5_000, "gift", gift_card=True), paid_with_points=1_000
    )
    assert result.points == 20
    assert result.entry is not None
    assert (result.entry.attributes["basket_cents"], result.entry.attributes["cash_cents"]) == (
        8_000,
        7_000,
    )
    assert "gift cards (50.00 €) earn nothing" in result.explanation
    assert world.findings() == []


def test_a_zero_point_purchase_books_nothing_and_returns_the_quote(
    world: World, alice: str
) -> None:
    """A basket that earns nothing books no entry, opens no lot and still explains why."""
    result = world.earn(alice, BasketLine(5_000, "gift", gift_card=True))
    assert (result.points, result.entry) == (0, None)
    assert result.quote is not None
    assert result.quote.total == 0
    assert world.count(lt.entries) == 0
    assert world.count(lt.lots) == 0
    assert world.findings() == []


def test_pending_points_wait_for_the_return_window_then_are_released(
    world: World, alice: str
) -> None:
    """With 14 pending days the EARN lands in pending until business time + 14 days."""
    result = world.earn(alice, 5_000, actor=RAIL)
    assert result.entry is not None
    assert [lot.pending_until for lot in result.entry.opened_lots] == [START + timedelta(days=14)]
    assert world.balances(alice) == {"available": 0, "pending": 50, "held": 0}
    early = START + timedelta(days=13)
    assert jobs.release_pending(world.db, Ledger(clock=lambda: early), early) == []
    due = START + timedelta(days=14)
    released = jobs.release_pending(world.db, Ledger(clock=lambda: due), due)
    assert [entry.kind for entry in released] == [EntryKind.RELEASE]
    assert world.balances(alice) == {"available": 50, "pending": 0, "held": 0}
    assert world.findings() == []


def test_a_refund_inside_the_return_window_reverses_the_pending_points(
    world: World, alice: str
) -> None:
    """A refund before release takes the points back from pending; the partner's issuance nets."""
    result = world.earn(alice, 5_000, actor=RAIL)
    assert result.entry is not None
    world.now += timedelta(days=3)
    reversal = world.refund(result.entry.id, actor=RAIL).entry
    assert reversal.kind is EntryKind.EARN_REVERSAL
    assert reversal.refers_to == result.entry.id
    assert world.balances(alice) == {"available": 0, "pending": 0, "held": 0}
    assert world.balance("partner:RAIL:issued") == 0
    assert world.findings() == []


def test_buy_earn_spend_refund_creates_no_points_from_nothing(world: World, alice: str) -> None:
    """A refund after spending takes back only what is left: nothing is minted, books balance."""
    world.earn(alice, 5_000)  # 50 points the member had before the purchase
    world.now += timedelta(days=1)
    purchase = world.earn(alice, 10_000)
    assert purchase.entry is not None
    before_purchase = 50
    world.burn(alice, 120)  # the older lot (50) first, then 70 of the purchase's 100
    world.now += timedelta(days=1)
    reversal = world.refund(purchase.entry.id).entry
    assert reversal.amount_on("partner:SUPER:issued") == 30
    assert world.balances(alice)["available"] == 0 <= before_purchase
    assert world.balance("partner:SUPER:issued") == -120
    assert world.balance("partner:DEPT:redeemed") == 120
    with pytest.raises(ReversalExceedsOriginal):
        world.refund(purchase.entry.id, 10)
    assert world.findings() == []


def test_a_refund_reverses_only_the_partners_own_purchase_earns(world: World, alice: str) -> None:
    """Refunding another partner's earn looks unknown; refunding a burn is refused."""
    purchase = world.earn(alice, 5_000)
    assert purchase.entry is not None
    with pytest.raises(UnknownEntry):
        world.refund(purchase.entry.id, actor=DEPT)
    spend = world.burn(alice, 10, actor=SUPER)
    with pytest.raises(NotReversible):
        world.refund(spend.entry.id)
    assert world.balances(alice)["available"] == 40
    assert world.findings() == []


def test_a_campaign_cap_holds_across_purchases(world: World, alice: str, bob: str) -> None:
    """A per-member campaign cap is counted from earlier awards, so it holds across purchases."""
    world.campaign(bonus_points=100, member_cap=150)
    points = [world.earn(alice, 1_000).points for _ in range(3)]
    assert points == [110, 60, 10]
    assert world.earn(bob, 1_000).points == 110
    with world.db.engine.connect() as conn:
        awards = conn.execute(
            sa.select(
                pt.campaign_awards.c.member_id, sa.func.sum(pt.campaign_awards.c.points)
            ).group_by(pt.campaign_awards.c.member_id)
        ).all()
    assert dict(awards) == {alice: 150, bob: 100}
    assert world.findings() == []


def test_a_co_funded_campaign_splits_its_points_into_one_lot_per_funder(
    world: World, alice: str
) -> None:
    """Joint promotion points split by largest remainder; each funder gets its own lot."""
    world.campaign(multiplier=Decimal(2), funders={"SUPER": 1, "BANK": 1})
    result = world.earn(alice, 2_500)
    assert result.points == 50  # 25 base + 25 campaign: BANK 13 (ties go first), SUPER 12
    assert [(lot.funder, lot.amount) for lot in world.lots(alice)] == [("BANK", 13), ("SUPER", 37)]
    assert world.balance("partner:BANK:issued") == -13
    assert world.balance("partner:SUPER:issued") == -37
    assert result.rule_versions["campaign:SPRING"] == "SPRING"
    world.call(directory.set_status, "BANK", "suspended", world.now)
    with pytest.raises(PartnerSuspended):
        world.earn(alice, 2_500)
    assert world.findings() == []


def test_a_suspended_partner_an_inactive_member_or_no_contract_is_refused(
    world: World, alice: str
) -> None:
    """Refusals: a suspended partner, a blocked member, a purchase before any contract."""
    with pytest.raises(NoContract):
        world.earn(alice, 1_000, at=datetime(2024, 12, 1, tzinfo=UTC))
    world.call(members.set_status, alice, "blocked")
    with pytest.raises(MemberNotActive):
        world.earn(alice, 1_000)
    world.call(directory.set_status, "SUPER", "suspended", world.now)
    with pytest.raises(PartnerSuspended):
        world.earn(alice, 1_000)
    assert world.count(lt.entries) == 0
    assert world.findings() == []


def test_a_velocity_refusal_is_recorded_and_replayed_with_the_same_key(
    world: World, alice: str
) -> None:
    """Past the daily earn cap: refused, and the same key stays refused after the cap is raised."""
    world.controls(earn_per_day=100)
    world.earn(alice, 8_000)
    with pytest.raises(VelocityExceeded) as refused:
        world.earn(alice, 4_000, key="till-7")
    assert refused.value.fields() == {
        "kind": "earn",
        "cap": 100,
        "already_today": 80,
        "requested": 40,
    }
    world.controls(earn_per_day=1_000)
    with pytest.raises(VelocityExceeded) as replayed:
        world.earn(alice, 4_000, key="till-7")
    assert replayed.value.fields() == refused.value.fields()
    with pytest.raises(IdempotencyConflict):
        world.earn(alice, 4_100, key="till-7")
    assert world.earn(alice, 4_000, key="till-8").points == 40
    assert world.balances(alice)["available"] == 120
    assert world.findings() == []


def test_the_velocity_day_is_a_paris_day(world: World, alice: str) -> None:
    """Two earns on one UTC day but on two Paris days each have a full daily cap."""
    world.controls(earn_per_day=100)
    world.now = datetime(2026, 3, 10, 22, 30, tzinfo=UTC)  # 23:30 in Paris, 10 March
    world.earn(alice, 8_000)
    world.now = datetime(2026, 3, 10, 23, 30, tzinfo=UTC)  # 00:30 in Paris, 11 March
    world.earn(alice, 8_000)
    with pytest.raises(VelocityExceeded):
        world.earn(alice, 3_000)
    assert world.balances(alice)["available"] == 160
    assert world.findings() == []


def test_a_retry_returns_the_original_earn_without_pricing_it_again(
    world: World, alice: str
) -> None:
    """The same key returns the first entry after the rules changed; another basket conflicts."""
    first = world.earn(alice, 2_000, key="sale-1")
    world.campaign(bonus_points=500)
    again = world.earn(alice, 2_000, key="sale-1")
    assert again.replayed
    assert again.entry is not None
    assert first.entry is not None
    assert (again.entry.id, again.points, again.explanation) == (
        first.entry.id,
        20,
        first.explanation,
    )
    assert world.count(lt.entries) == 1
    with pytest.raises(IdempotencyConflict):
        world.earn(alice, 2_500, key="sale-1")
    assert world.findings() == []


def test_a_purchase_needs_a_partner(world: World, alice: str) -> None:
    """The operator's staff cannot report a purchase: purchases belong to a partner."""
    with pytest.raises(InvalidRequest):
        world.earn(alice, 1_000, actor=STAFF)


# -- engagement ------------------------------------------------------------------------------------


def test_an_engagement_the_programme_sponsors_is_funded_by_program_funded(
    world: World, alice: str
) -> None:
    """A programme-sponsored event books ENGAGE from program:funded with a ``program`` lot."""
    world.rule("app_install", 200)
    result = world.engage(alice, "app_install", "evt-1")
    assert result.points == 200
    assert result.entry is not None
    assert result.entry.kind is EntryKind.ENGAGE
    assert result.rule_versions == {"engine": 1, "engagement:app_install": 1}
    assert [(lot.funder, lot.price_version) for lot in world.lots(alice)] == [("program", None)]
    assert world.balance("program:funded") == -200
    assert world.balances(alice)["available"] == 200
    assert world.findings() == []


def test_a_partner_sponsored_engagement_is_priced_with_its_contract(
    world: World, alice: str
) -> None:
    """A partner sponsor pays from its issued account at its contract price; no one else reports."""
    world.rule("review", 50, sponsor="SUPER")
    world.engage(alice, "review", "rev-1")
    assert [(lot.funder, lot.price_version) for lot in world.lots(alice)] == [("SUPER", "SUPER/v1")]
    assert world.balance("partner:SUPER:issued") == -50
    with pytest.raises(InvalidRequest):
        world.engage(alice, "review", "rev-2", actor=DEPT)
    assert world.findings() == []


def test_an_event_id_is_rewarded_once_per_reporting_partner(
    world: World, alice: str, bob: str
) -> None:
    """A repeated key or event id returns the original booking; another member's reuse conflicts."""
    world.rule("survey", 30)
    first = world.engage(alice, "survey", "svy-9", key="eng-1")
    assert world.engage(alice, "survey", "svy-9", key="eng-1").replayed
    again = world.engage(alice, "survey", "svy-9")
    assert again.duplicate
    assert again.entry is not None
    assert first.entry is not None
    assert (again.entry.id, again.points) == (first.entry.id, 30)
    with pytest.raises(IdempotencyConflict):
        world.engage(bob, "survey", "svy-9")
    other = world.engage(alice, "survey", "svy-9", actor=DEPT)
    assert not other.duplicate
    assert world.balances(alice)["available"] == 60
    assert world.count(pt.engagements) == 2
    assert world.findings() == []


def test_engagement_caps_count_paris_days_months_and_years(world: World, alice: str) -> None:
    """Caps per day, month and year hold in Paris calendar periods; a refusal is recorded."""
    world.rule("store_visit", 10, cap_per_day=1, cap_per_month=2, cap_per_year=3)
    world.engage(alice, "store_visit", "v1", at=datetime(2026, 3, 10, 22, 30, tzinfo=UTC))
    world.engage(alice, "store_visit", "v2", at=datetime(2026, 3, 10, 23, 30, tzinfo=UTC))
    with pytest.raises(CapReached) as daily:
        world.engage(alice, "store_visit", "v3", at=datetime(2026, 3, 11, 12, 0, tzinfo=UTC))
    assert daily.value.fields()["period"] == "day"
    with pytest.raises(CapReached) as monthly:
        world.engage(alice, "store_visit", "v4", key="k-v4", at=datetime(2026, 3, 20, tzinfo=UTC))
    assert monthly.value.fields()["period"] == "month"
    # 31 March 22:30 UTC is already 1 April in Paris: a new month.
    world.engage(alice, "store_visit", "v5", at=datetime(2026, 3, 31, 22, 30, tzinfo=UTC))
    with pytest.raises(CapReached) as yearly:
        world.engage(alice, "store_visit", "v6", at=datetime(2026, 5, 5, tzinfo=UTC))
    assert yearly.value.fields()["period"] == "year"
    with pytest.raises(CapReached):  # the recorded refusal, replayed under its key
        world.engage(alice, "store_visit", "v4", key="k-v4", at=datetime(2026, 3, 20, tzinfo=UTC))
    assert world.balances(alice)["available"] == 30
    assert world.findings() == []


def test_the_rule_version_in_force_prices_an_engagement(world: World, alice: str) -> None:
    """Version 2 of a rule applies from its start; before any rule, the event is refused."""
    with pytest.raises(NoEngagementRule):
        world.engage(alice, "newsletter", "n-0")
    world.rule("newsletter", 5, valid_to=MARCH)
    world.rule("newsletter", 8, version=2, valid_from=MARCH)
    old = world.engage(alice, "newsletter", "n-1", at=datetime(2026, 2, 1, tzinfo=UTC))
    new = world.engage(alice, "newsletter", "n-2")
    assert (old.points, new.points) == (5, 8)
    assert new.rule_versions["engagement:newsletter"] == 2
    assert world.findings() == []


def test_a_referral_rewards_both_sides_or_neither(world: World, alice: str, bob: str) -> None:
    """Referrer and referee are paid together; if one side is refused neither is paid."""
    world.rule("referral_referrer", 500)
    world.rule("referral_referee", 250)
    carol = world.enroll()
    world.call(members.set_status, carol, "blocked")
    with pytest.raises(MemberNotActive):
        world.call(
            earning.refer, SUPER, "ref-0", referrer=alice, referee=carol, event_id="r-0",
            business_time=world.now, now=world.now,
        )  # fmt: skip
    assert world.count(lt.entries) == 0
    result = world.call(
        earning.refer, SUPER, "ref-1", referrer=alice, referee=bob, event_id="r-1",
        business_time=world.now, now=world.now,
    )  # fmt: skip
    assert (result.referrer.points, result.referee.points) == (500, 250)
    again = world.call(
        earning.refer, SUPER, "ref-1", referrer=alice, referee=bob, event_id="r-1",
        business_time=world.now, now=world.now,
    )  # fmt: skip
    assert again.referrer.duplicate
    assert again.referee.duplicate
    assert (world.balances(alice)["available"], world.balances(bob)["available"]) == (500, 250)
    assert world.findings() == []


# -- spending and transfers ------------------------------------------------------------------------


def test_burns_are_capped_per_day_and_refused_where_redemption_is_blocked(
    world: World, alice: str
) -> None:
    """The daily burn cap counts what was spent today; a blocked partner or member cannot burn."""
    world.earn(alice, 50_000)
    world.controls(burn_per_day=100)
    world.burn(alice, 60)
    with pytest.raises(VelocityExceeded):
        world.burn(alice, 50)
    world.burn(alice, 40)
    world.now += timedelta(days=1)
    world.controls(burn_per_day=10_000)
    with pytest.raises(InsufficientPoints):
        world.burn(alice, 1_000)
    world.call(directory.set_status, "DEPT", "suspended", world.now, redemption_blocked=True)
    with pytest.raises(RedemptionBlocked):
        world.burn(alice, 10)
    world.call(members.set_status, alice, "blocked")
    with pytest.raises(MemberNotActive):
        world.burn(alice, 10, actor=SUPER)
    assert world.balances(alice)["available"] == 400
    assert world.balance("partner:DEPT:redeemed") == 100
    assert world.findings() == []


def test_transfers_are_off_by_default_then_capped_per_transfer_and_per_day(
    world: World, alice: str, bob: str
) -> None:
    """Transfers are refused until enabled, then capped per transfer and per day."""
    world.earn(alice, 50_000)

    def send(points: int) -> Any:
        return world.call(
            earning.transfer, STAFF, new_key(), from_member=alice, to_member=bob, points=points,
            business_time=world.now, now=world.now,
        )  # fmt: skip

    with pytest.raises(TransfersDisabled):
        send(10)
    world.controls(transfers_enabled=True, max_per_transfer=100, transfer_per_day=150)
    with pytest.raises(TransferCapExceeded):
        send(120)
    assert send(100).entry.kind is EntryKind.TRANSFER
    with pytest.raises(VelocityExceeded):
        send(60)
    send(50)
    assert (world.balances(alice)["available"], world.balances(bob)["available"]) == (350, 150)
    assert {lot.funder for lot in world.lots(bob)} == {"SUPER"}
    assert world.findings() == []
