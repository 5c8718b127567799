"""The integrator's remembered timestamps spell every instant exactly as format_timestamp does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.canonical import format_timestamp
from ledger.errors import ProfileError
from ledger.journal import timestamp_memo

zones = st.sampled_from(
    [UTC, ZoneInfo("Europe/Paris"), timezone(timedelta(hours=-5)), ZoneInfo("Asia/Kolkata")]
)


@settings(max_examples=300, deadline=None)
@given(
    moments=st.lists(
        st.datetimes(
            min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=zones
        ),
        max_size=30,
    )
)
def test_memo_spells_like_format_timestamp(moments: list[datetime]) -> None:
    stamp = timestamp_memo()
    for moment in moments + moments:  # the second pass reads the memo
        assert stamp(moment) == format_timestamp(moment)


def test_one_instant_in_two_zones_has_one_spelling() -> None:
    stamp = timestamp_memo()
    paris = datetime(2026, 3, 29, 3, 30, tzinfo=ZoneInfo("Europe/Paris"))
    assert stamp(paris) == stamp(paris.astimezone(UTC)) == "2026-03-29T01:30:00.000000Z"


def test_a_naive_datetime_is_refused_even_after_its_aware_twin() -> None:
    stamp = timestamp_memo()
    stamp(datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(ProfileError):
        stamp(datetime(2026, 1, 1))
