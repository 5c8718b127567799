"""Verification of the stored log against itself, its checkpoints and the journal tables.

One streaming pass over the leaves in index order, in ranges of :data:`_BATCH` indices (the
roots are rebuilt from a stack of peaks; only the leaves' 32-byte hashes are kept, for the stored
tree nodes), that reports every finding rather than stopping at the first. The ranges can be
checked in worker processes and joined in order (``workers``), with the same findings:

- each leaf's bytes are canonical and say the right log and index (no gap, no reordering);
- each leaf's ``prev`` is the hash of the leaf before it, and its stored hash is its real hash;
- each entry leaf records exactly the entry the journal tables hold (no edited amount or account),
  and every journal entry not in the queue has a leaf (nothing deleted);
- every checkpoint's signature verifies and its root equals the root recomputed at its size;
- every stored tree node equals the recomputed one.

Leaves of other kinds (``AUDIT``) are checked here as leaves (bytes, chain, position, tree); what
they record is checked by their owner through the ``record_check`` hook, batch by batch.
"""

from __future__ import annotations

import re
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from multiprocessing import get_context
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ledger import merkle
from ledger import tables as t
from ledger.canonical import canonical_loads, parse_timestamp
from ledger.consistency import Finding
from ledger.db import reader
from ledger.errors import LedgerError
from ledger.journal import (
    ENVELOPE_VERSION,
    GENESIS_PREV,
    LOG_START,
    NON_ENTRY_KINDS,
    Leaf,
    parse_leaf,
)
from ledger.note import NoteVerifier, open_checkpoint
from ledger.repository import SqlLedgerStore

#: Leaves read per query, and so entries rebuilt from their rows per round of set-based queries.
_BATCH = 5000

#: Checks what non-entry leaves (audit events) record: called once per batch of leaves with the
#: batch's parsed leaves of a kind other than an entry kind and ``LOG_START``, in index order.
RecordCheck = Callable[[Connection, Sequence[Leaf]], Iterable[Finding]]


#: Told (phase, done, total) as the pass goes: here ("leaves", leaves checked, leaves stored).
Progress = Callable[[str, int, int], None]


def verify_log(
    conn: Connection,
    verifiers: Iterable[NoteVerifier],
    record_check: RecordCheck | None = None,
    progress: Progress | None = None,
    workers: int = 1,
    beside: Sequence[SideCheck] = (),
) -> list[Finding]:
    """Every finding about every log in the database (empty when all verifies).

    ``workers`` > 1 checks the leaves in that many processes forked from this one (Linux, a
    database file or server: an in-memory database has nothing to share). Each worker reads
    through its own connection, which is sound because the leaves it is given, and the entries
    they record, are append-only: a worker that reads them after ``conn`` did reads the same
    rows. The findings are the same, in the same order, whatever the number of workers.

    ``beside``: other read-only checks of the database, run while the leaves are checked (in a
    worker, when there are workers); their findings come first, in their order.
    """
    keyring = list(verifiers)
    findings: list[Finding] = []
    logs = conn.execute(sa.select(t.logs.c.origin).order_by(t.logs.c.opened_at)).scalars().all()
    counter = _Counter(progress, int(conn.scalar(sa.select(sa.func.count()).select_from(t.leaves))))
    # One range or less is checked here: forking workers would cost more than it saves.
    checker = _Checker(conn, record_check, workers if counter.total > _BATCH else 1)
    try:
        waiting = [checker.side(check) for check in beside]
        counter.advance(0)
        for log in logs:
            findings.extend(_verify_one_log(conn, log, keyring, checker.ranges, counter))
        found_beside = [finding for wait in waiting for finding in wait()]
    finally:
        checker.close()
    findings.extend(_entries_without_leaves(conn))
    return found_beside + findings


class _Counter:
    """Leaves checked so far, reported to the caller's progress callback (if any)."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def advance(self, leaves: int) -> None:
        self.done += leaves
        if self.progress is not None:
            self.progress("leaves", self.done, max(self.total, self.done))


@dataclass
class _Chunk:
    """What checking one range of a log's leaves found, and what the checks across ranges need.

    Every check that needs only the range's own leaves is made where the range is read (in a
    worker, with ``workers`` > 1); the log's pass then joins the ranges in order: the first
    leaf's sequence, chain and clock against the range before, the roots and the tree nodes.
    """

    findings: list[Finding]
    leaves: list[tuple[int, bytes]]
    """(index, real hash) of each stored leaf, in index order."""
    first_prev: bytes | None = None
    """The first leaf's ``prev``; None if it did not parse (its own finding says why)."""
    first_clock: datetime | None = None
    """``committed_at`` of the first leaf that parsed (at ``first_clock_index``), and of the
    last one."""
    first_clock_index: int = 0
    last_clock: datetime | None = None


