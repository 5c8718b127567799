"""The per-leaf half of offline verification: pure, so chunks of leaves can run in parallel.

:func:`scan_chunk` takes lines of ``leaves.jsonl`` and, for each, computes the leaf hash, checks
the bytes are a canonical envelope (docs/VERIFYING.md §2–§3), checks the entry rules (§3.3), and
adds the entry's effects (postings, lots opened, lot moves, releases) to per-key tallies folded
into buckets (:mod:`audit.tally`). What needs the order of the leaves — the chain, the sequence,
the Merkle tree, the signed roots, the match with the journal tables — is left to the caller,
which gets one small tuple per leaf (:data:`Scanned`), or, for a chunk that found nothing and
holds together, one :class:`Run` (the caller checks where it joins the log).

Speed: the canonical check first tries a compiled codec (orjson): for bytes that contain no
escape, parsing and re-serialising with sorted keys (integers refused beyond ±(2^53 − 1)) gives
back the same bytes exactly when they are RFC 8785 within the profile — provided the text is in
NFC and the keys sort the same by code point and by UTF-16 unit (always so in ASCII; beyond it,
:func:`ledger.canonical.wide_text_round_trips` says), and no number has a fraction or an
exponent, which orjson would round-trip unchanged (``1.5``): ``FLOAT_*`` find any such number
token, since in compact JSON a number follows ``":``, ``,`` or ``[`` (a match inside a string
only sends the bytes the slow way). Anything else takes the exact path
(:func:`ledger.journal.parse_leaf`), slower but rare. A Hypothesis test holds the two paths to
the same verdict. The leaf-by-leaf code uses the general form of this check,
:func:`ledger.canonical.canonical_loads`, which also admits escapes.

The scan is one loop (:func:`_scan_python`, or its C twin :func:`_scan_compiled` where it was
built: :data:`SCAN_LOOPS`) that makes every check inline for a leaf that passes them all, and
hands any other leaf to the leaf-by-leaf code (:func:`_scan_line`), which names what is wrong;
tests/unit/test_leafscan.py holds them to the same tuples, findings and tallies. For an entry
whose every value is of a type the entry rules check, or text or null, the ``canonical.FLOAT_*``
search is skipped: no number with a fraction can be there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from audit.native import NATIVE as _compiled
from audit.tally import BUCKETS, fold_many, kept_slots, merge
from ledger.canonical import (
    FLOAT_FIRST,
    FLOAT_ITEM,
    FLOAT_MEMBER,
    MAX_DEPTH,
    SORTED_STRICT,
    canonical_loads,
    parse_timestamp,
    wide_text_round_trips,
)
from ledger.consistency import Finding
from ledger.errors import LedgerError, ProfileError
from ledger.journal import AUDIT, ENVELOPE_VERSION, LOG_START, parse_leaf
from ledger.model import EntryKind

ENTRY_KINDS = frozenset(kind.value for kind in EntryKind)
_ENVELOPE_KEYS = frozenset({"v", "log", "index", "prev", "kind", "entry", "committed_at", "nonce"})
# A number token with a fraction or an exponent: after '":' (a member), ',' or '[' (an item). One
# pattern per literal prefix, which the regex engine searches for far faster than a class.
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_OWNER = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_ACCOUNT = re.compile(
    rf"(member):({_OWNER}):(available|pending|held)"
    rf"|partner:{_OWNER}:(?:issued|redeemed|(settlement))"
    r"|program:(?:breakage|funded|adjustments)"
    r"|(operator):(?:bank|income|expense|rounding)"
)
_LOT_KEYS = frozenset(
    {
        "id",
        "member",
        "funder",
        "amount",
        "earned_at",
        "expires_at",
        "pending_until",
        "price_version",
    }
)
_LOT_ORDER = tuple(sorted(_LOT_KEYS))
_POSTING_KEYS = frozenset({"account", "amount"})
_MOVE_KEYS = frozenset({"lot", "delta"})
_ENTRY_KEYS = frozenset(
    {
        "id",
        "kind",
        "business_time",
        "booked_at",
        "partner",
        "credential",
        "idempotency_key",
        "refers_to",
        "reason",
        "postings",
        "lots_opened",
        "lot_moves",
        "lots_released",
        "attributes",
    }
)

#: The tallies the scan fills: what the log implies, per key, for the caches to be compared with.
TALLIES = ("balance", "lot-state", "lot-terms", "cover", "pending")
#: The tallies keyed by accounts and members, which recur from chunk to chunk (lots do not).
RECURRING = frozenset({"balance", "cover", "pending"})

#: One scanned leaf: (line number, log, index, prev, leaf hash, committed_at, kind, body digest,
#: LOG_START body). ``log`` is ``None`` when the bytes are not an envelope at all.
Scanned = tuple[int, Any, Any, Any, bytes, Any, Any, Any, Any]


@dataclass
class Effects:
    """What entries do to the caches, per key (exact values; one chunk's worth)."""

    values: dict[str, dict[str, int]] = field(
        default_factory=lambda: {t: defaultdict(int) for t in TALLIES}
    )
    books: dict[str, int] = field(default_factory=lambda: {"POINTS": 0, "EUR": 0})
    folded: dict[str, dict[int, int]] = field(default_factory=dict)
    """What a compiled loop folded as it went, per tally (audit/_native.c keeps no exact
    values): added to the fold of :attr:`values`."""

    def add(self, tally: str, key: str, value: int) -> None:
        target = self.values[tally]
        target[key] = target.get(key, 0) + value

    def fold(self, secret: bytes, buckets: int) -> dict[str, dict[int, int]]:
        """Every tally folded into buckets (:mod:`audit.tally`)."""
        folded = fold_many(self.values, secret, buckets, RECURRING)
        for name, part in self.folded.items():
            if folded[name]:
                merge(folded[name], part)
            else:  # as a rule, no leaf took the fallback: nothing to add up
                folded[name] = part
        return folded


@dataclass
class Run:
    """A chunk of leaves that found nothing and hold together: one log, consecutive indices, each
    ``prev`` the hash of the leaf before, ``committed_at`` never going back, every leaf an entry
    or an audit event. Sent instead of one tuple per leaf: what the caller still has to check is
    where the run joins the log (its first ``prev``, index and time) and what needs the whole log
    (the Merkle tree, the tables' records)."""

    log: str
    first: int
    prev: bytes
    first_stamp: str
    last_stamp: str
    hashes: bytes
    """The leaf hashes, 32 bytes each, in order."""
    kinds: str
    """One letter per leaf: ``E`` an entry, ``A`` an audit event."""
    entries: Lines | None = None
    """The lines ``entries.jsonl`` holds for the run's entries, as the exporter writes them
    (None when the log's name is not plain JSON text: then the caller builds them)."""
    events: Lines | None = None
    """Likewise, the lines ``audit.jsonl`` holds for the run's audit events."""


class Lines(NamedTuple):
    """Lines of ``entries.jsonl`` or ``audit.jsonl`` as a worker sends them back, not their
    bytes (a chunk's records are nearly as large as its leaves, and sending them through a pipe
    cost more than checking them where they are): their number and size, and either where the
    worker found exactly these bytes in the file (``at``), or their SHA-256."""

    count: int
    size: int
    sha256: bytes | None
    at: int | None = None

    @classmethod
    def of(cls, data: bytes, count: int) -> Lines:
        return cls(count, len(data), hashlib.sha256(data).digest())


#: Where a table file holds given lines exactly: (file name, the lines, the index of the leaf the
#: first records, the log as JSON) → the offset, or None.
Locate = Callable[[str, bytes, int, bytes], int | None]


@dataclass
class ChunkResult:
    """What :func:`scan_chunk` returns: per-leaf tuples (or a :class:`Run`), findings, folded
    tallies, book sums."""

    leaves: list[Scanned]
    findings: list[Finding]
    folded: dict[str, dict[int, int]]
    books: dict[str, int]
    run: Run | None = None


def scan_chunk(
    lines: Sequence[bytes],
    first_line: int,
    secret: bytes,
    buckets: int = BUCKETS,
    runs: bool = True,
    locate: Locate | None = None,
) -> ChunkResult:
    """Check each line of ``leaves.jsonl`` on its own and tally what its entry does. With
    ``runs``, a chunk that forms a :class:`Run` comes back as one, with the lines the tables
    hold for it found in their files by ``locate`` where it can, else by their digest."""
    effects = Effects()
    findings: list[Finding] = []
    scanned: list[Scanned] = []
    timestamps: dict[str, bool] = {}
    lazy, run = SCAN_LOOPS[-1](
        lines, first_line, effects, findings, timestamps, scanned, secret, buckets, runs
    )
    folded = effects.fold(secret, buckets)
    if run is None and runs and not findings:
        run = _as_run(scanned)
        if (
            run is not None
            and len(lazy) < len(lines)
            and any(line[:9] == b'{"index":' for line in lines)
        ):
            # A leaf written as an escape line: its record is in the decoded bytes, not the
            # line, so the caller takes it leaf by leaf (the fast paths hand every escape line
            # over).
            run = None
    if run is not None:
        log_json = plain_json(run.log)
        if log_json is not None:  # built here, in parallel, for the caller to compare
            listed = lines if type(lines) is list else list(lines)
            entries, events = RECORDS[-1](listed, run.kinds, run.first, log_json)
            run.entries = _lines_of(run, "E", entries, "entries.jsonl", log_json, locate)
            run.events = _lines_of(run, "A", events, "audit.jsonl", log_json, locate)
        return ChunkResult([], findings, folded, effects.books, run)
    blake2b = hashlib.blake2b
    for n in lazy:  # the body digests the fast path left for the caller's tuples
        body = body_slice(lines[n])
        scanned[n] = (*scanned[n][:7], blake2b(body, digest_size=16).digest(), scanned[n][8])
    return ChunkResult(scanned, findings, folded, effects.books)


def _lines_of(
    run: Run, letter: str, data: bytes, name: str, log_json: bytes, locate: Locate | None
) -> Lines:
    """The lines of ``name`` that the run's leaves of kind ``letter`` need (``data``): where
    ``locate`` finds exactly them in the file, else by their digest."""
    count = run.kinds.count(letter)
    at = None
    if locate is not None and count:
        at = locate(name, data, run.first + run.kinds.index(letter), log_json)
    return Lines.of(data, count) if at is None else Lines(count, len(data), None, at)


def _as_run(scanned: list[Scanned]) -> Run | None:
    if not scanned:
        return None
    first = scanned[0]
    log, index, prev, stamp = first[1], first[2], first[3], first[5]
    if type(log) is not str or type(index) is not int or prev is None:
        return None
    start_stamp, entry_kinds = stamp, ENTRY_KINDS
    kinds, hashes = [], []
    for item in scanned:
        if item[1] != log or item[2] != index or item[3] != prev or not item[5] >= stamp:
            return None
        kind = item[6]
        if kind == AUDIT:
            kinds.append("A")
        elif kind in entry_kinds:
            kinds.append("E")
        else:
            return None
        prev = item[4]
        hashes.append(prev)
        index += 1
        stamp = item[5]
    return Run(log, first[2], first[3], start_stamp, stamp, b"".join(hashes), "".join(kinds))


def _scan_python(
    lines: Sequence[bytes],
    first_line: int,
    effects: Effects,
    findings: list[Finding],
    timestamps: dict[str, bool],
    scanned: list[Scanned],
    secret: bytes,
    buckets: int,
    runs: bool,
) -> tuple[list[int], Run | None]:
    """:func:`_scan_line` over every line, in one loop that makes the same checks inline for a
    leaf that passes them all (the common case) and hands any other leaf, untouched, to
    :func:`_scan_line`, which says what is wrong. Nothing is tallied before a leaf has passed
    every check, so the hand-over never counts an entry twice. The leaves that took the fast
    way get no body digest (a :class:`Run` needs none): their positions in ``scanned`` are
    returned, for the caller to fill in when it does need them. Exact values go to
    ``effects.values``, which the caller folds under ``secret`` into ``buckets``, and the caller
    sees whether the tuples form a :class:`Run` (the C twin does both as it goes: hence the
    arguments this loop leaves alone, and the None it returns for a run)."""
    sha256, loads, dumps = hashlib.sha256, orjson.loads, orjson.dumps
    decode_error, encode_error = orjson.JSONDecodeError, orjson.JSONEncodeError
    float_member, float_item, float_first = FLOAT_MEMBER, FLOAT_ITEM, FLOAT_FIRST
    hex64, hex32, uuid_match = _HEX64.fullmatch, _HEX32.fullmatch, _UUID.fullmatch
    accounts_cache, parse_account = _ACCOUNTS, _account
    envelope_keys, entry_keys, posting_keys = _ENVELOPE_KEYS, _ENTRY_KEYS, _POSTING_KEYS
    lot_keys, move_keys, entry_kinds = _LOT_KEYS, _MOVE_KEYS, ENTRY_KINDS
    sorted_option, max_depth, version = SORTED_STRICT, MAX_DEPTH, ENVELOPE_VERSION
    values = effects.values
    balance, cover, pending = values["balance"], values["cover"], values["pending"]
    state, terms = values["lot-state"], values["lot-terms"]
    append = scanned.append
    plain = frozenset({str, type(None)})
    lazy: list[int] = []
    for line_no, line in enumerate(lines, first_line):
        if (
            line[:9] == b'{"index":'
            or b"\\" in line
            or line.count(b"{") + line.count(b"[") > max_depth
        ):
            append(_scan_line(line, line_no, effects, findings, timestamps))
            continue
        try:
            envelope = loads(line)
            if type(envelope) is not dict or dumps(envelope, option=sorted_option) != line:
                envelope = None
        except (decode_error, encode_error):
            envelope = None
        if (
            envelope is None
            or envelope.keys() != envelope_keys
            or not (line.isascii() or wide_text_round_trips(line))
        ):
            append(_scan_line(line, line_no, effects, findings, timestamps))
            continue
        # The round trip gave back the bytes, so every object's members are in sorted order.
        stamp, body, index, kind, log, nonce, prev, v = envelope.values()
        if not (
            type(v) is int
            and v == version
            and type(index) is int
            and index >= 0
            and type(log) is str
            and type(kind) is str
            and type(prev) is str
            and hex64(prev)
            and type(nonce) is str
            and hex32(nonce)
            and type(body) is dict
            and type(stamp) is str
            and (stamp in timestamps or _known_stamp(stamp, timestamps))
        ):
            append(_scan_line(line, line_no, effects, findings, timestamps))
            continue
        if kind in entry_kinds:
            # _entry_shape and check_entry, inline; any doubt goes the long way.
            if body.keys() != entry_keys or body["kind"] != kind:
                append(_scan_line(line, line_no, effects, findings, timestamps))
                continue
            (
                attributes,
                booked_at,
                business_time,
                credential,
                entry_id,
                idempotency_key,
                _,
                moves,
                opened,
                released,
                partner,
                postings,
                reason,
                refers_to,
            ) = body.values()
            ok = (
                type(entry_id) is str
                and uuid_match(entry_id) is not None
                and type(postings) is list
                and len(postings) >= 2
                and type(opened) is list
                and type(moves) is list
                and type(released) is list
                and (kind != "ADJUSTMENT" or (type(reason) is str and reason.strip() != ""))
            )
            # Every value of a type checked here, or text or null: then no number with a
            # fraction or an exponent (which the round trip cannot see) can hide in the leaf.
            typed = (
                type(attributes) is dict
                and not attributes
                and type(business_time) in plain
                and type(booked_at) in plain
                and type(partner) in plain
                and type(credential) in plain
                and type(idempotency_key) in plain
                and type(refers_to) in plain
                and type(reason) in plain
            )
            points = euros = 0
            posted = []
            if ok:
                for posting in postings:
                    if not (type(posting) is dict and posting.keys() == posting_keys):
                        ok = False
                        break
                    account, amount = posting.values()
                    if type(account) is not str or type(amount) is not int or amount == 0:
                        ok = False
                        break
                    parsed = accounts_cache.get(account)
                    if parsed is None:
                        parsed = parse_account(account)
                        if parsed is None:
                            ok = False
                            break
                    if parsed[0]:
                        euros += amount
                    else:
                        points += amount
                    posted.append((account, amount, parsed[1], parsed[2]))
            if ok and (points or euros):
                ok = False
            new_lots = []
            if ok:
                for lot in opened:
                    if not (type(lot) is dict and lot.keys() == lot_keys):
                        ok = False
                        break
                    amount, earned, expires, funder, lot_id, member, until, price = lot.values()
                    if not (
                        type(lot_id) is str
                        and uuid_match(lot_id)
                        and type(amount) is int
                        and amount > 0
                    ):
                        ok = False
                        break
                    typed = (
                        typed
                        and type(member) in plain
                        and type(funder) in plain
                        and type(earned) in plain
                        and type(expires) in plain
                        and type(until) in plain
                        and type(price) in plain
                    )
                    new_lots.append((lot_id, 2 * amount + (until is not None), lot))
            if ok:
                for move in moves:
                    if not (type(move) is dict and move.keys() == move_keys):
                        ok = False
                        break
                    delta, lot_id = move.values()
                    if not (type(lot_id) is str and uuid_match(lot_id) and type(delta) is int):
                        ok = False
                        break
                    if delta == 0:
                        ok = False
                        break
            if ok:
                for lot_id in released:
                    if not (type(lot_id) is str and uuid_match(lot_id)):
                        ok = False
                        break
            if ok and not typed:
                ok = not (float_member(line) or float_item(line) or float_first(line))
            if not ok:
                append(_scan_line(line, line_no, effects, findings, timestamps))
                continue
            for account, amount, member, is_pending in posted:
                balance[account] += amount
                if member is not None:
                    if is_pending:
                        pending[member] += amount
                    else:
                        cover[member] += amount
            for lot_id, opened_state, lot in new_lots:
                terms[lot_id] += lot_terms(entry_id, lot)
                state[lot_id] += opened_state
            for move in moves:
                state[move["lot"]] += 2 * move["delta"]
            for lot_id in released:
                state[lot_id] -= 1
            extra = None
        elif kind == AUDIT and body.get("kind") == kind:
            event_id = body.get("id")
            if not (type(event_id) is str and uuid_match(event_id)) or (
                float_member(line) or float_item(line) or float_first(line)
            ):
                append(_scan_line(line, line_no, effects, findings, timestamps))
                continue
            extra = None
        else:
            append(_scan_line(line, line_no, effects, findings, timestamps))
            continue
        lazy.append(line_no - first_line)
        leaf_hash = sha256(b"\x00" + line).digest()
        append((line_no, log, index, bytes.fromhex(prev), leaf_hash, stamp, kind, None, extra))
    return lazy, None


def _scan_compiled(
    lines: Sequence[bytes],
    first_line: int,
    effects: Effects,
    findings: list[Finding],
    timestamps: dict[str, bool],
    scanned: list[Scanned],
    secret: bytes,
    buckets: int,
    runs: bool,
) -> tuple[list[int], Run | None]:
    """:func:`_scan_python` in C (``audit/_native.c``): the same results, in well under half
    the time (bench/RESULTS.md). With ``runs``, a chunk that forms a run comes back as one,
    with no tuple made per leaf."""

    def fallback(line: bytes, line_no: int) -> Scanned:
        return _scan_line(line, line_no, effects, findings, timestamps)

    assert _compiled is not None
    kept = kept_slots(secret, buckets)
    taken, folded, run = _compiled.scan(
        lines, first_line, secret, buckets, kept, timestamps, scanned, fallback, runs
    )
    effects.folded = dict(zip(TALLIES, folded, strict=True))
    return taken, None if run is None else Run(*run)


def plain_json(log: str) -> bytes | None:
    """The JSON string of ``log`` as the exporter writes it, when that is just the log between
    quotes (no quote, backslash or control character)."""
    if any(c in log for c in '"\\') or any(ord(c) < 0x20 for c in log):
        return None
    return b'"' + log.encode() + b'"'


def record_line(index: int, log_json: bytes, body: bytes) -> bytes:
    """The line of ``entries.jsonl`` or ``audit.jsonl`` that records a leaf's entry, as the
    exporter writes it: ``body`` is the entry's canonical bytes (:func:`body_slice`)."""
    return b'{"index":%d,"log":%s,"queued":false,"record":%s}\n' % (index, log_json, body)


def _records_python(
    lines: list[bytes], kinds: str, first: int, log_json: bytes
) -> tuple[bytes, bytes]:
    """The lines ``entries.jsonl`` (kind ``E``) and ``audit.jsonl`` (the others) hold for
    consecutive leaves of one log, the first at index ``first``, each file's joined."""
    entries: list[bytes] = []
    events: list[bytes] = []
    for n, (line, kind) in enumerate(zip(lines, kinds, strict=True)):
        line_of = record_line(first + n, log_json, body_slice(line))
        (entries if kind == "E" else events).append(line_of)
    return b"".join(entries), b"".join(events)


def _known_stamp(stamp: Any, timestamps: dict[str, bool]) -> bool:
    """Whether ``committed_at`` is a profile timestamp, remembered as :func:`_check_envelope`
    remembers it."""
    try:
        parse_timestamp(stamp)
    except ProfileError:
        return False
    if len(timestamps) > 64:
        timestamps.clear()
    timestamps[stamp] = True
    return True


def _scan_line(
    line: bytes,
    line_no: int,
    effects: Effects,
    findings: list[Finding],
    timestamps: dict[str, bool],
) -> Scanned:
    data, where = leaf_bytes(line)
    leaf_hash = hashlib.sha256(b"\x00" + data).digest()
    try:
        envelope = leaf_envelope(data, timestamps)
    except LedgerError as exc:
        subject = f"{where[0]}#{where[1]}" if where else f"leaves.jsonl:{line_no}"
        findings.append(Finding("leaf-canonical", subject, "canonical envelope", exc.message))
        log, index = where if where else (None, None)
        return (line_no, log, index, None, leaf_hash, None, None, None, None)
    log, index, kind, body = envelope["log"], envelope["index"], envelope["kind"], envelope["entry"]
    subject = f"{log}#{index}"
    digest = hashlib.blake2b(body_slice(data), digest_size=16).digest()
    extra = None
    if kind == LOG_START:
        extra = body
    elif kind == AUDIT:
        if not (isinstance(body.get("id"), str) and _UUID.fullmatch(body["id"])):
            findings.append(Finding("audit-invalid", subject, "an audit event with an id", None))
    elif kind in ENTRY_KINDS:
        check_entry(body, subject, effects, findings)
    else:
        findings.append(Finding("leaf-canonical", subject, "a known leaf kind", kind))
    prev = bytes.fromhex(envelope["prev"])
    return (line_no, log, index, prev, leaf_hash, envelope["committed_at"], kind, digest, extra)


@dataclass
class CacheResult:
    """What :func:`fold_cache_chunk` returns: the folded cache side, and what was wrong."""

    folded: dict[str, dict[int, int]]
    findings: list[Finding]
    errors: list[tuple[str, str]]
    """(where, why) of lines that are not a well-formed cache row."""


def fold_cache_chunk(
    file: str, lines: Sequence[bytes], first_line: int, secret: bytes, buckets: int = BUCKETS
) -> CacheResult:
    """Fold lines of ``balances.jsonl`` or ``lots.jsonl`` into the tallies' cache side."""
    effects = Effects()
    findings: list[Finding] = []
    errors: list[tuple[str, str]] = []
    if file == "lots.jsonl":
        LOT_FOLDS[-1](lines, first_line, effects, errors, secret, buckets)
        return CacheResult(effects.fold(secret, buckets), [], errors)
    for offset, line in enumerate(lines):
        where = f"{file}:{first_line + offset}"
        if file == "balances.jsonl":
            found = balance_row(line)
            if isinstance(found, str):
                errors.append((where, found))
                continue
            account, value = found
            effects.add("balance", account, value)
            if account.startswith("member:") and value < 0:
                findings.append(Finding("negative-balance", account, 0, value))
        else:
            row = lot_row(line)
            if row is None:
                errors.append((where, "not a lot"))
                continue
            for name, key, value in lot_cache_values(row):
                effects.add(name, key, value)
    return CacheResult(effects.fold(secret, buckets), findings, errors)


def _fold_lots_compiled(
    lines: Sequence[bytes],
    first_line: int,
    effects: Effects,
    errors: list[tuple[str, str]],
    secret: bytes,
    buckets: int,
) -> None:
    """:func:`_fold_lots_python` in C (``audit/_native.c``), folding as it goes."""
    assert _compiled is not None
    listed = lines if type(lines) is list else list(lines)
    kept = kept_slots(secret, buckets)
    folded = _compiled.fold_lots(listed, first_line, secret, buckets, kept, errors)
    effects.folded = dict(zip(TALLIES, folded, strict=True))


def _fold_lots_python(
    lines: Sequence[bytes],
    first_line: int,
    effects: Effects,
    errors: list[tuple[str, str]],
    secret: bytes,
    buckets: int,
) -> None:
    """The lots.jsonl half of :func:`fold_cache_chunk`: :func:`lot_row` and
    :func:`lot_cache_values`, inline, for each line (exact values, which the caller folds under
    ``secret`` into ``buckets``)."""
    loads, decode_error, terms_of = orjson.loads, orjson.JSONDecodeError, lot_terms
    values = effects.values
    terms, state = values["lot-terms"], values["lot-state"]
    cover, pending = values["cover"], values["pending"]
    for line_no, line in enumerate(lines, first_line):
        try:
            row = loads(line)
        except decode_error:
            row = None
        if type(row) is dict:
            remaining, lot_id = row.get("remaining"), row.get("id")
            member, opened_by = row.get("member"), row.get("opened_by")
            if (
                type(remaining) is int
                and isinstance(lot_id, str)
                and isinstance(member, str)
                and isinstance(opened_by, str)
            ):
                is_pending = bool(row.get("pending"))
                terms[lot_id] += terms_of(opened_by, row)
                state[lot_id] += 2 * remaining + is_pending
                if is_pending:
                    pending[member] += remaining
                else:
                    cover[member] += remaining
                continue
        errors.append((f"lots.jsonl:{line_no}", "not a lot"))


def balance_row(line: bytes) -> tuple[str, int] | str:
    """(account, balance) of a line of ``balances.jsonl``, or why it is not one."""
    try:
        row = json.loads(line)
        account = str(row["account"])
        account.encode()  # a lone surrogate (``\\ud800``) is no account, and no key to hash
        return account, int(row["balance"])
    except (ValueError, KeyError, TypeError) as exc:
        return str(exc)


def lot_row(line: bytes) -> dict[str, Any] | None:
    """A line of ``lots.jsonl`` as a dict, or None if it is not a cached lot."""
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    ok = (
        isinstance(row, dict)
        and type(row.get("remaining")) is int
        and all(isinstance(row.get(k), str) for k in ("id", "member", "opened_by"))
    )
    return row if ok else None


def lot_cache_values(row: dict[str, Any]) -> list[tuple[str, str, int]]:
    """What a cached lot contributes to each tally: its terms, its state (2 × remaining +
    pending, as the leaves count it) and its member's available or pending cover."""
    remaining, pending = int(row["remaining"]), bool(row.get("pending"))
    return [
        ("lot-terms", row["id"], lot_terms(row["opened_by"], row)),
        ("lot-state", row["id"], 2 * remaining + pending),
        ("pending" if pending else "cover", row["member"], remaining),
    ]


def leaf_bytes(line: bytes) -> tuple[bytes, tuple[str, int] | None]:
    """The leaf bytes a line of ``leaves.jsonl`` holds, and (log, index) if it is an escape line.

    A line is the leaf's exact bytes. Only bytes that cannot be one line (they contain a newline,
    or are empty: never a canonical leaf) are written as ``{"index", "leaf_base64", "log"}``.
    """
    if line.startswith(b'{"index":'):
        try:
            escape = json.loads(line)
            data = base64.b64decode(escape["leaf_base64"], validate=True)
            return data, (str(escape["log"]), int(escape["index"]))
        except (ValueError, KeyError, TypeError):
            return line, None
    return line, None


def leaf_envelope(data: bytes, timestamps: dict[str, bool] | None = None) -> dict[str, Any]:
    """The envelope of canonical leaf bytes, or :class:`ProfileError` saying why they are not."""
    envelope = canonical_loads(data)
    if type(envelope) is not dict:
        parse_leaf(data)  # the exact path: raises ProfileError with the reason
        envelope = json.loads(data)
    _check_envelope(envelope, timestamps if timestamps is not None else {})
    return envelope


def _check_envelope(envelope: dict[str, Any], timestamps: dict[str, bool]) -> None:
    if envelope.keys() != _ENVELOPE_KEYS:
        raise ProfileError("leaf envelope has missing or unknown fields")
    if envelope["v"] != ENVELOPE_VERSION or type(envelope["v"]) is not int:
        raise ProfileError(f"unknown envelope version {envelope['v']!r}")
    index, log, kind = envelope["index"], envelope["log"], envelope["kind"]
    if type(index) is not int or index < 0 or not isinstance(log, str) or not isinstance(kind, str):
        raise ProfileError("log must be a string, index a non-negative integer, kind a string")
    prev, nonce = envelope["prev"], envelope["nonce"]
    if not (isinstance(prev, str) and _HEX64.fullmatch(prev)):
        raise ProfileError("prev must be 64 lowercase hex digits")
    if not (isinstance(nonce, str) and _HEX32.fullmatch(nonce)):
        raise ProfileError("nonce must be 32 lowercase hex digits")
    body = envelope["entry"]
    if kind != LOG_START and not (isinstance(body, dict) and body.get("kind") == kind):
        raise ProfileError("the envelope's kind differs from its entry's kind")
    if kind == LOG_START and not isinstance(body, dict):
        raise ProfileError("a LOG_START entry must be an object")
    stamp = envelope["committed_at"]
    if type(stamp) is not str or stamp not in timestamps:  # a list or an object is unhashable
        if len(timestamps) > 64:
            timestamps.clear()
        parse_timestamp(stamp)  # raises ProfileError
        timestamps[stamp] = True


def body_slice(data: bytes) -> bytes:
    """The bytes of the envelope's ``entry`` member, cut from canonical leaf bytes.

    In canonical form the members are sorted (committed_at, entry, index, kind, log, nonce, prev,
    v) and strings escape every quote, so the entry runs from the first ``"entry":`` to the last
    ``,"index":``. Its bytes are the canonical bytes of the entry record, so they can be compared
    with the journal tables' record as exported, byte for byte.
    """
    return data[data.index(b'"entry":') + 8 : data.rindex(b',"index":')]


def check_entry(
    body: dict[str, Any], subject: str, effects: Effects, findings: list[Finding]
) -> None:
    """The entry rules of docs/VERIFYING.md §3.3, and the entry's effects on the caches."""
    problem, accounts = _entry_shape(body)
    if problem:
        findings.append(Finding("entry-invalid", subject, "an entry record (§3.2, §3.3)", problem))
        return
    postings = body["postings"]
    if len(postings) < 2:
        findings.append(Finding("entry-postings", subject, 2, len(postings)))
    points = euros = 0
    values = effects.values
    balance, cover, pending = values["balance"], values["cover"], values["pending"]
    for posting, (is_euro, member, is_pending) in zip(postings, accounts, strict=True):
        account, amount = posting["account"], posting["amount"]
        if is_euro:
            euros += amount
        else:
            points += amount
        balance[account] = balance.get(account, 0) + amount
        if member is not None:
            target = pending if is_pending else cover
            target[member] = target.get(member, 0) + amount
    books = effects.books
    for book, total in (("POINTS", points), ("EUR", euros)):
        books[book] += total
        if total:
            findings.append(Finding("entry-balance", f"{subject} {book}", 0, total))
    state = values["lot-state"]
    if body["lots_opened"]:
        terms = values["lot-terms"]
        for lot in body["lots_opened"]:
            lot_id = lot["id"]
            terms[lot_id] = terms.get(lot_id, 0) + lot_terms(body["id"], lot)
            opened = 2 * lot["amount"] + (lot["pending_until"] is not None)
            state[lot_id] = state.get(lot_id, 0) + opened
    for move in body["lot_moves"]:
        lot_id = move["lot"]
        state[lot_id] = state.get(lot_id, 0) + 2 * move["delta"]
    for lot_id in body["lots_released"]:
        state[lot_id] = state.get(lot_id, 0) - 1


def lot_terms(opened_by: str, lot: dict[str, Any]) -> int:
    """A 64-bit digest of a lot's terms and the entry that opened it (compared, never stored):
    the first 8 bytes of SHA-256 of 0x02 ‖ their JSON (the prefix keeps it apart from leaf and
    node hashes)."""
    terms = (opened_by, *map(lot.get, _LOT_ORDER))
    try:
        data = _dumps(terms)
    except orjson.JSONEncodeError:  # a value no profile leaf holds: digest it some other way
        data = repr(terms).encode()
    return _from_bytes(_sha256(b"\x02" + data).digest()[:8], "big")


_dumps, _sha256, _from_bytes = orjson.dumps, hashlib.sha256, int.from_bytes


#: (is a euro account, member code or None, is a member's pending account) of an account name,
#: or None when it breaks the grammar. Accounts repeat, so their parse is kept (bounded).
_Account = tuple[bool, str | None, bool]
_ACCOUNTS: dict[str, _Account | None] = {}


def _account(name: str) -> _Account | None:
    found = _ACCOUNTS.get(name, False)
    if found is not False:
        return found  # type: ignore[return-value]
    match = _ACCOUNT.fullmatch(name)
    parsed = None
    if match is not None:
        parsed = (bool(match[4] or match[5]), match[2], match[3] == "pending")
    if len(_ACCOUNTS) >= 65536:
        _ACCOUNTS.clear()  # flat memory: a cache, not a record of every account
    _ACCOUNTS[name] = parsed
    return parsed


def _entry_shape(body: dict[str, Any]) -> tuple[str | None, list[_Account]]:
    """Why ``body`` is not a well-formed entry record (or None), and its postings' accounts."""
    accounts: list[_Account] = []
    if body.keys() != _ENTRY_KEYS:
        return "missing or unknown members", accounts
    if body["kind"] not in ENTRY_KINDS:
        return f"unknown kind {body['kind']!r}", accounts
    entry_id = body["id"]
    if not (type(entry_id) is str and _UUID.fullmatch(entry_id)):
        return "id is not a UUID", accounts
    postings = body["postings"]
    if type(postings) is not list:
        return "postings is not a list", accounts
    for posting in postings:
        if not (type(posting) is dict and posting.keys() == _POSTING_KEYS):
            return "a posting is not {account, amount}", accounts
        account = posting["account"]
        parsed = _account(account) if type(account) is str else None
        if parsed is None:
            return f"account {account!r} breaks the grammar (§3.3)", accounts
        amount = posting["amount"]
        if type(amount) is not int or amount == 0:
            return "a posting amount is not a non-zero integer", accounts
        accounts.append(parsed)
    if body["kind"] == "ADJUSTMENT" and not (
        isinstance(body["reason"], str) and body["reason"].strip()
    ):
        return "an ADJUSTMENT without a reason", accounts
    return _lots_shape(body), accounts


def _lots_shape(body: dict[str, Any]) -> str | None:
    opened, moves, released = body["lots_opened"], body["lot_moves"], body["lots_released"]
    if not (isinstance(opened, list) and isinstance(moves, list) and isinstance(released, list)):
        return "lots_opened, lot_moves and lots_released must be lists"
    for lot in opened:
        if not (isinstance(lot, dict) and lot.keys() == _LOT_KEYS):
            return "a lot is not {id, member, funder, amount, earned_at, ...}"
        if not (isinstance(lot["id"], str) and _UUID.fullmatch(lot["id"])):
            return "a lot id is not a UUID"
        if type(lot["amount"]) is not int or lot["amount"] <= 0:
            return "a lot amount is not a positive integer"
    for move in moves:
        if not (isinstance(move, dict) and move.keys() == {"lot", "delta"}):
            return "a lot move is not {lot, delta}"
        if not (isinstance(move["lot"], str) and _UUID.fullmatch(move["lot"])):
            return "a lot move's lot is not a UUID"
        if type(move["delta"]) is not int or move["delta"] == 0:
            return "a lot move's delta is not a non-zero integer"
    if not all(isinstance(i, str) and _UUID.fullmatch(i) for i in released):
        return "a released lot is not a UUID"
    return None


#: The inlined loops, and the builders of a run's record lines: the fastest last, the Python
#: one first, then the C one where it was built.
SCAN_LOOPS = [_scan_python]
RECORDS: list[Callable[[list[bytes], str, int, bytes], tuple[bytes, bytes]]] = [_records_python]
LOT_FOLDS = [_fold_lots_python]
if _compiled is not None:
    _compiled.configure(
        loads=orjson.loads,
        dumps=orjson.dumps,
        decode_error=orjson.JSONDecodeError,
        encode_error=orjson.JSONEncodeError,
        entry_kinds=ENTRY_KINDS,
        audit_kind=AUDIT,
        accounts=_ACCOUNTS,
        parse_account=_account,
        known_stamp=_known_stamp,
        wide_text_ok=wide_text_round_trips,
        is_normalized=unicodedata.is_normalized,
        lot_terms=lot_terms,
        envelope_version=ENVELOPE_VERSION,
        max_depth=MAX_DEPTH,
    )
    SCAN_LOOPS.append(_scan_compiled)
    RECORDS.append(_compiled.records)
    LOT_FOLDS.append(_fold_lots_compiled)
