"""`receiver copy`: an SQLite database copied into PostgreSQL, with a progress bar."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from receiver.cli.options import check_database
from receiver.cli.rebuild import progress_bar


@click.command(name="copy")
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The SQLite database file to copy (it is upgraded first, as any command does).",
)
@click.option(
    "--to",
    "target",
    required=True,
    metavar="postgresql://USER:PASSWORD@HOST:PORT/DBNAME",
    help="The PostgreSQL database to copy into: a new, empty one (createdb), or one an "
    "earlier copy of the same file went into.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, only the summary.")
def copy(source: Path, target: str, quiet: bool) -> None:
    """Copy an SQLite database into PostgreSQL, keeping everything.

    Every event keeps its id, its raw request and its repeat count; the refused deliveries
    and the call-history records are copied too, and the calls are built from them once the
    rows are in. The PostgreSQL database's event ids continue after the file's, so that no
    id the PBX was answered is ever given to another event.

    Run it again and it adds nothing; interrupted, it goes on where it stopped. So a move can
    be made with little downtime: copy while the SQLite server still takes deliveries, stop
    it, copy again (only what came since), then start the receivers on PostgreSQL. A database
    into which a receiver already took deliveries of its own is refused (the ids would clash).

    The database must exist: make it first (`createdb -h db.internal -U postgres receiver`).

    \b
    Examples:
      receiver copy --from /data/receiver.db --to postgresql://postgres@db.internal/receiver
      receiver copy --from receiver.db --to postgresql://receiver:secret@127.0.0.1:5432/receiver -q
      receiver serve --db postgresql://receiver:secret@127.0.0.1:5432/receiver
    """
    import asyncio

    import psycopg

    from receiver.store.copy import Copied, CopyConflict, copy_into_postgresql
    from receiver.store.postgresql import DatabaseUnavailable, shown_url

    check_database(source, create=False)
    if not target.lower().startswith(("postgresql://", "postgres://")):
        raise click.BadParameter(
            f"{target!r} is not a PostgreSQL URL: give postgresql://user:password@host:5432/dbname",
            param_hint="--to",
        )
    bar: Any = None

    def progress(copied: Copied) -> None:
        nonlocal bar
        if quiet or not sys.stderr.isatty() or not copied.events_to_read:
            return
        if bar is None:
            bar = click.progressbar(length=copied.events_to_read, label="copying events",
                                    file=sys.stderr, item_show_func=lambda text: text)  # fmt: skip
            bar.__enter__()
        text = f"{copied.events_read:,} of {copied.events_to_read:,}"
        bar.update(copied.events_read - bar.pos, text)

    def close_bar() -> None:
        nonlocal bar
        if bar is not None:
            bar.__exit__(None, None, None)
            bar = None

    started = time.monotonic()
    try:
        with progress_bar("building calls", quiet) as calls_progress:

            def building(done: int, total: int) -> None:
                close_bar()  # the events' bar stays on its line, the calls' goes below it
                calls_progress(done, total)

            try:
                done = asyncio.run(
                    copy_into_postgresql(source, target, progress=progress, calls_progress=building)
                )
            finally:
                close_bar()
    except CopyConflict as error:
        raise click.ClickException(str(error)) from None
    except DatabaseUnavailable as error:  # it names the setting of `serve`: here it is --to
        raise click.ClickException(str(error).replace("--db / RECEIVER_DB", "--to")) from None
    except psycopg.OperationalError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise click.ClickException(
            f"cannot copy into {shown_url(target)}: {first}: check the host, port, user, password "
            "and database name (the database must exist: createdb)"
        ) from None
    copied = done.copied
    seconds = time.monotonic() - started
    resumed = f", going on after event {copied.resumed_after:,}" if copied.resumed_after else ""
    rows = [
        ("events", copied.events, copied.events_there),
        ("refused deliveries", copied.rejects, copied.rejects_there),
        ("call-history records", copied.history, copied.history_there),
    ]
    lines = [f"copied {source} into {shown_url(target)} in {seconds:.1f} s{resumed}:"]
    lines += [f"  {what:20} {new:,} copied, {there:,} already there" for what, new, there in rows]
    if copied.repeats_raised:
        lines.append(f"  {'':20} {copied.repeats_raised:,} events given their newer repeat count")
    built = "built again from the events" if done.rebuilt else "built"
    lines.append(f"  {'calls':20} {done.calls_built:,} {built}")
    lines.append(f"  event ids continue after {copied.top_id:,}")
    click.echo("\n".join(lines))
