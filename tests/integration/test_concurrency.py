"""Many writers at once on real PostgreSQL: the kernel's row locks keep every ledger invariant.

Each worker thread runs one command per transaction (``Database.transaction``) on its own pooled
connection, as the API does per request, and the workers are released together by a barrier. The
tests then check the ledger as a whole: balances equal the postings of the bookings the workers
were told were accepted, no member account is below zero, every book sums to zero and
``check_consistency`` finds nothing. Refusals are answers and are counted; any other error (a
deadlock is PostgreSQL's ``DeadlockDetected``) escapes its worker and fails the test.

PostgreSQL only: SQLite serialises every writer with ``BEGIN IMMEDIATE``, so it proves nothing here.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from uuid import UUID

import pytest
import sqlalchemy as sa

from ledger import tables as t
from ledger.consistency import cached_balances, check_consistency
from ledger.db import Database
from ledger.errors import BusinessRefusal, IdempotencyConflict, InsufficientPoints
from ledger.model import Account, Entry, EntryKind
from ledger.repository import SqlLedgerStore
from ledger.service import Actor, Booking, Ledger

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

T = TypeVar("T")

WORKERS = 16
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ACME = Actor(credential="key-acme", partner="acme")
STAFF = Actor(credential="staff-ops")
LEDGER = Ledger()


@pytest.fixture
def pg_db(postgres_only: None, database_url: str) -> Iterator[Database]:
    """The test's own PostgreSQL database, with a pool that lets every worker hold a connection."""
    database = Database.connect(database_url, pool_size=2 * WORKERS + 4, max_overflow=0)
    yield database
    database.dispose()


def open_books(db: Database, funding: dict[str, int]) -> list[Entry]:
    """Open the system accounts, partner ``acme`` and the members, and fund each from ``acme``."""
    entries = []
    with db.transaction() as conn:
        store = SqlLedgerStore(conn)
        LEDGER.open_system_accounts(store)
        LEDGER.open_partner(store, "acme")
        for member, points in funding.items():
            LEDGER.open_member(store, member)
            if points:
                booking = LEDGER.earn(
                    store,
                    ACME,
                    f"fund-{member}",
                    member=member,
                    funding={"acme": points},
                    business_time=T0,
                )
                entries.append(booking.entry)
    return entries


def attempt(db: Database, command: Callable[[SqlLedgerStore], T]) -> T | BusinessRefusal:
    """Run one command in its own transaction; a business refusal is returned, not raised."""
    try:
        with db.transaction() as conn:
            return command(SqlLedgerStore(conn))
    except BusinessRefusal as refusal:
        return refusal


