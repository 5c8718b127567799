"""Concurrent spends through HTTP on PostgreSQL: the served API never overdraws a member.

32 partner connections, released together by a barrier, each burn 10 of a member's 100 points with
its own Idempotency-Key, against ``coalition serve`` (three gunicorn workers, one transaction per
request). The kernel locks the member's available account, so exactly ten spends fit; every other
caller must get a 4xx problem document that says why, never a 5xx and never a negative balance.

PostgreSQL only: on SQLite every writer is serialised by ``BEGIN IMMEDIATE``, which proves nothing.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from ledger import tables as lt
from ledger.consistency import check_consistency
from tests.e2e.conftest import PROBLEM_JSON, STARTING_POINTS, Reply, Served

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CALLERS = 32
SPEND = 10


def burn_together(served: Served) -> list[Reply]:
    """Each caller burns ``SPEND`` points on its own connection, all released at once."""
    barrier = threading.Barrier(CALLERS)

    def burn(index: int) -> Reply:
        client = served.client()
        barrier.wait(timeout=30)
        return client.post(
            "/v1/burn", {"member": served.member, "points": SPEND}, key=f"till-7-sale-{index}"
        )

    with ThreadPoolExecutor(max_workers=CALLERS) as pool:
        return list(pool.map(burn, range(CALLERS)))


def test_32_concurrent_burns_of_10_on_100_points_spend_exactly_10(
    postgres_only: None, served: Served
) -> None:
    """Exactly 10 of 32 concurrent HTTP burns succeed; 22 get an insufficient-points problem."""
    replies = burn_together(served)

    statuses = Counter(reply.status for reply in replies)
    assert statuses == {201: STARTING_POINTS // SPEND, 422: CALLERS - STARTING_POINTS // SPEND}
    for refused in (reply for reply in replies if reply.status != 201):
        assert refused.content_type == PROBLEM_JSON
        assert refused.body["type"] == "/problems/insufficient-points"
        assert refused.body["status"] == refused.status
        assert refused.body["requested"] == SPEND
        assert 0 <= refused.body["balance"] < SPEND
    spent = {reply.body["id"] for reply in replies if reply.status == 201}
    assert len(spent) == STARTING_POINTS // SPEND

    balance = served.client().get(f"/v1/members/{served.member}/balance")
    assert balance.status == 200
    assert (balance.body["available"], balance.body["held"]) == (0, 0)
    db = served.database()
    try:
        with db.transaction() as conn:
            e = lt.entries.c
            burns = conn.scalars(sa.select(e.id).where(e.kind == "BURN")).all()
            assert {str(entry_id) for entry_id in burns} == spent
            assert check_consistency(conn) == []
    finally:
        db.dispose()
