"""Settlement at scale: closing and preparing a month of 10,000,000 point entries.

Run ``python -m bench.settlement [--entries N] [--quick] [--rounds R] [--keep] [--seed DB]``. It
needs PostgreSQL at ``COALITION_BENCH_DATABASE_URL`` (default
``postgresql://root@127.0.0.1:5432/test``), where it creates databases named
``bench_settle_<random>_*`` of its own, migrates them and drops them (``--keep`` keeps the
generated month, ``--seed`` times such a kept database again).

Booking 10 million entries through the kernel (~300 earns/s on a quiet 2-CPU box) would take nine
hours, so the month is **generated**. :class:`Month` simulates the kernel's commands — EARN (one
funder; joint promotions funded by two partners whose lots expire within days; program-funded
welcome points), BURN (lots spent earliest-expiry-first), EARN_REVERSAL, BURN_REVERSAL (the lot
consumed last restored first) and the EXPIRE job — for four partners with contracts (SUPER's
price changes on 16 March: two contract versions) and one member per 20 entries, over March 2026
(Paris). :func:`load` writes with ``COPY`` the rows the kernel and the integrator would have left:
``entries``, ``postings``, ``lots`` (final remainders), ``lot_moves``, member accounts, every
balance, and the verifiable log — one canonical leaf per entry chained by ``prev``, every
complete-subtree node, a checkpoint signed with :mod:`ledger.note` per batch of 1,000 leaves, as
:class:`~ledger.integrator.Integrator` appends them (the first 200 leaves are compared with
:func:`ledger.journal.build_leaf`). ``idempotency`` rows are not written (close and prepare never
read them); the integrator's queue is empty, as after a drain.

Python simulates at most :data:`BASE` (100,000) entries; a bigger month is ``N / BASE`` copies of
the simulated one made by the server (:func:`replicate`): copy k has members of its own (``m…`` →
``k007m…``), ids mapped through md5(id ‖ k) and times shifted by k µs, so each copy is the same
month lived by another population and every copy's lots, balances and breakage stay exactly what
the kernel would leave. The log is not copied — leaves are chained by hashes, so they can only be
built one by one — so at 10M the close rests on the base month's real signed checkpoint (size
100,000). Close never reads leaves (it reads the queue, the latest checkpoint and the earliest
flow), prepare neither; ``verify_period``'s coverage check would, and is not timed here.
tests/integration/test_settlement_bench_data.py holds the generator to the kernel: the same
commands booked through :class:`~ledger.service.Ledger` give identical rows and statements; a
generated month with its log passes :func:`audit.verify.verify_database`; copies keep the
migrated schema and settle to exactly k times one.

Timed on a ``CREATE DATABASE … TEMPLATE`` clone of the month (VACUUM ANALYZEd, as autovacuum
leaves a month-old table): :func:`settlement.service.close_period` and
:func:`settlement.service.prepare_statements`, each in its own transaction. Baselines in the same
run over the same rows: ``SELECT account, sum(amount) FROM postings GROUP BY account`` (the floor
of any aggregation of the month), the same joined to ``entries`` and filtered on the period's
ledger time (the floor of an aggregation *by period*), and a raw ``COPY`` of postings rows into an
unindexed table. Goal (issue 6): close + prepare ≤ 60 s at 10M.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import json
import os
import platform
import random
import subprocess
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bench.suite import Figure, Server, cpu_model
from ledger import merkle
from ledger import tables as lt
from ledger.canonical import format_timestamp
from ledger.db import Database, create_engine, upgrade
from ledger.integrator import Integrator
from ledger.journal import build_leaf
from ledger.model import PROGRAM
from ledger.note import Checkpoint, NoteSigner
from ledger.repository import SqlLedgerStore
from ledger.service import Actor, Ledger
from partners import directory
from partners.directory import ContractTerms
from settlement import service
from settlement.periods import PARIS, Period, parse_period

DEFAULT_URL = "postgresql://root@127.0.0.1:5432/test"
ORIGIN = "bench.coalition.local/ledger"
MONTH = parse_period("2026-03")
PARTNERS = ("BANK", "DEPT", "RAIL", "SUPER")
#: SUPER's second contract version starts here: lines split by contract version mid-month.
REPRICED = datetime(2026, 3, 16, tzinfo=PARIS)
CONTRACTS_FROM = datetime(2026, 1, 1, tzinfo=PARIS)
PRICES = {  # issue price p, reimbursement price q
    "BANK": ("0.0115", "0"),
    "DEPT": ("0.0112", "0.0095"),
    "RAIL": ("0.0110", "0.0090"),
    "SUPER": ("0.0110", "0.0095"),
}
ACCOUNTS = {
    "SUPER": ("FR76 3000 6000 0112 3456 7890 189", "AGRIFRPP"),
    "DEPT": ("DE89 3704 0044 0532 0130 00", "COBADEFFXXX"),
    "RAIL": ("GB29 NWBK 6016 1331 9268 19", "NWBKGB2L"),
    "BANK": ("NL91 ABNA 0417 1643 00", "ABNANL2A"),
}
LOT_LIFETIME = timedelta(days=3 * 365)  # the kernel's default (Policy.lot_lifetime)
BATCH = 1_000  # leaves per integrator batch, one signed checkpoint each
GOAL_SECONDS = 60.0
FULL, QUICK = 10_000_000, 500_000
#: Entries simulated one by one; a larger month is copies of a simulated one (see replicate).
BASE = 100_000
RESULTS = Path(__file__).with_name("RESULTS.md")
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def terms(partner: str, issue_price: str | None = None) -> ContractTerms:
    p, q = PRICES[partner]
    return ContractTerms(
        issue_price=issue_price or p,
        reimbursement_price=q,
        breakage_rebate="0.005",
        monthly_fee_cents=50_000,
        pending_days=0,
        earn_rate="1",
        rounding_mode="ROUND_HALF_UP",
        carry_forward_threshold_cents=1_000,
    )


# -- the simulated month ---------------------------------------------------------------------------


@dataclass(slots=True)
class LotState:
    id: UUID
    member: str
    funder: str
    amount: int
    earned_at: datetime
    expires_at: datetime
    opened_by: UUID
    remaining: int

    @property
    def order(self) -> tuple[datetime, datetime, UUID]:
        """The kernel's spending order (SqlLedgerStore.spendable_lots): expiry, earning, id."""
        return (self.expires_at, self.earned_at, self.id)


