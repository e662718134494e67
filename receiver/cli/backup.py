"""`receiver backup`: a consistent copy of the database while the server keeps writing it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from receiver.cli.options import check_database, setting_option


@click.command()
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
@setting_option("db", help="The SQLite database to back up (it must exist; PostgreSQL: pg_dump).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, only the summary.")
def backup(dest: Path, db: Path, quiet: bool) -> None:
    """Copy the database to the new file DEST, as it was at the moment the copy began.

    Safe while `receiver serve` runs on the file and takes deliveries: SQLite's online backup
    copies one snapshot (every event answered 200 before it began is in it) while the server
    goes on writing beside it. The copy is checked with SQLite's integrity check before it is
    given its name; it is one self-contained file. To restore it, stop the server, remove the
    database's -wal and -shm files, put the copy in its place and start the server (see
    docs/deploy.md).

    \b
    Examples:
      receiver backup --db /data/receiver.db /backups/receiver-$(date +%F).db
      RECEIVER_DB=/data/receiver.db receiver backup --quiet /backups/latest.db
    """
    import asyncio

    from receiver.store import open_storage

    check_database(db, create=False)
    bar = PagesProgress(enabled=not quiet and sys.stderr.isatty())

    async def run() -> Any:
        async with open_storage(db) as store:
            return await store.backup(dest, bar.update)

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
