"""A database edited by hand or damaged: every read of a real server still answers, with each
value the receiver could not have stored flagged, calls are still built from its events, and a
damaged call is built again from them."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson

from receiver.event import now_us
from receiver.store import CallQuery, Store
from tests.conftest import ROOT, scenario, wait_for_calls
from tests.test_openapi import check

# Values no receiver writes, each into another event: (column, SQL value).
DAMAGES = [
    ("duration_us", "'abc'"),
    ("extra", "'{bad'"),
    ("raw_query", "x'0011'"),  # not a zstandard frame
    ("caller_id_name", "CAST(x'ff41' AS TEXT)"),  # text that is not UTF-8
    ("transferred", "'yes'"),
    ("flags", "'[1]'"),
]


def first_call(calls: list[list[str]]) -> str:
    return re.search(r"CallID=([0-9a-f]+)", calls[0][0])[1]  # type: ignore[index]


def by_id(call: dict[str, object]) -> str:
    return str(call["call_id"])


def deliver(client: httpx.Client, lines: list[str]) -> None:
    for line in lines:
        assert client.get(f"/webhook?myid=175&{line}").status_code == 200


def test_every_read_answers_and_flags_what_is_damaged(db_path: Path, server) -> None:  # type: ignore[no-untyped-def]
    running = server()
    calls = [scenario(name) for name in ("inbound-answered", "queue-rounds", "outbound-busy")]
    with httpx.Client(base_url=running.url, timeout=30) as client:
        for lines in calls:
            deliver(client, lines[:2])  # each call's first events, damaged below
        with sqlite3.connect(db_path) as db:
            ids = [row[0] for row in db.execute("SELECT id FROM events ORDER BY id")]
            for (column, value), event_id in zip(DAMAGES, ids, strict=False):
                db.execute(f"UPDATE events SET {column} = {value} WHERE id = ?", [event_id])
        damaged = dict(zip(ids, (column for column, _ in DAMAGES), strict=False))
        for lines in calls:
            deliver(client, lines[2:])  # their calls are built again, from damaged events
        built = wait_for_calls(lambda path: client.get(path))
        total = built["events"]

        page = client.get("/api/events", params={"limit": 1000})
        assert page.status_code == 200, page.text
        records = {record["id"]: record for record in page.json()["events"]}
        assert len(records) == total
        for event_id, column in damaged.items():
            assert f"damaged_value:{column}" in records[event_id]["flags"], column
            one = client.get(f"/api/events/{event_id}")
            assert one.status_code == 200 and one.json()["id"] == event_id

        export = client.get("/api/events", params={"format": "ndjson"})
        assert export.status_code == 200
        lines = [orjson.loads(line) for line in export.content.splitlines()]
        assert {line.pop("raw") and line["id"]: line for line in lines} == records

        table = client.get("/api/events", params={"format": "csv"})
        assert table.status_code == 200
        assert len(list(csv.reader(io.StringIO(table.text)))) == total + 1

        listed = client.get("/api/calls", params={"limit": 100})
        assert listed.status_code == 200
        built_calls = listed.json()["calls"]
        assert len(built_calls) == len(calls)

        # The calls are derived: a damaged row of theirs is built again from its events.
        with sqlite3.connect(db_path) as db:
            db.execute("UPDATE calls SET started_us = 'x' WHERE call_id = ?", [first_call(calls)])
            db.execute("UPDATE calls SET status = 'weird', extensions = '{bad' WHERE rowid = 2")
        again = client.get("/api/calls", params={"limit": 100})
        assert again.status_code == 200
        assert sorted(again.json()["calls"], key=by_id) == sorted(built_calls, key=by_id)
        one = client.get(f"/api/calls/{first_call(calls)}")
        assert one.status_code == 200 and one.json()["call_id"] == first_call(calls)
        assert client.get("/api/calls", params={"format": "csv"}).status_code == 200
        for page_path in ("/events", "/calls", "/", f"/calls/{first_call(calls)}"):
            assert client.get(page_path).status_code == 200, page_path
    running.stop()

    rebuilt = subprocess.run(
        [sys.executable, "-m", "receiver", "rebuild", "--db", str(db_path), "--reparse", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr


def test_a_damaged_reject_is_shown_as_well_as_it_reads(db_path: Path, server) -> None:  # type: ignore[no-untyped-def]
    running = server()
    with httpx.Client(base_url=running.url, timeout=30) as client:
        for query in ("EventType=dial-in", "myid=1", "myid=2&token=x"):
            assert client.get(f"/webhook?{query}").status_code >= 400
        with sqlite3.connect(db_path) as db:
            db.execute("UPDATE rejects SET raw_query = 'as text', reason = x'ff' WHERE id = 1")
            db.execute("UPDATE rejects SET received_at_us = 'x', raw_body = 5 WHERE id = 2")
        listed = client.get("/api/rejects")
        assert listed.status_code == 200, listed.text
        shown = {reject["id"]: reject for reject in listed.json()["rejects"]}
        assert shown[1]["query"] == "as text" and shown[1]["reason"] == "\ufffd"
        assert shown[2]["body"] == "5" and shown[2]["received_at"] == "1970-01-01T00:00:00.000000Z"
        assert client.get("/rejects").status_code == 200


# Values no receiver writes into the calls and legs the reports read (SQL values).
REPORT_DAMAGES = [
    "UPDATE calls SET started_us = 'x', external_number = x'ff41'"
    " WHERE rowid = (SELECT min(rowid) FROM calls WHERE status = 'missed')",
    "UPDATE calls SET did = x'0041' WHERE status = 'missed'",
    "UPDATE calls SET answered_by = x'ff', started_us = 1.5e15 WHERE status = 'answered'",
    "UPDATE calls SET status = x'6d' WHERE direction = 'out'",
    "UPDATE legs SET extension = x'ff41', ring_us = 'abc', talk_us = x'00' WHERE rowid = 1",
    "UPDATE legs SET started_us = 'y' WHERE rowid = 2",
]


def test_the_reports_answer_over_damaged_calls_and_legs(db_path: Path, server) -> None:  # type: ignore[no-untyped-def]
    # The reports read the calls and legs as built: a row edited by hand or damaged must not
    # fail them (its figures are as good as it reads), nor the pages that show them.
    running = server()
    names = ("inbound-cancelled", "inbound-answered", "inbound-cancelled", "outbound-answered")
    with httpx.Client(base_url=running.url, timeout=30) as client:
        for name in names:
            deliver(client, scenario(name))
        wait_for_calls(lambda path: client.get(path))
        with sqlite3.connect(db_path) as db:
            for statement in REPORT_DAMAGES:
                db.execute(statement)
        for path in (
            "/api/reports/missed",
            "/api/reports/extensions",
            "/api/reports/extensions?by=day",
            "/api/reports/extensions?by=hour&tz=Europe/Moscow",
            "/api/reports/missed?format=csv",
            "/",
            "/missed",
            "/extensions?by=day",
        ):
            answer = client.get(path)
            assert answer.status_code == 200, (path, answer.text[-2000:])
        missed = client.get("/api/reports/missed")
        check(missed, "MissedReport")
        numbers = missed.json()["numbers"]
        assert len(numbers) == 1  # the two cancelled calls came from one number
        assert numbers[0]["number"] == "\ufffdA" and numbers[0]["last_missed_at"] is None
        talk = client.get("/api/reports/extensions", params={"by": "day"})
        check(talk, "ExtensionsReport")
        assert "\ufffdA" in {row["extension"] for row in talk.json()["extensions"]}
        assert 'data-since="None"' not in client.get("/missed").text
    running.stop()

    async def by_period() -> list[dict[str, Any]]:  # with a filter: counted by GROUP BY
        async with Store(db_path) as store:
            query = CallQuery(myids=("175",), now_us=now_us())
            return await store.calls_by_period(query, by="hour")

    periods = asyncio.run(by_period())
    assert sum(row["calls"] for row in periods) == len(names)
    assert {row["status"] for row in periods} >= {"m", "missed"}  # the blob as its text


def walk(client: httpx.Client, listed: str, key: str, order: str) -> list[Any]:
    """The `key` of every item of /api/<listed>, a page of one at a time, following `next`."""
    seen, after = [], None
    while True:
        params = {"limit": 1, "order": order, **({"after": after} if after else {})}
        page = client.get(f"/api/{listed}", params=params)
        assert page.status_code == 200, page.text
        seen += [item[key] for item in page.json()[listed]]
        after = page.json()["next"]
        if after is None:
            return seen


def test_pages_and_the_export_go_past_an_event_of_a_damaged_order(db_path: Path, server) -> None:  # type: ignore[no-untyped-def]
    # order_us (the time events are listed by) holding text, a blob or a REAL: each page's
    # `next` cursor must still lead on, once over every event, either way, and the export too.
    running = server()
    with httpx.Client(base_url=running.url, timeout=30) as client:
        for name in ("inbound-answered", "outbound-busy"):
            deliver(client, scenario(name))
        with sqlite3.connect(db_path) as db:
            ids = [row[0] for row in db.execute("SELECT id FROM events ORDER BY id")]
            for event_id, value in zip(ids[1::3], ("'x'", "x'00ff'", "1.5", "'x'"), strict=False):
                db.execute(f"UPDATE events SET order_us = {value} WHERE id = ?", [event_id])
        for order in ("asc", "desc"):
            seen = walk(client, "events", "id", order)
            assert sorted(seen) == ids and len(seen) == len(ids), order
        export = client.get("/api/events", params={"format": "ndjson"})
        assert export.status_code == 200
        assert sorted(orjson.loads(line)["id"] for line in export.content.splitlines()) == ids
    running.stop()


def test_calls_pages_go_past_a_call_of_a_damaged_start(db_path: Path, server) -> None:  # type: ignore[no-untyped-def]
    running = server()
    with httpx.Client(base_url=running.url, timeout=30) as client:
        for name in ("inbound-answered", "outbound-busy", "queue-rounds", "internal"):
            deliver(client, scenario(name))
        wait_for_calls(lambda path: client.get(path))
        with sqlite3.connect(db_path) as db:
            ids = sorted(row[0] for row in db.execute("SELECT call_id FROM calls"))
            db.execute("UPDATE calls SET started_us = 'x' WHERE call_id = ?", [ids[0]])
            db.execute("UPDATE calls SET started_us = 2.5 WHERE call_id = ?", [ids[1]])
        for order in ("asc", "desc"):
            assert sorted(walk(client, "calls", "call_id", order)) == ids, order
    running.stop()


def test_a_number_filter_reads_past_numbers_no_receiver_stores(db_path: Path, server) -> None:  # type: ignore[no-untyped-def]
    running = server()
    with httpx.Client(base_url=running.url, timeout=30) as client:
        lines = scenario("inbound-answered")
        deliver(client, lines)
        number = re.search(r"CallerIDNum=([^&]+)", lines[0])[1]  # type: ignore[index]
        with sqlite3.connect(db_path) as db:
            db.execute("UPDATE events SET caller_id_num = x'ff37' WHERE id = 1")
            db.execute("UPDATE events SET called_number = 79160000000 WHERE id = 2")
            total = db.execute("SELECT count(*) FROM events").fetchone()[0]
        for fmt in ("json", "ndjson"):
            found = client.get("/api/events", params={"number": number, "format": fmt})
            assert found.status_code == 200, found.text
        found = client.get("/api/events", params={"number": "79160000000"}).json()["events"]
        assert [event["id"] for event in found] == [2]
        assert total > 2
    running.stop()
