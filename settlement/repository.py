"""SQL of settlement: what a period's flows sum to, and the storage of closes, runs and adjustments.

A period's flows and its control total come from two aggregates computed inside the database,
whatever the number of entries: one pass over the period's postings, grouped by (account, entry
kind, slice of business time between contract boundaries), and one over its expiries, grouped by
(funder, contract version). The same SQL runs on SQLite and PostgreSQL; on PostgreSQL the pass
gets the memory and plan a month of 10 million entries needs (bench/settlement.py: ≤ 60 s for
close + prepare). An entry belongs to the period by ledger time: every query filters on
``entries.booked_at`` in ``[start, end)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger import tables as lt
from ledger.logstore import SqlLogStore
from ledger.model import PROGRAM, Account, EntryKind
from partners import tables as pt
from partners.directory import Contract
from partners.errors import NoContract
from settlement import tables as t
from settlement.model import (
    Adjustment,
    CheckpointRef,
    Control,
    ControlPoints,
    Flow,
    FlowPoints,
    OperatorLeg,
    PeriodClose,
    Settlement,
    Statement,
    StatementLine,
    StatementRun,
)
from settlement.periods import PeriodKind, parse_period
from settlement.statements import Rendered

#: Entry kinds that make up the settled flows, and the sign that turns a posting into points.
_ISSUE = (EntryKind.EARN.value, EntryKind.ENGAGE.value)
_REDEEM = (EntryKind.BURN.value, EntryKind.CAPTURE.value)
#: ``work_mem`` of the period aggregates on PostgreSQL (see ``SqlSettlementStore._bulk_read``).
BULK_WORK_MEM = "256MB"

FLOW_KINDS = (
    *_ISSUE,
    EntryKind.EARN_REVERSAL.value,
    *_REDEEM,
    EntryKind.BURN_REVERSAL.value,
    EntryKind.EXPIRE.value,
)


class SqlSettlementStore:
    """Settlement's reads and writes over a connection inside the caller's transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._period_sums: dict[tuple[datetime, datetime], tuple[tuple, _PeriodSums]] = {}

    # -- the journal, as settlement reads it ----------------------------------------------------

    def waiting_before(self, end: datetime) -> int:
        """Committed entries booked before ``end`` that the integrator has not logged yet."""
        q, e = lt.journal_queue.c, lt.entries.c
        query = (
            sa.select(sa.func.count())
            .select_from(lt.journal_queue.join(lt.entries, e.id == q.entry_id))
            .where(e.booked_at < end)
        )
        return int(self.conn.scalar(query) or 0)

    def earliest_flow(self) -> datetime | None:
        """Ledger time of the first entry that settlement counts."""
        e = lt.entries.c
        return self.conn.scalar(sa.select(sa.func.min(e.booked_at)).where(e.kind.in_(FLOW_KINDS)))

    def latest_checkpoint(self) -> CheckpointRef | None:
        """The newest signed checkpoint of the log being appended to."""
        logs = SqlLogStore(self.conn)
        origin = logs.current_log()
        found = None if origin is None else logs.checkpoint(origin)
        if found is None:
            return None
        return CheckpointRef(found.log, found.size, found.root, found.note)

    def entries_outside(self, start: datetime, end: datetime, checkpoint: CheckpointRef) -> int:
        """Entries booked in ``[start, end)`` that the checkpoint does not cover.

        Either not logged at all, or logged in the checkpoint's log at an index at or after its
        size. (Entries logged in an earlier log are covered: the current log's first leaf quotes
        that log's final checkpoint.)
        """
        e, leaf = lt.entries.c, lt.leaves.c
        uncovered = sa.or_(
            leaf.idx.is_(None),
            sa.and_(leaf.log == checkpoint.log, leaf.idx >= checkpoint.size),
        )
        query = (
            sa.select(sa.func.count())
            .select_from(lt.entries.outerjoin(lt.leaves, leaf.entry_id == e.id))
            .where(e.booked_at >= start, e.booked_at < end, uncovered)
        )
        return int(self.conn.scalar(query) or 0)

    def partner_flows(
        self, start: datetime, end: datetime, contracts: Mapping[str, Sequence[Contract]]
    ) -> list[FlowPoints]:
        """Issued, redeemed and expired points per (partner, flow, contract version).

        Raises :class:`~partners.errors.NoContract` for points of a partner that had no contract
        in force at their business time: they cannot be priced.
        """
        totals: dict[tuple[str, Flow, int], list[int]] = {}

        def add(key: tuple[str, Flow, int], gross: int, reversed_: int, prior: int) -> None:
            row = totals.setdefault(key, [0, 0, 0])
            row[0] += gross
            row[1] += reversed_
            row[2] += prior

        for account, kind, version, amount, prior, first in self._sums(
            start, end, contracts
        ).posted:
            if not _is_flow_account(account) or kind not in FLOW_KINDS:
                continue
            partner = str(Account.parse(account).owner)
            if version is None:
                raise NoContract(partner, first)
            # Net points are −Σ on an issued account (a source), +Σ on a redeemed one (a sink).
            if kind in _ISSUE:
                add((partner, Flow.ISSUANCE, version), -amount, 0, -prior)
            elif kind == EntryKind.EARN_REVERSAL.value:
                add((partner, Flow.ISSUANCE, version), 0, amount, -prior)
            elif kind in _REDEEM:
                add((partner, Flow.REIMBURSEMENT, version), amount, 0, prior)
            else:
                add((partner, Flow.REIMBURSEMENT, version), 0, -amount, prior)
        for funder, version, points, prior, first in self._sums(start, end, contracts).expired:
            if funder == PROGRAM:
                continue
            if version is None:
                raise NoContract(funder, first)
            add((funder, Flow.BREAKAGE, version), points, 0, prior)
        return [
            FlowPoints(partner, flow, version, gross, reversed_, prior)
            for (partner, flow, version), (gross, reversed_, prior) in sorted(totals.items())
        ]

    def control_points(self, start: datetime, end: datetime) -> ControlPoints:
        """The point movements the control total needs besides the statement lines."""
        sums = self._sums(start, end, None)
        member = [
            (kind, amount) for account, kind, _, amount, _, _ in sums.posted if account is None
        ]
        funded = (*_ISSUE, EntryKind.EARN_REVERSAL.value)
        return ControlPoints(
            member_growth=sum(amount for _, amount in member),
            program_funded=-sum(
                amount
                for account, kind, _, amount, _, _ in sums.posted
                if account == "program:funded" and kind in funded
            ),
            program_expired=sum(
                points for funder, _, points, _, _ in sums.expired if funder == PROGRAM
            ),
            adjustments=sum(
                amount for kind, amount in member if kind == EntryKind.ADJUSTMENT.value
            ),
        )

    def _sums(
        self, start: datetime, end: datetime, contracts: Mapping[str, Sequence[Contract]] | None
    ) -> _PeriodSums:
        """The period's two aggregates, computed once per store for the flows and the control.

        ``contracts=None`` (the control total's need) accepts sums computed with any contracts:
        the versions they carry do not enter the control total.
        """
        key = (start, end)
        cached = self._period_sums.get(key)
        wanted = None if contracts is None else _contracts_key(contracts)
        if cached is not None and (wanted is None or cached[0] == wanted):
            return cached[1]
        with self._bulk_read():
            sums = _PeriodSums(
                posted=self._by_version(
                    self.conn.execute(self._posted(start, end, contracts or {})),
                    start,
                    contracts or {},
                ),
                expired=[
                    (funder, version, int(points), int(prior), first)
                    for funder, version, points, prior, first in self.conn.execute(
                        self._expired(start, end, contracts or {})
                    )
                ],
            )
        self._period_sums[key] = (wanted or _contracts_key(contracts or {}), sums)
        return sums

    @contextmanager
    def _bulk_read(self) -> Iterator[None]:
        """PostgreSQL settings for the period's aggregates, restored afterwards.

        The aggregates join every posting of the month to its entry and end in a few dozen
        groups. The planner cannot see that (it estimates the groups from the columns inside the
        grouping expressions: millions) and would sort the joined rows, tens of millions of them,
        to group them; with sorting discouraged it hashes into the few groups instead. The
        default 4 MB ``work_mem``, sized for the OLTP path, would split the join's hash table of
        the month's entries into a hundred batches spilled to disk; this one batch job gets
        :data:`BULK_WORK_MEM`.
        """
        if self.conn.dialect.name != "postgresql":
            yield
            return
        names = ("enable_sort", "work_mem")
        before = {
            name: self.conn.scalar(sa.select(sa.func.current_setting(name))) for name in names
        }
        wanted = {"enable_sort": "off", "work_mem": BULK_WORK_MEM}
        for name, value in wanted.items():
            self.conn.execute(sa.select(sa.func.set_config(name, value, True)))
        yield  # (after an error the transaction is aborted, and its local settings go with it)
        for name, value in before.items():
            self.conn.execute(sa.select(sa.func.set_config(name, value, True)))

    def _posted(
        self, start: datetime, end: datetime, contracts: Mapping[str, Sequence[Contract]]
    ) -> sa.Select:
        """Σ of the period's postings per (account, entry kind, time slice), in one pass.

        Every account a settlement reads keeps its own group, except member accounts, which
        fold into one (account NULL): the control total needs only their sum, and grouping a
        million member accounts would cost more than the whole pass. Business time is cut into
        slices at the period's start and at every contract version's start and end, so within a
        slice the contract version in force and the prior-period flag are constant: they are
        decided once per group, in Python (:meth:`_by_version`), not once per posting in SQL.
        """
        p, e = lt.postings.c, lt.entries.c
        cuts = sorted(
            {start}
            | {c.valid_from for versions in contracts.values() for c in versions}
            | {c.valid_to for versions in contracts.values() for c in versions if c.valid_to}
        )
        time_slice = sa.case(
            *((e.business_time < cut, n) for n, cut in enumerate(cuts)), else_=len(cuts)
        )
        inner = (
            sa.select(
                sa.case((p.account.like("member:%"), sa.null()), else_=p.account).label("account"),
                e.kind.label("kind"),
                time_slice.label("slice"),
                p.amount.label("amount"),
                e.business_time.label("at"),
            )
            .select_from(lt.postings.join(lt.entries, e.id == p.entry_id))
            .where(e.booked_at >= start, e.booked_at < end)
            .subquery()
        )
        return sa.select(
            inner.c.account,
            inner.c.kind,
            sa.func.sum(inner.c.amount),
            sa.func.min(inner.c.at),
        ).group_by(inner.c.account, inner.c.kind, inner.c.slice)

    @staticmethod
    def _by_version(
        rows: Iterable[Any], start: datetime, contracts: Mapping[str, Sequence[Contract]]
    ) -> list[tuple[str | None, str, int | None, int, int, datetime]]:
        """Per-slice sums regrouped by (account, kind, contract version), with the prior part.

        Any instant of a slice decides for the whole slice; its first one is at hand.
        """
        totals: dict[tuple[str | None, str, int | None], list] = {}
        for account, kind, amount, first in rows:
            version = None
            if _is_flow_account(account):
                version = _version_at(contracts.get(str(Account.parse(account).owner), ()), first)
            row = totals.setdefault((account, kind, version), [0, 0, first])
            row[0] += int(amount)
            row[1] += int(amount) if first < start else 0
            row[2] = min(row[2], first)
        return [(*key, amount, prior, first) for key, (amount, prior, first) in totals.items()]

    def _expired(
        self, start: datetime, end: datetime, contracts: Mapping[str, Sequence[Contract]]
    ) -> sa.Select:
        """Σ of the points the period's EXPIRE entries took, per (funder, contract version)."""
        e, lots, moves = lt.entries.c, lt.lots.c, lt.lot_moves.c
        version = _version_case(lambda partner: lots.funder == partner, e.business_time, contracts)
        inner = (
            sa.select(
                lots.funder.label("funder"),
                version.label("version"),
                (-moves.delta).label("points"),
                e.business_time.label("at"),
            )
            .select_from(
                lt.lot_moves.join(lt.entries, e.id == moves.entry_id).join(
                    lt.lots, lots.id == moves.lot_id
                )
            )
            .where(e.kind == EntryKind.EXPIRE.value, e.booked_at >= start, e.booked_at < end)
            .subquery()
        )
        return sa.select(
            inner.c.funder,
            inner.c.version,
            sa.func.sum(inner.c.points),
            sa.func.sum(sa.case((inner.c.at < start, inner.c.points), else_=0)),
            sa.func.min(inner.c.at),
        ).group_by(inner.c.funder, inner.c.version)

    def contracted_partners(self) -> list[str]:
        """Every partner that has signed a contract version, by code."""
        c = pt.contracts.c
        return list(self.conn.scalars(sa.select(c.partner).distinct().order_by(c.partner)))

    # -- closes ---------------------------------------------------------------------------------

    def insert_close(self, close: PeriodClose) -> None:
        period, checkpoint = close.period, close.checkpoint
        self.conn.execute(
            t.settlement_periods.insert().values(
                label=period.label,
                kind=period.kind.value,
                starts_at=period.start,
                ends_at=period.end,
                log=checkpoint.log,
                checkpoint_size=checkpoint.size,
                checkpoint_root=checkpoint.root,
                checkpoint_note=checkpoint.note,
                closed_at=close.closed_at,
                closed_by=close.closed_by,
            )
        )

    def close(self, label: str) -> PeriodClose | None:
        row = self.conn.execute(
            sa.select(t.settlement_periods).where(t.settlement_periods.c.label == label)
        ).one_or_none()
        return None if row is None else _close(row)

    def last_close(self) -> PeriodClose | None:
        """The closed period that ends last."""
        row = self.conn.execute(
            sa.select(t.settlement_periods).order_by(t.settlement_periods.c.ends_at.desc()).limit(1)
        ).one_or_none()
        return None if row is None else _close(row)

    def close_ending_at(self, end: datetime) -> PeriodClose | None:
        row = self.conn.execute(
            sa.select(t.settlement_periods).where(t.settlement_periods.c.ends_at == end)
        ).one_or_none()
        return None if row is None else _close(row)

    # -- adjustments ----------------------------------------------------------------------------

    def insert_adjustment(self, adjustment: Adjustment) -> None:
        self.conn.execute(
            t.settlement_adjustments.insert().values(
                id=adjustment.id,
                partner=adjustment.partner,
                amount_cents=adjustment.amount_cents,
                reason=adjustment.reason,
                recorded_at=adjustment.recorded_at,
                recorded_by=adjustment.recorded_by,
                dispute_id=adjustment.dispute_id,
                entry_ids=list(adjustment.entry_ids),
            )
        )

    def adjustment_for_dispute(self, dispute_id: str) -> Adjustment | None:
        row = self.conn.execute(
            sa.select(t.settlement_adjustments).where(
                t.settlement_adjustments.c.dispute_id == dispute_id
            )
        ).one_or_none()
        return None if row is None else _adjustment(row)

    def adjustments(self, start: datetime, end: datetime) -> list[Adjustment]:
        """Adjustments recorded in ``[start, end)``, oldest first."""
        a = t.settlement_adjustments.c
        rows = self.conn.execute(
            sa.select(t.settlement_adjustments)
            .where(a.recorded_at >= start, a.recorded_at < end)
            .order_by(a.recorded_at, a.id)
        )
        return [_adjustment(row) for row in rows]

    # -- runs -----------------------------------------------------------------------------------

    def insert_run(self, run: StatementRun, rendered: Rendered) -> None:
        settlement = run.settlement
        label = settlement.period.label
        self.conn.execute(
            t.settlement_runs.insert().values(
                period=label,
                point_value=str(settlement.control.point_value),
                document=rendered.document,
                sha256=rendered.sha256,
                prepared_at=run.prepared_at,
                prepared_by=run.prepared_by,
            )
        )
        documents = dict(rendered.statements)
        for statement in settlement.statements:
            self.conn.execute(
                t.settlement_statements.insert().values(
                    id=statement.id,
                    period=label,
                    partner=statement.partner,
                    carried_in_cents=statement.carried_in_cents,
                    net_cents=statement.net_cents,
                    threshold_cents=statement.threshold_cents,
                    terms_version=statement.terms_version,
                    carried_out_cents=statement.carried_out_cents,
                    payable_cents=statement.payable_cents,
                    document=documents[statement.partner],
                    sha256=rendered.statement_hash(statement.partner),
                )
            )
        legs = {leg.line_id: leg for leg in settlement.legs}
        rows = [
            _line_row(line, statement.id, position, legs[line.id])
            for position, (statement, line) in enumerate(
                (s, line) for s in settlement.statements for line in s.lines
            )
        ]
        if rows:
            self.conn.execute(t.settlement_lines.insert(), rows)

    def run(self, label: str) -> StatementRun | None:
        """The stored run of a period, rebuilt from its rows and documents."""
        row = self.conn.execute(
            sa.select(t.settlement_runs).where(t.settlement_runs.c.period == label)
        ).one_or_none()
        if row is None:
            return None
        close = self.close(label)
        assert close is not None  # a foreign key ties every run to its close
        s, ln = t.settlement_statements.c, t.settlement_lines.c
        statement_rows = self.conn.execute(
            sa.select(t.settlement_statements).where(s.period == label).order_by(s.partner)
        ).all()
        line_rows = self.conn.execute(
            sa.select(t.settlement_lines, s.partner)
            .join(t.settlement_statements, s.id == ln.statement_id)
            .where(s.period == label)
            .order_by(ln.position)
        ).all()
        by_statement: dict[str, list[StatementLine]] = {}
        for line_row in line_rows:
            by_statement.setdefault(line_row.statement_id, []).append(_line(line_row))
        statements = tuple(
            Statement(
                id=r.id,
                period=label,
                partner=r.partner,
                lines=tuple(by_statement.get(r.id, ())),
                carried_in_cents=r.carried_in_cents,
                threshold_cents=r.threshold_cents,
                terms_version=r.terms_version,
            )
            for r in statement_rows
        )
        legs = tuple(OperatorLeg(r.id, r.operator_cents, r.rounding_cents) for r in line_rows)
        document = bytes(row.document)
        settlement = Settlement(
            period=close.period,
            checkpoint=close.checkpoint,
            statements=statements,
            control=_control(json.loads(document)["control"], Decimal(row.point_value)),
            legs=legs,
        )
        return StatementRun(
            settlement=settlement,
            document=document,
            statement_documents=tuple((r.partner, bytes(r.document)) for r in statement_rows),
            prepared_at=row.prepared_at,
            prepared_by=row.prepared_by,
        )

    def stored_hashes(self, label: str) -> tuple[bytes, dict[str, bytes]]:
        """The SHA-256 recorded for a run's document and for each of its statements."""
        run = self.conn.scalar(
            sa.select(t.settlement_runs.c.sha256).where(t.settlement_runs.c.period == label)
        )
        s = t.settlement_statements.c
        rows = self.conn.execute(sa.select(s.partner, s.sha256).where(s.period == label))
        return bytes(run or b""), {partner: bytes(sha) for partner, sha in rows}

    def carried_out(self, label: str) -> dict[str, int] | None:
        """Per partner, what a period's run carried forward; ``None`` if it was not prepared."""
        if (
            self.conn.scalar(
                sa.select(t.settlement_runs.c.period).where(t.settlement_runs.c.period == label)
            )
            is None
        ):
            return None
        s = t.settlement_statements.c
        rows = self.conn.execute(
            sa.select(s.partner, s.carried_out_cents).where(
                s.period == label, s.carried_out_cents != 0
            )
        )
        return {partner: int(cents) for partner, cents in rows}


