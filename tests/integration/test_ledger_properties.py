"""A Hypothesis state machine drives the kernel against an in-memory model of what it must do.

Rules earn (single, joint and program-funded, optionally pending), burn, hold, capture, void, void
stale holds, reverse earns and burns, expire, release, transfer, advance the clock and retry earlier
requests. Each rule predicts its outcome from the model first: a refusal must come back as the
predicted error class with the predicted fields, a booking must move exactly the predicted lots.

After every step the ledger must be consistent (each book sums to zero, no member account below
zero, cached balances equal recomputed ones, lots cover member balances) and must agree with the
model, balance by balance and lot by lot.

The machine runs on the ``db`` fixture's backend (SQLite, or PostgreSQL when configured), on one
database per test function. Each run works inside one outer transaction that its teardown rolls
back, and each command in a savepoint that follows :meth:`Database.transaction`'s rules (kept on
success and on a business refusal, undone on any other error). Runs therefore never see each
other's rows, the database never grows from run to run, and a failing sequence replays exactly
while Hypothesis shrinks it. (Committing every command instead makes each run slower than the last,
as ``check_consistency`` scans every row of every earlier run: a failure then took over five
minutes to report, with its shrinking cut short.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy.engine import Connection, Engine

from ledger import tables as t
from ledger.consistency import check_consistency
from ledger.db import Database
from ledger.errors import (
    BusinessRefusal,
    CaptureExceedsHold,
    HoldNotOpen,
    InsufficientPoints,
    LedgerError,
    NotReversible,
    ReversalExceedsOriginal,
    UnknownEntry,
)
from ledger.model import PROGRAM, Entry, EntryKind
from ledger.repository import SqlLedgerStore
from ledger.service import Actor, Booking, Ledger, Policy
from tests.integration.conftest import START, Clock

MACHINE_SETTINGS = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

ROLES = ("available", "pending", "held")

#: Every command happens a second after the one before, so no two earns share an earned_at and the
#: burn order of lots never falls back to their random ids (which would make replays diverge).
TICK = timedelta(seconds=1)

#: How much a burn, hold or transfer asks for: a number, all or half of what is available, or one
#: point more than is available.
AMOUNTS = st.one_of(st.integers(1, 80), st.sampled_from(["all", "half", "over"]))
#: Which member a rule acts on: three members, the first two busier than the third.
MEMBERS = st.sampled_from([0, 0, 1, 1, 2])
#: Mostly the owning partner; sometimes another partner trying to act on an entry it does not own.
INTRUDER = st.sampled_from([False, False, False, True])


def resolve(amount: int | str, available: int) -> int:
    if amount == "all":
        return max(available, 1)
    if amount == "half":
        return max((available + 1) // 2, 1)
    if amount == "over":
        return available + 1
    return int(amount)


# -- the model ------------------------------------------------------------------------------------


@dataclass
class ModelLot:
    id: UUID
    member: str
    funder: str
    remaining: int
    earned_at: datetime
    expires_at: datetime | None
    pending_until: datetime | None
    pending: bool

    def burn_order(self) -> tuple[bool, datetime, datetime, UUID]:
        """Earliest expiry first, never-expiring last, then oldest, then by id (as the store)."""
        return (self.expires_at is None, self.expires_at or START, self.earned_at, self.id)


@dataclass
class ModelHold:
    id: UUID
    member: str
    partner: str
    amount: int
    expires_at: datetime
    status: str = "open"


@dataclass
class ModelEarn:
    id: UUID
    partner: str
    member: str
    lot_ids: list[UUID]
    """In the order the kernel reads them back: by funder."""
    amount: int
    reversed: int = 0


@dataclass
class ModelBurn:
    id: UUID
    partner: str
    member: str
    consumed: list[tuple[UUID, int]]
    """(lot, points) in consumption order."""
    restored: dict[UUID, int] = field(default_factory=dict)


@dataclass
class Outcome:
    """A request already made, to be retried under its key: its entry or its refusal."""

    retry: Callable[[], Booking]
    entry: Entry | None
    refusal: BusinessRefusal | None


def moves_of(entry: Entry) -> list[tuple[UUID, int]]:
    return [(m.lot_id, m.delta) for m in entry.lot_moves]


class RunScope:
    """One state-machine run: an outer transaction rolled back at the end, a savepoint per command.

    ``transaction()`` keeps :meth:`Database.transaction`'s contract: a command's writes stay on
    success and on a :class:`BusinessRefusal` (its idempotency record must survive) and are undone
    on any other error.
    """

    def __init__(self, engine: Engine) -> None:
        self.conn = engine.connect()
        self.outer = self.conn.begin()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        savepoint = self.conn.begin_nested()
        try:
            yield self.conn
        except BusinessRefusal:
            savepoint.commit()
            raise
        except BaseException:
            savepoint.rollback()
            raise
        savepoint.commit()

    def close(self) -> None:
        self.outer.rollback()
        self.conn.close()


# -- the machine ----------------------------------------------------------------------------------


class LedgerMachine(RuleBasedStateMachine):
    """The kernel against its model; bound to a database by :func:`test_ledger_state_machine`."""

    database: ClassVar[Database]

    def __init__(self) -> None:
        super().__init__()
        self.db = RunScope(self.database.engine)
        run = uuid4().hex[:10]
        self.clock = Clock(START)
        self.ledger = Ledger(Policy(lot_lifetime=None), clock=self.clock)
        self.partners = [f"pa{run}", f"pb{run}"]
        self.actors = {p: Actor(credential=f"till-{p}", partner=p) for p in self.partners}
        self.members = [f"m{run}{i}" for i in range(3)]
        with self.db.transaction() as conn:
            store = SqlLedgerStore(conn)
            self.ledger.open_system_accounts(store)
            for partner in self.partners:
                self.ledger.open_partner(store, partner)
            for member in self.members:
                self.ledger.open_member(store, member)
            self.baseline = {a: store.balance(a) for a in ("program:funded", "program:breakage")}
        self.balances = {(m, role): 0 for m in self.members for role in ROLES}
        self.issued = {funder: 0 for funder in [*self.partners, PROGRAM]}
        self.redeemed = dict.fromkeys(self.partners, 0)
        self.breakage = 0
        self.lots: dict[UUID, ModelLot] = {}
        self.holds: list[ModelHold] = []
        self.earns: list[ModelEarn] = []
        self.burns: list[ModelBurn] = []
        self.outcomes: list[Outcome] = []

    def teardown(self) -> None:
        self.db.close()

    # -- plumbing ---------------------------------------------------------------------------------

    def command(self, name: str, actor: Actor, **arguments: Any) -> Callable[[], Booking]:
        """A request under a fresh idempotency key, run (and retried) in its own transaction."""
        key = f"k-{uuid4()}"
        method = getattr(self.ledger, name)

        def call() -> Booking:
            with self.db.transaction() as conn:
                return method(SqlLedgerStore(conn), actor, key, **arguments)

        return call

    def job(self, name: str, *arguments: Any) -> Entry | None:
        with self.db.transaction() as conn:
            return getattr(self.ledger, name)(SqlLedgerStore(conn), *arguments)

    def expect_refusal(self, call: Callable[[], Booking], expected: LedgerError) -> None:
        with pytest.raises(LedgerError) as raised:
            call()
        assert type(raised.value) is type(expected), raised.value
        assert raised.value.fields() == expected.fields()
        if isinstance(expected, BusinessRefusal):
            # Recorded under its key, so a retry must be refused the same way (not re-decided).
            self.outcomes.append(Outcome(call, None, expected))

    def expect_booking(self, call: Callable[[], Booking]) -> Entry:
        booking = call()
        assert not booking.replayed
        self.outcomes.append(Outcome(call, booking.entry, None))
        return booking.entry

    def spendable(self, member: str) -> list[ModelLot]:
        lots = [
            lot
            for lot in self.lots.values()
            if lot.member == member and not lot.pending and lot.remaining > 0
        ]
        return sorted(lots, key=ModelLot.burn_order)

    def consume(self, member: str, points: int) -> list[tuple[UUID, int]]:
        """Take points from the member's lots earliest-expiry-first; returns the lot moves."""
        moves, rest = [], points
        for lot in self.spendable(member):
            take = min(lot.remaining, rest)
            if take:
                moves.append((lot.id, -take))
                rest -= take
            if not rest:
                break
        assert rest == 0, "model lots do not cover the model balance"
        for lot_id, delta in moves:
            self.lots[lot_id].remaining += delta
        return moves

    def pick_hold(self, data: st.DataObject) -> ModelHold:
        """Any hold, but an open one three times in four, so captures and voids mostly book."""
        open_holds = [hold for hold in self.holds if hold.status == "open"]
        if open_holds and data.draw(st.sampled_from([True, True, True, False])):
            return data.draw(st.sampled_from(open_holds))
        return data.draw(st.sampled_from(self.holds))

    def other_partner(self, partner: str) -> str:
        return next(p for p in self.partners if p != partner)

    # -- rules ------------------------------------------------------------------------------------

    @initialize(
        opening=st.lists(
            st.tuples(st.integers(0, 150), st.sampled_from([None, 1, 3, 7])), min_size=6, max_size=6
        )
    )
    def opening_balances(self, opening: list[tuple[int, int | None]]) -> None:
        """Start members with up to two released lots each, so spending rules have work to do."""
        for n, (points, expiry_days) in enumerate(opening):
            if points:
                self.earn(
                    member=n % 3,
                    partner=n % 2,
                    shape="single",
                    points=points,
                    second=0,
                    pending_days=None,
                    expiry_days=expiry_days,
                )

    @rule(
        member=MEMBERS,
        partner=st.integers(0, 1),
        shape=st.sampled_from(["single", "single", "joint", "program"]),
        points=st.integers(1, 200),
        second=st.integers(1, 100),
        pending_days=st.sampled_from([None, None, 1, 2]),
        expiry_days=st.sampled_from([None, 1, 3, 7]),
    )
    def earn(
        self,
        member: int,
        partner: int,
        shape: str,
        points: int,
        second: int,
        pending_days: int | None,
        expiry_days: int | None,
    ) -> None:
        self.clock.advance(TICK)
        m, actor = self.members[member], self.actors[self.partners[partner]]
        funding = {
            "single": {actor.partner: points},
            "joint": {self.partners[0]: points, self.partners[1]: second},
            "program": {PROGRAM: points},
        }[shape]
        now = self.clock()
        pending_until = now + timedelta(days=pending_days) if pending_days else None
        expires_at = now + timedelta(days=expiry_days) if expiry_days else None
        kind = EntryKind.ENGAGE if shape == "program" else EntryKind.EARN
        entry = self.expect_booking(
            self.command(
                "earn",
                actor,
                member=m,
                funding=funding,
                business_time=now,
                kind=kind,
                pending_until=pending_until,
                expires_at=expires_at,
            )
        )
        assert [(lot.funder, lot.amount) for lot in entry.opened_lots] == sorted(funding.items())
        for lot in entry.opened_lots:
            assert (lot.expires_at, lot.pending_until, lot.earned_at) == (
                expires_at,
                pending_until,
                now,
            )
            self.lots[lot.id] = ModelLot(
                id=lot.id,
                member=m,
                funder=lot.funder,
                remaining=lot.amount,
                earned_at=now,
                expires_at=expires_at,
                pending_until=pending_until,
                pending=pending_until is not None,
            )
            self.issued[lot.funder] -= lot.amount
        role = "pending" if pending_until else "available"
        self.balances[m, role] += sum(funding.values())
        self.earns.append(
            ModelEarn(
                entry.id,
                actor.partner,
                m,
                [lot.id for lot in entry.opened_lots],
                sum(funding.values()),
            )
        )

    @rule(member=MEMBERS, partner=st.integers(0, 1), amount=AMOUNTS)
    def burn(self, member: int, partner: int, amount: int | str) -> None:
        self.clock.advance(TICK)
        m, actor = self.members[member], self.actors[self.partners[partner]]
        points = resolve(amount, self.balances[m, "available"])
        call = self.command("burn", actor, member=m, points=points, business_time=self.clock())
        available = self.balances[m, "available"]
        if points > available:
            self.expect_refusal(
                call, InsufficientPoints(f"member:{m}:available", available, points)
            )
            return
        entry = self.expect_booking(call)
        moves = self.consume(m, points)
        assert moves_of(entry) == moves
        self.balances[m, "available"] -= points
        self.redeemed[actor.partner] += points
        self.burns.append(ModelBurn(entry.id, actor.partner, m, [(i, -d) for i, d in moves]))

    @rule(
        member=MEMBERS,
        partner=st.integers(0, 1),
        amount=AMOUNTS,
        ttl=st.sampled_from(
            [timedelta(minutes=5), timedelta(hours=1), timedelta(days=2), timedelta(days=7)]
        ),
    )
    def hold(self, member: int, partner: int, amount: int | str, ttl: timedelta) -> None:
        self.clock.advance(TICK)
        m, actor = self.members[member], self.actors[self.partners[partner]]
        points = resolve(amount, self.balances[m, "available"])
        call = self.command(
            "hold", actor, member=m, points=points, business_time=self.clock(), ttl=ttl
        )
        available = self.balances[m, "available"]
        if points > available:
            self.expect_refusal(
                call, InsufficientPoints(f"member:{m}:available", available, points)
            )
            return
        entry = self.expect_booking(call)
        self.balances[m, "available"] -= points
        self.balances[m, "held"] += points
        self.holds.append(ModelHold(entry.id, m, actor.partner, points, self.clock() + ttl))

    def hold_refusal(self, hold: ModelHold, partner: str) -> LedgerError | None:
        """Why a till of ``partner`` may not capture or void ``hold`` now, if it may not."""
        if partner != hold.partner:
            return UnknownEntry(hold.id)
        if hold.status != "open":
            return HoldNotOpen(hold.id, hold.status)
        if hold.expires_at <= self.clock():
            return HoldNotOpen(hold.id, "expired")
        return None

    @precondition(lambda self: self.holds)
    @rule(
        data=st.data(),
        portion=st.one_of(st.sampled_from(["all", "half", "more"]), st.integers(1, 80)),
        intruder=INTRUDER,
    )
    def capture(self, data: st.DataObject, portion: str | int, intruder: bool) -> None:
        self.clock.advance(TICK)
        hold = self.pick_hold(data)
        sizes = {"all": hold.amount, "half": (hold.amount + 1) // 2, "more": hold.amount + 1}
        points = portion if isinstance(portion, int) else sizes[portion]
        partner = self.other_partner(hold.partner) if intruder else hold.partner
        call = self.command(
            "capture",
            self.actors[partner],
            hold_id=hold.id,
            points=points,
            business_time=self.clock(),
        )
        refusal = self.hold_refusal(hold, partner)
        if refusal is None and points > hold.amount:
            refusal = CaptureExceedsHold(hold.id, hold.amount, points)
        if refusal is not None:
            self.expect_refusal(call, refusal)
            return
        entry = self.expect_booking(call)
        moves = self.consume(hold.member, points)
        assert moves_of(entry) == moves
        self.balances[hold.member, "held"] -= hold.amount
        self.balances[hold.member, "available"] += hold.amount - points
        self.redeemed[hold.partner] += points
        hold.status = "captured"
        self.burns.append(
            ModelBurn(entry.id, hold.partner, hold.member, [(i, -d) for i, d in moves])
        )

    def close_hold_by_void(self, hold: ModelHold) -> None:
        self.balances[hold.member, "held"] -= hold.amount
        self.balances[hold.member, "available"] += hold.amount
        hold.status = "voided"

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), intruder=INTRUDER)
    def void(self, data: st.DataObject, intruder: bool) -> None:
        self.clock.advance(TICK)
        hold = self.pick_hold(data)
        partner = self.other_partner(hold.partner) if intruder else hold.partner
        call = self.command(
            "void", self.actors[partner], hold_id=hold.id, business_time=self.clock()
        )
        refusal = self.hold_refusal(hold, partner)
        if refusal is not None:
            self.expect_refusal(call, refusal)
            return
        entry = self.expect_booking(call)
        assert (entry.kind, entry.refers_to) == (EntryKind.VOID, hold.id)
        self.close_hold_by_void(hold)

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def void_stale(self, data: st.DataObject) -> None:
        self.clock.advance(TICK)
        self.void_if_stale(self.pick_hold(data))

    def void_if_stale(self, hold: ModelHold) -> None:
        entry = self.job("void_if_stale", hold.id)
        if hold.status != "open" or hold.expires_at > self.clock():
            assert entry is None
            return
        assert entry is not None
        assert (entry.kind, entry.refers_to, entry.reason) == (EntryKind.VOID, hold.id, "expired")
        self.close_hold_by_void(hold)

    @precondition(lambda self: self.earns)
    @rule(data=st.data(), points=st.none() | st.integers(1, 80), intruder=INTRUDER)
    def reverse_earn(self, data: st.DataObject, points: int | None, intruder: bool) -> None:
        self.clock.advance(TICK)
        earn = data.draw(st.sampled_from(self.earns))
        partner = self.other_partner(earn.partner) if intruder else earn.partner
        call = self.command(
            "reverse",
            self.actors[partner],
            entry_id=earn.id,
            points=points,
            business_time=self.clock(),
        )
        if intruder:
            self.expect_refusal(call, UnknownEntry(earn.id))
            return
        # Reversible: the unreversed rest of the earn, limited to what is left of its own lots
        # and to what the member still has in the account each lot sits in.
        room = {role: self.balances[earn.member, role] for role in ("available", "pending")}
        takeable = {}
        for lot_id in earn.lot_ids:
            lot = self.lots[lot_id]
            role = "pending" if lot.pending else "available"
            takeable[lot_id] = min(lot.remaining, room[role])
            room[role] -= takeable[lot_id]
        reversible = min(earn.amount - earn.reversed, sum(takeable.values()))
        wanted = reversible if points is None else points
        if wanted > reversible or wanted == 0:
            self.expect_refusal(call, ReversalExceedsOriginal(earn.id, reversible, wanted))
            return
        entry = self.expect_booking(call)
        moves, rest = [], wanted
        for lot_id in earn.lot_ids:
            take = min(takeable[lot_id], rest)
            if take:
                lot = self.lots[lot_id]
                moves.append((lot_id, -take))
                lot.remaining -= take
                self.balances[earn.member, "pending" if lot.pending else "available"] -= take
                self.issued[lot.funder] += take
                rest -= take
        assert moves_of(entry) == moves
        earn.reversed += wanted

    @precondition(lambda self: self.burns)
    @rule(data=st.data(), points=st.none() | st.integers(1, 80), intruder=INTRUDER)
    def reverse_burn(self, data: st.DataObject, points: int | None, intruder: bool) -> None:
        self.clock.advance(TICK)
        burn = data.draw(st.sampled_from(self.burns))
        partner = self.other_partner(burn.partner) if intruder else burn.partner
        call = self.command(
            "reverse",
            self.actors[partner],
            entry_id=burn.id,
            points=points,
            business_time=self.clock(),
        )
        if intruder:
            self.expect_refusal(call, UnknownEntry(burn.id))
            return
        left = {lot_id: taken - burn.restored.get(lot_id, 0) for lot_id, taken in burn.consumed}
        reversible = sum(left.values())
        wanted = reversible if points is None else points
        if wanted > reversible or wanted == 0:
            self.expect_refusal(call, ReversalExceedsOriginal(burn.id, reversible, wanted))
            return
        entry = self.expect_booking(call)
        moves, rest = [], wanted
        for lot_id, _ in reversed(burn.consumed):  # the lot consumed last is restored first
            give = min(left[lot_id], rest)
            if give:
                moves.append((lot_id, give))
                self.lots[lot_id].remaining += give
                burn.restored[lot_id] = burn.restored.get(lot_id, 0) + give
                rest -= give
        assert moves_of(entry) == moves
        self.balances[burn.member, "available"] += wanted
        self.redeemed[burn.partner] -= wanted

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def reverse_hold(self, data: st.DataObject) -> None:
        self.clock.advance(TICK)
        hold = data.draw(st.sampled_from(self.holds))
        call = self.command(
            "reverse",
            self.actors[hold.partner],
            entry_id=hold.id,
            points=None,
            business_time=self.clock(),
        )
        self.expect_refusal(call, NotReversible(hold.id, "HOLD"))

    @rule(source=MEMBERS, step=st.integers(1, 2), partner=st.integers(0, 1), amount=AMOUNTS)
    def transfer(self, source: int, step: int, partner: int, amount: int | str) -> None:
        self.clock.advance(TICK)
        a, b = self.members[source], self.members[(source + step) % 3]
        points = resolve(amount, self.balances[a, "available"])
        call = self.command(
            "transfer",
            self.actors[self.partners[partner]],
            from_member=a,
            to_member=b,
            points=points,
            business_time=self.clock(),
        )
        available = self.balances[a, "available"]
        if points > available:
            self.expect_refusal(
                call, InsufficientPoints(f"member:{a}:available", available, points)
            )
            return
        entry = self.expect_booking(call)
        moves = self.consume(a, points)
        assert moves_of(entry) == moves
        assert len(entry.opened_lots) == len(moves)
        for (source_id, delta), copy in zip(moves, entry.opened_lots, strict=True):
            origin = self.lots[source_id]
            assert (copy.member, copy.funder, copy.amount) == (b, origin.funder, -delta)
            assert (copy.earned_at, copy.expires_at, copy.pending_until) == (
                origin.earned_at,
                origin.expires_at,
                None,
            )
            self.lots[copy.id] = ModelLot(
                id=copy.id,
                member=b,
                funder=origin.funder,
                remaining=-delta,
                earned_at=origin.earned_at,
                expires_at=origin.expires_at,
                pending_until=None,
                pending=False,
            )
        self.balances[a, "available"] -= points
        self.balances[b, "available"] += points

    @rule(member=MEMBERS)
    def expire(self, member: int) -> None:
        self.clock.advance(TICK)
        self.expire_due(self.members[member])

    def expire_due(self, m: str) -> None:
        now = self.clock()
        left, moves = self.balances[m, "available"], []
        for lot in self.spendable(m):
            if lot.expires_at is not None and lot.expires_at <= now:
                take = min(lot.remaining, left)
                if take:
                    moves.append((lot.id, -take))
                    left -= take
        entry = self.job("expire_due", m)
        if not moves:
            assert entry is None
            return
        assert entry is not None
        assert moves_of(entry) == moves
        points = -sum(delta for _, delta in moves)
        assert entry.amount_on("program:breakage") == points
        for lot_id, delta in moves:
            self.lots[lot_id].remaining += delta
        self.balances[m, "available"] -= points
        self.breakage += points

    @rule(member=MEMBERS)
    def release(self, member: int) -> None:
        self.clock.advance(TICK)
        self.release_due(self.members[member])

    def release_due(self, m: str) -> None:
        now = self.clock()
        due = [
            lot
            for lot in self.lots.values()
            if lot.member == m
            and lot.pending
            and lot.remaining > 0
            and lot.pending_until is not None
            and lot.pending_until <= now
        ]
        entry = self.job("release_due", m)
        if not due:
            assert entry is None
            return
        assert entry is not None
        assert set(entry.released_lots) == {lot.id for lot in due}
        points = sum(lot.remaining for lot in due)
        assert entry.amount_on(f"member:{m}:available") == points
        for lot in due:
            lot.pending = False
        self.balances[m, "pending"] -= points
        self.balances[m, "available"] += points

    @rule(
        step=st.sampled_from(
            [
                timedelta(minutes=1),
                timedelta(minutes=30),
                timedelta(hours=12),
                timedelta(days=1),
                timedelta(days=3),
            ]
        )
    )
    def advance_clock(self, step: timedelta) -> None:
        self.clock.advance(step)

    @rule(days=st.integers(1, 3))
    def nightly_jobs(self, days: int) -> None:
        """The nightly batch: time passes, points are released and expired, stale holds voided."""
        self.clock.advance(timedelta(days=days))
        for m in self.members:
            self.release_due(m)
            self.expire_due(m)
        for hold in self.holds:
            self.void_if_stale(hold)

    @precondition(lambda self: self.outcomes)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """A retry under the same key replays the first outcome and books nothing."""
        self.clock.advance(TICK)
        outcome = data.draw(st.sampled_from(self.outcomes))
        if outcome.entry is None:
            with pytest.raises(BusinessRefusal) as raised:
                outcome.retry()
            assert type(raised.value) is type(outcome.refusal)
            assert raised.value.fields() == outcome.refusal.fields()  # type: ignore[union-attr]
            return
        booking = outcome.retry()
        assert booking.replayed
        assert booking.entry.id == outcome.entry.id
        assert set(booking.entry.postings) == set(outcome.entry.postings)
        assert moves_of(booking.entry) == moves_of(outcome.entry)

    # -- invariants -------------------------------------------------------------------------------

    @invariant()
    def ledger_is_consistent_and_agrees_with_the_model(self) -> None:
        conn = self.db.conn
        assert check_consistency(conn) == []
        expected = {
            **{f"member:{m}:{role}": n for (m, role), n in self.balances.items()},
            **{f"partner:{p}:issued": self.issued[p] for p in self.partners},
            **{f"partner:{p}:redeemed": self.redeemed[p] for p in self.partners},
            "program:funded": self.baseline["program:funded"] + self.issued[PROGRAM],
            "program:breakage": self.baseline["program:breakage"] + self.breakage,
        }
        assert SqlLedgerStore(conn).balances(list(expected)) == expected
        lots = conn.execute(
            sa.select(t.lots.c.id, t.lots.c.remaining, t.lots.c.pending).where(
                t.lots.c.member.in_(self.members), t.lots.c.remaining > 0
            )
        )
        in_ledger = {lot_id: (remaining, bool(pending)) for lot_id, remaining, pending in lots}
        assert all(n >= 0 for n in self.balances.values())
        in_model = {
            lot.id: (lot.remaining, lot.pending) for lot in self.lots.values() if lot.remaining > 0
        }
        assert in_ledger == in_model


def test_ledger_state_machine(database_url: str) -> None:
    """Any command sequence keeps books balanced, floors intact and the ledger equal to a model."""
    database = Database.connect(database_url)
    try:
        machine = type("BoundLedgerMachine", (LedgerMachine,), {"database": database})
        run_state_machine_as_test(machine, settings=MACHINE_SETTINGS)
    finally:
        database.dispose()
