"""Booking many commands at once (``Ledger.book_many``, ``Ledger.batch``) writes exactly what
booking them one by one writes.

A Hypothesis strategy draws a sequence of kernel commands over three members and two partners:
earns (pending or not, expiring soon or not), burns, holds, captures and voids of earlier holds,
reversals of earlier entries, transfers, adjustments, retries of earlier keys (identical, which
must replay, or different, which must conflict), and the release and expiry jobs. The sequence is
booked twice on the same database, each time inside an outer transaction rolled back afterwards:

1. one by one, each command in its own savepoint with :meth:`Database.transaction`'s rules (kept
   on success and on a business refusal, undone on any other error);
2. in bulk: the keyed commands through ``book_many`` in chunks, the jobs in a ``batch``.

Ids and the ledger clock are injected (a counter), so both runs draw the same ids and times; every
journal row, lot, hold, idempotency record, queue row and balance must then be equal, and each
command must have the same outcome (the same entry, replay flag or error code).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Connection

import ledger.service as service
from ledger import tables as t
from ledger.consistency import check_consistency
from ledger.db import Database
from ledger.errors import BusinessRefusal, LedgerError
from ledger.journal import entry_record
from ledger.model import PROGRAM
from ledger.repository import BufferedStore, SqlLedgerStore
from ledger.service import Actor, Booking, Command, Ledger, Policy
from partners import earning, tiers
from partners import tables as pt
from partners.rules import Basket, BasketLine, Campaign, EngagementRule
from tests.integration.conftest import START
from tests.integration.test_earning import T0
from tests.integration.test_earning import World as EarningWorld

MEMBERS = ("bm0", "bm1", "bm2")
PARTNERS = ("BP1", "BP2")

#: A drawn step: (op, arguments with references to earlier steps still unresolved).
Step = tuple[str, dict[str, Any]]

member = st.sampled_from(range(len(MEMBERS)))
partner = st.sampled_from(range(len(PARTNERS)))
points = st.integers(1, 60)
earlier = st.integers(0, 10_000)  # an earlier step, modulo how many there are

STEPS = st.one_of(
    st.tuples(
        st.just("earn"),
        st.fixed_dictionaries(
            {
                "member": member,
                "partner": partner,
                "points": points,
                "joint": st.booleans(),
                "pending": st.booleans(),
                "soon": st.booleans(),
            }
        ),
    ),
    st.tuples(
        st.just("burn"),
        st.fixed_dictionaries({"member": member, "partner": partner, "points": points}),
    ),
    st.tuples(
        st.just("hold"),
        st.fixed_dictionaries({"member": member, "partner": partner, "points": points}),
    ),
    st.tuples(st.just("capture"), st.fixed_dictionaries({"of": earlier, "points": points})),
    st.tuples(st.just("void"), st.fixed_dictionaries({"of": earlier})),
    st.tuples(
        st.just("reverse"),
        st.fixed_dictionaries({"of": earlier, "points": st.one_of(st.none(), points)}),
    ),
    st.tuples(
        st.just("transfer"),
        st.fixed_dictionaries({"member": member, "to": member, "points": points}),
    ),
    st.tuples(
        st.just("adjust"),
        st.fixed_dictionaries({"member": member, "points": st.integers(-40, 40).filter(bool)}),
    ),
    st.tuples(st.just("retry"), st.fixed_dictionaries({"of": earlier, "same": st.booleans()})),
    st.tuples(st.just("release"), st.fixed_dictionaries({"member": member})),
    st.tuples(st.just("expire"), st.fixed_dictionaries({"member": member})),
)


class Ticker:
    """Ids and times from counters, so two runs of one sequence draw the same ones."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._ids = itertools.count(1)
        self._ticks = itertools.count(0)

    def uuid4(self) -> UUID:
        return UUID(int=next(self._ids))

    def clock(self) -> Any:
        return START + timedelta(milliseconds=next(self._ticks))


@contextmanager
def rolled_back(db: Database) -> Iterator[Connection]:
    """A connection in a transaction rolled back at the end (the runs share one database)."""
    with db.engine.connect() as conn:
        outer = conn.begin()
        try:
            yield conn
        finally:
            outer.rollback()


