"""A consistent copy of a live SQLite database, taken while its server keeps writing."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from receiver.store.schema import connect_pragmas

BACKUP_PAGES_AT_ONCE = 256  # pages copied per step (1 MB): progress moves, the copy stays one


@dataclass(frozen=True)
class BackedUp:
    """A finished backup: where, how big, what it holds, and its integrity check's verdict."""

    path: Path
    bytes: int
    events: int
    seconds: float
    integrity: str


def backup_file(
    source: Path, dest: Path, progress: Callable[[int, int], None] | None = None
) -> BackedUp:
    """Copy the database at `source` to a new file `dest`, as it was at one moment.

    SQLite's online backup API copies the pages inside one read transaction, held open for the
    whole copy: in WAL mode writers go on beside it (their commits wait in the log until it
    ends), and the copy is that transaction's snapshot, so it is neither restarted by the
    writes nor torn between them. It is written as `dest`.part, checked with `PRAGMA
    integrity_check`, and only then renamed to `dest`. `progress(pages done, pages in all)`
    after each step. The copy is in rollback-journal mode, one self-contained file.
    """
    if dest.exists():
        raise FileExistsError(f"{dest} exists already: give a new file, or remove it first")
    if not dest.absolute().parent.is_dir():
        raise FileNotFoundError(f"the folder {dest.absolute().parent} does not exist")
    part = dest.with_name(dest.name + ".part")
    for leftover in (part, part.with_name(part.name + "-journal")):
        leftover.unlink(missing_ok=True)  # of a backup that was stopped half-way
    started = time.monotonic()
    reader = sqlite3.connect(source, isolation_level=None)
    try:
        reader.executescript(connect_pragmas())
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the snapshot, now
        copy = sqlite3.connect(part, isolation_level=None)
        try:

            def step(status: int, remaining: int, total: int) -> None:
                if progress is not None:
                    progress(total - remaining, total)

            reader.backup(copy, pages=BACKUP_PAGES_AT_ONCE, progress=step)
            reader.execute("COMMIT")
            copy.execute("PRAGMA journal_mode=DELETE").fetchone()
            integrity = "; ".join(row[0] for row in copy.execute("PRAGMA integrity_check"))
            events: int = copy.execute("SELECT count(*) FROM events").fetchone()[0]
        finally:
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
