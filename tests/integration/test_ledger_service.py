"""Every kernel command on the real store (SQLite, or PostgreSQL when configured).

Each command runs in its own transaction, as the API runs it. After every test the whole database
must pass :func:`ledger.consistency.check_consistency`: books sum to zero, cached balances equal
recomputed ones, no member account is negative and lots cover member balances.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from uuid import uuid4

import pytest

from ledger import tables as t
from ledger.errors import (
    CaptureExceedsHold,
    HoldNotOpen,
    IdempotencyConflict,
    InsufficientPoints,
    InvalidRequest,
    NotReversible,
    ReversalExceedsOriginal,
    UnknownAccount,
    UnknownEntry,
)
from ledger.model import EntryKind, Posting
from ledger.service import Actor, Booking, Policy
from tests.integration.conftest import DEPT, RAIL, STAFF, SUPER, Books, Clock, new_key


@pytest.fixture(autouse=True)
def _books_stay_consistent(books: Books) -> Iterator[None]:
    yield
    assert books.findings() == []


def earn(
    books: Books, points: int = 100, *, member: str = "alice", actor: Actor = SUPER, **kw: object
) -> Booking:
    """Earn ``points`` funded by the acting partner (or by ``funding=`` when given)."""
    funding = kw.pop("funding", {actor.partner: points})
    return books.earn(
        actor, new_key(), member=member, funding=funding, business_time=books.clock(), **kw
    )


def burn(books: Books, points: int, *, member: str = "alice", actor: Actor = RAIL) -> Booking:
    return books.burn(actor, new_key(), member=member, points=points, business_time=books.clock())


def hold(
    books: Books, points: int, *, member: str = "alice", actor: Actor = RAIL, **kw: object
) -> Booking:
    return books.hold(
        actor, new_key(), member=member, points=points, business_time=books.clock(), **kw
    )


def capture(books: Books, hold_id: object, points: int, *, actor: Actor = RAIL) -> Booking:
    return books.capture(
        actor, new_key(), hold_id=hold_id, points=points, business_time=books.clock()
    )


def void(books: Books, hold_id: object, *, actor: Actor = RAIL) -> Booking:
    return books.void(actor, new_key(), hold_id=hold_id, business_time=books.clock())


def reverse(
    books: Books, entry_id: object, points: int | None = None, *, actor: Actor = RAIL
) -> Booking:
    return books.reverse(
        actor, new_key(), entry_id=entry_id, points=points, business_time=books.clock()
    )


# -- earn and release -----------------------------------------------------------------------------


def test_earn_credits_available_and_opens_a_lot_for_the_funder(books: Books, clock: Clock) -> None:
    """An earn moves points from the partner's issued account to the member and opens one lot."""
    expires = clock() + timedelta(days=365)
    booked = earn(books, 120, expires_at=expires, price_version="SUPER-2026-01").entry
    assert booked.kind is EntryKind.EARN
    assert (booked.partner, booked.credential) == ("SUPER", "key-super")
    assert set(booked.postings) == {
        Posting("partner:SUPER:issued", -120),
        Posting("member:alice:available", 120),
    }
    assert books.member("alice") == {"available": 120, "pending": 0, "held": 0}
    assert books.balance("partner:SUPER:issued") == -120
    [lot] = books.lots("alice")
    assert (lot.lot.funder, lot.lot.amount, lot.remaining, lot.pending) == (
        "SUPER",
        120,
        120,
        False,
    )
    assert (lot.lot.earned_at, lot.lot.expires_at) == (clock(), expires)
    assert lot.lot.price_version == "SUPER-2026-01"
    assert lot.lot.id == booked.opened_lots[0].id


def test_earn_without_expiry_uses_the_policy_lifetime(books: Books, clock: Clock) -> None:
    """A lot without an explicit expiry expires after the policy's lot lifetime."""
    earn(books, 10)
    [lot] = books.lots("alice")
    assert lot.lot.expires_at == clock() + Policy().lot_lifetime


def test_joint_earn_posts_and_opens_a_lot_per_funder(books: Books) -> None:
    """A joint promotion debits each funder separately and opens one lot per funder."""
    booked = earn(books, funding={"SUPER": 60, "DEPT": 40}).entry
    assert set(booked.postings) == {
        Posting("partner:DEPT:issued", -40),
        Posting("partner:SUPER:issued", -60),
        Posting("member:alice:available", 100),
    }
    assert books.balance("partner:SUPER:issued") == -60
    assert books.balance("partner:DEPT:issued") == -40
    by_funder = {lot.lot.funder: lot.remaining for lot in books.lots("alice")}
    assert by_funder == {"SUPER": 60, "DEPT": 40}


