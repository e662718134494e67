"""GET /api/stream on a real server: events and calls arrive live, by myid, resumed, guarded."""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import jsonschema
import pytest

from receiver.event import Event, RawRequest
from receiver.parse import parse_request
from receiver.store import Store
from receiver.store.backend import StorageUnavailable
from receiver.web import stream
from receiver.web.openapi import spec
from receiver.web.stream import Feed, Listener, Position, Published
from tests.conftest import ServerProcess, scenario, wait_for_calls


class Stream:
    """A Server-Sent Events client on a thread: the messages (and comments) as they come."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.opened = threading.Event()
        self.status = 0
        self.headers = headers or {}
        self.response: httpx.Response | None = None
        self.thread = threading.Thread(target=self.read, args=(url,), daemon=True)
        self.thread.start()
        assert self.opened.wait(10), "the stream did not open"

    def read(self, url: str) -> None:
        with httpx.stream("GET", url, headers=self.headers, timeout=60) as response:
            self.status = response.status_code
            self.response = response
            self.opened.set()
            if response.status_code != 200:
                response.read()
                return
            fields: dict[str, Any] = {}
            try:
                for line in response.iter_lines():
                    if line.startswith(":"):
                        self.messages.put({"comment": line[1:].strip()})
                    elif line:
                        name, _, value = line.partition(": ")
                        fields[name] = value
                    elif fields:
                        if "data" in fields:
                            fields["data"] = json.loads(fields["data"])
                        self.messages.put(fields)
                        fields = {}
            except httpx.HTTPError:
                pass
        self.messages.put({"ended": True})

    def next(self, kind: str, seconds: float = 5, **match: Any) -> dict[str, Any]:
        """The next message of `kind` whose data has the `match` values; the others are passed."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                found = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {kind} message {match} within {seconds} s") from None
            if found.get("event") == kind and all(
                found["data"].get(name) == value for name, value in match.items()
            ):
                return found
            if kind == "ended" and found.get("ended"):
                return found

    def close(self) -> None:
        if self.response is not None:
            self.response.close()


def deliver(url: str, myid: str, lines: list[str]) -> list[int]:
    ids = []
    for line in lines:
        answer = httpx.get(f"{url}/webhook?myid={myid}&{line}")
        assert answer.status_code == 200, answer.text
        ids.append(answer.json()["id"])
    return ids


def call_id(lines: list[str]) -> str:
    return lines[0].split("&CallID=")[1].split("&")[0]


@pytest.fixture
def running(server) -> ServerProcess:  # type: ignore[no-untyped-def]
    process: ServerProcess = server()
    return process


def test_events_and_calls_arrive_as_they_change(running: ServerProcess) -> None:
    stream = Stream(f"{running.url}/api/stream")
    call = scenario("inbound-answered")
    try:
        [first] = deliver(running.url, "85218", call[:1])
        event = stream.next("event", id=first)
        assert event["data"]["call_id"] == call_id(call)
        assert event["id"].split(":")[0] == str(first)
        ringing = stream.next("call", call_id=call_id(call))
        assert ringing["data"]["status"] == "in_progress"
        assert ringing["data"]["answered_at"] is None
        deliver(running.url, "85218", call[1:])
        done = stream.next("call", call_id=call_id(call), status="answered")
        assert done["data"]["answered_by"] == "2566*101"
        calls = httpx.get(f"{running.url}/api/calls").json()["calls"]
        assert done["data"] == next(c for c in calls if c["call_id"] == call_id(call))
    finally:
        stream.close()


def test_only_the_myids_asked_for(running: ServerProcess) -> None:
    stream = Stream(f"{running.url}/api/stream?myid=85219")
    try:
        other = scenario("inbound-answered")
        ours = scenario("outbound-answered")
        deliver(running.url, "85218", other)
        [mine, *_] = deliver(running.url, "85219", ours)
        first = stream.next("event")
        assert first["data"]["id"] == mine
        assert stream.next("call")["data"]["call_id"] == call_id(ours)
    finally:
        stream.close()


def test_last_event_id_resumes_where_it_left(running: ServerProcess) -> None:
    call = scenario("inbound-answered")
    first, second, third = deliver(running.url, "85218", call)
    wait_for_calls(lambda path: httpx.get(f"{running.url}{path}"))
    stream = Stream(f"{running.url}/api/stream", {"Last-Event-ID": f"{first}:{first}"})
    try:
        assert stream.next("event")["data"]["id"] == second
        assert stream.next("event")["data"]["id"] == third
        resumed = stream.next("call")
        assert resumed["data"]["call_id"] == call_id(call)
        assert resumed["data"]["status"] == "answered"
        assert resumed["id"] == f"{third}:{third}"
    finally:
        stream.close()
    # an event id alone is taken as both; nothing missed, nothing sent but what comes next
    later = Stream(f"{running.url}/api/stream", {"Last-Event-ID": str(third)})
    try:
        [fourth, *_] = deliver(running.url, "85218", scenario("inbound-cancelled"))
        assert later.next("event")["data"]["id"] == fourth
    finally:
        later.close()


def test_bad_requests_are_refused_as_described(running: ServerProcess) -> None:
    schema = {"$ref": "#/components/schemas/Error", "components": spec()["components"]}
    for headers, query, needle in [
        ({"Last-Event-ID": "yesterday"}, "", "Last-Event-ID"),
        ({}, "?myid=no%20spaces", "myid"),
        ({}, "?token=x", "unknown parameter token"),
    ]:
        answer = httpx.get(f"{running.url}/api/stream{query}", headers=headers)
        assert answer.status_code == 400
        jsonschema.Draft202012Validator(schema).validate(answer.json())
        assert needle in answer.json()["error"]


