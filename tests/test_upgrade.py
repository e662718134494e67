"""Old databases upgraded, by `receiver upgrade` and at start: every event kept, repeats still
found, with one lookup of one form of each key."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pty
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from receiver.cli import main
from receiver.event import Event, RawRequest
from receiver.parse import parse_request
from receiver.store import SCHEMA_VERSION, Store, migrate
from receiver.store.queries import Stored
from receiver.store.schema import KEYS_AT_ONCE, KEYS_REWRITTEN, KeyRewrite
from receiver.store.writer import Writer
from tests.conftest import insert_as_before_packing, stored_by_version


def event(query: str) -> Event:
    return parse_request(RawRequest("GET", query.encode()), received_at_us=1, source="t")[0]


def numbered(n: int) -> Event:
    return event(f"myid=1&EventType=dial-in&EventTime={1000 + n}&CallID=c{n}&SubCallID=s{n}")


def old_database(db_path: Path, count: int = 5) -> list[Event]:
    """A database of schema version 5 with `count` events, the first two already repeated,
    and one with neither EventTime nor ids (its key is made from its raw request)."""
    events = [numbered(n) for n in range(count - 1)]
    events.append(event("myid=1&EventType=dial-in&CalledNumber=123"))
    events[0] = dataclasses.replace(events[0], duplicates=2)
    events[1] = dataclasses.replace(events[1], duplicates=1)
    stored_by_version(db_path, 5, events)
    return events


def rows(db_path: Path) -> list[tuple[Any, ...]]:
    """Every event's row without its de-dup key, and the keys, and without how its raw request
    is kept (raw_packing, from version 12 on: an upgraded row keeps it as received)."""
    with sqlite3.connect(db_path) as check:
        left_out = ("dedup_key", "raw_packing")
        names = [c[1] for c in check.execute("PRAGMA table_info(events)") if c[1] not in left_out]
        return check.execute(f"SELECT {', '.join(names)} FROM events ORDER BY id").fetchall()


def keys(db_path: Path) -> list[bytes]:
    with sqlite3.connect(db_path) as check:
        return [key for (key,) in check.execute("SELECT dedup_key FROM events ORDER BY id")]


def tables(db_path: Path) -> set[str]:
    with sqlite3.connect(db_path) as check:
        return {name for (name,) in check.execute("SELECT name FROM sqlite_schema")}


def upgrade(db_path: Path, *more: str) -> Any:
    return CliRunner().invoke(main, ["upgrade", "--db", str(db_path), *more])


async def test_the_command_upgrades_an_old_database_and_keeps_every_event(
    db_path: Path,
) -> None:
    events = old_database(db_path)
    before = rows(db_path)
    assert {len(key) for key in keys(db_path)} == {16}  # the hash alone, as version 5 made it

    result = upgrade(db_path)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"upgraded {db_path} from schema version 5 to {SCHEMA_VERSION}"
    assert lines[1].split() == ["old", "keys", "rewritten", "5"]
    assert lines[2].split()[0] == "time"
    assert rows(db_path) == before  # every event, every column but its key as it was
    assert keys(db_path) == [e.dedup_key() for e in events]
    assert "old_keys" not in tables(db_path)

    async with Store(db_path) as store:  # repeats of the old events are found
        assert [await store.add_event(e) for e in events] == [
            Stored(n, True) for n in (1, 2, 3, 4, 5)
        ]
        assert await store.add_event(numbered(9)) == Stored(6, False)
    with sqlite3.connect(db_path) as check:
        counted = [n for (n,) in check.execute("SELECT duplicates FROM events ORDER BY id")]
    assert counted == [3, 2, 1, 1, 1, 0]


def test_the_command_on_a_current_database_says_so_and_changes_nothing(db_path: Path) -> None:
    old_database(db_path)
    assert upgrade(db_path).exit_code == 0
    upgraded = (rows(db_path), keys(db_path))
    again = upgrade(db_path)
    assert again.exit_code == 0, again.output
    assert again.output == (
        f"{db_path} is at schema version {SCHEMA_VERSION}, this receiver's: nothing to do\n"
    )
    assert (rows(db_path), keys(db_path)) == upgraded


def test_the_command_refuses_a_newer_database_and_a_missing_one(db_path: Path) -> None:
    missing = upgrade(db_path)
    assert missing.exit_code == 1
    assert "no database at" in missing.output
    with sqlite3.connect(db_path) as newer:
        newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    refused = upgrade(db_path)
    assert refused.exit_code == 1
    assert f"schema version {SCHEMA_VERSION + 1}, newer than this receiver knows" in (
        refused.output
    )


def test_the_command_shows_a_progress_bar_on_a_terminal(db_path: Path) -> None:
    stored_by_version(db_path, 5, [numbered(n) for n in range(2 * KEYS_AT_ONCE + 1)])
    leader, follower = pty.openpty()
    command = [sys.executable, "-m", "receiver", "upgrade", "--db", str(db_path)]
    process = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal's other end closed: the command is done
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert process.wait() == 0, shown
    assert b"rewriting old de-dup keys" in shown and b"100%" in shown
    assert f"old keys rewritten  {2 * KEYS_AT_ONCE + 1:,}".encode() in shown


@pytest.mark.parametrize("own_process", [False, True], ids=["writer-thread", "writer-process"])
async def test_opening_an_old_database_upgrades_it_first_and_says_so(
    db_path: Path, own_process: bool, caplog: pytest.LogCaptureFixture
) -> None:
    events = old_database(db_path)
    before = rows(db_path)
    with caplog.at_level(logging.INFO, logger="receiver.store"):
        async with Store(db_path, own_process=own_process) as store:
            assert keys(db_path) == [e.dedup_key() for e in events]  # before it takes any
            assert rows(db_path) == before  # every event, every column but its key as it was
            assert await store.add_event(events[3]) == Stored(4, True)
    said = [record.getMessage() for record in caplog.records]
    assert said[0].startswith(
        f"upgrading the database {db_path} from schema version 5 to {SCHEMA_VERSION} first: "
        "the de-dup keys of the 5 events stored before version 6 get EventTime in front"
    )
    assert said[-1].startswith(f"upgraded the database from schema version 5 to {SCHEMA_VERSION}")
    assert said[-1].endswith("(5 old de-dup keys rewritten)")


def test_a_repeat_is_looked_up_under_one_form_of_its_key(db_path: Path) -> None:
    old_database(db_path)
    writer = Writer(db_path, 100, 1 << 20)
    try:
        asked: list[str] = []
        writer.db.set_trace_callback(asked.append)
        results = writer.write_group([numbered(1), numbered(7)])
    finally:
        writer.close()
    assert results == [Stored(2, True), Stored(6, False)]
    lookups = [sql for sql in asked if sql.startswith("SELECT dedup_key, id FROM events")]
    wanted = ", ".join(f"x'{e.dedup_key().hex()}'" for e in (numbered(1), numbered(7)))
    assert lookups == [f"SELECT dedup_key, id FROM events WHERE dedup_key IN ({wanted})"]


def test_other_writers_take_turns_with_the_rewrite_and_cannot_set_it_back(
    db_path: Path,
) -> None:
    count = 2 * KEYS_AT_ONCE + 10
    stored_by_version(db_path, 5, [numbered(n) for n in range(count)])
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("PRAGMA busy_timeout = 0")  # it must find the lock free between batches
    batches: list[int] = []

    def between(rewrite: KeyRewrite) -> None:
        batches.append(rewrite.left)
        # As a server of the version before would: store an event, and put its own mark of
        # the rewrite (where its own rewrite had got to) over this one's.
        other.execute("BEGIN IMMEDIATE")
        new = numbered(100_000 + len(batches))
        insert_as_before_packing(other, new, 100_000 + len(batches), new.dedup_key())
        other.execute("UPDATE old_keys SET up_to = ?", (count,))
        other.execute("COMMIT")

    with sqlite3.connect(db_path, isolation_level=None) as connection:
        assert migrate(connection, progress=between) == 5
    other.close()
    assert len(batches) == math.ceil(count / KEYS_AT_ONCE)  # each batch once
    assert batches[-1] == 0
    stored = keys(db_path)
    assert len(stored) == count + len(batches)
    assert {len(key) for key in stored} == {24}
    assert "old_keys" not in tables(db_path)


async def test_an_event_stored_under_both_forms_of_its_key_is_kept_twice(db_path: Path) -> None:
    one = numbered(1)
    with sqlite3.connect(db_path) as old:
        migrate(old, target=KEYS_REWRITTEN - 1)
        insert_as_before_packing(old, one, 1, one.dedup_key()[8:])
        insert_as_before_packing(old, one, 2, one.dedup_key())
        old.execute("UPDATE old_keys SET up_to = 1")
    async with Store(db_path) as store:
        assert await store.add_event(one) == Stored(2, True)
    assert [len(key) for key in keys(db_path)] == [16, 24]


def test_an_upgrade_stopped_in_the_rewrite_goes_on_where_it_was(db_path: Path) -> None:
    count = 2 * KEYS_AT_ONCE + 10
    stored_by_version(db_path, 5, [numbered(n) for n in range(count)])
    seen: list[KeyRewrite] = []

    def stop(rewrite: KeyRewrite) -> None:
        raise KeyboardInterrupt  # after the first batch: a Ctrl-C

    with sqlite3.connect(db_path, isolation_level=None) as connection:
        with pytest.raises(KeyboardInterrupt):
            migrate(connection, progress=stop)
        assert connection.execute("PRAGMA user_version").fetchone()[0] == KEYS_REWRITTEN - 1
        migrate(connection, progress=lambda rewrite: seen.append(dataclasses.replace(rewrite)))
    assert seen[0].total == count - KEYS_AT_ONCE  # from the mark the first batch left
    assert len(seen) == math.ceil(seen[0].total / KEYS_AT_ONCE)
    assert {len(key) for key in keys(db_path)} == {24}
