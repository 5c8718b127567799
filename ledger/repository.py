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

import functools
import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, overload
from uuid import UUID

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from ledger import tables as t
from ledger.canonical import format_timestamp, format_uuid
from ledger.db import JSONText, execute_many, insert_many
from ledger.errors import BusinessRefusal, LedgerError, UnknownAccount, UnknownEntry
from ledger.model import Account, Entry, EntryKind, Lot, LotMove, Posting

#: ``0`` written into the SQL, as the lots' partial indexes spell it (see ledger.tables).
_ZERO = sa.literal_column("0")


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


@dataclass(frozen=True, slots=True)
class EntryRows:
    """An entry as stored: its ``entries`` row and its postings, opened lots, moves, releases."""

    entry: Any
    postings: list[Any]
    lots: list[Any]
    moves: list[Any]
    releases: list[UUID]


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
        lo = t.lots.c
        return _lot_states(
            self.conn,
            _LOTS.where(lo.member == member, lo.remaining > 0, lo.pending.is_(False)).order_by(
                lo.expires_at.is_(None), lo.expires_at, lo.earned_at, lo.id
            ),
        )

    def pending_lots(self, member: str) -> list[LotState]:
        lo = t.lots.c
        return _lot_states(
            self.conn,
            _LOTS.where(lo.member == member, lo.remaining > 0, lo.pending.is_(True)).order_by(
                lo.pending_until, lo.id
            ),
        )

    def lots(self, ids: Sequence[UUID]) -> list[LotState]:
        found = {s.lot.id: s for s in _lot_states(self.conn, _LOTS.where(t.lots.c.id.in_(ids)))}
        return [found[i] for i in ids]

    def reversed_points(self, entry_id: UUID) -> int:
        """Points already taken back from an earn by earlier reversals."""
        return self.reversed_points_of([entry_id]).get(entry_id, 0)

    def reversed_points_of(self, entry_ids: Sequence[UUID]) -> dict[UUID, int]:
        """:meth:`reversed_points` of each earn that has been reversed (the others are absent)."""
        e = t.entries.c
        query = (
            sa.select(e.refers_to, sa.func.sum(-t.lot_moves.c.delta))
            .select_from(t.lot_moves.join(t.entries, e.id == t.lot_moves.c.entry_id))
            .where(e.refers_to.in_(entry_ids), e.kind == EntryKind.EARN_REVERSAL)
            .group_by(e.refers_to)
        )
        return {entry_id: int(total) for entry_id, total in self.conn.execute(query)}

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
        # The terms of the partial index ix_lots_due_release, literally (a bound 0 would hide
        # it from SQLite), and no DISTINCT/ORDER BY in SQL: SQLite would rather walk the whole
        # table in member order than sort the few due lots.
        lots = t.lots.c
        query = sa.select(lots.member).where(
            lots.pending.is_(True), lots.remaining > _ZERO, lots.pending_until <= now
        )
        return sorted(set(self.conn.scalars(query)))[:limit]

    def members_with_expired_lots(self, now: datetime, limit: int) -> list[str]:
        lots = t.lots.c  # the terms of ix_lots_due_expiry, as above
        query = sa.select(lots.member).where(
            lots.pending.is_(False), lots.remaining > _ZERO, lots.expires_at <= now
        )
        return sorted(set(self.conn.scalars(query)))[:limit]

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
        insert = _insert(self.conn.dialect.name)(t.idempotency).values(
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
            .values(entry_id=None, refusal=refusal.to_record())
        )

    # -- the journal ----------------------------------------------------------------------------

    def load_entry(self, entry_id: UUID) -> Entry:
        found = self.load_entries([entry_id])
        if not found:
            raise UnknownEntry(entry_id)
        return found[0]

    def load_entries(self, ids: Sequence[UUID]) -> list[Entry]:
        """Entries by id, in the order asked, in five set-based queries whatever their number."""
        return [
            Entry(
                id=stored.entry.id,
                kind=EntryKind(stored.entry.kind),
                postings=tuple(Posting(r.account, r.amount) for r in stored.postings),
                business_time=stored.entry.business_time,
                booked_at=stored.entry.booked_at,
                partner=stored.entry.partner,
                credential=stored.entry.credential,
                idempotency_key=stored.entry.idempotency_key,
                refers_to=stored.entry.refers_to,
                reason=stored.entry.reason,
                opened_lots=tuple(_lot_state(r).lot for r in stored.lots),
                lot_moves=tuple(LotMove(r.lot_id, r.delta) for r in stored.moves),
                released_lots=tuple(stored.releases),
                attributes=stored.entry.attributes,
            )
            for stored in self.load_entry_rows(ids)
        ]

    def load_entry_rows(self, ids: Sequence[UUID]) -> list[EntryRows]:
        """The stored rows of entries, in the order asked (what :meth:`load_entries` reads).

        For readers that turn entries into something else (the integrator's leaf records) and do
        not need :class:`Entry` objects: the same five set-based queries, no validation pass.
        """
        if not ids:
            return []
        ids = list(ids)
        rows = {
            r.id: r for r in self.conn.execute(sa.select(t.entries).where(t.entries.c.id.in_(ids)))
        }
        grouped: dict[UUID, EntryRows] = {
            i: EntryRows(rows[i], [], [], [], []) for i in ids if i in rows
        }
        p = t.postings.c
        query = (
            sa.select(p.entry_id, p.account, p.amount)
            .where(p.entry_id.in_(ids))
            .order_by(p.entry_id, p.line)
        )
        for r in self.conn.execute(query):
            grouped[r.entry_id].postings.append(r)
        query = (
            sa.select(t.lots)
            .where(t.lots.c.opened_by.in_(ids))
            .order_by(t.lots.c.opened_by, t.lots.c.funder, t.lots.c.id)
        )
        for r in self.conn.execute(query):
            grouped[r.opened_by].lots.append(r)
        query = (
            sa.select(t.lot_moves)
            .where(t.lot_moves.c.entry_id.in_(ids))
            .order_by(t.lot_moves.c.entry_id, t.lot_moves.c.line)
        )
        for r in self.conn.execute(query):
            grouped[r.entry_id].moves.append(r)
        query = (
            sa.select(t.lot_releases)
            .where(t.lot_releases.c.entry_id.in_(ids))
            .order_by(t.lot_releases.c.entry_id, t.lot_releases.c.lot_id)
        )
        for r in self.conn.execute(query):
            grouped[r.entry_id].releases.append(r.lot_id)
        return [grouped[i] for i in ids if i in grouped]

    @overload
    def load_entry_records(
        self, ids: Sequence[UUID], *, strict: Literal[True] = ...
    ) -> list[tuple[UUID, dict[str, Any]]]: ...

    @overload
    def load_entry_records(
        self, ids: Sequence[UUID], *, strict: bool
    ) -> list[tuple[UUID, dict[str, Any] | None]]: ...

    def load_entry_records(
        self, ids: Sequence[UUID], *, strict: bool = True
    ) -> list[tuple[UUID, dict[str, Any] | None]]:
        """The leaf records (``ledger.journal.entry_record``) of stored entries, in the order asked.

        The integrator's read path (and the live verifier's), where reading the rows with
        :meth:`load_entry_rows` and then spelling the record cost more than building the leaf:
        the same five set-based queries, but selecting only what the record holds, with the ids
        bound once (:func:`_among`), and reading ids, times and attributes as the driver gives
        them, without the column types' result processing, to spell them here:

        - an id as the canonical lowercase hyphenated text :func:`format_uuid` writes, without
          building a :class:`UUID` (SQLite stores 32 lowercase hex digits, PostgreSQL's
          ``uuid::text`` is already canonical; anything else is parsed as the ``Uuid`` type
          would, then spelled);
        - a time through the column type's own result processor and :func:`format_timestamp`,
          once per distinct stored value (a batch's entries share a few instants);
        - the attributes as the driver parsed them (PostgreSQL) or, where it gives the stored
          text (SQLite), parsed by orjson rather than the ``JSON`` type's ``json.loads``, four
          times slower: the two agree on every text whose value is inside the hashed-data
          profile (orjson refuses only NaN, integers beyond 64 bits and lone surrogates, none
          of which a leaf can hold).

        The order of every list is :meth:`load_entry_rows`' (postings and moves by line, lots by
        (funder, id), releases by lot id), so a record equals ``entry_record`` of the entry
        :meth:`load_entries` reads, key for key (tests/integration/test_entry_records_fast.py
        holds them together). Entries not stored are left out. An
        entry whose rows cannot be spelled raises, or with ``strict=False`` maps to ``None`` (the
        verifier reports it as altered, whatever the other entries say).
        """
        if not ids:
            return []
        ids = list(ids)
        dialect = self.conn.dialect
        text = _id_as_text(dialect)
        key: Callable[[UUID], str] = str if dialect.name == "postgresql" else _hex
        spell_time = _time_speller(dialect)
        attributes = t.entries.c.attributes
        parsed = attributes.type.dialect_impl(dialect).result_processor(dialect, None) is None
        load_json: Callable[[Any], Any] = dict if parsed else orjson.loads

        among = _among(dialect, ids)
        e = t.entries.c
        entries = {
            row[0]: row
            for row in _plain_rows(
                self.conn,
                sa.select(
                    text(e.id),
                    e.kind,
                    sa.type_coerce(e.business_time, sa.String),
                    sa.type_coerce(e.booked_at, sa.String),
                    e.partner,
                    e.credential,
                    e.idempotency_key,
                    text(e.refers_to),
                    e.reason,
                    sa.type_coerce(attributes, sa.String),
                ).where(among(e.id)),
            )
        }

        def grouped(query: sa.Select) -> dict[str, list[Any]]:
            """The query's rows by the entry (as text) their first column names, in order."""
            found: dict[str, list[Any]] = {k: [] for k in entries}
            for row in _plain_rows(self.conn, query):
                if row[0] in found:
                    found[row[0]].append(row)
            return found

        p, lo, m, r = t.postings.c, t.lots.c, t.lot_moves.c, t.lot_releases.c
        postings = grouped(
            sa.select(text(p.entry_id), p.account, p.amount)
            .where(among(p.entry_id))
            .order_by(p.entry_id, p.line)
        )
        lots = grouped(
            sa.select(
                text(lo.opened_by),
                text(lo.id),
                lo.member,
                lo.funder,
                lo.amount,
                sa.type_coerce(lo.earned_at, sa.String),
                sa.type_coerce(lo.expires_at, sa.String),
                sa.type_coerce(lo.pending_until, sa.String),
                lo.price_version,
            )
            .where(among(lo.opened_by))
            .order_by(lo.opened_by, lo.funder, lo.id)
        )
        moves = grouped(
            sa.select(text(m.entry_id), text(m.lot_id), m.delta)
            .where(among(m.entry_id))
            .order_by(m.entry_id, m.line)
        )
        releases = grouped(
            sa.select(text(r.entry_id), text(r.lot_id))
            .where(among(r.entry_id))
            .order_by(r.entry_id, r.lot_id)
        )

        def record(row: Any) -> dict[str, Any]:
            k = row[0]
            return {
                "id": _uuid_text(k),
                "kind": row[1],
                "business_time": spell_time(row[2]),
                "booked_at": spell_time(row[3]),
                "partner": row[4],
                "credential": row[5],
                "idempotency_key": row[6],
                "refers_to": None if row[7] is None else _uuid_text(row[7]),
                "reason": row[8],
                "postings": [{"account": a, "amount": n} for _, a, n in postings[k]],
                "lots_opened": [
                    {
                        "id": _uuid_text(lot[1]),
                        "member": lot[2],
                        "funder": lot[3],
                        "amount": lot[4],
                        "earned_at": spell_time(lot[5]),
                        "expires_at": None if lot[6] is None else spell_time(lot[6]),
                        "pending_until": None if lot[7] is None else spell_time(lot[7]),
                        "price_version": lot[8],
                    }
                    for lot in lots[k]
                ],
                "lot_moves": [{"lot": _uuid_text(lot), "delta": d} for _, lot, d in moves[k]],
                "lots_released": [_uuid_text(lot) for _, lot in releases[k]],
                "attributes": dict(load_json(row[9])),
            }

        found: list[tuple[UUID, dict[str, Any] | None]] = []
        for entry_id in ids:
            row = entries.get(key(entry_id))
            if row is None:
                continue
            try:
                found.append((entry_id, record(row)))
            except (LedgerError, ValueError, TypeError, AttributeError):
                if strict:
                    raise
                found.append((entry_id, None))
        return found

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
        self._apply_net(net, shards)

    def _apply_net(self, net: dict[str, int], shards: int) -> None:
        """Add each account's net change to one of its balance rows (one upsert for all)."""
        updates = sorted(
            (code, 0 if Account.parse(code).never_negative else random.randrange(shards), amount)  # noqa: S311
            for code, amount in net.items()
            if amount
        )
        if updates:
            execute_many(
                self.conn,
                _add_to_balances(self.conn.dialect.name),
                [{"account": c, "shard": s, "balance": a} for c, s, a in updates],
            )