@dataclass(slots=True)
class Planned:
    """One entry as the kernel would book it, and the command that books it."""

    id: UUID
    kind: str
    booked_at: datetime
    business_time: datetime
    partner: str | None
    member: str
    points: int
    credential: str
    key: str | None
    refers_to: Planned | None = None
    funding: dict[str, int] | None = None
    expires_at: datetime | None = None
    """What the command passed as ``expires_at`` (None: the kernel's default lifetime)."""
    postings: list[tuple[str, int]] = field(default_factory=list)
    lots: list[LotState] = field(default_factory=list)
    moves: list[tuple[LotState, int]] = field(default_factory=list)
    restored: dict[UUID, int] = field(default_factory=dict)
    """For a burn: points restored to each lot by its reversals so far."""
    reversed_points: int = 0
    """For an earn: points taken back by its reversals so far."""


class Month:
    """A month of the kernel's commands over ``members`` members, with the state they leave.

    Lots are spent as the kernel spends them (earliest expiry first), so the generated lot moves,
    the breakage per funder and every balance equal what booking the same commands through
    :class:`~ledger.service.Ledger` gives; the test suite checks this.
    """

    def __init__(self, entries: int, *, members: int | None = None, seed: int = 2026) -> None:
        self.entries = entries
        self.rng = random.Random(seed)
        count = members if members is not None else max(50, entries // 20)
        self.members = [f"m{n:07d}" for n in range(count)]
        self.period = MONTH
        self.lots: list[LotState] = []
        self.spendable: dict[str, list[LotState]] = {}
        self.expiring: list[tuple[datetime, int, LotState]] = []
        self.recent_earns: deque[Planned] = deque(maxlen=2_000)
        self.recent_burns: deque[Planned] = deque(maxlen=2_000)
        self.balances: dict[str, int] = {}

    def uuid(self) -> UUID:
        return UUID(int=self.rng.getrandbits(128), version=4)

    def plan(self) -> Iterator[Planned]:
        """Every entry of the month in booking order; booked_at strictly increasing."""
        start, span = self.period.start.astimezone(UTC), self.period.end - self.period.start
        step = span / self.entries
        for n in range(self.entries):
            yield self._next(n, start + step * n + timedelta(microseconds=1))

    def _next(self, n: int, now: datetime) -> Planned:
        roll = self.rng.random()
        member = self.rng.choice(self.members)
        planned = None
        if roll < 0.28:
            planned = self._burn(n, member, now)
        elif roll < 0.31:
            planned = self._earn_reversal(n, now)
        elif roll < 0.33:
            planned = self._burn_reversal(n, now)
        elif roll < 0.35:
            planned = self._expire(now)
        elif roll < 0.38:
            first, second = self.rng.sample(PARTNERS, 2)
            funding = {first: self.rng.randint(5, 200), second: self.rng.randint(5, 200)}
            expires = now + timedelta(hours=self.rng.randint(1, 24 * 10))
            planned = self._earn(n, member, first, funding, now, expires)
        elif roll < 0.39:
            expires = now + timedelta(hours=self.rng.randint(1, 24 * 10))
            planned = self._earn(n, member, "SUPER", {PROGRAM: 100}, now, expires)
        if planned is None:
            partner = self.rng.choice(PARTNERS)
            funding = {partner: self.rng.randint(1, 500)}
            planned = self._earn(n, member, partner, funding, now, None)
        for account, amount in planned.postings:
            self.balances[account] = self.balances.get(account, 0) + amount
        return planned

    # -- commands, as the kernel decides them ---------------------------------------------------

    def _earn(
        self,
        n: int,
        member: str,
        partner: str,
        funding: dict[str, int],
        now: datetime,
        expires_at: datetime | None,
    ) -> Planned:
        business_time = max(self.period.start, now - timedelta(seconds=self.rng.randint(0, 90)))
        expires = expires_at or business_time + LOT_LIFETIME
        planned = Planned(
            self.uuid(), "EARN", now, business_time, partner, member, sum(funding.values()),
            f"key-{partner.lower()}", f"k-{n}", funding=funding, expires_at=expires_at,
        )  # fmt: skip
        for funder, points in sorted(funding.items()):
            planned.postings.append((_source_of(funder), -points))
            lot = LotState(
                self.uuid(), member, funder, points, business_time, expires, planned.id, points
            )
            planned.lots.append(lot)
            self.lots.append(lot)
            self._spendable_add(lot)
            if expires_at is not None:
                heapq.heappush(self.expiring, (expires, len(self.lots), lot))
        planned.postings.append((f"member:{member}:available", planned.points))
        if len(funding) == 1 and PROGRAM not in funding:
            self.recent_earns.append(planned)
        return planned

    def _burn(self, n: int, member: str, now: datetime) -> Planned | None:
        available = self.balances.get(f"member:{member}:available", 0)
        if available < 20:
            return None
        points = self.rng.randint(10, min(available, 600))
        partner = self.rng.choice(PARTNERS)
        planned = Planned(
            self.uuid(),
            "BURN",
            now,
            now,
            partner,
            member,
            points,
            f"key-{partner.lower()}",
            f"k-{n}",
        )
        planned.postings = [
            (f"member:{member}:available", -points),
            (f"partner:{partner}:redeemed", points),
        ]
        rest, lots = points, self.spendable[member]
        while rest:
            lot = lots[0]
            take = min(rest, lot.remaining)
            planned.moves.append((lot, -take))
            lot.remaining -= take
            rest -= take
            if not lot.remaining:
                lots.pop(0)
        self.recent_burns.append(planned)
        return planned

    def _earn_reversal(self, n: int, now: datetime) -> Planned | None:
        if not self.recent_earns:
            return None
        original = self.rng.choice(self.recent_earns)
        (lot,) = original.lots
        reversible = min(original.points - original.reversed_points, lot.remaining)
        if reversible <= 0:
            return None
        points = min(reversible, self.rng.randint(1, original.points))
        partner = original.partner
        assert partner is not None
        planned = Planned(
            self.uuid(), "EARN_REVERSAL", now, now, partner, lot.member, points,
            f"key-{partner.lower()}", f"k-{n}", refers_to=original,
        )  # fmt: skip
        planned.postings = [
            (f"member:{lot.member}:available", -points),
            (_source_of(lot.funder), points),
        ]
        planned.moves = [(lot, -points)]
        lot.remaining -= points
        original.reversed_points += points
        if not lot.remaining:
            self._spendable_remove(lot)
        return planned

    def _burn_reversal(self, n: int, now: datetime) -> Planned | None:
        if not self.recent_burns:
            return None
        original = self.rng.choice(self.recent_burns)
        consumed = {
            lot.id: -delta - original.restored.get(lot.id, 0) for lot, delta in original.moves
        }
        reversible = sum(consumed.values())
        if reversible <= 0:
            return None
        points = min(reversible, self.rng.randint(1, original.points))
        partner = original.partner
        assert partner is not None
        planned = Planned(
            self.uuid(), "BURN_REVERSAL", now, now, partner, original.member, points,
            f"key-{partner.lower()}", f"k-{n}", refers_to=original,
        )  # fmt: skip
        planned.postings = [
            (f"partner:{partner}:redeemed", -points),
            (f"member:{original.member}:available", points),
        ]
        rest = points
        for lot, _ in reversed(original.moves):
            give = min(consumed[lot.id], rest)
            if give:
                planned.moves.append((lot, give))
                original.restored[lot.id] = original.restored.get(lot.id, 0) + give
                if not lot.remaining:
                    self._spendable_add(lot)
                lot.remaining += give
                rest -= give
            if not rest:
                break
        return planned

    def _expire(self, now: datetime) -> Planned | None:
        """The expiry job for the first member with an expired lot left (Ledger.expire_due)."""
        while self.expiring and self.expiring[0][0] <= now:
            _, _, lot = heapq.heappop(self.expiring)
            if lot.remaining:
                break
        else:
            return None
        member = lot.member
        left = self.balances.get(f"member:{member}:available", 0)
        planned = Planned(self.uuid(), "EXPIRE", now, now, None, member, 0, "system", None)
        for state in list(self.spendable[member]):
            if state.expires_at > now or not left:
                continue
            take = min(state.remaining, left)
            planned.moves.append((state, -take))
            state.remaining -= take
            left -= take
            if not state.remaining:
                self._spendable_remove(state)
        planned.points = -sum(delta for _, delta in planned.moves)
        planned.postings = [
            (f"member:{member}:available", -planned.points),
            ("program:breakage", planned.points),
        ]
        return planned

    def _spendable_add(self, lot: LotState) -> None:
        lots = self.spendable.setdefault(lot.member, [])
        lots.insert(bisect.bisect(lots, lot.order, key=lambda s: s.order), lot)

    def _spendable_remove(self, lot: LotState) -> None:
        self.spendable[lot.member].remove(lot)


def _source_of(funder: str) -> str:
    return "program:funded" if funder == PROGRAM else f"partner:{funder}:issued"


# -- rows -----------------------------------------------------------------------------------------


def _stamp(moment: datetime) -> str:
    """:func:`ledger.canonical.format_timestamp` of a UTC datetime, at C speed (checked below)."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def entry_body(p: Planned) -> dict[str, Any]:
    """The leaf's ``entry`` member: :func:`ledger.journal.entry_record` of the planned entry."""
    return {
        "id": str(p.id),
        "kind": p.kind,
        "business_time": _stamp(p.business_time),
        "booked_at": _stamp(p.booked_at),
        "partner": p.partner,
        "credential": p.credential,
        "idempotency_key": p.key,
        "refers_to": str(p.refers_to.id) if p.refers_to else None,
        "reason": None,
        "postings": [{"account": a, "amount": n} for a, n in p.postings],
        "lots_opened": [
            {
                "id": str(lot.id),
                "member": lot.member,
                "funder": lot.funder,
                "amount": lot.amount,
                "earned_at": _stamp(lot.earned_at),
                "expires_at": _stamp(lot.expires_at),
                "pending_until": None,
                "price_version": None,
            }
            for lot in p.lots
        ],
        "lot_moves": [{"lot": str(lot.id), "delta": d} for lot, d in p.moves],
        "lots_released": [],
        "attributes": {},
    }


class Log:
    """The integrator's view while leaves are appended: tip, right-edge peaks, batch buffer."""

    def __init__(self, signer: NoteSigner) -> None:
        self.signer = signer
        self.size = 0
        self.prev = bytes(32)
        self.peaks: list[tuple[int, int, bytes]] = []  # (level, index, hash)

    def leaf(self, body: dict[str, Any], kind: str, committed: datetime) -> tuple[bytes, bytes]:
        index, stamp = self.size, format_timestamp(committed)
        nonce = os.urandom(16)
        envelope = {
            "v": 1,
            "log": ORIGIN,
            "index": index,
            "prev": self.prev.hex(),
            "kind": kind,
            "entry": body,
            "committed_at": stamp,
            "nonce": nonce.hex(),
        }
        data = _ENCODE(envelope).encode()
        if index < 200:  # the C codec equals RFC 8785 for this ASCII, integer-only data
            expected = build_leaf(
                log=ORIGIN, index=index, prev=self.prev, kind=kind, body=body,
                committed_at=committed, nonce=nonce,
            )  # fmt: skip
            assert data == expected.data, "generated leaf differs from ledger.journal.build_leaf"
        self.prev = merkle.leaf_hash(data)
        self.size += 1
        return data, self.prev

    def nodes(self, index: int, value: bytes) -> list[tuple[int, int, bytes]]:
        """The complete subtrees the leaf at ``index`` creates (merkle.nodes_created_by_append)."""
        level, created = 0, [(0, index, value)]
        while self.peaks and self.peaks[-1][0] == level:
            _, _, left = self.peaks.pop()
            value = merkle.node_hash(left, value)
            level, index = level + 1, index >> 1
            created.append((level, index, value))
        self.peaks.append((level, index, value))
        return created

    def root(self) -> bytes:
        if not self.peaks:
            return merkle.EMPTY_ROOT
        value = self.peaks[-1][2]
        for _, _, left in reversed(self.peaks[:-1]):
            value = merkle.node_hash(left, value)
        return value

    def sign(self) -> str:
        return self.signer.sign(Checkpoint(ORIGIN, self.size, self.root()).text())


class Sink:
    """Where generated rows go: COPY on PostgreSQL, executemany inserts on SQLite."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.postgres = conn.dialect.name == "postgresql"
        self.rows = 0

    def write(self, table: sa.Table, columns: tuple[str, ...], rows: list[tuple]) -> None:
        if not rows:
            return
        self.rows += len(rows)
        if self.postgres:
            cursor = self.conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
            with cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            self.conn.execute(
                table.insert(), [dict(zip(columns, row, strict=True)) for row in rows]
            )


ENTRY_COLUMNS = (
    "id", "kind", "business_time", "booked_at", "partner", "credential", "idempotency_key",
    "refers_to", "reason", "attributes",
)  # fmt: skip
LOT_COLUMNS = (
    "id", "opened_by", "member", "funder", "amount", "earned_at", "expires_at", "price_version",
    "pending_until", "remaining", "pending",
)  # fmt: skip


@dataclass
class Loaded:
    entries: int
    rows: int
    seconds: float
    checkpoint_size: int


def setup_books(conn: Connection, month: Month, now: datetime) -> None:
    """Partners, contracts and system accounts through the directory; member accounts by rows."""
    Ledger(clock=lambda: now).open_system_accounts(SqlLedgerStore(conn))
    for code in PARTNERS:
        iban, bic = ACCOUNTS[code]
        directory.onboard_partner(conn, code, f"{code} SA", iban, bic, now)
        if code == "SUPER":
            directory.add_contract(conn, code, terms(code), CONTRACTS_FROM, REPRICED, now, "bench")
            directory.add_contract(conn, code, terms(code, "0.0120"), REPRICED, None, now, "bench")
        else:
            directory.add_contract(conn, code, terms(code), CONTRACTS_FROM, None, now, "bench")


def load(
    conn: Connection,
    month: Month,
    signer: NoteSigner,
    *,
    chunk: int = 20_000,
    log: bool = True,
    check_references: bool = True,
    copies: int = 1,
) -> Loaded:
    """Write the month into an empty migrated database, in the caller's transaction.

    With ``log``, also the verifiable log the integrator would have written for it (one leaf per
    entry, every tree node, a signed checkpoint per 1,000 leaves); without, only one signed
    checkpoint over the same leaves' Merkle root, computed but not stored (close reads only the
    checkpoint; a verifier would then find the leaves missing).

    ``check_references=False`` (PostgreSQL) loads the bulk tables without their keys, foreign
    keys and indexes and restores them at the end, as pg_restore does; restoring them checks every
    key and reference. ``copies`` > 1 then adds that many copies of the month (:func:`replicate`).
    """
    started = time.perf_counter()
    rebuild: list[str] = []
    if not check_references and conn.dialect.name == "postgresql":
        rebuild = _drop_constraints_and_indexes(conn)
    opened = month.period.start - timedelta(days=1)
    setup_books(conn, month, opened)
    sink = Sink(conn)
    member_accounts = [
        (f"member:{m}:{role}", f"member:{role}", m, opened)
        for m in month.members
        for role in ("available", "pending", "held")
    ]
    for n in range(0, len(member_accounts), 100_000):
        sink.write(
            lt.accounts, ("code", "kind", "owner", "opened_at"), member_accounts[n : n + 100_000]
        )
    chain = Log(signer)
    sink.write(
        lt.logs,
        ("origin", "vkey", "opened_at", "previous_origin"),
        [(ORIGIN, signer.vkey, opened, None)],
    )
    sink.write(
        lt.checkpoints, ("log", "size", "root", "note", "created_at"),
        [(ORIGIN, 0, merkle.EMPTY_ROOT, chain.sign(), opened)],
    )  # fmt: skip
    entries: list[tuple] = []
    postings: list[tuple] = []
    lots: list[tuple] = []
    moves: list[tuple] = []
    leaves: list[tuple] = []
    nodes: list[tuple] = []
    checkpoints: list[tuple] = []
    batch: list[Planned] = []
    attributes: Any = "{}" if sink.postgres else {}  # COPY takes JSON text; inserts, a value

    def integrate() -> None:
        committed = batch[-1].booked_at + timedelta(milliseconds=200)
        for p in batch:
            if chain.size < 200:
                moments = [p.booked_at, p.business_time, *(lot.expires_at for lot in p.lots)]
                assert all(_stamp(m) == format_timestamp(m) for m in moments)
            data, digest = chain.leaf(entry_body(p), p.kind, committed)
            index = chain.size - 1
            created = chain.nodes(index, digest)
            if log:
                leaves.append((ORIGIN, index, p.id, digest, data))
                nodes.extend((ORIGIN, level, i, h) for level, i, h in created)
        if log:
            checkpoints.append((ORIGIN, chain.size, chain.root(), chain.sign(), committed))
        batch.clear()

    def flush() -> None:
        sink.write(lt.entries, ENTRY_COLUMNS, entries)
        sink.write(lt.postings, ("entry_id", "line", "account", "amount"), postings)
        sink.write(lt.lots, LOT_COLUMNS, lots)
        sink.write(lt.lot_moves, ("entry_id", "lot_id", "line", "delta"), moves)
        sink.write(lt.leaves, ("log", "idx", "entry_id", "hash", "data"), leaves)
        sink.write(lt.tree_nodes, ("log", "level", "idx", "hash"), nodes)
        sink.write(lt.checkpoints, ("log", "size", "root", "note", "created_at"), checkpoints)
        for rows in (entries, postings, lots, moves, leaves, nodes, checkpoints):
            rows.clear()

    for p in month.plan():
        entries.append(
            (p.id, p.kind, p.business_time, p.booked_at, p.partner, p.credential, p.key,
             p.refers_to.id if p.refers_to else None, None, attributes)
        )  # fmt: skip
        postings.extend((p.id, line, a, n) for line, (a, n) in enumerate(p.postings))
        # Opened with their full amount, as the kernel inserts them; remainders are set last.
        lots.extend(
            (lot.id, p.id, lot.member, lot.funder, lot.amount, lot.earned_at, lot.expires_at,
             None, None, lot.amount, False)
            for lot in p.lots
        )  # fmt: skip
        moves.extend((p.id, lot.id, line, d) for line, (lot, d) in enumerate(p.moves))
        batch.append(p)
        if len(batch) == BATCH:
            integrate()
        if len(entries) >= chunk:
            flush()
    if batch:
        integrate()
    if not log:
        checkpoints.append((ORIGIN, chain.size, chain.root(), chain.sign(), month.period.end))
    flush()
    _write_remainders(conn, sink, month)
    _write_balances(conn, sink, month)
    rows = sink.rows
    if copies > 1:
        rows += replicate(conn, copies)
    if rebuild:
        conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '512MB'")
        for statement in rebuild:
            conn.exec_driver_sql(statement)
    return Loaded(month.entries * copies, rows, time.perf_counter() - started, chain.size)


def _remap(column: str) -> str:
    """SQL for copy k's id of a base id: a fixed function of both, so references stay intact."""
    return f"md5({column}::text || ':' || k)::uuid"


