"""Parsing: raw deliveries -> typed events (pbx-events §3 and §7)."""

from __future__ import annotations

import logging
import pickle
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from receiver.event import Event, RawRequest, event_json
from receiver.parse import Rejected, parse_request, strip_token
from tests.conftest import ROOT, sample

QUERY_CHARS = string.ascii_letters + string.digits + "%&=+*@.-_ "
PUKIN = "Пукин Васисуалий Карлович"


def parse(query: str | bytes, body: bytes = b"", method: str = "GET", **kwargs) -> Event:
    raw_query = query.encode() if isinstance(query, str) else query
    content_type = kwargs.pop("content_type", "application/x-www-form-urlencoded")
    raw = RawRequest(method, raw_query, body, content_type if method == "POST" else None)
    event, _ = parse_request(raw, received_at_us=1_700_000_000_000_000, source="http-get", **kwargs)
    return event


# Real deliveries -> the fields docs/pbx-events.md says they mean.
REAL = [
    # outbound hangup: talk time in µs, recording id, '+' restored from %2B, Cyrillic name
    (
        "outbound-hangup",
        {
            "event_type": "hangup",
            "event_time": "2017-08-17T16:02:30.238219Z",
            "duration": 11.420018,
            "call_flow": "out",
            "call_status": "ANSWER",
            "caller_id_num": "2566*102",
            "called_number": "+79161112233",
            "caller_id_name": PUKIN,
            "rec_id": "10500-100bbbbcccc99aaff44cccc777ddd444",
            "caller_extension": "2566*102@sipproxy.telphin.ru",
            "caller_extension_id": 85219,
            "transferred": False,
            "bridged": None,
            "flags": [],
        },
    ),
    # outbound answer: no Duration on answer
    (
        "outbound-answer",
        {
            "event_type": "answer",
            "event_time": "2017-08-17T16:02:18.818201Z",
            "duration": None,
            "call_status": "ANSWER",
            "call_id": "b5187f38a9cc43f2ba068bce983a513e",
            "sub_call_id": "85219-b5187f38a9cc43f2ba068bce983a513e",
        },
    ),
    # outbound dial-out: CALLING, no CalledDID on dial-out
    (
        "outbound-dial-out",
        {
            "event_type": "dial-out",
            "event_time": "2017-08-17T16:02:06.958201Z",
            "call_status": "CALLING",
            "called_did": None,
            "call_api_id": "3584709739-b5187f38-a9cc-43f2-ba06-8bce983a513e",
        },
    ),
    # a second outbound dial-out, fields in another order
    (
        "outbound-dial-out-cyrillic-name",
        {
            "event_type": "dial-out",
            "caller_id_name": "Иванов Иван Иванович",
            "called_number": "+74953730763",
            "caller_id_num": "3515*101",
            "caller_extension_id": 124575,
        },
    ),
    # inbound leg rung by a queue: DID without '+', the called extension and its id
    (
        "queue-agent-dial-in",
        {
            "event_type": "dial-in",
            "event_time": "2017-08-17T16:01:26.478202Z",
            "call_flow": "in",
            "called_did": "74959998877",
            "called_number": "2566*102",
            "called_extension": "2566*102@sipproxy.telphin.ru",
            "called_extension_id": 85219,
            "caller_id_num": "+79161112233",
            "caller_id_name": "+79161112233",
            "caller_extension_id": 96857,
        },
    ),
]


@pytest.mark.parametrize(("name", "expected"), REAL, ids=[name for name, _ in REAL])
def test_real_samples(name: str, expected: dict) -> None:
    record = event_json(parse("myid=175&" + sample(name)))
    assert record["myid"] == "175"
    for field, value in expected.items():
        assert record[field] == value, field


@pytest.mark.parametrize(("name", "expected"), REAL, ids=[name for name, _ in REAL])
def test_post_body_gives_the_same_record_as_get(name: str, expected: dict) -> None:
    get = event_json(parse("myid=175&" + sample(name)))
    post = event_json(parse("myid=175", body=sample(name).encode() + b"\n", method="POST"))
    assert {k: v for k, v in post.items() if k != "source"} == {
        k: v for k, v in get.items() if k != "source"
    }


