"""`receiver recordings`: the calls' recordings, fetched from the PBX's API."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import click

from receiver.cli.options import check_database, setting_option
from receiver.cli.query import time_option
from receiver.cli.reconcile import client_option
from receiver.cli.subscribe import client, pbx_options


@click.group()
def recordings() -> None:
    """The calls' recordings, kept by the PBX.

    \b
    Examples:
      receiver recordings download --since 2025-12-01 recordings/
    """


def recording_ids(db: Path, since_us: int | None, until_us: int | None) -> list[str]:
    """Every recording of the calls started in the window, oldest call first."""
    import asyncio

    from receiver.store import CallQuery, open_storage

    async def run() -> list[str]:
        found: list[str] = []
        async with open_storage(db) as store:
            query = CallQuery(since_us=since_us, until_us=until_us)
            async for call in store.iter_calls(query):
                found += call["recordings"]
        return list(dict.fromkeys(found))

    return asyncio.run(run())


def file_name(record_uuid: str) -> str:
    """A recording's file: its id (`<extension id>-<hex>`), whatever it holds, made safe."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in record_uuid) + ".mp3"


@recordings.command()
@setting_option(
    "db", help="The receiver's database: an SQLite file (it must exist) or a postgresql:// URL."
)
@pbx_options
@client_option
@click.option("--since", help="Calls started from this time: ISO 8601 or epoch seconds.")
@click.option("--until", help="...and before this time.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def download(**options: Any) -> None:
    """Save the recordings of the calls into DIRECTORY, one mp3 each, skipping those there.

    Each is DIRECTORY/<recording id>.mp3, written whole or not at all, so a run that stopped
    halfway is finished by the next one.

    \b
    Examples:
      receiver recordings download --db receiver.db --since 2025-12-01 recordings/
      receiver recordings download --since 2025-12-01 --until 2025-12-02 --quiet /srv/archive
    """
    from receiver.pbx.client import PbxError

    db: Path = options["db"]
    check_database(db, create=False)
    wanted = recording_ids(
        db, time_option(options["since"], "--since"), time_option(options["until"], "--until")
    )
    folder: Path = options["directory"]
    folder.mkdir(parents=True, exist_ok=True)
    todo = [r for r in wanted if not (folder / file_name(r)).exists()]
    saved, failed = 0, []
    show = not options["quiet"] and sys.stderr.isatty()
    bar: Any = (
        click.progressbar(todo, label="recordings", file=sys.stderr)
        if show
        else contextlib.nullcontext(todo)
    )
    with client(options) as pbx, bar as items:
        for record_uuid in items:
            try:
                data = pbx.recording(record_uuid, client=options["pbx_client"])
            except PbxError as problem:
                failed.append(f"{record_uuid}: {problem}")
                if problem.status is None or problem.status == 401:
                    break  # the PBX does not answer, or takes no credentials: no use going on
                continue
            target = folder / file_name(record_uuid)
            part = target.with_suffix(".mp3.part")
            part.write_bytes(data)
            part.replace(target)
            saved += 1
    click.echo(
        f"{len(wanted):,} recordings: {saved:,} saved, {len(wanted) - len(todo):,} already there, "
        f"{len(failed):,} failed"
    )
    for failure in failed[:10]:
        click.echo(f"failed: {failure}", err=True)
    if failed:
        sys.exit(1)
