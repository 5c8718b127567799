"""The audit bundle: a self-contained export of the ledger that an auditor verifies offline.

:func:`export_bundle` writes, from one consistent snapshot of the database, streaming (one batch of
rows in memory at a time)::

    manifest.json      format, creation time, and the SHA-256, size and line count of every file
    keys.json          every log's origin and verifier key (the operator's claim), and the trust
                       policy: trust only keys obtained out of band; witnesses and quorum
    leaves.jsonl       every leaf of every log, in log then index order: each line IS the leaf's
                       exact bytes (canonical JSON never holds a raw newline), so a leaf's hash is
                       SHA-256(0x00 || line); bytes that cannot be a line are written as
                       {"index", "leaf_base64", "log"}
    checkpoints.jsonl  every signed checkpoint: {"log", "size", "note"}
    entries.jsonl      the journal tables' record of every entry (what the database says, to be
                       compared with the leaves): {"index", "log", "queued", "record"}, where
                       record is the entry's canonical record; queued entries last
    audit.jsonl        the audit_events rows, in the same form
    balances.jsonl     the cached balances: {"account", "balance", "shard"}
    lots.jsonl         the cached lots: terms, remaining, pending
    contracts.jsonl    every partner contract version's settlement terms (prices, fee, rounding
                       mode, carry-forward threshold)
    statements.jsonl   one line per prepared settlement period: its close (and the signed
                       checkpoint it cites), the run document and every statement document
                       exactly as stored, with their recorded SHA-256 and signed notes

:func:`verify_bundle` checks a bundle with nothing else but the trusted log keys: the manifest,
then one streaming pass over the leaves (canonical bytes, the chain, gapless indices, the Merkle
tree as a stack of O(log n) peaks against every signed checkpoint, every entry's rules, each entry
and audit event against the tables' record), then the caches against what the leaves imply,
compared bucket by bucket (:mod:`audit.tally`) so memory stays flat however long the log, then
the statements (:mod:`audit.statementcheck`). It reports every finding.
The byte-level format is specified in docs/AUDITING.md and docs/VERIFYING.md §10.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import IO, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from audit import tables as at
from audit.errors import BundleError
from audit.findings import entry_differences
from audit.leafscan import (
    ENTRY_KINDS,
    ChunkResult,
    Effects,
    Lines,
    Run,
    balance_row,
    body_slice,
    check_entry,
    fold_cache_chunk,
    leaf_bytes,
    lot_cache_values,
    lot_row,
    plain_json,
    record_line,
    scan_chunk,
)
from audit.log import event_from_row
from audit.native import NATIVE as _native
from audit.statementcheck import BundleStatements, export_contracts, export_statements
from audit.tally import BUCKETS, Tally, differences
from audit.verify import Report
from ledger import merkle
from ledger import tables as t
from ledger.canonical import canonical_bytes, format_timestamp, format_uuid
from ledger.consistency import Finding
from ledger.errors import LedgerError
from ledger.journal import AUDIT, GENESIS_PREV, LOG_START, entry_record
from ledger.logcheck import own_keys
from ledger.logstore import SqlLogStore
from ledger.note import NoteVerifier, open_checkpoint
from ledger.repository import SqlLedgerStore

FORMAT = "coalition-audit-bundle/1"
FILES = (
    "keys.json",
    "leaves.jsonl",
    "checkpoints.jsonl",
    "entries.jsonl",
    "audit.jsonl",
    "balances.jsonl",
    "lots.jsonl",
    "contracts.jsonl",
    "statements.jsonl",
)
TRUST_POLICY = {
    "log_keys": (
        "Trust only log verifier keys obtained out of band (coalition keys show, the partner "
        "contract). The vkeys in this file are the operator's claim and prove nothing."
    ),
    "witnesses": [],
    "witness_quorum": 0,
    "witness_note": "no witnesses are configured yet; compare checkpoints you hold yourself",
}
_BATCH = 2000
_CHUNK_BYTES = 4 << 20
# The head of a line of entries.jsonl / audit.jsonl as the exporter writes it; the record runs
# from there to the line's closing brace (matched as a prefix: no pass over the record's bytes).
_HEAD = re.compile(
    rb'\{"index":(null|0|[1-9][0-9]{0,18}),"log":(null|"[^"\\]*"),"queued":(true|false),'
    rb'"record":'
)

_R = TypeVar("_R")

Progress = Callable[[str, int, int], None]
"""Called as (phase, done, total) while a long phase runs (bytes of the file being read)."""


# == export ======================================================================================


@dataclass(frozen=True)
class ExportSummary:
    """What a bundle holds."""

    path: Path
    logs: list[str]
    leaves: int
    entries: int
    audit_events: int
    queued: int


class _HashingFile:
    """A file written line by line whose SHA-256, size and line count are kept as it goes."""

    def __init__(self, path: Path) -> None:
        self.name = path.name
        self.file: IO[bytes] = path.open("wb")
        self.sha = hashlib.sha256()
        self.bytes = 0
        self.lines = 0

    def line(self, data: bytes) -> None:
        data += b"\n"
        self.file.write(data)
        self.sha.update(data)
        self.bytes += len(data)
        self.lines += data.count(b"\n")

    def close(self) -> dict[str, Any]:
        self.file.close()
        return {"sha256": self.sha.hexdigest(), "bytes": self.bytes, "lines": self.lines}


def export_database(engine: Engine, out: Path, *, now: datetime) -> ExportSummary:
    """Export from one read-only snapshot: REPEATABLE READ on PostgreSQL (writers go on), one
    transaction on SQLite (which holds writers off until the export ends)."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            return export_bundle(conn, out, now=now)


