"""The PBX's own records of its calls (pbx-events §6): the call history and the recordings.

`history_record()` makes the record the PBX keeps of a simulated call, from the very events the
call delivered: its legs (`cdr`), times to the second, the outcome as the history words it.
`history_page()` answers a history query; `recording_bytes()` is a recording's mp3. The routes
that serve them are in emulator.py.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any

from pbx_emulator.simulate import Extension, SimCall

CLIENT_NUMBER = "3584709739"  # the emulated customer account (its CallAPIIDs carry it)
HISTORY_TIME = "%Y-%m-%d %H:%M:%S"
BUSY_MESSAGE = "Stats request already exists, concurrent request not allowed"
# The history's words for the call's outcome (the simulation's truth) and who hung up.
RESULTS = {
    "answered": ("answered", None),
    "busy": ("busy", "callee_refuse"),
    "no_answer": ("not answered", "internal_cancel"),
    "cancelled": ("not answered", "caller_cancel"),
    "missed": ("not answered", "caller_cancel"),
    "failed": ("failed", "internal_cancel"),
}
LEG_RESULTS = {
    "BUSY": "busy",
    "NOANSWER": "not answered",
    "CANCEL": "not answered",
    "CONGESTION": "failed",
    "CHANUNAVAIL": "failed",
}


def gmt(us: int | None) -> str | None:
    """A time as the history gives it: UTC, to the second."""
    if us is None:
        return None
    moment = datetime.datetime.fromtimestamp(us // 1_000_000, datetime.UTC)
    return moment.strftime(HISTORY_TIME)


def parse_gmt(text: str) -> int:
    """`YYYY-MM-DD HH:MM:SS` (UTC) -> µs. Raises ValueError on any other form."""
    moment = datetime.datetime.strptime(text, HISTORY_TIME).replace(tzinfo=datetime.UTC)
    return int(moment.timestamp()) * 1_000_000


def whole_seconds(us: int) -> int:
    return round(us / 1_000_000)


def name(fields: dict[str, str], key: str) -> str | None:
    value = fields.get(key)
    return value.split("@", 1)[0] if value else None


def history_leg(events: list[dict[str, str]], kinds: dict[int, Extension]) -> dict[str, Any]:
    """One leg (SubCallID) of the call as a cdr entry."""
    dial = next((e for e in events if e["EventType"] in ("dial-in", "dial-out")), events[0])
    answer = next((e for e in events if e["EventType"] == "answer"), None)
    hangup = next((e for e in reversed(events) if e["EventType"] == "hangup"), None)
    called = name(dial, "CalledExtension")
    extension_id = int(dial["CalledExtensionID"] if called else dial.get("CallerExtensionID", 0))
    status = hangup["CallStatus"] if hangup else "CANCEL"
    if hangup is not None and "Bridged" in hangup:
        result = "bridged" if hangup["Bridged"] == "yes" else "not answered"
    elif status == "ANSWER":
        result = "answered"
    else:
        result = LEG_RESULTS.get(status, "failed")
    start, end = int(dial["EventTime"]), int((hangup or events[-1])["EventTime"])
    talk = int(hangup.get("Duration", "0")) if hangup else 0
    extension = kinds.get(extension_id)
    return {
        "result": result,
        "flow": dial.get("CallFlow"),
        "extension_id": extension_id or None,
        "extension_type": extension.kind if extension else None,
        "from_username": name(dial, "CallerExtension") or dial.get("CallerIDNum"),
        "to_username": called or dial.get("CalledNumber"),
        "start_time_gmt": gmt(start),
        "bridged_time_gmt": gmt(int(answer["EventTime"])) if answer else None,
        "hangup_time_gmt": gmt(end),
        "duration": whole_seconds(end - start),
        "bridged_duration": whole_seconds(talk),
        "record_uuid": hangup.get("RecID") if hangup else None,
    }


def history_record(call: SimCall, kinds: dict[int, Extension]) -> dict[str, Any]:
    """The history's record of one simulated call, made from its events and its outcome."""
    truth = call.truth
    by_leg: dict[str, list[dict[str, str]]] = {}
    for _, fields in sorted(call.events, key=lambda item: int(item[1]["EventTime"])):
        by_leg.setdefault(fields["SubCallID"], []).append(fields)
    legs = [history_leg(events, kinds) for events in by_leg.values()]
    if any(leg["result"] in ("answered", "bridged") for leg in legs):
        for leg, events in zip(legs, by_leg.values(), strict=True):
            if leg["result"] == "not answered" and events[-1].get("CallStatus") == "CANCEL":
                leg["result"] = "answered elsewhere"  # a parallel ringing's loser
    times = [int(fields["EventTime"]) for _, fields in call.events]
    answers = [int(f["EventTime"]) for _, f in call.events if f["EventType"] == "answer"]
    first_owner, first = call.events[0]
    result, disposition = RESULTS[truth["status"]]
    if result == "answered":
        if call.kind in ("ivr", "queue"):
            result = "bridged"  # a person took it through the voice menu or the queue
        disposition = "caller_bye" if int(truth["call_id"], 16) % 2 else "callee_bye"
    owner = kinds.get(first_owner)
    if truth["direction"] == "in":
        parties = (truth["external_number"], legs[0]["to_username"])
    else:
        parties = (legs[0]["from_username"], legs[0]["to_username"])
    return {
        "call_uuid": truth["call_id"].upper(),
        "result": result,
        "flow": "transfer"
        if call.kind == "forward"
        else truth["direction"].replace("internal", "out"),
        "init_time_gmt": gmt(min(times)),
        "start_time_gmt": gmt(min(times)),
        "bridged_time_gmt": gmt(min(answers)) if answers else None,
        "hangup_time_gmt": gmt(max(times)),
        "duration": whole_seconds(max(times) - min(times)),
        "bridged_duration": whole_seconds(round((truth["talk_seconds"] or 0) * 1_000_000)),
        "bridged_username": truth["answered_by"]
        or (truth["external_number"] if result == "answered" else None),
        "from_username": parties[0],
        "to_username": parties[1],
        "did_number": first.get("CalledDID"),
        "extension_id": first_owner,
        "extension_type": owner.kind if owner else None,
        "client_owner_id": int(CLIENT_NUMBER),
        "hangup_disposition": disposition,
        "cdr": legs,
    }


