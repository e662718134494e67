"""SQLite storage: the only module that speaks SQL.

One writer task owns the write connection and commits in groups: every request that arrives
while a commit is running joins the next one, and each waits for the commit that includes it.
So an answered event is always on disk, and a burst costs one fsync per group, not per event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from receiver.event import Event, RawRequest, Reject

log = logging.getLogger("receiver.store")

MIGRATIONS: tuple[str, ...] = (
    # 1: events and rejects.
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        myid TEXT NOT NULL,
        event_type TEXT NOT NULL,
        event_time_us INTEGER,
        order_us INTEGER NOT NULL,
        call_id TEXT,
        sub_call_id TEXT,
        call_api_id TEXT,
        callback_id TEXT,
        caller_id_num TEXT,
        caller_id_name TEXT,
        called_did TEXT,
        called_number TEXT,
        caller_extension TEXT,
        caller_extension_id INTEGER,
        called_extension TEXT,
        called_extension_id INTEGER,
        call_status TEXT,
        call_flow TEXT,
        duration_us INTEGER,
        rec_id TEXT,
        transferred INTEGER NOT NULL,
        bridged INTEGER,
        diversion TEXT,
        remote_number TEXT,
        extra TEXT NOT NULL,
        flags TEXT NOT NULL,
        received_at_us INTEGER NOT NULL,
        source TEXT NOT NULL,
        raw_method TEXT NOT NULL,
        raw_query BLOB NOT NULL,
        raw_body BLOB NOT NULL,
        raw_content_type TEXT,
        dedup_key BLOB NOT NULL UNIQUE,
        duplicates INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX events_myid_order ON events (myid, order_us, id);
    CREATE INDEX events_order ON events (order_us, id);
    CREATE INDEX events_call_id ON events (call_id);
    CREATE INDEX events_sub_call_id ON events (sub_call_id);
    CREATE TABLE rejects (
        id INTEGER PRIMARY KEY,
        received_at_us INTEGER NOT NULL,
        status INTEGER NOT NULL,
        reason TEXT NOT NULL,
        myid TEXT,
        client TEXT,
        raw_method TEXT NOT NULL,
        raw_query BLOB NOT NULL,
        raw_body BLOB NOT NULL,
        raw_content_type TEXT,
        body_size INTEGER NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

EVENT_COLUMNS = (
    "id, myid, event_type, event_time_us, order_us, call_id, sub_call_id, call_api_id, "
    "callback_id, caller_id_num, caller_id_name, called_did, called_number, caller_extension, "
    "caller_extension_id, called_extension, called_extension_id, call_status, call_flow, "
    "duration_us, rec_id, transferred, bridged, diversion, remote_number, extra, flags, "
    "received_at_us, source, raw_method, raw_query, raw_body, raw_content_type, duplicates"
)
INSERT_EVENT = (
    f"INSERT INTO events ({EVENT_COLUMNS}, dedup_key) "
    f"VALUES ({', '.join('?' * (EVENT_COLUMNS.count(',') + 2))})"
)
REJECT_COLUMNS = (
    "id, received_at_us, status, reason, myid, client, raw_method, raw_query, raw_body, "
    "raw_content_type, body_size"
)
MAX_GROUP = 500  # events in one commit; far below SQLite's limit on bound parameters


def connect_pragmas() -> str:
    """Settings for every connection.

    WAL lets readers run beside the writer. synchronous=FULL syncs the WAL at every commit, so
    a committed event survives a killed process and a power loss alike; group commit pays for it.
    """
    return "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;"


def migrate(connection: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring a database to `target` schema version; returns the version it had."""
    found = connection.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise RuntimeError(
            f"the database is at schema version {found}, newer than this receiver knows "
            f"({SCHEMA_VERSION}): upgrade receiver"
        )
    for version in range(found, target):
        connection.executescript(
            f"BEGIN; {MIGRATIONS[version]} PRAGMA user_version = {version + 1}; COMMIT;"
        )
    return found


def event_row(event: Event, event_id: int, key: bytes) -> tuple[Any, ...]:
    """The events-table row of an Event, in EVENT_COLUMNS order then dedup_key."""
    return (
        event_id,
        event.myid,
        event.event_type,
        event.event_time_us,
        event.order_us,
        event.call_id,
        event.sub_call_id,
        event.call_api_id,
        event.callback_id,
        event.caller_id_num,
        event.caller_id_name,
        event.called_did,
        event.called_number,
        event.caller_extension,
        event.caller_extension_id,
        event.called_extension,
        event.called_extension_id,
        event.call_status,
        event.call_flow,
        event.duration_us,
        event.rec_id,
        event.transferred,
        event.bridged,
        event.diversion,
        event.remote_number,
        json.dumps(event.extra, ensure_ascii=False),
        json.dumps(event.flags),
        event.received_at_us,
        event.source,
        event.raw.method,
        event.raw.query,
        event.raw.body,
        event.raw.content_type,
        event.duplicates,
        key,
    )


