"""Web-server access logs: the combined/common formats, and custom nginx or Apache formats.

A format becomes one regular expression with named groups; a matching line gives a LogLine.
No maintained library reads nginx `log_format` strings, so one small translator serves both
nginx (`$request`) and Apache (`%r`) syntaxes.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from datetime import datetime, timedelta

from receiver.event import EPOCH, parse_time

# combined = common + referer and user agent; the same for nginx and Apache.
QUOTED = r'[^"\\]*(?:\\.[^"\\]*)*'  # inside quotes, escapes allowed (unrolled: fast)
COMBINED = (
    rf'(?P<remote_addr>\S+) \S+ \S+ \[(?P<time_local>[^\]]+)\] "(?P<request>{QUOTED})" '
    rf'(?P<status>\d{{3}}|-) (?P<body_bytes_sent>\S+)(?: "{QUOTED}" "{QUOTED}")?.*'
)

# Apache directives -> the nginx variable that holds the same value.
APACHE = {
    "h": "remote_addr",
    "a": "remote_addr",
    "t": "time_local_bracketed",
    "r": "request",
    "m": "request_method",
    "U": "uri",
    "q": "query_with_mark",
    "s": "status",
    ">s": "status",
    "b": "body_bytes_sent",
    "B": "body_bytes_sent",
}
TOKEN = re.compile(
    r"\$\{(?P<braced>\w+)\}|\$(?P<plain>\w+)|%(?P<apache>[<>]?(?:\{[^}]*\})?[a-zA-Z])"
)
ESCAPE = re.compile(rb"\\x([0-9A-Fa-f]{2})|\\(.)")


class LogFormatError(ValueError):
    """A --log-format string that cannot be used."""


@dataclasses.dataclass(frozen=True, slots=True)
class LogLine:
    """What a log line says of one request."""

    time_us: int | None
    method: str
    target: bytes  # path and query string, as received
    body: bytes | None  # only when the format logs it ($request_body)


def format_regex(log_format: str) -> re.Pattern[bytes]:
    """The regular expression for a custom nginx or Apache format string."""
    text = log_format.replace('\\"', '"')
    parts: list[str] = []
    names: set[str] = set()
    position = 0
    for match in TOKEN.finditer(text):
        parts.append(re.escape(text[position : match.start()]))
        position = match.end()
        name = match["braced"] or match["plain"] or APACHE.get(match["apache"], "")
        following = text[position : position + 1]
        if not following:
            value = ".*"
        elif following == '"':  # a quoted value may hold escaped quotes
            value = QUOTED
        else:
            value = f"[^{re.escape(following)}]*"
        if name == "time_local_bracketed":
            name, value = "time_local", r"\[[^\]]+\]"
        if not name or name in names:
            parts.append(value)
        else:
            parts.append(f"(?P<{name}>{value})")
            names.add(name)
    parts.append(re.escape(text[position:]))
    if not ({"request"} <= names or {"request_method", "request_uri"} <= names
            or {"request_method", "uri"} <= names):  # fmt: skip
        raise LogFormatError(
            "the log format must log the request: $request (or %r), or $request_method with "
            "$request_uri"
        )
    if not names & {"time_local", "time_iso8601", "msec"}:
        raise LogFormatError(
            "the log format must log the time: $time_local, $time_iso8601, $msec or %t"
        )
    return re.compile("".join(parts).encode())


def unescape(data: bytes) -> bytes:
    """Undo the escapes nginx (\\xHH) and Apache (\\xhh, \\", \\\\) write into logged values."""
    if b"\\" not in data:
        return data
    return ESCAPE.sub(lambda m: bytes.fromhex(m[1].decode()) if m[1] else m[2], data)


@functools.lru_cache(maxsize=4096)
def local_time_us(text: bytes) -> int:
    """`17/Aug/2017:16:01:26 +0000` -> µs since the epoch (many lines share a second: cached)."""
    moment = datetime.strptime(text.decode(), "%d/%b/%Y:%H:%M:%S %z")
    return (moment - EPOCH) // timedelta(microseconds=1)


def msec_us(text: bytes) -> int:
    seconds, _, fraction = text.partition(b".")
    return int(seconds) * 1_000_000 + int((fraction + b"000000")[:6])


def read_line(pattern: re.Pattern[bytes], line: bytes) -> LogLine | None:
    """The request a log line records, or None when the line does not match the format.

    Raises ValueError when it matches but its time or request line is not readable.
    """
    match = pattern.fullmatch(line)
    if match is None:
        return None
    found = match.groupdict()
    if found.get("time_local"):
        time_us: int | None = local_time_us(found["time_local"].strip(b"[]"))
    elif found.get("time_iso8601"):
        time_us = parse_time(found["time_iso8601"].decode())
    elif found.get("msec"):
        time_us = msec_us(found["msec"])
    else:
        time_us = None
    if found.get("request") is not None:
        request = unescape(found["request"])
        method, _, rest = request.partition(b" ")
        target = rest.rsplit(b" ", 1)[0] if b" HTTP/" in rest else rest
    else:
        method = found["request_method"]
        if found.get("request_uri") is not None:
            target = unescape(found["request_uri"])
        else:
            target = unescape(found["uri"] + (found.get("query_with_mark") or b""))
            if found.get("args"):
                target += b"?" + unescape(found["args"])
    body = found.get("request_body")
    if body is not None:
        body = b"" if body == b"-" else unescape(body)
    return LogLine(time_us, method.decode("latin-1"), target, body)


COMBINED_REGEX = re.compile(COMBINED.encode())
