"""Turn a raw delivery into an Event. Pure: no I/O, nothing from the web framework."""

from __future__ import annotations

import codecs
import dataclasses
import io
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

import python_multipart
from python_multipart.exceptions import FormParserError

from receiver.event import LAST_DURATION_US, LAST_TIME_US, Event, EventType, Flag, RawRequest

# Documented fields (EVENT_SPEC §3): canonical spelling -> (Event attribute, kind).
FIELDS: dict[str, tuple[str, str]] = {
    "EventType": ("event_type", "text"),
    "EventTime": ("event_time_us", "time"),
    "CallID": ("call_id", "text"),
    "SubCallID": ("sub_call_id", "text"),
    "CallAPIID": ("call_api_id", "text"),
    "CallBackID": ("callback_id", "text"),
    "CallerIDNum": ("caller_id_num", "number"),
    "CallerIDName": ("caller_id_name", "name"),
    "CalledDID": ("called_did", "number"),
    "CalledNumber": ("called_number", "number"),
    "CallerExtension": ("caller_extension", "text"),
    "CallerExtensionID": ("caller_extension_id", "int"),
    "CalledExtension": ("called_extension", "text"),
    "CalledExtensionID": ("called_extension_id", "int"),
    "CallStatus": ("call_status", "text"),
    "CallFlow": ("call_flow", "text"),
    "Duration": ("duration_us", "duration"),
    "RecID": ("rec_id", "text"),
    "Transfered": ("transferred", "bool"),  # sic, EVENT_SPEC §3
    "Bridged": ("bridged", "bool"),
    "Diversion": ("diversion", "number"),
    "RemoteNumber": ("remote_number", "number"),
}
CANONICAL = {name.lower(): name for name in FIELDS}
KNOWN_TYPES = frozenset(EventType)
# Names in the URL that belong to the receiver, not to the event.
MYID = "myid"
TOKEN = "token"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
OVERRIDDEN = "_overridden"  # key in extra: values that lost to a later or body value


class Rejected(Exception):
    """A delivery that cannot become an event; `status` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class MissingMyid(Rejected):
    """No myid in the query string, and no default."""

    def __init__(self) -> None:
        super().__init__(
            400,
            "myid is missing from the query string: register the URL as "
            "https://host/webhook?myid=<extension id>",
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Form:
    """Decoded (name, value) pairs of one form, and whether any bytes needed cp1251."""

    pairs: tuple[tuple[str, str], ...]
    cp1251: bool = False

    def get(self, name: str) -> str | None:
        """The last value of a receiver parameter such as myid (names are case-insensitive)."""
        found = None
        for key, value in self.pairs:
            if key.lower() == name:
                found = value
        return found


def decode_text(data: bytes) -> tuple[str, bool]:
    """UTF-8, or cp1251 when the bytes are not UTF-8 (EVENT_SPEC §7); True when cp1251 was used."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        # cp1251 leaves five bytes undefined; 'replace' keeps the rest rather than refusing it.
        return data.decode("cp1251", errors="replace"), True


def decode_pairs(pairs: Iterable[tuple[bytes, bytes]]) -> Form:
    """Decode raw name/value bytes into a Form."""
    out = []
    cp1251 = False
    for raw_name, raw_value in pairs:
        name, name_cp = decode_text(raw_name)
        value, value_cp = decode_text(raw_value)
        cp1251 = cp1251 or name_cp or value_cp
        out.append((name, value))
    return Form(tuple(out), cp1251)


def percent_decode(data: bytes) -> bytes:
    """One form component: `+` is a space, `%XX` a byte."""
    return unquote_to_bytes(data.replace(b"+", b" "))


SEPARATORS = re.compile(rb"%(?:26|3[dD])")  # an escaped '&' or '='


def unescape(data: bytes) -> bytes:
    """`+` as a space, `%XX` as a byte; ValueError for a `%` without two hex digits after it.

    Made in C by the codec behind Python's own `\\xXX` escapes: every backslash doubled, every
    `%` turned into `\\x` (ten times faster than a regular expression for the PBX's Cyrillic).
    """
    escaped = data.replace(b"\\", b"\\\\").replace(b"%", b"\\x").replace(b"+", b" ")
    return codecs.escape_decode(escaped)[0]  # type: ignore[attr-defined,no-any-return]


