"""Earn throughput under concurrent writers, as ratios to raw PostgreSQL commits in the same run.

Run ``python -m bench.ledger_concurrency [--quick]``. It needs PostgreSQL at
``COALITION_BENCH_DATABASE_URL`` (default ``postgresql://root@127.0.0.1:5432/test``), where it
creates a database of its own, migrates it, and drops it at the end.

Scenarios, each with the same number of worker threads (16 by default), one transaction per
operation on a pooled connection of the worker's own:

(a) baseline: raw psycopg ``INSERT`` of one row and ``COMMIT`` — what this machine's PostgreSQL
    commits at all. Every other figure is divided by it, so runs on different machines compare.
(b) ``Ledger.earn`` for 16 *different* members of *one* partner (``Policy()``: 8 shards).
(c) ``Ledger.earn`` for *one* member: the member's lock serialises the writers, by design.
(d) as (b), with the partner's accounts opened and written under ``Policy(shards=1)``.

What it shows: a hot partner account does not serialise the coalition — (b) is well above (c),
and (b) is at or above (d), where every writer queues on the partner's one balance row.

The scenarios run in rounds, in a rotated order each round, and each figure is the total over its
rounds, so a drift in the machine's load does not favour one scenario. Latencies are per
transaction, begin to commit, as the client sees them. ``cpu ms`` is the benchmark process's own
CPU time per transaction: all workers share one interpreter, so when it nears 1000 / txn/s the
client, not PostgreSQL's locks, is what limits the figure. ``lock %`` is the share of the workers'
backends found waiting on a lock (a row lock, or the writer holding one), sampled every 50 ms:
the direct measure of how much a scenario serialises, whatever the machine's CPU allows.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
import sqlalchemy as sa

import ledger.tables  # noqa: F401  (registers the kernel's tables on the shared metadata)
from bench import suite
from ledger.db import Database, create_engine, upgrade
from ledger.repository import SqlLedgerStore
from ledger.service import Actor, Ledger, Policy

DEFAULT_URL = "postgresql://root@127.0.0.1:5432/test"
BUSINESS_TIME = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
WARMUP_OPERATIONS = 3
SAMPLE_INTERVAL = 0.05
#: Backends of the benchmark's database (other than the sampler's own) waiting on a heavyweight
#: lock: a row lock, or the transaction of the writer that holds one.
LOCK_WAITS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
)

#: One transaction; called with the operation's sequence number within its worker.
Operation = Callable[[int], None]
#: Builds the operation a worker repeats, given the worker's index.
Workload = Callable[[int], Operation]


@dataclass(slots=True)
class Figure:
    """What one scenario achieved, summed over its rounds."""

    name: str
    transactions: int = 0
    """Transactions committed inside the timed windows."""
    seconds: float = 0.0
    """Wall time of the timed windows, from the common start until the last worker stopped."""
    latencies: list[float] = field(default_factory=list)
    """Seconds per transaction."""
    client_cpu: float = 0.0
    """CPU seconds this process (every worker thread) spent inside the timed windows."""
    lock_samples: int = 0
    """How many times the workers' backends were sampled for lock waits."""
    lock_waiting: int = 0
    """Backends found waiting on a lock, summed over the samples."""

    @property
    def throughput(self) -> float:
        return self.transactions / self.seconds

    def percentile(self, fraction: float) -> float:
        """Nearest-rank percentile of the latencies, in milliseconds."""
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
        return ordered[index] * 1000


def measure(
    figure: Figure, workers: int, seconds: float, workload: Workload, monitor: psycopg.Connection
) -> None:
    """Repeat each worker's operation for ``seconds``, all workers starting at once; add to figure.

    Each worker warms up (connection, statement caches) before the common start; operations that
    begin inside the window count, and the window closes when the last of them has committed.
    Meanwhile ``monitor`` samples how many backends wait on a lock.
    """
    window: dict[str, float] = {}
    stop = threading.Event()

    def sample_lock_waits() -> None:
        while not stop.wait(SAMPLE_INTERVAL):
            row = monitor.execute(LOCK_WAITS).fetchone()
            figure.lock_samples += 1
            figure.lock_waiting += row[0] if row else 0

    def open_window() -> None:
        # Runs once, as the barrier breaks and before any worker is released.
        window["cpu"] = time.process_time()
        window["start"] = time.perf_counter()
        window["end"] = window["start"] + seconds

    barrier = threading.Barrier(workers + 1, action=open_window)

    def work(worker: int) -> list[float]:
        operation = workload(worker)
        for n in range(WARMUP_OPERATIONS):
            operation(-1 - n)
        barrier.wait(timeout=120)  # a worker that fails to warm up breaks it for everyone
        latencies, n = [], 0
        while (started := time.perf_counter()) < window["end"]:
            operation(n)
            latencies.append(time.perf_counter() - started)
            n += 1
        return latencies

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(work, worker) for worker in range(workers)]
        try:
            barrier.wait(timeout=120)
        except threading.BrokenBarrierError:
            for future in futures:
                future.result()  # raises the worker's own error
            raise
        sampler = threading.Thread(target=sample_lock_waits)
        sampler.start()
        try:
            results = [future.result() for future in futures]
        finally:
            stop.set()
            sampler.join()
        figure.seconds += time.perf_counter() - window["start"]
        figure.client_cpu += time.process_time() - window["cpu"]
    for latencies in results:
        figure.transactions += len(latencies)
        figure.latencies.extend(latencies)


