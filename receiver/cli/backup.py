"""`receiver backup`: a consistent copy of the database while the server keeps writing it."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import click

from receiver.cli.options import check_database, setting_option
from receiver.store.backup import DEFAULT_RATE, check_destination

# The backup's CPU priority below the server's: its integrity check reads the whole copy, about
# 7 s of a core for a million events, which a busy server on two cores would have to share.
BACKUP_NICENESS = 10


@click.command()
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
@setting_option("db", help="The SQLite database to back up (it must exist; PostgreSQL: pg_dump).")
@click.option(
    "--max-rate",
    type=click.FloatRange(min=0),
    default=DEFAULT_RATE / 1e6,
    show_default=True,
    metavar="MB/S",
    help="Write the copy at most this many megabytes a second, so that the server's own "
    "writes to the disk keep their pace; 0: as fast as the disk goes (nothing else running).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, only the summary.")
def backup(dest: Path, db: Path, max_rate: float, quiet: bool) -> None:
    """Copy the database to the new file DEST, as it was at the moment the copy began.

    Safe while `receiver serve` runs on the file and takes deliveries: SQLite's online backup
    copies one snapshot (every event answered 200 before it began is in it) while the server
    goes on writing beside it. The copy is checked with SQLite's integrity check before it is
    given its name; it is one self-contained file. It is written at --max-rate, at a lower CPU
    priority (nice 10) than the server's, so that deliveries arriving meanwhile are stored at
    the pace they come. To restore it, stop the server, remove the database's -wal and -shm
    files, put the copy in its place and start the server (see docs/deploy.md).

    \b
    Examples:
      receiver backup --db /data/receiver.db /backups/receiver-$(date +%F).db
      RECEIVER_DB=/data/receiver.db receiver backup --quiet /backups/latest.db
      receiver backup --max-rate 0 --db stopped.db /backups/now.db   # no server: full speed
    """
    import asyncio

    from receiver.store import open_storage

    check_database(db, create=False)
    try:
        check_destination(dest)
    except (FileExistsError, FileNotFoundError) as problem:
        raise click.ClickException(str(problem)) from None
    with contextlib.suppress(OSError):
        os.nice(BACKUP_NICENESS)  # the server's work comes first
    bar = PagesProgress(enabled=not quiet and sys.stderr.isatty())

    async def run() -> Any:
        async with open_storage(db) as store:
            return await store.backup(dest, bar.update, max_rate * 1e6 or None)

    try:
        done = asyncio.run(run())
    except (FileExistsError, FileNotFoundError, RuntimeError) as problem:
        raise click.ClickException(str(problem)) from None
    finally:
        bar.finish()
    click.echo(
        f"backed up {db} to {done.path}: {done.events:,} events, {done.bytes / 1e6:,.1f} MB "
        f"in {done.seconds:.1f} s; integrity check: {done.integrity}"
    )


class PagesProgress:
    """A progress bar over the pages copied; nothing when off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def update(self, done: int, total: int) -> None:
        if not self.enabled or total == 0:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="copying pages", file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(done - self.bar.pos)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
