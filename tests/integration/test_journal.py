"""The verifiable journal end to end: integration, receipts, proofs, tampering, rotation, crashes.

Entries are booked through the kernel (``books``), integrated by :class:`Integrator` in batches,
and checked the way a partner or an auditor would: receipts offline with only the log's verifier
key, consistency proofs between signed checkpoints, and :func:`verify_log` over the whole store.
The tamper tests play a database administrator editing rows with raw SQL; on PostgreSQL they first
``SET LOCAL session_replication_role = replica`` to get past the append-only triggers, as a DBA can.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from audit.verify import verify_database
from ledger import merkle
from ledger import tables as t
from ledger.consistency import Finding
from ledger.db import Database
from ledger.errors import NotYetIntegrated, SignatureError
from ledger.integrator import Integrator, LogKeyMismatch
from ledger.journal import GENESIS_PREV, LOG_START, parse_leaf
from ledger.logcheck import verify_log
from ledger.logstore import SqlLogStore
from ledger.note import Checkpoint, NoteSigner, NoteVerifier, open_checkpoint
from ledger.receipts import (
    TLOG_PROOF_HEADER,
    Receipt,
    consistency,
    receipt,
    verify_receipt,
    wait_for_receipt,
)
from ledger.repository import SqlLedgerStore
from ledger.service import Actor
from tests.integration.conftest import SUPER, Books, new_key

ORIGIN = "test.coalition.local/ledger"
REPO_ROOT = Path(__file__).resolve().parents[2]


# -- helpers ------------------------------------------------------------------------------------


def book_earns(books: Books, count: int, *, actor: Actor = SUPER) -> list[UUID]:
    """Book ``count`` earns for alice and bob in turn, one transaction each; their entry ids."""
    ids = []
    for n in range(count):
        member = ("alice", "bob")[n % 2]
        booking = books.earn(
            actor,
            new_key(),
            member=member,
            funding={actor.partner: 10 + n},
            business_time=books.clock(),
        )
        ids.append(booking.entry.id)
    return ids


def leaf_rows(db: Database, log: str = ORIGIN) -> list[sa.Row]:
    with db.engine.connect() as conn:
        return conn.execute(
            sa.select(t.leaves).where(t.leaves.c.log == log).order_by(t.leaves.c.idx)
        ).all()


def checkpoint_sizes(db: Database, log: str = ORIGIN) -> list[int]:
    with db.engine.connect() as conn:
        query = sa.select(t.checkpoints.c.size).where(t.checkpoints.c.log == log)
        return sorted(conn.scalars(query))


def findings(db: Database, *keys: NoteVerifier) -> list[Finding]:
    with db.engine.connect() as conn:
        return verify_log(conn, keys)


def checks(found: list[Finding]) -> set[str]:
    return {finding.check for finding in found}


@contextmanager
def tampering(db: Database) -> Iterator[Connection]:
    """A transaction for raw edits, with PostgreSQL's guard-rail triggers bypassed as a DBA can."""
    with db.engine.begin() as conn:
        if db.engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        yield conn


def entry_count(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(t.entries)) or 0)


def assert_log_is_whole(db: Database, signer: NoteSigner) -> None:
    """Every entry has exactly one leaf, indices are 0..n-1, and the log verifies."""
    rows = leaf_rows(db, signer.name)
    entry_ids = [row.entry_id for row in rows]
    assert [row.idx for row in rows] == list(range(len(rows)))
    assert len(set(entry_ids)) == len(entry_ids) == entry_count(db)
    assert findings(db, signer.verifier) == []


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


@pytest.fixture
def integrator(signer: NoteSigner) -> Integrator:
    """An integrator with batches far smaller than the tests' journals."""
    return Integrator(signer, batch_size=5)


@pytest.fixture
def logged(books: Books, integrator: Integrator) -> list[UUID]:
    """Thirteen earns, integrated in batches of five: leaves 0..12, checkpoints 0, 5, 10, 13."""
    ids = book_earns(books, 13)
    assert integrator.integrate_all(books.db) == 13
    return ids


# -- an honest log ------------------------------------------------------------------------------


