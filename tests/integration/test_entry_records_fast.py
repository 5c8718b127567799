"""The integrator's quick read of leaf records gives the records of the exact path.

:meth:`SqlLedgerStore.load_entry_records` reads ids as text, spells times once per stored value
and builds each leaf record straight from five narrow queries. Here it is held, on a journal with
an entry of every kind (joint and pending earns, burns across lots, holds captured and voided,
reversals, releases, expiries, transfers, adjustments, postings with attributes), to
``entry_record(load_entries(...))`` and ``entry_record(load_entry(...))``, and the integrator's
leaves to the bytes ``build_leaf`` makes of the exact record.
"""

from __future__ import annotations

import json
import random
from datetime import timedelta
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa

from ledger import tables as t
from ledger.canonical import format_uuid, parse_timestamp
from ledger.integrator import Integrator
from ledger.journal import build_leaf, entry_record
from ledger.model import EntryKind, Posting
from ledger.note import NoteSigner
from ledger.repository import SqlLedgerStore, _uuid_text
from tests.integration.conftest import DEPT, RAIL, STAFF, SUPER, Books, new_key

ORIGIN = "test.coalition.local/records"

#: Attributes that exercise the JSON reading: nesting, non-ASCII text, escapes, big integers.
ATTRIBUTES = {
    "explanation": "71 pts = (5.00 € + 33.00 € fresh ×2) × 1 pt/€",
    "rules": {"engine": 1, "tier": "Gold", "flags": [True, False, None]},
    "basket_cents": 2**53 - 1,
    "note": 'quote " backslash \\ tab \t newline \n',
    "Å": "\u00c5ngström",
}


def _book_every_kind(books: Books) -> list[UUID]:
    """A journal with an entry of every kind the kernel books; the ids in booking order."""
    now = books.clock
    ids = [
        books.earn(
            SUPER,
            new_key(),
            member="alice",
            funding={"SUPER": 500},
            business_time=now(),
            price_version="pv-7",
            attributes=ATTRIBUTES,
        ).entry.id,
        books.earn(
            SUPER,
            new_key(),
            member="bob",
            funding={"SUPER": 120, "DEPT": 80, "RAIL": 5},
            business_time=now(),
            expires_at=now() + timedelta(days=30),
        ).entry.id,
        books.earn(
            DEPT,
            new_key(),
            member="alice",
            funding={"DEPT": 60, "SUPER": 40},
            business_time=now(),
            pending_until=now() + timedelta(days=14),
        ).entry.id,
    ]
    books.clock.advance(hours=1)
    burn = books.burn(
        RAIL, new_key(), member="bob", points=190, business_time=now(), attributes={"order": "o-1"}
    ).entry.id
    hold = books.hold(RAIL, new_key(), member="alice", points=90, business_time=now()).entry.id
    capture = books.capture(RAIL, new_key(), hold_id=hold, points=70, business_time=now()).entry.id
    other_hold = books.hold(RAIL, new_key(), member="bob", points=10, business_time=now()).entry.id
    void = books.void(RAIL, new_key(), hold_id=other_hold, business_time=now()).entry.id
    ids += [burn, hold, capture, other_hold, void]
    ids.append(
        books.reverse(
            RAIL,
            new_key(),
            entry_id=burn,
            business_time=now(),
            points=50,
            reason="order cancelled — partly",
        ).entry.id
    )
    ids.append(books.reverse(SUPER, new_key(), entry_id=ids[0], business_time=now()).entry.id)
    ids.append(
        books.transfer(
            STAFF, new_key(), from_member="bob", to_member="alice", points=20, business_time=now()
        ).entry.id
    )
    ids.append(
        books.adjust(
            STAFF, new_key(), member="bob", points=25, reason="goodwill", business_time=now()
        ).entry.id
    )
    ids.append(
        books.post(
            STAFF,
            new_key(),
            kind=EntryKind.SETTLEMENT,
            business_time=now(),
            postings=[Posting("partner:SUPER:settlement", -1234), Posting("operator:bank", 1234)],
            reason="2026-03",
            refers_to=burn,
            attributes={"period": "2026-03", "lines": [1, 2, 3]},
        ).entry.id
    )
    ids.append(
        books.earn(
            SUPER,
            new_key(),
            member="bob",
            funding={"SUPER": 30, "RAIL": 3},
            business_time=now(),
            kind=EntryKind.ENGAGE,
            expires_at=now() + timedelta(days=2),
        ).entry.id
    )
    books.clock.advance(days=15)
    released = books.release_due("alice")
    assert released is not None
    assert released.kind is EntryKind.RELEASE
    expired = books.expire_due("bob")
    assert expired is not None
    assert expired.kind is EntryKind.EXPIRE
    return [*ids, released.id, expired.id]


@pytest.fixture
def journal(books: Books) -> list[UUID]:
    return _book_every_kind(books)


def _exact(books: Books, ids: list[UUID]) -> list[tuple[UUID, dict]]:
    """The records the exact way: validated Entry objects, then ``entry_record``."""
    entries = books.run(lambda store: store.load_entries(ids))
    return [(entry.id, entry_record(entry)) for entry in entries]


