"""Use cases of the ledger kernel: every way points and euros move.

Each command runs inside one transaction opened by the caller (``Database.transaction``) and works
through a :class:`~ledger.repository.LedgerStore`. A command has two phases:

1. *decide*: claim the idempotency key, lock the member accounts it touches (sorted by code, the
   one global lock order), read balances and lots, and build an :class:`~ledger.model.Entry` —
   or refuse. Nothing but the idempotency claim is written in this phase, so a refusal leaves only
   its own record behind.
2. *book*: write the entry, its postings, lots, balance and hold changes, and its queue row for the
   integrator. Nothing in this phase can refuse.

Rules enforced here (PRODUCT.md §3): member accounts never go negative; every credit to a member
opens a lot and every debit consumes lots earliest-expiry-first; held points are not available;
captures never exceed the hold; reversals never exceed what is left of the original; reversing a
burn restores the very lots it consumed, with their original expiry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from ledger.canonical import format_timestamp
from ledger.db import JSONText
from ledger.errors import (
    BusinessRefusal,
    CaptureExceedsHold,
    HoldNotOpen,
    IdempotencyConflict,
    InsufficientPoints,
    InvalidRequest,
    LedgerError,
    NotReversible,
    ReversalExceedsOriginal,
    UnknownEntry,
)
from ledger.model import (
    MEMBER_ROLES,
    PARTNER_ROLES,
    PROGRAM,
    SYSTEM_ACCOUNTS,
    Entry,
    EntryKind,
    Lot,
    LotMove,
    Posting,
    check_owner,
    member_account,
    partner_account,
)
from ledger.numbers import parse_amount
from ledger.repository import BufferedStore, HoldState, LedgerStore, LotState, SqlLedgerStore

Clock = Callable[[], datetime]

#: Attributes proving who asked for the entries booked while they are set (the API sets a partner's
#: HTTP message signature). See :func:`request_evidence`.
_evidence: ContextVar[Mapping[str, Any] | None] = ContextVar("request_evidence", default=None)


@contextmanager
def request_evidence(attributes: Mapping[str, Any] | None) -> Iterator[None]:
    """Add ``attributes`` to every entry a command books in this context (non-repudiation).

    The evidence is merged into the entry's attributes, so it is stored and hashed into the
    entry's leaf, but it is not part of the request's idempotency fingerprint: a retry that proves
    itself afresh (a new signature, a new nonce) replays the original entry, which keeps the
    evidence of the request that booked it. An empty or ``None`` mapping adds nothing.
    """
    token = _evidence.set(dict(attributes) if attributes else None)
    try:
        yield
    finally:
        _evidence.reset(token)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks: a credential, acting for a partner or for the operator's staff."""

    credential: str
    """Credential id (API key id or staff account), recorded on every entry it books."""
    partner: str | None = None
    """Partner code the credential belongs to; ``None`` for staff and jobs."""
    principal: str | None = None
    """Whose idempotency keys these are (``partner:SUPER``, ``staff:alice``); defaults to the
    credential. Scoping keys to the principal keeps a retry recognised across key rotations."""

    @property
    def idempotency_scope(self) -> str:
        return self.principal or self.credential


#: The operator's scheduled jobs act under this credential.
SYSTEM = Actor(credential="system")


@dataclass(frozen=True, slots=True)
class Policy:
    """Kernel settings the business layer passes in."""

    hold_ttl: timedelta = timedelta(minutes=30)
    """How long a till's hold stays open before the stale-hold job voids it."""
    lot_lifetime: timedelta | None = timedelta(days=3 * 365)
    """Default life of a lot when the caller gives no expiry; ``None``: points never expire."""
    shards: int = 8
    """Balance rows per unconstrained account, so hot partner accounts do not serialise writers."""


@dataclass(frozen=True, slots=True)
class Booking:
    """The outcome of a command: the entry, and whether it was a replay of an earlier request."""

    entry: Entry
    replayed: bool = False


#: The commands :meth:`Ledger.book_many` books (the keyed ones; jobs go through :meth:`batch`).
BULK_COMMANDS = frozenset(
    {"earn", "burn", "hold", "capture", "void", "reverse", "transfer", "adjust", "forfeit", "post"}
)


@dataclass(frozen=True, slots=True)
class Command:
    """One keyed command for :meth:`Ledger.book_many`: the method, who asks, the key, its arguments.

    ``params`` are the keyword arguments of the method of the same name (``member=``, ``points=``,
    ``business_time=``, ...).
    """

    op: str
    actor: Actor
    key: str
    params: Mapping[str, Any]


