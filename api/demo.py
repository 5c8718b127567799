"""``coalition demo``: a coalition living for a few months on an embedded SQLite ledger.

Four fictional partners modelled on a French coalition — a supermarket, a department store, a
rail operator and a bank — with the contracts of PRODUCT.md §7, tiers, engagement rules and a
co-funded campaign. Members shop weekly, buy clothes now and then (14-day return window), pay
with their bank card, install the app and write reviews, spend points on train tickets, hold
points at tills, and return goods. Every simulated day the scheduled jobs run and the integrator
signs a checkpoint. Then every completed month is closed on a signed checkpoint and its
statements are prepared, the whole ledger is verified, and a receipt is checked offline.

Everything goes through the same services the REST API calls; only the clock is simulated, so
months take seconds. ``--seed`` makes a run reproducible.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import ledger.tables as lt
import partners.tables  # noqa: F401
import settlement.tables  # noqa: F401
from audit.log import log_integrator
from audit.verify import verify_database
from ledger import jobs
from ledger.db import Database, upgrade
from ledger.errors import BusinessRefusal
from ledger.integrator import Integrator
from ledger.keys import create_key, load_key
from ledger.numbers import format_cents
from ledger.receipts import receipt, verify_receipt
from ledger.repository import SqlLedgerStore
from ledger.service import Actor, Ledger, Policy
from partners import directory, earning, members, tiers
from partners.directory import ContractTerms
from partners.rules import Basket, BasketLine, Campaign, EngagementRule
from partners.vault import MasterKey
from settlement import service as settle
from settlement.periods import period_containing

START = datetime(2026, 1, 1, 7, tzinfo=UTC)

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

    def key(self) -> str:
        self.counter += 1
        return f"demo-{self.counter}"

    def run(self, action: Any, *args: Any, **kwargs: Any) -> Any:
        """One request in its own transaction, as the API runs it; refusals are counted."""
        try:
            with self.db.transaction() as conn:
                return action(conn, *args, **kwargs)
        except BusinessRefusal:
            self.refused += 1
            return None


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
                monthly_fee_cents=50_000,
                pending_days=pending,
                earn_rate=Decimal(rate),
                rounding_mode="ROUND_HALF_UP",
                carry_forward_threshold_cents=1_000,
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
    for n in range(count):
        by = ("SUPER", "DEPT", "RAIL", "BANK")[n % 4]
        personal = {"email": f"member{n}@example.org"} if n % 3 == 0 else None
        found = world.run(
            members.enroll,
            by=by,
            personal=personal,
            customer_ref=f"C{n:06d}",
            now=now,
            master_key=master_key,
            terms_version="2026-01",
            consents={"terms": True, "sharing": n % 2 == 0},
        )
        world.members.append(found.id)


def _basket(rng: random.Random, low: int, high: int, categories: tuple[str, ...]) -> Basket:
    lines = tuple(
        BasketLine(rng.randint(low, high) * 100, rng.choice(categories))
        for _ in range(rng.randint(1, 3))
    )
    return Basket(lines)


def _member_day(world: World, member: str) -> None:
    rng, when = world.rng, world.clock.now
    common = {"business_time": when, "now": when, "ledger": world.kernel}
    if rng.random() < 1 / 7:  # weekly groceries
        result = world.run(
            earning.earn_purchase,
            _actor("SUPER"),
            world.key(),
            member=member,
            basket=_basket(rng, 5, 40, ("fresh", "grocery", "household")),
            **common,
        )
        if result and result.entry and rng.random() < 0.03:  # some goods come back
            world.run(
                earning.refund_purchase,
                _actor("SUPER"),
                world.key(),
                entry_id=result.entry.id,
                points=max(1, result.points // 4),
                **common,
            )
    if rng.random() < 1 / 30:  # clothes, inside a 14-day return window
        world.run(
            earning.earn_purchase,
            _actor("DEPT"),
            world.key(),
            member=member,
            basket=_basket(rng, 30, 150, ("fashion", "home")),
            **common,
        )
    if rng.random() < 1 / 4:  # card payments at the bank
        world.run(
            earning.earn_purchase,
            _actor("BANK"),
            world.key(),
            member=member,
            basket=_basket(rng, 10, 60, ("card",)),
            **common,
        )
    if rng.random() < 1 / 40:  # a train ticket paid with points
        world.run(
            earning.burn,
            _actor("RAIL"),
            world.key(),
            member=member,
            points=rng.randint(150, 900),
            **common,
        )
    if rng.random() < 1 / 60:
        world.run(
            earning.engage,
            _actor("SUPER"),
            world.key(),
            member=member,
            event_type="review",
            event_id=f"rv-{world.counter}",
            **common,
        )
    if rng.random() < 1 / 25:  # points held at a till, then captured or abandoned
        _till(world, member)


def _till(world: World, member: str) -> None:
    rng, when = world.rng, world.clock.now

    def hold(conn: Any) -> Any:
        return world.kernel.hold(
            SqlLedgerStore(conn),
            _actor("SUPER"),
            world.key(),
            member=member,
            points=rng.randint(20, 80),
            business_time=when,
        )

    held = world.run(hold)
    if held and rng.random() < 0.8:
        points = rng.randint(1, held.entry.amount_on(f"member:{member}:held"))
        world.run(
            lambda conn: world.kernel.capture(
                SqlLedgerStore(conn),
                _actor("SUPER"),
                world.key(),
                hold_id=held.entry.id,
                points=points,
                business_time=when,
            )
        )


def _daily_jobs(world: World, integrator: Integrator) -> None:
    now = world.clock.now
    jobs.release_pending(world.db, world.kernel, now)
    jobs.expire_lots(world.db, world.kernel, now)
    jobs.void_stale_holds(world.db, world.kernel, now)
    integrator.integrate_all(world.db)


def _settle_months(world: World, integrator: Integrator, days: int) -> list[Any]:
    """Close every month that ended during the run and prepare its statements."""
    runs, month = [], period_containing(START)
    while month.end <= world.clock.now - timedelta(minutes=10):
        with world.db.transaction() as conn:
            settle.close_period(
                conn, month, now=world.clock.now, closed_by="finance-anne", integrator=integrator
            )
            runs.append(
                settle.prepare_statements(
                    conn, month, now=world.clock.now, prepared_by="finance-anne"
                )
            )
        month = period_containing(month.end)
    return runs


def _print_summary(
    console: Console, world: World, runs: list[Any], ok: bool, paths: dict[str, Path]
) -> None:
    with world.db.transaction() as conn:
        store = SqlLedgerStore(conn)
        table = Table(title="Partners (points, whole run)")
        for column in ("partner", "issued", "redeemed"):
            table.add_column(column, justify="left" if column == "partner" else "right")
        for code, (name, *_rest) in PARTNERS.items():
            table.add_row(
                f"{code} — {name}",
                f"{-world.kernel.balance(store, f'partner:{code}:issued'):,}",
                f"{world.kernel.balance(store, f'partner:{code}:redeemed'):,}",
            )
        breakage = world.kernel.balance(store, "program:breakage")
        funded = -world.kernel.balance(store, "program:funded")
        outstanding = conn.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(lt.balances.c.balance), 0)).where(
                lt.balances.c.account.like("member:%")
            )
        )
        tier_counts = dict(
            conn.execute(
                sa.text(
                    "SELECT tier, count(*) FROM (SELECT member_id, tier, "
                    "row_number() OVER (PARTITION BY member_id ORDER BY id DESC) AS r "
                    "FROM tier_history) h WHERE r = 1 GROUP BY tier"
                )
            ).all()
        )
    console.print(table)
    for run in runs:
        nets = Table(
            title=f"Statements {run.period.label}", caption="net > 0: the partner pays the operator"
        )
        nets.add_column("partner")
        nets.add_column("net €", justify="right")
        for statement in run.settlement.statements:
            nets.add_row(statement.partner, format_cents(statement.net_cents))
        console.print(nets)
    console.print(
        f"outstanding points liability: {outstanding:,} points;  "
        f"program-funded: {funded:,};  breakage (expired): {breakage:,}"
    )
    upgraded = ", ".join(f"{name}: {count}" for name, count in sorted(tier_counts.items()))
    console.print(f"members upgraded above White: {upgraded or 'none'} of {len(world.members)}")
    console.print(f"requests refused for a business reason: {world.refused:,}")
    console.print(f"verification: {'[green]OK[/green]' if ok else '[red]FAILED[/red]'}")
    for what, path in paths.items():
        console.print(f"{what}: {path}")


@click.command()
@click.option(
    "--members", "count", default=100, show_default=True, type=click.IntRange(1, 1_000_000)
)
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
def demo(count: int, days: int, seed: int, db_path: Path, fresh: bool) -> None:
    """Run a coalition for DAYS days on an embedded SQLite ledger, settle it, verify it."""
    console = Console()
    key_path = db_path.with_suffix(".key")
    if db_path.exists():
        if not fresh:
            raise click.ClickException(f"{db_path} exists; use --fresh to recreate it")
        for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm"), key_path):
            path.unlink(missing_ok=True)
    clock = Clock(START)
    db = Database.connect(f"sqlite:///{db_path}")
    upgrade(db.engine)
    signer = (
        load_key(key_path)
        if key_path.exists()
        else create_key(key_path, "demo.coalition.local/ledger")
    )
    integrator = log_integrator(signer)
    kernel = Ledger(Policy(hold_ttl=timedelta(hours=2)), clock=clock)
    world = World(db, kernel, clock, random.Random(seed))  # noqa: S311  (a simulation)
    master_key = MasterKey.generate("demo-master")
    _setup(world, master_key, count)
    with Progress(console=console) as progress:
        task = progress.add_task(f"{count:,} members, {days} days", total=days)
        for _ in range(days):
            clock.now += timedelta(days=1)
            for member in world.members:
                if world.rng.random() < 0.02:
                    world.run(
                        earning.engage,
                        Actor("demo-operator"),
                        world.key(),
                        member=member,
                        event_type="app_install",
                        event_id=f"app-{member}",
                        business_time=clock.now,
                        now=clock.now,
                        ledger=kernel,
                    )
                _member_day(world, member)
            _daily_jobs(world, integrator)
            progress.advance(task)
    runs = _settle_months(world, integrator, days)
    with db.engine.connect() as conn:
        report = verify_database(conn, [signer.verifier])
        sample_id = conn.scalar(
            sa.select(lt.leaves.c.entry_id).where(lt.leaves.c.entry_id.is_not(None)).limit(1)
        )
        sample = receipt(conn, sample_id)
    assert sample is not None
    verify_receipt(sample, [signer.verifier])
    receipt_path = db_path.with_suffix(".receipt.json")
    receipt_path.write_text(json.dumps(sample.to_json(), indent=2), encoding="utf-8")
    _print_summary(
        console,
        world,
        runs,
        report.ok,
        {"database": db_path, "log key": key_path, "a verified receipt": receipt_path},
    )
    console.print(f"log verifier key: {signer.verifier.vkey}")
    db.dispose()
    if not report.ok:
        console.print(report.to_text())
        raise SystemExit(1)