def run_together(count: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(i)`` for each i < count on its own thread, all released at once."""
    barrier = threading.Barrier(count)

    def start(index: int) -> T:
        barrier.wait(timeout=30)
        return work(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(start, index) for index in range(count)]
        return [future.result() for future in futures]


def posted_totals(entries: Sequence[Entry]) -> dict[str, int]:
    """Each account's balance as the sum of the given entries' postings."""
    totals: Counter[str] = Counter()
    for entry in entries:
        for posting in entry.postings:
            totals[posting.account] += posting.amount
    return dict(totals)


def ledger_state(db: Database) -> tuple[dict[str, int], int, list[object]]:
    """Cached balance of every account, number of entries, and consistency findings."""
    with db.transaction() as conn:
        entry_count = int(conn.scalar(sa.select(sa.func.count()).select_from(t.entries)) or 0)
        return cached_balances(conn), entry_count, list(check_consistency(conn))


def recorded_refusals(db: Database) -> int:
    """Idempotency records that hold a refusal instead of an entry."""
    with db.transaction() as conn:
        query = sa.select(sa.func.count()).where(t.idempotency.c.refusal.is_not(None))
        return int(conn.scalar(query) or 0)


def balance(db: Database, account: str) -> int:
    with db.transaction() as conn:
        return LEDGER.balance(SqlLedgerStore(conn), account)


# -- a random mix of every command on one hot member and one partner ------------------------------

MEMBERS = ("alice", "bob", "carol")
OPERATIONS = ("earn", "burn", "hold", "capture", "void", "transfer")
OPS_PER_WORKER = 30


class Hammer:
    """Random commands from many threads, with a record of what the ledger accepted."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.holds: list[tuple[UUID, int]] = []
        self.guard = threading.Lock()

    def worker(self, index: int) -> tuple[list[Entry], Counter[str]]:
        rng = random.Random(index)  # each worker's choices are reproducible; interleaving is not
        accepted: list[Entry] = []
        refused: Counter[str] = Counter()
        for n in range(OPS_PER_WORKER):
            operation = rng.choice(OPERATIONS)
            outcome = attempt(self.db, self.command(operation, rng, f"w{index}-{n}"))
            if isinstance(outcome, BusinessRefusal):
                refused[type(outcome).__name__] += 1
                continue
            accepted.append(outcome.entry)
            if outcome.entry.kind is EntryKind.HOLD:
                with self.guard:
                    self.holds.append((outcome.entry.id, -outcome.entry.postings[0].amount))
        return accepted, refused

    def command(
        self, operation: str, rng: random.Random, key: str
    ) -> Callable[[SqlLedgerStore], Booking]:
        # Most single-member commands hit alice, so her accounts are the hot rows.
        member = rng.choice(("alice", "alice", "bob", "carol"))
        with self.guard:
            target = rng.choice(self.holds) if self.holds else None
        if operation in ("capture", "void") and target is None:
            operation = "hold"
        if operation == "earn":
            points = rng.randint(1, 100)
            return lambda s: LEDGER.earn(
                s, ACME, key, member=member, funding={"acme": points}, business_time=T0
            )
        if operation == "burn":
            points = rng.randint(1, 200)
            return lambda s: LEDGER.burn(
                s, ACME, key, member=member, points=points, business_time=T0
            )
        if operation == "hold":
            points = rng.randint(1, 200)
            return lambda s: LEDGER.hold(
                s, ACME, key, member=member, points=points, business_time=T0
            )
        if operation == "capture":
            assert target is not None
            hold_id, held = target
            points = rng.randint(1, held)
            return lambda s: LEDGER.capture(
                s, ACME, key, hold_id=hold_id, points=points, business_time=T0
            )
        if operation == "void":
            assert target is not None
            return lambda s: LEDGER.void(s, ACME, key, hold_id=target[0], business_time=T0)
        source, destination = rng.sample(MEMBERS, 2)
        points = rng.randint(1, 200)
        return lambda s: LEDGER.transfer(
            s,
            STAFF,
            key,
            from_member=source,
            to_member=destination,
            points=points,
            business_time=T0,
        )


def test_random_commands_keep_every_invariant(pg_db: Database) -> None:
    """16 workers mixing every command on a hot member leave balances equal to their postings."""
    funded = open_books(pg_db, dict.fromkeys(MEMBERS, 1_000))
    hammer = Hammer(pg_db)

    results = run_together(WORKERS, hammer.worker)

    accepted = [booked for worker_accepted, _ in results for booked in worker_accepted]
    refused = sum((worker_refused for _, worker_refused in results), Counter())
    assert set(refused) <= {"InsufficientPoints", "HoldNotOpen", "CaptureExceedsHold"}
    assert refused["InsufficientPoints"] > 0, "the member floor was never reached"
    assert {entry.kind.value.lower() for entry in accepted} == set(OPERATIONS)
    entries = funded + accepted
    balances, entry_count, findings = ledger_state(pg_db)
    assert balances == {account: posted_totals(entries).get(account, 0) for account in balances}
    assert set(posted_totals(entries)) <= set(balances)
    assert entry_count == len(entries)
    assert recorded_refusals(pg_db) == sum(refused.values())
    assert all(
        amount >= 0 for account, amount in balances.items() if Account.parse(account).never_negative
    )
    books: Counter[str] = Counter()
    for account, amount in balances.items():
        books[Account.parse(account).book.value] += amount
    assert all(total == 0 for total in books.values())
    closed = [e.refers_to for e in accepted if e.kind in (EntryKind.CAPTURE, EntryKind.VOID)]
    assert len(closed) == len(set(closed)), "a hold was closed twice"
    open_held = sum(points for hold_id, points in hammer.holds if hold_id not in set(closed))
    assert sum(balances[f"member:{m}:held"] for m in MEMBERS) == open_held
    assert findings == []


# -- the member floor under a burst of identical burns --------------------------------------------


def test_concurrent_burns_never_overspend(pg_db: Database) -> None:
    """32 simultaneous burns of 10 against 100 points: exactly 10 succeed, 22 are refused."""
    open_books(pg_db, {"alice": 100})

    outcomes = run_together(
        2 * WORKERS,
        lambda i: attempt(
            pg_db,
            lambda s: LEDGER.burn(
                s, ACME, f"burn-{i}", member="alice", points=10, business_time=T0
            ),
        ),
    )

    assert sum(isinstance(o, Booking) for o in outcomes) == 10
    assert sum(isinstance(o, InsufficientPoints) for o in outcomes) == 22
    assert balance(pg_db, "member:alice:available") == 0
    assert balance(pg_db, "partner:acme:redeemed") == 100
    _, entry_count, findings = ledger_state(pg_db)
    assert entry_count == 1 + 10
    assert recorded_refusals(pg_db) == 22
    assert findings == []


# -- idempotency keys claimed by many threads at once ---------------------------------------------


def earn_under_one_key(
    db: Database, points: int
) -> Booking | BusinessRefusal | IdempotencyConflict:
    try:
        return attempt(
            db,
            lambda s: LEDGER.earn(
                s, ACME, "order-42", member="alice", funding={"acme": points}, business_time=T0
            ),
        )
    except IdempotencyConflict as conflict:
        return conflict


def entries_under_key(db: Database, key: str) -> int:
    with db.transaction() as conn:
        query = sa.select(sa.func.count()).where(t.entries.c.idempotency_key == key)
        return int(conn.scalar(query) or 0)


def test_one_key_one_request_books_once(pg_db: Database) -> None:
    """16 threads sending one request under one key book one entry, and all get its id."""
    open_books(pg_db, {"alice": 0})

    outcomes = run_together(WORKERS, lambda _: earn_under_one_key(pg_db, 50))

    assert all(isinstance(o, Booking) for o in outcomes)
    bookings = [o for o in outcomes if isinstance(o, Booking)]
    assert len({b.entry.id for b in bookings}) == 1
    assert sorted(b.replayed for b in bookings) == [False] + [True] * (WORKERS - 1)
    assert entries_under_key(pg_db, "order-42") == 1
    assert balance(pg_db, "member:alice:available") == 50
    assert ledger_state(pg_db)[2] == []


def test_one_key_different_requests_book_one_and_conflict_the_rest(pg_db: Database) -> None:
    """16 threads sending different requests under one key: one is booked, 15 conflict with it."""
    open_books(pg_db, {"alice": 0})

    outcomes = run_together(WORKERS, lambda i: earn_under_one_key(pg_db, 10 + i))

    bookings = [o for o in outcomes if isinstance(o, Booking)]
    conflicts = [o for o in outcomes if isinstance(o, IdempotencyConflict)]
    assert (len(bookings), len(conflicts)) == (1, WORKERS - 1)
    winner = bookings[0].entry
    assert not bookings[0].replayed
    assert {c.entry_id for c in conflicts} == {str(winner.id)}
    assert all(c.differing_fields == ["funding"] for c in conflicts)
    assert entries_under_key(pg_db, "order-42") == 1
    assert balance(pg_db, "member:alice:available") == winner.postings[-1].amount
    assert ledger_state(pg_db)[2] == []


# -- lock order: commands that lock the same accounts from different sides ------------------------


TRANSFERS_PER_WORKER = 10


def test_opposite_transfers_do_not_deadlock(pg_db: Database) -> None:
    """Transfers alice→bob and bob→alice at once all complete: locks follow one global order."""
    open_books(pg_db, {"alice": 1_000, "bob": 1_000})

    def transfers(index: int) -> list[Booking | BusinessRefusal]:
        source, destination = ("alice", "bob") if index % 2 == 0 else ("bob", "alice")
        return [
            attempt(
                pg_db,
                lambda s, n=n: LEDGER.transfer(
                    s,
                    STAFF,
                    f"t{index}-{n}",
                    from_member=source,
                    to_member=destination,
                    points=1 + n % 5,
                    business_time=T0,
                ),
            )
            for n in range(TRANSFERS_PER_WORKER)
        ]

    outcomes = [o for worker in run_together(WORKERS, transfers) for o in worker]

    # Each direction moves at most 8 × 10 × 5 points, less than a sender holds: none is refused.
    assert len(outcomes) == WORKERS * TRANSFERS_PER_WORKER
    assert all(isinstance(o, Booking) for o in outcomes)
    assert balance(pg_db, "member:alice:available") == 1_000
    assert balance(pg_db, "member:bob:available") == 1_000
    assert ledger_state(pg_db)[2] == []


def test_stale_hold_job_races_tills_without_deadlock(pg_db: Database) -> None:
    """The stale-hold job voids holds while tills hold and capture on one member: all finish."""
    open_books(pg_db, {"alice": 10_000})
    stale = []
    for n in range(48):
        with pg_db.transaction() as conn:
            booking = LEDGER.hold(
                SqlLedgerStore(conn),
                ACME,
                f"stale-{n}",
                member="alice",
                points=10,
                business_time=T0,
            )
            stale.append(booking.entry.id)
    later = datetime.now(UTC) + timedelta(days=1)

    def job(index: int) -> list[Entry | None]:
        return [
            attempt(pg_db, lambda s, h=hold_id: LEDGER.void_if_stale(s, h, now=later))
            for hold_id in stale[index :: WORKERS // 2]
        ]

    def till(index: int) -> list[Booking | BusinessRefusal]:
        outcomes: list[Booking | BusinessRefusal] = []
        for n in range(6):
            held = attempt(
                pg_db,
                lambda s, n=n: LEDGER.hold(
                    s, ACME, f"till-{index}-{n}", member="alice", points=5, business_time=T0
                ),
            )
            assert isinstance(held, Booking)
            outcomes.append(
                attempt(
                    pg_db,
                    lambda s, n=n, h=held.entry.id: LEDGER.capture(
                        s,
                        ACME,
                        f"capture-{index}-{n}",
                        hold_id=h,
                        points=5,
                        business_time=T0,
                    ),
                )
            )
        return outcomes

    results = run_together(WORKERS, lambda i: job(i // 2) if i % 2 == 0 else till(i // 2))

    voids = [o for i, worker in enumerate(results) if i % 2 == 0 for o in worker]
    captures = [o for i, worker in enumerate(results) if i % 2 == 1 for o in worker]
    assert [type(v) for v in voids] == [Entry] * 48
    assert [type(c) for c in captures] == [Booking] * 48
    assert balance(pg_db, "member:alice:held") == 0
    assert balance(pg_db, "member:alice:available") == 10_000 - 48 * 5
    assert ledger_state(pg_db)[2] == []