@contextmanager
def savepoint(conn: Connection) -> Iterator[Connection]:
    """:meth:`Database.transaction`'s rules inside the run's transaction."""
    nested = conn.begin_nested()
    try:
        yield conn
    except BusinessRefusal:
        nested.commit()
        raise
    except BaseException:
        nested.rollback()
        raise
    nested.commit()


def open_books(conn: Connection, kernel: Ledger) -> None:
    store = SqlLedgerStore(conn)
    kernel.open_system_accounts(store)
    for code in PARTNERS:
        kernel.open_partner(store, code)
    for code in MEMBERS:
        kernel.open_member(store, code)


def resolve(n: int, step: Step, calls: list, booked: list) -> tuple[str, Actor, str, dict] | None:
    """Turn a drawn step into a kernel call, references resolved to what earlier calls booked.

    ``booked`` holds, per earlier call, its op and the entry it booked (``None`` if none); a
    reference to an earlier hold (or entry) where there is none points at an unknown entry.
    """
    op, a = step
    when = START + timedelta(seconds=n)
    if op == "retry":
        keyed = [c for c in calls if c[0] not in ("release", "expire")]
        if not keyed:
            return None
        before = keyed[a["of"] % len(keyed)]
        params = dict(before[3])
        if not a["same"]:
            params["business_time"] = params["business_time"] + timedelta(hours=1)
        return (before[0], before[1], before[2], params)
    key = f"k{n}"
    if op in ("release", "expire"):
        return (op, service.SYSTEM, key, {"member": MEMBERS[a["member"]]})
    if op in ("capture", "void", "reverse"):
        wanted = ("hold",) if op != "reverse" else ("earn", "burn", "capture", "hold")
        targets = [entry for kind, entry in booked if kind in wanted and entry is not None]
        target = targets[a["of"] % len(targets)] if targets else UUID(int=10**30 + n)
        params: dict[str, Any] = {"business_time": when}
        if op == "reverse":
            return (op, Actor("ops"), key, params | {"entry_id": target, "points": a["points"]})
        params["hold_id"] = target
        if op == "capture":
            params["points"] = a["points"]
        return (op, Actor("cred-BP1", partner="BP1"), key, params)
    who = MEMBERS[a["member"]]
    if op == "earn":
        at = PARTNERS[a["partner"]]
        funding = {at: a["points"]}
        if a["joint"]:
            funding[PROGRAM] = a["points"] // 2 + 1
        params = {
            "member": who,
            "funding": funding,
            "business_time": when,
            "pending_until": START + timedelta(seconds=30) if a["pending"] else None,
            "expires_at": START + timedelta(seconds=40) if a["soon"] else None,
        }
        return ("earn", Actor(f"cred-{at}", partner=at), key, params)
    if op in ("burn", "hold"):
        at = PARTNERS[a["partner"]]
        params = {"member": who, "points": a["points"], "business_time": when, "partner": at}
        return (op, Actor("ops"), key, params)
    if op == "transfer":
        params = {
            "from_member": who,
            "to_member": MEMBERS[a["to"]],
            "points": a["points"],
            "business_time": when,
        }
        return ("transfer", Actor("ops"), key, params)
    params = {"member": who, "points": a["points"], "reason": "fix", "business_time": when}
    return ("adjust", Actor("ops"), key, params)


def job(kernel: Ledger, store: Any, op: str, member: str) -> Any:
    """A job step at a fixed ledger time after every lot's expiry and return window."""
    now = START + timedelta(minutes=5)
    if op == "release":
        return kernel.release_due(store, member, now)
    return kernel.expire_due(store, member, now)


def outcome(result: Any) -> Any:
    if isinstance(result, Booking):
        return ("booked", result.entry.id, result.replayed)
    if isinstance(result, LedgerError):
        return ("error", result.code)
    return ("job", None if result is None else result.id)


def one_by_one(conn: Connection, kernel: Ledger, calls: list) -> list[Any]:
    results = []
    for op, actor, key, params in calls:
        try:
            with savepoint(conn):
                store = SqlLedgerStore(conn)
                if op in ("release", "expire"):
                    results.append(outcome(job(kernel, store, op, params["member"])))
                else:
                    results.append(outcome(getattr(kernel, op)(store, actor, key, **params)))
        except LedgerError as error:
            results.append(outcome(error))
    return results


