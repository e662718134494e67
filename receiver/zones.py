"""Time zones: the IANA zone that the pages show times in and the reports group days and hours by.

Pure: a zone by name, its UTC offsets over a span of time (for SQL that groups by local day),
and times shown in it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LAST_DAY_US = (datetime(9999, 12, 30, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name` (`Europe/Moscow`, `UTC`). Raises ValueError saying what to give."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"{name!r} is not a time zone: give an IANA name such as Europe/Moscow or UTC"
        ) from None


def offset_us(place: tzinfo, us: int) -> int:
    """The zone's offset from UTC at the instant `us`, in µs."""
    moment = EPOCH + timedelta(microseconds=us)
    shift = moment.astimezone(place).utcoffset()
    return 0 if shift is None else shift // timedelta(microseconds=1)


def offsets(place: tzinfo, since_us: int, until_us: int) -> tuple[tuple[int, int], ...]:
    """The zone's offsets over [since, until): (from_us, offset_us) pairs, the first from
    `since_us`, each change found to the second. Days are looked at one by one (a zone changes
    its offset at most a few times a year), on whole days, so that the answer can be cached."""
    since_us, until_us = (min(max(us, 0), LAST_DAY_US) for us in (since_us, until_us))
    start, end = since_us // DAY_US * DAY_US, -(-until_us // DAY_US) * DAY_US
    return _offsets(place, start, max(end, start + DAY_US))


@functools.lru_cache(maxsize=64)
def _offsets(place: tzinfo, start: int, end: int) -> tuple[tuple[int, int], ...]:
    found = [(start, offset_us(place, start))]
    day = start + DAY_US
    while day <= end:
        if offset_us(place, day) != found[-1][1]:
            low, high = day - DAY_US, day  # the old offset at low, a new one at high
            while high - low > 1_000_000:
                middle = low + (high - low) // 2_000_000 * 1_000_000
                if offset_us(place, middle) == found[-1][1]:
                    low = middle
                else:
                    high = middle
            found.append((high, offset_us(place, high)))
        day += DAY_US
    return tuple(found)


def local_periods(
    place: tzinfo, since_us: int, until_us: int, period_us: int
) -> list[tuple[int, int, int]]:
    """The zone's local days or hours (`period_us` long) over [since, until), as UTC ranges:
    (the period's start on the zone's clock, from_us, to_us), in time order. A period the clock
    goes through twice (the hour an offset goes back) has two ranges."""
    spans = offsets(place, since_us, until_us)
    found = []
    for index, (start, offset) in enumerate(spans):
        end = spans[index + 1][0] if index + 1 < len(spans) else until_us
        moment, stop = max(start, since_us), min(end, until_us)
        while moment < stop:
            period = (moment + offset) // period_us * period_us
            next_moment = min(stop, period + period_us - offset)
            found.append((period, moment, next_moment))
            moment = next_moment
    return found


def local_start(place: tzinfo, local_us: int) -> int | None:
    """The instant (µs since the epoch) at which the zone's wall clock reads `local_us` (µs
    since 1970-01-01 00:00 on that clock): a local day's or hour's start. None when no date can
    show it (a stored time may be any 64-bit integer)."""
    try:
        wall = datetime(1970, 1, 1) + timedelta(microseconds=local_us)
        return (wall.replace(tzinfo=place) - EPOCH) // timedelta(microseconds=1)
    except (OverflowError, ValueError):
        return None


def day_start(place: tzinfo, us: int) -> int:
    """The start of the local day that holds the instant `us` (a time a date can show)."""
    local = us + offset_us(place, us)
    start = local_start(place, local // DAY_US * DAY_US)
    return us // DAY_US * DAY_US if start is None else start


def in_zone(iso: str | None, place: tzinfo) -> str | None:
    """An ISO 8601 UTC time (`...Z`) as the same instant with the zone's offset, µs kept."""
    if iso is None:
        return None
    moment = datetime.fromisoformat(iso).astimezone(place)
    return moment.isoformat(timespec="microseconds")


REPORT_TIMES = ("period", "first_missed_at", "last_missed_at", "handled_at")


def report_in_zone(rows: Iterable[dict[str, Any]], place: tzinfo) -> None:
    """A report's times (its rows changed in place) given with the zone's offset."""
    for row in rows:
        for name in REPORT_TIMES:
            if name in row:
                row[name] = in_zone(row[name], place)
