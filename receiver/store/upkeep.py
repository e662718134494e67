"""Looking after a database: how big it is, how recent each myid's events are, and pruning old
events in small batches (the SQL of the SQLite backend; the results are every backend's)."""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRUNE_AT_ONCE = 500  # events looked at per prune batch: a few ms under the write lock
VACUUM_PAGES_AT_ONCE = 1024  # free pages given back to the file system per step (4 MB)
VACUUM_EVENTS_A_STEP = 2000  # events (1.3 KB and their index entries) that free about as much
MYIDS_SHOWN = 1000  # the most myids whose newest event is reported (a label each in /metrics)


@dataclass(frozen=True)
class Sizes:
    """How much a database holds, and the room left for it."""

    events: int
    database_bytes: int  # the file and its write-ahead log
    free_bytes: int  # inside the file: pages freed (by a prune) that new rows will reuse
    disk_free_bytes: int | None  # on the file system that holds it (None: not known here)


@dataclass(frozen=True)
class WriterState:
    """The writing side of a store at this moment."""

    alive: bool
    queued: int  # deliveries (and rejects) waiting for a group commit
    groups_storing: int


@dataclass
class Pruned:
    """What a prune removed (or, in a dry run, would remove)."""

    events: int = 0
    calls: int = 0
    kept_events: int = 0  # old, but of a call that has events newer than the cut: kept
    freed_bytes: int = 0  # given back to the file system after the prune
    vacuumed: bool = True  # False: the file cannot give space back by itself (see storage.md)
    last: tuple[int, int] = field(default=(-(2**63), 0))  # (order_us, id): where the next starts

    def add(self, step: PruneStep) -> None:
        self.events += step.events
        self.calls += step.calls
        self.kept_events += step.kept
        self.last = step.last


@dataclass(frozen=True)
class PruneStep:
    """One batch of a prune: what it removed, and whether it was the last one."""

    events: int
    calls: int
    kept: int
    last: tuple[int, int]
    done: bool

    def __reduce__(self) -> tuple[Any, ...]:
        return (PruneStep, (self.events, self.calls, self.kept, self.last, self.done))


def prune_step(
    db: sqlite3.Connection,
    before_us: int,
    after: tuple[int, int],
    limit: int,
    *,
    keep_calls: bool,
    delete: bool,
) -> PruneStep:
    """The next `limit` events whose time (EventTime, or receipt) and receipt are both before
    `before_us`, from `after` (order_us, id) on, removed (or, without `delete`, counted). An
    event received lately stays whatever its EventTime says (a PBX's clock may be wrong).

    An event of a call that also has events from `before_us` on stays, so that no call is ever
    left with some of its events: a call goes whole, with its last event. The call's row and its
    legs go once none of its events is left (unless `keep_calls`). The highest id removed is
    retired, so that it is never given to another event (an id once answered to the PBX names
    that event for ever).
    """
    rows = db.execute(
        "SELECT order_us, id, call_id FROM events WHERE order_us < ?1 AND received_at_us < ?1 "
        "AND (order_us, id) > (?2, ?3) ORDER BY order_us, id LIMIT ?4",
        (before_us, *after, limit),
    ).fetchall()
    if not rows:
        return PruneStep(0, 0, 0, after, True)
    call_ids = sorted({call_id for _, _, call_id in rows if call_id is not None})
    newer: set[str] = set()
    for start in range(0, len(call_ids), PRUNE_AT_ONCE):
        chunk = call_ids[start : start + PRUNE_AT_ONCE]
        marks = ", ".join("?" * len(chunk))
        newer.update(
            call_id
            for (call_id,) in db.execute(
                f"SELECT DISTINCT call_id FROM events WHERE call_id IN ({marks}) "
                "AND (order_us >= ? OR received_at_us >= ?)",
                [*chunk, before_us, before_us],
            )
        )
    gone = [event_id for _, event_id, call_id in rows if call_id not in newer]
    last = (rows[-1][0], rows[-1][1])
    done = len(rows) < limit
    kept = len(rows) - len(gone)
    if not delete:
        return PruneStep(len(gone), 0, kept, last, done)
    marks = ", ".join("?" * len(gone))
    if gone:
        db.execute(f"DELETE FROM events WHERE id IN ({marks})", gone)
        db.execute("UPDATE retired_ids SET top = max(top, ?)", (max(gone),))
    calls = 0
    ended = [call_id for call_id in call_ids if call_id not in newer]
    if ended and not keep_calls:
        marks = ", ".join("?" * len(ended))
        empty = [
            call_id
            for (call_id,) in db.execute(
                f"SELECT call_id FROM calls WHERE call_id IN ({marks}) AND NOT EXISTS "
                "(SELECT 1 FROM events WHERE events.call_id = calls.call_id)",
                ended,
            )
        ]
        if empty:
            marks = ", ".join("?" * len(empty))
            db.execute(f"DELETE FROM legs WHERE call_id IN ({marks})", empty)
            calls = db.execute(f"DELETE FROM calls WHERE call_id IN ({marks})", empty).rowcount
    return PruneStep(len(gone), calls, kept, last, done)


