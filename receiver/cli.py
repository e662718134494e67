"""The `receiver` command: a thin layer over the package's functions."""

from __future__ import annotations

import ipaddress
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from receiver import __version__
from receiver.replay import FORMATS, Summary
from receiver.settings import Settings, describe, env_name, flag_name

log = logging.getLogger("receiver")


def setting_option(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The click option of one declared setting, reading its RECEIVER_* variable too."""
    default, help_text = next((d, h) for n, d, h in describe() if n == name)
    kind: Any = type(default) if default is not None else str
    if isinstance(default, Path):
        kind = click.Path(dir_okay=False, path_type=Path)
    extra: dict[str, Any] = {"is_flag": True} if isinstance(default, bool) else {"type": kind}
    return click.option(
        flag_name(name),
        name,
        default=default,
        envvar=env_name(name),
        show_default=default is not None,
        show_envvar=True,
        help=help_text,
        **extra,
    )


def all_settings(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add every declared setting to a command as an option."""
    for name, _, _ in reversed(describe()):
        command = setting_option(name)(command)
    return command


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="receiver")
def main() -> None:
    """Receive PBX call events over HTTP and keep them in SQLite."""


@main.command()
@all_settings
def serve(**options: Any) -> None:
    """Run the webhook service (uvicorn, one worker).

    Point the PBX at http://HOST:PORT/webhook?myid=<extension id>.
    """
    import uvicorn

    from receiver.app import create_app
    from receiver.logs import configure_logging

    try:
        settings = Settings(**options)
    except ValueError as problem:
        raise click.BadParameter(str(problem)) from None
    configure_logging(settings.log_level)
    if not is_loopback(settings.host):
        if not (settings.token or settings.tokens):
            log.warning(
                "listening on %s with no webhook token: anyone who finds the URL can add events "
                "(set --token or RECEIVER_TOKEN)",
                settings.host,
            )
        if not settings.api_token:
            log.warning(
                "listening on %s with no API token: anyone can read the events "
                "(set --api-token or RECEIVER_API_TOKEN)",
                settings.host,
            )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        log_config=None,
        timeout_graceful_shutdown=30,
    )


@main.command()
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
@click.option("--myid", help="myid for deliveries whose query string has none.")
@click.option(
    "--to",
    "to_url",
    metavar="URL",
    help="Send the deliveries to a running receiver at URL (e.g. http://host:8000/webhook) "
    "instead of writing the database.",
)
@click.option(
    "--concurrency", default=8, show_default=True, type=click.IntRange(1, 256),
    help="With --to: requests in flight at once.",
)  # fmt: skip
@click.option(
    "--rate", type=click.FloatRange(0, min_open=True), help="With --to: deliveries per second."
)
@click.option(
    "--retries", default=3, show_default=True, type=click.IntRange(0, 20),
    help="With --to: tries again after a network error, 429 or 5xx.",
)  # fmt: skip
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
    """
    import asyncio

    from receiver.replay import Options, ReplayError, Target
    from receiver.replay import replay as run_replay
    from receiver.store import Store

    options = Options(fmt, log_format, path, myid, strict)
    target = Target(to_url, concurrency, rate, retries) if to_url and not dry_run else None

    async def run() -> Summary:
        if dry_run or target is not None:
            return await run_replay(list(paths), options, target=target, progress=bar.update_from)
        async with Store(db) as store:
            return await run_replay(list(paths), options, store=store, progress=bar.update_from)

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
        self.sizes = {p: Path(p).stat().st_size if Path(p).is_file() else 0 for p in paths}
        self.enabled = enabled and sum(self.sizes.values()) > 0
        self.done_before: dict[str, int] = {}
        self.shown = 0
        self.started = time.monotonic()
        self.bar: Any = None
        if self.enabled:
            self.bar = click.progressbar(
                length=sum(self.sizes.values()),
                label="replaying",
                file=sys.stderr,
                show_pos=False,
                item_show_func=lambda text: text,
            )
            self.bar.__enter__()

    def update_from(self, source: Any, summary: Summary) -> None:
        if self.bar is None:
            return
        done = sum(self.sizes[p] for p in self.done_before) + source.position()
        if source.name not in self.sizes:  # stdin
            done = self.shown
        elif source.position() >= self.sizes[source.name]:
            self.done_before[source.name] = 1
        rate = summary.lines / max(time.monotonic() - self.started, 1e-9)
        text = f"{summary.lines:,} lines, {rate:,.0f}/s"
        self.bar.update(max(done - self.shown, 0), text)
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


def query_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by events, calls and report."""
    options = [
        setting_option("db"),
        setting_option("unknown_end_after"),
        click.option("--myid", "myids", multiple=True, help="Only this myid (repeatable)."),
        click.option("--since", help="From this time: ISO 8601 or seconds since the epoch."),
        click.option("--until", help="Before this time: ISO 8601 or seconds since the epoch."),
        click.option("--number", help="A phone number, in any formatting."),
        click.option("--extension", help="An extension, as prefix*ext (e.g. 2566*102)."),
        click.option("--limit", type=click.IntRange(1), help="At most this many records."),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["table", "json", "ndjson", "csv"]),
            help="Output format (default: table on a terminal, ndjson in a pipe).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def time_option(value: str | None, name: str) -> int | None:
    from receiver.event import parse_time

    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as problem:
        raise click.BadParameter(str(problem), param_hint=name) from None


