"""The verifiable journal's speed: integrator drain rate and write→checkpoint latency.

Run ``python -m bench.journal [--quick] [--profile] [--append-results]``. It needs PostgreSQL at
``COALITION_BENCH_DATABASE_URL`` (default ``postgresql://root@127.0.0.1:5432/test``), where it
creates databases named ``bench_journal_<random>…`` of its own, migrates them, and drops them.

(1) Drain rate. Earns are booked through the kernel (several processes, 250 earns per
    transaction on its batch path) into a seed database whose queue then holds N entries
    (20,000; 5,000 with ``--quick``). For each batch size (100, 1,000, 5,000) a clone of the
    seed (``CREATE DATABASE … TEMPLATE``) is drained by one :class:`~ledger.integrator.Integrator`;
    the figure is N over the wall time of ``integrate_all``. Two baselines in the same run, over
    the very leaf bytes the integrator wrote: a raw psycopg ``COPY`` of those rows into a scratch
    table shaped like ``leaves`` (what writing them costs at all), and raw SHA-256 of them (what
    hashing costs).
(2) Latency. On a drained clone, 8 writer threads book earns (one member each) while one
    integrator loops in a process of its own (as ``coalition integrate`` runs); each write is
    timed from before its transaction to when :func:`~ledger.receipts.wait_for_receipt`
    returns. Also shown: to the commit of the write, and to the commit of the integrator batch
    that covered it (the latency without the receipt poller's back-off).

Goals (from the issue): drain ≥ 20,000 entries/s, write→checkpoint p99 ≤ 100 ms. ``--profile``
runs one more drain (batch 1,000) under cProfile and prints where its time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import multiprocessing
import os
import platform
import pstats
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from uuid import UUID

import psycopg
import sqlalchemy as sa

import ledger.tables as t
from bench import suite
from ledger.db import Database, create_engine, upgrade
from ledger.integrator import Integrator
from ledger.note import NoteSigner
from ledger.receipts import wait_for_receipt
from ledger.repository import SqlLedgerStore
from ledger.service import Actor, Ledger

DEFAULT_URL = "postgresql://root@127.0.0.1:5432/test"
BUSINESS_TIME = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
BATCH_SIZES = (100, 1_000, 5_000)
DRAIN_GOAL = 20_000  # entries/s
P99_GOAL_MS = 100.0
ORIGIN = "bench.coalition.local/ledger"
PARTNER = Actor(credential="bench-super", partner="SUPER")
WRITERS = 8
RESULTS = Path(__file__).with_name("RESULTS.md")


# -- databases ----------------------------------------------------------------------------------


@contextmanager
def database(url: str, **kwargs: object) -> Iterator[Database]:
    db = Database.connect(url, **kwargs)
    try:
        yield db
    finally:
        db.dispose()


def open_books(url: str, members: list[str]) -> None:
    with database(url) as db, db.transaction() as conn:
        store = SqlLedgerStore(conn)
        Ledger().open_system_accounts(store)
        Ledger().open_partner(store, "SUPER")
        for member in members:
            Ledger().open_member(store, member)


# -- pre-booking --------------------------------------------------------------------------------


def _book(url: str, member: str, count: int) -> None:
    """One booking process: ``count`` earns for ``member``, 250 per transaction.

    Only the queue they leave matters here (the drain is what is timed), so they are booked
    through the kernel's batch path: the same rows as one request at a time, in a fraction of
    the time.
    """
    kernel, prefix = Ledger(), uuid.uuid4().hex[:12]
    with database(url) as db:
        for first in range(0, count, 250):
            with db.transaction() as conn, kernel.batch(SqlLedgerStore(conn)) as store:
                for n in range(first, min(count, first + 250)):
                    kernel.earn(
                        store,
                        PARTNER,
                        f"{prefix}-{n}",
                        member=member,
                        funding={"SUPER": 10},
                        business_time=BUSINESS_TIME,
                    )


def prebook(url: str, entries: int, processes: int) -> float:
    """Queue ``entries`` earns with ``processes`` booking processes; returns the seconds taken."""
    members = [f"pre{n}" for n in range(processes)]
    open_books(url, members)
    shares = [entries // processes + (n < entries % processes) for n in range(processes)]
    started = time.perf_counter()
    # fork: the parent holds no open connection (NullPool admin engine, disposed databases).
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
        for future in [pool.submit(_book, url, m, c) for m, c in zip(members, shares, strict=True)]:
            future.result()
    return time.perf_counter() - started


# -- (1) drain rate and its baselines -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rate:
    name: str
    entries: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.entries / self.seconds


def drain(url: str, signer: NoteSigner, batch_size: int, entries: int) -> Rate:
    """Time one integrator draining the whole queue, and check it logged every entry once."""
    with database(url) as db:
        integrator = Integrator(signer, batch_size)
        started = time.perf_counter()
        appended = integrator.integrate_all(db)
        seconds = time.perf_counter() - started
        with db.engine.connect() as conn:
            leaves = conn.scalar(sa.select(sa.func.count()).select_from(t.leaves))
            queued = conn.scalar(sa.select(sa.func.count()).select_from(t.journal_queue))
    assert appended == leaves == entries, (appended, leaves, entries)
    assert queued == 0, queued
    return Rate(f"integrator, batch {batch_size:,}", entries, seconds)


def leaf_rows(url: str) -> list[tuple[str, int, UUID | None, bytes, bytes]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT log, idx, entry_id, hash, data FROM leaves ORDER BY idx")
        return [(log, idx, entry_id, bytes(h), bytes(d)) for log, idx, entry_id, h, d in rows]


def copy_baseline(url: str, rows: list[tuple[str, int, UUID | None, bytes, bytes]]) -> Rate:
    """Raw COPY of the integrator's leaf rows into a fresh table shaped like ``leaves``."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "CREATE TABLE bench_copy (log varchar(200), idx bigint, entry_id uuid UNIQUE,"
            " hash bytea NOT NULL, data bytea NOT NULL, PRIMARY KEY (log, idx))"
        )
        conn.commit()
        started = time.perf_counter()
        statement = "COPY bench_copy (log, idx, entry_id, hash, data) FROM STDIN"
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
        seconds = time.perf_counter() - started
    return Rate("baseline: raw COPY of the leaf rows", len(rows), seconds)


