"""The PostgreSQL backend: one database shared by several receivers behind a balancer.

`PostgresStore` gives every operation of `Storage` (backend.py) with the same results as the
SQLite Store, record for record. Each instance commits its deliveries in groups as SQLite's
does (database.py): the requests that arrive while a group is being stored make the next one,
each waits for the commit that holds it, and a group is one statement, one round trip
(pg_schema.receiver_store_events, under the ids lock). The calls are built by whichever
instance takes the calls lock (the others skip their turn), from the events after
calls_built.events_to, which the ids rising in commit order make a safe cursor.

Connections come from a psycopg pool. A database that goes away makes the writes and reads
fail (the deliveries get 503s); the pool connects again once it is back, with no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from receiver.calls import CALLS_VERSION, DEFAULT_UNKNOWN_AFTER_US, Call, build_call, call_json
from receiver.event import (
    Event,
    Reject,
    event_lines,
    event_record,
    iso_time,
    now_us,
    seconds,
)
from receiver.forward.messages import CallBefore, Message, call_messages, event_messages
from receiver.forward.rules import Route
from receiver.history import call_from_history
from receiver.store import outbox
from receiver.store.backend import StorageUnavailable
from receiver.store.backup import DEFAULT_RATE, BackedUp
from receiver.store.database import (
    REPLAY_AT_ONCE,
    TRIM_AT_ONCE,
    StoreClosed,
    calls_page,
    gc_paused,
    read_ahead,
)
from receiver.store.outbox import (
    DEFAULT_SETTLE_US,
    DELIVERY_COLUMNS,
    OUTBOX_COUNTS,
    Delivery,
    DeliveryQuery,
    Forwarding,
    Outcome,
    Trimmed,
    delivery_record,
)
from receiver.store.pg_dialect import SqliteLike, statement, translated, without_nul
from receiver.store.pg_schema import (
    CALLS_LOCK,
    ID_LOCK,
    LOCKS,
    ROUTES_LOCK,
    STORE_EVENTS,
    STORED_AT,
    STORED_COLUMNS,
    check_known,
    migrate,
    schema_version,
)
from receiver.store.queries import (
    EXPORT_PAGE,
    CallQuery,
    CallsState,
    EventQuery,
    Page,
    Reparsed,
    Stored,
    call_cursor_where,
    event_cursor,
    event_page_sql,
    local_time_sql,
)
from receiver.store.reparse import EVENTS_AT_ONCE as REPARSE_AT_ONCE
from receiver.store.reparse import Reparse
from receiver.store.schema import (
    CALL_COLUMNS,
    CALL_EVENTS_SQL,
    CALLS_AT_ONCE,
    CALLS_AT_ONCE_COMMAND,
    CALLS_WHILE_BUSY,
    EVENT_COLUMNS,
    EVENTS_OF_CALL,
    GROUPS_IN_FLIGHT,
    IDLE_AFTER,
    LEG_COLUMNS,
    LEG_FIELD_COLUMNS,
    MAX_GROUP,
    MAX_GROUP_COMMAND,
    REJECT_COLUMNS,
    call_again,
    call_fields_sql,
    call_from_row,
    call_row,
    event_from_row,
    event_row,
    leg_rows,
    readable_call,
    reject_from_row,
    reject_row,
)
from receiver.store.upkeep import (
    MYIDS_SHOWN,
    PRUNE_AT_ONCE,
    Pruned,
    PruneStep,
    Sizes,
    WriterState,
    calls_ended_before,
    prune_step,
)
from receiver.store.writer import with_bodies
from receiver.zones import DAY_US, HOUR_US, local_start, offsets

log = logging.getLogger("receiver.store")
# The pool's own warnings repeat each reconnection attempt over several lines; the receiver
# says once per failed request (and at most every 10 s in the background) what failed.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

CONNECT_TIMEOUT = 10  # seconds to reach the server, at start and after it went away
# Seconds a request waits for a pooled connection: with the server gone, its 503 (trying
# again at once would only wait as long again).
POOL_WAIT = 5
POOL_SIZE = 8  # connections an instance keeps at most: a group commit or two, reads, upkeep
OUTBOX_POOL_SIZE = 4  # the delivery worker's connections (one a destination's step at a time)
# Call building never reads the raw request: empty, neither sent nor unpacked.
EVENT_COLUMNS_BUT_RAW = ", ".join(
    f"''::bytea AS {name}" if name in ("raw_query", "raw_body") else name
    for name in EVENT_COLUMNS.split(", ")
)
CALL_MARKS = ", ".join(["%s"] * len(CALL_COLUMNS.split(", ")))
UPSERT_CALL = (
    f"INSERT INTO calls ({CALL_COLUMNS}) VALUES ({CALL_MARKS}) "
    "ON CONFLICT (call_id) DO UPDATE SET "
    + ", ".join(f"{name} = EXCLUDED.{name}" for name in CALL_COLUMNS.split(", ")[1:])
)
INSERT_LEG = (
    f"INSERT INTO legs ({LEG_COLUMNS}) VALUES ({', '.join(['%s'] * len(LEG_COLUMNS.split(', ')))})"
)
HAS_EVENTS = f"SELECT 1 FROM events WHERE call_id IN (%s, upper(%s)) AND {CALL_EVENTS_SQL} LIMIT 1"
HAS_EVENTS_OF_H = (
    f"SELECT 1 FROM events WHERE call_id IN (h.call_id, upper(h.call_id)) AND {CALL_EVENTS_SQL}"
)
TRIM_REJECTS_BY_BYTES = (
    "DELETE FROM rejects WHERE id <= (SELECT id FROM (SELECT id, sum(length(raw_query) + "
    "length(raw_body)) OVER (ORDER BY id DESC) AS newer FROM rejects) AS r WHERE newer > %s "
    "ORDER BY id DESC LIMIT 1)"
)
NEWEST_BY_MYID = f"""
    WITH RECURSIVE myids(myid) AS (
        SELECT min(myid) FROM events
        UNION ALL
        SELECT (SELECT min(myid) FROM events WHERE myid > myids.myid) FROM myids
        WHERE myids.myid IS NOT NULL
    )
    SELECT myid, (SELECT order_us FROM events WHERE events.myid = m.myid
                  ORDER BY order_us DESC LIMIT 1)
    FROM (SELECT myid FROM myids LIMIT {MYIDS_SHOWN + 1}) AS m WHERE myid IS NOT NULL