@dataclass(frozen=True, slots=True)
class _PeriodSums:
    """A period's postings and expiries, summed (see ``_posted`` and ``_expired``)."""

    posted: list[tuple[str | None, str, int | None, int, int, datetime]]
    """(account or None for members, kind, version, Σ amount, Σ before the period, first at)."""
    expired: list[tuple[str, int | None, int, int, datetime]]
    """(funder, version, Σ points, Σ before the period, first at)."""


def _is_flow_account(account: str | None) -> bool:
    return (
        account is not None
        and account.startswith("partner:")
        and account.endswith((":issued", ":redeemed"))
    )


def _contracts_key(contracts: Mapping[str, Sequence[Contract]]) -> tuple:
    """What of the contracts the version ``CASE`` depends on, to recognise the same contracts."""
    return tuple(
        (partner, c.version, c.valid_from, c.valid_to)
        for partner in sorted(contracts)
        for c in sorted(contracts[partner], key=lambda c: c.version)
    )


def _version_at(versions: Sequence[Contract], at: datetime) -> int | None:
    """The contract version in force at ``at`` (the newest covering it), as ``_version_case``."""
    covering = [
        c.version
        for c in versions
        if c.valid_from <= at and (c.valid_to is None or at < c.valid_to)
    ]
    return max(covering) if covering else None


