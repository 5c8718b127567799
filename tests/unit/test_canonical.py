"""Canonical bytes: RFC 8785 known answers, the hashed-data profile, and the fixed-form encoders."""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
import struct
import unicodedata
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.canonical import (
    MAX_SAFE_INTEGER,
    canonical_bytes,
    canonical_loads,
    format_decimal,
    format_timestamp,
    format_uuid,
    parse_decimal,
    parse_timestamp,
    parse_uuid,
    profile_violations,
)
from ledger.errors import ProfileError
from tests.vectors import load_vector

JCS = load_vector("jcs-vectors")

# Which published cases fall inside our profile, and why the others do not.
PROFILE_VERDICT = {
    "arrays": None,
    "french": None,
    "structures": "floats are not allowed",  # "\n": 56.0 parses as a float
    "unicode": "not in Unicode Normalization Form C",  # "A\u030a" is kept unnormalised by JCS
    "values": "floats are not allowed",
    "weird": "not in Unicode Normalization Form C",  # U+FB33 is a composition exclusion
}


# --- RFC 8785 known answers ---------------------------------------------------------------------


@pytest.mark.parametrize("case", JCS["cases"], ids=[c["name"] for c in JCS["cases"]])
def test_jcs_engine_reproduces_published_output(case: dict[str, Any]) -> None:
    """The RFC 8785 engine turns each published input into the published bytes exactly."""
    source = bytes.fromhex(case["input_hex"])
    assert source == case["input_utf8"].encode("utf-8")
    expected = bytes.fromhex(case["expected_output_hex"])
    assert expected == case["expected_output_utf8"].encode("utf-8")
    assert hashlib.sha256(expected).hexdigest() == case["expected_output_sha256_hex"]
    assert rfc8785.dumps(json.loads(source)) == expected


@pytest.mark.parametrize("case", JCS["cases"], ids=[c["name"] for c in JCS["cases"]])
def test_canonical_bytes_matches_jcs_inside_profile_and_refuses_outside(
    case: dict[str, Any],
) -> None:
    """Profile cases canonicalise byte-exact; the others are refused for the documented reason."""
    value = json.loads(bytes.fromhex(case["input_hex"]))
    verdict = PROFILE_VERDICT[case["name"]]
    if verdict is None:
        assert canonical_bytes(value) == bytes.fromhex(case["expected_output_hex"])
    else:
        with pytest.raises(ProfileError, match=verdict):
            canonical_bytes(value)


@pytest.mark.parametrize("sample", JCS["number_samples"], ids=lambda s: s["ieee754_hex"])
def test_jcs_engine_formats_published_number_samples(sample: dict[str, str]) -> None:
    """The engine's ES6 number formatting matches the published samples (floats stay banned)."""
    number = _double(int(sample["ieee754_hex"], 16))
    assert rfc8785.dumps(number) == sample["expected"].encode("ascii")
    with pytest.raises(ProfileError):
        canonical_bytes(number)


@pytest.mark.parametrize("checksum", JCS["es6_number_file"]["checksums"][:2], ids=["1k", "10k"])
def test_jcs_engine_matches_es6_number_file_checksum(checksum: dict[str, Any]) -> None:
    """The engine reproduces the first 1,000 and 10,000 lines of the ES6 number test file."""
    lines = _es6_number_lines(JCS["es6_number_file"]["static_u64_hex"])
    data = "".join(next(lines) for _ in range(checksum["lines"])).encode("ascii")
    assert len(data) == checksum["bytes"]
    assert hashlib.sha256(data).hexdigest() == checksum["sha256_hex"]


def _double(bits: int) -> float:
    return float(struct.unpack(">d", bits.to_bytes(8, "big"))[0])


