"""format_timestamp remembers recent spellings; what it remembers is exactly what it computes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.canonical import _format_timestamp, format_timestamp
from ledger.errors import ProfileError

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
def test_remembered_spellings_are_the_computed_ones(moments: list[datetime]) -> None:
    for moment in moments + moments:  # the second pass reads what was remembered
        assert format_timestamp(moment) == _format_timestamp(moment)


def test_one_instant_in_two_zones_has_one_spelling() -> None:
    paris = datetime(2026, 3, 29, 3, 30, tzinfo=ZoneInfo("Europe/Paris"))
    assert format_timestamp(paris) == format_timestamp(paris.astimezone(UTC))
    assert format_timestamp(paris) == "2026-03-29T01:30:00.000000Z"


def test_a_naive_datetime_is_refused_even_after_its_aware_twin() -> None:
    format_timestamp(datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(ProfileError):
        format_timestamp(datetime(2026, 1, 1))