def test_engage_funded_by_the_program(books: Books) -> None:
    """An engagement sponsored by the program debits program:funded and opens a program lot."""
    booked = earn(books, 50, funding={"program": 50}, kind=EntryKind.ENGAGE).entry
    assert booked.kind is EntryKind.ENGAGE
    assert books.balance("program:funded") == -50
    assert [lot.lot.funder for lot in books.lots("alice")] == ["program"]


@pytest.mark.parametrize(
    "arguments",
    [
        {"funding": {}},
        {"funding": {"SUPER": 0}},
        {"funding": {"SUPER": -5}},
        {"funding": {"SUPER": 10.0}},
        {"funding": {"SUPER": True}},
        {"funding": {"SUP:ER": 10}},
        {"funding": {"SUPER": 10}, "kind": EntryKind.BURN},
        {"funding": {"SUPER": 10}, "member": "al:ice"},
    ],
    ids=[
        "no-funder",
        "zero",
        "negative",
        "float",
        "bool",
        "bad-funder",
        "wrong-kind",
        "bad-member",
    ],
)
def test_earn_refuses_malformed_requests(books: Books, arguments: dict[str, object]) -> None:
    """Malformed earns are refused before anything is written."""
    request = {"member": "alice", "business_time": books.clock(), **arguments}
    with pytest.raises(InvalidRequest):
        books.earn(SUPER, new_key(), **request)
    assert books.entry_count() == 0
    assert books.count(t.idempotency) == 0


def test_pending_earn_waits_in_pending_and_cannot_be_spent(books: Books, clock: Clock) -> None:
    """Points earned with a return window sit in member:pending and are not spendable."""
    booked = earn(books, 100, pending_until=clock() + timedelta(days=14)).entry
    assert Posting("member:alice:pending", 100) in booked.postings
    assert books.member("alice") == {"available": 0, "pending": 100, "held": 0}
    [lot] = books.lots("alice")
    assert lot.pending
    with pytest.raises(InsufficientPoints):
        burn(books, 1)


def test_release_due_moves_pending_points_only_once_the_window_ends(
    books: Books, clock: Clock
) -> None:
    """release_due does nothing before pending_until, releases at it, and is then a no-op."""
    window_end = clock() + timedelta(days=14)
    earn(books, 100, pending_until=window_end)
    earn(books, 30, pending_until=window_end + timedelta(days=1))
    clock.advance(days=14, microseconds=-1)
    assert books.release_due("alice") is None
    clock.advance(microseconds=1)
    released = books.release_due("alice")
    assert released.kind is EntryKind.RELEASE
    assert set(released.postings) == {
        Posting("member:alice:pending", -100),
        Posting("member:alice:available", 100),
    }
    assert books.member("alice") == {"available": 100, "pending": 30, "held": 0}
    assert books.release_due("alice") is None
    clock.advance(days=1)
    assert books.release_due("alice").amount_on("member:alice:available") == 30
    assert all(not lot.pending for lot in books.lots("alice"))


# -- burn -----------------------------------------------------------------------------------------


def test_burn_consumes_lots_earliest_expiry_first_never_expiring_last(
    books: Books, clock: Clock
) -> None:
    """A burn takes the lot expiring soonest first, and lots that never expire last."""
    forever = books.with_policy(Policy(lot_lifetime=None))
    late = earn(forever, 100, expires_at=clock() + timedelta(days=700)).entry.opened_lots[0]
    never = earn(forever, 100).entry.opened_lots[0]
    soon = earn(forever, 100, expires_at=clock() + timedelta(days=300)).entry.opened_lots[0]
    assert never.expires_at is None

    first = burn(books, 150).entry
    assert [(m.lot_id, m.delta) for m in first.lot_moves] == [(soon.id, -100), (late.id, -50)]
    second = burn(books, 100).entry
    assert [(m.lot_id, m.delta) for m in second.lot_moves] == [(late.id, -50), (never.id, -50)]
    assert [(s.lot.id, s.remaining) for s in books.lots("alice")] == [(never.id, 50)]
    assert books.balance("partner:RAIL:redeemed") == 250


def test_burn_refused_when_points_are_insufficient(books: Books) -> None:
    """Burning more than is available is refused with the account, balance and request."""
    earn(books, 40)
    entries = books.entry_count()
    with pytest.raises(InsufficientPoints) as refused:
        burn(books, 100)
    assert refused.value.fields() == {
        "account": "member:alice:available",
        "balance": 40,
        "requested": 100,
    }
    assert books.entry_count() == entries
    assert books.member("alice")["available"] == 40