#: A read-only check of the whole database (the caches'), run beside the leaves.
SideCheck = Callable[[Connection], Iterable[Finding]]


class _Checker:
    """Checks ranges of leaves, and side checks, here (one process) or in forked workers."""

    def __init__(self, conn: Connection, record_check: RecordCheck | None, workers: int) -> None:
        self.conn, self.record_check, self.workers = conn, record_check, workers
        engine = conn.engine
        shareable = not (
            engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:")
        )
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1 and shareable and sys.platform == "linux":
            # Forked: the workers inherit the engine and the record check (neither need be
            # picklable); each drops the pooled connections it inherited and opens its own.
            self.pool = ProcessPoolExecutor(
                workers,
                mp_context=get_context("fork"),
                initializer=_start_worker,
                initargs=(engine, record_check),
            )

    def side(self, check: SideCheck) -> Callable[[], list[Finding]]:
        """Start ``check`` (a module-level function) and return how to wait for its findings."""
        if self.pool is None:
            found = list(check(self.conn))
            return lambda: found
        return self.pool.submit(_worker_side, check).result

    def ranges(self, log: str, ranges: Iterable[tuple[int, int]]) -> Iterator[_Chunk]:
        """The results of the ranges [low, high) of ``log``'s leaves, in the order given."""
        if self.pool is None:
            for low, high in ranges:
                yield _check_chunk(self.conn, log, low, high, self.record_check)
            return
        pending: deque[Future[_Chunk]] = deque()
        for low, high in ranges:
            pending.append(self.pool.submit(_worker_chunk, log, low, high))
            if len(pending) > 2 * self.workers:  # a bounded window keeps memory flat
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


_worker: tuple[Engine, RecordCheck | None] | None = None


def _start_worker(engine: Engine, record_check: RecordCheck | None) -> None:
    global _worker
    engine.dispose(close=False)  # the parent's connections stay the parent's
    _worker = (engine, record_check)


def _worker_chunk(log: str, low: int, high: int) -> _Chunk:
    assert _worker is not None
    engine, record_check = _worker
    with reader(engine) as conn:
        return _check_chunk(conn, log, low, high, record_check)


def _worker_side(check: SideCheck) -> list[Finding]:
    assert _worker is not None
    with reader(_worker[0]) as conn:
        return list(check(conn))


def _verify_one_log(
    conn: Connection,
    log: str,
    keyring: list[NoteVerifier],
    check_chunks: Callable[[str, Iterable[tuple[int, int]]], Iterator[_Chunk]],
    counter: _Counter,
) -> Iterator[Finding]:
    checkpoints = {
        row.size: row
        for row in conn.execute(sa.select(t.checkpoints).where(t.checkpoints.c.log == log))
    }
    for size, row in checkpoints.items():
        try:
            checkpoint, _ = open_checkpoint(row.note, own_keys(keyring, log), origin=log)
        except LedgerError as exc:
            yield Finding("checkpoint-signature", f"{log}@{size}", "valid signature", exc.message)
            continue
        if (checkpoint.size, checkpoint.root) != (size, bytes(row.root)):
            yield Finding(
                "checkpoint-fields",
                f"{log}@{size}",
                (size, bytes(row.root).hex()),
                (checkpoint.size, checkpoint.root.hex()),
            )
    peaks: list[tuple[int, bytes]] = []  # (level, hash) of the right-edge complete subtrees
    hashes: list[bytes] = []  # every leaf's real hash, in order, for the stored tree nodes
    expected_index, prev = 0, GENESIS_PREV
    clock: datetime | None = None  # committed_at of the last leaf that parsed
    if 0 in checkpoints and bytes(checkpoints[0].root) != merkle.EMPTY_ROOT:
        yield Finding(
            "checkpoint-root", f"{log}@0", merkle.EMPTY_ROOT.hex(), bytes(checkpoints[0].root).hex()
        )
    low, high = conn.execute(
        sa.select(sa.func.min(t.leaves.c.idx), sa.func.max(t.leaves.c.idx)).where(
            t.leaves.c.log == log
        )
    ).one()
    ranges = (
        []
        if low is None
        else [(a, min(a + _BATCH, high + 1)) for a in range(low, high + 1, _BATCH)]
    )
    for chunk in check_chunks(log, ranges):
        if not chunk.leaves:
            continue
        first = chunk.leaves[0][0]
        subject = f"{log}#{first}"
        if first != expected_index:
            yield Finding("leaf-sequence", subject, expected_index, first)
        if chunk.first_prev is not None and chunk.first_prev != prev:
            yield Finding("leaf-chain", subject, prev.hex(), chunk.first_prev.hex())
        if clock is not None and chunk.first_clock is not None and chunk.first_clock < clock:
            yield Finding(
                "leaf-backdated",
                f"{log}#{chunk.first_clock_index}",
                f">= {clock.isoformat()}",
                chunk.first_clock.isoformat(),
            )
        yield from chunk.findings
        for index, real_hash in chunk.leaves:
            hashes.append(real_hash)
            _push(peaks, real_hash)
            size = index + 1
            if size in checkpoints:
                root = _root(peaks)
                if bytes(checkpoints[size].root) != root:
                    yield Finding(
                        "checkpoint-root",
                        f"{log}@{size}",
                        root.hex(),
                        bytes(checkpoints[size].root).hex(),
                    )
        prev, expected_index = chunk.leaves[-1][1], chunk.leaves[-1][0] + 1
        clock = chunk.last_clock or clock
        counter.advance(len(chunk.leaves))
    for size in sorted(s for s in checkpoints if s > expected_index):
        yield Finding("checkpoint-beyond-log", f"{log}@{size}", expected_index, size)
    yield from _check_nodes(conn, log, hashes)


