"""`receiver copy`: a real SQLite file copied into a real PostgreSQL database reads the same,
record for record; a second run adds nothing, an interrupted one goes on, and a database that
took deliveries of its own is refused."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pbx_emulator.history import history_record
from pbx_emulator.simulate import calls, make_offices, query_string
from receiver.event import Event, RawRequest, Reject
from receiver.parse import parse_request
from receiver.store import CallQuery, EventQuery, Storage, open_storage
from receiver.store.copy import Copied, copy_into_postgresql
from tests.conftest import insert_as_before_packing
from tests.postgres import temporary_database
from tests.test_damaged import DAMAGES

NOW = 1_764_547_200_000_000 + 86_400_000_000  # a day after the simulated calls began


@pytest.fixture
def postgresql_url() -> Iterator[str]:
    with temporary_database() as url:
        yield url


def simulated_events(count: int, seed: int) -> tuple[list[Event], list[tuple[str, str]]]:
    """The events of `count` simulated calls, and the history records of `count` more whose
    events never came (each as (call id, record JSON))."""
    offices = make_offices(2, seed)
    kinds = {e.id: e for office in offices for e in office.extensions}
    made = list(
        itertools.islice(calls(offices, seed=seed, start_us=NOW - 86_400_000_000), 2 * count)
    )
    events = [
        parse_request(
            RawRequest("GET", f"myid={owner}&{query_string(fields)}".encode()),
            received_at_us=int(fields["EventTime"]) + 1000,
            source="webhook",
        )[0]
        for sim in made[:count]
        for owner, fields in sim.events
    ]
    records = [history_record(sim, kinds) for sim in made[count:]]
    return events, [(r["call_uuid"].lower(), json.dumps(r)) for r in records]


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def fill(db: Path, events: list[Event], records: list[tuple[str, str]]) -> None:
    """An SQLite database as a server leaves it: events (one sent twice), refused deliveries,
    history records, the calls built."""
    async with open_storage(db) as store:
        for event in events:
            await store.add_event(event)
        await store.add_event(events[0])  # a repeat: counted, not stored twice
        for n in range(3):
            raw = RawRequest("POST", b"myid=7", f"EventType=bad{n}".encode(), "text/plain")
            await store.add_reject(Reject(NOW + n, 415, "unsupported content type", raw, "7"))
        await store.add_history_calls(records)
        await store.refresh_calls()


def as_before_packing(db: Path, event: Event) -> None:
    """One more event as a receiver before schema version 12 stored it (its raw request not
    deflated), and an id retired above it (as a re-parse merging two events leaves)."""
    with sqlite3.connect(db) as connection:
        (top,) = connection.execute("SELECT max(id) FROM events").fetchone()
        insert_as_before_packing(connection, event, top + 1, event.dedup_key())
        connection.execute("UPDATE retired_ids SET top = ?", (top + 5,))


async def everything(store: Storage) -> dict[str, Any]:
    """What a store answers: the NDJSON export (raw requests and repeats with each event), the
    rejects, the calls, the reports."""
    query = CallQuery(now_us=NOW)
    return {
        "events": b"".join([line async for line in store.iter_event_lines(EventQuery())]),
        "rejects": (await store.list_rejects(limit=1000)).items,
        "calls": [call async for call in store.iter_calls(query)],
        "missed": await store.missed_report(query),
        "extensions": await store.extensions_report(query, by="day"),
    }


async def build_calls(db: Path) -> None:
    async with open_storage(db) as store:
        await store.refresh_calls()


async def read_all(db: Path | str) -> dict[str, Any]:
    async with open_storage(db) as store:
        return await everything(store)


def copy_command(source: Path, target: str, *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "receiver", "copy", "--from", str(source), "--to", target, *more],
        capture_output=True,
        text=True,
        timeout=120,
    )


def history_rows(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as connection:
        return connection.execute("SELECT * FROM history_calls ORDER BY call_id").fetchall()


def test_a_copy_reads_the_same_record_for_record(tmp_path: Path, postgresql_url: str) -> None:
    db = tmp_path / "receiver.db"
    events, records = simulated_events(40, seed=5)
    run(fill(db, events[:-1], records))
    as_before_packing(db, events[-1])
    run(build_calls(db))  # the calls of the last event too, as a server would

    done = copy_command(db, postgresql_url)
    assert done.returncode == 0, done.stderr
    assert f"{len(events):,} copied, 0 already there" in done.stdout
    assert "3 copied" in done.stdout and f"{len(records)} copied" in done.stdout
    assert f"event ids continue after {len(events) + 4}" in done.stdout

    source, copied = run(read_all(db)), run(read_all(postgresql_url))
    assert copied["events"] == source["events"]  # ids, raw requests, repeats: every byte
    assert b'"duplicates":1' in copied["events"]
    assert copied["rejects"] == source["rejects"] and len(copied["rejects"]) == 3
    assert len(source["calls"]) == 80  # 40 from their events, 40 filled from the history
    assert copied["calls"] == source["calls"]
    assert copied["missed"] == source["missed"]
    assert copied["extensions"] == source["extensions"]
    with sqlite3.connect(db) as connection:
        kept = connection.execute("SELECT * FROM history_calls ORDER BY call_id").fetchall()
    assert history_rows(postgresql_url) == kept

    async def deliver_one_more() -> tuple[int, int]:
        fresh, _ = simulated_events(1, seed=99)
        async with open_storage(postgresql_url) as store:
            stored = await store.add_event(fresh[0])
            rejected = await store.list_rejects(limit=1)
            await store.add_reject(Reject(NOW, 400, "myid is missing", RawRequest("GET", b"")))
            newest = (await store.list_rejects(limit=1)).items[0]
            assert rejected.items[0].id == 3
            return stored.id, newest.id

    event_id, reject_id = run(deliver_one_more())
    assert event_id == len(events) + 5  # after the file's ids, the retired one too
    assert reject_id == 4


def test_run_again_it_adds_nothing_and_cut_short_it_goes_on(
    tmp_path: Path, postgresql_url: str
) -> None:
    db = tmp_path / "receiver.db"
    events, records = simulated_events(30, seed=6)
    run(fill(db, events[:100], records))

    seen: list[int] = []

    def interrupt(copied: Copied) -> None:
        seen.append(copied.events_read)
        if copied.events_read >= 40:
            raise KeyboardInterrupt  # as Ctrl-C in the middle of a copy

    with pytest.raises(KeyboardInterrupt):
        run(copy_into_postgresql(db, postgresql_url, progress=interrupt, events_at_once=20))
    with psycopg.connect(postgresql_url) as connection:
        (count,) = connection.execute("SELECT count(*) FROM events").fetchone()  # type: ignore[misc]
    assert count == 40  # two batches committed, no more

    done = copy_command(db, postgresql_url, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "going on after event 40" in done.stdout
    assert "60 copied, 0 already there" in done.stdout
    assert run(read_all(postgresql_url)) == run(read_all(db))

    again = copy_command(db, postgresql_url)
    assert again.returncode == 0, again.stderr
    assert "events               0 copied" in again.stdout
    assert "refused deliveries   0 copied, 3 already there" in again.stdout
    assert f"call-history records 0 copied, {len(records)} already there" in again.stdout

    # The SQLite server took more meanwhile, a repeat among them: the next copy brings them.
    async def more() -> None:
        async with open_storage(db) as store:
            for event in events[100:]:
                await store.add_event(event)
            await store.add_event(events[1])
            await store.refresh_calls()

    run(more())
    third = copy_command(db, postgresql_url)
    assert third.returncode == 0, third.stderr
    assert f"{len(events) - 100} copied, 0 already there" in third.stdout
    assert "1 events given their newer repeat count" in third.stdout
    assert run(read_all(postgresql_url)) == run(read_all(db))


def test_a_database_that_took_deliveries_of_its_own_is_refused(
    tmp_path: Path, postgresql_url: str
) -> None:
    db = tmp_path / "receiver.db"
    events, _ = simulated_events(5, seed=7)
    run(fill(db, events[:10], []))

    async def own_delivery() -> None:
        async with open_storage(postgresql_url) as store:
            await store.add_event(events[-1])  # id 1 there, another event than the file's 1

    run(own_delivery())
    done = copy_command(db, postgresql_url)
    assert done.returncode == 1
    assert "holds other events under ids the SQLite file has (1):" in done.stderr
    assert "Copy into a new, empty database" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_command_says_what_is_wrong_with_its_arguments(tmp_path: Path) -> None:
    missing = copy_command(tmp_path / "none.db", "postgresql://postgres@127.0.0.1/x")
    assert missing.returncode == 1 and "no database at" in missing.stderr
    (tmp_path / "receiver.db").write_bytes(b"")
    not_url = copy_command(tmp_path / "receiver.db", str(tmp_path / "other.db"))
    assert not_url.returncode == 2 and "is not a PostgreSQL URL" in not_url.stderr
    help_text = subprocess.run([sys.executable, "-m", "receiver", "copy", "--help"],
                               capture_output=True, text=True).stdout  # fmt: skip
    assert "Examples:" in help_text and "receiver copy --from" in help_text


def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    db = tmp_path / "receiver.db"
    run(fill(db, simulated_events(1, seed=8)[0], []))
    done = copy_command(db, "postgresql://receiver:secret@127.0.0.1:1/receiver")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "secret" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_nul_in_a_field_is_copied_as_postgresql_keeps_one(
    tmp_path: Path, postgresql_url: str
) -> None:
    """SQLite keeps a NUL in a field; PostgreSQL's text cannot: the copy keeps it as U+FFFD,
    as the PostgreSQL backend stores such a delivery, and the raw request keeps the byte."""
    db = tmp_path / "receiver.db"
    events, _ = simulated_events(2, seed=9)
    query = b"myid=7&EventType=incoming&EventTime=1764547200000000&CallID=nul1&CallerIDName=a%00b"
    with_nul = parse_request(RawRequest("GET", query), received_at_us=NOW, source="webhook")[0]
    assert with_nul.caller_id_name == "a\x00b"
    run(fill(db, [*events, with_nul], []))

    for _ in range(2):  # and again: the same event found there, no clash
        done = copy_command(db, postgresql_url)
        assert done.returncode == 0, done.stderr

    async def copied_one() -> Event | None:
        async with open_storage(postgresql_url) as store:
            return await store.get_event(len(events) + 1)

    event = run(copied_one())
    assert event is not None and event.caller_id_name == "a\ufffdb"
    assert event.raw.query == query
    assert f"going on after event {len(events) + 1}" in done.stdout
    assert "events               0 copied" in done.stdout


def test_damaged_rows_are_copied_as_the_reads_show_them(
    tmp_path: Path, postgresql_url: str
) -> None:
    """A file edited by hand or damaged: each value no receiver stores is copied as the reads
    show it (replaced, and flagged damaged_value:<column>), where the copy stopped at it."""
    db = tmp_path / "receiver.db"
    events, _ = simulated_events(4, seed=3)
    run(fill(db, events, []))
    damages = [*DAMAGES, ("myid", "x'3741'")]
    with sqlite3.connect(db) as connection:
        for event_id, (column, value) in enumerate(damages, start=1):
            connection.execute(f"UPDATE events SET {column} = {value} WHERE id = ?", [event_id])
        connection.execute("UPDATE rejects SET reason = x'ff', received_at_us = 'x' WHERE id = 1")

    done = copy_command(db, postgresql_url)
    assert done.returncode == 0, done.stderr
    source, copied = run(read_all(db)), run(read_all(postgresql_url))
    assert copied["events"] == source["events"]
    flags = {
        record["id"]: record["flags"] for record in map(json.loads, source["events"].splitlines())
    }
    for event_id, (column, _) in enumerate(damages, start=1):
        assert f"damaged_value:{column}" in flags[event_id], column
    assert copied["rejects"] == source["rejects"]
    assert {reject.id: reject.reason for reject in copied["rejects"]}[1] == "\ufffd"
