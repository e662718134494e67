"""The `receiver` command: a thin layer over the package's functions."""

from __future__ import annotations

import ipaddress
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from receiver import __version__
from receiver.settings import Settings, describe, env_name, flag_name, range_problem

log = logging.getLogger("receiver")

# How long a thread keeps Python's GIL while another waits for it (Python's default: 5 ms).
# A database thread (the writer of a replay, the readers of the API) needs it for a moment
# before and after each statement; with the default, a busy event loop (parsing a replay, or
# serving) makes each of those moments wait up to 5 ms. Measured at 0.1 ms: a replay 15%
# faster (and, when the server's writer was a thread, 25-30% more deliveries a second).
GIL_SWITCH_SECONDS = 0.0001


def setting_option(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The click option of one declared setting, reading its RECEIVER_* variable too."""
    default, help_text = next((d, h) for n, d, h in describe() if n == name)
    kind: Any = type(default) if default is not None else str
    if isinstance(default, Path):
        kind = click.Path(dir_okay=False, path_type=Path)
    extra: dict[str, Any] = {"is_flag": True} if isinstance(default, bool) else {"type": kind}

    def in_range(context: click.Context, parameter: click.Parameter, value: Any) -> Any:
        """The setting's declared range, checked as the flag or the variable is read."""
        problem = range_problem(name, value)
        if problem:
            raise click.BadParameter(problem)
        return value

    return click.option(
        flag_name(name),
        name,
        default=default,
        envvar=env_name(name),
        show_default=default is not None,
        show_envvar=True,
        help=help_text,
        callback=in_range,
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
    sys.setswitchinterval(GIL_SWITCH_SECONDS)


@main.command()
@all_settings
def serve(**options: Any) -> None:
    """Run the webhook service (uvicorn, one worker, and a writer process for the database).

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


def register() -> None:
    """The commands that live in their own modules."""
    from receiver.cli_pbx import pbx, subscribe
    from receiver.cli_query import calls, events, report
    from receiver.cli_replay import replay

    for command in (replay, events, calls, report, subscribe, pbx):
        main.add_command(command)


register()
