"""Inclusion proofs for the entries a statement line sums, against the checkpoint of the close.

A statement line (partner, flow, contract version) sums points from journal entries; this module
lists those entries and proves each one is in the log: for every entry, its leaf (the exact bytes
the integrator logged), its index, its signed contribution to the line's points and an RFC 6962
inclusion proof of the leaf against the tree size of the checkpoint the period was closed on.
Given the log's verifier key (and, for a witnessed close, the witnesses' keys), a partner checks
each proof with :func:`ledger.merkle.verify_inclusion` against the signed checkpoint and adds up
the points: they come to the line's ``points``, net of reversals, as the line computes them.

Which entries a line sums mirrors :meth:`settlement.repository.SqlSettlementStore.partner_flows`:

=============  ===================================================================  ===========
flow           entries booked in the period whose business time the line's          points
               contract version prices
=============  ===================================================================  ===========
ISSUANCE       EARN, ENGAGE, EARN_REVERSAL postings on ``partner:p:issued|redeemed``  −Σ amount
REIMBURSEMENT  BURN, CAPTURE, BURN_REVERSAL, EXPIRE postings on the same accounts    +Σ amount
BREAKAGE       EXPIRE lot moves on lots partner p funded                            −Σ delta
FEE, ADJUST.   none: a fee is a contract term, an adjustment an accepted dispute    —
=============  ===================================================================  ===========

Reversals are on their original's line with negative points; late events (business time before
the period, booked in it: the prior-period adjustments) are flagged ``prior_period``, and their
points add up to the line's ``points_prior_period``.

A line can sum millions of entries, so the listing is paged by leaf position ``(log, index)``:
each page is one aggregate query whose cursor predicate bounds the scan, one query for the page's
leaves and one per tree level for the nodes its proofs need. The query is written here, not in the
repository, and deliberately keeps the contract-version rule in Python: the spans of business
time in which the line's version is the one in force become plain range predicates.

An entry logged in an earlier log (the log key was rotated during the period) is proved against
that log's final checkpoint, which the current log's first leaf quotes; its checkpoint is given
with the page.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger import merkle
from ledger import tables as lt
from ledger.errors import InvalidRequest
from ledger.logstore import SqlLogStore
from ledger.model import EntryKind
from partners import directory
from partners.directory import Contract
from settlement import service
from settlement.errors import SettlementError
from settlement.model import CheckpointRef, Flow, Statement, StatementLine
from settlement.periods import Period, parse_period

#: Lines of these flows sum journal entries; FEE and ADJUSTMENT lines sum none.
SUMMED_FLOWS = frozenset({Flow.ISSUANCE, Flow.REIMBURSEMENT, Flow.BREAKAGE})

#: Page size when none is asked for, and the largest a caller may ask for.
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000

#: Tree nodes fetched per query, well within SQLite's bound-parameter limit.
_NODES_PER_QUERY = 10_000

_ISSUE_KINDS = (EntryKind.EARN.value, EntryKind.ENGAGE.value, EntryKind.EARN_REVERSAL.value)
_REDEEM_KINDS = (
    EntryKind.BURN.value,
    EntryKind.CAPTURE.value,
    EntryKind.BURN_REVERSAL.value,
    EntryKind.EXPIRE.value,
)


class UnknownStatementLine(SettlementError):
    """The period has no statement for the partner, or the statement no line of that number."""

    code = "unknown-statement-line"

    def __init__(self, period: str, partner: str, number: int, lines: int | None) -> None:
        if lines is None:
            message = f"{period} has no statement for {partner}"
        else:
            message = f"{partner}'s {period} statement has lines 1 to {lines}, not {number}"
        super().__init__(message)
        self.period, self.partner, self.number, self.lines = period, partner, number, lines

    def fields(self) -> dict[str, Any]:
        return {"period": self.period, "partner": self.partner, "line": self.number}


class EntryNotCovered(SettlementError):
    """An entry the line sums sits beyond the close's checkpoint: it cannot be proved by it.

    It was booked into the period after the close (back-dated); ``coalition settle verify`` reports
    it as ``checkpoint-coverage``.
    """

    code = "entry-not-covered"

    def __init__(self, period: str, entry_id: UUID, log: str, index: int, size: int) -> None:
        super().__init__(
            f"entry {entry_id} of {period} is leaf {index} of {log}, beyond the close's "
            f"checkpoint of size {size}"
        )
        self.details = {"period": period, "entry_id": str(entry_id), "index": index, "size": size}

    def fields(self) -> dict[str, Any]:
        return self.details


@dataclass(frozen=True, slots=True)
class LineEntry:
    """One entry a line sums, its leaf and the proof that the leaf is in the log."""

    entry_id: UUID
    kind: str
    business_time: datetime
    points: int
    """The entry's signed contribution to the line's points (a reversal's is negative)."""
    prior_period: bool
    """Business time before the period: a late event, counted in ``points_prior_period``."""
    log: str
    index: int
    leaf: bytes
    """The leaf's exact bytes; its hash is the proof's starting point."""
    tree_size: int
    """Size of the checkpoint the proof leads to: the close's, for its log."""
    proof: tuple[bytes, ...]

    @property
    def leaf_hash(self) -> bytes:
        return merkle.leaf_hash(self.leaf)


@dataclass(frozen=True, slots=True)
class LineProofs:
    """One page of the entries a statement line sums, with their inclusion proofs."""

    period: Period
    partner: str
    number: int
    """The line's position on the statement, from 1."""
    line: StatementLine
    checkpoint: CheckpointRef
    """The checkpoint the period was closed on (its note as recorded by the close)."""
    entries: tuple[LineEntry, ...]
    next_after: tuple[str, int] | None
    """Leaf position to pass as ``after`` for the next page; ``None`` on the last page."""
    other_checkpoints: tuple[tuple[str, int, str], ...] = ()
    """(log, size, note) of earlier logs' final checkpoints that some entries are proved against."""

    @property
    def sums_entries(self) -> bool:
        """False for FEE and ADJUSTMENT lines, which sum no journal entry."""
        return self.line.flow in SUMMED_FLOWS


def statement_line(
    conn: Connection, period: Period | str, partner: str, number: int
) -> tuple[Statement, StatementLine]:
    """The prepared statement of ``partner`` and its line ``number`` (from 1)."""
    label = _period(period).label
    run = service.statement_run(conn, label)
    try:
        statement = run.settlement.statement(partner)
    except KeyError:
        raise UnknownStatementLine(label, partner, number, None) from None
    if isinstance(number, bool) or not isinstance(number, int):
        raise InvalidRequest(f"a line number is a whole number, not {number!r}")
    if not 1 <= number <= len(statement.lines):
        raise UnknownStatementLine(label, partner, number, len(statement.lines))
    return statement, statement.lines[number - 1]


def line_proofs(
    conn: Connection,
    period: Period | str,
    partner: str,
    number: int,
    *,
    after: tuple[str, int] | None = None,
    limit: int = DEFAULT_LIMIT,
) -> LineProofs:
    """One page of the entries line ``number`` of a partner's statement sums, proved.

    Entries come in leaf order; ``after`` is the ``next_after`` of the previous page. Reads only.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"a page holds 1 to {MAX_LIMIT} entries, not {limit!r}")
    period = _period(period)
    _, line = statement_line(conn, period, partner, number)
    close = service.period_close(conn, period)
    assert close is not None  # a prepared period is closed
    checkpoint = close.checkpoint
    if line.flow not in SUMMED_FLOWS:
        return LineProofs(period, partner, number, line, checkpoint, (), None)
    spans = _version_spans(directory.contracts(conn, partner), line.contract_version)
    rows = conn.execute(_page_query(period, partner, line.flow, spans, after, limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    logs = SqlLogStore(conn)
    sizes = {checkpoint.log: checkpoint.size}
    others: list[tuple[str, int, str]] = []
    for log in sorted({row.log for row in rows} - {checkpoint.log}):
        final = logs.checkpoint(log)
        if final is None:
            raise InvalidRequest(f"log {log} has no signed checkpoint")
        sizes[log] = final.size
        others.append((log, final.size, final.note))
    for row in rows:
        if row.idx >= sizes[row.log]:
            raise EntryNotCovered(period.label, row.entry_id, row.log, row.idx, sizes[row.log])
    leaves = _leaves(conn, [(row.log, row.idx) for row in rows])
    proofs = _proofs(conn, [(row.log, row.idx) for row in rows], sizes)
    entries = tuple(
        LineEntry(
            entry_id=row.entry_id,
            kind=row.kind,
            business_time=row.business_time,
            points=int(row.points),
            prior_period=row.business_time < period.start,
            log=row.log,
            index=row.idx,
            leaf=leaves[row.log, row.idx],
            tree_size=sizes[row.log],
            proof=proofs[row.log, row.idx],
        )
        for row in rows
    )
    next_after = (rows[-1].log, rows[-1].idx) if more and rows else None
    return LineProofs(period, partner, number, line, checkpoint, entries, next_after, tuple(others))


def all_line_proofs(
    conn: Connection, period: Period | str, partner: str, number: int, *, page: int = 1000
) -> Iterator[LineProofs]:
    """Every page of a line's proofs, in order (the first even when the line sums nothing)."""
    after: tuple[str, int] | None = None
    while True:
        found = line_proofs(conn, period, partner, number, after=after, limit=page)
        yield found
        if found.next_after is None:
            return
        after = found.next_after


def verify_line_entry(entry: LineEntry, root: bytes) -> None:
    """Check one entry's proof against the root of its checkpoint (raises ProofError)."""
    merkle.verify_inclusion(entry.leaf_hash, entry.index, entry.tree_size, list(entry.proof), root)


# -- queries ---------------------------------------------------------------------------------------

Span = tuple[datetime, datetime | None]


def _version_spans(versions: Sequence[Contract], version: int) -> list[Span]:
    """The business-time spans ``[start, end)`` in which ``version`` is the one in force.

    The version in force at an instant is the newest that has started and not ended (as
    :func:`partners.directory.contract_at` and the repository's ``CASE`` decide); it can change
    only where some version starts or ends, so it is constant between consecutive bounds.
    """
    bounds = sorted({c.valid_from for c in versions} | {c.valid_to for c in versions if c.valid_to})
    spans: list[Span] = []
    for i, start in enumerate(bounds):
        end = bounds[i + 1] if i + 1 < len(bounds) else None
        in_force = [c.version for c in versions if c.in_force_at(start)]
        if not in_force or max(in_force) != version:
            continue
        if spans and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], end)  # adjacent: one predicate instead of two
        else:
            spans.append((start, end))
    return spans


