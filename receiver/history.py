"""Calls from the PBX's call history (pbx-events §6). Pure functions: no I/O.

A history record is the PBX's own account of a call: `call_uuid` (the webhook's CallID in upper
case), the outcome (`result`, `hangup_disposition`), times to the second, the parties and the
legs (`cdr`). `call_from_history()` makes of it the Call a receiver that had every event would
have built, as near as the history tells, marked `source: call_history`. `differences()` says
where a call we built from our events disagrees with the history.
"""

from __future__ import annotations

import datetime
from typing import Any

from receiver.calls import Call, CallLeg, CallSource, CallStatus, Direction, digits, is_external

HISTORY_TIME = "%Y-%m-%d %H:%M:%S"
ANSWERED = ("answered", "bridged")
# A leg's result as the PBX's CallStatus of its hangup (pbx-events §3), for the leg's `status`.
LEG_STATUS = {
    "answered": "ANSWER",
    "bridged": "ANSWER",
    "busy": "BUSY",
    "rejected": "BUSY",
    "not answered": "NOANSWER",
    "answered elsewhere": "CANCEL",
    "voicemail": "ANSWER",
    "failed": "CONGESTION",
}
ROUTING_TYPES = ("ivr", "queue")
TALK_TOLERANCE = 1.5  # seconds: the history counts whole seconds, the events microseconds


def history_time(text: str) -> datetime.datetime:
    """`YYYY-MM-DD HH:MM:SS` (UTC) as a datetime. Raises ValueError on any other form."""
    moment = datetime.datetime.strptime(text, HISTORY_TIME)
    return moment.replace(tzinfo=datetime.UTC)


