"""A crash of the whole server mid-load loses no acknowledged write and applies none twice.

Six partner connections send 300 earns, each under its own Idempotency-Key, to ``coalition serve``
on PostgreSQL. Once a third are acknowledged, the gunicorn master and all its workers are killed
with SIGKILL (the process group, at once: no graceful shutdown, requests cut mid-flight). The server
is started again and every one of the 300 requests is replayed with its key and payload, as a
partner's till does when it never saw an answer — and as it may do even when it did.

Then: every request has exactly one EARN entry; every write acknowledged before the crash is
replayed with the same entry id; each member's balance is the sum of its purchases; and once the
integrator has drained the queue, ``verify_database`` finds nothing wrong with the journal or log.

Half the requests carry a ``business_time`` and half leave it to the server, so a replay must also
be recognised when the server chose the time.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from audit.verify import verify_database
from ledger import tables as lt
from tests.e2e.conftest import STARTING_POINTS, Http, Served, purchase

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REQUESTS = 300
CONNECTIONS = 6
MEMBERS = 6
#: The crash comes once this many earns are acknowledged: a third of the load.
CRASH_AFTER = REQUESTS // 3


@dataclass(frozen=True)
class Earn:
    """One planned request: its key, its body and the points it must credit."""

    key: str
    member: str
    body: dict[str, Any]
    points: int


@dataclass
class Outcome:
    """What the first pass saw: acknowledged entries and requests that got no answer."""

    acknowledged: dict[str, str]
    unanswered: set[str]


def plan(members: list[str]) -> list[Earn]:
    """300 purchases spread over the members; odd ones carry a business time, even ones do not."""
    earns = []
    for index in range(REQUESTS):
        member, euros = members[index % len(members)], 1 + index % 17
        extra = {"business_time": "2026-06-01T12:00:00+00:00"} if index % 2 else {}
        earns.append(Earn(f"crash-{index:03d}", member, purchase(member, euros * 100, **extra),
                          euros))
    return earns


def send(served: Served, earn: Earn, client: Http) -> str:
    """Post one earn; the entry id it booked (or replayed)."""
    reply = client.post("/v1/earn", earn.body, key=earn.key)
    assert reply.status == 201, (earn.key, reply.status, reply.body)
    assert reply.body["points"] == earn.points
    return str(reply.body["entry"]["id"])


def load_until_killed(served: Served, earns: list[Earn]) -> Outcome:
    """Send the earns on several connections; SIGKILL the server's group a third of the way."""
    queue, acknowledged, unanswered = deque(earns), {}, set()
    lock = threading.Lock()

    def worker() -> None:
        client = served.client(timeout=10)
        while True:
            with lock:
                if not queue:
                    return
                earn = queue.popleft()
            try:
                entry_id = send(served, earn, client)
            except (OSError, http.client.HTTPException):  # reset, refused, cut short: it is gone
                with lock:
                    unanswered.add(earn.key)
                return
            with lock:
                acknowledged[earn.key] = entry_id

    with ThreadPoolExecutor(max_workers=CONNECTIONS) as pool:
        running = [pool.submit(worker) for _ in range(CONNECTIONS)]
        deadline = time.monotonic() + 30
        while len(acknowledged) < CRASH_AFTER and time.monotonic() < deadline:
            time.sleep(0.005)
        served.server.kill()
        for future in running:
            future.result()
    return Outcome(acknowledged, unanswered)


def replay_all(served: Served, earns: list[Earn]) -> dict[str, tuple[str, bool]]:
    """Send every earn again with its key; entry id and whether the server said it replayed."""
    local = threading.local()

    def resend(earn: Earn) -> tuple[str, tuple[str, bool]]:
        if not hasattr(local, "client"):
            local.client = served.client()
        reply = local.client.post("/v1/earn", earn.body, key=earn.key)
        assert reply.status == 201, (earn.key, reply.status, reply.body)
        assert reply.body["points"] == earn.points
        replayed = reply.headers.get("idempotent-replayed") == "true"
        return earn.key, (str(reply.body["entry"]["id"]), replayed)

    with ThreadPoolExecutor(max_workers=CONNECTIONS) as pool:
        return dict(pool.map(resend, earns))


def test_sigkill_mid_load_then_replay_applies_every_earn_exactly_once(
    postgres_only: None, served: Served
) -> None:
    """After SIGKILL of master and workers and a full replay, each earn is booked exactly once."""
    client = served.client()
    members = [served.member]
    for _ in range(MEMBERS - 1):
        enrolled = client.post("/v1/members", {})
        assert enrolled.status == 201, enrolled.body
        members.append(enrolled.body["id"])
    earns = plan(members)

    first = load_until_killed(served, earns)
    assert CRASH_AFTER <= len(first.acknowledged) < REQUESTS
    assert first.unanswered, "the kill should have cut requests in flight"

    served.start_server()
    replies = replay_all(served, earns)

    # An acknowledged write survived the crash and is replayed, never booked again.
    for key, entry_id in first.acknowledged.items():
        assert replies[key] == (entry_id, True)
    assert len({entry_id for entry_id, _ in replies.values()}) == REQUESTS

    owed = Counter({served.member: STARTING_POINTS})
    for earn in earns:
        owed[earn.member] += earn.points
    for member in members:
        balance = client.get(f"/v1/members/{member}/balance")
        assert balance.status == 200
        assert balance.body["available"] == owed[member], member

    assert served.integrator is not None
    served.integrator.kill()  # mid-batch or idle: integration must be crash-safe too
    served.coalition("integrate", "--once")
    db = served.database()
    try:
        with db.engine.connect() as conn:
            e = lt.entries.c
            per_key = dict(
                conn.execute(
                    sa.select(e.idempotency_key, sa.func.count())
                    .where(e.kind == "EARN", e.idempotency_key.like("crash-%"))
                    .group_by(e.idempotency_key)
                ).all()
            )
            assert per_key == {earn.key: 1 for earn in earns}
            entries = conn.scalar(sa.select(sa.func.count()).select_from(lt.entries))
            queued = conn.scalar(sa.select(sa.func.count()).select_from(lt.journal_queue))
            report = verify_database(conn)
    finally:
        db.dispose()
    assert report.ok, report.to_text()
    assert (queued, report.leaves) == (0, entries)