def _es6_number_lines(static_hex: list[str]) -> Iterator[str]:
    """The generator described in jcs-vectors.json: static values, a run, then a SHA-256 chain."""

    def line(bits: int) -> str:
        return f"{bits:x},{rfc8785.dumps(_double(bits)).decode('ascii')}\n"

    for text in static_hex:
        yield line(int(text, 16))
    for i in range(2000):
        yield line(0x0010000000000000 + i)
    block = bytes(32)
    while True:
        block = hashlib.sha256(block).digest()
        for offset in range(0, 32, 8):
            bits = int.from_bytes(block[offset : offset + 8], "little")
            number = _double(bits)
            if number != 0 and math.isfinite(number):
                yield line(bits)


# --- The profile --------------------------------------------------------------------------------


class Colour(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


def test_profile_value_serialises_as_jcs() -> None:
    """A typical envelope serialises with sorted keys, no whitespace and UTF-8 text."""
    value = {"v": 1, "kind": "EARN", "ok": True, "none": None, "items": ["é", -5], "a": {}}
    expected = '{"a":{},"items":["é",-5],"kind":"EARN","none":null,"ok":true,"v":1}'
    assert canonical_bytes(value) == expected.encode("utf-8")


def test_booleans_stay_booleans() -> None:
    """True is serialised as ``true``, not as the integer 1 it subclasses."""
    assert canonical_bytes([True, False, 1, 0]) == b"[true,false,1,0]"


def test_integer_bounds_are_inclusive() -> None:
    """±(2**53 - 1) are accepted; one beyond is refused."""
    assert canonical_bytes([MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER]) == (
        b"[9007199254740991,-9007199254740991]"
    )
    for number in (MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, 10**30):
        with pytest.raises(ProfileError, match=r"outside"):
            canonical_bytes({"n": number})


def test_tuples_serialise_as_arrays() -> None:
    """A tuple is an array, exactly like a list."""
    assert canonical_bytes(("a", (1, 2))) == canonical_bytes(["a", [1, 2]]) == b'["a",[1,2]]'


def test_enum_members_serialise_as_their_values() -> None:
    """str/int subclasses go through their underlying value, never an overridden __str__."""
    assert canonical_bytes({"c": Colour.RED, "l": Level.HIGH}) == b'{"c":"red","l":3}'


@pytest.mark.parametrize(
    ("value", "path", "reason"),
    [
        ({"entry": {"postings": [{}, {"amount": 1.5}]}}, "$.entry.postings[1].amount", "float"),
        ({"amount": Decimal("1.50")}, "$.amount", "Decimal"),
        ({"raw": b"\x00"}, "$.raw", "bytes"),
        ({"raw": bytearray(b"\x00")}, "$.raw", "bytes"),
        ({"at": datetime(2026, 3, 1, tzinfo=UTC)}, "$.at", "datetime"),
        ({"on": date(2026, 3, 1)}, "$.on", "date"),
        ({"id": UUID(int=1)}, "$.id", "UUID"),
        ({"tags": {"a"}}, "$.tags", "set"),
        ({"x": float("nan")}, "$.x", "float"),
        ({"x": object()}, "$.x", "object"),
        ({1: "one"}, "$", "key 1 is not a string"),
        ({"name": "A\u030a"}, "$.name", "Normalization Form C"),
        ({"A\u030a": 1}, '$["A\\u030a"]', "key text is not in Unicode Normalization Form C"),
        (["ok", "\ud800"], "$[1]", "surrogates"),
        ({"n": 2**53}, "$.n", "outside"),
        ({"has space": [0.5]}, '$["has space"][0]', "float"),
    ],
)
def test_out_of_profile_value_is_refused_with_its_path(
    value: object, path: str, reason: str
) -> None:
    """Every kind of out-of-profile value raises ProfileError naming its JSON path and the cause."""
    with pytest.raises(ProfileError) as caught:
        canonical_bytes(value)
    assert f"{path}: " in caught.value.message
    assert reason in caught.value.message


def test_every_violation_is_reported_at_once() -> None:
    """Validation covers the whole value before failing, listing each bad path in order."""
    value = {"a": 1.0, "b": [Decimal(1), "ok", b""], "c": {"d": 2**60}}
    found = profile_violations(value)
    assert [v.path for v in found] == ["$.a", "$.b[0]", "$.b[2]", "$.c.d"]
    with pytest.raises(ProfileError) as caught:
        canonical_bytes(value)
    assert caught.value.computed == [str(v) for v in found]


def test_conforming_value_has_no_violations() -> None:
    """A profile value yields an empty violation list."""
    assert profile_violations({"a": [1, "x", None, True, {"b": -3}]}) == []


def test_deep_or_cyclic_value_is_refused() -> None:
    """Nesting beyond the limit, including a self-referencing list, is a ProfileError."""
    cyclic: list[object] = []
    cyclic.append(cyclic)
    with pytest.raises(ProfileError, match="nested deeper"):
        canonical_bytes(cyclic)


# --- Timestamps ---------------------------------------------------------------------------------


def test_timestamp_is_converted_to_utc_with_six_fraction_digits() -> None:
    """An aware datetime in any zone is written in UTC, fixed width, with a Z."""
    plus_two = timezone(timedelta(hours=2))
    moment = datetime(2026, 3, 1, 1, 2, 3, tzinfo=plus_two)
    assert format_timestamp(moment) == "2026-02-28T23:02:03.000000Z"
    assert format_timestamp(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00.000000Z"
    assert format_timestamp(datetime(2026, 1, 1, 0, 0, 0, 7, tzinfo=UTC)).endswith(".000007Z")


def test_naive_datetime_is_refused() -> None:
    """A datetime without a zone names no instant and is refused."""
    with pytest.raises(ProfileError, match="naive"):
        format_timestamp(datetime(2026, 3, 1))


def test_instant_outside_representable_years_is_refused() -> None:
    """An instant that falls before year 1 once converted to UTC is refused, not wrapped."""
    with pytest.raises(ProfileError, match="years"):
        format_timestamp(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))))


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-01T00:00:00Z",
        "2026-03-01T00:00:00.000Z",
        "2026-03-01T00:00:00.000000+00:00",
        "2026-03-01t00:00:00.000000z",
        "2026-03-01 00:00:00.000000Z",
        "2026-02-30T00:00:00.000000Z",
        "0000-01-01T00:00:00.000000Z",
        "2026-03-01T23:59:60.000000Z",
        "\u0662\u0660\u0662\u0666-03-01T00:00:00.000000Z",
        "2026-03-01T00:00:00.000000Z\n",
        " 2026-03-01T00:00:00.000000Z",
        "",
    ],
)
def test_parse_timestamp_refuses_anything_but_the_fixed_form(text: str) -> None:
    """Only the exact fixed-width UTC form parses; near misses raise ProfileError."""
    with pytest.raises(ProfileError):
        parse_timestamp(text)


