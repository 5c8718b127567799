"""``coalition demo``: a small coalition living for a few months on an embedded SQLite ledger.

Four fictional partners — a supermarket, a department store, a rail operator and a bank — and
members who shop weekly, buy clothes now and then (with a 14-day return window), pay with their
bank card, install the app (a program-funded bonus that expires), spend points on train tickets,
hold points at tills, return goods and get refunds. Every day the scheduled jobs run (release,
expire, void stale holds) and the integrator signs a checkpoint. At the end the whole ledger is
verified and a receipt is checked offline, then a summary is printed.

Everything goes through the same kernel commands the API uses; the clock is simulated so that a
90-day run takes seconds. ``--seed`` makes it reproducible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import ledger.tables
from audit.verify import verify_database
from ledger import jobs
from ledger.db import Database, upgrade
from ledger.errors import BusinessRefusal
from ledger.integrator import Integrator
from ledger.keys import create_key, load_key
from ledger.model import EntryKind
from ledger.receipts import receipt, verify_receipt
from ledger.repository import SqlLedgerStore
from ledger.service import SYSTEM, Actor, Ledger, Policy

PARTNERS = {
    "SUPER": "supermarket",
    "DEPT": "department store",
    "RAIL": "rail operator",
    "BANK": "bank",
}


@dataclass
class Clock:
    """The simulated time: the ledger books at ``now``."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    db: Database
    kernel: Ledger
    clock: Clock
    rng: random.Random
    members: list[str]
    counter: int = 0
    refused: int = 0
    earns: dict[str, list] = field(default_factory=dict)

    def key(self) -> str:
        self.counter += 1
        return f"demo-{self.counter}"

    def book(self, command: str, actor: Actor, **kwargs: object) -> object:
        """Run one kernel command in its own transaction, as an API request would."""
        try:
            with self.db.transaction() as conn:
                return getattr(self.kernel, command)(
                    SqlLedgerStore(conn), actor, self.key(), business_time=self.clock.now, **kwargs
                )
        except BusinessRefusal:
            self.refused += 1
            return None


def _actor(partner: str) -> Actor:
    return Actor(credential=f"demo-key-{partner.lower()}", partner=partner)


def simulate_day(world: World) -> None:
    """One day of coalition life for every member."""
    rng = world.rng
    for member in world.members:
        if rng.random() < 1 / 7:  # weekly groceries: 1 point per euro
            booking = world.book(
                "earn", _actor("SUPER"), member=member, funding={"SUPER": rng.randint(20, 120)}
            )
            if booking and rng.random() < 0.03:  # a refund of part of the basket
                world.book(
                    "reverse",
                    _actor("SUPER"),
                    entry_id=booking.entry.id,
                    points=rng.randint(1, 10),
                    reason="returned goods",
                )
        if rng.random() < 1 / 30:  # clothes, 2 points per euro, 14-day return window
            world.book(
                "earn",
                _actor("DEPT"),
                member=member,
                funding={"DEPT": rng.randint(60, 400)},
                pending_until=world.clock.now + timedelta(days=14),
            )
        if rng.random() < 1 / 4:  # card payments at the bank
            world.book("earn", _actor("BANK"), member=member, funding={"BANK": rng.randint(5, 40)})
        if rng.random() < 1 / 45:  # a train ticket paid with points
            world.book("burn", _actor("RAIL"), member=member, points=rng.randint(150, 900))
        if rng.random() < 1 / 20:  # points held at a till, then captured or abandoned
            hold = world.book("hold", _actor("SUPER"), member=member, points=rng.randint(20, 80))
            if hold and rng.random() < 0.8:
                world.book(
                    "capture",
                    _actor("SUPER"),
                    hold_id=hold.entry.id,
                    points=rng.randint(1, hold.entry.postings[1].amount),
                )


def _welcome(world: World) -> None:
    """An app-install bonus funded by the program; it expires after 60 days."""
    for member in world.members:
        if world.rng.random() < 0.5:
            world.book(
                "earn",
                Actor("demo-operator"),
                member=member,
                funding={"program": 50},
                kind=EntryKind.ENGAGE,
                expires_at=world.clock.now + timedelta(days=60),
                attributes={"event": "app_install"},
            )


def _setup(db: Database, kernel: Ledger, members: int) -> list[str]:
    ids = [f"m{n:06d}" for n in range(1, members + 1)]
    with db.transaction() as conn:
        store = SqlLedgerStore(conn)
        kernel.open_system_accounts(store)
        for partner in PARTNERS:
            kernel.open_partner(store, partner)
        for member in ids:
            kernel.open_member(store, member)
    return ids


