"""Member-to-member transfers: our kernel beside django-hordak and a plain-SQL floor, one server.

Run ``python -m bench.peers [--quick] [--clients N]`` (or ``python -m bench``). It needs
PostgreSQL at ``COALITION_BENCH_DATABASE_URL`` (default ``postgresql://root@127.0.0.1:5432/test``)
and django-hordak (``pip install -e '.[bench]'``). Each implementation gets a fresh database of its
own (``bench_peers_<random>_<name>``), dropped at the end.

N client threads (8 by default) do random transfers between the accounts of 64 members for a
fixed time; each client draws the same sequence of (from, to, points) in every implementation
(one seeded generator per client), one transaction per transfer:

sql     the floor: psycopg, per transfer ``UPDATE`` the lower-numbered account's balance, then the
        other's (rows locked in one order, so no deadlock), the debit guarded by
        ``balance >= points``, and ``INSERT`` one transfer row — three statements, one commit.
hordak  django-hordak, configured in-process (minimal settings, ``migrate``), members as liability
        accounts: ``Account.transfer_to`` inside ``transaction.atomic`` — one transaction row and
        two legs; its PostgreSQL triggers check that the legs balance. Hordak keeps no balance
        row and has no overdraft check, so it does less per transfer than the other two.
kernel  ``ledger.service.Ledger.transfer``: idempotency key, sorted row locks, the balance
        check, FIFO lot moves, entry, postings, balances and the journal queue row.

Each implementation runs in a process of its own (so Django never enters this interpreter, and
one implementation's threads do not share a GIL with another's), started and set up before any
timing; the implementations then take turns, in a rotated order each round, and each figure is
the total over its rounds. Latency is per transfer, begin to commit, as the client sees it;
``client CPU`` is the implementation process's CPU time per transfer (all clients share one
interpreter, so on a small machine it is what caps the slower ones).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from multiprocessing.connection import Connection
from typing import Any

import psycopg
import sqlalchemy as sa

from bench.suite import Figure, Incomplete, Server

DEFAULT_URL = "postgresql://root@127.0.0.1:5432/test"
MEMBERS = 64
INITIAL_POINTS = 1_000_000
MAX_POINTS = 50
WARMUP_TRANSFERS = 3
SEED = 20261123
BUSINESS_TIME = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
#: The implementations, in the order they are reported; the first is the floor.
KINDS = ("sql", "hordak", "kernel")


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


LABELS = {
    "sql": "plain SQL (psycopg)",
    "hordak": f"django-hordak {_version('django-hordak')} (Django {_version('django')})",
    "kernel": "our kernel (Ledger.transfer)",
}

#: One transfer: (from member index, to member index, points); run as one transaction.
Transfer = Callable[[int, int, int], None]


# -- the three implementations (each runs inside its own child process) -------------------------


def setup_sql(url: str, clients: int) -> Callable[[int], Transfer]:
    """Accounts with a balance column, a transfers table; one psycopg connection per client."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL"
            " CHECK (balance >= 0))"
        )
        conn.execute(
            "CREATE TABLE transfers (id bigserial PRIMARY KEY, from_account int NOT NULL"
            " REFERENCES accounts, to_account int NOT NULL REFERENCES accounts,"
            " points bigint NOT NULL CHECK (points > 0),"
            " created_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO accounts (id, balance) SELECT n, %s FROM generate_series(0, %s) n",
            (INITIAL_POINTS, MEMBERS - 1),
        )
    connections = [psycopg.connect(url) for _ in range(clients)]

    def make(worker: int) -> Transfer:
        conn = connections[worker]

        def transfer(source: int, target: int, points: int) -> None:
            with conn.transaction():
                # Lock the two rows in id order: two opposite transfers cannot deadlock.
                for account in sorted((source, target)):
                    if account == source:
                        updated = conn.execute(
                            "UPDATE accounts SET balance = balance - %s"
                            " WHERE id = %s AND balance >= %s",
                            (points, source, points),
                        )
                    else:
                        updated = conn.execute(
                            "UPDATE accounts SET balance = balance + %s WHERE id = %s",
                            (points, target),
                        )
                    if updated.rowcount != 1:
                        raise RuntimeError(f"account {account}: insufficient points")
                conn.execute(
                    "INSERT INTO transfers (from_account, to_account, points) VALUES (%s, %s, %s)",
                    (source, target, points),
                )

        return transfer

    return make