#: What SQLAlchemy's ``Uuid`` type writes on SQLite (``UUID.hex``) and PostgreSQL's ``uuid::text``.
_HEX32 = re.compile(r"[0-9a-f]{32}").fullmatch
_CANONICAL_UUID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
).fullmatch


def _hex(value: UUID) -> str:
    return value.hex


def _id_as_text(dialect: sa.Dialect) -> Callable[[Any], Any]:
    """Select a ``Uuid`` column as text: PostgreSQL casts (its driver would build UUIDs); on
    SQLite the stored text is read as it is (no result processing)."""
    if dialect.name == "postgresql":
        return lambda column: sa.cast(column, sa.Text)
    return lambda column: sa.type_coerce(column, sa.String)


def _among(dialect: sa.Dialect, ids: list[UUID]) -> Callable[[Any], Any]:
    """``column IN ids`` with the ids bound once as ONE parameter, not one per id.

    An ``IN`` list of a thousand ids is expanded, type-processed and compiled again for each of
    the reader's five queries, which cost more than the rows it finds. SQLite reads the list
    from a JSON array (``json_each``; the planner still searches each column's index), PostgreSQL
    from a ``uuid[]`` (``= ANY``); any other backend gets the plain ``IN``.
    """
    if dialect.name == "sqlite":
        listed = '["' + '","'.join([i.hex for i in ids]) + '"]'
        values = sa.func.json_each(sa.literal(listed, sa.String)).table_valued("value")
        return lambda column: sa.type_coerce(column, sa.String).in_(sa.select(values.c.value))
    if dialect.name == "postgresql":
        array = sa.literal(ids, postgresql.ARRAY(sa.Uuid()))
        return lambda column: column == sa.any_(array)
    return lambda column: column.in_(ids)