def in_bulk(conn: Connection, kernel: Ledger, calls: list) -> list[Any]:
    """Keyed commands through book_many, runs of jobs through batch, in call order."""
    results: list[Any] = []
    for is_job, group in itertools.groupby(calls, key=lambda c: c[0] in ("release", "expire")):
        chunk = list(group)
        if is_job:
            with kernel.batch(SqlLedgerStore(conn)) as store:
                results += [outcome(job(kernel, store, op, p["member"])) for op, _a, _k, p in chunk]
        else:
            commands = [Command(op, actor, key, params) for op, actor, key, params in chunk]
            results += [outcome(r) for r in kernel.book_many(SqlLedgerStore(conn), commands)]
    return results


def snapshot(conn: Connection) -> dict[str, Any]:
    """Every row the kernel writes; balances summed over shards (the shard is chosen at random)."""
    tables = {
        "entries": t.entries,
        "postings": t.postings,
        "lots": t.lots,
        "lot_moves": t.lot_moves,
        "lot_releases": t.lot_releases,
        "holds": t.holds,
        "idempotency": t.idempotency,
    }
    rows = {
        name: sorted((tuple(r) for r in conn.execute(sa.select(table))), key=repr)
        for name, table in tables.items()
    }
    rows["queue"] = list(
        conn.scalars(sa.select(t.journal_queue.c.entry_id).order_by(t.journal_queue.c.seq))
    )
    summed = sa.select(t.balances.c.account, sa.func.sum(t.balances.c.balance)).group_by(
        t.balances.c.account
    )
    rows["balances"] = {account: int(total) for account, total in conn.execute(summed)}
    return rows


@pytest.fixture
def ticker(monkeypatch: pytest.MonkeyPatch) -> Ticker:
    ticking = Ticker()
    monkeypatch.setattr(service, "uuid4", ticking.uuid4)
    return ticking


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=st.lists(STEPS, min_size=1, max_size=30))
def test_bulk_books_exactly_what_one_by_one_books(
    db: Database, ticker: Ticker, steps: list[Step]
) -> None:
    kernel = Ledger(Policy(hold_ttl=timedelta(seconds=20)), clock=ticker.clock)
    calls: list = []
    with rolled_back(db) as conn:
        ticker.reset()
        open_books(conn, kernel)
        alone, booked = [], []
        for n, step in enumerate(steps):
            call = resolve(n, step, calls, booked)
            if call is None:
                continue
            calls.append(call)
            alone += one_by_one(conn, kernel, [call])
            booked.append((call[0], alone[-1][1] if alone[-1][0] != "error" else None))
        expected = snapshot(conn)
        assert check_consistency(conn) == []
    with rolled_back(db) as conn:
        ticker.reset()
        open_books(conn, kernel)
        bulk = in_bulk(conn, kernel, calls)
        got = snapshot(conn)
        assert check_consistency(conn) == []
        # The integrator's record of each entry, read from its rows, is the record of the Entry.
        store = SqlLedgerStore(conn)
        queued = got["queue"]
        records = [entry_record(entry) for entry in store.load_entries(queued)]
        assert [record for _, record in store.load_entry_records(queued)] == records
        # ... and so it is on the verifier's tolerant path.
        assert [r for _, r in store.load_entry_records(queued, strict=False)] == records
    assert bulk == alone
    assert got == expected


