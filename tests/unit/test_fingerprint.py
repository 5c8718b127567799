"""The idempotency fingerprint never changes its spelling.

A digest stored under an idempotency key is compared with the digest of a retry, possibly made
by a later release: :func:`ledger.service.fingerprint` must keep producing the very bytes it
produced when the key was claimed. The golden digest below was computed with the original
formula (``json.dumps`` with sorted keys, round-tripped once); it must never move.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import InvalidRequest
from ledger.service import fingerprint, request_json_default

REQUEST = {
    "op": "earn",
    "member": "m-é",
    "funding": {"SUPER": 120, "BANK": 7},
    "business_time": datetime(2026, 3, 2, 10, 30, tzinfo=timezone(timedelta(hours=1))),
    "entry_id": uuid.UUID(int=7),
    "basket": [{"cents": 1999, "category": "fresh"}, {"cents": 5, "category": None}],
    "flag": True,
    "note": "2 × 3 €",
}
GOLDEN = "806882c99f8168d77355f239a13d019df35d1d828786331d558c587da367ffd6"


def test_the_digest_of_a_known_request_never_changes() -> None:
    stable = fingerprint(REQUEST)
    assert stable.hex == GOLDEN
    assert stable.request["business_time"] == "2026-03-02T09:30:00.000000Z"
    assert stable.request["entry_id"] == "00000000-0000-0000-0000-000000000007"


@pytest.mark.parametrize(
    "request_",
    [{}, {"b": 1, "a": [1, {"z": None, "y": "ü"}]}, {"1": 0, "10": 1, "9": 2}, {"t": (1, 2)}],
)
def test_the_digest_is_the_original_formula(request_: dict) -> None:
    normal = json.loads(json.dumps(request_, sort_keys=True, default=request_json_default))
    expected = hashlib.sha256(json.dumps(normal, sort_keys=True).encode()).digest()
    assert fingerprint(request_).digest == expected


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), JSON_VALUES | st.datetimes(timezones=st.just(UTC)), max_size=6))
def test_any_request_hashes_as_the_original_formula(request_: dict) -> None:
    """The text is encoded once now; the digest is still that of the round-tripped form."""
    normal = json.loads(json.dumps(request_, sort_keys=True, default=request_json_default))
    expected = hashlib.sha256(json.dumps(normal, sort_keys=True).encode()).digest()
    stable = fingerprint(request_)
    assert stable.digest == expected
    assert stable.request == normal


def test_a_naive_time_or_an_unknown_type_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="timezone"):
        fingerprint({"at": datetime(2026, 3, 2)})
    with pytest.raises(InvalidRequest, match="set"):
        fingerprint({"at": {1, 2}})
    assert fingerprint({"at": datetime(2026, 3, 2, tzinfo=UTC)}).request == {
        "at": "2026-03-02T00:00:00.000000Z"
    }
