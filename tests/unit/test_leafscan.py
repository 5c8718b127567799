"""The bundle verifier's fast paths give exactly what the leaf-by-leaf checks give.

:func:`audit.leafscan.scan_chunk` checks most leaves inline and hands the rest to
:func:`audit.leafscan._scan_line`; the bundle verifier takes a clean chunk as one run and grows
the Merkle tree a complete subtree at a time. Each is held here to the plain version: the same
per-leaf tuples, findings, tallies and book sums, the same tree.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import unicodedata
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit import bundle, leafscan, tally
from audit.bundle import _push, _push_many, _root, _split_lines
from audit.leafscan import SCAN_LOOPS, Effects, _scan_line, scan_chunk
from ledger.journal import build_leaf

LOG = "test.example/ledger"
SECRET = bytes(range(32))
BUCKETS = 64


def _uuid(rng: random.Random) -> str:
    value = f"{rng.getrandbits(128):032x}"
    return f"{value[:8]}-{value[8:12]}-4{value[13:16]}-a{value[17:20]}-{value[20:]}"


def _entry(rng: random.Random, kind: str = "EARN") -> dict[str, Any]:
    member = f"m_{rng.randrange(20):04d}"
    points = rng.randint(1, 500)
    record: dict[str, Any] = {
        "id": _uuid(rng),
        "kind": kind,
        "business_time": "2026-03-02T09:00:00.000000Z",
        "booked_at": "2026-03-02T09:00:00.000000Z",
        "partner": "P01",
        "credential": "key-p01",
        "idempotency_key": f"k-{rng.getrandbits(32):08x}",
        "refers_to": None,
        "reason": "a reason" if kind == "ADJUSTMENT" else None,
        "postings": [
            {"account": "partner:P01:issued", "amount": -points},
            {"account": f"member:{member}:available", "amount": points},
        ],
        "lots_opened": [],
        "lot_moves": [],
        "lots_released": [],
        "attributes": {},
    }
    if kind == "EARN":
        record["lots_opened"] = [
            {
                "id": _uuid(rng),
                "member": member,
                "funder": "P01",
                "amount": points,
                "earned_at": "2026-03-02T09:00:00.000000Z",
                "expires_at": "2029-03-02T09:00:00.000000Z",
                "pending_until": None if rng.random() < 0.7 else "2026-04-01T00:00:00.000000Z",
                "price_version": "P01/v1",
            }
        ]
    elif kind == "BURN":
        record["postings"] = [
            {"account": f"member:{member}:available", "amount": -points},
            {"account": "partner:P01:redeemed", "amount": points},
        ]
        record["lot_moves"] = [{"lot": _uuid(rng), "delta": -points}]
    elif kind == "EXPIRE":
        record["postings"] = [
            {"account": f"member:{member}:pending", "amount": -points},
            {"account": "program:breakage", "amount": points},
        ]
        record["lots_released"] = [_uuid(rng)]
    elif kind == "SETTLEMENT":
        record["postings"] = [
            {"account": "operator:bank", "amount": -points},
            {"account": "partner:P01:settlement", "amount": points},
        ]
    return record


def _balanced(n: int, debit: str, credit: str) -> list[dict[str, Any]]:
    """``n`` postings that sum to zero, alternating between two accounts."""
    return [{"account": (credit, debit)[i % 2], "amount": (1, -1)[i % 2]} for i in range(n)]


def _audit(rng: random.Random) -> dict[str, Any]:
    return {"kind": "AUDIT", "id": _uuid(rng), "action": "member.read", "before": None}


class _Log:
    """Leaves of one log, chained, as the integrator writes them."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.prev = bytes(32)
        self.index = 0
        self.at = datetime(2026, 3, 2, 9, tzinfo=UTC)

    def leaf(self, kind: str, body: dict[str, Any]) -> bytes:
        data = build_leaf(
            log=LOG,
            index=self.index,
            prev=self.prev,
            kind=kind,
            body=body,
            committed_at=self.at,
            nonce=self.rng.randbytes(16),
        ).data
        self.prev = hashlib.sha256(b"\x00" + data).digest()
        self.index += 1
        self.at += timedelta(microseconds=self.rng.choice([0, 0, 1]))
        return data