def export_bundle(conn: Connection, out: Path, *, now: datetime) -> ExportSummary:
    """Write the bundle of everything in the database to the empty directory ``out``.

    Run it in one transaction (REPEATABLE READ on PostgreSQL) so the files agree with each other.
    """
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise BundleError(f"{out} is not empty: export into a new directory")
    files = {name: _HashingFile(out / name) for name in FILES}
    logs = SqlLogStore(conn).logs()
    keys = {
        "logs": [
            {"origin": origin, "vkey": vkey, "previous_origin": previous}
            for origin, vkey, previous in logs
        ],
        "trust_policy": TRUST_POLICY,
    }
    files["keys.json"].line(json.dumps(keys, indent=2, ensure_ascii=False).encode())
    leaves = sum(_export_log(conn, origin, files) for origin, _, _ in logs)
    queued = _export_unlogged_entries(conn, files["entries.jsonl"])
    events = files["audit.jsonl"].lines + _export_unlogged_events(conn, files["audit.jsonl"])
    _export_checkpoints(conn, [origin for origin, _, _ in logs], files["checkpoints.jsonl"])
    _export_caches(conn, files["balances.jsonl"], files["lots.jsonl"])
    for line in export_contracts(conn):
        files["contracts.jsonl"].line(line)
    for line in export_statements(conn):
        files["statements.jsonl"].line(line)
    entries = files["entries.jsonl"].lines
    manifest = {
        "format": FORMAT,
        "created_at": format_timestamp(now),
        "logs": [origin for origin, _, _ in logs],
        "files": {name: writer.close() for name, writer in files.items()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return ExportSummary(out, manifest["logs"], leaves, entries, events, queued)


def _export_log(conn: Connection, log: str, files: dict[str, _HashingFile]) -> int:
    """The log's leaves, and in the same order the entries and audit events they record."""
    count, last = 0, -1
    store = SqlLedgerStore(conn)
    while True:
        rows = conn.execute(
            sa.select(t.leaves.c.idx, t.leaves.c.entry_id, t.leaves.c.data)
            .where(t.leaves.c.log == log, t.leaves.c.idx > last)
            .order_by(t.leaves.c.idx)
            .limit(_BATCH)
        ).all()
        if not rows:
            return count
        for row in rows:
            files["leaves.jsonl"].line(_leaf_line(log, row.idx, bytes(row.data)))
        ids = [row.entry_id for row in rows if row.entry_id is not None]
        index_of = {row.entry_id: row.idx for row in rows}
        for entry in sorted(store.load_entries(ids), key=lambda e: index_of[e.id]):
            record = _record_bytes(entry_record(entry))
            files["entries.jsonl"].line(_record_line(index_of[entry.id], log, False, record))
        _export_logged_events(conn, log, last, rows[-1].idx, files["audit.jsonl"])
        count, last = count + len(rows), rows[-1].idx


def _export_logged_events(
    conn: Connection, log: str, after: int, upto: int, out: _HashingFile
) -> None:
    link = at.audit_leaves.c
    query = (
        sa.select(at.audit_events, link.idx)
        .join(at.audit_leaves, link.event_id == at.audit_events.c.id)
        .where(link.log == log, link.idx > after, link.idx <= upto)
        .order_by(link.idx)
    )
    for row in conn.execute(query):
        out.line(_record_line(row.idx, log, False, _record_bytes(event_from_row(row).record())))


def _export_unlogged_entries(conn: Connection, out: _HashingFile) -> int:
    """Queued entries (in queue order), then entries with neither a leaf nor a queue row."""
    store = SqlLedgerStore(conn)
    queued_ids = list(
        conn.scalars(sa.select(t.journal_queue.c.entry_id).order_by(t.journal_queue.c.seq))
    )
    dropped = list(
        conn.scalars(
            sa.select(t.entries.c.id)
            .outerjoin(t.leaves, t.leaves.c.entry_id == t.entries.c.id)
            .outerjoin(t.journal_queue, t.journal_queue.c.entry_id == t.entries.c.id)
            .where(t.leaves.c.entry_id.is_(None), t.journal_queue.c.entry_id.is_(None))
            .order_by(t.entries.c.id)
        )
    )
    for ids, queued in ((queued_ids, True), (dropped, False)):
        for start in range(0, len(ids), _BATCH):
            for entry in store.load_entries(ids[start : start + _BATCH]):
                out.line(_record_line(None, None, queued, _record_bytes(entry_record(entry))))
    return len(queued_ids)


def _export_unlogged_events(conn: Connection, out: _HashingFile) -> int:
    events = at.audit_events
    queued = (
        sa.select(events)
        .join(at.audit_queue, at.audit_queue.c.event_id == events.c.id)
        .order_by(at.audit_queue.c.seq)
    )
    linked = sa.select(at.audit_leaves.c.event_id).where(at.audit_leaves.c.event_id == events.c.id)
    in_queue = sa.select(at.audit_queue.c.event_id).where(at.audit_queue.c.event_id == events.c.id)
    dropped = sa.select(events).where(~linked.exists(), ~in_queue.exists()).order_by(events.c.seq)
    count = 0
    for query, is_queued in ((queued, True), (dropped, False)):
        for row in conn.execute(query):
            record = _record_bytes(event_from_row(row).record())
            out.line(_record_line(None, None, is_queued, record))
            count += 1
    return count


def _export_checkpoints(conn: Connection, logs: list[str], out: _HashingFile) -> None:
    for log in logs:
        query = (
            sa.select(t.checkpoints.c.size, t.checkpoints.c.note)
            .where(t.checkpoints.c.log == log)
            .order_by(t.checkpoints.c.size)
        )
        for size, note in conn.execute(query):
            out.line(_json({"log": log, "size": size, "note": note}))


def _export_caches(conn: Connection, balances: _HashingFile, lots: _HashingFile) -> None:
    query = sa.select(t.balances).order_by(t.balances.c.account, t.balances.c.shard)
    for row in conn.execute(query):
        balances.line(_json({"account": row.account, "balance": row.balance, "shard": row.shard}))
    for row in conn.execute(sa.select(t.lots).order_by(t.lots.c.id)):
        lots.line(_json(_lot_line(row)))


def _lot_line(row: Any) -> dict[str, Any]:
    def stamp(value: datetime | None) -> str | None:
        return format_timestamp(value) if value is not None else None

    return {
        "id": format_uuid(row.id),
        "opened_by": format_uuid(row.opened_by),
        "member": row.member,
        "funder": row.funder,
        "amount": row.amount,
        "earned_at": stamp(row.earned_at),
        "expires_at": stamp(row.expires_at),
        "pending_until": stamp(row.pending_until),
        "price_version": row.price_version,
        "remaining": row.remaining,
        "pending": bool(row.pending),
    }


def _leaf_line(log: str, index: int, data: bytes) -> bytes:
    if data and b"\n" not in data and not data.startswith(b'{"index":'):
        return data
    escape = {"index": index, "leaf_base64": base64.b64encode(data).decode(), "log": log}
    return _json(escape)


def _record_bytes(record: dict[str, Any]) -> bytes:
    """The canonical bytes of a record, as a leaf holds them (canonical_bytes takes the C
    encoder where that is exact)."""
    try:
        return canonical_bytes(record)
    except LedgerError:  # outside the profile: written as is; the verifier will say it differs
        text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return text.encode()


def _record_line(index: int | None, log: str | None, queued: bool, record: bytes) -> bytes:
    head = json.dumps(index).encode(), json.dumps(log, ensure_ascii=False).encode()
    return b'{"index":%s,"log":%s,"queued":%s,"record":%s}' % (
        head[0],
        head[1],
        b"true" if queued else b"false",
        record,
    )


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# == verification ================================================================================


def verify_bundle(
    path: Path,
    trusted: list[NoteVerifier] | None,
    *,
    workers: int = 1,
    progress: Progress | None = None,
    buckets: int = BUCKETS,
) -> Report:
    """Verify the bundle in ``path`` with nothing but the ``trusted`` log keys; every finding.

    ``trusted=None`` trusts the bundle's own keys.json, which proves nothing against its author
    (the report says so). ``workers`` > 1 checks leaves in that many processes.
    """
    return _BundleVerifier(Path(path), trusted, workers, progress, buckets).run()


@dataclass
class _Line:
    """One line of entries.jsonl or audit.jsonl."""

    key: tuple[int, int] | None
    log: str | None
    index: int | None
    queued: bool
    record: bytes | None
    line_no: int


@dataclass
class _LogState:
    """Where the pass over one log's leaves stands."""

    origin: str
    previous: str | None
    checkpoints: dict[int, list[bytes]] = field(default_factory=dict)
    """Verified checkpoints: size -> the roots signed at that size."""
    count: int = 0
    expected: int = 0
    missing: list[list[int]] = field(default_factory=list)
    last_index: int = -1
    last_hash: bytes = GENESIS_PREV
    last_stamp: str = ""
    peaks: list[tuple[int, bytes]] = field(default_factory=list)
    intact: bool = True
    """No leaf-level finding so far: the chain and the sequence hold."""
    matched: list[int] = field(default_factory=list)
    mismatched: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    start: dict[str, Any] | None = None
    sizes: list[int] | None = None
    """The signed sizes, sorted (once the first run needs them)."""


class _BundleVerifier:
    def __init__(
        self,
        path: Path,
        trusted: list[NoteVerifier] | None,
        workers: int,
        progress: Progress | None,
        buckets: int,
    ) -> None:
        self.path = path
        self.trusted = trusted
        self.workers = max(1, workers)
        self.pool: ProcessPoolExecutor | None = None
        self.progress = progress or (lambda phase, done, total: None)
        self.secret = os.urandom(32)
        self.buckets = buckets
        self.findings: list[Finding] = []
        self.notes: list[str] = []
        self.tallies = {
            name: Tally(name, self.secret, buckets)
            for name in ("balance", "lot-state", "lot-terms", "cover", "pending")
        }
        self.books = {"POINTS": 0, "EUR": 0}
        self.logs: dict[str, _LogState] = {}
        self.order: dict[str, int] = {}
        self.leaves = 0
        self.read_digests: dict[str, Future[str | None]] = {
            name: Future() for name in ("entries.jsonl", "leaves.jsonl")
        }
        """SHA-256 (hex) of each file, from the main thread's reading of it, or None when that
        reading did not cover the file."""

    # -- orchestration ------------------------------------------------------------------------

    def run(self) -> Report:
        if not self.path.is_dir():
            raise BundleError(f"{self.path} is not a bundle directory")
        self._start_workers()  # first: no thread of ours runs yet
        try:
            with ThreadPoolExecutor(1) as hasher:
                manifest = hasher.submit(self._check_manifest)
                try:
                    keyring = self._load_keys()
                    self._load_checkpoints(keyring)
                    entries = _Joined(
                        self.path / "entries.jsonl",
                        self._ordinal,
                        self._format_error,
                        self.read_digests["entries.jsonl"],
                    )
                    events = _Joined(self.path / "audit.jsonl", self._ordinal, self._format_error)
                    self._scan_leaves(entries, events, keyring)
                    self._leftover_entries(entries)
                    self._leftover_events(events)
                finally:  # a reading that stopped short: the manifest's thread reads the file
                    for digest in self.read_digests.values():
                        if not digest.done():
                            digest.set_result(None)
                self._read_caches()
                self._stop_workers()
                self._compare_tallies()
                self._check_statements(keyring)
                if any(self.books.values()):
                    books = self.books.items()
                    self.findings += [Finding("book-sum", b, 0, v) for b, v in books if v]
                findings = manifest.result() + self.findings  # the files first, as they are read
        finally:
            self._stop_workers()
        return Report(list(self.logs), self.leaves, findings, self.notes, source="bundle")

    def _start_workers(self) -> None:
        """The pool of worker processes, when more than one is asked for, started now. On Linux
        they are forked from this process as it stands (no interpreter to start, no module to
        import again), before the manifest's thread exists; elsewhere they are spawned."""
        if self.workers == 1:
            return
        method = "fork" if sys.platform == "linux" else "spawn"
        self.pool = ProcessPoolExecutor(self.workers, mp_context=get_context(method))
        self.pool.submit(int).result()  # with fork, every worker starts here

    def _stop_workers(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def _format_error(self, where: str, why: str) -> None:
        self.findings.append(Finding("bundle-format", where, "a well-formed line", why))

    def _ordinal(self, log: str) -> int:
        if log not in self.order:
            self.order[log] = len(self.order) + 1_000_000  # unknown logs sort after the known
        return self.order[log]

    # -- manifest and keys --------------------------------------------------------------------

    def _check_manifest(self) -> list[Finding]:
        """Every file against the manifest's SHA-256. Runs in a thread beside the other checks
        (hashlib hashes large blocks without holding the GIL), so it returns its findings. The
        two largest files, ``leaves.jsonl`` and ``entries.jsonl``, the main thread reads whole
        anyway: it hashes them as it reads (:attr:`read_digests`), and this thread waits for
        their digests instead of reading them again (or hashes a file itself, if that reading
        stopped short)."""
        found: list[Finding] = []

        def format_error(where: str, why: str) -> None:
            found.append(Finding("bundle-format", where, "a well-formed line", why))

        try:
            manifest = json.loads((self.path / "manifest.json").read_text(encoding="utf-8"))
            listed = dict(manifest["files"])
            if manifest.get("format") != FORMAT:
                format_error("manifest.json", f"format {manifest.get('format')!r}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            format_error("manifest.json", str(exc))
            listed = {}
        present = {p.name for p in self.path.iterdir() if p.name != "manifest.json"}
        for name in sorted(present - set(listed)):
            found.append(Finding("manifest-extra", name, "not in the bundle", "present"))
        total = sum(int(info.get("bytes", 0)) for info in listed.values())
        done = 0

        def sha256_of(file: Path) -> str:
            nonlocal done
            digest = hashlib.sha256()
            for block in _file_blocks(file):
                digest.update(block)
                done += len(block)
                self.progress("manifest", done, total)
            return digest.hexdigest()

        on_disk = {name for name in listed if name in present and (self.path / name).is_file()}
        # The files the main thread reads whole last: their digests come from that reading.
        later = sorted(on_disk & set(self.read_digests))
        actual = {name: sha256_of(self.path / name) for name in sorted(on_disk - set(later))}
        for name in later:
            read = self.read_digests[name].result()
            if read is None:
                actual[name] = sha256_of(self.path / name)
                continue
            actual[name] = read
            done += (self.path / name).stat().st_size
            self.progress("manifest", done, total)
        for name, info in sorted(listed.items()):
            if name not in on_disk:
                found.append(Finding("manifest-missing", name, info.get("sha256"), None))
            elif actual[name] != info.get("sha256"):
                found.append(Finding("manifest-hash", name, info.get("sha256"), actual[name]))
        for name in FILES:
            if not (self.path / name).is_file():
                format_error(name, "missing")
        return found

    def _load_keys(self) -> list[NoteVerifier]:
        try:
            keys = json.loads((self.path / "keys.json").read_text(encoding="utf-8"))
            claimed = [(d["origin"], d["vkey"], d.get("previous_origin")) for d in keys["logs"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._format_error("keys.json", str(exc))
            claimed = []
        for origin, _, previous in claimed:
            self.order.setdefault(origin, len(self.order))
            self.logs[origin] = _LogState(origin, previous)
        if self.trusted is not None:
            keyring = list(self.trusted)
            for origin, vkey, _ in claimed:
                mine = {key.vkey for key in own_keys(keyring, origin)}
                if mine and vkey not in mine:
                    self.findings.append(Finding("log-key", origin, sorted(mine), vkey))
            return keyring
        self.notes.append(
            "trusting the bundle's own keys.json: this proves nothing against the bundle's "
            "author; pass the log keys you obtained out of band (--key)"
        )
        keyring = []
        for origin, vkey, _ in claimed:
            try:
                keyring.append(NoteVerifier.from_vkey(vkey))
            except LedgerError as exc:
                self._format_error(f"keys.json:{origin}", exc.message)
        return keyring

    def _load_checkpoints(self, keyring: list[NoteVerifier]) -> None:
        """Verify every checkpoint's signature; keep (size, root) of the verified ones.

        Memory: one root per checkpoint (the integrator signs one per batch, not per leaf).
        """
        for line_no, line in _lines(self.path / "checkpoints.jsonl"):
            try:
                item = json.loads(line)
                log, size, note = str(item["log"]), int(item["size"]), str(item["note"])
            except (ValueError, KeyError, TypeError) as exc:
                self._format_error(f"checkpoints.jsonl:{line_no}", str(exc))
                continue
            subject = f"{log}@{size}"
            try:
                checkpoint, _ = open_checkpoint(note, own_keys(keyring, log), origin=log)
            except LedgerError as exc:
                found = exc.message
                self.findings.append(Finding("checkpoint-signature", subject, "valid", found))
                continue
            if checkpoint.size != size:
                found = checkpoint.size
                self.findings.append(Finding("checkpoint-fields", subject, size, found))
            state = self.logs.get(log)
            if state is None:
                self.findings.append(Finding("leaf-log", subject, "a log in keys.json", log))
                continue
            roots = state.checkpoints.setdefault(checkpoint.size, [])
            if checkpoint.root not in roots:
                roots.append(checkpoint.root)

    # -- the pass over the leaves -------------------------------------------------------------

    def _scan_leaves(self, entries: _Joined, events: _Joined, keyring: list[NoteVerifier]) -> None:
        current: _LogState | None = None
        finished: set[str] = set()
        for chunk, result in self._chunks():
            self.findings += result.findings
            for name, folded in result.folded.items():
                self.tallies[name].add("log", folded)
            for book, total in result.books.items():
                self.books[book] += total
            leaves = result.leaves
            run = result.run
            if run is not None:
                if self._joins(current, run.log, finished):
                    if current is None or current.origin != run.log:
                        current = self._switch(current, run.log, finished, keyring, 0)
                    if self._take_run(current, run, chunk, entries, events):
                        continue
                # The run does not simply continue its log: leaf by leaf, as any other chunk.
                args = (chunk.lines(), chunk.first_line, self.secret, self.buckets)
                leaves = scan_chunk(*args, runs=False).leaves
            for scanned in leaves:
                line_no, log = scanned[0], scanned[1]
                if current is None or (log is not None and log != current.origin):
                    current = self._switch(current, log, finished, keyring, line_no)
                self._take_leaf(current, scanned, chunk, entries, events)
        if current is not None:
            self._finish(current, keyring)
            finished.add(current.origin)
        for state in self.logs.values():
            if state.origin not in finished:
                self._finish(state, keyring)

    def _joins(self, current: _LogState | None, log: str, finished: set[str]) -> bool:
        """Whether a leaf of ``log`` continues ``current`` or starts the next log without a
        finding (as :meth:`_switch` would take it)."""
        if current is not None and current.origin == log:
            return True
        if log not in self.logs or log in finished:
            return False
        return current is None or self.order[log] > self.order[current.origin]

    def _take_run(
        self, state: _LogState, run: Run, chunk: _Chunk, entries: _Joined, events: _Joined
    ) -> bool:
        """:meth:`_take_leaf` for every leaf of a run at once, when the run starts exactly where
        the log stands (else nothing is done, and False returned)."""
        count = len(run.kinds)
        if not (
            state.origin == run.log
            and not state.missing
            and state.count == state.expected == state.last_index + 1 == run.first
            and run.prev == state.last_hash
            and run.first_stamp >= state.last_stamp
        ):
            return False
        hashes = run.hashes
        self._grow(state, hashes)
        self.leaves += count
        state.last_index = run.first + count - 1
        state.expected = run.first + count
        state.last_hash = hashes[-32:]
        state.last_stamp = run.last_stamp
        self._records(state, run, chunk, entries, events)
        return True

    def _grow(self, state: _LogState, hashes: bytes) -> None:
        """Push leaf hashes (32 bytes each, end to end) onto the tree, checking the signed roots
        at every size on the way."""
        start = state.count
        end = start + len(hashes) // 32
        if state.sizes is None:
            state.sizes = sorted(state.checkpoints)
        sizes = state.sizes
        done = 0
        for size in sizes[bisect_right(sizes, start) : bisect_right(sizes, end)]:
            _push_many(state.peaks, hashes[32 * done : 32 * (size - start)])
            done = size - start
            state.count = size
            self._roots_at(state, size)
        _push_many(state.peaks, hashes[32 * done :])
        state.count = end

    def _records(
        self, state: _LogState, run: Run, chunk: _Chunk, entries: _Joined, events: _Joined
    ) -> None:
        """Each leaf's record against the tables' (entries.jsonl, audit.jsonl): as a rule, the
        next lines there are exactly the lines the exporter writes for these leaves, which the
        scan built (:attr:`Run.entries`), compared in one piece; else leaf by leaf."""
        origin, first = state.origin, run.first
        log_json = plain_json(origin)
        for letter, joined, what, lines in (
            ("E", entries, "entry", run.entries),
            ("A", events, "audit", run.events),
        ):
            if letter not in run.kinds or (lines is not None and joined.match_lines(lines)):
                continue
            mine = [n for n, kind in enumerate(run.kinds) if kind == letter]
            leaves = chunk.lines()
            for n in mine:
                body = body_slice(leaves[n])
                line = None if log_json is None else record_line(first + n, log_json, body)
                self._record(state, joined, what, first + n, body, line, n, chunk)

    def _record(
        self,
        state: _LogState,
        joined: _Joined,
        what: str,
        index: int,
        body: bytes,
        line: bytes | None,
        n: int,
        chunk: _Chunk,
    ) -> None:
        """One leaf's record, when the run's could not be taken in one piece: ``line`` is the
        line the exporter writes for it, when the log's name lets it be built."""
        key = (self.order[state.origin], index)
        if line is not None and joined.match(key, line, body):
            return
        digest = hashlib.blake2b(body, digest_size=16).digest()
        found = joined.take(key)
        subject = f"{state.origin}#{index}"
        self._compare(subject, found, digest, chunk, chunk.first_line + n, what)

    def _switch(
        self,
        current: _LogState | None,
        log: str | None,
        finished: set[str],
        keyring: list[NoteVerifier],
        line_no: int,
    ) -> _LogState:
        """Move on to ``log``'s section of the file (logs follow keys.json order)."""
        if current is None and log is None:
            log = next((o for o in self.logs if o not in finished), None)
        known = log in self.logs and log not in finished
        if current is not None and not (known and self.order[log] > self.order[current.origin]):
            # A leaf naming another log inside this log's section: counted where it stands.
            self.findings.append(
                Finding("leaf-log", f"leaves.jsonl:{line_no}", current.origin, log)
            )
            current.intact = False
            return current
        if current is not None:
            self._finish(current, keyring)
            finished.add(current.origin)
        if log is None or log not in self.logs:
            self.findings.append(Finding("leaf-log", f"leaves.jsonl:{line_no}", "a known log", log))
            log = log if log is not None else "(unreadable)"
            self.order.setdefault(log, len(self.order) + 1_000_000)
            self.logs[log] = _LogState(log, None)
        return self.logs[log]

    def _take_leaf(
        self, state: _LogState, scanned: Any, chunk: _Chunk, entries: _Joined, events: _Joined
    ) -> None:
        _, log, index, prev, leaf_hash, stamp, kind, digest, extra = scanned
        self.leaves += 1
        if prev is None or log != state.origin:  # unreadable: it still holds its place
            state.intact = False
            index = state.expected
            state.expected += 1
        else:
            self._sequence(state, index)
            self._chain(state, index, prev, stamp)
        state.last_index, state.last_hash = index, leaf_hash
        _push(state.peaks, leaf_hash)
        state.count += 1
        self._roots_at(state, state.count)
        if kind == LOG_START and state.count == 1:
            state.start = extra
        subject = f"{state.origin}#{index}"
        if kind in ENTRY_KINDS:
            line = entries.take((self.order[state.origin], index))
            self._compare(subject, line, digest, chunk, scanned[0], "entry")
        elif kind == AUDIT:
            line = events.take((self.order[state.origin], index))
            self._compare(subject, line, digest, chunk, scanned[0], "audit")

    def _sequence(self, state: _LogState, index: int) -> None:
        subject = f"{state.origin}#{index}"
        if index == state.expected:
            state.expected += 1
        elif index > state.expected:
            state.missing.append([state.expected, index])
            state.expected = index + 1
            state.intact = False
        elif _fill(state.missing, index):
            after = f"after #{state.last_index}"
            self.findings.append(Finding("leaf-order", subject, f"before #{index + 1}", after))
            state.intact = False
        else:
            self.findings.append(Finding("leaf-duplicate", subject, "a new index", index))
            state.intact = False

    def _chain(self, state: _LogState, index: int, prev: bytes, stamp: str) -> None:
        subject = f"{state.origin}#{index}"
        if index == state.last_index + 1 and prev != state.last_hash:
            expected = state.last_hash.hex()
            self.findings.append(Finding("leaf-chain", subject, expected, prev.hex()))
            state.intact = False
        if stamp < state.last_stamp:
            expected = f">= {state.last_stamp}"
            self.findings.append(Finding("leaf-backdated", subject, expected, stamp))
        state.last_stamp = max(stamp, state.last_stamp)

    def _roots_at(self, state: _LogState, size: int) -> None:
        roots = state.checkpoints.get(size)
        if not roots:
            return
        root = _root(state.peaks)
        for signed in roots:
            if signed == root:
                state.matched.append(size)
            else:
                state.mismatched.append((size, root, signed))

    def _compare(
        self,
        subject: str,
        line: _Line | None,
        digest: bytes,
        chunk: _Chunk,
        line_no: int,
        what: str,
    ) -> None:
        if line is None:
            check = "entry-unrecorded" if what == "entry" else "audit-missing"
            self.findings.append(Finding(check, subject, f"a row in {what} tables", None))
            return
        record = line.record or b""
        if hashlib.blake2b(record, digest_size=16).digest() == digest:
            return
        if what == "audit":
            self.findings.append(Finding("audit-altered", subject, "the leaf's event", "differs"))
            return
        leaf_body = _leaf_body(chunk.line(line_no))
        table = _loads(record)
        found = table.get("id") if isinstance(table, dict) else None
        self.findings.append(
            Finding("entry-altered", subject, "journal tables equal to the leaf", found)
        )
        for check in entry_differences(leaf_body, table):
            if check != "entry-altered":
                self.findings.append(Finding(check, subject, "the leaf's postings", found))

    def _finish(self, state: _LogState, keyring: list[NoteVerifier]) -> None:
        """The checks that need the whole log: gaps, roots beyond it, forks, rotation."""
        log = state.origin
        for start, end in state.missing:
            subject = f"{log}#{start}" if end - start == 1 else f"{log}#{start}-{end - 1}"
            self.findings.append(Finding("leaf-gap", subject, f"leaves {start}..{end - 1}", None))
        if 0 in state.checkpoints:
            self._roots_at_empty(state)
        for size in sorted(s for s in state.checkpoints if s > state.count):
            self.findings.append(
                Finding("checkpoint-beyond-log", f"{log}@{size}", state.count, size)
            )
        signed = [s for s in state.checkpoints if s <= state.count]
        if state.count and (not signed or max(signed) < state.count):
            last = max(signed, default=0)
            subject = f"{log}#{last}-{state.count - 1}"
            self.findings.append(Finding("log-unsigned", subject, "a signed checkpoint", None))
        self._forks(state)
        if state.previous is not None:
            self._rotation(state, keyring)

    def _roots_at_empty(self, state: _LogState) -> None:
        for signed in state.checkpoints[0]:
            if signed != merkle.EMPTY_ROOT:
                found = signed.hex()
                self.findings.append(
                    Finding("checkpoint-root", f"{state.origin}@0", merkle.EMPTY_ROOT.hex(), found)
                )

    def _forks(self, state: _LogState) -> None:
        """A mismatching root with an authentic tree at the same or a later size is a fork; one
        with none after it is a changed log — re-chained, if the chain itself holds."""
        latest_match = max(state.matched, default=-1)
        rewritten = []
        for size, root, signed in state.mismatched:
            subject = f"{state.origin}@{size}"
            if size <= latest_match:
                self.findings.append(Finding("checkpoint-fork", subject, root.hex(), signed.hex()))
            else:
                self.findings.append(Finding("checkpoint-root", subject, root.hex(), signed.hex()))
                rewritten.append(size)
        if rewritten and state.intact:
            good = max((s for s in state.matched if s < min(rewritten)), default=0)
            self.findings.append(
                Finding(
                    "log-rewritten",
                    f"{state.origin}#{good}-{min(rewritten) - 1}",
                    "the signed tree",
                    "a chain that holds under other roots: leaves inserted or removed there",
                )
            )

    def _rotation(self, state: _LogState, keyring: list[NoteVerifier]) -> None:
        """The first leaf of a rotated log quotes the old log's final checkpoint (§3.5)."""
        old = self.logs.get(state.previous or "")
        start = state.start or {}
        problem = None
        if old is None or start.get("previous_log") != state.previous:
            problem = "a LOG_START leaf naming the previous log"
        else:
            try:
                quoted, _ = open_checkpoint(
                    str(start.get("previous_checkpoint")),
                    own_keys(keyring, old.origin),
                    origin=old.origin,
                )
                if (quoted.size, quoted.root) != (old.count, _root(old.peaks)):
                    problem = "the previous log's final checkpoint"
            except LedgerError as exc:
                problem = exc.message
        if problem:
            self.findings.append(Finding("rotation-link", f"{state.origin}#0", problem, None))

    # -- what is left of the tables ------------------------------------------------------------

    def _leftover_entries(self, entries: _Joined) -> None:
        effects, findings = Effects(), []
        queued = 0
        for line in entries.rest():
            body = _loads(line.record or b"")
            if line.queued and isinstance(body, dict):
                queued += 1
                subject = f"queued {body.get('id')}"
                check_entry(body, subject, effects, findings)
            else:
                where = f"{line.log}#{line.index}" if line.log is not None else "no leaf"
                found = _id_or_line(body, "entries.jsonl", line.line_no)
                self.findings.append(Finding("entry-not-logged", found, where, None))
        self.findings += findings
        for name, values in effects.values.items():
            self.tallies[name].add_values("log", values)
        for book, total in effects.books.items():
            self.books[book] += total
        if queued:
            self.notes.append(
                f"{queued} entries were queued for the log at export: their effects are counted "
                "in the caches, but nothing signed covers them yet"
            )

    def _leftover_events(self, events: _Joined) -> None:
        queued = 0
        for line in events.rest():
            if line.queued:
                queued += 1
                continue
            body = _loads(line.record or b"")
            found = _id_or_line(body, "audit.jsonl", line.line_no)
            where = f"{line.log}#{line.index}" if line.log is not None else "no leaf"
            self.findings.append(Finding("audit-not-logged", found, where, None))
        if queued:
            self.notes.append(f"{queued} audit events were queued for the log at export")

    # -- statements ----------------------------------------------------------------------------

    def _check_statements(self, keyring: list[NoteVerifier]) -> None:
        """Each period's statements against their hashes, notes, close and contracts."""
        checker = BundleStatements(keyring)
        for line_no, line in _lines(self.path / "contracts.jsonl"):
            problem = checker.add_contract(line)
            if problem is not None:
                self._format_error(f"contracts.jsonl:{line_no}", problem)
        verified = {origin: state.checkpoints for origin, state in self.logs.items()}
        for line_no, line in _lines(self.path / "statements.jsonl"):
            problem = checker.check(line, verified)
            if problem is not None:
                self._format_error(f"statements.jsonl:{line_no}", problem)
        self.findings += checker.findings
        if checker.unsigned:
            self.notes.append(
                f"{checker.unsigned} statements carry no signed note yet (none was asked for): "
                "they are checked against their recorded hashes, their run and their lines"
            )

    # -- caches --------------------------------------------------------------------------------

    def _read_caches(self) -> None:
        """Fold the cached balances and lots into the tallies' cache side, a chunk at a time (in
        the worker processes too, when there are several)."""
        for name in ("balances.jsonl", "lots.jsonl"):
            for _, result in self._map_chunks(name, fold_cache_chunk, name):
                for tally, folded in result.folded.items():
                    self.tallies[tally].add("cache", folded)
                self.findings += result.findings
                for where, why in result.errors:
                    self._format_error(where, why)

    def _each_balance(self, take: Callable[[str, int], None]) -> None:
        for _, line in _lines(self.path / "balances.jsonl"):
            found = balance_row(line)
            if not isinstance(found, str):
                take(*found)

    def _each_lot(self, take: Callable[[dict[str, Any]], None]) -> None:
        for _, line in _lines(self.path / "lots.jsonl"):
            row = lot_row(line)
            if row is not None:
                take(row)

    def _compare_tallies(self) -> None:
        """Name the keys of every bucket whose two sides disagree (a second, filtered read)."""
        bad = {name: tally.bad_buckets() for name, tally in self.tallies.items()}
        if not any(bad.values()):
            return
        wanted = {name: buckets for name, buckets in bad.items() if buckets}
        from_log = self._exact_from_log(wanted)
        from_cache = self._exact_from_cache(wanted)
        for name in wanted:
            for key, logged, cached in differences(from_log[name], from_cache[name]):
                self.findings.append(_cache_finding(name, key, logged, cached))

    def _exact_from_log(self, wanted: dict[str, frozenset[int]]) -> dict[str, dict[str, int]]:
        effects, ignored = Effects(), []
        for _, line in _lines(self.path / "leaves.jsonl"):
            body = _leaf_body(line)
            if isinstance(body, dict) and body.get("kind") in ENTRY_KINDS:
                check_entry(body, "", effects, ignored)
        for line in _Joined(self.path / "entries.jsonl", self._ordinal, lambda *_: None).all():
            body = _loads(line.record or b"")
            if line.queued and isinstance(body, dict):
                check_entry(body, "", effects, ignored)
        return {
            name: {k: v for k, v in effects.values[name].items() if self.tallies[name].owns(k, b)}
            for name, b in wanted.items()
        }

    def _exact_from_cache(self, wanted: dict[str, frozenset[int]]) -> dict[str, dict[str, int]]:
        exact: dict[str, dict[str, int]] = {name: {} for name in wanted}

        def keep(name: str, key: str, value: int) -> None:
            if name in wanted and self.tallies[name].owns(key, wanted[name]):
                exact[name][key] = exact[name].get(key, 0) + value

        self._each_balance(lambda account, balance: keep("balance", account, balance))

        def lot(row: dict[str, Any]) -> None:
            for name, key, value in lot_cache_values(row):
                keep(name, key, value)

        self._each_lot(lot)
        return exact

    # -- reading leaves in chunks, in this process or in several ------------------------------

    def _chunks(self) -> Iterator[tuple[_Chunk, ChunkResult]]:
        scan = partial(scan_chunk, locate=partial(_locate, self.path))
        yield from self._map_chunks("leaves.jsonl", scan)

    def _map_chunks(
        self, name: str, work: Callable[..., _R], *head: Any
    ) -> Iterator[tuple[_Chunk, _R]]:
        """``work(*head, lines, first_line, secret, buckets)`` over the chunks of a file, in file
        order: in this process, or in the pool with at most 2 × workers chunks in flight (so
        memory stays flat), reporting progress in bytes. A worker reads its chunk from the file
        itself: only its byte range goes to it, and only small results come back."""
        path = self.path / name
        total = path.stat().st_size if path.exists() else 0
        phase = name.removesuffix(".jsonl")
        done = 0
        pending: deque[tuple[_Chunk, Future[_R]]] = deque()
        for chunk in _byte_chunks(path, _CHUNK_BYTES, self.read_digests.get(name)):
            tail = (self.secret, self.buckets)
            if self.pool is None:
                result = work(*head, chunk.lines(), chunk.first_line, *tail)
                done += chunk.length
                yield chunk, result
                self.progress(phase, done, total)
                continue
            where = (str(path), chunk.offset, chunk.length, chunk.first_line)
            pending.append((chunk, self.pool.submit(_on_range, work, head, *where, *tail)))
            if len(pending) > 2 * self.workers:
                chunk_done, future = pending.popleft()
                done += chunk_done.length
                yield chunk_done, future.result()
                self.progress(phase, done, total)
        while pending:
            chunk_done, future = pending.popleft()
            done += chunk_done.length
            yield chunk_done, future.result()
            self.progress(phase, done, total)


@dataclass
class _Chunk:
    """Whole lines of a bundle file: where they start, and the first one's number (from 1).

    The lines are the first ``length`` bytes of ``block``, as it was read: cut from it only
    when they are wanted (a worker reads its chunk from the file itself)."""

    offset: int
    block: bytes
    first_line: int
    length: int
    _split: list[bytes] | None = None

    @property
    def data(self) -> bytes:
        return self.block if self.length == len(self.block) else self.block[: self.length]

    def lines(self) -> list[bytes]:
        """The lines without their newlines, as :func:`_lines` reads them (kept while the chunk
        is checked: its records are compared after its leaves)."""
        if self._split is None:
            self._split = _split_lines(self.data)
        return self._split

    def line(self, line_no: int) -> bytes:
        """One line, by its number in the file (the split is kept for the next finding)."""
        if self._split is None:
            self._split = _split_lines(self.data)
        return self._split[line_no - self.first_line]


def _byte_chunks(
    path: Path, size: int = _CHUNK_BYTES, read_digest: Future[str | None] | None = None
) -> Iterator[_Chunk]:
    """A file as consecutive chunks of whole lines of about ``size`` bytes; with
    ``read_digest``, the SHA-256 of the whole file is put there once the last chunk is cut
    (None if the file is missing)."""
    digest = hashlib.sha256()
    if not path.exists():
        if read_digest is not None:
            read_digest.set_result(None)
        return
    with path.open("rb") as handle:
        offset, first = 0, 1
        while block := handle.read(size):
            cut = block.rfind(b"\n") + 1
            while not cut:  # a line longer than a chunk: read on to its end, or the file's
                more = handle.read(size)
                block += more
                cut = block.rfind(b"\n") + 1 if more else len(block)
            if read_digest is not None:
                with memoryview(block)[:cut] as view:
                    digest.update(view)
            yield _Chunk(offset, block, first, cut)
            first += LINE_COUNTS[-1](block, cut)
            offset += cut
            handle.seek(offset)  # the next chunk starts after the last whole line
    if read_digest is not None:
        read_digest.set_result(digest.hexdigest())


def _file_blocks(path: Path, size: int = 1 << 22) -> Iterator[memoryview]:
    """A file's bytes in blocks, read into one buffer that each block reuses (no allocation per
    block; a memory map would save the copy, but turns a file truncated meanwhile into a
    crash). Each block is valid until the next is read."""
    buffer = bytearray(size)
    with path.open("rb") as handle, memoryview(buffer) as view:
        while read := handle.readinto(buffer):
            with view[:read] as block:
                yield block


def _split_lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def _on_range(
    work: Callable[..., _R],
    head: tuple[Any, ...],
    path: str,
    offset: int,
    length: int,
    first_line: int,
    secret: bytes,
    buckets: int,
) -> _R:
    """In a worker process: read a chunk's lines from the file and run ``work`` on them."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(length)
    return work(*head, _split_lines(data), first_line, secret, buckets)


class _Joined:
    """entries.jsonl or audit.jsonl, read in step with the leaves and matched by (log, index).

    Both files are sorted like the leaves, so a merge needs no memory; lines met before their
    leaf (because leaves were removed or reordered) wait in a small buffer. The file is read in
    large blocks; a line is parsed only when :meth:`match` could not take it as it stands.
    """

    def __init__(
        self,
        path: Path,
        ordinal: Callable[[str], int],
        error: Callable[[str, str], None],
        read_digest: Future[str | None] | None = None,
    ) -> None:
        """With ``read_digest``, the SHA-256 of the whole file is put there once it is read to
        its end."""
        self.name = path.name
        self.ordinal = ordinal
        self.error = error
        self.blocks = _blocks(path, read_digest=read_digest)
        self.buffer = b""
        self.at = 0
        """Where the next unread line starts in ``buffer``."""
        self.base = 0
        """Where ``buffer`` starts in the file."""
        self.line_no = 0
        """The number of the last line read."""
        self.parsed: _Line | None = None
        self.waiting: dict[tuple[int, int], _Line] = {}

    def _fill(self, size: int) -> bool:
        """At least ``size`` unread bytes in the buffer, if the file has them (the blocks read
        for it are joined once, not one by one)."""
        have = len(self.buffer) - self.at
        if have >= size:
            return True
        parts = [self.buffer[self.at :]]
        while have < size and (block := next(self.blocks, b"")):
            parts.append(block)
            have += len(block)
        self.base += self.at
        self.buffer, self.at = b"".join(parts), 0
        return have >= size

    def _next_raw(self) -> tuple[int, bytes] | None:
        """The next line as it stands (without its newline), or None at the end of the file."""
        while True:
            end = self.buffer.find(b"\n", self.at)
            if end >= 0:
                line = self.buffer[self.at : end]
                self.at = end + 1
                break
            if not self._fill(len(self.buffer) - self.at + 1):
                if self.at == len(self.buffer):
                    return None
                line = self.buffer[self.at :]
                self.at = len(self.buffer)
                break
        self.line_no += 1
        return self.line_no, line

    def _head(self) -> _Line | None:
        """The next well-formed line, parsed (a malformed one is reported and skipped)."""
        while self.parsed is None:
            raw = self._next_raw()
            if raw is None:
                return None
            self.parsed = _parse_record_line(raw[1], raw[0], self.ordinal)
            if self.parsed is None:
                self.error(f"{self.name}:{raw[0]}", "not an {index, log, queued, record} line")
        return self.parsed

    def match_lines(self, lines: Lines) -> bool:
        """Take the next ``lines.count`` lines if their bytes are the ones ``lines`` stands for
        (found at this very place by the worker that built them, or of the same size and
        SHA-256): what :meth:`take` would return for each of their keys, found equal to what
        they record. False, and nothing taken, if not."""
        if self.parsed is not None or not self._fill(lines.size):
            return False
        if lines.at is not None:
            if self.base + self.at != lines.at:
                return False
        else:
            with memoryview(self.buffer)[self.at : self.at + lines.size] as view:
                if hashlib.sha256(view).digest() != lines.sha256:
                    return False
        self._skip(lines.size, lines.count)
        return True

    def _skip(self, size: int, count: int) -> None:
        """Take ``count`` lines of ``size`` bytes in all, found to be the expected ones."""
        self.at += size
        self.line_no += count

    def match(self, key: tuple[int, int], line: bytes, record: bytes) -> bool:
        """Take the next line if it is the one for ``key`` and records ``record``: ``line`` as
        it stands (with its newline), or a parsed line with that key and record."""
        parsed = self.parsed
        if parsed is not None:
            if parsed.key == key and parsed.record == record:
                self.parsed = None
                return True
            return False
        if not (self._fill(len(line)) and self.buffer.startswith(line, self.at)):
            return False
        self._skip(len(line), 1)
        return True

    def take(self, key: tuple[int, int]) -> _Line | None:
        head = self._head()
        while head is not None and head.key is not None and head.key < key:
            self.waiting.setdefault(head.key, head)
            self.parsed = None
            head = self._head()
        if head is not None and head.key == key:
            self.parsed = None
            return head
        return self.waiting.pop(key, None)

    def rest(self) -> Iterator[_Line]:
        """Every line no leaf took: waiting ones, then the rest of the file."""
        yield from self.waiting.values()
        self.waiting = {}
        yield from self.all()

    def all(self) -> Iterator[_Line]:
        while (head := self._head()) is not None:
            self.parsed = None
            yield head


def _blocks(
    path: Path, size: int = 1 << 20, read_digest: Future[str | None] | None = None
) -> Iterator[bytes]:
    """A file's bytes in blocks; nothing if it is missing. With ``read_digest``, the SHA-256 of
    the whole file is put there at its end (None if it is missing)."""
    digest = hashlib.sha256()
    if not path.exists():
        if read_digest is not None:
            read_digest.set_result(None)
        return
    with path.open("rb") as handle:
        while block := handle.read(size):
            if read_digest is not None:
                digest.update(block)
            yield block
    if read_digest is not None:
        read_digest.set_result(digest.hexdigest())


def _locate(bundle: Path, name: str, data: bytes, index: int, log_json: bytes) -> int | None:
    """Where the bundle's ``name`` holds exactly ``data``, whose first line records the leaf
    ``index`` of the log ``log_json``: found by bisection on the lines' heads (the file is
    sorted like the leaves), then read and compared byte for byte. None when it is not there as
    such (then the caller compares a digest, or line by line): a line of another log, a queued
    or malformed one only leads the search astray, never to a wrong answer."""
    try:
        with (bundle / name).open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)

            def line_from(offset: int) -> int:  # the first line that starts at offset or after
                if offset == 0:
                    return 0
                handle.seek(offset - 1)
                while window := handle.read(4096):
                    if (end := window.find(b"\n")) >= 0:
                        return handle.tell() - len(window) + end + 1
                return size

            def before(start: int) -> bool:  # whether that line records an earlier leaf
                handle.seek(start)
                head = _HEAD.match(handle.read(len(log_json) + 64))
                return (
                    head is not None
                    and head[2] == log_json
                    and head[1] != b"null"
                    and int(head[1]) < index
                )

            low, high = 0, size
            while low < high:
                middle = (low + high) // 2
                start = line_from(middle)
                if start < size and before(start):
                    low = start + 1
                else:
                    high = middle
            start = line_from(low)
            handle.seek(start)
            return start if handle.read(len(data)) == data else None
    except OSError:
        return None


def _parse_record_line(raw: bytes, line_no: int, ordinal: Callable[[str], int]) -> _Line | None:
    match = _HEAD.match(raw)
    if match is not None and raw.endswith(b"}"):
        index = None if match[1] == b"null" else int(match[1])
        log = None if match[2] == b"null" else match[2][1:-1].decode("utf-8", "replace")
        queued, record = match[3] == b"true", raw[match.end() : -1]
    else:
        try:
            item = json.loads(raw)
            index, log, queued = item["index"], item["log"], bool(item["queued"])
            record = canonical_bytes(item["record"])
        except (ValueError, KeyError, TypeError, LedgerError):
            return None
    key = (ordinal(log), int(index)) if log is not None and index is not None else None
    return _Line(key, log, index, queued, record, line_no)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, line without its newline) of a file; nothing if it is missing."""
    if not path.exists():
        return
    with path.open("rb") as handle:
        for line_no, line in enumerate(handle, start=1):
            yield line_no, line[:-1] if line.endswith(b"\n") else line


def _leaf_body(line: bytes) -> Any:
    data, _ = leaf_bytes(line)
    envelope = _loads(data)
    return envelope.get("entry") if isinstance(envelope, dict) else None


def _id_or_line(body: Any, file: str, line_no: int) -> str:
    return str(body.get("id")) if isinstance(body, dict) else f"{file}:{line_no}"


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _fill(missing: list[list[int]], index: int) -> bool:
    """Remove ``index`` from the missing ranges; whether it was missing."""
    for n, (start, end) in enumerate(missing):
        if start <= index < end:
            pieces = [[start, index], [index + 1, end]]
            missing[n : n + 1] = [p for p in pieces if p[0] < p[1]]
            return True
    return False


def _cache_finding(tally: str, key: str, logged: int, cached: int) -> Finding:
    if tally == "balance":
        return Finding("cached-balance", key, logged, cached)
    if tally == "lot-state":
        if (logged - cached) % 2:
            return Finding("lot-pending", key, bool(logged % 2), bool(cached % 2))
        return Finding("lot-remainder", key, logged // 2, cached // 2)
    if tally == "lot-terms":
        return Finding("lot-terms", key, "the terms its leaf opened it with", "differ or absent")
    check = "lots-available" if tally == "cover" else "lots-pending"
    return Finding(check, key, logged, cached)


def _push(peaks: list[tuple[int, bytes]], leaf: bytes) -> None:
    level, value = 0, leaf
    while peaks and peaks[-1][0] == level:
        _, left = peaks.pop()
        value = merkle.node_hash(left, value)
        level += 1
    peaks.append((level, value))


def _push_many(peaks: list[tuple[int, bytes]], hashes: bytes) -> None:
    """:func:`_push` of each of ``hashes`` in turn, a complete subtree at a time: each one as
    large as the tree's alignment and what is left allow, hashed level by level."""
    subtree_root = SUBTREE_ROOTS[-1]
    done, total = 0, len(hashes) // 32
    while done < total:
        level = (total - done).bit_length() - 1
        if peaks:
            level = min(level, peaks[-1][0])
        value = subtree_root(hashes[32 * done : 32 * (done + (1 << level))])
        done += 1 << level
        while peaks and peaks[-1][0] == level:
            value = merkle.node_hash(peaks.pop()[1], value)
            level += 1
        peaks.append((level, value))


def _subtree_root_python(hashes: bytes) -> bytes:
    """The root of a complete subtree over ``hashes`` (a power of two of them, 32 bytes each,
    end to end), level by level."""
    sha256 = hashlib.sha256
    nodes = [hashes[i : i + 32] for i in range(0, len(hashes), 32)]
    while len(nodes) > 1:
        pairs = zip(nodes[::2], nodes[1::2], strict=True)
        nodes = [sha256(b"\x01" + left + right).digest() for left, right in pairs]
    return nodes[0]


def _count_lines(block: bytes, end: int) -> int:
    """The newlines in ``block[:end]``."""
    return block.count(b"\n", 0, end)


#: The ways to count the lines of a chunk, the fastest last: Python, then C (a ``memchr`` per
#: line: several times faster on long lines) where it was built.
LINE_COUNTS = [_count_lines]
if _native is not None:
    LINE_COUNTS.append(_native.count_lines)

#: The ways to hash a complete subtree, the fastest last: Python, then C where it was built.
SUBTREE_ROOTS = [_subtree_root_python]
if _native is not None:
    SUBTREE_ROOTS.append(_native.subtree_root)


def _root(peaks: list[tuple[int, bytes]]) -> bytes:
    if not peaks:
        return merkle.EMPTY_ROOT
    value = peaks[-1][1]
    for _, left in reversed(peaks[:-1]):
        value = merkle.node_hash(left, value)
    return value