def test_the_journal_holds_an_entry_of_every_kind(books: Books, journal: list[UUID]) -> None:
    kinds = {entry.kind for entry in books.run(lambda store: store.load_entries(journal))}
    assert kinds >= {
        EntryKind.EARN,
        EntryKind.ENGAGE,
        EntryKind.BURN,
        EntryKind.HOLD,
        EntryKind.CAPTURE,
        EntryKind.VOID,
        EntryKind.EARN_REVERSAL,
        EntryKind.RELEASE,
        EntryKind.EXPIRE,
        EntryKind.SETTLEMENT,
    }
    records = books.run(lambda store: store.load_entry_records(journal))
    assert any(len(r["lots_opened"]) == 3 for _, r in records)
    assert any(r["lots_opened"] and r["lots_opened"][0]["pending_until"] for _, r in records)
    assert any(len(r["lot_moves"]) > 1 for _, r in records)
    assert any(r["lots_released"] for _, r in records)
    assert any(r["refers_to"] for _, r in records)


def test_records_equal_the_exact_records_of_every_entry(books: Books, journal: list[UUID]) -> None:
    fast = books.run(lambda store: store.load_entry_records(journal))
    assert fast == _exact(books, journal)
    entries = books.run(lambda store: store.load_entries(journal))
    assert [record for _, record in fast] == [entry_record(entry) for entry in entries]
    # Key order too: the leaf bytes do not depend on it, but the record is the same dictionary.
    assert [list(record) for _, record in fast] == [list(entry_record(e)) for e in entries]
    assert [json.dumps(r) for _, r in fast] == [json.dumps(entry_record(e)) for e in entries]


def test_records_come_in_the_order_asked_without_unknown_ids(
    books: Books, journal: list[UUID]
) -> None:
    asked = list(journal)
    random.Random(7).shuffle(asked)
    asked.insert(3, uuid4())
    fast = books.run(lambda store: store.load_entry_records(asked))
    assert [entry_id for entry_id, _ in fast] == [i for i in asked if i in set(journal)]
    assert fast == _exact(books, asked)
    assert books.run(lambda store: store.load_entry_records([])) == []
    assert books.run(lambda store: store.load_entry_records([uuid4()])) == []


def test_each_record_alone_equals_its_record_in_a_batch(books: Books, journal: list[UUID]) -> None:
    batch = dict(books.run(lambda store: store.load_entry_records(journal)))
    for entry_id in journal:
        alone = books.run(lambda store, i=entry_id: store.load_entry_records([i]))
        assert alone == [(entry_id, batch[entry_id])]
        assert alone == [(entry_id, entry_record(books.run(lambda s, i=entry_id: s.load_entry(i))))]


def test_integrated_leaves_are_the_bytes_of_the_exact_records(
    books: Books, journal: list[UUID]
) -> None:
    signer = NoteSigner.generate(ORIGIN)
    assert Integrator(signer, batch_size=6).integrate_all(books.db) == len(journal)
    with books.db.engine.connect() as conn:
        rows = conn.execute(sa.select(t.leaves).order_by(t.leaves.c.idx)).all()
        exact = {
            entry.id: entry_record(entry) for entry in SqlLedgerStore(conn).load_entries(journal)
        }
    assert [row.entry_id for row in rows] == journal
    for row in rows:
        envelope = json.loads(row.data)
        rebuilt = build_leaf(
            log=envelope["log"],
            index=envelope["index"],
            prev=bytes.fromhex(envelope["prev"]),
            kind=envelope["kind"],
            body=exact[row.entry_id],
            committed_at=parse_timestamp(envelope["committed_at"]),
            nonce=bytes.fromhex(envelope["nonce"]),
        )
        assert rebuilt.data == bytes(row.data)
        assert rebuilt.hash == bytes(row.hash)


def test_an_unreadable_entry_raises_or_maps_to_none(books: Books, journal: list[UUID]) -> None:
    """Attributes that are no JSON object: the exact path cannot spell that record either."""
    broken = journal[4]
    with books.db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        conn.execute(t.entries.update().where(t.entries.c.id == broken).values(attributes=[1, 2]))
    with pytest.raises(AttributeError):  # Entry's own check of its attributes
        _exact(books, [broken])
    with pytest.raises(TypeError):
        books.run(lambda store: store.load_entry_records(journal))
    tolerant = books.run(lambda store: store.load_entry_records(journal, strict=False))
    assert [entry_id for entry_id, _ in tolerant] == journal
    others = [i for i in journal if i != broken]
    assert [pair for pair in tolerant if pair[0] != broken] == _exact(books, others)
    assert dict(tolerant)[broken] is None


@pytest.mark.parametrize(
    "spelling",
    [
        "0f1e2d3c4b5a69788796a5b4c3d2e1f0",  # SQLite's Uuid column
        "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",  # PostgreSQL's uuid::text
        "0F1E2D3C4B5A69788796A5B4C3D2E1F0",  # what an editor might write: read as Uuid reads it
        "{0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0}",
        "urn:uuid:0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    ],
)
def test_a_stored_id_is_spelled_as_format_uuid_spells_it(spelling: str) -> None:
    assert _uuid_text(spelling) == format_uuid(UUID(spelling))
    assert _uuid_text(spelling) == "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


@pytest.mark.parametrize("spelling", ["", "0f1e2d3c4b5a69788796a5b4c3d2e1f", "not-a-uuid-at-all"])
def test_a_stored_id_that_is_no_uuid_is_refused(spelling: str) -> None:
    with pytest.raises(ValueError, match="hexadecimal UUID string"):
        _uuid_text(spelling)
