"""Running an ASGI app under uvicorn from the command line: its socket, limits and URL."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

import click

log = logging.getLogger("receiver")


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


def run_server(
    app: Any,
    sock: socket.socket,
    *,
    on_shutdown: Callable[[], None] | None = None,
    **config: Any,
) -> None:
    """uvicorn on a socket of ours; exits 3, as uvicorn.run does, when the app fails to start.

    `on_shutdown` is called as the server begins to stop: uvicorn waits for the requests in
    flight, and an endless one (a live stream) must be told to end.
    """
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if on_shutdown is not None:
                on_shutdown()
            await super().shutdown(sockets)

    server = Server(uvicorn.Config(app, log_config=None, **config))
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn has stopped already: no traceback
        server.run(sockets=[sock])
    if not server.started:
        sys.exit(3)


def url_host(host: str) -> str:
    """The host part of a URL to this server: a wildcard address is no place to send events."""
    if host in ("0.0.0.0", "::", ""):
        return "<this machine's address>"
    return f"[{host}]" if ":" in host else host


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