def _within(at: sa.ColumnElement[datetime], spans: Sequence[Span]) -> sa.ColumnElement[bool]:
    if not spans:
        return sa.false()
    return sa.or_(
        *(at >= start if end is None else sa.and_(at >= start, at < end) for start, end in spans)
    )


def _page_query(
    period: Period,
    partner: str,
    flow: Flow,
    spans: Sequence[Span],
    after: tuple[str, int] | None,
    limit: int,
) -> sa.Select:
    """The page's entries, each with its leaf position and its points on the line.

    Grouped per leaf, ordered by ``(log, index)``: the cursor predicate applies before the
    grouping, so a page reads only entries past it.
    """
    e, leaf = lt.entries.c, lt.leaves.c
    if flow is Flow.BREAKAGE:
        moves, lots = lt.lot_moves.c, lt.lots.c
        points = sa.func.sum(-moves.delta)
        joined = (
            lt.lot_moves.join(lt.entries, e.id == moves.entry_id)
            .join(lt.lots, lots.id == moves.lot_id)
            .join(lt.leaves, leaf.entry_id == e.id)
        )
        belongs = sa.and_(e.kind == EntryKind.EXPIRE.value, lots.funder == partner)
    else:
        p = lt.postings.c
        issuance = flow is Flow.ISSUANCE
        # Net points are −Σ on an issued account (a source), +Σ on a redeemed one (a sink); the
        # repository classifies a posting by its entry's kind, so the same is done here.
        points = sa.func.sum(-p.amount) if issuance else sa.func.sum(p.amount)
        joined = lt.postings.join(lt.entries, e.id == p.entry_id).join(
            lt.leaves, leaf.entry_id == e.id
        )
        belongs = sa.and_(
            p.account.in_((f"partner:{partner}:issued", f"partner:{partner}:redeemed")),
            e.kind.in_(_ISSUE_KINDS if issuance else _REDEEM_KINDS),
        )
    query = (
        sa.select(
            leaf.log.label("log"),
            leaf.idx.label("idx"),
            # One entry per leaf: grouped by the leaves' primary key alone, whose order the index
            # gives (a streamed GroupAggregate, no sort); the entry's columns are constant within
            # a group, aggregated only to be selectable.
            leaf.entry_id.label("entry_id"),
            sa.func.min(e.kind).label("kind"),
            sa.func.min(e.business_time).label("business_time"),
            points.label("points"),
        )
        .select_from(joined)
        .where(
            belongs,
            e.booked_at >= period.start,
            e.booked_at < period.end,
            _within(e.business_time, spans),
        )
        .group_by(leaf.log, leaf.idx)
        .order_by(leaf.log, leaf.idx)
        .limit(limit)
    )
    if after is not None:
        log, index = after
        # A row-value comparison, which PostgreSQL turns into a range on the leaves' primary key
        # (an OR of the two cases would be a filter over every leaf before the cursor).
        query = query.where(sa.tuple_(leaf.log, leaf.idx) > sa.tuple_(log, index))
    return query


