"""The NDJSON export of `receiver serve`, made by worker processes a page each, sent in order.

An export line costs about 10 µs of Python (reading an event's 34 columns, its record, orjson),
and a process runs Python on one core at a time: one process exports at most ~90,000 events/s,
however many cores the machine has. Here the server only finds where each page ends (a walk of
the time index, in SQLite) and hands the page to one of EXPORT_WORKERS processes, which read
its rows and make its lines (event_lines, the one serialiser); the pages come back and are sent
in order, PAGES_AHEAD of them under way at a time.

A worker reads its rows with APSW rather than the standard library's sqlite3, in half the time
(2.0 µs an event against 4.5, docs/performance.md): half of what a worker did was sqlite3's
fetch. Most of the gain is APSW's own leaner fetch (and its newer SQLite, which it brings);
about 0.5 µs is its connection opened without a mutex, which sqlite3 takes for every value it
reads (a worker reads from one thread). Both SQLites read the same file, WAL and locks alike.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import ctypes
import gc
import multiprocessing
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import apsw

from receiver.event import event_lines
from receiver.store.queries import EventQuery, event_cursor, event_page_sql, sql_digits
from receiver.store.schema import EVENT_COLUMNS, connect_pragmas, read_text_tolerantly

EXPORT_WORKERS = 2  # processes making pages: one a core here, the server's work is small
# Events in a worker's page: the server's work is mostly a page's (finding its end, taking it
# from the pipe, handing it on), so pages of 4,000 (5 MB) cost it 1.7 µs an event where pages
# of 1,000 cost 2.4 (bench/query.py), at 20 MB of pages under way.
WORKER_PAGE = 4000
PAGES_AHEAD = 2 * EXPORT_WORKERS  # pages asked for before the first one still awaited is sent
WATCH_SECONDS = 1.0  # how often a worker checks that its server is still there
# glibc's mallopt(3) parameters, and what a worker sets them to (keep_freed_memory).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # the most glibc takes: a page's buffers are ~5 MB each
TRIM_THRESHOLD = 64 * 1024 * 1024

# A worker process's own connection to the database, opened once as the process starts, and
# the one it reads with instead once that one meets text that is not UTF-8 (read_with_sqlite3).
worker_connection: apsw.Connection | None = None
tolerant_connection: sqlite3.Connection | None = None
worker_path = ""


def open_worker(path: str, server_pid: int) -> None:
    """The initializer of a worker process: its connection, set up as the server's reader, and
    a watch that ends the process once the server is gone."""
    global worker_connection, worker_path
    threading.Thread(target=watch_server, args=(server_pid,), daemon=True).start()
    gc.disable()  # a worker makes pages of lines, which hold no reference cycles to collect
    keep_freed_memory()
    worker_path = path
    # no mutex: only this process's main thread uses it (watch_server reads no database)
    flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_NOMUTEX
    worker_connection = apsw.Connection(path, flags=flags)
    worker_connection.execute(connect_pragmas()).fetchall()  # each statement runs as it is read
    by_arguments: Any = sql_digits  # APSW types a function as taking any number of values
    worker_connection.create_scalar_function("digits", by_arguments, 1, deterministic=True)


def keep_freed_memory() -> None:
    """Have glibc keep the memory a page frees for the next page, not give it back.

    A page's lines, their copy and its pickle for the pipe are ~5 MB each: by default glibc
    maps each afresh and unmaps it once freed, and the next page touches every 4 KB of new
    memory again, a page fault each: about one an event, 10% of an export's time where a
    fault costs 3.5 µs (docs/performance.md). The server, which reads each page from the pipe
    and unpickles it, sets it too at its first export: it then spent 12% less CPU on one. The
    setting lasts as long as the process: up to 64 MB freed may stay mapped to it. Other C
    libraries keep their own ways.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (TypeError: Windows): no mallopt
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def watch_server(server_pid: int) -> None:
    """End this worker once its server has died: a server killed with SIGKILL cannot shut its
    pool down, and its workers, waiting for pages that never come, would stay for ever."""
    while os.getppid() == server_pid:
        time.sleep(WATCH_SECONDS)
    os._exit(0)


