"""`receiver subscribe`: the receiver's subscriptions with the PBX's API, made and checked."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from receiver.pbx.client import CALL_EVENTS, DEFAULT_API_URL, PbxClient, PbxError, plan, webhook_url


def pbx_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Where the PBX's API is, and the application's credentials."""
    options = [
        click.option(
            "--api-url",
            default=DEFAULT_API_URL,
            show_default=True,
            envvar="RECEIVER_PBX_API_URL",
            show_envvar=True,
            help="The PBX's REST API (point it at `receiver-pbx serve` to try things).",
        ),
        click.option(
            "--client-id",
            envvar="RECEIVER_PBX_CLIENT_ID",
            show_envvar=True,
            help="The API application's id (Application_ID).",
        ),
        click.option(
            "--client-secret",
            envvar="RECEIVER_PBX_CLIENT_SECRET",
            show_envvar=True,
            help="The API application's secret (Application_Secret).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def wanted_events(events: str | None, ivr: bool, queue: bool) -> list[str]:
    """--events, or the provider's advice: all four call events; only hangup for IVR and queue."""
    if events:
        chosen = [e.strip() for e in events.split(",") if e.strip()]
        unknown = [
            e for e in chosen if e not in (*CALL_EVENTS, "message-in", "message-out", "voicemail")
        ]
        if unknown:
            raise click.BadParameter(f"unknown event type {unknown[0]!r}", param_hint="--events")
        return chosen
    return ["hangup"] if ivr or queue else list(CALL_EVENTS)


def client(options: dict[str, Any]) -> PbxClient:
    try:
        return PbxClient(
            options["api_url"], options["client_id"] or "", options["client_secret"] or ""
        )
    except PbxError as error:
        raise click.ClickException(str(error)) from None


def change(options: dict[str, Any], exact: bool) -> None:
    """add (exact=False) and sync (exact=True) for each --extension."""
    events = wanted_events(options["events"], options["ivr"], options["queue"])
    with client(options) as pbx:
        try:
            for extension in options["extension"]:
                todo = plan(
                    pbx.subscriptions(extension),
                    options["url"],
                    options["method"],
                    events,
                    exact=exact,
                )
                for subscription in todo.delete:
                    pbx.unsubscribe(extension, subscription["id"])
                    click.echo(
                        f"extension {extension}: removed {subscription['event_type']} "
                        f"{subscription['method']} (id {subscription['id']})"
                    )
                for subscription in todo.keep:
                    click.echo(
                        f"extension {extension}: {subscription['event_type']} already "
                        f"subscribed (id {subscription['id']})"
                    )
                for event_type in todo.create:
                    made = pbx.subscribe(extension, options["url"], options["method"], event_type)
                    click.echo(
                        f"extension {extension}: subscribed {event_type} "
                        f"{options['method']} (id {made['id']})"
                    )
        except PbxError as error:
            raise click.ClickException(str(error)) from None


def target_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--extension", type=int, multiple=True, required=True, help="Extension id (repeatable)."
        ),
        click.option(
            "--url", required=True, help="The URL the PBX calls (see `receiver subscribe url`)."
        ),
        click.option(
            "--events",
            help="Comma-separated event types (default: dial-in,dial-out,"
            "answer,hangup; hangup only with --ivr or --queue).",
        ),
        click.option(
            "--method",
            type=click.Choice(["GET", "POST"]),
            default="GET",
            show_default=True,
            help="How the PBX sends each event.",
        ),
        click.option("--ivr", is_flag=True, help="A voice menu: subscribe hangup only."),
        click.option("--queue", is_flag=True, help="A queue: subscribe hangup only."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group()
def subscribe() -> None:
    """Manage the PBX's event subscriptions for your receiver's URL.

    \b
    Examples:
      url=$(receiver subscribe url --base https://calls.example.com --myid 175)
      receiver subscribe add --extension 175 --url "$url"
    """


@subscribe.command()
@pbx_options
@target_options
def add(**options: Any) -> None:
    """Subscribe what is missing; never duplicates an identical subscription.

    \b
    Examples:
      receiver subscribe add --extension 175 --url "$url"
      receiver subscribe add --extension 887 --ivr --url "$url887"   # hangup only
    """
    change(options, exact=False)


@subscribe.command()
@pbx_options
@target_options
def sync(**options: Any) -> None:
    """Make the subscriptions for --url exactly the wanted set (others' URLs are left alone).

    \b
    Examples:
      receiver subscribe sync --extension 175 --url "$url"
      receiver subscribe sync --extension 175 --url "$url" --events hangup --method POST
    """
    change(options, exact=True)


@subscribe.command(name="list")
@pbx_options
@click.option("--extension", type=int, multiple=True, required=True, help="Extension id.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="A table with a header, or JSON.",
)
def list_(**options: Any) -> None:
    """List an extension's subscriptions.

    \b
    Examples:
      receiver subscribe list --extension 175
      receiver subscribe list --extension 175 --extension 887 --format json
    """
    rows = []
    with client(options) as pbx:
        try:
            for extension in options["extension"]:
                rows += [{"extension": extension, **s} for s in pbx.subscriptions(extension)]
        except PbxError as error:
            raise click.ClickException(str(error)) from None
    if options["fmt"] == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no subscriptions")
        return
    line = "{extension:>9}  {id:>6}  {event_type:<11}  {method:<6}  {url}"
    click.echo(
        line.format(
            extension="extension", id="id", event_type="event_type", method="method", url="url"
        )
    )
    for row in rows:
        click.echo(line.format(**row))


@subscribe.command()
@pbx_options
@click.option("--extension", type=int, required=True, help="Extension id.")
@click.option("--id", "subscription_id", type=int, help="Remove this subscription.")
@click.option("--url", help="Remove every subscription of the extension for this URL.")
def remove(**options: Any) -> None:
    """Remove one subscription, or all of ours (for --url); never other URLs'.

    \b
    Examples:
      receiver subscribe remove --extension 175 --url "$url"
      receiver subscribe remove --extension 175 --id 12
    """
    if (options["subscription_id"] is None) == (options["url"] is None):
        raise click.UsageError("give --id or --url (one of them)")
    extension = options["extension"]
    with client(options) as pbx:
        try:
            found = pbx.subscriptions(extension)
            if options["url"] is not None:
                doomed = [s for s in found if s.get("url") == options["url"]]
            else:
                doomed = [s for s in found if s.get("id") == options["subscription_id"]]
                if not doomed:
                    raise click.ClickException(
                        f"extension {extension} has no subscription {options['subscription_id']}"
                    )
            for subscription in doomed:
                pbx.unsubscribe(extension, subscription["id"])
                click.echo(
                    f"extension {extension}: removed {subscription['event_type']} "
                    f"(id {subscription['id']})"
                )
        except PbxError as error:
            raise click.ClickException(str(error)) from None
    if not doomed:
        click.echo(f"extension {extension}: nothing subscribed for {options['url']}")


@subscribe.command()
@click.option("--base", required=True, help="Your receiver's public base URL, https://host[:port].")
@click.option("--myid", required=True, help="The myid the events should carry.")
@click.option(
    "--token",
    envvar="RECEIVER_TOKEN",
    show_envvar=True,
    help="The receiver's webhook token, if it has one.",
)
def url(base: str, myid: str, token: str | None) -> None:
    """Print the exact URL to register with the PBX.

    \b
    Examples:
      receiver subscribe url --base https://calls.example.com --myid 175
      RECEIVER_TOKEN=s3cret receiver subscribe url --base https://calls.example.com:8443 --myid 175
    """
    click.echo(webhook_url(base, myid, token))
