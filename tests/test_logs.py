"""Logging: a message that repeats is logged once in a while, with how many there were."""

from __future__ import annotations

import asyncio
import logging

import httpx2 as httpx
import pytest

from receiver.logs import Repeated, masked_query

log = logging.getLogger("receiver.test")


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_a_repeated_message_is_logged_first_then_once_with_its_count(caplog) -> None:  # type: ignore[no-untyped-def]
    repeated = Repeated(log, interval=3600)
    for n in range(5):
        repeated.log(logging.ERROR, "full", "not stored: %d", n)
    repeated.log(logging.WARNING, "refused 400", "refused: %s", "no myid")  # another kind
    assert messages(caplog) == ["not stored: 0", "refused: no myid"]
    repeated.flush_all()
    assert messages(caplog)[2:] == [
        "not stored: 4 (and 3 more like it in the last 3600 s, not logged)"
    ]
    repeated.flush_all()  # nothing held any more
    assert len(caplog.records) == 3


def test_after_its_interval_the_next_one_is_logged_with_those_held(caplog) -> None:  # type: ignore[no-untyped-def]
    repeated = Repeated(log, interval=3600)
    for n in range(3):
        repeated.log(logging.ERROR, "full", "not stored: %d", n)
    repeated.quiet_until["full"] = 0.0  # as if the hour had passed, with no event loop running
    repeated.log(logging.ERROR, "full", "not stored: %d", 3)
    assert messages(caplog) == [
        "not stored: 0",
        "not stored: 2 (and 1 more like it in the last 3600 s, not logged)",
        "not stored: 3",
    ]


async def test_in_an_event_loop_the_count_comes_at_the_end_of_the_interval(caplog) -> None:  # type: ignore[no-untyped-def]
    repeated = Repeated(log, interval=0.05)
    for n in range(4):
        repeated.log(logging.ERROR, "full", "not stored: %d", n)
    for _ in range(500):  # no further message is needed for the count to be logged
        if len(caplog.records) == 2:
            break
        await asyncio.sleep(0.01)
    assert messages(caplog) == [
        "not stored: 0",
        "not stored: 3 (and 2 more like it in the last 0.05 s, not logged)",
    ]


@pytest.mark.parametrize(
    ("query", "masked"),
    [
        ("myid=1&token=S3cret", "myid=1&token=***"),
        ("myid=1&%74oken=S3cret", "myid=1&%74oken=***"),  # the name as decoded is the token
        ("myid=1&To%4Ben=S3cret&x=1", "myid=1&To%4Ben=***&x=1"),
        ("myid=1&to%E2%84%AAen=S3cret", "myid=1&to%E2%84%AAen=S3cret"),  # a Kelvin sign: not it
        ("a=1&access_token=S3cret", "a=1&access_token=***"),
        ("a=1&API_KEY=S3cret", "a=1&API_KEY=***"),
        ("myid=1&EventType=hangup", "myid=1&EventType=hangup"),
    ],
)
def test_the_token_is_masked_as_parsing_takes_it(query: str, masked: str) -> None:
    assert masked_query(query) == masked


def test_the_access_log_never_shows_the_token(server) -> None:  # type: ignore[no-untyped-def]
    running = server("--token", "S3cret", "--access-log", "--log-level", "info")
    line = "EventType=hangup&EventTime=1&CallID=c1&SubCallID=s1"
    for name in ("token", "%74oken", "To%4Ben", "TOKEN"):
        answer = httpx.get(f"{running.url}/webhook?myid=1&{name}=S3cret&{line}")
        assert answer.status_code == 200, answer.text
    _, logged = running.stop()
    assert logged.count("/webhook?myid=1&") == 4, logged  # every delivery is in the access log
    assert "S3cret" not in logged