# Edge cases of pbx-events §7: query -> (field, value) and flags expected.
EDGES = [
    # field names match whatever their case
    ("myid=1&eventtype=answer&CALLID=abc&eventtime=5", "call_id", "abc", []),
    # a raw '+' decodes to a space: put back in numbers
    ("myid=1&EventType=dial-in&EventTime=5&CallerIDNum=+79161112233", "caller_id_num",
     "+79161112233", ["plus_restored"]),
    # ... but not in text that only starts with a space
    ("myid=1&EventType=dial-in&EventTime=5&CallerIDName=+Ivan", "caller_id_name", " Ivan", []),
    # cp1251 bytes (a PHP integration's Windows name) decode and are flagged
    ("myid=1&EventType=dial-in&EventTime=5&CallerIDName=%C8%E2%E0%ED", "caller_id_name", "Иван",
     ["cp1251"]),
    # no EventTime: flagged, ordered by receipt
    ("myid=1&EventType=answer&CallID=x", "event_time", None, ["no_event_time"]),
    # unknown event types are kept
    ("myid=1&EventType=transfer&EventTime=5", "event_type", "transfer", ["unknown_event_type"]),
    # unknown fields are kept as sent
    ("myid=1&EventType=answer&EventTime=5&NewField=%D1%8F", "extra", {"NewField": "я"}, []),
    # a repeated field: the last value wins, the first is kept
    ("myid=1&EventType=answer&EventTime=5&CallID=a&CallID=b", "call_id", "b", ["repeated_field"]),
    # a typed field that does not parse keeps its text in extra
    ("myid=1&EventType=hangup&EventTime=5&Duration=12.5", "extra", {"Duration": "12.5"},
     ["bad_value"]),
    # ... as does a number too big for SQLite's 64-bit integers
    ("myid=1&EventType=hangup&EventTime=99999999999999999999", "extra",
     {"EventTime": "99999999999999999999"}, ["bad_value", "no_event_time"]),
    # ... and a time or a duration some output cannot show: after the year 9999, 10**15 µs or more
    ("myid=1&EventType=hangup&EventTime=253402300800000000", "extra",
     {"EventTime": "253402300800000000"}, ["bad_value", "no_event_time"]),
    ("myid=1&EventType=hangup&EventTime=5&Duration=1000000000000000", "extra",
     {"Duration": "1000000000000000"}, ["bad_value"]),
    # the last of each is taken, with any number of leading zeros
    ("myid=1&EventType=hangup&EventTime=253402300799999999", "event_time",
     "9999-12-31T23:59:59.999999Z", []),
    ("myid=1&EventType=hangup&EventTime=5&Duration=999999999999999", "duration",
     999999999.999999, []),
    (f"myid=1&EventType=hangup&EventTime={'0' * 5000}7", "event_time_us", 7, []),
    # digits that are not ASCII are not a number
    ("myid=1&EventType=hangup&EventTime=%D9%A1", "extra", {"EventTime": "\u0661"},
     ["bad_value", "no_event_time"]),
    # Transfered (sic) and Bridged are booleans
    ("myid=1&EventType=hangup&EventTime=5&Transfered=yes&Bridged=no", "transferred", True, []),
    ("myid=1&EventType=hangup&EventTime=5&Bridged=no", "bridged", False, []),
    # an empty value is an absent one
    ("myid=1&EventType=dial-in&EventTime=5&CalledDID=", "called_did", None, []),
]  # fmt: skip


@pytest.mark.parametrize(("query", "field", "value", "flags"), EDGES)
def test_edge_cases(query: str, field: str, value: object, flags: list[str]) -> None:
    record = event_json(parse(query))
    assert record[field] == value
    assert record["flags"] == flags


def test_repeated_field_keeps_the_losing_value() -> None:
    event = parse("myid=1&EventType=answer&EventTime=5&CallID=a&CallID=b")
    assert event.extra == {"_overridden": {"CallID": ["a"]}}


def test_post_body_beats_query_and_the_conflict_is_recorded() -> None:
    event = parse("myid=1&CallID=fromquery", b"EventType=answer&CallID=frombody", method="POST")
    assert event.call_id == "frombody"
    assert "field_conflict" in event.flags
    assert event.extra["_overridden"] == {"CallID": ["fromquery"]}


def test_post_fields_in_the_query_are_merged() -> None:
    event = parse("myid=1&EventTime=7", b"EventType=answer", method="POST")
    assert (event.event_type, event.event_time_us, event.flags) == ("answer", 7, ())