def _leaves(conn: Connection, positions: Sequence[tuple[str, int]]) -> dict[tuple[str, int], bytes]:
    """The bytes of the page's leaves, one query per log."""
    leaf = lt.leaves.c
    found: dict[tuple[str, int], bytes] = {}
    for log in sorted({log for log, _ in positions}):
        indices = sorted({index for origin, index in positions if origin == log})
        rows = conn.execute(
            sa.select(leaf.idx, leaf.data).where(leaf.log == log, leaf.idx.in_(indices))
        )
        found.update(((log, row.idx), bytes(row.data)) for row in rows)
    return found


def _proofs(
    conn: Connection, positions: Sequence[tuple[str, int]], sizes: dict[str, int]
) -> dict[tuple[str, int], tuple[bytes, ...]]:
    """Every position's inclusion proof, from the tree nodes its log's proofs need."""
    proofs: dict[tuple[str, int], tuple[bytes, ...]] = {}
    for log in sorted({log for log, _ in positions}):
        size = sizes[log]
        indices = [index for origin, index in positions if origin == log]
        wanted = {a for index in indices for a in merkle.inclusion_addresses(index, size)}
        nodes = _nodes(conn, log, wanted)
        for index in indices:
            proofs[log, index] = tuple(merkle.inclusion_proof(index, size, nodes))
    return proofs


def _nodes(conn: Connection, log: str, wanted: set[merkle.Address]) -> dict[merkle.Address, bytes]:
    """Stored tree nodes by address, one query per level and chunk.

    Not ``(level, idx) IN (…)`` over pairs: PostgreSQL plans a long list of row values as a chain
    of ORs (seconds for a page's few thousand nodes); ``idx IN (…)`` at one level is an index scan.
    """
    n = lt.tree_nodes.c
    by_level: dict[int, list[int]] = {}
    for level, index in wanted:
        by_level.setdefault(level, []).append(index)
    found: dict[merkle.Address, bytes] = {}
    for level, indices in sorted(by_level.items()):
        indices.sort()
        for start in range(0, len(indices), _NODES_PER_QUERY):
            rows = conn.execute(
                sa.select(n.idx, n.hash).where(
                    n.log == log,
                    n.level == level,
                    n.idx.in_(indices[start : start + _NODES_PER_QUERY]),
                )
            )
            found.update(((level, row.idx), bytes(row.hash)) for row in rows)
    return found


def _period(period: Period | str) -> Period:
    return period if isinstance(period, Period) else parse_period(period)
