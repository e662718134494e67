"""An event's values as its JSON record shows them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from receiver.event import LAST_TIME_US, iso_time


@given(st.integers(min_value=0, max_value=LAST_TIME_US))
def test_a_time_is_shown_to_the_microsecond_as_datetime_shows_it(us: int) -> None:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
    assert iso_time(us) == moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=LAST_TIME_US + 1)))
def test_a_time_outside_the_years_1970_to_9999_is_shown_as_none(us: int) -> None:
    assert iso_time(us) is None