def calls_ended_before(db: sqlite3.Connection, before_us: int) -> int:
    """How many built calls have their last event before `before_us` (what a prune would
    remove, for a dry run)."""
    sql = "SELECT count(*) FROM calls WHERE last_event_us < ?"
    count: int = db.execute(sql, (before_us,)).fetchone()[0]
    return count


def vacuum_step(db: sqlite3.Connection) -> tuple[int, int] | None:
    """Give up to VACUUM_PAGES_AT_ONCE free pages back to the file system (in a write
    transaction of the caller's); how many bytes went back and how many free pages are left
    (None: the file was made without incremental auto-vacuum, and keeps them for new rows).

    In WAL mode the file itself shrinks at the next checkpoint (SQLite's own, or the server's).
    """
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        return None
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    before: int = db.execute("PRAGMA freelist_count").fetchone()[0]
    # One page a statement: sqlite3's execute() steps a statement once, and each step of this
    # pragma frees one page, so incremental_vacuum(N) would free just one.
    for _ in range(min(before, VACUUM_PAGES_AT_ONCE)):
        db.execute("PRAGMA incremental_vacuum(1)")
    left: int = db.execute("PRAGMA freelist_count").fetchone()[0]
    return (before - left) * page_size, left


# The newest event of each myid, one index seek each (events_myid_order): the distinct myids
# are walked with one seek per myid rather than a scan of every event.
NEWEST_BY_MYID = f"""
    WITH RECURSIVE myids(myid) AS (
        SELECT min(myid) FROM events
        UNION ALL
        SELECT (SELECT min(myid) FROM events WHERE myid > myids.myid) FROM myids
        WHERE myids.myid IS NOT NULL
        LIMIT {MYIDS_SHOWN + 1}
    )
    SELECT myid, (SELECT order_us FROM events WHERE events.myid = myids.myid
                  ORDER BY order_us DESC LIMIT 1)
    FROM myids WHERE myid IS NOT NULL
"""

SIZES = (
    "SELECT (SELECT events FROM event_count), "
    "(SELECT page_count FROM pragma_page_count()) * (SELECT page_size FROM pragma_page_size()), "
    "(SELECT freelist_count FROM pragma_freelist_count()) * "
    "(SELECT page_size FROM pragma_page_size())"
)


def sizes(row: tuple[int, int, int], path: Path) -> Sizes:
    """The Sizes of the database at `path`, from the SIZES row read from it."""
    events, file_bytes, free_bytes = row
    wal = path.with_name(path.name + "-wal")
    wal_bytes = wal.stat().st_size if wal.exists() else 0
    try:
        disk_free = shutil.disk_usage(path.absolute().parent).free
    except OSError:
        disk_free = None
    return Sizes(events, file_bytes + wal_bytes, free_bytes, disk_free)