def replicate(conn: Connection, copies: int) -> int:
    """Add ``copies − 1`` copies of the month just loaded, each with members of its own.

    Copy k renames member ``m0001234`` to ``k03m0001234`` and maps every entry and lot id through
    md5(id ‖ k), so each copy is the same month lived by another population: same partners, same
    kinds and amounts, booked k µs after its original (the order within a copy is kept). Points
    never cross between copies, so every copy's lots, balances and breakage stay what the kernel
    would have left. Set-based SQL: the server copies rows far faster than Python can write them.
    Returns the rows written. (PostgreSQL only; the log is not copied — see the module docstring.)
    """
    series = f"generate_series(1, {int(copies) - 1}) AS k"
    shift = "make_interval(secs => k / 1000000.0)"
    member = "'k' || lpad(k::text, 3, '0')"
    account = f"replace({{0}}, 'member:m', 'member:' || {member} || 'm')"
    statements = [
        f"INSERT INTO accounts (code, kind, owner, opened_at) SELECT {account.format('code')},"
        f" kind, {member} || owner, opened_at FROM accounts, {series} WHERE code LIKE 'member:%%'",
        f"INSERT INTO balances (account, shard, balance) SELECT {account.format('account')},"
        f" shard, balance FROM balances, {series} WHERE account LIKE 'member:%%'",
        f"UPDATE balances SET balance = balance * {int(copies)} WHERE account NOT LIKE 'member:%%'",
        f"INSERT INTO entries ({', '.join(ENTRY_COLUMNS)}) SELECT {_remap('id')}, kind,"
        f" business_time + {shift}, booked_at + {shift}, partner, credential,"
        f" idempotency_key || '.' || k, {_remap('refers_to')}, reason, attributes"
        f" FROM entries, {series}",
        f"INSERT INTO postings (entry_id, line, account, amount) SELECT {_remap('entry_id')},"
        f" line, {account.format('account')}, amount FROM postings, {series}",
        f"INSERT INTO lots ({', '.join(LOT_COLUMNS)}) SELECT {_remap('id')},"
        f" {_remap('opened_by')}, {member} || member, funder, amount, earned_at + {shift},"
        f" expires_at + {shift}, price_version, pending_until, remaining, pending"
        f" FROM lots, {series}",
        f"INSERT INTO lot_moves (entry_id, lot_id, line, delta) SELECT {_remap('entry_id')},"
        f" {_remap('lot_id')}, line, delta FROM lot_moves, {series}",
    ]
    written = 0
    for statement in statements:
        result = conn.exec_driver_sql(statement)
        if statement.startswith("INSERT"):
            written += max(result.rowcount, 0)
    return written


