"""The Store: what the rest of the receiver calls to write and read the database.

One writer (writer.py) owns the write connection and commits in groups: the requests that arrive
while it is busy make the next group (up to GROUPS_IN_FLIGHT groups are handed to it ahead), and
each waits for the commit that includes it. So an answered event is always on disk, and a burst
costs one fsync per group, not per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any

import aiosqlite

from receiver.calls import DEFAULT_UNKNOWN_AFTER_US, Call, CallStatus, call_json
from receiver.event import Event, Reject, event_lines, event_record, iso_time, now_us, seconds
from receiver.store.backup import DEFAULT_RATE, BackedUp, backup_file
from receiver.store.export import Exporter
from receiver.store.outbox import (
    DELIVERY_COLUMNS,
    OUTBOX_COUNTS,
    Delivery,
    DeliveryQuery,
    Forwarding,
    Outcome,
    Trimmed,
    delivery_record,
)
from receiver.store.queries import (
    EXPORT_PAGE,
    CallQuery,
    CallsState,
    EventQuery,
    Page,
    Reparsed,
    Stored,
    call_cursor,
    call_cursor_where,
    event_cursor,
    event_page_sql,
    local_time_sql,
    sql_digits,
)
from receiver.store.reparse import EVENTS_AT_ONCE as REPARSE_AT_ONCE
from receiver.store.schema import (
    CALL_FIELDS,
    CALLS_AT_ONCE,
    CALLS_AT_ONCE_COMMAND,
    CALLS_WHILE_BUSY,
    EVENT_COLUMNS,
    EVENTS_OF_CALL,
    GROUPS_IN_FLIGHT,
    IDLE_AFTER,
    LEG_FIELD_COLUMNS,
    MAX_GROUP,
    MAX_GROUP_COMMAND,
    REJECT_COLUMNS,
    PreparedEvent,
    call_again,
    call_fields_sql,
    call_from_row,
    call_record,
    connect_pragmas,
    event_from_row,
    read_tolerantly,
    readable_call,
    reject_from_row,
)
from receiver.store.upgrade import upgrade_at_start
from receiver.store.upkeep import (
    NEWEST_BY_MYID,
    PRUNE_AT_ONCE,
    SIZES,
    VACUUM_EVENTS_A_STEP,
    Pruned,
    Sizes,
    WriterState,
    sizes,
)
from receiver.store.writer import ProcessHost, ThreadHost
from receiver.stored import INTEGER_VALUE, NUMBER_VALUE, TEXT_VALUE, RowKinds
from receiver.zones import DAY_US, HOUR_US, LAST_DAY_US, local_periods, local_start, offsets

log = logging.getLogger("receiver.store")
TRIM_AT_ONCE = 5000  # outbox rows dropped per writer turn when it is full
REPLAY_AT_ONCE = 2000  # events looked at per writer turn of a replay to the destinations
# The kinds of the reports' values, in the order their SQL selects them.
MISSED_ROW = RowKinds(
    TEXT_VALUE,  # the number's digits
    TEXT_VALUE,  # the number as shown
    INTEGER_VALUE,  # missed calls
    INTEGER_VALUE,  # the first one's start
    INTEGER_VALUE,  # the last one's
    TEXT_VALUE,  # the DIDs called
    INTEGER_VALUE,  # the start of the answered call after them
    TEXT_VALUE,  # its direction
    TEXT_VALUE,  # who answered it
)
EXTENSIONS_ROW = RowKinds(
    TEXT_VALUE,  # the extension
    NUMBER_VALUE,  # its period's start (local µs)
    INTEGER_VALUE,  # calls
    INTEGER_VALUE,  # answered
    INTEGER_VALUE,  # missed
    NUMBER_VALUE,  # the average ring
    NUMBER_VALUE,  # the talk in all
    NUMBER_VALUE,  # the average talk
)
PERIOD_ROW = RowKinds(
    NUMBER_VALUE,  # the period's start (local µs)
    TEXT_VALUE,  # a status
    INTEGER_VALUE,  # its calls
)
PERIODS_COUNTED = 100  # at most this many periods counted by calls_by_period's index ranges
# Where a call's start time is in a row of its fields (for the next page's cursor).
CALL_STARTED = [c.name for c in CALL_FIELDS].index("started_us")
CALL_ID = [c.name for c in CALL_FIELDS].index("call_id")


async def calls_page(
    rows: list[Any],
    limit: int,
    query: CallQuery,
    read: Callable[[str, Sequence[Any]], Awaitable[list[Any]]],
) -> Page:
    """The page of a calls list from its rows (`limit` + 1 read, to tell whether more follow):
    each call's JSON record; a call whose row does not read (readable_call) is built again
    from its events, read with `read` (the store's own reads)."""
    with gc_paused():
        records = [call_record(row) for row in rows[:limit]]
    for n, record in enumerate(records):
        if record is None:
            again = call_again(
                await read(EVENTS_OF_CALL, [rows[n][CALL_ID]]),
                now_us=query.now_us,
                unknown_after_us=query.unknown_after_us,
            )
            records[n] = None if again is None else call_json(again, with_details=False)
    last = rows[limit - 1] if len(rows) > limit else None
    cursor = call_cursor(last[CALL_STARTED], last[CALL_ID]) if last else None
    return Page([record for record in records if record is not None], cursor)


async def read_ahead(
    read: Callable[[str | None], Awaitable[Page]], after: str | None
) -> AsyncIterator[list[Any]]:
    """The pages of a keyset listing from `after` on, each read while the one before is used."""
    ahead = asyncio.ensure_future(read(after))
    try:
        while True:
            page = await ahead
            if page.next is not None:
                ahead = asyncio.ensure_future(read(page.next))
            yield page.items
            if page.next is None:
                return
    finally:
        ahead.cancel()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while many records are made at once.

    Each full collection walks every object of the process, and tens of thousands of new dicts
    set off several; the records hold no reference cycles, so they would find nothing.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class StoreClosed(RuntimeError):
    """The store is shutting down and takes no more writes."""


class Store:
    """The database of one receiver: a group-committing writer and a reader connection.

    The writer (writer.py) has a plain sqlite3 connection of its own, on a thread or, with
    own_process, in a child process; a whole group (check for repeats, insert, commit) is one
    call on it. aiosqlite would hop between threads for every statement, and each hop can wait
    for the GIL while the event loop parses requests; under load those waits, not the disk, set
    the latency. Reads go through aiosqlite.
    """

    def __init__(
        self,
        path: Path,
        rejects_max: int = 10_000,
        *,
        rejects_max_bytes: int = 64 << 20,
        own_process: bool = False,
        bulk: bool = False,
        on_commit: Callable[[int], None] | None = None,
        forwarding: Forwarding | None = None,
    ) -> None:
        own_process = own_process or bulk
        self.path = path
        # A command storing many (replay): bigger commits, and the rows made here, beside the
        # writer process (PreparedEvent), which has the more to do; a server sends Events.
        self.max_group = MAX_GROUP_COMMAND if bulk else MAX_GROUP  # events in one commit
        self.prepare_rows = bulk
        self.forwarding = forwarding  # a server's routes (outbox.py); None: the file's
        self.on_commit = on_commit  # called with each group commit's size
        self.rejects_max = rejects_max
        self.rejects_max_bytes = rejects_max_bytes
        self._writer: ThreadHost | ProcessHost = ProcessHost() if own_process else ThreadHost()
        self._reader: aiosqlite.Connection | None = None
        self._own_process = own_process
        self._exporter: Exporter | None = None  # the server's exports use worker processes
        self._queue: asyncio.Queue[tuple[Event | Reject, asyncio.Future[Any]] | None] = (
            asyncio.Queue()
        )
        self._task: asyncio.Task[None] | None = None
        self._groups_storing = 0  # groups of deliveries being stored right now
        self._closing = False
        self.commits = 0  # how many group commits succeeded
        self._last_commit = 0.0

    async def open(self) -> Store:
        """Create or upgrade the database (saying so in the log when it is long), then start
        the writer."""
        await asyncio.to_thread(upgrade_at_start, self.path)
        try:
            await self._writer.start(
                self.path, self.rejects_max, self.rejects_max_bytes, self.forwarding
            )
        except BaseException:
            await self._writer.stop()
            raise
        try:
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            await self._reader.executescript(connect_pragmas())
            await self._reader.create_function("digits", 1, sql_digits, deterministic=True)
        except BaseException:  # the writer (a process, in the server) must not stay behind
            if self._reader is not None:
                await self._reader.close()
                self._reader = None
            await self._writer.stop()
            raise
        if self._own_process:
            self._exporter = Exporter(self.path, self._reader)
        self._task = asyncio.create_task(self._write_loop(), name="receiver-writer")
        return self

    async def close(self) -> None:
        """Commit everything queued, then close the connections."""
        self._closing = True
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
            self._task = None
        if self._exporter is not None:
            await asyncio.to_thread(self._exporter.close)
            self._exporter = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        await self._writer.stop()

    async def __aenter__(self) -> Store:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # Writing.

    async def add_event(self, event: Event) -> Stored:
        """Store one event; returns once the commit that holds it is on disk."""
        result: Stored = await self._enqueue(event)
        return result

    async def add_reject(self, reject: Reject) -> None:
        """Keep one refused delivery (the oldest go once there are more than rejects_max, or
        their raw requests take more than rejects_max_bytes)."""
        await self._enqueue(reject)

    def submit_events(self, events: list[Event]) -> list[asyncio.Future[Stored]]:
        """Queue many events for storing now; each future ends with its commit (or failure)."""
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
            finally:  # before anyone waiting for these deliveries runs again
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
        try:
            items: list[Event | Reject | PreparedEvent] = [item for item, _ in group]
            if self.prepare_rows:
                items = [PreparedEvent.of(i) if isinstance(i, Event) else i for i in items]
            results = await self._writer.call("write_group", items)
        except Exception as error:
            if len(group) > 1:  # one by one, so only the deliveries that cannot be stored fail
                for item in group:
                    await self._commit([item])
                return
            _, future = group[0]
            if not future.done():
                future.set_exception(error)
            return
        self.commits += 1
        if self.on_commit is not None:
            self.on_commit(len(group))
        self._last_commit = time.monotonic()
        for (_, future), result in zip(group, results, strict=True):
            if not future.done():  # the client may have gone; the event is stored anyway
                future.set_result(result)

    async def refresh_calls(self, *, background: bool = False) -> int:
        """Build the calls of the events stored since the last build (all of them, after a
        change of CALLS_VERSION); returns how many call events that read.

        Live writes go between the batches: of CALLS_AT_ONCE_COMMAND call events for a
        command (replay), of CALLS_AT_ONCE in the background. background: nothing while a group
        of deliveries is being stored, and while events are arriving one batch of
        CALLS_WHILE_BUSY events (about a commit's time), so that the background refresher,
        calling this five times a second, keeps the calls close behind steady traffic without
        holding deliveries up. Reads never call it: they read the calls as built.
        """
        total = 0
        while True:
            if background and self._groups_storing:
                return total  # none while a group of deliveries is being stored
            busy = background and self.busy()
            size = (
                CALLS_WHILE_BUSY if busy else CALLS_AT_ONCE if background else CALLS_AT_ONCE_COMMAND
            )
            read: int = (await self._writer.call("build_some_calls", size))[0]
            total += read
            if not read or busy:
                return total

    async def rebuild_calls(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Build every call again from its events, in batches between the live writes; returns
        how many calls came out other than they were. `progress(built_to_event, rebuild_to)`
        after each batch."""
        rebuild_to: int = await self._writer.call("rebuild_all_calls")
        changed = 0
        while True:
            read: int
            batch_changed: int
            read, batch_changed = await self._writer.call(
                "build_some_calls", CALLS_AT_ONCE_COMMAND, True
            )
            changed += batch_changed
            if progress is not None:
                state = await self.calls_state()
                progress(min(state.built_to_event, rebuild_to), rebuild_to)
            if not read:  # up to date (or, since a newer receiver took over, its to build)
                return changed

    async def reparse_events(self, progress: Callable[[int, int], None] | None = None) -> Reparsed:
        """Parse every stored event again with the current parser, in batches between the live
        writes, and store what changed (reparse.py); up to the newest event when it starts:
        those stored since were parsed by this parser. `progress(last_id, up_to)` after each
        batch. The calls are left to rebuild_calls()."""
        [(up_to,)] = await self._rows("SELECT coalesce(max(id), 0) FROM events", [])
        total = Reparsed()
        while total.last_id < up_to:
            batch: Reparsed = await self._writer.call(
                "reparse_some_events", total.last_id, up_to, REPARSE_AT_ONCE
            )
            total.add(batch)
            if progress is not None:
                progress(total.last_id, up_to)
        return total

    async def add_history_calls(self, records: list[tuple[str, str]]) -> list[str]:
        """Keep the PBX's history records (call id, record JSON) of calls none of whose events
        we have, and build their calls (source call_history); per record `matched`, `filled`
        or `known` (writer.py)."""
        outcomes: list[str] = await self._writer.call("add_history_calls", records, now_us())
        return outcomes

    async def claim_reconcile(self, holder: str, seconds: float) -> str | None:
        """Hold the one reconciler's lease for `seconds` from now (again, to keep it): None
        when it is `holder`'s, else who holds it."""
        now = now_us()
        held: str | None = await self._writer.call(
            "claim_reconcile", holder, now, now + int(seconds * 1_000_000)
        )
        return held

    async def release_reconcile(self, holder: str) -> None:
        await self._writer.call("release_reconcile", holder)

    async def prune(
        self,
        before_us: int,
        *,
        keep_calls: bool = False,
        dry_run: bool = False,
        progress: Callable[[Pruned], None] | None = None,
    ) -> Pruned:
        """Remove the events from before `before_us`, the calls made only of them (unless
        `keep_calls`), then give the space back (upkeep.prune_step), a small batch at a time
        between the live writes; with `dry_run`, only count what would go."""
        total = Pruned()
        while True:
            began = time.monotonic()
            step = await self._writer.call(
                "prune_some_events", before_us, total.last, PRUNE_AT_ONCE, keep_calls, not dry_run
            )
            total.add(step)
            if progress is not None:
                progress(total)
            if step.done:
                break
            # The lock is left free as long as it was held: deliveries take their turns.
            await asyncio.sleep(time.monotonic() - began)
        if dry_run:
            if not keep_calls:
                total.calls = await self._writer.call("count_prunable_calls", before_us)
            return total
        # As many pages as the prune freed, at most: the live writes free and take pages too.
        for _ in range(total.events // VACUUM_EVENTS_A_STEP + 1):
            step = await self._writer.call("vacuum_some")
            if step is None:
                total.vacuumed = False
                break
            freed, left = step
            total.freed_bytes += freed
            if not left:
                break
            await asyncio.sleep(0.01)
        return total

    async def backup(
        self,
        dest: Path,
        progress: Callable[[int, int], None] | None = None,
        rate: float | None = DEFAULT_RATE,
    ) -> BackedUp:
        """A consistent copy of the database as a new file, checked, written at most `rate`
        bytes a second (backup.backup_file)."""
        return await asyncio.to_thread(backup_file, self.path, dest, progress, rate)

    # The outbox (outbox.py).

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
        for `lease_seconds`, the first not yet delivered of each call (writer.forward_step)."""
        now = now_us()
        until = now + int(lease_seconds * 1_000_000)
        claimed: list[Delivery] = await self._writer.call(
            "forward_step", destination, holder, outcomes, now, until, limit
        )
        return claimed

    async def forward_release(self, holder: str) -> int:
        """Give back every lease `holder` has; how many."""
        count: int = await self._writer.call("forward_release", holder)
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
        """Bring the outbox down to `max_rows`: the oldest delivered rows go first, then the
        dead, then the oldest pending (outbox.trim), a batch at a time beside the live writes."""
        [(count,)] = await self._rows("SELECT count(*) FROM outbox", [])
        total = Trimmed()
        excess = count - max_rows
        while excess > 0:
            step: Trimmed = await self._writer.call("forward_trim", min(excess, TRIM_AT_ONCE))
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
        count: int = await self._writer.call("forward_retry", destination, since_us)
        return count

    async def replay_deliveries(
        self,
        since_us: int,
        until_us: int,
        destination: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Write `event.received` again, due now, for every event received from `since_us` to
        `until_us`, to each destination (or the one) that takes it; how many messages.
        `progress(last_id, up_to)` after each batch."""
        [(up_to,)] = await self._rows("SELECT coalesce(max(id), 0) FROM events", [])
        after, total = 0, 0
        while after < up_to:
            last, written = await self._writer.call(
                "forward_replay", after, since_us, until_us, destination, REPLAY_AT_ONCE
            )
            total += written
            if progress is not None:
                progress(last, up_to)
            if last == after:  # no more events (a prune took them meanwhile)
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
            f"SELECT {DELIVERY_COLUMNS} FROM outbox WHERE {' AND '.join(where) or '1'} "
            "ORDER BY id DESC LIMIT ?"
        )
        rows = await self._rows(sql, [*params, limit + 1])
        moment = now_us()
        items = [delivery_record(row, moment) for row in rows[:limit]]
        return Page(items, str(items[-1]["id"]) if len(rows) > limit else None)

    async def get_delivery_body(self, row_id: int) -> tuple[str, bytes] | None:
        """A message's content type and body, as sent."""
        rows = await self._rows("SELECT content_type, body FROM outbox WHERE id = ?", [row_id])
        return (rows[0][0], bytes(rows[0][1])) if rows else None

    async def check_writable(self) -> None:
        """Raise unless the writer answers and can take the write lock."""
        await self._writer.call("probe")

    def writer_state(self) -> WriterState:
        return WriterState(self._writer.alive(), self._queue.qsize(), self._groups_storing)

    async def sizes(self) -> Sizes:
        """How many events, how many bytes, and the free space in the file and on its disk."""
        [row] = await self._rows(SIZES, [])
        return await asyncio.to_thread(sizes, tuple(row), self.path)

    async def newest_events(self) -> dict[str, int]:
        """The time (order_us) of each myid's newest event, for up to upkeep.MYIDS_SHOWN
        myids."""
        return {myid: order_us for myid, order_us in await self._rows(NEWEST_BY_MYID, [])}

    def busy(self) -> bool:
        """Whether events are waiting, or were committed in the last IDLE_AFTER seconds."""
        return not self._queue.empty() or time.monotonic() - self._last_commit < IDLE_AFTER

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
        row = await self._event_row(event_id)
        return None if row is None else event_from_row(row)

    async def get_event_record(self, event_id: int) -> dict[str, Any] | None:
        """One event's JSON record with its raw request, or None."""
        row = await self._event_row(event_id)
        return None if row is None else event_record(row, with_raw=True)

    async def _event_row(self, event_id: int) -> Sequence[Any] | None:
        assert self._reader is not None
        if not 0 < event_id < 2**63:  # no such id, and SQLite could not even be asked
            return None
        rows = await self._rows(f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ?", [event_id])
        return rows[0] if rows else None

    async def _rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        assert self._reader is not None
        try:
            async with self._reader.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        except sqlite3.OperationalError as error:
            if not read_tolerantly(self._reader, error):
                raise
        async with self._reader.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _event_rows(self, query: EventQuery, limit: int, after: str | None) -> Page:
        """A page of events' rows (EVENT_COLUMNS) in time order (EventTime, or receipt when
        it is missing)."""
        sql, params = event_page_sql(query, EVENT_COLUMNS, after)
        rows = await self._rows(sql, [*params, limit + 1])
        more = len(rows) > limit
        last = rows[limit - 1] if more else None  # its order_us and id make the cursor
        return Page(rows[:limit], event_cursor(last[4], last[0]) if last else None)

    async def list_events(
        self, query: EventQuery | None = None, *, limit: int = 100, after: str | None = None
    ) -> Page:
        """A page of Events in time order."""
        page = await self._event_rows(query or EventQuery(), limit, after)
        return Page([event_from_row(row) for row in page.items], page.next)

    async def list_event_records(
        self, query: EventQuery, *, limit: int = 100, after: str | None = None
    ) -> Page:
        """A page of events' JSON records (event_record), in time order."""
        page = await self._event_rows(query, limit, after)
        return Page([event_record(row) for row in page.items], page.next)

    def _all_rows(self, query: EventQuery, after: str | None) -> AsyncIterator[list[Any]]:
        """Every matching event's row, a page at a time; the next page is read from SQLite
        while this one is used."""
        return read_ahead(lambda cursor: self._event_rows(query, EXPORT_PAGE, cursor), after)

    async def iter_event_lines(
        self, query: EventQuery, *, after: str | None = None, limit: int | None = None
    ) -> AsyncIterator[bytes]:
        """Matching events as NDJSON lines (UTF-8), up to `limit`, a page of lines at a time,
        made from the events' rows as they are read (event_lines); by worker processes in
        the server (export.py)."""
        if self._exporter is not None:
            try:  # `after` moves with the pages sent, for the rest if a worker dies
                async for lines, page_after in self._exporter.pages(query, after, limit):
                    after = page_after
                    if limit is not None:  # a page with events stored into it is longer
                        count = lines.count(b"\n")  # a line each: JSON escapes its newlines
                        if count > limit:
                            lines = b"".join(line + b"\n" for line in lines.split(b"\n")[:limit])
                        limit -= min(count, limit)
                    if lines:
                        yield lines
                    if limit == 0:
                        return
                return
            except BrokenProcessPool:
                log.error("an export worker process died: exporting the rest in the server")
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
        """Every matching event's JSON record (flat memory for exports)."""
        async for rows in self._all_rows(query, after):
            for row in rows:
                yield event_record(row)

    async def iter_events(
        self, query: EventQuery, *, after: str | None = None
    ) -> AsyncIterator[Event]:
        """Every matching Event (flat memory)."""
        async for rows in self._all_rows(query, after):
            for row in rows:
                yield event_from_row(row)

    async def calls_state(self) -> CallsState:
        """How far the calls table is built, and by which version of call building."""
        sql = "SELECT events_to, version, rebuild_to, (SELECT max(id) FROM events) FROM calls_built"
        [(built_to, version, rebuild_to, events)] = await self._rows(sql, [])
        return CallsState(version, built_to, events or 0, rebuild_to)

    async def count_calls(self) -> int:
        """How many calls are built."""
        [(count,)] = await self._rows("SELECT count(*) FROM calls", [])
        return int(count)

    async def get_call(
        self, call_id: str, *, now_us: int, unknown_after_us: int = DEFAULT_UNKNOWN_AFTER_US
    ) -> Call | None:
        """One call as built, with its legs and its events' timeline."""
        query = CallQuery(now_us=now_us, unknown_after_us=unknown_after_us)
        sql = f"SELECT {call_fields_sql(query.status_sql())} FROM calls WHERE call_id = ?"
        rows = await self._rows(sql, [query.unknown_before_us(), call_id])
        if not rows:
            return None
        legs_sql = f"SELECT {LEG_FIELD_COLUMNS} FROM legs WHERE call_id = ? ORDER BY rowid"
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
        """Calls by start time, as built, a page at a time; items are their JSON records (no
        legs, no events), as call_json() makes them."""
        where, params = query.where()
        if after is not None:
            condition, values = call_cursor_where(after, "<" if query.descending else ">")
            where.append(condition)
            params += values
        way = "DESC" if query.descending else "ASC"
        sql = (
            f"SELECT {call_fields_sql(query.status_sql())} FROM calls "
            f"WHERE {' AND '.join(where) or '1'} "
            f"ORDER BY started_us {way}, call_id {way} LIMIT ?"
        )
        rows = await self._rows(sql, [query.unknown_before_us(), *params, limit + 1])
        return await calls_page(rows, limit, query, self._rows)

    async def iter_calls(
        self, query: CallQuery, *, after: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every matching call, a page at a time; the next page is read while this one is used."""
        pages = read_ahead(
            lambda cursor: self.list_calls(query, limit=EXPORT_PAGE, after=cursor), after
        )
        async for page in pages:
            for call in page:
                yield call

    async def missed_report(self, query: CallQuery) -> list[dict[str, Any]]:
        """Inbound calls nobody answered, per external number, and whether they were handled.

        Handled: a later answered call with the same number, ours (a call back) or theirs.
        """
        return await self._missed_rows(query)

    async def waiting_numbers(
        self, query: CallQuery, *, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        """The missed report's numbers not handled yet, the most recently missed first: the
        first `limit` of them, and how many there are (the dashboard's: it reads no more)."""
        where, params = query.where(table="m")
        again, again_params = query.where(table="again")
        # The last missed call of each number that no answered call followed, without grouping
        # (a sort of every missed call): one seek for a later missed call, one for an answer.
        waiting = f"""
            FROM calls AS m
            WHERE {" AND ".join([*where, "m.direction = 'in'", "m.status = 'missed'"])}
              AND m.external_digits IS NOT NULL
              AND NOT EXISTS (
                SELECT 1 FROM calls AS again INDEXED BY calls_number
                WHERE again.external_digits = m.external_digits AND again.status = 'missed'
                  AND again.started_us > m.started_us AND again.direction = 'in'
                  AND {" AND ".join(again or ["1"])})
              AND NOT EXISTS (
                SELECT 1 FROM calls AS next
                WHERE next.external_digits = m.external_digits AND next.status = 'answered'
                  AND next.started_us > m.started_us)
        """
        both = [*params, *again_params]
        # Counted by grouping, which is quicker for all of them than two seeks a missed call.
        counted, counted_params = query.where()
        found = await self._rows(
            f"""
            WITH missed AS (
                SELECT external_digits AS number, max(started_us) AS last_us FROM calls
                WHERE {" AND ".join([*counted, "direction = 'in'", "status = 'missed'"])}
                  AND external_digits IS NOT NULL
                GROUP BY external_digits
            )
            SELECT count(*) FROM missed WHERE NOT EXISTS (
                SELECT 1 FROM calls AS next
                WHERE next.external_digits = missed.number AND next.status = 'answered'
                  AND next.started_us > missed.last_us)
            """,
            counted_params,
        )
        numbers = await self._rows(
            f"SELECT m.external_digits {waiting} ORDER BY m.started_us DESC LIMIT ?", [*both, limit]
        )
        if not numbers:
            return [], found[0][0]
        marks = ", ".join("?" * len(numbers))
        rows = await self._missed_rows(
            query, f"external_digits IN ({marks})", [number for (number,) in numbers]
        )
        return [row for row in rows if not row["handled"]][:limit], found[0][0]

    async def _missed_rows(
        self, query: CallQuery, also: str = "1", also_params: Sequence[Any] = ()
    ) -> list[dict[str, Any]]:
        where, params = query.where()
        where.append(also)
        params += also_params
        # The first answered call with the number after the last missed one, found by one seek
        # in calls_number per number. DIDs repeat here; they are made distinct below.
        sql = f"""
            WITH missed AS (
                SELECT external_digits AS number, max(external_number) AS shown,
                       count(*) AS missed, min(started_us) AS first_us, max(started_us) AS last_us,
                       group_concat(did) AS dids
                FROM calls
                WHERE {" AND ".join([*where, "direction = 'in'", "status = 'missed'"])}
                  AND external_digits IS NOT NULL
                GROUP BY external_digits
            )
            SELECT number, shown, missed, first_us, last_us, dids,
                   later.started_us, later.direction, later.answered_by
            FROM missed LEFT JOIN calls AS later ON later.rowid = (
                SELECT rowid FROM calls AS next
                WHERE next.external_digits = missed.number AND next.status = 'answered'
                  AND next.started_us > missed.last_us
                ORDER BY next.started_us LIMIT 1)
            ORDER BY later.started_us IS NOT NULL, last_us DESC
        """
        rows = await self._rows(sql, params)
        report = []
        with gc_paused():
            for row in rows:
                number, shown, missed, first_us, last_us, dids, handled_us, way, by = (
                    MISSED_ROW.readable(row)
                )
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

    def _bucket_sql(
        self, query: CallQuery, by: str | None, place: tzinfo, column: str
    ) -> tuple[str, list[int], int]:
        """The SQL of a call's local day or hour (as µs on the zone's clock), its parameters,
        and the bucket's length (0: no buckets)."""
        bucket_us = {"day": DAY_US, "hour": HOUR_US}.get(by or "", 0)
        if not bucket_us:
            return "NULL", [], 0
        span = offsets(place, query.since_us or 0, query.until_us or now_us() + DAY_US)
        local, params = local_time_sql(column, span)
        return f"({local} / {bucket_us}) * {bucket_us}", params, bucket_us

    async def extensions_report(
        self, query: CallQuery, *, by: str | None = None, place: tzinfo = UTC
    ) -> list[dict[str, Any]]:
        """Per extension (and per day or hour of `place`): calls, answered, missed, ring and
        talk times. A period is the instant its local day or hour starts, in UTC."""
        where, params = query.where(table="c")
        bucket, bucket_params, bucket_us = self._bucket_sql(query, by, place, "c.started_us")
        # Talk is summed as REAL: an INTEGER sum() fails the whole report when it passes 2**63,
        # and enough legs reach that; a REAL sum is exact up to 2**53 µs (285 years).
        sql = f"""
            SELECT l.extension, {bucket} AS bucket,
                   count(DISTINCT l.call_id),
                   count(DISTINCT CASE WHEN l.answered THEN l.call_id END),
                   count(DISTINCT CASE WHEN c.status = 'missed' THEN l.call_id END),
                   avg(CASE WHEN l.answered THEN l.ring_us END),
                   sum(CASE WHEN l.answered THEN CAST(l.talk_us AS REAL) END),
                   avg(CASE WHEN l.answered THEN l.talk_us END)
            FROM legs AS l JOIN calls AS c ON c.call_id = l.call_id
            WHERE {" AND ".join([*where, "l.routing = 0", "l.extension IS NOT NULL"])}
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
            for extension, bucket_start, calls, answered, missed, ring, talk, avg_talk in (
                EXTENSIONS_ROW.readable(row) for row in rows
            )
        ]

    async def calls_by_period(
        self, query: CallQuery, *, by: str, place: tzinfo = UTC
    ) -> list[dict[str, Any]]:
        """How many calls of each status started in each day or hour of `place`: rows of the
        period's start (µs, UTC), the status and the count, by period."""
        where, params = query.where()
        quick = await self._calls_by_period_counted(query, by, place, where)
        if quick is not None:
            return quick
        bucket, bucket_params, _ = self._bucket_sql(query, by, place, "calls.started_us")
        sql = (
            f"SELECT {bucket} AS bucket, {query.status_sql()} AS now_status, count(*) "
            f"FROM calls WHERE {' AND '.join(where) or '1'} "
            "GROUP BY bucket, now_status ORDER BY bucket"
        )
        rows = await self._rows(sql, [*bucket_params, query.unknown_before_us(), *params])
        return [
            {"period_us": local_start(place, bucket_start), "status": status, "calls": count}
            for bucket_start, status, count in (PERIOD_ROW.readable(row) for row in rows)
        ]

    async def _calls_by_period_counted(
        self, query: CallQuery, by: str, place: tzinfo, where: list[str]
    ) -> list[dict[str, Any]] | None:
        """calls_by_period of a bounded time range and no other filter (the dashboard's) from
        counts of calls_status_started ranges, one a status and period: a GROUP BY of a day's
        calls sorts them all (200k calls: 180 ms, this 15 ms). None when it cannot answer: a
        filter, an unbounded range, or a status not known here (the general query counts it)."""
        since, until = query.since_us, query.until_us
        period_us = {"day": DAY_US, "hour": HOUR_US}.get(by, 0)
        if since is None or until is None or len(where) != 2 or not period_us:
            return None
        if since < 0 or until > LAST_DAY_US or until <= since:
            return None
        ranges = local_periods(place, since, until, period_us)
        if not ranges or len(ranges) > PERIODS_COUNTED:
            return None
        statuses = [s.value for s in CallStatus if s is not CallStatus.IN_PROGRESS]
        count = "SELECT count(*) FROM calls INDEXED BY calls_status_started WHERE status = ? "
        window = "AND started_us >= ? AND started_us < ?"
        parts, params = [], []
        for _, low, high in ranges:
            parts += [f"({count}{window})" for _ in statuses]
            for status in statuses:
                params += [status, low, high]
            parts.append(f"({count}{window} AND last_event_us >= ?)")  # still in progress
            parts.append(f"({count}{window} AND last_event_us < ?)")  # unknown_end by now
            cutoff = query.unknown_before_us()
            params += ["in_progress", low, high, cutoff, "in_progress", low, high, cutoff]
            parts.append("(SELECT count(*) FROM calls WHERE started_us >= ? AND started_us < ?)")
            params += [low, high]
        row = (await self._rows(f"SELECT {', '.join(parts)}", params))[0]
        names = [*statuses, "in_progress", "unknown_end"]
        width = len(names) + 1
        totals: dict[int, dict[str, int]] = {}
        for index, (period, _, _) in enumerate(ranges):
            counts = row[index * width : (index + 1) * width]
            if sum(counts[:-1]) != counts[-1]:
                return None  # a status this receiver does not know
            bucket = totals.setdefault(period, dict.fromkeys(names, 0))
            for name, found in zip(names, counts[:-1], strict=True):
                bucket[name] += found
        return [
            {"period_us": local_start(place, period), "status": status, "calls": found}
            for period, bucket in totals.items()
            for status, found in sorted(bucket.items())
            if found
        ]

    # The live feed (web/stream.py): what is new since an event id.

    async def events_after(self, event_id: int, *, limit: int) -> list[dict[str, Any]]:
        """The JSON records of the events stored after `event_id`, by id, at most `limit`."""
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?"
        return [event_record(row) for row in await self._rows(sql, [event_id, limit])]

    async def calls_of_events(
        self, after_event: int, through_event: int, *, now_us: int, unknown_after_us: int
    ) -> list[dict[str, Any]]:
        """The JSON records (no legs) of the calls that have an event with an id after
        `after_event`, up to `through_event`, by start time."""
        query = CallQuery(now_us=now_us, unknown_after_us=unknown_after_us)
        sql = (
            f"SELECT {call_fields_sql(query.status_sql())} FROM calls WHERE call_id IN "
            "(SELECT call_id FROM events WHERE id > ? AND id <= ?) ORDER BY started_us, call_id"
        )
        rows = await self._rows(sql, [query.unknown_before_us(), after_event, through_event])
        return [call_json(call_from_row(row), with_details=False) for row in rows]

    async def list_rejects(self, *, limit: int = 100, before: int | None = None) -> Page:
        """Rejects, newest first; `next` is the id to pass as `before` for older ones."""
        assert self._reader is not None
        clause = "WHERE id < ?" if before is not None else ""
        params = [before] if before is not None else []
        sql = f"SELECT {REJECT_COLUMNS} FROM rejects {clause} ORDER BY id DESC LIMIT ?"
        rows = await self._rows(sql, [*params, limit + 1])
        rejects = [reject_from_row(row) for row in rows[:limit]]
        more = len(rows) > limit
        return Page(rejects, str(rejects[-1].id) if more else None)
