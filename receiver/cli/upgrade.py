"""`receiver upgrade`: a database of an earlier schema brought to this receiver's, with a
progress bar and a summary."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from receiver.cli.options import check_database, setting_option

if TYPE_CHECKING:
    from receiver.store.schema import KeyRewrite


@click.command()
@setting_option(
    "db", help="The database to upgrade: an SQLite file (it must exist) or a postgresql:// URL."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, only the summary.")
def upgrade(db: Path | str, quiet: bool) -> None:
    """Bring a database of an earlier schema to this receiver's, and say what was done.

    The long step, giving the de-dup keys of the events stored before schema version 6
    EventTime in front (about 50 s a million), goes a batch at a time under the write
    lock: a server of the version before may keep taking deliveries on the file meanwhile.
    Every event is kept. On a database already current it says so and exits 0. Without it,
    `receiver serve` (and every command that opens the database) does the same at start.

    A PostgreSQL database (a postgresql:// URL) has its own schema versions: its steps are
    taken under an advisory lock, so that instances starting together apply each once.

    \b
    Examples:
      receiver upgrade --db /data/receiver.db
      RECEIVER_DB=/data/receiver.db receiver upgrade --quiet
      receiver upgrade --db postgresql://receiver@db.internal:5432/receiver
    """
    from receiver.store import SCHEMA_VERSION
    from receiver.store.backend import is_postgresql
    from receiver.store.upgrade import opened, schema_version
    from receiver.store.upgrade import upgrade as run_upgrade

    check_database(db, create=False)
    if is_postgresql(db):
        upgrade_postgresql(str(db))
        return
    db = Path(db)
    with opened(db) as connection:
        try:
            found = schema_version(connection)
        except RuntimeError as error:
            raise click.ClickException(str(error)) from None
        if found == SCHEMA_VERSION:
            click.echo(f"{db} is at schema version {found}, this receiver's: nothing to do")
            return
        bar = KeysProgress(enabled=not quiet and sys.stderr.isatty())
        try:
            done = run_upgrade(connection, bar.update)
        finally:
            bar.finish()
    click.echo(f"upgraded {db} from schema version {done.found} to {done.version}")
    click.echo(f"{'old keys rewritten':>18}  {done.keys_rewritten:,}")
    click.echo(f"{'time':>18}  {done.seconds:.1f} s")


def upgrade_postgresql(url: str) -> None:
    """Migrate a PostgreSQL database to this receiver's schema, and say what was done."""
    import asyncio

    import psycopg

    from receiver.store.pg_schema import SCHEMA_VERSION, migrate
    from receiver.store.postgresql import shown_url

    async def run() -> int:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
            return await migrate(connection)

    try:
        found = asyncio.run(run())
    except (psycopg.Error, RuntimeError) as error:
        raise click.ClickException(f"{shown_url(url)}: {error}") from None
    if found == SCHEMA_VERSION:
        click.echo(f"{shown_url(url)} is at schema version {found}, this receiver's: nothing to do")
    else:
        click.echo(f"upgraded {shown_url(url)} from schema version {found} to {SCHEMA_VERSION}")


class KeysProgress:
    """A progress bar over the ids the old keys' rewrite goes through; nothing when off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.shown = 0

    def update(self, rewrite: KeyRewrite) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = click.progressbar(
                length=rewrite.total, label="rewriting old de-dup keys", file=sys.stderr
            )
            self.bar.__enter__()
        self.bar.update(max(rewrite.done - self.shown, 0))
        self.shown = max(rewrite.done, self.shown)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