#: The tables a month fills: loaded without their indexes, which are rebuilt afterwards.
BULK_TABLES = ("entries", "postings", "lots", "lot_moves", "leaves", "tree_nodes")


def _drop_constraints_and_indexes(conn: Connection) -> list[str]:
    """Drop the bulk tables' keys, foreign keys and indexes; the statements that restore them.

    What pg_restore does: building an index once from sorted data is far cheaper than inserting
    80 million random keys one by one. The schema afterwards is the migrated one, name for name.
    """
    tables = list(BULK_TABLES)
    constraints = conn.execute(
        sa.text(
            "SELECT conrelid::regclass::text AS tab, conname,"
            " pg_get_constraintdef(oid) AS definition,"
            " contype FROM pg_constraint WHERE contype IN ('p', 'u', 'f')"
            " AND (conrelid::regclass::text = ANY(:t) OR confrelid::regclass::text = ANY(:t))"
        ),
        {"t": tables},
    ).all()
    indexes = conn.execute(
        sa.text(
            "SELECT i.indexrelid::regclass::text AS name,"
            " pg_get_indexdef(i.indexrelid) AS definition"
            " FROM pg_index i WHERE i.indrelid::regclass::text = ANY(:t) AND NOT EXISTS"
            " (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid"
            " AND c.contype IN ('p', 'u'))"
        ),
        {"t": tables},
    ).all()
    keys = [c for c in constraints if c.contype != "f" and c.tab in tables]
    foreign = [c for c in constraints if c.contype == "f"]
    for c in foreign + keys:
        conn.exec_driver_sql(f'ALTER TABLE {c.tab} DROP CONSTRAINT "{c.conname}"')
    for index in indexes:
        conn.exec_driver_sql(f"DROP INDEX {index.name}")
    return [
        *(f'ALTER TABLE {c.tab} ADD CONSTRAINT "{c.conname}" {c.definition}' for c in keys),
        *(index.definition for index in indexes),
        *(f'ALTER TABLE {c.tab} ADD CONSTRAINT "{c.conname}" {c.definition}' for c in foreign),
    ]