def test_integration_assigns_dense_indices_in_commit_order(
    books: Books, integrator: Integrator
) -> None:
    """Entries integrated in several batches get leaves 0..N-1 in the order they committed."""
    first = book_earns(books, 8)
    assert integrator.integrate_all(books.db) == 8
    second = book_earns(books, 9)
    assert integrator.integrate_all(books.db) == 9
    rows = leaf_rows(books.db)
    assert [row.idx for row in rows] == list(range(17))
    assert [row.entry_id for row in rows] == first + second
    assert checkpoint_sizes(books.db) == [0, 5, 8, 13, 17]
    with books.db.engine.connect() as conn:
        assert SqlLogStore(conn).queue_length() == 0


def test_each_leaf_chains_to_the_previous_leaf(books: Books, logged: list[UUID]) -> None:
    """Each leaf's prev is the previous leaf's hash (zeros for leaf 0) and its envelope fits."""
    prev = GENESIS_PREV
    for row, entry_id in zip(leaf_rows(books.db), logged, strict=True):
        leaf = parse_leaf(bytes(row.data))
        assert (leaf.log, leaf.index, leaf.prev) == (ORIGIN, row.idx, prev)
        assert leaf.kind == "EARN"
        assert leaf.body["id"] == str(entry_id)
        assert bytes(row.hash) == leaf.hash
        prev = leaf.hash


def test_every_receipt_verifies_offline_from_json(
    books: Books, logged: list[UUID], signer: NoteSigner
) -> None:
    """Every entry's receipt survives a JSON round trip and verifies with only the verifier key."""
    offline_keyring = [NoteVerifier.from_vkey(signer.vkey)]
    for index, entry_id in enumerate(logged):
        with books.db.engine.connect() as conn:
            found = receipt(conn, entry_id)
        assert found is not None
        carried = Receipt.from_json(json.loads(json.dumps(found.to_json())))
        assert carried == found
        leaf = verify_receipt(carried, offline_keyring)
        assert (leaf.index, leaf.body["id"], carried.tree_size) == (index, str(entry_id), 13)


def test_receipt_of_another_log_key_does_not_verify(books: Books, logged: list[UUID]) -> None:
    """A receipt checked against a key other than the log's is refused."""
    with books.db.engine.connect() as conn:
        found = receipt(conn, logged[3])
    assert found is not None
    stranger = NoteSigner.generate(ORIGIN).verifier
    with pytest.raises(SignatureError):
        verify_receipt(found, [stranger])


def test_tlog_proof_has_the_c2sp_layout(books: Books, logged: list[UUID]) -> None:
    """tlog_proof(): header, extra (the leaf), index, proof hashes, blank line, checkpoint."""
    with books.db.engine.connect() as conn:
        found = receipt(conn, logged[6])
    assert found is not None
    head, checkpoint_note = found.tlog_proof().split("\n\n", 1)
    lines = head.split("\n")
    assert lines[0] == TLOG_PROOF_HEADER == "c2sp.org/tlog-proof@v1"
    assert lines[1] == "extra " + base64.b64encode(found.leaf).decode()
    assert lines[2] == "index 6"
    assert [base64.b64decode(line, validate=True) for line in lines[3:]] == list(found.proof)
    assert len(found.proof) == 4  # siblings of leaf 6 of 13: [7], [4, 6), [0, 4), [8, 13)
    assert checkpoint_note == found.checkpoint
    assert checkpoint_note.startswith(f"{ORIGIN}\n13\n")


def test_consistency_proofs_verify_between_every_pair_of_checkpoints(
    books: Books, logged: list[UUID], signer: NoteSigner
) -> None:
    """Each stored checkpoint is consistent with each later one (RFC 9162 proof, signed heads)."""
    sizes = [size for size in checkpoint_sizes(books.db) if size > 0]
    assert sizes == [5, 10, 13]
    for size1, size2 in itertools.combinations_with_replacement(sizes, 2):
        with books.db.engine.connect() as conn:
            old_note, new_note, proof = consistency(conn, ORIGIN, size1, size2)
        old, _ = open_checkpoint(old_note, [signer.verifier], origin=ORIGIN)
        new, _ = open_checkpoint(new_note, [signer.verifier], origin=ORIGIN)
        assert (old.size, new.size) == (size1, size2)
        merkle.verify_consistency(size1, size2, proof, old.root, new.root)