def _summary(
    console: Console,
    db: Database,
    kernel: Ledger,
    world: World,
    report_ok: bool,
    paths: dict[str, Path],
) -> None:
    with db.transaction() as conn:
        store = SqlLedgerStore(conn)
        table = Table(title="Partners (points)")
        for column in ("partner", "issued", "redeemed"):
            table.add_column(column, justify="right" if column != "partner" else "left")
        for partner, label in PARTNERS.items():
            issued = -kernel.balance(store, f"partner:{partner}:issued")
            redeemed = kernel.balance(store, f"partner:{partner}:redeemed")
            table.add_row(f"{partner} ({label})", f"{issued:,}", f"{redeemed:,}")
        funded = -kernel.balance(store, "program:funded")
        breakage = kernel.balance(store, "program:breakage")
        outstanding = sum(
            kernel.balance(store, f"member:{m}:{role}")
            for m in world.members
            for role in ("available", "pending", "held")
        )
    console.print(table)
    console.print(f"program-funded points: {funded:,}   breakage (expired): {breakage:,}")
    console.print(f"outstanding points liability: {outstanding:,} points")
    console.print(
        f"requests refused for a business reason (e.g. not enough points): {world.refused:,}"
    )
    console.print(f"verification: {'[green]OK[/green]' if report_ok else '[red]FAILED[/red]'}")
    for what, path in paths.items():
        console.print(f"{what}: {path}")


@click.command()
@click.option("--members", default=300, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--days", default=90, show_default=True, type=click.IntRange(1, 3650))
@click.option("--seed", default=2026, show_default=True, type=int)
@click.option(
    "--database",
    "db_path",
    default="coalition-demo.db",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
)
@click.option("--fresh", is_flag=True, help="Delete an existing demo database first.")
def demo(members: int, days: int, seed: int, db_path: Path, fresh: bool) -> None:
    """Run a coalition for DAYS days on an embedded SQLite ledger, then verify it."""
    console = Console()
    key_path = db_path.with_suffix(".key")
    if db_path.exists():
        if not fresh:
            raise click.ClickException(f"{db_path} exists; use --fresh to recreate it")
        for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm"), key_path):
            path.unlink(missing_ok=True)
    clock = Clock(datetime(2026, 1, 1, 8, tzinfo=UTC))
    db = Database.connect(f"sqlite:///{db_path}")
    upgrade(db.engine)
    signer = (
        load_key(key_path)
        if key_path.exists()
        else create_key(key_path, "demo.coalition.local/ledger")
    )
    integrator = Integrator(signer)
    kernel = Ledger(Policy(hold_ttl=timedelta(hours=2)), clock=clock)
    rng = random.Random(seed)  # noqa: S311  (a reproducible simulation, not a secret)
    world = World(db, kernel, clock, rng, _setup(db, kernel, members))
    _welcome(world)
    with Progress(console=console) as progress:
        task = progress.add_task(f"{members:,} members, {days} days", total=days)
        for _ in range(days):
            clock.now += timedelta(days=1)
            simulate_day(world)
            jobs.release_pending(db, kernel, clock.now)
            jobs.expire_lots(db, kernel, clock.now)
            jobs.void_stale_holds(db, kernel, clock.now + timedelta(hours=3))
            integrator.integrate_all(db)
            progress.advance(task)
    with db.engine.connect() as conn:
        report = verify_database(conn, [signer.verifier])
        sample = receipt(conn, _any_entry(conn))
    assert sample is not None
    verify_receipt(sample, [signer.verifier])
    receipt_path = db_path.with_suffix(".receipt.json")
    receipt_path.write_text(__import__("json").dumps(sample.to_json(), indent=2), encoding="utf-8")
    _summary(
        console,
        db,
        kernel,
        world,
        report.ok,
        {"database": db_path, "log key": key_path, "a verified receipt": receipt_path},
    )
    console.print(f"log verifier key: {signer.verifier.vkey}")
    if not report.ok:
        console.print(report.to_text())
        raise SystemExit(1)


def _any_entry(conn: object) -> object:
    import sqlalchemy as sa

    return conn.scalar(
        sa.select(ledger.tables.leaves.c.entry_id)  # type: ignore[attr-defined]
        .where(ledger.tables.leaves.c.entry_id.is_not(None))
        .limit(1)
    )


_ = SYSTEM