def _write_remainders(conn: Connection, sink: Sink, month: Month) -> None:
    """The lots' cached remainders, in one set-based UPDATE from a scratch table."""
    changed = [(lot.id, lot.remaining) for lot in month.lots if lot.remaining != lot.amount]
    if not sink.postgres:
        lots = lt.lots.c
        update = lt.lots.update().where(lots.id == sa.bindparam("lot"))
        if changed:
            conn.execute(
                update.values(remaining=sa.bindparam("left")),
                [{"lot": lot, "left": left} for lot, left in changed],
            )
        return
    conn.exec_driver_sql(
        "CREATE TEMPORARY TABLE bench_remaining (id uuid PRIMARY KEY, remaining bigint)"
        " ON COMMIT DROP"
    )
    scratch = sa.table("bench_remaining", sa.column("id"), sa.column("remaining"))
    for n in range(0, len(changed), 100_000):
        sink.write(scratch, ("id", "remaining"), changed[n : n + 100_000])  # type: ignore[arg-type]
    conn.exec_driver_sql(
        "UPDATE lots SET remaining = r.remaining FROM bench_remaining r WHERE lots.id = r.id"
    )


def _write_balances(conn: Connection, sink: Sink, month: Month) -> None:
    """Member balances as new rows (one shard: never negative); others on shard 0 of 8."""
    rows = [
        (f"member:{m}:{role}", 0, month.balances.get(f"member:{m}:{role}", 0))
        for m in month.members
        for role in ("available", "pending", "held")
    ]
    for n in range(0, len(rows), 100_000):
        sink.write(lt.balances, ("account", "shard", "balance"), rows[n : n + 100_000])
    b = lt.balances.c
    for account, amount in sorted(month.balances.items()):
        if not account.startswith("member:"):
            conn.execute(
                lt.balances.update()
                .where(b.account == account, b.shard == 0)
                .values(balance=amount)
            )