@given(st.datetimes(timezones=st.timezones() | st.just(UTC)))
@settings(max_examples=200, deadline=None)
def test_timestamp_round_trip(moment: datetime) -> None:
    """parse(format(t)) is the same instant, and format(parse(s)) gives s back."""
    try:
        text = format_timestamp(moment)
    except ProfileError:
        return  # the instant leaves years 1..9999 in UTC: refused by design
    parsed = parse_timestamp(text)
    # Compare in UTC: PEP 495 makes an ambiguous (fold) wall time unequal to every other zone.
    assert parsed == moment.astimezone(UTC)
    assert parsed.tzinfo is UTC
    assert format_timestamp(parsed) == text


@given(st.datetimes(timezones=st.just(UTC)), st.datetimes(timezones=st.just(UTC)))
def test_timestamp_strings_sort_like_instants(first: datetime, second: datetime) -> None:
    """The fixed width makes string order equal time order."""
    assert (format_timestamp(first) < format_timestamp(second)) == (first < second)


# --- UUIDs and decimals -------------------------------------------------------------------------


def test_uuid_is_lowercase_canonical() -> None:
    """A UUID is written in lowercase hyphenated form."""
    value = UUID("6BA7B810-9DAD-11D1-80B4-00C04FD430C8")
    assert format_uuid(value) == "6ba7b810-9dad-11d1-80b4-00c04fd430c8"