def test_bulk_refusals_replays_and_conflicts(db: Database) -> None:
    """In one list: a refusal is recorded, a repeated key replays, a changed request conflicts."""
    kernel = Ledger(Policy())
    partner_actor = Actor("cred-BP1", partner="BP1")
    with db.transaction() as conn:
        open_books(conn, kernel)
    earn = {"member": "bm0", "funding": {"BP1": 10}, "business_time": START}
    burn = {"member": "bm0", "points": 25, "business_time": START}
    with db.transaction() as conn:
        results = kernel.book_many(
            SqlLedgerStore(conn),
            [
                Command("earn", partner_actor, "e1", earn),
                Command("burn", partner_actor, "b1", burn),  # 25 > 10: refused
                Command("earn", partner_actor, "e1", earn),  # replay of the first
                Command("earn", partner_actor, "e1", earn | {"funding": {"BP1": 11}}),
                Command("burn", partner_actor, "b2", burn | {"points": 4}),
            ],
        )
    booked, refused, replayed, conflict, spent = results
    assert isinstance(booked, Booking)
    assert not booked.replayed
    assert isinstance(refused, BusinessRefusal)
    assert refused.code == "insufficient-points"
    assert isinstance(replayed, Booking)
    assert replayed.replayed
    assert replayed.entry.id == booked.entry.id
    assert isinstance(conflict, LedgerError)
    assert conflict.code == "idempotency-conflict"
    assert isinstance(spent, Booking)
    # Once committed, the records answer a later one-by-one retry the same way.
    with db.transaction() as conn:
        store = SqlLedgerStore(conn)
        again = kernel.earn(store, partner_actor, "e1", **earn)
        assert again.replayed
        assert again.entry.id == booked.entry.id
        assert kernel.balance(store, "member:bm0:available") == 6
    with pytest.raises(BusinessRefusal) as raised, db.transaction() as conn:
        kernel.burn(SqlLedgerStore(conn), partner_actor, "b1", **burn)
    assert raised.value.code == "insufficient-points"


@contextmanager
def statements_run(db: Database) -> Iterator[list[str]]:
    """The SQL statements run on ``db`` within the block, as they are run."""
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(args[2])

    sa.event.listen(db.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", count)


def test_batch_statements_do_not_grow_with_commands(db: Database) -> None:
    """The point of the bulk path: the number of statements is constant in the commands."""
    kernel = Ledger(Policy())
    actor = Actor("cred-BP1", partner="BP1")
    with db.transaction() as conn:
        open_books(conn, kernel)

    def statements(commands: int, offset: int) -> int:
        with statements_run(db) as seen, db.transaction() as conn:
            kernel.book_many(
                SqlLedgerStore(conn),
                [
                    Command(
                        "earn",
                        actor,
                        f"s{offset + n}",
                        {"member": MEMBERS[n % 3], "funding": {"BP1": 5}, "business_time": START},
                    )
                    for n in range(commands)
                ],
            )
        return len(seen)

    small, large = statements(3, 0), statements(60, 100)
    assert large == small


def test_batch_statements_do_not_grow_with_reversals(db: Database) -> None:
    """Reversing stored earns reads their lots, their members' accounts and what was reversed
    before in a few statements for the whole batch, however many it reverses."""
    kernel = Ledger(Policy())
    actor = Actor("cred-BP1", partner="BP1")
    with db.transaction() as conn:
        open_books(conn, kernel)
        earned = kernel.book_many(
            SqlLedgerStore(conn),
            [
                Command(
                    "earn",
                    actor,
                    f"e{n}",
                    {"member": MEMBERS[n % 3], "funding": {"BP1": 9}, "business_time": START},
                )
                for n in range(63)
            ],
        )
    originals = [booking.entry.id for booking in earned if isinstance(booking, Booking)]
    assert len(originals) == 63

    def statements(reversed_ids: list[UUID], key: str) -> int:
        with statements_run(db) as seen, db.transaction() as conn:
            booked = kernel.book_many(
                SqlLedgerStore(conn),
                [
                    Command(
                        "reverse",
                        actor,
                        f"{key}{n}",
                        {"entry_id": entry_id, "points": 2, "business_time": START},
                    )
                    for n, entry_id in enumerate(reversed_ids)
                ],
            )
            assert all(isinstance(booking, Booking) for booking in booked), booked
        return len(seen)

    # Each earn is reversed twice, in two batches: the second reads what the first took back.
    small, large = statements(originals[:3], "a"), statements(originals[3:], "b")
    assert large == small
    assert statements(originals[3:], "c") == small
    with db.engine.connect() as conn:
        store = SqlLedgerStore(conn)
        assert store.reversed_points_of(originals) == dict.fromkeys(originals[3:], 4) | (
            dict.fromkeys(originals[:3], 2)
        )
        assert kernel.balance(store, "member:bm0:available") == 21 * 9 - 2 - 20 * 4


def test_buffered_store_rolls_back_with_its_transaction(db: Database) -> None:
    """Nothing is written when the batch's block raises; the transaction rolls back."""
    kernel = Ledger(Policy())
    actor = Actor("cred-BP1", partner="BP1")
    with db.transaction() as conn:
        open_books(conn, kernel)

    def fail_before_flush() -> None:
        with db.transaction() as conn, kernel.batch(SqlLedgerStore(conn)) as store:
            assert isinstance(store, BufferedStore)
            kernel.earn(store, actor, "x1", member="bm1", funding={"BP1": 7}, business_time=START)
            raise RuntimeError("the caller fails before the flush")

    with pytest.raises(RuntimeError):
        fail_before_flush()
    with db.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(t.entries)) == 0
        assert conn.scalar(sa.select(sa.func.count()).select_from(t.idempotency)) == 0


