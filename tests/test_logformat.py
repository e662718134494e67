"""Access-log formats: combined and common, custom nginx and Apache strings."""

from __future__ import annotations

import pytest

from receiver.replay.logformat import COMBINED_REGEX, LogFormatError, format_regex, read_line

# format (None: combined/common) | line | (time_us, method, target, body)
CASES = [
    # combined, nginx's default
    (None, b'1.2.3.4 - - [17/Aug/2017:16:01:26 +0000] "GET /webhook?myid=1&a=%2B7 HTTP/1.1" 200 '
           b'38 "-" "Go-http-client/1.1"',
     (1502985686000000, "GET", b"/webhook?myid=1&a=%2B7", None)),
    # common, another offset
    (None, b'1.2.3.4 - - [17/Aug/2017:19:01:26 +0300] "POST /webhook?myid=1 HTTP/1.0" 200 12',
     (1502985686000000, "POST", b"/webhook?myid=1", None)),
    # an escaped quote in the user agent
    (None, b'1.2.3.4 - - [17/Aug/2017:16:01:26 +0000] "GET /a HTTP/1.1" 200 1 "-" "x \\"y\\""',
     (1502985686000000, "GET", b"/a", None)),
    # nginx with the body: \xHH escapes undone
    ('$remote_addr [$time_local] "$request" $status "$request_body"',
     b'1.2.3.4 [17/Aug/2017:16:01:26 +0000] "POST /webhook?myid=1 HTTP/1.1" 200 '
     b'"EventType=answer&N=\\xD0\\x9F"',
     (1502985686000000, "POST", b"/webhook?myid=1", b"EventType=answer&N=\xd0\x9f")),
    # nginx with ISO time, method and URI apart, no body logged ("-")
    ('$time_iso8601 $request_method $request_uri "$request_body"',
     b'2017-08-17T16:01:26+00:00 POST /webhook?myid=1 "-"',
     (1502985686000000, "POST", b"/webhook?myid=1", b"")),
    # nginx $msec
    ('$msec "$request"', b'1502985686.478 "GET /webhook?a=1 HTTP/1.1"',
     (1502985686478000, "GET", b"/webhook?a=1", None)),
    # Apache LogFormat, as written in httpd.conf
    (r'%h %l %u %t \"%r\" %>s %b', b'1.2.3.4 - - [17/Aug/2017:16:01:26 +0000] "GET /w?x=1 '
                                   b'HTTP/1.1" 200 5',
     (1502985686000000, "GET", b"/w?x=1", None)),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "line", "expected"), CASES)
def test_lines(fmt: str | None, line: bytes, expected: tuple) -> None:  # type: ignore[type-arg]
    pattern = COMBINED_REGEX if fmt is None else format_regex(fmt)
    logged = read_line(pattern, line)
    assert logged is not None
    assert (logged.time_us, logged.method, logged.target, logged.body) == expected


def test_a_line_of_another_format_does_not_match() -> None:
    assert read_line(COMBINED_REGEX, b"not a log line") is None


@pytest.mark.parametrize(
    ("fmt", "words"),
    [("$remote_addr $status", "must log the request"), ('"$request" $status', "must log the time")],
)
def test_unusable_formats_are_refused(fmt: str, words: str) -> None:
    with pytest.raises(LogFormatError, match=words):
        format_regex(fmt)
