"""The SQLite backend on real files: migrations, WAL, group commit, its writer process, failures.

What every backend does is in tests/test_storage.py."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path

import pytest

from receiver.calls import CALLS_VERSION, Call, CallLeg
from receiver.event import Event, RawRequest
from receiver.parse import parse_request
from receiver.store import SCHEMA_VERSION, Store, migrate
from receiver.store.queries import Stored
from receiver.store.schema import (
    CALL_COLUMNS,
    CALL_FIELDS,
    LEG_COLUMNS,
    LEG_FIELDS,
    event_row,
    insert_events,
)
from tests.conftest import sample, stored_by_version


@pytest.fixture(params=[False, True], ids=["writer-thread", "writer-process"])
def own_process(request: pytest.FixtureRequest) -> bool:
    """Run the test with the writer on a thread, then with the writer in a process."""
    return bool(request.param)


def event(query: str, received: int = 1) -> Event:
    parsed, _ = parse_request(
        RawRequest("GET", query.encode()), received_at_us=received, source="t"
    )
    return parsed


def numbered(n: int) -> Event:
    return event(f"myid=1&EventType=dial-in&EventTime={1000 + n}&CallID=c{n}&SubCallID=s{n}")


@pytest.mark.parametrize("start", range(SCHEMA_VERSION + 1))
async def test_any_older_database_migrates_to_the_current_version(
    db_path: Path, start: int
) -> None:
    with sqlite3.connect(db_path) as old:
        migrate(old, target=start)
    async with Store(db_path) as store:
        assert await store.check() == SCHEMA_VERSION


async def test_the_events_of_a_database_before_version_16_are_counted_once(
    db_path: Path,
) -> None:
    stored_by_version(db_path, 15, [numbered(n) for n in range(1, 6)])
    async with Store(db_path) as store:
        assert (await store.sizes()).events == 5
        await store.add_event(numbered(6))
        await store.add_event(numbered(6))  # a repeat
        assert (await store.sizes()).events == 6
    with sqlite3.connect(db_path) as check:
        assert check.execute("SELECT count(*) FROM events").fetchone() == (6,)


async def test_calls_of_a_database_before_version_9_are_all_built_again(db_path: Path) -> None:
    # Version 8 kept each call's JSON; 9 keeps its fields as columns and builds every call again.
    stored_by_version(db_path, 8, [numbered(n) for n in range(1, 5)])
    with sqlite3.connect(db_path) as old:
        old.execute("UPDATE calls_built SET events_to = 4")  # as if every call had been built
    async with Store(db_path) as store:
        assert (await store.calls_state()).rebuilding
        assert await store.refresh_calls() == 4
        await store.add_event(numbered(5))
        assert await store.refresh_calls() == 1
        state = await store.calls_state()
        assert (state.version, state.built_to_event, state.rebuilding) == (CALLS_VERSION, 5, False)
    with sqlite3.connect(db_path) as check:
        built = [call_id for (call_id,) in check.execute("SELECT call_id FROM calls")]
    assert sorted(built) == ["c1", "c2", "c3", "c4", "c5"]


def test_the_calls_tables_have_a_column_for_each_field_of_their_records(db_path: Path) -> None:
    with sqlite3.connect(db_path) as db:
        migrate(db)
        for table, columns in (("calls", CALL_COLUMNS), ("legs", LEG_COLUMNS)):
            found = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            # A column added by a later migration (calls.source) comes last in the table.
            assert sorted(found) == sorted(columns.split(", "))
    assert [c.name for c in CALL_FIELDS] == [
        f.name for f in dataclasses.fields(Call) if f.name not in ("legs", "events")
    ]
    assert [c.name for c in LEG_FIELDS] == [f.name for f in dataclasses.fields(CallLeg)]


async def test_calls_built_by_another_version_are_built_again(db_path: Path) -> None:
    async with Store(db_path) as store:
        for n in range(1, 4):
            await store.add_event(numbered(n))
        assert await store.refresh_calls() == 3
    with sqlite3.connect(db_path) as old:  # an older release built them, one differently
        old.execute("UPDATE calls_built SET version = ?", (CALLS_VERSION - 1,))
        old.execute("UPDATE calls SET status = 'busy' WHERE call_id = 'c2'")
    async with Store(db_path) as store:
        assert (await store.calls_state()).json()["rebuilding"] is True
        assert await store.refresh_calls() == 3
        assert (await store.get_call("c2", now_us=0)).status == "in_progress"  # type: ignore[union-attr]
        assert not (await store.calls_state()).rebuilding
    with sqlite3.connect(db_path) as newer:  # a newer release built them: they are its to build
        newer.execute("UPDATE calls_built SET version = ?", (CALLS_VERSION + 1,))
    async with Store(db_path) as store:
        await store.add_event(numbered(4))
        assert await store.refresh_calls() == 0
        assert await store.get_call("c4", now_us=0) is None


async def test_rebuilding_every_call_counts_those_that_changed(db_path: Path) -> None:
    async with Store(db_path) as store:
        for n in range(1, 4):
            await store.add_event(numbered(n))
        await store.refresh_calls()
        seen: list[tuple[int, int]] = []
        assert await store.rebuild_calls(lambda done, to: seen.append((done, to))) == 0
        assert seen[-1] == (3, 3)
        with sqlite3.connect(db_path) as other:
            other.execute("UPDATE legs SET status = 'BUSY' WHERE call_id = 'c3'")
        assert await store.rebuild_calls() == 1
        assert await store.rebuild_calls() == 0


async def test_calls_up_to_date_take_no_write_lock(db_path: Path) -> None:
    async with Store(db_path) as store:
        await store.add_event(numbered(1))
        assert await store.refresh_calls() == 1
        with sqlite3.connect(db_path, isolation_level=None) as other:
            other.execute("BEGIN IMMEDIATE")  # another writer's long transaction (a replay)
            assert await store.refresh_calls() == 0  # at once, not after the busy timeout
            other.execute("ROLLBACK")


async def test_a_newer_database_is_refused(db_path: Path, own_process: bool) -> None:
    with sqlite3.connect(db_path) as newer:
        newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="upgrade receiver"):
        await Store(db_path, own_process=own_process).open()


async def test_a_file_another_process_is_writing_opens_once_it_has_committed(
    db_path: Path, own_process: bool
) -> None:
    # A file still in rollback mode, with a write under way: SQLite refuses the switch to WAL at
    # once, without a busy timeout, so the open tries again until the write is done.
    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE kept (x)")
    asyncio.get_running_loop().call_later(0.5, other.execute, "COMMIT")
    try:
        async with Store(db_path, own_process=own_process) as store:
            assert await store.check() == SCHEMA_VERSION
    finally:
        other.close()
    with sqlite3.connect(db_path) as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert check.execute("SELECT count(*) FROM kept").fetchone()[0] == 0


async def test_wal_and_full_sync(db_path: Path) -> None:
    async with Store(db_path):
        with sqlite3.connect(db_path) as check:
            assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_concurrent_events_share_commits(db_path: Path, own_process: bool) -> None:
    async with Store(db_path, own_process=own_process) as store:
        results = await asyncio.gather(*(store.add_event(numbered(n)) for n in range(300)))
        commits = store.commits
    assert sorted(r.id for r in results) == list(range(1, 301))
    assert not any(r.duplicate for r in results)
    assert commits < 300  # grouped: requests waiting during a commit join the next one
    with sqlite3.connect(db_path) as check:
        assert check.execute("SELECT count(*) FROM events").fetchone()[0] == 300


async def test_a_failing_event_fails_alone(db_path: Path, own_process: bool) -> None:
    async with Store(db_path, own_process=own_process) as store:
        with sqlite3.connect(db_path) as setup:
            setup.execute(
                "CREATE TRIGGER boom BEFORE INSERT ON events WHEN NEW.call_id = 'c13' "
                "BEGIN SELECT RAISE(ABORT, 'no room'); END"
            )
        results = await asyncio.gather(
            *(store.add_event(numbered(n)) for n in range(10, 20)), return_exceptions=True
        )
        failed = [
            n for n, r in zip(range(10, 20), results, strict=True) if isinstance(r, Exception)
        ]
        assert failed == [13]
        assert (await store.add_event(numbered(30))).duplicate is False
        page = await store.list_events(limit=100)
    assert sorted(e.call_id for e in page.items) == sorted(
        f"c{n}" for n in [*range(10, 20), 30] if n != 13
    )
    assert len({e.id for e in page.items}) == 10


async def test_export_lines_equal_event_json_whatever_the_values(db_path: Path) -> None:
    import json

    from receiver.event import event_json
    from receiver.store import EventQuery

    queries = [
        f"myid=1&{line}"
        for path in sorted((Path(__file__).parent.parent / "sample_payloads").glob("*.txt"))
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    queries += [
        "myid=2&EventType=answer&CallID=x&Name=%C8%E2%E0%ED",  # cp1251, no EventTime
        "myid=2&EventType=hangup&EventTime=7&Duration=1.5&Bridged=yes",  # bad value
        "myid=2&EventType=hangup&EventTime=8&Duration=0&Bridged=no&Transfered=yes",
        "myid=4&EventType=x&EventTime=9007199254740993",  # unknown type, far future
    ]
    events = [event(query, received=1_700_000_000_123_456) for query in queries]
    # a myid no longer accepted, as a database from before myids were checked may hold
    events[-1] = dataclasses.replace(events[-1], myid="Я")
    # Values parsing no longer takes, as a database of an earlier version may hold: both forms
    # show them as null.
    for time_us, duration_us in [(2**63 - 1, 2**63 - 1), (-1, -(10**15)), (-(2**63), 10**15)]:
        events.append(
            dataclasses.replace(events[-1], event_time_us=time_us, duration_us=duration_us)
        )
    odd_body = RawRequest("POST", b"myid=3", b"EventType=answer&EventTime=5&N=\xff", None)
    events.append(parse_request(odd_body, received_at_us=5, source="http-post")[0])
    async with Store(db_path) as store:
        for one in events:
            await store.add_event(one)
        await store.add_event(events[0])  # a duplicate, counted
        lines = b"".join([chunk async for chunk in store.iter_event_lines(EventQuery())])
        stored = [e async for e in store.iter_events(EventQuery())]
    made = [json.loads(line) for line in lines.splitlines()]
    assert len(made) == len(events)
    assert made == [event_json(e, with_raw=True) for e in stored]
    assert any(m["duplicates"] == 1 for m in made)
    assert any("body_base64" in m["raw"] for m in made)


async def test_a_database_with_export_lines_loses_them_and_no_event(db_path: Path) -> None:
    import json

    from receiver.event import event_json
    from receiver.store import EventQuery

    events = [numbered(n) for n in range(300)]
    stored_by_version(db_path, 7, events)
    with sqlite3.connect(db_path) as old:  # lines as version 7 kept them (made by SQLite)
        old.execute("INSERT INTO event_lines SELECT id, 'old line' FROM events")
    async with Store(db_path) as store:
        chunks = [chunk async for chunk in store.iter_event_lines(EventQuery())]
        assert (await store.add_event(events[0])).duplicate
    with sqlite3.connect(db_path) as check:
        assert check.execute("SELECT count(*) FROM events").fetchone() == (300,)
        # emptied, and kept for a server of version 7 beside this one on the file
        assert check.execute("SELECT count(*) FROM event_lines").fetchone() == (0,)
    exported = [json.loads(line) for line in b"".join(chunks).splitlines()]
    assert exported == [
        event_json(dataclasses.replace(e, id=n), with_raw=True) for n, e in enumerate(events, 1)
    ]


async def test_two_writers_on_one_file_lose_nothing(db_path: Path) -> None:
    # e.g. `receiver replay` into the database of a running `receiver serve`
    async with Store(db_path) as first, Store(db_path) as second:
        for batch in range(5):  # each writer stores its own events, the two in turns
            results = await asyncio.gather(
                *(
                    (first if n % 2 else second).add_event(numbered(n))
                    for n in range(batch * 40, batch * 40 + 40)
                ),
                return_exceptions=True,
            )
            assert not [r for r in results if isinstance(r, BaseException)]
    with sqlite3.connect(db_path) as check:
        counted = check.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone()
    assert counted == (200, 200)


def test_the_writer_process_ends_quietly_when_its_server_is_gone(db_path: Path) -> None:
    import subprocess

    from receiver.store.writer import frame, writer_command

    writer = subprocess.Popen(
        writer_command(db_path, 100, 1 << 20),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert writer.stdin is not None and writer.stdout is not None and writer.stderr is not None
    writer.stdout.close()  # the server died before any answer came
    writer.stdin.write(frame(("write_group", ([numbered(1)],))))
    writer.stdin.close()
    assert writer.wait(timeout=20) == 0
    with writer.stderr:
        assert writer.stderr.read() == b""  # no traceback for the answer nobody could take
    with sqlite3.connect(db_path) as check:  # what it committed stays
        assert check.execute("SELECT call_id FROM events").fetchall() == [("c1",)]


async def test_a_repeat_of_an_event_stored_before_the_new_key_form_is_caught(
    db_path: Path,
) -> None:
    from tests.test_parse import key_as_before

    stored = event(f"myid=175&{sample('outbound-hangup')}")
    no_ids = event("myid=1&EventType=answer&EventTime=5")
    with sqlite3.connect(db_path) as old:
        migrate(old)
        for event_id, one in enumerate((stored, no_ids), start=1):
            old.execute(insert_events(1), event_row(one, event_id, key_as_before(one)))
    async with Store(db_path) as store:
        assert await store.add_event(stored) == Stored(1, True)
        assert await store.add_event(no_ids) == Stored(2, True)
