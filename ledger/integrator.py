"""The integrator: turns committed journal entries into leaves, tree nodes and signed checkpoints.

Writers only append a row to ``journal_queue`` inside their own transaction, after locking the
accounts they touch. The integrator — a single writer, elected per batch by a transaction-scoped
PostgreSQL advisory lock, so starting two is safe — takes committed queue rows in sequence order
and, in ONE transaction per batch: assigns dense indices after the log's tip, builds each leaf's
canonical envelope chained to the previous leaf, stores the new complete-subtree nodes, signs a
checkpoint for the new size and deletes the queue rows. A crash at any point rolls the whole batch
back; the rows are still queued and the next pass integrates them exactly once.

Other packages may queue records that are not ledger entries (the audit log): the integrator takes
them through the :class:`RecordQueue` protocol it is given, after the batch's entries and in the
same transaction, so they are chained, indexed and covered by the same signed checkpoint. The
ledger does not know what those records mean.

Why not a database sequence as the index: sequences have gaps and are handed out in start order,
not commit order. Queue ``seq`` order does respect causality per account: a writer inserts its
queue row only after taking its account locks, so a later writer on the same account always gets a
larger ``seq`` and commits later.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

from sqlalchemy.engine import Connection

from ledger import merkle
from ledger.canonical import canonical_bytes
from ledger.db import Database
from ledger.errors import LedgerError
from ledger.journal import GENESIS_PREV, LOG_START, envelope_bytes
from ledger.logstore import SqlLogStore
from ledger.note import Checkpoint, NoteSigner
from ledger.repository import SqlLedgerStore


class LogKeyMismatch(LedgerError):
    code = "log-key-mismatch"


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one integration pass appended."""

    log: str
    first_index: int
    size: int
    checkpoint: str


@dataclass(frozen=True, slots=True)
class QueuedRecord:
    """A record other than a ledger entry, waiting in its owner's queue to become a leaf."""

    key: int
    """Its position in its own queue (what the queue needs to remove it)."""
    kind: str
    """The leaf kind (e.g. ``AUDIT``); never an entry kind and never ``LOG_START``."""
    body: dict[str, Any]
    """The leaf's ``entry`` member, inside the hashed-data profile."""


@dataclass(frozen=True, slots=True)
class PreparedBody:
    """A queued entry's leaf body, serialised ahead of its append (:meth:`Integrator.prepare`)."""

    seq: int
    """The entry's position in the journal queue."""
    entry_id: UUID
    kind: str
    body: bytes
    """``canonical_bytes`` of the entry's leaf record."""


class RecordQueue(Protocol):
    """A queue of non-entry records that the integrator appends after each batch's entries."""

    def queued(self, conn: Connection, limit: int) -> list[QueuedRecord]:
        """Up to ``limit`` committed records, oldest first."""
        ...

    def integrated(self, conn: Connection, placed: Sequence[tuple[QueuedRecord, str, int]]) -> None:
        """Remove the records from the queue; each became leaf (log, index)."""
        ...


