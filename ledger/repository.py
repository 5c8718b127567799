"""Storage of the ledger kernel: the :class:`LedgerStore` protocol and its SQL implementation.

The service decides; the store reads, locks and writes. Only this module and ``tables.py`` speak
SQL. Statements are SQLAlchemy Core, set-based where they can be (one ``executemany`` per table per
entry), because an ORM conversation per posting would cost round trips on the hot path.

Locking (PostgreSQL): member accounts are locked with ``SELECT … FOR UPDATE`` in sorted order
before anything is checked; the balance rows of unconstrained accounts are then updated in sorted
(account, shard) order. Every writer takes its locks in that one global order, so writers never
deadlock. SQLite serialises writers with ``BEGIN IMMEDIATE`` instead.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger import tables as t
from ledger.errors import BusinessRefusal, UnknownAccount, UnknownEntry
from ledger.model import Account, Entry, EntryKind, Lot, LotMove, Posting


@dataclass(frozen=True, slots=True)
class LotState:
    """A lot with its current remainder and whether it is still pending."""

    lot: Lot
    remaining: int
    pending: bool


@dataclass(frozen=True, slots=True)
class HoldState:
    """A two-phase burn's reservation and where it stands."""

    entry_id: UUID
    member: str
    partner: str
    amount: int
    status: str
    """``open``, ``captured`` or ``voided``."""
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    request: dict[str, Any]
    request_hash: bytes
    entry_id: UUID | None
    refusal: dict[str, Any] | None


class LedgerStore(Protocol):
    """What the ledger service needs from storage, inside one transaction."""

    def open_accounts(self, codes: Sequence[str], now: datetime, shards: int) -> None: ...
    def lock_accounts(self, codes: Sequence[str]) -> dict[str, int]: ...
    def balances(self, codes: Sequence[str]) -> dict[str, int]: ...
    def balance(self, code: str) -> int: ...
    def balance_as_of(self, code: str, as_of: datetime) -> int: ...
    def require_accounts(self, codes: Iterable[str]) -> None: ...
    def spendable_lots(self, member: str) -> list[LotState]: ...
    def pending_lots(self, member: str) -> list[LotState]: ...
    def lots(self, ids: Sequence[UUID]) -> list[LotState]: ...
    def reversed_points(self, entry_id: UUID) -> int: ...
    def restored_points(self, entry_id: UUID) -> dict[UUID, int]: ...
    def hold(self, hold_id: UUID) -> HoldState | None: ...
    def claim_key(
        self, credential: str, key: str, fingerprint: Any, entry_id: UUID, now: datetime
    ) -> bool: ...
    def idempotency_record(self, credential: str, key: str) -> IdempotencyRecord: ...
    def record_refusal(self, credential: str, key: str, refusal: BusinessRefusal) -> None: ...
    def load_entry(self, entry_id: UUID) -> Entry: ...
    def load_entries(self, ids: Sequence[UUID]) -> list[Entry]: ...
    def book(self, entry: Entry, shards: int) -> None: ...


