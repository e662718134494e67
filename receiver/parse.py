"""Turn a raw delivery into an Event. Pure: no I/O, nothing from the web framework."""

from __future__ import annotations

import codecs
import dataclasses
import logging
import re
import string
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import FormParser, parse_options_header

from receiver.event import LAST_DURATION_US, LAST_TIME_US, Event, EventType, Flag, RawRequest

# Documented fields (pbx-events §3): canonical spelling -> (Event attribute, kind).
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
    "Transfered": ("transferred", "bool"),  # sic, pbx-events §3
    "Bridged": ("bridged", "bool"),
    "Diversion": ("diversion", "number"),
    "RemoteNumber": ("remote_number", "number"),
}
CANONICAL = {name.lower(): name for name in FIELDS}
KNOWN_TYPES = frozenset(EventType)
# Names in the URL that belong to the receiver, not to the event.
MYID = "myid"
TOKEN = "token"
RECEIVER_NAMES = (MYID, TOKEN)
# A myid is the subscriber's tag: one named rule, for the parser, the settings and the API's docs.
MYID_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
MYID_SHAPE = "1 to 64 ASCII letters, digits, '_', '-' or '.'"
VALID_MYID = re.compile(MYID_PATTERN)
ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
OVERRIDDEN = "_overridden"  # key in extra: values that lost to a later or body value

# python-multipart logs a warning for each malformed body it meets; anyone can send those, and
# the reason is already in the 400 answer and in the rejects, so its log would only be a flood.
logging.getLogger("python_multipart").setLevel(logging.CRITICAL)


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


class BadMyid(Rejected):
    """A myid that is not the shape of a subscriber's tag, or two different ones."""

    def __init__(self, problem: str) -> None:
        super().__init__(400, f"{problem}: a myid is {MYID_SHAPE}, sent once, as in ?myid=175")


def is_valid_myid(myid: str) -> bool:
    """Whether `myid` has the shape of MYID_PATTERN."""
    return VALID_MYID.fullmatch(myid) is not None


def shown(value: str, limit: int = 24) -> str:
    """A value for an error message, cut so a long one is not copied back whole."""
    return (
        repr(value)
        if len(value) <= limit
        else repr(value[:limit]) + f"... ({len(value)} characters)"
    )


def choose_myid(given: list[str], default: str | None) -> str:
    """The delivery's myid: the query's (the same one any number of times), else `default`.
    Raises MissingMyid or BadMyid."""
    distinct = list(dict.fromkeys(myid for myid in given if myid))  # an empty myid is absent
    if len(distinct) > 1:
        listed = ", ".join(shown(myid) for myid in distinct[:3])
        raise BadMyid(f"the query has {len(distinct)} different myids ({listed})")
    myid = distinct[0] if distinct else default
    if not myid:
        raise MissingMyid
    if not is_valid_myid(myid):
        raise BadMyid(f"myid {shown(myid)} is not valid")
    return myid


def query_myid(query: bytes) -> str | None:
    """The myid of a raw query string if it has one valid one (kept with a reject), else None."""
    try:
        return choose_myid(parse_urlencoded(query).values(MYID), None)
    except Rejected:
        return None