def test_partner_cannot_burn_at_another_partner(books: Books) -> None:
    """A partner books burns only at itself."""
    earn(books, 40)
    with pytest.raises(InvalidRequest, match="only act for itself"):
        books.burn(
            RAIL, new_key(), member="alice", points=10, partner="SUPER", business_time=books.clock()
        )


# -- idempotency ----------------------------------------------------------------------------------


def test_retry_returns_the_original_entry_and_books_nothing(books: Books, clock: Clock) -> None:
    """The same request under the same key returns the first entry, marked replayed."""
    key = new_key()
    request = {"member": "alice", "funding": {"SUPER": 100}, "business_time": clock()}
    first = books.earn(SUPER, key, **request)
    entries = books.entry_count()
    clock.advance(minutes=5)
    again = books.earn(SUPER, key, **request)
    assert (first.replayed, again.replayed) == (False, True)
    assert again.entry == first.entry
    assert books.entry_count() == entries
    assert books.member("alice")["available"] == 100


def test_same_key_with_another_payload_names_exactly_the_differing_fields(
    books: Books, clock: Clock
) -> None:
    """Reusing a key with a different payload is a conflict that lists the fields that differ."""
    earn(books, 500)
    key = new_key()
    original = books.burn(RAIL, key, member="alice", points=100, business_time=clock())
    with pytest.raises(IdempotencyConflict) as conflict:
        books.burn(RAIL, key, member="alice", points=101, business_time=clock())
    assert conflict.value.fields() == {
        "idempotency_key": key,
        "differing_fields": ["points"],
        "original_entry_id": str(original.entry.id),
    }
    with pytest.raises(IdempotencyConflict) as conflict:
        books.burn(RAIL, key, member="bob", points=100, business_time=clock() + timedelta(1))
    assert conflict.value.differing_fields == ["business_time", "member"]
    with pytest.raises(IdempotencyConflict) as conflict:
        books.hold(RAIL, key, member="alice", points=100, business_time=clock())
    assert "op" in conflict.value.differing_fields
    assert books.member("alice")["available"] == 400


def test_idempotency_keys_are_scoped_per_credential(books: Books) -> None:
    """Two credentials may use the same key: each gets its own entry."""
    second_till = Actor(credential="key-super-till-2", partner="SUPER")
    key = "order-1234"
    a = books.earn(SUPER, key, member="alice", funding={"SUPER": 10}, business_time=books.clock())
    b = books.earn(
        second_till, key, member="alice", funding={"SUPER": 10}, business_time=books.clock()
    )
    c = books.earn(DEPT, key, member="bob", funding={"DEPT": 7}, business_time=books.clock())
    assert [a.replayed, b.replayed, c.replayed] == [False, False, False]
    assert len({a.entry.id, b.entry.id, c.entry.id}) == 3
    assert books.member("alice")["available"] == 20
    assert books.member("bob")["available"] == 7


def test_refusal_is_replayed_even_after_the_member_can_pay(books: Books, clock: Clock) -> None:
    """A refused request retried with its key is refused the same way, even once points exist."""
    earn(books, 40)
    key = new_key()
    request = {"member": "alice", "points": 100, "business_time": clock()}
    with pytest.raises(InsufficientPoints) as first:
        books.burn(RAIL, key, **request)
    earn(books, 1000)
    entries = books.entry_count()
    with pytest.raises(InsufficientPoints) as retried:
        books.burn(RAIL, key, **request)
    assert retried.value.fields() == first.value.fields()
    assert retried.value.message == first.value.message
    assert books.entry_count() == entries
    assert books.member("alice")["available"] == 1040


def test_unknown_member_is_refused_and_leaves_nothing_behind(books: Books, clock: Clock) -> None:
    """A command for a member never opened raises UnknownAccount and writes nothing, not the key."""
    key = new_key()
    request = {"member": "ghost", "funding": {"SUPER": 10}, "business_time": clock()}
    with pytest.raises(UnknownAccount) as unknown:
        books.earn(SUPER, key, **request)
    assert unknown.value.fields() == {"account": "member:ghost:available"}
    with pytest.raises(UnknownAccount):
        books.burn(RAIL, new_key(), member="ghost", points=1, business_time=clock())
    assert books.entry_count() == 0
    assert books.count(t.idempotency) == 0

    books.run(lambda store: books.ledger.open_member(store, "ghost"))
    assert books.earn(SUPER, key, **request).replayed is False
    assert books.member("ghost")["available"] == 10