def _sorted_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _variants(log: _Log) -> list[bytes]:
    """Valid leaves of every shape, and leaves wrong in every way the checks look for."""
    rng = log.rng
    lines = [log.leaf(kind, _entry(rng, kind)) for kind in ("EARN", "BURN", "EXPIRE")]
    lines += [log.leaf("SETTLEMENT", _entry(rng, "SETTLEMENT"))]
    lines += [log.leaf("ADJUSTMENT", _entry(rng, "ADJUSTMENT")), log.leaf("AUDIT", _audit(rng))]
    lines.append(log.leaf("LOG_START", {"previous_log": None}))

    def edited(change: Any, kind: str = "EARN") -> bytes:
        body = _entry(rng, kind)
        change(body)
        return log.leaf(body["kind"], body)

    def posting(n: int, **fields: Any) -> Any:
        return lambda b: b["postings"][n].update(fields)

    lines += [
        edited(posting(0, amount=-1)),  # unbalanced
        edited(lambda b: b["postings"].pop()),  # one posting
        edited(lambda b: b["postings"].clear()),
        edited(posting(1, account="member:bad name:available")),
        edited(posting(0, account="nobody:P01:issued")),
        edited(posting(0, amount=0)),
        edited(lambda b: b["postings"].append({"account": "program:funded", "amount": 0})),
        edited(posting(0, amount=True)),
        edited(posting(0, amount="5")),
        edited(lambda b: b["postings"][0].update(note="x")),
        edited(lambda b: b.update(postings={})),
        edited(lambda b: b.update(postings=[{"account": "operator:bank", "amount": 3}] * 2)),
        edited(lambda b: b.update(id="NOT-A-UUID")),
        edited(lambda b: b.update(id=7)),
        edited(lambda b: b.update(id="D23F0824-128b-4f33-8c5c-7fd0a6a3a450")),
        edited(lambda b: b.update(id="d23f08241128b14f3318c5c17fd0a6a3a450")),
        edited(lambda b: b.update(id="d23f0824-128b-4f33-8c5c-7fd0a6a3a45g")),
        edited(lambda b: b.update(extra=1)),
        edited(lambda b: b.pop("attributes")),
        edited(lambda b: b.update(reason=" "), "ADJUSTMENT"),
        edited(lambda b: b.update(reason=None), "ADJUSTMENT"),
        edited(lambda b: b["lots_opened"][0].update(amount=0)),
        edited(lambda b: b["lots_opened"][0].update(id="x")),
        edited(lambda b: b["lots_opened"][0].pop("funder")),
        edited(lambda b: b["lots_opened"].append([])),
        edited(lambda b: b["lot_moves"][0].update(delta=0), "BURN"),
        edited(lambda b: b["lot_moves"][0].update(lot=None), "BURN"),
        edited(lambda b: b["lot_moves"][0].update(extra=1), "BURN"),
        edited(lambda b: b.update(lots_released=["nope"]), "EXPIRE"),
        edited(lambda b: b.update(lots_released={}), "EXPIRE"),
        edited(lambda b: b.update(kind="BURN")),  # the envelope says EARN
        edited(lambda b: b.update(kind="NOT_A_KIND")),
        edited(lambda b: b.update(attributes={"ok": [1, 2, {"deep": "é"}]})),
        edited(lambda b: b.update(attributes={"n": -9007199254740991})),
        edited(lambda b: b.update(reason="  why  "), "ADJUSTMENT"),
        edited(lambda b: b.update(reason=5), "ADJUSTMENT"),
        # More postings, lots and moves than the compiled loop holds at once (16).
        edited(lambda b: b.update(postings=_balanced(20, "operator:bank", "program:funded"))),
        edited(lambda b: b.update(lots_opened=b["lots_opened"] * 17)),
        edited(lambda b: b.update(lot_moves=b["lot_moves"] * 20), "BURN"),
        edited(lambda b: b.update(lots_released=b["lots_released"] * 20), "EXPIRE"),
        edited(lambda b: b.update(attributes={"why": "71 pts: 5.00 € × 2", "at": [1, {"x": 2}]})),
        edited(
            lambda b: b.update(postings=[{"account": "operator:bank", "amount": 2**53 - 1}] * 2)
        ),
    ]
    good, audit = lines[0], lines[5]
    assert b'"kind":"AUDIT"' in audit
    envelope = json.loads(good)
    for key, value in [
        ("v", 2),
        ("v", True),
        ("index", -1),
        ("index", "3"),
        ("log", 5),
        ("prev", "AB" * 32),
        ("prev", "ab" * 31),
        ("nonce", "cd" * 15),
        ("committed_at", "2026-02-30T00:00:00.000000Z"),
        ("committed_at", "yesterday"),
        ("committed_at", ["2026-03-02T09:00:00.000000Z"]),  # unhashable
        ("committed_at", {"at": 1}),
        ("committed_at", None),
        ("v", 1.0),
        ("index", 2**53),
        ("index", 2**64),
        ("prev", None),
        ("kind", "AUDIT"),
        ("entry", []),
    ]:
        lines.append(_sorted_json({**envelope, key: value}))
    lines.append(_sorted_json({k: v for k, v in envelope.items() if k != "nonce"}))
    body = good[good.index(b'"entry":') + 8 : good.rindex(b',"index":')]
    lines += [
        good.replace(b'"amount":', b'"amount": ', 1),  # not canonical
        good.replace(b'"attributes":{}', b'"attributes":{"f":1.5}'),
        good.replace(b'"attributes":{}', b'"attributes":{"f":[2.0,1E3]}'),
        good.replace(b'"attributes":{}', b'"attributes":{"t":"12:00.5, [1.5"}'),
        good.replace(b'"attributes":{}', b'"attributes":{"u":"\\u00e9"}'),
        good.replace(b'"attributes":{}', '"attributes":{"u":"é"}'.encode()),
        good.replace(b'"attributes":{}', '"attributes":{"u":"71 pts: 5.00 € ×2"}'.encode()),
        good.replace(b'"attributes":{}', '"attributes":{"u":"e\u0301"}'.encode()),  # not NFC
        good.replace(b'"attributes":{}', '"attributes":{"a":"😀","é":1}'.encode()),
        good.replace(b'"attributes":{}', '"attributes":{"é":1,"ü":"x"}'.encode()),
        # In code point order, which orjson keeps and RFC 8785 does not (U+FFFF after 😀).
        good.replace(b'"attributes":{}', '"attributes":{"\uffff":1,"😀":2}'.encode()),
        good.replace(b'"attributes":{}', b'"attributes":{"u":"\xc3"}'),  # not UTF-8
        good.replace(b'"attributes":{}', b'"attributes":{"d":' + b"[" * 70 + b"]" * 70 + b"}"),
        good.replace(b'"attributes":{}', b'"attributes":{"d":' + b"[" * 40 + b"]" * 40 + b"}"),
        good.replace(b'"attributes":{}', b'"attributes":{"a":1,"a":2}'),
        # The canonical form the compiled loop checks on the bytes, case by case.
        good.replace(b'"attributes":{}', b'"attributes":{"b":1,"a":2}'),
        good.replace(b'"attributes":{}', b'"attributes":{"ab":1,"a":2}'),
        good.replace(b'"attributes":{}', b'"attributes":{"":1,"a":[{"y":0,"x":1}]}'),
        good.replace(b'"attributes":{}', b'"attributes":{"":1,"a":[{"x":0,"y":-1}]}'),
        good.replace(b'"attributes":{}', b'"attributes":{"a":[1, 2]}'),
        good.replace(b'"attributes":{}', b'"attributes":{"a":-0}'),
        good.replace(b'"attributes":{}', b'"attributes":{"a":"-0 \x7f"}'),
        good.replace(b'"attributes":{}', b'"attributes":{"a":9007199254740992}'),
        good.replace(b'"attributes":{}', b'"attributes":{"a":-9007199254740992}'),
        good.replace(b'"attributes":{}', b'"attributes":{"a":true,"b":[false,null]}'),
        good.replace(b'"amount":', b'"amount":-0,"amount":', 1),
        good.replace(body, b"[]"),
        # Numbers with a fraction where no check looks at the type: the bytes must still be read.
        good.replace(b'"reason":null', b'"reason":1.5'),
        good.replace(b'"reason":null', b'"reason":1.0'),
        good.replace(b'"reason":null', b'"reason":15'),
        good.replace(b'"partner":"P01"', b'"partner":[2.0]'),
        # Raw control characters in text no check reads: JSON refuses them unescaped.
        good.replace(b'"partner":"P01"', b'"partner":"P\x0001"'),
        good.replace(b'"partner":"P01"', b'"partner":"P\t01"'),
        good.replace(b'"credential":"key-p01"', b'"credential":"key\x1f"'),
        good.replace(b'"refers_to":null', b'"refers_to":{"x":[1.5]}'),
        good.replace(b'"funder":"P01"', b'"funder":1.0'),
        good.replace(b'"price_version":"P01/v1"', b'"price_version":[0,1.25]'),
        good.replace(b'"attributes":{}', b'"attributes":[]'),
        good.replace(b'"attributes":{}', b'"attributes":0.0'),
        audit.replace(b'"before":null', b'"before":0.5'),
        audit.replace(b'"before":null', b'"before":5'),
        good[:-1],
        b"",
        b"not json",
        b"[1,2]",
        _sorted_json({"index": 99, "leaf_base64": base64.b64encode(good).decode(), "log": LOG}),
        _sorted_json({"index": 99, "leaf_base64": "!!", "log": LOG}),
    ]
    return lines