class Integrator:
    """Appends queued entries to the log signed by ``signer`` (whose name is the log origin).

    ``queues`` are the other packages' record queues (the audit log's); their records follow the
    entries of each batch, up to ``batch_size`` leaves in all, with a tenth of the batch kept for
    them.
    """

    def __init__(
        self, signer: NoteSigner, batch_size: int = 1000, queues: Sequence[RecordQueue] = ()
    ) -> None:
        self.signer = signer
        self.batch_size = batch_size
        self.queues = tuple(queues)

    @property
    def origin(self) -> str:
        return self.signer.name

    def ensure_log(self, conn: Connection) -> None:
        """Open this key's log if the database has none yet; refuse a key for a retired log."""
        store = SqlLogStore(conn)
        current = store.current_log()
        if current is None:
            store.open_log(self.origin, self.signer.vkey, _now(), None)
            self._sign(store, 0, merkle.EMPTY_ROOT)
        elif current != self.origin:
            raise LogKeyMismatch(
                f"the database appends to log {current!r}, this key signs for {self.origin!r}"
            )

    def prepare(
        self, conn: Connection, *, after: int = 0, limit: int | None = None
    ) -> list[PreparedBody]:
        """The leaf bodies of committed entries queued behind position ``after``, oldest first.

        The integrator's expensive half — reading each entry's rows and serialising its record
        — needs no lock and writes nothing, so it can run in another process beside the writers
        (through a :func:`~ledger.db.reader` connection) and hand :meth:`integrate_batch` the
        bodies, leaving it only the splice, the hashes and the inserts. Up to ``limit`` entries
        (default: a batch); pass the last body's ``seq`` as ``after`` to go on.
        """
        queued = SqlLogStore(conn).queued(limit or self.batch_size, after=after)
        positions = {entry_id: seq for seq, entry_id in queued}
        records = SqlLedgerStore(conn).load_entry_records(list(positions))
        return [
            PreparedBody(positions[entry_id], entry_id, record["kind"], canonical_bytes(record))
            for entry_id, record in records
        ]

    def integrate_batch(
        self,
        conn: Connection,
        prepared: dict[UUID, PreparedBody] | None = None,
        *,
        prepared_only: bool = False,
    ) -> BatchResult | None:
        """Integrate up to ``batch_size`` committed entries; None if idle or not the leader.

        ``prepared`` holds bodies made by :meth:`prepare`; each one used is removed from it, and
        the entries it lacks are read here. With ``prepared_only`` the batch stops at the first
        queued entry it lacks (that one waits for a later pass).
        """
        store = SqlLogStore(conn)
        if not store.try_lead():
            return None
        self.ensure_log(conn)
        # A tenth of each batch stays open to the record queues, so a steady stream of entries
        # never starves them; whatever they leave unused the entries do not get back this batch.
        share = max(1, self.batch_size // 10) if self.queues and self.batch_size > 1 else 0
        given = {} if prepared is None else prepared
        room = self.batch_size - share
        # Stopping at the first entry not given, a prepared-only batch uses at most them all.
        queued = store.queued(min(room, len(given)) if prepared_only else room)
        if prepared_only:
            lacking = (n for n, (_, entry_id) in enumerate(queued) if entry_id not in given)
            queued = queued[: next(lacking, len(queued))]
        # Straight from the rows to the records: rebuilding and re-validating Entry objects (or
        # even UUID objects) cost more than the leaves themselves, and the record is the same
        # (tests/integration/test_entry_records_fast.py).
        read = dict(
            SqlLedgerStore(conn).load_entry_records(
                [entry_id for _, entry_id in queued if entry_id not in given]
            )
        )
        records: list[tuple[str, bytes, UUID | None]] = []
        for _, entry_id in queued:
            body = given.pop(entry_id, None)
            if body is not None:
                records.append((body.kind, body.body, entry_id))
            elif entry_id in read:  # a queue row whose entry is gone is dropped, as always
                record = read[entry_id]
                records.append((record["kind"], canonical_bytes(record), entry_id))
        entries = len(records)
        others: list[tuple[RecordQueue, list[QueuedRecord]]] = []
        room = self.batch_size - len(records)
        for queue in self.queues:
            if room <= 0:
                break
            taken = queue.queued(conn, room)
            others.append((queue, taken))
            records += [(record.kind, canonical_bytes(record.body), None) for record in taken]
            room -= len(taken)
        if not records:
            return None
        result = self._append(store, records)
        if queued:
            store.dequeue([seq for seq, _ in queued])
        index = result.first_index + entries
        for queue, taken in others:
            if taken:
                queue.integrated(
                    conn, [(record, self.origin, index + n) for n, record in enumerate(taken)]
                )
                index += len(taken)
        return result

    def integrate_all(
        self,
        db: Database,
        prepared: dict[UUID, PreparedBody] | None = None,
        *,
        prepared_only: bool = False,
    ) -> int:
        """Run batches until the queue is empty (with ``prepared_only``: until the first entry
        not prepared); returns the number of leaves appended. See :meth:`integrate_batch`."""
        appended = 0
        while True:
            with db.transaction() as conn:
                result = self.integrate_batch(conn, prepared, prepared_only=prepared_only)
            if result is None:
                return appended
            appended += result.size - result.first_index

    def rotate(self, conn: Connection, new_signer: NoteSigner) -> BatchResult:
        """Close this log and open ``new_signer``'s, whose first leaf quotes the final checkpoint.

        The caller must have integrated everything queued (else those entries would land after
        the rotation in the new log, which is allowed, but the final checkpoint would not cover
        them).
        """
        store = SqlLogStore(conn)
        if not store.try_lead():
            raise LogKeyMismatch("another integrator is running; stop it before rotating keys")
        self.ensure_log(conn)
        final = store.checkpoint(self.origin)
        assert final is not None
        store.open_log(new_signer.name, new_signer.vkey, _now(), self.origin)
        body = {
            "previous_log": self.origin,
            "previous_checkpoint": final.note,
            "previous_vkey": self.signer.vkey,
        }
        return Integrator(new_signer)._append(store, [(LOG_START, canonical_bytes(body), None)])

    # -- internals ------------------------------------------------------------------------------

    def _append(
        self, store: SqlLogStore, records: list[tuple[str, bytes, UUID | None]]
    ) -> BatchResult:
        """Append (kind, serialised body, entry id) records as leaves; sign the new size."""
        tip = store.tip(self.origin)
        committed_at = _now()
        if tip.last_committed_at is not None and committed_at < tip.last_committed_at:
            committed_at = tip.last_committed_at  # the log's clock never runs backwards
        prev = tip.last_hash if tip.size else GENESIS_PREV
        leaves: list[tuple[bytes, bytes, UUID | None]] = []
        for offset, (kind, body, entry_id) in enumerate(records):
            data = envelope_bytes(
                log=self.origin,
                index=tip.size + offset,
                prev=prev,
                kind=kind,
                body=body,
                committed_at=committed_at,
                nonce=os.urandom(16),
            )
            prev = merkle.leaf_hash(data)
            leaves.append((data, prev, entry_id))
        store.append(self.origin, tip.size, leaves)
        nodes = merkle.nodes_created_by_append(
            tip.size,
            [leaf_hash for _, leaf_hash, _ in leaves],
            lambda a: store.nodes(self.origin, a),
        )
        store.add_nodes(self.origin, nodes)
        size = tip.size + len(leaves)
        root = merkle.root_from_nodes(size, store.nodes(self.origin, merkle.root_addresses(size)))
        note = self._sign(store, size, root)
        return BatchResult(self.origin, tip.size, size, note)

    def _sign(self, store: SqlLogStore, size: int, root: bytes) -> str:
        note = self.signer.sign(Checkpoint(self.origin, size, root).text())
        store.add_checkpoint(self.origin, size, root, note, _now())
        return note


def _now() -> datetime:
    return datetime.now(UTC)