def test_unknown_funder_is_refused_and_leaves_nothing_behind(books: Books) -> None:
    """An earn funded by a partner whose accounts were never opened writes nothing."""
    with pytest.raises(UnknownAccount) as unknown:
        earn(books, 10, funding={"NOBODY": 10})
    assert unknown.value.account == "partner:NOBODY:issued"
    assert books.entry_count() == 0
    assert books.count(t.idempotency) == 0


# -- holds ----------------------------------------------------------------------------------------


def test_held_points_are_not_available(books: Books) -> None:
    """A hold moves points from available to held; they can be neither burnt nor held twice."""
    earn(books, 100)
    booked = hold(books, 70).entry
    assert booked.kind is EntryKind.HOLD
    assert books.member("alice") == {"available": 30, "pending": 0, "held": 70}
    with pytest.raises(InsufficientPoints) as refused:
        burn(books, 31)
    assert refused.value.fields()["balance"] == 30
    with pytest.raises(InsufficientPoints):
        hold(books, 31)
    assert [lot.remaining for lot in books.lots("alice")] == [100]


def test_partial_capture_redeems_part_and_returns_the_rest(books: Books) -> None:
    """Capturing less than held redeems that much and returns the rest to available at once."""
    earn(books, 100)
    held = hold(books, 70).entry
    captured = capture(books, held.id, 50).entry
    assert captured.kind is EntryKind.CAPTURE
    assert captured.refers_to == held.id
    assert set(captured.postings) == {
        Posting("member:alice:held", -70),
        Posting("partner:RAIL:redeemed", 50),
        Posting("member:alice:available", 20),
    }
    assert books.member("alice") == {"available": 50, "pending": 0, "held": 0}
    assert [lot.remaining for lot in books.lots("alice")] == [50]


def test_capture_of_more_than_held_is_refused(books: Books) -> None:
    """A capture larger than the hold is refused, and the hold stays open for a valid capture."""
    earn(books, 100)
    held = hold(books, 70).entry
    with pytest.raises(CaptureExceedsHold) as refused:
        capture(books, held.id, 71)
    assert refused.value.fields() == {"hold_id": str(held.id), "held": 70, "requested": 71}
    capture(books, held.id, 70)
    assert books.member("alice") == {"available": 30, "pending": 0, "held": 0}


def test_void_returns_every_held_point(books: Books) -> None:
    """Voiding a hold returns all of it to available, and consumes no lot."""
    earn(books, 100)
    held = hold(books, 70).entry
    voided = void(books, held.id).entry
    assert voided.kind is EntryKind.VOID
    assert voided.refers_to == held.id
    assert books.member("alice") == {"available": 100, "pending": 0, "held": 0}
    assert [lot.remaining for lot in books.lots("alice")] == [100]


def test_closed_hold_can_be_neither_captured_nor_voided(books: Books) -> None:
    """Capture or void of a captured or voided hold is refused with the hold's status."""
    earn(books, 100)
    captured = hold(books, 30).entry
    capture(books, captured.id, 30)
    voided = hold(books, 30).entry
    void(books, voided.id)
    for hold_id, status in ((captured.id, "captured"), (voided.id, "voided")):
        with pytest.raises(HoldNotOpen) as refused:
            capture(books, hold_id, 1)
        assert refused.value.fields() == {"hold_id": str(hold_id), "status": status}
        with pytest.raises(HoldNotOpen):
            void(books, hold_id)
    assert books.member("alice") == {"available": 70, "pending": 0, "held": 0}


def test_capture_after_the_hold_expired_is_refused(books: Books, clock: Clock) -> None:
    """Once a hold's time to live has passed it can be neither captured nor voided by a till."""
    earn(books, 100)
    held = hold(books, 60, ttl=timedelta(minutes=5)).entry
    clock.advance(minutes=5)
    with pytest.raises(HoldNotOpen) as refused:
        capture(books, held.id, 60)
    assert refused.value.fields() == {"hold_id": str(held.id), "status": "expired"}
    with pytest.raises(HoldNotOpen):
        void(books, held.id)
    assert books.member("alice") == {"available": 40, "pending": 0, "held": 60}


def test_void_if_stale_voids_only_expired_holds_and_is_idempotent(
    books: Books, clock: Clock
) -> None:
    """The stale-hold job voids holds past their TTL, leaves live ones, and acts only once."""
    earn(books, 100)
    stale = hold(books, 30, ttl=timedelta(minutes=5)).entry
    live = hold(books, 20, ttl=timedelta(hours=1)).entry
    clock.advance(minutes=10)
    voided = books.void_if_stale(stale.id)
    assert voided.kind is EntryKind.VOID
    assert (voided.refers_to, voided.reason, voided.partner) == (stale.id, "expired", "RAIL")
    assert books.void_if_stale(live.id) is None
    assert books.void_if_stale(stale.id) is None
    assert books.member("alice") == {"available": 80, "pending": 0, "held": 20}
    capture(books, live.id, 20)
    assert books.void_if_stale(live.id) is None
    with pytest.raises(UnknownEntry):
        books.void_if_stale(uuid4())


