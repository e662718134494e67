"""Every output path takes every event parsing can make, and every value a column can hold."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.calls import build_call, call_json
from receiver.cli import main
from receiver.cli.render import Output
from receiver.event import Event, RawRequest, event_json
from receiver.parse import Rejected, parse_request
from receiver.store import CallQuery, EventQuery, Store
from receiver.store.schema import SCHEMA_VERSION, call_row, leg_rows
from receiver.web.api import stream
from tests.conftest import stored_by_version
from tests.test_api import assert_every_read_answers

NOW_US = 1_764_576_000_000_000  # 2025-12-01T08:00:00Z
LARGEST = 2**63 - 1  # the largest value of an SQLite INTEGER column

# Whole numbers around every limit an output has, and text that only looks like one.
NUMBERS = st.one_of(
    st.sampled_from([
        "0", "1", "999999999999999", "1000000000000000",  # the last Duration and one more
        "9007199254740993",  # 2**53 + 1: no float holds it
        "253402300799999999", "253402300800000000",  # the last µs of 9999, the first of 10000
        str(LARGEST), str(LARGEST + 1), str(2**64), "9" * 40, "0" * 30 + "5", "1" * 5000,
        "12.5", "-1", "1e5", "+5", " 5", "abc", "١٢٣", "²", "",  # not ASCII digits, or not whole
    ]),
    st.integers(0, 2**64).map(str),
    st.integers(NOW_US, NOW_US + 600_000_000).map(str),  # ordinary times, so calls have legs
)  # fmt: skip
FIELDS = st.fixed_dictionaries(
    {
        "EventType": st.sampled_from(["dial-in", "dial-out", "answer", "hangup", "transfer"]),
        "EventTime": NUMBERS,
    },
    optional={
        "CallID": st.sampled_from(["c1", "c2", "None", "a\x1fb"]),
        "SubCallID": st.sampled_from(["s1", "s2", "s3"]),
        "Duration": NUMBERS,
        "CallerExtensionID": NUMBERS,
        "CalledExtensionID": NUMBERS,
        "CallStatus": st.sampled_from(["ANSWER", "NOANSWER", "BUSY", "CANCEL"]),
        "CallFlow": st.sampled_from(["in", "out"]),
        "CallerIDNum": st.sampled_from(["+79161112233", "2566*101", " 74951234567"]),
        "CalledNumber": st.sampled_from(["+74951234567", "2566*102"]),
        "CalledExtension": st.sampled_from(["2566*101@sip", "2566*102@sip"]),
        "Bridged": st.sampled_from(["yes", "no", "maybe"]),
        "Transfered": st.sampled_from(["yes", "no"]),
    },
)
examples = itertools.count()


def parsed(fields: dict[str, str], myid: str) -> Event | None:
    """The event parsing makes of these fields sent as a query string, or None if refused."""
    query = "&".join(f"{name}={quote(value)}" for name, value in fields.items())
    raw = RawRequest("GET", f"myid={myid}&{query}".encode())
    try:
        return parse_request(raw, received_at_us=NOW_US, source="http-get")[0]
    except Rejected:
        return None


def through(fmt: str, kind: str, records: list[dict[str, Any]]) -> str:
    """Records written by the CLI's Output in one format."""
    out = io.StringIO()
    output = Output(fmt, kind, out)
    for record in records:
        output.add(record)
    output.close()
    return out.getvalue()


async def streamed_csv(records: list[dict[str, Any]]) -> str:
    """Records as the HTTP API streams them as CSV."""

    async def each() -> AsyncIterator[dict[str, Any]]:
        for record in records:
            yield record

    return "".join([chunk async for chunk in stream(each(), "csv")])


def shown(kind: str, records: list[dict[str, Any]]) -> None:
    """Records through JSON (as the API answers, no NaN), CSV both ways, and the CLI table."""
    json.dumps(records, allow_nan=False)
    for fmt in ("table", "csv", "ndjson", "json"):
        through(fmt, kind, records)