# -- booking the same month through the kernel (for the faithfulness test) ---------------------


def book_through_kernel(db: Database, month: Month) -> int:
    """Book the month's commands through :class:`~ledger.service.Ledger`, one per transaction.

    Each entry the kernel books must equal the planned one — kind, times, partner, credential,
    postings, the lots it opens and the lot moves it makes (lots named by the entry that opened
    them and their funder) — else :class:`GeneratorDiverged`. Slow (the kernel's speed): for
    checking the generator at small scale. Returns the number of entries booked.
    """
    opened = month.period.start - timedelta(days=1)
    clock = _Clock(opened)
    kernel = Ledger(clock=clock)
    with db.transaction() as conn:
        setup_books(conn, month, opened)
        for member in month.members:
            kernel.open_member(SqlLedgerStore(conn), member)
    ids: dict[UUID, UUID] = {}
    lots: dict[UUID, tuple[UUID, str]] = {}  # kernel lot id → (planned opening entry, funder)
    for p in month.plan():
        clock.now = p.booked_at
        actor = Actor(p.credential, partner=p.partner)
        with db.transaction() as conn, _planned_ids(p):
            store = SqlLedgerStore(conn)
            if p.kind == "EARN":
                entry = kernel.earn(
                    store, actor, p.key or "", member=p.member, funding=p.funding or {},
                    business_time=p.business_time, expires_at=p.expires_at,
                ).entry  # fmt: skip
            elif p.kind == "BURN":
                entry = kernel.burn(
                    store, actor, p.key or "", member=p.member, points=p.points,
                    business_time=p.business_time,
                ).entry  # fmt: skip
            elif p.kind in ("EARN_REVERSAL", "BURN_REVERSAL") and p.refers_to is not None:
                entry = kernel.reverse(
                    store, actor, p.key or "", entry_id=ids[p.refers_to.id], points=p.points,
                    business_time=p.business_time,
                ).entry  # fmt: skip
            else:
                expired = kernel.expire_due(store, p.member, p.booked_at)
                if expired is None:
                    raise GeneratorDiverged(f"entry {p.key}: the kernel expired nothing")
                entry = expired
        for kernel_lot, planned_lot in zip(entry.opened_lots, p.lots, strict=True):
            lots[kernel_lot.id] = (planned_lot.opened_by, planned_lot.funder)
        booked = (
            entry.kind.value, entry.booked_at, entry.business_time, entry.partner,
            entry.credential, [(x.account, x.amount) for x in entry.postings],
            [(lot.member, lot.funder, lot.amount, lot.expires_at) for lot in entry.opened_lots],
            [(lots[m.lot_id], m.delta) for m in entry.lot_moves],
        )  # fmt: skip
        planned = (
            p.kind, p.booked_at, p.business_time, p.partner, p.credential, p.postings,
            [(lot.member, lot.funder, lot.amount, lot.expires_at) for lot in p.lots],
            [((lot.opened_by, lot.funder), delta) for lot, delta in p.moves],
        )  # fmt: skip
        if booked != planned:
            raise GeneratorDiverged(f"entry {p.key}: the kernel booked {booked}, planned {planned}")
        ids[p.id] = entry.id
    return len(ids)


@contextmanager
def _planned_ids(planned: Planned) -> Iterator[None]:
    """Let the kernel draw the planned ids (the entry's, then its lots') instead of random ones.

    The kernel spends lots opened by one entry (same expiry, same earning time) in id order, so
    with ids of its own it would break those ties differently from the plan, at random; with the
    planned ids both break them alike and every row compares equal.
    """
    import ledger.service

    drawn = iter([planned.id, *(lot.id for lot in planned.lots)])
    kernel_uuid4 = ledger.service.uuid4
    ledger.service.uuid4 = lambda: next(drawn)  # type: ignore[assignment]
    try:
        yield
    finally:
        ledger.service.uuid4 = kernel_uuid4


class GeneratorDiverged(Exception):
    """The generator planned an entry the kernel books differently."""


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


# -- measuring -------------------------------------------------------------------------------------


