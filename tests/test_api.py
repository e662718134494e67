"""The read API: event filters and exports, calls, reports (real SQLite, TestClient)."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3

import pytest
from click.testing import CliRunner

from receiver.cli import main
from receiver.event import RawRequest
from receiver.parse import parse_request
from receiver.store import SCHEMA_VERSION
from tests.conftest import BACKENDS, ROOT, both_backends, stored_by_version, wait_for_calls
from tests.test_app import assert_error

# Every test here runs on SQLite and on PostgreSQL (those opening the SQLite file: SQLite only).
backend = pytest.fixture(params=BACKENDS)(both_backends)


SCENARIOS = {
    # scenario file -> the myid its events are sent with
    "outbound-answered": "85219",
    "inbound-answered": "85218",
    "inbound-cancelled": "85218",
    "ivr-bridged-yes": "96857",
    "ivr-bridged-no": "96857",
    "queue-rounds": "96858",
    "parallel-ringing": "85218",
    "callback": "85300",
}


def lines(name: str) -> list[str]:
    text = (ROOT / "sample_payloads" / f"{name}.txt").read_text()
    return [x for x in text.splitlines() if x and not x.startswith("#")]


@pytest.fixture
def loaded(client):  # type: ignore[no-untyped-def]
    for name, myid in SCENARIOS.items():
        for line in lines(name):
            assert client.get(f"/webhook?myid={myid}&{line}").status_code == 200
    wait_for_calls(client.get)  # built in the background: reads do not build them
    return client


def test_event_filters(loaded) -> None:  # type: ignore[no-untyped-def]
    def count(query: str) -> int:
        return len(loaded.get(f"/api/events?limit=1000&{query}").json()["events"])

    total = sum(len(lines(n)) for n in SCENARIOS)
    assert count("") == total
    assert count("myid=85218&myid=85219") == sum(
        len(lines(n)) for n, m in SCENARIOS.items() if m in ("85218", "85219")
    )
    assert count("event_type=answer&call_flow=out") == 3  # outbound, queue agent, callback
    assert count("call_status=CANCEL") >= 2
    assert count("number=8 (916) 111-22-33") == 3  # +79161112233, written another way
    # both IVR calls: the menu's own legs (5 + 2 events) and the leg it routed to 102
    assert count("extension=2566*887") == 7
    first = loaded.get("/api/events?limit=1").json()["events"][0]
    assert count(f"call_id={first['call_id']}") == len(lines("outbound-answered"))
    assert count(f"sub_call_id={first['sub_call_id']}") == 3
    assert count("source=http-get") == total
    assert count("since=2025-12-01T08:00:00Z&until=2025-12-01T08:20:00Z") == sum(
        len(lines(n)) for n in ("inbound-answered", "inbound-cancelled")
    )
    assert count("since=1764577200&until=1764578400") == count(
        "since=2025-12-01T08:20:00%2B00:00&until=2025-12-01T08:40:00Z"
    )


def test_event_order_and_pages(loaded) -> None:  # type: ignore[no-untyped-def]
    forward = [e["id"] for e in loaded.get("/api/events?limit=1000").json()["events"]]
    backward, after = [], None
    while True:
        page = loaded.get("/api/events", params={"order": "desc", "limit": 7, **(
            {"after": after} if after else {})}).json()  # fmt: skip
        backward += [e["id"] for e in page["events"]]
        after = page["next"]
        if after is None:
            break
    assert backward == forward[::-1]


def test_event_exports_stream_every_event(loaded) -> None:  # type: ignore[no-untyped-def]
    total = len(loaded.get("/api/events?limit=1000").json()["events"])
    ndjson = loaded.get("/api/events?format=ndjson")
    assert ndjson.headers["content-type"].startswith("application/x-ndjson")
    records = [json.loads(line) for line in ndjson.text.splitlines()]
    assert len(records) == total
    assert all("raw" in record for record in records)  # replayable
    by_accept = loaded.get("/api/events", headers={"accept": "text/csv"})
    rows = list(csv.DictReader(io.StringIO(by_accept.text)))
    assert len(rows) == total
    assert rows[0]["event_time"].endswith("Z")
    assert loaded.get("/api/events?format=csv&limit=3").text.count("\n") == 4


def test_every_ndjson_record_is_its_json_page_record_with_its_raw_request(loaded) -> None:  # type: ignore[no-untyped-def]
    loaded.get("/webhook?myid=85219&" + lines("outbound-answered")[0])  # a repeat, counted
    # odd values: a cp1251 name, a body that is not UTF-8 (base64), a bad value, no EventTime
    loaded.get("/webhook?myid=9&EventType=answer&CallID=x&Name=%C8%E2%E0%ED")
    loaded.post("/webhook?myid=9", content=b"EventType=hangup&EventTime=7&N=\xff&Duration=1.5",
                headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    paged, after = [], ""
    while True:
        page = loaded.get(f"/api/events?limit=7{after}").json()
        paged += page["events"]
        if page["next"] is None:
            break
        after = f"&after={page['next']}"
    exported = [json.loads(line) for line in loaded.get("/api/events?format=ndjson").iter_lines()]
    assert len(exported) == len(paged) > 30
    for record, line in zip(paged, exported, strict=True):
        alone = loaded.get(f"/api/events/{record['id']}").json()
        assert line == {**record, "raw": alone["raw"]}
        assert alone == line
    assert any(line["duplicates"] for line in exported)
    assert any("body_base64" in line["raw"] for line in exported)
    assert any(line["flags"] for line in exported)


BIG = str(2**63)  # one more than SQLite's largest integer
BAD_PARAMETERS = [
    # path and query -> the parameter the 400 names
    ("/api/events?since=yesterday", "since"),
    ("/api/events?since=", "since"),
    (f"/api/events?since={BIG}", "since"),
    (f"/api/events?until={BIG}", "until"),
    ("/api/events?order=up", "order"),
    ("/api/events?format=xml", "format"),
    ("/api/events?limit=0", "limit"),
    ("/api/events?limit=%C2%B2", "limit"),  # a superscript two: a digit to str.isdigit()
    (f"/api/events?limit={2**62 + 1}&format=ndjson", "limit"),
    ("/api/events?after=1", "after"),
    (f"/api/events?after={BIG}:1", "after"),
    (f"/api/events?after=1:{BIG}", "after"),
    ("/api/events?myid=", "myid"),
    ("/api/events?myid=a%20b", "myid"),
    (f"/api/calls?after={BIG}:abc", "after"),
    ("/api/calls?after=abc", "after"),
    (f"/api/calls?since={BIG}", "since"),
    ("/api/rejects?limit=0", "limit"),
    ("/api/rejects?limit=1001", "limit"),
    (f"/api/rejects?before={BIG}", "before"),
    ("/api/reports/missed?until=", "until"),
    ("/api/reports/extensions?by=week", "by"),
]


@pytest.mark.parametrize(("url", "parameter"), BAD_PARAMETERS)
def test_bad_parameters_are_named(loaded, url: str, parameter: str) -> None:  # type: ignore[no-untyped-def]
    assert_error(loaded.get(url), 400, f"parameter {parameter} ")


@pytest.mark.parametrize(
    "url",
    ["/api/events?status=foo", "/api/calls?call_id=1", "/api/reports/missed?order=asc",
     "/api/rejects?after=1", "/api/events/1?limit=1", "/api/calls/x?format=csv"],
)  # fmt: skip
def test_unknown_parameters_are_named(loaded, url: str) -> None:  # type: ignore[no-untyped-def]
    name = url.split("?")[1].split("=")[0]
    assert_error(loaded.get(url), 400, f"unknown parameter {name}: ")


def test_huge_ids_are_not_found(loaded) -> None:  # type: ignore[no-untyped-def]
    assert_error(loaded.get("/api/events/99999999999999999999"), 404, "no event with id")
    assert_error(loaded.get(f"/api/events/{BIG}"), 404, "no event with id")


def test_a_json_page_holds_at_most_1000(tmp_path, db_path, make_client) -> None:  # type: ignore[no-untyped-def]
    line = lines("callback")[0]
    deliveries = tmp_path / "deliveries.txt"
    deliveries.write_text(
        "".join(f"{line.replace('CallID=', f'CallID={n}')}\n" for n in range(1002))
    )
    replayed = CliRunner().invoke(
        main, ["replay", "--myid", "1", "--db", str(db_path), str(deliveries)]
    )
    assert replayed.exit_code == 0, replayed.output
    client = make_client()
    page = client.get("/api/events?limit=5000").json()
    assert len(page["events"]) == 1000 and page["next"] is not None
    assert client.get("/api/events?format=ndjson&limit=1001").text.count("\n") == 1001


@pytest.mark.parametrize(
    ("since", "expected"),
    [("2025-12-01", 1), ("2025-12-01t00:00:00z", 1), ("2030-12-31T23:59:60Z", 0),
     ("1764547200", 1), ("999999999999", 0)],
)  # fmt: skip
def test_times_in_every_described_form(client, since: str, expected: int) -> None:  # type: ignore[no-untyped-def]
    client.get(f"/webhook?myid=1&{lines('callback')[0]}")  # on 2025-12-01
    assert len(client.get("/api/events", params={"since": since}).json()["events"]) == expected


def test_calls(loaded) -> None:  # type: ignore[no-untyped-def]
    calls = loaded.get("/api/calls?limit=100").json()["calls"]
    assert len(calls) == len(SCENARIOS)
    by_status = {(c["direction"], c["status"]) for c in calls}
    assert ("in", "missed") in by_status and ("out", "answered") in by_status
    missed = loaded.get("/api/calls?status=missed").json()["calls"]
    assert {c["external_number"] for c in missed} == {"+74957654321", "+79035556677"}
    ivr_call = loaded.get("/api/calls?myid=96857&status=answered").json()["calls"][0]
    assert ivr_call["answered_by"] == "2566*102"
    assert (
        loaded.get("/api/calls?direction=out&number=89161112233").json()["calls"][0]["talk_seconds"]
        == 41.250118
    )
    # 101 answered one, missed one, took the queue call and lost the parallel ringing
    assert len(loaded.get("/api/calls?extension=2566*101").json()["calls"]) == 4
    one = loaded.get(f"/api/calls/{ivr_call['call_id']}").json()
    assert [leg["extension"] for leg in one["legs"]] == ["2566*887", "2566*102"]
    assert len(one["events"]) == 5
    assert_error(loaded.get("/api/calls/nope"), 404, "no call with call_id nope")
    assert_error(loaded.get("/api/calls?status=lost"), 400, "parameter status")


def test_every_call_of_the_list_is_its_detail_without_legs_and_events(loaded) -> None:  # type: ignore[no-untyped-def]
    page = loaded.get("/api/calls").json()
    assert len(page["calls"]) == len(SCENARIOS)
    for call in page["calls"]:
        detail = loaded.get(f"/api/calls/{call['call_id']}").json()
        assert detail["legs"] and detail["events"]
        assert {k: v for k, v in detail.items() if k not in ("legs", "events")} == call


def test_calls_pages_and_csv(loaded) -> None:  # type: ignore[no-untyped-def]
    first = loaded.get("/api/calls?limit=3").json()
    second = loaded.get(f"/api/calls?limit=3&after={first['next']}").json()
    ids = [c["call_id"] for c in first["calls"] + second["calls"]]
    assert len(set(ids)) == 6
    rows = list(csv.DictReader(io.StringIO(loaded.get("/api/calls?format=csv").text)))
    assert len(rows) == len(SCENARIOS)


def test_open_call_becomes_unknown_end(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(unknown_end_after=60)
    client.get(f"/webhook?myid=1&{lines('outbound-answered')[0]}")  # a dial-out, long ago
    wait_for_calls(client.get)
    [call] = client.get("/api/calls").json()["calls"]
    assert call["status"] == "unknown_end"
    assert client.get(f"/api/calls/{call['call_id']}").json()["status"] == "unknown_end"
    assert len(client.get("/api/calls?status=unknown_end").json()["calls"]) == 1
    assert client.get("/api/calls?status=in_progress").json()["calls"] == []


def test_missed_report(loaded) -> None:  # type: ignore[no-untyped-def]
    report = loaded.get("/api/reports/missed").json()["numbers"]
    assert {r["number"] for r in report} == {"+74957654321", "+79035556677"}
    assert not any(r["handled"] for r in report)
    # we call one of them back, and they answer
    back = lines("outbound-answered")
    back = [x.replace("%2B79161112233", "%2B74957654321") for x in back]
    back = [x.replace("EventTime=17645724", "EventTime=17645904") for x in back]
    back = [x.replace(x.split("CallID=")[1][:32], "f" * 32) for x in back]
    for line in back:
        assert loaded.get(f"/webhook?myid=85219&{line}").json()["ok"]
    wait_for_calls(loaded.get)
    report = loaded.get("/api/reports/missed").json()["numbers"]
    handled = next(r for r in report if r["number"] == "+74957654321")
    assert (handled["handled"], handled["handled_by"]) == (True, "call_back")
    assert handled["recall_seconds"] > 0
    assert report[0]["handled"] is False  # the unhandled stand first


def replayed(
    name: str, call_id: str, at_us: int, number: str, did: str = "74959998877"
) -> list[str]:
    """A scenario's deliveries again: another CallID, starting at `at_us`, with `number` outside."""
    sent = lines(name)
    start = int(re.search(r"EventTime=(\d+)", sent[0]).group(1))  # type: ignore[union-attr]
    old_id = re.search(r"CallID=(\w+)", sent[0]).group(1)  # type: ignore[union-attr]
    return [
        re.sub(r"EventTime=(\d+)", lambda m: f"EventTime={int(m.group(1)) - start + at_us}", line)
        .replace(old_id, call_id)
        .replace("%2B74957654321", number)
        .replace("%2B79161112233", number)
        .replace("%2B74951234567", number)
        .replace("74959998877", did)
        for line in sent
    ]