def setup_hordak(url: str, clients: int) -> Callable[[int], Transfer]:
    """Django configured here, in this process only; hordak migrated; members funded."""
    try:
        import django
        import hordak  # noqa: F401  (only to say clearly what is missing)
    except ImportError as exc:
        raise RuntimeError(f"{exc.name} is not installed: pip install -e '.[bench]'") from exc
    from django.conf import settings
    from django.core.management import call_command

    parsed = sa.make_url(url)
    settings.configure(
        DEBUG=False,
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=["django.contrib.contenttypes", "mptt", "djmoney", "hordak"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": parsed.database,
                "USER": parsed.username or "",
                "PASSWORD": parsed.password or "",
                "HOST": parsed.host or "",
                "PORT": str(parsed.port or ""),
                "CONN_MAX_AGE": None,  # one persistent connection per client thread
            }
        },
    )
    django.setup()
    call_command("migrate", verbosity=0, interactive=False)

    from django.db import connection, transaction
    from djmoney.money import Money
    from hordak.models import Account, AccountType

    funding = Account.objects.create(name="points issued", type=AccountType.asset)
    members = [
        Account.objects.create(name=f"member {n:03d}", type=AccountType.liability)
        for n in range(MEMBERS)
    ]
    for member in members:
        # Credit the member (a liability: points owed) and debit the issuer's asset account.
        member.transfer_to(funding, Money(INITIAL_POINTS, "EUR"))
    connection.close()  # the clients open their own, one per thread

    def make(worker: int) -> Transfer:
        def transfer(source: int, target: int, points: int) -> None:
            # Between two liability accounts, ``a.transfer_to(b)`` raises a and lowers b.
            with transaction.atomic():
                members[target].transfer_to(members[source], Money(points, "EUR"))

        return transfer

    return make


def setup_kernel(url: str, clients: int) -> Callable[[int], Transfer]:
    """Our schema migrated; one partner; every member earns their starting points once."""
    import ledger.tables  # noqa: F401  (registers the kernel's tables on the shared metadata)
    from ledger.db import Database, create_engine, upgrade
    from ledger.repository import SqlLedgerStore
    from ledger.service import Actor, Ledger

    engine = create_engine(url, poolclass=sa.pool.NullPool)
    upgrade(engine)
    engine.dispose()
    db = Database.connect(url, pool_size=clients + 2, max_overflow=0)
    kernel, partner = Ledger(), "PEER"
    members = [f"peer{n:03d}" for n in range(MEMBERS)]
    with db.transaction() as conn:
        store = SqlLedgerStore(conn)
        kernel.open_system_accounts(store)
        kernel.open_partner(store, partner)
        for member in members:
            kernel.open_member(store, member)
    funder = Actor(credential="bench-peer", partner=partner)
    for member in members:
        with db.transaction() as conn:
            kernel.earn(
                SqlLedgerStore(conn),
                funder,
                f"seed-{member}",
                member=member,
                funding={partner: INITIAL_POINTS},
                business_time=BUSINESS_TIME,
            )
    actor = Actor(credential="bench-transfers")

    def make(worker: int) -> Transfer:
        prefix = f"{uuid.uuid4().hex[:12]}-{worker}"
        count = iter(range(1 << 62))

        def transfer(source: int, target: int, points: int) -> None:
            with db.transaction() as conn:
                kernel.transfer(
                    SqlLedgerStore(conn),
                    actor,
                    f"{prefix}-{next(count)}",
                    from_member=members[source],
                    to_member=members[target],
                    points=points,
                    business_time=BUSINESS_TIME,
                )

        return transfer

    return make


SETUPS = {"sql": setup_sql, "hordak": setup_hordak, "kernel": setup_kernel}


# -- measurement ---------------------------------------------------------------------------------


def draws(worker: int) -> random.Random:
    """The worker's generator: the same transfers, in the same order, in every implementation."""
    return random.Random(SEED * 1000 + worker)


def next_transfer(rng: random.Random) -> tuple[int, int, int]:
    source, target = rng.sample(range(MEMBERS), 2)
    return source, target, rng.randint(1, MAX_POINTS)


@dataclass
class Round:
    """What one timed window achieved (a plain dict crosses the process boundary)."""

    transfers: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    first_failure: str = ""