def test_an_honest_log_has_no_findings(
    books: Books, logged: list[UUID], signer: NoteSigner
) -> None:
    """verify_log and the full audit report nothing on a log nobody touched."""
    assert findings(books.db, signer.verifier) == []
    with books.db.engine.connect() as conn:
        report = verify_database(conn, [signer.verifier])
    assert report.ok, report.to_text()
    assert (report.logs, report.leaves) == ([ORIGIN], 13)


def test_a_queued_entry_is_not_a_missing_one(
    books: Books, logged: list[UUID], signer: NoteSigner
) -> None:
    """An entry committed but not integrated yet is neither in the log nor a finding."""
    (queued,) = book_earns(books, 1)
    assert findings(books.db, signer.verifier) == []
    with books.db.engine.connect() as conn:
        assert receipt(conn, queued) is None


# -- tampering ----------------------------------------------------------------------------------


def _raise_amount(data: bytes) -> bytes:
    """The member's posting of leaf 2 (12 points) becomes 92: one digit of the evidence."""
    return data.replace(b'"amount":12}', b'"amount":92}', 1)


def _flip_nonce_digit(data: bytes) -> bytes:
    """The first hex digit of the nonce changes: nothing the ledger reads, but every hash."""
    at = data.index(b'"nonce":"') + len(b'"nonce":"')
    return data[:at] + (b"1" if data[at : at + 1] == b"0" else b"0") + data[at + 1 :]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            _raise_amount,
            {"leaf-hash", "leaf-chain", "entry-altered", "checkpoint-root", "tree-node"},
        ),
        (_flip_nonce_digit, {"leaf-hash", "leaf-chain", "checkpoint-root", "tree-node"}),
    ],
    ids=["amount", "nonce"],
)
def test_editing_one_byte_of_a_leaf_is_found(
    books: Books,
    logged: list[UUID],
    signer: NoteSigner,
    edit: Callable[[bytes], bytes],
    expected: set[str],
) -> None:
    """A stored leaf with one byte changed breaks its hash, the chain and the tree."""
    row = leaf_rows(books.db)[2]
    data = bytes(row.data)
    edited = edit(data)
    assert len(edited) == len(data)
    assert sum(a != b for a, b in zip(edited, data, strict=True)) == 1
    with tampering(books.db) as conn:
        conn.execute(
            t.leaves.update()
            .where(t.leaves.c.log == ORIGIN, t.leaves.c.idx == 2)
            .values(data=edited)
        )
    found = findings(books.db, signer.verifier)
    assert expected <= checks(found)
    assert (
        Finding("leaf-hash", f"{ORIGIN}#2", merkle.leaf_hash(edited).hex(), bytes(row.hash).hex())
        in found
    )
    assert {f.subject for f in found if f.check == "leaf-chain"} == {f"{ORIGIN}#3"}
    # Only the checkpoints whose trees contain leaf 2 are contradicted.
    roots = {f.subject for f in found if f.check == "checkpoint-root"}
    assert roots == {f"{ORIGIN}@5", f"{ORIGIN}@10", f"{ORIGIN}@13"}


def test_deleting_a_leaf_is_found(books: Books, logged: list[UUID], signer: NoteSigner) -> None:
    """A leaf deleted from the middle leaves a gap, a broken chain and an unlogged entry."""
    with tampering(books.db) as conn:
        conn.execute(t.leaves.delete().where(t.leaves.c.log == ORIGIN, t.leaves.c.idx == 6))
    found = findings(books.db, signer.verifier)
    assert {
        "leaf-sequence",
        "leaf-chain",
        "checkpoint-root",
        "entry-not-logged",
        "tree-node",
    } <= checks(found)
    assert Finding("leaf-sequence", f"{ORIGIN}#7", 6, 7) in found
    assert Finding("entry-not-logged", str(logged[6]), "a leaf or a queue row", None) in found


def test_deleting_the_last_leaf_is_found(
    books: Books, logged: list[UUID], signer: NoteSigner
) -> None:
    """Dropping the newest leaf is caught by the signed checkpoint that covers it."""
    with tampering(books.db) as conn:
        conn.execute(t.leaves.delete().where(t.leaves.c.log == ORIGIN, t.leaves.c.idx == 12))
    found = findings(books.db, signer.verifier)
    assert {"checkpoint-beyond-log", "entry-not-logged", "tree-node"} <= checks(found)
    assert Finding("checkpoint-beyond-log", f"{ORIGIN}@13", 12, 13) in found