def test_missed_report_counts_from_the_last_missed_call(client) -> None:  # type: ignore[no-untyped-def]
    t, number = 1_800_000_000_000_000, "%2B79990001122"
    deliveries = [
        *replayed("inbound-cancelled", "a" * 32, t, number),  # missed
        *replayed("outbound-answered", "b" * 32, t + 100_000_000, number),  # called back
        *replayed("inbound-cancelled", "c" * 32, t + 200_000_000, number, did="74950000000"),
    ]
    for line in deliveries:
        assert client.get(f"/webhook?myid=85218&{line}").json()["ok"]
    wait_for_calls(client.get)
    [row] = client.get("/api/reports/missed").json()["numbers"]
    assert (row["number"], row["digits"], row["missed"]) == ("+79990001122", "79990001122", 2)
    assert row["first_missed_at"] == "2027-01-15T08:00:00.000000Z"
    assert row["last_missed_at"] == "2027-01-15T08:03:20.000000Z"
    assert sorted(row["dids"]) == ["74950000000", "74959998877"]
    assert row["handled"] is False  # the call back came before the last missed call
    for line in replayed("inbound-answered", "d" * 32, t + 300_000_000, number):
        assert client.get(f"/webhook?myid=85218&{line}").json()["ok"]
    wait_for_calls(client.get)
    [row] = client.get("/api/reports/missed").json()["numbers"]
    assert (row["handled"], row["handled_by"], row["handled_extension"]) == (
        True,
        "called_again",
        "2566*101",
    )
    assert row["handled_at"] == "2027-01-15T08:05:00.000000Z"
    assert row["recall_seconds"] == 100.0


