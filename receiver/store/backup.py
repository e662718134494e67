"""A consistent copy of a live SQLite database, taken while its server keeps writing."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from receiver.store.schema import connect_pragmas

BACKUP_PAGES_AT_ONCE = 256  # pages copied per step (1 MB): progress moves, the copy stays one
# The copy's written pages are flushed to disk this often, so that the kernel never holds a
# backlog of them to write out at once: the server's commits, each synced to the same disk,
# would wait behind it (their p99 went from 6 to 500 ms).
FLUSH_EVERY_BYTES = 16 * 1024 * 1024
# How fast a copy is written unless told otherwise. On a 2-core machine with ingest going flat
# out beside it (bench/operations.py), an unpaced copy left ingest a third of its throughput,
# 100 MB/s three quarters, 50 MB/s above four fifths.
DEFAULT_RATE = 50_000_000  # bytes a second
# A paced backup's integrity check runs this share of the time: it reads the whole copy, about
# 7 s of a core for a million events, and took a third of ingest's throughput beside it. With
# a quarter, ingest kept 0.79x over whole backups (the check most of their time); with 0.15,
# 0.87x, the backup of 955 MB taking two minutes beside flat-out ingest.
CHECK_SHARE = 0.15
CHECK_STEPS = 10_000  # SQLite's steps between two looks at the time


@dataclass(frozen=True)
class BackedUp:
    """A finished backup: where, how big, what it holds, and its integrity check's verdict."""

    path: Path
    bytes: int
    events: int
    seconds: float
    integrity: str


def backup_file(
    source: Path,
    dest: Path,
    progress: Callable[[int, int], None] | None = None,
    rate: float | None = DEFAULT_RATE,
) -> BackedUp:
    """Copy the database at `source` to a new file `dest`, as it was at one moment, writing at
    most `rate` bytes a second (None: as fast as it goes).

    SQLite's online backup API copies the pages inside one read transaction, held open for the
    whole copy: in WAL mode writers go on beside it (their commits wait in the log until it
    ends), and the copy is that transaction's snapshot, so it is neither restarted by the
    writes nor torn between them. It is written as `dest`.part, checked with `PRAGMA
    integrity_check` (paced, at CHECK_SHARE of the time), and only then renamed to `dest`.
    `progress(pages done, pages in all)` after each step. The copy is in rollback-journal
    mode, one self-contained file.
    """
    check_destination(dest)
    part = dest.with_name(dest.name + ".part")
    for leftover in (part, part.with_name(part.name + "-journal")):
        leftover.unlink(missing_ok=True)  # of a backup that was stopped half-way
    started = time.monotonic()
    reader = sqlite3.connect(source, isolation_level=None)
    try:
        reader.executescript(connect_pragmas())
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the snapshot, now
        page_bytes: int = reader.execute("PRAGMA page_size").fetchone()[0]
        pace = Pace(part, page_bytes, rate)
        copy = sqlite3.connect(part, isolation_level=None)
        try:

            def step(status: int, remaining: int, total: int) -> None:
                pace.copied(total - remaining)
                if progress is not None:
                    progress(total - remaining, total)

            reader.backup(copy, pages=BACKUP_PAGES_AT_ONCE, progress=step)
            reader.execute("COMMIT")
            # The WAL grew while the snapshot held its pages back: copy it into the database
            # here, not in the server's next commit (a second without a commit, with ingest
            # flat out). A passive checkpoint lets the writer go on beside it; one that fails
            # (no room for the database to grow?) is the server's to make later, and the copy
            # is as good.
            with contextlib.suppress(sqlite3.OperationalError):
                reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            copy.execute("PRAGMA journal_mode=DELETE").fetchone()
            if rate:  # the check, a core's work for seconds, takes turns with the server's
                copy.set_progress_handler(Duty(CHECK_SHARE), CHECK_STEPS)
            integrity = "; ".join(row[0] for row in copy.execute("PRAGMA integrity_check"))
            copy.set_progress_handler(None, 0)
            # Every store migrates its file when it opens it (Store.backup): the count is there.
            events: int = copy.execute("SELECT events FROM event_count").fetchone()[0]
        finally:
            pace.close()
            copy.close()
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    finally:
        reader.close()
    if integrity != "ok":
        raise RuntimeError(f"the copy failed its integrity check ({integrity}); kept as {part}")
    part.rename(dest)
    return BackedUp(dest, dest.stat().st_size, events, time.monotonic() - started, integrity)


class Duty:
    """A progress handler that keeps a statement to `share` of the time: every so many of its
    steps, it sleeps in proportion to how long it ran since it last slept."""

    def __init__(self, share: float) -> None:
        self.rest = (1 - share) / share
        self.since = time.monotonic()

    def __call__(self) -> int:
        now = time.monotonic()
        if now - self.since >= 0.01:
            time.sleep((now - self.since) * self.rest)
            self.since = time.monotonic()
        return 0  # go on


def check_destination(dest: Path) -> None:
    """Raise unless `dest` can be made: a new file in a folder that exists."""
    if dest.exists():
        raise FileExistsError(f"{dest} exists already: give a new file, or remove it first")
    if not dest.absolute().parent.is_dir():
        raise FileNotFoundError(f"the folder {dest.absolute().parent} does not exist")


class Pace:
    """Keeps a copy's writing gentle: its pages flushed every FLUSH_EVERY_BYTES, and at most
    `rate` bytes a second written on average (a sleep when it is ahead)."""

    def __init__(self, path: Path, page_bytes: int, rate: float | None) -> None:
        self.page_bytes = page_bytes
        self.rate = rate
        self.began = time.monotonic()
        self.flushed = 0
        self.fd: int | None = None
        self.path = path

    def copied(self, pages: int) -> None:
        """`pages` of the copy are written so far."""
        written = pages * self.page_bytes
        if written - self.flushed >= FLUSH_EVERY_BYTES:
            if self.fd is None:  # the file exists once SQLite has written to it
                self.fd = os.open(self.path, os.O_RDONLY)
            os.fdatasync(self.fd)  # flushes the file's pages, whichever descriptor wrote them
            self.flushed = written
        if self.rate:
            ahead = written / self.rate - (time.monotonic() - self.began)
            if ahead > 0:
                time.sleep(ahead)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