def parse_urlencoded(data: bytes) -> Form:
    """Decode an `application/x-www-form-urlencoded` query string or body.

    When no '&' or '=' is escaped, the whole string is unescaped and decoded at once, which is
    the same as doing it pair by pair and several times faster; a test holds the two equal.
    """
    if SEPARATORS.search(data) is None:
        try:
            text = unescape(data).decode()
        except ValueError:  # a bad escape, or some pair is not UTF-8: go pair by pair
            return parse_pairwise(data)
        split = [part.partition("=") for part in text.split("&") if part]
        return Form(tuple([(name, value) for name, _, value in split]))
    return parse_pairwise(data)


def parse_pairwise(data: bytes) -> Form:
    """parse_urlencoded(), one pair at a time: for escaped separators and non-UTF-8 bytes."""
    pairs = []
    cp1251 = False
    for part in data.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        if b"%" in value or b"+" in value:  # most values have neither: skip the slow path
            value = percent_decode(value)
        if b"%" in name or b"+" in name:
            name = percent_decode(name)
        try:
            pairs.append((name.decode(), value.decode()))
        except UnicodeDecodeError:
            (name_text, _), (value_text, _) = decode_text(name), decode_text(value)
            pairs.append((name_text, value_text))
            cp1251 = True
    return Form(tuple(pairs), cp1251)


def parse_multipart(body: bytes, content_type: str) -> Form:
    """Decode a `multipart/form-data` body; file parts count as fields."""
    pairs: list[tuple[bytes, bytes]] = []

    def on_file(file: Any) -> None:
        file.file_object.seek(0)
        pairs.append((file.field_name or b"", file.file_object.read()))

    headers = {"Content-Type": content_type.encode("latin-1"), "Content-Length": str(len(body))}
    try:
        python_multipart.parse_form(
            headers,  # type: ignore[arg-type]
            io.BytesIO(body),
            lambda field: pairs.append((field.field_name or b"", field.value or b"")),
            on_file,
        )
    except (FormParserError, ValueError) as error:
        raise Rejected(400, f"the multipart/form-data body does not parse: {error}") from None
    return decode_pairs(pairs)


def media_type(content_type: str | None) -> str:
    """`text/plain; charset=utf-8` -> `text/plain`."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_body(body: bytes, content_type: str | None) -> Form:
    """The fields of a POST body. No content type is taken as a plain form, as the PBX sends."""
    kind = media_type(content_type)
    if kind == "multipart/form-data":
        return parse_multipart(body, content_type or "")
    if kind in ("", "application/x-www-form-urlencoded"):
        # A raw line break can only be a trailer (as `curl --data-binary @file` sends one).
        return parse_urlencoded(body.rstrip(b"\r\n"))
    raise Rejected(
        415,
        f"Content-Type {kind!r} is not a form: send the event fields as "
        "application/x-www-form-urlencoded (or multipart/form-data)",
    )


def strip_token(query: bytes) -> bytes:
    """The raw query string without its `token=` parameter, so the secret is never kept."""
    if b"token" not in query.lower():
        return query
    parts = query.split(b"&")
    kept = [p for p in parts if unquote_to_bytes(p.partition(b"=")[0]).lower() != b"token"]
    return b"&".join(kept)


# The largest value of each kind of whole number: what every output can show (event.py). An
# EventTime up to 9999-12-31T23:59:59.999999Z, a Duration up to 10**15 - 1 µs (31 years), any
# other number up to 2**63 - 1, the largest SQLite INTEGER. The smallest is 0: no sign is taken.
LARGEST = {"time": LAST_TIME_US, "duration": LAST_DURATION_US, "int": (1 << 63) - 1}


def parse_value(kind: str, value: str) -> tuple[Any, list[str]]:
    """One documented field's typed value, and the flags it earned. Raises ValueError if bad."""
    largest = LARGEST.get(kind)
    if largest is not None:
        if not (value.isascii() and value.isdigit()):
            raise ValueError(value)
        # Leading zeros are fine. Over 19 digits after them is over 2**63 anyway: refused before
        # int() spends its time on thousands of them.
        significant = value.lstrip("0") or "0"
        number = int(significant) if len(significant) <= 19 else largest + 1
        if number > largest:
            raise ValueError(value)  # a whole number, but one that some output cannot show
        return number, []
    if kind == "bool":
        if value.lower() not in ("yes", "no"):
            raise ValueError(value)
        return value.lower() == "yes", []
    if kind in ("number", "name") and value.startswith(" "):
        # A raw '+' in a number decodes to a space (EVENT_SPEC §1, §7).
        rest = value.lstrip(" ")
        if rest.isdigit():
            return "+" + rest, [Flag.PLUS_RESTORED]
    return value, []