def test_multipart_body() -> None:
    body = (
        b'--XX\r\nContent-Disposition: form-data; name="EventType"\r\n\r\nanswer\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="CallerIDNum"\r\n\r\n%2B7\r\n--XX--\r\n'
    )
    event = parse("myid=1", body, method="POST", content_type="multipart/form-data; boundary=XX")
    # multipart values are not percent-decoded: %2B stays as sent
    assert (event.event_type, event.caller_id_num) == ("answer", "%2B7")


MULTIPART = (
    b'--XX\r\nContent-Disposition: form-data; name="EventType"\r\n\r\nanswer\r\n'
    b'--XX\r\nContent-Disposition: form-data; name="CallID"\r\n\r\nabc\r\n--XX--\r\n'
)


@pytest.mark.parametrize(
    "cut",
    [
        MULTIPART.index(b"abc") + 2,  # inside the last part's value
        MULTIPART.index(b"\r\n--XX--"),  # right after it
        MULTIPART.index(b"--XX--") + 4,  # after the delimiter, before its closing '--'
        MULTIPART.index(b'name="CallID"'),  # inside the last part's headers
        MULTIPART.index(b"answer"),  # inside the first part
        0,  # nothing at all
    ],
)
def test_a_multipart_body_cut_short_is_refused(cut: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Rejected) as caught:
        parse(
            "myid=1",
            MULTIPART[:cut],
            method="POST",
            content_type="multipart/form-data; boundary=XX",
        )
    assert caught.value.status == 400
    assert "cut short" in caught.value.reason
    assert "--XX--" in caught.value.reason
    assert not [r for r in caplog.records if r.name.startswith("python_multipart")]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"garbage", "multipart/form-data; boundary=XX"),
        (b"--XX\r\nno colon here\r\n\r\nx\r\n--XX--", "multipart/form-data; boundary=XX"),
        (MULTIPART, "multipart/form-data"),
    ],
)
def test_a_malformed_multipart_body_is_refused_without_logging(
    body: bytes, content_type: str, caplog: pytest.LogCaptureFixture
) -> None:
    # anyone can send these: python-multipart's own log line for each would be a flood
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Rejected) as caught:
        parse("myid=1", body, method="POST", content_type=content_type)
    assert caught.value.status == 400
    assert "multipart" in caught.value.reason
    assert caplog.records == []


def test_a_whole_multipart_body_may_end_without_a_line_break_or_with_an_epilogue() -> None:
    kind = "multipart/form-data; boundary=XX"
    for body in (MULTIPART.rstrip(), MULTIPART + b"an epilogue\r\n"):
        event = parse("myid=1", body, method="POST", content_type=kind)
        assert (event.event_type, event.call_id) == ("answer", "abc")


def test_event_time_is_exact_for_any_microsecond() -> None:
    # 2^53 + 1 µs is not a float; integer arithmetic keeps the last digit
    assert event_json(parse("myid=1&EventType=a&EventTime=9007199254740993"))["event_time"] == (
        "2255-06-05T23:47:34.740993Z"
    )


@pytest.mark.parametrize(
    ("query", "body", "content_type", "status", "words"),
    [
        ("EventType=answer", b"", None, 400, "myid is missing"),
        ("myid=1&CallID=x", b"", None, 400, "EventType is missing"),
        ("myid=1", b"{}", "application/json", 415, "is not a form"),
        ("myid=1", b"<a/>", "text/xml", 415, "is not a form"),
        ("myid=1", b"garbage", "multipart/form-data; boundary=XX", 400, "does not parse"),
    ],
)
def test_rejected(
    query: str, body: bytes, content_type: str | None, status: int, words: str
) -> None:
    with pytest.raises(Rejected) as caught:
        parse(query, body, method="POST", content_type=content_type)
    assert caught.value.status == status
    assert words in caught.value.reason


# myid is the subscriber's tag: 1 to 64 ASCII letters, digits, '_', '-' or '.'.
BAD_MYIDS = [
    "%00",  # a NUL byte
    "+175+",  # spaces around it ('+' is a space)
    "%20175%20",
    "1" * 2000,  # far too long
    "a" * 65,  # one too many
    "a/b",
    "175%0A",  # a line break
    "%D0%AF",  # not ASCII
    "a%2Cb",
]