# -- (a) the baseline: one-row commits straight through psycopg -----------------------------------


def baseline_workload(url: str, connections: list[psycopg.Connection]) -> Workload:
    """Insert one row and commit, on one connection per worker (left for the caller to close)."""

    def make(worker: int) -> Operation:
        conn = psycopg.connect(url)
        connections.append(conn)

        def insert_and_commit(n: int) -> None:
            conn.execute("INSERT INTO bench_baseline (worker, n) VALUES (%s, %s)", (worker, n))
            conn.commit()

        return insert_and_commit

    return make


# -- (b), (c), (d): the kernel's earn -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EarnSetup:
    """A ledger policy, the partner that funds the points, and the member each worker earns for."""

    ledger: Ledger
    partner: str
    members: list[str]


def open_books(db: Database, setup: EarnSetup) -> None:
    """Open the setup's partner and members under its policy (and the system accounts)."""
    with db.transaction() as conn:
        store = SqlLedgerStore(conn)
        setup.ledger.open_system_accounts(store)
        setup.ledger.open_partner(store, setup.partner)
        for member in sorted(set(setup.members)):
            setup.ledger.open_member(store, member)


def earn_workload(db: Database, setup: EarnSetup) -> Workload:
    """Earn 10 points for the worker's member, one command per transaction, a fresh key each."""
    actor = Actor(credential=f"key-{setup.partner}", partner=setup.partner)

    def make(worker: int) -> Operation:
        member = setup.members[worker]
        prefix = f"{uuid.uuid4().hex[:12]}-{worker}"

        def earn(n: int) -> None:
            with db.transaction() as conn:
                setup.ledger.earn(
                    SqlLedgerStore(conn),
                    actor,
                    f"{prefix}-{n}",
                    member=member,
                    funding={setup.partner: 10},
                    business_time=BUSINESS_TIME,
                )

        return earn

    return make


# -- the run --------------------------------------------------------------------------------------