def measure(
    pool: ThreadPoolExecutor, make: Callable[[int], Transfer], rngs: list[random.Random],
    seconds: float,
) -> Round:
    """All clients transfer for ``seconds`` from one common start; those begun inside count."""
    clients = len(rngs)
    window: dict[str, float] = {}
    done = Round()
    lock = threading.Lock()

    def open_window() -> None:
        window["cpu"] = time.process_time()
        window["start"] = time.perf_counter()
        window["end"] = window["start"] + seconds

    barrier = threading.Barrier(clients, action=open_window)

    def work(worker: int) -> None:
        transfer, rng = make(worker), rngs[worker]
        warm = random.Random(-1 - worker)  # warm-up draws do not consume the shared sequence
        for _ in range(WARMUP_TRANSFERS):
            transfer(*next_transfer(warm))
        barrier.wait(timeout=120)
        latencies, failures, first = [], 0, ""
        while (started := time.perf_counter()) < window["end"]:
            try:
                transfer(*next_transfer(rng))
            except Exception as exc:  # counted and reported, never silently dropped
                failures += 1
                first = first or f"{type(exc).__name__}: {exc}"
                continue
            latencies.append(time.perf_counter() - started)
        with lock:
            done.latencies.extend(latencies)
            done.failures += failures
            done.first_failure = done.first_failure or first

    futures = [pool.submit(work, worker) for worker in range(clients)]
    for future in futures:
        future.result()
    done.seconds = time.perf_counter() - window["start"]
    done.cpu = time.process_time() - window["cpu"]
    done.transfers = len(done.latencies)
    return done


def child(kind: str, url: str, clients: int, pipe: Connection) -> None:
    """One implementation's process: set up, then measure a window each time it is asked."""
    try:
        makers: dict[int, Transfer] = {}
        factory = SETUPS[kind](url, clients)

        def make(worker: int) -> Transfer:
            # Built once per worker (its connection, its key prefix), reused across rounds.
            if worker not in makers:
                makers[worker] = factory(worker)
            return makers[worker]

        rngs = [draws(worker) for worker in range(clients)]
        pipe.send(("ready", None))
        with ThreadPoolExecutor(max_workers=clients) as pool:
            while (request := pipe.recv()) is not None:
                pipe.send(("round", measure(pool, make, rngs, request).__dict__))
    except Exception:
        pipe.send(("error", traceback.format_exc()))
    finally:
        pipe.close()


@dataclass
class Result:
    """One implementation's totals over its rounds."""

    kind: str
    transfers: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    first_failure: str = ""
    error: str = ""
    """Why it could not run at all (its traceback's last line), or empty."""

    @property
    def throughput(self) -> float:
        return self.transfers / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        """Nearest-rank percentile in milliseconds."""
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))] * 1000

    @property
    def cpu_ms(self) -> float:
        return self.cpu / self.transfers * 1000 if self.transfers else float("nan")

    def add(self, window: dict[str, Any]) -> None:
        self.transfers += window["transfers"]
        self.seconds += window["seconds"]
        self.cpu += window["cpu"]
        self.latencies.extend(window["latencies"])
        self.failures += window["failures"]
        self.first_failure = self.first_failure or window["first_failure"]


def compare(url: str, clients: int, seconds: float, rounds: int,
            kinds: tuple[str, ...] = KINDS) -> dict[str, Result]:
    """Start every implementation, then time them in rotated rounds; results by kind."""
    context = multiprocessing.get_context("spawn")  # a clean interpreter: no inherited engines
    server = Server(url, "peers")
    results = {kind: Result(kind) for kind in kinds}
    children: dict[str, tuple[Any, Connection]] = {}
    try:
        for kind in kinds:
            ours, theirs = context.Pipe()
            database = server.url_of(server.create(kind))
            process = context.Process(
                target=child, args=(kind, database, clients, theirs), daemon=True
            )
            process.start()
            theirs.close()
            children[kind] = (process, ours)
        for kind, (_, pipe) in children.items():
            started = time.perf_counter()
            status, detail = receive(pipe)
            if status == "error":
                results[kind].error = detail
            print(f"  {LABELS[kind]}: set up ({time.perf_counter() - started:.0f} s)"
                  + (f" FAILED: {last_line(detail)}" if status == "error" else ""), flush=True)
        ready = [kind for kind in kinds if not results[kind].error]
        for round_ in range(rounds):
            shift = round_ % max(1, len(ready))
            for kind in ready[shift:] + ready[:shift]:
                if results[kind].error:
                    continue
                pipe = children[kind][1]
                pipe.send(seconds)
                status, detail = receive(pipe)
                if status == "error":
                    results[kind].error = detail
                    continue
                results[kind].add(detail)
                print(f"  round {round_ + 1}, {LABELS[kind]}:"
                      f" {detail['transfers'] / detail['seconds']:,.0f} transfers/s", flush=True)
    finally:
        for process, pipe in children.values():
            if process.is_alive():
                with suppress(OSError):
                    pipe.send(None)
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
            pipe.close()
        server.drop_all()
    return results


