"""Storage of the verifiable log: leaves, complete-subtree nodes, signed checkpoints, the queue.

Only the integrator writes here (one writer, chosen by a PostgreSQL advisory lock), so the log's
tip can be read without further locking inside its transaction. Readers (receipts, proofs) fetch
the O(log n) nodes a proof needs in one query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger import tables as t
from ledger.db import insert_many
from ledger.journal import GENESIS_PREV, parse_leaf

#: Arbitrary, fixed key of the integrator's advisory lock ("coalitio" in ASCII).
INTEGRATOR_LOCK = 0x636F616C6974696F

Address = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Tip:
    """Where a log stands: its size, the hash of its last leaf and when that leaf was committed."""

    size: int
    last_hash: bytes
    last_committed_at: datetime | None


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    log: str
    size: int
    root: bytes
    note: str
    created_at: datetime


class SqlLogStore:
    """The log's tables over a connection with an open transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def try_lead(self) -> bool:
        """Become the integrator for this transaction; False if another integrator is running."""
        if self.conn.dialect.name != "postgresql":
            return True  # SQLite: BEGIN IMMEDIATE already made this the only writer.
        return bool(self.conn.scalar(sa.select(sa.func.pg_try_advisory_xact_lock(INTEGRATOR_LOCK))))

    # -- logs -----------------------------------------------------------------------------------

    def open_log(self, origin: str, vkey: str, now: datetime, previous: str | None) -> None:
        self.conn.execute(
            t.logs.insert().values(
                origin=origin, vkey=vkey, opened_at=now, previous_origin=previous
            )
        )

    def logs(self) -> list[tuple[str, str, str | None]]:
        """Every log as (origin, vkey, previous origin), oldest first."""
        rows = self.conn.execute(
            sa.select(t.logs.c.origin, t.logs.c.vkey, t.logs.c.previous_origin).order_by(
                t.logs.c.opened_at
            )
        )
        return [(r.origin, r.vkey, r.previous_origin) for r in rows]

    def current_log(self) -> str | None:
        """The log that is not yet succeeded by another (the one being appended to)."""
        logs = self.logs()
        succeeded = {previous for _, _, previous in logs if previous}
        current = [origin for origin, _, _ in logs if origin not in succeeded]
        return current[-1] if current else None

    # -- leaves and nodes -----------------------------------------------------------------------

    def tip(self, log: str) -> Tip:
        row = self.conn.execute(
            sa.select(t.leaves.c.idx, t.leaves.c.hash, t.leaves.c.data)
            .where(t.leaves.c.log == log)
            .order_by(t.leaves.c.idx.desc())
            .limit(1)
        ).first()
        if row is None:
            return Tip(0, GENESIS_PREV, None)
        return Tip(row.idx + 1, bytes(row.hash), parse_leaf(bytes(row.data)).committed_at)

    def append(
        self, log: str, first_index: int, leaves: Sequence[tuple[bytes, bytes, UUID | None]]
    ) -> None:
        """Store leaves (data, hash, entry id) at ``first_index`` and on, in order."""
        insert_many(
            self.conn,
            t.leaves,
            [
                {"log": log, "idx": first_index + n, "entry_id": entry_id, "hash": h, "data": data}
                for n, (data, h, entry_id) in enumerate(leaves)
            ],
        )

    def add_nodes(self, log: str, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        if nodes:
            insert_many(
                self.conn,
                t.tree_nodes,
                [{"log": log, "level": lvl, "idx": idx, "hash": h} for lvl, idx, h in nodes],
            )

    def nodes(self, log: str, addresses: Sequence[Address]) -> dict[Address, bytes]:
        """Fetch stored complete-subtree hashes by (level, index), in one query."""
        if not addresses:
            return {}
        by_level: dict[int, list[int]] = {}
        for level, index in sorted(set(addresses)):
            by_level.setdefault(level, []).append(index)
        n = t.tree_nodes.c
        # One (log, level, idx IN …) select per level, not a row-value IN list: SQLite searches
        # its (log, level, idx) key for each, where a row-value list scans the log's nodes.
        rows = self.conn.execute(
            sa.union_all(
                *(
                    sa.select(n.level, n.idx, n.hash).where(
                        n.log == log, n.level == level, n.idx.in_(indexes)
                    )
                    for level, indexes in by_level.items()
                )
            )
        )
        return {(r.level, r.idx): bytes(r.hash) for r in rows}

    def leaf(self, entry_id: UUID) -> tuple[str, int, bytes] | None:
        """(log, index, bytes) of the leaf recording an entry, if it is integrated yet."""
        row = self.conn.execute(
            sa.select(t.leaves.c.log, t.leaves.c.idx, t.leaves.c.data).where(
                t.leaves.c.entry_id == entry_id
            )
        ).first()
        return None if row is None else (row.log, row.idx, bytes(row.data))

    def leaf_at(self, log: str, index: int) -> bytes | None:
        return self.conn.scalar(
            sa.select(t.leaves.c.data).where(t.leaves.c.log == log, t.leaves.c.idx == index)
        )

    # -- checkpoints and queue ------------------------------------------------------------------

    def add_checkpoint(self, log: str, size: int, root: bytes, note: str, now: datetime) -> None:
        self.conn.execute(
            t.checkpoints.insert().values(log=log, size=size, root=root, note=note, created_at=now)
        )

    def checkpoint(self, log: str, size: int | None = None) -> StoredCheckpoint | None:
        """The checkpoint at ``size``, or the latest one of the log."""
        query = sa.select(t.checkpoints).where(t.checkpoints.c.log == log)
        if size is not None:
            query = query.where(t.checkpoints.c.size == size)
        row = self.conn.execute(query.order_by(t.checkpoints.c.size.desc()).limit(1)).first()
        if row is None:
            return None
        return StoredCheckpoint(row.log, row.size, bytes(row.root), row.note, row.created_at)

    def queued(self, limit: int, after: int = 0) -> list[tuple[int, UUID]]:
        """Committed queue rows in sequence order (uncommitted writers are invisible here),
        from the one after position ``after``."""
        rows = self.conn.execute(
            sa.select(t.journal_queue.c.seq, t.journal_queue.c.entry_id)
            .where(t.journal_queue.c.seq > after)
            .order_by(t.journal_queue.c.seq)
            .limit(limit)
        )
        return [(r.seq, r.entry_id) for r in rows]

    def dequeue(self, seqs: Sequence[int]) -> None:
        self.conn.execute(t.journal_queue.delete().where(t.journal_queue.c.seq.in_(seqs)))

    def queue_length(self) -> int:
        return int(self.conn.scalar(sa.select(sa.func.count()).select_from(t.journal_queue)) or 0)
