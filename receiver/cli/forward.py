"""`receiver forward`: the outbox of forwarded messages: list it, send the dead again, replay a
period's events to the destinations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from receiver.cli.options import setting_option
from receiver.cli.query import must_exist, print_records, time_option


@click.group()
def forward() -> None:
    """The messages `receiver serve --forward` sends on: what became of them, and again.

    The server delivers what the outbox holds; these commands read it or make messages due
    again, beside a running server, which sends them within a second.

    \b
    Examples:
      receiver forward list --status dead
      receiver forward retry
      receiver forward replay --since 2025-12-01 --destination https://crm.example.com/hook
    """


@forward.command("list")
@setting_option("db", help="The SQLite database to read (it must exist).")
@click.option(
    "--status", type=click.Choice(["pending", "delivered", "dead"]), help="Only this status."
)
@click.option("--destination", help="Only the messages to this URL.")
@click.option("--type", "kind", help="Only this message type (event.received, call.missed...).")
@click.option("--call-id", help="Only the messages of this call.")
@click.option("--since", help="Only messages written from this time (ISO 8601 or epoch seconds).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="The most messages to show.")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["table", "json", "ndjson", "csv"]),
              help="Output format (default: table on a terminal, else ndjson).")  # fmt: skip
def list_messages(
    db: Path,
    status: str | None,
    destination: str | None,
    kind: str | None,
    call_id: str | None,
    since: str | None,
    limit: int,
    fmt: str | None,
) -> None:
    """The forwarded messages, newest first: status, attempts, last answer, next try.

    \b
    Examples:
      receiver forward list
      receiver forward list --status dead --destination https://crm.example.com/hook
      receiver forward list --call-id b5187f38a9cc43f2ba068bce983a513e --format json
    """
    from receiver.store.outbox import DeliveryQuery

    query = DeliveryQuery(status, destination, kind, call_id, None, time_option(since, "--since"))

    async def records(store: Any) -> list[dict[str, Any]]:
        page = await store.list_deliveries(query, limit=limit)
        found: list[dict[str, Any]] = page.items
        return found

    print_records(db, records, fmt, "deliveries", limit)


@forward.command()
@setting_option("db", help="The SQLite database the server forwards from (it must exist).")
@click.option("--destination", help="Only the messages to this URL (and enable it again).")
@click.option("--since", help="Only messages written from this time (ISO 8601 or epoch seconds).")
def retry(db: Path, destination: str | None, since: str | None) -> None:
    """Send the dead messages again, each with a new round of retries.

    A destination disabled because it answered 410 is enabled again too. The messages keep
    their webhook-id, so a receiver that has one already can tell.

    \b
    Examples:
      receiver forward retry
      receiver forward retry --destination https://crm.example.com/hook --since 2025-12-01
    """
    import asyncio

    from receiver.store import open_storage

    must_exist(db)
    since_us = time_option(since, "--since")

    async def run() -> int:
        async with open_storage(db) as store:
            return await store.retry_deliveries(destination, since_us)

    count = asyncio.run(run())
    click.echo(f"{count} dead messages due again" + (f" to {destination}" if destination else ""))


@forward.command()
@setting_option("db", help="The SQLite database the server forwards from (it must exist).")
@click.option("--since", required=True, help="Events received from this time (ISO 8601, epoch).")
@click.option("--until", help="And before this time (default: now).")
@click.option("--destination", help="Only to this destination (one the server forwards to).")
def replay(db: Path, since: str, until: str | None, destination: str | None) -> None:
    """Send every event of a period again (event.received), e.g. to fill a new CRM.

    The messages go to the destinations the server was last started with (or the one given)
    that take them, with their ids of before: one sent already is sent again, one missing is
    written. Call messages are not replayed.

    \b
    Examples:
      receiver forward replay --since 2025-12-01 --destination https://new-crm.example.com/hook
      receiver forward replay --since 2025-12-01T09:00 --until 2025-12-01T10:00
    """
    import asyncio

    from receiver.event import now_us
    from receiver.store import open_storage

    must_exist(db)
    since_us = time_option(since, "--since")
    until_us = time_option(until, "--until") or now_us()
    assert since_us is not None

    async def run() -> int:
        async with open_storage(db) as store:
            known = [row["destination"] for row in await store.forward_counts()]
            if not known:
                raise click.ClickException(
                    "the server forwards to no destination: start it with --forward or "
                    "--forward-rules first"
                )
            if destination is not None and destination not in known:
                raise click.ClickException(
                    f"--destination {destination} is not one the server forwards to "
                    f"({', '.join(known) or 'none'}): start it with --forward {destination} first"
                )
            return await store.replay_deliveries(since_us, until_us, destination)

    count = asyncio.run(run())
    click.echo(f"{count} messages due again")
