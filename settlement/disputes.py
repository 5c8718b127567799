"""Disputes: a partner contests journal entries; finance accepts (an adjustment) or rejects them.

- :func:`open_dispute`: a partner cites entry ids, its own only (booked by it, or touching one of
  its accounts, such as its settlement account); another partner's entry is reported as unknown,
  exactly as the kernel reports it, so a dispute cannot probe for entries.
- :func:`accept`: finance records a signed adjustment (+: the partner owes more) with
  :func:`settlement.service.record_adjustment`; it lands in the open period of the decision as an
  ADJUSTMENT line, never in a closed one.
- :func:`reject`: finance refuses, with a reason the partner sees.

A dispute and its decision are two append-only rows; a dispute is decided once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.errors import InvalidRequest, LedgerError, UnknownEntry
from ledger.repository import SqlLedgerStore
from partners import directory
from settlement import service
from settlement import tables as t
from settlement.periods import parse_period
from settlement.workflow import WorkflowRefusal

ACCEPTED, REJECTED = "ACCEPTED", "REJECTED"

#: The most entries one dispute may cite.
MAX_ENTRIES = 100


class UnknownDispute(UnknownEntry):
    """No dispute with this id (or not one the caller may see)."""

    code = "unknown-dispute"

    def __init__(self, dispute_id: UUID | str) -> None:
        LedgerError.__init__(self, f"dispute {dispute_id} does not exist")
        self.entry_id = str(dispute_id)

    def fields(self) -> dict[str, Any]:
        return {"dispute_id": self.entry_id}


class DisputeDecided(WorkflowRefusal):
    """A dispute is decided once."""

    code = "dispute-decided"

    def __init__(self, dispute_id: UUID, decision: str) -> None:
        super().__init__(
            f"dispute {dispute_id} was {decision.lower()} already",
            dispute=str(dispute_id),
            decision=decision,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    decision: str
    """ACCEPTED or REJECTED."""
    reason: str
    amount_cents: int | None
    """The adjustment, signed (+: the partner owes more), when accepted."""
    adjustment_id: UUID | None
    decided_at: datetime
    decided_by: str


@dataclass(frozen=True, slots=True)
class Dispute:
    id: UUID
    partner: str
    period: str | None
    """The period whose statement the partner contests, if it named one."""
    entry_ids: tuple[str, ...]
    reason: str
    opened_at: datetime
    opened_by: str
    decision: Decision | None

    @property
    def status(self) -> str:
        return "open" if self.decision is None else self.decision.decision.lower()


def open_dispute(
    conn: Connection,
    partner: str,
    entry_ids: Sequence[str | UUID],
    reason: str,
    *,
    now: datetime,
    by: str,
    period: str | None = None,
) -> Dispute:
    """A partner contests its own entries, with a reason."""
    directory.partner(conn, partner)
    if not entry_ids or len(entry_ids) > MAX_ENTRIES:
        raise InvalidRequest(f"a dispute cites 1–{MAX_ENTRIES} entries")
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidRequest("a dispute needs a reason")
    label = None if period is None else parse_period(period).label
    store = SqlLedgerStore(conn)
    ids = []
    for raw in entry_ids:
        try:
            entry_id = raw if isinstance(raw, UUID) else UUID(str(raw))
        except ValueError:
            raise InvalidRequest(f"{raw!r} is not an entry id") from None
        entry = store.load_entry(entry_id)
        own = entry.partner == partner or any(
            p.account.startswith(f"partner:{partner}:") for p in entry.postings
        )
        if not own:
            raise UnknownEntry(entry_id)
        ids.append(str(entry_id))
    dispute = Dispute(
        uuid4(), partner, label, tuple(dict.fromkeys(ids)), reason.strip(), now, by, None
    )
    conn.execute(
        t.settlement_disputes.insert().values(
            id=dispute.id,
            partner=partner,
            period=label,
            entry_ids=list(dispute.entry_ids),
            reason=dispute.reason,
            opened_at=now,
            opened_by=by,
        )
    )
    return dispute


def accept(
    conn: Connection,
    dispute_id: UUID | str,
    amount_cents: int,
    reason: str,
    *,
    now: datetime,
    by: str,
) -> Dispute:
    """Finance accepts: an adjustment of ``amount_cents`` in the open period of ``now``."""
    dispute = _undecided(conn, dispute_id)
    adjustment = service.record_adjustment(
        conn,
        dispute.partner,
        amount_cents,
        reason,
        now=now,
        recorded_by=by,
        dispute_id=str(dispute.id),
        entry_ids=dispute.entry_ids,
    )
    _decide(conn, dispute.id, ACCEPTED, adjustment.reason, amount_cents, adjustment.id, now, by)
    return dispute_by_id(conn, dispute.id)


def reject(
    conn: Connection, dispute_id: UUID | str, reason: str, *, now: datetime, by: str
) -> Dispute:
    """Finance rejects, with a reason."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidRequest("a rejection needs a reason")
    dispute = _undecided(conn, dispute_id)
    _decide(conn, dispute.id, REJECTED, reason.strip(), None, None, now, by)
    return dispute_by_id(conn, dispute.id)