def hash_baseline(rows: list[tuple[str, int, UUID | None, bytes, bytes]]) -> Rate:
    """Raw SHA-256 leaf hashes (0x00 ‖ bytes) of the same leaves."""
    started = time.perf_counter()
    for row in rows:
        hashlib.sha256(b"\x00" + row[4]).digest()
    return Rate("baseline: raw SHA-256 of the leaves", len(rows), time.perf_counter() - started)


def profile_drain(url: str, signer: NoteSigner, batch_size: int) -> str:
    """cProfile one drain; the top functions by own time and by cumulative time."""
    with database(url) as db:
        integrator = Integrator(signer, batch_size)
        profiler = cProfile.Profile()
        profiler.runcall(integrator.integrate_all, db)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(18)
    stats.sort_stats("cumulative").print_stats(30)
    return out.getvalue()


# -- (2) write → checkpoint latency -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    entry_id: UUID
    started: float
    committed: float
    receipt: float


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def _integrate_until(url: str, skey: str, stop: Event, out: Queue) -> None:
    """The integrator process: loop until ``stop``; report (first index, size, commit time)."""
    batches = []
    with database(url) as db:
        integrator = Integrator(NoteSigner.from_skey(skey))
        while not stop.is_set():
            with db.transaction() as conn:
                result = integrator.integrate_batch(conn)
            if result is None:
                stop.wait(0.001)
            else:  # perf_counter is CLOCK_MONOTONIC: comparable across processes on Linux
                batches.append((result.first_index, result.size, time.perf_counter()))
    out.put(batches)


