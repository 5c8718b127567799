"""``coalition demo``: a coalition living for a few months on an embedded SQLite ledger.

Four fictional partners modelled on a French coalition — a supermarket, a department store, a
rail operator and a bank — with the contracts of PRODUCT.md §7, tiers, engagement rules, a
co-funded campaign and a short inactivity expiry (two months without earning or spending), so
that some points expire within the run. Members shop weekly, buy clothes now and then (14-day
return window), pay with their bank card, install the app and write reviews, spend points on
train tickets, hold points at tills, and return goods. Every simulated day the scheduled jobs
run (release, lot expiry, stale holds, inactivity expiry) and the integrator signs a checkpoint.
Then :mod:`api.demo_finish` settles every completed month (close on a checkpoint cosigned by two
partner witnesses, prepare and approve with two finance users, payment file and statements on
disk), verifies everything, prints a summary, and serves the API.

Everything goes through the same services the REST API calls; only the clock is simulated, so
months take seconds. ``--seed`` makes a run reproducible.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from multiprocessing.connection import Connection as PipeEnd
from pathlib import Path
from typing import Any
from uuid import UUID

import click
import sqlalchemy as sa
from rich.console import Console
from rich.progress import Progress

import partners.tables  # noqa: F401
import settlement.tables  # noqa: F401
from api import demo_finish as finishing
from api.batchwork import collecting_less
from audit.log import log_integrator
from ledger.db import Database, reader, upgrade
from ledger.errors import LedgerError
from ledger.integrator import Integrator, PreparedBody
from ledger.keys import create_key, load_key
from ledger.model import EntryKind
from ledger.repository import SqlLedgerStore
from ledger.service import Actor, Booking, Command, Ledger, Policy
from partners import directory, earning, expiry, members, tiers
from partners.directory import ContractTerms
from partners.rules import Basket, BasketLine, Campaign, EngagementRule
from partners.vault import MasterKey

START = datetime(2026, 1, 1, 7, tzinfo=UTC)

#: The demo programme's inactivity expiry (months without earning or spending).
INACTIVITY_MONTHS = 2

#: code → (legal name, IBAN, BIC, issue price p, reimbursement q, earn rate, pending days)
PARTNERS = {
    "SUPER": (
        "Supermarché Démo SA",
        "FR7630006000011234567890189",
        "AGRIFRPP",
        "0.0110",
        "0.0095",
        "1",
        0,
    ),
    "DEPT": (
        "Grand Magasin Démo SAS",
        "FR7610107001011234567890129",
        "BREDFRPP",
        "0.0112",
        "0.0095",
        "2",
        14,
    ),
    "RAIL": (
        "Rail Démo SNC",
        "FR7630004000031234567890143",
        "BNPAFRPP",
        "0.0110",
        "0.0090",
        "1",
        0,
    ),
    "BANK": ("Banque Démo SA", "FR7630003030001234567890188", "SOGEFRPP", "0.0115", "0", "0.5", 0),
}


@dataclass
class Clock:
    """The simulated time; the ledger books at ``now``."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    db: Database
    kernel: Ledger
    clock: Clock
    rng: random.Random
    members: list[str] = field(default_factory=list)
    counter: int = 0
    refused: int = 0
    purchases: dict[str, list] = field(default_factory=dict)

    stages: dict[str, float] = field(default_factory=dict)
    """Wall-clock seconds per stage of the run (enrolment, booking, daily jobs, integrator)."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the wall-clock time of the block to the stage ``name`` (shown in the summary)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - started

    def key(self) -> str:
        self.counter += 1
        return f"demo-{self.counter}"


def _actor(partner: str) -> Actor:
    return Actor(f"demo-key-{partner.lower()}", partner=partner, principal=f"partner:{partner}")


def _setup(world: World, master_key: MasterKey, count: int) -> None:
    now = world.clock.now
    with world.db.transaction() as conn:
        world.kernel.open_system_accounts(SqlLedgerStore(conn))
        tiers.seed_default_tiers(conn)
        for code, (name, iban, bic, p, q, rate, pending) in PARTNERS.items():
            directory.onboard_partner(conn, code, name, iban, bic, now)
            terms = ContractTerms(
                issue_price=Decimal(p),
                reimbursement_price=Decimal(q),
                breakage_rebate=Decimal("0.005"),
                # The rail operator only takes points: it pays no fee and is paid whatever it
                # is owed each month, so every settled month has a payout in a pain.001 file.
                monthly_fee_cents=0 if code == "RAIL" else 50_000,
                pending_days=pending,
                earn_rate=Decimal(rate),
                rounding_mode="ROUND_HALF_UP",
                carry_forward_threshold_cents=0 if code == "RAIL" else 1_000,
                category_multipliers={"fresh": Decimal(2)} if code == "SUPER" else {},
            )
            directory.add_contract(conn, code, terms, START - timedelta(days=1), None, now, "demo")
        earning.add_engagement_rule(
            conn,
            EngagementRule(
                "app_install", 1, "program", 50, None, None, 1, START - timedelta(days=1)
            ),
            now,
        )
        earning.add_engagement_rule(
            conn,
            EngagementRule("review", 1, "SUPER", 20, 1, 4, None, START - timedelta(days=1)),
            now,
        )
        # A demo-sized inactivity rule, so that some points expire within the run: members who
        # neither earn nor spend for two months lose their points (lots still live 36 months).
        expiry.set_expiry_policy(
            conn, expiry.ExpiryPolicy(lot_months=36, inactivity_months=INACTIVITY_MONTHS), now
        )
        earning.add_campaign(
            conn,
            Campaign(
                "SPRING-FRESH",
                "SUPER",
                "Double points on fresh food, with the bank",
                datetime(2026, 2, 1, tzinfo=UTC),
                datetime(2026, 3, 1, tzinfo=UTC),
                multiplier=Decimal(2),
                categories=frozenset({"fresh"}),
                member_cap=500,
                funders={"SUPER": 1, "BANK": 1},
            ),
            now,
        )
    enrolments = [
        members.Enrolment(
            by=("SUPER", "DEPT", "RAIL", "BANK")[n % 4],
            personal={"email": f"member{n}@example.org"} if n % 3 == 0 else None,
            customer_ref=f"C{n:06d}",
            terms_version="2026-01",
            consents={"terms": True, "sharing": n % 2 == 0},
        )
        for n in range(count)
    ]
    for start in range(0, count, 1_000):  # the partners enrol in batches, one transaction each
        with world.db.transaction() as conn:
            enrolled = members.enroll_many(
                conn, enrolments[start : start + 1_000], now=now, master_key=master_key
            )
        for found in enrolled:
            if isinstance(found, LedgerError):
                raise found  # the demo's own enrolments are valid
            world.members.append(found.id)


def _basket(rng: random.Random, low: int, high: int, categories: tuple[str, ...]) -> Basket:
    lines = tuple(
        BasketLine(rng.randint(low, high) * 100, rng.choice(categories))
        for _ in range(rng.randint(1, 3))
    )
    return Basket(lines)


def _simulate_day(world: World) -> None:
    """One day of every member's life, booked set-based in ONE transaction per phase.

    Habits are per member (seeded): two in three members do their groceries at the supermarket
    on their own weekday; one in three pays with the bank's card, which reports the week's card
    spending once a week; anyone may buy clothes (14-day return window), take a train paid with
    points, write a review, install the app, or hold points at a till that the cashier then
    captures or abandons (the stale-hold job voids it). A few grocery baskets come back. The
    purchases go through the partners' earning rules in bulk (:func:`earning.earn_purchases`),
    the spends through the kernel's :meth:`Ledger.book_many`: the same rules and rows as one
    request at a time, at a fraction of the statements.
    """
    rng, when, day = world.rng, world.clock.now, world.clock.now.toordinal()
    purchases: list[earning.Purchase] = []
    spends: list[Command] = []
    engagements: list[earning.Engagement] = []
    for n, member in enumerate(world.members):
        habit = n * 2654435761 % 97  # a stable per-member habit, independent of the draws
        if habit < 65 and (day + n) % 7 == 0 and rng.random() < 0.9:  # weekly groceries
            basket = _basket(rng, 5, 40, ("fresh", "grocery", "household"))
            purchases.append(earning.Purchase(_actor("SUPER"), world.key(), member, basket, when))
        if habit % 3 == 0 and (day + n) % 7 == 3:  # the bank reports the week's card payments
            basket = _basket(rng, 40, 200, ("card",))
            purchases.append(earning.Purchase(_actor("BANK"), world.key(), member, basket, when))
        if rng.random() < 1 / 45:  # clothes, inside a 14-day return window
            basket = _basket(rng, 30, 150, ("fashion", "home"))
            purchases.append(earning.Purchase(_actor("DEPT"), world.key(), member, basket, when))
        if rng.random() < 1 / 60:  # a train ticket paid with points
            params = {"member": member, "points": rng.randint(150, 900), "business_time": when}
            spends.append(Command("burn", _actor("RAIL"), world.key(), params))
        if rng.random() < 1 / 50:  # points held at a till
            params = {"member": member, "points": rng.randint(20, 80), "business_time": when}
            spends.append(Command("hold", _actor("SUPER"), world.key(), params))
        if rng.random() < 1 / 150:
            event = ("review", f"rv-{member}-{day}")
            reviewer = _actor("SUPER")
            engagements.append(earning.Engagement(reviewer, world.key(), member, *event, when))
        if rng.random() < 0.004:
            event = ("app_install", f"app-{member}")
            operator = Actor("demo-operator")
            engagements.append(earning.Engagement(operator, world.key(), member, *event, when))
    with world.db.transaction() as conn:
        earned = earning.earn_purchases(conn, purchases, now=when, ledger=world.kernel)
        world.refused += sum(isinstance(r, LedgerError) for r in earned)
        engaged = earning.engage_many(conn, engagements, now=when, ledger=world.kernel)
        world.refused += sum(isinstance(r, LedgerError) for r in engaged)
        for result in earned:  # some goods come back
            entry = result.entry if isinstance(result, earning.EarnResult) else None
            if entry and entry.partner == "SUPER" and rng.random() < 0.03:
                params = {
                    "entry_id": entry.id,
                    "points": max(1, result.points // 4),  # type: ignore[union-attr]
                    "business_time": when,
                    "reason": "refund",
                }
                spends.append(Command("reverse", _actor("SUPER"), world.key(), params))
        booked = world.kernel.book_many(SqlLedgerStore(conn), spends)
        world.refused += sum(isinstance(r, LedgerError) for r in booked)
        captures = []
        for asked, booking in zip(spends, booked, strict=True):
            hold = isinstance(booking, Booking) and booking.entry.kind is EntryKind.HOLD
            if hold and rng.random() < 0.8:  # captured at the till; the rest is abandoned
                params = {
                    "hold_id": booking.entry.id,  # type: ignore[union-attr]
                    "points": rng.randint(1, asked.params["points"]),
                    "business_time": when,
                }
                captures.append(Command("capture", _actor("SUPER"), world.key(), params))
        captured = world.kernel.book_many(SqlLedgerStore(conn), captures)
        world.refused += sum(isinstance(r, LedgerError) for r in captured)


class _LeafPreparer:
    """The integrator's reading half, in a process of its own beside the booking.

    Turning a committed entry into its leaf's body (reading its rows, serialising the record)
    is most of the integrator's work and needs no lock: a forked process does it for every entry
    as soon as it is committed (:meth:`Integrator.prepare`, through a :func:`~ledger.db.reader`
    connection: on SQLite in WAL mode a reader neither waits for nor blocks the writer), and a
    thread here receives the bodies as they come. Each day the integrator then appends the
    bodies prepared so far — indices, chain, hashes, tree nodes, signature — under the write
    lock, a fraction of the work; an entry not prepared yet waits in the queue for the next
    day's pass, or for the last pass, which takes everything. The leaves are those the
    integrator builds alone, byte for byte (tests/integration/test_prepared_leaves.py).
    """

    def __init__(self, db: Database, integrator: Integrator) -> None:
        context = multiprocessing.get_context("fork")
        receiving, sending = context.Pipe(duplex=False)
        self.stop = context.Event()
        self.process = context.Process(
            target=_prepare_until_stopped,
            args=(db.engine, integrator, sending, self.stop, os.getpid()),
            daemon=True,
        )
        self.process.start()
        sending.close()
        self.arrived: deque[dict[UUID, PreparedBody]] = deque()
        self.receiver = threading.Thread(target=self._receive, args=(receiving,), daemon=True)
        self.receiver.start()
        self.bodies: dict[UUID, PreparedBody] = {}

    def _receive(self, pipe: PipeEnd) -> None:
        with pipe:
            for message in iter(pipe.recv, None):
                self.arrived.append(message)

    def collect(self) -> dict[UUID, PreparedBody]:
        """The bodies received and not used yet (the integrator removes those it uses)."""
        while self.arrived:
            self.bodies.update(self.arrived.popleft())
        return self.bodies

    def close(self) -> None:
        self.stop.set()
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
        self.receiver.join(timeout=30)


def _prepare_until_stopped(
    engine: sa.Engine, integrator: Integrator, pipe: PipeEnd, stop: Any, parent: int
) -> None:
    """The preparer process: prepare what is committed and send it, until told to stop."""
    engine.dispose(close=False)  # the parent's pooled connections stay the parent's
    after = 0
    with pipe:
        while os.getppid() == parent:
            with reader(engine) as conn:
                prepared = integrator.prepare(conn, after=after)
            if prepared:
                after = prepared[-1].seq
                pipe.send({body.entry_id: body for body in prepared})
            elif stop.wait(0.02):
                break

        pipe.send(None)


def _daily_jobs(world: World, integrator: Integrator, preparer: _LeafPreparer | None) -> None:
    """Release returned-window points, expire lots and void stale holds, expire the points of
    inactive members, then sign a checkpoint.

    The same kernel jobs as :mod:`ledger.jobs`, run for every due member in one batch, and the
    programme's inactivity expiry (:func:`partners.expiry.expire_inactive`).
    """
    now, kernel = world.clock.now, world.kernel
    with world.stage("daily jobs"), world.db.transaction() as conn:
        store = SqlLedgerStore(conn)
        releases = store.members_with_due_releases(now, 1_000_000)
        expiries = store.members_with_expired_lots(now, 1_000_000)
        stale = store.stale_holds(now, 1_000_000)
        with kernel.batch(store) as batch:
            batch.prefetch(spenders=[*releases, *expiries], holds=stale)
            for member in releases:
                kernel.release_due(batch, member, now)
            for member in expiries:
                kernel.expire_due(batch, member, now)
            for hold_id in stale:
                kernel.void_if_stale(batch, hold_id, now)
        expiry.expire_inactive(conn, now, ledger=kernel)
    with world.stage("integrator"):
        if preparer is None:
            integrator.integrate_all(world.db)
        else:
            integrator.integrate_all(world.db, preparer.collect(), prepared_only=True)


#: The demo database's page size. A day's batch touches pages all over the random-keyed
#: indexes, and every page it touches is written to the WAL at commit: with 16 KiB pages instead
#: of SQLite's 4 KiB, the demo's commits took 3.9 s instead of 5.0 s and its inserts 6.0 s
#: instead of 6.7 s (1 KiB pages: 9.1 s of commits).
PAGE_SIZE = 16_384


def _create_database(path: Path) -> None:
    """Create the demo's SQLite file, if it is new, with :data:`PAGE_SIZE` pages.

    The page size of a database in WAL mode is fixed when the file is created, and the ledger's
    connections turn WAL on as they open: the file is created here first.
    """
    if path.exists():
        return
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")


def _demo_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """SQLite settings for the demo's own, throw-away file (after the ledger's own settings).

    ``synchronous=OFF``: commits do not wait for the disk. A crash of the process loses nothing
    (SQLite has handed every committed page to the operating system), but a power cut or an OS
    crash during the demo may corrupt the file: run ``coalition demo --fresh`` again. The API the
    demo then serves, and any ``coalition`` command, open the file with the ledger's usual
    settings (WAL, ``synchronous=NORMAL``). A larger page cache and in-memory temporary tables
    save the reads a day's batch would otherwise repeat.
    """
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=OFF")
    cursor.execute("PRAGMA cache_size=-131072")  # 128 MiB
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


@click.command()
@click.option(
    "--members", "count", default=5_000, show_default=True, type=click.IntRange(1, 1_000_000)
)
@click.option("--days", default=90, show_default=True, type=click.IntRange(1, 3650))
@click.option("--seed", default=2026, show_default=True, type=int)
@click.option(
    "--dir",
    "directory",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the database, keys, statements and payment files go.",
)
@click.option(
    "--database",
    "db_path",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The SQLite file (default: DIR/coalition-demo.db); other files are named after it.",
)
@click.option("--fresh", is_flag=True, help="Delete an existing demo (database, keys, files).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Where to serve the API.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--no-serve", is_flag=True, help="Stop after the summary; do not serve the API.")
def demo(
    count: int,
    days: int,
    seed: int,
    directory: Path,
    db_path: Path | None,
    fresh: bool,
    host: str,
    port: int,
    no_serve: bool,
) -> None:
    """Run a coalition for DAYS days on embedded SQLite; settle, verify and serve it."""
    console = Console()
    with collecting_less():  # serving, below, runs with the usual thresholds
        files = finishing.DemoFiles(db_path or directory / "coalition-demo.db")
        files.prepare(fresh)
        db_path, key_path = files.database, files.log_key
        clock = Clock(START)
        _create_database(db_path)
        db = Database.connect(f"sqlite:///{db_path}")
        sa.event.listen(db.engine, "connect", _demo_pragmas)
        upgrade(db.engine)
        signer = (
            load_key(key_path)
            if key_path.exists()
            else create_key(key_path, "demo.coalition.local/ledger")
        )
        # One batch a day: the day's leaves in one transaction, under one checkpoint.
        integrator = log_integrator(signer, batch_size=5_000)
        kernel = Ledger(Policy(hold_ttl=timedelta(hours=2)), clock=clock)
        world = World(db, kernel, clock, random.Random(seed))  # noqa: S311  (a simulation)
        master_key = MasterKey.generate("demo-master")
        files.save_master_key(master_key)
        with world.stage("enrolment"):
            _setup(world, master_key, count)
        # Forked first, while no thread of ours runs; where fork is not the way, no preparer.
        preparer = _LeafPreparer(db, integrator) if sys.platform == "linux" else None
        try:
            with Progress(console=console) as progress:
                task = progress.add_task(f"{count:,} members, {days} days", total=days)
                for _ in range(days):
                    clock.now += timedelta(days=1)
                    with world.stage("booking"):
                        _simulate_day(world)
                    _daily_jobs(world, integrator, preparer)
                    progress.advance(task)
            with world.stage("integrator"):
                integrator.integrate_all(db, preparer.collect() if preparer else None)
        finally:
            if preparer is not None:
                preparer.close()
        finished = finishing.finish(
            console, db, kernel, integrator, signer, files, start=START, now=clock.now
        )
        summary = finishing.summarise(
            db,
            kernel,
            {code: name for code, (name, *_rest) in PARTNERS.items()},
            finished,
            members=len(world.members),
            refused=world.refused,
        )
        summary["seconds"] = {
            **{name: round(took, 1) for name, took in world.stages.items()},
            **summary["seconds"],
        }
        files.summary.write_text(json.dumps(summary, indent=2), encoding="utf-8")
        finishing.print_summary(
            console,
            summary,
            {
                "database": db_path,
                "log key": key_path,
                "vault key": files.master_key,
                "a verified receipt": finished.receipt_path,
                "summary": files.summary,
                "witness state": files.outputs / "witnesses",
                "shell environment": files.env,
            },
        )
        console.print(f"log verifier key: {signer.verifier.vkey}", highlight=False, soft_wrap=True)
        tokens = finishing.issue_credentials(db, datetime.now(UTC))
        months = finished.months
        env = finishing.environment(
            files, host, port, signer, tokens, months[-1].period.label if months else None
        )
        finishing.write_environment(files, env)
        db.dispose()
    if not summary["verification"]["ok"]:
        raise SystemExit(1)
    if no_serve:
        console.print(f"credentials and settings for the API: {files.env}")
        return
    finishing.print_credentials(console, files, env)
    console.print(f"serving the API on http://{host}:{port} (docs at /docs); Ctrl-C stops it")
    finishing.serve(files, host, port)
