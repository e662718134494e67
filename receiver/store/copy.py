"""Copying an SQLite database into PostgreSQL, keeping everything: each event with its id, raw
request (as stored, packed or not) and repeat count, the refused deliveries with theirs, and
the PBX's call-history records. The calls are derived: they are built again once the events
are in (rebuild_calls), not copied.

A batch of events a transaction, in id order, under the lock the instances draw their event ids
under (pg_schema.ID_LOCK): a receiver on the PostgreSQL database meanwhile gives its new events
ids above the copied ones. The highest id of the SQLite file (stored or retired) is put in
retired_ids first, so that no instance ever gives one of its ids to another event.

Run again, it adds nothing: a row already in the target under its id (and, for an event, its
de-dup key) is counted as there; one whose repeats grew since is given the higher count. It goes
on where an interrupted run stopped: from the highest id of the file found in the target, after
checking that it is the same event there. A target that holds other events under the file's ids
(a database a receiver took deliveries into before) is refused: the ids would clash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import psycopg

from receiver.event import stored_row, trusted_record
from receiver.store.pg_dialect import without_nul
from receiver.store.pg_schema import ID_LOCK, LOCKS
from receiver.store.schema import (
    BUSY_TIMEOUT,
    EVENT_COLUMNS,
    REJECT_COLUMNS,
    event_from_row,
    reject_from_row,
    reject_row,
    tolerant_text,
)
from receiver.stored import READ_FAILURES, STORED_FIELDS, as_bytes, kinds_fit

EVENTS_AT_ONCE = 2000  # events copied in one transaction
REJECTS_AT_ONCE = 2000
HISTORY_AT_ONCE = 1000

EVENT_COPY_COLUMNS = f"{EVENT_COLUMNS}, dedup_key"
BOOLEAN_EVENT_FIELDS = tuple(STORED_FIELDS.index(name) for name in ("transferred", "bridged"))
BYTES_EVENT_FIELDS = tuple(STORED_FIELDS.index(name) for name in ("raw_query", "raw_body"))


class CopyConflict(RuntimeError):
    """The target holds rows of its own under the ids of the file's."""


@dataclasses.dataclass
class Copied:
    """What a copy did, so far."""

    events_to_read: int = 0  # the file's events from where this run began, as first counted
    events_read: int = 0
    events: int = 0  # copied by this run
    events_there: int = 0  # already in the target (an earlier run)
    repeats_raised: int = 0  # events there whose repeat count grew in the file since
    rejects: int = 0
    rejects_there: int = 0
    history: int = 0
    history_there: int = 0
    resumed_after: int = 0  # the event id this run went on after (0: from the first)
    top_id: int = 0  # the highest event id the file has had; the target's ids continue above


def event_values(row: Sequence[Any]) -> list[Any]:
    """An SQLite events row (EVENT_COPY_COLUMNS) as PostgreSQL's columns take it: a NUL in a
    field kept as U+FFFD, as the PostgreSQL backend stores one (docs/storage.md). A value no
    receiver stores (a file edited by hand or damaged) is copied as the reads show it: replaced,
    and flagged damaged_value:<column> (receiver/stored.py), its raw request unpacked."""
    stored, key = row[:-1], row[-1]
    if not readable(stored):
        stored = stored_row(event_from_row(stored), stored[0])
    values: list[Any] = without_nul([*stored, key])
    for at in BOOLEAN_EVENT_FIELDS:
        if values[at] is not None:
            values[at] = bool(values[at])
    for at in (*BYTES_EVENT_FIELDS, len(values) - 1):  # and the de-dup key, last
        values[at] = as_bytes(values[at])
    return values


def readable(stored: Sequence[Any]) -> bool:
    """Whether a row's values make its record as they are (event_record's first check)."""
    if not kinds_fit(stored):
        return False
    try:
        orjson.dumps(trusted_record(stored))
    except READ_FAILURES:
        return False
    return True


def reject_values(row: Sequence[Any]) -> list[Any]:
    """An SQLite rejects row as PostgreSQL's columns take it, read as the reads show it."""
    return without_nul(list(reject_row(reject_from_row(row))))  # type: ignore[no-any-return]


