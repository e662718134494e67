"""The normalised call-event record and its JSON form."""

from __future__ import annotations

import base64
import dataclasses
import enum
import functools
import hashlib
import json
import operator
import re
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import orjson

from receiver.packing import AS_RECEIVED, ZSTD, pack, unpack
from receiver.stored import (
    BRIDGED,
    OPTIONAL_INTEGER,
    READ_FAILURES,
    TRANSFERRED,
    json_object,
    json_texts,
    kinds_fit,
    readable_row,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The largest values every output can show, so the largest parsing accepts (parse.LARGEST):
# a time up to the last µs of the year 9999, where Python's datetime and SQLite's strftime end;
# a duration under 10**15 µs (31 years), whose seconds a float holds to the µs and SQLite's
# JSON (15 significant digits) writes exactly. Two times of 0 to LAST_TIME_US differ by less than
# a 64-bit integer holds; sums of many spans are checked where they are made (calls.storable).
LAST_TIME_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
LAST_DURATION_US = 10**15 - 1


class EventType(enum.StrEnum):
    """Event types the PBX documents (pbx-events §2); others are stored too, flagged."""

    DIAL_IN = "dial-in"
    DIAL_OUT = "dial-out"
    ANSWER = "answer"
    HANGUP = "hangup"
    MESSAGE_IN = "message-in"
    MESSAGE_OUT = "message-out"
    VOICEMAIL = "voicemail"


class Source(enum.StrEnum):
    """How an event reached the store."""

    HTTP_GET = "http-get"
    HTTP_POST = "http-post"
    REPLAY_ACCESS_LOG = "replay:access-log"
    REPLAY_QUERY_LINES = "replay:query-lines"
    REPLAY_NDJSON = "replay:ndjson"


class Flag(enum.StrEnum):
    """Marks on an event saying how its delivery differed from the documented form."""

    CP1251 = "cp1251"  # some bytes were not UTF-8 and were decoded as cp1251 (pbx-events §7)
    NO_EVENT_TIME = "no_event_time"  # ordered by the time of receipt instead (pbx-events §7)
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    FIELD_CONFLICT = "field_conflict"  # a POST's query and body disagreed; the body won
    REPEATED_FIELD = "repeated_field"  # one field was sent twice; the last value won
    PLUS_RESTORED = "plus_restored"  # a raw '+' decoded to a space and was put back
    BAD_VALUE = "bad_value"  # a typed field did not parse; its text is kept in extra
    # Not of a delivery: a stored value this receiver could not have written (the file edited
    # or damaged), shown as `damaged_value:<column>`, the value replaced (readable_row).
    DAMAGED_VALUE = "damaged_value"


@dataclasses.dataclass(frozen=True, slots=True)
class RawRequest:
    """The delivery exactly as received (the token removed), kept so it can be parsed again."""

    method: str
    query: bytes
    body: bytes = b""
    content_type: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (RawRequest, (self.method, self.query, self.body, self.content_type))


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One PBX call event, typed. Times are integer microseconds since the epoch, UTC."""

    myid: str
    event_type: str
    event_time_us: int | None
    received_at_us: int
    source: str
    raw: RawRequest
    call_id: str | None = None
    sub_call_id: str | None = None
    call_api_id: str | None = None
    callback_id: str | None = None
    caller_id_num: str | None = None
    caller_id_name: str | None = None
    called_did: str | None = None
    called_number: str | None = None
    caller_extension: str | None = None
    caller_extension_id: int | None = None
    called_extension: str | None = None
    called_extension_id: int | None = None
    call_status: str | None = None
    call_flow: str | None = None
    duration_us: int | None = None
    rec_id: str | None = None
    transferred: bool = False
    bridged: bool | None = None
    diversion: str | None = None
    remote_number: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    flags: tuple[str, ...] = ()
    id: int | None = None
    duplicates: int = 0

    @property
    def order_us(self) -> int:
        """The time events are ordered by: EventTime, or the time of receipt without one."""
        return self.event_time_us if self.event_time_us is not None else self.received_at_us

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as the values of its fields, in order: half the time of the default for a
        # slotted dataclass, and events go to the writer process pickled.
        return (Event, EVENT_VALUES(self))

    def dedup_key(self) -> bytes:
        """Identity of a delivery (pbx-events §7): a repeat has the same key.

        EventTime first (key_prefix), then a hash of the identity: live events' keys rise with
        time, so the unique index on them takes each new key at its end, not on a random page
        (which cost a page of the index per delivery in every commit).
        """
        if self.call_id is None and self.sub_call_id is None and self.event_time_us is None:
            parts: tuple[str | bytes | int | None, ...] = (
                self.myid,
                "raw",
                self.raw.query,
                self.raw.body,
            )
        else:
            parts = (
                self.myid,
                "event",
                self.event_type,
                self.call_id,
                self.sub_call_id,
                self.event_time_us,
            )
        # A missing CallID or SubCallID was written as the text "None" in the old form.
        ambiguous = self.call_id == "None" or self.sub_call_id == "None"
        return key_prefix(self.event_time_us) + identity_hash(parts, ambiguous)


def identity_hash(parts: tuple[str | bytes | int | None, ...], ambiguous: bool = False) -> bytes:
    """16 bytes of hash over the parts of an identity; other parts hash other bytes.

    The parts joined by \x1f, None written `None`, as the keys stored so far were made: a
    repeat of a stored event still matches. That form is ambiguous only when a part holds \x1f
    (where does it end?) or, `ambiguous`, a text that may be missing is `None`. Then each part
    is written with a mark of presence and its length instead, after two \x1f: the joined form
    never starts so, as its first part has no \x1f and its second is a word.
    """
    texts = [
        b"None" if part is None else part if isinstance(part, bytes) else str(part).encode()
        for part in parts
    ]
    data = b"\x1f".join(texts)
    if ambiguous or data.count(b"\x1f") != len(texts) - 1:
        data = b"\x1f\x1f" + b"".join(
            b"-" if part is None else b"+%d:%b" % (len(text), text)
            for part, text in zip(parts, texts, strict=True)
        )
    return hashlib.blake2b(data, digest_size=16).digest()


def key_prefix(event_time_us: int | None) -> bytes:
    """The first 8 bytes of a dedup key: EventTime big-endian (two's complement, so that any
    value a column holds has one), zeros without one."""
    return (event_time_us or 0).to_bytes(8, "big", signed=True)


EVENT_VALUES = operator.attrgetter(*(field.name for field in dataclasses.fields(Event)))


@functools.lru_cache(maxsize=65536)
def iso_minute(minute: int) -> str:
    """One minute since the epoch as ISO 8601 UTC up to its seconds; cached (45 days' worth)."""
    return (EPOCH + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:")


TWO_DIGITS = tuple(f"{n:02d}" for n in range(60))
THREE_DIGITS = tuple(f"{n:03d}" for n in range(1000))  # joined, not formatted: a third quicker


def now_us() -> int:
    """Now, in microseconds since the epoch."""
    return time.time_ns() // 1000


def iso_time(us: int | None) -> str | None:
    """Microseconds since the epoch as ISO 8601 UTC, exact (integer arithmetic, no floats).

    None outside 1970 to 9999 (0 to LAST_TIME_US): an event stored before parsing checked
    EventTime may hold any 64-bit integer.
    """
    if us is None or not 0 <= us <= LAST_TIME_US:
        return None
    minute, micro = divmod(us, 60_000_000)
    second, micro = divmod(micro, 1_000_000)
    milli, micro = divmod(micro, 1000)
    return f"{iso_minute(minute)}{TWO_DIGITS[second]}.{THREE_DIGITS[milli]}{THREE_DIGITS[micro]}Z"


# What parse_time() takes, also the pattern of the API's time parameters: seconds since the
# epoch (at most 12 digits, up to the year 33658, so that the µs fit in 64 bits), or an ISO 8601
# date, date and time, or RFC 3339 date-time.
EPOCH_SECONDS_PATTERN = r"\d{1,12}(\.\d+)?"
EPOCH_SECONDS = re.compile(EPOCH_SECONDS_PATTERN)
LEAP_SECOND = re.compile(r"(?<=[T ]\d\d:\d\d:)60")


def parse_time(text: str, zone: tzinfo = UTC) -> int:
    """ISO 8601 (in `zone`, UTC by default, unless it says otherwise) or seconds since the
    epoch -> µs.

    RFC 3339's lower-case `t` and `z` are taken, and a leap second (`23:59:60`) is its
    minute's last second, as the µs since the epoch (which have no leap seconds) can say.
    Raises ValueError with what is accepted.
    """
    if EPOCH_SECONDS.fullmatch(text):
        whole, _, fraction = text.partition(".")
        return int(whole) * 1_000_000 + int((fraction + "000000")[:6])
    iso, leap = LEAP_SECOND.subn("59", text.upper(), count=1)
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use ISO 8601 (2026-11-27T09:00:00Z) "
            "or seconds since the epoch (at most 12 digits)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    us = (moment - EPOCH) // timedelta(microseconds=1)
    return us + (1_000_000 - 1 - moment.microsecond if leap else 0)


def seconds(us: int | float | None) -> float | None:
    """Microseconds as seconds, exact to the µs; None beyond LAST_DURATION_US either way, which
    a float would not show exactly."""
    if us is None or not -LAST_DURATION_US <= us <= LAST_DURATION_US:
        return None
    return us / 1_000_000


def text_or_base64(data: bytes, name: str) -> dict[str, str]:
    """Bytes for JSON: as text when they are UTF-8, else base64 under `<name>_base64`."""
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(data).decode("ascii")}


def stored_row(event: Event, event_id: int | None, *, packed: bool = False) -> tuple[Any, ...]:
    """The event's values in STORED_FIELDS order, with `event_id` as its id; its raw query and
    body packed (`packed`, as they are stored) or as received."""
    raw = event.raw
    if packed:
        query, body, packing = pack(raw.query), pack(raw.body), ZSTD
    else:
        query, body, packing = raw.query, raw.body, AS_RECEIVED
    return (
        event_id,
        event.myid,
        event.event_type,
        event.event_time_us,
        event.order_us,
        event.call_id,
        event.sub_call_id,
        event.call_api_id,
        event.callback_id,
        event.caller_id_num,
        event.caller_id_name,
        event.called_did,
        event.called_number,
        event.caller_extension,
        event.caller_extension_id,
        event.called_extension,
        event.called_extension_id,
        event.call_status,
        event.call_flow,
        event.duration_us,
        event.rec_id,
        event.transferred,
        event.bridged,
        event.diversion,
        event.remote_number,
        # Most events have neither: json.dumps() with an argument makes an encoder each time.
        json.dumps(event.extra, ensure_ascii=False) if event.extra else "{}",
        json.dumps(event.flags) if event.flags else "[]",
        event.received_at_us,
        event.source,
        raw.method,
        query,
        body,
        raw.content_type,
        packing,
        event.duplicates,
    )


# An event's record's fields, in order (the API's JSON, receiver/web/openapi.py), and a record
# of them to fill (trusted_record).
RECORD_FIELDS = (
    "id",
    "myid",
    "event_type",
    "event_time",
    "call_id",
    "sub_call_id",
    "call_api_id",
    "callback_id",
    "caller_id_num",
    "caller_id_name",
    "called_did",
    "called_number",
    "caller_extension",
    "caller_extension_id",
    "called_extension",
    "called_extension_id",
    "call_status",
    "call_flow",
    "duration",
    "rec_id",
    "transferred",
    "bridged",
    "diversion",
    "remote_number",
    "extra",
    "flags",
    "received_at",
    "source",
    "event_time_us",
    "duplicates",
)
EMPTY_RECORD: dict[str, Any] = dict.fromkeys(RECORD_FIELDS)


def event_record(row: Sequence[Any], *, with_raw: bool = False) -> dict[str, Any]:
    """The event's public JSON form (field names fixed by the API contract), from its stored
    row (STORED_FIELDS). Every output of events is made here: JSON pages, the NDJSON export
    (event_lines), CSV and the command line, so they cannot disagree.

    Any row makes a record: a value this receiver could not have stored is replaced and
    flagged. The row's types are looked up first (kinds_fit); only a row that fails that or
    its record is checked value by value (readable_row), which costs about as much again.
    """
    if kinds_fit(row):
        try:
            return trusted_record(row, with_raw=with_raw)
        except READ_FAILURES:
            pass
    values, damaged = readable_row(row)
    out = trusted_record(values, with_raw=with_raw)
    if damaged:
        out["flags"] = [*out["flags"], *(f"{Flag.DAMAGED_VALUE}:{name}" for name in damaged)]
    return out


def trusted_record(row: Sequence[Any], *, with_raw: bool = False) -> dict[str, Any]:
    """event_record() of a row whose values are of their columns' kinds, unchecked; it may
    raise (READ_FAILURES) or make a record orjson cannot write, where they are not.

    It reads the row's values as they are, without making an Event first: an export makes
    millions, and an Event costs more than its record.
    """
    (
        event_id, myid, event_type, event_time_us, _order_us, call_id, sub_call_id, call_api_id,
        callback_id, caller_id_num, caller_id_name, called_did, called_number, caller_extension,
        caller_extension_id, called_extension, called_extension_id, call_status, call_flow,
        duration_us, rec_id, transferred, bridged, diversion, remote_number, extra, flags,
        received_at_us, source, raw_method, raw_query, raw_body, raw_content_type, raw_packing,
        duplicates,
    ) = row  # fmt: skip
    if not (  # COLUMN_TYPES of what the record passes on as it is (text fails in orjson)
        type(event_time_us) in OPTIONAL_INTEGER
        and type(caller_extension_id) in OPTIONAL_INTEGER
        and type(called_extension_id) in OPTIONAL_INTEGER
        and type(duration_us) in OPTIONAL_INTEGER
        and type(received_at_us) is int
        and type(duplicates) is int
        and type(raw_packing) is int
    ):
        raise TypeError("a value is not of its column's kind")
    # A copy of EMPTY_RECORD, filled: CPython builds a dict display of more than 16 keys as
    # several dicts merged, 0.4 µs more an event (docs/performance.md).
    out = EMPTY_RECORD.copy()
    out["id"] = event_id
    out["myid"] = myid
    out["event_type"] = event_type
    out["event_time"] = iso_time(event_time_us)
    out["call_id"] = call_id
    out["sub_call_id"] = sub_call_id
    out["call_api_id"] = call_api_id
    out["callback_id"] = callback_id
    out["caller_id_num"] = caller_id_num
    out["caller_id_name"] = caller_id_name
    out["called_did"] = called_did
    out["called_number"] = called_number
    out["caller_extension"] = caller_extension
    out["caller_extension_id"] = caller_extension_id
    out["called_extension"] = called_extension
    out["called_extension_id"] = called_extension_id
    out["call_status"] = call_status
    out["call_flow"] = call_flow
    out["duration"] = seconds(duration_us)
    out["rec_id"] = rec_id
    out["transferred"] = TRANSFERRED[transferred]
    out["bridged"] = BRIDGED[bridged]
    out["diversion"] = diversion
    out["remote_number"] = remote_number
    out["extra"] = json_object(extra) if extra != "{}" else {}  # most events: skip the parser
    out["flags"] = json_texts(flags) if flags != "[]" else []
    out["received_at"] = iso_time(received_at_us)
    out["source"] = source
    out["event_time_us"] = event_time_us
    out["duplicates"] = duplicates
    if raw_packing != AS_RECEIVED:  # also without raw: one that does not unpack is flagged
        raw_query, raw_body = unpack(raw_query, raw_packing), unpack(raw_body, raw_packing)
    if with_raw:
        try:  # raw_dict(), written out for the common case: exports make millions
            out["raw"] = {
                "method": raw_method,
                "query": raw_query.decode(),
                "body": raw_body.decode(),
                "content_type": raw_content_type,
            }
        except UnicodeDecodeError:
            raw = RawRequest(raw_method, bytes(raw_query), bytes(raw_body), raw_content_type)
            out["raw"] = raw_dict(raw)
    return out


def event_lines(rows: Iterable[Sequence[Any]]) -> bytes:
    """The NDJSON export of stored rows: each event's record with its raw request, a line each.

    Written into one buffer, so each line's bytes are freed as soon as they are copied and the
    next line reuses their memory: a page of lines kept alive to be joined cost an allocation
    each, three times orjson's own work.
    """
    out = bytearray()
    for row in rows:
        try:  # as stored, unchecked: looking up its types would cost a fifth of its record
            out += orjson.dumps(trusted_record(row, with_raw=True))
        except READ_FAILURES:  # a damaged value fails its record or orjson (a TypeError)
            out += orjson.dumps(event_record(row, with_raw=True))
        out += b"\n"
    return bytes(out)


def event_json(event: Event, *, with_raw: bool = False) -> dict[str, Any]:
    """event_record() of an Event, as it would be stored."""
    return event_record(stored_row(event, event.id), with_raw=with_raw)


def raw_dict(raw: RawRequest) -> dict[str, Any]:
    """The raw request's JSON form."""
    return {
        "method": raw.method,
        **text_or_base64(raw.query, "query"),
        **text_or_base64(raw.body, "body"),
        "content_type": raw.content_type,
    }


REJECT_BODY_KEPT = 4096  # bytes of a refused body kept: enough to see what was sent


@dataclasses.dataclass(frozen=True, slots=True)
class Reject:
    """A delivery the receiver refused, kept so an operator can see it and ingest it later."""

    received_at_us: int
    status: int
    reason: str
    raw: RawRequest  # token removed, body cut to its first REJECT_BODY_KEPT bytes
    myid: str | None = None
    client: str | None = None
    body_size: int = 0  # as received (or declared, when over --max-body); raw.body is what is kept
    id: int | None = None


def reject_json(reject: Reject) -> dict[str, Any]:
    """The reject's public JSON form."""
    return {
        "id": reject.id,
        "received_at": iso_time(reject.received_at_us),
        "status": reject.status,
        "reason": reject.reason,
        "myid": reject.myid,
        "client": reject.client,
        "method": reject.raw.method,
        **text_or_base64(reject.raw.query, "query"),
        **text_or_base64(reject.raw.body, "body"),
        "body_size": reject.body_size,
        "body_kept": len(reject.raw.body),
        "content_type": reject.raw.content_type,
    }
