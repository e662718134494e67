"""`receiver reconcile`: our calls against the PBX's call history; the missing ones filled."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from receiver.cli.options import check_database, setting_option
from receiver.cli.query import time_option
from receiver.cli.subscribe import client, pbx_options
from receiver.pbx.client import OWN_CLIENT

SHOWN_DIFFERENCES = 20  # differing calls listed in the table format (JSON has them all)


def client_option(command: Any) -> Any:
    return click.option(
        "--client",
        "pbx_client",
        default=OWN_CLIENT,
        show_default=True,
        help="The PBX client (customer account) whose history to read; @me is the "
        "application's own.",
    )(command)


@click.command()
@setting_option(
    "db", help="The receiver's database: an SQLite file (it must exist) or a postgresql:// URL."
)
@pbx_options
@client_option
@click.option("--since", required=True, help="Calls started from this time: ISO 8601 or epoch s.")
@click.option("--until", help="...and before this time (default: now).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="A summary with the calls that differ, or all of it as JSON.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
def reconcile(**options: Any) -> None:
    """Compare the calls with the PBX's call history, and fill in those never received.

    Reads the history of the calls started in the window a page at a time. A call whose events
    we have is compared with the history (direction, status, who answered, number, talk time)
    and shown when they disagree, never changed. A call none of whose events came is stored as
    the history tells it, with `source: call_history`: it stays through every rebuild, and
    once an event of it arrives the events win. Running it again adds nothing. One
    reconciliation runs at a time on a database; another one is refused (exit code 1).

    \b
    Examples:
      receiver reconcile --db receiver.db --since 2025-12-01 --until 2025-12-02
      receiver reconcile --since 2025-12-01T09:00:00+03:00 --format json > reconciled.json
      receiver reconcile --since 1764547200 --client-id app --client-secret s3cret
    """
    import asyncio

    from receiver.event import now_us
    from receiver.pbx.client import PbxError
    from receiver.pbx.reconcile import ReconcileBusy, Reconciled
    from receiver.pbx.reconcile import reconcile as run_reconcile
    from receiver.store import open_storage

    db: Path = options["db"]
    check_database(db, create=False)
    since = time_option(options["since"], "--since")
    until = time_option(options["until"], "--until") or now_us()
    assert since is not None
    if until <= since:
        raise click.BadParameter("must be after --since", param_hint="--until")
    started = time.monotonic()

    def progress(found: Reconciled) -> None:
        if not options["quiet"] and sys.stderr.isatty():
            click.echo(f"\r{found.records:,} history records read", nl=False, err=True)

    async def run() -> Reconciled:
        async with open_storage(db) as store:
            await store.refresh_calls()  # the calls of every stored event, to compare
            with client(options) as pbx:
                return await run_reconcile(
                    store, pbx, since, until, progress=progress, client=options["pbx_client"]
                )

    try:
        found = asyncio.run(run())
    except (PbxError, ReconcileBusy) as problem:
        raise click.ClickException(str(problem)) from None
    if not options["quiet"] and sys.stderr.isatty():
        click.echo("", err=True)
    if options["fmt"] == "json":
        click.echo(json.dumps(found.json(), indent=2, ensure_ascii=False))
        return
    click.echo(
        f"reconciled {found.records:,} history records in {time.monotonic() - started:.1f} s: "
        f"{found.matched:,} matched, {found.filled:,} filled from the history, "
        f"{found.known:,} filled before, {len(found.differing):,} differ, "
        f"{len(found.unreadable):,} unreadable"
    )
    for entry in found.differing[:SHOWN_DIFFERENCES]:
        said = "; ".join(
            f"{field}: ours {ours!r}, history {theirs!r}"
            for field, (ours, theirs) in entry["differences"].items()
        )
        click.echo(f"differs  {entry['call_id']}  {said}")
    if len(found.differing) > SHOWN_DIFFERENCES:
        click.echo(f"... and {len(found.differing) - SHOWN_DIFFERENCES:,} more (--format json)")
    for unreadable in found.unreadable[:10]:
        click.echo(f"unreadable: {unreadable}", err=True)