def _uuid_text(raw: str) -> str:
    """``format_uuid`` of a stored id read as text, without a :class:`UUID` in the common case.

    Anything but the two spellings the backends write is parsed as SQLAlchemy's ``Uuid`` result
    processor parses it (``UUID(text)``), so such a row is read as :meth:`load_entry_rows` reads it.
    """
    if _HEX32(raw):
        return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
    if _CANONICAL_UUID(raw):
        return raw
    return format_uuid(UUID(raw))


def _stored_times(dialect: sa.Dialect) -> Callable[[Any], datetime | None]:
    """Read a time column selected without result processing (``type_coerce`` to text) through
    :class:`UTCDateTime`'s own processor on this dialect (SQLite text → aware datetime;
    PostgreSQL's datetime → UTC), once per distinct stored value: rows read together share a few
    instants, and equal stored values are the same instant."""
    process = t.entries.c.booked_at.type.dialect_impl(dialect).result_processor(dialect, None)
    memo: dict[Any, datetime] = {}

    def read(raw: Any) -> datetime | None:
        if raw is None:
            return None
        known = memo.get(raw)
        if known is None:
            known = memo[raw] = process(raw) if process is not None else raw
        return known

    return read


def _time_speller(dialect: sa.Dialect) -> Callable[[Any], str]:
    """Spell a stored time (read as by :func:`_stored_times`) with :func:`format_timestamp`,
    once per distinct stored value."""
    read = _stored_times(dialect)
    memo: dict[Any, str] = {}

    def spell(raw: Any) -> str:
        text = memo.get(raw)
        if text is None:
            text = memo[raw] = format_timestamp(read(raw))  # type: ignore[arg-type]
        return text

    return spell