class SqlLedgerStore:
    """:class:`LedgerStore` over a SQLAlchemy connection with an open transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._locked: set[str] = set()
        self._postgres = conn.dialect.name == "postgresql"

    # -- accounts and balances ------------------------------------------------------------------

    def open_accounts(self, codes: Sequence[str], now: datetime, shards: int) -> None:
        accounts = [Account.parse(code) for code in codes]
        existing = set(
            self.conn.scalars(sa.select(t.accounts.c.code).where(t.accounts.c.code.in_(codes)))
        )
        new = [a for a in accounts if a.code not in existing]
        if not new:
            return
        self.conn.execute(
            t.accounts.insert(),
            [
                {"code": a.code, "kind": a.kind.value, "owner": a.owner, "opened_at": now}
                for a in new
            ],
        )
        self.conn.execute(
            t.balances.insert(),
            [
                {"account": a.code, "shard": shard, "balance": 0}
                for a in new
                for shard in range(1 if a.never_negative else shards)
            ],
        )

    def lock_accounts(self, codes: Sequence[str]) -> dict[str, int]:
        """Lock never-negative accounts (sorted) and return every named account's balance."""
        wanted = sorted(set(codes))
        to_lock = [c for c in wanted if Account.parse(c).never_negative and c not in self._locked]
        if to_lock:
            query = (
                sa.select(t.balances.c.account)
                .where(t.balances.c.account.in_(to_lock), t.balances.c.shard == 0)
                .order_by(t.balances.c.account)
                .with_for_update()
            )
            found = set(self.conn.scalars(query))
            for code in to_lock:
                if code not in found:
                    raise UnknownAccount(code)
            self._locked.update(found)
        return self.balances(wanted)

    def balances(self, codes: Sequence[str]) -> dict[str, int]:
        query = (
            sa.select(t.balances.c.account, sa.func.sum(t.balances.c.balance))
            .where(t.balances.c.account.in_(list(codes)))
            .group_by(t.balances.c.account)
        )
        found = {account: int(total) for account, total in self.conn.execute(query)}
        for code in codes:
            if code not in found:
                raise UnknownAccount(code)
        return found

    def balance(self, code: str) -> int:
        return self.balances([code])[code]

    def balance_as_of(self, code: str, as_of: datetime) -> int:
        self.require_accounts([code])
        query = (
            sa.select(sa.func.coalesce(sa.func.sum(t.postings.c.amount), 0))
            .select_from(t.postings.join(t.entries, t.entries.c.id == t.postings.c.entry_id))
            .where(t.postings.c.account == code, t.entries.c.booked_at <= as_of)
        )
        return int(self.conn.scalar(query) or 0)

    def require_accounts(self, codes: Iterable[str]) -> None:
        wanted = set(codes) - self._locked
        if not wanted:
            return
        found = set(
            self.conn.scalars(sa.select(t.accounts.c.code).where(t.accounts.c.code.in_(wanted)))
        )
        for code in sorted(wanted - found):
            raise UnknownAccount(code)

    # -- lots and holds -------------------------------------------------------------------------

    def spendable_lots(self, member: str) -> list[LotState]:
        """Released lots with points left, earliest expiry first (never-expiring last)."""
        query = (
            sa.select(t.lots)
            .where(t.lots.c.member == member, t.lots.c.remaining > 0, t.lots.c.pending.is_(False))
            .order_by(
                t.lots.c.expires_at.is_(None), t.lots.c.expires_at, t.lots.c.earned_at, t.lots.c.id
            )
        )
        return [_lot_state(row) for row in self.conn.execute(query)]

    def pending_lots(self, member: str) -> list[LotState]:
        query = (
            sa.select(t.lots)
            .where(t.lots.c.member == member, t.lots.c.remaining > 0, t.lots.c.pending.is_(True))
            .order_by(t.lots.c.pending_until, t.lots.c.id)
        )
        return [_lot_state(row) for row in self.conn.execute(query)]

    def lots(self, ids: Sequence[UUID]) -> list[LotState]:
        rows = {
            row.id: row for row in self.conn.execute(sa.select(t.lots).where(t.lots.c.id.in_(ids)))
        }
        return [_lot_state(rows[i]) for i in ids]

    def reversed_points(self, entry_id: UUID) -> int:
        """Points already taken back from an earn by earlier reversals."""
        query = (
            sa.select(sa.func.coalesce(sa.func.sum(-t.lot_moves.c.delta), 0))
            .select_from(t.lot_moves.join(t.entries, t.entries.c.id == t.lot_moves.c.entry_id))
            .where(t.entries.c.refers_to == entry_id, t.entries.c.kind == EntryKind.EARN_REVERSAL)
        )
        return int(self.conn.scalar(query) or 0)

    def restored_points(self, entry_id: UUID) -> dict[UUID, int]:
        """Points per lot already restored by earlier reversals of a burn or capture."""
        query = (
            sa.select(t.lot_moves.c.lot_id, sa.func.sum(t.lot_moves.c.delta))
            .select_from(t.lot_moves.join(t.entries, t.entries.c.id == t.lot_moves.c.entry_id))
            .where(t.entries.c.refers_to == entry_id, t.entries.c.kind == EntryKind.BURN_REVERSAL)
            .group_by(t.lot_moves.c.lot_id)
        )
        return {lot_id: int(total) for lot_id, total in self.conn.execute(query)}

    def hold(self, hold_id: UUID) -> HoldState | None:
        row = self.conn.execute(sa.select(t.holds).where(t.holds.c.entry_id == hold_id)).first()
        if row is None:
            return None
        return HoldState(
            row.entry_id, row.member, row.partner, row.amount, row.status, row.expires_at
        )

    # -- what the jobs have to do --------------------------------------------------------------

    def members_with_due_releases(self, now: datetime, limit: int) -> list[str]:
        query = (
            sa.select(t.lots.c.member)
            .distinct()
            .where(
                t.lots.c.pending.is_(True), t.lots.c.remaining > 0, t.lots.c.pending_until <= now
            )
            .order_by(t.lots.c.member)
            .limit(limit)
        )
        return list(self.conn.scalars(query))

    def members_with_expired_lots(self, now: datetime, limit: int) -> list[str]:
        query = (
            sa.select(t.lots.c.member)
            .distinct()
            .where(t.lots.c.pending.is_(False), t.lots.c.remaining > 0, t.lots.c.expires_at <= now)
            .order_by(t.lots.c.member)
            .limit(limit)
        )
        return list(self.conn.scalars(query))

    def stale_holds(self, now: datetime, limit: int) -> list[UUID]:
        query = (
            sa.select(t.holds.c.entry_id)
            .where(t.holds.c.status == "open", t.holds.c.expires_at <= now)
            .order_by(t.holds.c.expires_at)
            .limit(limit)
        )
        return list(self.conn.scalars(query))

    # -- idempotency ----------------------------------------------------------------------------

    def claim_key(
        self, credential: str, key: str, fingerprint: Any, entry_id: UUID, now: datetime
    ) -> bool:
        """Claim an idempotency key; False if it is taken (waits for a holder still in flight)."""
        insert = _insert(self.conn)(t.idempotency).values(
            credential=credential,
            key=key,
            request_hash=fingerprint.digest,
            request=fingerprint.request,
            entry_id=entry_id,
            created_at=now,
        )
        # RETURNING, not rowcount: SQLAlchemy 2.1 no longer memoises an INSERT's rowcount, and
        # psycopg reports -1 once the cursor is closed, so every claim would look lost.
        claimed = self.conn.execute(
            insert.on_conflict_do_nothing().returning(t.idempotency.c.key)
        ).first()
        return claimed is not None

    def idempotency_record(self, credential: str, key: str) -> IdempotencyRecord:
        row = self.conn.execute(
            sa.select(t.idempotency).where(
                t.idempotency.c.credential == credential, t.idempotency.c.key == key
            )
        ).one()
        return IdempotencyRecord(row.request, bytes(row.request_hash), row.entry_id, row.refusal)

    def record_refusal(self, credential: str, key: str, refusal: BusinessRefusal) -> None:
        self.conn.execute(
            t.idempotency.update()
            .where(t.idempotency.c.credential == credential, t.idempotency.c.key == key)
            .values(
                entry_id=None,
                refusal={
                    "code": refusal.code,
                    "message": refusal.message,
                    "fields": refusal.fields(),
                },
            )
        )

    # -- the journal ----------------------------------------------------------------------------

    def load_entry(self, entry_id: UUID) -> Entry:
        found = self.load_entries([entry_id])
        if not found:
            raise UnknownEntry(entry_id)
        return found[0]

    def load_entries(self, ids: Sequence[UUID]) -> list[Entry]:
        """Entries by id, in the order asked, in five set-based queries whatever their number."""
        if not ids:
            return []
        rows = {
            r.id: r for r in self.conn.execute(sa.select(t.entries).where(t.entries.c.id.in_(ids)))
        }
        postings = _group(
            self.conn.execute(
                sa.select(t.postings.c.entry_id, t.postings.c.account, t.postings.c.amount)
                .where(t.postings.c.entry_id.in_(ids))
                .order_by(t.postings.c.entry_id, t.postings.c.line)
            ),
            lambda r: Posting(r.account, r.amount),
        )
        opened = _group(
            self.conn.execute(
                sa.select(t.lots, t.lots.c.opened_by.label("entry_id"))
                .where(t.lots.c.opened_by.in_(ids))
                .order_by(t.lots.c.opened_by, t.lots.c.funder, t.lots.c.id)
            ),
            lambda r: _lot_state(r).lot,
        )
        moves = _group(
            self.conn.execute(
                sa.select(t.lot_moves)
                .where(t.lot_moves.c.entry_id.in_(ids))
                .order_by(t.lot_moves.c.entry_id, t.lot_moves.c.line)
            ),
            lambda r: LotMove(r.lot_id, r.delta),
        )
        released = _group(
            self.conn.execute(
                sa.select(t.lot_releases)
                .where(t.lot_releases.c.entry_id.in_(ids))
                .order_by(t.lot_releases.c.entry_id, t.lot_releases.c.lot_id)
            ),
            lambda r: r.lot_id,
        )
        return [
            Entry(
                id=row.id,
                kind=EntryKind(row.kind),
                postings=tuple(postings.get(row.id, ())),
                business_time=row.business_time,
                booked_at=row.booked_at,
                partner=row.partner,
                credential=row.credential,
                idempotency_key=row.idempotency_key,
                refers_to=row.refers_to,
                reason=row.reason,
                opened_lots=tuple(opened.get(row.id, ())),
                lot_moves=tuple(moves.get(row.id, ())),
                released_lots=tuple(released.get(row.id, ())),
                attributes=row.attributes,
            )
            for row in (rows[i] for i in ids if i in rows)
        ]

    def book(self, entry: Entry, shards: int) -> None:
        """Write an entry and every cache it changes; its queue row goes last."""
        self.require_accounts(p.account for p in entry.postings)
        self.conn.execute(
            t.entries.insert().values(
                id=entry.id,
                kind=entry.kind.value,
                business_time=entry.business_time,
                booked_at=entry.booked_at,
                partner=entry.partner,
                credential=entry.credential,
                idempotency_key=entry.idempotency_key,
                refers_to=entry.refers_to,
                reason=entry.reason,
                attributes=dict(entry.attributes),
            )
        )
        self.conn.execute(
            t.postings.insert(),
            [
                {"entry_id": entry.id, "line": line, "account": p.account, "amount": p.amount}
                for line, p in enumerate(entry.postings)
            ],
        )
        self._book_lots(entry)
        self._book_hold(entry)
        self._apply_balances(entry.postings, shards)
        self.conn.execute(t.journal_queue.insert().values(entry_id=entry.id))

    def _book_lots(self, entry: Entry) -> None:
        if entry.opened_lots:
            self.conn.execute(
                t.lots.insert(),
                [
                    {
                        "id": lot.id,
                        "opened_by": entry.id,
                        "member": lot.member,
                        "funder": lot.funder,
                        "amount": lot.amount,
                        "earned_at": lot.earned_at,
                        "expires_at": lot.expires_at,
                        "price_version": lot.price_version,
                        "pending_until": lot.pending_until,
                        "remaining": lot.amount,
                        "pending": lot.pending_until is not None,
                    }
                    for lot in entry.opened_lots
                ],
            )
        if entry.lot_moves:
            self.conn.execute(
                t.lot_moves.insert(),
                [
                    {"entry_id": entry.id, "lot_id": m.lot_id, "line": line, "delta": m.delta}
                    for line, m in enumerate(entry.lot_moves)
                ],
            )
            moves = sorted(entry.lot_moves, key=lambda m: m.lot_id)
            self.conn.execute(
                t.lots.update()
                .where(t.lots.c.id == sa.bindparam("lot"))
                .values(remaining=t.lots.c.remaining + sa.bindparam("delta")),
                [{"lot": m.lot_id, "delta": m.delta} for m in moves],
            )
        if entry.released_lots:
            self.conn.execute(
                t.lot_releases.insert(),
                [{"entry_id": entry.id, "lot_id": lot_id} for lot_id in entry.released_lots],
            )
            self.conn.execute(
                t.lots.update().where(t.lots.c.id.in_(entry.released_lots)).values(pending=False)
            )

    def _book_hold(self, entry: Entry) -> None:
        if entry.kind is EntryKind.HOLD:
            held = next(p for p in entry.postings if p.account.endswith(":held"))
            self.conn.execute(
                t.holds.insert().values(
                    entry_id=entry.id,
                    member=Account.parse(held.account).owner,
                    partner=entry.partner,
                    amount=held.amount,
                    status="open",
                    expires_at=datetime.fromisoformat(str(entry.attributes["hold_expires_at"])),
                )
            )
        elif entry.kind in (EntryKind.CAPTURE, EntryKind.VOID):
            status = "captured" if entry.kind is EntryKind.CAPTURE else "voided"
            self.conn.execute(
                t.holds.update()
                .where(t.holds.c.entry_id == entry.refers_to)
                .values(status=status, closed_by=entry.id)
            )

    def _apply_balances(self, postings: Sequence[Posting], shards: int) -> None:
        net: dict[str, int] = {}
        for posting in postings:
            net[posting.account] = net.get(posting.account, 0) + posting.amount
        updates = sorted(
            (code, 0 if Account.parse(code).never_negative else random.randrange(shards), amount)  # noqa: S311
            for code, amount in net.items()
            if amount
        )
        if updates:
            # An upsert, not an UPDATE: a shard row that does not exist yet (the shard count was
            # raised after the account was opened) is created instead of silently missed.
            insert = _insert(self.conn)(t.balances)
            self.conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[t.balances.c.account, t.balances.c.shard],
                    set_={"balance": t.balances.c.balance + insert.excluded.balance},
                ),
                [{"account": c, "shard": s, "balance": a} for c, s, a in updates],
            )


def _group(rows: Iterable[Any], build: Callable[[Any], Any]) -> dict[UUID, list[Any]]:
    grouped: dict[UUID, list[Any]] = {}
    for row in rows:
        grouped.setdefault(row.entry_id, []).append(build(row))
    return grouped


def _lot_state(row: Any) -> LotState:
    lot = Lot(
        id=row.id,
        member=row.member,
        funder=row.funder,
        amount=row.amount,
        earned_at=row.earned_at,
        expires_at=row.expires_at,
        pending_until=row.pending_until,
        price_version=row.price_version,
    )
    return LotState(lot, row.remaining, row.pending)


def _insert(conn: Connection) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert
