"""`receiver prune`: old events deleted (with the calls made only of them), space given back."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from receiver.cli.options import check_database, setting_option
from receiver.event import iso_time, now_us
from receiver.settings import duration_seconds

if TYPE_CHECKING:
    from receiver.store.upkeep import Pruned


def older_than(context: click.Context, parameter: click.Parameter, value: str) -> float:
    try:
        return duration_seconds(value, "--older-than")
    except ValueError as problem:
        raise click.BadParameter(str(problem)) from None


@click.command()
@setting_option(
    "db", help="The database to prune: an SQLite file (it must exist) or a postgresql:// URL."
)
@click.option(
    "--older-than",
    "age",
    required=True,
    callback=older_than,
    help="Delete the events older than this, by EventTime and by receipt: 400d, 12w, 36h.",
)
@click.option(
    "--keep-calls",
    is_flag=True,
    help="Keep the calls (and their legs) built from the events deleted; only events go.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be deleted, delete nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress line, only the summary.")
def prune(db: Path, age: float, keep_calls: bool, dry_run: bool, quiet: bool) -> None:
    """Delete old events, with their raw requests and the calls made only of them.

    A call goes whole, with its last event: an old event of a call that has newer events stays.
    It runs in small batches, each a few milliseconds under the write lock, with the lock left
    free as long between them: beside a running `receiver serve`, deliveries take their turns
    and none is held up by more than one batch. Then the freed space is given back to the file
    system (a database made by an earlier receiver keeps it for new rows instead: see
    docs/storage.md). `receiver serve --retention` does the same once a day.

    \b
    Examples:
      receiver prune --db /data/receiver.db --older-than 400d --dry-run
      receiver prune --db /data/receiver.db --older-than 400d
      receiver prune --db /data/receiver.db --older-than 90d --keep-calls
    """
    import asyncio

    from receiver.store import open_storage

    check_database(db, create=False)
    before_us = now_us() - int(age * 1_000_000)
    shown = {"at": 0.0}

    def progress(so_far: Pruned) -> None:
        if quiet or not sys.stderr.isatty() or time.monotonic() - shown["at"] < 0.2:
            return
        shown["at"] = time.monotonic()
        click.echo(f"\r{so_far.events:,} events {'to delete' if dry_run else 'deleted'}",
                   err=True, nl=False)  # fmt: skip

    async def run() -> Any:
        async with open_storage(db) as store:
            return await store.prune(
                before_us, keep_calls=keep_calls, dry_run=dry_run, progress=progress
            )

    started = time.monotonic()
    done: Pruned = asyncio.run(run())
    if shown["at"]:
        click.echo(err=True)
    cut = iso_time(before_us)
    kept = f"; {done.kept_events:,} old events kept with their calls' newer ones" * bool(
        done.kept_events
    )
    calls = "the calls kept" if keep_calls else f"{done.calls:,} calls"
    if dry_run:
        click.echo(f"would delete {done.events:,} events from before {cut} and {calls}{kept}")
        return
    space = (
        f"{done.freed_bytes / 1e6:,.1f} MB given back"
        if done.vacuumed
        else "their space kept for new rows (this file was made without incremental vacuum)"
    )
    click.echo(
        f"deleted {done.events:,} events from before {cut} and {calls} in "
        f"{time.monotonic() - started:.1f} s{kept}; {space}"
    )
