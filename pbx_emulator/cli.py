"""`receiver-pbx`: the PBX emulator's command line (serve its API, simulate calls)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def pbx() -> None:
    """An emulator of the PBX's API and call events, for tests and demos.

    \b
    Examples:
      receiver-pbx serve --offices 2 &
      receiver-pbx simulate --calls 200 --rate 2 --speed 60 --seed 7
    """


@pbx.command(name="serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8100,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Port to listen on.",
)
@click.option(
    "--client-id",
    default="demo",
    show_default=True,
    help="The one API application's id it accepts.",
)
@click.option(
    "--client-secret", default="demo-secret", show_default=True, help="That application's secret."
)
@click.option(
    "--offices",
    default=2,
    show_default=True,
    type=click.IntRange(1, 200),
    help="Customers, each with phones, an IVR (887) and a queue (888).",
)
@click.option("--seed", default=1, show_default=True, type=int, help="Makes the same offices.")
@click.option(
    "--token-ttl",
    default=3600,
    show_default=True,
    type=click.IntRange(1),
    help="Seconds an access token lives.",
)
@click.option(
    "--subscription-limit",
    default=200,
    show_default=True,
    type=click.IntRange(0),
    help="Subscriptions per client; one more is answered 403.",
)
@click.option(
    "--history-delay",
    default=0.05,
    show_default=True,
    type=click.FloatRange(0, 60),
    help="Seconds a call-history request takes; another one meanwhile is answered 429.",
)
@click.option(
    "--record-url-ttl",
    default=600,
    show_default=True,
    type=click.IntRange(1),
    help="Seconds a recording's storage URL stays valid.",
)
def pbx_serve(**options: Any) -> None:
    """Run the emulated PBX API (OAuth2, subscriptions, callback, call history, recordings).

    \b
    Examples:
      receiver-pbx serve --offices 2
      receiver-pbx serve --port 8200 --subscription-limit 10
    """
    from pbx_emulator.emulator import PbxConfig, create_pbx_app
    from receiver.cli.server import listen_socket, run_server, url_host

    host, port = options.pop("host"), options.pop("port")
    sock = listen_socket(host, port, host_hint="--host", port_hint="--port")
    app = create_pbx_app(PbxConfig(**options))
    for office in app.state.pbx.offices:
        names = ", ".join(f"{e.name} (id {e.id}, {e.kind})" for e in office.extensions)
        click.echo(f"office {office.prefix}, number {office.did}: {names}", err=True)
    click.echo(
        f"PBX API on http://{url_host(host)}:{port} (client {options['client_id']}, "
        f"secret {options['client_secret']}): set RECEIVER_PBX_API_URL to it",
        err=True,
    )
    run_server(app, sock, host=host, port=port, log_level="warning")


@pbx.command()
@click.option(
    "--pbx",
    "pbx_url",
    default="http://127.0.0.1:8100",
    show_default=True,
    help="The running emulator.",
)
@click.option(
    "--calls",
    "count",
    default=100,
    show_default=True,
    type=click.IntRange(1),
    help="How many calls to place.",
)
@click.option(
    "--rate",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="New calls per second of simulated time.",
)
@click.option(
    "--speed",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Simulated seconds per real second; 0 plays as fast as it can.",
)
@click.option(
    "--mix",
    help="Weights of kinds of call (default: outbound=30,inbound=28,ivr=12,queue=12,"
    "parallel=6,forward=4,callback=4,internal=4).",
)
@click.option(
    "--seed", default=1, show_default=True, type=int, help="The same seed, the same calls."
)
@click.option(
    "--truth",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write each call's expected outcome here, one JSON line per call.",
)
@click.option(
    "--drop",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of the calls whose deliveries are all lost, as if the receiver was down "
    "all through them.",
)
def simulate(
    pbx_url: str,
    count: int,
    rate: float,
    speed: float,
    mix: str | None,
    seed: int,
    truth: Path | None,
    drop: float,
) -> None:
    """Place calls and deliver their events to every subscription, as the PBX does.

    Every call also goes into the emulator's call history once it has ended, delivered or not.

    \b
    Examples:
      receiver-pbx simulate --calls 200 --rate 2 --speed 60 --seed 7 --truth truth.jsonl
      receiver-pbx simulate --calls 50 --speed 0 --mix inbound=1,queue=1
      receiver-pbx simulate --calls 300 --speed 0 --drop 0.1 --truth truth.jsonl
    """
    import httpx2 as httpx

    from pbx_emulator.deliver import run_simulation
    from pbx_emulator.simulate import parse_mix

    try:
        weights = parse_mix(mix)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--mix") from None
    out = truth.open("w") if truth else None
    try:
        report = run_simulation(
            pbx_url,
            calls=count,
            rate=rate,
            speed=speed,
            seed=seed,
            mix=weights,
            truth=out,
            drop=drop,
        )
    except httpx.TransportError as error:
        raise click.ClickException(f"cannot reach the emulator at {pbx_url}: {error}") from None
    finally:
        if out:
            out.close()
    click.echo(
        f"{report.calls} calls, {report.events} events, {report.deliveries} deliveries: "
        f"{report.delivered} answered 2xx, {report.dropped} lost with {report.dropped_calls} "
        "calls (--drop), "
        f"{len(report.failed)} failed"
    )
    for failure in report.failed[:10]:
        click.echo(f"failed: {failure}", err=True)
    if report.failed:
        sys.exit(1)