def test_partner_cannot_act_on_another_partners_entries(books: Books) -> None:
    """Capture, void or reversal of another partner's entry is reported as an unknown entry."""
    earned = earn(books, 100, actor=SUPER).entry
    burnt = burn(books, 10, actor=RAIL).entry
    held = hold(books, 20, actor=RAIL).entry
    before = books.entry_count()
    with pytest.raises(UnknownEntry):
        capture(books, held.id, 20, actor=DEPT)
    with pytest.raises(UnknownEntry):
        void(books, held.id, actor=DEPT)
    with pytest.raises(UnknownEntry):
        reverse(books, burnt.id, actor=SUPER)
    with pytest.raises(UnknownEntry) as unknown:
        reverse(books, earned.id, actor=RAIL)
    assert unknown.value.fields() == {"entry_id": str(earned.id)}
    with pytest.raises(UnknownEntry):
        reverse(books, uuid4(), actor=RAIL)
    assert books.entry_count() == before
    assert books.member("alice") == {"available": 70, "pending": 0, "held": 20}
    capture(books, held.id, 20, actor=RAIL)


# -- reversals ------------------------------------------------------------------------------------


def test_burn_reversal_restores_the_consumed_lots_last_consumed_first(
    books: Books, clock: Clock
) -> None:
    """Cancelling a burn re-credits the lots it consumed, with their expiry, last taken first."""
    a = earn(books, 100, expires_at=clock() + timedelta(days=100)).entry.opened_lots[0]
    b = earn(books, 100, expires_at=clock() + timedelta(days=200)).entry.opened_lots[0]
    burnt = burn(books, 150).entry
    assert [(m.lot_id, m.delta) for m in burnt.lot_moves] == [(a.id, -100), (b.id, -50)]

    first = reverse(books, burnt.id, 30).entry
    assert first.kind is EntryKind.BURN_REVERSAL
    assert first.refers_to == burnt.id
    assert set(first.postings) == {
        Posting("partner:RAIL:redeemed", -30),
        Posting("member:alice:available", 30),
    }
    assert [(m.lot_id, m.delta) for m in first.lot_moves] == [(b.id, 30)]
    second = reverse(books, burnt.id, 100).entry
    assert [(m.lot_id, m.delta) for m in second.lot_moves] == [(b.id, 20), (a.id, 80)]
    rest = reverse(books, burnt.id).entry
    assert [(m.lot_id, m.delta) for m in rest.lot_moves] == [(a.id, 20)]

    lots = {s.lot.id: s for s in books.lots("alice")}
    assert (lots[a.id].remaining, lots[a.id].lot.expires_at) == (100, a.expires_at)
    assert (lots[b.id].remaining, lots[b.id].lot.expires_at) == (100, b.expires_at)
    assert books.balance("partner:RAIL:redeemed") == 0
    with pytest.raises(ReversalExceedsOriginal) as refused:
        reverse(books, burnt.id)
    assert refused.value.fields()["reversible"] == 0


def test_cumulative_burn_reversals_never_exceed_the_original(books: Books) -> None:
    """Partial reversals add up to at most the burn; a step too far is refused with what is left."""
    earn(books, 100)
    burnt = burn(books, 100).entry
    reverse(books, burnt.id, 60)
    with pytest.raises(ReversalExceedsOriginal) as refused:
        reverse(books, burnt.id, 50)
    assert refused.value.fields() == {
        "entry_id": str(burnt.id),
        "reversible": 40,
        "requested": 50,
    }
    reverse(books, burnt.id, 40)
    assert books.member("alice")["available"] == 100


def test_capture_can_be_reversed_like_a_burn(books: Books) -> None:
    """A captured hold is a burn: reversing it restores the captured points to available."""
    earn(books, 100)
    held = hold(books, 70).entry
    captured = capture(books, held.id, 50).entry
    reversal = reverse(books, captured.id).entry
    assert reversal.amount_on("member:alice:available") == 50
    assert books.member("alice") == {"available": 100, "pending": 0, "held": 0}
    assert books.balance("partner:RAIL:redeemed") == 0