@dataclasses.dataclass
class Merged:
    """A delivery's fields after merging the query and the body."""

    values: dict[str, str]  # winning values; documented names in their canonical spelling
    lost: dict[str, list[str]]  # values that lost to a later or a body value
    flags: list[str]
    own: dict[str, str]  # the receiver's parameters from the query: myid, token


def merge_fields(query: Form, body: Form) -> Merged:
    """Merge query then body pairs: later values win, the body over the query."""
    merged = Merged({}, {}, [Flag.CP1251] if query.cp1251 or body.cp1251 else [], {})
    values, origin = merged.values, {}
    for where, pairs in (("query", query.pairs), ("body", body.pairs)):
        for name, value in pairs:
            if name not in FIELDS:  # documented names mostly come exactly as documented
                lowered = name.lower()
                if where == "query" and lowered in (MYID, TOKEN):
                    merged.own[lowered] = value
                    continue
                name = CANONICAL.get(lowered, name)
            previous = values.get(name)
            if previous is not None and previous != value:
                merged.lost.setdefault(name, []).append(previous)
                flag = Flag.FIELD_CONFLICT if origin[name] != where else Flag.REPEATED_FIELD
                if flag not in merged.flags:
                    merged.flags.append(flag)
            values[name] = value
            origin[name] = where
    return merged


def build_event(
    myid: str, merged: Merged, *, raw: RawRequest, received_at_us: int, source: str
) -> Event:
    """Make the typed Event from merged fields. Raises Rejected when EventType is missing."""
    flags = merged.flags
    typed: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in merged.values.items():
        spec = FIELDS.get(name)
        if spec is None:
            extra[name] = value  # unknown fields are kept (EVENT_SPEC §3, §7)
            continue
        attribute, kind = spec
        if not value:
            continue
        if kind == "text":
            typed[attribute] = value
            continue
        try:
            typed[attribute], value_flags = parse_value(kind, value)
        except ValueError:
            extra[name] = value
            value_flags = [Flag.BAD_VALUE]
        if value_flags:
            flags.extend(flag for flag in value_flags if flag not in flags)
    if merged.lost:
        extra[OVERRIDDEN] = merged.lost
    event_type = typed.pop("event_type", None)
    if event_type is None:
        raise Rejected(
            400,
            "EventType is missing: a PBX delivery always carries EventType "
            "(dial-in, dial-out, answer, hangup, ...)",
        )
    if event_type not in KNOWN_TYPES:
        flags.append(Flag.UNKNOWN_EVENT_TYPE)
    if "event_time_us" not in typed:
        flags.append(Flag.NO_EVENT_TIME)
    return Event(
        myid=myid,
        event_type=event_type,
        event_time_us=typed.pop("event_time_us", None),
        received_at_us=received_at_us,
        source=source,
        raw=raw,
        extra=extra,
        flags=tuple(flags),
        **typed,
    )


def parse_request(
    raw: RawRequest,
    *,
    received_at_us: int,
    source: str,
    default_myid: str | None = None,
) -> tuple[Event, str | None]:
    """Parse one delivery: the Event, and the token its query carried (for the caller to check).

    GET, POST and replay all come through here. Raises Rejected with the HTTP status to answer.
    """
    body = parse_body(raw.body, raw.content_type) if raw.method == "POST" else Form(())
    merged = merge_fields(parse_urlencoded(raw.query), body)
    myid = merged.own.get(MYID) or default_myid
    if not myid:
        raise MissingMyid
    token = merged.own.get(TOKEN)
    if token is not None:
        raw = dataclasses.replace(raw, query=strip_token(raw.query))
    event = build_event(myid, merged, raw=raw, received_at_us=received_at_us, source=source)
    return event, token
