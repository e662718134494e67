"""The HTTP connection: uvicorn's httptools protocol, with a deadline for a request's headers.

uvicorn's own keep-alive timeout covers only a connection that sends nothing after an answer;
one that sends half a request line, or headers without their last line, was held open forever,
and enough of them used up the server's open files (finding: 1,100 of them under a 1,024-file
limit made every delivery fail). Here a connection that is waiting for a request (just opened,
or after an answer) must send that request's whole headers within `header_timeout` seconds, or
it is closed. A body is then the app's to wait for: the webhook gives it `--body-timeout`
(webhook.read_body); an endpoint that reads no body answers at once, and whatever of the body
is still to come counts against the next request's header deadline.

Each connection only notes its deadline (a float); one sweep every SWEEP_SHARE of the timeout
closes those past it. A timer of its own for every request cost a timer made and cancelled per
delivery.
"""

from __future__ import annotations

import asyncio
import math

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

SWEEP_SHARE = 0.25  # a connection is closed at most this share of the timeout after its deadline


class DeadlineProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes a connection whose request headers take too long."""

    header_timeout: float = 10.0
    open_connections: set[DeadlineProtocol]  # of this server (deadline_protocol makes a class)
    sweeping: bool
    deadline = math.inf  # loop time by which the next request's headers must be in

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.deadline = self.loop.time() + self.header_timeout
        self.open_connections.add(self)
        if not type(self).sweeping:
            type(self).sweeping = True
            self.loop.call_later(self.header_timeout * SWEEP_SHARE, sweep, type(self), self.loop)

    def on_headers_complete(self) -> None:
        self.deadline = math.inf
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # A request queued behind this one (pipelined) already has its headers: no deadline.
        waiting = bool(self.pipeline)
        super().on_response_complete()
        if not waiting:
            self.deadline = self.loop.time() + self.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.open_connections.discard(self)
        super().connection_lost(exc)


def sweep(protocol: type[DeadlineProtocol], loop: asyncio.AbstractEventLoop) -> None:
    """Close the connections past their deadline; again in a while, while any are open."""
    now = loop.time()
    for connection in [c for c in protocol.open_connections if c.deadline < now]:
        # No answer: the request is not known yet, and a client this slow is not a PBX.
        protocol.open_connections.discard(connection)
        if not connection.transport.is_closing():
            connection.transport.close()
    if protocol.open_connections:
        loop.call_later(protocol.header_timeout * SWEEP_SHARE, sweep, protocol, loop)
    else:
        protocol.sweeping = False


def deadline_protocol(header_timeout: float) -> type[DeadlineProtocol]:
    """The protocol class for uvicorn's `http=`, with this header deadline in seconds."""
    attributes = {"header_timeout": header_timeout, "open_connections": set(), "sweeping": False}
    return type("DeadlineProtocol", (DeadlineProtocol,), attributes)