class Ledger:
    """The kernel's commands, queries and jobs over a store bound to one transaction."""

    def __init__(self, policy: Policy | None = None, clock: Clock = utc_now) -> None:
        self.policy = policy or Policy()
        self.clock = clock

    # -- accounts -------------------------------------------------------------------------------

    def open_system_accounts(self, store: LedgerStore) -> None:
        """Open the program and operator accounts (idempotent)."""
        store.open_accounts(list(SYSTEM_ACCOUNTS), self.clock(), self.policy.shards)

    def open_member(self, store: LedgerStore, member: str) -> list[str]:
        """Open a member's available, pending and held accounts (idempotent)."""
        check_owner(member, "member id")
        codes = [member_account(member, role) for role in MEMBER_ROLES]
        store.open_accounts(codes, self.clock(), self.policy.shards)
        return codes

    def open_members(self, store: LedgerStore, members: Sequence[str]) -> None:
        """:meth:`open_member` for many members, a few hundred per statement."""
        for member in members:
            check_owner(member, "member id")
        for start in range(0, len(members), 300):
            codes = [
                member_account(member, role)
                for member in members[start : start + 300]
                for role in MEMBER_ROLES
            ]
            store.open_accounts(codes, self.clock(), self.policy.shards)

    def open_partner(self, store: LedgerStore, partner: str) -> list[str]:
        """Open a partner's issued, redeemed and settlement accounts (idempotent)."""
        check_owner(partner, "partner code")
        codes = [partner_account(partner, role) for role in PARTNER_ROLES]
        store.open_accounts(codes, self.clock(), self.policy.shards)
        return codes

    # -- many commands in one transaction -------------------------------------------------------

    @contextmanager
    def batch(self, store: SqlLedgerStore) -> Iterator[BufferedStore]:
        """A store on which any number of commands and jobs run with a constant number of writes.

        Every command called with the yielded store decides exactly as it would alone, in call
        order (balances, lots, holds and keys it reads include what earlier calls booked), but
        its rows are written in one statement per table when the block ends (or at
        :meth:`~ledger.repository.BufferedStore.flush`). Use it inside ONE transaction; a
        refusal leaves only its idempotency record, as it does alone. Nothing is written if the
        block raises.
        """
        buffered = BufferedStore(store)
        yield buffered
        buffered.flush(self.policy.shards)

    def book_many(
        self, store: SqlLedgerStore, commands: Sequence[Command]
    ) -> list[Booking | LedgerError]:
        """Book independent keyed commands in order, in the caller's one transaction.

        Returns, per command, its :class:`Booking` (``replayed`` for a key seen before, in the
        database or earlier in the list) or the error that refused it: a business refusal is
        recorded under its key exactly as alone; an invalid request records nothing. Writes one
        statement per table for the whole list, after reading the members, holds and keys it
        names in a few queries (and, on PostgreSQL, locking the members' accounts, sorted).
        """
        for command in commands:
            if command.op not in BULK_COMMANDS:
                raise InvalidRequest(f"book_many cannot run {command.op!r}")
        results: list[Booking | LedgerError] = []
        with self.batch(store) as buffered:
            named = [m for c in commands for m in _members_named(c.params)]
            buffered.prefetch(
                members=named,
                spenders=[
                    m
                    for c in commands
                    if c.op not in ("earn", "post")
                    for m in _members_named(c.params)
                ],
                holds=[c.params["hold_id"] for c in commands if "hold_id" in c.params],
                reversing=[
                    c.params["entry_id"]
                    for c in commands
                    if c.op == "reverse" and isinstance(c.params.get("entry_id"), UUID)
                ],
                keys=[
                    (c.actor.idempotency_scope, c.key) for c in commands if isinstance(c.key, str)
                ],
            )
            for command in commands:
                method = getattr(self, command.op)
                mark = buffered.mark()
                try:
                    results.append(method(buffered, command.actor, command.key, **command.params))
                except BusinessRefusal as refusal:
                    results.append(refusal)
                except LedgerError as error:
                    # Alone, this error rolls its transaction back: nothing of it may remain.
                    buffered.undo_claims(mark)
                    results.append(error)
        return results

    # -- commands -------------------------------------------------------------------------------

    def earn(
        self,
        store: LedgerStore,
        actor: Actor,
        key: str,
        *,
        member: str,
        funding: Mapping[str, int],
        business_time: datetime,
        kind: EntryKind = EntryKind.EARN,
        pending_until: datetime | None = None,
        expires_at: datetime | None = None,
        price_version: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Booking:
        """Credit points to a member, funded by one or more partners (or the program).

        Each funder gets its own posting and lot, so a joint promotion's points stay attributed to
        whoever pays for them. With ``pending_until`` the points wait in ``member:pending``.
        """
        if kind not in (EntryKind.EARN, EntryKind.ENGAGE):
            raise InvalidRequest("earn books EARN or ENGAGE entries")
        check_owner(member, "member id")
        if not funding:
            raise InvalidRequest("earn needs at least one funder")
        for funder, points in funding.items():
            check_owner(funder, "funder")
            parse_amount(points, name=f"points funded by {funder}")
        expires = expires_at or self._default_expiry(business_time)
        request = {
            "op": kind.value,
            "member": member,
            "funding": dict(funding),
            "business_time": business_time,
            "pending_until": pending_until,
            "expires_at": expires_at,
            "price_version": price_version,
            "attributes": dict(attributes or {}),
        }

        def decide(entry_id: UUID, now: datetime) -> Entry:
            target = member_account(member, "pending" if pending_until else "available")
            store.lock_accounts([target])
            postings, lots = [], []
            for funder, points in sorted(funding.items()):
                postings.append(Posting(_source_of(funder), -points))
                lots.append(
                    Lot(
                        uuid4(),
                        member,
                        funder,
                        points,
                        business_time,
                        expires,
                        pending_until,
                        price_version,
                    )
                )
            postings.append(Posting(target, sum(funding.values())))
            return self._entry(
                entry_id,
                kind,
                postings,
                actor,
                key,
                business_time,
                now,
                opened_lots=lots,
                attributes=attributes,
            )

        return self._idempotent(store, actor, key, request, decide)

    def burn(
        self,
        store: LedgerStore,
        actor: Actor,
        key: str,
        *,
        member: str,
        points: int,
        business_time: datetime,
        partner: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Booking:
        """Spend a member's available points at a partner, consuming lots earliest-expiry-first."""
        at = self._acting_partner(actor, partner)
        parse_amount(points, name="points")
        request = {
            "op": "BURN",
            "member": member,
            "points": points,
            "partner": at,
            "business_time": business_time,
            "attributes": dict(attributes or {}),
        }

        def decide(entry_id: UUID, now: datetime) -> Entry:
            available = member_account(member, "available")
            self._require_available(store, available, points)
            moves = _consume_fifo(store.spendable_lots(member), points)
            postings = [
                Posting(available, -points),
                Posting(partner_account(at, "redeemed"), points),
            ]
            return self._entry(
                entry_id,
                EntryKind.BURN,
                postings,
                actor,
                key,
                business_time,
                now,
                lot_moves=moves,
                attributes=attributes,
                partner=at,
            )

        return self._idempotent(store, actor, key, request, decide)

    def hold(
        self,
        store: LedgerStore,
        actor: Actor,
        key: str,
        *,
        member: str,
        points: int,
        business_time: datetime,
        partner: str | None = None,
        ttl: timedelta | None = None,
    ) -> Booking:
        """Reserve available points for a later capture (first phase of a burn at a till)."""
        at = self._acting_partner(actor, partner)
        parse_amount(points, name="points")
        ttl = ttl or self.policy.hold_ttl
        if ttl <= timedelta(0):
            raise InvalidRequest("a hold's time to live must be positive")
        request = {
            "op": "HOLD",
            "member": member,
            "points": points,
            "partner": at,
            "business_time": business_time,
            "ttl_seconds": int(ttl.total_seconds()),
        }

        def decide(entry_id: UUID, now: datetime) -> Entry:
            available = member_account(member, "available")
            self._require_available(store, available, points)
            postings = [
                Posting(available, -points),
                Posting(member_account(member, "held"), points),
            ]
            return self._entry(
                entry_id,
                EntryKind.HOLD,
                postings,
                actor,
                key,
                business_time,
                now,
                partner=at,
                attributes={"hold_expires_at": format_timestamp(now + ttl)},
            )

        return self._idempotent(store, actor, key, request, decide)

    def capture(
        self,
        store: LedgerStore,
        actor: Actor,
        key: str,
        *,
        hold_id: UUID,
        points: int,
        business_time: datetime,
    ) -> Booking:
        """Capture up to the held points; the uncaptured rest returns to available at once."""
        parse_amount(points, name="points")
        request = {
            "op": "CAPTURE",
            "hold_id": hold_id,
            "points": points,
            "business_time": business_time,
        }

        def decide(entry_id: UUID, now: datetime) -> Entry:
            hold = self._open_hold(store, actor, hold_id, now)
            if points > hold.amount:
                raise CaptureExceedsHold(hold_id, hold.amount, points)
            held = member_account(hold.member, "held")
            postings = [
                Posting(held, -hold.amount),
                Posting(partner_account(hold.partner, "redeemed"), points),
            ]
            if hold.amount > points:
                postings.append(
                    Posting(member_account(hold.member, "available"), hold.amount - points)
                )
            moves = _consume_fifo(store.spendable_lots(hold.member), points)
            return self._entry(
                entry_id,
                EntryKind.CAPTURE,
                postings,
                actor,
                key,
                business_time,
                now,
                refers_to=hold_id,
                lot_moves=moves,
                partner=hold.partner,
            )

        return self._idempotent(store, actor, key, request, decide)

    def void(
        self, store: LedgerStore, actor: Actor, key: str, *, hold_id: UUID, business_time: datetime
    ) -> Booking:
        """Release a hold: every held point returns to available."""
        request = {"op": "VOID", "hold_id": hold_id, "business_time": business_time}

        def decide(entry_id: UUID, now: datetime) -> Entry:
            hold = self._open_hold(store, actor, hold_id, now)
            return self._void_entry(entry_id, hold, actor, key, business_time, now, None)

        return self._idempotent(store, actor, key, request, decide)

    def reverse(
        self,
        store: LedgerStore,
        actor: Actor,
        key: str,
        *,
        entry_id: UUID,
        business_time: datetime,
        points: int | None = None,
        reason: str | None = None,
    ) -> Booking:
        """Reverse part or all of an earn (refund) or a burn/capture (cancelled order).

        ``points=None`` reverses everything still reversible. Cumulative reversals never exceed
        the original; an earn reversal takes back only what is left of the lots it opened.
        """
        if points is not None:
            parse_amount(points, name="points")
        request = {
            "op": "REVERSE",
            "entry_id": entry_id,
            "points": points,
            "business_time": business_time,
            "reason": reason,
        }

        def decide(new_id: UUID, now: datetime) -> Entry:
            original = self._own_entry(store, actor, entry_id)
            if original.kind in (EntryKind.EARN, EntryKind.ENGAGE):
                return self._earn_reversal(
                    store, new_id, original, points, actor, key, business_time, now, reason
                )
            if original.kind in (EntryKind.BURN, EntryKind.CAPTURE):
                return self._burn_reversal(
                    store, new_id, original, points, actor, key, business_time, now, reason
                )
            raise NotReversible(entry_id, original.kind.value)

        return self._idempotent(store, actor, key, request, decide)

    def transfer(
        self,
        store: LedgerStore,
        actor: Actor,
        key: str,
        *,
        from_member: str,
        to_member: str,
        points: int,
        business_time: datetime,
    ) -> Booking:
        """Move available points between members; the lots move with their funder and expiry."""
        parse_amount(points, name="points")
        if from_member == to_member:
            raise InvalidRequest("a transfer needs two different members")
        request = {
            "op": "TRANSFER",
            "from": from_member,
            "to": to_member,
            "points": points,
            "business_time": business_time,
        }

        def decide(entry_id: UUID, now: datetime) -> Entry:
            source = member_account(from_member, "available")
            target = member_account(to_member, "available")
            balances = store.lock_accounts([source, target])
            if balances[source] < points:
                raise InsufficientPoints(source, balances[source], points)
            moves = _consume_fifo(store.spendable_lots(from_member), points)
            lots = _copy_lots(store, moves, to_member)
            postings = [Posting(source, -points), Posting(target, points)]
            return self._entry(
                entry_id,
                EntryKind.TRANSFER,
                postings,
                actor,
                key,
                business_time,
                now,
                lot_moves=moves,
                opened_lots=lots,
            )

        return self._idempotent(store, actor, key, request, decide)

    def adjust(
        self,
        store: LedgerStore,
        actor: Actor,
        key: str,
        *,
        member: str,
        points: int,
        reason: str,
        business_time: datetime,
    ) -> Booking:
        """A manual correction of a member's points (signed), with a mandatory human reason."""
        if isinstance(points, bool) or not isinstance(points, int) or points == 0:
            raise InvalidRequest("an adjustment moves a non-zero integer of points")
        parse_amount(abs(points), name="points")
        if not reason or not reason.strip():
            raise InvalidRequest("an adjustment needs a reason")
        request = {
            "op": "ADJUSTMENT",
            "member": member,
            "points": points,
            "reason": reason,
            "business_time": business_time,
        }

        def decide(entry_id: UUID, now: datetime) -> Entry:
            available = member_account(member, "available")
            postings = [Posting(available, points), Posting("program:adjustments", -points)]
            if points > 0:
                store.lock_accounts([available])
                lot = Lot(
                    uuid4(),
                    member,
                    PROGRAM,
                    points,
                    business_time,
                    self._default_expiry(business_time),
                    None,
                )
                return self._entry(
                    entry_id,
                    EntryKind.ADJUSTMENT,
                    postings,
                    actor,
                    key,
                    business_time,
                    now,
                    opened_lots=[lot],
                    reason=reason,
                )
            self._require_available(store, available, -points)
            moves = _consume_fifo(store.spendable_lots(member), -points)
            return self._entry(
                entry_id,
                EntryKind.ADJUSTMENT,
                postings,
                actor,
                key,
                business_time,
                now,
                lot_moves=moves,
                reason=reason,
            )

        return self._idempotent(store, actor, key, request, decide)

    def forfeit(
        self,
        store: LedgerStore,
        actor: Actor,
        key: str,
        *,
        member: str,
        business_time: datetime,
        reason: str,
    ) -> Booking:
        """Move all of a member's available and pending points to ``program:breakage`` at once.

        For ending a membership (erasure): ONE EXPIRE entry consumes every lot that still holds
        points, whatever its expiry, so breakage stays attributed to the partners that funded the
        lots. Held points are not touched: the caller voids or waits out open holds first.
        """
        check_owner(member, "member id")
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidRequest("a forfeiture needs a reason")
        request = {
            "op": "FORFEIT",
            "member": member,
            "business_time": business_time,
            "reason": reason,
        }

        def decide(entry_id: UUID, now: datetime) -> Entry:
            available = member_account(member, "available")
            pending = member_account(member, "pending")
            balances = store.lock_accounts([available, pending])
            total = balances[available] + balances[pending]
            if total == 0:
                raise InvalidRequest(f"member {member} has no points to forfeit")
            moves = [
                *_consume_fifo(store.spendable_lots(member), balances[available]),
                *_consume_fifo(store.pending_lots(member), balances[pending]),
            ]
            postings = [
                *(Posting(a, -balances[a]) for a in (available, pending) if balances[a]),
                Posting("program:breakage", total),
            ]
            return self._entry(
                entry_id,
                EntryKind.EXPIRE,
                postings,
                actor,
                key,
                business_time,
                now,
                lot_moves=moves,
                reason=reason,
            )

        return self._idempotent(store, actor, key, request, decide)

    def post(
        self,
        store: LedgerStore,
        actor: Actor,
        key: str,
        *,
        kind: EntryKind,
        postings: Sequence[Posting],
        business_time: datetime,
        reason: str | None = None,
        refers_to: UUID | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Booking:
        """Book a money entry (SETTLEMENT, PAYMENT) or a points entry that touches no member."""
        if any(p.account.startswith("member:") for p in postings):
            raise InvalidRequest("entries touching members go through their own commands")
        request = {
            "op": "POST",
            "kind": kind.value,
            "postings": [[p.account, p.amount] for p in postings],
            "business_time": business_time,
            "reason": reason,
            "refers_to": refers_to,
            "attributes": dict(attributes or {}),
        }

        def decide(entry_id: UUID, now: datetime) -> Entry:
            store.require_accounts([p.account for p in postings])
            return self._entry(
                entry_id,
                kind,
                postings,
                actor,
                key,
                business_time,
                now,
                reason=reason,
                refers_to=refers_to,
                attributes=attributes,
            )

        return self._idempotent(store, actor, key, request, decide)

    # -- jobs (idempotent by state: each acts only on what is still due) ------------------------

    def release_due(
        self, store: LedgerStore, member: str, now: datetime | None = None
    ) -> Entry | None:
        """Move a member's pending lots whose return window has ended to available."""
        now = now or self.clock()
        pending = member_account(member, "pending")
        store.lock_accounts([pending, member_account(member, "available")])
        due = [lot for lot in store.pending_lots(member) if lot.lot.pending_until <= now]
        if not due:
            return None
        points = sum(lot.remaining for lot in due)
        postings = [Posting(pending, -points), Posting(member_account(member, "available"), points)]
        entry = self._entry(
            uuid4(),
            EntryKind.RELEASE,
            postings,
            SYSTEM,
            None,
            now,
            now,
            released_lots=[lot.lot.id for lot in due],
        )
        store.book(entry, self.policy.shards)
        return entry

    def expire_due(
        self, store: LedgerStore, member: str, now: datetime | None = None
    ) -> Entry | None:
        """Move what is left of a member's expired lots to ``program:breakage``.

        Held points are not available, so at most the available balance expires now; anything
        still held expires on a later run if its hold is voided.
        """
        now = now or self.clock()
        available = member_account(member, "available")
        balance = store.lock_accounts([available])[available]
        expired = [
            s
            for s in store.spendable_lots(member)
            if s.lot.expires_at is not None and s.lot.expires_at <= now
        ]
        moves, left = [], balance
        for state in expired:
            take = min(state.remaining, left)
            if take:
                moves.append(LotMove(state.lot.id, -take))
                left -= take
        if not moves:
            return None
        points = -sum(m.delta for m in moves)
        postings = [Posting(available, -points), Posting("program:breakage", points)]
        entry = self._entry(
            uuid4(), EntryKind.EXPIRE, postings, SYSTEM, None, now, now, lot_moves=moves
        )
        store.book(entry, self.policy.shards)
        return entry

    def void_if_stale(
        self, store: LedgerStore, hold_id: UUID, now: datetime | None = None
    ) -> Entry | None:
        """Void a hold whose time to live has passed; does nothing if it is closed already."""
        now = now or self.clock()
        hold = store.hold(hold_id)
        if hold is None:
            raise UnknownEntry(hold_id)
        # Lock both accounts the void posts to, in the global order (available before held), as
        # hold and capture do; locking only ``held`` and then updating ``available`` deadlocks them.
        store.lock_accounts(
            [member_account(hold.member, "available"), member_account(hold.member, "held")]
        )
        hold = store.hold(hold_id)
        if hold is None or hold.status != "open" or hold.expires_at > now:
            return None
        entry = self._void_entry(uuid4(), hold, SYSTEM, None, now, now, "expired")
        store.book(entry, self.policy.shards)
        return entry

    # -- queries --------------------------------------------------------------------------------

    def balance(self, store: LedgerStore, account: str, as_of: datetime | None = None) -> int:
        """Balance of an account now (O(1), from the cache) or as of a ledger time (postings)."""
        if as_of is None:
            return store.balance(account)
        return store.balance_as_of(account, as_of)

    # -- internals ------------------------------------------------------------------------------

    def _idempotent(
        self,
        store: LedgerStore,
        actor: Actor,
        key: str,
        request: Mapping[str, Any],
        decide: Callable[[UUID, datetime], Entry],
    ) -> Booking:
        if not isinstance(key, str) or not 1 <= len(key) <= 200:
            raise InvalidRequest("an idempotency key of 1–200 characters is required")
        stable = fingerprint(request)
        entry_id = uuid4()
        if not store.claim_key(actor.idempotency_scope, key, stable, entry_id, self.clock()):
            return self._replay(store, actor, key, stable)
        try:
            entry = decide(entry_id, self.clock())
        except BusinessRefusal as refusal:
            store.record_refusal(actor.idempotency_scope, key, refusal)
            raise
        evidence = _evidence.get()
        if evidence:
            entry = replace(entry, attributes={**entry.attributes, **evidence})
        store.book(entry, self.policy.shards)
        return Booking(entry)

    def _replay(self, store: LedgerStore, actor: Actor, key: str, stable: Fingerprint) -> Booking:
        record = store.idempotency_record(actor.idempotency_scope, key)
        if record.request_hash != stable.digest:
            raise IdempotencyConflict(
                key,
                stable.differing(record.request),
                str(record.entry_id) if record.entry_id else None,
            )
        if record.refusal is not None:
            raise BusinessRefusal.from_record(
                record.refusal["code"], record.refusal["message"], record.refusal["fields"]
            )
        return Booking(store.load_entry(record.entry_id), replayed=True)

    def _entry(
        self,
        entry_id: UUID,
        kind: EntryKind,
        postings: Sequence[Posting],
        actor: Actor,
        key: str | None,
        business_time: datetime,
        now: datetime,
        *,
        partner: str | None = None,
        refers_to: UUID | None = None,
        reason: str | None = None,
        opened_lots: Sequence[Lot] = (),
        lot_moves: Sequence[LotMove] = (),
        released_lots: Sequence[UUID] = (),
        attributes: Mapping[str, Any] | None = None,
    ) -> Entry:
        return Entry(
            id=entry_id,
            kind=kind,
            postings=tuple(postings),
            business_time=business_time,
            booked_at=now,
            partner=partner or actor.partner,
            credential=actor.credential,
            idempotency_key=key,
            refers_to=refers_to,
            reason=reason,
            opened_lots=tuple(opened_lots),
            lot_moves=tuple(lot_moves),
            released_lots=tuple(released_lots),
            attributes=dict(attributes or {}),
        )

    def _default_expiry(self, business_time: datetime) -> datetime | None:
        lifetime = self.policy.lot_lifetime
        return business_time + lifetime if lifetime is not None else None

    @staticmethod
    def _acting_partner(actor: Actor, partner: str | None) -> str:
        """The partner at which points are spent: a partner acts only for itself."""
        if actor.partner is not None and partner not in (None, actor.partner):
            raise InvalidRequest("a partner can only act for itself")
        at = partner or actor.partner
        if at is None:
            raise InvalidRequest("a partner is required")
        return check_owner(at, "partner code")

    @staticmethod
    def _require_available(store: LedgerStore, account: str, points: int) -> None:
        balance = store.lock_accounts([account])[account]
        if balance < points:
            raise InsufficientPoints(account, balance, points)

    @staticmethod
    def _own_entry(store: LedgerStore, actor: Actor, entry_id: UUID) -> Entry:
        """An entry the actor may act on; another partner's entry is reported as unknown."""
        entry = store.load_entry(entry_id)
        if actor.partner is not None and entry.partner != actor.partner:
            raise UnknownEntry(entry_id)
        return entry

    def _open_hold(
        self, store: LedgerStore, actor: Actor, hold_id: UUID, now: datetime
    ) -> HoldState:
        hold = store.hold(hold_id)
        if hold is None or (actor.partner is not None and hold.partner != actor.partner):
            raise UnknownEntry(hold_id)
        store.lock_accounts(
            [member_account(hold.member, "available"), member_account(hold.member, "held")]
        )
        hold = store.hold(hold_id)
        assert hold is not None
        if hold.status != "open":
            raise HoldNotOpen(hold_id, hold.status)
        if hold.expires_at <= now:
            raise HoldNotOpen(hold_id, "expired")
        return hold

    def _void_entry(
        self,
        entry_id: UUID,
        hold: HoldState,
        actor: Actor,
        key: str | None,
        business_time: datetime,
        now: datetime,
        reason: str | None,
    ) -> Entry:
        postings = [
            Posting(member_account(hold.member, "held"), -hold.amount),
            Posting(member_account(hold.member, "available"), hold.amount),
        ]
        return self._entry(
            entry_id,
            EntryKind.VOID,
            postings,
            actor,
            key,
            business_time,
            now,
            refers_to=hold.entry_id,
            partner=hold.partner,
            reason=reason,
        )

    def _earn_reversal(
        self,
        store: LedgerStore,
        new_id: UUID,
        original: Entry,
        points: int | None,
        actor: Actor,
        key: str,
        business_time: datetime,
        now: datetime,
        reason: str | None,
    ) -> Entry:
        member = original.opened_lots[0].member
        store.lock_accounts(
            [member_account(member, "available"), member_account(member, "pending")]
        )
        balances = store.balances(
            [member_account(member, "available"), member_account(member, "pending")]
        )
        states = store.lots([lot.id for lot in original.opened_lots])
        # What is left to take back: the unreversed part of the original, limited to what the
        # member still holds of its lots and of the account each lot sits in.
        already = store.reversed_points(original.id)
        left = sum(lot.amount for lot in original.opened_lots) - already
        room = {role: balances[member_account(member, role)] for role in ("available", "pending")}
        takeable = {}
        for state in states:
            role = "pending" if state.pending else "available"
            takeable[state.lot.id] = min(state.remaining, room[role])
            room[role] -= takeable[state.lot.id]
        reversible = min(left, sum(takeable.values()))
        wanted = reversible if points is None else points
        if wanted > reversible or wanted == 0:
            raise ReversalExceedsOriginal(original.id, reversible, wanted)
        moves, postings, rest = [], {}, wanted
        for state in states:
            take = min(takeable[state.lot.id], rest)
            if not take:
                continue
            rest -= take
            moves.append(LotMove(state.lot.id, -take))
            account = member_account(member, "pending" if state.pending else "available")
            postings[account] = postings.get(account, 0) - take
            source = _source_of(state.lot.funder)
            postings[source] = postings.get(source, 0) + take
        return self._entry(
            new_id,
            EntryKind.EARN_REVERSAL,
            [Posting(a, n) for a, n in postings.items()],
            actor,
            key,
            business_time,
            now,
            refers_to=original.id,
            lot_moves=moves,
            reason=reason,
            partner=original.partner,
        )

    def _burn_reversal(
        self,
        store: LedgerStore,
        new_id: UUID,
        original: Entry,
        points: int | None,
        actor: Actor,
        key: str,
        business_time: datetime,
        now: datetime,
        reason: str | None,
    ) -> Entry:
        redeemed = next(p for p in original.postings if p.account.endswith(":redeemed"))
        consumed = {m.lot_id: -m.delta for m in original.lot_moves}
        member = store.lots([next(iter(consumed))])[0].lot.member
        store.lock_accounts([member_account(member, "available")])
        for lot_id, restored in store.restored_points(original.id).items():
            consumed[lot_id] -= restored
        reversible = sum(consumed.values())
        wanted = reversible if points is None else points
        if wanted > reversible or wanted == 0:
            raise ReversalExceedsOriginal(original.id, reversible, wanted)
        # Restore the lot consumed last first: a partial refund returns the longest-lived points.
        moves, rest = [], wanted
        for move in reversed(original.lot_moves):
            give = min(consumed[move.lot_id], rest)
            if give:
                moves.append(LotMove(move.lot_id, give))
                rest -= give
        postings = [
            Posting(redeemed.account, -wanted),
            Posting(member_account(member, "available"), wanted),
        ]
        return self._entry(
            new_id,
            EntryKind.BURN_REVERSAL,
            postings,
            actor,
            key,
            business_time,
            now,
            refers_to=original.id,
            lot_moves=moves,
            reason=reason,
            partner=original.partner,
        )


def _members_named(params: Mapping[str, Any]) -> list[str]:
    """The members a command's arguments name (what :meth:`Ledger.book_many` loads up front)."""
    return [
        params[name]
        for name in ("member", "from_member", "to_member")
        if isinstance(params.get(name), str)
    ]


def _source_of(funder: str) -> str:
    return "program:funded" if funder == PROGRAM else partner_account(funder, "issued")


def _consume_fifo(lots: Sequence[LotState], points: int) -> list[LotMove]:
    """Take ``points`` from lots in the order given (earliest expiry first)."""
    moves, rest = [], points
    for state in lots:
        if rest == 0:
            break
        take = min(state.remaining, rest)
        if take:
            moves.append(LotMove(state.lot.id, -take))
            rest -= take
    if rest:
        # Lots always cover available + held points; a shortfall means the cache is corrupt.
        raise RuntimeError(f"lots short by {rest} points: the lot cache disagrees with balances")
    return moves


def _copy_lots(store: LedgerStore, moves: Sequence[LotMove], member: str) -> list[Lot]:
    """New lots for a transfer's recipient, keeping each source lot's funder and expiry."""
    sources = {state.lot.id: state.lot for state in store.lots([m.lot_id for m in moves])}
    return [
        Lot(
            uuid4(),
            member,
            sources[m.lot_id].funder,
            -m.delta,
            sources[m.lot_id].earned_at,
            sources[m.lot_id].expires_at,
            None,
            sources[m.lot_id].price_version,
        )
        for m in moves
    ]


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """A request in a stable JSON form and its SHA-256, to recognise a retry."""

    text: JSONText
    """The request as JSON, keys sorted, times and ids spelled as text: what is stored."""
    digest: bytes

    @property
    def request(self) -> dict[str, Any]:
        """The stable form as values (to name the fields in which two requests differ)."""
        return dict(json.loads(self.text))

    def differing(self, recorded: Mapping[str, Any]) -> list[str]:
        """The fields, sorted, in which a recorded request differs from this one."""
        mine = self.request
        return sorted(
            name for name in set(recorded) | set(mine) if recorded.get(name) != mine.get(name)
        )

    @property
    def hex(self) -> str:
        return self.digest.hex()


def fingerprint(request: Mapping[str, Any]) -> Fingerprint:
    """The request's stable JSON form (times and ids spelled as text) and its SHA-256.

    The one fingerprint of every idempotent write, the kernel's and the partners' layer's: a
    digest stored under a key must come out the same for the same request, release after
    release, so its spelling (``json`` with sorted keys and its default separators) never
    changes (tests/unit/test_fingerprint.py). The text is hashed and stored as made: a request
    is encoded once per write, which matters on the bulk paths. The encoder is made once:
    ``json.dumps`` with options builds a new one per call.
    """
    text = _REQUEST_ENCODER(request)
    return Fingerprint(JSONText(text), hashlib.sha256(text.encode()).digest())


def request_json_default(value: Any) -> Any:
    """JSON for the times and ids of a request, so a retry fingerprints the same way."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidRequest("times must carry a timezone")
        return format_timestamp(value)
    if isinstance(value, UUID):
        return str(value)
    raise InvalidRequest(f"cannot use a {type(value).__name__} in a request")


_REQUEST_ENCODER = json.JSONEncoder(sort_keys=True, default=request_json_default).encode