#: The fast paths, each with a Python version and a C twin (audit/_native.c) where it was built.
FAST_PATHS = [(leafscan, "SCAN_LOOPS"), (leafscan, "RECORDS"), (leafscan, "LOT_FOLDS")]
FAST_PATHS += [(tally, "FOLDS"), (bundle, "SUBTREE_ROOTS"), (bundle, "LINE_COUNTS")]
IMPLEMENTATIONS = ["python", "compiled"] if len(SCAN_LOOPS) > 1 else ["python"]


@pytest.fixture(params=IMPLEMENTATIONS)
def loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each implementation of the fast paths in turn: Python, and C where it was built."""
    for module, name in FAST_PATHS:
        chosen = getattr(module, name)[0 if request.param == "python" else -1]
        monkeypatch.setattr(module, name, [chosen])
    return request.param


def test_the_compiled_twins_are_built_in_ci() -> None:
    """CI installs with a C compiler: there the C twins must exist, or their tests would
    quietly run the Python versions only."""
    if os.environ.get("CI") != "true":
        pytest.skip("outside CI a build without a C compiler is allowed")
    assert IMPLEMENTATIONS == ["python", "compiled"]
    assert all(len(getattr(module, name)) == 2 for module, name in FAST_PATHS)


def _python_fold(values: dict[str, dict[str, int]]) -> dict[str, dict[int, int]]:
    """The reference fold: :func:`audit.tally._fold_python` over each tally."""
    return {name: tally._fold_python(v, SECRET, BUCKETS, {}) for name, v in values.items()}


def _reference(lines: list[bytes], first_line: int) -> tuple[Any, ...]:
    """The leaf-by-leaf scan: every line through :func:`_scan_line`."""
    effects, findings, timestamps = Effects(), [], {}
    leaves = [
        _scan_line(line, first_line + n, effects, findings, timestamps)
        for n, line in enumerate(lines)
    ]
    return leaves, findings, _python_fold(effects.values), effects.books


@pytest.mark.parametrize("seed", range(6))
def test_the_fast_scan_agrees_with_the_leaf_by_leaf_scan(seed: int, loop: Any) -> None:
    log = _Log(seed)
    rng = random.Random(seed)
    lines = _variants(log)
    lines += [log.leaf("EARN", _entry(rng)) for _ in range(40)]
    rng.shuffle(lines)
    expected = _reference(lines, 11)
    result = scan_chunk(lines, 11, SECRET, BUCKETS, runs=False)
    assert result.run is None
    assert result.leaves == expected[0]
    assert result.findings == expected[1]
    assert result.folded == expected[2]
    assert result.books == expected[3]
    assert len(result.findings) > 40  # the bad variants were seen as bad


def test_a_clean_chunk_comes_back_as_one_run(loop: Any) -> None:
    log = _Log(1)
    rng = log.rng
    kinds = ["EARN", "BURN", "AUDIT", "EXPIRE", "SETTLEMENT", "ADJUSTMENT"] * 5
    lines = [
        log.leaf(kind, _audit(rng) if kind == "AUDIT" else _entry(rng, kind)) for kind in kinds
    ]
    result = scan_chunk(lines, 1, SECRET, BUCKETS)
    expected = _reference(lines, 1)
    assert result.run is not None
    assert result.leaves == []
    assert result.findings == []
    assert (result.folded, result.books) == (expected[2], expected[3])
    run = result.run
    assert (run.log, run.first, run.prev) == (LOG, 0, bytes(32))
    assert run.hashes == b"".join(leaf[4] for leaf in expected[0])
    assert run.kinds == "".join("A" if kind == "AUDIT" else "E" for kind in kinds)
    assert (run.first_stamp, run.last_stamp) == (expected[0][0][5], expected[0][-1][5])


@pytest.mark.parametrize(
    "break_it",
    [
        lambda lines: lines.pop(3),  # a gap
        lambda lines: lines.insert(2, lines.pop(5)),  # reordered
        lambda lines: lines.insert(4, lines[4]),  # repeated
        lambda lines: lines.__setitem__(6, lines[6].replace(b'"prev":"', b'"prev":"0', 1)),
        lambda lines: lines.__setitem__(7, lines[7].replace(LOG.encode(), b"other.example/x")),
        # Well formed, but not the hash of the leaf before.
        lambda lines: lines.__setitem__(
            8, re.sub(rb'"prev":"\w{64}"', b'"prev":"' + b"1" * 64 + b'"', lines[8])
        ),
    ],
)
def test_a_chunk_that_does_not_hold_together_is_no_run(break_it: Any, loop: Any) -> None:
    log = _Log(2)
    lines = [log.leaf("EARN", _entry(log.rng)) for _ in range(12)]
    break_it(lines)
    result = scan_chunk(lines, 1, SECRET, BUCKETS)
    expected = _reference(lines, 1)
    assert result.run is None
    assert (result.leaves, result.findings, result.folded) == expected[:3]


def test_an_index_skipped_on_an_intact_chain_is_no_run(loop: Any) -> None:
    log = _Log(4)
    lines = [log.leaf("EARN", _entry(log.rng)) for _ in range(4)]
    log.index += 1
    lines += [log.leaf("EARN", _entry(log.rng)) for _ in range(4)]
    result = scan_chunk(lines, 1, SECRET, BUCKETS)
    assert result.run is None
    assert result.leaves == _reference(lines, 1)[0]


def test_a_stamp_going_back_is_no_run(loop: Any) -> None:
    log = _Log(3)
    lines = [log.leaf("EARN", _entry(log.rng)) for _ in range(4)]
    log.at -= timedelta(seconds=1)
    lines += [log.leaf("EARN", _entry(log.rng)) for _ in range(4)]
    result = scan_chunk(lines, 1, SECRET, BUCKETS)
    assert result.run is None
    assert result.leaves == _reference(lines, 1)[0]


def test_a_leaf_no_run_holds_breaks_the_run_where_it_stands(loop: Any) -> None:
    """A LOG_START leaf on an intact chain is fine, but no entry or audit event: the leaves
    before it, held as a run until then, come back one by one, in order, as the rest do."""
    log = _Log(7)
    lines = [log.leaf("EARN", _entry(log.rng)) for _ in range(5)]
    lines.append(log.leaf("LOG_START", {"previous_log": None}))
    lines += [log.leaf("BURN", _entry(log.rng, "BURN")) for _ in range(3)]
    result = scan_chunk(lines, 21, SECRET, BUCKETS)
    expected = _reference(lines, 21)
    assert result.run is None
    assert (result.leaves, result.findings, result.folded) == expected[:3]
    assert [leaf[6] for leaf in result.leaves] == ["EARN"] * 5 + ["LOG_START"] + ["BURN"] * 3


@pytest.mark.parametrize("start", [0, 1, 3, 6, 8, 255, 1000])
def test_growing_the_tree_a_subtree_at_a_time_equals_leaf_by_leaf(start: int, loop: str) -> None:
    rng = random.Random(start)
    hashes = [rng.randbytes(32) for _ in range(start + 700)]
    one: list[tuple[int, bytes]] = []
    for leaf in hashes:
        _push(one, leaf)
    many: list[tuple[int, bytes]] = []
    for leaf in hashes[:start]:
        _push(many, leaf)
    done = start
    for step in (1, 2, 5, 64, 100, 128, 400):
        _push_many(many, b"".join(hashes[done : done + step]))
        done += step
        expected: list[tuple[int, bytes]] = []
        for leaf in hashes[:done]:
            _push(expected, leaf)
        assert many == expected
        assert _root(many) == _root(expected)
    assert many == one


def test_folding_cached_lots_equals_the_row_by_row_fold(loop: str) -> None:
    from audit.leafscan import fold_cache_chunk, lot_cache_values, lot_row

    rng = random.Random(5)
    rows: list[bytes] = []
    for n in range(30):
        lot = _entry(rng)["lots_opened"][0]
        row = {**lot, "opened_by": _uuid(rng), "remaining": n % 7, "pending": n % 3 == 0}
        rows.append(_sorted_json(row))
    rows += [
        b"not json",
        b"[]",
        _sorted_json({"id": "x", "member": "m", "opened_by": "e", "remaining": "1"}),
        _sorted_json({"id": "x", "member": 5, "opened_by": "e", "remaining": 1}),
        _sorted_json({"id": "x", "member": "m", "opened_by": "e", "remaining": True}),
        _sorted_json({"id": "x", "member": "m", "opened_by": "e", "remaining": 2, "amount": 1.5}),
        _sorted_json({"id": "y", "member": "m", "opened_by": "e", "remaining": 2**70}),
        _sorted_json({"id": "z", "member": "m", "opened_by": "e", "remaining": -3, "pending": 1}),
        _sorted_json({"id": "w", "member": "m", "opened_by": "e", "remaining": 0, "x": [{}]}),
    ]
    # Terms that are not plain text, integers and null: written by orjson, or left to Python.
    for n, funder in enumerate(['P"1', "P\\1", "P\n1", "Pé€", True, 2**64 - 1, 2**64, [1]]):
        lot = {**_entry(rng)["lots_opened"][0], "funder": funder}
        rows.append(_sorted_json({**lot, "opened_by": f"e{n}", "remaining": n, "pending": False}))
    effects, errors = Effects(), []
    for n, line in enumerate(rows, 3):
        row = lot_row(line)
        if row is None:
            errors.append((f"lots.jsonl:{n}", "not a lot"))
            continue
        for name, key, value in lot_cache_values(row):
            effects.add(name, key, value)
    result = fold_cache_chunk("lots.jsonl", rows, 3, SECRET, BUCKETS)
    assert result.errors == errors
    assert len(errors) == 6  # 2**70 reads as a float
    assert result.folded == _python_fold(effects.values)
    assert result.findings == []


def test_the_tables_lines_are_taken_in_one_piece_or_one_by_one(tmp_path: Any) -> None:
    """_Joined takes the lines the exporter writes for a run of leaves in one comparison; when
    they differ, nothing is taken, and line by line the same lines come back as before."""
    from audit.bundle import _Joined
    from audit.leafscan import Lines
    from audit.leafscan import plain_json as _plain_json

    def line(index: int, record: bytes, log: str = LOG) -> bytes:
        return b'{"index":%d,"log":"%s","queued":false,"record":%s}\n' % (
            index,
            log.encode(),
            record,
        )

    records = [b'{"id":"%d","n":[1,2]}' % n for n in range(6)]
    path = tmp_path / "entries.jsonl"
    text = b"".join(line(n, records[n]) for n in range(3)) + b"garbage\n"
    text += b"".join(line(n, records[n]) for n in range(4, 6))
    path.write_bytes(text[:-1])  # no newline after the last line
    errors: list[tuple[str, str]] = []
    joined = _Joined(path, lambda log: 0, lambda where, why: errors.append((where, why)))
    assert not joined.match_lines(Lines.of(line(0, records[0]) + line(1, records[2]), 2))
    assert joined.match_lines(Lines.of(line(0, records[0]) + line(1, records[1]), 2))
    assert joined.match((0, 2), line(2, records[2]), records[2])
    assert not joined.match((0, 4), line(4, records[4]), records[4])  # garbage first
    taken = joined.take((0, 4))
    assert errors == [("entries.jsonl:4", "not an {index, log, queued, record} line")]
    assert taken is not None
    assert (taken.key, taken.record, taken.line_no) == ((0, 4), records[4], 5)
    assert not joined.match_lines(Lines.of(line(5, records[5]), 1))  # ends without a newline
    assert not joined.match((0, 5), line(5, records[5]), records[5])
    last = joined.take((0, 5))  # parsed: the caller compares what it records
    assert last is not None
    assert (last.record, last.line_no) == (records[5], 6)
    assert list(joined.rest()) == []
    assert _plain_json(LOG) == b'"' + LOG.encode() + b'"'
    assert _plain_json('a"b') is None
    assert _plain_json("a\\b") is None
    assert _plain_json("a\nb") is None


compiled_only = pytest.mark.skipif(
    len(IMPLEMENTATIONS) == 1, reason="built without a C compiler: no twin to compare"
)
# Text of every kind the NFC test and the UTF-16 key order care about: ASCII, Latin with and
# without combining marks, Hangul (which composes), characters beyond U+FFFF.
_TEXT = st.lists(
    st.one_of(
        st.sampled_from(["a", "é", "e\u0301", "\u0301", "\u1100", "\u1161", "€", "\uffff", "😀"]),
        st.characters(blacklist_categories=("Cs",)),
    ),
    max_size=6,
).map("".join)


@compiled_only
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.dictionaries(
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=8),
        st.one_of(st.integers(-(2**53), 2**53), st.integers(-(2**100), 2**100), st.just(0)),
        max_size=40,
    ),
    buckets=st.integers(1, 5000),
)
def test_the_compiled_fold_equals_the_python_fold(values: dict[str, int], buckets: int) -> None:
    python_slots: dict[str, tuple[int, int]] = {}
    compiled_slots: dict[str, tuple[int, int]] = {}
    python, compiled = tally.FOLDS[0], tally.FOLDS[-1]
    for _ in range(2):  # the second time from the slots the first kept
        expected = python(values, SECRET, buckets, python_slots)
        assert compiled(values, SECRET, buckets, compiled_slots) == expected
        assert compiled_slots == python_slots


@compiled_only
def test_the_compiled_fold_refuses_more_buckets_than_it_can_hold() -> None:
    """Five tallies of 2^64 / 5 buckets would wrap the size of the C fold's array around."""
    with pytest.raises(ValueError, match="buckets"):
        tally.FOLDS[-1]({"k": 1}, SECRET, 3689348814741910324, {})
    with pytest.raises(ValueError, match="buckets"):
        scan_chunk([b"{}"], 1, SECRET, 3689348814741910324)