def _check_chunk(
    conn: Connection, log: str, low: int, high: int, record_check: RecordCheck | None
) -> _Chunk:
    """Check the leaves of ``log`` with index in [low, high) against each other and the journal."""
    rows = conn.execute(
        sa.select(t.leaves)
        .where(t.leaves.c.log == log, t.leaves.c.idx >= low, t.leaves.c.idx < high)
        .order_by(t.leaves.c.idx)
    ).all()
    entries = _journal_entries(conn, [r.entry_id for r in rows if r.entry_id is not None])
    findings: list[Finding] = []
    leaves: list[tuple[int, bytes]] = []
    records: list[Leaf] = []
    clock: list[datetime] = []  # committed_at of the last leaf that parsed
    chunk = _Chunk(findings, leaves)
    for row in rows:
        data = bytes(row.data)
        real_hash = merkle.leaf_hash(data)
        subject = f"{log}#{row.idx}"
        if leaves and row.idx != leaves[-1][0] + 1:
            findings.append(Finding("leaf-sequence", subject, leaves[-1][0] + 1, row.idx))
        if bytes(row.hash) != real_hash:
            findings.append(Finding("leaf-hash", subject, real_hash.hex(), bytes(row.hash).hex()))
        prev = leaves[-1][1] if leaves else None
        leaf = _check_leaf(
            data, subject, log, row.idx, prev, row.entry_id, entries, clock, records, findings
        )
        if not leaves and leaf is not None:
            chunk.first_prev = leaf.prev
        if chunk.first_clock is None and leaf is not None:
            chunk.first_clock, chunk.first_clock_index = leaf.committed_at, row.idx
        leaves.append((row.idx, real_hash))
    chunk.last_clock = clock[0] if clock else None
    if record_check is not None and records:
        findings.extend(record_check(conn, records))
    return chunk


def own_keys(keyring: Iterable[NoteVerifier], log: str) -> list[NoteVerifier]:
    """The keys that may sign ``log``'s checkpoints: ours are named after the origin, so after a
    rotation one log's key can never vouch for another log's checkpoints."""
    return [key for key in keyring if key.name == log]


def _check_leaf(
    data: bytes,
    subject: str,
    log: str,
    index: int,
    prev: bytes | None,
    entry_id: UUID | None,
    entries: dict[UUID, dict | None],
    clock: list[datetime],
    records: list[Leaf],
    findings: list[Finding],
) -> Leaf | None:
    """Check one leaf (its chain to ``prev``, unless it is the first of its range); the leaf as
    read, or None if it does not parse."""
    try:
        leaf = _read_leaf(data)
    except LedgerError as exc:
        findings.append(Finding("leaf-canonical", subject, "canonical envelope", exc.message))
        return None
    # The integrator's clock never runs backwards: an earlier committed_at is a back-dated leaf.
    if clock and leaf.committed_at < clock[0]:
        findings.append(
            Finding(
                "leaf-backdated",
                subject,
                f">= {clock[0].isoformat()}",
                leaf.committed_at.isoformat(),
            )
        )
    clock[:] = [leaf.committed_at]
    if (leaf.log, leaf.index) != (log, index):
        findings.append(Finding("leaf-position", subject, (log, index), (leaf.log, leaf.index)))
    if prev is not None and leaf.prev != prev:
        findings.append(Finding("leaf-chain", subject, prev.hex(), leaf.prev.hex()))
    if leaf.kind in NON_ENTRY_KINDS:
        if leaf.kind != LOG_START:
            records.append(leaf)
        return leaf
    if entry_id is None or leaf.body.get("id") != str(entry_id):
        findings.append(Finding("leaf-entry", subject, str(entry_id), leaf.body.get("id")))
    elif entries.get(entry_id) != leaf.body:
        findings.append(
            Finding("entry-altered", subject, "journal tables equal to the leaf", str(entry_id))
        )
    return leaf