def event_from_row(row: Sequence[Any]) -> Event:
    """An Event from a row selected as EVENT_COLUMNS."""
    (
        event_id, myid, event_type, event_time_us, _order_us, call_id, sub_call_id, call_api_id,
        callback_id, caller_id_num, caller_id_name, called_did, called_number, caller_extension,
        caller_extension_id, called_extension, called_extension_id, call_status, call_flow,
        duration_us, rec_id, transferred, bridged, diversion, remote_number, extra, flags,
        received_at_us, source, raw_method, raw_query, raw_body, raw_content_type, duplicates,
    ) = row  # fmt: skip
    return Event(
        id=event_id,
        myid=myid,
        event_type=event_type,
        event_time_us=event_time_us,
        received_at_us=received_at_us,
        source=source,
        raw=RawRequest(raw_method, bytes(raw_query), bytes(raw_body), raw_content_type),
        call_id=call_id,
        sub_call_id=sub_call_id,
        call_api_id=call_api_id,
        callback_id=callback_id,
        caller_id_num=caller_id_num,
        caller_id_name=caller_id_name,
        called_did=called_did,
        called_number=called_number,
        caller_extension=caller_extension,
        caller_extension_id=caller_extension_id,
        called_extension=called_extension,
        called_extension_id=called_extension_id,
        call_status=call_status,
        call_flow=call_flow,
        duration_us=duration_us,
        rec_id=rec_id,
        transferred=bool(transferred),
        bridged=None if bridged is None else bool(bridged),
        diversion=diversion,
        remote_number=remote_number,
        extra=json.loads(extra),
        flags=tuple(json.loads(flags)),
        duplicates=duplicates,
    )


def reject_row(reject: Reject) -> tuple[Any, ...]:
    """The rejects-table row of a Reject, in REJECT_COLUMNS order."""
    raw = reject.raw
    return (
        reject.id,
        reject.received_at_us,
        reject.status,
        reject.reason,
        reject.myid,
        reject.client,
        raw.method,
        raw.query,
        raw.body,
        raw.content_type,
        reject.body_size,
    )


def reject_from_row(row: Sequence[Any]) -> Reject:
    """A Reject from a row selected as REJECT_COLUMNS."""
    (rid, received, status, reason, myid, client, method, query, body, ctype, size) = row
    raw = RawRequest(method, bytes(query), bytes(body), ctype)
    return Reject(received, status, reason, raw, myid, client, size, rid)