def dispute_by_id(
    conn: Connection, dispute_id: UUID | str, *, partner: str | None = None
) -> Dispute:
    """A dispute; with ``partner``, only one of that partner's (else reported unknown)."""
    found = _disputes(
        conn,
        sa.true() if partner is None else t.settlement_disputes.c.partner == partner,
        _uuid(dispute_id),
    )
    if not found:
        raise UnknownDispute(dispute_id)
    return found[0]


def disputes(conn: Connection, *, partner: str | None = None) -> list[Dispute]:
    """Every dispute (or one partner's), oldest first."""
    where = sa.true() if partner is None else t.settlement_disputes.c.partner == partner
    return _disputes(conn, where, None)


def _disputes(
    conn: Connection, where: sa.ColumnElement[bool], dispute_id: UUID | None
) -> list[Dispute]:
    d, x = t.settlement_disputes, t.settlement_dispute_decisions
    query = (
        sa.select(
            d,
            x.c.decision,
            x.c.reason.label("decision_reason"),
            x.c.amount_cents,
            x.c.adjustment_id,
            x.c.decided_at,
            x.c.decided_by,
        )
        .select_from(d.outerjoin(x, x.c.dispute_id == d.c.id))
        .where(where)
        .order_by(d.c.opened_at, d.c.id)
    )
    if dispute_id is not None:
        query = query.where(d.c.id == dispute_id)
    return [
        Dispute(
            id=row.id,
            partner=row.partner,
            period=row.period,
            entry_ids=tuple(row.entry_ids),
            reason=row.reason,
            opened_at=row.opened_at,
            opened_by=row.opened_by,
            decision=None
            if row.decision is None
            else Decision(
                row.decision,
                row.decision_reason,
                row.amount_cents,
                row.adjustment_id,
                row.decided_at,
                row.decided_by,
            ),
        )
        for row in conn.execute(query)
    ]


def _undecided(conn: Connection, dispute_id: UUID | str) -> Dispute:
    dispute = dispute_by_id(conn, dispute_id)
    if dispute.decision is not None:
        raise DisputeDecided(dispute.id, dispute.decision.decision)
    return dispute


def _decide(
    conn: Connection,
    dispute_id: UUID,
    decision: str,
    reason: str,
    amount_cents: int | None,
    adjustment_id: UUID | None,
    now: datetime,
    by: str,
) -> None:
    conn.execute(
        t.settlement_dispute_decisions.insert().values(
            dispute_id=dispute_id,
            decision=decision,
            reason=reason,
            amount_cents=amount_cents,
            adjustment_id=adjustment_id,
            decided_at=now,
            decided_by=by,
        )
    )


def _uuid(value: UUID | str) -> UUID:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise UnknownDispute(value) from None
