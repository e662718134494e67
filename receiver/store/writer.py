"""The write connection, and where it runs: a thread of this process, or a process of its own.

`Writer` does every write (a group of events in one transaction, a batch of calls rebuilt)
with a plain sqlite3 connection. The Store calls it through a host, one call at a time:

- `ThreadHost` runs it on a thread: no start-up cost (commands, tests).
- `ProcessHost` runs it in a child process (`serve()`), for the server and for a replay. The
  writer's Python work (rows, JSON, SQLite's own calls) then has a GIL and a core of its own
  instead of taking turns with the event loop that parses requests; under load those turns
  cost more CPU than the work itself. Calls and results go over the child's stdin and stdout
  as pickled frames. The child ignores SIGINT and SIGTERM (the server drains, then closes it)
  and exits when its stdin closes, so a killed server never leaves it behind.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import pickle
import signal
import sqlite3
import struct
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from receiver.calls import CALLS_VERSION, Call, build_call
from receiver.event import Event, Reject, iso_time, now_us
from receiver.forward.messages import (
    JSON,
    CallBefore,
    Message,
    call_body,
    call_messages,
    event_body,
    event_messages,
)
from receiver.history import call_from_history
from receiver.store import outbox
from receiver.store.outbox import Delivery, Forwarding, Outcome, Trimmed
from receiver.store.queries import CallQuery, Reparsed, Stored
from receiver.store.reparse import Reparse
from receiver.store.schema import (
    CALL_COLUMNS,
    CALL_EVENTS_SQL,
    EVENT_COLUMNS,
    EVENT_COLUMNS_BUT_RAW,
    INSERT_CALL,
    INSERT_LEG,
    LEG_COLUMNS,
    LEG_FIELD_COLUMNS,
    REJECT_COLUMNS,
    ROWS_AT_ONCE,
    TRIM_REJECTS_BY_BYTES,
    PreparedEvent,
    call_fields_sql,
    call_from_row,
    call_row,
    connect_pragmas,
    event_from_row,
    event_row,
    insert_events,
    leg_rows,
    migrate,
    read_tolerantly,
    reject_row,
    use_wal,
)
from receiver.store.upkeep import PruneStep, calls_ended_before, prune_step, vacuum_step

log = logging.getLogger("receiver.store")

# The WAL's size, in pages, at which SQLite checkpoints once the disk has been found full
# (its default, 1,000 pages, is 4 MB): small enough to leave room for the database to grow.
SMALL_WAL_PAGES = 64


@contextlib.contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT; all of it or, raising, none of it (a failed COMMIT too)."""
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
        db.execute("COMMIT")
    except Exception:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def unsynced(db: sqlite3.Connection) -> Iterator[None]:
    """Commits not synced to disk, for derived data (the calls): a power loss may undo the
    last of them, never one synced before, and the next synced commit (a group of events)
    syncs them too, as the WAL is written in order. A batch of calls and its mark of how far
    they are built go in one transaction, so an undone batch is simply built again; and a
    sync per batch of 200 call events was most of the time call building took."""
    db.execute("PRAGMA synchronous=NORMAL")
    try:
        yield
    finally:
        db.execute("PRAGMA synchronous=FULL")


# Whether the call events of a call are stored, its CallID (?1) in lower case or upper case.
HAS_EVENTS = f"SELECT 1 FROM events WHERE call_id IN (?1, upper(?1)) AND {CALL_EVENTS_SQL} LIMIT 1"
HAS_EVENTS_OF_H = (
    f"SELECT 1 FROM events WHERE call_id IN (h.call_id, upper(h.call_id)) AND {CALL_EVENTS_SQL}"
)
# The id of the next event: after the highest stored, and after any retired (retired_ids).
NEXT_ID = "SELECT max(coalesce((SELECT max(id) FROM events), 0), (SELECT top FROM retired_ids)) + 1"