def test_earn_reversal_after_spending_creates_no_points(books: Books) -> None:
    """Buy, earn, spend, refund: the refund takes back only what is left; no points are minted."""
    earned = earn(books, 100, actor=SUPER).entry
    burnt = burn(books, 70, actor=RAIL).entry
    refund = reverse(books, earned.id, actor=SUPER).entry
    assert refund.kind is EntryKind.EARN_REVERSAL
    assert set(refund.postings) == {
        Posting("member:alice:available", -30),
        Posting("partner:SUPER:issued", 30),
    }
    assert books.member("alice")["available"] == 0
    assert books.balance("partner:SUPER:issued") == -70
    assert books.balance("partner:RAIL:redeemed") == 70
    with pytest.raises(ReversalExceedsOriginal) as refused:
        reverse(books, earned.id, 1, actor=SUPER)
    assert refused.value.fields()["reversible"] == 0

    # The order is then cancelled: the burnt points come back to their lot, and only now can the
    # rest of the earn be taken back. In total, never more than was earned.
    reverse(books, burnt.id, actor=RAIL)
    rest = reverse(books, earned.id, actor=SUPER).entry
    assert rest.amount_on("partner:SUPER:issued") == 70
    assert books.member("alice")["available"] == 0
    assert books.balance("partner:SUPER:issued") == 0
    with pytest.raises(ReversalExceedsOriginal):
        reverse(books, earned.id, actor=SUPER)


def test_earn_reversal_touches_only_the_original_lots(books: Books, clock: Clock) -> None:
    """Reversing an earn never takes points from the member's other lots."""
    earned = earn(books, 50, actor=SUPER, expires_at=clock() + timedelta(days=10)).entry
    other = earn(books, 80, actor=DEPT, expires_at=clock() + timedelta(days=20)).entry
    burn(books, 50)  # takes the SUPER lot, which expires first
    with pytest.raises(ReversalExceedsOriginal) as refused:
        reverse(books, earned.id, 10, actor=SUPER)
    assert refused.value.fields()["reversible"] == 0
    assert books.lot(other.opened_lots[0].id).remaining == 80


def test_partial_earn_reversals_are_cumulative(books: Books) -> None:
    """Several partial refunds of one earn add up to at most the original."""
    earned = earn(books, 100).entry
    reverse(books, earned.id, 40, actor=SUPER)
    with pytest.raises(ReversalExceedsOriginal) as refused:
        reverse(books, earned.id, 70, actor=SUPER)
    assert refused.value.fields()["reversible"] == 60
    reverse(books, earned.id, 60, actor=SUPER)
    assert books.member("alice")["available"] == 0
    assert books.balance("partner:SUPER:issued") == 0


def test_earn_reversal_of_pending_points_takes_them_from_pending(
    books: Books, clock: Clock
) -> None:
    """A refund inside the return window takes the points back out of member:pending."""
    earned = earn(books, 100, pending_until=clock() + timedelta(days=14)).entry
    refund = reverse(books, earned.id, 25, actor=SUPER).entry
    assert refund.amount_on("member:alice:pending") == -25
    assert books.member("alice") == {"available": 0, "pending": 75, "held": 0}
    clock.advance(days=14)
    assert books.release_due("alice").amount_on("member:alice:available") == 75


def test_joint_earn_reversal_returns_points_to_each_funder(books: Books) -> None:
    """Reversing a joint earn credits each funder back for its own lot."""
    earned = earn(books, funding={"SUPER": 60, "DEPT": 40}).entry
    refund = reverse(books, earned.id, actor=SUPER).entry
    assert refund.amount_on("partner:SUPER:issued") == 60
    assert refund.amount_on("partner:DEPT:issued") == 40
    assert books.balance("partner:SUPER:issued") == 0
    assert books.balance("partner:DEPT:issued") == 0
    assert books.member("alice")["available"] == 0


def test_earn_reversal_leaves_held_points_alone(books: Books) -> None:
    """Held points are promised to a till: a refund can take back only available points."""
    earned = earn(books, 100).entry
    held = hold(books, 80).entry
    refund = reverse(books, earned.id, actor=SUPER).entry
    assert refund.amount_on("member:alice:available") == -20
    assert books.member("alice") == {"available": 0, "pending": 0, "held": 80}
    capture(books, held.id, 80)


def test_holds_transfers_and_expiries_are_not_reversible(books: Books, clock: Clock) -> None:
    """Only earns and burns reverse: a HOLD, TRANSFER or EXPIRE reversal is refused."""
    earn(books, 100, expires_at=clock() + timedelta(days=1))
    held = hold(books, 10).entry
    moved = books.transfer(
        SUPER, new_key(), from_member="alice", to_member="bob", points=10, business_time=clock()
    ).entry
    clock.advance(days=2)
    expired = books.expire_due("alice")
    for entry, actor in ((held, RAIL), (moved, SUPER), (expired, STAFF)):
        with pytest.raises(NotReversible) as refused:
            reverse(books, entry.id, actor=actor)
        assert refused.value.fields() == {"entry_id": str(entry.id), "kind": entry.kind.value}


