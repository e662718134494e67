"""Silence alerts' working hours (--silence-hours): only the time within them counts."""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from receiver.cli import main
from receiver.silence import Watch, WorkingHours

MOSCOW = ZoneInfo("Europe/Moscow")
MINUTE = 60_000_000


def at(text: str) -> int:
    """µs since the epoch of a time on Moscow's clock."""
    return int(datetime.fromisoformat(text).replace(tzinfo=MOSCOW).timestamp() * 1_000_000)


@pytest.mark.parametrize(
    ("text", "days", "opens", "closes"),
    [
        ("09:00-18:00", range(7), time(9), time(18)),  # every day
        ("mon-fri 09:00-18:00", range(5), time(9), time(18)),
        ("Sat 9:30-14:00", [5], time(9, 30), time(14)),  # one day; an hour of one digit
        ("fri-mon 08:00-20:00", [4, 5, 6, 0], time(8), time(20)),  # over the weekend
    ],
)
def test_hours_are_read(text: str, days: object, opens: time, closes: time) -> None:
    hours = WorkingHours.parse(text, MOSCOW)
    assert (hours.days, hours.opens, hours.closes) == (frozenset(days), opens, closes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("9-18", "give the hours as 09:00-18:00, or with days as mon-fri 09:00-18:00"),
        ("18:00-09:00", "the hours must end after they start"),
        ("mon-fry 09:00-18:00", "days are mon, tue, wed, thu, fri, sat, sun"),
        ("09:00-25:00", "is not working hours"),
    ],
)
def test_wrong_hours_say_what_to_give(text: str, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        WorkingHours.parse(text)


def test_only_working_time_counts_towards_silence() -> None:
    """The last call at 17:50 on Friday 5 December: 10 minutes of the 30 by closing time,
    the other 20 on Monday morning."""
    watch = Watch(1800, WorkingHours.parse("mon-fri 09:00-18:00", MOSCOW))
    last = at("2025-12-05T17:50")
    assert watch.update({"175": last}, at("2025-12-05T18:20")) == []
    assert watch.update({"175": last}, at("2025-12-07T12:00")) == []  # Sunday
    assert watch.update({"175": last}, at("2025-12-08T09:19")) == []  # 29 minutes
    went = watch.update({"175": last}, at("2025-12-08T09:20"))
    assert [(c.myid, c.quiet, c.for_us) for c in went] == [
        ("175", True, at("2025-12-08T09:20") - last)  # as long as it really was
    ]
    back = watch.update({"175": at("2025-12-08T09:25")}, at("2025-12-08T09:26"))
    assert [(c.myid, c.quiet) for c in back] == [("175", False)]


def test_without_hours_every_minute_counts() -> None:
    watch = Watch(1800)
    last = at("2025-12-05T17:50")
    assert [c.quiet for c in watch.update({"175": last}, at("2025-12-05T18:20"))] == [True]


def test_serve_refuses_hours_it_cannot_read(tmp_path: object) -> None:
    result = CliRunner().invoke(
        main, ["serve", "--db", f"{tmp_path}/r.db", "--silence-hours", "9 to 5"]
    )
    assert result.exit_code != 0
    assert "--silence-hours '9 to 5' is not working hours: give the hours as 09:00-18:00" in (
        result.output
    )
