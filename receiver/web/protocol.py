"""The HTTP connection: uvicorn's httptools protocol, with a deadline for a request's headers.

uvicorn's own keep-alive timeout covers only a connection that sends nothing after an answer;
one that sends half a request line, or headers without their last line, was held open forever,
and enough of them used up the server's open files (finding: 1,100 of them under a 1,024-file
limit made every delivery fail). Here a connection that is waiting for a request (just opened,
or after an answer) must send that request's whole headers within `header_timeout` seconds, or
it is closed. A body is then the app's to wait for: the webhook gives it `--body-timeout`
(app.read_body); an endpoint that reads no body answers at once, and whatever of the body is
still to come counts against the next request's header deadline.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class DeadlineProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes a connection whose request headers take too long."""

    header_timeout: float = 10.0
    header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.arm_header_timer()

    def on_headers_complete(self) -> None:
        self.cancel_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # A request queued behind this one (pipelined) already has its headers: no deadline.
        waiting = bool(self.pipeline)
        super().on_response_complete()
        if not waiting and not self.transport.is_closing():
            self.arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_header_timer()
        super().connection_lost(exc)

    def arm_header_timer(self) -> None:
        self.cancel_header_timer()
        self.header_timer = self.loop.call_later(self.header_timeout, self.headers_too_slow)

    def cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def headers_too_slow(self) -> None:
        # No answer: the request is not known yet, and a client this slow is not a PBX.
        self.header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def deadline_protocol(header_timeout: float) -> type[DeadlineProtocol]:
    """The protocol class for uvicorn's `http=`, with this header deadline in seconds."""
    return type("DeadlineProtocol", (DeadlineProtocol,), {"header_timeout": header_timeout})