# -- transfer -------------------------------------------------------------------------------------


def test_transfer_moves_lots_with_their_funder_and_expiry(books: Books, clock: Clock) -> None:
    """A transfer consumes the sender's lots in burn order and opens copies for the recipient."""
    super_lot = earn(books, 50, actor=SUPER, expires_at=clock() + timedelta(days=10))
    dept_lot = earn(books, 100, actor=DEPT, expires_at=clock() + timedelta(days=20))
    clock.advance(hours=1)
    moved = books.transfer(
        STAFF, new_key(), from_member="alice", to_member="bob", points=80, business_time=clock()
    ).entry
    assert moved.kind is EntryKind.TRANSFER
    assert set(moved.postings) == {
        Posting("member:alice:available", -80),
        Posting("member:bob:available", 80),
    }
    received = [
        (s.lot.funder, s.remaining, s.lot.expires_at, s.lot.earned_at) for s in books.lots("bob")
    ]
    s_lot, d_lot = super_lot.entry.opened_lots[0], dept_lot.entry.opened_lots[0]
    assert received == [
        ("SUPER", 50, s_lot.expires_at, s_lot.earned_at),
        ("DEPT", 30, d_lot.expires_at, d_lot.earned_at),
    ]
    assert [(s.lot.id, s.remaining) for s in books.lots("alice")] == [(d_lot.id, 70)]
    assert books.member("bob")["available"] == 80


def test_transfer_refusals(books: Books, clock: Clock) -> None:
    """A transfer needs two members, enough available points, and released (not pending) points."""
    earn(books, 30)
    earn(books, 100, pending_until=clock() + timedelta(days=14))
    with pytest.raises(InsufficientPoints) as refused:
        books.transfer(
            STAFF, new_key(), from_member="alice", to_member="bob", points=31, business_time=clock()
        )
    assert refused.value.fields()["balance"] == 30
    with pytest.raises(InvalidRequest):
        books.transfer(
            STAFF,
            new_key(),
            from_member="alice",
            to_member="alice",
            points=1,
            business_time=clock(),
        )
    with pytest.raises(UnknownAccount):
        books.transfer(
            STAFF,
            new_key(),
            from_member="alice",
            to_member="ghost",
            points=1,
            business_time=clock(),
        )
    assert books.member("bob")["available"] == 0


# -- expiry ---------------------------------------------------------------------------------------


def test_expire_due_moves_what_is_left_of_expired_lots_to_breakage(
    books: Books, clock: Clock
) -> None:
    """Expiry sends only the remainder of lots past their expiry to program:breakage."""
    old = earn(books, 100, actor=SUPER, expires_at=clock() + timedelta(days=30)).entry
    young = earn(books, 100, actor=DEPT, expires_at=clock() + timedelta(days=60)).entry
    burn(books, 30)
    clock.advance(days=30, microseconds=-1)
    assert books.expire_due("alice") is None
    clock.advance(microseconds=1)
    expired = books.expire_due("alice")
    assert expired.kind is EntryKind.EXPIRE
    assert set(expired.postings) == {
        Posting("member:alice:available", -70),
        Posting("program:breakage", 70),
    }
    # Breakage stays attributable: the move names the lot, and the lot names its funder.
    [move] = expired.lot_moves
    assert (move.lot_id, move.delta) == (old.opened_lots[0].id, -70)
    assert books.lot(move.lot_id).lot.funder == "SUPER"
    assert [(s.lot.id, s.remaining) for s in books.lots("alice")] == [
        (young.opened_lots[0].id, 100)
    ]
    assert books.expire_due("alice") is None
    assert books.balance("program:breakage") == 70


def test_expiry_leaves_held_points_until_the_hold_closes(books: Books, clock: Clock) -> None:
    """Held points do not expire while held; once the hold is voided they expire on the next run."""
    earn(books, 100, expires_at=clock() + timedelta(days=1))
    held = hold(books, 40, ttl=timedelta(days=5)).entry
    clock.advance(days=2)
    assert books.expire_due("alice").amount_on("program:breakage") == 60
    assert books.member("alice") == {"available": 0, "pending": 0, "held": 40}
    assert books.expire_due("alice") is None
    void(books, held.id)
    assert books.expire_due("alice").amount_on("program:breakage") == 40
    assert books.member("alice") == {"available": 0, "pending": 0, "held": 0}