@compiled_only
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=_TEXT, value=_TEXT, other=_TEXT)
def test_the_compiled_scan_judges_text_as_the_leaf_by_leaf_scan(
    key: str, value: str, other: str
) -> None:
    """NFC is checked string by string in C and on the whole line in Python; keys beyond
    U+FFFF sort differently in UTF-16. Leaves written both canonically (build_leaf) and in code
    point order (orjson) must get the same verdict and tallies both ways."""
    log = _Log(9)
    body = _entry(log.rng)
    nfc = {t: unicodedata.normalize("NFC", t) for t in (key, value, other)}
    body["attributes"] = {nfc[key]: nfc[value], "x" + nfc[key]: [nfc[other], {nfc[other]: 1}]}
    canonical = log.leaf("EARN", body)  # the profile's own bytes; then text as it came
    swapped = json.loads(canonical)
    swapped["entry"]["attributes"] = {other: key, value: 2}
    lines = [canonical, orjson.dumps(swapped, option=orjson.OPT_SORT_KEYS)]
    expected = _reference(lines, 1)
    for pick in (0, -1):
        leafscan.SCAN_LOOPS, saved = [leafscan.SCAN_LOOPS[pick]], leafscan.SCAN_LOOPS
        try:
            result = scan_chunk(lines, 1, SECRET, BUCKETS, runs=False)
        finally:
            leafscan.SCAN_LOOPS = saved
        assert (result.leaves, result.findings, result.folded) == expected[:3]


