"""The `receiver` command: a thin layer over the package's functions."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
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


def setting_option(
    name: str, help: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The click option of one declared setting, reading its RECEIVER_* variable too; `help`
    when the setting means something else to this command."""
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
        help=help or help_text,
        callback=in_range,
        **extra,
    )


def all_settings(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add every declared setting to a command as an option."""
    for name, _, _ in reversed(describe()):
        command = setting_option(name)(command)
    return command


def listen_socket(host: str, port: int, *, host_hint: str, port_hint: str) -> socket.socket:
    """The server's socket, bound before the server starts: uvicorn would end with a raw
    `[Errno 98]` on a port in use; this says which port, and which setting changes it."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise click.ClickException(
            f"cannot listen on {host}: {error.strerror}: give an address of this machine "
            f"with {host_hint}"
        ) from None
    sock = socket.socket(family, kind)
    # As uvicorn does: a restarted server need not wait for its old connections' TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            why = f"port {port} on {host} is already in use (another receiver?): stop it, or"
        elif error.errno == errno.EACCES:
            why = f"port {port} needs more rights than this user has (below 1024):"
        elif error.errno == errno.EADDRNOTAVAIL:
            raise click.ClickException(
                f"cannot listen on {host}: it is not an address of this machine: "
                f"give another with {host_hint}"
            ) from None
        else:
            why = f"cannot listen on {host} port {port} ({error.strerror}):"
        raise click.ClickException(f"{why} choose another port with {port_hint}") from None
    return sock


def run_server(app: Any, sock: socket.socket, **config: Any) -> None:
    """uvicorn on a socket of ours; exits 3, as uvicorn.run does, when the app fails to start."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_config=None, **config))
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn has stopped already: no traceback
        server.run(sockets=[sock])
    if not server.started:
        sys.exit(3)


def url_host(host: str) -> str:
    """The host part of a URL to this server: a wildcard address is no place to send events."""
    if host in ("0.0.0.0", "::", ""):
        return "<this machine's address>"
    return f"[{host}]" if ":" in host else host


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def check_database(db: Path, *, create: bool) -> None:
    """A --db that cannot be the receiver's database is one clear line, not SQLite's traceback.
    `create`: the command writes, and makes the file when it is missing (serve, replay)."""
    folder = db.absolute().parent
    if not db.exists() and not create:
        raise click.ClickException(
            f"no database at {db.absolute()}: pass --db (or set RECEIVER_DB) with the file "
            "`receiver serve` writes; reading never creates one"
        )
    if create and not folder.is_dir():
        raise click.ClickException(
            f"--db {db}: the folder {folder} does not exist: create it, or pass another --db"
        )
    # SQLite in WAL mode writes two files beside the database: the folder must take new files.
    if create and not (os.access(folder, os.W_OK) and (not db.exists() or os.access(db, os.W_OK))):
        raise click.ClickException(
            f"--db {db}: this user cannot write it or its folder {folder}: pass another --db"
        )
    if not db.exists():
        return
    try:
        with db.open("rb") as file:
            head = file.read(len(SQLITE_HEADER))
    except OSError as error:
        raise click.ClickException(
            f"--db {db}: cannot read it ({error.strerror}): fix its rights, or pass another --db"
        ) from None
    if head and head != SQLITE_HEADER:  # an empty file is an empty SQLite database
        new = ", or a new path to create one" if create else " (the file `receiver serve` writes)"
        raise click.ClickException(
            f"--db {db} is not an SQLite database (it begins {head[:8]!r}): --db expects the "
            f"receiver's database{new}"
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def raise_open_file_limit() -> None:
    """Raise this process's open-file soft limit to its hard limit, and log the new limit.

    Each connection is an open file; a soft limit of 1,024 (a common default) let a thousand
    slow clients make every other delivery fail, and the hard limit is what the system allows.
    """
    import resource  # POSIX only: imported here, so that the other commands run anywhere

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        log.info("open-file limit: %s", soft)
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as problem:  # an unlimited hard limit may be refused as such
        log.warning("open-file limit stays %s (could not raise it to %s: %s)", soft, hard, problem)
        return
    log.info("open-file limit raised from %s to %s", soft, hard)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="receiver")
def main() -> None:
    """Receive PBX call events over HTTP and keep them in SQLite.

    \b
    Examples:
      receiver serve --db receiver.db --port 8000
      receiver calls --since 2025-12-01
    """
    sys.setswitchinterval(GIL_SWITCH_SECONDS)


@main.command()
@all_settings
def serve(**options: Any) -> None:
    """Run the webhook service (uvicorn, one worker, and a writer process for the database).

    Point the PBX at http://HOST:PORT/webhook?myid=<extension id>.

    \b
    Examples:
      receiver serve --db receiver.db --port 8000
      RECEIVER_HOST=0.0.0.0 RECEIVER_TOKEN=s3cret RECEIVER_API_TOKEN=t0ken receiver serve
    """
    from receiver.app import create_app
    from receiver.logs import configure_logging
    from receiver.protocol import deadline_protocol

    try:
        settings = Settings(**options)
    except ValueError as problem:
        raise click.BadParameter(str(problem)) from None
    check_database(settings.db, create=True)
    sock = listen_socket(
        settings.host,
        settings.port,
        host_hint="--host or RECEIVER_HOST",
        port_hint="--port or RECEIVER_PORT",
    )
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
    raise_open_file_limit()
    base = f"http://{url_host(settings.host)}:{settings.port}"
    token = "&token=<your token>" if settings.token or settings.tokens else ""
    log.info("database %s", settings.db.absolute())
    log.info(
        "listening on %s: register %s/webhook?myid=<extension id>%s with the PBX",
        base,
        base,
        token,
    )
    run_server(
        create_app(settings),
        sock,
        http=deadline_protocol(settings.header_timeout),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
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
