"""`receiver rebuild`: every call built again from the events, with a progress bar."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from receiver.cli.options import check_database, setting_option


@click.command()
@setting_option("db", help="The SQLite database whose calls to build again (it must exist).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def rebuild(db: Path, quiet: bool) -> None:
    """Build every call again from the events of the database.

    The calls are derived from the events: this makes them all again with this receiver's call
    building, in batches, and says how many came out other than they were. It is safe while
    `receiver serve` runs on the same file: each batch takes its turn at SQLite's write lock
    between the server's commits (and the server, building too, takes batches of the same
    rebuild).

    \b
    Examples:
      receiver rebuild --db receiver.db
      RECEIVER_DB=/data/receiver.db receiver rebuild --quiet
    """
    import asyncio

    from receiver.store import open_storage

    check_database(db, create=False)
    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if quiet or not sys.stderr.isatty() or total == 0:
            return
        if bar is None:
            bar = click.progressbar(length=total, label="building calls", file=sys.stderr,
                                    item_show_func=lambda text: text)  # fmt: skip
            bar.__enter__()
        bar.update(done - bar.pos, f"event {done:,} of {total:,}")

    async def run() -> tuple[int, int, int]:
        async with open_storage(db) as store:
            changed = await store.rebuild_calls(progress)
            state = await store.calls_state()
            return await store.count_calls(), changed, state.built_to_event

    started = time.monotonic()
    try:
        calls, changed, events = asyncio.run(run())
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    seconds = time.monotonic() - started
    click.echo(
        f"rebuilt {calls:,} calls from {events:,} events in {seconds:.1f} s: {changed:,} changed"
    )