# Bytes a mutation puts into a leaf: JSON's own, whitespace, controls, escapes, and UTF-8 that is
# complete ("é", "€"), cut short, or a surrogate's.
_MUTATIONS = [bytes([b]) for b in b'{}[]":,-0123456789.eE+ tfnrul\t\\\x00\x1f\x7f']
_MUTATIONS += ["é".encode(), "€".encode(), b"\xc3", b"\xed\xa0\x80", b"\xf0\x9f\x98\x80"]


@compiled_only
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["EARN", "BURN", "EXPIRE", "ADJUSTMENT"]),
    edits=st.lists(
        st.tuples(
            st.floats(0, 1),
            st.sampled_from(["insert", "delete", "replace"]),
            st.sampled_from(_MUTATIONS),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_the_compiled_scan_judges_mutated_leaves_as_the_leaf_by_leaf_scan(
    kind: str, edits: list[tuple[float, str, bytes]]
) -> None:
    """The C loop reads a leaf's bytes itself (parse_canonical): whatever a few edited bytes
    make of a leaf, valid or not, canonical or not, it must take exactly the leaves the
    leaf-by-leaf code accepts, with the same tallies."""
    log = _Log(4)
    body = _entry(log.rng, kind)
    body["attributes"] = {"n": [0, -12, {"t": True, "u": None}], "why": "5.00 € × 2"}
    line = bytearray(log.leaf(kind, body))
    for where, how, data in edits:
        at = int(where * len(line))
        if how == "insert":
            line[at:at] = data
        else:
            line[at : at + (len(data) if how == "replace" else 1)] = (
                b"" if how == "delete" else data
            )
    lines = [bytes(line)]
    expected = _reference(lines, 1)
    leafscan.SCAN_LOOPS, saved = [leafscan.SCAN_LOOPS[-1]], leafscan.SCAN_LOOPS
    try:
        result = scan_chunk(lines, 1, SECRET, BUCKETS, runs=False)
    finally:
        leafscan.SCAN_LOOPS = saved
    assert (result.leaves, result.findings, result.folded, result.books) == expected


@compiled_only
def test_the_compiled_records_equal_the_python_records() -> None:
    log = _Log(6)
    kinds = "EEAEAAE"
    lines = [
        log.leaf("AUDIT", _audit(log.rng)) if k == "A" else log.leaf("EARN", _entry(log.rng))
        for k in kinds
    ]
    for log_json in (b'"' + LOG.encode() + b'"', b'"x%sy%%"'):
        for first in (0, 7, 2**40):
            expected = leafscan.RECORDS[0](lines, kinds, first, log_json)
            assert leafscan.RECORDS[-1](lines, kinds, first, log_json) == expected
    assert expected[0].count(b"\n") == 4
    assert expected[1].count(b"\n") == 3
    with pytest.raises(ValueError, match="without an entry record"):
        leafscan.RECORDS[-1]([b"{}"], "E", 0, b'"l"')
    with pytest.raises(ValueError, match="one ASCII kind letter per line"):
        leafscan.RECORDS[-1](lines, "E", 0, b'"l"')


@pytest.mark.parametrize("tail", [b"", b"\n", b"no newline at the end"])
def test_chunks_are_whole_lines_that_cover_the_file(tmp_path: Any, tail: bytes, loop: str) -> None:
    from audit.bundle import _byte_chunks

    rng = random.Random(3)
    text = b"".join(b"x" * rng.choice([0, 1, 5, 40, 200]) + b"\n" for _ in range(60)) + tail
    path = tmp_path / "leaves.jsonl"
    path.write_bytes(text)
    for size in (1, 2, 7, 64, 199, 201, 4096, 1 << 20):
        read_digest: Future[str | None] = Future()
        chunks = list(_byte_chunks(path, size, read_digest))
        assert b"".join(chunk.data for chunk in chunks) == text
        assert read_digest.result() == hashlib.sha256(text).hexdigest()  # for the manifest
        assert [chunk.offset for chunk in chunks] == [
            sum(c.length for c in chunks[:n]) for n in range(len(chunks))
        ]
        for chunk in chunks[:-1]:
            assert chunk.data.endswith(b"\n")
        lines = [line for chunk in chunks for line in chunk.lines()]
        assert lines == _split_lines(text)
        numbers = [chunk.first_line + n for chunk in chunks for n in range(len(chunk.lines()))]
        assert numbers == list(range(1, len(lines) + 1))
    assert list(_byte_chunks(tmp_path / "missing.jsonl")) == []
    missing: Future[str | None] = Future()
    assert list(_byte_chunks(tmp_path / "missing.jsonl", 64, missing)) == []
    assert missing.result() is None


@compiled_only
def test_the_compiled_subtree_root_equals_rfc_6962() -> None:
    from ledger import merkle

    rng = random.Random(8)
    for size in (1, 2, 4, 64, 1024):
        hashes = [rng.randbytes(32) for _ in range(size)]
        expected = bundle._subtree_root_python(b"".join(hashes))
        assert bundle.SUBTREE_ROOTS[-1](b"".join(hashes)) == expected
        peaks: list[tuple[int, bytes]] = []
        for leaf in hashes:
            _push(peaks, leaf)
        assert peaks == [(size.bit_length() - 1, expected)]
    assert merkle.node_hash(b"a" * 32, b"b" * 32) == bundle.SUBTREE_ROOTS[-1](b"a" * 32 + b"b" * 32)
    for bad in (b"", b"x" * 31, b"x" * 96):
        with pytest.raises(ValueError, match="a power of two"):
            bundle._native.subtree_root(bad)


def test_a_cached_account_that_is_no_text_is_a_malformed_row(loop: str) -> None:
    """A lone surrogate is valid JSON and no UTF-8: the row is reported, the fold goes on."""
    from audit.leafscan import fold_cache_chunk

    rows = [b'{"account":"\\ud800","balance":1}', b'{"account":"program:funded","balance":-1}']
    result = fold_cache_chunk("balances.jsonl", rows, 1, SECRET, BUCKETS)
    assert [where for where, _ in result.errors] == ["balances.jsonl:1"]
    assert result.folded == _python_fold({"balance": {"program:funded": -1}, **_empty()})


def _empty() -> dict[str, dict[str, int]]:
    return {name: {} for name in leafscan.TALLIES if name != "balance"}


def test_a_chunk_holding_an_escape_line_is_no_run(loop: str) -> None:
    """The record of an escaped leaf is in its decoded bytes, which a run's record lines are not
    cut from: such a chunk comes back leaf by leaf."""
    log = _Log(12)
    lines = [log.leaf("EARN", _entry(log.rng)) for _ in range(4)]
    escaped = {"index": 2, "leaf_base64": base64.b64encode(lines[2]).decode(), "log": LOG}
    lines[2] = _sorted_json(escaped)
    result = scan_chunk(lines, 1, SECRET, BUCKETS)
    assert result.run is None
    assert result.findings == []
    assert result.leaves == _reference(lines, 1)[0]


@compiled_only
def test_the_compiled_line_count_equals_the_python_one() -> None:
    block = b"a\nbb\n\n" + b"x" * 5000 + b"\nend"
    for end in (0, 1, 2, 5, 6, 5006, 5007, len(block)):
        assert bundle.LINE_COUNTS[-1](block, end) == bundle._count_lines(block, end)
    for end in (-1, len(block) + 1):
        with pytest.raises(ValueError, match="end beyond the block"):
            bundle.LINE_COUNTS[-1](block, end)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    indices=st.lists(st.integers(0, 10**6), min_size=1, max_size=60, unique=True).map(sorted),
    before=st.integers(0, 5),
    after=st.integers(0, 5),
    queued=st.integers(0, 3),
    cut=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    edit=st.booleans(),
)
def test_a_worker_finds_a_runs_lines_in_the_tables_file_or_says_it_cannot(
    tmp_path: Any,
    indices: list[int],
    before: int,
    after: int,
    queued: int,
    cut: tuple[float, float],
    edit: bool,
) -> None:
    """bundle._locate bisects a table file on the lines' heads and then compares the bytes: it
    gives the exact offset of the lines asked for, or None; never another place. In a file of
    one log it always finds them."""
    from audit.bundle import _locate

    def line(index: int | None, log: str | None, body: bytes) -> bytes:
        index_json = b"null" if index is None else b"%d" % index
        log_json = b"null" if log is None else b'"%s"' % log.encode()
        queued_json = b"true" if index is None else b"false"
        return b'{"index":%s,"log":%s,"queued":%s,"record":%s}\n' % (
            index_json,
            log_json,
            queued_json,
            body,
        )

    mine = [line(n, LOG, b'{"n":%d,"pad":"%s"}' % (n, b"x" * (n % 300))) for n in indices]
    text = b"".join(line(n, "a.example/first", b"{}") for n in range(before))
    offsets = [len(text)]
    for each in mine:
        offsets.append(offsets[-1] + len(each))
    text += b"".join(mine)
    text += b"".join(line(n, "z.example/next", b"{}") for n in range(after))
    text += b"".join(line(None, None, b'{"q":%d}' % n) for n in range(queued))
    (tmp_path / "entries.jsonl").write_bytes(text)
    first = min(int(cut[0] * len(mine)), len(mine) - 1)
    last = max(first + 1, int(cut[1] * len(mine)))
    data = b"".join(mine[first:last])
    if edit:
        data = data[:-3] + b"!" + data[-2:]
    found = _locate(tmp_path, "entries.jsonl", data, indices[first], b'"%s"' % LOG.encode())
    if edit:
        assert found is None
    else:
        assert found in (offsets[first], None)
        if not (before or after or queued):
            assert found == offsets[first]


def test_the_tables_reading_gives_the_manifest_its_digest(tmp_path: Any) -> None:
    """_Joined hashes entries.jsonl as it reads it; the digest is there once it reached the end
    (and the manifest's thread hashes the file itself when it did not)."""
    from audit.bundle import _Joined

    text = b"".join(b'{"index":%d,"log":"l","queued":true,"record":{}}\n' % n for n in range(9))
    for tail in (b"", b"no newline at the end"):
        (tmp_path / "entries.jsonl").write_bytes(text + tail)
        read_digest: Future[str | None] = Future()
        joined = _Joined(tmp_path / "entries.jsonl", lambda log: 0, lambda *_: None, read_digest)
        assert joined.take((0, 3)) is not None
        assert not read_digest.done()
        assert len(list(joined.rest())) == 8  # a line without its newline is no record
        assert read_digest.result() == hashlib.sha256(text + tail).hexdigest()


def test_the_manifest_hash_reads_every_byte(tmp_path: Any) -> None:
    for size in (0, 1, 5, (1 << 22) - 1, 1 << 22, (1 << 22) + 3, 3 << 22):
        data = random.Random(size).randbytes(size)
        (tmp_path / "f").write_bytes(data)
        digest = hashlib.sha256()
        for block in bundle._file_blocks(tmp_path / "f"):
            digest.update(block)
        assert digest.digest() == hashlib.sha256(data).digest()