class TokenInBody(Rejected):
    """A POST body with a field named token: the token is read from the URL only."""

    def __init__(self) -> None:
        super().__init__(
            400,
            "the body has a field named token: the webhook token is read from the URL only "
            "(https://host/webhook?myid=<extension id>&token=<secret>); take it out of the body",
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Form:
    """Decoded (name, value) pairs of one form, and whether any bytes needed cp1251."""

    pairs: tuple[tuple[str, str], ...]
    cp1251: bool = False

    def values(self, name: str) -> list[str]:
        """Every value of a receiver parameter such as myid, in order (see `receiver_name`)."""
        return [value for key, value in self.pairs if receiver_name(key) == name]


def ascii_lower(text: str) -> str:
    """`text` with A-Z lowered and nothing else: str.lower() also turns the Kelvin sign into k."""
    return text.lower() if text.isascii() else text.translate(ASCII_LOWER)


def receiver_name(name: str) -> str | None:
    """MYID or TOKEN when a decoded field name is one of the receiver's own, else None.

    The one rule for them: the name as decoded from the request, compared ASCII-case-insensitively
    (`%74oken` and `TOKEN` are the token; `to%E2%84%AAen`, with a Kelvin sign, is not).
    """
    folded = ascii_lower(name)
    return folded if folded in RECEIVER_NAMES else None


def decode_text(data: bytes) -> tuple[str, bool]:
    """UTF-8, or cp1251 when the bytes are not UTF-8 (pbx-events §7); True when cp1251 was used."""
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


def decode_name(raw_name: bytes) -> str:
    """A raw name from a URL or a form body, decoded exactly as parse_urlencoded() decodes it."""
    if b"%" in raw_name or b"+" in raw_name:
        raw_name = percent_decode(raw_name)
    return decode_text(raw_name)[0]


def is_receiver_name(raw_name: bytes, name: str) -> bool:
    """Whether a raw, still percent-encoded name from a query string is the receiver's `name`
    (MYID or TOKEN), by the rule of `receiver_name`: for anything that masks or cuts the token."""
    if b"%" not in raw_name and name.encode() not in raw_name.lower():
        return False  # most names: nothing to decode, and not the name in any ASCII case
    return receiver_name(decode_name(raw_name)) == name


SEPARATORS = re.compile(rb"%(?:26|3[dD])")  # an escaped '&' or '='


def unescape(data: bytes) -> bytes:
    """`+` as a space, `%XX` as a byte; ValueError for a `%` without two hex digits after it.

    Made in C by the codec behind Python's own `\\xXX` escapes: every backslash doubled, every
    `%` turned into `\\x` (ten times faster than a regular expression for the PBX's Cyrillic).
    """
    escaped = data.replace(b"\\", b"\\\\").replace(b"%", b"\\x").replace(b"+", b" ")
    decoded: bytes = codecs.escape_decode(escaped)[0]
    return decoded


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
    """Decode a `multipart/form-data` body; file parts count as fields.

    A body must end with its closing boundary: one cut short would lose its last field silently.
    """
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise Rejected(400, "the multipart/form-data Content-Type has no boundary=...: send one")
    pairs: list[tuple[bytes, bytes]] = []
    ended = []

    def on_file(file: Any) -> None:
        file.file_object.seek(0)
        pairs.append((file.field_name or b"", file.file_object.read()))

    def on_field(field: Any) -> None:
        pairs.append((field.field_name or b"", field.value or b""))

    try:
        parser = FormParser(
            "multipart/form-data", on_field, on_file, lambda: ended.append(True), boundary
        )
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as error:
        raise Rejected(400, f"the multipart/form-data body does not parse: {error}") from None
    if not ended:
        raise Rejected(
            400,
            f"the multipart/form-data body was cut short: it does not end with its closing "
            f"boundary --{boundary.decode('latin-1')}--; send the whole body",
        )
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
    """The raw query string (or form body) without its token parameters, so no secret is kept.

    A pair is cut exactly when parsing takes its name as the token (`is_receiver_name`).
    """
    if b"%" not in query and b"token" not in query.lower():
        return query
    parts = query.split(b"&")
    kept = [p for p in parts if not is_receiver_name(p.partition(b"=")[0], TOKEN)]
    return b"&".join(kept)


# The largest value of each kind of whole number: what every output can show (event.py). An
# EventTime up to 9999-12-31T23:59:59.999999Z, a Duration up to 10**15 - 1 µs (31 years), any
# other number up to 2**63 - 1, the largest SQLite INTEGER. The smallest is 0: no sign is taken.
LARGEST = {"time": LAST_TIME_US, "duration": LAST_DURATION_US, "int": (1 << 63) - 1}


def strip_token_parts(body: bytes, content_type: str) -> bytes:
    """A multipart body without its parts named token, even when it is cut short or garbled."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if boundary is None and body.startswith(b"--"):  # no boundary given: the body's first line
        boundary = body[2:].split(b"\n", 1)[0].rstrip(b"\r")
    if not boundary:
        return body
    delimiter = b"--" + boundary
    segments = body.split(delimiter)
    kept = [segments[0], *(part for part in segments[1:] if not is_token_part(part))]
    return delimiter.join(kept)


def is_token_part(part: bytes) -> bool:
    """Whether one multipart part's headers name it token (read as python-multipart reads them)."""
    head = part.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\n"):
        header, colon, value = line.partition(b":")
        if colon and header.strip().lower() == b"content-disposition":
            name = parse_options_header(value.strip())[1].get(b"name")
            if name is not None and receiver_name(decode_text(name)[0]) == TOKEN:
                return True
    return False


def strip_body_token(body: bytes, content_type: str | None) -> bytes:
    """A body as kept with a refused delivery: without any field named token.

    A refused body may have been sent with the wrong type (or none), so a body that is not
    declared multipart is cut as a form, and as multipart too when it starts like one.
    """
    if media_type(content_type) == "multipart/form-data":
        return strip_token_parts(body, content_type or "")
    body = strip_token(body)
    return strip_token_parts(body, "") if body.startswith(b"--") else body


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
        # A raw '+' in a number decodes to a space (pbx-events §1, §7).
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
    own: dict[str, list[str]]  # the receiver's parameters from the query: myid, token
    token_in_body: bool = False  # the body has a field named token (its value is not kept)


def merge_fields(query: Form, body: Form) -> Merged:
    """Merge query then body pairs: later values win, the body over the query."""
    merged = Merged({}, {}, [Flag.CP1251] if query.cp1251 or body.cp1251 else [], {})
    values, origin = merged.values, dict[str, str]()
    for where, pairs in (("query", query.pairs), ("body", body.pairs)):
        for name, value in pairs:
            if name not in FIELDS:  # documented names mostly come exactly as documented
                lowered = ascii_lower(name)
                if lowered == TOKEN and where == "body":
                    merged.token_in_body = True
                    continue
                if where == "query" and lowered in RECEIVER_NAMES:
                    merged.own.setdefault(lowered, []).append(value)
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
            extra[name] = value  # unknown fields are kept (pbx-events §3, §7)
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
    tokens = merged.own.get(TOKEN)
    if tokens is not None:
        raw = dataclasses.replace(raw, query=strip_token(raw.query))
    if merged.token_in_body:
        raise TokenInBody
    myid = choose_myid(merged.own.get(MYID, []), default_myid)
    event = build_event(myid, merged, raw=raw, received_at_us=received_at_us, source=source)
    return event, tokens[-1] if tokens else None