def test_reordering_two_leaves_is_found(
    books: Books, logged: list[UUID], signer: NoteSigner
) -> None:
    """Swapping two leaves (bytes, hash and entry) breaks their positions, the chain and roots."""
    rows = {row.idx: row for row in leaf_rows(books.db)}
    with tampering(books.db) as conn:

        def put(index: int, source: sa.Row | None) -> None:
            values = (
                {"entry_id": None}
                if source is None
                else {"data": source.data, "hash": source.hash, "entry_id": source.entry_id}
            )
            conn.execute(
                t.leaves.update()
                .where(t.leaves.c.log == ORIGIN, t.leaves.c.idx == index)
                .values(**values)
            )

        put(3, None)  # free entry_id first: it is unique
        put(8, rows[3])
        put(3, rows[8])
    found = findings(books.db, signer.verifier)
    assert {
        "leaf-position",
        "leaf-chain",
        "leaf-backdated",
        "checkpoint-root",
        "tree-node",
    } <= checks(found)
    assert Finding("leaf-position", f"{ORIGIN}#3", (ORIGIN, 3), (ORIGIN, 8)) in found
    assert Finding("leaf-position", f"{ORIGIN}#8", (ORIGIN, 8), (ORIGIN, 3)) in found
    # Leaves 3 and 8 come from different batches (0-4 and 5-9), so after the swap each moved
    # leaf is followed by one with an earlier committed_at: the log's clock ran backwards.
    assert {f.subject for f in found if f.check == "leaf-backdated"} == {
        f"{ORIGIN}#4",
        f"{ORIGIN}#8",
    }


def test_a_checkpoint_signed_by_another_key_is_found(
    books: Books, logged: list[UUID], signer: NoteSigner
) -> None:
    """A checkpoint re-signed by a key the auditor does not trust fails its signature check."""
    with books.db.engine.connect() as conn:
        stored = SqlLogStore(conn).checkpoint(ORIGIN, 10)
    assert stored is not None
    impostor = NoteSigner.generate(ORIGIN)  # same name, different key
    forged = impostor.sign(Checkpoint(ORIGIN, 10, stored.root).text())
    with tampering(books.db) as conn:
        conn.execute(
            t.checkpoints.update()
            .where(t.checkpoints.c.log == ORIGIN, t.checkpoints.c.size == 10)
            .values(note=forged)
        )
    found = findings(books.db, signer.verifier)
    assert [(f.check, f.subject) for f in found] == [("checkpoint-signature", f"{ORIGIN}@10")]


@pytest.mark.parametrize("also_root_column", [False, True], ids=["note-only", "note-and-root"])
def test_a_checkpoint_of_another_tree_is_found(
    books: Books, logged: list[UUID], signer: NoteSigner, also_root_column: bool
) -> None:
    """A validly signed checkpoint whose root is not this log's tree (a fork) is found."""
    other_root = merkle.MemoryTree([b"another", b"history"] * 5).root()
    forged = signer.sign(Checkpoint(ORIGIN, 10, other_root).text())
    values: dict[str, object] = {"note": forged}
    if also_root_column:
        values["root"] = other_root
    with tampering(books.db) as conn:
        conn.execute(
            t.checkpoints.update()
            .where(t.checkpoints.c.log == ORIGIN, t.checkpoints.c.size == 10)
            .values(**values)
        )
    found = findings(books.db, signer.verifier)
    check = "checkpoint-root" if also_root_column else "checkpoint-fields"
    assert [(f.check, f.subject) for f in found] == [(check, f"{ORIGIN}@10")]


def test_editing_a_posting_amount_is_found(
    books: Books, logged: list[UUID], signer: NoteSigner
) -> None:
    """A posting amount edited in the journal no longer matches its leaf nor the cached balance."""
    altered = logged[4]
    with tampering(books.db) as conn:
        conn.execute(
            t.postings.update()
            .where(t.postings.c.entry_id == altered, t.postings.c.amount > 0)
            .values(amount=t.postings.c.amount + 1000)
        )
    assert [f.check for f in findings(books.db, signer.verifier)] == ["entry-altered"]
    with books.db.engine.connect() as conn:
        report = verify_database(conn, [signer.verifier])
    assert {
        "entry-altered",
        "cached-balance",
        "book-sum",
        "entry-balance",
        "lots-available",
    } <= checks(report.findings)
    assert (
        Finding("entry-altered", f"{ORIGIN}#4", "journal tables equal to the leaf", str(altered))
        in report.findings
    )
    assert {f.subject for f in report.findings if f.check == "cached-balance"} == {
        "member:alice:available"
    }