async def every_output(store: Store, events: list[Event], myid: str) -> None:
    """Store the events, then read them back through every path; each must not raise."""
    for event in events:
        shown("events", [event_json(event, with_raw=True)])
        await store.add_event(event)
    # The NDJSON export equals each stored event's JSON with its raw request.
    query = EventQuery(myids=(myid,))
    lines = b"".join([chunk async for chunk in store.iter_event_lines(query)])
    stored = [e async for e in store.iter_events(query)]
    assert [json.loads(line) for line in lines.splitlines()] == [
        event_json(e, with_raw=True) for e in stored
    ]
    records = [event_json(e) for e in stored]
    shown("events", records)
    await streamed_csv(records)
    # Calls: built in Python from this batch alone, and by the store from everything stored.
    by_call: dict[str, list[Event]] = {}
    for event in stored:
        if event.call_id and event.event_type in ("dial-in", "dial-out", "answer", "hangup"):
            by_call.setdefault(event.call_id, []).append(event)
    for call_events in by_call.values():
        call = build_call(call_events, now_us=NOW_US)
        json.dumps(call_json(call), allow_nan=False)
        call_row(call)
        leg_rows(call)
    await store.refresh_calls()  # as a server's background work or a replay does
    calls = (await store.list_calls(CallQuery(), limit=1000)).items
    assert set(by_call) <= {c["call_id"] for c in calls}  # every call was built
    shown("calls", calls)
    await streamed_csv(calls)
    for call_id in by_call:
        found = await store.get_call(call_id, now_us=NOW_US)
        assert found is not None
        json.dumps(call_json(found), allow_nan=False)
    shown("missed", await store.missed_report(CallQuery()))
    for by in (None, "day", "hour"):
        shown("extensions", await store.extensions_report(CallQuery(), by=by))


def test_any_event_parsing_makes_goes_through_every_output(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(Store(tmp_path / "outputs.db").open())
    try:

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(st.lists(FIELDS, min_size=1, max_size=6))
        def check(batch: list[dict[str, str]]) -> None:
            myid = f"m{next(examples)}"  # each example reads back its own events
            events = [e for e in (parsed(fields, myid) for fields in batch) if e is not None]
            loop.run_until_complete(every_output(store, events, myid))

        check()
    finally:
        loop.run_until_complete(store.close())
        loop.close()


def test_values_stored_by_earlier_versions_break_no_read(db_path: Path, make_client) -> None:  # type: ignore[no-untyped-def]
    """Before values were checked, any 64-bit integer could be stored: each read takes them."""

    def stored(query: str, **values: int) -> Event:
        event = parsed(dict(pair.split("=") for pair in query.split("&")), "1")
        assert event is not None
        return dataclasses.replace(event, **values)

    dial = "EventType=dial-in&CallFlow=in&CallerIDNum=+79161112233&CalledExtension=2566*101@s"
    t = NOW_US
    events = [
        # an inbound call nobody answered, in the largest year a column holds: in both reports
        stored(f"{dial}&CallID=far&SubCallID=a&EventTime=1", event_time_us=LARGEST),
        stored("EventType=hangup&CallID=far&SubCallID=a&CallStatus=NOANSWER&EventTime=1",
               event_time_us=LARGEST),
        # two legs answered, each with the largest Duration: their sum is beyond any column
        *(stored(f"{kind}&CallID=long&SubCallID={leg}&EventTime={t}", duration_us=LARGEST)
          for leg in ("a", "b")
          for kind in (dial, "EventType=answer", "EventType=hangup&CallStatus=ANSWER")),
        # the smallest time a column holds, then the largest: their difference is beyond one too
        stored(f"{dial}&CallID=wide&SubCallID=a&EventTime=1", event_time_us=-LARGEST - 1),
        stored("EventType=answer&CallID=wide&SubCallID=a&EventTime=1", event_time_us=LARGEST),
        stored("EventType=hangup&CallID=wide&SubCallID=a&CallStatus=ANSWER&EventTime=1",
               event_time_us=LARGEST),
    ]  # fmt: skip
    stored_by_version(db_path, SCHEMA_VERSION, events)
    client = make_client()
    ids = list(range(1, len(events) + 1))
    assert_every_read_answers(client, ids, {"far", "long", "wide"})
    far = client.get("/api/events/1").json()
    assert (far["event_time"], far["event_time_us"]) == (None, LARGEST)
    lines = [json.loads(x) for x in client.get("/api/events?format=ndjson").text.splitlines()]
    assert lines == [client.get(f"/api/events/{line['id']}").json() for line in lines]
    for command in ("events", "calls"):
        for fmt in ("table", "csv", "json", "ndjson"):
            result = CliRunner().invoke(main, [command, "--db", str(db_path), "--format", fmt])
            assert result.exit_code == 0, result.output