@pytest.mark.parametrize("myid", BAD_MYIDS, ids=lambda myid: myid[:12])
def test_a_myid_of_the_wrong_shape_is_refused(myid: str) -> None:
    with pytest.raises(Rejected) as caught:
        parse(f"myid={myid}&EventType=answer")
    assert caught.value.status == 400
    assert "1 to 64 ASCII letters, digits" in caught.value.reason
    assert len(caught.value.reason) < 300  # a long myid is not copied into the answer


@pytest.mark.parametrize(
    ("query", "myid"),
    [
        ("myid=abc", "abc"),
        ("myid=-5", "-5"),
        ("myid=a.b_c-D9", "a.b_c-D9"),
        ("myid=" + "x" * 64, "x" * 64),  # the longest
        ("myid=175&myid=175", "175"),  # the same myid twice
        ("myid=175&MYID=175&%6Dyid=175", "175"),
        ("myid=&myid=175", "175"),  # an empty one is an absent one
    ],
)
def test_a_myid_of_the_right_shape_is_kept(query: str, myid: str) -> None:
    assert parse(f"{query}&EventType=answer").myid == myid


@pytest.mark.parametrize("query", ["myid=175&myid=176", "myid=175&%6Dyid=176", "MyId=a&myid=b"])
def test_two_different_myids_are_refused(query: str) -> None:
    with pytest.raises(Rejected) as caught:
        parse(f"{query}&EventType=answer")
    assert caught.value.status == 400
    assert "2 different myids" in caught.value.reason
    assert "1 to 64 ASCII letters, digits" in caught.value.reason


def test_a_default_myid_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(Rejected, match="1 to 64 ASCII letters"):
        parse("EventType=answer", default_myid="not valid")


def test_default_myid_fills_a_missing_one() -> None:
    assert parse("EventType=answer", default_myid="99").myid == "99"


def test_token_is_returned_and_never_kept() -> None:
    raw = RawRequest("GET", b"myid=1&TOKEN=s3cret&EventType=answer")
    event, token = parse_request(raw, received_at_us=1, source="http-get")
    assert token == "s3cret"
    assert b"s3cret" not in event.raw.query
    assert "s3cret" not in repr(event)


def test_strip_token_keeps_everything_else() -> None:
    assert strip_token(b"a=1&token=x&b=token") == b"a=1&b=token"
    assert strip_token(b"%74oken=x&TOKEN=y&To%4Ben&to%E2%84%AAen=z&tok+en=w") == (
        b"to%E2%84%AAen=z&tok+en=w"
    )


# Ways to spell a name: the token's in ASCII cases and escapes, and names that only look like it.
NAMES = st.sampled_from([
    "token", "TOKEN", "%74oken", "To%4Ben", "%54%4F%4B%45%4E", "to%E2%84%AAen", "tok+en",
    "token+", "%2574oken", "tok%zzen", "token%00", "%FEtoken", "%0Atoken", "EventType",
])  # fmt: skip


