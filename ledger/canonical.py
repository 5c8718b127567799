"""Canonical bytes of hashed data: a restricted JSON profile serialised with RFC 8785 (JCS).

Every byte string the ledger hashes or signs (journal leaves, partner requests) is produced by
:func:`canonical_bytes`, so that an independent verifier in any language reproduces it exactly
(PRODUCT.md §4, docs/VERIFYING.md).

JCS alone is not enough for that: it serialises numbers as IEEE 754 doubles, and its output for a
float depends on the shortest round-trip formatting of the producing language. Hashed data therefore
stays inside a *profile* where JCS is unambiguous and every value has one spelling:

- objects with string keys, arrays, ``true``/``false``/``null``;
- integers within ±(2**53 - 1), the range a double holds exactly (RFC 8785 §3.2.2.3, I-JSON);
- text that is valid Unicode in Normalization Form C, because JCS deliberately does not normalise
  (RFC 8785 §3.2.2.2): "Å" typed two ways would otherwise hash two ways;
- nothing else. Money is a decimal string (:func:`format_decimal`), an instant is a fixed-width UTC
  string (:func:`format_timestamp`), an id is a lowercase UUID string (:func:`format_uuid`).

Invariants:

- :func:`canonical_bytes` validates the *whole* value before serialising and raises one
  :class:`ProfileError` that names the JSON path of every offending value; it never returns bytes
  for a value outside the profile.
- For a profile value ``v``: ``json.loads(canonical_bytes(v)) == v`` and
  ``canonical_bytes(json.loads(canonical_bytes(v))) == canonical_bytes(v)``.
- Each ``format_*`` function has a strict inverse ``parse_*`` that accepts exactly the strings the
  formatter produces.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TypeAlias
from uuid import UUID

import orjson
import rfc8785

from ledger.errors import ProfileError

__all__ = [
    "MAX_DEPTH",
    "MAX_SAFE_INTEGER",
    "JsonValue",
    "ProfileViolation",
    "canonical_bytes",
    "canonical_loads",
    "format_decimal",
    "format_timestamp",
    "format_uuid",
    "parse_decimal",
    "parse_timestamp",
    "parse_uuid",
    "profile_violations",
]

JsonValue: TypeAlias = "dict[str, JsonValue] | list[JsonValue] | str | int | bool | None"

#: Largest integer magnitude a binary64 double holds exactly (RFC 8785 §3.2.2.3, RFC 7493 §2.2).
MAX_SAFE_INTEGER = 2**53 - 1

#: Nesting limit: hashed envelopes are shallow; a deeper (or self-referencing) value is a bug.
MAX_DEPTH = 64

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# [0-9] rather than \d: \d also matches non-ASCII digits such as "٣".
_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\.([0-9]{6})Z"
)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")

_HINTS: dict[type, str] = {
    float: "floats are not allowed; write money as a decimal string",
    Decimal: "Decimal is not allowed; use format_decimal()",
    bytes: "bytes are not allowed; encode them as text first",
    bytearray: "bytes are not allowed; encode them as text first",
    datetime: "datetime is not allowed; use format_timestamp()",
    date: "date is not allowed; write it as an ISO 8601 date string",
    UUID: "UUID is not allowed; use format_uuid()",
}


@dataclass(frozen=True)
class ProfileViolation:
    """One value outside the hashed-data profile."""

    path: str
    """JSON path of the offending value, e.g. ``$.entry.postings[1].amount``."""
    reason: str
    """What is wrong with it, in words."""

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def canonical_bytes(value: object) -> bytes:
    """Return the RFC 8785 bytes of ``value``, or raise ProfileError naming every violation.

    The common case takes a fast path: one walk that validates the profile and copies the value
    into plain JSON types, then the C JSON encoder, which yields exactly the RFC 8785 bytes when
    every object key is ASCII (:func:`_fast_copy` says why). Anything else (a violation, a ``str``
    subclass, a non-ASCII key) takes the exact path: the validating walk that names every
    violation by its JSON path, and the reference RFC 8785 serialiser.
    """
    keys_ascii = [True]
    try:
        plain = _fast_copy(value, 0, keys_ascii)
    except _Outside:
        pass
    else:
        if keys_ascii[0]:
            return _FAST_ENCODE(plain).encode("utf-8")
        return rfc8785.dumps(plain)
    violations: list[ProfileViolation] = []
    plain = _to_profile(value, "$", 0, violations)
    if violations:
        raise ProfileError(
            "value is outside the hashed-data profile: " + "; ".join(map(str, violations)),
            expected="a profile value (PRODUCT.md §4)",
            computed=[str(v) for v in violations],
        )
    return rfc8785.dumps(plain)


class _Outside(Exception):
    """The fast walk met something it does not decide: the exact walk will."""


# RFC 8785 serialises strings like ECMAScript's JSON.stringify: UTF-8 as is, escaping only
# '"', '\\' and the C0 controls (\b \t \n \f \r short, the rest as lowercase \u00xx), which is
# what CPython's encoder does with ensure_ascii=False. Integers within ±(2**53 - 1) print as
# their decimal digits in both. Keys: RFC 8785 sorts by UTF-16 code units, Python by code
# points; the two orders agree on ASCII keys, so only those take this encoder.
_FAST_ENCODE = json.JSONEncoder(
    ensure_ascii=False,
    sort_keys=True,
    separators=(",", ":"),
    check_circular=False,
    allow_nan=False,
).encode


def _fast_copy(value: object, depth: int, keys_ascii: list[bool]) -> JsonValue:
    """Copy a profile value into plain JSON types; raise :class:`_Outside` at anything doubtful.

    Only exact built-in types are taken (a subclass, an enum member, goes the exact way), and
    ASCII text needs no check (it is valid UTF-8 and NFC). Clears ``keys_ascii[0]`` when a key
    is not ASCII.
    """
    if depth > MAX_DEPTH:
        raise _Outside
    kind = type(value)
    if kind is str:
        if value.isascii() or _text_problem(value) is None:  # type: ignore[attr-defined]
            return value  # type: ignore[return-value]
        raise _Outside
    if kind is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:  # type: ignore[operator]
            return value  # type: ignore[return-value]
        raise _Outside
    if value is None or kind is bool:
        return value  # type: ignore[return-value]
    if kind is dict:
        plain: dict[str, JsonValue] = {}
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                raise _Outside
            if not key.isascii():
                if _text_problem(key) is not None:
                    raise _Outside
                keys_ascii[0] = False
            plain[key] = _fast_copy(item, depth + 1, keys_ascii)
        return plain
    if kind is list or kind is tuple:
        return [_fast_copy(item, depth + 1, keys_ascii) for item in value]  # type: ignore[attr-defined]
    raise _Outside


# --- Reading canonical bytes fast --------------------------------------------------------------

#: orjson options of the round trip: sorted keys, integers refused beyond ±(2^53 − 1).
SORTED_STRICT = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
# A number token with a fraction or an exponent: after '":' (a member), ',' or '[' (an item). One
# pattern per literal prefix, which the regex engine searches for far faster than a class; public
# so that the bundle scan's inlined loop (audit.leafscan) searches with the very same patterns.
FLOAT_MEMBER = re.compile(rb'":-?[0-9]++[.eE]').search
FLOAT_ITEM = re.compile(rb",-?[0-9]++[.eE]").search
FLOAT_FIRST = re.compile(rb"\[-?[0-9]++[.eE]").search


# A string holding a byte beyond ASCII that is an object key: from that byte (never part of an
# escape) to the string's closing quote, then ':'.
_WIDE_KEY = re.compile(rb'[\x80-\xff](?:[^"\\]++|\\.)*+":').search
# The bytes that lead a character beyond the Basic Multilingual Plane in UTF-8 (four bytes).
_BEYOND_BMP_LEADS = (b"\xf0", b"\xf1", b"\xf2", b"\xf3", b"\xf4")


def _beyond_bmp(data: bytes) -> bool:
    """Whether UTF-8 ``data`` holds a character beyond U+FFFF (a byte search for each lead is
    several times faster than a regex's character class)."""
    return any(lead in data for lead in _BEYOND_BMP_LEADS)


def wide_text_round_trips(data: bytes) -> bool:
    """For bytes beyond ASCII that orjson gives back unchanged with sorted keys: whether that
    proves them canonical as far as their text goes — in NFC, and keys in RFC 8785's order (see
    :func:`canonical_loads`). False decides nothing; public for the bundle scan's inlined loop."""
    if _beyond_bmp(data) and _WIDE_KEY(data):
        return False
    try:
        return unicodedata.is_normalized("NFC", data.decode("utf-8"))
    except UnicodeDecodeError:
        return False


def canonical_loads(data: bytes) -> JsonValue | None:
    """The object or array ``data`` holds when a quick test proves the bytes are its canonical
    bytes; else None (also for a bare scalar, which leaves and requests never are).

    None decides nothing: the caller then takes the exact path (``json.loads`` and
    :func:`canonical_bytes`), which also says what is wrong. The quick test parses with a compiled
    codec (orjson, which refuses bytes that are not UTF-8) and re-serialises with sorted keys,
    integers refused beyond ±(2^53 − 1). orjson writes every string as RFC 8785 does (raw UTF-8;
    ``\\"``, ``\\\\``, ``\\b``, ``\\t``, ``\\n``, ``\\f``, ``\\r`` and ``\\u00xx`` for the other C0
    controls — tests/unit/test_canonical.py compares the two on every code point), so the round
    trip gives back the same bytes exactly when they are the RFC 8785 bytes of a profile value,
    provided that

    - the keys sort the same by code point (orjson) and by UTF-16 unit (RFC 8785). The two
      orders differ only between a character beyond U+FFFF (a surrogate pair, from U+D800) and
      one from U+E000 to U+FFFF: in a document with a character beyond U+FFFF, a key beyond
      ASCII is left to the exact path (text beyond ASCII, such as "€", is otherwise common);
    - the text is in Normalization Form C (ASCII text always is). Checked on the whole document:
      the quotes, and the ASCII characters an escape stands for, never compose with a neighbour,
      so each string of an NFC document is NFC (a false "no" only sends the bytes the exact way);
    - no number has a fraction or an exponent (orjson would round-trip ``1.5`` unchanged):
      ``FLOAT_*`` find any such number token, since in a compact JSON object or array a number
      follows ``":``, ``,`` or ``[`` (a match inside a string only sends the bytes the exact way);
    - nothing nests deeper than :data:`MAX_DEPTH`, as :func:`canonical_bytes` holds it.

    The value returned equals ``json.loads(data)``.
    """
    if data[:1] not in (b"{", b"["):
        return None
    if FLOAT_MEMBER(data) or FLOAT_ITEM(data) or FLOAT_FIRST(data):
        return None
    try:
        value = orjson.loads(data)
        if orjson.dumps(value, option=SORTED_STRICT) != data:
            return None
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return None
    if not (data.isascii() or wide_text_round_trips(data)):
        return None
    if data.count(b"{") + data.count(b"[") > MAX_DEPTH and not _within_depth(value, 0):
        return None
    return value


def _within_depth(value: object, depth: int) -> bool:
    """No value nests deeper than the profile allows (asked only when the bytes hold more than
    MAX_DEPTH brackets: with fewer, none can)."""
    if depth > MAX_DEPTH:
        return False
    if type(value) is dict:
        return all(_within_depth(item, depth + 1) for item in value.values())
    if type(value) is list:
        return all(_within_depth(item, depth + 1) for item in value)
    return True


def profile_violations(value: object) -> list[ProfileViolation]:
    """Every place where ``value`` leaves the profile, in document order (empty if it conforms)."""
    violations: list[ProfileViolation] = []
    _to_profile(value, "$", 0, violations)
    return violations


def _to_profile(value: object, path: str, depth: int, out: list[ProfileViolation]) -> JsonValue:
    """Copy ``value`` into plain JSON types, recording violations instead of stopping at the first.

    The copy matters: a ``str`` or ``int`` subclass (an enum member, say) is serialised through its
    underlying value, never through an overridden ``__str__``.
    """
    if depth > MAX_DEPTH:
        out.append(ProfileViolation(path, f"nested deeper than {MAX_DEPTH} levels"))
        return None
    # bool before int: bool is a subclass of int, but JSON keeps them apart.
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _profile_int(value, path, out)
    if isinstance(value, str):
        return _profile_text(value, path, out)
    if isinstance(value, dict):
        return _profile_object(value, path, depth, out)
    if isinstance(value, list | tuple):
        return [_to_profile(item, f"{path}[{i}]", depth + 1, out) for i, item in enumerate(value)]
    out.append(ProfileViolation(path, _type_hint(value)))
    return None


def _profile_int(value: int, path: str, out: list[ProfileViolation]) -> int:
    number = int.__index__(value)
    if abs(number) > MAX_SAFE_INTEGER:
        out.append(ProfileViolation(path, f"integer {number} is outside ±(2**53 - 1)"))
    return number


def _profile_text(value: str, path: str, out: list[ProfileViolation]) -> str:
    text = str.__str__(value)
    reason = _text_problem(text)
    if reason is not None:
        out.append(ProfileViolation(path, reason))
    return text


def _profile_object(
    value: dict[object, object], path: str, depth: int, out: list[ProfileViolation]
) -> dict[str, JsonValue]:
    plain: dict[str, JsonValue] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            out.append(ProfileViolation(path, f"object key {key!r} is not a string"))
            continue
        key_text = str.__str__(key)
        child = _child_path(path, key_text)
        reason = _text_problem(key_text)
        if reason is not None:
            out.append(ProfileViolation(child, f"key {reason}"))
        plain[key_text] = _to_profile(item, child, depth + 1, out)
    return plain


def _text_problem(text: str) -> str | None:
    """Why ``text`` cannot be hashed, or None if it can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates have no UTF-8 encoding, hence no canonical bytes (RFC 8785 §3.2.2.2).
        return "text contains unpaired surrogates"
    if not unicodedata.is_normalized("NFC", text):
        return "text is not in Unicode Normalization Form C"
    return None


def _child_path(path: str, key: str) -> str:
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key)}]"


def _type_hint(value: object) -> str:
    for kind, hint in _HINTS.items():
        if isinstance(value, kind):
            return hint
    return f"{type(value).__name__} is not a profile type"


# --- Timestamps ---------------------------------------------------------------------------------


def format_timestamp(moment: datetime) -> str:
    """The instant as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC; a naive datetime is refused.

    Fixed width (always six fraction digits, always ``Z``) so that one instant has one spelling
    and strings sort like the instants they name. Requests and records repeat a few instants
    (a batch's business time), so the spellings of the latest ones are remembered: equal aware
    datetimes are one instant, hence one spelling, and a naive one raises, so is never kept.
    """
    if type(moment) is datetime:
        return _remembered_timestamp(moment)
    return _format_timestamp(moment)


@functools.lru_cache(maxsize=256)
def _remembered_timestamp(moment: datetime) -> str:
    return _format_timestamp(moment)


def _format_timestamp(moment: datetime) -> str:
    if not isinstance(moment, datetime):
        raise ProfileError("a timestamp must be a datetime", expected="datetime", computed=moment)
    if moment.utcoffset() is None:
        # A naive datetime names no instant; guessing the zone would hash a guess.
        raise ProfileError(
            "naive datetime: attach a time zone", expected="aware datetime", computed=str(moment)
        )
    try:
        utc = moment.astimezone(UTC)
    except OverflowError as exc:
        raise ProfileError(
            "instant is outside years 1..9999 in UTC", expected="year 1..9999", computed=str(moment)
        ) from exc
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond:06d}Z"
    )


def parse_timestamp(text: str) -> datetime:
    """The aware UTC datetime of a string produced by :func:`format_timestamp`; nothing else."""
    match = _TIMESTAMP.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ProfileError(
            f"not a profile timestamp: {text!r}",
            expected="YYYY-MM-DDTHH:MM:SS.ffffffZ",
            computed=text,
        )
    try:
        year, month, day, hour, minute, second, micro = (int(part) for part in match.groups())
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)
    except ValueError as exc:
        raise ProfileError(
            f"not a calendar instant: {text!r}", expected="a valid UTC instant", computed=text
        ) from exc


# --- Identifiers --------------------------------------------------------------------------------


def format_uuid(value: UUID) -> str:
    """The canonical lowercase hyphenated form (RFC 9562 §4)."""
    if not isinstance(value, UUID):
        raise ProfileError("not a UUID", expected="uuid.UUID", computed=repr(value))
    return str(value)


def parse_uuid(text: str) -> UUID:
    """The UUID of a lowercase hyphenated string; braces, URNs and upper case are refused."""
    if not (isinstance(text, str) and _UUID.fullmatch(text)):
        raise ProfileError(
            f"not a canonical UUID: {text!r}",
            expected="xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (lowercase hex)",
            computed=text,
        )
    return UUID(text)


# --- Decimals -----------------------------------------------------------------------------------


def format_decimal(value: Decimal) -> str:
    """Plain positional notation (``-12.50``), never an exponent; NaN and infinities are refused.

    The scale is kept ("12.50" stays "12.50"): quantising is the caller's job (ledger numbers),
    and a hashed amount must record the scale that was booked. Negative zero is written as zero,
    so that zero has one spelling per scale.
    """
    if not isinstance(value, Decimal):
        raise ProfileError("not a Decimal", expected="decimal.Decimal", computed=repr(value))
    if not value.is_finite():
        raise ProfileError("decimal is not finite", expected="finite decimal", computed=str(value))
    if value.is_zero():
        value = value.copy_abs()
    return format(value, "f")


def parse_decimal(text: str) -> Decimal:
    """The Decimal of a string :func:`format_decimal` produces; exponents, ``+``, ``-0`` refused."""
    if not (isinstance(text, str) and _DECIMAL.fullmatch(text)):
        raise ProfileError(
            f"not a plain decimal: {text!r}", expected="-?digits[.digits]", computed=text
        )
    value = Decimal(text)
    if value.is_zero() and text.startswith("-"):
        raise ProfileError("negative zero", expected="zero without a sign", computed=text)
    return value