def latency(url: str, signer: NoteSigner, writes_per_writer: int) -> dict[str, list[float]]:
    """Eight writer threads and an integrator process; latencies in ms by what was waited for.

    The integrator runs in a process of its own, as ``coalition integrate`` is deployed, so it
    does not compete with the writers for this interpreter's GIL.
    """
    members = [f"lat{n}" for n in range(WRITERS)]
    open_books(url, members)
    context = multiprocessing.get_context("fork")  # before this process opens any connection
    stop, out = context.Event(), context.Queue()
    integrator = context.Process(target=_integrate_until, args=(url, signer.skey, stop, out))
    integrator.start()
    try:
        with database(url, pool_size=WRITERS + 2, max_overflow=4) as db:

            def write(writer: int) -> list[Write]:
                kernel, done = Ledger(), []
                for n in range(-3, writes_per_writer):  # three warm-up writes, not counted
                    started = time.perf_counter()
                    with db.transaction() as conn:
                        booking = kernel.earn(
                            SqlLedgerStore(conn),
                            PARTNER,
                            f"lat-{writer}-{n}-{uuid.uuid4().hex[:8]}",
                            member=members[writer],
                            funding={"SUPER": 10},
                            business_time=BUSINESS_TIME,
                        )
                    committed = time.perf_counter()
                    wait_for_receipt(db, booking.entry.id, timeout=60)
                    if n >= 0:
                        done.append(
                            Write(booking.entry.id, started, committed, time.perf_counter())
                        )
                return done

            with ThreadPoolExecutor(WRITERS) as pool:
                writes = [w for ws in pool.map(write, range(WRITERS)) for w in ws]
            with db.engine.connect() as conn:
                query = sa.select(t.leaves.c.entry_id, t.leaves.c.idx).where(
                    t.leaves.c.log == ORIGIN
                )
                index_of = {row.entry_id: row.idx for row in conn.execute(query)}
    finally:
        stop.set()
        batches = out.get(timeout=60)
        integrator.join(timeout=60)
    covered_at = {}
    for first, size, at in batches:
        for index in range(first, size):
            covered_at[index] = at
    return {
        "write committed": [(w.committed - w.started) * 1000 for w in writes],
        "checkpoint committed": [
            (covered_at[index_of[w.entry_id]] - w.started) * 1000 for w in writes
        ],
        "wait_for_receipt returned": [(w.receipt - w.started) * 1000 for w in writes],
    }


# -- report -------------------------------------------------------------------------------------


def machine(url: str) -> list[str]:
    model = suite.cpu_model()
    with psycopg.connect(url) as conn:
        version = conn.execute("SELECT version()").fetchone()
        settings = conn.execute(
            "SELECT name, setting FROM pg_settings"
            " WHERE name IN ('fsync', 'synchronous_commit') ORDER BY name"
        ).fetchall()
    date = subprocess.run(["date", "-u"], capture_output=True, text=True, check=False).stdout
    loads = " ".join(f"{load:.2f}" for load in os.getloadavg())
    server = (version[0] if version else "?").split(" on ")[0]
    return [
        f"date: {date.strip() or datetime.now(UTC).isoformat()}",
        f"machine: nproc {os.cpu_count()}, {model} ({platform.machine()}); load {loads}",
        f"python: {platform.python_version()}",
        f"postgresql: {server}, " + ", ".join(f"{k}={v}" for k, v in settings),
    ]