def silent_mp3(seconds: int = 1) -> bytes:
    """A small valid MP3: MPEG-1 Layer III frames of silence (128 kbit/s, 44.1 kHz).

    Each frame is its 4-byte header, then zeros: side information of all zeros says "no audio
    data", which players decode as silence. 1152 samples a frame, 417 bytes at this rate.
    """
    header = bytes([0xFF, 0xFB, 0x90, 0x64])
    frame = header + bytes(417 - len(header))
    return frame * max(1, round(seconds * 44100 / 1152))


def recording_bytes(record_uuid: str) -> bytes:
    """The mp3 of one recording: an ID3 tag naming it, then a second of silence."""
    title = record_uuid.encode()
    frame = b"TIT2" + (len(title) + 1).to_bytes(4, "big") + b"\x00\x00" + b"\x03" + title
    size = len(frame)
    synchsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    return b"ID3\x04\x00\x00" + synchsafe + frame + silent_mp3()


def signature(secret: str, record_uuid: str, expires: int) -> str:
    """The signature of a recording's storage URL, valid until `expires` (Unix time)."""
    message = f"{record_uuid}:{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class BadQuery(ValueError):
    """A history query the PBX answers with 400; the message says why."""


def history_filter(query: Mapping[str, str]) -> dict[str, Any]:
    """The history query's parameters, checked. Raises BadQuery."""
    found: dict[str, Any] = {}
    for key in ("start_datetime", "end_datetime"):
        if key not in query:
            raise BadQuery(f"{key} is required (YYYY-MM-DD HH:MM:SS, UTC)")
        try:
            found[key] = parse_gmt(query[key])
        except ValueError:
            raise BadQuery(f"{key}: {query[key]!r} is not YYYY-MM-DD HH:MM:SS") from None
    for key, default, most in (("page", 1, 10**6), ("per_page", 50, 500)):
        text = query.get(key, str(default))
        if not text.isdigit() or not 1 <= int(text) <= most:
            raise BadQuery(f"{key}: must be a whole number from 1 to {most}")
        found[key] = int(text)
    found["order"] = query.get("order", "desc")
    if found["order"] not in ("asc", "desc"):
        raise BadQuery("order: must be asc or desc")
    found["flow"] = query.get("flow")
    if found["flow"] not in (None, "in", "out", "transfer"):
        raise BadQuery("flow: must be in, out or transfer")
    extension = query.get("extension_id")
    if extension is not None and not extension.isdigit():
        raise BadQuery("extension_id: must be a whole number")
    found["extension_id"] = int(extension) if extension is not None else None
    return found


def matches(record: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether a record is in the query's window (by its init time) and filters."""
    started = parse_gmt(record["init_time_gmt"])
    if not wanted["start_datetime"] <= started < wanted["end_datetime"]:
        return False
    if wanted["flow"] is not None and record["flow"] != wanted["flow"]:
        return False
    extension = wanted["extension_id"]
    ids = {record["extension_id"], *(leg["extension_id"] for leg in record["cdr"])}
    return extension is None or extension in ids


def history_page(records: Iterable[dict[str, Any]], wanted: dict[str, Any]) -> dict[str, Any]:
    """The answer to a history query: the page asked for, in the order asked for."""
    found = sorted(
        (r for r in records if matches(r, wanted)),
        key=lambda r: (r["init_time_gmt"], r["call_uuid"]),
        reverse=wanted["order"] == "desc",
    )
    size, page = wanted["per_page"], wanted["page"]
    return {
        "page": page,
        "per_page": size,
        "order": wanted["order"],
        "call_history": found[(page - 1) * size : page * size],
    }