def test_extensions_report(loaded) -> None:  # type: ignore[no-untyped-def]
    rows = {r["extension"]: r for r in loaded.get("/api/reports/extensions").json()["extensions"]}
    assert rows["2566*101"]["calls"] == 4  # answered, missed, the queue, the parallel ringing
    assert rows["2566*101"]["missed"] == 1  # losing the parallel ringing is not missing a call
    assert rows["2566*101"]["answered"] == 2
    assert rows["2566*102"]["total_talk_seconds"] > 0
    assert "2566*887" not in rows  # IVR legs are routing, not people
    daily = loaded.get("/api/reports/extensions?by=day").json()["extensions"]
    assert all(r["period"].endswith("T00:00:00.000000Z") for r in daily)
    assert_error(loaded.get("/api/reports/extensions?by=week"), 400, "parameter by")


def test_a_call_belongs_to_every_myid_with_one_of_its_events(client) -> None:  # type: ignore[no-untyped-def]
    # the IVR subscribes as 96857, the phone it routes to as 85219
    for line in lines("ivr-bridged-yes"):
        myid = "96857" if "CalledExtensionID=96857" in line else "85219"
        client.get(f"/webhook?myid={myid}&{line}")
    wait_for_calls(client.get)
    for myid in ("96857", "85219"):
        calls = client.get(f"/api/calls?myid={myid}").json()["calls"]
        assert [c["answered_by"] for c in calls] == ["2566*102"]
        assert calls[0]["myids"] == ["96857", "85219"]