PAIRS = st.lists(
    st.tuples(st.one_of(NAMES, st.text(QUERY_CHARS, max_size=6)),
              st.text(QUERY_CHARS.replace("&", ""), max_size=6)),
    max_size=6,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(PAIRS)
def test_what_is_taken_as_the_token_is_exactly_what_is_cut(pairs: list[tuple[str, str]]) -> None:
    from receiver.parse import TOKEN, parse_urlencoded, receiver_name

    query = "&".join(f"{name}={value}" for name, value in pairs).encode()
    raw = RawRequest("GET", query + b"&myid=1&EventType=answer")
    before = parse_urlencoded(raw.query).pairs
    taken = [value for name, value in before if receiver_name(name) == TOKEN]
    try:
        event, token = parse_request(raw, received_at_us=1, source="http-get")
    except Rejected:  # a random name spelled myid: the cut must still be right
        kept = strip_token(raw.query)
    else:
        assert token == (taken[-1] if taken else None)
        kept = event.raw.query
    after = parse_urlencoded(kept).pairs
    assert after == tuple(pair for pair in before if receiver_name(pair[0]) != TOKEN)


def test_same_delivery_has_the_same_dedup_key() -> None:
    query = "myid=175&" + sample("outbound-hangup")
    assert parse(query).dedup_key() == parse(query + "&Late=1").dedup_key()
    assert parse(query).dedup_key() != parse(query.replace("myid=175", "myid=176")).dedup_key()
    # without CallID, SubCallID and EventTime, the raw payload is the identity
    assert (
        parse("myid=1&EventType=x&a=1").dedup_key() != parse("myid=1&EventType=x&a=2").dedup_key()
    )


@settings(max_examples=300, deadline=None)
@given(
    query=st.one_of(st.text(QUERY_CHARS, max_size=200), st.binary(max_size=200)),
    body=st.binary(max_size=200),
    content_type=st.sampled_from([None, "application/x-www-form-urlencoded", "multipart/form-data",
                                  "multipart/form-data; boundary=x", "text/plain"]),
    method=st.sampled_from(["GET", "POST"]),
)  # fmt: skip
def test_any_input_gives_an_event_or_a_clear_rejection(
    query: str | bytes, body: bytes, content_type: str | None, method: str
) -> None:
    raw_query = query.encode() if isinstance(query, str) else query
    raw = RawRequest(method, b"myid=1&" + raw_query, body, content_type)
    try:
        event, _ = parse_request(raw, received_at_us=1, source="http-get")
    except Rejected as rejected:
        assert rejected.status in (400, 415)
        assert rejected.reason
    else:
        record = event_json(event, with_raw=True)
        assert record["event_type"]
        assert record["myid"]
        assert pickle.loads(pickle.dumps(event)) == event  # as it goes to the writer process


PAYLOADS = sorted((ROOT / "sample_payloads").glob("*.txt"))


@pytest.mark.parametrize("path", PAYLOADS, ids=[p.stem for p in PAYLOADS])
def test_sample_payloads_parse_cleanly_and_follow_the_spec(path) -> None:  # type: ignore[no-untyped-def]
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    assert lines
    events = [parse("myid=1&" + line) for line in lines]
    answers = {e.sub_call_id: e.event_time_us for e in events if e.event_type == "answer"}
    for event in events:
        assert set(event.flags) <= {"unknown_event_type"}, event.flags
        # Duration is the talk time: hangup - answer (pbx-events §3)
        if event.event_type == "hangup" and event.sub_call_id in answers and event.duration_us:
            assert event.duration_us == event.event_time_us - answers[event.sub_call_id]


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=120), st.text(QUERY_CHARS + "%2B%26%3Dя", max_size=120)))
def test_whole_string_decoding_equals_pair_by_pair(data: bytes | str) -> None:
    from receiver.parse import parse_pairwise, parse_urlencoded

    raw = data.encode() if isinstance(data, str) else data
    assert parse_urlencoded(raw) == parse_pairwise(raw)


@pytest.mark.parametrize(
    "raw",
    [
        rb"a=\x41&b=\\",  # backslashes are data, not escapes
        b"a=%41%42&b=%zz",  # a bad escape is kept as it came
        b"a=%4",  # cut short at the end
        b"a=100%&b=%",  # a lone percent sign
        b"a=%5Cx41",  # an escaped backslash before x41
        b"a=%D0%AF+%2B7&b=%FF",  # UTF-8, a raw space, an escaped '+', then a byte that is not UTF-8
    ],
)
def test_escapes_decoded_in_c_equal_pair_by_pair(raw: bytes) -> None:
    from receiver.parse import parse_pairwise, parse_urlencoded

    assert parse_urlencoded(raw) == parse_pairwise(raw)


def key_as_before(event: Event) -> bytes:
    """Event.dedup_key() as it was made before a missing part and text were told apart."""
    import hashlib

    parts: tuple[object, ...] = (event.call_id, event.sub_call_id, event.event_time_us)
    if all(part is None for part in parts):
        parts = ("raw", event.raw.query, event.raw.body)
    else:
        parts = ("event", event.event_type, *parts)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(event.myid.encode())
    for part in parts:
        digest.update(b"\x1f" + (part if isinstance(part, bytes) else str(part).encode()))
    return (event.event_time_us or 0).to_bytes(8, "big") + digest.digest()


