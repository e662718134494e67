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
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from receiver.calls import DEFAULT_UNKNOWN_AFTER_US, Call, build_call, call_json, digits
from receiver.event import Event, RawRequest, Reject, iso_time, seconds

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
    # 2: calls rebuilt from their events, kept up to date from a list of changed calls.
    """
    CREATE TABLE calls_dirty (call_id TEXT PRIMARY KEY) WITHOUT ROWID;
    INSERT INTO calls_dirty SELECT DISTINCT call_id FROM events WHERE call_id IS NOT NULL;
    CREATE TABLE calls (
        call_id TEXT PRIMARY KEY,
        myid TEXT NOT NULL,
        direction TEXT NOT NULL,
        status TEXT NOT NULL,
        started_us INTEGER NOT NULL,
        answered_us INTEGER,
        ended_us INTEGER,
        last_event_us INTEGER NOT NULL,
        ring_us INTEGER,
        talk_us INTEGER,
        external_number TEXT,
        external_digits TEXT,
        did TEXT,
        answered_by TEXT,
        extensions TEXT NOT NULL,
        transferred INTEGER NOT NULL,
        callback_id TEXT,
        body TEXT NOT NULL
    );
    CREATE INDEX calls_started ON calls (started_us, call_id);
    CREATE INDEX calls_external ON calls (external_digits, started_us);
    CREATE TABLE legs (
        call_id TEXT NOT NULL,
        sub_call_id TEXT NOT NULL,
        extension TEXT,
        direction TEXT,
        started_us INTEGER,
        answered_us INTEGER,
        ended_us INTEGER,
        ring_us INTEGER,
        talk_us INTEGER,
        status TEXT,
        answered INTEGER NOT NULL,
        routing INTEGER NOT NULL
    );
    CREATE INDEX legs_call ON legs (call_id);
    CREATE INDEX legs_extension ON legs (extension, started_us);
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
CALL_ID_COLUMN = 5  # positions in an event row
EVENT_TYPE_COLUMN = 2
# Only these make calls (EVENT_SPEC §2); messages and voicemail stay events.
CALL_EVENT_TYPES = ("dial-in", "dial-out", "answer", "hangup")
CALL_EVENTS_SQL = "event_type IN ('dial-in', 'dial-out', 'answer', 'hangup')"
MAX_GROUP = 500  # events in one commit; far below SQLite's limit on bound parameters


def connect_pragmas() -> str:
    """Settings for every connection.

    WAL lets readers run beside the writer. synchronous=FULL syncs the WAL at every commit, so
    a committed event survives a killed process and a power loss alike; group commit pays for it.
    """
    return (
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000; "
        "PRAGMA cache_size=-32768;"
    )


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


CALL_COLUMNS = (
    "call_id, myid, direction, status, started_us, answered_us, ended_us, last_event_us, "
    "ring_us, talk_us, external_number, external_digits, did, answered_by, extensions, "
    "transferred, callback_id, body"
)
INSERT_CALL = f"INSERT OR REPLACE INTO calls ({CALL_COLUMNS}) VALUES ({', '.join('?' * 18)})"
LEG_COLUMNS = (
    "call_id, sub_call_id, extension, direction, started_us, answered_us, ended_us, ring_us, "
    "talk_us, status, answered, routing"
)
INSERT_LEG = f"INSERT INTO legs ({LEG_COLUMNS}) VALUES ({', '.join('?' * 12)})"
CALLS_AT_ONCE = 200  # calls rebuilt per writer turn (~20 ms), so live events wait little
IDLE_AFTER = 0.5  # seconds without commits before the background rebuilds calls


def call_row(call: Call) -> tuple[Any, ...]:
    """The calls-table row of a Call; `body` is its JSON without legs and events."""
    return (
        call.call_id,
        call.myid,
        call.direction.value,
        call.status.value,
        call.started_us,
        call.answered_us,
        call.ended_us,
        call.last_event_us,
        call.ring_us,
        call.talk_us,
        call.external_number,
        digits(call.external_number),
        call.did,
        call.answered_by,
        " " + " ".join(call.extensions) + " ",  # spaces around each, for LIKE '% ext %'
        call.transferred,
        call.callback_id,
        json.dumps(call_json(call, with_details=False), ensure_ascii=False),
    )


def leg_rows(call: Call) -> list[tuple[Any, ...]]:
    return [
        (
            call.call_id,
            leg.sub_call_id,
            leg.extension,
            leg.direction,
            leg.started_us,
            leg.answered_us,
            leg.ended_us,
            leg.ring_us,
            leg.talk_us,
            leg.status,
            leg.answered,
            leg.routing,
        )
        for leg in call.legs
    ]


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


EXPORT_PAGE = 1000


@dataclass(frozen=True)
class EventQuery:
    """Which events to list; every field narrows the result."""

    myids: tuple[str, ...] = ()
    event_type: str | None = None
    call_id: str | None = None
    sub_call_id: str | None = None
    number: str | None = None  # any of the event's numbers, compared as digits
    extension: str | None = None  # prefix*ext, calling or called
    call_status: str | None = None
    call_flow: str | None = None
    source: str | None = None
    since_us: int | None = None
    until_us: int | None = None
    descending: bool = False

    def where(self) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if self.myids:
            where.append(f"myid IN ({', '.join('?' * len(self.myids))})")
            params += self.myids
        for column in (
            "event_type",
            "call_id",
            "sub_call_id",
            "call_status",
            "call_flow",
            "source",
        ):
            value = getattr(self, column)
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if self.number is not None:
            where.append(
                "? IN (digits(caller_id_num), digits(called_number), digits(remote_number), "
                "digits(called_did))"
            )
            params.append(digits(self.number))
        if self.extension is not None:
            where.append(
                "(caller_id_num = ? OR called_number = ? "
                "OR caller_extension LIKE ? OR called_extension LIKE ?)"
            )
            params += [self.extension, self.extension, f"{self.extension}@%", f"{self.extension}@%"]
        if self.since_us is not None:
            where.append("order_us >= ?")
            params.append(self.since_us)
        if self.until_us is not None:
            where.append("order_us < ?")
            params.append(self.until_us)
        return where, params


@dataclass(frozen=True)
class CallQuery:
    """Which calls to list or report on."""

    myids: tuple[str, ...] = ()
    since_us: int | None = None
    until_us: int | None = None
    direction: str | None = None
    status: str | None = None
    number: str | None = None  # the external number, compared as digits
    extension: str | None = None  # any extension the call rang or came from
    descending: bool = False
    now_us: int = 0  # for telling in_progress from unknown_end
    unknown_after_us: int = DEFAULT_UNKNOWN_AFTER_US

    def unknown_before_us(self) -> int:
        return self.now_us - self.unknown_after_us

    def status_sql(self, table: str = "calls") -> str:
        """The status now: an open call whose last event is old enough is unknown_end.

        Its ? is bound to unknown_before_us(), first of all parameters.
        """
        return (
            f"CASE WHEN {table}.status = 'in_progress' AND {table}.last_event_us < ? "
            f"THEN 'unknown_end' ELSE {table}.status END"
        )

    def where(self, table: str = "calls") -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if self.myids:
            # A call belongs to every myid that has one of its events (an IVR and the phone it
            # routes to may be different subscribers).
            marks = ", ".join("?" * len(self.myids))
            window = " AND order_us >= ?" if self.since_us is not None else ""
            where.append(
                f"{table}.call_id IN (SELECT call_id FROM events WHERE myid IN ({marks}){window})"
            )
            params += [*self.myids, *([self.since_us] if window else [])]
        if self.since_us is not None:
            where.append(f"{table}.started_us >= ?")
            params.append(self.since_us)
        if self.until_us is not None:
            where.append(f"{table}.started_us < ?")
            params.append(self.until_us)
        if self.direction is not None:
            where.append(f"{table}.direction = ?")
            params.append(self.direction)
        if self.status is not None:
            if self.status in ("in_progress", "unknown_end"):
                where.append(f"{self.status_sql(table)} = ?")
                params.append(self.unknown_before_us())
            else:
                where.append(f"{table}.status = ?")
            params.append(self.status)
        if self.number is not None:
            where.append(f"{table}.external_digits = ?")
            params.append(digits(self.number))
        if self.extension is not None:
            where.append(f"{table}.extensions LIKE ?")
            params.append(f"% {self.extension} %")
        return where, params


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
        self._last_commit = 0.0

    async def open(self) -> Store:
        """Create or migrate the database, then start the writer."""
        await self._run(self._open_writer)
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        await self._reader.executescript(connect_pragmas())
        await self._reader.create_function("digits", 1, digits, deterministic=True)
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
        self._last_commit = time.monotonic()
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
        changed = {
            (row[CALL_ID_COLUMN],)
            for row in rows
            if row[CALL_ID_COLUMN] is not None and row[EVENT_TYPE_COLUMN] in CALL_EVENT_TYPES
        }
        db.executemany("INSERT OR IGNORE INTO calls_dirty (call_id) VALUES (?)", changed)
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

    async def refresh_calls(self, *, only_when_idle: bool = False) -> int:
        """Rebuild the calls whose events changed; returns how many. Live writes go between.

        only_when_idle: stop as soon as events are arriving (the background refresher uses it,
        so that rebuilding calls never slows ingest down; queries refresh fully first).
        """
        total = 0
        while not (only_when_idle and self.busy()):
            count = await self._run(self._refresh_some_calls, CALLS_AT_ONCE)
            if not count:
                break
            total += count
        return total

    def busy(self) -> bool:
        """Whether events are waiting, or were committed in the last IDLE_AFTER seconds."""
        return not self._queue.empty() or time.monotonic() - self._last_commit < IDLE_AFTER

    def _refresh_some_calls(self, limit: int) -> int:
        db = self._writer
        assert db is not None
        ids = [row[0] for row in db.execute("SELECT call_id FROM calls_dirty LIMIT ?", (limit,))]
        if not ids:
            return 0
        marks = ", ".join("?" * len(ids))
        by_call: dict[str, list[Event]] = {}
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE call_id IN ({marks}) AND {CALL_EVENTS_SQL}"
        for row in db.execute(sql, ids):
            event = event_from_row(row)
            by_call.setdefault(event.call_id or "", []).append(event)
        calls = [build_call(events, now_us=0, unknown_after_us=None) for events in by_call.values()]
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(f"DELETE FROM legs WHERE call_id IN ({marks})", ids)
            db.executemany(INSERT_CALL, [call_row(call) for call in calls])
            db.executemany(INSERT_LEG, [leg for call in calls for leg in leg_rows(call)])
            db.execute(f"DELETE FROM calls_dirty WHERE call_id IN ({marks})", ids)
            db.execute("COMMIT")
        except Exception:
            db.execute("ROLLBACK")
            raise
        return len(ids)

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

    async def _rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        assert self._reader is not None
        async with self._reader.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def list_events(
        self, query: EventQuery | None = None, *, limit: int = 100, after: str | None = None
    ) -> Page:
        """Events in time order (EventTime, or receipt when it is missing), a page at a time."""
        query = query or EventQuery()
        where, params = query.where()
        if after is not None:
            order_us, event_id = parse_cursor(after)
            where.append(f"(order_us, id) {'<' if query.descending else '>'} (?, ?)")
            params += [order_us, event_id]
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        way = "DESC" if query.descending else "ASC"
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM events {clause} ORDER BY order_us {way}, id {way} LIMIT ?"
        )
        rows = await self._rows(sql, [*params, limit + 1])
        events = [event_from_row(row) for row in rows[:limit]]
        more = len(rows) > limit
        return Page(events, f"{events[-1].order_us}:{events[-1].id}" if more else None)

    async def iter_events(
        self, query: EventQuery, *, after: str | None = None
    ) -> AsyncIterator[Event]:
        """Every matching event, read a page at a time (flat memory for exports)."""
        while True:
            page = await self.list_events(query, limit=EXPORT_PAGE, after=after)
            for event in page.items:
                yield event
            if page.next is None:
                return
            after = page.next

    async def get_call(
        self, call_id: str, *, now_us: int, unknown_after_us: int = DEFAULT_UNKNOWN_AFTER_US
    ) -> Call | None:
        """One call, rebuilt now from all its events (so always current)."""
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE call_id = ? AND {CALL_EVENTS_SQL}"
        rows = await self._rows(sql, [call_id])
        if not rows:
            return None
        events = [event_from_row(row) for row in rows]
        return build_call(events, now_us=now_us, unknown_after_us=unknown_after_us)

    async def list_calls(
        self, query: CallQuery, *, limit: int = 100, after: str | None = None
    ) -> Page:
        """Calls by start time, a page at a time; items are JSON objects (no legs, no events)."""
        await self.refresh_calls()
        where, params = query.where()
        if after is not None:
            started_us, call_id = after.split(":", 1)
            where.append(f"(started_us, call_id) {'<' if query.descending else '>'} (?, ?)")
            params += [int(started_us), call_id]
        way = "DESC" if query.descending else "ASC"
        sql = (
            f"SELECT body, started_us, call_id, {query.status_sql()} FROM calls "
            f"WHERE {' AND '.join(where) or '1'} "
            f"ORDER BY started_us {way}, call_id {way} LIMIT ?"
        )
        rows = await self._rows(sql, [query.unknown_before_us(), *params, limit + 1])
        calls = []
        for body, _, _, status in rows[:limit]:
            call = json.loads(body)
            call["status"] = status
            calls.append(call)
        more = len(rows) > limit
        last = rows[limit - 1] if more else None
        return Page(calls, f"{last[1]}:{last[2]}" if last else None)

    async def iter_calls(
        self, query: CallQuery, *, after: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every matching call, a page at a time."""
        while True:
            page = await self.list_calls(query, limit=EXPORT_PAGE, after=after)
            for call in page.items:
                yield call
            if page.next is None:
                return
            after = page.next

    async def missed_report(self, query: CallQuery) -> list[dict[str, Any]]:
        """Inbound calls nobody answered, per external number, and whether they were handled.

        Handled: a later answered call with the same number, ours (a call back) or theirs.
        """
        await self.refresh_calls()
        where, params = query.where()
        handled = (
            "SELECT {} FROM calls AS later WHERE later.external_digits = missed.number "
            "AND later.started_us > missed.last_us AND later.status = 'answered' "
            "ORDER BY later.started_us LIMIT 1"
        )
        sql = f"""
            WITH missed AS (
                SELECT external_digits AS number, max(external_number) AS shown,
                       count(*) AS missed, min(started_us) AS first_us, max(started_us) AS last_us,
                       group_concat(DISTINCT did) AS dids
                FROM calls
                WHERE {" AND ".join([*where, "direction = 'in'", "status = 'missed'"])}
                  AND external_digits IS NOT NULL
                GROUP BY external_digits
            )
            SELECT number, shown, missed, first_us, last_us, dids,
                   ({handled.format("started_us")}) AS handled_us,
                   ({handled.format("direction")}) AS handled_direction,
                   ({handled.format("answered_by")}) AS handled_by
            FROM missed
            ORDER BY handled_us IS NOT NULL, last_us DESC
        """
        rows = await self._rows(sql, params)
        report = []
        for number, shown, missed, first_us, last_us, dids, handled_us, way, by in rows:
            report.append(
                {
                    "number": shown,
                    "digits": number,
                    "missed": missed,
                    "first_missed_at": iso_time(first_us),
                    "last_missed_at": iso_time(last_us),
                    "dids": dids.split(",") if dids else [],
                    "handled": handled_us is not None,
                    "handled_by": None
                    if way is None
                    else ("call_back" if way == "out" else "called_again"),
                    "handled_at": iso_time(handled_us),
                    "handled_extension": by,
                    "recall_seconds": seconds(handled_us - last_us) if handled_us else None,
                }
            )
        return report

    async def extensions_report(
        self, query: CallQuery, *, by: str | None = None
    ) -> list[dict[str, Any]]:
        """Per extension (and per day or hour): calls, answered, missed, ring and talk times."""
        await self.refresh_calls()
        where, params = query.where(table="c")
        bucket_us = {"day": 86_400_000_000, "hour": 3_600_000_000}.get(by or "")
        bucket = f"(c.started_us / {bucket_us}) * {bucket_us}" if bucket_us else "NULL"
        sql = f"""
            SELECT l.extension, {bucket} AS bucket,
                   count(DISTINCT l.call_id),
                   count(DISTINCT CASE WHEN l.answered THEN l.call_id END),
                   count(DISTINCT CASE WHEN c.status = 'missed' THEN l.call_id END),
                   avg(CASE WHEN l.answered THEN l.ring_us END),
                   sum(CASE WHEN l.answered THEN l.talk_us END),
                   avg(CASE WHEN l.answered THEN l.talk_us END)
            FROM legs AS l JOIN calls AS c ON c.call_id = l.call_id
            WHERE {" AND ".join([*where, "l.routing = 0", "l.extension IS NOT NULL"])}
            GROUP BY l.extension, bucket
            ORDER BY l.extension, bucket
        """
        rows = await self._rows(sql, params)
        return [
            {
                "extension": extension,
                **({"period": iso_time(bucket_start)} if bucket_us else {}),
                "calls": calls,
                "answered": answered,
                "missed": missed,
                "avg_ring_seconds": round(ring / 1e6, 3) if ring is not None else None,
                "total_talk_seconds": seconds(talk) if talk is not None else 0,
                "avg_talk_seconds": round(avg_talk / 1e6, 3) if avg_talk is not None else None,
            }
            for extension, bucket_start, calls, answered, missed, ring, talk, avg_talk in rows
        ]

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