def test_pending_points_do_not_expire_while_pending(books: Books, clock: Clock) -> None:
    """Expiry looks only at released lots; pending points wait for their release first."""
    earn(
        books,
        100,
        pending_until=clock() + timedelta(days=14),
        expires_at=clock() + timedelta(days=7),
    )
    clock.advance(days=10)
    assert books.expire_due("alice") is None
    clock.advance(days=4)
    books.release_due("alice")
    assert books.expire_due("alice").amount_on("program:breakage") == 100


# -- adjustments and posted entries ---------------------------------------------------------------


def test_adjustments_in_both_directions(books: Books, clock: Clock) -> None:
    """Positive adjustments open a program lot, negative ones consume lots; each keeps a reason."""
    up = books.adjust(
        STAFF, new_key(), member="alice", points=50, reason="goodwill", business_time=clock()
    ).entry
    assert up.kind is EntryKind.ADJUSTMENT
    assert (up.reason, up.credential) == ("goodwill", "staff-alice")
    assert set(up.postings) == {
        Posting("member:alice:available", 50),
        Posting("program:adjustments", -50),
    }
    assert [lot.lot.funder for lot in books.lots("alice")] == ["program"]
    down = books.adjust(
        STAFF, new_key(), member="alice", points=-20, reason="double credit", business_time=clock()
    ).entry
    assert down.amount_on("program:adjustments") == 20
    assert [(m.lot_id, m.delta) for m in down.lot_moves] == [(up.opened_lots[0].id, -20)]
    assert books.member("alice")["available"] == 30
    with pytest.raises(InsufficientPoints):
        books.adjust(
            STAFF, new_key(), member="alice", points=-31, reason="x", business_time=clock()
        )


@pytest.mark.parametrize(
    ("points", "reason"), [(5, ""), (5, "   "), (5, None), (0, "why"), (True, "why"), (2.0, "why")]
)
def test_adjustment_needs_a_reason_and_a_nonzero_integer(
    books: Books, points: object, reason: str | None
) -> None:
    """An adjustment without a reason, or of zero or non-integer points, is refused."""
    with pytest.raises(InvalidRequest):
        books.adjust(
            STAFF,
            new_key(),
            member="alice",
            points=points,
            reason=reason,
            business_time=books.clock(),
        )
    assert books.entry_count() == 0


def test_post_books_a_euro_payment(books: Books, clock: Clock) -> None:
    """post() books a EUR entry between a partner's settlement account and the operator's bank."""
    paid = books.post(
        STAFF,
        new_key(),
        kind=EntryKind.PAYMENT,
        postings=[Posting("partner:SUPER:settlement", -758_000), Posting("operator:bank", 758_000)],
        business_time=clock(),
        reason="SEPA ref 2026-03-SUPER",
    ).entry
    assert paid.kind is EntryKind.PAYMENT
    assert books.balance("operator:bank") == 758_000
    assert books.balance("partner:SUPER:settlement") == -758_000
    with pytest.raises(InvalidRequest):
        books.post(
            STAFF,
            new_key(),
            kind=EntryKind.ADJUSTMENT,
            postings=[Posting("member:alice:available", 5), Posting("program:adjustments", -5)],
            business_time=clock(),
            reason="sneaky",
        )
    with pytest.raises(UnknownAccount):
        books.post(
            STAFF,
            new_key(),
            kind=EntryKind.PAYMENT,
            postings=[Posting("partner:NOBODY:settlement", -1), Posting("operator:bank", 1)],
            business_time=clock(),
        )


# -- queries --------------------------------------------------------------------------------------


def test_balance_as_of_a_past_ledger_time(books: Books, clock: Clock) -> None:
    """A balance as of a ledger time counts exactly the entries booked up to that instant."""
    before = clock.now - timedelta(seconds=1)
    t0 = clock.now
    earn(books, 100)
    t1 = clock.advance(hours=1)
    burn(books, 30)
    t2 = clock.advance(days=1)
    earn(books, 50)
    clock.advance(days=1)
    account = "member:alice:available"
    assert books.balance(account, as_of=before) == 0
    assert books.balance(account, as_of=t0) == 100
    assert books.balance(account, as_of=t1 - timedelta(microseconds=1)) == 100
    assert books.balance(account, as_of=t1) == 70
    assert books.balance(account, as_of=t2) == 120
    assert books.balance(account) == 120
    assert books.balance("partner:RAIL:redeemed", as_of=t1) == 30
    with pytest.raises(UnknownAccount):
        books.balance("member:ghost:available", as_of=t2)