@pytest.mark.parametrize(
    "text",
    [
        "6BA7B810-9DAD-11D1-80B4-00C04FD430C8",
        "{6ba7b810-9dad-11d1-80b4-00c04fd430c8}",
        "urn:uuid:6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        "6ba7b8109dad11d180b400c04fd430c8",
    ],
)
def test_parse_uuid_refuses_other_spellings(text: str) -> None:
    """Upper case, braces, URNs and unhyphenated forms are refused."""
    with pytest.raises(ProfileError):
        parse_uuid(text)


def test_format_uuid_refuses_strings() -> None:
    """format_uuid takes a UUID, not a string that might be non-canonical."""
    with pytest.raises(ProfileError):
        format_uuid("6ba7b810-9dad-11d1-80b4-00c04fd430c8")  # type: ignore[arg-type]


@given(st.uuids())
def test_uuid_round_trip(value: UUID) -> None:
    """parse_uuid(format_uuid(u)) == u."""
    assert parse_uuid(format_uuid(value)) == value


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("1.50", "1.50"),
        ("-12.5", "-12.5"),
        ("1E+3", "1000"),
        ("1.2E-7", "0.00000012"),
        ("-0.00", "0.00"),
        ("0", "0"),
    ],
)
def test_decimal_is_plain_positional_text(value: str, text: str) -> None:
    """Decimals are written without exponent, keeping their scale; negative zero loses its sign."""
    assert format_decimal(Decimal(value)) == text


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), 1.5, 2])
def test_format_decimal_refuses_non_finite_and_non_decimal(value: object) -> None:
    """NaN, infinities, floats and ints are refused."""
    with pytest.raises(ProfileError):
        format_decimal(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text", ["1e3", "+1", "-0", "-0.00", "01", ".5", "5.", " 1", "1_000", "\u0661", "NaN", ""]
)
def test_parse_decimal_refuses_other_spellings(text: str) -> None:
    """Only the plain form that format_decimal writes parses."""
    with pytest.raises(ProfileError):
        parse_decimal(text)


@given(st.decimals(allow_nan=False, allow_infinity=False, min_value=-(10**15), max_value=10**15))
def test_decimal_round_trip(value: Decimal) -> None:
    """parse(format(d)) == d, and formatting the result gives the same text."""
    text = format_decimal(value)
    assert parse_decimal(text) == value
    assert format_decimal(parse_decimal(text)) == text


# --- Round-trip properties of the profile -------------------------------------------------------

NFC_TEXT = st.text(max_size=12).map(lambda s: unicodedata.normalize("NFC", s))
PROFILE_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | NFC_TEXT
)
PROFILE_VALUES = st.recursive(
    PROFILE_SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(NFC_TEXT, children, max_size=5)
    ),
    max_leaves=30,
)


@given(PROFILE_VALUES)
@settings(max_examples=300)
def test_canonical_bytes_round_trip(value: object) -> None:
    """Canonical bytes parse back to an equal value, and re-canonicalising is stable."""
    data = canonical_bytes(value)
    parsed = json.loads(data)
    assert parsed == value
    assert canonical_bytes(parsed) == data


@given(st.dictionaries(NFC_TEXT, PROFILE_SCALARS, max_size=8))
def test_key_insertion_order_does_not_matter(value: dict[str, object]) -> None:
    """Objects that differ only in key insertion order have the same bytes."""
    reordered = dict(reversed(list(value.items())))
    assert canonical_bytes(reordered) == canonical_bytes(value)


# --- The fast path: the C encoder where it equals RFC 8785 --------------------------------------