class Writer:
    """The one write connection of a database, and every write made with it."""

    def __init__(
        self,
        path: Path,
        rejects_max: int,
        rejects_max_bytes: int,
        forwarding: Forwarding | None = None,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rejects_max = rejects_max
        self.rejects_max_bytes = rejects_max_bytes
        self.short_of_space = False  # a commit failed for space, and no checkpoint has run since
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # A group's INSERT keeps the pages it changes in a statement journal (to undo just it
        # on an error); past 64 KiB SQLite moved that to a new temporary file, dozens a second.
        self.db.executescript(f"{connect_pragmas()} PRAGMA temp_store=MEMORY;")
        use_wal(self.db)
        migrate(self.db)
        self.settle_us = outbox.DEFAULT_SETTLE_US
        if forwarding is not None:  # a server's: its routes become the file's
            self.settle_us = forwarding.settle_us
            if outbox.routes_differ(self.db, forwarding.routes):  # no write lock taken else
                with write_transaction(self.db):
                    outbox.set_routes(self.db, forwarding.routes)
        self.load_routes()

    def run(self, method: str, *args: Any) -> Any:
        """self.method(*args), as the hosts call it; once more where stored text was not
        UTF-8 (read_tolerantly). Each method reads within the transaction it writes in, so
        what it wrote before the error was rolled back."""
        try:
            return getattr(self, method)(*args)
        except sqlite3.OperationalError as error:
            if not read_tolerantly(self.db, error):
                raise
        return getattr(self, method)(*args)

    def load_routes(self) -> None:
        """The routes the outbox is written for (outbox.py): those of the file, not disabled."""
        self.routes = outbox.enabled_routes(self.db)
        self.call_routes = [route for route in self.routes if route.wants_calls]

    def close(self) -> None:
        self.db.close()

    def write_group(self, items: list[Event | Reject | PreparedEvent]) -> list[Stored | None]:
        """Store a group in one transaction; all of it or, raising, none of it.

        A commit that fails for want of space is tried once more after a checkpoint; after
        one has, each commit is followed by a checkpoint until one succeeds, and the WAL is
        kept small from then on (see checkpoint()).
        """
        try:
            with write_transaction(self.db):
                results = self._insert_group(items)
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            self.short_of_space = True
            self.db.execute(f"PRAGMA wal_autocheckpoint={SMALL_WAL_PAGES}")
            if not self.checkpoint():
                raise
            with write_transaction(self.db):
                results = self._insert_group(items)
        if self.short_of_space:
            self.checkpoint()
        return results

    def checkpoint(self) -> bool:
        """Copy the WAL into the database and empty it; whether that was done.

        SQLite checkpoints by itself once the WAL passes 1,000 pages (4 MB); on a disk with less
        room than that, the WAL filled it and never shrank, so once space was freed a few commits
        filled it again, and then a checkpoint had no room to grow the database. So after a
        commit fails for space, one is tried after each commit, while there is room, until done,
        and SQLite's own checkpoints come at SMALL_WAL_PAGES from then on.
        """
        try:
            busy, _, _ = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError:  # no room for the database to grow yet
            return False
        self.short_of_space = bool(busy)
        return not busy

    def _insert_group(self, items: list[Event | Reject | PreparedEvent]) -> list[Stored | None]:
        db = self.db
        keys = [dedup_key_of(item) for item in items]
        known: dict[bytes, int] = {}
        lookup = [key for key in keys if key]
        if lookup:
            marks = ", ".join("?" * len(lookup))
            sql = f"SELECT dedup_key, id FROM events WHERE dedup_key IN ({marks})"
            known.update((bytes(found), event_id) for found, event_id in db.execute(sql, lookup))
        # Read under the write lock: another process (a replay, say) may write here too.
        next_id = db.execute(NEXT_ID).fetchone()[0]
        rows, repeats = [], []
        messages: list[Message] = []
        moment = now_us() if self.routes else 0
        results: list[Stored | None] = []
        for item, key in zip(items, keys, strict=True):
            if isinstance(item, Reject):
                results.append(None)
                continue
            if key in known:
                results.append(Stored(known[key], True))
                repeats.append((known[key],))
                continue
            event_id = known[key] = next_id
            next_id += 1
            if isinstance(item, PreparedEvent):
                row = item.row(event_id)
                event = event_from_row(row[:-1]) if self.routes else None
            else:
                row, event = event_row(item, event_id, key), item
            rows.append(row)
            results.append(Stored(event_id, False))
            if event is not None and self.routes:  # its messages are in the commit storing it
                messages += event_messages(event, event_id, self.routes, moment)
        # Few statements, each one step: SQLite's work goes in a few calls, not one per row.
        for start in range(0, len(rows), ROWS_AT_ONCE):
            chunk = rows[start : start + ROWS_AT_ONCE]
            db.execute(insert_events(len(chunk)), [value for row in chunk for value in row])
        db.executemany("UPDATE events SET duplicates = duplicates + 1 WHERE id = ?", repeats)
        rejects = [reject_row(item) for item in items if isinstance(item, Reject)]
        if rejects:
            marks = ", ".join("?" * (REJECT_COLUMNS.count(",") + 1))
            db.executemany(f"INSERT INTO rejects ({REJECT_COLUMNS}) VALUES ({marks})", rejects)
            db.execute(
                "DELETE FROM rejects WHERE id <= (SELECT max(id) FROM rejects) - ?",
                (self.rejects_max,),
            )
            db.execute(TRIM_REJECTS_BY_BYTES, (self.rejects_max_bytes,))
        if messages:
            outbox.insert_messages(db, messages, moment)
        return results

    def build_some_calls(self, limit: int, count_changed: bool = False) -> tuple[int, int]:
        """Rebuild the calls of the next `limit` call events not yet built by this CALLS_VERSION.

        Calls built by another version are built again from the first event on (the rows stay
        until each is replaced); calls built by a newer version are left to it. Returns how many
        call events it read (0: the calls are up to date) and, with `count_changed`, how many
        calls of a rebuild came out other than they were (reading them first). All under the
        write lock, so an event another process stores meanwhile
        is not skipped, and two processes building at once take turns, batch by batch.
        """
        db = self.db
        newest = "SELECT coalesce(max(id), 0) FROM events"
        done_to, version, top = db.execute(
            f"SELECT events_to, version, ({newest}) FROM calls_built"
        ).fetchone()
        if version > CALLS_VERSION or (version == CALLS_VERSION and done_to == top):
            return 0, 0  # up to date (or not ours to build): no need to wait for the write lock
        with unsynced(db), write_transaction(db):
            done_to, version, rebuild_to = db.execute(
                "SELECT events_to, version, rebuild_to FROM calls_built"
            ).fetchone()
            if version < CALLS_VERSION:
                done_to = 0
                db.execute(
                    f"UPDATE calls_built SET events_to = 0, version = ?, rebuild_to = ({newest})",
                    (CALLS_VERSION,),
                )
                rebuild_to = top
            read = db.execute(
                f"SELECT id, call_id FROM events WHERE id > ? AND call_id IS NOT NULL "
                f"AND {CALL_EVENTS_SQL} ORDER BY id LIMIT ?",
                (done_to, limit),
            ).fetchall()
            # Fewer than the limit: that was all of them, the calls are up to the newest event.
            top = db.execute(newest).fetchone()[0] if len(read) < limit else read[-1][0]
            if top != done_to:
                db.execute("UPDATE calls_built SET events_to = ?", (top,))
            if done_to == 0:  # a build of every call: those filled from the history too
                self._build_history_calls(None)
            ids = sorted({call_id for _, call_id in read})
            # Only a rebuild of every call counts those that changed: new events change theirs.
            compare = count_changed and done_to < rebuild_to
            changed = self._rebuild_calls(ids, compare=compare) if read else 0
        return len(read), changed

    def rebuild_all_calls(self) -> int:
        """Have every call built again from its events, from the first event on (by
        build_some_calls); returns the newest event's id, which the rebuild goes up to."""
        with write_transaction(self.db):
            self.db.execute(
                "UPDATE calls_built SET events_to = 0, version = ?, "
                "rebuild_to = (SELECT coalesce(max(id), 0) FROM events)",
                (CALLS_VERSION,),
            )
            rebuild_to: int = self.db.execute("SELECT rebuild_to FROM calls_built").fetchone()[0]
        return rebuild_to

    def reparse_some_events(self, after: int, up_to: int, limit: int) -> Reparsed:
        """Parse again the next `limit` stored events of ids over `after` and up to `up_to`,
        under the write lock (reparse.py); `last_id` of the result is where the next batch
        starts (`up_to`: done)."""
        with write_transaction(self.db):
            return Reparse(self.db).batch(after, up_to, limit)

    def probe(self) -> None:
        """Raise unless this connection can take the write lock (the file is writable)."""
        with write_transaction(self.db):
            pass

    def prune_some_events(
        self, before_us: int, after: tuple[int, int], limit: int, keep_calls: bool, delete: bool
    ) -> PruneStep:
        """One batch of a prune (upkeep.prune_step), under the write lock when it deletes."""
        if not delete:
            return prune_step(self.db, before_us, after, limit, keep_calls=keep_calls, delete=False)
        with write_transaction(self.db):
            return prune_step(self.db, before_us, after, limit, keep_calls=keep_calls, delete=True)

    def count_prunable_calls(self, before_us: int) -> int:
        return calls_ended_before(self.db, before_us)

    def vacuum_some(self) -> tuple[int, int] | None:
        """Give some free pages back to the file system (upkeep.vacuum_step), under the write
        lock taken first (a read turned into a write mid-way fails beside another process's
        commits)."""
        with write_transaction(self.db):
            return vacuum_step(self.db)

    def _rebuild_calls(self, ids: list[str], *, compare: bool) -> int:
        """Build these calls from their events; returns how many came out other than stored
        (with `compare`; else 0)."""
        db = self.db
        marks = ", ".join("?" * len(ids))
        by_call: dict[str, list[Event]] = {}
        sql = f"SELECT {EVENT_COLUMNS_BUT_RAW} FROM events WHERE {CALL_EVENTS_SQL} AND call_id IN "
        for row in db.execute(f"{sql}({marks})", ids):
            event = event_from_row(row)
            by_call.setdefault(event.call_id or "", []).append(event)
        calls = [build_call(e, now_us=0, unknown_after_us=None) for e in by_call.values()]
        rows = [(call_row(call), leg_rows(call)) for call in calls]
        if self.call_routes:  # their messages in the transaction that changes the calls
            self._call_messages(calls, marks, ids)
        changed = 0
        if compare:
            before: dict[str, list[tuple[Any, ...]]] = {}
            calls_sql = f"SELECT {CALL_COLUMNS} FROM calls WHERE call_id IN ({marks})"
            for row in db.execute(calls_sql, ids):
                before[row[0]] = [tuple(row)]
            legs_sql = f"SELECT {LEG_COLUMNS} FROM legs WHERE call_id IN ({marks}) ORDER BY rowid"
            for row in db.execute(legs_sql, ids):
                before.setdefault(row[0], []).append(tuple(row))
            changed = sum(before.get(row[0]) != [row, *legs] for row, legs in rows)
        db.execute(f"DELETE FROM legs WHERE call_id IN ({marks})", ids)
        db.executemany(INSERT_CALL, [row for row, _ in rows])
        db.executemany(INSERT_LEG, [leg for _, legs in rows for leg in legs])
        # A call filled from the history is kept under its CallID in lower case: should its
        # events carry it otherwise, they win all the same.
        other_case = [c.call_id.lower() for c in calls if c.call_id != c.call_id.lower()]
        if other_case:
            marks = ", ".join("?" * len(other_case))
            db.execute(f"DELETE FROM legs WHERE call_id IN ({marks})", other_case)
            db.execute(
                f"DELETE FROM calls WHERE source = 'call_history' AND call_id IN ({marks})",
                other_case,
            )
        return changed

    def _call_messages(self, calls: list[Any], marks: str, ids: list[str]) -> None:
        """Write the messages of these calls' changes (messages.call_messages) to the outbox,
        before their new rows replace the old."""
        sql = f"SELECT call_id, status, answered_us, ended_us FROM calls WHERE call_id IN ({marks})"
        before = {row[0]: CallBefore(*row[1:]) for row in self.db.execute(sql, ids)}
        moment = now_us()
        messages = [
            message
            for call in calls
            for message in call_messages(
                before.get(call.call_id), call, self.call_routes, moment, self.settle_us
            )
        ]
        outbox.insert_messages(self.db, messages, moment)

    # The outbox (outbox.py): the delivery worker's claims and outcomes, and the commands'.

    def forward_step(
        self,
        destination: str,
        holder: str,
        outcomes: list[Outcome],
        now: int,
        lease_until_us: int,
        limit: int,
    ) -> list[Delivery]:
        """Record the outcomes of attempts, then lease up to `limit` more messages, in one
        transaction (unsynced: an outcome a power loss undoes means a message sent again)."""
        with unsynced(self.db), write_transaction(self.db):
            outbox.finish(self.db, outcomes, holder)
            claimed = outbox.claim(self.db, destination, holder, now, lease_until_us, limit)
            claimed = self._with_bodies(claimed, now)
            # A destination disabled (a 410), or enabled again by another process (`receiver
            # forward retry`): the next events' messages follow. Read within the transaction,
            # so that all of it is undone if the reading fails (run() may run it again).
            self.load_routes()
        return claimed

    def _with_bodies(self, claimed: list[Delivery], now: int) -> list[Delivery]:
        return with_bodies(self.db, claimed, now)

    def forward_release(self, holder: str) -> int:
        """Give back the leases `holder` has (a server starting again where it ran before)."""
        with write_transaction(self.db):
            return self.db.execute(
                "UPDATE outbox SET lease_holder = NULL, lease_until_us = 0 WHERE lease_holder = ?",
                (holder,),
            ).rowcount

    def forward_trim(self, excess: int) -> Trimmed:
        with write_transaction(self.db):
            return outbox.trim(self.db, excess)

    def forward_retry(self, destination: str | None, since_us: int | None) -> int:
        with write_transaction(self.db):
            count = outbox.retry(self.db, destination, since_us, now_us())
            self.load_routes()  # within: all undone if the reading fails (see forward_step)
        return count

    def forward_replay(
        self, after: int, since_us: int, until_us: int, destination: str | None, limit: int
    ) -> tuple[int, int]:
        """Write `event.received` again for the next `limit` events (by id, after `after`)
        received from `since_us` to `until_us`, to the routes (or the one destination) that
        take them; returns the last id looked at (`after` when done) and how many messages."""
        routes = [r for r in self.routes if destination is None or r.url == destination]
        with write_transaction(self.db):
            found = self.db.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
            moment = now_us()
            messages = []
            for row in found:
                event = event_from_row(row)
                if since_us <= event.received_at_us < until_us and event.id is not None:
                    messages += event_messages(event, event.id, routes, moment)
            outbox.again(self.db, messages, moment)
        return (found[-1][0] if found else after), len(messages)

    def add_history_calls(self, records: list[tuple[str, str]], fetched_at_us: int) -> list[str]:
        """Keep the history's records (call id in lower case, the record's JSON) of the calls
        none of whose events we have, and build their calls; one outcome per record:
        `matched` (we have its events: nothing kept), `filled`, or `known` (kept before; the
        record is replaced by this one). Under the write lock, so that an event stored meanwhile
        is seen."""
        outcomes = []
        with write_transaction(self.db):
            for call_id, record in records:
                if self.db.execute(HAS_EVENTS, (call_id,)).fetchone():
                    outcomes.append("matched")
                    continue
                known = self.db.execute(
                    "SELECT 1 FROM history_calls WHERE call_id = ?", (call_id,)
                ).fetchone()
                self.db.execute(
                    "INSERT OR REPLACE INTO history_calls (call_id, record, fetched_at_us) "
                    "VALUES (?, ?, ?)",
                    (call_id, record, fetched_at_us),
                )
                outcomes.append("known" if known else "filled")
            kept = zip(records, outcomes, strict=True)
            self._build_history_calls([call_id for (call_id, _), o in kept if o != "matched"])
        return outcomes

    def _build_history_calls(self, ids: list[str] | None) -> None:
        """Build the calls of these history records (None: all), but of those whose events
        we have: the events win."""
        db = self.db
        sql = f"SELECT call_id, record FROM history_calls AS h WHERE NOT EXISTS ({HAS_EVENTS_OF_H})"
        params: list[str] = []
        if ids is not None:
            if not ids:
                return
            sql += f" AND call_id IN ({', '.join('?' * len(ids))})"
            params = ids
        calls = []
        for call_id, record in db.execute(sql, params).fetchall():
            try:
                calls.append(call_from_history(json.loads(record)))
            except (ValueError, TypeError, AttributeError) as problem:
                log.error("the history record of call %s cannot be read: %s", call_id, problem)
        for start in range(0, len(calls), 500):
            some = calls[start : start + 500]
            marks = ", ".join("?" * len(some))
            db.execute(f"DELETE FROM legs WHERE call_id IN ({marks})", [c.call_id for c in some])
            db.executemany(INSERT_CALL, [call_row(call) for call in some])
            db.executemany(INSERT_LEG, [leg for call in some for leg in leg_rows(call)])

    def claim_reconcile(self, holder: str, now_us: int, until_us: int) -> str | None:
        """Take (or keep) the reconciler's lease until `until_us`: None when it is ours now,
        else who holds it and until when."""
        with write_transaction(self.db):
            held, until = self.db.execute("SELECT holder, until_us FROM reconcile_lease").fetchone()
            if held not in ("", holder) and until > now_us:
                return f"{held} (until {iso_time(until)})"
            self.db.execute(
                "UPDATE reconcile_lease SET holder = ?, until_us = ?", (holder, until_us)
            )
        return None

    def release_reconcile(self, holder: str) -> None:
        """Give the lease back, if it is still ours."""
        with write_transaction(self.db):
            self.db.execute(
                "UPDATE reconcile_lease SET holder = '', until_us = 0 WHERE holder = ?", (holder,)
            )


class ThreadHost:
    """Runs a Writer on a thread of this process."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="receiver-writer")
        self._writer: Writer | None = None

    async def start(
        self,
        path: Path,
        rejects_max: int,
        rejects_max_bytes: int,
        forwarding: Forwarding | None = None,
    ) -> None:
        self._writer = await self._run(Writer, path, rejects_max, rejects_max_bytes, forwarding)

    def alive(self) -> bool:
        return self._writer is not None

    async def call(self, method: str, *args: Any) -> Any:
        """Writer.method(*args), on the writer thread."""
        assert self._writer is not None
        return await self._run(self._writer.run, method, *args)

    async def stop(self) -> None:
        if self._writer is not None:
            await self._run(self._writer.close)
            self._writer = None
        self._thread.shutdown()

    async def _run(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)


FRAME = struct.Struct("!I")  # each frame: its length, then a pickle


class WriterGone(RuntimeError):
    """The writer process ended, so nothing more can be stored."""


class ProcessHost:
    """Runs a Writer in a child process; calls and results go as frames over its stdin/stdout.

    Calls go out at once and their results come back in order, one future each. If the process
    dies, the calls waiting on it fail (their deliveries get 503s) and the next call starts a new
    one.
    """

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._reader: asyncio.Task[None] | None = None
        self._gone: WriterGone | None = None
        self._started_with: tuple[Path, int, int, Forwarding | None] | None = None
        self._restarting = asyncio.Lock()

    async def start(
        self,
        path: Path,
        rejects_max: int,
        rejects_max_bytes: int,
        forwarding: Forwarding | None = None,
    ) -> None:
        self._started_with = (path, rejects_max, rejects_max_bytes, forwarding)
        self._gone = None
        self._process = await asyncio.create_subprocess_exec(
            *writer_command(path, rejects_max, rejects_max_bytes, forwarding),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self._process.stdin is not None
        widen(self._process.stdin.transport.get_extra_info("pipe"))
        self._reader = asyncio.create_task(self._read_results(), name="receiver-writer-results")
        await self.call("ready")  # raises what opening the database raised

    def alive(self) -> bool:
        """Whether the writer process runs (a dead one is started again by the next call)."""
        return self._process is not None and self._gone is None

    async def call(self, method: str, *args: Any) -> Any:
        """Writer.method(*args), in the writer process."""
        assert self._process is not None and self._process.stdin is not None
        waited = 0
        while self._gone is None and self._process.stdin.is_closing():
            # The process ended and its pipe closed, but its reader has not said so yet: wait
            # for it, then give this call to the new process (it was never sent).
            if waited == 500:  # 5 s
                raise WriterGone("the writer process's pipe closed")
            waited += 1
            await asyncio.sleep(0.01)
        if self._gone is not None:
            await self._restart()
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(frame((method, args)))
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        return await future

    async def _restart(self) -> None:
        async with self._restarting:
            if self._gone is None:
                return  # another call has started the new one
            assert self._started_with is not None
            log.error("%s; starting a new one", self._gone)
            await self.start(*self._started_with)

    async def _read_results(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        stdout = self._process.stdout
        try:
            while True:
                (size,) = FRAME.unpack(await stdout.readexactly(FRAME.size))
                ok, value = pickle.loads(await stdout.readexactly(size))
                future = self._waiting.popleft()
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError):
            code = await self._process.wait()
            self._gone = WriterGone(f"the writer process ended (exit code {code})")
            while self._waiting:
                future = self._waiting.popleft()
                if not future.done():
                    future.set_exception(self._gone)

    async def stop(self) -> None:
        if self._process is None:
            return
        if self._gone is None:
            with contextlib.suppress(WriterGone):
                await self.call("close")
        assert self._process.stdin is not None
        self._process.stdin.close()
        await self._process.wait()
        if self._reader is not None:
            await self._reader
        self._process = None


def dedup_key_of(item: Event | Reject | PreparedEvent) -> bytes:
    """The de-dup key of an item of a group; a reject has none."""
    if isinstance(item, Reject):
        return b""
    return item.key if isinstance(item, PreparedEvent) else item.dedup_key()


def with_bodies(
    db: Any, claimed: list[Delivery], now: int, legs_order: str = "rowid"
) -> list[Delivery]:
    """The messages with their bodies, made from their events and calls as stored now
    (messages.py); one whose event or call is gone (pruned) is dead, saying so. `db` is a
    sqlite3 connection or pg_dialect.SqliteLike; `legs_order` keeps the legs as stored."""
    events = sorted({d.event_id for d in claimed if not d.body and d.event_id is not None})
    calls = sorted({d.call_id for d in claimed if not d.body and d.event_id is None and d.call_id})
    event_rows: dict[int, Any] = {}
    if events:
        marks = ", ".join("?" * len(events))
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE id IN ({marks})"
        event_rows = {row[0]: row for row in db.execute(sql, events)}
    found_calls: dict[str, Call] = {}
    if calls:
        query = CallQuery(now_us=now)
        marks = ", ".join("?" * len(calls))
        fields = call_fields_sql(query.status_sql())
        sql = f"SELECT {fields} FROM calls WHERE call_id IN ({marks})"
        legs: dict[str, list[Any]] = {}
        legs_sql = (
            f"SELECT call_id, {LEG_FIELD_COLUMNS} FROM legs WHERE call_id IN ({marks}) "
            f"ORDER BY {legs_order}"
        )
        for row in db.execute(legs_sql, calls):
            legs.setdefault(row[0], []).append(row[1:])
        for row in db.execute(sql, [query.unknown_before_us(), *calls]):
            found_calls[row[0]] = call_from_row(row, legs.get(row[0], ()))
    out, gone = [], []
    for d in claimed:
        if d.body:
            out.append(d)
        elif d.event_id is not None and d.event_id in event_rows:
            row = event_rows[d.event_id]
            kind, body = event_body(event_from_row(row), row, d.content_type, d.created_us)
            out.append(dataclasses.replace(d, content_type=kind, body=body))
        elif d.event_id is None and d.call_id in found_calls:
            body = call_body(found_calls[d.call_id], d.type, d.created_us)
            out.append(dataclasses.replace(d, content_type=JSON, body=body))
        else:
            gone.append(d.id)
    if gone:
        db.executemany(
            "UPDATE outbox SET status = 'dead', last_error = ?, lease_holder = NULL, "
            "lease_until_us = 0 WHERE id = ?",
            [("its event or call was deleted (a prune) before it was sent", i) for i in gone],
        )
    return out


def writer_command(
    path: Path, rejects_max: int, rejects_max_bytes: int, forwarding: Forwarding | None = None
) -> list[str]:
    """The command line of a writer process: serve() with its arguments."""
    program = "import sys, receiver.store.writer as w; w.serve(sys.argv[1:])"
    limits = [str(rejects_max), str(rejects_max_bytes)]
    routes = [forwarding.text()] if forwarding is not None else []
    return [sys.executable, "-c", program, str(path), *limits, *routes]


PIPE_BYTES = 1 << 20  # Linux's largest pipe for a process without privileges


def widen(pipe: Any) -> None:
    """Make the pipe to the writer hold most of a group (a replay's 2,000 events pickle to about
    1.6 MB, a server's 500 to 400 KB).

    What does not fit in the pipe at once stays in this process's buffer until its event loop
    runs again: with Linux's 64 KB, a replay's group went over a piece at a time, the writer
    waiting between the pieces while the replay parsed. Under uvloop (the server's loop) the
    channel is a socket pair, not a pipe, and stays as it is; so where the system allows no
    more.
    """
    # No fcntl or F_SETPIPE_SZ (not Linux), no pipe (uvloop), or a lower limit: left as it is.
    with contextlib.suppress(ImportError, AttributeError, OSError):
        import fcntl

        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def read_frame(channel: BinaryIO) -> Any:
    head = channel.read(FRAME.size)
    if len(head) < FRAME.size:
        return None  # the server closed our stdin: it is gone or done
    (size,) = FRAME.unpack(head)
    return pickle.loads(channel.read(size))


def frame(value: Any) -> bytes:
    """A value as a frame: its pickle's length, then the pickle."""
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(len(data)) + data


def write_frame(fd: int, value: Any) -> None:
    """One frame, written straight to the file descriptor: nothing is left in a buffer to fail
    again at exit if the server has gone."""
    write_all(fd, frame(value))


def write_all(fd: int, data: bytes) -> None:
    """All of `data`, straight to the file descriptor."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def serve(argv: list[str]) -> None:
    """The writer process (argv: database path, rejects_max, rejects_max_bytes, and the
    forwarding as JSON if any): run the calls that come on stdin, answer each on stdout."""
    path, rejects_max, rejects_max_bytes = Path(argv[0]), int(argv[1]), int(argv[2])
    forwarding = Forwarding.from_text(argv[3]) if len(argv) > 3 else None
    # The server decides when to stop: a Ctrl-C to the terminal's process group reaches us too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    calls, results = sys.stdin.buffer, os.dup(1)
    os.dup2(2, 1)  # a stray print goes to stderr, not into the results
    try:
        writer = Writer(path, rejects_max, rejects_max_bytes, forwarding)
    except Exception as error:  # the answer to the server's first call ("ready"), then exit
        if read_frame(calls) is not None:
            write_frame(results, (False, picklable(error)))
        return
    try:
        while (call := read_frame(calls)) is not None:
            method, args = call
            try:
                answer = (True, None if method == "ready" else writer.run(method, *args))
            except Exception as error:
                answer = (False, picklable(error))
            write_frame(results, answer)
            if method == "close":
                return
    except BrokenPipeError:
        pass  # the server died while we stored: what is committed stays, nobody to tell
    finally:
        writer.close()


def picklable(error: Exception) -> Exception:
    """The error itself if it survives pickling, else a RuntimeError with its message."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error