def receive(pipe: Connection) -> tuple[str, Any]:
    try:
        return pipe.recv()
    except EOFError:
        return "error", "the implementation's process exited without a word"


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else text


# -- report --------------------------------------------------------------------------------------


def report(results: dict[str, Result]) -> list[str]:
    lines = [
        f"{'implementation':<40} {'transfers/s':>11} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'client CPU ms':>13} {'transfers':>9} {'failed':>6}"
    ]
    for kind, result in results.items():
        if result.error:
            lines.append(f"{LABELS[kind]:<40} not run: {last_line(result.error)}")
            continue
        lines.append(
            f"{LABELS[kind]:<40} {result.throughput:>11,.0f} {result.percentile(0.5):>7.1f}"
            f" {result.percentile(0.99):>7.1f} {result.cpu_ms:>13.2f} {result.transfers:>9}"
            f" {result.failures:>6}"
        )
        if result.failures:
            lines.append(f"  first failure: {result.first_failure}")
    ours = results.get("kernel")
    for peer in ("sql", "hordak"):
        other = results.get(peer)
        if ours and other and not ours.error and not other.error and other.transfers:
            lines.append(
                f"kernel ÷ {LABELS[peer]}: throughput {ours.throughput / other.throughput:.3f},"
                f" p50 {ours.percentile(0.5) / other.percentile(0.5):.2f}×,"
                f" p99 {ours.percentile(0.99) / other.percentile(0.99):.2f}×,"
                f" client CPU {ours.cpu_ms / other.cpu_ms:.2f}×"
            )
    return lines


def figures(results: dict[str, Result], clients: int) -> list[Figure]:
    """The suite's figures: each implementation's own, then ours against each of the other two."""
    out: list[Figure] = []
    metrics: list[tuple[str, str, Callable[[Result], float]]] = [
        ("transfers/s", "transfers/s", lambda r: r.throughput),
        ("p50 latency", "ms", lambda r: r.percentile(0.5)),
        ("p99 latency", "ms", lambda r: r.percentile(0.99)),
        ("client CPU per transfer", "ms", lambda r: r.cpu_ms),
    ]
    pairs = [("sql", None), ("hordak", "sql"), ("kernel", "sql"), ("kernel", "hordak")]
    for kind, against in pairs:
        result = results.get(kind)
        base = results.get(against) if against else None
        if result is None or result.error or not result.transfers:
            continue
        if against and (base is None or base.error or not base.transfers):
            continue
        for name, unit, value in metrics:
            metric = f"{LABELS[kind]}, {clients} clients: {name}"
            if base is None:
                out.append(Figure("peers", metric, value(result), unit))
            else:
                out.append(Figure("peers", metric, value(result), unit,
                                  baseline=LABELS[against or ""],
                                  ratio=value(result) / value(base)))
    return out


def run(quick: bool) -> list[Figure]:
    """The suite's entry point: 8 clients; one 5 s window each (quick) or three of 10 s."""
    url = os.environ.get("COALITION_BENCH_DATABASE_URL", DEFAULT_URL)
    clients = 8
    rounds, seconds = (1, 5.0) if quick else (3, 10.0)
    print(f"peers: {clients} clients, {rounds} round(s) of {seconds:g} s each", flush=True)
    results = compare(url, clients, seconds, rounds)
    for line in report(results):
        print(line, flush=True)
    broken = [f"{LABELS[k]}: {last_line(r.error)}" for k, r in results.items() if r.error]
    if broken:  # the figures of what did run, and why the rest did not
        raise Incomplete("; ".join(broken), figures(results, clients))
    return figures(results, clients)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Transfers: kernel vs django-hordak vs plain SQL.")
    parser.add_argument("--quick", action="store_true", help="one round of 5 s each")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--seconds", type=float, help="seconds per window")
    parser.add_argument("--rounds", type=int, help="rounds (rotated order)")
    parser.add_argument("--only", choices=KINDS, action="append", help="run only these")
    args = parser.parse_args(argv)
    url = os.environ.get("COALITION_BENCH_DATABASE_URL", DEFAULT_URL)
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (5.0 if args.quick else 10.0)
    kinds = tuple(args.only) if args.only else KINDS
    started = time.perf_counter()
    results = compare(url, args.clients, seconds, rounds, kinds)
    print()
    for line in report(results):
        print(line)
    print(f"\n(took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
