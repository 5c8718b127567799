"""Receipts and proofs: evidence a partner keeps to show, offline, that an entry is in the log.

A receipt holds the leaf's exact bytes, its index, a signed checkpoint whose tree covers it and the
RFC 6962 inclusion proof from the leaf to that checkpoint's root. It is given as JSON and as a
C2SP tlog-proof (``c2sp.org/tlog-proof@v1``). :func:`verify_receipt` needs only the receipt and the
log's verifier key: signature first, then the leaf hash, then the proof (sigstore's order).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy.engine import Connection

from ledger import merkle
from ledger.db import Database
from ledger.errors import NotYetIntegrated, ProofError
from ledger.journal import Leaf, parse_leaf
from ledger.logstore import SqlLogStore
from ledger.note import Checkpoint, NoteVerifier, open_checkpoint

TLOG_PROOF_HEADER = "c2sp.org/tlog-proof@v1"


@dataclass(frozen=True, slots=True)
class Receipt:
    """Offline evidence that one entry is leaf ``index`` of log ``log``."""

    entry_id: UUID
    log: str
    index: int
    leaf: bytes
    checkpoint: str
    """The signed checkpoint note whose tree includes the leaf."""
    tree_size: int
    proof: tuple[bytes, ...]

    @property
    def leaf_hash(self) -> bytes:
        return merkle.leaf_hash(self.leaf)

    def to_json(self) -> dict[str, Any]:
        return {
            "entry_id": str(self.entry_id),
            "log": self.log,
            "index": self.index,
            "leaf_hash": self.leaf_hash.hex(),
            "leaf": self.leaf.decode("utf-8"),
            "checkpoint": self.checkpoint,
            "tree_size": self.tree_size,
            "inclusion_proof": [h.hex() for h in self.proof],
            "tlog_proof": self.tlog_proof(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Receipt:
        try:
            receipt = cls(
                entry_id=UUID(data["entry_id"]),
                log=data["log"],
                index=int(data["index"]),
                leaf=data["leaf"].encode("utf-8"),
                checkpoint=data["checkpoint"],
                tree_size=int(data["tree_size"]),
                proof=tuple(bytes.fromhex(h) for h in data["inclusion_proof"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProofError(f"malformed receipt: {exc}") from None
        if "leaf_hash" in data and data["leaf_hash"] != receipt.leaf_hash.hex():
            raise ProofError(
                "the receipt's leaf_hash is not the hash of its leaf",
                expected=receipt.leaf_hash.hex(),
                computed=data["leaf_hash"],
            )
        return receipt

    def tlog_proof(self) -> str:
        """The receipt as a C2SP tlog-proof; the leaf bytes travel as its ``extra`` data."""
        lines = [
            TLOG_PROOF_HEADER,
            f"extra {base64.b64encode(self.leaf).decode()}",
            f"index {self.index}",
        ]
        lines += [base64.b64encode(h).decode() for h in self.proof]
        return "\n".join(lines) + "\n\n" + self.checkpoint


def receipt(conn: Connection, entry_id: UUID) -> Receipt | None:
    """The receipt of an integrated entry against the log's latest checkpoint; None if queued."""
    store = SqlLogStore(conn)
    found = store.leaf(entry_id)
    if found is None:
        return None
    log, index, data = found
    checkpoint = store.checkpoint(log)
    if checkpoint is None or checkpoint.size <= index:
        return None
    nodes = store.nodes(log, merkle.inclusion_addresses(index, checkpoint.size))
    proof = merkle.inclusion_proof(index, checkpoint.size, nodes)
    return Receipt(entry_id, log, index, data, checkpoint.note, checkpoint.size, tuple(proof))


def wait_for_receipt(db: Database, entry_id: UUID, timeout: float = 5.0) -> Receipt:
    """Poll until the integrator has covered ``entry_id`` with a checkpoint, or raise."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        with db.engine.connect() as conn:
            found = receipt(conn, entry_id)
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            raise NotYetIntegrated(entry_id)
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def verify_receipt(receipt: Receipt, verifiers: Iterable[NoteVerifier]) -> Leaf:
    """Check a receipt offline and return the leaf it proves; raises a VerificationError."""
    keys = [key for key in verifiers if key.name == receipt.log]  # the log key is named its origin
    checkpoint, _ = open_checkpoint(receipt.checkpoint, keys, origin=receipt.log)
    if checkpoint.size != receipt.tree_size:
        raise ProofError(
            "receipt names another tree size than its checkpoint",
            expected=checkpoint.size,
            computed=receipt.tree_size,
        )
    leaf = parse_leaf(receipt.leaf)
    if (leaf.log, leaf.index) != (receipt.log, receipt.index):
        raise ProofError(
            "leaf says it sits elsewhere",
            expected=(receipt.log, receipt.index),
            computed=(leaf.log, leaf.index),
        )
    if leaf.kind != "LOG_START" and leaf.body.get("id") != str(receipt.entry_id):
        raise ProofError(
            "leaf records another entry",
            expected=str(receipt.entry_id),
            computed=leaf.body.get("id"),
        )
    merkle.verify_inclusion(
        leaf.hash, receipt.index, checkpoint.size, list(receipt.proof), checkpoint.root
    )
    return leaf


def consistency(conn: Connection, log: str, size1: int, size2: int) -> tuple[str, str, list[bytes]]:
    """Both signed checkpoints and the consistency proof between them."""
    store = SqlLogStore(conn)
    old, new = store.checkpoint(log, size1), store.checkpoint(log, size2)
    if old is None or new is None:
        raise ProofError("no checkpoint at that size", expected=(size1, size2))
    nodes = store.nodes(log, merkle.consistency_addresses(size1, size2))
    return old.note, new.note, merkle.consistency_proof(size1, size2, nodes)


def checkpoint_of(note: str) -> Checkpoint:
    """The checkpoint in a note, unverified (for display; verify with open_checkpoint)."""
    text = note.split("\n\n", 1)[0] + "\n"
    return Checkpoint.parse(text)