# Text that stresses the escaping rules: C0 controls, quote, backslash, DEL, U+2028/U+2029,
# non-ASCII letters, astral characters; all NFC so the values stay inside the profile.
ESCAPED = ["\x00", "\x01", "\x08", "\t", "\n", "\x0b", "\x0c", "\r", "\x1f", '"', "\\"]
UNESCAPED = ["/", "\x7f", "\u2028", "\u2029", "é", "ß", "€", "\ufeff", "\uffff", "\U0001f600", "a"]
TRICKY_TEXT = st.text(
    alphabet=st.sampled_from([*ESCAPED, *UNESCAPED]) | st.characters(exclude_categories=("Cs",)),
    max_size=12,
).map(lambda s: unicodedata.normalize("NFC", s))
ASCII_KEYS = st.text(alphabet=st.characters(max_codepoint=127), max_size=8)
FAST_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.sampled_from([0, -1, MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, 2**31, -(2**32)])
    | TRICKY_TEXT
)


def _values(keys: st.SearchStrategy[str]) -> st.SearchStrategy[object]:
    return st.recursive(
        FAST_SCALARS,
        lambda children: (
            st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5)
        ),
        max_leaves=30,
    )


@given(_values(ASCII_KEYS))
@settings(max_examples=500)
def test_c_encoder_equals_rfc8785_for_profile_values_with_ascii_keys(value: object) -> None:
    """The claim the fast path rests on: for a profile value whose keys are all ASCII, CPython's
    encoder (ensure_ascii=False, sort_keys, compact) writes exactly the RFC 8785 bytes."""
    fast = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    assert fast.encode("utf-8") == rfc8785.dumps(value)
    assert canonical_bytes(value) == rfc8785.dumps(value)


@given(_values(TRICKY_TEXT))
@settings(max_examples=300)
def test_canonical_bytes_equal_rfc8785_with_any_keys(value: object) -> None:
    """Whatever the keys, canonical_bytes gives the reference serialiser's bytes."""
    assert canonical_bytes(value) == rfc8785.dumps(value)


def test_non_ascii_keys_sort_by_utf16_code_units() -> None:
    """U+FFFF sorts before U+1F600 by code point but after it in UTF-16 (0xD83D…): the order
    RFC 8785 prescribes is kept, so such keys must not take the C encoder."""
    value = {"\uffff": 1, "\U0001f600": 2, "a": 3}
    data = canonical_bytes(value)
    assert data == rfc8785.dumps(value)
    assert data == '{"a":3,"\U0001f600":2,"\uffff":1}'.encode()


def test_fast_path_still_refuses_what_the_profile_refuses() -> None:
    """Subclasses, floats, big integers and non-NFC text nested in plain values are refused, with
    every path named, as on the exact path."""
    with pytest.raises(ProfileError) as caught:
        canonical_bytes({"a": [1, 2.5], "b": {"c": 2**53}, "d": "A\u030a", "e": b"x"})
    message = str(caught.value)
    for path in ("$.a[1]", "$.b.c", "$.d", "$.e"):
        assert path in message


# --- canonical_loads: the quick proof that bytes are canonical ----------------------------------

# Text a quick check could be fooled by: decomposed letters (not NFC), U+2028, a lone surrogate,
# astral and non-ASCII letters, the characters that sort after a surrogate pair in code point
# order but before it in UTF-16, characters needing an escape.
ODD_TEXT = st.lists(
    st.sampled_from(
        ["e\u0301", "A\u030a", "\u2028", "\ud800", "é", "😀", "\ue000", "\uffff", '"', "\\", "\x01"]
    )
    | st.characters(max_codepoint=0x2FF),
    max_size=6,
).map("".join)
ODD_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | ODD_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(ODD_TEXT, children, max_size=4)
    ),
    max_leaves=12,
)


def _spellings(value: object) -> Iterator[bytes]:
    """The value written several ways, canonical or not (surrogates kept as raw bytes)."""
    for ascii_only in (False, True):
        for sort in (True, False):
            text = json.dumps(value, ensure_ascii=ascii_only, sort_keys=sort, separators=(",", ":"))
            yield text.encode("utf-8", "surrogatepass")


