"""`receiver events`, `receiver calls` and `receiver report`: the database, read from a terminal."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any

import click

from receiver.calls import CallStatus, Direction
from receiver.cli.options import check_database, setting_option

ORDER = click.option(
    "--order",
    type=click.Choice(["asc", "desc"]),
    default="asc",
    show_default=True,
    help="Oldest first (asc) or newest first (desc).",
)


def zone_option(context: click.Context, parameter: click.Parameter, value: str | None) -> Any:
    from receiver.zones import zone

    if value is None:
        return None
    try:
        return zone(value)
    except ValueError as problem:
        raise click.BadParameter(str(problem)) from None


TZ = click.option(
    "--tz",
    "place",
    metavar="ZONE",
    envvar="RECEIVER_TIMEZONE",
    show_envvar=True,
    callback=zone_option,
    help="IANA time zone (Europe/Moscow): the days and hours the report groups by, its times "
    "(given with the zone's offset), and --since/--until without an offset, on its clock. "
    "[default: UTC]",
)


def query_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by events, calls and report."""
    options = [
        setting_option(
            "db",
            help="The database `receiver serve` writes: an SQLite file (it must exist) or a "
            "postgresql:// URL.",
        ),
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


def must_exist(db: Path) -> None:
    """Reading never creates a database: a wrong --db says so."""
    check_database(db, create=False)


def time_option(value: str | None, name: str, place: tzinfo = UTC) -> int | None:
    from receiver.event import parse_time

    if value is None:
        return None
    try:
        return parse_time(value, place)
    except ValueError as problem:
        raise click.BadParameter(str(problem), param_hint=name) from None


def print_records(db: Path, records: Callable[[Any], Any], fmt: str | None, kind: str,
                  limit: int | None) -> None:  # fmt: skip
    """Open the database, and print what `records(store)` gives (an async iterator or a list)."""
    import asyncio

    from receiver.cli.render import Output
    from receiver.store import open_storage

    must_exist(db)
    output = Output(fmt or ("table" if sys.stdout.isatty() else "ndjson"), kind, sys.stdout)

    async def run() -> None:
        async with open_storage(db) as store:
            if kind != "events":
                behind(await store.calls_state(), db)
            found = records(store)
            if not hasattr(found, "__aiter__"):
                found = aiter_list(await found)
            async for record in found:
                output.add(record)
                if limit is not None and output.count >= limit:
                    break

    asyncio.run(run())
    output.close()


def behind(state: Any, db: Path | str) -> None:
    """Say on stderr when the calls read are not built from every event, by this receiver."""
    from receiver.calls import CALLS_VERSION
    from receiver.store.backend import is_postgresql, shown_db

    if state.current:
        return
    shown = shown_db(db) if is_postgresql(db) else db
    if state.version != CALLS_VERSION:
        how = (
            f"built by another version of call building ({state.version}, this is {CALLS_VERSION})"
        )
    else:
        how = f"built up to event {state.built_to_event:,} of {state.events:,}"
    click.echo(
        f"note: the calls are {how}: `receiver rebuild --db {shown}`, or a `receiver serve` "
        "running on it, brings them up to date",
        err=True,
    )


async def aiter_list(rows: list[Any]) -> Any:
    for row in rows:
        yield row


async def in_zone(rows: Awaitable[list[dict[str, Any]]], place: tzinfo | None) -> Any:
    """A report's rows, their times given in `place` (as they are, in UTC, when None)."""
    from receiver.zones import report_in_zone

    found = await rows
    if place is not None:
        report_in_zone(found, place)
    return found


def call_query(options: dict[str, Any], **more: Any) -> Any:
    from receiver.event import now_us
    from receiver.store import CallQuery

    place = options.get("place") or UTC
    return CallQuery(
        myids=options["myids"],
        since_us=time_option(options["since"], "--since", place),
        until_us=time_option(options["until"], "--until", place),
        number=options["number"],
        extension=options["extension"],
        now_us=now_us(),
        unknown_after_us=options["unknown_end_after"] * 1_000_000,
        **more,
    )


@click.command()
@query_options
@click.option("--type", "event_type", help="Only this EventType (dial-in, answer, ...).")
@click.option("--call-id", help="Only the events of this CallID.")
@ORDER
def events(**options: Any) -> None:
    """List stored events, filtered, in time order.

    --format ndjson keeps each event's raw request, so the output can be replayed.

    \b
    Examples:
      receiver events --myid 85219 --since 2025-12-01 --number +79161112233
      receiver events --format ndjson > backup.ndjson   # replayable
    """
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
    if options["fmt"] == "ndjson" or (options["fmt"] is None and not sys.stdout.isatty()):
        export_lines(options["db"], query, options["limit"])
        return

    print_records(
        options["db"], lambda store: store.iter_event_records(query), options["fmt"], "events",
        options["limit"],
    )  # fmt: skip


def export_lines(db: Path, query: Any, limit: int | None) -> None:
    """The NDJSON export, as /api/events?format=ndjson gives it (with the raw requests)."""
    import asyncio

    from receiver.store import open_storage

    must_exist(db)

    async def run() -> None:
        async with open_storage(db) as store:
            async for chunk in store.iter_event_lines(query, limit=limit):
                sys.stdout.buffer.write(chunk)

    asyncio.run(run())


@click.command()
@query_options
@click.option(
    "--direction",
    type=click.Choice([d.value for d in Direction]),
    help="Only calls of this direction.",
)
@click.option(
    "--status",
    type=click.Choice([s.value for s in CallStatus]),
    help="Only calls that ended so (unknown_end: no hangup after --unknown-end-after).",
)
@ORDER
def calls(**options: Any) -> None:
    """List calls rebuilt from their events.

    \b
    Examples:
      receiver calls --since 2025-12-01
      receiver calls --status missed --since 2025-12-01T00:00:00+03:00
    """
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


@click.group()
def report() -> None:
    """Reports over the calls.

    \b
    Examples:
      receiver report missed --since 2025-12-01
      receiver report extensions --since 2025-12-01 --by day --format csv
      receiver report extensions --since 2025-12-01 --by day --tz Europe/Moscow
    """


@report.command()
@query_options
@TZ
def missed(**options: Any) -> None:
    """Missed inbound calls per number: were they called back, or did they call again?

    \b
    Examples:
      receiver report missed --since 2025-12-01
      receiver report missed --myid 85218 --format json
      receiver report missed --since 2025-12-01 --tz Europe/Moscow   # from 00:00 Moscow time
    """
    query = call_query(options)
    print_records(
        options["db"], lambda store: in_zone(store.missed_report(query), options["place"]),
        options["fmt"], "missed", options["limit"],
    )  # fmt: skip


@report.command()
@query_options
@TZ
@click.option("--by", type=click.Choice(["day", "hour"]), help="One row per period too.")
def extensions(**options: Any) -> None:
    """Per extension: calls, answered, missed, ring and talk times.

    \b
    Examples:
      receiver report extensions --since 2025-12-01
      receiver report extensions --by day --format csv > extensions.csv
      receiver report extensions --by day --tz Europe/Moscow   # Moscow's days, 00:00 to 00:00
    """
    query = call_query(options)
    place = options["place"]
    print_records(
        options["db"],
        lambda store: in_zone(
            store.extensions_report(query, by=options["by"], place=place or UTC), place
        ),
        options["fmt"], "extensions", options["limit"],
    )  # fmt: skip
