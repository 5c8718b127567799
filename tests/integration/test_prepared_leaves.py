"""The integrator's two halves: bodies prepared beside the writer, leaves appended under the lock.

:meth:`Integrator.prepare` turns committed, queued entries into the canonical bytes of their leaf
records through a reading connection; :meth:`Integrator.integrate_batch` appends them, spliced
into envelopes (:func:`ledger.journal.envelope_bytes`). Here: the splice is byte for byte the
envelope :func:`ledger.journal.build_leaf` serialises; a prepared body is the entry's record; the
integrator appends the bodies it is given and stops, when told to, at the first entry it was not
given; and a log built from prepared bodies verifies.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.canonical import canonical_bytes
from ledger.db import Database, reader
from ledger.integrator import Integrator, PreparedBody
from ledger.journal import build_leaf, entry_record, envelope_bytes, parse_leaf
from ledger.logcheck import verify_log
from ledger.logstore import SqlLogStore
from ledger.note import NoteSigner
from ledger.repository import SqlLedgerStore
from tests.integration.conftest import SUPER, Books, new_key
from tests.integration.test_journal import book_earns, leaf_rows

ORIGIN = "test.coalition.local/prepared"

#: Text inside the hashed-data profile (NFC; st.text draws no lone surrogates).
_TEXT = st.text(max_size=8).filter(lambda s: unicodedata.is_normalized("NFC", s))
_BODY = st.dictionaries(
    _TEXT,
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | _TEXT,
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(
    body=_BODY,
    kind=st.sampled_from(["EARN", "BURN", "AUDIT", "LOG_START"]),
    log=st.sampled_from([ORIGIN, "coalition.example/ledger+é", 'a"b\\c']),
    index=st.integers(0, 2**40),
    prev=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=16, max_size=16),
    micros=st.integers(0, 10**15),
)
def test_the_splice_is_the_serialised_envelope(
    body: dict, kind: str, log: str, index: int, prev: bytes, nonce: bytes, micros: int
) -> None:
    """RFC 8785 of an object is its members in key order, so the body's bytes spliced in place
    are the bytes of the whole envelope serialised at once."""
    committed_at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    built = build_leaf(
        log=log,
        index=index,
        prev=prev,
        kind=kind,
        body=body,
        committed_at=committed_at,
        nonce=nonce,
    )
    spliced = envelope_bytes(
        log=log,
        index=index,
        prev=prev,
        kind=kind,
        body=canonical_bytes(body),
        committed_at=committed_at,
        nonce=nonce,
    )
    assert spliced == built.data


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


def prepare(db: Database, integrator: Integrator, after: int = 0) -> list[PreparedBody]:
    with reader(db.engine) as conn:
        return integrator.prepare(conn, after=after)


def queue_length(db: Database) -> int:
    with db.engine.connect() as conn:
        return SqlLogStore(conn).queue_length()


def book_mixed(books: Books) -> list[UUID]:
    """Entries of several kinds: earns with lots, a spend moving lots, a hold and its capture."""
    ids = book_earns(books, 4)
    books.clock.advance(minutes=1)
    spent = books.burn(SUPER, new_key(), member="alice", points=5, business_time=books.clock())
    held = books.hold(SUPER, new_key(), member="bob", points=3, business_time=books.clock())
    captured = books.capture(
        SUPER, new_key(), hold_id=held.entry.id, points=2, business_time=books.clock()
    )
    return [*ids, spent.entry.id, held.entry.id, captured.entry.id]


def test_a_prepared_body_is_the_entry_record(books: Books, signer: NoteSigner) -> None:
    ids = book_mixed(books)
    prepared = prepare(books.db, Integrator(signer))
    assert [body.entry_id for body in prepared] == ids
    assert [body.seq for body in prepared] == sorted(body.seq for body in prepared)
    with books.db.engine.connect() as conn:
        entries = SqlLedgerStore(conn).load_entries(ids)
    for body, entry in zip(prepared, entries, strict=True):
        assert body.kind == entry.kind.value
        assert body.body == canonical_bytes(entry_record(entry))
    # ``after`` resumes behind the last body sent: nothing twice, nothing skipped.
    assert prepare(books.db, Integrator(signer), after=prepared[3].seq) == prepared[4:]


def test_the_log_built_from_prepared_bodies_verifies(books: Books, signer: NoteSigner) -> None:
    ids = book_mixed(books)
    integrator = Integrator(signer)
    bodies = {body.entry_id: body for body in prepare(books.db, integrator)}
    assert integrator.integrate_all(books.db, prepared=bodies) == len(ids)
    assert bodies == {}  # each body is used once, then dropped
    rows = leaf_rows(books.db, ORIGIN)
    with books.db.engine.connect() as conn:
        entries = SqlLedgerStore(conn).load_entries(ids)
        assert verify_log(conn, [signer.verifier]) == []
    assert [parse_leaf(bytes(row.data)).body for row in rows] == [entry_record(e) for e in entries]


def test_the_integrator_appends_the_bytes_it_is_given(books: Books, signer: NoteSigner) -> None:
    """The prepared body is what the leaf holds (so a wrong one is caught by the verifier)."""
    _, second = book_earns(books, 2)
    integrator = Integrator(signer)
    bodies = {body.entry_id: body for body in prepare(books.db, integrator)}
    wrong = bodies[second].body.replace(b'"amount":11', b'"amount":12')
    assert wrong != bodies[second].body
    bodies[second] = PreparedBody(bodies[second].seq, second, "EARN", wrong)
    integrator.integrate_all(books.db, prepared=bodies)
    assert bytes(leaf_rows(books.db, ORIGIN)[1].data).count(wrong) == 1
    with books.db.engine.connect() as conn:
        found = verify_log(conn, [signer.verifier])
    assert [(f.check, f.found) for f in found] == [("entry-altered", str(second))]


def test_prepared_only_stops_at_the_first_entry_not_prepared(
    books: Books, signer: NoteSigner
) -> None:
    integrator = Integrator(signer)
    early = book_earns(books, 3)
    bodies = {body.entry_id: body for body in prepare(books.db, integrator)}
    late = book_earns(books, 2)
    assert integrator.integrate_all(books.db, prepared=bodies, prepared_only=True) == 3
    assert queue_length(books.db) == len(late)
    assert integrator.integrate_all(books.db, prepared=bodies, prepared_only=True) == 0
    # Without prepared_only the integrator reads what it was not given, as it always did.
    assert integrator.integrate_all(books.db, prepared=bodies) == 2
    rows = leaf_rows(books.db, ORIGIN)
    assert [row.entry_id for row in rows] == [*early, *late]
    with books.db.engine.connect() as conn:
        assert verify_log(conn, [signer.verifier]) == []