def _plain_rows(conn: Connection, query: sa.Select) -> list[tuple[Any, ...]]:
    """The query's rows as the driver returns them, for a query whose every column needs no
    result processing (text, integers): reading the rows costs less than building SQLAlchemy's
    row objects from them, and unpacking those again."""
    return list(conn.execute(query).cursor.fetchall())


#: What a lot's working state needs of its row, the times read as stored (see _lot_states).
_LOTS = sa.select(
    t.lots.c.id,
    t.lots.c.member,
    t.lots.c.funder,
    t.lots.c.amount,
    sa.type_coerce(t.lots.c.earned_at, sa.String),
    sa.type_coerce(t.lots.c.expires_at, sa.String),
    sa.type_coerce(t.lots.c.pending_until, sa.String),
    t.lots.c.price_version,
    t.lots.c.remaining,
    t.lots.c.pending,
)


def _lot_states(conn: Connection, query: sa.Select) -> list[LotState]:
    """The lots a ``_LOTS`` query finds. A member's lots share a few instants (a day's earns,
    their expiry), so each stored time is converted once per distinct value, not once per lot
    (:func:`_stored_times`): reading a batch's lots costs half as much."""
    moment = _stored_times(conn.dialect)
    return [
        LotState(
            Lot(lot_id, member, funder, amount, moment(earned), moment(expires), moment(until), pv),
            remaining,
            pending,
        )
        for lot_id, member, funder, amount, earned, expires, until, pv, remaining, pending in (
            conn.execute(query)
        )
    ]


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


