"""GET /api/stream: new events and changed calls as Server-Sent Events.

One `Feed` reads what is new from the database for every listener at once: woken by each
stored delivery and each build of calls in this process, and every POLL_SECONDS for what other
processes write (a `receiver replay` into the same file). Each message is encoded once and
queued to the listeners whose myids it concerns.

A message's id is `<event>:<calls>`: every event up to the first id has been sent, and the
calls of every event up to the second. A client that comes back with it as `Last-Event-ID`
gets what it missed, then the live feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from receiver.event import now_us
from receiver.logs import Repeated
from receiver.settings import Settings
from receiver.store import Storage
from receiver.store.backend import StorageUnavailable
from receiver.web.api import known_params, myids_param
from receiver.web.openapi import LAST_EVENT_ID_PATTERN

log = logging.getLogger("receiver")

POLL_SECONDS = 0.5  # how soon what another process wrote is seen
# Once woken, what else is stored this soon after is read and sent with it: one read and one
# write a listener for a few deliveries, not for each (at 500 deliveries/s and 50 listeners,
# waking for each took a fifth of the server's time and half its ingest; 20 ms here left ingest
# 0.88x beside 50 streams, 50 ms 0.88-0.96x with the 200 to each client p95 53 ms).
GATHER_SECONDS = 0.05
KEEP_ALIVE_SECONDS = 10.0  # a comment this often keeps proxies from closing a quiet stream
READ_AT_ONCE = 500  # events (and the calls of as many events) read in one go
BACKLOG = 1000  # the most events a returning client is sent; further behind, `reset`
QUEUE_MAX = 10_000  # messages a listener may fall behind before it is let go (it comes back)
RETRY_MS = 2000  # how soon EventSource reconnects after the stream ends
LAST_EVENT_ID = re.compile(LAST_EVENT_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class Position:
    """How far a stream has gone: the events up to `events`, the calls of those up to `calls`."""

    events: int
    calls: int

    def text(self) -> str:
        return f"{self.events}:{self.calls}"


def parse_position(text: str) -> Position:
    """A `Last-Event-ID`: `<event>:<calls>` as sent, or an event id alone (its calls too).
    Raises ValueError otherwise."""
    if not LAST_EVENT_ID.fullmatch(text):
        raise ValueError(f"{text!r} is not a stream position")
    events, _, calls = text.partition(":")
    return Position(int(events), int(calls or events))


def message(kind: str, data: Any, position: Position) -> bytes:
    """One Server-Sent Event (orjson writes no newline, so `data` is one line)."""
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        position.text().encode(),
        kind.encode(),
        orjson.dumps(data),
    )


@dataclass(frozen=True, slots=True)
class Published:
    """One message of a step, encoded once, with what says who gets it."""

    kind: str
    encoded: bytes
    myids: tuple[str, ...]
    position: Position

    @classmethod
    def of(
        cls, kind: str, data: dict[str, Any], myids: Iterable[str], position: Position
    ) -> Published:
        return cls(kind, message(kind, data, position), tuple(myids), position)


class Listener:
    """One open stream: the myids it wants (none: all) and the messages waiting for it."""

    def __init__(self, myids: Iterable[str], since: Position | None = None) -> None:
        self.myids = frozenset(myids)
        self.since = since or Position(0, 0)  # it has had everything up to here already
        self.waiting: list[bytes] = []  # chunks of messages, in order
        self.messages = 0  # how many messages they hold
        self.ready = asyncio.Event()  # set when there is something to take, or it ended
        self.ended = False

    def wants(self, myids: Iterable[str]) -> bool:
        return not self.myids or not self.myids.isdisjoint(myids)

    def lacks(self, kind: str, position: Position) -> bool:
        """Whether a message at `position` is news to it (not in what it had)."""
        if kind == "event":
            return position.events > self.since.events
        return position.calls > self.since.calls

    def wants_all(self, first_event: Position | None, first_call: Position | None) -> bool:
        """Whether every message of a step is for it: the step's first event and first call
        message are news to it (the others come after them), and it takes every myid."""
        return (
            not self.myids
            and (first_event is None or self.lacks("event", first_event))
            and (first_call is None or self.lacks("call", first_call))
        )

    def offer(self, chunk: bytes, messages: int = 1) -> None:
        if self.ended:
            return
        if self.messages + messages > QUEUE_MAX:
            self.end()  # too far behind: it reconnects with Last-Event-ID
            return
        self.waiting.append(chunk)
        self.messages += messages
        self.ready.set()

    def end(self) -> None:
        """What waits is still sent, then the stream ends."""
        self.ended = True
        self.ready.set()

    def take(self) -> bytes:
        """Everything waiting, as one write."""
        chunk = b"".join(self.waiting)
        self.waiting.clear()
        self.messages = 0
        self.ready.clear()
        return chunk


class Feed:
    """What is new in the database, read once and handed to every listener."""

    def __init__(self, unknown_after_us: int) -> None:
        self.unknown_after_us = unknown_after_us
        self.listeners: set[Listener] = set()
        self.position = Position(0, 0)
        self.wake = asyncio.Event()
        self.closed = False

    def touch(self) -> None:
        """Something was stored or built in this process: read it now, if anyone listens."""
        if self.listeners:
            self.wake.set()

    def listen(self, myids: Iterable[str], since: Position | None = None) -> Listener:
        listener = Listener(myids, since)
        if self.closed:
            listener.end()
        self.listeners.add(listener)
        return listener

    def forget(self, listener: Listener) -> None:
        self.listeners.discard(listener)

    def close(self) -> None:
        """End every stream (the server is stopping: it would wait for them otherwise)."""
        self.closed = True
        for listener in self.listeners:
            listener.end()

    def publish(self, batch: list[Published]) -> None:
        """Hand a step's messages to the listeners: to those that want all of them as one
        chunk, joined once (at 1,000 deliveries a second and 50 listeners, handing each
        message to each listener took a tenth of the server's time); to the others, theirs."""
        if not batch:
            return
        first_event = next((item.position for item in batch if item.kind == "event"), None)
        first_call = next((item.position for item in batch if item.kind == "call"), None)
        everything: bytes | None = None
        for listener in self.listeners:
            if listener.wants_all(first_event, first_call):
                everything = everything or b"".join(item.encoded for item in batch)
                listener.offer(everything, len(batch))
                continue
            chosen = [
                item.encoded
                for item in batch
                if listener.wants(item.myids) and listener.lacks(item.kind, item.position)
            ]
            if chosen:
                listener.offer(b"".join(chosen), len(chosen))

    async def run(self, store: Storage, repeated: Repeated) -> None:
        """The feed's loop, for the app's lifetime."""
        state = await store.calls_state()
        self.position = Position(state.events, min(state.built_to_event, state.events))
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await self.wake.wait()
                await asyncio.sleep(GATHER_SECONDS)
            self.wake.clear()
            try:
                if await self.step(store):
                    self.wake.set()  # more to read
            except StorageUnavailable as failure:  # the server went away: one line
                repeated.log(logging.ERROR, "stream", "the live feed could not read the "
                             "database; trying again: %s", failure)  # fmt: skip
            except Exception as failure:
                repeated.log(logging.ERROR, "stream", "the live feed could not read the "
                             "database; trying again", exc_info=failure)  # fmt: skip

    async def step(self, store: Storage) -> bool:
        """Send what is new; whether there is more to read."""
        state = await store.calls_state()
        if not self.listeners:  # nothing to send: only keep up
            self.position = Position(state.events, min(state.built_to_event, state.events))
            return False
        # The step's position is the feed's only once its messages are handed out, with no
        # wait between: a client arriving meanwhile has what came before from missed(), and
        # the step's messages from the feed; a read that fails leaves the feed where it was.
        more = False
        batch: list[Published] = []
        position = self.position
        if state.events > position.events:
            records = await store.events_after(position.events, limit=READ_AT_ONCE)
            for record in records:
                position = Position(record["id"], position.calls)
                batch.append(Published.of("event", record, (record["myid"],), position))
            more = len(records) == READ_AT_ONCE
        built = min(state.built_to_event, position.events)
        through = min(built, position.calls + READ_AT_ONCE)
        if through > position.calls:
            calls = await store.calls_of_events(
                position.calls, through, now_us=now_us(), unknown_after_us=self.unknown_after_us
            )
            position = Position(position.events, through)
            batch += [Published.of("call", call, call["myids"], position) for call in calls]
            more = more or through < built
        self.position = position
        self.publish(batch)
        return more

    async def missed(
        self, store: Storage, since: Position, listener: Listener
    ) -> AsyncIterator[bytes]:
        """What a returning client missed, from `since` to the feed's position now (taken when
        it was listening already, so nothing falls between this and the live messages)."""
        now = self.position
        if now.events - since.events > BACKLOG:
            yield message("reset", {"reason": f"more than {BACKLOG} events were missed"}, now)
            return
        if now.events > since.events:
            records = await store.events_after(since.events, limit=now.events - since.events)
            for record in records:
                if record["id"] <= now.events and listener.wants((record["myid"],)):
                    yield message("event", record, Position(record["id"], since.calls))
        if now.calls > since.calls:
            calls = await store.calls_of_events(
                since.calls, now.calls, now_us=now_us(), unknown_after_us=self.unknown_after_us
            )
            for call in calls:
                if listener.wants(call["myids"]):
                    yield message("call", call, now)


async def stream_events(request: Request) -> Response:
    """GET /api/stream: Server-Sent Events of new events and changed calls."""
    settings: Settings = request.app.state.settings
    known_params(request, "/api/stream", also=("token",) if settings.api_token else ())
    myids = myids_param(request)
    last = request.headers.get("last-event-id")
    since = None
    if last is not None:
        try:
            since = parse_position(last.strip())
        except ValueError:
            raise HTTPException(
                400, "header Last-Event-ID must be the id of a message of this stream"
            ) from None
    feed: Feed = request.app.state.feed
    store: Storage = request.app.state.store

    async def messages() -> AsyncIterator[bytes]:
        listener = feed.listen(myids, since)
        try:
            yield b"retry: %d\n: %s\n\n" % (RETRY_MS, feed.position.text().encode())
            if since is not None:
                async for missed in feed.missed(store, since, listener):
                    yield missed
            while True:
                try:
                    async with asyncio.timeout(KEEP_ALIVE_SECONDS):
                        await listener.ready.wait()
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                chunk = listener.take()  # all that waits goes in one write
                if chunk:
                    yield chunk
                if listener.ended:
                    return
        finally:
            feed.forget(listener)

    return StreamingResponse(
        messages(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