def print_records(db: Path, records: Callable[[Any], Any], fmt: str | None, kind: str,
                  limit: int | None) -> None:  # fmt: skip
    """Open the database, and print what `records(store)` gives (an async iterator or a list)."""
    import asyncio

    from receiver.render import Output
    from receiver.store import Store

    if not db.exists():
        raise click.ClickException(f"no database at {db}: pass --db (or set RECEIVER_DB)")
    output = Output(fmt or ("table" if sys.stdout.isatty() else "ndjson"), kind, sys.stdout)

    async def run() -> None:
        async with Store(db) as store:
            found = records(store)
            if not hasattr(found, "__aiter__"):
                found = aiter_list(await found)
            async for record in found:
                output.add(record)
                if limit is not None and output.count >= limit:
                    break

    asyncio.run(run())
    output.close()


async def aiter_list(rows: list[Any]) -> Any:
    for row in rows:
        yield row


def call_query(options: dict[str, Any], **more: Any) -> Any:
    from receiver.store import CallQuery

    return CallQuery(
        myids=options["myids"],
        since_us=time_option(options["since"], "--since"),
        until_us=time_option(options["until"], "--until"),
        number=options["number"],
        extension=options["extension"],
        now_us=time.time_ns() // 1000,
        unknown_after_us=options["unknown_end_after"] * 1_000_000,
        **more,
    )


@main.command()
@query_options
@click.option("--type", "event_type", help="Only this EventType (dial-in, answer, ...).")
@click.option("--call-id", help="Only the events of this CallID.")
@click.option("--order", type=click.Choice(["asc", "desc"]), default="asc", show_default=True)
def events(**options: Any) -> None:
    """List stored events, filtered, in time order.

    --format ndjson keeps each event's raw request, so the output can be replayed.
    """
    from receiver.event import event_json
    from receiver.store import EventQuery

    query = EventQuery(
        myids=options["myids"],
        event_type=options["event_type"],
        call_id=options["call_id"],
        number=options["number"],
        extension=options["extension"],
        since_us=time_option(options["since"], "--since"),
        until_us=time_option(options["until"], "--until"),
        descending=options["order"] == "desc",
    )
    raw = options["fmt"] == "ndjson" or (options["fmt"] is None and not sys.stdout.isatty())

    async def records(store: Any) -> Any:
        async for event in store.iter_events(query):
            yield event_json(event, with_raw=raw)

    print_records(options["db"], records, options["fmt"], "events", options["limit"])


@main.command()
@query_options
@click.option("--direction", type=click.Choice(["in", "out", "internal"]))
@click.option(
    "--status",
    type=click.Choice(["answered", "missed", "busy", "no_answer", "cancelled", "failed",
                       "in_progress", "unknown_end"]),
)  # fmt: skip
@click.option("--order", type=click.Choice(["asc", "desc"]), default="asc", show_default=True)
def calls(**options: Any) -> None:
    """List calls rebuilt from their events."""
    query = call_query(
        options,
        direction=options["direction"],
        status=options["status"],
        descending=options["order"] == "desc",
    )
    print_records(
        options["db"], lambda store: store.iter_calls(query), options["fmt"], "calls",
        options["limit"],
    )  # fmt: skip


@main.group()
def report() -> None:
    """Reports over the calls."""


@report.command()
@query_options
def missed(**options: Any) -> None:
    """Missed inbound calls per number: were they called back, or did they call again?"""
    query = call_query(options)
    print_records(
        options["db"], lambda store: store.missed_report(query), options["fmt"], "missed",
        options["limit"],
    )  # fmt: skip


@report.command()
@query_options
@click.option("--by", type=click.Choice(["day", "hour"]), help="One row per period too.")
def extensions(**options: Any) -> None:
    """Per extension: calls, answered, missed, ring and talk times."""
    query = call_query(options)
    print_records(
        options["db"], lambda store: store.extensions_report(query, by=options["by"]),
        options["fmt"], "extensions", options["limit"],
    )  # fmt: skip


def register() -> None:
    """The command groups that live in their own modules."""
    from receiver.cli_pbx import pbx, subscribe

    main.add_command(subscribe)
    main.add_command(pbx)


register()