@contextmanager
def database(url: str) -> Iterator[Database]:
    db = Database.connect(url, poolclass=sa.pool.NullPool)
    try:
        yield db
    finally:
        db.dispose()


def generate(
    url: str,
    entries: int,
    signer: NoteSigner,
    *,
    base: int = BASE,
    log: bool = True,
    check_references: bool = False,
) -> Loaded:
    """Migrate the empty database at ``url`` and load a generated month into it; VACUUM ANALYZE.

    Up to ``base`` entries are simulated entry by entry; a larger month is that many copies of a
    simulated base month (:func:`replicate`), ``entries`` rounded to a multiple of the copies.
    """
    copies = max(1, round(entries / base))
    engine = create_engine(url, poolclass=sa.pool.NullPool)
    upgrade(engine)
    engine.dispose()
    with database(url) as db:
        with db.transaction() as conn:
            loaded = load(
                conn,
                Month(entries // copies),
                signer,
                log=log,
                check_references=check_references,
                copies=copies,
            )
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    return loaded


@dataclass(frozen=True)
class Timing:
    close: float
    prepare: float
    lines: int
    balanced: bool
    checkpoint_size: int


def close_and_prepare(url: str, signer: NoteSigner, period: Period = MONTH) -> Timing:
    """Time close_period, then prepare_statements, each in its own transaction, as finance does."""
    now = period.end + timedelta(hours=1)
    with database(url) as db:
        started = time.perf_counter()
        with db.transaction() as conn:
            close = service.close_period(
                conn, period, now=now, closed_by="ann", integrator=Integrator(signer)
            )
        closed = time.perf_counter()
        with db.transaction() as conn:
            run = service.prepare_statements(conn, period, now=now, prepared_by="ann")
        prepared = time.perf_counter()
    return Timing(
        closed - started,
        prepared - closed,
        len(run.settlement.lines),
        run.settlement.control.balanced,
        close.checkpoint.size,
    )


def timed_sql(url: str, sql: str, **params: Any) -> float:
    with database(url) as db, db.engine.connect() as conn:
        started = time.perf_counter()
        conn.execute(sa.text(sql), params).all()
        return time.perf_counter() - started


SUM_ALL = "SELECT account, sum(amount) FROM postings GROUP BY account"
SUM_PERIOD = (
    "SELECT p.account, sum(p.amount) FROM postings p JOIN entries e ON e.id = p.entry_id"
    " WHERE e.booked_at >= :start AND e.booked_at < :end GROUP BY p.account"
)


def copy_baseline(url: str, rows: int) -> tuple[int, float]:
    """Raw COPY of ``rows`` postings rows (read out first) into an unindexed scratch table."""
    import io

    import psycopg

    plain = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain) as conn:
        buffer = io.BytesIO()
        with conn.cursor().copy(
            "COPY (SELECT entry_id, line, account, amount FROM postings"
            f" LIMIT {int(rows)}) TO STDOUT"
        ) as copy:
            for block in copy:
                buffer.write(block)
        conn.execute(
            "CREATE TABLE bench_copy (entry_id uuid, line smallint, account varchar(100),"
            " amount bigint)"
        )
        conn.commit()
        data = buffer.getvalue()
        started = time.perf_counter()
        with conn.cursor().copy("COPY bench_copy FROM STDIN") as copy:
            for n in range(0, len(data), 1 << 20):
                copy.write(data[n : n + (1 << 20)])
        conn.commit()
        seconds = time.perf_counter() - started
        count = conn.execute("SELECT count(*) FROM bench_copy").fetchone()
        conn.execute("DROP TABLE bench_copy")
        conn.commit()
    return int(count[0] if count else 0), seconds


def machine(url: str) -> list[str]:
    model = cpu_model()
    with database(url) as db, db.engine.connect() as conn:
        version = str(conn.scalar(sa.text("SELECT version()")) or "?").split(" on ")[0]
        settings = [
            (name, conn.scalar(sa.text("SELECT current_setting(:n)"), {"n": name}))
            for name in ("shared_buffers", "work_mem", "max_parallel_workers_per_gather")
        ]
    date = subprocess.run(["date", "-u"], capture_output=True, text=True, check=False).stdout
    loads = " ".join(f"{load:.2f}" for load in os.getloadavg())
    shown = ", ".join(f"{name}={value}" for name, value in settings)
    return [
        f"date: {date.strip() or datetime.now(UTC).isoformat()}",
        f"machine: nproc {os.cpu_count()}, {model} ({platform.machine()}); load {loads}",
        f"python: {platform.python_version()}",
        f"postgresql: {version}; {shown}",
    ]


@dataclass
class Outcome:
    entries: int
    loaded: Loaded
    timings: list[Timing]
    sum_all: float
    sum_period: float
    copied: tuple[int, float]
    postings: int
    database_bytes: int


def measure(
    url: str,
    entries: int,
    *,
    rounds: int = 2,
    log: bool = True,
    seed: str | None = None,
    keep: bool = False,
) -> Outcome:
    """Generate the month (or reuse the generated database ``seed``), then time and compare.

    Each timed round runs on a fresh ``CREATE DATABASE … TEMPLATE`` clone of the month.
    ``keep`` leaves the generated database in place (its name is printed) for ``seed`` later.
    """
    server, signer = Server(url, "settle", file_copy=True), NoteSigner.generate(ORIGIN)
    loaded = None
    try:
        if seed is None:
            seed = server.create("seed")
            loaded = generate(server.url_of(seed), entries, signer, log=log)
            print(
                f"  generated {loaded.entries:,} entries ({loaded.rows:,} rows) in"
                f" {loaded.seconds:.0f} s into {seed}",
                flush=True,
            )
            if keep:
                server.created.remove(seed)
        seed_url = server.url_of(seed)
        with database(seed_url) as db, db.engine.connect() as conn:
            count = int(conn.scalar(sa.text("SELECT count(*) FROM entries")) or 0)
            postings = int(conn.scalar(sa.text("SELECT count(*) FROM postings")) or 0)
            size = int(conn.scalar(sa.text("SELECT pg_database_size(current_database())")) or 0)
        if loaded is None:
            loaded = Loaded(count, 0, 0.0, 0)  # reused: generated by an earlier run
        timings = []
        for round_ in range(rounds):
            clone = server.create(f"r{round_}", template=seed)
            timings.append(close_and_prepare(server.url_of(clone), signer))
            t = timings[-1]
            print(
                f"  round {round_ + 1}: close {t.close:.2f} s, prepare {t.prepare:.2f} s",
                flush=True,
            )
            server.drop(clone)
        window = {"start": MONTH.start, "end": MONTH.end}
        sum_all = min(timed_sql(seed_url, SUM_ALL) for _ in range(2))
        sum_period = min(timed_sql(seed_url, SUM_PERIOD, **window) for _ in range(2))
        copied = copy_baseline(seed_url, min(postings, 2_000_000))
        return Outcome(count, loaded, timings, sum_all, sum_period, copied, postings, size)
    finally:
        server.drop_all()