"""


class DatabaseUnavailable(StorageUnavailable):
    """The PostgreSQL server cannot be reached or used: the message says what to check."""


class NoConnection(DatabaseUnavailable):
    """No pooled connection came within POOL_WAIT: the server is gone, or every connection
    busy."""


def shown_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the --db URL"
    host = info.get("host", "localhost")
    port = info.get("port", "5432")
    user = f"{info['user']}@" if "user" in info else ""
    return f"postgresql://{user}{host}:{port}/{info.get('dbname', '')}"


def unavailable(url: str, error: Exception) -> DatabaseUnavailable:
    """One line saying what failed reaching the database and what to check."""
    text = " ".join(str(error).split()) or type(error).__name__
    return DatabaseUnavailable(
        f"cannot use the PostgreSQL database {shown_url(url)}: {text} "
        "(check that the server runs and takes connections there, and the user, password and "
        "database name in --db / RECEIVER_DB)"
    )


def check_reachable(url: str) -> None:
    """Raise DatabaseUnavailable (one line) unless the database at `url` answers, and its
    schema is not newer than this receiver's."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as connection:
            version = 0
            if connection.execute("SELECT to_regclass('receiver_schema')").fetchone() != (None,):
                row = connection.execute("SELECT max(version) FROM receiver_schema").fetchone()
                version = int(row[0] or 0) if row else 0
    except (psycopg.Error, OSError) as error:
        raise unavailable(url, error) from None
    try:
        check_known(version)
    except RuntimeError as error:
        raise DatabaseUnavailable(str(error)) from None