@given(ODD_VALUES)
@settings(max_examples=500)
def test_canonical_loads_only_accepts_canonical_bytes(value: object) -> None:
    """Whenever canonical_loads returns a value, the bytes are exactly the canonical bytes of
    what json.loads reads from them, and the value is that."""
    for data in _spellings(value):
        loaded = canonical_loads(data)
        if loaded is not None:
            parsed = json.loads(data)
            assert loaded == parsed
            assert canonical_bytes(parsed) == data


@given(_values(ASCII_KEYS))
@settings(max_examples=300)
def test_canonical_loads_proves_common_canonical_bytes(value: object) -> None:
    """Canonical bytes without text that looks like a number with a fraction come back as their
    value: the quick path is taken, and gives the right value."""
    data = canonical_bytes({"v": value})
    loaded = canonical_loads(data)
    assert loaded in (None, {"v": value})
    if not re.search(rb"[:,[]-?[0-9]+[.eE]", data):
        assert loaded == {"v": value}


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1.5}',
        b'{"a":[1.0]}',
        b'{"a":[1,2E5]}',
        b'{"a":-0}',
        b'{"a":9007199254740992}',
        b'{"a":18446744073709551616}',
        b'{"a":1e2}',
        b'{"a":NaN}',
        b'{"a":' + b"[" * 65 + b"]" * 65 + b"}",
        b'{"a":{"b":1,"b":2}}',
        b'{"a":"\\u00e9"}',
        b'{"a":"\\/"}',
        b'{"a":"\\u000a"}',
        b'{"a":"\\u001F"}',
        b'{"a":"\\ud800"}',
        '{"a":"e\u0301"}'.encode(),
        '{"a":"x\\ne\u0301"}'.encode(),
        '{"\U0001f600":1,"\uffff":2}'.encode(),
        '{"\uffff":2,"\U0001f600":1}'.encode(),  # code point order, which RFC 8785's is not
        '{"a":"\U0001f600","é":1}'.encode(),
        b'{"a":"\xed\xa0\x80"}',
        b'{"a":"\xff"}',
        b'{"b":1,"a":2}',
        b'{"a": 1}',
    ],
)
def test_canonical_loads_leaves_doubtful_bytes_to_the_exact_path(data: bytes) -> None:
    """Floats that print back the same, integers past 2^53, negative zero, deep nesting,
    duplicate keys, escapes, decomposed text, non-ASCII keys beside text beyond U+FFFF (where
    orjson's key order and RFC 8785's can differ), bad UTF-8, unsorted or spaced."""
    assert canonical_loads(data) is None


@pytest.mark.parametrize(
    "value",
    [
        {"a": "71 pts = (5.00 € + 33.00 € fresh ×2)"},
        {"a": ["\u2028", "😀", "Å"], "b": MAX_SAFE_INTEGER, "c": -MAX_SAFE_INTEGER},
        {"a": [[[[[]]]]] * 20},
        {"a": 'line\n"quoted" \\ €\x1f\x7f', 'b\n"': "é\t"},
        {"é": 1, "a": "é", 'é"x': ["€"], "\uffff": "\ue000"},
    ],
)
def test_canonical_loads_reads_canonical_text_beyond_ascii(value: object) -> None:
    """NFC text beyond ASCII (keys too, in a document within U+FFFF), extreme integers, many
    brackets that do not nest deep."""
    assert canonical_loads(canonical_bytes(value)) == value


def test_the_codec_writes_every_character_as_rfc8785_does() -> None:
    """orjson and the reference serialiser spell each code point alike (raw, or the same escape):
    what lets canonical_loads accept escaped text on a byte comparison."""
    differ = [
        code
        for code in range(0x110000)
        if not 0xD800 <= code <= 0xDFFF and orjson.dumps(chr(code)) != rfc8785.dumps(chr(code))
    ]
    assert differ == []