# -- the partners' bulk paths: earn_purchases and engage_many --------------------------------------


def partner_snapshot(conn: Connection) -> dict[str, Any]:
    """The kernel's rows plus what the earning layer writes (serial ids left out)."""
    rows = snapshot(conn)
    for name, table in {
        "campaign_awards": pt.campaign_awards,
        "engagements": pt.engagements,
        "tier_history": pt.tier_history,
    }.items():
        columns = [c for c in table.c if c.name != "id"]
        rows[name] = sorted((tuple(r) for r in conn.execute(sa.select(*columns))), key=repr)
    m = pt.members.c
    rows["activity"] = sorted(conn.execute(sa.select(m.id, m.last_activity_at)).all(), key=repr)
    return rows


@pytest.fixture
def coalition(db: Database) -> list[str]:
    """test_earning's partners (SUPER 1 pt/€ with a capped fresh-food campaign co-funded by BANK,
    DEPT 2 pt/€ with fresh food ×2, RAIL with a 14-day return window), default tiers, review
    (SUPER, one a day) and app_install (program, once) rules; five members, the last blocked."""
    from partners import members

    world = EarningWorld(db)
    world.setup()
    with db.transaction() as conn:
        tiers.seed_default_tiers(conn)
        start = T0
        rules = (
            EngagementRule("review", 1, "SUPER", 20, 1, 4, None, start),
            EngagementRule("app_install", 1, "program", 50, None, None, 1, start),
        )
        for rule in rules:
            earning.add_engagement_rule(conn, rule, T0)
        campaign = Campaign(
            "FRESH",
            "SUPER",
            "fresh ×2",
            start,
            datetime(2027, 1, 1, tzinfo=UTC),
            multiplier=Decimal(2),
            categories=frozenset({"fresh"}),
            member_cap=300,
            funders={"SUPER": 1, "BANK": 1},
        )
        earning.add_campaign(conn, campaign, T0)
    ids = [world.enroll() for _ in range(5)]
    with db.transaction() as conn:
        members.set_status(conn, ids[-1], "blocked")
    return ids


PURCHASE = st.tuples(
    st.integers(0, 4),  # member
    st.sampled_from(["SUPER", "DEPT", "RAIL", "NOPE"]),
    st.lists(
        st.tuples(st.integers(0, 600_00), st.sampled_from(["fresh", "grocery"])),
        min_size=1,
        max_size=2,
    ),
    st.integers(0, 1_000),  # a retry of an earlier purchase when < 150
)
EVENT = st.tuples(
    st.integers(0, 4), st.sampled_from(["review", "app_install", "unknown"]), st.integers(0, 3)
)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    drawn=st.lists(PURCHASE, min_size=1, max_size=12),
    events=st.lists(EVENT, max_size=8),
    cut=st.integers(0, 8),
)
def test_partner_bulk_paths_book_what_one_by_one_books(
    db: Database, coalition: list[str], ticker: Ticker, monkeypatch: pytest.MonkeyPatch,
    drawn: list, events: list, cut: int,
) -> None:  # fmt: skip
    """The purchases in one list, the events in two (``cut``): an event of the second list may
    repeat one of the first (in the database) or one earlier in its own list."""
    monkeypatch.setattr(earning, "uuid4", ticker.uuid4)
    at = datetime(2026, 3, 2, 10, tzinfo=UTC)
    purchases: list[earning.Purchase] = []
    for n, (who, partner, lines, retry) in enumerate(drawn):
        if retry < 150 and purchases:
            purchases.append(purchases[retry % len(purchases)])
            continue
        basket = Basket(tuple(BasketLine(cents, category) for cents, category in lines))
        actor = Actor(f"partner:{partner}", partner=partner)
        purchases.append(earning.Purchase(actor, f"p{n}", coalition[who], basket, at))
    engagements = [
        earning.Engagement(
            Actor("partner:SUPER", partner="SUPER") if kind == "review" else Actor("ops"),
            f"e{n}",
            coalition[who],
            kind,
            f"{kind}-{who}-{twin}" if twin else f"{kind}-shared",  # shared: another member's
            at,
        )
        for n, (who, kind, twin) in enumerate(events)
    ]

    def outcome_of(result: Any) -> Any:
        if isinstance(result, LedgerError):
            return ("error", result.code)
        tier = result.tier_change.tier if result.tier_change else None
        return (result.points, None if result.entry is None else result.entry.id, tier)

    with rolled_back(db) as conn:
        ticker.reset()
        alone = [outcome_of(earning_one(conn, p, at)) for p in purchases]
        alone += [outcome_of(engage_one(conn, e, at)) for e in engagements]
        expected = partner_snapshot(conn)
    with rolled_back(db) as conn:
        ticker.reset()
        bulk = [outcome_of(r) for r in earning.earn_purchases(conn, purchases, now=at)]
        for part in (engagements[:cut], engagements[cut:]):
            bulk += [outcome_of(r) for r in earning.engage_many(conn, part, now=at)]
        got = partner_snapshot(conn)
        assert check_consistency(conn) == []
    assert bulk == alone
    assert got == expected