def page_lines(sql: str, params: list[Any]) -> bytes:
    """In a worker: the NDJSON lines of the events `sql` selects."""
    if tolerant_connection is not None:
        return event_lines(tolerant_connection.execute(sql, params).fetchall())
    assert worker_connection is not None
    try:
        rows: list[Any] = worker_connection.execute(sql, params).fetchall()
    except UnicodeDecodeError:  # stored text that is not UTF-8, which APSW reads as nothing else
        read_with_sqlite3()
        return page_lines(sql, params)
    return event_lines(rows)


def read_with_sqlite3() -> None:
    """In a worker that found text that is not UTF-8 (a file edited by hand or damaged): from
    now on read by sqlite3, with such text as bytes, for event_lines to flag. APSW's connection
    is closed first: two SQLites holding one file in one process would undo each other's locks
    (each process has one set of POSIX locks)."""
    global worker_connection, tolerant_connection
    assert worker_connection is not None
    worker_connection.close()
    worker_connection = None
    tolerant_connection = sqlite3.connect(worker_path, isolation_level=None)
    tolerant_connection.executescript(connect_pragmas())
    tolerant_connection.create_function("digits", 1, sql_digits, deterministic=True)
    read_text_tolerantly(tolerant_connection)


def page_select(
    query: EventQuery, after: str | None, end: str | None, size: int
) -> tuple[str, list[Any]]:
    """The SELECT of a page's rows: from `after` through `end` as page_end() found it (or, for
    the last page, `size` rows). An event stored meanwhile within the page (a late EventTime, a
    replay) makes it longer; bounded by `size`, it would push the page's last event out of it,
    and the next page starts after `end`: that event would be missing from the export."""
    sql, params = event_page_sql(query, EVENT_COLUMNS, after, end)
    return sql, [*params, size if end is None else -1]  # LIMIT -1: none


class Exporter:
    """The worker processes of one store's exports, started at its first export."""

    def __init__(self, path: Path, reader: aiosqlite.Connection) -> None:
        self.path = path
        self.reader = reader
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None

    def workers(self) -> concurrent.futures.ProcessPoolExecutor:
        if self.pool is None:
            keep_freed_memory()  # the server's pages too: read from the pipe, then sent
            self.pool = concurrent.futures.ProcessPoolExecutor(
                EXPORT_WORKERS,
                # spawned, not forked: a fork of a process with threads (the reader's) may hang
                mp_context=multiprocessing.get_context("spawn"),
                initializer=open_worker,
                initargs=(str(self.path), os.getpid()),
            )
        return self.pool

    async def page_end(self, query: EventQuery, after: str | None, size: int) -> str | None:
        """The cursor after the next `size` events from `after`, or None when fewer remain."""
        sql, params = event_page_sql(query, "order_us, id", after)
        async with self.reader.execute(f"{sql} OFFSET ?", [*params, 1, size - 1]) as cursor:
            row = await cursor.fetchone()
        return None if row is None else event_cursor(row[0], row[1])

    async def pages(
        self, query: EventQuery, after: str | None, limit: int | None
    ) -> AsyncIterator[tuple[bytes, str | None]]:
        """The matching events' NDJSON lines from `after` on, up to `limit`, a page at a time,
        each with the cursor after it (None after the last)."""
        loop = asyncio.get_running_loop()
        pool = self.workers()
        pending: collections.deque[tuple[asyncio.Future[bytes], str | None]] = collections.deque()
        cursor, left, done = after, limit, False
        try:
            while not done or pending:
                while not done and len(pending) < PAGES_AHEAD:
                    size = WORKER_PAGE if left is None else min(WORKER_PAGE, left)
                    end = await self.page_end(query, cursor, size)
                    sql, params = page_select(query, cursor, end, size)
                    lines = loop.run_in_executor(pool, page_lines, sql, params)
                    if left is not None:
                        left -= size
                    cursor = end
                    done = end is None or left == 0
                    pending.append((lines, None if done else end))
                lines, after_page = pending.popleft()
                yield await lines, after_page
        except concurrent.futures.process.BrokenProcessPool:
            self.pool = None  # a worker died (killed?): the next export starts new ones
            raise
        finally:
            for lines, _ in pending:
                lines.cancel()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