def test_a_missing_field_and_any_text_never_share_a_key() -> None:
    missing = parse("myid=1&EventType=answer&EventTime=5")
    assert parse("myid=1&EventType=answer&EventTime=5&CallID=None").dedup_key() != (
        missing.dedup_key()
    )
    assert parse("myid=1&EventType=answer&EventTime=5&SubCallID=None").dedup_key() != (
        missing.dedup_key()
    )
    # the old separator inside a value
    assert parse("myid=1&EventType=answer&EventTime=5&CallID=a%1Fb").dedup_key() != (
        parse("myid=1&EventType=answer&EventTime=5&CallID=a&SubCallID=b").dedup_key()
    )
    # and the common case keeps the key it always had, so repeats of stored events still match
    assert missing.dedup_key() == key_as_before(missing)
    real = parse("myid=175&" + sample("outbound-hangup"))
    assert real.dedup_key() == key_as_before(real)


# Parts of identities, few, so that many share all parts but one; each could make the old key
# of another: the old separator \x1f inside them, the text "None".
PARTS = {
    "myid": st.sampled_from(["1", "1\x1fevent"]),
    "event_type": st.sampled_from(["answer", "a\x1f"]),
    "call_id": st.sampled_from([None, "None", "a", "a\x1fb"]),
    "sub_call_id": st.sampled_from([None, "None", "b\x1fNone"]),
    "event_time_us": st.sampled_from([None, 5]),
    "query": st.sampled_from([b"a", b"a\x1fb"]),
    "body": st.sampled_from([b"", b"b\x1f"]),
}
SAME = {"myid": "1", "event_type": "answer", "event_time_us": 5, "query": b"a", "body": b""}


def identity(event: Event) -> tuple[object, ...]:
    """What makes a delivery the same (pbx-events §7), as the key must tell it."""
    if (event.call_id, event.sub_call_id, event.event_time_us) == (None, None, None):
        return (event.myid, "raw", event.raw.query, event.raw.body)
    return (event.myid, event.event_type, event.call_id, event.sub_call_id, event.event_time_us)


def made(parts: dict[str, object]) -> Event:
    raw = RawRequest("POST", parts["query"], parts["body"])  # type: ignore[arg-type]
    named = {k: v for k, v in parts.items() if k not in ("query", "body")}
    return Event(received_at_us=1, source="t", raw=raw, **named)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.fixed_dictionaries(PARTS), min_size=2, max_size=30))
# The collisions the old form made: the text "None" for a missing part; a part holding \x1f.
@example(
    [
        {**SAME, "call_id": None, "sub_call_id": None},
        {**SAME, "call_id": "None", "sub_call_id": None},
    ]
)
@example(
    [
        {**SAME, "call_id": "a\x1fb", "sub_call_id": None},
        {**SAME, "call_id": "a", "sub_call_id": "b\x1fNone"},
    ]
)
@example(
    [
        {**SAME, "call_id": None, "sub_call_id": None, "event_time_us": None},
        {
            **SAME,
            "call_id": None,
            "sub_call_id": None,
            "event_time_us": None,
            "query": b"a\x1fb",
            "body": b"b\x1f",
        },
    ]
)
def test_distinct_identities_have_distinct_keys(batch: list[dict[str, object]]) -> None:
    events = [made(parts) for parts in batch]
    pairs = {(event.dedup_key(), identity(event)) for event in events}
    # one key for each identity, and one identity for each key
    assert len(pairs) == len({key for key, _ in pairs}) == len({who for _, who in pairs})
    for event in events:  # without \x1f or a text "None", the key is the one it always was
        texts = [event.myid, event.event_type, event.call_id, event.sub_call_id]
        clean = not any("\x1f" in (t or "") for t in texts) and "None" not in texts[2:]
        if clean and b"\x1f" not in event.raw.query + event.raw.body:
            assert event.dedup_key() == key_as_before(event)


# Any text without the old separator (and no lone surrogate, which is never parsed).
PLAIN = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x1f"), max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    myid=PLAIN.filter(bool),
    event_type=PLAIN,
    call_id=st.none() | PLAIN.filter(lambda text: text != "None"),
    sub_call_id=st.none() | PLAIN.filter(lambda text: text != "None"),
    event_time_us=st.none() | st.integers(0, 2**63 - 1),
    query=st.binary(max_size=20).filter(lambda data: b"\x1f" not in data),
    body=st.binary(max_size=20).filter(lambda data: b"\x1f" not in data),
)
def test_keys_without_a_possible_collision_are_made_as_before(**parts: object) -> None:
    event = made(parts)
    assert event.dedup_key() == key_as_before(event)
