"""The webhook front: /webhook, where the PBX delivers events, answered 200 only once stored."""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from receiver.event import REJECT_BODY_KEPT, RawRequest, Reject, Source, now_us
from receiver.logs import Repeated
from receiver.parse import Rejected, parse_request, query_myid, strip_body_token, strip_token
from receiver.settings import Settings
from receiver.store import Storage, Stored
from receiver.web.errors import error
from receiver.web.metrics import Metrics
from receiver.web.stream import Feed

log = logging.getLogger("receiver")

# Headers of some refusals: what is allowed, and that a client too slow to send its body is
# let go (the rest of the body, if it ever comes, is not waited for).
ANSWER_HEADERS: dict[int, dict[str, str]] = {
    405: {"Allow": "GET, POST"},
    408: {"Connection": "close"},
}


def header(scope: Scope, name: bytes) -> str | None:
    """One request header (`name` in lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def read_body(
    scope: Scope, receive: Receive, cap: int, timeout: float
) -> tuple[bytes, int, Rejected | None]:
    """Up to `cap` bytes of the body, how many bytes it had (at least cap + 1 if more), and why
    it is not whole: the client left before its end, or did not send it all within `timeout`
    seconds (None: it all came)."""
    declared = header(scope, b"content-length") or ""
    if declared.isdigit() and int(declared) > cap:
        # Refused without reading what will not be kept anyway; its size as declared, within
        # what SQLite can keep (a Content-Length can be any number of digits).
        return b"", min(int(declared), 2**63 - 1), None
    if scope["method"] == "GET" and not declared and header(scope, b"transfer-encoding") is None:
        # A GET without Content-Length or Transfer-Encoding has no body (RFC 9112 §6.3): every
        # GET delivery. Nothing to read, nor to wait for under a deadline.
        return b"", 0, None
    chunks: list[bytes] = []
    size = 0
    try:
        # A body that stops short of its Content-Length would otherwise hold the delivery, and
        # its connection, forever (the header deadline is over once the headers are in).
        async with asyncio.timeout(timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    left = Rejected(400, "the client closed the connection before the body ended")
                    return b"".join(chunks), size, left
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > cap:
                    break
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        slow = Rejected(
            408,
            f"the body did not all arrive within {timeout:g} s ({size} bytes came): "
            "send the whole request at once",
        )
        return b"".join(chunks), size, slow
    return b"".join(chunks), size, None


def stored_response(stored: Stored) -> Response:
    """200: the event's id, and whether it was a repeat (made here: it is every request's)."""
    body = b'{"ok":true,"id":%d,"duplicate":%s}' % (
        stored.id,
        b"true" if stored.duplicate else b"false",
    )
    return Response(body, media_type="application/json")


class Webhook:
    """ASGI: /webhook, where the PBX delivers events; every other path goes on to `app`.

    Deliveries are the hot path, so they skip Starlette's routing and middleware (about a fifth
    of the CPU time of a request), and headers and body are read from the ASGI messages rather
    than through a Request (measured: about 10 µs a request more); the answers have the same
    shapes as everywhere else.
    """

    path = "/webhook"

    def __init__(
        self, app: Starlette, settings: Settings, repeated: Repeated, metrics: Metrics, feed: Feed
    ) -> None:
        self.app = app
        self.feed = feed  # told of each new event, for the live stream
        self.settings = settings
        self.repeated = repeated  # each failure of a kind is logged once in a while, counted
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        try:
            response = await self.deliver(scope, receive)
        except Exception as failure:
            log.exception("unhandled error on %s /webhook", scope["method"])
            response = error(500, f"internal error: {type(failure).__name__}")
        await response(scope, receive, send)

    async def deliver(self, scope: Scope, receive: Receive) -> Response:
        """Receive one PBX event: 200 only once it is committed to the database."""
        settings = self.settings
        store: Storage = self.app.state.store
        began = time.perf_counter()
        received = now_us()
        method = scope["method"]
        body, size, cut = await read_body(scope, receive, settings.max_body, settings.body_timeout)
        raw = RawRequest(method, scope["query_string"], body, header(scope, b"content-type"))
        if size > settings.max_body:
            why = Rejected(
                413, f"the body is {size} bytes, over the {settings.max_body}-byte limit"
            )
            return await self.refuse(scope, received, raw, size, why)
        if cut is not None:
            return await self.refuse(scope, received, raw, size, cut)
        if method not in ("GET", "POST"):
            why = Rejected(405, f"method {method} is not allowed: the PBX delivers by GET or POST")
            return await self.refuse(scope, received, raw, size, why)
        source = Source.HTTP_GET if method == "GET" else Source.HTTP_POST
        try:
            event, token = parse_request(
                raw, received_at_us=received, source=source, default_myid=settings.default_myid
            )
        except Rejected as refused:
            return await self.refuse(scope, received, raw, size, refused)
        if not settings.token_accepts(event.myid, token):
            why = Rejected(
                403,
                f"token is missing or wrong for myid {event.myid}: "
                "add token=<secret> to the URL registered with the PBX",
            )
            return await self.refuse(scope, received, raw, size, why)
        try:
            stored = await store.add_event(event)
        except Exception as failure:
            self.repeated.log(
                logging.ERROR,
                "not stored",
                "event NOT stored, answering 503 (%s): %r",
                failure,
                event.raw,
            )
            self.metrics.answered("not_stored", began)
            return error(503, f"the event could not be stored: {failure}")
        self.metrics.answered("duplicate" if stored.duplicate else "stored", began)
        if not stored.duplicate:
            self.feed.touch()
        return stored_response(stored)

    async def refuse(
        self, scope: Scope, received: int, raw: RawRequest, size: int, why: Rejected
    ) -> Response:
        """Answer a refused delivery with an error, after keeping it in the rejects store."""
        self.metrics.refused(why.status)
        store: Storage = self.app.state.store
        query = strip_token(raw.query)
        body = strip_body_token(raw.body, raw.content_type)  # the token is read from the URL only
        body = body[:REJECT_BODY_KEPT]  # its start says what it was; a flood of them fills no disk
        client = scope.get("client")
        reject = Reject(
            received_at_us=received,
            status=why.status,
            reason=why.reason,
            raw=RawRequest(raw.method, query, body, raw.content_type),
            myid=query_myid(query),  # a myid that is not valid stays in the raw query only
            client=client[0] if client else None,
            body_size=size,
        )
        # Without --access-log, nothing else in the log says that deliveries are being refused.
        self.repeated.log(
            logging.WARNING,
            f"refused {why.status}",
            "refused a delivery from %s with %d: %s",
            reject.client,
            why.status,
            why.reason,
        )
        try:
            await store.add_reject(reject)
        except Exception as failure:  # the answer stays the refusal; the log keeps the request
            self.repeated.log(
                logging.ERROR,
                "reject not kept",
                "could not keep a refused delivery (%s): %r",
                failure,
                reject,
            )
        headers = ANSWER_HEADERS.get(why.status)
        return error(why.status, why.reason, headers)
