"""`receiver rebuild`: every call built again from the events (with `--reparse`, every event
parsed again from its raw request first), with a progress bar."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from receiver.cli.options import check_database, setting_option


@click.command()
@setting_option(
    "db",
    help="The database whose calls to build again: an SQLite file (it must exist) or a "
    "postgresql:// URL.",
)
@click.option(
    "--reparse",
    is_flag=True,
    help="First parse every stored event again from its raw request with this receiver's "
    "parser, and store what comes out otherwise (after a parser fix).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def rebuild(db: Path, reparse: bool, quiet: bool) -> None:
    """Build every call again from the events of the database.

    The calls are derived from the events: this makes them all again with this receiver's call
    building, in batches, and says how many came out other than they were. It is safe while
    `receiver serve` runs on the same file: each batch takes its turn at SQLite's write lock
    between the server's commits (and the server, building too, takes batches of the same
    rebuild).

    With --reparse, every event is first parsed again from the raw request it keeps, as a
    delivery of its own myid received when it was, and the events the parser now makes
    otherwise are written again in place (their ids and repeat counts stay). Two events that
    become one (the same de-dup key) are merged: the lower id stays and counts the other as a
    repeat. A raw request the parser now refuses is kept as stored, and counted.

    \b
    Examples:
      receiver rebuild --db receiver.db
      receiver rebuild --db receiver.db --reparse
      RECEIVER_DB=/data/receiver.db receiver rebuild --quiet
    """
    import asyncio

    from receiver.store import open_storage

    check_database(db, create=False)

    async def run() -> None:
        started = time.monotonic()
        async with open_storage(db) as store:
            if reparse:
                with progress_bar("parsing events", quiet) as progress:
                    counts = await store.reparse_events(progress)
                held = f", {counts.held:,} kept as stored (the same event as one refused)"
                click.echo(
                    f"parsed {counts.read:,} events again in {time.monotonic() - started:.1f} s: "
                    f"{counts.changed:,} changed, {counts.merged:,} merged as repeats, "
                    f"{counts.refused:,} refused by this parser (kept as stored)"
                    f"{held if counts.held else ''}"
                )
                started = time.monotonic()
            with progress_bar("building calls", quiet) as progress:
                changed = await store.rebuild_calls(progress)
            events = (await store.calls_state()).built_to_event
            calls = await store.count_calls()
        seconds = time.monotonic() - started
        click.echo(
            f"rebuilt {calls:,} calls from the events up to id {events:,} in {seconds:.1f} s: "
            f"{changed:,} changed"
        )

    asyncio.run(run())


@contextlib.contextmanager
def progress_bar(label: str, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A `progress(done, total)` that draws a bar on stderr when it is a terminal and not
    `quiet` (by event ids: `done` of `total`); the bar is closed at the end."""
    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if quiet or not sys.stderr.isatty() or total == 0:
            return
        if bar is None:
            bar = click.progressbar(length=total, label=label, file=sys.stderr,
                                    item_show_func=lambda text: text)  # fmt: skip
            bar.__enter__()
        bar.update(done - bar.pos, f"event {done:,} of {total:,}")

    try:
        yield progress
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