class Copier:
    """One copy from an open SQLite connection into an open psycopg one (in autocommit mode:
    each batch is a transaction of its own, committed before the next is read)."""

    def __init__(
        self,
        source: sqlite3.Connection,
        target: psycopg.Connection[Any],
        progress: Callable[[Copied], None] | None = None,
        events_at_once: int = EVENTS_AT_ONCE,
    ) -> None:
        self.source = source
        self.target = target
        self.progress = progress or (lambda copied: None)
        self.events_at_once = events_at_once
        self.copied = Copied()

    def run(self) -> Copied:
        self.target.execute(
            "CREATE TEMP TABLE copying_events (LIKE events) ON COMMIT DELETE ROWS;"
            "CREATE TEMP TABLE copying_rejects (LIKE rejects) ON COMMIT DELETE ROWS"
        )
        self.keep_ids_above(self.source_top())
        self.copy_events()
        self.raise_repeats()
        self.copy_rejects()
        self.copy_history()
        self.keep_ids_above(self.source_top())  # the file may have taken more meanwhile
        return self.copied

    def source_top(self) -> int:
        """The highest event id the file has given: stored, or retired by a merge."""
        sql = "SELECT max(coalesce((SELECT max(id) FROM events), 0), (SELECT top FROM retired_ids))"
        (top,) = self.source.execute(sql).fetchone()
        self.copied.top_id = max(self.copied.top_id, int(top))
        return int(top)

    def keep_ids_above(self, top: int) -> None:
        """No instance on the target gives an event an id up to `top`."""
        with self.target.transaction():
            self.target.execute("UPDATE retired_ids SET top = greatest(top, %s)", (top,))

    def resume_point(self) -> int:
        """The id after which this run copies: the highest of the file's ids in the target,
        when the event under it there is the file's (an earlier run copied up to it)."""
        (top,) = self.source.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
        row = self.target.execute(
            "SELECT id, dedup_key FROM events WHERE id <= %s ORDER BY id DESC LIMIT 1", (top,)
        ).fetchone()
        if row is None:
            return 0
        mine = self.source.execute("SELECT dedup_key FROM events WHERE id = ?", (row[0],))
        found = mine.fetchone()
        same = found is not None and as_bytes(found[0]) == bytes(row[1])
        return int(row[0]) if same else 0  # if not, the conflicts are found row by row

    def copy_events(self) -> None:
        copied = self.copied
        last = copied.resumed_after = self.resume_point()
        (copied.events_to_read,) = self.source.execute(
            "SELECT count(*) FROM events WHERE id > ?", (last,)
        ).fetchone()
        self.progress(copied)
        select = f"SELECT {EVENT_COPY_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?"
        while True:
            rows = self.source.execute(select, (last, self.events_at_once)).fetchall()
            if not rows:
                return
            with self.target.transaction():
                self.target.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCKS, ID_LOCK))
                self.stage("copying_events", EVENT_COPY_COLUMNS, map(event_values, rows))
                inserted = [
                    event_id
                    for (event_id,) in self.target.execute(
                        f"INSERT INTO events ({EVENT_COPY_COLUMNS}) "
                        f"SELECT {EVENT_COPY_COLUMNS} FROM copying_events "
                        "ON CONFLICT DO NOTHING RETURNING id"
                    )
                ]
                copied.events += len(inserted)
                if len(inserted) < len(rows):
                    self.events_already_there(inserted)
            last = rows[-1][0]
            copied.events_read += len(rows)
            self.progress(copied)

    def events_already_there(self, inserted: list[int]) -> None:
        """Of the staged events not `inserted`, count those the target has as they are
        (raising their repeats when the file's count is higher); any other is a conflict."""
        there = self.target.execute(
            "SELECT c.id, e.id IS NOT NULL AND e.dedup_key = c.dedup_key "
            "FROM copying_events AS c LEFT JOIN events AS e ON e.id = c.id "
            "WHERE c.id <> ALL(%s::bigint[])",
            (inserted,),
        ).fetchall()
        clashing = [event_id for event_id, same in there if not same]
        if clashing:
            raise CopyConflict(self.clash_message("events", clashing))
        raised = self.target.execute(
            "UPDATE events AS e SET duplicates = c.duplicates FROM copying_events AS c "
            "WHERE e.id = c.id AND e.dedup_key = c.dedup_key AND e.duplicates < c.duplicates"
        ).rowcount
        self.copied.repeats_raised += max(raised, 0)
        self.copied.events_there += len(there)

    def clash_message(self, what: str, ids: list[int]) -> str:
        shown_ids = ", ".join(str(i) for i in sorted(ids)[:5])
        more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
        return (
            f"the PostgreSQL database holds other {what} under ids the SQLite file has "
            f"({shown_ids}{more}): a receiver took deliveries into it before the copy. Copy "
            "into a new, empty database (createdb), then start the receivers on it"
        )

    def raise_repeats(self) -> None:
        """The events copied by an earlier run whose repeats grew in the file since."""
        if not self.copied.resumed_after:
            return
        rows = self.source.execute(
            "SELECT id, duplicates, dedup_key FROM events WHERE id <= ? AND duplicates > 0",
            (self.copied.resumed_after,),
        ).fetchall()
        for at in range(0, len(rows), self.events_at_once):
            batch = rows[at : at + self.events_at_once]
            with self.target.transaction():
                raised = self.target.execute(
                    "UPDATE events AS e SET duplicates = g.duplicates FROM "
                    "unnest(%s::bigint[], %s::bigint[], %s::bytea[]) AS g(id, duplicates, key) "
                    "WHERE e.id = g.id AND e.dedup_key = g.key AND e.duplicates < g.duplicates",
                    (
                        [r[0] for r in batch],
                        [r[1] for r in batch],
                        [as_bytes(r[2]) for r in batch],
                    ),
                ).rowcount
            self.copied.repeats_raised += max(raised, 0)

    def copy_rejects(self) -> None:
        last = 0
        select = f"SELECT {REJECT_COLUMNS} FROM rejects WHERE id > ? ORDER BY id LIMIT ?"
        while True:
            rows = self.source.execute(select, (last, REJECTS_AT_ONCE)).fetchall()
            if not rows:
                break
            with self.target.transaction():
                self.stage("copying_rejects", REJECT_COLUMNS, map(reject_values, rows))
                inserted = self.target.execute(
                    f"INSERT INTO rejects ({REJECT_COLUMNS}) OVERRIDING SYSTEM VALUE "
                    f"SELECT {REJECT_COLUMNS} FROM copying_rejects ON CONFLICT DO NOTHING "
                    "RETURNING id"
                ).fetchall()
                if len(inserted) < len(rows):
                    clashing = [
                        reject_id
                        for (reject_id,) in self.target.execute(
                            "SELECT c.id FROM copying_rejects AS c JOIN rejects AS r "
                            "ON r.id = c.id WHERE (r.received_at_us, r.reason, r.raw_query) "
                            "IS DISTINCT FROM (c.received_at_us, c.reason, c.raw_query)"
                        )
                    ]
                    if clashing:
                        raise CopyConflict(self.clash_message("refused deliveries", clashing))
                self.copied.rejects += len(inserted)
                self.copied.rejects_there += len(rows) - len(inserted)
            last = rows[-1][0]
        with self.target.transaction():  # the target's own rejects get ids after the copied
            self.target.execute(
                "SELECT setval(pg_get_serial_sequence('rejects', 'id'), top) FROM "
                "(SELECT greatest(max(id), coalesce(pg_sequence_last_value("
                "pg_get_serial_sequence('rejects', 'id')::regclass), 0)) AS top FROM rejects) "
                "AS r WHERE top > 0"
            )

    def copy_history(self) -> None:
        last = ""
        select = (
            "SELECT call_id, record, fetched_at_us FROM history_calls WHERE call_id > ? "
            "ORDER BY call_id LIMIT ?"
        )
        while True:
            rows = self.source.execute(select, (last, HISTORY_AT_ONCE)).fetchall()
            if not rows:
                return
            with self.target.transaction():
                inserted = self.target.execute(
                    "INSERT INTO history_calls (call_id, record, fetched_at_us) "
                    "SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[]) "
                    "ON CONFLICT (call_id) DO NOTHING RETURNING call_id",
                    (
                        without_nul([r[0] for r in rows]),
                        without_nul([r[1] for r in rows]),
                        [r[2] for r in rows],
                    ),
                ).fetchall()
            self.copied.history += len(inserted)
            self.copied.history_there += len(rows) - len(inserted)
            last = rows[-1][0]

    def stage(self, table: str, columns: str, rows: Any) -> None:
        """The rows into a temporary table of this transaction, by COPY (one round trip)."""
        with self.target.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