def test_editing_both_postings_of_an_entry_is_found(
    books: Books, logged: list[UUID], signer: NoteSigner
) -> None:
    """An edit that keeps the entry balanced still contradicts its leaf and the caches."""
    altered = logged[4]
    with tampering(books.db) as conn:
        conn.execute(
            t.postings.update()
            .where(t.postings.c.entry_id == altered)
            .values(amount=t.postings.c.amount * 2)
        )
    with books.db.engine.connect() as conn:
        report = verify_database(conn, [signer.verifier])
    assert {"entry-altered", "cached-balance", "lots-available"} <= checks(report.findings)
    assert "entry-balance" not in checks(report.findings)


def test_a_posting_moved_to_the_other_book_or_deleted_is_found(
    books: Books, logged: list[UUID], signer: NoteSigner
) -> None:
    """The entry checks sum each book apart: a points posting moved to a euro account unbalances
    both books of its entry; an entry left with one posting is named as such."""
    moved, cut = logged[4], logged[5]
    p = t.postings.c
    with tampering(books.db) as conn:
        credit = conn.scalar(sa.select(p.amount).where(p.entry_id == moved, p.amount > 0))
        conn.execute(  # operator:bank is one of the accounts every ledger opens
            t.postings.update()
            .where(p.entry_id == moved, p.amount > 0)
            .values(account="operator:bank")
        )
        kept = conn.scalar(sa.select(p.amount).where(p.entry_id == cut, p.amount > 0))
        conn.execute(t.postings.delete().where(p.entry_id == cut, p.amount < 0))
    with books.db.engine.connect() as conn:
        report = verify_database(conn, [signer.verifier])
    entry_findings = [f for f in report.findings if f.check in ("entry-balance", "entry-postings")]
    expected = {  # the findings come entry by entry, in the order of their ids
        moved: [
            Finding("entry-balance", f"{moved} POINTS", 0, -credit),
            Finding("entry-balance", f"{moved} EUR", 0, credit),
        ],
        cut: [
            Finding("entry-balance", f"{cut} POINTS", 0, kept),
            Finding("entry-postings", str(cut), 2, 1),
        ],
    }
    assert entry_findings == [f for entry in sorted(expected, key=str) for f in expected[entry]]


# -- key rotation -------------------------------------------------------------------------------


def test_rotation_opens_a_new_log_quoting_the_old_one(
    books: Books, logged: list[UUID], signer: NoteSigner, integrator: Integrator
) -> None:
    """After rotate(), the new log starts with LOG_START quoting the old log's final checkpoint."""
    successor = NoteSigner.generate(f"{ORIGIN}/2")
    with books.db.transaction() as conn:
        integrator.rotate(conn, successor)
    with books.db.engine.connect() as conn:
        store = SqlLogStore(conn)
        final = store.checkpoint(ORIGIN)
        start = store.leaf_at(successor.name, 0)
        assert store.current_log() == successor.name
        assert store.logs() == [
            (ORIGIN, signer.vkey, None),
            (successor.name, successor.vkey, ORIGIN),
        ]
    assert final is not None
    assert final.size == 13
    assert start is not None
    leaf = parse_leaf(start)
    assert (leaf.log, leaf.index, leaf.prev, leaf.kind) == (
        successor.name,
        0,
        GENESIS_PREV,
        LOG_START,
    )
    assert leaf.body == {
        "previous_log": ORIGIN,
        "previous_checkpoint": final.note,
        "previous_vkey": signer.vkey,
    }
    quoted, _ = open_checkpoint(leaf.body["previous_checkpoint"], [signer.verifier], origin=ORIGIN)
    assert (quoted.size, quoted.root) == (13, final.root)