def _insert(dialect: str) -> Any:
    """The dialect's INSERT construct (which knows ``ON CONFLICT``)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


# -- set-based booking ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Claim:
    """An idempotency key claimed inside a :class:`BufferedStore`, written at flush."""

    credential: str
    key: str
    request_hash: bytes
    request: JSONText
    entry_id: UUID | None
    refusal: dict[str, Any] | None
    created_at: datetime


class BufferedStore:
    """A :class:`LedgerStore` that books many commands with a constant number of statements.

    It reads through to a :class:`SqlLedgerStore` once per account, member, hold or key (or in one
    query for all of them with :meth:`prefetch`), answers every later read from memory, and keeps
    every write in memory until :meth:`flush` writes them all in one ``executemany`` per table:
    entries, postings, lots (at their final remainder), lot moves and releases, holds (at their
    final status), idempotency records (claims and refusals), summed balance deltas (one upsert
    per account) and queue rows in booking order. The commands run unchanged against it, so each
    one decides exactly as it would alone, in the order the caller runs them.

    It belongs to the caller's one transaction, like the store it wraps; nothing else may write
    the same accounts, lots, holds or keys through another store until it is flushed. On
    PostgreSQL the accounts it reads are locked ``FOR UPDATE`` as the wrapped store locks them (all
    prefetched members at once, in sorted order; an account first read later is locked then, so
    prefetch every member a batch touches to keep the global lock order); a key claimed
    concurrently by another
    transaction makes the flush fail with an integrity error and the whole batch roll back, and a
    retry then replays it.
    """

    def __init__(self, store: SqlLedgerStore) -> None:
        self.inner = store
        self.conn = store.conn
        self._balances: dict[str, int] = {}
        self._known: set[str] = set()
        self._member_lots: dict[str, dict[UUID, list[Any]]] = {}
        """member → lot id → [Lot, remaining, pending] (every lot of the member with points)."""
        self._lot_index: dict[UUID, list[Any]] = {}
        self._orphans: dict[str, dict[UUID, list[Any]]] = {}
        self._holds: dict[UUID, HoldState | None] = {}
        self._keys: dict[tuple[str, str], _Claim | None] = {}
        """Keys looked up: a claim of this batch, or ``None`` if recorded before the batch."""
        self._absent: set[tuple[str, str]] = set()
        """Keys looked up and not recorded before the batch."""
        self._entries: list[Entry] = []
        self._entry_index: dict[UUID, Entry] = {}
        self._stored: dict[UUID, Entry] = {}
        """Entries read from the journal (immutable, so a read stays true): prefetched ones."""
        self._reversed: dict[UUID, int] = {}
        """Stored earn → points its stored reversals took back (until the next flush)."""
        self._new_lots: dict[UUID, list[Any]] = {}
        self._new_holds: dict[UUID, dict[str, Any]] = {}
        self._closed_holds: dict[UUID, tuple[str, UUID]] = {}
        self._lot_deltas: dict[UUID, int] = {}
        self._released: set[UUID] = set()
        self._net: dict[str, int] = {}

    # -- reading through, once ------------------------------------------------------------------

    def prefetch(
        self,
        *,
        members: Iterable[str] = (),
        keys: Iterable[tuple[str, str]] = (),
        holds: Iterable[UUID] = (),
        spenders: Iterable[str] = (),
        entries: Iterable[UUID] = (),
        reversing: Iterable[UUID] = (),
    ) -> None:
        """Load (and lock) what a batch will touch in a few set-based queries.

        ``members``: their accounts' balances; ``spenders``: also every lot they hold (what a
        debit consumes); ``holds``: the holds, their members' accounts and lots; ``entries``:
        journal entries the batch refers to, read once for all; ``reversing``: entries the batch
        reverses, read with what reversing an earn reads — its lots, its member's accounts
        (locked as a reversal alone locks them), what was reversed before.
        """
        reversed_ids = list(dict.fromkeys(reversing))
        asked = list(dict.fromkeys([*entries, *reversed_ids]))
        known = self._entry_index.keys() | self._stored.keys()
        wanted = [i for i in asked if i not in known]
        for start in range(0, len(wanted), 900):
            for entry in self.inner.load_entries(wanted[start : start + 900]):
                self._stored[entry.id] = entry
        earns = [
            self._stored[i]
            for i in reversed_ids
            if i in self._stored and i not in self._entry_index and self._stored[i].opened_lots
        ]
        members = [*members, *(lot.member for e in earns for lot in e.opened_lots)]
        hold_ids = [h for h in dict.fromkeys(holds) if h not in self._holds]
        if hold_ids:
            rows = self.conn.execute(sa.select(t.holds).where(t.holds.c.entry_id.in_(hold_ids)))
            found = {row.entry_id: row for row in rows}
            for hold_id in hold_ids:
                row = found.get(hold_id)
                self._holds[hold_id] = None if row is None else _hold_state(row)
            spenders = [*spenders, *(row.member for row in found.values())]
        spenders = sorted({m for m in spenders if m not in self._member_lots})
        self._load_accounts(
            [
                f"member:{m}:{role}"
                for m in {*members, *spenders}
                for role in ("available", "held", "pending")
            ]
        )
        for start in range(0, len(spenders), 900):
            chunk = spenders[start : start + 900]
            for member in chunk:
                self._member_lots[member] = self._orphans.pop(member, {})
            query = _LOTS.where(t.lots.c.member.in_(chunk), t.lots.c.remaining > 0)
            for state in _lot_states(self.conn, query):
                self._track_lot(state.lot, state.remaining, state.pending)
        # The earns' lots, spent ones included (a spender's were read above if they hold points),
        # and what earlier reversals took back: read once their members' accounts are locked.
        lot_ids = [lot.id for e in earns for lot in e.opened_lots]
        for start in range(0, len(lot_ids), 900):
            self.lots(lot_ids[start : start + 900])
        unread = [e.id for e in earns if e.id not in self._reversed]
        for start in range(0, len(unread), 900):
            chunk = unread[start : start + 900]
            self._reversed.update(dict.fromkeys(chunk, 0))
            self._reversed.update(self.inner.reversed_points_of(chunk))
        pairs = [k for k in dict.fromkeys(keys) if k not in self._keys and k not in self._absent]
        if pairs:
            i = t.idempotency.c
            for start in range(0, len(pairs), 500):
                chunk = pairs[start : start + 500]
                by_credential: dict[str, list[str]] = {}
                for credential, key in chunk:
                    by_credential.setdefault(credential, []).append(key)
                # One (credential, key IN …) select per credential, not a row-value IN list:
                # SQLite searches the (credential, key) key for each, but scans for a row list.
                query = sa.union_all(
                    *(
                        sa.select(i.credential, i.key).where(
                            i.credential == credential, i.key.in_(keys)
                        )
                        for credential, keys in by_credential.items()
                    )
                )
                found_keys = {(row[0], row[1]) for row in self.conn.execute(query)}
                for pair in chunk:
                    if pair in found_keys:
                        self._keys[pair] = None
                    else:
                        self._absent.add(pair)

    def _load_accounts(self, codes: Sequence[str]) -> None:
        balances = self._balances
        wanted = sorted({c for c in codes if c not in balances})
        if not wanted:
            return
        for start in range(0, len(wanted), 900):
            chunk = wanted[start : start + 900]
            locked = [c for c in chunk if Account.parse(c).never_negative]
            if locked and self.inner._postgres:
                self.inner.lock_accounts(locked)
            query = (
                sa.select(t.balances.c.account, sa.func.sum(t.balances.c.balance))
                .where(t.balances.c.account.in_(chunk))
                .group_by(t.balances.c.account)
            )
            for account, total in self.conn.execute(query):
                self._balances[account] = int(total)
                self._known.add(account)
        for code in wanted:
            if code not in self._balances:
                raise UnknownAccount(code)

    def _track_lot(self, lot: Lot, remaining: int, pending: bool) -> list[Any]:
        """The working state of a lot; the first state seen wins (later reads are stale)."""
        state = self._lot_index.get(lot.id)
        if state is None:
            state = self._lot_index[lot.id] = [lot, remaining, pending]
        # A lot read by id before its member was loaded waits to join the member's working set.
        group = self._member_lots if lot.member in self._member_lots else self._orphans
        group.setdefault(lot.member, {})[lot.id] = state
        return state

    def _lots_of(self, member: str) -> dict[UUID, list[Any]]:
        if member not in self._member_lots:
            self.prefetch(spenders=[member])
        return self._member_lots[member]

    # -- LedgerStore ----------------------------------------------------------------------------

    def open_accounts(self, codes: Sequence[str], now: datetime, shards: int) -> None:
        self.inner.open_accounts(codes, now, shards)

    def lock_accounts(self, codes: Sequence[str]) -> dict[str, int]:
        return self.balances(sorted(set(codes)))

    def balances(self, codes: Sequence[str]) -> dict[str, int]:
        missing = [c for c in codes if c not in self._balances]
        if missing:
            self._load_accounts(missing)
        return {code: self._balances[code] for code in codes}

    def balance(self, code: str) -> int:
        return self.balances([code])[code]

    def balance_as_of(self, code: str, as_of: datetime) -> int:
        booked = sum(
            p.amount
            for entry in self._entries
            if entry.booked_at <= as_of
            for p in entry.postings
            if p.account == code
        )
        return self.inner.balance_as_of(code, as_of) + booked

    def require_accounts(self, codes: Iterable[str]) -> None:
        missing = set(codes) - self._known
        if missing:
            self.inner.require_accounts(missing)
            self._known.update(missing)

    def spendable_lots(self, member: str) -> list[LotState]:
        states = [s for s in self._lots_of(member).values() if s[1] > 0 and not s[2]]
        # The SQL store's order: earliest expiry first, never-expiring last, then age, then id.
        states.sort(
            key=lambda s: (
                s[0].expires_at is None,
                s[0].expires_at or s[0].earned_at,
                s[0].earned_at,
                s[0].id,
            )
        )
        return [LotState(s[0], s[1], s[2]) for s in states]

    def pending_lots(self, member: str) -> list[LotState]:
        states = [s for s in self._lots_of(member).values() if s[1] > 0 and s[2]]
        states.sort(key=lambda s: (s[0].pending_until, s[0].id))
        return [LotState(s[0], s[1], s[2]) for s in states]

    def lots(self, ids: Sequence[UUID]) -> list[LotState]:
        missing = [i for i in ids if i not in self._lot_index]
        for state in self.inner.lots(missing) if missing else ():
            # A spent lot is not in the member's working set; tracking it keeps later moves exact.
            self._track_lot(state.lot, state.remaining, state.pending)
        return [LotState(*self._lot_index[i]) for i in ids]

    def reversed_points(self, entry_id: UUID) -> int:
        if entry_id in self._entry_index:
            before = 0  # booked by this batch: only this batch can have reversed it
        elif entry_id in self._reversed:
            before = self._reversed[entry_id]
        else:
            before = self._reversed[entry_id] = self.inner.reversed_points(entry_id)
        return before + sum(
            -m.delta
            for e in self._entries
            if e.refers_to == entry_id and e.kind is EntryKind.EARN_REVERSAL
            for m in e.lot_moves
        )

    def restored_points(self, entry_id: UUID) -> dict[UUID, int]:
        restored = {} if entry_id in self._entry_index else self.inner.restored_points(entry_id)
        for e in self._entries:
            if e.refers_to == entry_id and e.kind is EntryKind.BURN_REVERSAL:
                for m in e.lot_moves:
                    restored[m.lot_id] = restored.get(m.lot_id, 0) + m.delta
        return restored

    def hold(self, hold_id: UUID) -> HoldState | None:
        if hold_id not in self._holds:
            self.prefetch(holds=[hold_id])
        return self._holds[hold_id]

    def claim_key(
        self, credential: str, key: str, fingerprint: Any, entry_id: UUID, now: datetime
    ) -> bool:
        pair = (credential, key)
        if pair not in self._keys and pair not in self._absent:
            self.prefetch(keys=[pair])
        if pair in self._keys:
            return False
        self._keys[pair] = _Claim(
            credential, key, fingerprint.digest, fingerprint.text, entry_id, None, now
        )
        return True

    def is_new_key(self, credential: str, key: str) -> bool:
        """Whether the key is neither recorded nor claimed yet (what a claim would answer)."""
        pair = (credential, key)
        if pair not in self._keys and pair not in self._absent:
            self.prefetch(keys=[pair])
        return pair not in self._keys

    def idempotency_record(self, credential: str, key: str) -> IdempotencyRecord:
        claim = self._keys.get((credential, key))
        if claim is None:
            return self.inner.idempotency_record(credential, key)
        request = json.loads(claim.request)
        return IdempotencyRecord(request, claim.request_hash, claim.entry_id, claim.refusal)

    def record_refusal(self, credential: str, key: str, refusal: BusinessRefusal) -> None:
        claim = self._keys.get((credential, key))
        if claim is None:
            self.inner.record_refusal(credential, key, refusal)
            return
        claim.entry_id = None
        claim.refusal = refusal.to_record()

    def load_entry(self, entry_id: UUID) -> Entry:
        found = self.load_entries([entry_id])
        if not found:
            raise UnknownEntry(entry_id)
        return found[0]

    def load_entries(self, ids: Sequence[UUID]) -> list[Entry]:
        known = self._stored
        missing = [i for i in ids if i not in self._entry_index and i not in known]
        stored = {e.id: e for e in self.inner.load_entries(missing)} if missing else {}
        stored.update((i, known[i]) for i in ids if i in known)
        stored.update((i, self._entry_index[i]) for i in ids if i in self._entry_index)
        return [stored[i] for i in ids if i in stored]

    def book(self, entry: Entry, shards: int) -> None:
        """Apply an entry to the working state; its rows are written by :meth:`flush`."""
        self.require_accounts(p.account for p in entry.postings)
        self._entries.append(entry)
        self._entry_index[entry.id] = entry
        for posting in entry.postings:
            if posting.account in self._balances:
                self._balances[posting.account] += posting.amount
            self._net[posting.account] = self._net.get(posting.account, 0) + posting.amount
        for lot in entry.opened_lots:
            self._new_lots[lot.id] = self._track_lot(lot, lot.amount, lot.pending_until is not None)
        for move in entry.lot_moves:
            self.lots([move.lot_id])
            self._lot_index[move.lot_id][1] += move.delta
            if move.lot_id not in self._new_lots:
                self._lot_deltas[move.lot_id] = self._lot_deltas.get(move.lot_id, 0) + move.delta
        for lot_id in entry.released_lots:
            self.lots([lot_id])
            self._lot_index[lot_id][2] = False
            if lot_id not in self._new_lots:
                self._released.add(lot_id)
        if entry.kind is EntryKind.HOLD:
            held = next(p for p in entry.postings if p.account.endswith(":held"))
            expires = datetime.fromisoformat(str(entry.attributes["hold_expires_at"]))
            member = Account.parse(held.account).owner
            assert member is not None
            assert entry.partner is not None
            self._holds[entry.id] = HoldState(
                entry.id, member, entry.partner, held.amount, "open", expires
            )
            self._new_holds[entry.id] = {
                "entry_id": entry.id,
                "member": member,
                "partner": entry.partner,
                "amount": held.amount,
                "status": "open",
                "expires_at": expires,
                "closed_by": None,
            }
        elif entry.kind in (EntryKind.CAPTURE, EntryKind.VOID):
            assert entry.refers_to is not None
            status = "captured" if entry.kind is EntryKind.CAPTURE else "voided"
            hold = self.hold(entry.refers_to)
            if hold is not None:
                self._holds[entry.refers_to] = HoldState(
                    hold.entry_id, hold.member, hold.partner, hold.amount, status, hold.expires_at
                )
            if entry.refers_to in self._new_holds:
                self._new_holds[entry.refers_to].update(status=status, closed_by=entry.id)
            else:
                self._closed_holds[entry.refers_to] = (status, entry.id)

    def mark(self) -> int:
        """A point to :meth:`undo_claims` back to (the number of keys looked up so far)."""
        return len(self._keys)

    def undo_claims(self, mark: int) -> None:
        """Forget the keys claimed after ``mark`` (a command that failed without a refusal)."""
        for pair in list(self._keys)[mark:]:
            if self._keys[pair] is not None:
                del self._keys[pair]

    @property
    def booked(self) -> list[Entry]:
        """Entries booked since the last flush, in booking order."""
        return list(self._entries)

    # -- writing, once ----------------------------------------------------------------------------

    def flush(self, shards: int) -> None:
        """Write everything booked and claimed so far: one statement per table."""
        conn, entries = self.conn, self._entries
        claims = [c for c in self._keys.values() if c is not None]
        if claims:
            insert_many(
                conn,
                t.idempotency,
                [
                    {
                        "credential": c.credential,
                        "key": c.key,
                        "request_hash": c.request_hash,
                        "request": c.request,
                        "entry_id": c.entry_id,
                        "refusal": c.refusal,
                        "created_at": c.created_at,
                    }
                    for c in claims
                ],
            )
            # Flushed claims are records now: a later replay reads them from the database.
            for claim in claims:
                self._keys[(claim.credential, claim.key)] = None
        if entries:
            insert_many(conn, t.entries, [_entry_row(e) for e in entries])
            insert_many(
                conn,
                t.postings,
                [
                    {"entry_id": e.id, "line": line, "account": p.account, "amount": p.amount}
                    for e in entries
                    for line, p in enumerate(e.postings)
                ],
            )
            opened = [(e.id, lot) for e in entries for lot in e.opened_lots]
            if opened:
                insert_many(
                    conn,
                    t.lots,
                    [
                        {
                            "id": lot.id,
                            "opened_by": entry_id,
                            "member": lot.member,
                            "funder": lot.funder,
                            "amount": lot.amount,
                            "earned_at": lot.earned_at,
                            "expires_at": lot.expires_at,
                            "price_version": lot.price_version,
                            "pending_until": lot.pending_until,
                            "remaining": self._lot_index[lot.id][1],
                            "pending": self._lot_index[lot.id][2],
                        }
                        for entry_id, lot in opened
                    ],
                )
            moves = [
                {"entry_id": e.id, "lot_id": m.lot_id, "line": line, "delta": m.delta}
                for e in entries
                for line, m in enumerate(e.lot_moves)
            ]
            if moves:
                insert_many(conn, t.lot_moves, moves)
            deltas = sorted((lot_id, d) for lot_id, d in self._lot_deltas.items() if d)
            if deltas:
                execute_many(
                    conn, _MOVE_LOTS, [{"lot": lot_id, "delta": d} for lot_id, d in deltas]
                )
            releases = [{"entry_id": e.id, "lot_id": i} for e in entries for i in e.released_lots]
            if releases:
                insert_many(conn, t.lot_releases, releases)
            if self._released:
                execute_many(
                    conn, _RELEASE_LOTS, [{"lot": lot_id} for lot_id in sorted(self._released)]
                )
            if self._new_holds:
                insert_many(conn, t.holds, list(self._new_holds.values()))
            if self._closed_holds:
                execute_many(
                    conn,
                    _CLOSE_HOLDS,
                    [
                        {"hold": hold, "new_status": status, "by": by}
                        for hold, (status, by) in sorted(self._closed_holds.items())
                    ],
                )
            self.inner._apply_net(self._net, shards)
            insert_many(conn, t.journal_queue, [{"entry_id": e.id} for e in entries])
        self._entries, self._entry_index, self._reversed = [], {}, {}
        self._new_lots, self._new_holds, self._closed_holds = {}, {}, {}
        self._lot_deltas, self._released, self._net = {}, set(), {}


#: The batch's writes to rows it did not insert, each one statement for all rows
#: (:func:`~ledger.db.execute_many`).
_MOVE_LOTS = (
    t.lots.update()
    .where(t.lots.c.id == sa.bindparam("lot"))
    .values(remaining=t.lots.c.remaining + sa.bindparam("delta"))
)
_RELEASE_LOTS = t.lots.update().where(t.lots.c.id == sa.bindparam("lot")).values(pending=False)
_CLOSE_HOLDS = (
    t.holds.update()
    .where(t.holds.c.entry_id == sa.bindparam("hold"))
    .values(status=sa.bindparam("new_status"), closed_by=sa.bindparam("by"))
)


@functools.cache
def _add_to_balances(dialect: str) -> Any:
    """Add to a balance row, in the dialect's upsert: not an UPDATE, so that a shard row that
    does not exist yet (the shard count was raised after the account was opened) is created
    instead of silently missed."""
    upsert = _insert(dialect)(t.balances)
    return upsert.on_conflict_do_update(
        index_elements=[t.balances.c.account, t.balances.c.shard],
        set_={"balance": t.balances.c.balance + upsert.excluded.balance},
    )


def _hold_state(row: Any) -> HoldState:
    return HoldState(row.entry_id, row.member, row.partner, row.amount, row.status, row.expires_at)


def _entry_row(entry: Entry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "kind": entry.kind.value,
        "business_time": entry.business_time,
        "booked_at": entry.booked_at,
        "partner": entry.partner,
        "credential": entry.credential,
        "idempotency_key": entry.idempotency_key,
        "refers_to": entry.refers_to,
        "reason": entry.reason,
        "attributes": dict(entry.attributes),
    }