@dataclass(frozen=True, slots=True)
class Stored:
    """What storing an event did: its id, and whether it was a repeat of a stored one."""

    id: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a keyset-paginated listing; `next` is the cursor of the following page."""

    items: list[Any]
    next: str | None


class StoreClosed(RuntimeError):
    """The store is shutting down and takes no more writes."""


class Store:
    """The database of one receiver: a group-committing writer and a reader connection.

    The writer is one thread of its own with a plain sqlite3 connection, and a whole group
    (check for repeats, insert, commit) is one call on it. aiosqlite would hop between threads
    for every statement, and each hop can wait for the GIL while the event loop parses requests;
    under load those waits, not the disk, set the latency. Reads go through aiosqlite.
    """

    def __init__(self, path: Path, rejects_max: int = 10_000) -> None:
        self.path = path
        self.rejects_max = rejects_max
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="receiver-writer")
        self._writer: sqlite3.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[tuple[Event | Reject, asyncio.Future[Any]] | None] = (
            asyncio.Queue()
        )
        self._task: asyncio.Task[None] | None = None
        self._next_id = 1
        self._closing = False
        self.commits = 0  # how many group commits succeeded

    async def open(self) -> Store:
        """Create or migrate the database, then start the writer."""
        await self._run(self._open_writer)
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        await self._reader.executescript(connect_pragmas())
        self._task = asyncio.create_task(self._write_loop(), name="receiver-writer")
        return self

    async def close(self) -> None:
        """Commit everything queued, then close the connections."""
        self._closing = True
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
            self._task = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        if self._writer is not None:
            await self._run(self._writer.close)
            self._writer = None
        self._thread.shutdown()

    async def __aenter__(self) -> Store:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # Writing.

    async def add_event(self, event: Event) -> Stored:
        """Store one event; returns once the commit that holds it is on disk."""
        result: Stored = await self._submit(event)
        return result

    async def add_reject(self, reject: Reject) -> None:
        """Keep one refused delivery (the oldest go once there are more than rejects_max)."""
        await self._submit(reject)

    def submit_events(self, events: list[Event]) -> list[asyncio.Future[Stored]]:
        """Queue many events for storing now; each future ends with its commit (or failure)."""
        return [self._enqueue(event) for event in events]

    async def _submit(self, item: Event | Reject) -> Any:
        return await self._enqueue(item)

    def _enqueue(self, item: Event | Reject) -> asyncio.Future[Any]:
        if self._closing or self._task is None:
            raise StoreClosed("the store is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return future

    async def _run(self, function: Any, *args: Any) -> Any:
        """Run `function` on the writer thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    async def _write_loop(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            group = [first]
            while len(group) < MAX_GROUP and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    await self._commit(group)
                    return
                group.append(item)
            await self._commit(group)

    async def _commit(self, group: list[tuple[Event | Reject, asyncio.Future[Any]]]) -> None:
        try:
            results = await self._run(self._write_group, [item for item, _ in group])
        except Exception as error:
            if len(group) > 1:  # one by one, so only the deliveries that cannot be stored fail
                for item in group:
                    await self._commit([item])
                return
            log.error("could not store a delivery: %s", error)
            _, future = group[0]
            if not future.done():
                future.set_exception(error)
            return
        self.commits += 1
        for (_, future), result in zip(group, results, strict=True):
            if not future.done():  # the client may have gone; the event is stored anyway
                future.set_result(result)

    # On the writer thread.

    def _open_writer(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._writer.executescript(connect_pragmas())
        migrate(self._writer)
        self._next_id = self._writer.execute(
            "SELECT coalesce(max(id), 0) + 1 FROM events"
        ).fetchone()[0]

    def _write_group(self, items: list[Event | Reject]) -> list[Stored | None]:
        """Store a group in one transaction; all of it or, raising, none of it."""
        db = self._writer
        assert db is not None
        next_id = self._next_id
        try:
            db.execute("BEGIN IMMEDIATE")
            results = self._insert_group(db, items)
            db.execute("COMMIT")
        except Exception:
            self._next_id = next_id
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return results

    def _insert_group(
        self, db: sqlite3.Connection, items: list[Event | Reject]
    ) -> list[Stored | None]:
        keys = [item.dedup_key() if isinstance(item, Event) else b"" for item in items]
        known: dict[bytes, int] = {}
        if keys:
            marks = ", ".join("?" * len(keys))
            sql = f"SELECT dedup_key, id FROM events WHERE dedup_key IN ({marks})"
            known = {bytes(key): event_id for key, event_id in db.execute(sql, keys)}
        rows, repeats = [], []
        results: list[Stored | None] = []
        for item, key in zip(items, keys, strict=True):
            if not isinstance(item, Event):
                results.append(None)
                continue
            if key in known:
                results.append(Stored(known[key], True))
                repeats.append((known[key],))
                continue
            event_id = known[key] = self._next_id
            self._next_id += 1
            rows.append(event_row(item, event_id, key))
            results.append(Stored(event_id, False))
        db.executemany(INSERT_EVENT, rows)
        db.executemany("UPDATE events SET duplicates = duplicates + 1 WHERE id = ?", repeats)
        rejects = [reject_row(item) for item in items if isinstance(item, Reject)]
        if rejects:
            marks = ", ".join("?" * (REJECT_COLUMNS.count(",") + 1))
            db.executemany(f"INSERT INTO rejects ({REJECT_COLUMNS}) VALUES ({marks})", rejects)
            db.execute(
                "DELETE FROM rejects WHERE id <= (SELECT max(id) FROM rejects) - ?",
                (self.rejects_max,),
            )
        return results

    # Reading.

    async def check(self) -> int:
        """Raise if the database does not answer; returns its schema version."""
        assert self._reader is not None
        async with self._reader.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    async def get_event(self, event_id: int) -> Event | None:
        """One event by id, or None."""
        assert self._reader is not None
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ?"
        async with self._reader.execute(sql, (event_id,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else event_from_row(row)

    async def list_events(
        self, *, myid: str | None = None, limit: int = 100, after: str | None = None
    ) -> Page:
        """Events in time order (EventTime, or receipt when it is missing), a page at a time."""
        assert self._reader is not None
        where, params = [], []
        if myid is not None:
            where.append("myid = ?")
            params.append(myid)
        if after is not None:
            order_us, event_id = parse_cursor(after)
            where.append("(order_us, id) > (?, ?)")
            params += [order_us, event_id]
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {EVENT_COLUMNS} FROM events {clause} ORDER BY order_us, id LIMIT ?"
        async with self._reader.execute(sql, [*params, limit + 1]) as cursor:
            rows = await cursor.fetchall()
        events = [event_from_row(row) for row in rows[:limit]]
        more = len(rows) > limit
        return Page(events, f"{events[-1].order_us}:{events[-1].id}" if more else None)

    async def list_rejects(self, *, limit: int = 100, before: int | None = None) -> Page:
        """Rejects, newest first; `next` is the id to pass as `before` for older ones."""
        assert self._reader is not None
        clause = "WHERE id < ?" if before is not None else ""
        params = [before] if before is not None else []
        sql = f"SELECT {REJECT_COLUMNS} FROM rejects {clause} ORDER BY id DESC LIMIT ?"
        async with self._reader.execute(sql, [*params, limit + 1]) as cursor:
            rows = await cursor.fetchall()
        rejects = [reject_from_row(row) for row in rows[:limit]]
        more = len(rows) > limit
        return Page(rejects, str(rejects[-1].id) if more else None)


def parse_cursor(cursor: str) -> tuple[int, int]:
    """`<order_us>:<id>` -> its two integers. Raises ValueError when it is not one of ours."""
    order_us, _, event_id = cursor.partition(":")
    return int(order_us), int(event_id)
