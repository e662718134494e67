"""Calls rebuilt from their events (pbx-events §3-4). Pure functions: no I/O.

A call is everything with one CallID; a leg is everything with one SubCallID. Events may come
out of order, twice, or not at all: every rule below uses what is there, ordered by time.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable
from typing import Any

from receiver.event import Event, iso_time, seconds


class Direction(enum.StrEnum):
    IN = "in"
    OUT = "out"
    INTERNAL = "internal"


class CallStatus(enum.StrEnum):
    ANSWERED = "answered"
    MISSED = "missed"  # inbound, nobody answered
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    CANCELLED = "cancelled"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    UNKNOWN_END = "unknown_end"  # no hangup came, and it is too long ago to still be going on


class CallSource(enum.StrEnum):
    """What a call was built from."""

    EVENTS = "events"  # the events we received
    CALL_HISTORY = "call_history"  # the PBX's call history, for a call none of whose events came


# The PBX's final CallStatus of a leg -> the call status when no one answered (pbx-events §3).
ENDINGS = {
    "BUSY": CallStatus.BUSY,
    "NOANSWER": CallStatus.NO_ANSWER,
    "CANCEL": CallStatus.CANCELLED,
    "CONGESTION": CallStatus.FAILED,
    "CHANUNAVAIL": CallStatus.FAILED,
}
DEFAULT_UNKNOWN_AFTER_US = 4 * 3600 * 1_000_000
# The version of the rules below. Stored with the built calls: a release that changes how a call
# is built raises it, and the calls are built again from their events (store/writer.py).
CALLS_VERSION = 1
SMALLEST, LARGEST = -(2**63), 2**63 - 1  # an SQLite INTEGER


def storable(us: int | None) -> int | None:
    """A span made here (a difference, a sum), or None when no INTEGER column holds it.

    Parsing keeps spans far below that, but many legs can add up past it, and an event stored
    before values were checked may hold any 64-bit integer.
    """
    return us if us is None or SMALLEST <= us <= LARGEST else None


def digits(number: str | None) -> str | None:
    """A phone number for matching: digits (and `*`) only; 8XXXXXXXXXX is taken as 7XXXXXXXXXX."""
    if not number:
        return None
    kept = re.sub(r"[^0-9*]", "", number)
    if len(kept) == 11 and kept.startswith("8"):
        kept = "7" + kept[1:]  # the Russian trunk prefix: 8 916... is +7 916...
    return kept or None


def is_external(number: str | None) -> bool:
    """External numbers have no `*`; extensions are `prefix*ext` (pbx-events §3)."""
    return bool(number) and "*" not in (number or "")


@dataclasses.dataclass(frozen=True)
class CallLeg:
    """One SubCallID: one attempt of the call on one extension."""

    sub_call_id: str
    extension: str | None  # prefix*ext
    extension_id: int | None
    direction: str | None  # CallFlow
    started_us: int | None
    answered_us: int | None
    ended_us: int | None
    talk_us: int | None
    status: str | None  # the PBX's CallStatus of the hangup; None while it goes on
    transferred: bool
    bridged: bool | None  # only IVR and queue legs carry it
    rec_id: str | None

    @property
    def routing(self) -> bool:
        """An IVR or queue leg: its own status says nothing about whether a person answered."""
        return self.bridged is not None

    @property
    def answered(self) -> bool:
        if self.routing:
            return False
        return self.answered_us is not None or (self.status == "ANSWER" and bool(self.talk_us))

    @property
    def ring_us(self) -> int | None:
        if self.answered_us is None or self.started_us is None:
            return None
        return storable(self.answered_us - self.started_us)


@dataclasses.dataclass(frozen=True)
class Call:
    """One CallID, rebuilt."""

    call_id: str
    myid: str
    myids: tuple[str, ...]
    direction: Direction
    started_us: int
    answered_us: int | None
    ended_us: int | None
    last_event_us: int
    ring_us: int | None
    talk_us: int | None
    status: CallStatus
    external_number: str | None
    did: str | None
    answered_by: str | None
    extensions: tuple[str, ...]
    transferred: bool
    callback_id: str | None
    recordings: tuple[str, ...]
    legs: tuple[CallLeg, ...]
    events: tuple[Event, ...]
    source: CallSource = CallSource.EVENTS


def leg_extension(event: Event) -> tuple[str | None, int | None]:
    """The extension a leg belongs to: the one rung, else the one calling."""
    name = event.called_extension or event.caller_extension
    number = event.called_extension_id if event.called_extension else event.caller_extension_id
    return (name.split("@", 1)[0] if name else None), number


def build_leg(sub_call_id: str, events: list[Event]) -> CallLeg:
    """A leg from its events, in time order; repeats are ignored."""

    def first(kind: str) -> Event | None:
        return next((e for e in events if e.event_type == kind), None)

    dial = first("dial-in") or first("dial-out")
    answer = first("answer")
    hangups = [e for e in events if e.event_type == "hangup"]
    hangup = hangups[-1] if hangups else None
    extension, extension_id = leg_extension(dial or events[0])
    talk = hangup.duration_us if hangup and hangup.duration_us is not None else None
    if talk is None and hangup and answer:
        talk = storable(hangup.order_us - answer.order_us)  # Duration is talk (pbx-events §3)
    return CallLeg(
        sub_call_id=sub_call_id,
        extension=extension,
        extension_id=extension_id,
        direction=next((e.call_flow for e in events if e.call_flow), None),
        started_us=(dial or events[0]).order_us,
        answered_us=answer.order_us if answer else None,
        ended_us=hangup.order_us if hangup else None,
        talk_us=talk,
        status=hangup.call_status if hangup else None,
        transferred=any(e.transferred for e in events),
        bridged=next((e.bridged for e in hangups if e.bridged is not None), None),
        rec_id=next((e.rec_id for e in reversed(hangups) if e.rec_id), None),
    )


def call_direction(ordered: list[Event]) -> Direction:
    """Internal: `*` in both numbers (pbx-events §4). Otherwise the first dial event says;
    without one (only hangups were subscribed), a leg our extension placed is outbound.
    """
    first = ordered[0]
    if not is_external(first.caller_id_num) and not is_external(first.called_number):
        return Direction.INTERNAL
    dial = next((e for e in ordered if e.event_type in ("dial-in", "dial-out")), None)
    if dial is not None:
        return Direction.OUT if dial.event_type == "dial-out" else Direction.IN
    placed = first.call_flow == "out" and first.called_extension is None
    return Direction.OUT if placed and not is_external(first.caller_id_num) else Direction.IN


def build_call(
    events: Iterable[Event],
    *,
    now_us: int,
    unknown_after_us: int | None = DEFAULT_UNKNOWN_AFTER_US,
) -> Call:
    """Rebuild one call from all the events of its CallID (any order, repeats allowed).

    A call with a leg still open is `in_progress`, or `unknown_end` once its last event is older
    than `unknown_after_us` (None: never; the store decides that when it reads).
    """
    ordered = sorted(events, key=lambda e: (e.order_us, e.id or 0))
    if not ordered:
        raise ValueError("a call needs at least one event")
    first = ordered[0]
    by_leg: dict[str, list[Event]] = {}
    for event in ordered:
        by_leg.setdefault(event.sub_call_id or f"no-subcallid-{event.id}", []).append(event)
    legs = tuple(build_leg(sub, leg_events) for sub, leg_events in by_leg.items())
    direction = call_direction(ordered)
    people = [leg for leg in legs if not leg.routing]
    answered = sorted((leg for leg in people if leg.answered), key=lambda leg: leg.answered_us or 0)
    bridged = any(leg.bridged for leg in legs)
    ended = all(leg.ended_us is not None for leg in legs)
    last_us = ordered[-1].order_us
    if answered or bridged:
        status = CallStatus.ANSWERED
    elif not ended:
        too_old = unknown_after_us is not None and now_us - last_us > unknown_after_us
        status = CallStatus.UNKNOWN_END if too_old else CallStatus.IN_PROGRESS
    elif direction == Direction.IN:
        status = CallStatus.MISSED  # parallel-ringing losers do not count: the call decides
    else:
        status = ENDINGS.get((people[0].status or "") if people else "", CallStatus.FAILED)
    if direction == Direction.OUT:
        external = first.called_number
    elif direction == Direction.IN:
        remote = next((e.remote_number for e in ordered if e.remote_number), None)
        external = remote or first.caller_id_num
    else:
        external = None
    # Internal calls show one conversation on both legs: count the callee's side only.
    talkers = [leg for leg in answered if direction != Direction.INTERNAL or leg.direction == "in"]
    talk = storable(sum(leg.talk_us or 0 for leg in talkers)) if talkers else None
    answered_at = answered[0].answered_us if answered else None
    answered_by = talkers[0].extension if talkers and direction != Direction.OUT else None
    return Call(
        call_id=first.call_id or "",
        myid=first.myid,
        myids=tuple(dict.fromkeys(e.myid for e in ordered)),
        direction=direction,
        started_us=first.order_us,
        answered_us=answered_at,
        ended_us=max(leg.ended_us for leg in legs if leg.ended_us is not None) if ended else None,
        last_event_us=last_us,
        ring_us=storable(answered_at - first.order_us) if answered_at is not None else None,
        talk_us=talk,
        status=status,
        external_number=external,
        did=next((e.called_did for e in ordered if e.called_did), None),
        answered_by=answered_by,
        extensions=tuple(dict.fromkeys(leg.extension for leg in legs if leg.extension)),
        transferred=any(leg.transferred for leg in legs),
        callback_id=next((e.callback_id for e in ordered if e.callback_id), None),
        recordings=tuple(leg.rec_id for leg in legs if leg.rec_id),
        legs=legs,
        events=tuple(ordered),
    )


def leg_json(leg: CallLeg) -> dict[str, Any]:
    return {
        "sub_call_id": leg.sub_call_id,
        "extension": leg.extension,
        "extension_id": leg.extension_id,
        "direction": leg.direction,
        "started_at": iso_time(leg.started_us),
        "answered_at": iso_time(leg.answered_us),
        "ended_at": iso_time(leg.ended_us),
        "ring_seconds": seconds(leg.ring_us),
        "talk_seconds": seconds(leg.talk_us),
        "status": leg.status,
        "answered": leg.answered,
        "transferred": leg.transferred,
        "bridged": leg.bridged,
        "rec_id": leg.rec_id,
    }


def call_json(call: Call, *, with_details: bool = True) -> dict[str, Any]:
    """The call's public JSON form; with_details adds legs and the event timeline."""
    out: dict[str, Any] = {
        "call_id": call.call_id,
        "myid": call.myid,
        "myids": list(call.myids),
        "direction": call.direction.value,
        "started_at": iso_time(call.started_us),
        "answered_at": iso_time(call.answered_us),
        "ended_at": iso_time(call.ended_us),
        "ring_seconds": seconds(call.ring_us),
        "talk_seconds": seconds(call.talk_us),
        "status": call.status.value,
        "external_number": call.external_number,
        "did": call.did,
        "answered_by": call.answered_by,
        "extensions": list(call.extensions),
        "transferred": call.transferred,
        "callback_id": call.callback_id,
        "recordings": list(call.recordings),
        "source": call.source.value,
    }
    if with_details:
        out["legs"] = [leg_json(leg) for leg in call.legs]
        out["events"] = [
            {
                "id": e.id,
                "event_time": iso_time(e.event_time_us),
                "event_type": e.event_type,
                "sub_call_id": e.sub_call_id,
                "call_status": e.call_status,
                "call_flow": e.call_flow,
                "myid": e.myid,
            }
            for e in call.events
        ]
    return out
