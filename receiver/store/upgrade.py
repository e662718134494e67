"""Upgrading a database of an earlier schema: the migrations, and the progress of the long one.

Most steps take a moment. One takes about 50 s a million events: giving the de-dup keys of
events stored before schema version 6 EventTime in front (migrate() does it before step
KEYS_REWRITTEN, a batch a transaction). `receiver upgrade` shows it with a progress bar; a
command that opens the database (`receiver serve`, `replay`, the read commands) does it at
start, with a log line when it begins, one every LOG_EVERY seconds and one at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from receiver.store.schema import (
    SCHEMA_VERSION,
    KeyRewrite,
    check_known,
    connect_pragmas,
    migrate,
    pending_key_rewrite,
    use_wal,
)

log = logging.getLogger("receiver.store")

LOG_EVERY = 5.0  # seconds between the start-up log lines of a long upgrade


@dataclasses.dataclass(frozen=True)
class Upgraded:
    """What an upgrade did."""

    found: int  # the schema version the database had
    version: int  # the one it has now
    keys_rewritten: int  # old de-dup keys this upgrade gave EventTime in front
    seconds: float


@contextlib.contextmanager
def opened(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to the database at `path` (made if missing), in WAL mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.executescript(connect_pragmas())
        use_wal(connection)
        yield connection
    finally:
        connection.close()


def schema_version(connection: sqlite3.Connection) -> int:
    """The database's schema version; raises if it is newer than this receiver's."""
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    check_known(version)
    return version


def upgrade(
    connection: sqlite3.Connection, progress: Callable[[KeyRewrite], None] | None = None
) -> Upgraded:
    """Bring the database to SCHEMA_VERSION; `progress` is called during the old keys' rewrite."""
    started = time.monotonic()
    rewritten = 0

    def rewrote(rewrite: KeyRewrite) -> None:
        nonlocal rewritten
        rewritten = rewrite.rewritten
        if progress is not None:
            progress(rewrite)

    found = migrate(connection, progress=rewrote)
    return Upgraded(found, schema_version(connection), rewritten, time.monotonic() - started)


def upgrade_at_start(path: Path) -> None:
    """Upgrade the database of a command that is starting, saying so in the log when it is long."""
    with opened(path) as connection:
        found = schema_version(connection)
        if found >= SCHEMA_VERSION:
            return
        pending = pending_key_rewrite(connection)
        if pending:
            log.warning(
                "upgrading the database %s from schema version %d to %d first: the de-dup keys "
                "of the %s events stored before version 6 get EventTime in front (about a "
                "50 s a million); this process takes nothing until it is done (`receiver "
                "upgrade --db FILE` does it beforehand, beside a running server)",
                path.absolute(),
                found,
                SCHEMA_VERSION,
                f"{pending:,}",
            )
        done = upgrade(connection, LogProgress() if pending else None)
    if done.found == 0:
        log.info("created the database %s (schema version %d)", path.absolute(), done.version)
        return
    log.info(
        "upgraded the database from schema version %d to %d in %.1f s%s",
        done.found,
        done.version,
        done.seconds,
        f" ({done.keys_rewritten:,} old de-dup keys rewritten)" if pending else "",
    )


class LogProgress:
    """A log line every LOG_EVERY seconds on the old keys' rewrite: how far, and the time left."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.next_line = self.started + LOG_EVERY

    def __call__(self, rewrite: KeyRewrite) -> None:
        now = time.monotonic()
        if now < self.next_line or not rewrite.left:
            return
        self.next_line = now + LOG_EVERY
        share = rewrite.done / max(rewrite.total, 1)
        left = (now - self.started) * (1 - share) / max(share, 1e-9)
        log.info(
            "upgrading the database: %s of %s old de-dup keys done (%.0f%%), about %.0f s left",
            f"{rewrite.done:,}",
            f"{rewrite.total:,}",
            100 * share,
            left,
        )
