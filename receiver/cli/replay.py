"""`receiver replay`: the command, its progress bar and its summary."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from receiver.cli.options import check_database, setting_option
from receiver.parse import MYID_SHAPE, is_valid_myid, shown
from receiver.replay.run import FORMATS, Summary


def valid_myid(context: click.Context, parameter: click.Parameter, myid: str | None) -> str | None:
    """--myid, checked before any line is read."""
    if myid is not None and not is_valid_myid(myid):
        raise click.BadParameter(f"{shown(myid)} is not a valid myid: use {MYID_SHAPE}")
    return myid


@click.command()
@click.argument("paths", nargs=-1, required=True)
@setting_option("db")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(sorted(FORMATS)),
    help="Input format (default: detected from the first line of each file).",
)
@click.option(
    "--log-format",
    help="The access log's nginx log_format or Apache LogFormat string "
    "(default: combined or common).",
)
@click.option("--path", help="Keep only access-log requests to this path, e.g. /webhook.")
@click.option(
    "--myid", callback=valid_myid, help="myid for deliveries whose query string has none."
)
@click.option(
    "--to",
    "to_url",
    metavar="URL",
    help="Send the deliveries to a running receiver at URL (e.g. http://host:8000/webhook) "
    "instead of writing the database.",
)
@click.option(
    "--concurrency",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="With --to: requests in flight at once.",
)
@click.option(
    "--rate", type=click.FloatRange(0, min_open=True), help="With --to: deliveries per second."
)
@click.option(
    "--retries",
    default=3,
    show_default=True,
    type=click.IntRange(0, 20),
    help="With --to: tries again after a network error, 429 or 5xx.",
)
@click.option("--dry-run", is_flag=True, help="Parse and report; write and send nothing.")
@click.option("--strict", is_flag=True, help="Stop at the first malformed line.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def replay(
    paths: tuple[str, ...],
    db: Path,
    fmt: str | None,
    log_format: str | None,
    path: str | None,
    myid: str | None,
    to_url: str | None,
    concurrency: int,
    rate: float | None,
    retries: int,
    dry_run: bool,
    strict: bool,
    quiet: bool,
) -> None:
    """Replay deliveries from access logs, query-string files or NDJSON exports.

    PATHS are files (gzip is detected by content) or - for stdin. Each delivery is parsed,
    tagged and de-duplicated exactly as a live request, so replaying twice adds nothing.
    Exits 1 when any line was malformed or any event could not be stored or delivered.

    \b
    Examples:
      receiver replay --myid 85218 sample_payloads/inbound-cancelled.txt
      receiver replay /var/log/nginx/access.log* --path /webhook --dry-run
    """
    import asyncio

    from receiver.replay.run import Options, ReplayError, Target
    from receiver.replay.run import replay as run_replay
    from receiver.store import open_storage

    options = Options(fmt, log_format, path, myid, strict)
    target = Target(to_url, concurrency, rate, retries) if to_url and not dry_run else None
    if not dry_run and target is None:
        check_database(db, create=True)

    async def run() -> Summary:
        if dry_run or target is not None:
            return await run_replay(list(paths), options, target=target, progress=bar.update_from)
        # bulk: the writer in a process of its own, so storing a chunk and parsing the next take
        # a core each, where on a thread they would take turns with one GIL.
        async with open_storage(db, bulk=True) as store:
            summary = await run_replay(list(paths), options, store=store, progress=bar.update_from)
            await store.refresh_calls()  # the calls of what it stored: reads do not build them
            return summary

    bar = ReplayProgress(paths, enabled=not quiet and sys.stderr.isatty())
    try:
        summary = asyncio.run(run())
    except ReplayError as error:
        raise click.ClickException(str(error)) from None
    finally:
        bar.finish()
    print_summary(summary, dry_run=dry_run, sent=target is not None)
    if not summary.ok:
        sys.exit(1)


class ReplayProgress:
    """A progress bar over the inputs' bytes, with lines and their rate; nothing when off."""

    def __init__(self, paths: tuple[str, ...], enabled: bool) -> None:
        self.paths = paths
        self.sizes = {p: Path(p).stat().st_size if Path(p).is_file() else 0 for p in paths}
        self.shown = 0
        self.started = time.monotonic()
        self.bar: Any = None
        if enabled and sum(self.sizes.values()) > 0:
            self.bar = click.progressbar(
                length=sum(self.sizes.values()),
                label="replaying",
                file=sys.stderr,
                show_pos=False,
                item_show_func=lambda text: text,
            )
            self.bar.__enter__()

    def update_from(self, source: Any, summary: Summary) -> None:
        """Inputs are read in order: the ones before this one are done."""
        if self.bar is None:
            return
        done = self.shown  # stdin has no size
        if source.name in self.sizes:
            before = self.paths[: self.paths.index(source.name)]
            done = sum(self.sizes[p] for p in before) + source.position()
        rate = summary.lines / max(time.monotonic() - self.started, 1e-9)
        self.bar.update(max(done - self.shown, 0), f"{summary.lines:,} lines, {rate:,.0f}/s")
        self.shown = max(done, self.shown)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def print_summary(summary: Summary, *, dry_run: bool, sent: bool) -> None:
    """The end-of-run report."""
    seconds = max(summary.seconds, 1e-9)
    skipped = ", ".join(f"{reason}: {n:,}" for reason, n in summary.skipped.most_common())
    stored = "parsed (dry run)" if dry_run else ("delivered" if sent else "stored")
    rows = [
        ("lines read", summary.lines),
        ("deliveries", summary.deliveries),
        (stored, summary.events if dry_run else summary.stored),
        ("duplicates", summary.duplicates),
        ("skipped", summary.skipped.total()),
        ("malformed", summary.malformed),
        ("failed", summary.failed),
    ]
    for name, value in rows:
        line = f"{name:>17}  {value:,}"
        if name == "skipped" and skipped:
            line += f"  ({skipped})"
        click.echo(line)
    click.echo(
        f"{'time':>17}  {summary.seconds:.1f} s, {summary.deliveries / seconds:,.0f} deliveries/s"
    )
    for example in summary.examples:
        click.echo(f"malformed or failed: {example}", err=True)
    hidden = summary.malformed + summary.failed - len(summary.examples)
    if hidden > 0:
        click.echo(f"... and {hidden:,} more", err=True)