def copy_database(
    source: Path,
    target_url: str,
    progress: Callable[[Copied], None] | None = None,
    *,
    events_at_once: int = EVENTS_AT_ONCE,
) -> Copied:
    """Copy the SQLite database `source` into the PostgreSQL database `target_url`, both
    already at this receiver's schema; `progress(copied)` after each batch of events."""
    with (
        contextlib.closing(sqlite3.connect(source, isolation_level=None)) as sqlite,
        psycopg.connect(target_url, autocommit=True) as postgresql,
    ):
        sqlite.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        sqlite.text_factory = tolerant_text  # text that is not UTF-8 read as bytes, and flagged
        return Copier(sqlite, postgresql, progress, events_at_once).run()


@dataclasses.dataclass
class CopyDone:
    """A whole copy: the rows, and the calls built after."""

    copied: Copied
    calls_built: int  # calls in the target once built
    rebuilt: bool  # every call built again (else only those of the new events)


async def copy_into_postgresql(
    source: Path,
    target_url: str,
    *,
    progress: Callable[[Copied], None] | None = None,
    calls_progress: Callable[[int, int], None] | None = None,
    events_at_once: int = EVENTS_AT_ONCE,
) -> CopyDone:
    """Upgrade `source` (as any command opening it does), make or upgrade the schema of
    `target_url`, copy the rows, then build the calls: all of them again when the copy brought
    call-history records or the target had none built yet (or a rebuild was cut short), else
    those of the events it added."""
    import asyncio

    from receiver.store.backend import open_storage
    from receiver.store.upgrade import upgrade_at_start

    await asyncio.to_thread(upgrade_at_start, source)
    async with open_storage(target_url) as store:
        before = await store.calls_state()
        copied = await asyncio.to_thread(
            copy_database, source, target_url, progress, events_at_once=events_at_once
        )
        rebuild = bool(copied.history) or before.built_to_event == 0 or before.rebuilding
        if rebuild:
            await store.rebuild_calls(calls_progress)
        else:
            await store.refresh_calls()
        return CopyDone(copied, await store.count_calls(), rebuild)
