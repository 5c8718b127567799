"""``coalition audit verify``: every check the ledger can make of itself, as one report.

On the live database (:func:`verify_database`) it runs the journal-versus-cache checks of
:mod:`ledger.consistency`, the log checks of :mod:`ledger.logcheck` (canonical leaves, chain,
gapless indices, Merkle roots against signed checkpoints, tree nodes, entries against leaves),
the audit log's checks (each ``AUDIT`` leaf against its ``audit_events`` row, every event logged or
queued) and the settlement statements' checks (every prepared period recomputed from the journal,
every signed statement note against its document: :mod:`audit.statementcheck`). On an export
bundle, :func:`audit.bundle.verify_bundle` makes the same checks with no database. Both report
every finding, each with the tamper class it is evidence of (:mod:`audit.findings`), as text or
JSON. The live verifier only reads: run it with a read-only role if you like.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from audit import tables as at
from audit.findings import entry_differences, tamper_class
from audit.log import event_from_row
from audit.statementcheck import check_database as check_statements
from ledger import tables as t
from ledger.consistency import Finding, check_consistency
from ledger.errors import LedgerError
from ledger.journal import Leaf, entry_record, parse_leaf
from ledger.logcheck import verify_log
from ledger.logstore import SqlLogStore
from ledger.note import NoteVerifier
from ledger.repository import SqlLedgerStore


@dataclass(frozen=True)
class Report:
    """The verifier's result: what was checked and everything found wrong."""

    logs: list[str]
    leaves: int
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What the reader should know that is not a finding (queued entries, trusted keys)."""
    source: str = "database"

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def classes(self) -> list[str]:
        """The tamper classes the findings point to, sorted."""
        return sorted({tamper_class(f.check) for f in self.findings})

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "source": self.source,
            "logs": self.logs,
            "leaves": self.leaves,
            "classes": self.classes,
            "notes": self.notes,
            "findings": [
                {
                    "check": f.check,
                    "class": tamper_class(f.check),
                    "subject": f.subject,
                    "expected": _plain(f.expected),
                    "found": _plain(f.found),
                }
                for f in self.findings
            ],
        }

    def to_text(self) -> str:
        lines = [
            f"source: {self.source}",
            f"logs: {', '.join(self.logs) or '(none)'}",
            f"leaves checked: {self.leaves}",
        ]
        lines += [f"note: {note}" for note in self.notes]
        lines += [f"FINDING [{tamper_class(f.check)}] {f}" for f in self.findings]
        if self.ok:
            lines.append("OK: the ledger verifies")
        else:
            lines.append(
                f"FAILED: {len(self.findings)} finding(s); classes: {', '.join(self.classes)}"
            )
        return "\n".join(lines)


#: Told (phase, done, total) while the verifier works: ``leaves`` in leaves, the other phases
#: (``caches``, ``audit log``, ``statements``) as 0 of 1 when they start and 1 of 1 when done.
Progress = Callable[[str, int, int], None]


def verify_database(
    conn: Connection,
    trusted: Iterable[NoteVerifier] | None = None,
    progress: Progress | None = None,
    workers: int = 1,
) -> Report:
    """Verify everything in the database. ``trusted`` keys default to the logs' own keys.

    ``workers`` > 1 checks the log's leaves in that many processes
    (:func:`ledger.logcheck.verify_log`).

    An auditor should pass the log keys it obtained out of band: a database can carry a forged
    key alongside forged checkpoints.
    """
    told = progress or (lambda phase, done, total: None)

    def phase(name: str, check: Callable[[], Iterable[Finding]]) -> list[Finding]:
        told(name, 0, 1)
        found = list(check())
        told(name, 1, 1)
        return found

    store = SqlLogStore(conn)
    logs = store.logs()
    notes = []
    if trusted is None:
        notes.append("trusting the database's own log keys (pass --key to trust yours)")
    keyring = (
        list(trusted) if trusted is not None else [NoteVerifier.from_vkey(v) for _, v, _ in logs]
    )
    # The caches and the statements are checked beside the leaves (each in a worker of its
    # own, with workers), so their phases end when the leaves' does.
    told("caches", 0, 1)
    told("statements", 0, 1)
    logged = verify_log(
        conn,
        keyring,
        record_check=check_audit_leaves,
        progress=progress,
        workers=workers,
        beside=[
            check_consistency,
            partial(_check_statements, [(type(k), k.vkey) for k in keyring]),
        ],
    )
    told("caches", 1, 1)
    told("statements", 1, 1)
    findings = [*logged, *phase("audit log", lambda: audit_events_not_logged(conn))]
    findings += [*_refine_altered_entries(conn, findings), *_diagnose_forks(conn, findings)]
    leaves = sum(store.tip(origin).size for origin, _, _ in logs)
    queued = store.queue_length()
    if queued:
        notes.append(f"{queued} entries are queued for the log and not yet covered by it")
    return Report([origin for origin, _, _ in logs], leaves, findings, notes)


def _check_statements(keys: list[tuple[Any, str]], conn: Connection) -> list[Finding]:
    """The statements' check, given the trusted keys as (class, text): a worker receives it
    pickled, and each key comes back as the very verifier it was (of whatever type)."""
    return check_statements(conn, [kind.from_vkey(vkey) for kind, vkey in keys])


def check_audit_leaves(conn: Connection, leaves: Sequence[Leaf]) -> Iterator[Finding]:
    """Each ``AUDIT`` leaf records exactly the ``audit_events`` row it names, linked to it."""
    ids: dict[UUID, Leaf] = {}
    for leaf in leaves:
        subject = f"{leaf.log}#{leaf.index}"
        try:
            ids[UUID(str(leaf.body.get("id")))] = leaf
        except ValueError:
            yield Finding("audit-invalid", subject, "an audit event with an id", leaf.body)
    if not ids:
        return
    query = (
        sa.select(at.audit_events, at.audit_leaves.c.log, at.audit_leaves.c.idx)
        .outerjoin(at.audit_leaves, at.audit_leaves.c.event_id == at.audit_events.c.id)
        .where(at.audit_events.c.id.in_(list(ids)))
    )
    rows = {row.id: row for row in conn.execute(query)}
    for event_id, leaf in ids.items():
        subject = f"{leaf.log}#{leaf.index}"
        row = rows.get(event_id)
        if row is None:
            yield Finding("audit-missing", subject, "an audit_events row", str(event_id))
        elif (row.log, row.idx) != (leaf.log, leaf.index):
            yield Finding("audit-position", subject, (leaf.log, leaf.index), (row.log, row.idx))
        elif event_from_row(row).record() != leaf.body:
            yield Finding(
                "audit-altered", subject, "audit_events row equal to the leaf", str(event_id)
            )


def audit_events_not_logged(conn: Connection) -> Iterator[Finding]:
    """An audit event that has no leaf and is not queued was dropped from the log."""
    link = at.audit_leaves.c
    logged = (
        sa.select(link.event_id)
        .join(t.leaves, sa.and_(t.leaves.c.log == link.log, t.leaves.c.idx == link.idx))
        .where(at.audit_leaves.c.event_id == at.audit_events.c.id)
    )
    queued = sa.select(at.audit_queue.c.event_id).where(
        at.audit_queue.c.event_id == at.audit_events.c.id
    )
    query = sa.select(at.audit_events.c.id).where(~logged.exists(), ~queued.exists())
    for event_id in conn.scalars(query):
        yield Finding("audit-not-logged", str(event_id), "a leaf or a queue row", None)


def _refine_altered_entries(conn: Connection, findings: list[Finding]) -> Iterator[Finding]:
    """Name what was edited in an entry whose journal rows no longer match its leaf."""
    store = SqlLogStore(conn)
    for finding in findings:
        if finding.check != "entry-altered":
            continue
        log, _, index = finding.subject.rpartition("#")
        data = store.leaf_at(log, int(index))
        try:
            leaf_body = parse_leaf(bytes(data)).body if data is not None else None
            table = _table_record(conn, UUID(str(finding.found)), leaf_body)
        except (LedgerError, ValueError):
            continue
        for check in entry_differences(leaf_body, table):
            if check != "entry-altered":
                yield Finding(check, finding.subject, "the leaf's postings", finding.found)


def _table_record(conn: Connection, entry_id: UUID, leaf_body: Any) -> Any:
    """The entry as the journal tables hold it; if the tables no longer make a valid entry (an
    edit unbalanced it), the leaf's record with the tables' postings."""
    try:
        return entry_record(SqlLedgerStore(conn).load_entry(entry_id))
    except LedgerError:
        rows = conn.execute(
            sa.select(t.postings.c.account, t.postings.c.amount)
            .where(t.postings.c.entry_id == entry_id)
            .order_by(t.postings.c.line)
        )
        postings = [{"account": account, "amount": amount} for account, amount in rows]
        return {**leaf_body, "postings": postings} if isinstance(leaf_body, dict) else None


def _diagnose_forks(conn: Connection, findings: list[Finding]) -> Iterator[Finding]:
    """A signed checkpoint whose root disagrees while a later checkpoint of the same log verifies
    signs another tree than the one the log holds: the log was forked."""
    bad = {
        f.subject
        for f in findings
        if f.check.startswith("checkpoint-") and f.check != "checkpoint-fork"
    }
    sizes: dict[str, list[int]] = {}
    for log, size in conn.execute(sa.select(t.checkpoints.c.log, t.checkpoints.c.size)):
        sizes.setdefault(log, []).append(size)
    for finding in findings:
        if finding.check != "checkpoint-root":
            continue
        log, _, size_text = finding.subject.rpartition("@")
        later = [s for s in sizes.get(log, []) if s > int(size_text) and f"{log}@{s}" not in bad]
        if later:
            yield Finding(
                "checkpoint-fork",
                finding.subject,
                f"the tree that checkpoint {log}@{min(later)} signs",
                finding.found,
            )


def _plain(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value