# Every read, in every format: none may fail because of what an event holds.
READS = [
    "/api/events", "/api/events?format=ndjson", "/api/events?format=csv", "/api/calls",
    "/api/calls?format=ndjson", "/api/calls?format=csv", "/api/reports/missed",
    "/api/reports/extensions", "/api/reports/extensions?by=day",
    "/api/reports/extensions?by=hour", "/api/rejects",
]  # fmt: skip


def assert_every_read_answers(client, event_ids: list[int], call_ids: set[str]) -> None:  # type: ignore[no-untyped-def]
    """Every read endpoint answers 200, each event by id too, and every call is built."""
    wait_for_calls(client.get)
    for path in READS:
        assert client.get(path).status_code == 200, path
    for event_id in event_ids:
        assert client.get(f"/api/events/{event_id}").status_code == 200
    for call_id in call_ids:
        assert client.get(f"/api/calls/{call_id}").status_code == 200
    assert {c["call_id"] for c in client.get("/api/calls").json()["calls"]} == call_ids


def test_times_and_durations_no_output_can_show_are_bad_values(client) -> None:  # type: ignore[no-untyped-def]
    out_of_range = [
        ("EventTime", "253402300800000000"),  # the first µs of the year 10000
        ("EventTime", "9223372036854775807"),  # the largest 64-bit integer
        ("Duration", "9223372036854775807"),  # some 292,000 years of talk
        ("Duration", "1000000000000000"),  # 10**15 µs: SQLite's JSON no longer shows the µs
    ]
    ids = []
    for n, (name, value) in enumerate(out_of_range):
        fields = {"EventTime": "1764576000000000", "CallStatus": "ANSWER", name: value}
        sent = "&".join(f"{key}={text}" for key, text in fields.items())
        answer = client.get(f"/webhook?myid=1&EventType=hangup&CallID=c{n}&SubCallID=s{n}&{sent}")
        assert answer.status_code == 200
        ids.append(answer.json()["id"])
        stored = client.get(f"/api/events/{ids[-1]}").json()
        assert stored["extra"] == {name: value}
        assert "bad_value" in stored["flags"]
    assert_every_read_answers(client, ids, {f"c{n}" for n in range(len(out_of_range))})