class PostgresStore:
    """The database of receivers sharing one PostgreSQL database."""

    def __init__(
        self,
        url: str,
        rejects_max: int = 10_000,
        *,
        rejects_max_bytes: int = 64 << 20,
        bulk: bool = False,
        on_commit: Callable[[int], None] | None = None,
        pool_size: int = POOL_SIZE,
        forwarding: Forwarding | None = None,
    ) -> None:
        self.url = url
        # A command storing many (replay): bigger commits.
        self.max_group = MAX_GROUP_COMMAND if bulk else MAX_GROUP  # events in one commit
        self.forwarding = forwarding  # a server's routes (outbox.py); None: the database's
        self.settle_us = DEFAULT_SETTLE_US if forwarding is None else forwarding.settle_us
        self.routes: list[Route] = []  # those messages are written for (enabled_routes)
        self.call_routes: list[Route] = []
        self._outbox_pool: ConnectionPool | None = None
        self.on_commit = on_commit
        self.rejects_max = rejects_max
        self.rejects_max_bytes = rejects_max_bytes
        self.pool_size = pool_size
        self._pool: AsyncConnectionPool | None = None
        self._queue: asyncio.Queue[tuple[Event | Reject, asyncio.Future[Any]] | None] = (
            asyncio.Queue()
        )
        self._task: asyncio.Task[None] | None = None
        self._groups_storing = 0
        self._closing = False
        self.commits = 0
        self._last_commit = 0.0

    async def open(self) -> PostgresStore:
        """Reach the database, bring its schema up to date (under the migrations lock), then
        start the pool and the group-commit loop."""
        try:
            connection = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT
            )
        except (psycopg.Error, OSError) as error:
            raise unavailable(self.url, error) from None
        try:
            await migrate(connection)
        except psycopg.Error as error:
            raise unavailable(self.url, error) from None
        finally:
            await connection.close()
        self._pool = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
            timeout=POOL_WAIT,
            reconnect_timeout=0,  # never give up: the server may come back after hours
            open=False,
            name="receiver",
        )
        await self._pool.open()
        self._outbox_pool = ConnectionPool(
            self.url,
            min_size=0,
            max_size=OUTBOX_POOL_SIZE,
            kwargs={"connect_timeout": CONNECT_TIMEOUT},
            timeout=POOL_WAIT,
            open=False,
            name="receiver-outbox",
        )
        self._outbox_pool.open()
        try:
            await self._in_outbox(self._set_routes)
        except DatabaseUnavailable:
            await self.close()
            raise
        self._task = asyncio.create_task(self._write_loop(), name="receiver-writer")
        return self

    def _set_routes(self, db: Any) -> None:
        """A server's routes become the database's (a destination kept stays disabled if it
        was); then the routes messages are written for are read."""
        if self.forwarding is not None and outbox.routes_differ(db, self.forwarding.routes):
            db.execute("SELECT pg_advisory_xact_lock(?, ?)", (LOCKS, ROUTES_LOCK))
            outbox.set_routes(db, self.forwarding.routes)
        self._load_routes(db)

    def _load_routes(self, db: Any) -> None:
        self.routes = outbox.enabled_routes(db)
        self.call_routes = [route for route in self.routes if route.wants_calls]

    async def close(self) -> None:
        """Commit everything queued, then close the pool."""
        self._closing = True
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
            self._task = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._outbox_pool is not None:
            await asyncio.to_thread(self._outbox_pool.close)
            self._outbox_pool = None

    async def __aenter__(self) -> PostgresStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; the server gone (or no connection free in time) raises
        DatabaseUnavailable, one line (a 503 for the request)."""
        if self._pool is None:
            raise StoreClosed("the store is closed")
        try:
            async with self._pool.connection() as connection:
                yield connection
        except PoolTimeout as error:
            raise NoConnection(str(unavailable(self.url, error))) from None
        except psycopg.OperationalError as error:
            raise unavailable(self.url, error) from None

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of a read (SQL in SQLite's dialect, as the shared queries are), tried
        again once on a connection the server dropped (it restarted: the pool reconnects)."""
        text, values = statement(sql, params)
        for attempt in range(2):
            try:
                async with self._connection() as connection:
                    cursor = await connection.execute(text, values)
                    return await cursor.fetchall()
            except DatabaseUnavailable as failure:
                if attempt or isinstance(failure, NoConnection):
                    raise
        raise AssertionError("unreachable")

    # Writing.

    async def add_event(self, event: Event) -> Stored:
        """Store one event; returns once the commit that holds it is done."""
        result: Stored = await self._enqueue(event)
        return result

    async def add_reject(self, reject: Reject) -> None:
        await self._enqueue(reject)

    def submit_events(self, events: list[Event]) -> list[asyncio.Future[Stored]]:
        return [self._enqueue(event) for event in events]

    def _enqueue(self, item: Event | Reject) -> asyncio.Future[Any]:
        if self._closing or self._task is None:
            raise StoreClosed("the store is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return future

    async def _write_loop(self) -> None:
        in_flight = asyncio.Semaphore(GROUPS_IN_FLIGHT)

        async def commit(group: list[tuple[Event | Reject, asyncio.Future[Any]]]) -> None:
            try:
                await self._commit(group)
            finally:
                self._groups_storing -= 1
                in_flight.release()

        commits: set[asyncio.Task[None]] = set()
        closing = False
        while not closing:
            first = await self._queue.get()
            if first is None:
                break
            await in_flight.acquire()
            group = [first]
            while len(group) < self.max_group and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    closing = True
                    break
                group.append(item)
            self._groups_storing += 1
            task = asyncio.create_task(commit(group))
            commits.add(task)
            task.add_done_callback(commits.discard)
        await asyncio.gather(*commits)

    async def _commit(self, group: list[tuple[Event | Reject, asyncio.Future[Any]]]) -> None:
        items = [item for item, _ in group]
        try:
            results = await self._write_group(items)
        except Exception as error:
            if len(group) > 1 and not isinstance(error, DatabaseUnavailable):
                for item in group:  # one by one: only what cannot be stored fails
                    await self._commit([item])
                return
            for _, future in group:
                if not future.done():
                    future.set_exception(error)
            return
        self.commits += 1
        if self.on_commit is not None:
            self.on_commit(len(group))
        self._last_commit = time.monotonic()
        for (_, future), result in zip(group, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _write_group(self, items: list[Event | Reject]) -> list[Stored | None]:
        """Store a group: its events in one statement (tried again once on a connection the
        server dropped: a repeat is found by its key), then its rejects, if any."""
        keys = [item.dedup_key() if isinstance(item, Event) else b"" for item in items]
        times: dict[bytes, int] = {}
        rows: list[tuple[Any, ...]] = []
        for item, key in zip(items, keys, strict=True):
            if not isinstance(item, Event):
                continue
            if key in times:
                times[key] += 1
                continue
            times[key] = 1
            rows.append(event_row(item, 0, key))  # its id is drawn in the database
        stored: dict[bytes, tuple[int, bool]] = {}
        if rows:
            params: list[Any] = [list(times), list(times.values())]
            params += [without_nul([row[at] for row in rows]) for at in STORED_AT]
            assert len(params) == len(STORED_COLUMNS) + 2
            routes, moment = self.routes, now_us()
            for attempt in range(2):
                try:
                    async with self._connection() as connection, connection.transaction():
                        cursor = await connection.execute(STORE_EVENTS, params)
                        found = await cursor.fetchall()
                        if routes:  # forwarded: the messages are in the commit of the events
                            await self._insert_messages(
                                connection, self._event_messages(items, keys, found, moment),
                                moment,
                            )  # fmt: skip
                    break
                except DatabaseUnavailable as failure:
                    if attempt or isinstance(failure, NoConnection):
                        raise
            stored = {bytes(key): (event_id, known) for key, event_id, known in found}
        rejects = [reject_row(item) for item in items if isinstance(item, Reject)]
        if rejects:
            await self._store_rejects(rejects)
        results: list[Stored | None] = []
        seen: set[bytes] = set()
        for item, key in zip(items, keys, strict=True):
            if not isinstance(item, Event):
                results.append(None)
                continue
            event_id, known = stored[key]
            results.append(Stored(event_id, known or key in seen))
            seen.add(key)
        return results

    def _event_messages(
        self, items: list[Event | Reject], keys: list[bytes], found: list[Any], moment: int
    ) -> list[Message]:
        """The `event.received` messages of the events a group stored new (not repeats)."""
        new = {bytes(key): event_id for key, event_id, known in found if not known}
        messages: list[Message] = []
        for item, key in zip(items, keys, strict=True):
            if isinstance(item, Event) and key in new:
                messages += event_messages(item, new.pop(key), self.routes, moment)
        return messages

    async def _insert_messages(
        self, connection: psycopg.AsyncConnection[Any], messages: list[Message], moment: int
    ) -> None:
        """outbox.insert_messages, in the caller's transaction."""
        ends, rows = outbox.message_rows(messages, moment)
        async with connection.cursor() as cursor:
            for sql, values in ((outbox.DROP_UNSENT, ends), (outbox.INSERT_MESSAGE, rows)):
                if values:
                    await cursor.executemany(
                        translated(sql)[0], [statement(sql, row)[1] for row in values]
                    )

    async def _store_rejects(self, rows: list[tuple[Any, ...]]) -> None:
        columns = REJECT_COLUMNS.replace("id, ", "", 1)
        marks = ", ".join(["%s"] * (len(columns.split(", "))))
        async with self._connection() as connection, connection.transaction():
            async with connection.cursor() as cursor:
                await cursor.executemany(
                    f"INSERT INTO rejects ({columns}) VALUES ({marks})",
                    [without_nul(row[1:]) for row in rows],
                )
            await connection.execute(
                "DELETE FROM rejects WHERE id <= (SELECT max(id) FROM rejects) - %s",
                (self.rejects_max,),
            )
            await connection.execute(TRIM_REJECTS_BY_BYTES, (self.rejects_max_bytes,))

    def busy(self) -> bool:
        """Whether events are waiting, or were committed in the last IDLE_AFTER seconds."""
        return not self._queue.empty() or time.monotonic() - self._last_commit < IDLE_AFTER

    # The calls.

    async def refresh_calls(self, *, background: bool = False) -> int:
        """Build the calls of the events stored since the last build, as the SQLite Store
        does (database.py), by whichever instance holds the calls lock: in the background an
        instance that finds it taken leaves the turn to the one holding it; a command waits."""
        total = 0
        while True:
            if background and self._groups_storing:
                return total
            busy = background and self.busy()
            size = (
                CALLS_WHILE_BUSY if busy else CALLS_AT_ONCE if background else CALLS_AT_ONCE_COMMAND
            )
            read, _ = await self._build_some_calls(size, wait=not background)
            total += read
            if not read or busy:
                return total

    async def rebuild_calls(self, progress: Callable[[int, int], None] | None = None) -> int:
        async with self._connection() as connection:
            cursor = await connection.execute(
                "UPDATE calls_built SET events_to = 0, version = %s, "
                "rebuild_to = (SELECT coalesce(max(id), 0) FROM events) RETURNING rebuild_to",
                (CALLS_VERSION,),
            )
            row = await cursor.fetchone()
        assert row is not None
        rebuild_to: int = row[0]
        changed = 0
        while True:
            read, batch_changed = await self._build_some_calls(
                CALLS_AT_ONCE_COMMAND, wait=True, count_changed=True
            )
            changed += batch_changed
            if progress is not None:
                state = await self.calls_state()
                progress(min(state.built_to_event, rebuild_to), rebuild_to)
            if not read:
                return changed

    async def _build_some_calls(
        self, limit: int, *, wait: bool, count_changed: bool = False
    ) -> tuple[int, int]:
        """Rebuild the calls of the next `limit` call events not yet built by this
        CALLS_VERSION (writer.Writer.build_some_calls), holding the calls lock (a session
        lock, taken before the transaction so that it reads what the last holder committed)."""
        async with self._connection() as connection:
            cursor = await connection.execute(
                "SELECT events_to, version, (SELECT coalesce(max(id), 0) FROM events) "
                "FROM calls_built"
            )
            row = await cursor.fetchone()
            assert row is not None
            done_to, version, top = row
            if version > CALLS_VERSION or (version == CALLS_VERSION and done_to == top):
                return 0, 0
            if wait:
                await connection.execute("SELECT pg_advisory_lock(%s, %s)", (LOCKS, CALLS_LOCK))
            else:
                cursor = await connection.execute(
                    "SELECT pg_try_advisory_lock(%s, %s)", (LOCKS, CALLS_LOCK)
                )
                got = await cursor.fetchone()
                if not (got and got[0]):
                    return 0, 0  # another instance builds them now
            try:
                async with connection.transaction():
                    return await self._build_batch(connection, limit, count_changed)
            finally:
                await connection.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCKS, CALLS_LOCK))

    async def _build_batch(
        self, connection: psycopg.AsyncConnection[Any], limit: int, count_changed: bool
    ) -> tuple[int, int]:
        cursor = await connection.execute(
            "SELECT events_to, version, rebuild_to FROM calls_built FOR UPDATE"
        )
        row = await cursor.fetchone()
        assert row is not None
        done_to, version, rebuild_to = row
        if version > CALLS_VERSION:
            return 0, 0
        if version < CALLS_VERSION:
            done_to = 0
            cursor = await connection.execute(
                "UPDATE calls_built SET events_to = 0, version = %s, "
                "rebuild_to = (SELECT coalesce(max(id), 0) FROM events) RETURNING rebuild_to",
                (CALLS_VERSION,),
            )
            row = await cursor.fetchone()
            assert row is not None
            rebuild_to = row[0]
        # The batch and the newest id in one statement, so from one snapshot: the ids rise in
        # commit order, so every id up to that newest one is in it.
        cursor = await connection.execute(
            "WITH batch AS (SELECT id, call_id FROM events WHERE id > %s AND call_id IS NOT NULL "
            f"AND {CALL_EVENTS_SQL} ORDER BY id LIMIT %s) "
            "SELECT (SELECT coalesce(max(id), 0) FROM events), "
            "array(SELECT id FROM batch ORDER BY id), array(SELECT call_id FROM batch ORDER BY id)",
            (done_to, limit),
        )
        row = await cursor.fetchone()
        assert row is not None
        newest, ids, call_ids = row
        top = newest if len(ids) < limit else ids[-1]
        if top != done_to:
            await connection.execute("UPDATE calls_built SET events_to = %s", (top,))
        if done_to == 0:
            await self._build_history_calls(connection, None)
        compare = count_changed and done_to < rebuild_to
        changed = (
            await self._rebuild_calls(connection, sorted(set(call_ids)), compare) if ids else 0
        )
        return len(ids), changed

    async def _rebuild_calls(
        self, connection: psycopg.AsyncConnection[Any], ids: list[str], compare: bool
    ) -> int:
        by_call: dict[str, list[Event]] = {}
        cursor = await connection.execute(
            f"SELECT {EVENT_COLUMNS_BUT_RAW} FROM events WHERE {CALL_EVENTS_SQL} "
            "AND call_id = ANY(%s) ORDER BY call_id, id",
            (ids,),
        )
        for row in await cursor.fetchall():
            event = event_from_row(row)
            by_call.setdefault(event.call_id or "", []).append(event)
        calls = [build_call(e, now_us=0, unknown_after_us=None) for e in by_call.values()]
        rows = [(call_row(call), leg_rows(call)) for call in calls]
        if self.call_routes:  # their messages in the transaction that changes the calls
            cursor = await connection.execute(
                "SELECT call_id, status, answered_us, ended_us FROM calls WHERE call_id = ANY(%s)",
                (ids,),
            )
            was = {row[0]: CallBefore(*row[1:]) for row in await cursor.fetchall()}
            moment = now_us()
            messages = [
                message
                for call in calls
                for message in call_messages(
                    was.get(call.call_id), call, self.call_routes, moment, self.settle_us
                )
            ]
            await self._insert_messages(connection, messages, moment)
        changed = 0
        if compare:
            before: dict[str, list[tuple[Any, ...]]] = {}
            cursor = await connection.execute(
                f"SELECT {CALL_COLUMNS} FROM calls WHERE call_id = ANY(%s)", (ids,)
            )
            for row in await cursor.fetchall():
                before[row[0]] = [tuple(row)]
            cursor = await connection.execute(
                f"SELECT {LEG_COLUMNS} FROM legs WHERE call_id = ANY(%s) ORDER BY seq", (ids,)
            )
            for row in await cursor.fetchall():
                before.setdefault(row[0], []).append(tuple(row))
            changed = sum(before.get(row[0]) != [row, *legs] for row, legs in rows)
        await self._replace_calls(connection, rows)
        other_case = [c.call_id.lower() for c in calls if c.call_id != c.call_id.lower()]
        if other_case:
            await connection.execute("DELETE FROM legs WHERE call_id = ANY(%s)", (other_case,))
            await connection.execute(
                "DELETE FROM calls WHERE source = 'call_history' AND call_id = ANY(%s)",
                (other_case,),
            )
        return changed

    async def _replace_calls(
        self,
        connection: psycopg.AsyncConnection[Any],
        rows: list[tuple[tuple[Any, ...], list[tuple[Any, ...]]]],
    ) -> None:
        """The calls' rows in place of what was built before, with their legs."""
        if not rows:
            return
        ids = without_nul([row[0] for row, _ in rows])
        await connection.execute("DELETE FROM legs WHERE call_id = ANY(%s)", (ids,))
        async with connection.cursor() as cursor:
            await cursor.executemany(UPSERT_CALL, [without_nul(row) for row, _ in rows])
            legs = [without_nul(leg) for _, legs in rows for leg in legs]
            if legs:
                await cursor.executemany(INSERT_LEG, legs)

    async def _build_history_calls(
        self, connection: psycopg.AsyncConnection[Any], ids: list[str] | None
    ) -> None:
        sql = f"SELECT call_id, record FROM history_calls AS h WHERE NOT EXISTS ({HAS_EVENTS_OF_H})"
        params: tuple[Any, ...] = ()
        if ids is not None:
            if not ids:
                return
            sql += " AND call_id = ANY(%s)"
            params = (ids,)
        cursor = await connection.execute(sql, params)
        calls = []
        for call_id, record in await cursor.fetchall():
            try:
                calls.append(call_from_history(json.loads(record)))
            except (ValueError, TypeError, AttributeError) as problem:
                log.error("the history record of call %s cannot be read: %s", call_id, problem)
        await self._replace_calls(connection, [(call_row(c), leg_rows(c)) for c in calls])

    async def calls_state(self) -> CallsState:
        sql = "SELECT events_to, version, rebuild_to, (SELECT max(id) FROM events) FROM calls_built"
        [(built_to, version, rebuild_to, events)] = await self._rows(sql)
        return CallsState(version, built_to, events or 0, rebuild_to)

    async def reparse_events(self, progress: Callable[[int, int], None] | None = None) -> Reparsed:
        """Every stored event parsed again (reparse.py), a batch a transaction under the ids
        lock, as SQLite does them under its write lock."""
        [(up_to,)] = await self._rows("SELECT coalesce(max(id), 0) FROM events")
        total = Reparsed()
        while total.last_id < up_to:
            batch = await asyncio.to_thread(self._reparse_batch, total.last_id, up_to)
            total.add(batch)
            if progress is not None:
                progress(total.last_id, up_to)
        return total

    def _reparse_batch(self, after: int, up_to: int) -> Reparsed:
        with psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT) as connection:
            db: Any = SqliteLike(connection)
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCKS, ID_LOCK))
                return Reparse(db).batch(after, up_to, REPARSE_AT_ONCE)

    async def check(self) -> int:
        """Raise if the database does not answer; returns its schema version."""
        for attempt in range(2):
            try:
                async with self._connection() as connection:
                    return await schema_version(connection)
            except DatabaseUnavailable as failure:
                if attempt or isinstance(failure, NoConnection):
                    raise
        raise AssertionError("unreachable")

    # The PBX's call history.

    async def add_history_calls(self, records: list[tuple[str, str]]) -> list[str]:
        fetched_at = now_us()
        outcomes = []
        async with self._connection() as connection, connection.transaction():
            # Under the ids lock, so that an event stored meanwhile is seen.
            await connection.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCKS, ID_LOCK))
            for call_id, record in records:
                cursor = await connection.execute(HAS_EVENTS, (call_id, call_id))
                if await cursor.fetchone():
                    outcomes.append("matched")
                    continue
                cursor = await connection.execute(
                    "INSERT INTO history_calls (call_id, record, fetched_at_us) "
                    "VALUES (%s, %s, %s) "
                    "ON CONFLICT (call_id) DO UPDATE SET record = EXCLUDED.record, "
                    "fetched_at_us = EXCLUDED.fetched_at_us RETURNING (xmax <> 0)",
                    (call_id, record, fetched_at),
                )
                row = await cursor.fetchone()
                outcomes.append("known" if row and row[0] else "filled")
            kept = zip(records, outcomes, strict=True)
            await self._build_history_calls(
                connection, [call_id for (call_id, _), o in kept if o != "matched"]
            )
        return outcomes

    async def claim_reconcile(self, holder: str, seconds: float) -> str | None:
        now = now_us()
        async with self._connection() as connection, connection.transaction():
            cursor = await connection.execute(
                "SELECT holder, until_us FROM reconcile_lease FOR UPDATE"
            )
            row = await cursor.fetchone()
            assert row is not None
            held, until = row
            if held not in ("", holder) and until > now:
                return f"{held} (until {iso_time(until)})"
            await connection.execute(
                "UPDATE reconcile_lease SET holder = %s, until_us = %s",
                (holder, now + int(seconds * 1_000_000)),
            )
        return None

    async def release_reconcile(self, holder: str) -> None:
        async with self._connection() as connection:
            await connection.execute(
                "UPDATE reconcile_lease SET holder = '', until_us = 0 WHERE holder = %s", (holder,)
            )

    # Operations.

    async def check_writable(self) -> None:
        """Raise unless the database answers and takes writes (not a read-only standby)."""
        async with self._connection() as connection:
            cursor = await connection.execute(
                "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')"
            )
            row = await cursor.fetchone()
        assert row is not None
        if row[0] or row[1] == "on":
            raise DatabaseUnavailable(
                f"{shown_url(self.url)} is read-only (a standby?): point --db at the primary"
            )

    def writer_state(self) -> WriterState:
        # The loop runs; whether the server answers is check_writable's to say (/readyz
        # asks it each time, so an instance the balancer left is ready again once it is back).
        alive = self._task is not None and not self._task.done()
        return WriterState(alive, self._queue.qsize(), self._groups_storing)

    async def sizes(self) -> Sizes:
        [(events, size)] = await self._rows(
            "SELECT (SELECT events FROM event_count), pg_database_size(current_database())"
        )
        return Sizes(int(events), int(size), 0, None)

    async def newest_events(self) -> dict[str, int]:
        return {myid: order_us for myid, order_us in await self._rows(NEWEST_BY_MYID)}

    async def prune(
        self,
        before_us: int,
        *,
        keep_calls: bool = False,
        dry_run: bool = False,
        progress: Callable[[Pruned], None] | None = None,
    ) -> Pruned:
        """As the SQLite Store prunes (upkeep.prune_step), each batch a transaction under the
        ids lock; the space is PostgreSQL's (autovacuum) to reuse."""
        total = Pruned()
        while True:
            began = time.monotonic()
            step = await asyncio.to_thread(
                self._prune_batch, before_us, total.last, keep_calls, not dry_run
            )
            total.add(step)
            if progress is not None:
                progress(total)
            if step.done:
                break
            await asyncio.sleep(time.monotonic() - began)
        if dry_run and not keep_calls:
            total.calls = await asyncio.to_thread(self._count_prunable_calls, before_us)
        return total

    def _prune_batch(
        self, before_us: int, after: tuple[int, int], keep_calls: bool, delete: bool
    ) -> PruneStep:
        with psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT) as connection:
            db: Any = SqliteLike(connection)
            with connection.transaction():
                if delete:
                    connection.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCKS, ID_LOCK))
                return prune_step(
                    db, before_us, after, PRUNE_AT_ONCE, keep_calls=keep_calls, delete=delete
                )

    def _count_prunable_calls(self, before_us: int) -> int:
        with psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT) as connection:
            db: Any = SqliteLike(connection)
            return calls_ended_before(db, before_us)

    async def backup(
        self,
        dest: Path,
        progress: Callable[[int, int], None] | None = None,
        rate: float | None = DEFAULT_RATE,
    ) -> BackedUp:
        raise DatabaseUnavailable(
            "receiver backup copies SQLite files: back a PostgreSQL database up with pg_dump "
            f"(pg_dump --format=custom --file=receiver.dump '{shown_url(self.url)}'), "
            "see docs/deploy.md"
        )

    # Reading.

    async def get_event(self, event_id: int) -> Event | None:
        row = await self._event_row(event_id)
        return None if row is None else event_from_row(row)

    async def get_event_record(self, event_id: int) -> dict[str, Any] | None:
        row = await self._event_row(event_id)
        return None if row is None else event_record(row, with_raw=True)

    async def _event_row(self, event_id: int) -> Sequence[Any] | None:
        if not 0 < event_id < 2**63:
            return None
        rows = await self._rows(f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ?", [event_id])
        return rows[0] if rows else None

    async def _event_rows(self, query: EventQuery, limit: int, after: str | None) -> Page:
        sql, params = event_page_sql(query, EVENT_COLUMNS, after)
        rows = await self._rows(sql, [*params, limit + 1])
        more = len(rows) > limit
        last = rows[limit - 1] if more else None
        return Page(rows[:limit], event_cursor(last[4], last[0]) if last else None)

    async def list_events(
        self, query: EventQuery | None = None, *, limit: int = 100, after: str | None = None
    ) -> Page:
        page = await self._event_rows(query or EventQuery(), limit, after)
        return Page([event_from_row(row) for row in page.items], page.next)

    async def list_event_records(
        self, query: EventQuery, *, limit: int = 100, after: str | None = None
    ) -> Page:
        page = await self._event_rows(query, limit, after)
        return Page([event_record(row) for row in page.items], page.next)

    def _all_rows(self, query: EventQuery, after: str | None) -> AsyncIterator[list[Any]]:
        return read_ahead(lambda cursor: self._event_rows(query, EXPORT_PAGE, cursor), after)

    async def iter_event_lines(
        self, query: EventQuery, *, after: str | None = None, limit: int | None = None
    ) -> AsyncIterator[bytes]:
        left = limit
        async for rows in self._all_rows(query, after):
            if left is not None:
                rows = rows[:left]
                left -= len(rows)
            if rows:
                yield event_lines(rows)
            if left == 0:
                return

    async def iter_event_records(
        self, query: EventQuery, *, after: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        async for rows in self._all_rows(query, after):
            for row in rows:
                yield event_record(row)

    async def iter_events(
        self, query: EventQuery, *, after: str | None = None
    ) -> AsyncIterator[Event]:
        async for rows in self._all_rows(query, after):
            for row in rows:
                yield event_from_row(row)

    async def count_calls(self) -> int:
        [(count,)] = await self._rows("SELECT count(*) FROM calls")
        return int(count)

    async def get_call(
        self, call_id: str, *, now_us: int, unknown_after_us: int = DEFAULT_UNKNOWN_AFTER_US
    ) -> Call | None:
        query = CallQuery(now_us=now_us, unknown_after_us=unknown_after_us)
        sql = f"SELECT {call_fields_sql(query.status_sql())} FROM calls WHERE call_id = ?"
        rows = await self._rows(sql, [query.unknown_before_us(), call_id])
        if not rows:
            return None
        legs_sql = f"SELECT {LEG_FIELD_COLUMNS} FROM legs WHERE call_id = ? ORDER BY seq"
        legs = await self._rows(legs_sql, [call_id])
        event_rows = await self._rows(EVENTS_OF_CALL, [call_id])
        events = tuple(event_from_row(row) for row in event_rows)
        call = readable_call(rows[0], legs, events)
        if call is None:  # its row damaged: built again from its events
            call = call_again(event_rows, now_us=now_us, unknown_after_us=unknown_after_us)
        return call

    async def list_calls(
        self, query: CallQuery, *, limit: int = 100, after: str | None = None
    ) -> Page:
        where, params = query.where()
        if after is not None:
            condition, values = call_cursor_where(after, "<" if query.descending else ">")
            where.append(condition)
            params += values
        way = "DESC" if query.descending else "ASC"
        sql = (
            f"SELECT {call_fields_sql(query.status_sql())} FROM calls "
            f"WHERE {' AND '.join(where) or 'true'} "
            f"ORDER BY started_us {way}, call_id {way} LIMIT ?"
        )
        rows = await self._rows(sql, [query.unknown_before_us(), *params, limit + 1])
        return await calls_page(rows, limit, query, self._rows)

    async def iter_calls(
        self, query: CallQuery, *, after: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        pages = read_ahead(
            lambda cursor: self.list_calls(query, limit=EXPORT_PAGE, after=cursor), after
        )
        async for page in pages:
            for call in page:
                yield call

    async def missed_report(self, query: CallQuery) -> list[dict[str, Any]]:
        """As the SQLite Store's (database.py): per external number, its missed inbound calls
        and the first answered call with it after the last of them."""
        where, params = query.where()
        sql = f"""
            WITH missed AS (
                SELECT external_digits AS number, max(external_number) AS shown,
                       count(*) AS missed, min(started_us) AS first_us, max(started_us) AS last_us,
                       string_agg(did, ',' ORDER BY started_us, call_id) AS dids
                FROM calls
                WHERE {" AND ".join([*where, "direction = 'in'", "status = 'missed'"])}
                  AND external_digits IS NOT NULL
                GROUP BY external_digits
            )
            SELECT number, shown, missed, first_us, last_us, dids,
                   later.started_us, later.direction, later.answered_by
            FROM missed LEFT JOIN calls AS later ON later.call_id = (
                SELECT call_id FROM calls AS next
                WHERE next.external_digits = missed.number AND next.status = 'answered'
                  AND next.started_us > missed.last_us
                ORDER BY next.started_us, next.direction, next.answered_by, next.call_id
                LIMIT 1)
            ORDER BY later.started_us IS NOT NULL, last_us DESC, number
        """
        rows = await self._rows(sql, params)
        report = []
        with gc_paused():
            for number, shown, missed, first_us, last_us, dids, handled_us, way, by in rows:
                last = iso_time(last_us)
                report.append(
                    {
                        "number": shown,
                        "digits": number,
                        "missed": missed,
                        "first_missed_at": last if missed == 1 else iso_time(first_us),
                        "last_missed_at": last,
                        "dids": list(dict.fromkeys(dids.split(","))) if dids else [],
                        # a later answered call followed (its direction is NOT NULL)
                        "handled": way is not None,
                        "handled_by": None
                        if way is None
                        else ("call_back" if way == "out" else "called_again"),
                        "handled_at": iso_time(handled_us),
                        "handled_extension": by,
                        "recall_seconds": seconds(handled_us - last_us)
                        if handled_us is not None and last_us is not None
                        else None,
                    }
                )
        return report

    async def waiting_numbers(
        self, query: CallQuery, *, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        """The missed report's numbers not handled yet, the most recently missed first: the
        first `limit` of them, and how many there are (the dashboard's). From the whole
        report, in its order, which puts them first (SQLite's seeks per number are its own)."""
        waiting = [row for row in await self.missed_report(query) if not row["handled"]]
        return waiting[:limit], len(waiting)

    def _bucket_sql(
        self, query: CallQuery, by: str | None, place: tzinfo, column: str
    ) -> tuple[str, list[int], int]:
        bucket_us = {"day": DAY_US, "hour": HOUR_US}.get(by or "", 0)
        if not bucket_us:
            return "NULL::bigint", [], 0
        span = offsets(place, query.since_us or 0, query.until_us or now_us() + DAY_US)
        local, params = local_time_sql(column, span)
        local = local.replace("?", "?::bigint")  # the offsets, as 64-bit integers
        return f"({local} / {bucket_us}) * {bucket_us}", params, bucket_us

    async def extensions_report(
        self, query: CallQuery, *, by: str | None = None, place: tzinfo = UTC
    ) -> list[dict[str, Any]]:
        where, params = query.where(table="c")
        bucket, bucket_params, bucket_us = self._bucket_sql(query, by, place, "c.started_us")
        sql = f"""
            SELECT l.extension, {bucket} AS bucket,
                   count(DISTINCT l.call_id),
                   count(DISTINCT CASE WHEN l.answered THEN l.call_id END),
                   count(DISTINCT CASE WHEN c.status = 'missed' THEN l.call_id END),
                   avg(CASE WHEN l.answered THEN l.ring_us::float8 END),
                   sum(CASE WHEN l.answered THEN l.talk_us::float8 END),
                   avg(CASE WHEN l.answered THEN l.talk_us::float8 END)
            FROM legs AS l JOIN calls AS c ON c.call_id = l.call_id
            WHERE {" AND ".join([*where, "NOT l.routing", "l.extension IS NOT NULL"])}
            GROUP BY l.extension, bucket
            ORDER BY l.extension, bucket
        """
        rows = await self._rows(sql, [*bucket_params, *params])
        return [
            {
                "extension": extension,
                **({"period": iso_time(local_start(place, bucket_start))} if bucket_us else {}),
                "calls": calls,
                "answered": answered,
                "missed": missed,
                "avg_ring_seconds": round(ring / 1e6, 3) if ring is not None else None,
                "total_talk_seconds": seconds(talk) if talk is not None else 0,
                "avg_talk_seconds": round(avg_talk / 1e6, 3) if avg_talk is not None else None,
            }
            for extension, bucket_start, calls, answered, missed, ring, talk, avg_talk in rows
        ]

    async def calls_by_period(
        self, query: CallQuery, *, by: str, place: tzinfo = UTC
    ) -> list[dict[str, Any]]:
        where, params = query.where()
        bucket, bucket_params, _ = self._bucket_sql(query, by, place, "calls.started_us")
        sql = (
            f"SELECT {bucket} AS bucket, {query.status_sql()} AS now_status, count(*) "
            f"FROM calls WHERE {' AND '.join(where) or 'true'} "
            "GROUP BY bucket, now_status ORDER BY bucket, now_status"
        )
        rows = await self._rows(sql, [*bucket_params, query.unknown_before_us(), *params])
        return [
            {"period_us": local_start(place, bucket_start), "status": status, "calls": count}
            for bucket_start, status, count in rows
        ]

    async def events_after(self, event_id: int, *, limit: int) -> list[dict[str, Any]]:
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?"
        return [event_record(row) for row in await self._rows(sql, [event_id, limit])]

    async def calls_of_events(
        self, after_event: int, through_event: int, *, now_us: int, unknown_after_us: int
    ) -> list[dict[str, Any]]:
        query = CallQuery(now_us=now_us, unknown_after_us=unknown_after_us)
        sql = (
            f"SELECT {call_fields_sql(query.status_sql())} FROM calls WHERE call_id IN "
            "(SELECT call_id FROM events WHERE id > ? AND id <= ?) ORDER BY started_us, call_id"
        )
        rows = await self._rows(sql, [query.unknown_before_us(), after_event, through_event])
        return [call_json(call_from_row(row), with_details=False) for row in rows]

    # The outbox of forwarded messages (outbox.py's functions, through pg_dialect, on a
    # connection of their own pool, in a thread: the worker's few statements a step).

    async def _in_outbox(self, work: Callable[..., Any], *args: Any) -> Any:
        """`work(db, *args)` in one transaction, db a pg_dialect.SqliteLike."""
        return await asyncio.to_thread(self._outbox_transaction, work, *args)

    def _outbox_transaction(self, work: Callable[..., Any], *args: Any) -> Any:
        if self._outbox_pool is None:
            raise StoreClosed("the store is closed")
        try:
            with self._outbox_pool.connection() as connection, connection.transaction():
                return work(SqliteLike(connection), *args)
        except PoolTimeout as error:
            raise NoConnection(str(unavailable(self.url, error))) from None
        except psycopg.OperationalError as error:
            raise unavailable(self.url, error) from None

    async def forward_step(
        self,
        destination: str,
        holder: str,
        outcomes: list[Outcome],
        *,
        limit: int,
        lease_seconds: float,
    ) -> list[Delivery]:
        """Record attempts' outcomes, then lease up to `limit` due messages of `destination`
        for `lease_seconds`, the first not yet delivered of each call, FOR UPDATE SKIP LOCKED:
        two instances never claim the same message."""
        now = now_us()
        until = now + int(lease_seconds * 1_000_000)

        def step(db: Any) -> list[Delivery]:
            outbox.finish(db, outcomes, holder)
            claimed = outbox.claim(
                db, destination, holder, now, until, limit, " FOR UPDATE SKIP LOCKED"
            )
            claimed = with_bodies(db, claimed, now, legs_order="seq")
            # A destination disabled (a 410), or enabled again (`receiver forward retry`).
            self._load_routes(db)
            return claimed

        claimed: list[Delivery] = await self._in_outbox(step)
        return claimed

    async def forward_release(self, holder: str) -> int:
        """Give back every lease `holder` has; how many."""

        def release(db: Any) -> int:
            return int(
                db.execute(
                    "UPDATE outbox SET lease_holder = NULL, lease_until_us = 0 "
                    "WHERE lease_holder = ?",
                    (holder,),
                ).rowcount
            )

        count: int = await self._in_outbox(release)
        return count

    async def forward_counts(self) -> list[dict[str, Any]]:
        """Per destination: pending and dead messages, the oldest pending one's creation, and
        whether it is disabled."""
        rows = await self._rows(OUTBOX_COUNTS, [])
        return [
            {
                "destination": destination,
                "pending": pending,
                "dead": dead,
                "oldest_pending_at": iso_time(oldest),
                "disabled_at": iso_time(disabled_us),
                "disabled_why": why,
            }
            for destination, disabled_us, why, pending, dead, oldest in rows
        ]

    async def forward_trim(self, max_rows: int) -> Trimmed:
        """Bring the outbox down to `max_rows` (outbox.trim), a batch a transaction."""
        [(count,)] = await self._rows("SELECT count(*) FROM outbox", [])
        total = Trimmed()
        excess = count - max_rows
        while excess > 0:
            step: Trimmed = await self._in_outbox(outbox.trim, min(excess, TRIM_AT_ONCE))
            gone = step.delivered + step.dead + step.pending
            total.delivered += step.delivered
            total.dead += step.dead
            total.pending += step.pending
            if not gone:
                break
            excess -= gone
        return total

    async def retry_deliveries(
        self, destination: str | None = None, since_us: int | None = None
    ) -> int:
        """Make the dead messages (of one destination, created since a time) due again, each
        with a new round of attempts, and enable their destinations again; how many."""

        def again(db: Any) -> int:
            count = outbox.retry(db, destination, since_us, now_us())
            self._load_routes(db)
            return int(count)

        count: int = await self._in_outbox(again)
        return count

    async def replay_deliveries(
        self,
        since_us: int,
        until_us: int,
        destination: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Write `event.received` again, due now, for every event received from `since_us` to
        `until_us`, to each destination (or the one) that takes it; how many messages."""
        [(up_to,)] = await self._rows("SELECT coalesce(max(id), 0) FROM events", [])
        await self._in_outbox(self._load_routes)
        routes = [r for r in self.routes if destination is None or r.url == destination]

        def batch(db: Any, after: int) -> tuple[int, int]:
            found = db.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (after, REPLAY_AT_ONCE),
            ).fetchall()
            moment = now_us()
            messages = []
            for row in found:
                event = event_from_row(row)
                if since_us <= event.received_at_us < until_us and event.id is not None:
                    messages += event_messages(event, event.id, routes, moment)
            outbox.again(db, messages, moment)
            return (found[-1][0] if found else after), len(messages)

        after, total = 0, 0
        while after < up_to:
            last, written = await self._in_outbox(batch, after)
            total += written
            if progress is not None:
                progress(last, up_to)
            if last == after:
                break
            after = last
        return total

    async def list_deliveries(
        self, query: DeliveryQuery, *, limit: int = 100, before: int | None = None
    ) -> Page:
        """Outbox rows, newest first, as JSON records; `next` is the id to pass as `before`."""
        where, params = query.where()
        if before is not None:
            where.append("id < ?")
            params.append(before)
        sql = (
            f"SELECT {DELIVERY_COLUMNS} FROM outbox WHERE {' AND '.join(where) or 'true'} "
            "ORDER BY id DESC LIMIT ?"
        )
        rows = await self._rows(sql, [*params, limit + 1])
        moment = now_us()
        items = [delivery_record(row, moment) for row in rows[:limit]]
        return Page(items, str(items[-1]["id"]) if len(rows) > limit else None)

    async def get_delivery_body(self, row_id: int) -> tuple[str, bytes] | None:
        """A message's content type and body, as sent."""
        if not 0 < row_id < 2**63:
            return None
        rows = await self._rows("SELECT content_type, body FROM outbox WHERE id = ?", [row_id])
        return (rows[0][0], bytes(rows[0][1])) if rows else None

    async def list_rejects(self, *, limit: int = 100, before: int | None = None) -> Page:
        clause = "WHERE id < ?" if before is not None else ""
        params = [before] if before is not None else []
        sql = f"SELECT {REJECT_COLUMNS} FROM rejects {clause} ORDER BY id DESC LIMIT ?"
        rows = await self._rows(sql, [*params, limit + 1])
        rejects = [reject_from_row(row) for row in rows[:limit]]
        more = len(rows) > limit
        return Page(rejects, str(rejects[-1].id) if more else None)