def test_entries_continue_in_the_new_log_after_rotation(
    books: Books, logged: list[UUID], signer: NoteSigner, integrator: Integrator
) -> None:
    """Entries after a rotation land in the new log; both logs verify with both keys."""
    successor = NoteSigner.generate(f"{ORIGIN}/2")
    with books.db.transaction() as conn:
        integrator.rotate(conn, successor)
    later = book_earns(books, 4)
    assert Integrator(successor, batch_size=3).integrate_all(books.db) == 4
    rows = leaf_rows(books.db, successor.name)
    assert [row.idx for row in rows] == [0, 1, 2, 3, 4]
    assert [row.entry_id for row in rows] == [None, *later]
    assert len(leaf_rows(books.db, ORIGIN)) == 13
    assert findings(books.db, signer.verifier, successor.verifier) == []
    with books.db.engine.connect() as conn:
        found = receipt(conn, later[-1])
    assert found is not None
    assert found.log == successor.name
    verify_receipt(found, [NoteVerifier.from_vkey(successor.vkey)])


def test_the_old_key_cannot_append_after_rotation(
    books: Books, logged: list[UUID], integrator: Integrator
) -> None:
    """An integrator still holding the retired key is refused: LogKeyMismatch."""
    successor = NoteSigner.generate(f"{ORIGIN}/2")
    with books.db.transaction() as conn:
        integrator.rotate(conn, successor)
    book_earns(books, 1)
    with pytest.raises(LogKeyMismatch, match="appends to log"):
        integrator.integrate_all(books.db)
    with books.db.engine.connect() as conn:
        assert SqlLogStore(conn).queue_length() == 1


def test_a_key_for_another_log_is_refused(books: Books, logged: list[UUID]) -> None:
    """An integrator whose key names another origin never appends to this database's log."""
    stranger = Integrator(NoteSigner.generate("elsewhere.example/log"))
    book_earns(books, 1)
    with pytest.raises(LogKeyMismatch):
        stranger.integrate_all(books.db)


# -- waiting for a receipt ----------------------------------------------------------------------


@contextmanager
def integrating(database: Database, integrator: Integrator) -> Iterator[Callable[[], int]]:
    """Run ``integrator`` in a loop on its own thread; yields a function returning its total."""
    stop = threading.Event()
    total = [0]

    def loop() -> None:
        while not stop.is_set():
            appended = integrator.integrate_all(database)
            total[0] += appended
            if not appended:
                stop.wait(0.002)  # idle: poll the queue again shortly

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(loop)
        try:
            yield lambda: total[0]
        finally:
            stop.set()
            running.result()  # re-raise whatever the integrator raised


def test_wait_for_receipt_returns_once_integrated(
    books: Books, integrator: Integrator, signer: NoteSigner
) -> None:
    """wait_for_receipt blocks until a running integrator covers the entry, then returns it."""
    with integrating(books.db, integrator):
        (entry_id,) = book_earns(books, 1)
        found = wait_for_receipt(books.db, entry_id, timeout=30)
    assert found.entry_id == entry_id
    assert verify_receipt(found, [signer.verifier]).body["id"] == str(entry_id)


def test_wait_for_receipt_gives_up_when_nothing_integrates(books: Books) -> None:
    """Without an integrator, waiting for a receipt ends in NotYetIntegrated after the timeout."""
    (entry_id,) = book_earns(books, 1)
    with pytest.raises(NotYetIntegrated):
        wait_for_receipt(books.db, entry_id, timeout=0.05)


# -- concurrency and crashes (PostgreSQL) -------------------------------------------------------