def test_calls_reads_never_write_and_say_how_current_they_are(db_path, make_client) -> None:  # type: ignore[no-untyped-def]
    events = [parse_request(RawRequest("GET", f"myid=1&{line}".encode()), received_at_us=1,
                            source="t")[0] for line in lines("inbound-answered")]  # fmt: skip
    stored_by_version(db_path, SCHEMA_VERSION, events)  # stored, no call built yet
    with sqlite3.connect(db_path, isolation_level=None) as other:
        other.execute("PRAGMA journal_mode=WAL")
        other.execute("BEGIN IMMEDIATE")  # another process writes, for as long as it likes
        try:
            client = make_client()
            page = client.get("/api/calls").json()  # a read that wrote would wait, then fail
            assert (page["calls"], page["built_to_event"]) == ([], 0)
            for path in ("/api/reports/missed", "/api/reports/extensions", "/api/calls/x"):
                assert client.get(path).status_code in (200, 404), path
            health = client.get("/healthz").json()["calls"]
            assert (health["built_to_event"], health["events"]) == (0, len(events))
            assert health["rebuilding"] is True
        finally:
            other.execute("ROLLBACK")
    assert wait_for_calls(client.get)["events"] == len(events)
    page = client.get("/api/calls").json()
    assert ([c["status"] for c in page["calls"]], page["built_to_event"]) == (
        ["answered"],
        len(events),
    )
