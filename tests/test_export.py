"""The server's NDJSON export, made by worker processes: the same lines as one process makes,
in the same order, whatever the query, the limit or the cursor; and complete when a worker dies."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from receiver.event import RawRequest
from receiver.parse import parse_request
from receiver.store import EventQuery, Store
from receiver.store.export import WORKER_PAGE
from tests.conftest import sample

EVENTS = 2 * WORKER_PAGE + 500  # pages a worker makes, and a part page


@pytest.fixture
async def filled(db_path: Path) -> Path:
    """A database of EVENTS events of three myids, some with the same time (order by id)."""
    line = sample("outbound-hangup")
    async with Store(db_path) as store:
        events = []
        for n in range(EVENTS):
            raw = RawRequest(
                "GET", f"myid={n % 3}&{line}".replace("CallID=", f"CallID={n}").encode()
            )
            event, _ = parse_request(raw, received_at_us=1_700_000_000_000_000 + n // 2, source="t")
            events.append(event)
        for stored in await asyncio.gather(*store.submit_events(events)):
            assert not stored.duplicate
    return db_path


async def export(store: Store, query: EventQuery, after: str | None, limit: int | None) -> bytes:
    return b"".join(
        [lines async for lines in store.iter_event_lines(query, after=after, limit=limit)]
    )


CASES = [
    # query, cursor (by position in the in-process export, or None), limit
    (EventQuery(), None, None),
    (EventQuery(descending=True), None, None),
    (EventQuery(myids=("1",)), None, None),
    (EventQuery(), None, 1),
    (EventQuery(), None, WORKER_PAGE),
    (EventQuery(), None, WORKER_PAGE + 1),
    (EventQuery(), 777, None),
    (EventQuery(descending=True), 1500, 600),
    (EventQuery(myids=("nobody",)), None, None),
    (EventQuery(number="+7 916 111-22-33"), None, WORKER_PAGE + 1),  # digits(), in SQL
]


@pytest.mark.parametrize(("query", "start", "limit"), CASES)
async def test_workers_export_what_one_process_does(
    filled: Path, query: EventQuery, start: int | None, limit: int | None
) -> None:
    async with Store(filled) as alone:
        cursor = None
        if start is not None:
            page = await alone.list_event_records(query, limit=start)
            cursor = page.next
        expected = await export(alone, query, cursor, limit)
    async with Store(filled, own_process=True) as server:
        assert await export(server, query, cursor, limit) == expected
    shown = min(limit or EVENTS, EVENTS - (start or 0)) if query.myids != ("nobody",) else 0
    if query.myids == ("1",):
        shown = EVENTS // 3 + (EVENTS % 3 > 1)
    assert expected.count(b"\n") == shown


async def test_an_export_completes_when_its_workers_die(
    filled: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Store(filled) as alone:
        expected = await export(alone, EventQuery(), None, None)
    async with Store(filled, own_process=True) as server:
        ten = await export(server, EventQuery(), None, 10)  # the workers start
        assert ten == b"".join(line + b"\n" for line in expected.split(b"\n")[:10])
        exporter = server._exporter
        assert exporter is not None and exporter.pool is not None
        pages = server.iter_event_lines(EventQuery())
        first = await anext(pages)
        for pid in list(exporter.pool._processes):
            os.kill(pid, signal.SIGKILL)
        with caplog.at_level(logging.ERROR, logger="receiver.store"):
            rest = b"".join([lines async for lines in pages])
        assert first + rest == expected
        assert "an export worker process died" in caplog.text
        assert await export(server, EventQuery(), None, None) == expected  # new workers


async def test_a_page_holds_what_is_stored_into_it_after_its_end_was_found(filled: Path) -> None:
    # A page's end is found ahead of the worker that reads it; an event stored meanwhile with
    # an earlier time (a late delivery, a replay) must make the page longer, not push one of
    # its own events out of it and out of the export.
    from receiver.store.export import page_lines, page_select

    async with Store(filled, own_process=True) as server:
        exporter = server._exporter
        assert exporter is not None
        end = await exporter.page_end(EventQuery(), None, WORKER_PAGE)
        assert end is not None
        line = sample("outbound-hangup").replace("CallID=", "CallID=late")
        line = re.sub(r"EventTime=\d+", "EventTime=1000", line)  # before every stored event
        raw = RawRequest("GET", f"myid=1&{line}".encode())
        late, _ = parse_request(raw, received_at_us=1_700_000_000_000_000, source="t")
        assert not (await server.add_event(late)).duplicate
        sql, params = page_select(EventQuery(), None, end, WORKER_PAGE)
        pool = exporter.workers()
        lines = await asyncio.get_running_loop().run_in_executor(pool, page_lines, sql, params)
    assert lines.count(b"\n") == WORKER_PAGE + 1  # every event through its end, and the late one
    assert b"CallID=late" in lines


KEEPING = """
import resource, sys
from receiver.store.export import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
def page():  # a page's lines, their copy and its pickle for the pipe, ~5 MB each
    lines = bytearray(b"x" * 5_000_000)
    return len(bytes(bytes(lines)))
page()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    page()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
@pytest.mark.parametrize("setting", ["default", "keep"])
def test_a_worker_keeps_the_memory_a_page_frees_for_the_next(setting: str) -> None:
    # Each page's buffers given back to the system and mapped again cost a page fault every
    # 4 KB: about one an exported event.
    run = subprocess.run(
        [sys.executable, "-c", KEEPING, setting], capture_output=True, text=True, check=True
    )
    faults = int(run.stdout)
    if setting == "keep":
        assert faults < 100, faults
    else:  # what the setting is for: glibc as it comes maps five pages' buffers afresh
        assert faults > 5 * 1000, faults


async def test_workers_export_past_events_of_a_damaged_order(filled: Path) -> None:
    # A page can end at an event whose order_us is not an integer (a file edited by hand):
    # its cursor (`~<id>`) must lead the next page on, in the workers as in one process.
    import sqlite3

    with sqlite3.connect(
        filled
    ) as db:  # text sorts after every number, either way a page ends in it
        db.execute("UPDATE events SET order_us = 'x' || (id % 7) WHERE id > ?", [EVENTS - 4100])
        db.execute("UPDATE events SET order_us = x'00' WHERE id IN (3, 4)")
        db.execute("UPDATE events SET order_us = 2.5 WHERE id = 5")
    for query in (EventQuery(), EventQuery(descending=True)):
        async with Store(filled) as alone:
            expected = await export(alone, query, None, None)
        async with Store(filled, own_process=True) as server:
            assert await export(server, query, None, None) == expected
        assert expected.count(b"\n") == EVENTS