def _version_case(
    belongs: Any, at: sa.ColumnElement[datetime], contracts: Mapping[str, Sequence[Contract]]
) -> sa.ColumnElement[Any]:
    """The contract version in force at ``at`` for the row's partner, or NULL.

    Versions are tried newest first, so where an open-ended version and its successor both cover
    an instant, the successor wins, exactly as :func:`partners.directory.contract_at` decides.
    """
    whens = []
    for partner in sorted(contracts):
        for contract in sorted(contracts[partner], key=lambda c: -c.version):
            started = at >= contract.valid_from
            in_force = (
                started if contract.valid_to is None else sa.and_(started, at < contract.valid_to)
            )
            whens.append((sa.and_(belongs(partner), in_force), contract.version))
    if not whens:
        return sa.null()
    return sa.case(*whens, else_=sa.null())


def _close(row: Any) -> PeriodClose:
    period = parse_period(row.label)
    assert period.kind is PeriodKind(row.kind)
    return PeriodClose(
        period=period,
        checkpoint=CheckpointRef(
            row.log, row.checkpoint_size, bytes(row.checkpoint_root), row.checkpoint_note
        ),
        closed_at=row.closed_at,
        closed_by=row.closed_by,
    )


def _adjustment(row: Any) -> Adjustment:
    return Adjustment(
        id=row.id,
        partner=row.partner,
        amount_cents=row.amount_cents,
        reason=row.reason,
        recorded_at=row.recorded_at,
        recorded_by=row.recorded_by,
        dispute_id=row.dispute_id,
        entry_ids=tuple(row.entry_ids),
    )