def format_history_time(us: int) -> str:
    """µs since the epoch as the history's parameters take a time: UTC, to the second."""
    moment = datetime.datetime.fromtimestamp(us // 1_000_000, datetime.UTC)
    return moment.strftime(HISTORY_TIME)


def time_us(value: Any) -> int | None:
    if not value:
        return None
    return int(history_time(str(value)).timestamp()) * 1_000_000


def seconds_us(value: Any) -> int | None:
    if value is None or value == "":
        return None
    return round(float(value) * 1_000_000)


def call_key(call_uuid: str) -> str:
    """The call id a history record is stored and matched under: CallIDs are lower case
    (pbx-events §3), the history's call_uuid upper case."""
    return call_uuid.strip().lower()


def text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def leg_extension(leg: dict[str, Any]) -> str | None:
    """The extension a leg rang, else the one that called: names are `prefix*ext`."""
    for party in (text(leg.get("to_username")), text(leg.get("from_username"))):
        if party and not is_external(party):
            return party
    return None


def history_leg(call_id: str, number: int, leg: dict[str, Any]) -> CallLeg:
    result = str(leg.get("result") or "")
    routing = leg.get("extension_type") in ROUTING_TYPES or result == "bridged"
    started = time_us(leg.get("start_time_gmt"))
    answered = None if routing else time_us(leg.get("bridged_time_gmt"))
    talk = seconds_us(leg.get("bridged_duration"))
    extension_id = str(leg.get("extension_id") or "")
    return CallLeg(
        sub_call_id=f"{call_id}-cdr{number}",  # no field links a leg to its SubCallID
        extension=leg_extension(leg),
        extension_id=int(extension_id) if extension_id.isdigit() else None,
        direction=text(leg.get("flow")),
        started_us=started,
        answered_us=answered,
        ended_us=time_us(leg.get("hangup_time_gmt")),
        talk_us=talk if result in ANSWERED or talk else 0,
        status=LEG_STATUS.get(result, "CONGESTION"),
        transferred=False,
        bridged=(result == "bridged") if routing else None,
        rec_id=text(leg.get("record_uuid")),
    )


def direction_of(record: dict[str, Any]) -> Direction:
    """`in` and `transfer` (a call forwarded on) are inbound, `out` outbound; a call between
    two extensions (`*` in both names) is internal (pbx-events §4)."""
    parties = (text(record.get("from_username")), text(record.get("to_username")))
    if all(party and not is_external(party) for party in parties):
        return Direction.INTERNAL
    return Direction.OUT if record.get("flow") == "out" else Direction.IN


def status_of(record: dict[str, Any], direction: Direction) -> CallStatus:
    """The history's result (and, for an outbound call nobody answered, who hung up)."""
    result = record.get("result")
    if result in ANSWERED:
        return CallStatus.ANSWERED
    if direction == Direction.IN:
        return CallStatus.MISSED
    if result in ("busy", "rejected"):
        return CallStatus.BUSY
    if result == "not answered":
        cancelled = record.get("hangup_disposition") == "caller_cancel"
        return CallStatus.CANCELLED if cancelled else CallStatus.NO_ANSWER
    return CallStatus.FAILED


def call_from_history(record: dict[str, Any]) -> Call:
    """The Call a history record tells of. Raises ValueError for a record without a call_uuid
    or a start time, or with a time or number not of the history's form."""
    call_uuid = record.get("call_uuid")
    if not isinstance(call_uuid, str) or not call_uuid.strip():
        raise ValueError("a history record without call_uuid")
    call_id = call_key(call_uuid)
    started = time_us(record.get("init_time_gmt") or record.get("start_time_gmt"))
    if started is None:
        raise ValueError(f"history record {call_uuid}: no init_time_gmt")
    cdr = record.get("cdr") or []
    legs = tuple(history_leg(call_id, n, leg) for n, leg in enumerate(cdr, 1))
    direction = direction_of(record)
    status = status_of(record, direction)
    answered = time_us(record.get("bridged_time_gmt")) if status == CallStatus.ANSWERED else None
    ended = time_us(record.get("hangup_time_gmt"))
    talk = seconds_us(record.get("bridged_duration")) if status == CallStatus.ANSWERED else None
    if direction == Direction.OUT:
        external = text(record.get("to_username"))
    elif direction == Direction.IN:
        external = text(record.get("from_username"))
    else:
        external = None
    bridged = text(record.get("bridged_username"))
    answered_by = None
    if status == CallStatus.ANSWERED and direction != Direction.OUT:
        answered_by = bridged if bridged and not is_external(bridged) else None
    owner = record.get("extension_id")
    myids = [str(owner)] if owner not in (None, "") else []
    myids += [str(leg.extension_id) for leg in legs if leg.extension_id is not None]
    myids = list(dict.fromkeys(myids)) or ["history"]
    return Call(
        call_id=call_id,
        myid=myids[0],
        myids=tuple(myids),
        direction=direction,
        started_us=started,
        answered_us=answered,
        ended_us=ended,
        last_event_us=ended or started,
        ring_us=answered - started if answered is not None else None,
        talk_us=talk,
        status=status,
        external_number=external,
        did=text(record.get("did_number")),
        answered_by=answered_by,
        extensions=tuple(dict.fromkeys(leg.extension for leg in legs if leg.extension)),
        transferred=record.get("flow") == "transfer",
        callback_id=None,
        recordings=tuple(leg.rec_id for leg in legs if leg.rec_id),
        legs=legs,
        events=(),
        source=CallSource.CALL_HISTORY,
    )


def differences(ours: Call, history: Call) -> dict[str, tuple[Any, Any]]:
    """What a call built from our events says otherwise than the history: field -> (ours,
    the history's). Talk time is compared to the history's whole seconds."""
    found: dict[str, tuple[Any, Any]] = {}
    for field in ("direction", "status", "answered_by"):
        mine, theirs = getattr(ours, field), getattr(history, field)
        if mine != theirs:
            found[field] = (str(mine) if mine else mine, str(theirs) if theirs else theirs)
    if digits(ours.external_number) != digits(history.external_number):
        found["external_number"] = (ours.external_number, history.external_number)
    mine_talk = (ours.talk_us or 0) / 1e6
    their_talk = (history.talk_us or 0) / 1e6
    if abs(mine_talk - their_talk) > TALK_TOLERANCE:
        found["talk_seconds"] = (round(mine_talk, 3), round(their_talk, 3))
    return found