@pytest.mark.usefixtures("postgres_only")
def test_two_integrators_and_eight_writers_log_every_entry_once(
    books: Books, database_url: str, signer: NoteSigner
) -> None:
    """Two racing integrators and eight writers: every entry gets one leaf, dense, chained."""
    members = [f"w{n}" for n in range(4)]
    with books.db.transaction() as conn:
        for member in members:
            books.ledger.open_member(SqlLedgerStore(conn), member)
    per_writer = 40

    def write(writer: int) -> None:
        for n in range(per_writer):
            books.earn(
                SUPER,
                new_key(),
                member=members[(writer + n) % len(members)],  # writers share members
                funding={"SUPER": 1 + n},
                business_time=books.clock(),
            )

    engines = [Database.connect(database_url) for _ in range(2)]
    try:
        with (
            integrating(engines[0], Integrator(signer, batch_size=16)) as first,
            integrating(engines[1], Integrator(signer, batch_size=16)) as second,
        ):
            with ThreadPoolExecutor(8) as writers:
                list(writers.map(write, range(8)))
            deadline = time.monotonic() + 60
            while first() + second() < 8 * per_writer:  # let them drain the queue
                assert time.monotonic() < deadline, "integrators did not drain the queue"
                time.sleep(0.01)
    finally:
        for engine in engines:
            engine.dispose()
    assert first() + second() == 8 * per_writer == entry_count(books.db)
    assert_log_is_whole(books.db, signer)
    with books.db.engine.connect() as conn:
        assert SqlLogStore(conn).queue_length() == 0


KILLED_INTEGRATOR = """
import os, sys, time
from ledger.db import Database
from ledger.integrator import Integrator
from ledger.logstore import SqlLogStore
from ledger.note import NoteSigner

stall_at, parent = int(sys.argv[1]), os.getppid()
add_nodes, batches = SqlLogStore.add_nodes, [0]

def stalling_add_nodes(self, log, nodes):
    add_nodes(self, log, nodes)
    batches[0] += 1
    if batches[0] == stall_at:  # inside the batch's transaction, leaves and nodes written
        print("stalled", flush=True)
        while os.getppid() == parent:  # until killed; never outlive the test run
            time.sleep(0.05)
        os._exit(1)

SqlLogStore.add_nodes = stalling_add_nodes
db = Database.connect(
    os.environ["KILL_TEST_URL"], connect_args={"application_name": "killed-integrator"}
)
Integrator(NoteSigner.from_skey(os.environ["KILL_TEST_KEY"]), batch_size=7).integrate_all(db)
print("finished without stalling", flush=True)
"""


def _book_many(books: Books, count: int, threads: int = 4) -> None:
    """Queue ``count`` earns quickly: writer threads, each on a member of its own."""
    members = [f"bulk{n}" for n in range(threads)]
    with books.db.transaction() as conn:
        for member in members:
            books.ledger.open_member(SqlLedgerStore(conn), member)

    def write(thread: int) -> None:
        for n in range(thread, count, threads):
            books.earn(
                SUPER,
                f"bulk-{n}",
                member=members[thread],
                funding={"SUPER": 5},
                business_time=books.clock(),
            )

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, range(threads)))
    assert entry_count(books.db) == count


@pytest.mark.usefixtures("postgres_only")
def test_an_integrator_killed_mid_batch_loses_and_duplicates_nothing(
    books: Books, database_url: str, signer: NoteSigner
) -> None:
    """SIGKILL inside a batch rolls it back; the next integrator logs every entry exactly once."""
    _book_many(books, 2000)
    stall_at = 40
    with subprocess.Popen(
        [sys.executable, "-c", KILLED_INTEGRATOR, str(stall_at)],
        cwd=REPO_ROOT,
        env={**os.environ, "KILL_TEST_URL": database_url, "KILL_TEST_KEY": signer.skey},
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            ready, _, _ = select.select([child.stdout], [], [], 120)
            assert ready, "the child integrator never reached the stalling batch"
            assert child.stdout is not None
            assert child.stdout.readline() == "stalled\n"
            # The stalled batch has written its rows, uncommitted: nobody else sees them.
            assert len(leaf_rows(books.db)) == (stall_at - 1) * 7
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
        finally:
            if child.poll() is None:  # a failed assertion above: do not leave it sleeping
                child.kill()
    _wait_for_backend_to_end(books.db, "killed-integrator")
    appended = Integrator(signer, batch_size=500).integrate_all(books.db)
    assert appended == 2000 - (stall_at - 1) * 7
    assert_log_is_whole(books.db, signer)


def _wait_for_backend_to_end(db: Database, application_name: str) -> None:
    """PostgreSQL rolls back a dead client's transaction when it notices the closed socket."""
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = :name AND datname = current_database()"
    )
    deadline = time.monotonic() + 30
    with db.engine.connect() as conn:
        while conn.scalar(query, {"name": application_name}):
            assert time.monotonic() < deadline, "the killed integrator's backend lingers"
            time.sleep(0.02)