def earning_one(conn: Connection, purchase: earning.Purchase, at: datetime) -> Any:
    try:
        with savepoint(conn):
            return earning.earn_purchase(
                conn, purchase.actor, purchase.key, member=purchase.member,
                basket=purchase.basket, business_time=purchase.business_time, now=at,
            )  # fmt: skip
    except LedgerError as error:
        return error


def engage_one(conn: Connection, event: earning.Engagement, at: datetime) -> Any:
    try:
        with savepoint(conn):
            return earning.engage(
                conn, event.actor, event.key, member=event.member, event_type=event.event_type,
                event_id=event.event_id, business_time=event.business_time, now=at,
            )  # fmt: skip
    except LedgerError as error:
        return error


# -- enrolment in bulk: enroll_many ---------------------------------------------------------------

ENROLMENT = st.tuples(
    st.sampled_from(["SUPER", "DEPT", "BANK", None, "NOPE"]),  # BANK is suspended, NOPE unknown
    st.sampled_from([None, {"email": "a@example.org"}, {"shoe_size": "44"}]),
    st.sampled_from([None, "C1", "C2", "C3", " "]),  # "C1" is linked already; " " is invalid
    st.sampled_from([None, "2026-01", "x" * 21]),
    st.sampled_from([None, {}, {"sharing": True}, {"sharing": "yes"}, {"bogus": True}]),
)