def _line_row(line: StatementLine, statement: str, position: int, leg: OperatorLeg) -> dict:
    return {
        "id": line.id,
        "statement_id": statement,
        "position": position,
        "flow": line.flow.value,
        "contract_version": line.contract_version,
        "points": line.points,
        "points_gross": line.points_gross,
        "points_reversed": line.points_reversed,
        "points_prior_period": line.points_prior_period,
        "price": None if line.price is None else str(line.price),
        "rounding_mode": line.rounding_mode,
        "exact": str(line.exact),
        "amount_cents": line.amount_cents,
        "residue": str(line.residue),
        "operator_cents": leg.operator_cents,
        "rounding_cents": leg.rounding_cents,
    }


def _line(row: Any) -> StatementLine:
    return StatementLine(
        id=row.id,
        partner=row.partner,
        flow=Flow(row.flow),
        contract_version=row.contract_version,
        points=row.points,
        points_gross=row.points_gross,
        points_reversed=row.points_reversed,
        points_prior_period=row.points_prior_period,
        price=None if row.price is None else Decimal(row.price),
        rounding_mode=row.rounding_mode,
        exact=Decimal(row.exact),
        amount_cents=row.amount_cents,
        residue=Decimal(row.residue),
    )


def _control(document: Mapping[str, Any], point_value: Decimal) -> Control:
    return Control(
        point_value=point_value,
        cash_cents=_cents(document["cash"]),
        carried_in_cents=_cents(document["carried_in"]),
        margin=Decimal(document["margin"]),
        outstanding_points_growth=int(document["outstanding_points_growth"]),
        liability_growth=Decimal(document["liability_growth"]),
    )


def _cents(text: str) -> int:
    return int(Decimal(text) * 100)