def _read_leaf(data: bytes) -> Leaf:
    """:func:`parse_leaf`, quickly for bytes :func:`canonical_loads` proves canonical.

    The quick way makes parse_leaf's every other check on the envelope; bytes that fail any of
    them, or that the quick test cannot decide, go to parse_leaf itself, which accepts or refuses
    them and says why.
    """
    envelope = canonical_loads(data)
    if (
        type(envelope) is dict
        and envelope.keys() == _ENVELOPE_KEYS
        and envelope["v"] == ENVELOPE_VERSION
        and _hex(envelope["prev"], 64)
        and _hex(envelope["nonce"], 32)
    ):
        body = envelope["entry"]
        if envelope["kind"] == LOG_START or (
            type(body) is dict and body.get("kind") == envelope["kind"]
        ):
            try:
                committed_at = parse_timestamp(envelope["committed_at"])
            except LedgerError:
                return parse_leaf(data)
            return Leaf(
                log=envelope["log"],
                index=envelope["index"],
                prev=bytes.fromhex(envelope["prev"]),
                kind=envelope["kind"],
                body=body,
                committed_at=committed_at,
                data=data,
            )
    return parse_leaf(data)


_ENVELOPE_KEYS = frozenset({"v", "log", "index", "prev", "kind", "entry", "committed_at", "nonce"})
_LOWER_HEX = re.compile(r"[0-9a-f]+")


def _hex(value: object, length: int) -> bool:
    return type(value) is str and len(value) == length and _LOWER_HEX.fullmatch(value) is not None


def _journal_entries(conn: Connection, ids: list[UUID]) -> dict[UUID, dict | None]:
    """The entries as the journal tables hold them now, in leaf-record form.

    Read the integrator's own way (:meth:`SqlLedgerStore.load_entry_records`), not through
    validated :class:`Entry` objects: the record is compared with the leaf whole, so any edit to
    a row the record holds is found either way. An entry whose rows are gone is missing here,
    and one whose rows cannot even be spelled (a naive time, a malformed id) maps to ``None``;
    both differ from any leaf body and so are reported as altered.
    """
    return dict(SqlLedgerStore(conn).load_entry_records(ids, strict=False))


def _entries_without_leaves(conn: Connection) -> Iterator[Finding]:
    """A journal entry that is neither integrated nor queued was dropped from the log."""
    query = (
        sa.select(t.entries.c.id)
        .outerjoin(t.leaves, t.leaves.c.entry_id == t.entries.c.id)
        .outerjoin(t.journal_queue, t.journal_queue.c.entry_id == t.entries.c.id)
        .where(t.leaves.c.entry_id.is_(None), t.journal_queue.c.entry_id.is_(None))
    )
    for entry_id in conn.scalars(query):
        yield Finding("entry-not-logged", str(entry_id), "a leaf or a queue row", None)


def _check_nodes(conn: Connection, log: str, hashes: Sequence[bytes]) -> Iterator[Finding]:
    """Stored complete-subtree nodes equal the ones recomputed from the leaves' real hashes.

    The stored nodes are read in (level, index) order and each level is computed in one sweep
    from the one below, so no node is hashed twice and no leaf is read again.
    """
    level_hashes: list[bytes] = list(hashes)
    level = 0
    query = (
        sa.select(t.tree_nodes.c.level, t.tree_nodes.c.idx, t.tree_nodes.c.hash)
        .where(t.tree_nodes.c.log == log)
        .order_by(t.tree_nodes.c.level, t.tree_nodes.c.idx)
    )
    for row in conn.execute(query):
        while level < row.level and level_hashes:
            node_hash = merkle.node_hash
            level_hashes = [
                node_hash(level_hashes[i], level_hashes[i + 1])
                for i in range(0, len(level_hashes) - 1, 2)
            ]
            level += 1
        # Bound by the leaves actually stored, not the highest index: after a deleted leaf the
        # rebuilt tree is smaller, and a node it cannot hold is a finding, not a crash.
        stored = bytes(row.hash)
        expected = (
            level_hashes[row.idx]
            if level == row.level and 0 <= row.idx < len(level_hashes)
            else None
        )
        if expected != stored:
            yield Finding(
                "tree-node",
                f"{log}/{row.level}/{row.idx}",
                expected.hex() if expected else None,
                stored.hex(),
            )


def _push(peaks: list[tuple[int, bytes]], leaf: bytes) -> None:
    level, value = 0, leaf
    while peaks and peaks[-1][0] == level:
        _, left = peaks.pop()
        value = merkle.node_hash(left, value)
        level += 1
    peaks.append((level, value))


def _root(peaks: list[tuple[int, bytes]]) -> bytes:
    if not peaks:
        return merkle.EMPTY_ROOT
    value = peaks[-1][1]
    for _, left in reversed(peaks[:-1]):
        value = merkle.node_hash(left, value)
    return value