def member_snapshot(conn: Connection, master: Any, names: dict[str, str]) -> dict[str, Any]:
    """Every row an enrolment writes, with member ids and card numbers renamed by ``names``
    (they are random), and the sealed personal data opened (its keys are random too)."""
    from partners import members

    rows = snapshot(conn)
    rows["members"] = sorted(tuple(r) for r in conn.execute(sa.select(pt.members)))
    for name, table in {"refs": pt.member_refs, "consents": pt.consents}.items():
        columns = [c for c in table.c if c.name != "id"]
        rows[name] = sorted((tuple(r) for r in conn.execute(sa.select(*columns))), key=repr)
    v = pt.member_vault.c
    opened = members.personal_data
    rows["vault"] = sorted(
        (r.member_id, r.master_key_id, r.updated_at, opened(conn, r.member_id, master))
        for r in conn.execute(sa.select(v.member_id, v.master_key_id, v.updated_at))
    )

    def renamed(value: Any) -> str:
        text = repr(value)
        for old, new in names.items():
            text = text.replace(old, new)
        return text

    return {
        name: sorted(map(renamed, value.items() if isinstance(value, dict) else value))
        for name, value in rows.items()
    }


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(drawn=st.lists(ENROLMENT, min_size=1, max_size=10))
def test_enroll_many_enrolls_what_one_by_one_enrolls(db: Database, drawn: list) -> None:
    """Same members, accounts, references, consents and sealed data; same refusals, in order
    (a reference linked earlier in the list is taken; a bad consent writes nothing)."""
    from partners import directory, members
    from partners.directory import PartnerStatus
    from partners.vault import MasterKey

    world = EarningWorld(db)
    with db.transaction() as conn:  # the database outlives the examples: set it up once
        already = conn.scalar(sa.select(sa.func.count()).select_from(pt.partners))
    if not already:
        world.setup()
        with db.transaction() as conn:
            directory.set_status(conn, "BANK", PartnerStatus.SUSPENDED, T0)
            members.enroll(
                conn, by="SUPER", personal=None, customer_ref="C1", now=T0,
                master_key=world.master,
            )  # fmt: skip
    master = MasterKey.generate("mk-bulk")
    at = datetime(2026, 3, 2, 10, tzinfo=UTC)
    enrolments = [
        members.Enrolment(by, personal, ref, version, consents)
        for by, personal, ref, version, consents in drawn
    ]

    def outcome(result: Any, names: dict[str, str]) -> Any:
        if isinstance(result, LedgerError):
            return ("error", result.code, result.message)
        names.setdefault(result.id, f"M{len(names)}")
        names.setdefault(result.card_number, f"K{len(names)}")
        return (names[result.id], result.status, result.enrolled_by, result.enrolled_at)

    alone_names: dict[str, str] = {}
    with rolled_back(db) as conn:
        alone = []
        for e in enrolments:
            try:
                with savepoint(conn):
                    found = members.enroll(
                        conn, by=e.by, personal=e.personal, customer_ref=e.customer_ref, now=at,
                        master_key=master, terms_version=e.terms_version, consents=e.consents,
                    )  # fmt: skip
            except LedgerError as error:
                found = error
            alone.append(outcome(found, alone_names))
        expected = member_snapshot(conn, master, alone_names)
    bulk_names: dict[str, str] = {}
    with rolled_back(db) as conn:
        results = members.enroll_many(conn, enrolments, now=at, master_key=master)
        bulk = [outcome(r, bulk_names) for r in results]
        got = member_snapshot(conn, master, bulk_names)
        assert check_consistency(conn) == []
    assert bulk == alone
    assert got == expected


def test_bulk_campaign_caps_count_earlier_awards_of_every_partner(
    db: Database, coalition: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member first seen at one partner's campaign still has its earlier awards under another
    partner's campaign counted against that campaign's cap."""
    at = datetime(2026, 3, 2, 10, tzinfo=UTC)
    member = coalition[0]
    dept, shop = Actor("partner:DEPT", partner="DEPT"), Actor("partner:SUPER", partner="SUPER")
    clothes = Basket((BasketLine(30_00, "grocery"),))
    with db.transaction() as conn:
        offer = Campaign(
            "DEPT-X3",
            "DEPT",
            "groceries ×3",
            T0,
            datetime(2027, 1, 1, tzinfo=UTC),
            multiplier=Decimal(3),
            categories=frozenset({"grocery"}),
            member_cap=70,
            funders={"DEPT": 1},
        )
        earning.add_campaign(conn, offer, T0)
        earlier = earning.earn_purchase(
            conn, dept, "before", member=member, basket=clothes, business_time=at, now=at
        )
    assert earlier.points > 60  # the campaign gave its bonus, which reaches the cap
    ticker = Ticker()  # ids drawn from here on repeat in each run
    monkeypatch.setattr(service, "uuid4", ticker.uuid4)
    monkeypatch.setattr(earning, "uuid4", ticker.uuid4)
    purchases = [
        earning.Purchase(shop, "s1", member, Basket((BasketLine(10_00, "fresh"),)), at),
        earning.Purchase(dept, "d1", member, clothes, at),
    ]

    def outcome_of(result: Any) -> Any:
        if isinstance(result, LedgerError):
            return ("error", result.code)
        return (result.points, result.explanation)

    with rolled_back(db) as conn:
        ticker.reset()
        alone = [outcome_of(earning_one(conn, p, at)) for p in purchases]
        expected = partner_snapshot(conn)
    with rolled_back(db) as conn:
        ticker.reset()
        bulk = [outcome_of(r) for r in earning.earn_purchases(conn, purchases, now=at)]
        got = partner_snapshot(conn)
    assert bulk == alone
    assert got == expected
