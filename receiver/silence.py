"""Silence: which myids sent events and then none for a while (pure: no I/O, no clock).

The PBX does not retry and says nothing when it stops sending (a subscription lost, a firewall
changed): a customer going quiet is the failure nobody sees. The server reads each myid's newest
event time now and then and hands it to a Watch, which says who went quiet and who came back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HOURS = re.compile(
    r"(?:(?P<first>[a-z]{3})(?:-(?P<last>[a-z]{3}))?\s+)?"
    r"(?P<opens>\d{1,2}:\d{2})-(?P<closes>\d{1,2}:\d{2})"
)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Change:
    """A myid went quiet (`quiet`), or sends again; `newest_us`: its newest event's time;
    `for_us`: how long it has been quiet (went quiet), or was (came back)."""

    myid: str
    quiet: bool
    newest_us: int
    for_us: int


@dataclass(frozen=True)
class WorkingHours:
    """The hours in which silence counts (--silence-hours): from `opens` to `closes` on the
    `days` (0 Monday ... 6 Sunday), on the clock of `place`."""

    days: frozenset[int]
    opens: time
    closes: time
    place: tzinfo = UTC

    @classmethod
    def parse(cls, text: str, place: tzinfo = UTC) -> WorkingHours:
        """`09:00-18:00` (every day) or `mon-fri 09:00-18:00`. Raises ValueError saying what
        to give."""
        wanted = "give the hours as 09:00-18:00, or with days as mon-fri 09:00-18:00"
        found = HOURS.fullmatch(text.strip().lower())
        if found is None:
            raise ValueError(f"{text!r} is not working hours: {wanted}")
        try:
            opens, closes = (time.fromisoformat(found[n].zfill(5)) for n in ("opens", "closes"))
        except ValueError:
            raise ValueError(f"{text!r} is not working hours: {wanted}") from None
        if closes <= opens:
            raise ValueError(f"{text!r}: the hours must end after they start ({wanted})")
        first, last = found["first"] or "mon", found["last"] or found["first"] or "sun"
        if first not in DAYS or last not in DAYS:
            raise ValueError(f"{text!r}: days are {', '.join(DAYS)} ({wanted})")
        start, end = DAYS.index(first), DAYS.index(last)
        days = range(start, end + 1) if start <= end else [*range(start, 7), *range(end + 1)]
        return cls(frozenset(days), opens, closes, place)

    def within_us(self, since_us: int, until_us: int, enough_us: int) -> int:
        """The working time between two instants, in µs; counted from `until_us` back, and no
        further once it reaches `enough_us`."""
        total = 0
        day = self._local_date(until_us)
        first = self._local_date(since_us)
        while day >= first and total < enough_us:
            if day.weekday() in self.days:
                opens, closes = (self._instant(day, at) for at in (self.opens, self.closes))
                total += max(0, min(closes, until_us) - max(opens, since_us))
            day -= timedelta(days=1)
        return total

    def _local_date(self, us: int) -> date:
        return (EPOCH + timedelta(microseconds=us)).astimezone(self.place).date()

    def _instant(self, day: date, at: time) -> int:
        return (datetime.combine(day, at, self.place) - EPOCH) // timedelta(microseconds=1)


class Watch:
    """The myids with no event for `after_seconds`, among those that sent any; with `hours`,
    of working time only (a night or a weekend without calls is no silence)."""

    def __init__(self, after_seconds: float, hours: WorkingHours | None = None) -> None:
        self.after_us = int(after_seconds * 1_000_000)
        self.hours = hours
        self.quiet: dict[str, int] = {}  # myid -> the time of its newest event
        self.newest: dict[str, int] = {}  # myid -> its newest event's time, at the last update

    def update(self, newest: dict[str, int], now_us: int) -> list[Change]:
        """Take each myid's newest event time; the myids that went quiet or came back since
        the last update."""
        changes = []
        for myid, at in sorted(newest.items()):
            silent = self.quiet_us(at, now_us) >= self.after_us
            if silent and myid not in self.quiet:
                self.quiet[myid] = at
                changes.append(Change(myid, True, at, now_us - at))
            elif not silent and myid in self.quiet:
                went_quiet_at = self.quiet.pop(myid)
                changes.append(Change(myid, False, at, max(at - went_quiet_at, 0)))
        for myid in [myid for myid in self.quiet if myid not in newest]:
            del self.quiet[myid]  # its events are gone (pruned): nothing to wait for
        self.newest = dict(newest)
        return changes

    def quiet_us(self, newest_us: int, now_us: int) -> int:
        """How long a myid whose newest event is at `newest_us` has been quiet, as counted."""
        if self.hours is None:
            return now_us - newest_us
        if newest_us >= now_us:
            return 0
        return self.hours.within_us(newest_us, now_us, self.after_us)