def report(
    entries: int,
    booked: float,
    drains: list[Rate],
    copy: Rate,
    sha: Rate,
    latencies: dict[str, list[float]],
) -> list[str]:
    lines = [
        f"pre-booked {entries:,} earns through the kernel in {booked:.1f} s"
        f" ({entries / booked:,.0f} earns/s)",
        "",
        "| drain | entries/s | × COPY | × SHA-256 | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for rate in [*drains, copy, sha]:
        lines.append(
            f"| {rate.name} | {rate.per_second:,.0f} | {rate.per_second / copy.per_second:.3f}"
            f" | {rate.per_second / sha.per_second:.4f} | {rate.seconds:.2f} |"
        )
    writes = len(next(iter(latencies.values())))
    lines += [
        "",
        f"| latency, {WRITERS} writers, {writes:,} writes, from before the write to … "
        "| p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|",
    ]
    for what, values in latencies.items():
        lines.append(
            f"| {what} | {percentile(values, 0.5):.1f} | {percentile(values, 0.99):.1f}"
            f" | {max(values):.1f} |"
        )
    best = max(rate.per_second for rate in drains)
    p99 = percentile(latencies["wait_for_receipt returned"], 0.99)
    lines += [
        "",
        f"goal drain ≥ {DRAIN_GOAL:,}/s: {'met' if best >= DRAIN_GOAL else 'NOT met'}"
        f" (best {best:,.0f}/s)",
        f"goal write→receipt p99 ≤ {P99_GOAL_MS:.0f} ms: "
        f"{'met' if p99 <= P99_GOAL_MS else 'NOT met'} ({p99:.1f} ms)",
    ]
    return lines


@dataclass(frozen=True, slots=True)
class Measured:
    """Everything one run measured, its printed report, and the profile if one was asked for."""

    drains: list[Rate]
    copy: Rate
    sha: Rate
    latencies: dict[str, list[float]]
    lines: list[str]
    profiled: str


def measure_all(url: str, quick: bool, profile: bool) -> Measured:
    entries = 5_000 if quick else 20_000
    writes_per_writer = 40 if quick else 250
    processes = max(2, (os.cpu_count() or 2) + 1)
    server, signer = suite.Server(url, "journal"), NoteSigner.generate(ORIGIN)
    try:
        seed = server.create("seed")
        seed_url = server.url_of(seed)
        engine = create_engine(seed_url, poolclass=sa.pool.NullPool)
        upgrade(engine)
        engine.dispose()
        booked = prebook(seed_url, entries, processes)
        drains, rows = [], []
        for batch_size in BATCH_SIZES:
            clone = server.create(f"b{batch_size}", template=seed)
            drains.append(drain(server.url_of(clone), signer, batch_size, entries))
            print(f"  {drains[-1].name}: {drains[-1].per_second:,.0f} entries/s", flush=True)
            if batch_size == 1_000:
                rows = leaf_rows(server.url_of(clone))
                copy = copy_baseline(server.url_of(clone), rows)
                latencies = latency(server.url_of(clone), signer, writes_per_writer)
            server.drop(clone)
        sha = hash_baseline(rows)
        lines = report(entries, booked, drains, copy, sha, latencies)
        profiled = ""
        if profile:
            clone = server.create("profile", template=seed)
            profiled = profile_drain(server.url_of(clone), signer, 1_000)
        return Measured(drains, copy, sha, latencies, lines, profiled)
    finally:
        server.drop_all()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Integrator drain rate and receipt latency.")
    parser.add_argument("--quick", action="store_true", help="5,000 entries, 320 timed writes")
    parser.add_argument("--profile", action="store_true", help="cProfile one more drain")
    parser.add_argument(
        "--append-results", action="store_true", help=f"append the section to {RESULTS.name}"
    )
    args = parser.parse_args(argv)
    url = os.environ.get("COALITION_BENCH_DATABASE_URL", DEFAULT_URL)
    header = machine(url)
    for line in header:
        print(line)
    started = time.perf_counter()
    measured = measure_all(url, args.quick, args.profile)
    lines, profiled = measured.lines, measured.profiled
    print()
    for line in lines:
        print(line)
    if profiled:
        print("\ncProfile of one drain, batch 1,000:\n" + profiled)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    if args.append_results:
        mode = "--quick" if args.quick else "full"
        section = [
            "",
            f"## Verifiable journal: integrator drain and receipt latency ({mode})",
            "",
            "`python -m bench.journal" + (" --quick" if args.quick else "") + "`",
            "",
            *[f"- {line}" for line in header],
            "",
            *lines,
        ]
        with RESULTS.open("a", encoding="utf-8") as results:
            results.write("\n".join(section) + "\n")


def run(quick: bool) -> list[suite.Figure]:
    """``python -m bench``'s entry: drain rates against COPY, receipt latency against commit."""
    url = os.environ.get("COALITION_BENCH_DATABASE_URL", DEFAULT_URL)
    measured = measure_all(url, quick, profile=False)
    for line in measured.lines:
        print(line)
    entries = measured.copy.entries
    copy, sha = measured.copy, measured.sha
    out = [
        suite.Figure(
            "journal",
            f"drain, {rate.name}, {entries:,} entries",
            rate.per_second,
            "entries/s",
            baseline="raw COPY of the leaf rows",
            ratio=rate.per_second / copy.per_second,
            goal=f"≥ {DRAIN_GOAL:,}/s",
            met=rate.per_second >= DRAIN_GOAL,
        )
        for rate in measured.drains
    ]
    out += [
        suite.Figure("journal", f"{copy.name}, {entries:,} rows", copy.per_second, "entries/s"),
        suite.Figure(
            "journal", f"{sha.name}, {entries:,} leaves", sha.per_second, "entries/s",
            baseline="raw COPY of the leaf rows", ratio=sha.per_second / copy.per_second,
        ),
    ]
    committed = measured.latencies["write committed"]
    receipt = measured.latencies["wait_for_receipt returned"]
    for label, fraction in (("p50", 0.5), ("p99", 0.99)):
        base = percentile(committed, fraction)
        out.append(suite.Figure(
            "journal", f"{WRITERS} writers: write → its own commit, {label}", base, "ms",
        ))
        value = percentile(receipt, fraction)
        out.append(suite.Figure(
            "journal",
            f"{WRITERS} writers: write → wait_for_receipt returns, {label}",
            value,
            "ms",
            baseline=f"write → its own commit, {label}",
            ratio=value / base,
            goal=f"≤ {P99_GOAL_MS:.0f} ms" if label == "p99" else None,
            met=value <= P99_GOAL_MS if label == "p99" else None,
        ))
    return out


if __name__ == "__main__":
    main()
