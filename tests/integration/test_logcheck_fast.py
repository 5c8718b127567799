"""The live verifier's quick paths give the verdicts of the exact ones they stand in for.

:func:`ledger.logcheck.verify_log` reads a leaf through :func:`ledger.canonical.canonical_loads`
when it can (falling back to :func:`ledger.journal.parse_leaf`), rebuilds entries from their rows
without the :class:`Entry` round trip, and computes the stored tree nodes level by level from the
leaves' hashes. Here each is held to the exact path: the same leaf or the same refusal, and the
same findings for stored tree nodes that are edited, missing or beyond the tree.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Connection

from ledger import merkle
from ledger import tables as t
from ledger.canonical import canonical_bytes
from ledger.consistency import Finding
from ledger.db import Database
from ledger.errors import LedgerError
from ledger.integrator import Integrator
from ledger.journal import parse_leaf
from ledger.logcheck import _read_leaf, verify_log
from ledger.note import NoteSigner
from tests.integration.conftest import SUPER, Books, new_key

ORIGIN = "test.coalition.local/fast"

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**54), max_value=2**54)
    | st.text(max_size=6)
    | st.sampled_from(["é", "e\u0301", "\u2028", "Å", "A\u030a", "€ ×2", "\ud800"])
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def _verdict(read: object, data: bytes) -> object:
    try:
        return read(data)  # type: ignore[operator]
    except LedgerError:
        return "refused"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    extra=st.dictionaries(st.text(max_size=5), _VALUES, max_size=4),
    fields=st.dictionaries(
        st.sampled_from(["v", "kind", "prev", "nonce", "committed_at", "index", "log"]),
        st.sampled_from([True, 1, 2, "EARN", "LOG_START", "ab" * 32, "AB" * 32, "cd" * 16, None])
        | st.sampled_from(["2026-03-02T09:00:00.000000Z", "2026-03-02T09:00:00Z", -1]),
        max_size=2,
    ),
    spelling=st.sampled_from(["canonical", "sorted", "ascii", "spaced"]),
)
def test_reading_a_leaf_quickly_agrees_with_parse_leaf(
    extra: dict[str, object], fields: dict[str, object], spelling: str
) -> None:
    """Same Leaf or same refusal, for envelopes right and wrong, ASCII or not, any spelling."""
    envelope = {
        "v": 1,
        "log": "x/log",
        "index": 3,
        "prev": "ab" * 32,
        "kind": "EARN",
        "entry": {**extra, "kind": "EARN"},
        "committed_at": "2026-03-02T09:00:00.000000Z",
        "nonce": "cd" * 16,
        **fields,
    }
    try:
        if spelling == "canonical":
            data = canonical_bytes(envelope)
        else:
            data = json.dumps(
                envelope,
                sort_keys=True,
                ensure_ascii=spelling == "ascii",
                separators=(", ", ": ") if spelling == "spaced" else (",", ":"),
            ).encode("utf-8", "surrogatepass")
    except (LedgerError, ValueError):
        return
    assert _verdict(_read_leaf, data) == _verdict(parse_leaf, data)


# -- stored tree nodes --------------------------------------------------------------------------


@contextmanager
def _tampering(db: Database) -> Iterator[Connection]:
    with db.engine.begin() as conn:
        if db.engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        yield conn


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


@pytest.fixture
def logged(books: Books, signer: NoteSigner) -> list[UUID]:
    """Eleven earns, integrated in batches of four: leaves 0..10 and their stored tree nodes."""
    ids = []
    for n in range(11):
        booking = books.earn(
            SUPER,
            new_key(),
            member="alice",
            funding={SUPER.partner: 10 + n},
            business_time=books.clock(),
        )
        ids.append(booking.entry.id)
    assert Integrator(signer, batch_size=4).integrate_all(books.db) == 11
    return ids


def _tree(db: Database) -> merkle.MemoryTree:
    with db.engine.connect() as conn:
        query = sa.select(t.leaves.c.data).where(t.leaves.c.log == ORIGIN).order_by(t.leaves.c.idx)
        return merkle.MemoryTree(bytes(data) for data in conn.scalars(query))


def _node_findings(db: Database, signer: NoteSigner) -> list[Finding]:
    with db.engine.connect() as conn:
        return [f for f in verify_log(conn, [signer.verifier]) if f.check == "tree-node"]


def test_every_stored_node_is_checked_and_an_honest_tree_passes(
    books: Books, logged: list[UUID], signer: NoteSigner
) -> None:
    tree = _tree(books.db)
    with books.db.engine.connect() as conn:
        stored = {
            (row.level, row.idx): bytes(row.hash)
            for row in conn.execute(sa.select(t.tree_nodes).where(t.tree_nodes.c.log == ORIGIN))
        }
    assert {level for level, _ in stored} >= {1, 2, 3}
    assert stored == {address: tree.node(*address) for address in stored}
    assert _node_findings(books.db, signer) == []


def test_edited_and_impossible_nodes_are_found_at_every_level(
    books: Books, logged: list[UUID], signer: NoteSigner
) -> None:
    """An edited node on each level is named with the recomputed hash; a node the tree cannot
    hold (beyond its size, or a level above its height) is named with none."""
    tree = _tree(books.db)
    forged = b"\x07" * 32
    with books.db.engine.connect() as conn:
        levels = sorted(
            set(conn.scalars(sa.select(t.tree_nodes.c.level).where(t.tree_nodes.c.log == ORIGIN)))
        )
    with _tampering(books.db) as conn:
        for level in levels:
            conn.execute(
                t.tree_nodes.update()
                .where(
                    t.tree_nodes.c.log == ORIGIN,
                    t.tree_nodes.c.level == level,
                    t.tree_nodes.c.idx == 0,
                )
                .values(hash=forged)
            )
        conn.execute(
            t.tree_nodes.insert(),
            [
                {"log": ORIGIN, "level": 1, "idx": 5, "hash": forged},  # 11 leaves: pairs 0..4
                {"log": ORIGIN, "level": 9, "idx": 0, "hash": forged},
            ],
        )
    expected = [
        Finding("tree-node", f"{ORIGIN}/{level}/0", tree.node(level, 0).hex(), forged.hex())
        for level in levels
    ] + [
        Finding("tree-node", f"{ORIGIN}/1/5", None, forged.hex()),
        Finding("tree-node", f"{ORIGIN}/9/0", None, forged.hex()),
    ]
    assert sorted(_node_findings(books.db, signer), key=str) == sorted(expected, key=str)
