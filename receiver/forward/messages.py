"""The messages an event or a call change causes, for the outbox (pure: no I/O).

Every message is a JSON envelope, as the Standard Webhooks specification suggests:
`{"type": "call.missed", "timestamp": "...", "data": {...}}`, where data is the event's record
as `GET /api/events/{id}` gives it, or the call's record with its legs. A destination with
`original = true` gets `event.received` as the PBX sent it instead: the form it posted, or the
query string of a GET, with its content type.

The outbox keeps what a message is about (its event, its call), not its body: that is made when
it is sent (message_body), from the event as stored, or the call as it is then, so the commit
that stores an event writes a row of a hundred bytes, not a second copy of the event.

A message's id (the `webhook-id`) is made from what it is about, so a message written again
(a retry, a replay, a call's end rescheduled) keeps it and a receiver can de-duplicate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence

import orjson

from receiver.calls import Call, CallStatus, call_json
from receiver.event import Event, event_record, iso_time
from receiver.forward.rules import EVENT_RECEIVED, Route

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
ORIGINAL = "original"  # kept for a message to send in the PBX's form: its type is the event's
PLAIN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """One message for one destination, as the outbox keeps it."""

    destination: str
    message_id: str
    type: str
    myid: str
    order_key: str | None  # messages of one key (a call) go in the order they were written
    event_id: int | None
    call_id: str | None
    content_type: str
    body: bytes
    due_us: int  # not sent before (a call's end waits for the settle window)


@dataclasses.dataclass(frozen=True, slots=True)
class CallBefore:
    """What the outbox needs of a call as it was before a rebuild."""

    status: str
    answered_us: int | None
    ended_us: int | None


def envelope(message_type: str, at_us: int, data: dict[str, object]) -> bytes:
    return orjson.dumps({"type": message_type, "timestamp": iso_time(at_us), "data": data})


def order_key(call_id: str | None) -> str | None:
    return call_id.lower() if call_id else None


def event_messages(
    event: Event, event_id: int, routes: Sequence[Route], now_us: int
) -> list[Message]:
    """`event.received` of a newly stored event, for each route that takes it."""
    takers = [route for route in routes if route.takes(EVENT_RECEIVED, event.myid)]
    out = []
    for route in takers:
        content_type, body = ORIGINAL if route.original else JSON, b""
        message = Message(
            route.url, f"msg_event_{event_id}", EVENT_RECEIVED, event.myid,
            order_key(event.call_id), event_id, event.call_id, content_type, body, now_us,
        )  # fmt: skip
        out.append(message)
    return out


def event_body(
    event: Event, row: Sequence[object], content_type: str, at_us: int
) -> tuple[str, bytes]:
    """The body of an event's message (and its content type), from the stored event (`row`
    as EVENT_COLUMNS selects it, `event` made from it)."""
    if content_type == ORIGINAL:
        return original_form(event)
    return JSON, envelope(EVENT_RECEIVED, at_us, event_record(row))


def call_body(call: Call, message_type: str, at_us: int) -> bytes:
    """The body of a call's message: the call with its legs (its events are messages of their
    own)."""
    record = call_json(call, with_details=True)
    del record["events"]
    return envelope(message_type, at_us, record)


def original_form(event: Event) -> tuple[str, bytes]:
    """The delivery as the PBX sent it (the token cut out): its body, or a GET's query."""
    raw = event.raw
    if raw.method == "POST" and raw.body:
        return raw.content_type or FORM, raw.body
    return FORM, raw.query


def call_key(call_id: str) -> str:
    """A call's part of a message id: its CallID when that is plain, else a digest of it."""
    if PLAIN_ID.fullmatch(call_id):
        return call_id.lower()
    return hashlib.sha256(call_id.encode()).hexdigest()[:32]


def ended(status: str) -> bool:
    return status not in (CallStatus.IN_PROGRESS, CallStatus.UNKNOWN_END)


def call_messages(
    before: CallBefore | None,
    call: Call,
    routes: Sequence[Route],
    now_us: int,
    settle_us: int,
) -> list[Message]:
    """The call messages a rebuild of `call` causes: `call.started` for a new call,
    `call.answered` once it is, and its end (`call.missed`, or `call.completed`) due after the
    settle window, once it has ended or when an ended call changes (the end is then written
    again, replacing one not yet sent). Built with no unknown_end cut-off: a call without a
    hangup has not ended."""
    kinds: list[tuple[str, str, int]] = []
    if before is None:
        kinds.append(("call.started", "started", now_us))
    if call.answered_us is not None and (before is None or before.answered_us is None):
        kinds.append(("call.answered", "answered", now_us))
    if ended(call.status):
        changed = (
            before is None
            or not ended(before.status)
            or (before.status, before.ended_us) != (call.status.value, call.ended_us)
        )
        if changed:
            end = "call.missed" if call.status == CallStatus.MISSED else "call.completed"
            kinds.append((end, "ended", now_us + settle_us))
    if not kinds:
        return []
    key = call_key(call.call_id)
    out = []
    for kind, stage, due_us in kinds:
        takers = [route for route in routes for myid in call.myids if route.takes(kind, myid)]
        if not takers:
            continue
        body = b""  # made when sent (call_body): the call as it is then
        for route in dict.fromkeys(takers):
            message = Message(
                route.url, f"msg_call_{key}_{stage}", kind, call.myid,
                order_key(call.call_id), None, call.call_id, JSON, body, due_us,
            )  # fmt: skip
            out.append(message)
    return out