@contextmanager
def scratch_database(url: str) -> Iterator[str]:
    """A fresh, migrated database beside ``url``'s, dropped afterwards; yields its URL."""
    name = f"coalition_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    scratch = sa.make_url(url).set(database=name).render_as_string(hide_password=False)
    try:
        engine = create_engine(scratch, poolclass=sa.pool.NullPool)
        upgrade(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TABLE bench_baseline (id bigserial PRIMARY KEY, worker int, n int)"
            )
        engine.dispose()
        yield scratch
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def machine(url: str) -> list[str]:
    """What the figures were measured on."""
    model = suite.cpu_model()
    with psycopg.connect(url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        settings = conn.execute(
            "SELECT name, setting FROM pg_settings"
            " WHERE name IN ('fsync', 'synchronous_commit') ORDER BY name"
        ).fetchall()
    loads = " ".join(f"{load:.2f}" for load in os.getloadavg())
    return [
        f"date (UTC): {datetime.now(UTC):%Y-%m-%d %H:%M}",
        f"machine: {os.cpu_count()} CPUs ({platform.machine()}), {model}; load average {loads}",
        f"python: {platform.python_version()}",
        f"postgresql: {version[0] if version else '?'}, "
        + ", ".join(f"{name}={value}" for name, value in settings),
    ]


def measure_scenarios(url: str, workers: int, seconds: float, rounds: int) -> list[Figure]:
    """Measure the four scenarios in a scratch database; figures in the order (a)–(d)."""
    with scratch_database(url) as scratch:
        db = Database.connect(scratch, pool_size=workers + 2, max_overflow=0)
        connections: list[psycopg.Connection] = []
        monitor = psycopg.connect(scratch, autocommit=True)
        connections.append(monitor)
        sharded, single = Ledger(Policy()), Ledger(Policy(shards=1))
        spread = EarnSetup(sharded, "acme", [f"m{i:02d}" for i in range(workers)])
        hot = EarnSetup(sharded, "acme", ["hot"] * workers)
        unsharded = EarnSetup(single, "solo", [f"s{i:02d}" for i in range(workers)])
        for setup in (spread, hot, unsharded):
            open_books(db, setup)
        scenarios = [
            (Figure("(a) baseline: raw INSERT + COMMIT"), baseline_workload(scratch, connections)),
            (
                Figure(f"(b) earn, {workers} members, 1 partner, {sharded.policy.shards} shards"),
                earn_workload(db, spread),
            ),
            (Figure("(c) earn, 1 member"), earn_workload(db, hot)),
            (
                Figure(f"(d) earn, {workers} members, 1 partner, 1 shard"),
                earn_workload(db, unsharded),
            ),
        ]
        try:
            for round_ in range(rounds):
                for figure, workload in scenarios[round_:] + scenarios[:round_]:
                    measure(figure, workers, seconds, workload, monitor)
        finally:
            db.dispose()
            for conn in connections:
                conn.close()
    return [figure for figure, _ in scenarios]


def report(figures: list[Figure], workers: int) -> list[str]:
    """A table of the figures with their ratio to the baseline, then the two ratios that matter."""
    baseline, spread, hot, unsharded = (figure.throughput for figure in figures)
    lines = [
        f"{'scenario':<44} {'txn/s':>6} {'× base':>7} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'txns':>6} {'cpu ms':>6} {'lock %':>6}"
    ]
    lines += [
        f"{figure.name:<44} {figure.throughput:>6.0f} {figure.throughput / baseline:>7.3f}"
        f" {figure.percentile(0.50):>7.1f} {figure.percentile(0.99):>7.1f}"
        f" {figure.transactions:>6} {figure.client_cpu / figure.transactions * 1000:>6.2f}"
        f" {figure.lock_waiting / max(1, figure.lock_samples * workers) * 100:>6.0f}"
        for figure in figures
    ]
    return [
        *lines,
        "",
        f"(b)/(c) = {spread / hot:.2f}   many members vs one member (its lock is the queue)",
        f"(b)/(d) = {spread / unsharded:.2f}   sharded vs single-row hot partner account",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Earn throughput under concurrent writers.")
    parser.add_argument("--quick", action="store_true", help="one round of 3 s per scenario")
    parser.add_argument("--workers", type=int, default=16, help="concurrent writers (default 16)")
    args = parser.parse_args(argv)
    url = os.environ.get("COALITION_BENCH_DATABASE_URL", DEFAULT_URL)
    rounds, seconds = (1, 3.0) if args.quick else (3, 5.0)
    for line in machine(url):
        print(line)
    print(f"workers: {args.workers} threads; {rounds} round(s) of {seconds:g} s per scenario")
    print()
    for line in report(measure_scenarios(url, args.workers, seconds, rounds), args.workers):
        print(line)


def run(quick: bool) -> list[suite.Figure]:
    """``python -m bench``'s entry: the same scenarios, 16 workers; each one's txn/s and p99."""
    url = os.environ.get("COALITION_BENCH_DATABASE_URL", DEFAULT_URL)
    workers = 16
    rounds, seconds = (1, 3.0) if quick else (3, 5.0)
    print(f"workers: {workers} threads; {rounds} round(s) of {seconds:g} s per scenario")
    figures = measure_scenarios(url, workers, seconds, rounds)
    for line in report(figures, workers):
        print(line)
    baseline = figures[0]
    out: list[suite.Figure] = []
    for figure in figures:
        name = figure.name
        is_base = figure is baseline
        against = None if is_base else "raw INSERT + COMMIT"
        for metric, unit, value, base in (
            ("", "txn/s", figure.throughput, baseline.throughput),
            (": p99 latency", "ms", figure.percentile(0.99), baseline.percentile(0.99)),
        ):
            out.append(
                suite.Figure(
                    "ledger_concurrency",
                    f"{name}, {workers} writers{metric}",
                    value,
                    unit,
                    baseline=against,
                    ratio=None if is_base else value / base,
                )
            )
    return out


if __name__ == "__main__":
    main()
