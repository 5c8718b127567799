"""The verifiable journal's leaves: entries as canonical, chained, versioned envelopes.

Each integrated entry becomes one leaf whose exact bytes are stored and hashed (PRODUCT.md §4,
docs/VERIFYING.md)::

    {"v": 1, "log": origin, "index": n, "prev": hex(leaf hash of n-1 | 32 zero bytes),
     "kind": entry kind, "entry": {...}, "committed_at": "…Z", "nonce": hex(16 random bytes)}

serialised with RFC 8785 inside the restricted profile of :mod:`ledger.canonical`. ``prev`` chains
the leaves so a reader can check the journal row by row; ``log`` and ``index`` let one leaf stand
alone as evidence; the nonce makes a leaf's hash unguessable from its content (a partner holding a
receipt learns nothing about neighbouring leaves from their hashes).

A leaf either records a ledger entry (``kind`` is its entry kind), opens a log after a key
rotation (``kind`` = ``LOG_START``; ``entry`` quotes the previous log's final checkpoint), or
records an audit event (``kind`` = ``AUDIT``; the ``entry`` member is the event, whose own
``kind`` is also ``AUDIT``, written by the audit package and specified in docs/VERIFYING.md §10).

Invariants: ``parse_leaf(build_leaf(...))`` returns what was built; a leaf whose bytes are not the
canonical form of their own JSON is refused.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from ledger.canonical import (
    MAX_SAFE_INTEGER,
    canonical_bytes,
    format_timestamp,
    format_uuid,
    parse_timestamp,
    parse_uuid,
)
from ledger.errors import ProfileError
from ledger.merkle import leaf_hash
from ledger.model import Entry, EntryKind, Lot, LotMove, Posting

ENVELOPE_VERSION = 1
GENESIS_PREV = bytes(32)
LOG_START = "LOG_START"
AUDIT = "AUDIT"
#: Leaf kinds that do not record a ledger entry (no postings, no journal-table row).
NON_ENTRY_KINDS = frozenset({LOG_START, AUDIT})


@dataclass(frozen=True, slots=True)
class Leaf:
    """One leaf of the log: its position, its exact bytes and what they say."""

    log: str
    index: int
    prev: bytes
    kind: str
    body: dict[str, Any]
    """The ``entry`` member of the envelope."""
    committed_at: datetime
    data: bytes
    """The exact canonical bytes that are hashed."""

    @property
    def hash(self) -> bytes:
        return leaf_hash(self.data)


def entry_record(entry: Entry) -> dict[str, Any]:
    """The profile form of an entry, as it appears inside a leaf."""
    return {
        "id": format_uuid(entry.id),
        "kind": entry.kind.value,
        "business_time": format_timestamp(entry.business_time),
        "booked_at": format_timestamp(entry.booked_at),
        "partner": entry.partner,
        "credential": entry.credential,
        "idempotency_key": entry.idempotency_key,
        "refers_to": format_uuid(entry.refers_to) if entry.refers_to else None,
        "reason": entry.reason,
        "postings": [{"account": p.account, "amount": p.amount} for p in entry.postings],
        "lots_opened": [_lot_record(lot) for lot in entry.opened_lots],
        "lot_moves": [{"lot": format_uuid(m.lot_id), "delta": m.delta} for m in entry.lot_moves],
        "lots_released": [format_uuid(lot_id) for lot_id in entry.released_lots],
        "attributes": dict(entry.attributes),
    }


def entry_from_record(record: dict[str, Any]) -> Entry:
    """Rebuild an :class:`Entry` from its leaf record (validating it as any entry is)."""
    try:
        return Entry(
            id=parse_uuid(record["id"]),
            kind=EntryKind(record["kind"]),
            postings=tuple(Posting(p["account"], p["amount"]) for p in record["postings"]),
            business_time=parse_timestamp(record["business_time"]),
            booked_at=parse_timestamp(record["booked_at"]),
            partner=record["partner"],
            credential=record["credential"],
            idempotency_key=record["idempotency_key"],
            refers_to=parse_uuid(record["refers_to"]) if record["refers_to"] else None,
            reason=record["reason"],
            opened_lots=tuple(_lot_from_record(r) for r in record["lots_opened"]),
            lot_moves=tuple(LotMove(parse_uuid(m["lot"]), m["delta"]) for m in record["lot_moves"]),
            released_lots=tuple(parse_uuid(i) for i in record["lots_released"]),
            attributes=record["attributes"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileError(f"malformed entry record: {exc}") from None


def build_leaf(
    *,
    log: str,
    index: int,
    prev: bytes,
    kind: str,
    body: dict[str, Any],
    committed_at: datetime,
    nonce: bytes,
) -> Leaf:
    """Build the canonical envelope of one leaf."""
    if len(prev) != 32 or len(nonce) != 16:
        raise ProfileError("prev must be 32 bytes and nonce 16 bytes")
    committed_text, committed_utc = _committed(committed_at)
    envelope = {
        "v": ENVELOPE_VERSION,
        "log": log,
        "index": index,
        "prev": prev.hex(),
        "kind": kind,
        "entry": body,
        "committed_at": committed_text,
        "nonce": nonce.hex(),
    }
    data = canonical_bytes(envelope)
    return Leaf(log, index, prev, kind, body, committed_utc, data)


def envelope_bytes(
    *,
    log: str,
    index: int,
    prev: bytes,
    kind: str,
    body: bytes,
    committed_at: datetime,
    nonce: bytes,
) -> bytes:
    """The bytes :func:`build_leaf` serialises, around a body already serialised.

    ``body`` must be ``canonical_bytes`` of the leaf's ``entry`` member (the integrator's
    :meth:`~ledger.integrator.Integrator.prepare` makes it beside the writer). RFC 8785 writes an
    object's members in key order, and the envelope's keys sort as ``committed_at``, ``entry``,
    ``index``, ``kind``, ``log``, ``nonce``, ``prev``, ``v``, so the body's bytes go in place
    unchanged: the splice costs a join, where serialising again would walk the whole body
    (tests/integration/test_prepared_leaves.py holds it to build_leaf byte for byte).
    """
    if len(prev) != 32 or len(nonce) != 16:
        raise ProfileError("prev must be 32 bytes and nonce 16 bytes")
    if type(index) is not int or not -MAX_SAFE_INTEGER <= index <= MAX_SAFE_INTEGER:
        raise ProfileError(f"a leaf index is a profile integer, not {index!r}")
    return b"".join(
        (
            b'{"committed_at":"',
            format_timestamp(committed_at).encode(),
            b'","entry":',
            body,
            b',"index":',
            str(index).encode(),
            b',"kind":',
            _json_string(kind),
            b',"log":',
            _json_string(log),
            b',"nonce":"',
            nonce.hex().encode(),
            b'","prev":"',
            prev.hex().encode(),
            b'","v":%d}' % ENVELOPE_VERSION,
        )
    )


@functools.lru_cache(maxsize=64)
def _json_string(text: str) -> bytes:
    """A log name or leaf kind as RFC 8785 spells it (a batch has one log and a few kinds)."""
    return canonical_bytes(text)


@functools.lru_cache(maxsize=4)
def _committed(moment: datetime) -> tuple[str, datetime]:
    """A leaf's ``committed_at`` as spelled and as read back, remembered: an integration batch
    commits all its leaves at one instant. Equal aware datetimes are one instant, hence one
    spelling; a naive one raises and is never remembered."""
    text = format_timestamp(moment)
    return text, parse_timestamp(text)


def parse_leaf(data: bytes) -> Leaf:
    """Read a stored leaf, refusing bytes that are not exactly the canonical envelope."""
    try:
        envelope = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"leaf is not JSON: {exc}") from None
    if not isinstance(envelope, dict) or set(envelope) != {
        "v",
        "log",
        "index",
        "prev",
        "kind",
        "entry",
        "committed_at",
        "nonce",
    }:
        raise ProfileError("leaf envelope has missing or unknown fields")
    if envelope["v"] != ENVELOPE_VERSION:
        raise ProfileError(f"unknown envelope version {envelope['v']!r}")
    if canonical_bytes(envelope) != data:
        raise ProfileError("leaf bytes are not in canonical form")
    if not (_hex(envelope["prev"], 64) and _hex(envelope["nonce"], 32)):
        raise ProfileError("prev must be 64 and nonce 32 lowercase hex digits")
    prev = bytes.fromhex(envelope["prev"])
    body = envelope["entry"]
    if envelope["kind"] != LOG_START and (
        not isinstance(body, dict) or body.get("kind") != envelope["kind"]
    ):
        raise ProfileError("the envelope's kind differs from its entry's kind")
    return Leaf(
        log=envelope["log"],
        index=envelope["index"],
        prev=prev,
        kind=envelope["kind"],
        body=envelope["entry"],
        committed_at=parse_timestamp(envelope["committed_at"]),
        data=data,
    )


_LOWER_HEX = re.compile(r"[0-9a-f]+")


def _hex(value: object, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and bool(_LOWER_HEX.fullmatch(value))


def _lot_record(lot: Lot) -> dict[str, Any]:
    return {
        "id": format_uuid(lot.id),
        "member": lot.member,
        "funder": lot.funder,
        "amount": lot.amount,
        "earned_at": format_timestamp(lot.earned_at),
        "expires_at": format_timestamp(lot.expires_at) if lot.expires_at else None,
        "pending_until": format_timestamp(lot.pending_until) if lot.pending_until else None,
        "price_version": lot.price_version,
    }


def _lot_from_record(record: dict[str, Any]) -> Lot:
    return Lot(
        id=parse_uuid(record["id"]),
        member=record["member"],
        funder=record["funder"],
        amount=record["amount"],
        earned_at=parse_timestamp(record["earned_at"]),
        expires_at=parse_timestamp(record["expires_at"]) if record["expires_at"] else None,
        pending_until=parse_timestamp(record["pending_until"]) if record["pending_until"] else None,
        price_version=record["price_version"],
    )


def entry_id_of(leaf: Leaf) -> UUID | None:
    """The ledger entry a leaf records, or ``None`` for a log-start or audit leaf."""
    return None if leaf.kind in NON_ENTRY_KINDS else parse_uuid(leaf.body["id"])