def test_token_in_header_or_query(server) -> None:  # type: ignore[no-untyped-def]
    running = server("--api-token", "reader")
    assert httpx.get(f"{running.url}/api/stream").status_code == 401
    assert httpx.get(f"{running.url}/api/stream?token=wrong").status_code == 401
    assert httpx.get(f"{running.url}/api/events?token=reader").status_code == 401  # stream only
    for url, headers in [
        (f"{running.url}/api/stream?token=reader", {}),
        (f"{running.url}/api/stream", {"Authorization": "Bearer reader"}),
    ]:
        stream = Stream(url, headers)
        try:
            assert stream.status == 200
            [event_id, *_] = deliver(running.url, "85218", scenario("inbound-cancelled"))
            assert stream.next("event")["data"]["id"] == event_id
        finally:
            stream.close()


@pytest.mark.slow
def test_keep_alive_then_ends_when_the_server_stops(running: ServerProcess) -> None:
    stream = Stream(f"{running.url}/api/stream")
    deadline = time.monotonic() + 20
    comments = []
    while time.monotonic() < deadline and "keep-alive" not in comments:
        comments.append(stream.messages.get(timeout=20).get("comment"))
    assert "keep-alive" in comments
    started = time.monotonic()
    code, log = running.stop(signal.SIGTERM)
    assert code in (0, -signal.SIGTERM), log  # uvicorn re-raises the signal once it has stopped
    assert time.monotonic() - started < 5  # the stream did not hold the shutdown
    stream.next("ended")


def test_a_step_is_handed_to_each_listener_as_what_it_wants() -> None:
    feed = Feed(unknown_after_us=0)
    everyone = feed.listen([])
    only_2 = feed.listen(["2"])
    returning = feed.listen([], since=Position(2, 1))  # had events 1-2 and the calls of 1
    steps = [Published.of("event", {"id": n}, [str(n)], Position(n, 0)) for n in (1, 2, 3)] + [
        Published.of("call", {"call": "c"}, ["1", "2"], Position(3, 3))
    ]
    feed.publish(steps)
    assert everyone.take() == b"".join(step.encoded for step in steps)
    assert only_2.take() == steps[1].encoded + steps[3].encoded
    assert returning.take() == steps[2].encoded + steps[3].encoded
    assert everyone.take() == b"" and not everyone.ready.is_set()


def test_a_listener_too_far_behind_gets_what_waited_then_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream, "QUEUE_MAX", 3)
    listener = Listener([])
    listener.offer(b"a", 2)
    listener.offer(b"b", 2)  # over the limit: let go, it comes back with Last-Event-ID
    listener.offer(b"c", 1)
    assert listener.ended and listener.ready.is_set()
    assert listener.take() == b"a"


def numbered(n: int) -> Event:
    query = f"myid=1&EventType=dial-in&EventTime={1000 + n}&CallID=c{n}&SubCallID=s{n}"
    parsed, _ = parse_request(RawRequest("GET", query.encode()), received_at_us=1, source="t")
    return parsed


class Paused:
    """A real store whose reads of calls wait until let go (or fail), so that a client can
    arrive, or the database go away, while the feed is in the middle of a step."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.reading = asyncio.Event()
        self.go_on = asyncio.Event()
        self.fail = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def calls_of_events(self, *args: Any, **kwargs: Any) -> Any:
        self.reading.set()
        await self.go_on.wait()
        if self.fail:
            raise StorageUnavailable("gone")
        return await self.store.calls_of_events(*args, **kwargs)


async def test_a_client_arriving_mid_step_gets_each_event_once(db_path: Path) -> None:
    async with Store(db_path) as real:
        for n in (1, 2, 3):
            await real.add_event(numbered(n))
        await real.refresh_calls()
        store = Paused(real)
        feed = Feed(unknown_after_us=0)
        first = feed.listen([])
        feed.position = Position(1, 1)  # event 1 and its call were sent before
        stepping = asyncio.create_task(feed.step(store))  # type: ignore[arg-type]
        await store.reading.wait()  # it has read events 2 and 3, not their calls yet
        late = feed.listen([], since=Position(1, 1))  # a client coming back meanwhile
        missed = [m async for m in feed.missed(store, Position(1, 1), late)]  # type: ignore[arg-type]
        store.go_on.set()
        await stepping
        ids = [line for line in late.take().split(b"\n") if line.startswith(b"id: ")]
        assert missed == []  # nothing was the feed's yet: the step brings it
        assert [line.split(b" ")[1].split(b":")[0] for line in ids].count(b"2") == 1
        assert first.take().count(b"event: event") == 2


async def test_a_step_that_fails_loses_nothing(db_path: Path) -> None:
    async with Store(db_path) as real:
        for n in (1, 2):
            await real.add_event(numbered(n))
        await real.refresh_calls()
        store = Paused(real)
        store.fail = True
        store.go_on.set()
        feed = Feed(unknown_after_us=0)
        listener = feed.listen([])
        with pytest.raises(StorageUnavailable):
            await feed.step(store)  # type: ignore[arg-type]
        assert feed.position == Position(0, 0) and listener.take() == b""
        store.fail = False
        await feed.step(store)  # type: ignore[arg-type]
        assert listener.take().count(b"event: event") == 2