def report(outcome: Outcome) -> list[str]:
    best = min(outcome.timings, key=lambda t: t.close + t.prepare)
    total = best.close + best.prepare
    n = outcome.entries
    copied_rows, copy_seconds = outcome.copied
    lines = [
        f"month: {n:,} entries, {outcome.postings:,} postings; database"
        f" {outcome.database_bytes / 2**30:.1f} GiB; "
        + (
            f"generated and loaded in {outcome.loaded.seconds:.0f} s"
            f" ({outcome.loaded.rows:,} rows, {outcome.loaded.rows / outcome.loaded.seconds:,.0f}"
            " rows/s)"
            if outcome.loaded.seconds
            else "generated by an earlier run (--seed)"
        ),
        f"statements: {best.lines} lines, control total balanced: {best.balanced};"
        f" checkpoint size {best.checkpoint_size:,}",
        "",
        "| step (best of rounds) | seconds | entries/s | × SUM GROUP BY (all postings) |"
        " × SUM by period (join) |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = [
        ("close_period", best.close),
        ("prepare_statements", best.prepare),
        ("**close + prepare**", total),
        ("baseline: SELECT account, sum(amount) FROM postings GROUP BY account", outcome.sum_all),
        ("baseline: the same joined to entries, filtered on booked_at", outcome.sum_period),
    ]
    for name, seconds in rows:
        lines.append(
            f"| {name} | {seconds:.2f} | {n / seconds:,.0f} | {seconds / outcome.sum_all:.2f}"
            f" | {seconds / outcome.sum_period:.2f} |"
        )
    lines += [
        f"| baseline: raw COPY of {copied_rows:,} postings rows, unindexed table"
        f" | {copy_seconds:.2f}"
        f" | {copied_rows / copy_seconds:,.0f} rows/s | | |",
        "",
        "rounds: "
        + "; ".join(f"close {t.close:.2f} s + prepare {t.prepare:.2f} s" for t in outcome.timings),
        f"goal close + prepare ≤ {GOAL_SECONDS:.0f} s at {FULL:,} entries: "
        + (
            ("met" if total <= GOAL_SECONDS else "NOT met") + f" ({total:.1f} s)"
            if n >= FULL
            else f"not measured at this size ({total:.1f} s for {n:,})"
        ),
    ]
    return lines


def figures(outcome: Outcome) -> list[Figure]:
    """The run's figures; each time is compared with the period join over the same postings."""
    best = min(outcome.timings, key=lambda t: t.close + t.prepare)
    total = best.close + best.prepare
    n = outcome.entries
    join = "SELECT sum(amount) … GROUP BY account, postings joined to the period's entries"
    rows, seconds = outcome.copied
    return [
        Figure(
            "settlement",
            f"close + prepare, {n:,} entries",
            total,
            "s",
            join,
            total / outcome.sum_period,
            f"≤ {GOAL_SECONDS:.0f} s at {FULL:,} entries",
            (total <= GOAL_SECONDS) if n >= FULL else None,
        ),
        Figure(
            "settlement",
            f"close_period, {n:,} entries",
            best.close,
            "s",
            join,
            best.close / outcome.sum_period,
        ),
        Figure(
            "settlement",
            f"prepare_statements, {n:,} entries",
            best.prepare,
            "s",
            join,
            best.prepare / outcome.sum_period,
        ),
        Figure("settlement", f"baseline: {join}", outcome.sum_period, "s"),
        Figure(
            "settlement",
            "baseline: SELECT sum(amount) … GROUP BY account over all postings",
            outcome.sum_all,
            "s",
        ),
        Figure("settlement", "baseline: raw COPY of postings rows", rows / seconds, "rows/s"),
    ]


def run(quick: bool, entries: int | None = None) -> list[Figure]:
    """The figures of one run (``python -m bench`` calls this)."""
    url = os.environ.get("COALITION_BENCH_DATABASE_URL", DEFAULT_URL)
    count = entries or (QUICK if quick else FULL)
    return figures(measure(url, count, rounds=1 if quick else 2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Close + prepare of a generated month.")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK:,} entries, one round")
    parser.add_argument("--entries", type=int, default=None, help=f"default {FULL:,}")
    parser.add_argument(
        "--rounds", type=int, default=None, help="timed rounds (default 2, quick 1)"
    )
    parser.add_argument(
        "--no-log", action="store_true",
        help="sign one checkpoint over the leaves' root without storing leaves and tree nodes",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the generated database")
    parser.add_argument("--seed", help="time an already generated database (from --keep)")
    args = parser.parse_args(argv)
    url = os.environ.get("COALITION_BENCH_DATABASE_URL", DEFAULT_URL)
    entries = args.entries or (QUICK if args.quick else FULL)
    rounds = args.rounds or (1 if args.quick else 2)
    header = machine(url)
    for line in header:
        print(line)
    started = time.perf_counter()
    outcome = measure(
        url, entries, rounds=rounds, log=not args.no_log, seed=args.seed, keep=args.keep
    )
    print()
    for line in report(outcome):
        print(line)
    print("\n" + "\n".join(machine(url)[1:2]) + " (at the end)")
    print(f"(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
