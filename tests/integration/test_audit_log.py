"""The audit log: recorded in the action's transaction, refused when it would leak a secret or a
personal value, integrated as AUDIT leaves chained with the journal and covered by its signed
checkpoints, and checked by the live verifier. PostgreSQL refuses edits to it like the journal.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest
import sqlalchemy as sa

from audit import tables as at
from audit.errors import AuditError, UnsafeAuditValue
from audit.log import REDACTED, AuditQueue, events, is_sensitive, record, redact, unsafe_paths
from audit.verify import verify_database
from ledger import tables as t
from ledger.db import Database
from ledger.errors import ProfileError
from ledger.integrator import Integrator
from ledger.journal import AUDIT, entry_id_of, parse_leaf
from ledger.note import NoteSigner
from tests.integration.conftest import SUPER, Books, new_key

ORIGIN = "audit.coalition.local/ledger"
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def audited(db: Database, action: str = "partner.status", **fields: object) -> object:
    defaults: dict[str, object] = {
        "actor": "staff-alice",
        "role": "admin",
        "credential": "cred-1",
        "request_id": "req-1",
        "source": "198.51.100.7",
        "subject": "RAIL",
        "now": NOW,
    }
    with db.transaction() as conn:
        return record(conn, action=action, **{**defaults, **fields})  # type: ignore[arg-type]


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


@pytest.fixture
def integrator(signer: NoteSigner) -> Integrator:
    return Integrator(signer, batch_size=3, queues=[AuditQueue()])


def leaf_rows(db: Database) -> list[sa.Row]:
    with db.engine.connect() as conn:
        return conn.execute(sa.select(t.leaves).order_by(t.leaves.c.idx)).all()


# -- the sanitiser --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "token",
        "api_token",
        "secret",
        "client_secret",
        "password",
        "skey",
        "private_key",
        "email",
        "e_mail",
        "phone",
        "mobile_phone",
        "birth_date",
        "name",
        "legal_name",
        "first_name",
        "pin",
        "address",
        "seed",
    ],
)
def test_keys_naming_secrets_or_personal_values_are_sensitive(key: str) -> None:
    """Keys that name a secret or a personal value (PRODUCT.md §5) are caught."""
    assert is_sensitive(key)


@pytest.mark.parametrize(
    "key",
    [
        "status",
        "role",
        "tier",
        "credential_id",
        "partner",
        "label",
        "idempotency_key",
        "shipping",
        "opinion",
        "version",
        "redemption_blocked",
    ],
)
def test_ordinary_keys_are_not_sensitive(key: str) -> None:
    """Business fields pass untouched: the sanitiser does not redact what it need not."""
    assert not is_sensitive(key)


def test_redact_keeps_the_keys_and_hides_the_values() -> None:
    """redact() replaces sensitive values (nested too) and writes profile forms of other types."""
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert redact(
        {
            "email": "a@example.org",
            "tier": "gold",
            "since": when,
            "fee": Decimal("1.50"),
            "contact": {"phone": "+33 1 23", "channel": "sms"},
            "token": None,
        }
    ) == {
        "email": REDACTED,
        "tier": "gold",
        "since": "2026-01-02T03:04:05.000000Z",
        "fee": "1.50",
        "contact": {"phone": REDACTED, "channel": "sms"},
        "token": None,
    }
    assert redact(None) is None


def test_record_refuses_an_unredacted_secret_or_personal_value(db: Database) -> None:
    """record() refuses, naming the paths, and writes nothing."""
    with pytest.raises(UnsafeAuditValue) as refused:
        audited(db, after={"token": "abc", "owner": {"email": "x@y"}})
    assert refused.value.paths == ["after.token", "after.owner.email"]
    assert unsafe_paths({"email": REDACTED}) == []
    with db.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(at.audit_events)) == 0


def test_record_refuses_what_cannot_be_hashed(db: Database) -> None:
    """A float (money is never a float) or a malformed action is refused before any write."""
    with pytest.raises(ProfileError):
        audited(db, after={"fee": 1.5})
    with pytest.raises(AuditError):
        audited(db, action="Partner Status")
    with pytest.raises(AuditError):
        audited(db, actor="")


# -- into the log ------------------------------------------------------------------------------


def test_an_event_is_queued_then_integrated_as_an_audit_leaf(
    db: Database, integrator: Integrator
) -> None:
    """The event waits in audit_queue, then becomes a leaf recording exactly it, linked to it."""
    event = audited(
        db, before={"status": "active"}, after={"status": "suspended"}, reason="ticket OPS-1"
    )
    with db.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(at.audit_queue)) == 1
    assert integrator.integrate_all(db) == 1
    (row,) = leaf_rows(db)
    leaf = parse_leaf(bytes(row.data))
    assert (leaf.kind, leaf.index, row.entry_id, entry_id_of(leaf)) == (AUDIT, 0, None, None)
    assert leaf.body == event.record()  # type: ignore[attr-defined]
    assert leaf.body["source"] == "198.51.100.7"
    with db.engine.connect() as conn:
        link = conn.execute(sa.select(at.audit_leaves)).one()
        assert (link.event_id, link.log, link.idx) == (event.id, ORIGIN, 0)  # type: ignore[attr-defined]
        assert conn.scalar(sa.select(sa.func.count()).select_from(at.audit_queue)) == 0
        assert [e.id for e in events(conn, subject="RAIL")] == [event.id]  # type: ignore[attr-defined]


def test_events_and_entries_share_one_chain_and_one_batch_limit(
    books: Books, integrator: Integrator, signer: NoteSigner
) -> None:
    """Entries and events interleave in one chained log; a batch never exceeds batch_size."""
    for n in range(4):
        books.earn(
            SUPER, new_key(), member="alice", funding={"SUPER": 10 + n}, business_time=books.clock()
        )
        audited(books.db, action="member.read", subject="alice", reason=f"call {n}")
    assert integrator.integrate_all(books.db) == 8
    rows = leaf_rows(books.db)
    kinds = [parse_leaf(bytes(row.data)).kind for row in rows]
    assert sorted(kinds) == ["AUDIT"] * 4 + ["EARN"] * 4
    prev = bytes(32)
    for row in rows:
        leaf = parse_leaf(bytes(row.data))
        assert leaf.prev == prev
        prev = leaf.hash
    with books.db.engine.connect() as conn:
        sizes = sorted(conn.scalars(sa.select(t.checkpoints.c.size)))
        assert all(b - a <= 3 for a, b in itertools.pairwise(sizes))
        report = verify_database(conn, [signer.verifier])
    assert report.ok, report.to_text()


def test_an_integrator_without_the_audit_queue_leaves_events_queued(
    db: Database, signer: NoteSigner
) -> None:
    """Events are integrated only by an integrator given AuditQueue; until then they wait."""
    audited(db)
    assert Integrator(signer).integrate_all(db) == 0
    with db.engine.connect() as conn:
        report = verify_database(conn, [signer.verifier])
        assert conn.scalar(sa.select(sa.func.count()).select_from(at.audit_queue)) == 1
    assert report.ok, report.to_text()


def test_an_event_dropped_from_its_queue_is_found(db: Database, signer: NoteSigner) -> None:
    """An event with neither a leaf nor a queue row: audit-not-logged."""
    event = audited(db)
    with db.engine.begin() as conn:
        conn.execute(at.audit_queue.delete())
    with db.engine.connect() as conn:
        report = verify_database(conn, [signer.verifier])
    assert [(f.check, f.subject) for f in report.findings] == [
        ("audit-not-logged", str(event.id))  # type: ignore[attr-defined]
    ]
    assert report.classes == ["edited-audit-log"]
    assert json.loads(json.dumps(report.to_json()))["findings"][0]["class"] == "edited-audit-log"


# -- guard rails -------------------------------------------------------------------------------


@pytest.mark.usefixtures("postgres_only")
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET reason = 'nothing'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events CASCADE",
        "UPDATE audit_leaves SET idx = idx + 1",
        "DELETE FROM audit_leaves",
    ],
)
def test_postgresql_refuses_to_change_the_audit_log(
    db: Database, integrator: Integrator, statement: str
) -> None:
    """The audit tables are append-only like the journal: each change is refused."""
    audited(db)
    integrator.integrate_all(db)
    with pytest.raises(sa.exc.DBAPIError) as refused, db.engine.begin() as conn:
        conn.exec_driver_sql(statement)
    assert isinstance(refused.value.orig, psycopg.errors.InsufficientPrivilege)
    assert "append-only" in str(refused.value.orig)


def run_as_app(db: Database, statement: str) -> None:
    with db.engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL ROLE coalition_app")
        conn.exec_driver_sql(statement)


@pytest.mark.usefixtures("postgres_only")
def test_the_application_role_may_append_but_not_edit_events(
    db: Database, integrator: Integrator
) -> None:
    """coalition_app records events and the integrator's queue work, but cannot edit an event."""
    with db.engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL ROLE coalition_app")
        record(conn, actor="job", role="system", action="job.run", now=NOW)
    with db.engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL ROLE coalition_app")
        assert integrator.integrate_batch(conn) is not None
    with pytest.raises(sa.exc.DBAPIError) as refused:
        run_as_app(db, "UPDATE audit_events SET reason = 'nothing'")
    assert isinstance(refused.value.orig, psycopg.errors.InsufficientPrivilege)


def test_a_busy_journal_does_not_starve_the_audit_log(books: Books, integrator: Integrator) -> None:
    """With more entries queued than a batch holds, the first batch still takes the event."""
    audited(books.db)
    for n in range(6):
        books.earn(
            SUPER, new_key(), member="alice", funding={"SUPER": 1 + n}, business_time=books.clock()
        )
    with books.db.transaction() as conn:
        result = integrator.integrate_batch(conn)
    assert result is not None
    assert (result.first_index, result.size) == (0, 3)  # batch_size 3: two entries, one event
    kinds = [parse_leaf(bytes(row.data)).kind for row in leaf_rows(books.db)]
    assert kinds == ["EARN", "EARN", "AUDIT"]
